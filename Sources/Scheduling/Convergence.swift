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
    /// How hard auto-converge throttles the guest's vCPUs now (QEMU's cpu-throttle-percentage, 0–99).
    public var throttlePercent: Double
    /// The throttle in force while the dirty rate was measured: QEMU raises the throttle at a sync
    /// and then publishes the rate of the period that just ended, under the old one. Nil: the same.
    public var rateThrottlePercent: Double?
    /// The most memory seen waiting to be sent since the first pass ended: the guest's dirty set
    /// as far as it showed (what a pass can grow to while the guest outruns the link).
    public var peakRemainingBytes: Double
    /// The guest's memory that is not zero (what post-copy from scratch would move).
    public var nonZeroBytes: Double

    public init(elapsedSeconds: Double, pass: Int, remainingBytes: Double, transferredBytes: Double,
                dirtyBytesPerSecond: Double, bandwidthBytesPerSecond: Double, expectedDowntimeMs: Double,
                throttlePercent: Double = 0, rateThrottlePercent: Double? = nil, peakRemainingBytes: Double = 0, nonZeroBytes: Double = 0) {
        self.elapsedSeconds = elapsedSeconds; self.pass = pass; self.remainingBytes = remainingBytes
        self.transferredBytes = transferredBytes; self.dirtyBytesPerSecond = dirtyBytesPerSecond
        self.bandwidthBytesPerSecond = bandwidthBytesPerSecond; self.expectedDowntimeMs = expectedDowntimeMs
        self.throttlePercent = throttlePercent; self.rateThrottlePercent = rateThrottlePercent; self.peakRemainingBytes = peakRemainingBytes; self.nonZeroBytes = nonZeroBytes
    }
}

