import Foundation
import ShepherdCore

/// DRS settings, as FusionCompute names them.
public struct DRSSettings: Sendable, Equatable {
    public enum Automation: String, Sendable, Equatable { case manual, automatic }
    public enum Metric: String, Sendable, Equatable { case cpu, memory, both }

    public var automation: Automation
    public var metric: Metric
    /// 1 (conservative: only mandatory moves — rules, maintenance) … 5 (aggressive).
    public var threshold: Int
    /// No balancing while every host is under these loads (fractions).
    public var baselineCPU: Double
    public var baselineMemory: Double
    /// A VM DRS moved is not moved again by balancing for this many rounds (no ping-pong);
    /// mandatory moves (maintenance, broken rules) still move it.
    public var holdRounds: Int

    public init(automation: Automation = .automatic, metric: Metric = .both, threshold: Int = 3,
                baselineCPU: Double = 0.5, baselineMemory: Double = 0.6, holdRounds: Int = 6) {
        self.automation = automation; self.metric = metric; self.threshold = threshold
        self.baselineCPU = baselineCPU; self.baselineMemory = baselineMemory; self.holdRounds = holdRounds
    }

    /// The load DRS keeps a host's forecast under: 1 → never balances, 2 → 95 % … 5 → 80 %.
    public var ceiling: Double? {
        switch threshold {
        case ...1: nil
        case 2: 0.95
        case 3: 0.90
        case 4: 0.85
        default: 0.80
        }
    }

    public func validate() throws {
        guard (1...5).contains(threshold) else {
            throw ShepherdError(.invalidField, "drs-threshold: \(threshold) is not 1 (conservative) … 5 (aggressive)")
        }
        for (name, value) in [("drs-baseline cpu", baselineCPU), ("drs-baseline mem", baselineMemory)] where !(0...1).contains(value) {
            let shown = value.isFinite ? "\(Int((value * 100).rounded()))" : "\(value)"
            throw ShepherdError(.invalidField, "\(name): \(shown) % is not within 0–100 %")
        }
    }
}

/// One recommended live migration, with why and what it buys.
public struct DRSMove: Sendable, Equatable, CustomStringConvertible {
    public enum Reason: Sendable, Equatable {
        /// A rule is broken where the VM runs (mandatory at every threshold).
        case rule(String)
        /// Its host is in maintenance mode (mandatory).
        case maintenance
        /// Its host's forecast load is over the ceiling.
        case overload(hostLoad: Double, ceiling: Double)
        /// DPM empties its host to power it off.
        case powerOff(hostLoad: Double)
    }
    public var vm: Int
    public var from: Int
    public var to: Int
    public var reason: Reason
    /// Forecast CPU (MHz) taken off an overloaded host, or watts saved by emptying one.
    public var gain: Double
    /// Memory the migration copies (MiB): its cost.
    public var costMiB: Int

    public var isMandatory: Bool {
        switch reason { case .rule, .maintenance: true; case .overload, .powerOff: false }
    }

    public var description: String {
        "vm \(vm): host \(from) → \(to): " + reasonText { "host \($0)" }
    }

    /// Why, with the numbers; `hostName` names host indices (the manager passes real names).
    public func reasonText(hostName: (Int) -> String) -> String {
        switch reason {
        case .rule(let name): "rule '\(name)' is broken where it runs"
        case .maintenance: "\(hostName(from)) is entering maintenance"
        case .overload(let load, let ceiling):
            "forecast load \(Int(load * 100)) % > ceiling \(Int(ceiling * 100)) %; frees \(Int(gain)) MHz for \(costMiB) MiB copied"
        case .powerOff(let load):
            "empties \(hostName(from)) (forecast load \(Int(load * 100)) %) so DPM can power it off"
        }
    }
}

