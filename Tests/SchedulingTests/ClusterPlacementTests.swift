import Testing
import ShepherdCore
@testable import Scheduling

@Suite("Cluster placement")
struct ClusterPlacementTests {
    /// Three 4-core 4000 MHz hosts of 4096 MiB; host-0 has 2048 MiB of VMs, host-1 1024, host-2 none.
    func cluster(ratio: Double = 1.0, rules: [PlacementRule] = []) -> ClusterSnapshot {
        ClusterSnapshot(hosts: (0..<3).map { SnapshotHost(name: "host-\($0)", cpuCapacityMHz: 4000, cores: 4, memoryMiB: 4096) },
                        vms: [SnapshotVM(name: "a", host: 0, cpuDemandMHz: 1000, memoryMiB: 2048),
                              SnapshotVM(name: "b", host: 1, cpuDemandMHz: 500, memoryMiB: 1024),
                              SnapshotVM(name: "new", host: nil, cpuDemandMHz: 500, memoryMiB: 1024)],
                        rules: rules, memoryOvercommitRatio: ratio)
    }

    @Test("the least loaded host after placement wins")
    func leastLoaded() {
        #expect(ClusterPlacement.place(2, in: cluster()).host == 2)
    }

    @Test("each filter rejects with its numbers", arguments: [
        (SnapshotHost(name: "m", state: .maintenance, cpuCapacityMHz: 4000, cores: 4, memoryMiB: 4096), "not usable (maintenance, power on)"),
        (SnapshotHost(name: "s", power: .standby, cpuCapacityMHz: 4000, cores: 4, memoryMiB: 4096), "not usable (connected, power standby)"),
        (SnapshotHost(name: "c", cpuCapacityMHz: 400, cores: 4, memoryMiB: 4096), "one vCPU needs 500 MHz; a core has 100 MHz"),
        (SnapshotHost(name: "r", cpuCapacityMHz: 4000, cores: 4, memoryMiB: 512), "memory reservation 1024 MiB; 512 MiB of real memory unreserved"),
        (SnapshotHost(name: "x", cpuCapacityMHz: 4000, cores: 4, memoryMiB: 4096, cpuModel: "Haswell"), "CPU model: the VM needs EPYC, the host offers Haswell"),
    ])
    func filters(host: SnapshotHost, reason: String) {
        var snapshot = ClusterSnapshot(hosts: [host], vms: [SnapshotVM(name: "v", host: nil, cpuDemandMHz: 500, memoryMiB: 1024, cpuModel: "EPYC")])
        snapshot.memoryOvercommitRatio = 1
        let decision = ClusterPlacement.place(0, in: snapshot)
        #expect(decision.host == nil)
        #expect(decision.rejections[0]?.map(\.description).contains(reason) == true, "\(decision.rejections)")
    }

    @Test("overcommit lets memory exceed the host up to the ratio, but reservations need real memory")
    func overcommit() {
        var snapshot = cluster(ratio: 1.5)
        snapshot.vms[2].memoryMiB = 3072
        snapshot.vms[2].memoryReservationMiB = 1024
        snapshot.hosts[2].state = .maintenance
        // host-0: 2048 + 3072 = 5120 > 4096 but ≤ 6144; reservations 2048 + 1024 ≤ 4096.
        let decision = ClusterPlacement.place(2, in: snapshot)
        #expect(decision.host == 1)   // host-1 ends at (1024 + 3072) / 4096 < host-0's (2048 + 3072) / 4096
        snapshot.memoryOvercommitRatio = 1.0
        let strict = ClusterPlacement.place(2, in: snapshot)
        #expect(strict.host == 1)
        #expect(strict.rejections[0]?.contains(.overcommit(askedMiB: 3072, roomMiB: 2048, ratio: 1.0)) == true)
    }

    @Test("a mandatory rule filters a host; a should-rule only breaks ties")
    func rules() {
        let apart = cluster(rules: [.keepApart(name: "apart", vms: [2, 1])])
        let decision = ClusterPlacement.place(2, in: apart)
        #expect(decision.host == 2)
        #expect(decision.rejections[1]?.first.map { "\($0)" }?.contains("apart") == true)
        var tie = cluster(rules: [.vmToHosts(name: "prefer-0", vms: [2], hosts: [0], mandatory: false)])
        tie.vms[0].memoryMiB = 1024   // host-0 and host-1 now tie with host-2 … all at 1024 or 0
        tie.vms[1].host = 2; tie.vms[1].memoryMiB = 1024
        // host-0 (1024) and host-2 (1024) tie on load; the should-rule picks host-0 over host-2; host-1 (0) is lighter.
        #expect(ClusterPlacement.place(2, in: tie).host == 1)
        tie.hosts[1].state = .maintenance
        #expect(ClusterPlacement.place(2, in: tie).host == 0)
    }
}