/// QEMU's auto-converge: when, in two sync periods (each at least a second and a pass), the guest
/// dirtied more than `triggerPercent` of what was sent, its vCPUs are throttled by `initialPercent`,
/// then `incrementPercent` more each time, up to `maxPercent`. The values are QEMU 7.2's defaults,
/// which Shepherd leaves as they are.
public struct AutoConverge: Sendable, Equatable {
    public var initialPercent: Double
    public var incrementPercent: Double
    public var maxPercent: Double
    public var triggerPercent: Double
    public init(initialPercent: Double = 20, incrementPercent: Double = 10, maxPercent: Double = 99, triggerPercent: Double = 50) {
        self.initialPercent = initialPercent; self.incrementPercent = incrementPercent
        self.maxPercent = maxPercent; self.triggerPercent = triggerPercent
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
    /// Auto-converge as the migration runs it (nil: off, the guest is never throttled).
    public var autoConverge: AutoConverge?
    /// What switching to post-copy costs before memory moves again (the target QEMU restarts).
    public var postcopyRestartSeconds: Double

    public init(downtimeLimitMs: Int = 30, timeoutSeconds: Double = 300, postcopyAllowed: Bool = true, graceSeconds: Double = 3,
                autoConverge: AutoConverge? = AutoConverge(), postcopyRestartSeconds: Double = 1) {
        self.downtimeLimitMs = downtimeLimitMs; self.timeoutSeconds = timeoutSeconds
        self.postcopyAllowed = postcopyAllowed; self.graceSeconds = graceSeconds
        self.autoConverge = autoConverge; self.postcopyRestartSeconds = postcopyRestartSeconds
    }
}

/// What to do next, with the reason written to the task.
public enum ConvergenceDecision: Sendable, Equatable {
    case keepGoing
    case switchToPostcopy(reason: String)
    case abort(reason: String)
}

/// Shepherd's convergence policy. Pre-copy starts already tuned (uncapped bandwidth, the
/// downtime target, auto-converge and XBZRLE on). After the grace period it predicts, from the
/// measured dirty rate and bandwidth and following auto-converge's throttle steps, when pre-copy
/// will fit the downtime. It keeps pre-copy while that is within the timeout and not far worse
/// than post-copy — for a guest that outruns the link, whose measured rate is only a floor, while
/// the best case beats post-copy and throttling has not yet been seen failing at 40 % or more.
/// Otherwise it switches to post-copy (which always finishes: each page moves once) or, when
/// post-copy is not allowed, aborts early with the prediction instead of burning the link until
/// the timeout.
public enum ConvergencePolicy {
    public static func decide(_ sample: MigrationSample, settings: ConvergenceSettings, inPostcopy: Bool) -> ConvergenceDecision {
        // Post-copy always finishes (each page moves once) and cannot be undone: never abandon it.
        if inPostcopy { return .keepGoing }
        if sample.elapsedSeconds >= settings.timeoutSeconds {
            return .abort(reason: "the migration timeout of \(Int(settings.timeoutSeconds)) s passed with \(mib(sample.remainingBytes)) MiB still to send")
        }
        if sample.elapsedSeconds < settings.graceSeconds || sample.pass < 2 { return .keepGoing }
        if sample.expectedDowntimeMs > 0, sample.expectedDowntimeMs <= Double(settings.downtimeLimitMs) { return .keepGoing }
        // No bandwidth measured in this window (a stall between reads): no evidence either way.
        if sample.bandwidthBytesPerSecond <= 0 { return .keepGoing }
        let rates = "the guest dirties \(mib(sample.dirtyBytesPerSecond)) MiB/s\(throttled(sample.throttlePercent)) and the link carries \(mib(sample.bandwidthBytesPerSecond)) MiB/s"
        guard let prediction = predict(sample, settings: settings) else {
            let limit = settings.autoConverge.map { " within an hour, even with the guest throttled to \(Int($0.maxPercent)) %" } ?? " within an hour"
            return giveUp(settings, why: "\(rates): pre-copy cannot converge\(limit)")
        }
        let budget = settings.timeoutSeconds - sample.elapsedSeconds
        let precopy = "pre-copy needs about \(seconds(prediction.seconds)) s more (\(mib(sample.remainingBytes)) MiB left; \(rates)\(steps(prediction, sample)))"
        if prediction.seconds > budget {
            return giveUp(settings, why: "\(precopy) but \(Int(budget)) s remain")
        }
        guard settings.postcopyAllowed, let postcopy = postcopySeconds(sample, settings: settings) else { return .keepGoing }
        let compared = "post-copy about \(seconds(postcopy)) s; switching to post-copy"
        if outrunsLink(sample) {
            // The guest dirtied all it could while a pass was sent, so the rate QEMU measured is
            // its dirty set per pass, a floor: the prediction is a best case. Post-copy wins when
            // even that is slower, or once a period measured under a throttle of two steps past
            // the first (40 %) still shows the guest as fast as the link.
            if prediction.seconds > postcopy {
                return .switchToPostcopy(reason: "\(precopy), at best: the guest re-dirties each pass before it is sent; \(compared)")
            }
            let measuredUnder = sample.rateThrottlePercent ?? sample.throttlePercent
            if let auto = settings.autoConverge, measuredUnder >= auto.initialPercent + 2 * auto.incrementPercent {
                return .switchToPostcopy(reason: "auto-converge throttled the guest to \(Int(measuredUnder)) % and it still dirties \(mib(sample.dirtyBytesPerSecond)) MiB/s, as fast as the link carries (\(mib(sample.bandwidthBytesPerSecond)) MiB/s); \(compared)")
            }
            return .keepGoing
        }
        // Finishing within the budget, but slowly: post-copy moves each page once. Pre-copy stays
        // unless it is clearly worse, since post-copy leaves the guest depending on both hosts.
        if sample.elapsedSeconds > 2 * settings.graceSeconds, prediction.seconds > 4 * settings.graceSeconds, prediction.seconds > 2 * postcopy {
            return .switchToPostcopy(reason: "\(precopy), \(compared)")
        }
        return .keepGoing
    }

