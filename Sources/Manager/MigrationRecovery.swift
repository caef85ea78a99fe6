import Foundation
import GRDB
import ShepherdCore

/// Live migrations a previous manager process left `migrating` (it stopped mid-way). QEMU went on
/// without it, so the hosts say what happened: if the target runs the guest, the switch-over
/// took place — the VM is recorded there (with the disks the target runs on) once the source has
/// finished sending, and the source's QEMU ends; otherwise the source keeps the guest — its
/// migration is cancelled (a paused source resumes) and the target's QEMU ends — unless QEMU had
/// finished sending and the guest then ended on the target: the source's memory is older than
/// what ran there, so neither side resumes and the VM is recorded crashed, to boot from its disks.
/// Until it is settled, heartbeats leave such a VM alone (`HostService.reconcile`).
extension MigrationService {
    static let recoveryRetry: Duration = .seconds(5)
    static let recoveryPatience: Duration = .seconds(600)

    func recoverInterrupted() async {
        guard let stranded = try? await store.db.read({ db in try VMRecord.filter(Column("state") == "migrating").fetchAll(db) }) else { return }
        await withTaskGroup(of: Void.self) { group in
            for vm in stranded { group.addTask { await self.recover(vm) } }
        }
    }

    private func recover(_ vm: VMRecord) async {
        let started = ContinuousClock.now
        var lastError = ""
        while ContinuousClock.now - started < Self.recoveryPatience {
            do {
                let outcome = try await settle(vm)
                await events.record(.warning, "vm.migrate.recovered", targetType: "vm", targetId: vm.id, targetName: vm.name, outcome)
                return
            } catch {
                lastError = "\(error)"
                try? await Task.sleep(for: Self.recoveryRetry)
            }
        }
        let reason = "a live migration was cut off by a manager restart and its hosts did not answer for \(Self.recoveryPatience.components.seconds) s (\(lastError))"
        _ = try? await store.db.write { db in
            guard var row = try VMRecord.fetchOne(db, key: vm.id), row.state == "migrating" else { return }
            row.lifecycle = .unknown(reason: reason)
            try row.update(db)
        }
        await events.record(.error, "vm.migrate.recovered", targetType: "vm", targetId: vm.id, targetName: vm.name, reason)
    }

