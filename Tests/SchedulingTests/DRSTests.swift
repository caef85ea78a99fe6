import Testing
import ShepherdCore
@testable import Scheduling

/// 4000 MHz over 2 cores (2000 MHz per core), 4096 MiB unless told.
private func host(_ index: Int, _ state: HostState = .connected, power: SnapshotHostPower = .on,
                  cpu: Double = 4000, cores: Int = 2, memory: Int = 4096) -> SnapshotHost {
    SnapshotHost(name: "host-\(index)", state: state, power: power, cpuCapacityMHz: cpu, cores: cores, memoryMiB: memory)
}

private func vm(_ name: String, on host: Int?, cpu: Double, memory: Int = 512, active: Int? = nil,
                excluded: Bool = false) -> SnapshotVM {
    SnapshotVM(name: name, host: host, cpuDemandMHz: cpu, memoryMiB: memory, memoryActiveMiB: active, drsExcluded: excluded)
}

/// DRS over a snapshot whose forecast is each VM's current demand.
private func recommend(_ snap: ClusterSnapshot, _ settings: DRSSettings = DRSSettings(threshold: 3),
                       held: Set<Int> = []) -> (moves: [DRSMove], unresolved: [Int]) {
    DRS.recommend(snap, settings: settings, forecastMHz: snap.vms.map(\.cpuDemandMHz),
                  held: snap.vms.indices.map { held.contains($0) })
}

private func near(_ a: Double, _ b: Double) -> Bool { abs(a - b) < 1e-9 }

@Suite("DRS settings")
struct DRSSettingsTests {
    @Test("each threshold keeps hosts under its ceiling; 1 never balances", arguments: [
        (1, nil), (2, 0.95), (3, 0.90), (4, 0.85), (5, 0.80),
    ] as [(Int, Double?)])
    func ceiling(threshold: Int, ceiling: Double?) {
        #expect(DRSSettings(threshold: threshold).ceiling == ceiling)
    }

    @Test("thresholds 1…5 and baselines at 0 and 100 % are valid", arguments: 1...5)
    func validBounds(threshold: Int) throws {
        try DRSSettings(threshold: threshold, baselineCPU: 0, baselineMemory: 1).validate()
        try DRSSettings(threshold: threshold, baselineCPU: 1, baselineMemory: 0).validate()
    }

    @Test("an out-of-range threshold or baseline is an invalid field named in the message", arguments: [
        (DRSSettings(threshold: 0), "drs-threshold: 0 is not 1 (conservative) … 5 (aggressive)"),
        (DRSSettings(threshold: 6), "drs-threshold: 6 is not 1 (conservative) … 5 (aggressive)"),
        (DRSSettings(baselineCPU: 1.5), "drs-baseline cpu: 150 % is not within 0–100 %"),
        (DRSSettings(baselineCPU: -0.25), "drs-baseline cpu: -25 % is not within 0–100 %"),
        (DRSSettings(baselineMemory: 1.25), "drs-baseline mem: 125 % is not within 0–100 %"),
        (DRSSettings(baselineMemory: -0.5), "drs-baseline mem: -50 % is not within 0–100 %"),
    ])
    func invalid(settings: DRSSettings, message: String) {
        let error = #expect(throws: ShepherdError.self) { try settings.validate() }
        #expect(error?.code == .invalidField)
        #expect(error?.message == message)
    }

    @Test("a NaN or infinite baseline is refused, not a crash")
    func nonFiniteBaseline() async {
        // validate() formats the bad value with Int(value * 100), which traps for NaN and ±∞.
        await #expect(processExitsWith: .success) {
            if (try? DRSSettings(baselineCPU: .nan).validate()) != nil { fatalError("NaN accepted") }
        }
        await #expect(processExitsWith: .success) {
            if (try? DRSSettings(baselineMemory: .infinity).validate()) != nil { fatalError("∞ accepted") }
        }
    }
}

@Suite("Demand forecast")
struct DemandForecastTests {
    @Test("with fewer than three samples the forecast is the current demand", arguments: [[], [0.9], [0.9, 0.1]] as [[Double]])
    func tooFewSamples(history: [Double]) {
        #expect(DemandForecast.upper(current: 0.3, historyNewestFirst: history) == 0.3)
    }

