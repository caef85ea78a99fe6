import Foundation

/// The simulated data centre of Beloglazov & Buyya's PlanetLab experiments, stepped the way
/// CloudSim 4.0's PowerDatacenter steps it: an update every 300 s (at 300.1, 600.1, … as in
/// CloudSim), migrations that take RAM / half the link and end in their own update, the VM
/// scheduler's 90 % / 10 % split while migrating, and energy integrated between updates.
/// `compat` switches on CloudSim's released quirks; without it the paper's definitions hold.
final class DataCenter {
    struct Quirks {
        /// A VM whose demand is 0 at an update is removed for good (CloudSim's "completed" VMs).
        var removeIdleVMs: Bool
        /// SLATAH and PDM pooled over all hosts / VMs (CloudSim's printResults), not means.
        var pooledMetrics: Bool
        /// Hosts that just received VMs from overloaded hosts may be emptied in the same round
        /// (CloudSim adds them to an exclusion list it then discards).
        var consolidateFreshTargets: Bool
        /// Initial placement compares against a stale power reading (every host looks idle),
        /// so it spreads VMs; the paper's PABFD compares against the host's real power.
        var stalePowerAtStart: Bool
        /// CloudSim's "weighted" regression never applies its weights (none is zero), so LR
        /// and LRR are plain least squares; the paper's are tricube (and bisquare) weighted.
        var unweightedRegression: Bool
        /// A host receiving a VM counts the VM's whole demand as requested while granting it
        /// 10 %, so every migration makes its target "violate" SLA for the copy's duration.
        var targetCountsMigratingDemand: Bool

        static let cloudSim = Quirks(removeIdleVMs: true, pooledMetrics: true, consolidateFreshTargets: true,
                                     stalePowerAtStart: true, unweightedRegression: true, targetCountsMigratingDemand: true)
        static let paper = Quirks(removeIdleVMs: false, pooledMetrics: false, consolidateFreshTargets: false,
                                  stalePowerAtStart: false, unweightedRegression: false, targetCountsMigratingDemand: false)
    }

    static let interval = 300.0
    static let dayLength = 86_400.0
    static let hostBandwidth = 1_000_000.0
    static let vmBandwidth = 100_000.0
    static let hostRAM = 4096.0
    static let historyLength = 30
    /// Seconds a VM of `ram` MB takes to migrate over half of the 1 Gbit/s link.
    static func migrationTime(ram: Double) -> Double { ram / (hostBandwidth / (2 * 8000)) }

    let quirks: Quirks
    let hostCount: Int
    let vmCount: Int
    let hostTotalMips: [Double]
    let hostPeMips: [Double]
    let hostPower: [PowerModel]
    let vmMips: [Double]
    let vmRam: [Double]
    let trace: [[Double]]

    // Hosts.
    var vmList: [[Int]]
    /// VMs migrating in (Host.vmsMigratingIn and the scheduler's in-list together).
    var migratingIn: [[Int]]
    /// The scheduler's out-list; CloudSim never clears an entry until the VM is allocated on
    /// that host again while not migrating, which changes a later migration back in.
    var migratingOut: [Set<Int>]
    var availableMips: [Double]
    /// Oversubscribed hosts scale every share by capacity / demand (nil: all demand fits).
    var scaling: [Double?]
    var utilizationMips: [Double]
    var previousUtilizationMips: [Double]
    /// Σ shares as a consolidation policy counts them, and Σ requested, kept by `reallocate`.
    var policyLoad: [Double]
    var requestedLoad: [Double]
    /// The host's MIPS-weighted utilization history (newest first) and its non-zero length,
    /// cached until its VM list or any history changes.
    var historySums: [[Double]]
    var historyLength: [Int]
    var historyGeneration: [Int]
    var generation = 0

    // VMs.
    var vmTable: [Int]
    var vmHost: [Int]
    var inMigration: [Bool]
    var removed: [Bool]
    var history: [[Double]]
    var historyNonZeroLength: [Int]
    var historyTime: [Double]
    var requested: [Double]

    var now = 0.0
    var lastProcessTime = 0.0
    var energyJoules = 0.0
    var migrations = 0

    // Metrics, accumulated as CloudSim's state histories would be read at the end.
    struct Entry { var time: Double; var allocated: Double; var requested: Double; var flag: Bool }
    var hostLast: [Entry?]
    var hostViolationTime: [Double]
    var hostActiveTime: [Double]
    var vmLast: [Entry?]
    var vmRequestedTotal: [Double]
    var vmMigrationShortfall: [Double]