    private func settle(_ vm: VMRecord) async throws -> String {
        let (source, target) = try await store.db.read { db in
            (try Inventory.host(db, vm.hostId), try Inventory.host(db, vm.migrationTarget ?? ""))
        }
        let from = Inventory.endpoint(source), to = Inventory.endpoint(target)
        let since = vm.runningSince ?? Date()
        let onTarget: AgentWire.GuestStatus?
        do { onTarget = try await agents.status(to, vm: vm.id) } catch let error as ShepherdError where error.code == .notFound { onTarget = nil }

        if onTarget?.power == .running {
            // Switched over. Post-copy may still pull pages from the source: let it finish.
            for _ in 0..<300 {
                guard let progress = try? await agents.migrationProgress(from, vm: vm.id),
                      !["completed", "failed", "cancelled", "none"].contains(progress.status) else { break }
                try await Task.sleep(for: .seconds(1))
            }
            let definition = try await agents.definition(to, vm: vm.id)
            try await store.db.write { db in
                guard var row = try VMRecord.fetchOne(db, key: vm.id), row.state == "migrating" else { return }
                // A whole-VM migration moved the disks: record the ones the target runs on.
                if definition.disk != row.diskPath, let datastore = try Self.datastore(db, holding: definition.disk) {
                    row.diskPath = definition.disk
                    row.datastore = datastore.name
                }
                for disk in definition.disks {
                    guard var record = try DiskRecord.fetchOne(db, key: disk.id), record.path != disk.path,
                          let datastore = try Self.datastore(db, holding: disk.path) else { continue }
                    record.path = disk.path
                    record.datastore = datastore.name
                    try record.update(db)
                }
                row.hostId = target.id
                row.lifecycle = .running(since: since)
                row.pid = onTarget?.pid.map(Int.init)
                try row.update(db)
            }
            do { try await agents.release(from, vm: vm.id) } catch {
                return "the migration to \(target.name) had switched over when the manager stopped: '\(vm.name)' runs there; its old QEMU on \(source.name) could not be ended (\(error))"
            }
            return "the migration to \(target.name) had switched over when the manager stopped: '\(vm.name)' runs there; its old QEMU on \(source.name) ended"
        }

        // Not switched over: the guest stays on the source — unless the source had sent it all.
        let onSource = try await agents.status(from, vm: vm.id)
        let sourceAlive = onSource.power == .running || onSource.power == .paused
        // Every answer below decides whether stale memory may run: none is guessed (a failure retries).
        let sent = sourceAlive ? try await agents.migrationProgress(from, vm: vm.id).status : "none"
        // The disks the manager records for the VM; a whole-VM migration's target made its own copies.
        let recorded = try await store.db.read { db in Set([vm.diskPath] + (try DiskService.attached(db, vmID: vm.id).map(\.path))) }
        let targetDisks = onTarget == nil ? [] : try await agents.definition(to, vm: vm.id).diskPaths
        let memoryOnly = targetDisks.allSatisfy(recorded.contains)
        if sent.hasPrefix("postcopy") {
            // Part of the guest's memory is on each host and the target does not run it: neither can.
            let reason = "a post-copy migration to \(target.name) was cut off by a manager restart and the target does not run the guest (\(onTarget?.power.rawValue ?? "gone")): its memory is split between \(source.name) and \(target.name), so neither side can safely resume it"
            try await vms.setLifecycle(vm.id, .unknown(reason: reason))
            return reason
        }
        if sent == "completed", memoryOnly {
            // QEMU finished on its own, and a memory-only target starts the guest at once (it is
            // not held with -S). Still loading: wait for it (retried). Gone: what ran there may
            // have written the disks, so the source's paused memory is older than they may be;
            // resuming it could corrupt the guest's file systems. Both end; it boots from its disks.
            if onTarget?.power == .paused {
                throw ShepherdError(.illegalState, "the target on \(target.name) has the whole guest but does not run it yet")
            }
            let why = onTarget.map { $0.reason ?? $0.power.rawValue } ?? "the target no longer knows the VM"
            try await agents.release(from, vm: vm.id)
            if onTarget != nil { try await agents.release(to, vm: vm.id) }
            let reason = "the migration to \(target.name) completed while the manager was away and the guest then ended there (\(why)); its paused copy on \(source.name) is older than what may have run on \(target.name), so it was not resumed"
            try await vms.setLifecycle(vm.id, .crashed(reason: reason))
            return reason + "; it boots from its disks with `shepherd vm start`"
        }
        try? await agents.cancelMigration(from, vm: vm.id)
        var targetNote = ""
        if onTarget != nil {
            try await agents.release(to, vm: vm.id)
            for path in targetDisks where !recorded.contains(path) { try? await agents.deleteDisk(to, path: path) }
            targetNote = "; its half-started copy on \(target.name) ended"
        }
        guard onSource.power == .running || onSource.power == .paused else {
            try await vms.setLifecycle(vm.id, onSource.power == .crashed ? .crashed(reason: onSource.reason ?? "its QEMU ended") : .stopped)
            return "the migration to \(target.name) had not switched over when the manager stopped, and '\(vm.name)' no longer runs on \(source.name) (\(onSource.power.rawValue))\(targetNote)"
        }
        // A source that completed its send but whose target never ran is paused: it continues.
        if onSource.power == .paused { try await agents.resumeIncoming(from, vm: vm.id) }
        try await store.db.write { db in
            guard var row = try VMRecord.fetchOne(db, key: vm.id), row.state == "migrating" else { return }
            row.lifecycle = .running(since: since)
            try row.update(db)
        }
        return "the migration to \(target.name) had not switched over when the manager stopped: it was cancelled and '\(vm.name)' runs on \(source.name) as before\(targetNote)"
    }

    /// The datastore whose folder holds `path`.
    private static func datastore(_ db: Database, holding path: String) throws -> DatastoreRecord? {
        try DatastoreRecord.fetchAll(db).first { path.hasPrefix($0.path + "/") }
    }
}