/// The forecast DRS and DPM act on: a VM's demand is what it is likely to ask for until the
/// next round, not its last sample — PlanetLab-like loads jump, and a move made on the last
/// sample alone is undone five minutes later.
public enum DemandForecast {
    /// Upper estimate (fraction of the VM's maximum) from recent samples, newest first:
    /// the larger of now and mean + `sigmas`·σ over the last `window` samples.
    public static func upper(current: Double, historyNewestFirst: [Double], window: Int = 12, sigmas: Double = 2) -> Double {
        let recent = historyNewestFirst.prefix(window)
        guard recent.count >= 3 else { return current }
        let mean = recent.reduce(0, +) / Double(recent.count)
        let variance = recent.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(recent.count)
        return min(1, max(current, mean + sigmas * variance.squareRoot()))
    }
}

/// Distributed resource scheduling over a snapshot: mandatory moves first (rules,
/// maintenance), then moves that bring overloaded hosts under the threshold's ceiling.
/// Every move names its reason, gain and cost; moves that do not reduce the worst overload of
/// the two hosts involved are dropped.
public enum DRS {
    /// What a host carries if the forecasts hold.
    public struct Load: Sendable, Equatable {
        public var cpuMHz: [Double]
        public var memoryMiB: [Int]
        public init(_ snapshot: ClusterSnapshot, forecastMHz: [Double]) {
            cpuMHz = Array(repeating: 0, count: snapshot.hosts.count)
            memoryMiB = Array(repeating: 0, count: snapshot.hosts.count)
            for (index, vm) in snapshot.vms.enumerated() {
                guard let host = vm.host else { continue }
                cpuMHz[host] += forecastMHz[index]
                memoryMiB[host] += vm.memoryMiB
            }
        }
        public func cpuFraction(_ snapshot: ClusterSnapshot, _ host: Int) -> Double {
            cpuMHz[host] / snapshot.hosts[host].cpuCapacityMHz
        }
        public func memoryFraction(_ snapshot: ClusterSnapshot, _ host: Int) -> Double {
            Double(memoryMiB[host]) / Double(max(1, snapshot.hosts[host].memoryMiB))
        }
    }

    /// Whether `vm` may run on `host` with its forecast: usable, within the ceiling, one
    /// vCPU's forecast within one core, memory within the overcommit ratio, no mandatory rule.
    public static func fits(_ snapshot: ClusterSnapshot, _ load: Load, vm: Int, forecastMHz: Double, on host: Int,
                            ceiling: Double) -> Bool {
        let h = snapshot.hosts[host], v = snapshot.vms[vm]
        guard h.isUsable, v.host != host else { return false }
        if let model = v.cpuModel, let offered = h.cpuModel, model != offered { return false }
        let perCore = h.cpuCapacityMHz / Double(max(1, h.cores))
        guard forecastMHz / Double(max(1, v.vcpus)) <= perCore else { return false }
        guard load.cpuMHz[host] + forecastMHz <= ceiling * h.cpuCapacityMHz else { return false }
        guard Double(load.memoryMiB[host] + v.memoryMiB) <= Double(h.memoryMiB) * snapshot.memoryOvercommitRatio else { return false }
        return !snapshot.hasRuleConflict(placing: vm, on: host)
    }

    /// Best fit: the usable host with VMs already (so no host wakes for it) whose CPU ends
    /// fullest under the ceiling; an empty powered-on host only when no busy one fits.
    public static func bestTarget(_ snapshot: ClusterSnapshot, _ load: Load, vm: Int, forecastMHz: Double,
                                  ceiling: Double, excluded: Set<Int> = []) -> Int? {
        var best: Int?, bestScore = -Double.infinity
        for host in snapshot.hosts.indices where !excluded.contains(host) {
            guard fits(snapshot, load, vm: vm, forecastMHz: forecastMHz, on: host, ceiling: ceiling) else { continue }
            let after = (load.cpuMHz[host] + forecastMHz) / snapshot.hosts[host].cpuCapacityMHz
            let score = (load.cpuMHz[host] > 0 ? 1.0 : 0.0) + after - Double(snapshot.ruleSoftPenalty(placing: vm, on: host))
            if score > bestScore { bestScore = score; best = host }
        }
        return best
    }