    /// Whether the guest dirties memory about as fast as the link sends it: each pass finds its
    /// whole dirty set dirty again, so the measured rate says how big that set is, not how fast
    /// the guest writes.
    public static func outrunsLink(_ sample: MigrationSample) -> Bool {
        sample.bandwidthBytesPerSecond > 0 && sample.dirtyBytesPerSecond >= 0.9 * sample.bandwidthBytesPerSecond
    }

    /// When pre-copy fits the downtime, and how hard auto-converge will have throttled the guest by then.
    public struct Prediction: Sendable, Equatable {
        public var seconds: Double
        public var throttlePercent: Double
    }

    /// Follows QEMU pass by pass: each pass sends what the last one left while the guest dirties
    /// more (at most its dirty set); with auto-converge every second sync period in which the guest
    /// dirtied more than the trigger share of what was sent throttles it one step harder.
    public static func predict(_ sample: MigrationSample, settings: ConvergenceSettings) -> Prediction? {
        let bandwidth = sample.bandwidthBytesPerSecond
        guard bandwidth > 0 else { return nil }
        let fits = bandwidth * Double(settings.downtimeLimitMs) / 1000
        var throttle = min(sample.throttlePercent, 99) / 100
        // What the guest would dirty unthrottled, from the rate and the throttle it was measured under.
        let unthrottled = sample.dirtyBytesPerSecond / (1 - min(sample.rateThrottlePercent ?? sample.throttlePercent, 99) / 100)
        let dirtySet = max(sample.peakRemainingBytes, sample.remainingBytes)
        var remaining = sample.remainingBytes
        var elapsed = 0.0
        var period = (seconds: 0.0, sent: 0.0, dirtied: 0.0, high: 0)
        var passes = 0
        while elapsed <= 3600, passes < 100_000 {
            passes += 1
            if remaining <= fits { return Prediction(seconds: elapsed, throttlePercent: throttle * 100) }
            let passSeconds = remaining / bandwidth
            let dirtied = min(dirtySet, unthrottled * (1 - throttle) * passSeconds)
            elapsed += passSeconds
            period.seconds += passSeconds; period.sent += remaining; period.dirtied += dirtied
            if let auto = settings.autoConverge, period.seconds >= 1 {
                if period.dirtied > period.sent * auto.triggerPercent / 100 {
                    period.high += 1
                    if period.high >= 2 {
                        period.high = 0
                        throttle = throttle == 0 ? auto.initialPercent / 100 : min(auto.maxPercent / 100, throttle + auto.incrementPercent / 100)
                    }
                }
                period.seconds = 0; period.sent = 0; period.dirtied = 0
            }
            remaining = dirtied
        }
        return nil
    }

    /// Post-copy from a restart: the target QEMU starts again and every non-zero page moves once.
    static func postcopySeconds(_ sample: MigrationSample, settings: ConvergenceSettings) -> Double? {
        guard sample.bandwidthBytesPerSecond > 0, sample.nonZeroBytes > 0 else { return nil }
        return settings.postcopyRestartSeconds + sample.nonZeroBytes / sample.bandwidthBytesPerSecond
    }

    private static func giveUp(_ settings: ConvergenceSettings, why: String) -> ConvergenceDecision {
        settings.postcopyAllowed ? .switchToPostcopy(reason: why + "; switching to post-copy") : .abort(reason: why + "; post-copy is not allowed for this VM")
    }

    private static func throttled(_ percent: Double) -> String { percent > 0 ? " (throttled \(Int(percent)) %)" : "" }

    private static func steps(_ prediction: Prediction, _ sample: MigrationSample) -> String {
        prediction.throttlePercent > sample.throttlePercent + 0.5 ? "; auto-converge throttling it to \(Int(prediction.throttlePercent.rounded())) %" : ""
    }

    private static func seconds(_ value: Double) -> String { value < 10 ? "\((value * 10).rounded() / 10)" : "\(Int(value.rounded()))" }

    private static func mib(_ bytes: Double) -> Int { Int((bytes / 1_048_576).rounded()) }
}
