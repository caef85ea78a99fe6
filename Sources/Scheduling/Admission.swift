import ShepherdCore

/// How the cluster keeps room to restart protected VMs (FusionCompute 资源预留方式).
public enum HAAdmissionPolicy: Sendable, Equatable {
    /// Percent (0–100) of the usable hosts' CPU and memory kept free.
    case reservePercent(cpu: Double, memory: Double)
    /// Dedicated failover hosts: they run no VMs and do not count as capacity for normal VMs.
    case failoverHosts(Set<Int>)
    /// The cluster restarts the protected VMs of this many failed hosts.
    case hostFailuresTolerated(Int)
}

/// The loss of some hosts and what it would put on the others.
public struct HostLoss: Sendable, Equatable {
    public var hosts: [Int]
    /// The HA-protected VMs that ran there and must restart elsewhere.
    public var protectedVMs: Int
    public var protectedReservationMiB: Int
    public var protectedCPUMHz: Double
    /// Real memory (not yet reserved) and CPU free on the hosts that would take them.
    public var targetFreeMiB: Int
    public var targetFreeCPUMHz: Double

    public init(hosts: [Int], protectedVMs: Int, protectedReservationMiB: Int, protectedCPUMHz: Double,
                targetFreeMiB: Int, targetFreeCPUMHz: Double) {
        self.hosts = hosts; self.protectedVMs = protectedVMs; self.protectedReservationMiB = protectedReservationMiB
        self.protectedCPUMHz = protectedCPUMHz; self.targetFreeMiB = targetFreeMiB; self.targetFreeCPUMHz = targetFreeCPUMHz
    }

    /// Memory left over after the restart, summed over the targets: the smaller, the worse.
    public var spareMiB: Int { targetFreeMiB - protectedReservationMiB }
}

/// The numbers behind an admission decision.
public struct AdmissionReport: Sendable, Equatable {
    public var policy: HAAdmissionPolicy
    /// Hosts that count as capacity: usable ones, less the failover hosts in that mode.
    public var capacityHosts: [Int]
    public var cpuCapacityMHz: Double
    public var memoryCapacityMiB: Int
    /// CPU demand and memory reservations of the running VMs (with the starting one) that use that capacity.
    public var cpuUsedMHz: Double
    public var memoryUsedMiB: Int
    /// What the policy keeps free: the percentage (mode 1), the failover hosts' free room (mode 2),
    /// the worst host loss's protected load (mode 3).
    public var cpuKeptFreeMHz: Double
    public var memoryKeptFreeMiB: Int
    /// The host loss that leaves the least memory spare among those checked.
    public var worstLoss: HostLoss?
    /// Where a starting VM without a host was assumed to run (the capacity host with the most free memory).
    public var assumedHost: Int?
}

