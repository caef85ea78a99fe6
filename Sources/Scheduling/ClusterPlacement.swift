import ShepherdCore

/// Why one host cannot take a VM, as placement over a `ClusterSnapshot` sees it.
public enum SnapshotRejection: Sendable, Equatable, CustomStringConvertible {
    case notUsable(state: HostState, power: SnapshotHostPower)
    case cpuModel(needs: String, offers: String)
    case coreTooSlow(perVCPUMHz: Double, coreMHz: Double)
    case reservation(askedMiB: Int, freeMiB: Int)
    case overcommit(askedMiB: Int, roomMiB: Int, ratio: Double)
    case cpu(askedMHz: Double, freeMHz: Double)
    case rule(RuleConflict)

    public var description: String {
        switch self {
        case .notUsable(let state, let power): "not usable (\(state.rawValue), power \(power.rawValue))"
        case .cpuModel(let needs, let offers): "CPU model: the VM needs \(needs), the host offers \(offers)"
        case .coreTooSlow(let need, let core): "one vCPU needs \(Int(need)) MHz; a core has \(Int(core)) MHz"
        case .reservation(let asked, let free): "memory reservation \(asked) MiB; \(free) MiB of real memory unreserved"
        case .overcommit(let asked, let room, let ratio): "memory \(asked) MiB; \(room) MiB left within the \(Int((ratio * 100).rounded())) % overcommit ratio"
        case .cpu(let asked, let free): "CPU \(Int(asked)) MHz; \(Int(free)) MHz free"
        case .rule(let conflict): conflict.description
        }
    }
}

public struct SnapshotPlacementDecision: Sendable, Equatable {
    /// The chosen host, nil when none fits.
    public var host: Int?
    /// Every host passed over, with each reason.
    public var rejections: [Int: [SnapshotRejection]]
}

/// Placement of one VM over a whole-cluster snapshot (initial placement, HA restart, DPM wake-up):
/// filters — usable (connected, powered on, not in maintenance), CPU model, one vCPU per core,
/// memory reservation within real memory, memory within the overcommit ratio, CPU demand within
/// capacity, mandatory rules — then weighers: least memory fraction after placement, fewest
/// should-rules broken, lowest index (repeatable).
public enum ClusterPlacement {
    /// `vm` is an index into `snapshot.vms`; its current host (if any) is ignored.
    public static func place(_ vm: Int, in snapshot: ClusterSnapshot) -> SnapshotPlacementDecision {
        var others = snapshot
        others.vms[vm].host = nil
        let totals = others.haTotals()
        let candidate = snapshot.vms[vm]
        var rejections: [Int: [SnapshotRejection]] = [:]
        var best: (host: Int, key: (Double, Int, Int))?
        for host in snapshot.hosts.indices {
            let reasons = Self.rejections(of: candidate, index: vm, on: host, in: others, totals: totals)
            if !reasons.isEmpty { rejections[host] = reasons; continue }
            let h = snapshot.hosts[host]
            let after = Double(totals[host].allocatedMiB + candidate.memoryMiB) / Double(max(1, h.memoryMiB))
            let key = (after, others.ruleSoftPenalty(placing: vm, on: host), host)
            if best == nil || key < best!.key { best = (host, key) }
        }
        return SnapshotPlacementDecision(host: best?.host, rejections: rejections)
    }

    static func rejections(of vm: SnapshotVM, index: Int, on host: Int, in snapshot: ClusterSnapshot,
                           totals: [HATotals]) -> [SnapshotRejection] {
        let h = snapshot.hosts[host]
        guard h.isUsable else { return [.notUsable(state: h.state, power: h.power)] }
        var reasons: [SnapshotRejection] = []
        if let needs = vm.cpuModel, let offers = h.cpuModel, needs != offers { reasons.append(.cpuModel(needs: needs, offers: offers)) }
        let coreMHz = h.cpuCapacityMHz / Double(max(1, h.cores))
        let perVCPU = vm.cpuDemandMHz / Double(max(1, vm.vcpus))
        if perVCPU > coreMHz { reasons.append(.coreTooSlow(perVCPUMHz: perVCPU, coreMHz: coreMHz)) }
        let room = HARoom(snapshot, totals, host)
        if vm.memoryReservationMiB > room.realFreeMiB { reasons.append(.reservation(askedMiB: vm.memoryReservationMiB, freeMiB: room.realFreeMiB)) }
        if Double(vm.memoryMiB) > room.overcommitRoomMiB {
            reasons.append(.overcommit(askedMiB: vm.memoryMiB, roomMiB: Int(room.overcommitRoomMiB), ratio: snapshot.memoryOvercommitRatio))
        }
        if vm.cpuDemandMHz > room.cpuFreeMHz { reasons.append(.cpu(askedMHz: vm.cpuDemandMHz, freeMHz: room.cpuFreeMHz)) }
        reasons += snapshot.ruleConflicts(placing: index, on: host).map(SnapshotRejection.rule)
        return reasons
    }
}
