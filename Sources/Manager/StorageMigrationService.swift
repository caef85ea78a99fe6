import Foundation
import GRDB
import ShepherdCore

/// Moves a VM's disks to another datastore: live by mirror jobs (new writes land on both, a
/// brief switch, the source deleted only after it), or off by conversion. The disk type may
/// change on the way. A failure or cancel leaves the VM on its source disks.
final class StorageMigrationService: Sendable {
    let store: Store
    let agents: AgentClient
    let tasks: TaskEngine
    let events: EventLog
    let vms: VMService
    let pollInterval: Duration

    init(store: Store, agents: AgentClient, tasks: TaskEngine, events: EventLog, vms: VMService, pollInterval: Duration = .milliseconds(100)) {
        self.store = store; self.agents = agents; self.tasks = tasks; self.events = events; self.vms = vms; self.pollInterval = pollInterval
    }

    /// One disk's move: where it is, where it goes, and what it is.
    struct Move: Sendable {
        var key: String
        var name: String
        var source: String
        var target: String
        var check: StorageMigration.Disk
    }

    struct Plan: Sendable {
        var vm: VMRecord
        var host: HostRecord
        var target: DatastoreRecord
        var type: DiskType
        var moves: [Move]
        var refusals: [StorageMigration.Refusal]
        var maxBytesPerSecond: Int64?
    }

    /// Every check, without changing anything. `disks` names the disks to move ("root" for the
    /// root disk); nil moves them all.
    func plan(_ reference: String, datastore: String, disks names: [String]?, type: DiskType?, maxBytesPerSecond: Int64? = nil) async throws -> Plan {
        try Validate.name(datastore, field: "datastore")
        if let rate = maxBytesPerSecond, rate < 1 << 20 {
            throw ShepherdError.invalidField("maxBytesPerSecond", "\(rate) B/s is below the smallest cap, 1 MiB/s")
        }
        let (vm, host, target, mounted) = try await store.db.read { db in
            let vm = try Inventory.vm(db, reference)
            let host = try Inventory.host(db, vm.hostId)
            let target = try Inventory.datastore(db, named: datastore, field: "datastore")
            return (vm, host, target, try Inventory.datastoresByHost(db)[host.id]?.contains(target.name) ?? false)
        }
        let all = try await Self.moves(vm, host: host, to: target, store: store, agents: agents)
        if let names {
            for name in names where !all.contains(where: { $0.name == name }) {
                throw ShepherdError.invalidField("disks", "VM '\(vm.name)' has no disk '\(name)' (it has \(all.map(\.name).joined(separator: ", ")))")
            }
        }
        let moves = all.filter { names?.contains($0.name) ?? true }
        let chosenType = type ?? .thin
        let live = vm.lifecycle.consumesHostResources
        var refusals = StorageMigration.refusals(vm: vm.name, live: live, disks: moves.map(\.check),
                                                 target: .init(name: target.name, kind: target.kind, freeBytes: target.freeBytes, mountedByHost: mounted),
                                                 type: chosenType)
        switch vm.lifecycle {
        case .running, .stopped: break
        default: refusals.append(.init(.vmBusy, "VM '\(vm.name)' is \(vm.state); its storage moves while it is running or off"))
        }
        return Plan(vm: vm, host: host, target: target, type: chosenType, moves: moves.filter { $0.check.datastore != target.name },
                    refusals: refusals, maxBytesPerSecond: maxBytesPerSecond)
    }

    /// Every disk of the VM as a move to `target`: where it is, where it would go, and what the
    /// checks need (the sizes as the VM's host reads them).
    static func moves(_ vm: VMRecord, host: HostRecord, to target: DatastoreRecord, store: Store, agents: AgentClient) async throws -> [Move] {
        let candidates = try await store.db.read { db in
            let snapshots = try SnapshotService.snapshots(db, vmID: vm.id)
            func holding(_ key: String) -> [String] { snapshots.filter { $0.imageMap[key] != nil }.map(\.name) }
            var candidates: [(key: String, name: String, mode: DiskMode, datastore: String, path: String, target: String, snapshots: [String], linked: Bool)] = [
                (SnapshotService.rootKey, "root", .persistent, vm.datastore, vm.diskPath,
                 target.rootDiskPath(vm: vm.name, id: vm.id), holding(SnapshotService.rootKey), vm.linkedTemplate != nil),
            ]
            for disk in try DiskService.attached(db, vmID: vm.id) {
                candidates.append((disk.id, disk.name, disk.diskMode, disk.datastore, disk.path,
                                   target.dataDiskPath(disk: disk.name, id: disk.id), holding(disk.id), false))
            }
            return candidates
        }
        var moves: [Move] = []
        for candidate in candidates {
            let image = try await agents.diskImage(Inventory.endpoint(host), path: candidate.path)
            moves.append(Move(key: candidate.key, name: candidate.name, source: candidate.path, target: candidate.target,
                              check: .init(name: candidate.name, mode: candidate.mode, datastore: candidate.datastore,
                                           virtualBytes: image.virtualBytes, allocatedBytes: image.allocatedBytes,
                                           linkedClone: candidate.linked, snapshots: candidate.snapshots)))
        }
        return moves
    }

