import Foundation

/// Host overload detection of Beloglazov & Buyya (2012), with the paper's parameters.
public enum OverloadDetector: Sendable, Equatable {
    /// THR: requested CPU above a fixed threshold.
    case threshold(Double)
    /// IQR: threshold 1 − s·IQR of the host's utilization history.
    case interQuartileRange(Double)
    /// MAD: threshold 1 − s·MAD of the history.
    case medianAbsoluteDeviation(Double)
    /// LR: local regression over the last 10 samples, predicted one migration ahead, × s ≥ 1.
    case localRegression(Double)
    /// LRR: the robust (bisquare re-weighted) local regression.
    case robustLocalRegression(Double)

    public var name: String {
        switch self {
        case .threshold(let p): "thr-mmt-\(Self.format(p))"
        case .interQuartileRange(let p): "iqr-mmt-\(Self.format(p))"
        case .medianAbsoluteDeviation(let p): "mad-mmt-\(Self.format(p))"
        case .localRegression(let p): "lr-mmt-\(Self.format(p))"
        case .robustLocalRegression(let p): "lrr-mmt-\(Self.format(p))"
        }
    }

    static func format(_ value: Double) -> String {
        value == value.rounded() ? String(format: "%.1f", value) : String(value)
    }

    /// The parameters of the paper's Table V.
    public static let paperDefaults: [String: OverloadDetector] = [
        "thr-mmt": .threshold(0.8), "iqr-mmt": .interQuartileRange(1.5), "mad-mmt": .medianAbsoluteDeviation(2.5),
        "lr-mmt": .localRegression(1.2), "lrr-mmt": .robustLocalRegression(1.2),
    ]
}

/// Overload detection (above), minimum-migration-time VM selection and power-aware best-fit
/// decreasing placement, over the simulated data centre — CloudSim's
/// PowerVmAllocationPolicyMigrationAbstract and its subclasses.
struct BeloglazovPolicy {
    let detector: OverloadDetector
    /// THR fallback while a host has too little history (CloudSim: 0.7).
    let fallbackThreshold = 0.7

    // MARK: Overload detection

    func requestedUtilization(_ dc: DataCenter, _ host: Int, extra: Int?) -> Double {
        var total = dc.requestedLoad[host]
        if let extra { total += dc.requested[extra] }
        return total / dc.hostTotalMips[host]
    }

    /// PowerHostUtilizationHistory.getUtilizationHistory: the VMs' histories weighted by
    /// their MIPS, newest first, zero tail trimmed (the host's cache plus a candidate VM).
    func hostHistory(_ dc: DataCenter, _ host: Int, extra: Int?) -> [Double] {
        let cached = dc.hostHistory(host)
        guard let extra else { return Array(cached.sums[0..<cached.length]) }
        let length = max(cached.length, dc.historyNonZeroLength[extra])
        var sums = Array(cached.sums[0..<length])
        let h = dc.history[extra]
        for i in 0..<min(length, h.count) { sums[i] += h[i] * dc.vmMips[extra] / dc.hostTotalMips[host] }
        return sums
    }

    func isOverUtilized(_ dc: DataCenter, _ host: Int, extra: Int? = nil) -> Bool {
        switch detector {
        case .threshold(let limit):
            return requestedUtilization(dc, host, extra: extra) > limit
        case .interQuartileRange(let s), .medianAbsoluteDeviation(let s):
            let data = hostHistory(dc, host, extra: extra)
            guard data.count >= 12 else { return requestedUtilization(dc, host, extra: extra) > fallbackThreshold }
            let spread: Double
            if case .interQuartileRange = detector { spread = Stats.iqr(data) } else { spread = Stats.mad(data) }
            return requestedUtilization(dc, host, extra: extra) > 1 - s * spread
        case .localRegression(let s), .robustLocalRegression(let s):
            let data = hostHistory(dc, host, extra: extra)
            let length = 10
            guard data.count >= length else { return requestedUtilization(dc, host, extra: extra) > fallbackThreshold }
            let oldestFirst = Array(data[0..<length].reversed())
            let fit: (intercept: Double, slope: Double)
            if dc.quirks.unweightedRegression {
                fit = Stats.linearFit(oldestFirst[...])
            } else {
                fit = paperFit(oldestFirst, robust: { if case .robustLocalRegression = detector { return true }; return false }())
            }
            var maxRam = Double(Int32.min)
            for vm in dc.vmList[host] { maxRam = max(maxRam, dc.vmRam[vm]) }
            if let extra { maxRam = max(maxRam, dc.vmRam[extra]) }
            let intervals = (DataCenter.migrationTime(ram: maxRam) / DataCenter.interval).rounded(.up)
            let predicted = (fit.intercept + fit.slope * (Double(length) + intervals)) * s
            return predicted >= 1
        }
    }