/// HA admission control: may the cluster run one more VM (or keep running as it is) and still
/// restart its protected VMs after a failure?
///
/// Host failures tolerated uses a capacity check, not vSphere's slot policy. A slot is the largest
/// reservation of any VM, so one 64 GiB VM makes every slot 64 GiB and a cluster of 2 GiB VMs looks
/// full while mostly empty; mixed sizes are the norm here. Instead: take the N hosts whose loss
/// hurts most and pack their protected VMs onto the survivors by first-fit-decreasing (reservations
/// in real memory, memory size within the overcommit ratio, CPU demand within capacity). "Hurts
/// most" is checked four ways, since no single ranking is the worst for every cluster: most
/// protected memory reservation, largest memory capacity, most spare memory removed (protected
/// reservation + free memory: exactly the set that minimizes the memory left over), most protected
/// CPU + free CPU. Checking every N-subset would be exact but is combinatorial at 800 hosts.
public enum HAAdmission {
    public static func check(_ snapshot: ClusterSnapshot, policy: HAAdmissionPolicy, starting vm: SnapshotVM? = nil)
        -> Result<AdmissionReport, ShepherdError> {
        let rule = policy.label(in: snapshot)
        switch policy {
        case .reservePercent(let cpu, let memory):
            for (field, value) in [("cpu", cpu), ("memory", memory)] where !(0...100).contains(value) {
                return .failure(.invalidField("ha.reservePercent.\(field)", "must be 0–100 percent, got \(HAText.percent(value))"))
            }
        case .failoverHosts(let set):
            if let bad = set.sorted().first(where: { !snapshot.hosts.indices.contains($0) }) {
                return .failure(.invalidField("ha.failoverHosts", "host index \(bad) is not one of the \(snapshot.hosts.count) hosts"))
            }
        case .hostFailuresTolerated(let n):
            if n < 0 { return .failure(.invalidField("ha.hostFailuresTolerated", "must be 0 or more, got \(n)")) }
        }
        if let host = vm?.host, !snapshot.hosts.indices.contains(host) {
            return .failure(.invalidField("vm.host", "host index \(host) is not one of the \(snapshot.hosts.count) hosts"))
        }

        let failover: Set<Int>
        if case .failoverHosts(let set) = policy { failover = set } else { failover = [] }
        let capacityHosts = snapshot.hosts.indices.filter { snapshot.hosts[$0].isUsable && !failover.contains($0) }

        // The starting VM joins the snapshot; without a host it goes where placement would put it.
        var snap = snapshot
        var assumedHost: Int?
        if var vm {
            if vm.host == nil, policy.needsHostOfNewVM {
                let totals = snapshot.haTotals()
                let rooms = capacityHosts.map { HARoom(snapshot, totals, $0) }
                guard let best = rooms.filter({ $0.fits(vm) }).max(by: { $0.realFreeMiB != $1.realFreeMiB ? $0.realFreeMiB < $1.realFreeMiB : $0.host > $1.host }) else {
                    return .failure(ShepherdError(.insufficientResources,
                        "HA admission (\(rule)): no usable host has room for '\(vm.name)' (\(vm.haNeeds); \(HAText.shortfall(of: vm, on: rooms, in: snapshot)))"))
                }
                vm.host = best.host
                assumedHost = best.host
            }
            snap.vms.append(vm)
        }
        let totals = snap.haTotals()

        var report = AdmissionReport(policy: policy, capacityHosts: capacityHosts,
            cpuCapacityMHz: capacityHosts.reduce(0) { $0 + snap.hosts[$1].cpuCapacityMHz },
            memoryCapacityMiB: capacityHosts.reduce(0) { $0 + snap.hosts[$1].memoryMiB },
            cpuUsedMHz: 0, memoryUsedMiB: 0, cpuKeptFreeMHz: 0, memoryKeptFreeMiB: 0, worstLoss: nil, assumedHost: assumedHost)
        for (index, total) in totals.enumerated() where !failover.contains(index) {
            report.cpuUsedMHz += total.cpuMHz
            report.memoryUsedMiB += total.reservedMiB
        }
        if let vm, vm.host == nil, !policy.needsHostOfNewVM {   // mode 1 needs no host: it only counts
            report.cpuUsedMHz += vm.cpuDemandMHz
            report.memoryUsedMiB += vm.memoryReservationMiB
        }

        switch policy {
        case .reservePercent(let cpuPercent, let memoryPercent):
            report.memoryKeptFreeMiB = Int((Double(report.memoryCapacityMiB) * memoryPercent / 100).rounded(.up))
            report.cpuKeptFreeMHz = (report.cpuCapacityMHz * cpuPercent / 100).rounded(.up)
            // For information: the single host with the most protected reservation, the others taking its VMs.
            if let worst = snap.hosts.indices.max(by: { (totals[$0].protectedReservedMiB, -$0) < (totals[$1].protectedReservedMiB, -$1) }) {
                report.worstLoss = snap.haLoss(of: [worst], totals: totals, targets: capacityHosts.filter { $0 != worst })
            }
            let memoryLimit = report.memoryCapacityMiB - report.memoryKeptFreeMiB
            if report.memoryUsedMiB > memoryLimit {
                return .failure(ShepherdError(.insufficientResources,
                    "HA admission (\(rule)): memory reservations would reach \(report.memoryUsedMiB) MiB of \(report.memoryCapacityMiB) MiB capacity; keeping \(report.memoryKeptFreeMiB) MiB (\(HAText.percent(memoryPercent))%) free allows \(memoryLimit) MiB"))
            }
            let cpuLimit = report.cpuCapacityMHz - report.cpuKeptFreeMHz
            if report.cpuUsedMHz > cpuLimit {
                return .failure(ShepherdError(.insufficientResources,
                    "HA admission (\(rule)): CPU demand would reach \(HAText.mhz(report.cpuUsedMHz)) MHz of \(HAText.mhz(report.cpuCapacityMHz)) MHz capacity; keeping \(HAText.mhz(report.cpuKeptFreeMHz)) MHz (\(HAText.percent(cpuPercent))%) free allows \(HAText.mhz(cpuLimit)) MHz"))
            }
            return .success(report)

        case .failoverHosts(let set):
            let targets = set.sorted().filter { snap.hosts[$0].isUsable }
            let rooms = targets.map { HARoom(snap, totals, $0) }
            report.memoryKeptFreeMiB = rooms.reduce(0) { $0 + $1.realFreeMiB }
            report.cpuKeptFreeMHz = rooms.reduce(0) { $0 + $1.cpuFreeMHz }
            let losses = snap.hosts.indices.filter { !set.contains($0) && !totals[$0].protectedVMs.isEmpty }
                .map { snap.haLoss(of: [$0], totals: totals, targets: targets) }
                .sorted { ($0.protectedReservationMiB, $0.protectedCPUMHz, -$0.hosts[0]) > ($1.protectedReservationMiB, $1.protectedCPUMHz, -$1.hosts[0]) }
            report.worstLoss = losses.first
            for loss in losses {
                let host = snap.label(ofHost: loss.hosts[0])
                if loss.protectedReservationMiB > loss.targetFreeMiB || loss.protectedCPUMHz > loss.targetFreeCPUMHz {
                    return .failure(ShepherdError(.insufficientResources,
                        "HA admission (\(rule)): if \(host) fails, its \(loss.protectedVMs == 1 ? "protected VM needs" : "\(loss.protectedVMs) protected VMs need") \(loss.protectedReservationMiB) MiB reserved and \(HAText.mhz(loss.protectedCPUMHz)) MHz; the failover hosts have \(loss.targetFreeMiB) MiB and \(HAText.mhz(loss.targetFreeCPUMHz)) MHz free"))
                }
                if let failure = snap.haPackFailure(loss, totals: totals, targets: targets, onto: "the failover hosts") {
                    return .failure(ShepherdError(.insufficientResources, "HA admission (\(rule)): \(failure)"))
                }
            }
            return .success(report)

        case .hostFailuresTolerated(let n):
            if n == 0 { return .success(report) }
            let usable = snap.hosts.indices.filter { snap.hosts[$0].isUsable }
            if n >= usable.count {
                return .failure(ShepherdError(.insufficientResources,
                    "HA admission (\(rule)): the cluster has \(usable.count) usable hosts; tolerating \(n) failures needs at least \(n + 1)"))
            }
            let freeMiB = snap.hosts.indices.map { snap.hosts[$0].isUsable ? HARoom(snap, totals, $0).realFreeMiB : 0 }
            let freeCPU = snap.hosts.indices.map { snap.hosts[$0].isUsable ? HARoom(snap, totals, $0).cpuFreeMHz : 0 }
            func top(_ candidates: [Int], by key: (Int) -> (Double, Double)) -> [Int] {
                Array(candidates.sorted { (key($0).0, key($0).1, -$0) > (key($1).0, key($1).1, -$1) }.prefix(n)).sorted()
            }
            let all = Array(snap.hosts.indices)
            let scenarios = [
                top(all) { (Double(totals[$0].protectedReservedMiB), Double(freeMiB[$0])) },
                top(usable) { (Double(snap.hosts[$0].memoryMiB), snap.hosts[$0].cpuCapacityMHz) },
                top(all) { (Double(totals[$0].protectedReservedMiB + freeMiB[$0]), Double(snap.hosts[$0].memoryMiB)) },
                top(all) { (totals[$0].protectedCPUMHz + freeCPU[$0], snap.hosts[$0].cpuCapacityMHz) },
            ]
            var checked: Set<[Int]> = []
            for lost in scenarios where checked.insert(lost).inserted {
                let loss = snap.haLoss(of: lost, totals: totals, targets: usable.filter { !lost.contains($0) })
                if report.worstLoss.map({ loss.spareMiB < $0.spareMiB }) ?? true { report.worstLoss = loss }
                if let failure = snap.haPackFailure(loss, totals: totals, targets: usable.filter { !lost.contains($0) }, onto: "the remaining hosts") {
                    return .failure(ShepherdError(.insufficientResources, "HA admission (\(rule)): \(failure)"))
                }
            }
            report.memoryKeptFreeMiB = report.worstLoss?.protectedReservationMiB ?? 0
            report.cpuKeptFreeMHz = report.worstLoss?.protectedCPUMHz ?? 0
            return .success(report)
        }
    }
}

