import Foundation
import GRDB
import Scheduling
import ShepherdAPI
import ShepherdCore

/// The per-host balloon controller (seed: 内存气泡): after a host's heartbeat, at most every
/// `interval`, it plans with `BalloonPlanner` from the guests' own memory statistics and moves
/// the balloons that need it. Only in clusters with memory overcommit on (off, every VM reserves
/// all its memory and nothing may be taken). Each round that moves 64 MiB or more is one event
/// with the numbers.
actor BalloonService {
    let store: Store
    let agents: AgentClient
    let events: EventLog
    let hostReserveMiB: Int
    static let interval: Duration = .milliseconds(1900)
    static let eventThresholdMiB = 64
    private var lastRound: [String: ContinuousClock.Instant] = [:]
    private var running: Set<String> = []
    /// What each running guest last reported: memory it has (less the balloon) and uses.
    private var latest: [String: (balloonMiB: Int, usedMiB: Int?)] = [:]

    init(store: Store, agents: AgentClient, events: EventLog, hostReserveMiB: Int) {
        self.store = store; self.agents = agents; self.events = events; self.hostReserveMiB = hostReserveMiB
    }

    /// Called with every heartbeat; returns at once (the round runs on its own).
    func adjust(hostId: String, guests: [AgentWire.GuestStatus]) {
        for guest in guests {
            guard guest.power == .running, let balloon = guest.balloonMiB else { latest[guest.vmId] = nil; continue }
            latest[guest.vmId] = (balloon, guest.guestAvailableMiB.map { max(0, balloon - $0) })
        }
        guard !running.contains(hostId), lastRound[hostId].map({ ContinuousClock.now - $0 >= Self.interval }) ?? true else { return }
        running.insert(hostId)
        lastRound[hostId] = .now
        Task {
            await self.round(hostId: hostId, guests: guests)
            self.finish(hostId)
        }
    }

    private func finish(_ hostId: String) { running.remove(hostId) }

    /// VMs as the API shows them, with what their guests last reported of their memory.
    func withMemory(_ vms: [Components.Schemas.Vm]) -> [Components.Schemas.Vm] {
        vms.map { vm in
            var vm = vm
            if vm.state == .running, let report = latest[vm.id] {
                vm.guestMemoryMiB = report.balloonMiB
                vm.guestUsedMiB = report.usedMiB
            }
            return vm
        }
    }

    private func round(hostId: String, guests: [AgentWire.GuestStatus]) async {
        let reports = Dictionary(guests.map { ($0.vmId, $0) }, uniquingKeysWith: { a, _ in a })
        guard let (host, vms, others) = try? await store.db.read({ db -> (HostRecord, [VMRecord], Int)? in
            guard let host = try HostRecord.fetchOne(db, key: hostId),
                  try ClusterRecord.fetchOne(db, key: host.clusterId)?.memoryOvercommit == true else { return nil }
            let here = try VMRecord.filter(Column("hostId") == hostId || Column("migrationTarget") == hostId).order(Column("name")).fetchAll(db)
                .filter { $0.lifecycle.consumesHostResources }
            let planned = here.filter { $0.hostId == hostId && $0.state == "running" }
            // VMs starting, stopping, migrating in or out keep what they hold; the plan shares the rest.
            let held = here.filter { vm in !planned.contains { $0.id == vm.id } }.reduce(0) { $0 + $1.memoryMiB }
            return (host, planned, held)
        }) ?? nil, !vms.isEmpty else { return }
        let budget = max(0, host.memoryTotalMiB - hostReserveMiB - others)
        let inputs = vms.map { vm -> BalloonVM in
            let report = reports[vm.id]
            let current = report?.balloonMiB ?? vm.qos.memoryCeilingMiB(memoryMiB: vm.memoryMiB)
            return BalloonVM(name: vm.name, memoryMiB: vm.memoryMiB, reservationMiB: vm.memoryReservationMiB, limitMiB: vm.memoryLimitMiB,
                             shares: vm.memoryShares, currentMiB: current, usedMiB: report?.guestAvailableMiB.map { max(0, current - $0) })
        }
        let decisions = BalloonPlanner.plan(budgetMiB: budget, vms: inputs)
        guard !decisions.isEmpty else { return }
        var made: [String] = [], failed: [String] = []
        for decision in decisions {
            do {
                try await agents.setBalloon(Inventory.endpoint(host), vm: vms[decision.vm].id, targetMiB: decision.toMiB)
                made.append(decision.description)
            } catch {
                failed.append("\(decision.name): \(error)")
            }
        }
        // Small trims (a guest's use wanders) are made but not written down: the event log is
        // for rounds that move real memory.
        let moved = decisions.reduce(0) { $0 + abs($1.toMiB - $1.fromMiB) }
        guard moved >= Self.eventThresholdMiB || !failed.isEmpty else { return }
        let demand = inputs.map(BalloonPlanner.demandMiB).reduce(0, +)
        let message = "balloons on \(host.name) (\(budget) MiB for VMs; they need about \(demand) MiB): " + made.joined(separator: ", ")
            + (failed.isEmpty ? "" : "; not moved: " + failed.joined(separator: "; "))
        await events.record(failed.isEmpty ? .info : .warning, "host.balloon", targetType: "host", targetId: host.id, targetName: host.name, message)
    }
}
