import ShepherdCore

/// Distributed power management: empties and powers off hosts the cluster does not need,
/// powers hosts on when DRS cannot bring a host under its ceiling. It depends on DRS and does
/// nothing at threshold 1 (seed: 计算资源调度).
public struct DPMSettings: Sendable, Equatable {
    public enum Mode: String, Sendable, Equatable { case off, manual, automatic }
    public var mode: Mode
    /// A host whose forecast CPU stays under this fraction is a power-off candidate…
    public var lowWatermark: Double
    /// …once it has stayed there this many rounds (hysteresis: hosts do not flap).
    public var roundsBelow: Int
    /// At most this many hosts are emptied in one round.
    public var maxHostsPerRound: Int
    /// Evacuations that copy more than this (MiB) per host are not worth a host's idle power.
    public var maxEvacuationMiB: Int

    public init(mode: Mode = .automatic, lowWatermark: Double = 0.8, roundsBelow: Int = 1,
                maxHostsPerRound: Int = 200, maxEvacuationMiB: Int = 8192) {
        self.mode = mode; self.lowWatermark = lowWatermark; self.roundsBelow = roundsBelow
        self.maxHostsPerRound = maxHostsPerRound; self.maxEvacuationMiB = maxEvacuationMiB
    }
}

public struct DPMPlan: Sendable, Equatable {
    /// Hosts to empty (with `evacuations`) and then power off.
    public var powerOff: [Int] = []
    public var evacuations: [DRSMove] = []
    /// Standby hosts to power on, most efficient first.
    public var powerOn: [Int] = []
    public init() {}
}

public enum DPM {
    /// One round. `roundsLow[host]` counts the consecutive rounds the host's forecast stayed
    /// under the low watermark (the caller keeps it); `watts(host)` is the host's idle power
    /// (what powering it off saves); `unresolved` are hosts DRS could not relieve.
    public static func plan(_ snapshot: ClusterSnapshot, drs: DRSSettings, settings: DPMSettings, forecastMHz: [Double],
                            held: [Bool], roundsLow: [Int], unresolved: [Int],
                            idleWatts: (Int) -> Double, mipsPerWatt: (Int) -> Double) -> DPMPlan {
        var plan = DPMPlan()
        guard settings.mode != .off, let ceiling = drs.ceiling else { return plan }

        // Power on: one standby host per host DRS could not relieve, most MHz per watt first.
        if !unresolved.isEmpty {
            let standby = snapshot.hosts.indices.filter { snapshot.hosts[$0].power == .standby && snapshot.hosts[$0].state == .connected }
                .sorted { (mipsPerWatt($0), -$0) > (mipsPerWatt($1), -$1) }
            plan.powerOn = Array(standby.prefix(unresolved.count))
            return plan
        }

        // Power off: low hosts, fewest VMs and least memory to copy first; all VMs must fit on
        // hosts that stay on, under the DRS ceiling, or the host stays.
        var load = DRS.Load(snapshot, forecastMHz: forecastMHz)
        var working = snapshot
        let vmsByHost = Dictionary(grouping: working.vms.indices.filter { working.vms[$0].host != nil }) { working.vms[$0].host! }
        let candidates = working.hosts.indices.filter { host in
            working.hosts[host].isUsable && roundsLow[host] >= settings.roundsBelow
                && load.cpuFraction(working, host) < settings.lowWatermark
                && !(vmsByHost[host] ?? []).isEmpty
                && !(vmsByHost[host] ?? []).contains { held[$0] || working.vms[$0].drsExcluded }
        }.sorted { a, b in
            let ka = ((vmsByHost[a] ?? []).count, load.cpuMHz[a]), kb = ((vmsByHost[b] ?? []).count, load.cpuMHz[b])
            return ka != kb ? ka < kb : a < b
        }
        var emptied = Set<Int>()
        // A host that received VMs this round is no longer a candidate: its VM list and load
        // above are from before the round.
        var received = Set<Int>()
        for host in candidates where plan.powerOff.count < settings.maxHostsPerRound && !received.contains(host) {
            let vms = (vmsByHost[host] ?? []).sorted { (forecastMHz[$0], -$0) > (forecastMHz[$1], -$1) }
            let copy = vms.reduce(0) { $0 + working.vms[$1].memoryActiveMiB }
            guard copy <= settings.maxEvacuationMiB else { continue }
            var trial = load, trialSnapshot = working, moves: [DRSMove] = []
            var excluded = emptied
            excluded.insert(host)
            for vm in vms {
                // Only hosts that already run VMs: emptying one host must not wake another.
                guard let target = DRS.bestTarget(trialSnapshot, trial, vm: vm, forecastMHz: forecastMHz[vm], ceiling: ceiling, excluded: excluded),
                      trial.cpuMHz[target] > 0 else { moves = []; break }
                moves.append(DRSMove(vm: vm, from: host, to: target, reason: .powerOff(hostLoad: load.cpuFraction(working, host)),
                                     gain: idleWatts(host), costMiB: working.vms[vm].memoryActiveMiB))
                trial.cpuMHz[host] -= forecastMHz[vm]; trial.cpuMHz[target] += forecastMHz[vm]
                trial.memoryMiB[host] -= trialSnapshot.vms[vm].memoryMiB; trial.memoryMiB[target] += trialSnapshot.vms[vm].memoryMiB
                trialSnapshot.vms[vm].host = target
            }
            guard moves.count == vms.count else { continue }
            load = trial; working = trialSnapshot
            emptied.insert(host)
            received.formUnion(moves.map(\.to))
            plan.powerOff.append(host)
            plan.evacuations += moves
        }
        return plan
    }
}
