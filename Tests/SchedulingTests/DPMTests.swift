import Testing
import ShepherdCore
@testable import Scheduling

/// 4000 MHz over 2 cores, 4096 MiB.
private func host(_ index: Int, _ state: HostState = .connected, power: SnapshotHostPower = .on) -> SnapshotHost {
    SnapshotHost(name: "host-\(index)", state: state, power: power, cpuCapacityMHz: 4000, cores: 2, memoryMiB: 4096)
}

private func vm(_ name: String, on host: Int?, cpu: Double, active: Int? = nil) -> SnapshotVM {
    SnapshotVM(name: name, host: host, cpuDemandMHz: cpu, memoryMiB: 512, memoryActiveMiB: active)
}

/// Idle power of host i: 100 + 10·i W.
private func idleWatts(_ host: Int) -> Double { 100 + 10 * Double(host) }

/// DPM over a snapshot whose forecast is each VM's current demand; every host has been low for 5 rounds unless told.
private func plan(_ snap: ClusterSnapshot, threshold: Int = 3, _ settings: DPMSettings = DPMSettings(lowWatermark: 0.3),
                  held: Set<Int> = [], roundsLow: [Int]? = nil, unresolved: [Int] = [], mipsPerWatt: [Double] = []) -> DPMPlan {
    DPM.plan(snap, drs: DRSSettings(threshold: threshold), settings: settings, forecastMHz: snap.vms.map(\.cpuDemandMHz),
             held: snap.vms.indices.map { held.contains($0) },
             roundsLow: roundsLow ?? Array(repeating: 5, count: snap.hosts.count), unresolved: unresolved,
             idleWatts: idleWatts, mipsPerWatt: { mipsPerWatt.indices.contains($0) ? mipsPerWatt[$0] : 0 })
}

/// Each VM's host once the plan's evacuations are done.
private func hostsAfter(_ snap: ClusterSnapshot, _ plan: DPMPlan) -> [Int?] {
    var hosts = snap.vms.map(\.host)
    for move in plan.evacuations { hosts[move.vm] = move.to }
    return hosts
}

/// host-0 runs a (300 MHz, 2000 MiB active) and b (200 MHz, 1000 MiB): 12.5 %, under the 30 % watermark.
/// host-1 runs x (2000 MHz), host-2 runs y (3200 MHz): room for 1600 and 400 under the 3600 MHz ceiling.
/// host-3 is on and idle, host-4 is in standby.
private func lowHost(x: Double = 2000, y: Double = 3200, host3: SnapshotHostPower = .on) -> ClusterSnapshot {
    ClusterSnapshot(hosts: [host(0), host(1), host(2), host(3, power: host3), host(4, power: .standby)], vms: [
        vm("a", on: 0, cpu: 300, active: 2000), vm("b", on: 0, cpu: 200, active: 1000),
        vm("x", on: 1, cpu: x), vm("y", on: 2, cpu: y),
    ])
}

@Suite("DPM")
struct DPMTests {
    @Test("DPM does nothing when it is off or DRS is conservative", arguments: [
        (DPMSettings.Mode.off, 3, [Int]()), (.off, 3, [2]), (.automatic, 1, []), (.automatic, 1, [2]), (.manual, 1, [2]),
    ])
    func offOrConservative(mode: DPMSettings.Mode, threshold: Int, unresolved: [Int]) {
        let result = plan(lowHost(), threshold: threshold, DPMSettings(mode: mode, lowWatermark: 0.3), unresolved: unresolved)
        #expect(result == DPMPlan())
    }

    @Test("the same cluster with DPM on and DRS at threshold 3 acts", arguments: [
        (DPMSettings.Mode.automatic, [Int](), [0], [Int]()), (.manual, [], [0], []), (.automatic, [2], [], [4]), (.manual, [2], [], [4]),
    ])
    func onActs(mode: DPMSettings.Mode, unresolved: [Int], powerOff: [Int], powerOn: [Int]) {
        let result = plan(lowHost(), DPMSettings(mode: mode, lowWatermark: 0.3), unresolved: unresolved)
        #expect(result.powerOff == powerOff)
        #expect(result.powerOn == powerOn)
    }

    // MARK: power on