    /// The paper's loess: tricube weights toward the newest sample; robust adds bisquare
    /// weights from the residuals (Cleveland 1979).
    func paperFit(_ y: [Double], robust: Bool) -> (intercept: Double, slope: Double) {
        let tricube = Stats.tricube(y.count)
        let first = Stats.weightedFit(y, weights: tricube)
        guard robust else { return first }
        let residuals = y.indices.map { y[$0] - (first.intercept + first.slope * Double($0 + 1)) }
        let s6 = Stats.median(residuals.map(abs)) * 6
        guard s6 > 0 else { return first }
        let weights = y.indices.map { i -> Double in
            let r = residuals[i] / s6
            let bisquare = abs(r) < 1 ? pow(1 - r * r, 2) : 0
            return bisquare * tricube[i]
        }
        guard weights.reduce(0, +) > 0 else { return first }
        return Stats.weightedFit(y, weights: weights)
    }

    // MARK: Selection and placement

    /// MMT: the VM with the least RAM (first in the host's list on ties).
    func minimumMigrationTimeVM(_ dc: DataCenter, _ host: Int) -> Int? {
        var best: Int?, least = Double.greatestFiniteMagnitude
        for vm in dc.vmList[host] where !dc.inMigration[vm] && dc.vmRam[vm] < least {
            least = dc.vmRam[vm]; best = vm
        }
        return best
    }

    /// PABFD: the allowed host whose power rises least.
    func findHost(_ dc: DataCenter, for vm: Int, excluded: [Bool]) -> Int? {
        var minPower = Double.greatestFiniteMagnitude, chosen: Int?
        for host in 0..<dc.hostCount where !excluded[host] && dc.isSuitable(host, vm) {
            let load = dc.policyUtilizationMips(host)
            if load != 0 {
                // CloudSim tries the VM on the host (vmCreate), which also clears a stale out-entry.
                if !dc.inMigration[vm] { dc.migratingOut[host].remove(vm) }
                if isOverUtilized(dc, host, extra: vm) { continue }
            }
            guard let after = dc.hostPower[host].watts(at: (load + dc.requested[vm]) / dc.hostTotalMips[host]) else { continue }
            let difference = after - dc.power(host)
            if difference < minPower { minPower = difference; chosen = host }
        }
        return chosen
    }

    func byDecreasingDemand(_ dc: DataCenter, _ vms: [Int]) -> [Int] {
        vms.enumerated().sorted { a, b in
            let ra = dc.requested[a.element], rb = dc.requested[b.element]
            return ra != rb ? ra > rb : a.offset < b.offset
        }.map(\.element)
    }

    func placeAll(_ dc: DataCenter, _ vms: [Int], excluded: [Bool]) -> [(vm: Int, host: Int)] {
        var moves: [(vm: Int, host: Int)] = []
        for vm in byDecreasingDemand(dc, vms) {
            if let host = findHost(dc, for: vm, excluded: excluded) {
                dc.vmCreate(host, vm)
                moves.append((vm, host))
            }
        }
        return moves
    }

    /// All or nothing: an under-utilized host is emptied only if every VM finds a place.
    func placeAllOrNone(_ dc: DataCenter, _ vms: [Int], excluded: [Bool]) -> [(vm: Int, host: Int)] {
        var moves: [(vm: Int, host: Int)] = []
        for vm in byDecreasingDemand(dc, vms) {
            guard let host = findHost(dc, for: vm, excluded: excluded) else {
                for move in moves { dc.vmDestroy(move.host, move.vm) }
                return []
            }
            dc.vmCreate(host, vm)
            moves.append((vm, host))
        }
        return moves
    }

    func allMigratingOutOrAnyMigratingIn(_ dc: DataCenter, _ host: Int) -> Bool {
        for vm in dc.vmList[host] {
            if !dc.inMigration[vm] { return false }
            if dc.isMigratingIn(host, vm) { return true }
        }
        return true
    }