// MARK: - Shared with HARestart

/// What the running VMs take on each host, computed in one pass over the VMs.
struct HATotals {
    var reservedMiB = 0
    var allocatedMiB = 0
    var cpuMHz = 0.0
    var protectedVMs: [Int] = []
    var protectedReservedMiB = 0
    var protectedCPUMHz = 0.0
}

/// Room left on one host: reservations need real memory, memory size needs room within the
/// overcommit ratio, CPU demand needs capacity.
struct HARoom {
    let host: Int
    var realFreeMiB: Int
    var overcommitRoomMiB: Double
    var cpuFreeMHz: Double

    init(_ snapshot: ClusterSnapshot, _ totals: [HATotals], _ host: Int) {
        let h = snapshot.hosts[host]
        self.host = host
        realFreeMiB = h.memoryMiB - totals[host].reservedMiB
        overcommitRoomMiB = Double(h.memoryMiB) * snapshot.memoryOvercommitRatio - Double(totals[host].allocatedMiB)
        cpuFreeMHz = h.cpuCapacityMHz - totals[host].cpuMHz
    }

    func fits(_ vm: SnapshotVM) -> Bool {
        vm.memoryReservationMiB <= realFreeMiB && Double(vm.memoryMiB) <= overcommitRoomMiB && vm.cpuDemandMHz <= cpuFreeMHz
    }

