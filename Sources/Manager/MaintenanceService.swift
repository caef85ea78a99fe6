import Foundation
import GRDB
import Logging
import Scheduling
import ShepherdCore

/// Maintenance mode: entering it moves every running VM away live (placement picks each
/// target, the migration preflight applies), reassigns the stopped ones, and ends only when the
/// host is empty. A host in maintenance takes no new VMs.
final class MaintenanceService: Sendable {
    let store: Store
    let tasks: TaskEngine
    let events: EventLog
    let placement: Placement
    let migrations: MigrationService

    init(store: Store, tasks: TaskEngine, events: EventLog, placement: Placement, migrations: MigrationService) {
        self.store = store; self.tasks = tasks; self.events = events; self.placement = placement; self.migrations = migrations
    }

    func enter(_ reference: String) async throws -> TaskRecord {
        let (host, task) = try await store.db.write { [tasks] db -> (HostRecord, TaskRecord) in
            var host = try Inventory.host(db, reference)
            switch host.hostState {
            case .maintenance: throw ShepherdError(.illegalState, "host '\(host.name)' is already in maintenance mode")
            case .disconnected: throw ShepherdError(.hostNotConnected, "host '\(host.name)' is disconnected; its VMs cannot be moved live")
            case .standby: throw ShepherdError(.hostNotConnected, "host '\(host.name)' is in standby (powered off by DPM); it runs no VMs")
            case .connected: break
            }
            let task = tasks.newTask(kind: "host.maintenance.enter", targetType: "host", targetId: host.id, targetName: host.name)
            // From now on placement and admission skip this host.
            host.state = HostState.maintenance.rawValue
            try host.update(db)
            try task.insert(db)
            return (host, task)
        }
        tasks.run(task) { [self] progress in
            // Detached, like a migration: a cancel stops between VMs and the undo still runs.
            let cancel = CancelFlag()
            let work = Task.detached { [self] () async throws -> String in
                try await enterWorkflow(host, cancel: cancel, progress: progress)
            }
            return try await withTaskCancellationHandler { try await work.value } onCancel: { cancel.raise() }
        }
        return task
    }

    private func enterWorkflow(_ host: HostRecord, cancel: CancelFlag, progress: TaskEngine.Progress) async throws -> String {
            do {
                return try await evacuate(host, cancel: cancel, progress: progress)
            } catch {
                try? await store.db.write { db in
                    guard var row = try HostRecord.fetchOne(db, key: host.id) else { return }
                    row.state = HostState.connected.rawValue
                    try row.update(db)
                }
                throw failure(error, rolledBack: "'\(host.name)' is out of maintenance mode again (the VMs already moved stay where they are)")
            }
    }

    func exit(_ reference: String) async throws -> TaskRecord {
        let (host, task) = try await store.db.write { [tasks] db -> (HostRecord, TaskRecord) in
            var host = try Inventory.host(db, reference)
            guard host.hostState == .maintenance else {
                throw ShepherdError(.illegalState, "host '\(host.name)' is not in maintenance mode (it is \(host.state))")
            }
            let task = tasks.newTask(kind: "host.maintenance.exit", targetType: "host", targetId: host.id, targetName: host.name)
            let lost = Date().timeIntervalSince(host.lastHeartbeat ?? .distantPast) > Heartbeats.lostAfterSeconds
            host.state = (lost ? HostState.disconnected : HostState.connected).rawValue
            try host.update(db)
            try task.insert(db)
            return (host, task)
        }
        tasks.run(task) { [events] _ in
            await events.record(.info, "host.maintenance.exited", targetType: "host", targetId: host.id, targetName: host.name, "left maintenance mode")
            return "'\(host.name)' takes VMs again"
        }
        return task
    }

    private func evacuate(_ host: HostRecord, cancel: CancelFlag, progress: TaskEngine.Progress) async throws -> String {
        let vms = try await store.db.read { db in try VMRecord.filter(Column("hostId") == host.id).order(Column("name")).fetchAll(db) }
        var moved: [String] = [], reassigned: [String] = [], stuck: [String] = []
        for (index, vm) in vms.enumerated() {
            if cancel.isRaised {
                throw ShepherdError(.cancelled, "cancelled by the user after \(index) of \(vms.count) VMs" + (moved.isEmpty ? "" : " (moved: " + moved.joined(separator: ", ") + ")"))
            }
            await progress.update(5 + 90 * index / max(1, vms.count), "moving \(vm.name) (\(index + 1) of \(vms.count))")
            do {
                let target = try await chooseTarget(for: vm, leaving: host)
                if vm.state == "running" {
                    let migration = try await migrations.migrate(vm.id, target: target.id)
                    let done = try await store.finished(migration.id)
                    guard done.state == TaskState.succeeded.rawValue else {
                        throw ShepherdError(ShepherdError.Code(rawValue: done.errorCode ?? "") ?? .agentFailed, done.errorMessage ?? done.message)
                    }
                    moved.append("\(vm.name) → \(target.name)")
                } else if ["stopped", "crashed"].contains(vm.state) {
                    try await store.db.write { db in
                        guard var row = try VMRecord.fetchOne(db, key: vm.id), row.hostId == host.id else { return }
                        row.hostId = target.id
                        try row.update(db)
                    }
                    reassigned.append("\(vm.name) → \(target.name)")
                } else {
                    throw ShepherdError(.illegalState, "it is \(vm.state)")
                }
            } catch {
                let reason = (error as? ShepherdError)?.message ?? "\(error)"
                stuck.append("\(vm.name): \(reason)")
            }
        }
        guard stuck.isEmpty else {
            throw ShepherdError(.preflightFailed, "'\(host.name)' cannot enter maintenance mode: \(stuck.count) VM(s) cannot leave it — "
                                + stuck.joined(separator: "; ") + (moved.isEmpty ? "" : ". Moved: " + moved.joined(separator: ", ")))
        }
        let summary = "in maintenance mode; " + (vms.isEmpty ? "it had no VMs" :
            [moved.isEmpty ? nil : "moved live: " + moved.joined(separator: ", "),
             reassigned.isEmpty ? nil : "reassigned (stopped): " + reassigned.joined(separator: ", ")].compactMap { $0 }.joined(separator: "; "))
        await events.record(.info, "host.maintenance.entered", targetType: "host", targetId: host.id, targetName: host.name, summary)
        return summary
    }

    /// The best other host for a VM, by the same placement the scheduler uses.
    private func chooseTarget(for vm: VMRecord, leaving host: HostRecord) async throws -> HostCandidate {
        try await store.db.read { [placement] db in
            let allowed = try NetworkService.allowedHosts(db, vmID: vm.id)
            let candidates = try Inventory.candidates(db, excluding: vm.id).filter { $0.id != host.id && (allowed?.contains($0.id) ?? true) }
            return try placement.place(vm.placementRequest, on: candidates).get()
        }
    }
}
