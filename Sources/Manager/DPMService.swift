import Foundation
import GRDB
import Scheduling
import ShepherdCore

/// DPM in the manager. After a DRS round that had nothing to move, the Scheduling core's
/// `DPM.plan` (the function the simulator runs) says which lightly loaded hosts to empty and
/// power off, and which standby hosts to power on for hosts DRS could not relieve. Automatic
/// mode does it — live migrations first, then the host's BMC (state `standby`); manual mode says
/// it in events. Hosts without a BMC are never powered off: nothing could power them on again.
final class DPMService: Sendable {
    let store: Store
    let events: EventLog
    let migrations: MigrationService
    let power: PowerService
    private let lowRounds = LowRounds()
    private let notes = OnceNotes()

    /// vSphere's default DPM target is 63 % ± 18 %: below 45 % a host is a power-off candidate,
    /// for two rounds in a row (no flapping), one host per round.
    static let settings = DPMSettings(mode: .automatic, lowWatermark: 0.45, roundsBelow: 2, maxHostsPerRound: 1, maxEvacuationMiB: 8192)

    init(store: Store, events: EventLog, migrations: MigrationService, power: PowerService) {
        self.store = store; self.events = events; self.migrations = migrations; self.power = power
    }

    func round(_ cluster: ClusterRecord, _ evaluation: DRSService.Evaluation) async {
        let snapshot = evaluation.snapshot
        let records = evaluation.hosts
        if cluster.haEnabled, cluster.haAdmission != "off" {
            await note("\(cluster.id)-admission", "dpm.blocked", cluster,
                       "DPM keeps every host on while HA admission control (\(cluster.haAdmission)) is on: it does not yet prove the failover capacity survives a power-off")
            return
        }
        let load = DRS.Load(snapshot, forecastMHz: evaluation.forecastMHz)
        let low = snapshot.hosts.indices.map { host in
            snapshot.hosts[host].isUsable && records[host].bmcAddress != nil
                && load.cpuFraction(snapshot, host) < Self.settings.lowWatermark
        }
        let roundsLow = await lowRounds.update(records.map(\.id), low: low)
        var plan = DPM.plan(snapshot, drs: DRSService.settings(cluster), settings: Self.settings, forecastMHz: evaluation.forecastMHz,
                            held: evaluation.held, roundsLow: roundsLow, unresolved: evaluation.unresolved,
                            idleWatts: { _ in 1 }, mipsPerWatt: { snapshot.hosts[$0].cpuCapacityMHz })
        // Empty hosts the plan leaves alone (nothing to evacuate): off too, while another usable host stays on.
        let usable = snapshot.hosts.indices.filter { snapshot.hosts[$0].isUsable }
        if plan.powerOff.isEmpty, plan.powerOn.isEmpty, usable.count > 1,
           let idle = usable.first(where: { host in roundsLow[host] >= Self.settings.roundsBelow && load.cpuMHz[host] == 0
                                                && !snapshot.vms.contains { $0.host == host } }) {
            plan.powerOff = [idle]
        }
        guard !plan.powerOff.isEmpty || !plan.powerOn.isEmpty else { return }
        guard cluster.dpmMode == "automatic" else {
            for host in plan.powerOn {
                await note("\(records[host].id)-on-\(plan.powerOn)", "dpm.recommended", cluster, "power on \(records[host].name): DRS cannot relieve a host")
            }
            for host in plan.powerOff {
                let moves = plan.evacuations.filter { $0.from == host }.map { "\(snapshot.vms[$0.vm].name) → \(snapshot.hosts[$0.to].name)" }
                await note("\(records[host].id)-off-\(moves)", "dpm.recommended", cluster,
                           "power off \(records[host].name) (CPU \(Int(load.cpuFraction(snapshot, host) * 100)) %)" + (moves.isEmpty ? "" : " after moving " + moves.joined(separator: ", ")))
            }
            return
        }
        for host in plan.powerOn {
            do {
                let task = try await power.power(records[host].id, action: .on, force: false)
                await events.record(.info, "dpm.power-on", targetType: "host", targetId: records[host].id, targetName: records[host].name,
                                    "powering on: DRS cannot relieve \(evaluation.unresolved.map { snapshot.hosts[$0].name }.joined(separator: ", ")) (task \(task.id))")
            } catch {
                await events.record(.warning, "dpm.failed", targetType: "host", targetId: records[host].id, targetName: records[host].name,
                                    "could not power on: \(error)")
            }
        }
        for host in plan.powerOff {
            await empty(records[host], moves: plan.evacuations.filter { $0.from == host }, evaluation, load: load.cpuFraction(snapshot, host))
        }
    }

    /// Moves the host's VMs away live, one at a time, then powers it off into standby. A failed
    /// move stops there: the host stays on with what is left (the moved VMs stay moved).
    private func empty(_ host: HostRecord, moves: [DRSMove], _ evaluation: DRSService.Evaluation, load: Double) async {
        let names = moves.map { "\(evaluation.snapshot.vms[$0.vm].name) → \(evaluation.snapshot.hosts[$0.to].name)" }
        await events.record(.info, "dpm.power-off", targetType: "host", targetId: host.id, targetName: host.name,
                            "CPU \(Int(load * 100)) % (under \(Int(Self.settings.lowWatermark * 100)) % for \(Self.settings.roundsBelow) rounds): "
                                + (names.isEmpty ? "powering off into standby" : "moving \(names.joined(separator: ", ")), then powering off into standby"))
        do {
            for move in moves {
                let task = try await migrations.migrate(evaluation.vmIDs[move.vm], target: evaluation.hosts[move.to].id)
                let finished = try await store.finished(task.id)
                guard finished.state == "succeeded" else {
                    throw ShepherdError(.preflightFailed, "moving \(evaluation.snapshot.vms[move.vm].name) failed: \(finished.errorMessage ?? "?")")
                }
            }
            let task = try await power.power(host.id, action: .standby, force: false)
            let finished = try await store.finished(task.id)
            guard finished.state == "succeeded" else { throw ShepherdError(.bmcFailed, finished.errorMessage ?? "power-off failed") }
            await lowRounds.reset(host.id)
        } catch {
            await events.record(.warning, "dpm.failed", targetType: "host", targetId: host.id, targetName: host.name,
                                "stays on: \(error)")
        }
    }

    private func note(_ key: String, _ kind: String, _ cluster: ClusterRecord, _ message: String) async {
        guard await notes.first(key) else { return }
        await events.record(.info, kind, targetType: "cluster", targetId: cluster.id, targetName: cluster.name, message)
    }
}

/// Consecutive DPM rounds each host spent under the low watermark.
actor LowRounds {
    private var rounds: [String: Int] = [:]

    func update(_ hostIDs: [String], low: [Bool]) -> [Int] {
        zip(hostIDs, low).map { id, isLow in
            rounds[id] = isLow ? (rounds[id] ?? 0) + 1 : 0
            return rounds[id]!
        }
    }

    func reset(_ hostID: String) { rounds[hostID] = 0 }
}
