import Testing
@testable import Scheduling

private let mib = 1_048_576.0

private func sample(at seconds: Double, pass: Int = 3, remaining: Double = 200, dirty: Double = 50, bandwidth: Double = 100,
                    expectedDowntime: Double = 500) -> MigrationSample {
    MigrationSample(elapsedSeconds: seconds, pass: pass, remainingBytes: remaining * mib, transferredBytes: 1000 * mib,
                    dirtyBytesPerSecond: dirty * mib, bandwidthBytesPerSecond: bandwidth * mib, expectedDowntimeMs: expectedDowntime)
}

@Suite("Convergence policy")
struct ConvergenceTests {
    let settings = ConvergenceSettings(downtimeLimitMs: 30, timeoutSeconds: 300, postcopyAllowed: true, graceSeconds: 3)

    @Test("pre-copy gets its grace period and first passes before any prediction")
    func grace() {
        #expect(ConvergencePolicy.decide(sample(at: 1, dirty: 500), settings: settings, inPostcopy: false) == .keepGoing)
        #expect(ConvergencePolicy.decide(sample(at: 10, pass: 1, dirty: 500), settings: settings, inPostcopy: false) == .keepGoing)
    }

    @Test("a guest that dirties faster than the link carries switches to post-copy with the numbers")
    func dirtierThanLink() {
        guard case .switchToPostcopy(let reason) = ConvergencePolicy.decide(sample(at: 5, dirty: 120, bandwidth: 100), settings: settings, inPostcopy: false) else {
            Issue.record("expected post-copy"); return
        }
        #expect(reason.contains("dirties 120 MiB/s") && reason.contains("carries 100 MiB/s"))
    }

    @Test("without post-copy the same case aborts early, saying why")
    func abortWithoutPostcopy() {
        var strict = settings
        strict.postcopyAllowed = false
        guard case .abort(let reason) = ConvergencePolicy.decide(sample(at: 5, dirty: 120, bandwidth: 100), settings: strict, inPostcopy: false) else {
            Issue.record("expected abort"); return
        }
        #expect(reason.contains("post-copy is not allowed"))
    }

    @Test("a migration about to fit the downtime keeps going")
    func converging() {
        #expect(ConvergencePolicy.decide(sample(at: 5, remaining: 2, dirty: 10, expectedDowntime: 20), settings: settings, inPostcopy: false) == .keepGoing)
        #expect(ConvergencePolicy.decide(sample(at: 4, remaining: 100, dirty: 10, bandwidth: 100), settings: settings, inPostcopy: false) == .keepGoing)
    }

    @Test("a migration that would finish only after the timeout gives up on pre-copy")
    func tooSlow() {
        let slow = sample(at: 10, remaining: 30_000, dirty: 20, bandwidth: 100)
        guard case .switchToPostcopy(let reason) = ConvergencePolicy.decide(slow, settings: settings, inPostcopy: false) else {
            Issue.record("expected post-copy"); return
        }
        #expect(reason.contains("375 s more"))
    }

    @Test("the timeout ends a pre-copy migration")
    func timeout() {
        guard case .abort(let reason) = ConvergencePolicy.decide(sample(at: 300), settings: settings, inPostcopy: false) else {
            Issue.record("expected abort"); return
        }
        #expect(reason.contains("timeout of 300 s"))
    }

    @Test("post-copy is never abandoned, not even at the timeout: it cannot be undone")
    func postcopyNeverAborts() {
        #expect(ConvergencePolicy.decide(sample(at: 400), settings: settings, inPostcopy: true) == .keepGoing)
    }

    @Test("once in post-copy nothing else is decided")
    func postcopySticks() {
        #expect(ConvergencePolicy.decide(sample(at: 20, dirty: 500), settings: settings, inPostcopy: true) == .keepGoing)
    }

    @Test("prediction: remaining memory over the net rate, none when the guest keeps up with the link")
    func prediction() {
        #expect(ConvergencePolicy.predictedSeconds(sample(at: 5, remaining: 100, dirty: 50, bandwidth: 100)) == 2)
        #expect(ConvergencePolicy.predictedSeconds(sample(at: 5, dirty: 95, bandwidth: 100)) == nil)
    }
}