    mutating func take(_ vm: SnapshotVM) {
        realFreeMiB -= vm.memoryReservationMiB
        overcommitRoomMiB -= Double(vm.memoryMiB)
        cpuFreeMHz -= vm.cpuDemandMHz
    }
}

extension ClusterSnapshot {
    func haTotals() -> [HATotals] {
        var totals = [HATotals](repeating: HATotals(), count: hosts.count)
        for (index, vm) in vms.enumerated() {
            guard let host = vm.host, totals.indices.contains(host) else { continue }
            totals[host].reservedMiB += vm.memoryReservationMiB
            totals[host].allocatedMiB += vm.memoryMiB
            totals[host].cpuMHz += vm.cpuDemandMHz
            if vm.haPriority != nil {
                totals[host].protectedVMs.append(index)
                totals[host].protectedReservedMiB += vm.memoryReservationMiB
                totals[host].protectedCPUMHz += vm.cpuDemandMHz
            }
        }
        return totals
    }

    func haLoss(of lost: [Int], totals: [HATotals], targets: [Int]) -> HostLoss {
        let rooms = targets.map { HARoom(self, totals, $0) }
        return HostLoss(hosts: lost, protectedVMs: lost.reduce(0) { $0 + totals[$1].protectedVMs.count },
                        protectedReservationMiB: lost.reduce(0) { $0 + totals[$1].protectedReservedMiB },
                        protectedCPUMHz: lost.reduce(0) { $0 + totals[$1].protectedCPUMHz },
                        targetFreeMiB: rooms.reduce(0) { $0 + max(0, $1.realFreeMiB) },
                        targetFreeCPUMHz: rooms.reduce(0) { $0 + max(0, $1.cpuFreeMHz) })
    }

