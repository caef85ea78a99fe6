import Scheduling
import ShepherdCore

/// `ours`: Shepherd's DRS and DPM (Scheduling module) run on the simulated data centre every
/// 300 s — the same functions the manager runs, over a snapshot built from the simulation.
/// Why it needs fewer moves than LR-MMT: it acts on a demand forecast (mean + 2σ of the last
/// hour, never below now) instead of the last sample, keeps hosts under a ceiling rather than
/// filling them to the predicted limit, empties a host only after it stayed low for two rounds
/// and only onto hosts that already run, and never moves a VM back within the hold time.
final class ShepherdConsolidation {
    let drs: DRSSettings
    let dpm: DPMSettings
    /// Initial placement's overload check (as the baselines' fallback threshold).
    let startThreshold = 0.7
    let forecastSigmas = 0.5
    private var round = 0
    private var lastMoved: [Int] = []
    private var roundsLow: [Int] = []

    init(drs: DRSSettings = DRSSettings(automation: .automatic, metric: .cpu, threshold: 2, baselineCPU: 0, holdRounds: 6),
         dpm: DPMSettings = DPMSettings()) {
        self.drs = drs; self.dpm = dpm
    }

    func optimize(_ dc: DataCenter) -> [(vm: Int, host: Int)] {
        round += 1
        if lastMoved.isEmpty {
            lastMoved = Array(repeating: -1_000_000, count: dc.vmCount)
            roundsLow = Array(repeating: 0, count: dc.hostCount)
        }
        // The snapshot: every host (empty ones are asleep: standby), every running VM.
        var vmIndex: [Int] = []
        var vms: [SnapshotVM] = []
        var forecast: [Double] = []
        var held: [Bool] = []
        for vm in 0..<dc.vmCount where !dc.removed[vm] && dc.vmTable[vm] >= 0 {
            let mips = dc.vmMips[vm]
            let upper = DemandForecast.upper(current: dc.requested[vm] / mips, historyNewestFirst: dc.history[vm], sigmas: forecastSigmas)
            vmIndex.append(vm)
            // The workload model asks for no RAM (CloudSim's UtilizationModelNull); migrating
            // still copies the VM's configured RAM, which is the move's cost.
            vms.append(SnapshotVM(name: "vm-\(vm)", host: dc.vmTable[vm], vcpus: 1, cpuDemandMHz: dc.requested[vm],
                                  cpuMaxMHz: mips, memoryMiB: 0, memoryActiveMiB: Int(dc.vmRam[vm])))
            forecast.append(upper * mips)
            held.append(round - lastMoved[vm] < drs.holdRounds)
        }
        var hosts: [SnapshotHost] = (0..<dc.hostCount).map { host in
            SnapshotHost(name: "host-\(host)", power: dc.vmList[host].isEmpty ? .standby : .on,
                         cpuCapacityMHz: dc.hostTotalMips[host], cores: 2, memoryMiB: Int(DataCenter.hostRAM))
        }
        var snapshot = ClusterSnapshot(hosts: hosts, vms: vms)

        var result = DRS.recommend(snapshot, settings: drs, forecastMHz: forecast, held: held)
        if !result.unresolved.isEmpty {
            // DPM wakes hosts for what DRS could not place, then DRS runs again with them.
            let plan = DPM.plan(snapshot, drs: drs, settings: dpm, forecastMHz: forecast, held: held, roundsLow: roundsLow,
                                unresolved: result.unresolved, idleWatts: { dc.hostPower[$0].watts[0] },
                                mipsPerWatt: { dc.hostTotalMips[$0] / dc.hostPower[$0].watts[10] })
            for host in plan.powerOn { hosts[host].power = .on }
            snapshot = ClusterSnapshot(hosts: hosts, vms: vms)
            result = DRS.recommend(snapshot, settings: drs, forecastMHz: forecast, held: held)
        }
        var moves = result.moves
        for move in moves { snapshot.vms[move.vm].host = move.to }

        // Hysteresis bookkeeping, then DPM's power-off evacuations on the post-DRS picture.
        let load = DRS.Load(snapshot, forecastMHz: forecast)
        for host in 0..<dc.hostCount {
            roundsLow[host] = load.cpuFraction(snapshot, host) < dpm.lowWatermark && load.cpuMHz[host] > 0 ? roundsLow[host] + 1 : 0
        }
        if result.unresolved.isEmpty {
            let moved = Set(moves.map(\.vm))
            let plan = DPM.plan(snapshot, drs: drs, settings: dpm, forecastMHz: forecast,
                                held: held.indices.map { held[$0] || moved.contains($0) }, roundsLow: roundsLow,
                                unresolved: [], idleWatts: { dc.hostPower[$0].watts[0] },
                                mipsPerWatt: { dc.hostTotalMips[$0] / dc.hostPower[$0].watts[10] })
            moves += plan.evacuations
        }
        for move in moves { lastMoved[vmIndex[move.vm]] = round }
        return moves.map { (vmIndex[$0.vm], $0.to) }
    }
}