    /// host-0 is overloaded, host-5 is low (and would be emptied were nothing unresolved).
    /// host-1 and host-2 are standby; host-3 is standby but in maintenance, host-4 is off.
    static let withStandby = ClusterSnapshot(
        hosts: [host(0), host(1, power: .standby), host(2, power: .standby), host(3, .maintenance, power: .standby),
                host(4, power: .off), host(5)],
        vms: [vm("big", on: 0, cpu: 3900), vm("small", on: 5, cpu: 100)])

    @Test("each host DRS could not relieve wakes one standby host, most MHz per watt first", arguments: [
        ([99, 20, 30, 50, 60, 99], [0], [2]),
        ([99, 20, 30, 50, 60, 99], [0, 5], [2, 1]),
        ([99, 20, 30, 50, 60, 99], [0, 5, 3], [2, 1]),
        ([99, 40, 30, 50, 60, 99], [0, 5], [1, 2]),
        ([99, 30, 30, 50, 60, 99], [0], [1]),
    ] as [([Double], [Int], [Int])])
    func powerOn(mipsPerWatt: [Double], unresolved: [Int], expected: [Int]) {
        let result = plan(Self.withStandby, unresolved: unresolved, mipsPerWatt: mipsPerWatt)
        #expect(result.powerOn == expected)
        #expect(result.powerOff.isEmpty)
        #expect(result.evacuations.isEmpty)
    }

    // MARK: power off