    /// First-fit-decreasing of the lost hosts' protected VMs (largest reservation, then CPU) onto
    /// the targets in index order; nil when all fit, else what did not and the room that was left.
    func haPackFailure(_ loss: HostLoss, totals: [HATotals], targets: [Int], onto what: String) -> String? {
        var rooms = targets.map { HARoom(self, totals, $0) }
        let items = loss.hosts.flatMap { totals[$0].protectedVMs }.sorted {
            (vms[$0].memoryReservationMiB, vms[$0].cpuDemandMHz, -$0) > (vms[$1].memoryReservationMiB, vms[$1].cpuDemandMHz, -$1)
        }
        var unfit: [Int] = []
        var firstShortfall = ""
        for item in items {
            if let slot = rooms.firstIndex(where: { $0.fits(vms[item]) }) {
                rooms[slot].take(vms[item])
            } else {
                if unfit.isEmpty { firstShortfall = HAText.shortfall(of: vms[item], on: rooms, in: self) }
                unfit.append(item)
            }
        }
        if unfit.isEmpty { return nil }
        let reserved = unfit.reduce(0) { $0 + vms[$1].memoryReservationMiB }
        let which = unfit.count == items.count
            ? "\(HAText.count(unfit.count, "protected VM")) (\(reserved) MiB reserved)"
            : "\(unfit.count) of \(HAText.count(items.count, "protected VM")) (\(reserved) of \(loss.protectedReservationMiB) MiB reserved)"
        return "if \(HAText.listing(loss.hosts.map { label(ofHost: $0) })) \(loss.hosts.count == 1 ? "fails" : "fail"), \(which) \(unfit.count == 1 ? "does" : "do") not fit on \(what) (\(firstShortfall))"
    }
}

extension SnapshotVM {
    /// "2048 MiB reserved of 4096 MiB, 1500 MHz" for messages.
    var haNeeds: String {
        memoryReservationMiB == memoryMiB
            ? "\(memoryReservationMiB) MiB reserved, \(HAText.mhz(cpuDemandMHz)) MHz"
            : "\(memoryReservationMiB) MiB reserved of \(memoryMiB) MiB, \(HAText.mhz(cpuDemandMHz)) MHz"
    }
}

extension HAAdmissionPolicy {
    func label(in snapshot: ClusterSnapshot) -> String {
        switch self {
        case .reservePercent(let cpu, let memory): "reserve \(HAText.percent(cpu))% CPU, \(HAText.percent(memory))% memory"
        case .failoverHosts(let set): "failover hosts: \(snapshot.label(ofHosts: set))"
        case .hostFailuresTolerated(let n): "host failures tolerated: \(n)"
        }
    }

    /// Modes 2 and 3 look at which host loses which VM; mode 1 only counts.
    var needsHostOfNewVM: Bool {
        if case .reservePercent = self { return false }
        return true
    }
}

/// Message pieces for HA admission and restart.
enum HAText {
    /// Why a VM fits on none of these hosts: the first resource no host has enough of, and the best there is.
    static func shortfall(of vm: SnapshotVM, on rooms: [HARoom], in snapshot: ClusterSnapshot) -> String {
        guard !rooms.isEmpty else { return "no host left" }
        let real = rooms.filter { $0.realFreeMiB >= vm.memoryReservationMiB }
        if real.isEmpty {
            let best = rooms.max { ($0.realFreeMiB, -$0.host) < ($1.realFreeMiB, -$1.host) }!
            return "largest free \(max(0, best.realFreeMiB)) MiB on \(snapshot.label(ofHost: best.host))"
        }
        let memory = real.filter { $0.overcommitRoomMiB >= Double(vm.memoryMiB) }
        if memory.isEmpty {
            let best = real.max { ($0.overcommitRoomMiB, -$0.host) < ($1.overcommitRoomMiB, -$1.host) }!
            return "largest room within the overcommit ratio \(HAText.percent(snapshot.memoryOvercommitRatio * 100))% is \(max(0, Int(best.overcommitRoomMiB.rounded(.down)))) MiB on \(snapshot.label(ofHost: best.host))"
        }
        let best = memory.max { ($0.cpuFreeMHz, -$0.host) < ($1.cpuFreeMHz, -$1.host) }!
        return "largest free CPU \(HAText.mhz(max(0, best.cpuFreeMHz))) MHz on \(snapshot.label(ofHost: best.host))"
    }

    /// "a", "a and b", "a, b and c".
    static func listing(_ items: [String]) -> String {
        items.count <= 1 ? items.joined() : items.dropLast().joined(separator: ", ") + " and " + items.last!
    }

    /// "1 host", "3 hosts".
    static func count(_ n: Int, _ noun: String) -> String { n == 1 ? "1 \(noun)" : "\(n) \(noun)s" }

    static func mhz(_ value: Double) -> String { String(Int(value.rounded())) }

    /// 25 → "25", 12.5 → "12.5", 33.333 → "33.3".
    static func percent(_ value: Double) -> String {
        let tenths = (value * 10).rounded() / 10
        return tenths == tenths.rounded() ? String(Int(tenths)) : String(tenths)
    }
}
