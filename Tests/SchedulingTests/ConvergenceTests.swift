import Testing
@testable import Scheduling

private let mib = 1_048_576.0

private func sample(at seconds: Double, pass: Int = 3, remaining: Double = 200, dirty: Double = 50, bandwidth: Double = 100,
                    expectedDowntime: Double = 500, throttle: Double = 0, peak: Double = 0, nonZero: Double = 0) -> MigrationSample {
    MigrationSample(elapsedSeconds: seconds, pass: pass, remainingBytes: remaining * mib, transferredBytes: 1000 * mib,
                    dirtyBytesPerSecond: dirty * mib, bandwidthBytesPerSecond: bandwidth * mib, expectedDowntimeMs: expectedDowntime,
                    throttlePercent: throttle, peakRemainingBytes: peak * mib, nonZeroBytes: nonZero * mib)
}

@Suite("Convergence policy")
struct ConvergenceTests {
    let settings = ConvergenceSettings(downtimeLimitMs: 30, timeoutSeconds: 300, postcopyAllowed: true, graceSeconds: 3)
    /// The same without auto-converge: the guest is never throttled.
    var unthrottled: ConvergenceSettings { var plain = settings; plain.autoConverge = nil; return plain }

    @Test("pre-copy gets its grace period and first passes before any prediction")
    func grace() {
        #expect(ConvergencePolicy.decide(sample(at: 1, dirty: 500), settings: settings, inPostcopy: false) == .keepGoing)
        #expect(ConvergencePolicy.decide(sample(at: 10, pass: 1, dirty: 500), settings: settings, inPostcopy: false) == .keepGoing)
    }

    @Test("without auto-converge a guest that dirties faster than the link carries switches to post-copy with the numbers")
    func dirtierThanLink() {
        guard case .switchToPostcopy(let reason) = ConvergencePolicy.decide(sample(at: 5, dirty: 120, bandwidth: 100), settings: unthrottled, inPostcopy: false) else {
            Issue.record("expected post-copy"); return
        }
        #expect(reason.contains("dirties 120 MiB/s") && reason.contains("carries 100 MiB/s") && reason.contains("cannot converge"), "\(reason)")
    }

    @Test("a guest still faster than the link with auto-converge at its limit cannot converge either, and the reason says so")
    func throttleExhausted() {
        guard case .switchToPostcopy(let reason) = ConvergencePolicy.decide(sample(at: 5, dirty: 120, bandwidth: 100, throttle: 99),
                                                                            settings: settings, inPostcopy: false) else {
            Issue.record("expected post-copy"); return
        }
        #expect(reason.contains("throttled 99 %") && reason.contains("even with the guest throttled to 99 %"), "\(reason)")
    }

    @Test("without post-copy the same case aborts early, saying why")
    func abortWithoutPostcopy() {
        var strict = unthrottled
        strict.postcopyAllowed = false
        guard case .abort(let reason) = ConvergencePolicy.decide(sample(at: 5, dirty: 120, bandwidth: 100), settings: strict, inPostcopy: false) else {
            Issue.record("expected abort"); return
        }
        #expect(reason.contains("post-copy is not allowed"))
    }