    @Test("a host low for long enough is emptied onto busy hosts, one evacuation per VM, and powered off")
    func powerOff() {
        // a (300) → host-2 (3500, fullest under 3600); b (200) no longer fits there → host-1 (2200). Never host-3 (idle).
        let result = plan(lowHost())
        #expect(result.powerOff == [0])
        #expect(result.powerOn.isEmpty)
        #expect(result.evacuations == [
            DRSMove(vm: 0, from: 0, to: 2, reason: .powerOff(hostLoad: 0.125), gain: 100, costMiB: 2000),
            DRSMove(vm: 1, from: 0, to: 1, reason: .powerOff(hostLoad: 0.125), gain: 100, costMiB: 1000),
        ])
        #expect(result.evacuations.allSatisfy { !$0.isMandatory })
        #expect(result.evacuations.first?.description == "vm 0: host 0 → 2: empties host 0 (forecast load 12 %) so DPM can power it off")
    }

    @Test("hysteresis: a host is emptied only after roundsBelow low rounds", arguments: [
        (0, [Int]()), (1, []), (2, [0]), (3, [0]),
    ])
    func hysteresis(rounds: Int, powerOff: [Int]) {
        let result = plan(lowHost(), DPMSettings(lowWatermark: 0.3, roundsBelow: 2), roundsLow: [rounds, 9, 9, 9, 9])
        #expect(result.powerOff == powerOff)
        #expect(result.evacuations.count == powerOff.count * 2)
    }

    @Test("a host is emptied only while its forecast is under the low watermark", arguments: [
        (0.125, [Int]()), (0.126, [0]),
    ])
    func watermark(lowWatermark: Double, powerOff: [Int]) {
        #expect(plan(lowHost(), DPMSettings(lowWatermark: lowWatermark)).powerOff == powerOff)
    }

    @Test("an evacuation copying more than maxEvacuationMiB is not worth it", arguments: [
        (2999, [Int]()), (3000, [0]),
    ])
    func evacuationCost(maxMiB: Int, powerOff: [Int]) {
        let result = plan(lowHost(), DPMSettings(lowWatermark: 0.3, maxEvacuationMiB: maxMiB))
        #expect(result.powerOff == powerOff)
        #expect(result.evacuations.map(\.costMiB).reduce(0, +) == (powerOff.isEmpty ? 0 : 3000))
    }

    enum Kept: String, CaseIterable, CustomTestStringConvertible {
        case heldVM, excludedVM, onlyOneVMFits, onlyIdleHostHasRoom, onlyStandbyHostHasRoom
        var testDescription: String { rawValue }
    }

    @Test("a host stays on, with no partial evacuation, when", arguments: Kept.allCases)
    func kept(_ why: Kept) {
        var snap = lowHost()
        var held: Set<Int> = []
        switch why {
        case .heldVM: held = [1]
        case .excludedVM: snap.vms[0].drsExcluded = true
        // a fits on host-2 (3500) but then b fits on no busy host (host-1 at 3500 + 200 > 3600).
        case .onlyOneVMFits: snap = lowHost(x: 3500)
        // Neither busy host takes a (3800 > 3600); host-3 is on but idle and must not receive VMs.
        case .onlyIdleHostHasRoom: snap = lowHost(x: 3500, y: 3500)
        case .onlyStandbyHostHasRoom: snap = lowHost(x: 3500, y: 3500, host3: .standby)
        }
        let result = plan(snap, held: held)
        #expect(result.powerOff == [])
        #expect(result.evacuations == [])
        #expect(result.powerOn == [])
    }

    /// host-0 runs v0, v1 (50 MHz each), host-1 v2 (300), host-2 v3 (200): all low. host-3 runs v4 (2000).
    static let threeLow = ClusterSnapshot(hosts: (0..<4).map { host($0) }, vms: [
        vm("v0", on: 0, cpu: 50), vm("v1", on: 0, cpu: 50), vm("v2", on: 1, cpu: 300), vm("v3", on: 2, cpu: 200),
        vm("v4", on: 3, cpu: 2000),
    ])

    @Test("at most maxHostsPerRound hosts are emptied, fewest VMs then least forecast first", arguments: [
        (1, [2], [3]), (2, [2, 1], [3, 2]), (3, [2, 1, 0], [3, 2, 0, 1]), (50, [2, 1, 0], [3, 2, 0, 1]),
    ])
    func maxHostsPerRound(max: Int, powerOff: [Int], evacuated: [Int]) {
        let result = plan(Self.threeLow, DPMSettings(lowWatermark: 0.3, maxHostsPerRound: max))
        #expect(result.powerOff == powerOff)
        #expect(result.evacuations.map(\.vm) == evacuated)
        // Every VM goes to host-3, the fullest busy host; each move's gain is its own host's idle power.
        #expect(result.evacuations.allSatisfy { $0.to == 3 })
        #expect(result.evacuations.map(\.gain) == result.evacuations.map { idleWatts($0.from) })
    }

    @Test("a host emptied this round takes none of the next host's VMs")
    func emptiedHostIsNoTarget() {
        // host-0's a (300) → host-2 (3300). host-1's b (1000) fits only on host-0, which is being emptied.
        let snap = ClusterSnapshot(hosts: (0..<3).map { host($0) }, vms: [
            vm("a", on: 0, cpu: 300), vm("b", on: 1, cpu: 1000), vm("c", on: 2, cpu: 3000),
        ])
        let result = plan(snap)
        #expect(result.powerOff == [0])
        #expect(result.evacuations.map(\.vm) == [0])
        #expect(result.evacuations.map(\.to) == [2])
    }

    @Test("one round's evacuations add up on their targets")
    func evacuationsAddUp() {
        // host-2 (3100) has room for 500 under 3600: host-0's a (300) takes it to 3400, so host-1's b (300) no longer fits.
        let snap = ClusterSnapshot(hosts: (0..<3).map { host($0) }, vms: [
            vm("a", on: 0, cpu: 300), vm("b", on: 1, cpu: 300), vm("c", on: 2, cpu: 3100),
        ])
        let result = plan(snap)
        #expect(result.powerOff == [0])
        #expect(result.evacuations.map(\.vm) == [0])
        #expect(result.evacuations.map(\.to) == [2])
    }

    @Test("no VM is left on a host the plan powers off, even one that received VMs earlier in the round")
    func noVMStrandedOnPoweredOffHost() {
        // host-0 (a, 400 MHz) goes first (one VM): host-2 (3300) has no room, so a → host-1 (200 → 600).
        // host-1's own b1, b2 (100 each) then fit on host-2; a, now on host-1, must not be powered off with it.
        let snap = ClusterSnapshot(hosts: (0..<3).map { host($0) }, vms: [
            vm("a", on: 0, cpu: 400), vm("b1", on: 1, cpu: 100), vm("b2", on: 1, cpu: 100), vm("c", on: 2, cpu: 3300),
        ])
        let result = plan(snap)
        let after = hostsAfter(snap, result)
        let stranded = after.indices.filter { vm in after[vm].map { result.powerOff.contains($0) } ?? false }
        #expect(stranded == [], "powerOff \(result.powerOff), evacuations \(result.evacuations.map(\.description))")
        #expect(result.powerOff.first == 0)
    }
}
