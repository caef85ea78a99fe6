import Testing
import ShepherdCore
@testable import Scheduling

private func host(_ index: Int, memory: Int = 8192, cpu: Double = 10_000, _ state: HostState = .connected) -> SnapshotHost {
    SnapshotHost(name: "host-\(index)", state: state, cpuCapacityMHz: cpu, cores: 8, memoryMiB: memory)
}

private func vm(_ name: String, on host: Int?, memory: Int, reserved: Int? = nil, cpu: Double = 1000,
                protected: Bool = true) -> SnapshotVM {
    SnapshotVM(name: name, host: host, cpuDemandMHz: cpu, memoryMiB: memory, memoryReservationMiB: reserved,
               haPriority: protected ? .medium : nil)
}

private func refusal(_ result: Result<AdmissionReport, ShepherdError>) -> ShepherdError? {
    if case .failure(let error) = result { return error }
    return nil
}

@Suite("HA admission control")
struct AdmissionTests {
    // MARK: reserve a percentage

    /// 4 × (10000 MHz, 8192 MiB); 6 VMs of 4096 MiB and 4000 MHz use exactly the 75% a 25% reserve leaves.
    static let sixVMs = ClusterSnapshot(hosts: (0..<4).map { host($0) },
                                        vms: (0..<6).map { vm("v\($0)", on: $0 % 4, memory: 4096, cpu: 4000) })

    @Test("a cluster using exactly what the percentage leaves passes, with the numbers in the report")
    func percentPasses() throws {
        let report = try HAAdmission.check(Self.sixVMs, policy: .reservePercent(cpu: 25, memory: 25)).get()
        #expect(report.capacityHosts == [0, 1, 2, 3])
        #expect(report.memoryCapacityMiB == 32768 && report.memoryUsedMiB == 24576 && report.memoryKeptFreeMiB == 8192)
        #expect(report.cpuCapacityMHz == 40000 && report.cpuUsedMHz == 24000 && report.cpuKeptFreeMHz == 10000)
        #expect(report.worstLoss?.hosts == [0] && report.worstLoss?.protectedReservationMiB == 8192)
    }

    @Test("starting one more VM past the percentage is refused with the memory or CPU numbers", arguments: [
        (vm("new", on: nil, memory: 1024, cpu: 1000),
         "HA admission (reserve 25% CPU, 25% memory): memory reservations would reach 25600 MiB of 32768 MiB capacity; keeping 8192 MiB (25%) free allows 24576 MiB"),
        (vm("new", on: nil, memory: 512, reserved: 0, cpu: 7000),
         "HA admission (reserve 25% CPU, 25% memory): CPU demand would reach 31000 MHz of 40000 MHz capacity; keeping 10000 MHz (25%) free allows 30000 MHz"),
    ])
    func percentRefuses(starting: SnapshotVM, message: String) {
        let error = refusal(HAAdmission.check(Self.sixVMs, policy: .reservePercent(cpu: 25, memory: 25), starting: starting))
        #expect(error?.code == .insufficientResources)
        #expect(error?.message == message)
    }

