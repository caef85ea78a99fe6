import Testing
import ShepherdCore
@testable import Scheduling

private func host(_ index: Int, memory: Int = 8192, cpu: Double = 10_000, power: SnapshotHostPower = .on,
                  model: String? = nil) -> SnapshotHost {
    SnapshotHost(name: "host-\(index)", power: power, cpuCapacityMHz: cpu, cores: 8, memoryMiB: memory, cpuModel: model)
}

private func vm(_ name: String, on host: Int, memory: Int, reserved: Int? = nil, cpu: Double = 1000,
                priority: HAPriority? = .high, model: String? = nil) -> SnapshotVM {
    SnapshotVM(name: name, host: host, cpuDemandMHz: cpu, memoryMiB: memory, memoryReservationMiB: reserved,
               haPriority: priority, cpuModel: model)
}

private func placed(_ pairs: [(Int, Int)]) -> [HARestartPlacement] { pairs.map { HARestartPlacement(vm: $0.0, host: $0.1) } }

/// host-0 fails; host-1 empty, host-2 runs u (6144 MiB), host-3 runs w (2048 MiB); a and b (1024 MiB each) restart.
private func twoToRestart(_ rules: [PlacementRule]) -> ClusterSnapshot {
    ClusterSnapshot(hosts: (0..<4).map { host($0) }, vms: [
        vm("a", on: 0, memory: 1024), vm("b", on: 0, memory: 1024),
        vm("u", on: 2, memory: 6144, priority: nil), vm("w", on: 3, memory: 2048, priority: nil),
    ], rules: rules)
}

@Suite("HA restart planning")
struct HARestartTests {
    @Test("protected VMs restart by priority, then larger reservation, each on the least loaded host; unprotected ones stay down")
    func priorityOrder() {
        let snap = ClusterSnapshot(hosts: (0..<4).map { host($0) }, vms: [
            vm("lowA", on: 0, memory: 1024, priority: .low), vm("highB", on: 0, memory: 1024),
            vm("medC", on: 0, memory: 4096, priority: .medium), vm("highD", on: 0, memory: 2048),
            vm("E", on: 0, memory: 1024, priority: nil),
        ])
        // highD → host-1 (ties: lowest index); highB → host-2 (0.125 vs 0.375); medC → host-3 (0.5);
        // lowA → host-2 (0.25 against 0.375 and 0.625).
        #expect(HARestartPlanner.plan(snap, failedHosts: [0]) == HARestartPlan(placements: placed([(3, 1), (1, 2), (2, 3), (0, 2)])))
    }

    @Test("mandatory rules are honoured against the VMs already placed; should-rules only break load ties", arguments: [
        ([], [(0, 1), (1, 1)]),
        ([.keepApart(name: "ab", vms: [0, 1])], [(0, 1), (1, 3)]),
        ([.keepTogether(name: "with-u", vms: [0, 1, 2])], [(0, 2), (1, 2)]),
        ([.vmToHosts(name: "b-on-3", vms: [1], hosts: [3], mandatory: true)], [(0, 1), (1, 3)]),
        ([.vmAwayFromHosts(name: "off-1", vms: [0, 1], hosts: [1])], [(0, 3), (1, 3)]),
        ([.vmToHosts(name: "a-prefers-3", vms: [0], hosts: [3], mandatory: false)], [(0, 1), (1, 1)]),
    ] as [([PlacementRule], [(Int, Int)])])
    func rules(rules: [PlacementRule], expected: [(Int, Int)]) {
        #expect(HARestartPlanner.plan(twoToRestart(rules), failedHosts: [0]) == HARestartPlan(placements: placed(expected)))
    }

    @Test("between equally loaded hosts the one breaking fewer should-rules wins", arguments: [
        ([], 1),
        ([.vmToHosts(name: "prefers-2", vms: [0], hosts: [2], mandatory: false)], 2),
    ] as [([PlacementRule], Int)])
    func softTie(rules: [PlacementRule], expected: Int) {
        let snap = ClusterSnapshot(hosts: (0..<3).map { host($0) }, vms: [vm("a", on: 0, memory: 1024)], rules: rules)
        #expect(HARestartPlanner.plan(snap, failedHosts: [0]).placements == placed([(0, expected)]))
    }