    init(day: PlanetLabDay, hosts: Int, quirks: Quirks) {
        self.quirks = quirks
        hostCount = hosts
        vmCount = day.utilization.count
        // Hosts alternate ML110 G4 (2 × 1860 MIPS) and G5 (2 × 2660 MIPS).
        hostPeMips = (0..<hosts).map { $0 % 2 == 0 ? 1860 : 2660 }
        hostTotalMips = hostPeMips.map { $0 * 2 }
        hostPower = (0..<hosts).map { $0 % 2 == 0 ? .hpProLiantG4 : .hpProLiantG5 }
        // Four VM types in four equal consecutive blocks of the sorted trace list.
        let mipsByType: [Double] = [2500, 2000, 1000, 500], ramByType: [Double] = [870, 1740, 1740, 613]
        let block = Int((Double(vmCount) / 4).rounded(.up))
        vmMips = (0..<vmCount).map { mipsByType[$0 / block] }
        vmRam = (0..<vmCount).map { ramByType[$0 / block] }
        trace = day.utilization

        vmList = Array(repeating: [], count: hosts)
        migratingIn = Array(repeating: [], count: hosts)
        migratingOut = Array(repeating: [], count: hosts)
        availableMips = hostTotalMips
        scaling = Array(repeating: nil, count: hosts)
        utilizationMips = Array(repeating: 0, count: hosts)
        previousUtilizationMips = Array(repeating: 0, count: hosts)
        policyLoad = Array(repeating: 0, count: hosts)
        requestedLoad = Array(repeating: 0, count: hosts)
        historySums = Array(repeating: Array(repeating: 0, count: Self.historyLength), count: hosts)
        historyLength = Array(repeating: 0, count: hosts)
        historyGeneration = Array(repeating: -1, count: hosts)
        vmTable = Array(repeating: -1, count: vmCount)
        vmHost = Array(repeating: -1, count: vmCount)
        inMigration = Array(repeating: false, count: vmCount)
        removed = Array(repeating: false, count: vmCount)
        history = Array(repeating: [], count: vmCount)
        historyNonZeroLength = Array(repeating: 0, count: vmCount)
        historyTime = Array(repeating: 0, count: vmCount)
        requested = vmMips
        hostLast = Array(repeating: nil, count: hosts)
        hostViolationTime = Array(repeating: 0, count: hosts)
        hostActiveTime = Array(repeating: 0, count: hosts)
        vmLast = Array(repeating: nil, count: vmCount)
        vmRequestedTotal = Array(repeating: 0, count: vmCount)
        vmMigrationShortfall = Array(repeating: 0, count: vmCount)
    }

    // MARK: - Demand

    /// UtilizationModelPlanetLabInMemory.getUtilization: linear between 5-minute samples.
    func utilization(_ vm: Int, at time: Double) -> Double {
        let data = trace[vm]
        if time.truncatingRemainder(dividingBy: Self.interval) == 0 { return data[Int(time) / Int(Self.interval)] }
        let t1 = Int((time / Self.interval).rounded(.down)), t2 = Int((time / Self.interval).rounded(.up))
        let u1 = data[t1], u2 = data[t2]
        let delta = (u2 - u1) / (Double(t2 - t1) * Self.interval)
        return u1 + delta * (time - Double(t1) * Self.interval)
    }

    func refreshDemand() {
        for vm in 0..<vmCount where !removed[vm] { requested[vm] = utilization(vm, at: now) * vmMips[vm] }
    }

    // MARK: - The VM scheduler (time-shared with oversubscription)

    @inline(__always) func isMigratingIn(_ host: Int, _ vm: Int) -> Bool { migratingIn[host].contains(vm) }

    /// Recomputes a host's shares: every share in full when the demand fits, otherwise all
    /// scaled by capacity / demand and floored (VmSchedulerTimeSharedOverSubscription).
    func reallocate(_ host: Int) {
        var available = hostTotalMips[host], total = 0.0, oversubscribed = false
        let pe = hostPeMips[host]
        for vm in vmList[host] {
            var need = min(requested[vm], pe)
            if isMigratingIn(host, vm) { need *= 0.1 }
            total += need
            if !oversubscribed {
                if available >= need { available -= need } else { oversubscribed = true }
            }
        }
        if oversubscribed {
            availableMips[host] = 0
            scaling[host] = hostTotalMips[host] / total
        } else {
            availableMips[host] = available
            scaling[host] = nil
        }
        var load = 0.0, asked = 0.0
        for vm in vmList[host] {
            let share = allocated(host, vm)
            if isMigratingIn(host, vm) { load += share * 0.9 / 0.1 }
            load += share
            asked += requested[vm]
        }
        policyLoad[host] = load
        requestedLoad[host] = asked
        historyGeneration[host] = -1
    }