    /// History 0.1, 0.3, 0.1, 0.3: mean 0.2, population σ 0.1.
    @Test("the forecast is the mean plus k standard deviations of the history", arguments: [
        (2.0, 0.4), (1.0, 0.3), (0.5, 0.25), (0.0, 0.2),
    ])
    func meanPlusSigma(sigmas: Double, expected: Double) {
        let upper = DemandForecast.upper(current: 0.05, historyNewestFirst: [0.1, 0.3, 0.1, 0.3], sigmas: sigmas)
        #expect(near(upper, expected), "\(upper)")
    }

    @Test("the forecast never falls below the current demand")
    func neverBelowCurrent() {
        #expect(DemandForecast.upper(current: 0.7, historyNewestFirst: [0.1, 0.3, 0.1, 0.3]) == 0.7)
        #expect(DemandForecast.upper(current: 0.39, historyNewestFirst: [0.1, 0.3, 0.1, 0.3]) > 0.39 + 1e-6)
    }

    /// 0.2, 0.9, 0.2, 0.9: mean 0.55, σ 0.35, mean + 2σ = 1.25.
    @Test("the forecast is capped at the VM's maximum")
    func capped() {
        #expect(DemandForecast.upper(current: 0.5, historyNewestFirst: [0.2, 0.9, 0.2, 0.9]) == 1)
        #expect(DemandForecast.upper(current: 1.4, historyNewestFirst: [0.1, 0.1, 0.1]) == 1)
    }

    /// 0.5, 0.5, 0.5, 1.0, 0.0: the newest three have mean 0.5 and σ 0; all five have mean 0.5 and σ √0.1.
    @Test("only the newest `window` samples count", arguments: [
        (12, 0.5 + 0.1.squareRoot()), (5, 0.5 + 0.1.squareRoot()), (4, 0.625 + 0.046875.squareRoot()), (3, 0.5), (2, 0.1),
    ])
    func window(window: Int, expected: Double) {
        let upper = DemandForecast.upper(current: 0.1, historyNewestFirst: [0.5, 0.5, 0.5, 1.0, 0.0], window: window, sigmas: 1)
        #expect(near(upper, expected), "\(upper)")
    }
}

@Suite("DRS recommendations")
struct DRSTests {
    // MARK: threshold 1 and mandatory moves

    @Test("threshold 1 balances nothing, even a host far over every ceiling")
    func conservativeBalancesNothing() {
        // host-0 at 3900 of 4000 MHz (97.5 %); host-1 empty; host-2 at 500.
        let snap = ClusterSnapshot(hosts: (0..<3).map { host($0) }, vms: [
            vm("a", on: 0, cpu: 2000), vm("b", on: 0, cpu: 1900), vm("c", on: 2, cpu: 500),
        ])
        let result = recommend(snap, DRSSettings(threshold: 1, baselineCPU: 0, baselineMemory: 0))
        #expect(result.moves.isEmpty)
        #expect(result.unresolved.isEmpty)
        // The same cluster at threshold 3 does balance: the fixture is overloaded.
        #expect(recommend(snap, DRSSettings(threshold: 3)).moves.count == 1)
    }

    @Test("a host in maintenance is emptied at every threshold, onto the busy host", arguments: 1...5)
    func maintenance(threshold: Int) {
        // host-0 in maintenance runs a; host-1 runs b (1000 MHz); host-2 is on and empty.
        let snap = ClusterSnapshot(hosts: [host(0, .maintenance), host(1), host(2)], vms: [
            vm("a", on: 0, cpu: 1000, active: 300), vm("b", on: 1, cpu: 1000),
        ])
        let result = recommend(snap, DRSSettings(threshold: threshold))
        #expect(result.moves == [DRSMove(vm: 0, from: 0, to: 1, reason: .maintenance, gain: 0, costMiB: 300)])
        #expect(result.moves.first?.isMandatory == true)
        #expect(result.moves.first?.description == "vm 0: host 0 → 1: host 0 is entering maintenance")
        #expect(result.unresolved.isEmpty)
    }

