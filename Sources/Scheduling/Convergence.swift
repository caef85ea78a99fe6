import ShepherdCore

/// One reading of a running migration (QEMU's query-migrate, in bytes and seconds).
public struct MigrationSample: Sendable, Equatable {
    public var elapsedSeconds: Double
    /// Completed passes over memory (QEMU's dirty-sync-count).
    public var pass: Int
    public var remainingBytes: Double
    public var transferredBytes: Double
    /// How fast the guest dirties memory.
    public var dirtyBytesPerSecond: Double
    /// How fast the link carries it.
    public var bandwidthBytesPerSecond: Double
    /// QEMU's estimate of the pause if it switched now (ms).
    public var expectedDowntimeMs: Double

    public init(elapsedSeconds: Double, pass: Int, remainingBytes: Double, transferredBytes: Double,
                dirtyBytesPerSecond: Double, bandwidthBytesPerSecond: Double, expectedDowntimeMs: Double) {
        self.elapsedSeconds = elapsedSeconds; self.pass = pass; self.remainingBytes = remainingBytes
        self.transferredBytes = transferredBytes; self.dirtyBytesPerSecond = dirtyBytesPerSecond
        self.bandwidthBytesPerSecond = bandwidthBytesPerSecond; self.expectedDowntimeMs = expectedDowntimeMs
    }
}

/// What the cluster allows a migration.
public struct ConvergenceSettings: Sendable, Equatable {
    /// The pause the final switch may take.
    public var downtimeLimitMs: Int
    /// The cluster's migration timeout.
    public var timeoutSeconds: Double
    /// Whether this VM may switch to post-copy (its memory then lives on two hosts until done).
    public var postcopyAllowed: Bool
    /// How long pre-copy gets to show it converges before the prediction is trusted.
    public var graceSeconds: Double

    public init(downtimeLimitMs: Int = 30, timeoutSeconds: Double = 300, postcopyAllowed: Bool = true, graceSeconds: Double = 3) {
        self.downtimeLimitMs = downtimeLimitMs; self.timeoutSeconds = timeoutSeconds
        self.postcopyAllowed = postcopyAllowed; self.graceSeconds = graceSeconds
    }
}

/// What to do next, with the reason written to the task.
public enum ConvergenceDecision: Sendable, Equatable {
    case keepGoing
    case switchToPostcopy(reason: String)
    case abort(reason: String)
}

/// Shepherd's convergence policy. Pre-copy starts already tuned (uncapped bandwidth, the
/// downtime target, auto-converge and XBZRLE on). After the grace period it predicts from the
/// measured dirty rate and bandwidth whether pre-copy will finish within the timeout: if not,
/// it switches to post-copy (which always finishes: each page moves once) or, when post-copy is
/// not allowed, aborts early with the prediction instead of burning the link until the timeout.
public enum ConvergencePolicy {
    public static func decide(_ sample: MigrationSample, settings: ConvergenceSettings, inPostcopy: Bool) -> ConvergenceDecision {
        // Post-copy always finishes (each page moves once) and cannot be undone: never abandon it.
        if inPostcopy { return .keepGoing }
        if sample.elapsedSeconds >= settings.timeoutSeconds {
            return .abort(reason: "the migration timeout of \(Int(settings.timeoutSeconds)) s passed with \(mib(sample.remainingBytes)) MiB still to send")
        }
        if sample.elapsedSeconds < settings.graceSeconds || sample.pass < 2 { return .keepGoing }
        if sample.expectedDowntimeMs > 0, sample.expectedDowntimeMs <= Double(settings.downtimeLimitMs) { return .keepGoing }
        guard let secondsLeft = predictedSeconds(sample) else {
            return giveUp(sample, settings, why: "the guest dirties \(mib(sample.dirtyBytesPerSecond)) MiB/s and the link carries \(mib(sample.bandwidthBytesPerSecond)) MiB/s: pre-copy cannot converge")
        }
        let budget = settings.timeoutSeconds - sample.elapsedSeconds
        if secondsLeft > budget {
            return giveUp(sample, settings, why: "pre-copy needs about \(Int(secondsLeft.rounded())) s more (\(mib(sample.remainingBytes)) MiB left, net \(mib(sample.bandwidthBytesPerSecond - sample.dirtyBytesPerSecond)) MiB/s) but \(Int(budget)) s remain")
        }
        // Converging slowly but within budget: keep going while the remaining memory shrinks fast enough.
        if sample.elapsedSeconds > 2 * settings.graceSeconds, secondsLeft > 4 * settings.graceSeconds {
            return giveUp(sample, settings, why: "pre-copy would take about \(Int(secondsLeft.rounded())) s more at \(mib(sample.bandwidthBytesPerSecond - sample.dirtyBytesPerSecond)) MiB/s net")
        }
        return .keepGoing
    }

    /// Seconds until the remaining memory fits the downtime, or nil when it never will.
    public static func predictedSeconds(_ sample: MigrationSample) -> Double? {
        let net = sample.bandwidthBytesPerSecond - sample.dirtyBytesPerSecond
        guard net > sample.bandwidthBytesPerSecond * 0.1, sample.bandwidthBytesPerSecond > 0 else { return nil }
        return sample.remainingBytes / net
    }

    private static func giveUp(_ sample: MigrationSample, _ settings: ConvergenceSettings, why: String) -> ConvergenceDecision {
        settings.postcopyAllowed ? .switchToPostcopy(reason: why + "; switching to post-copy") : .abort(reason: why + "; post-copy is not allowed for this VM")
    }

    private static func mib(_ bytes: Double) -> Int { Int((bytes / 1_048_576).rounded()) }
}