    /// The mirrors' progress summed; throws when one failed or ended before the switch.
    static func mirrorProgress(_ mirrors: [(name: String, job: String)], agents: AgentClient, endpoint: AgentClient.Endpoint,
                               vm: String) async throws -> (copied: Int64, total: Int64, ready: Bool) {
        var copied: Int64 = 0, total: Int64 = 0, ready = true
        for (name, job) in mirrors {
            let status = try await agents.mirrorStatus(endpoint, vm: vm, job: job)
            if let error = status.error { throw ShepherdError(.agentFailed, "mirroring '\(name)' failed: \(error)") }
            if status.status == "concluded" || status.status == "aborting" {
                throw ShepherdError(.agentFailed, "the mirror of '\(name)' ended before the switch (\(status.status))")
            }
            copied += status.copiedBytes
            total += max(status.totalBytes, 1)
            ready = ready && status.status == "ready"
        }
        return (copied, total, ready)
    }

    func migrate(_ reference: String, datastore: String, disks names: [String]?, type: DiskType?, maxBytesPerSecond: Int64? = nil) async throws -> TaskRecord {
        let plan = try await self.plan(reference, datastore: datastore, disks: names, type: type, maxBytesPerSecond: maxBytesPerSecond)
        guard plan.refusals.isEmpty else {
            throw ShepherdError(.preflightFailed, "cannot move the storage of '\(plan.vm.name)' to '\(plan.target.name)': "
                                + plan.refusals.map(\.description).joined(separator: "; "))
        }
        let task = try await store.db.write { [tasks] db -> TaskRecord in
            var vm = try Inventory.vm(db, reference)
            guard vm.state == plan.vm.state, vm.hostId == plan.vm.hostId, vm.diskPath == plan.vm.diskPath else {
                throw ShepherdError(.illegalState, "VM '\(vm.name)' changed while its storage migration was being checked; try again")
            }
            try VMService.checkNoOperation(db, vm)
            try DiskService.checkDisksAtRest(db, vm: vm)
            let task = tasks.newTask(kind: "vm.storage.migrate", targetType: "vm", targetId: vm.id, targetName: vm.name)
            try VMService.hold(db, &vm, for: task)
            return task
        }
        tasks.run(task) { [self] progress in
            // Detached, so the undo and the records are never cut short; a cancel raises the flag
            // the copy loop honours until the switch begins.
            let cancel = CancelFlag()
            let work = Task.detached { [self] in try await run(plan, progress: progress, cancel: cancel) }
            return try await withTaskCancellationHandler { try await work.value } onCancel: { cancel.raise() }
        }
        return task
    }