    @Test("a mandatory move may fill a host past the DRS ceiling but not past its capacity", arguments: [
        (3000.0, 1), (3001.0, 3),
    ])
    func mandatoryIgnoresCeiling(busyLoad: Double, target: Int) {
        // a (1000 MHz) leaves host-0; host-1 ends at 4000 or 4001 MHz; host-2 (3100) never fits; host-3 is empty.
        let snap = ClusterSnapshot(hosts: [host(0, .maintenance), host(1), host(2), host(3)], vms: [
            vm("a", on: 0, cpu: 1000), vm("x", on: 1, cpu: busyLoad), vm("y", on: 2, cpu: 3100),
        ])
        let result = recommend(snap, DRSSettings(threshold: 1))
        #expect(result.moves.map(\.to) == [target])
        #expect(result.moves.allSatisfy { $0.isMandatory })
    }

    @Test("VMs a keep-apart rule finds on one host are split at every threshold", arguments: [1, 3, 5])
    func keepApart(threshold: Int) {
        // a, b, c share host-0; host-1 runs w (1000), host-2 runs x (1200).
        // a → host-2 (fullest: 1700); b cannot join a, → host-1; c then stays alone.
        let snap = ClusterSnapshot(hosts: (0..<3).map { host($0) }, vms: [
            vm("a", on: 0, cpu: 500, active: 100), vm("b", on: 0, cpu: 500, active: 200), vm("c", on: 0, cpu: 500),
            vm("w", on: 1, cpu: 1000), vm("x", on: 2, cpu: 1200),
        ], rules: [.keepApart(name: "apart", vms: [0, 1, 2])])
        let result = recommend(snap, DRSSettings(threshold: threshold))
        #expect(result.moves == [
            DRSMove(vm: 0, from: 0, to: 2, reason: .rule("apart"), gain: 0, costMiB: 100),
            DRSMove(vm: 1, from: 0, to: 1, reason: .rule("apart"), gain: 0, costMiB: 200),
        ])
        #expect(result.moves.allSatisfy { $0.isMandatory })
        #expect(result.moves.first?.description == "vm 0: host 0 → 2: rule 'apart' is broken where it runs")
    }

    // MARK: baseline

    /// host-0 at 3700 of 4000 MHz (92.5 %, over the 90 % ceiling), 1024 MiB (25 %); host-1 at 1000 MHz.
    static let slightlyOver = ClusterSnapshot(hosts: (0..<2).map { host($0) }, vms: [
        vm("a", on: 0, cpu: 2000, active: 1024), vm("b", on: 0, cpu: 1700, active: 256), vm("c", on: 1, cpu: 1000),
    ])

    @Test("no balancing while every host is under the baseline", arguments: [
        (0.95, 0.95, DRSSettings.Metric.both, 0), (0.92, 0.95, .both, 1), (0.92, 0.95, .memory, 0),
        (0.95, 0.2, .both, 1), (0.95, 0.2, .cpu, 0),
    ])
    func baseline(cpu: Double, memory: Double, metric: DRSSettings.Metric, moves: Int) {
        let result = recommend(Self.slightlyOver, DRSSettings(metric: metric, threshold: 3, baselineCPU: cpu, baselineMemory: memory))
        #expect(result.moves.count == moves)
        #expect(result.unresolved.isEmpty)
        if moves == 1 {
            // b is the cheapest VM clearing the 100 MHz excess; host-1 ends at 2700.
            #expect(result.moves == [DRSMove(vm: 1, from: 0, to: 1, reason: .overload(hostLoad: 0.925, ceiling: 0.9),
                                             gain: 100, costMiB: 256)])
        }
    }

    // MARK: overload

    /// host-0: a 2000 (1024 MiB active), b 1000 (512), c 800 (256), d 100 (64) = 3900 MHz, 300 over the 3600 ceiling.
    /// host-1 runs 2000, host-2 2700, host-3 is empty, host-4 runs 2900.
    static func overloaded(excluded: Set<Int> = []) -> ClusterSnapshot {
        ClusterSnapshot(hosts: (0..<5).map { host($0) }, vms: [
            vm("a", on: 0, cpu: 2000, active: 1024, excluded: excluded.contains(0)),
            vm("b", on: 0, cpu: 1000, active: 512, excluded: excluded.contains(1)),
            vm("c", on: 0, cpu: 800, active: 256, excluded: excluded.contains(2)),
            vm("d", on: 0, cpu: 100, active: 64, excluded: excluded.contains(3)),
            vm("e", on: 1, cpu: 2000), vm("f", on: 2, cpu: 2700), vm("g", on: 4, cpu: 2900),
        ])
    }

    @Test("an overloaded host sheds the cheapest VM that clears the excess, onto the busy host it leaves fullest under the ceiling")
    func cheapestClearingBestFit() {
        // c (800 MHz, 256 MiB) is the cheapest of a, b, c (d clears only 100 of 300). host-4 would reach 3700 > 3600;
        // host-2 ends at 3500 (87.5 %), beating host-1 (2800) and the empty host-3.
        let result = recommend(Self.overloaded())
        #expect(result.moves == [DRSMove(vm: 2, from: 0, to: 2, reason: .overload(hostLoad: 0.975, ceiling: 0.9),
                                         gain: 300, costMiB: 256)])
        #expect(result.moves.first?.isMandatory == false)
        #expect(result.moves.first?.description == "vm 2: host 0 → 2: forecast load 97 % > ceiling 90 %; frees 300 MHz for 256 MiB copied")
        #expect(result.unresolved.isEmpty)
    }

    @Test("held and DRS-excluded VMs are never moved", arguments: [
        // c held or excluded: b (1000) is next; only host-1 has room (3000).
        ([2], [], [DRSMove(vm: 1, from: 0, to: 1, reason: .overload(hostLoad: 0.975, ceiling: 0.9), gain: 300, costMiB: 512)], [Int]()),
        ([], [2], [DRSMove(vm: 1, from: 0, to: 1, reason: .overload(hostLoad: 0.975, ceiling: 0.9), gain: 300, costMiB: 512)], []),
        // Only d may move: it goes to host-4 (3000, the fullest) and host-0 stays at 3800: unresolved.
        ([1, 2], [0], [DRSMove(vm: 3, from: 0, to: 4, reason: .overload(hostLoad: 0.975, ceiling: 0.9), gain: 100, costMiB: 64)], [0]),
        ([0, 1, 2, 3], [], [], [0]),
        ([], [0, 1, 2, 3], [], [0]),
    ] as [(Set<Int>, Set<Int>, [DRSMove], [Int])])
    func heldAndExcluded(held: Set<Int>, excluded: Set<Int>, moves: [DRSMove], unresolved: [Int]) {
        let result = recommend(Self.overloaded(excluded: excluded), held: held)
        #expect(result.moves == moves)
        #expect(result.unresolved == unresolved)
    }

    @Test("a host no other host has room for is reported unresolved")
    func noRoom() {
        // host-0 at 3900; host-1 at 3500 takes neither a (2000) nor b (1900) under 3600.
        let snap = ClusterSnapshot(hosts: (0..<2).map { host($0) }, vms: [
            vm("a", on: 0, cpu: 2000), vm("b", on: 0, cpu: 1900), vm("c", on: 1, cpu: 3500),
        ])
        let result = recommend(snap)
        #expect(result.moves.isEmpty)
        #expect(result.unresolved == [0])
    }

    @Test("standby, powered-off, disconnected and maintenance hosts are not targets")
    func unusableTargets() {
        let snap = ClusterSnapshot(hosts: [host(0), host(1, power: .standby), host(2, power: .off), host(3, .disconnected),
                                           host(4, .maintenance)],
                                   vms: [vm("a", on: 0, cpu: 2000), vm("b", on: 0, cpu: 1900), vm("m", on: 4, cpu: 100)])
        let result = recommend(snap, DRSSettings(threshold: 2))
        // m leaves the maintenance host for host-0, the only usable one (4000 MHz at the 1.0 mandatory ceiling).
        #expect(result.moves == [DRSMove(vm: 2, from: 4, to: 0, reason: .maintenance, gain: 0, costMiB: 512)])
        #expect(result.unresolved == [0])
    }

    @Test("an empty powered-on host is used when no busy host fits")
    func emptyHostWhenNoBusyFits() {
        // host-0 at 3900 (excess 300): a (800) is cheapest; host-1 (3000) would reach 3800; host-2 is empty.
        let snap = ClusterSnapshot(hosts: (0..<3).map { host($0) }, vms: [
            vm("a", on: 0, cpu: 800, active: 100), vm("b", on: 0, cpu: 3100, active: 1000), vm("x", on: 1, cpu: 3000),
        ])
        #expect(recommend(snap).moves.map(\.to) == [2])
    }

    @Test("a busy host is preferred to an empty one even when the empty one would end fuller")
    func busyBeforeEmpty() {
        // a (800) leaves host-0 (excess 300). host-1 (busy, 2000 of 4000) would end at 70 %; host-2 (empty, 1000 MHz
        // on 1 core) would end at 80 %, still under its 900 MHz ceiling, but no host is woken up for a VM that fits elsewhere.
        let snap = ClusterSnapshot(hosts: [host(0), host(1), host(2, cpu: 1000, cores: 1)], vms: [
            vm("a", on: 0, cpu: 800, active: 100), vm("b", on: 0, cpu: 3100, active: 1000), vm("x", on: 1, cpu: 2000),
        ])
        #expect(recommend(snap).moves.map(\.to) == [1])
    }

    @Test("a target may end exactly at the ceiling but not above it", arguments: [(2800.0, 1), (2801.0, 2)])
    func ceilingBoundary(busyLoad: Double, target: Int) {
        // host-0 at 3700 (excess 100): a (800) is cheapest; host-1 ends at 3600 or 3601; host-2 is empty.
        let snap = ClusterSnapshot(hosts: (0..<3).map { host($0) }, vms: [
            vm("a", on: 0, cpu: 800, active: 100), vm("b", on: 0, cpu: 2900, active: 1000), vm("x", on: 1, cpu: busyLoad),
        ])
        let result = recommend(snap)
        #expect(result.moves.map(\.to) == [target])
        #expect(result.moves.map(\.vm) == [0])
        #expect(result.unresolved.isEmpty)
    }

    @Test("a target's cores must each hold one vCPU's forecast", arguments: [
        (8, 2), (4, 2), (3, 1), (2, 1),
    ])
    func perCoreSpeed(cores: Int, target: Int) {
        // a (1 vCPU, 1200 MHz) is the cheapest clearing VM. host-1 (4000 MHz over `cores`: 500/1000/1333/2000 per core)
        // ends fullest (3200) but takes a only when a core reaches 1200 MHz; else host-2 (2200).
        let snap = ClusterSnapshot(hosts: [host(0), host(1, cores: cores), host(2)], vms: [
            vm("a", on: 0, cpu: 1200, active: 100), vm("b", on: 0, cpu: 2600, active: 2000),
            vm("x", on: 1, cpu: 2000), vm("y", on: 2, cpu: 1000),
        ])
        let result = recommend(snap)
        #expect(result.moves.map(\.vm) == [0])
        #expect(result.moves.map(\.to) == [target])
    }

    @Test("when no single VM clears the excess the largest goes first; each move states its gain and cost")
    func largestFirstThenCheapest() {
        // host-0 at 5400 (135 %): excess 1800 > every VM. a (1500) → host-1 (tie with host-2, lower index);
        // then 3900 (97.5 %), excess 300: c is the cheapest clearing VM (300 MiB), → host-1 (2800, busy).
        let snap = ClusterSnapshot(hosts: (0..<3).map { host($0) }, vms: [
            vm("a", on: 0, cpu: 1500, active: 700), vm("b", on: 0, cpu: 1400, active: 900),
            vm("c", on: 0, cpu: 1300, active: 300), vm("d", on: 0, cpu: 1200, active: 600),
        ])
        let result = recommend(snap)
        #expect(result.moves == [
            DRSMove(vm: 0, from: 0, to: 1, reason: .overload(hostLoad: 1.35, ceiling: 0.9), gain: 1500, costMiB: 700),
            DRSMove(vm: 2, from: 0, to: 1, reason: .overload(hostLoad: 0.975, ceiling: 0.9), gain: 300, costMiB: 300),
        ])
        #expect(result.moves.map(\.description) == [
            "vm 0: host 0 → 1: forecast load 135 % > ceiling 90 %; frees 1500 MHz for 700 MiB copied",
            "vm 2: host 0 → 1: forecast load 97 % > ceiling 90 %; frees 300 MHz for 300 MiB copied",
        ])
        #expect(result.unresolved.isEmpty)
    }

    @Test("the most loaded host is relieved first; gains are the excess each move clears", arguments: [
        (4, [500.0, 100.0]), (5, [700.0, 300.0]),
    ])
    func mostLoadedFirst(threshold: Int, gains: [Double]) {
        // host-0 at 3500 (87.5 %), host-1 at 3900 (97.5 %); host-2 runs 500.
        // Ceiling 85 % (3400): host-1's excess is 500, d (900) is its cheapest clearing VM; then host-0's 100, b (500).
        // Ceiling 80 % (3200): excesses 700 and 300; the same VMs clear them. Both go to host-2 (1400, then 1900).
        let snap = ClusterSnapshot(hosts: (0..<3).map { host($0) }, vms: [
            vm("a", on: 0, cpu: 3000, active: 2000), vm("b", on: 0, cpu: 500, active: 100),
            vm("c", on: 1, cpu: 3000, active: 2000), vm("d", on: 1, cpu: 900, active: 100),
            vm("e", on: 2, cpu: 500),
        ])
        let result = recommend(snap, DRSSettings(threshold: threshold))
        #expect(result.moves.map(\.vm) == [3, 1])
        #expect(result.moves.map(\.from) == [1, 0])
        #expect(result.moves.map(\.to) == [2, 2])
        #expect(result.moves.map(\.gain) == gains)
        #expect(result.unresolved.isEmpty)
    }

    @Test("a host is relieved by smaller VMs when the only VM clearing the excess alone fits nowhere")
    func fallBackToSmallerVMs() {
        // host-0 at 4700: excess 1100; only a (2000) clears it alone, and no host has 2000 free under 3600.
        // b (900) → host-2 (2500 → 3400), then excess 200: c (900) → host-1 (2000 → 2900). Resolved, no host to wake.
        let snap = ClusterSnapshot(hosts: (0..<3).map { host($0) }, vms: [
            vm("a", on: 0, cpu: 2000, active: 100), vm("b", on: 0, cpu: 900, active: 200),
            vm("c", on: 0, cpu: 900, active: 300), vm("d", on: 0, cpu: 900, active: 400),
            vm("x", on: 1, cpu: 2000), vm("y", on: 2, cpu: 2500),
        ])
        let result = recommend(snap)
        #expect(result.unresolved == [])
        #expect(result.moves.map(\.vm) == [1, 2])
        #expect(result.moves.map(\.to) == [2, 1])
    }
}

