/// One protected VM restarted on a host.
public struct HARestartPlacement: Sendable, Equatable, CustomStringConvertible {
    public var vm: Int
    public var host: Int
    public init(vm: Int, host: Int) { self.vm = vm; self.host = host }
    public var description: String { "vm \(vm) → host \(host)" }
}

/// One protected VM that could not be restarted, and why (with the numbers).
public struct HARestartFailure: Sendable, Equatable, CustomStringConvertible {
    public var vm: Int
    public var reason: String
    public init(vm: Int, reason: String) { self.vm = vm; self.reason = reason }
    public var description: String { "vm \(vm): \(reason)" }
}

/// Where the protected VMs of failed hosts restart, in restart order.
public struct HARestartPlan: Sendable, Equatable {
    public var placements: [HARestartPlacement]
    public var unplaced: [HARestartFailure]
    public init(placements: [HARestartPlacement] = [], unplaced: [HARestartFailure] = []) {
        self.placements = placements; self.unplaced = unplaced
    }
}

/// Plans HA restarts. Priority goes first (high → low), then the largest memory reservation:
/// big VMs are the hardest to fit, so they pick before small ones fragment the room. Each VM goes
/// to a usable, surviving host where its reservation fits in real memory, its size within the
/// overcommit ratio, its CPU demand within capacity, its CPU model matches, and no mandatory
/// rule is broken. Among those: failover hosts first (that is what they are for), then the lowest
/// memory fraction after placement (a small empty host is not "less loaded" than a big busy one
/// once the VM is on it), then fewer broken should-rules, then the lower host index.
/// Every placement updates the snapshot, so later VMs see earlier ones (room and rules alike).
public enum HARestartPlanner {
    public static func plan(_ snapshot: ClusterSnapshot, failedHosts: Set<Int>, failoverHosts: Set<Int> = []) -> HARestartPlan {
        var snap = snapshot
        var toRestart: [Int] = []
        for index in snap.vms.indices {
            guard let host = snap.vms[index].host, failedHosts.contains(host) else { continue }
            snap.vms[index].host = nil   // down: it holds no room and binds no rule
            if snap.vms[index].haPriority != nil { toRestart.append(index) }
        }
        toRestart.sort {
            let a = snap.vms[$0], b = snap.vms[$1]
            return (a.haPriority!.rawValue, a.memoryReservationMiB, -$0) > (b.haPriority!.rawValue, b.memoryReservationMiB, -$1)
        }

        let targets = snap.hosts.indices.filter { snap.hosts[$0].isUsable && !failedHosts.contains($0) }
        let totals = snap.haTotals()
        var rooms = targets.map { HARoom(snap, totals, $0) }
        var allocated = targets.map { totals[$0].allocatedMiB }

        let membership = RuleMembership(snap)
        var plan = HARestartPlan()
        for index in toRestart {
            let vm = snap.vms[index]
            var best: (slot: Int, key: (Int, Double, Int, Int))?
            for (slot, host) in targets.enumerated() {
                guard modelMatches(vm, snap.hosts[host]), rooms[slot].fits(vm), !snap.hasRuleConflict(placing: index, on: host, membership: membership) else { continue }
                let fraction = Double(allocated[slot] + vm.memoryMiB) / Double(max(1, snap.hosts[host].memoryMiB))
                let key = (failoverHosts.contains(host) ? 0 : 1, fraction, snap.ruleSoftPenalty(placing: index, on: host, membership: membership), host)
                if best.map({ key < $0.key }) ?? true { best = (slot, key) }
            }
            if let slot = best?.slot {
                rooms[slot].take(vm)
                allocated[slot] += vm.memoryMiB
                snap.vms[index].host = targets[slot]
                plan.placements.append(HARestartPlacement(vm: index, host: targets[slot]))
            } else {
                plan.unplaced.append(HARestartFailure(vm: index, reason: reason(index, snap, targets: targets, rooms: rooms, failed: failedHosts)))
            }
        }
        return plan
    }

    /// A host offering a different QEMU CPU model cannot run a VM that needs one; nil on either side means any.
    static func modelMatches(_ vm: SnapshotVM, _ host: SnapshotHost) -> Bool {
        guard let wanted = vm.cpuModel, let offered = host.cpuModel else { return true }
        return wanted == offered
    }

    /// "no surviving host can restart 'db1' (4096 MiB reserved, 2000 MHz): of 3 usable hosts,
    /// 1 without CPU model 'EPYC', 1 excluded by rule 'apart', 1 short of room (largest free 2048 MiB on host-3)".
    private static func reason(_ index: Int, _ snap: ClusterSnapshot, targets: [Int], rooms: [HARoom], failed: Set<Int>) -> String {
        let vm = snap.vms[index]
        let head = "no surviving host can restart '\(vm.name)' (\(vm.haNeeds))"
        if targets.isEmpty {
            return "\(head): none of the \(snap.hosts.count) hosts is usable (\(failed.count) failed)"
        }
        var wrongModel = 0
        var ruleNames: [String] = []
        var ruled = 0
        var short: [HARoom] = []
        for (slot, host) in targets.enumerated() {
            if !modelMatches(vm, snap.hosts[host]) { wrongModel += 1; continue }
            let conflicts = snap.ruleConflicts(placing: index, on: host)
            if !conflicts.isEmpty {
                ruled += 1
                for name in conflicts.map(\.rule) where !ruleNames.contains(name) { ruleNames.append(name) }
                continue
            }
            short.append(rooms[slot])
        }
        var parts: [String] = []
        if wrongModel > 0 { parts.append("\(wrongModel) without CPU model '\(vm.cpuModel ?? "")'") }
        if ruled > 0 {
            let names = ruleNames.map { "'\($0)'" }.joined(separator: ", ")
            parts.append("\(ruled) excluded by \(ruleNames.count == 1 ? "rule" : "rules") \(names)")
        }
        if !short.isEmpty { parts.append("\(short.count) short of room (\(HAText.shortfall(of: vm, on: short, in: snap)))") }
        return "\(head): of \(HAText.count(targets.count, "usable host")), \(HAText.listing(parts))"
    }
}