    private func run(_ plan: Plan, progress: TaskEngine.Progress, cancel: CancelFlag) async throws -> String {
        let endpoint = Inventory.endpoint(plan.host)
        let vm = plan.vm
        let started = ContinuousClock.now
        let live = vm.lifecycle.consumesHostResources
        var mirrors: [(Move, String)] = []
        var converted: [Move] = []
        do {
            if live {
                for move in plan.moves {
                    let status = try await agents.startMirror(endpoint, vm: vm.id, .init(source: move.source, target: move.target, type: plan.type,
                                                                                          maxBytesPerSecond: plan.maxBytesPerSecond))
                    mirrors.append((move, status.job))
                }
                try await waitReady(mirrors, endpoint: endpoint, vm: vm, progress: progress, started: started, cancel: cancel)
            } else {
                for (index, move) in plan.moves.enumerated() {
                    if cancel.isRaised { throw ShepherdError(.cancelled, "cancelled by the user") }
                    await progress.update(10 + 80 * index / max(1, plan.moves.count), "copying '\(move.name)' to \(plan.target.name) as \(plan.type.rawValue) (VM off)")
                    _ = try await agents.convertDisk(endpoint, .init(source: move.source, target: move.target, type: plan.type))
                    converted.append(move)
                }
            }
        } catch {
            // Nothing switched yet: the VM stays on its source disks.
            for (move, job) in mirrors { try? await agents.cancelMirror(endpoint, vm: vm.id, job: job, .init(source: move.source, target: move.target, type: plan.type)) }
            for move in converted { try? await agents.deleteDisk(endpoint, path: move.target) }
            await vms.releaseOperation(vm.id)
            throw failure(error, rolledBack: "'\(vm.name)' stays on its source disks; the copies on \(plan.target.name) were removed")
        }
        // The switch: per disk, recorded at once so the inventory always names what the VM uses.
        await progress.update(92, live ? "switching the guest to its new disks" : "switching to the copies")
        var switched: [Move] = []
        var failed: [(Move, String)] = []
        let pauseStarted = ContinuousClock.now
        for move in plan.moves {
            do {
                if let job = mirrors.first(where: { $0.0.key == move.key })?.1 {
                    try await agents.completeMirror(endpoint, vm: vm.id, job: job, .init(source: move.source, target: move.target, type: plan.type))
                }
                try await record(move, plan: plan)
                switched.append(move)
            } catch {
                failed.append((move, "\(error)"))
                if let job = mirrors.first(where: { $0.0.key == move.key })?.1 {
                    try? await agents.cancelMirror(endpoint, vm: vm.id, job: job, .init(source: move.source, target: move.target, type: plan.type))
                } else {
                    try? await agents.deleteDisk(endpoint, path: move.target)
                }
            }
        }
        let switchSeconds = (ContinuousClock.now - pauseStarted).inSeconds
        // The sources go only after the switch.
        for move in switched { try? await agents.deleteDisk(endpoint, path: move.source) }
        if !live { _ = try? await agents.define(endpoint, try await vms.definitionFor(try await currentVM(vm.id))) }
        await vms.releaseOperation(vm.id)
        let total = plan.moves.reduce(Int64(0)) { $0 + $1.check.virtualBytes }
        let seconds = (ContinuousClock.now - started).inSeconds
        let summary = "\(switched.map { "'\($0.name)'" }.joined(separator: ", ")) moved to \(plan.target.name) as \(plan.type.rawValue) "
            + "(\(DiskRules.formatBytes(total)) in \(String(format: "%.1f", seconds)) s\(live ? ", live; switch \(String(format: "%.2f", switchSeconds)) s" : ", VM off"))"
        guard failed.isEmpty else {
            let why = failed.map { "'\($0.0.name)': \($0.1)" }.joined(separator: "; ")
            await events.record(.warning, "vm.storage.partial", targetType: "vm", targetId: vm.id, targetName: vm.name,
                                "\(switched.isEmpty ? "nothing moved" : summary); stayed on the source: \(why)")
            throw ShepherdError(.agentFailed, "\(switched.isEmpty ? "nothing moved" : summary); stayed on their source: \(why)")
        }
        await events.record(.info, "vm.storage.migrated", targetType: "vm", targetId: vm.id, targetName: vm.name, summary)
        return summary
    }

    /// Polls the mirrors until every one is in sync (ready), with the copy's progress and rate.
    private func waitReady(_ mirrors: [(Move, String)], endpoint: AgentClient.Endpoint, vm: VMRecord, progress: TaskEngine.Progress,
                           started: ContinuousClock.Instant, cancel: CancelFlag) async throws {
        while true {
            if cancel.isRaised { throw ShepherdError(.cancelled, "cancelled by the user") }
            let (copied, total, ready) = try await Self.mirrorProgress(mirrors.map { ($0.0.name, $0.1) }, agents: agents, endpoint: endpoint, vm: vm.id)
            if ready { return }
            let seconds = max(0.001, (ContinuousClock.now - started).inSeconds)
            await progress.update(5 + Int(85 * Double(copied) / Double(max(total, 1))),
                                  "mirroring \(mirrors.count) disk(s): \(DiskRules.formatBytes(copied)) of \(DiskRules.formatBytes(total)) (\(DiskRules.formatBytes(Int64(Double(copied) / seconds)))/s)")
            try await Task.sleep(for: pollInterval)
        }
    }

    private func record(_ move: Move, plan: Plan) async throws {
        try await store.db.write { db in
            if move.key == SnapshotService.rootKey {
                guard var vm = try VMRecord.fetchOne(db, key: plan.vm.id) else { return }
                vm.diskPath = move.target
                vm.datastore = plan.target.name
                try vm.update(db)
            } else if var disk = try DiskRecord.fetchOne(db, key: move.key) {
                disk.path = move.target
                disk.datastore = plan.target.name
                disk.type = plan.type.rawValue
                disk.format = DiskFormat.qcow2.rawValue
                try disk.update(db)
            }
        }
    }

    private func currentVM(_ id: String) async throws -> VMRecord {
        try await store.db.read { db in try Inventory.vm(db, id) }
    }
}