    /// The cached history of a host (valid until the next change).
    func hostHistory(_ host: Int) -> (sums: [Double], length: Int) {
        if historyGeneration[host] != generation {
            var length = 0
            for vm in vmList[host] { length = max(length, historyNonZeroLength[vm]) }
            let total = hostTotalMips[host]
            historySums[host].withUnsafeMutableBufferPointer { sums in
                for i in 0..<sums.count { sums[i] = 0 }
                for vm in vmList[host] {
                    let h = history[vm], mips = vmMips[vm]
                    for i in 0..<min(length, h.count) { sums[i] += h[i] * mips / total }
                }
            }
            historyLength[host] = length
            historyGeneration[host] = generation
        }
        return (historySums[host], historyLength[host])
    }

    func allocated(_ host: Int, _ vm: Int) -> Double {
        let capped = min(requested[vm], hostPeMips[host])
        let out = migratingOut[host].contains(vm), inbound = !out && isMigratingIn(host, vm)
        if let s = scaling[host] {
            if out { return (capped * s * 0.9).rounded(.down) }
            if inbound { return (capped * 0.1 * s).rounded(.down) }
            return (capped * s).rounded(.down)
        }
        if out { return capped * 0.9 }
        if inbound { return capped * 0.1 }
        return capped
    }

    /// VmSchedulerTimeShared.allocatePesForVm(Vm): a VM migrating away is put on the out-list.
    func markMigrationDirection(_ host: Int, _ vm: Int) {
        if inMigration[vm] {
            if !isMigratingIn(host, vm) && !migratingOut[host].contains(vm) { migratingOut[host].insert(vm) }
        } else {
            migratingOut[host].remove(vm)
        }
    }

    func vmCreate(_ host: Int, _ vm: Int) {
        markMigrationDirection(host, vm)
        vmList[host].append(vm)
        reallocate(host)
        vmHost[vm] = host
    }

    func vmDestroy(_ host: Int, _ vm: Int) {
        if let index = vmList[host].firstIndex(of: vm) { vmList[host].remove(at: index) }
        reallocate(host)
        vmHost[vm] = -1
    }

    func isSuitable(_ host: Int, _ vm: Int) -> Bool {
        hostPeMips[host] >= requested[vm] && availableMips[host] >= requested[vm]
    }

    /// What a consolidation policy counts as the host's load: migrating-in VMs in full.
    func policyUtilizationMips(_ host: Int) -> Double { policyLoad[host] }

    func utilizationOfCpu(_ host: Int) -> Double {
        let u = utilizationMips[host] / hostTotalMips[host]
        return u > 1 && u < 1.01 ? 1 : u
    }

    func previousUtilizationOfCpu(_ host: Int) -> Double {
        let u = previousUtilizationMips[host] / hostTotalMips[host]
        return u > 1 && u < 1.01 ? 1 : u
    }

    func power(_ host: Int) -> Double { hostPower[host].watts(at: min(utilizationOfCpu(host), 1)) ?? 0 }

    // MARK: - Updates

    /// PowerVm keeps the last 30 utilizations, newest first, sampled on the 5-minute grid.
    func recordHistory(_ vm: Int) {
        guard now > historyTime[vm], (now - 0.1).truncatingRemainder(dividingBy: Self.interval) == 0 else { return }
        let u = utilization(vm, at: now)
        history[vm].insert(u, at: 0)
        if history[vm].count > Self.historyLength { history[vm].removeLast() }
        historyNonZeroLength[vm] = (history[vm].lastIndex(where: { $0 != 0 }) ?? -1) + 1
        historyTime[vm] = now
        generation += 1
    }

    /// HostDynamicWorkload.updateVmsProcessing: new shares, state history, host utilization.
    func updateHost(_ host: Int) {
        for vm in vmList[host] { recordHistory(vm) }
        previousUtilizationMips[host] = utilizationMips[host]
        for vm in vmList[host] { markMigrationDirection(host, vm) }
        reallocate(host)
        var used = 0.0, asked = 0.0
        for vm in vmList[host] {
            var share = allocated(host, vm)
            if !isMigratingIn(host, vm) {
                vmEntry(vm, Entry(time: now, allocated: share, requested: requested[vm], flag: inMigration[vm]))
                if inMigration[vm] { share /= 0.9 }
            }
            used += share
            asked += !quirks.targetCountsMigratingDemand && isMigratingIn(host, vm) ? share : requested[vm]
        }
        utilizationMips[host] = used
        hostEntry(host, Entry(time: now, allocated: used, requested: asked, flag: used > 0))
    }