    /// Recommendations for one round, most valuable first (mandatory ones before all).
    /// `held[vm]` marks VMs moved within the hold time.
    public static func recommend(_ snapshot: ClusterSnapshot, settings: DRSSettings, forecastMHz: [Double],
                                 held: [Bool]) -> (moves: [DRSMove], unresolved: [Int]) {
        var load = Load(snapshot, forecastMHz: forecastMHz)
        var moves: [DRSMove] = []
        var working = snapshot
        func apply(_ move: DRSMove) {
            load.cpuMHz[move.from] -= forecastMHz[move.vm]; load.cpuMHz[move.to] += forecastMHz[move.vm]
            load.memoryMiB[move.from] -= working.vms[move.vm].memoryMiB; load.memoryMiB[move.to] += working.vms[move.vm].memoryMiB
            working.vms[move.vm].host = move.to
            moves.append(move)
        }

        // Mandatory: maintenance and broken rules, at every threshold, for excluded and held VMs
        // too, ignoring the ceiling only as far as needed (1.0: never overcommit CPU to honour a
        // rule). A host whose mandatory move finds no target is reported unresolved.
        var unresolved: [Int] = []
        for (index, vm) in working.vms.enumerated() {
            guard let host = vm.host else { continue }
            let reason: DRSMove.Reason?
            if working.hosts[host].state == .maintenance { reason = .maintenance }
            else if let conflict = working.ruleConflicts(placing: index, on: host).first { reason = .rule(conflict.rule) }
            else { reason = nil }
            guard let reason else { continue }
            if let target = bestTarget(working, load, vm: index, forecastMHz: forecastMHz[index], ceiling: 1.0) {
                apply(DRSMove(vm: index, from: host, to: target, reason: reason, gain: 0, costMiB: vm.memoryActiveMiB))
            } else if !unresolved.contains(host) {
                unresolved.append(host)
            }
        }

        guard let ceiling = settings.ceiling else { return (moves, unresolved) }
        // The scheduling baseline: no balancing while every host is under it.
        let anyOverBaseline = working.hosts.indices.contains { host in
            working.hosts[host].isUsable
                && ((settings.metric != .memory && load.cpuFraction(working, host) > settings.baselineCPU)
                    || (settings.metric != .cpu && load.memoryFraction(working, host) > settings.baselineMemory))
        }
        guard anyOverBaseline else { return (moves, unresolved) }

        let overloaded = working.hosts.indices.filter { working.hosts[$0].isUsable && load.cpuFraction(working, $0) > ceiling }
            .sorted { load.cpuFraction(working, $0) > load.cpuFraction(working, $1) }
        for host in overloaded {
            while load.cpuFraction(working, host) > ceiling {
                let excess = load.cpuMHz[host] - ceiling * working.hosts[host].cpuCapacityMHz
                let candidates = working.vms.indices.filter { working.vms[$0].host == host && !working.vms[$0].drsExcluded && !held[$0] }
                guard !candidates.isEmpty else { if !unresolved.contains(host) { unresolved.append(host) }; break }
                // The cheapest VM that clears the excess on its own, then the rest largest first
                // (a VM that clears it may fit nowhere while smaller ones do).
                let clearing = candidates.filter { forecastMHz[$0] >= excess }
                    .sorted { (working.vms[$0].memoryActiveMiB, $0) < (working.vms[$1].memoryActiveMiB, $1) }
                let rest = candidates.filter { forecastMHz[$0] < excess }
                    .sorted { (forecastMHz[$0], -$0) > (forecastMHz[$1], -$1) }
                let ordered = clearing + rest
                var moved = false
                for vm in ordered {
                    guard let target = bestTarget(working, load, vm: vm, forecastMHz: forecastMHz[vm], ceiling: ceiling) else { continue }
                    let before = load.cpuFraction(working, host)
                    apply(DRSMove(vm: vm, from: host, to: target, reason: .overload(hostLoad: before, ceiling: ceiling),
                                  gain: min(forecastMHz[vm], excess), costMiB: working.vms[vm].memoryActiveMiB))
                    moved = true
                    break
                }
                if !moved { if !unresolved.contains(host) { unresolved.append(host) }; break }
            }
        }
        return (moves, unresolved)
    }
}