    @Test("auto-converge's throttle steps are followed: a guest twice as fast as the link converges once throttled past half")
    func throttleSteps() throws {
        let fast = sample(at: 5, remaining: 100, dirty: 200, bandwidth: 100, peak: 100)
        #expect(ConvergencePolicy.predict(fast, settings: unthrottled) == nil)
        let prediction = try #require(ConvergencePolicy.predict(fast, settings: settings))
        #expect(prediction.throttlePercent >= 50 && prediction.throttlePercent <= 99, "\(prediction)")
        // Two sync periods of a 1 s pass per step from 20 % to at least 50 %: four steps, at least 7 s.
        #expect(prediction.seconds > 7 && prediction.seconds < 30, "\(prediction)")
        // Measured under a throttle already at 50 %, the guest's own rate is twice what it shows.
        let later = try #require(ConvergencePolicy.predict(sample(at: 5, remaining: 100, dirty: 100, bandwidth: 100, throttle: 50, peak: 100),
                                                           settings: settings))
        #expect(later.throttlePercent > 50 && later.seconds < prediction.seconds, "\(later) vs \(prediction)")
    }

    @Test("pre-copy that auto-converge will finish in time keeps going when post-copy would not be much quicker")
    func throttledPrecopyKept() {
        let busy = sample(at: 8, remaining: 100, dirty: 70, bandwidth: 100, peak: 100, nonZero: 2000)
        #expect(ConvergencePolicy.decide(busy, settings: settings, inPostcopy: false) == .keepGoing)
        // A guest that outruns the link: its best case is kept while post-copy would be slower still.
        let fast = sample(at: 8, remaining: 100, dirty: 200, bandwidth: 100, peak: 100, nonZero: 2000)
        #expect(ConvergencePolicy.decide(fast, settings: settings, inPostcopy: false) == .keepGoing)
    }

    @Test("slow pre-copy gives way to post-copy when post-copy is far quicker, with both predictions")
    func postcopyQuicker() {
        let slow = sample(at: 8, remaining: 1000, dirty: 70, bandwidth: 100, peak: 1000, nonZero: 300)
        guard case .switchToPostcopy(let reason) = ConvergencePolicy.decide(slow, settings: settings, inPostcopy: false) else {
            Issue.record("expected post-copy"); return
        }
        #expect(reason.contains("pre-copy needs about") && reason.contains("post-copy about 4.0 s"), "\(reason)")
        // Without post-copy the same migration goes on: it finishes within the timeout.
        var strict = settings
        strict.postcopyAllowed = false
        #expect(ConvergencePolicy.decide(slow, settings: strict, inPostcopy: false) == .keepGoing)
    }

    @Test("a guest that outruns the link goes to post-copy once even its best case is slower, or once throttling shows no effect")
    func outrunningGuest() {
        let fast = sample(at: 4, remaining: 100, dirty: 200, bandwidth: 100, peak: 100, nonZero: 100)
        #expect(ConvergencePolicy.outrunsLink(fast))
        guard case .switchToPostcopy(let reason) = ConvergencePolicy.decide(fast, settings: settings, inPostcopy: false) else {
            Issue.record("expected post-copy"); return
        }
        #expect(reason.contains("at best") && reason.contains("auto-converge throttling it to") && reason.contains("post-copy about 2.0 s"), "\(reason)")
        // Throttled 40 % and still as fast as the link: the floor it measured says nothing more.
        let stuck = sample(at: 9, remaining: 100, dirty: 100, bandwidth: 100, throttle: 40, peak: 100, nonZero: 2000)
        guard case .switchToPostcopy(let stuckReason) = ConvergencePolicy.decide(stuck, settings: settings, inPostcopy: false) else {
            Issue.record("expected post-copy"); return
        }
        #expect(stuckReason.contains("throttled the guest to 40 %"), "\(stuckReason)")
        // Just raised to 40 %, the rate shown is still the 30 % period's: not yet evidence.
        var raised = stuck
        raised.rateThrottlePercent = 30
        #expect(ConvergencePolicy.decide(raised, settings: settings, inPostcopy: false) == .keepGoing)
    }

    @Test("a reading without bandwidth (a stall between two reads) decides nothing")
    func noBandwidth() {
        #expect(ConvergencePolicy.decide(sample(at: 8, dirty: 50, bandwidth: 0), settings: settings, inPostcopy: false) == .keepGoing)
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

    @Test("prediction: pass after pass, about the remaining memory over the net rate; none when the guest keeps up with the link")
    func prediction() throws {
        let seconds = try #require(ConvergencePolicy.predict(sample(at: 5, remaining: 100, dirty: 50, bandwidth: 100), settings: settings)?.seconds)
        #expect(abs(seconds - 1.97) < 0.01, "\(seconds)")   // 1 + 0.5 + … until 3 MiB (30 ms at 100 MiB/s) is left
        #expect(ConvergencePolicy.predict(sample(at: 5, dirty: 100, bandwidth: 100), settings: unthrottled) == nil)
        #expect(ConvergencePolicy.predict(sample(at: 5, dirty: 50, bandwidth: 0), settings: settings) == nil)
    }
}