    @Test("failover hosts are chosen first, however loaded, while the VM fits there", arguments: [(1024, 2), (6144, 1)])
    func failoverFirst(memory: Int, expected: Int) {
        let snap = ClusterSnapshot(hosts: (0..<3).map { host($0) },
                                   vms: [vm("a", on: 0, memory: memory), vm("u", on: 2, memory: 4096, priority: nil)])
        #expect(HARestartPlanner.plan(snap, failedHosts: [0], failoverHosts: [2]).placements == placed([(0, expected)]))
    }

    @Test("the higher priority takes the room; the other is unplaced with the numbers")
    func priorityWinsRoom() {
        let snap = ClusterSnapshot(hosts: [host(0), host(1, memory: 4096)],
                                   vms: [vm("low", on: 0, memory: 3072, priority: .low), vm("high", on: 0, memory: 3072)])
        #expect(HARestartPlanner.plan(snap, failedHosts: [0]) == HARestartPlan(
            placements: placed([(1, 1)]),
            unplaced: [HARestartFailure(vm: 0, reason: "no surviving host can restart 'low' (3072 MiB reserved, 1000 MHz): of 1 usable host, 1 short of room (largest free 1024 MiB on host-1)")]))
    }

    @Test("an unplaced VM's reason counts each cause: CPU model, rule, room")
    func everyCause() {
        var snap = ClusterSnapshot(hosts: [host(0), host(1, model: "EPYC"), host(2), host(3)],
                                   vms: [vm("big", on: 0, memory: 4096, model: "Skylake"), vm("u", on: 3, memory: 7168, priority: nil)],
                                   rules: [.vmAwayFromHosts(name: "not-2", vms: [0], hosts: [2])])
        #expect(HARestartPlanner.plan(snap, failedHosts: [0]).unplaced == [HARestartFailure(vm: 0, reason:
            "no surviving host can restart 'big' (4096 MiB reserved, 1000 MHz): of 3 usable hosts, 1 without CPU model 'Skylake', 1 excluded by rule 'not-2' and 1 short of room (largest free 1024 MiB on host-3)")])
        snap.hosts[1].cpuModel = "Skylake"
        #expect(HARestartPlanner.plan(snap, failedHosts: [0]) == HARestartPlan(placements: placed([(0, 1)])))
    }

    @Test("CPU demand must fit the host's capacity")
    func cpu() {
        let snap = ClusterSnapshot(hosts: [host(0), host(1, cpu: 2000)],
                                   vms: [vm("p", on: 0, memory: 1024), vm("u", on: 1, memory: 1024, cpu: 1500, priority: nil)])
        #expect(HARestartPlanner.plan(snap, failedHosts: [0]).unplaced.map(\.reason)
            == ["no surviving host can restart 'p' (1024 MiB reserved, 1000 MHz): of 1 usable host, 1 short of room (largest free CPU 500 MHz on host-1)"])
    }

    @Test("with no usable host left, the reason says so")
    func nothingLeft() {
        let snap = ClusterSnapshot(hosts: [host(0), host(1, power: .standby)], vms: [vm("a", on: 0, memory: 1024)])
        #expect(HARestartPlanner.plan(snap, failedHosts: [0]).unplaced.map(\.reason)
            == ["no surviving host can restart 'a' (1024 MiB reserved, 1000 MHz): none of the 2 hosts is usable (1 failed)"])
    }

    @Test("reservations need real memory; the rest may use the overcommit ratio", arguments: [
        (1.0, 512, 2048, "largest room within the overcommit ratio 100% is 0 MiB on host-1"),
        (1.5, 512, 2048, nil),
        (2.0, 4096, 4096, "largest free 3072 MiB on host-1"),
    ] as [(Double, Int, Int, String?)])
    func overcommit(ratio: Double, reserved: Int, memory: Int, shortfall: String?) {
        let snap = ClusterSnapshot(hosts: [host(0, memory: 4096), host(1, memory: 4096)],
                                   vms: [vm("p", on: 0, memory: memory, reserved: reserved),
                                         vm("u", on: 1, memory: 4096, reserved: 1024, priority: nil)],
                                   memoryOvercommitRatio: ratio)
        let plan = HARestartPlanner.plan(snap, failedHosts: [0])
        if let shortfall {
            let needs = reserved == memory ? "\(reserved) MiB reserved" : "\(reserved) MiB reserved of \(memory) MiB"
            #expect(plan == HARestartPlan(unplaced: [HARestartFailure(vm: 0, reason:
                "no surviving host can restart 'p' (\(needs), 1000 MHz): of 1 usable host, 1 short of room (\(shortfall))")]))
        } else {
            #expect(plan == HARestartPlan(placements: placed([(0, 1)])))
        }
    }
}