    /// PowerDatacenter.updateCloudetProcessingWithoutSchedulingFutureEventsForce.
    func update() {
        let elapsed = now - lastProcessTime
        refreshDemand()
        for host in 0..<hostCount { updateHost(host) }
        if elapsed > 0 {
            for host in 0..<hostCount {
                energyJoules += hostPower[host].energy(from: previousUtilizationOfCpu(host), to: utilizationOfCpu(host), seconds: elapsed)
            }
        }
        if quirks.removeIdleVMs {
            for host in 0..<hostCount {
                let idle = vmList[host].filter { !inMigration[$0] && requested[$0] == 0 }
                for vm in idle {
                    let owner = vmTable[vm]
                    vmTable[vm] = -1
                    if owner >= 0 { vmDestroy(owner, vm) }
                    removed[vm] = true
                }
            }
        }
        lastProcessTime = now
    }

    // MARK: - Migrations

    /// Host.addMigratingInVm: the VM runs on both hosts until the copy ends.
    func startMigration(vm: Int, to target: Int) {
        inMigration[vm] = true
        guard !isMigratingIn(target, vm) else { return }
        migratingIn[target].append(vm)
        vmList[target].append(vm)
        reallocate(target)
        updateHost(target)
        if vmHost[vm] >= 0 { updateHost(vmHost[vm]) }
    }

    /// Datacenter.processVmMigrate: off the source, out of the target's in-list, created there.
    func finishMigration(vm: Int, to target: Int) {
        let source = vmTable[vm]
        vmTable[vm] = -1
        if source >= 0 { vmDestroy(source, vm) }
        if let index = vmList[target].firstIndex(of: vm) { vmList[target].remove(at: index) }
        if let index = migratingIn[target].firstIndex(of: vm) { migratingIn[target].remove(at: index) }
        reallocate(target)
        inMigration[vm] = false
        vmCreate(target, vm)
        vmTable[vm] = target
    }

    // MARK: - Metrics

    func hostEntry(_ host: Int, _ entry: Entry) {
        if let last = hostLast[host] {
            if last.time == entry.time { hostLast[host] = entry; return }
            let dt = entry.time - last.time
            if last.flag {
                hostActiveTime[host] += dt
                if last.allocated < last.requested { hostViolationTime[host] += dt }
            }
        }
        hostLast[host] = entry
    }

    func vmEntry(_ vm: Int, _ entry: Entry) {
        if let last = vmLast[vm] {
            if last.time == entry.time { vmLast[vm] = entry; return }
            let dt = entry.time - last.time
            vmRequestedTotal[vm] += last.requested * dt
            if last.allocated < last.requested && last.flag {
                vmMigrationShortfall[vm] += (last.requested - last.allocated) * dt
            }
        }
        vmLast[vm] = entry
    }

    var slatah: Double {
        if quirks.pooledMetrics {
            let active = hostActiveTime.reduce(0, +)
            return active > 0 ? hostViolationTime.reduce(0, +) / active : 0
        }
        let ratios = (0..<hostCount).compactMap { hostActiveTime[$0] > 0 ? hostViolationTime[$0] / hostActiveTime[$0] : nil }
        return ratios.isEmpty ? 0 : ratios.reduce(0, +) / Double(ratios.count)
    }

    var pdm: Double {
        if quirks.pooledMetrics {
            let asked = vmRequestedTotal.reduce(0, +)
            return asked > 0 ? vmMigrationShortfall.reduce(0, +) / asked : 0
        }
        let ratios = (0..<vmCount).compactMap { vmRequestedTotal[$0] > 0 ? vmMigrationShortfall[$0] / vmRequestedTotal[$0] : nil }
        return ratios.isEmpty ? 0 : ratios.reduce(0, +) / Double(ratios.count)
    }

    // MARK: - The run

    /// Places every VM, then steps the day; `optimize` is the consolidation policy's round.
    func run(initialPlacement: (DataCenter) throws -> Void, optimize: (DataCenter) -> [(vm: Int, host: Int)]) throws {
        now = 0
        try initialPlacement(self)
        // Cloudlets arrive at 0.1 s; the first update is one interval later.
        var time = 0.1 + Self.interval
        while time < Self.dayLength {
            now = time
            update()
            let moves = optimize(self)
            var finishing: [(time: Double, vm: Int, host: Int)] = []
            for move in moves {
                startMigration(vm: move.vm, to: move.host)
                migrations += 1
                finishing.append((now + Self.migrationTime(ram: vmRam[move.vm]), move.vm, move.host))
            }
            // Events at one time run in the order they were sent (a stable sort by time).
            let ordered = finishing.enumerated().sorted { ($0.element.time, $0.offset) < ($1.element.time, $1.offset) }.map(\.element)
            var index = 0
            while index < ordered.count {
                let at = ordered[index].time
                guard at < Self.dayLength else { break }
                now = at
                if now > lastProcessTime { update() }
                while index < ordered.count && ordered[index].time == at {
                    finishMigration(vm: ordered[index].vm, to: ordered[index].host)
                    index += 1
                }
                update()
            }
            time += Self.interval
        }
    }
}
