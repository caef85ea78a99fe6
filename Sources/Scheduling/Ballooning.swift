/// One running VM as the balloon controller sees it (MiB).
public struct BalloonVM: Sendable, Equatable {
    public var name: String
    /// Its configured memory.
    public var memoryMiB: Int
    /// Never ballooned below this.
    public var reservationMiB: Int
    /// Never given more than this (nil: its memory).
    public var limitMiB: Int?
    public var shares: Int
    /// What the guest has now (memory less the balloon).
    public var currentMiB: Int
    /// What the guest uses of it (its own statistics: current less available); nil when the
    /// guest does not report (no driver yet): the controller then leaves it where it is.
    public var usedMiB: Int?

    public init(name: String, memoryMiB: Int, reservationMiB: Int, limitMiB: Int? = nil, shares: Int = 1000, currentMiB: Int, usedMiB: Int?) {
        self.name = name; self.memoryMiB = memoryMiB; self.reservationMiB = reservationMiB; self.limitMiB = limitMiB
        self.shares = shares; self.currentMiB = currentMiB; self.usedMiB = usedMiB
    }

    var ceilingMiB: Int { min(memoryMiB, limitMiB ?? memoryMiB) }
    /// Never below its reservation, nor below what its guest uses plus a guard: a guest without
    /// swap of its own would start killing processes. (Past that, host swap takes the pressure.)
    /// A guest that does not report keeps what it has.
    var floorMiB: Int {
        let working = usedMiB.map { $0 + BalloonPlanner.guardMiB } ?? currentMiB
        return min(max(reservationMiB, working), ceilingMiB)
    }
}

/// A per-host balloon controller (the seed's 内存气泡), pure: it hands memory from VMs that do
/// not use it to VMs that do, within the memory the host has for VMs.
///
/// Each VM's demand is what it uses plus headroom (a quarter of that, at least 64 MiB: room for a
/// burst until the next round), held between its floor (its reservation, and never less than its
/// use plus 32 MiB) and its ceiling (its limit). While every VM's ceiling fits, nobody
/// is ballooned. When the demands fit, every VM gets its demand and the rest goes by shares up
/// to the ceilings; when they do not, every VM gets its floor and the rest goes by shares up to
/// the demands. Floors are kept even when they add up to more than the host has for VMs: the
/// host's swap takes the rest, not the guests.
public enum BalloonPlanner {
    /// Changes smaller than this are not worth a balloon move (and would flap with the guest's statistics).
    public static let hysteresisMiB = 16
    public static let minimumHeadroomMiB = 64
    /// What a guest keeps above its use even when the host is short.
    public static let guardMiB = 32

    public struct Decision: Sendable, Equatable, CustomStringConvertible {
        public var vm: Int
        public var name: String
        public var fromMiB: Int
        public var toMiB: Int
        public var usedMiB: Int?
        public var description: String {
            "\(name) \(fromMiB)→\(toMiB) MiB" + (usedMiB.map { " (uses \($0))" } ?? "")
        }
    }

    public static func demandMiB(_ vm: BalloonVM) -> Int {
        guard let used = vm.usedMiB else { return min(max(vm.currentMiB, vm.floorMiB), vm.ceilingMiB) }
        let wanted = used + max(minimumHeadroomMiB, used / 4)
        return min(max(wanted, vm.floorMiB), vm.ceilingMiB)
    }

    /// Each VM's target (same order as `vms`).
    public static func targets(budgetMiB: Int, vms: [BalloonVM]) -> [Int] {
        let ceilings = vms.map(\.ceilingMiB)
        if ceilings.reduce(0, +) <= budgetMiB { return ceilings }
        let demands = vms.map(demandMiB)
        let shares = vms.map { max(1, $0.shares) }
        if demands.reduce(0, +) <= budgetMiB {
            return distribute(budgetMiB - demands.reduce(0, +), from: demands, upTo: ceilings, shares: shares)
        }
        let floors = vms.map(\.floorMiB)
        return distribute(max(0, budgetMiB - floors.reduce(0, +)), from: floors, upTo: demands, shares: shares)
    }

    /// The moves worth making: targets that differ from now by at least the hysteresis.
    public static func plan(budgetMiB: Int, vms: [BalloonVM]) -> [Decision] {
        zip(vms.indices, targets(budgetMiB: budgetMiB, vms: vms)).compactMap { index, target in
            let vm = vms[index]
            // A guest that does not report is left alone.
            guard vm.usedMiB != nil || target >= vm.currentMiB, abs(target - vm.currentMiB) >= hysteresisMiB else { return nil }
            return Decision(vm: index, name: vm.name, fromMiB: vm.currentMiB, toMiB: target, usedMiB: vm.usedMiB)
        }
    }

    /// Water-filling: `amount` MiB shared by `shares` over `start`, none beyond its cap; what a
    /// capped VM cannot take goes to the others.
    static func distribute(_ amount: Int, from start: [Int], upTo caps: [Int], shares: [Int]) -> [Int] {
        var result = start
        var left = Double(amount)
        var open = Set(result.indices.filter { result[$0] < caps[$0] })
        while left >= 1, !open.isEmpty {
            let total = open.reduce(0.0) { $0 + Double(shares[$1]) }
            var given = 0.0
            for index in open.sorted() {
                let portion = (left * Double(shares[index]) / total).rounded(.down)
                let take = min(Int(portion), caps[index] - result[index])
                result[index] += take
                given += Double(take)
                if result[index] >= caps[index] { open.remove(index) }
            }
            if given < 1 {
                // Rounding left less than a MiB per VM: the first open VMs take one each.
                for index in open.sorted() where left - given >= 1 {
                    result[index] += 1
                    given += 1
                    if result[index] >= caps[index] { open.remove(index) }
                }
                if given < 1 { break }
            }
            left -= given
        }
        return result
    }
}