    /// One consolidation round (optimizeAllocation): relieve overloaded hosts, then empty the
    /// least utilized hosts one by one while all their VMs fit elsewhere.
    func optimize(_ dc: DataCenter) -> [(vm: Int, host: Int)] {
        let overloaded = (0..<dc.hostCount).filter { isOverUtilized(dc, $0) }
        var saved: [(host: Int, vm: Int)] = []
        for host in 0..<dc.hostCount {
            for vm in dc.vmList[host] where !dc.isMigratingIn(host, vm) { saved.append((host, vm)) }
        }
        var leaving: [Int] = []
        for host in overloaded {
            while let vm = minimumMigrationTimeVM(dc, host) {
                leaving.append(vm)
                dc.vmDestroy(host, vm)
                if !isOverUtilized(dc, host) { break }
            }
        }
        var excludedForPlacement = [Bool](repeating: false, count: dc.hostCount)
        for host in overloaded { excludedForPlacement[host] = true }
        var moves = placeAll(dc, leaving, excluded: excludedForPlacement)

        // Under-utilized hosts.
        var excludedAsSource = excludedForPlacement
        var excludedCount = overloaded.count
        func exclude(_ host: Int) {
            if !excludedAsSource[host] { excludedAsSource[host] = true; excludedCount += 1 }
        }
        for host in 0..<dc.hostCount where dc.utilizationOfCpu(host) == 0 {
            exclude(host); excludedForPlacement[host] = true
        }
        if !dc.quirks.consolidateFreshTargets { for move in moves { exclude(move.host) } }
        // Utilization is fixed during the round, so hosts are tried least utilized first.
        let order = (0..<dc.hostCount).sorted { (dc.utilizationOfCpu($0), $0) < (dc.utilizationOfCpu($1), $1) }
        var start = 0
        while excludedCount < dc.hostCount {
            while start < order.count && excludedAsSource[order[start]] { start += 1 }
            var source: Int?
            for index in start..<order.count {
                let host = order[index]
                if excludedAsSource[host] { continue }
                let u = dc.utilizationOfCpu(host)
                if u >= 1 { break }
                if u > 0 && !allMigratingOutOrAnyMigratingIn(dc, host) { source = host; break }
            }
            guard let source else { break }
            exclude(source); excludedForPlacement[source] = true
            let vms = dc.vmList[source].filter { !dc.inMigration[$0] }
            if vms.isEmpty { continue }
            let emptied = placeAllOrNone(dc, vms, excluded: excludedForPlacement)
            for move in emptied { exclude(move.host) }
            moves += emptied
        }

        restore(dc, saved)
        return moves
    }

    /// restoreAllocation: the round only planned; put every VM back where it runs.
    func restore(_ dc: DataCenter, _ saved: [(host: Int, vm: Int)]) {
        for host in 0..<dc.hostCount {
            for vm in dc.vmList[host] { dc.vmHost[vm] = -1 }
            dc.vmList[host] = []
            for vm in dc.migratingIn[host] where !dc.vmList[host].contains(vm) { dc.vmList[host].append(vm) }
            dc.reallocate(host)
        }
        for (host, vm) in saved {
            dc.vmCreate(host, vm)
            dc.vmTable[vm] = host
        }
    }
}

/// Initial placement at time 0, when every VM asks for its full MIPS and RAM.
enum InitialPlacement {
    /// CloudSim creates VMs in id order; each goes to the host whose power would rise least
    /// (against a stale idle reading with `stalePowerAtStart`), within PE speed, free MIPS,
    /// RAM and bandwidth; the paper's PABFD sorts VMs by decreasing MIPS first.
    static func place(_ dc: DataCenter, overloadThreshold: Double) throws {
        var allocatedMips = [Double](repeating: 0, count: dc.hostCount)
        var ram = [Double](repeating: 0, count: dc.hostCount)
        var bandwidth = [Double](repeating: 0, count: dc.hostCount)
        let stale = dc.quirks.stalePowerAtStart
        let order = stale ? Array(0..<dc.vmCount)
            : (0..<dc.vmCount).sorted { (dc.vmMips[$0], -$0) > (dc.vmMips[$1], -$1) }
        for vm in order {
            let mips = dc.vmMips[vm]
            var best: Int?, minPower = Double.greatestFiniteMagnitude
            for host in 0..<dc.hostCount {
                let total = dc.hostTotalMips[host]
                guard dc.hostPeMips[host] >= mips, total - allocatedMips[host] >= mips,
                      ram[host] + dc.vmRam[vm] <= DataCenter.hostRAM,
                      bandwidth[host] + DataCenter.vmBandwidth <= DataCenter.hostBandwidth else { continue }
                // Only the new VM asks for CPU yet (the others have no workload until 0.1 s).
                if allocatedMips[host] != 0 && mips / total > overloadThreshold { continue }
                guard let after = dc.hostPower[host].watts(at: (allocatedMips[host] + mips) / total) else { continue }
                let before = stale ? dc.hostPower[host].watts[0] : (dc.hostPower[host].watts(at: allocatedMips[host] / total) ?? 0)
                if after - before < minPower { minPower = after - before; best = host }
            }
            guard let host = best else {
                throw TraceError("initial placement: VM \(vm) (\(Int(mips)) MIPS, \(Int(dc.vmRam[vm])) MB) fits on none of \(dc.hostCount) hosts")
            }
            allocatedMips[host] += mips; ram[host] += dc.vmRam[vm]; bandwidth[host] += DataCenter.vmBandwidth
            dc.vmCreate(host, vm)
            dc.vmTable[vm] = host
        }
    }
}