@Suite("DRS over time")
struct DRSPingPongTests {
    @Test("an hour of alternating load moves a VM at most once per hold time, never straight back")
    func noPingPong() {
        // Two 2-core hosts; three 1-vCPU VMs on host-0; VM 0's load alternates every round.
        var snapshot = ClusterSnapshot(hosts: (0..<2).map { SnapshotHost(name: "host-\($0)", cpuCapacityMHz: 2000, cores: 2, memoryMiB: 8192) },
                                       vms: (0..<3).map { SnapshotVM(name: "vm-\($0)", host: 0, cpuDemandMHz: 600, memoryMiB: 512) })
        let settings = DRSSettings(threshold: 3, baselineCPU: 0, holdRounds: 6)
        var lastMoved = [Int](repeating: -100, count: 3)
        var moves: [(round: Int, vm: Int, to: Int)] = []
        for round in 0..<12 {   // 12 rounds of 5 minutes
            let hot = round % 2 == 0
            let forecast = [hot ? 1000.0 : 200.0, 600, 600]
            for vm in 0..<3 { snapshot.vms[vm].cpuDemandMHz = forecast[vm] }
            let held = (0..<3).map { round - lastMoved[$0] < settings.holdRounds }
            let result = DRS.recommend(snapshot, settings: settings, forecastMHz: forecast, held: held)
            for move in result.moves {
                snapshot.vms[move.vm].host = move.to
                lastMoved[move.vm] = round
                moves.append((round, move.vm, move.to))
            }
        }
        #expect(!moves.isEmpty, "the first hot round overloads host-0 (2200 of 2000 MHz)")
        for vm in 0..<3 {
            let rounds = moves.filter { $0.vm == vm }.map(\.round)
            for (a, b) in zip(rounds, rounds.dropFirst()) { #expect(b - a >= settings.holdRounds, "vm-\(vm) moved in rounds \(rounds)") }
        }
        #expect(moves.count <= 3, "\(moves)")
    }
}