    @Test("a host in maintenance is not capacity")
    func percentMaintenance() {
        var snap = Self.sixVMs
        snap.hosts[3].state = .maintenance
        snap.vms = snap.vms.map { var v = $0; if v.host == 3 { v.host = 0 }; return v }
        #expect(refusal(HAAdmission.check(snap, policy: .reservePercent(cpu: 0, memory: 25)))?.message
            == "HA admission (reserve 0% CPU, 25% memory): memory reservations would reach 24576 MiB of 24576 MiB capacity; keeping 6144 MiB (25%) free allows 18432 MiB")
    }

    @Test("percentages outside 0–100 are invalid fields")
    func percentInvalid() {
        let error = refusal(HAAdmission.check(Self.sixVMs, policy: .reservePercent(cpu: 120, memory: 12.5)))
        #expect(error == .invalidField("ha.reservePercent.cpu", "must be 0–100 percent, got 120"))
    }

    // MARK: dedicated failover hosts

    /// host-0: a 4096 + b 2048 protected, c 1024 not · host-1: d 2048 · host-2 empty · host-3 failover.
    static func failoverCluster(failoverMemory: Int = 8192) -> ClusterSnapshot {
        ClusterSnapshot(hosts: [host(0), host(1), host(2), host(3, memory: failoverMemory)],
                        vms: [vm("a", on: 0, memory: 4096), vm("b", on: 0, memory: 2048),
                              vm("c", on: 0, memory: 1024, protected: false), vm("d", on: 1, memory: 2048)])
    }

    @Test("failover hosts that hold the largest host's protected VMs pass; they are not capacity")
    func failoverPasses() throws {
        let report = try HAAdmission.check(Self.failoverCluster(), policy: .failoverHosts([3])).get()
        #expect(report.capacityHosts == [0, 1, 2])
        #expect(report.memoryCapacityMiB == 24576 && report.memoryUsedMiB == 9216)
        #expect(report.memoryKeptFreeMiB == 8192 && report.cpuKeptFreeMHz == 10000)
        #expect(report.worstLoss == HostLoss(hosts: [0], protectedVMs: 2, protectedReservationMiB: 6144, protectedCPUMHz: 2000,
                                             targetFreeMiB: 8192, targetFreeCPUMHz: 10000))
    }

    @Test("failover hosts smaller than the largest host's protected load are refused with both sums")
    func failoverTooSmall() {
        #expect(refusal(HAAdmission.check(Self.failoverCluster(failoverMemory: 4096), policy: .failoverHosts([3])))?.message
            == "HA admission (failover hosts: host-3): if host-0 fails, its 2 protected VMs need 6144 MiB reserved and 2000 MHz; the failover hosts have 4096 MiB and 10000 MHz free")
    }

    @Test("enough failover memory in sum but no single host for a big VM is refused")
    func failoverFragmented() {
        var snap = Self.failoverCluster(failoverMemory: 4096)
        snap.hosts.append(host(4, memory: 4096))
        snap.vms[3] = vm("big", on: 1, memory: 6144)
        #expect(refusal(HAAdmission.check(snap, policy: .failoverHosts([3, 4])))?.message
            == "HA admission (failover hosts: host-3, host-4): if host-1 fails, 1 protected VM (6144 MiB reserved) does not fit on the failover hosts (largest free 4096 MiB on host-3)")
    }

    @Test("a starting VM without a host is assumed where most memory is free, never on a failover host")
    func failoverAssumedHost() throws {
        let report = try HAAdmission.check(Self.failoverCluster(), policy: .failoverHosts([3]),
                                           starting: vm("new", on: nil, memory: 7000)).get()
        #expect(report.assumedHost == 2)
        #expect(report.worstLoss?.hosts == [2] && report.worstLoss?.protectedReservationMiB == 7000)
        #expect(refusal(HAAdmission.check(Self.failoverCluster(), policy: .failoverHosts([3]), starting: vm("new", on: nil, memory: 9000)))?.message
            == "HA admission (failover hosts: host-3): no usable host has room for 'new' (9000 MiB reserved, 1000 MHz; largest free 8192 MiB on host-2)")
    }

    @Test("a failover host that does not exist is an invalid field")
    func failoverInvalid() {
        #expect(refusal(HAAdmission.check(Self.failoverCluster(), policy: .failoverHosts([9])))
            == .invalidField("ha.failoverHosts", "host index 9 is not one of the 4 hosts"))
    }

    // MARK: host failures tolerated

    /// 4 × 8192 MiB. host-0: 3072 + 2048 · host-1: 4096 · host-2: 2048 · host-3: 1024, all protected.
    static let fourHosts = ClusterSnapshot(hosts: (0..<4).map { host($0) }, vms: [
        vm("p1", on: 0, memory: 3072), vm("p2", on: 0, memory: 2048), vm("p3", on: 1, memory: 4096),
        vm("p4", on: 2, memory: 2048), vm("p5", on: 3, memory: 1024),
    ])

    @Test("losing the worst host still lets its protected VMs restart: pass, with the loss in the report")
    func failuresPass() throws {
        let report = try HAAdmission.check(Self.fourHosts, policy: .hostFailuresTolerated(1)).get()
        #expect(report.worstLoss == HostLoss(hosts: [0], protectedVMs: 2, protectedReservationMiB: 5120, protectedCPUMHz: 2000,
                                             targetFreeMiB: 4096 + 6144 + 7168, targetFreeCPUMHz: 27000))
        #expect(report.memoryKeptFreeMiB == 5120)
    }

    @Test("a starting VM is assumed on the host with the most free memory")
    func failuresAssumedHost() throws {
        let report = try HAAdmission.check(Self.fourHosts, policy: .hostFailuresTolerated(1), starting: vm("new", on: nil, memory: 3072)).get()
        #expect(report.assumedHost == 3)
    }

    /// 3 × 4096 MiB. host-0: protected 1024 + 768 + 512 · host-1: 3584 unprotected · host-2: `other` unprotected.
    static func threeHosts(host2Load: Int, host1Load: Int = 3584) -> ClusterSnapshot {
        ClusterSnapshot(hosts: (0..<3).map { host($0, memory: 4096) }, vms: [
            vm("p1", on: 0, memory: 1024), vm("p2", on: 0, memory: 768), vm("p3", on: 0, memory: 512),
            vm("u1", on: 1, memory: host1Load, protected: false), vm("u2", on: 2, memory: host2Load, protected: false),
        ])
    }

    @Test("protected VMs that do not fit after a loss are refused with how many, how much and the largest room", arguments: [
        // FFD: p1 1024 → host-2; p2 768 fits nowhere (512, 0); p3 512 → host-1.
        (AdmissionTests.threeHosts(host2Load: 3072), "HA admission (host failures tolerated: 1): if host-0 fails, 1 of 3 protected VMs (768 of 2304 MiB reserved) does not fit on the remaining hosts (largest free 512 MiB on host-1)"),
        (AdmissionTests.threeHosts(host2Load: 3900, host1Load: 4000), "HA admission (host failures tolerated: 1): if host-0 fails, 3 protected VMs (2304 MiB reserved) do not fit on the remaining hosts (largest free 196 MiB on host-2)"),
    ])
    func failuresRefuse(snapshot: ClusterSnapshot, message: String) {
        let error = refusal(HAAdmission.check(snapshot, policy: .hostFailuresTolerated(1)))
        #expect(error?.code == .insufficientResources)
        #expect(error?.message == message)
    }

    @Test("losing the largest host is checked too, not only the one with the most protected memory")
    func failuresLargestHost() {
        // host-1 has the most protected memory (7 × 1024) and its loss is fine; host-0 is the biggest
        // and its single 6144 MiB VM fits nowhere else.
        let snap = ClusterSnapshot(hosts: [host(0, memory: 16384), host(1), host(2)],
                                   vms: [vm("big", on: 0, memory: 6144)] + (0..<7).map { (i: Int) in vm("s\(i)", on: 1, memory: 1024, cpu: 100) }
                                       + [vm("u", on: 2, memory: 4096, protected: false)])
        #expect(refusal(HAAdmission.check(snap, policy: .hostFailuresTolerated(1)))?.message
            == "HA admission (host failures tolerated: 1): if host-0 fails, 1 protected VM (6144 MiB reserved) does not fit on the remaining hosts (largest free 4096 MiB on host-2)")
    }

    @Test("the largest host is checked even when no other ranking picks it")
    func failuresOnlyCapacityRankingCatches() {
        // Free: host-0 1536, host-1 1024, host-2 5632. Protected + free (the spare a loss removes):
        // host-0 7680, host-1 8192, host-2 5632; protected CPU + free CPU: 9900, 10000, 9900. So every
        // ranking but capacity loses host-1, whose 14 × 512 MiB fit (3 on host-0, 11 on host-2);
        // losing host-0 leaves no host with 6144 MiB.
        let snap = ClusterSnapshot(hosts: [host(0, memory: 16384), host(1), host(2)],
                                   vms: [vm("big", on: 0, memory: 6144, cpu: 100), vm("u0", on: 0, memory: 8704, cpu: 100, protected: false)]
                                       + (0..<14).map { (i: Int) in vm("s\(i)", on: 1, memory: 512, cpu: 100) }
                                       + [vm("u2", on: 2, memory: 2560, cpu: 100, protected: false)])
        #expect(refusal(HAAdmission.check(snap, policy: .hostFailuresTolerated(1)))?.message
            == "HA admission (host failures tolerated: 1): if host-0 fails, 1 protected VM (6144 MiB reserved) does not fit on the remaining hosts (largest free 5632 MiB on host-2)")
    }

    @Test("a starting VM that breaks the tolerance is refused")
    func failuresStartRefused() {
        let snap = ClusterSnapshot(hosts: [host(0), host(1)], vms: [vm("a", on: 0, memory: 4096), vm("b", on: 1, memory: 2048)])
        #expect((try? HAAdmission.check(snap, policy: .hostFailuresTolerated(1)).get()) != nil)
        // "new" goes to host-1 (6144 free); losing host-1 then leaves 4096 MiB on host-0 for 3072 + 2048.
        #expect(refusal(HAAdmission.check(snap, policy: .hostFailuresTolerated(1), starting: vm("new", on: nil, memory: 3072)))?.message
            == "HA admission (host failures tolerated: 1): if host-1 fails, 1 of 2 protected VMs (2048 of 5120 MiB reserved) does not fit on the remaining hosts (largest free 1024 MiB on host-0)")
    }

    @Test("reservations need real memory; the rest of a VM's memory may use the overcommit ratio", arguments: [
        (1.5, 1024, "largest room within the overcommit ratio 150% is 2048 MiB on host-1"),
        (2.0, 1024, nil),
        (2.0, 4096, "largest free 3072 MiB on host-1"),
    ] as [(Double, Int, String?)])
    func failuresOvercommit(ratio: Double, reserved: Int, shortfall: String?) {
        let snap = ClusterSnapshot(hosts: [host(0, memory: 4096), host(1, memory: 4096)],
                                   vms: [vm("p", on: 0, memory: 4096, reserved: reserved),
                                         vm("u", on: 1, memory: 4096, reserved: 1024, protected: false)],
                                   memoryOvercommitRatio: ratio)
        let error = refusal(HAAdmission.check(snap, policy: .hostFailuresTolerated(1)))
        if let shortfall {
            #expect(error?.message == "HA admission (host failures tolerated: 1): if host-0 fails, 1 protected VM (\(reserved) MiB reserved) does not fit on the remaining hosts (\(shortfall))")
        } else {
            #expect(error == nil)
        }
    }

    @Test("CPU demand must fit the survivors' CPU capacity")
    func failuresCPU() {
        let snap = ClusterSnapshot(hosts: [host(0, memory: 4096, cpu: 2000), host(1, memory: 4096, cpu: 2000)],
                                   vms: [vm("p", on: 0, memory: 1024, cpu: 1500), vm("u", on: 1, memory: 1024, cpu: 1000, protected: false)])
        #expect(refusal(HAAdmission.check(snap, policy: .hostFailuresTolerated(1)))?.message
            == "HA admission (host failures tolerated: 1): if host-0 fails, 1 protected VM (1024 MiB reserved) does not fit on the remaining hosts (largest free CPU 1000 MHz on host-1)")
    }

    @Test("two failures name both hosts")
    func failuresTwo() {
        // Each host holds 3072 protected of 8192; losing host-0 and host-1 leaves 5120 free on host-2 for 6144.
        let snap = ClusterSnapshot(hosts: (0..<3).map { host($0) }, vms: (0..<3).map { (i: Int) in vm("p\(i)", on: i, memory: 3072) })
        #expect(refusal(HAAdmission.check(snap, policy: .hostFailuresTolerated(2)))?.message
            == "HA admission (host failures tolerated: 2): if host-0 and host-1 fail, 1 of 2 protected VMs (3072 of 6144 MiB reserved) does not fit on the remaining hosts (largest free 2048 MiB on host-2)")
        #expect((try? HAAdmission.check(snap, policy: .hostFailuresTolerated(1)).get()) != nil)
    }

    @Test("tolerating as many failures as there are usable hosts is refused; zero always passes", arguments: [
        (3, "HA admission (host failures tolerated: 3): the cluster has 3 usable hosts; tolerating 3 failures needs at least 4"),
        (0, nil),
    ] as [(Int, String?)])
    func failuresCount(n: Int, message: String?) {
        let snap = ClusterSnapshot(hosts: (0..<3).map { host($0) }, vms: [vm("p", on: 0, memory: 8192)])
        #expect(refusal(HAAdmission.check(snap, policy: .hostFailuresTolerated(n)))?.message == message)
    }
}
