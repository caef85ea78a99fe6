import Foundation
import GRDB
import ShepherdCore

/// A VM's snapshot tree as the API shows it.
struct SnapshotList: Sendable {
    var vm: VMRecord
    var snapshots: [SnapshotRecord]
}

/// External snapshots of a VM's root disk and persistent data disks (non-persistent and shared
/// disks are independent of snapshots, as in vSphere). Each operation is a task holding the
/// VM's operation lock, so no power change, migration or disk change interleaves with it.
final class SnapshotService: Sendable {
    let store: Store
    let agents: AgentClient
    let tasks: TaskEngine
    let events: EventLog
    let vms: VMService

    init(store: Store, agents: AgentClient, tasks: TaskEngine, events: EventLog, vms: VMService) {
        self.store = store; self.agents = agents; self.tasks = tasks; self.events = events; self.vms = vms
    }

    /// The key of the root disk in a snapshot's images.
    static let rootKey = "root"

    /// Disk key → the image the VM writes now, for every disk snapshots cover.
    static func activeImages(_ db: Database, _ vm: VMRecord) throws -> [String: String] {
        var images = [rootKey: vm.diskPath]
        for disk in try DiskService.attached(db, vmID: vm.id) where disk.diskMode == .persistent { images[disk.id] = disk.path }
        return images
    }

    static func snapshots(_ db: Database, vmID: String) throws -> [SnapshotRecord] {
        try SnapshotRecord.filter(Column("vmId") == vmID).order(Column("createdAt")).fetchAll(db)
    }

    static func snapshot(_ db: Database, vm: VMRecord, _ reference: String) throws -> SnapshotRecord {
        guard let found = try SnapshotRecord.filter(Column("vmId") == vm.id && (Column("name") == reference || Column("id") == reference)).fetchOne(db) else {
            throw ShepherdError.notFound("snapshot", "\(reference)' of VM '\(vm.name)")
        }
        return found
    }

    /// Snapshots whose images include this data disk (a disk in a snapshot stays attached).
    static func holding(_ db: Database, diskID: String) throws -> [SnapshotRecord] {
        try SnapshotRecord.fetchAll(db).filter { $0.imageMap[diskID] != nil }
    }

    func list(_ reference: String) async throws -> SnapshotList {
        try await store.db.read { db in
            let vm = try Inventory.vm(db, reference)
            return SnapshotList(vm: vm, snapshots: try Self.snapshots(db, vmID: vm.id))
        }
    }

    // MARK: create

    func create(_ reference: String, name: String, description: String?, quiesce: Bool, memory: Bool = false) async throws -> TaskRecord {
        let (vm, host, task, _) = try await begin(reference, kind: "vm.snapshot.create") { db, vm in
            try SnapshotTree.checkName(name, taken: try Self.snapshots(db, vmID: vm.id).map(\.name))
            if memory, quiesce {
                throw ShepherdError.invalidField("quiesce", "a memory snapshot holds the guest's whole state, writes in flight included; quiesce is for disk-only snapshots")
            }
            switch vm.lifecycle {
            case .stopped:
                if quiesce { throw ShepherdError.invalidField("quiesce", "VM '\(vm.name)' is off: its file systems are at rest already") }
                if memory { throw ShepherdError.invalidField("memory", "VM '\(vm.name)' is off: there is no memory to save") }
            default:
                // The seed: a live snapshot needs the tools (they freeze the file systems and report the guest's state).
                guard vm.toolsRunning else {
                    throw ShepherdError(.toolsNotRunning, "a live snapshot of '\(vm.name)' needs its tools running; they do not answer (stop the VM to snapshot it off)")
                }
            }
        }
        tasks.run(task) { [self] progress in
            do {
                let id = newID()
                let active = try await store.db.read { db in try Self.activeImages(db, vm) }
                let layers = active.keys.sorted().map { key in
                    AgentWire.SnapshotLayer(active: active[key]!, overlay: Self.overlayPath(for: active[key]!, snapshot: id))
                }
                let memoryFile = memory ? "\((vm.diskPath as NSString).deletingLastPathComponent)/memory~\(id.prefix(8)).state" : nil
                await progress.update(20, vm.lifecycle.consumesHostResources
                                      ? (memory ? "pausing '\(vm.name)': freezing \(layers.count) disk(s) and saving its memory"
                                                : "freezing \(layers.count) disk(s) of '\(vm.name)' in one transaction\(quiesce ? " with the guest's file systems frozen" : "")")
                                      : "adding an overlay to \(layers.count) disk(s)")
                _ = try await agents.define(Inventory.endpoint(host), try await vms.definitionFor(vm))
                let started = ContinuousClock.now
                let answer = try await agents.snapshot(Inventory.endpoint(host), vm: vm.id, .init(layers: layers, quiesce: quiesce, memoryFile: memoryFile))
                let took = (ContinuousClock.now - started).inSeconds
                let overlays = Dictionary(uniqueKeysWithValues: active.keys.map { key in (key, Self.overlayPath(for: active[key]!, snapshot: id)) })
                try await store.db.write { db in
                    guard var row = try VMRecord.fetchOne(db, key: vm.id) else { return }
                    try SnapshotRecord(id: id, vmId: vm.id, name: name, parentId: row.currentSnapshot, description: description ?? "",
                                       images: SnapshotRecord.encode(active), live: answer.live, quiesced: answer.frozenFileSystems != nil,
                                       createdAt: Date(), memoryFile: memoryFile).insert(db)
                    try Self.repoint(db, &row, overlays)
                    row.currentSnapshot = id
                    row.operationTask = nil
                    try row.update(db)
                }
                let how = memoryFile != nil ? "with its memory (the guest paused \(String(format: "%.1f", took)) s)"
                    : answer.live ? "live\(answer.frozenFileSystems.map { ", \($0) guest file system(s) frozen" } ?? "")" : "with the VM off"
                await events.record(.info, "vm.snapshot.created", targetType: "vm", targetId: vm.id, targetName: vm.name,
                                    "snapshot '\(name)' of \(layers.count) disk(s) taken \(how)")
                return "snapshot '\(name)' of \(layers.count) disk(s) taken \(how)"
            } catch {
                await vms.releaseOperation(vm.id)
                throw failure(error, rolledBack: "no snapshot was taken")
            }
        }
        return task
    }

    // MARK: revert

    func revert(_ reference: String, to snapshotReference: String) async throws -> TaskRecord {
        let (vm, host, task, snapshot) = try await begin(reference, kind: "vm.snapshot.revert") { db, vm in
            try Self.snapshot(db, vm: vm, snapshotReference)
        }
        tasks.run(task) { [self] progress in
            do {
                let active = try await store.db.read { db in try Self.activeImages(db, vm) }
                let images = snapshot.imageMap
                let marker = newID()
                let layers = images.keys.sorted().compactMap { key -> AgentWire.RevertLayer? in
                    guard let current = active[key] else { return nil }
                    return AgentWire.RevertLayer(active: current, base: images[key]!, overlay: Self.overlayPath(for: current, snapshot: marker))
                }
                if vm.lifecycle.consumesHostResources {
                    // As vSphere does: the current state is discarded anyway, so the power is cut.
                    await progress.update(10, "cutting the power of '\(vm.name)': its current state is discarded")
                    try await powerOff(vm, host: host)
                }
                await progress.update(20, "returning \(layers.count) disk(s) of '\(vm.name)' to '\(snapshot.name)'")
                _ = try await agents.define(Inventory.endpoint(host), try await vms.definitionFor(vm))
                if snapshot.memoryFile != nil { await progress.update(50, "resuming '\(vm.name)' from the memory saved with '\(snapshot.name)'") }
                try await agents.revert(Inventory.endpoint(host), vm: vm.id, .init(layers: layers, memoryFile: snapshot.memoryFile))
                let status = snapshot.memoryFile != nil ? try await agents.status(Inventory.endpoint(host), vm: vm.id) : nil
                try await store.db.write { db in
                    guard var row = try VMRecord.fetchOne(db, key: vm.id) else { return }
                    try Self.repoint(db, &row, Dictionary(uniqueKeysWithValues: layers.compactMap { layer in
                        active.first { $0.value == layer.active }.map { ($0.key, layer.overlay) }
                    }))
                    row.currentSnapshot = snapshot.id
                    row.operationTask = nil
                    if let status {
                        row.lifecycle = .running(since: Date())
                        row.pid = status.pid.map(Int.init)
                    }
                    try row.update(db)
                }
                // The guest's clock stood still in the saved state: set it from the host's.
                if status != nil { try? await agents.syncClock(Inventory.endpoint(host), vm: vm.id) }
                let untouched = active.keys.filter { images[$0] == nil }.count
                let note = untouched > 0 ? "; \(untouched) disk(s) attached after the snapshot keep their content" : ""
                await events.record(.info, "vm.snapshot.reverted", targetType: "vm", targetId: vm.id, targetName: vm.name,
                                    "returned to snapshot '\(snapshot.name)'\(note)")
                let cut = vm.lifecycle.consumesHostResources ? "its power was cut, then " : ""
                return "'\(vm.name)': \(cut)returned to snapshot '\(snapshot.name)' (\(layers.count) disk(s)\(status != nil ? "; running again from its saved memory" : ""))\(note)"
            } catch {
                await vms.releaseOperation(vm.id)
                throw failure(error, rolledBack: "'\(vm.name)' keeps its state from before the revert")
            }
        }
        return task
    }

    /// Cuts the power and waits until QEMU is gone; the VM is recorded off.
    private func powerOff(_ vm: VMRecord, host: HostRecord) async throws {
        let endpoint = Inventory.endpoint(host)
        _ = try await agents.stop(endpoint, vm: vm.id, force: true)
        let started = ContinuousClock.now
        while try await agents.status(endpoint, vm: vm.id).power != .stopped {
            guard ContinuousClock.now - started < .seconds(30) else {
                throw ShepherdError(.timedOut, "QEMU of '\(vm.name)' did not end within 30 s of cutting its power")
            }
            try await Task.sleep(for: .milliseconds(200))
        }
        try await vms.setLifecycle(vm.id, .stopped)
    }

    // MARK: delete

    func delete(_ reference: String, snapshot snapshotReference: String) async throws -> TaskRecord {
        let (vm, host, task, plan) = try await begin(reference, kind: "vm.snapshot.delete") { db, vm in
            let snapshot = try Self.snapshot(db, vm: vm, snapshotReference)
            let nodes = try Self.snapshots(db, vmID: vm.id).map(\.node)
            return (snapshot, try SnapshotTree.deletion(of: snapshot.id, nodes: nodes, current: vm.currentSnapshot, active: try Self.activeImages(db, vm)))
        }
        let (snapshot, deletion) = plan
        tasks.run(task) { [self] progress in
            do {
                _ = try await agents.define(Inventory.endpoint(host), try await vms.definitionFor(vm))
                for (index, merge) in deletion.merges.enumerated() {
                    await progress.update(10 + 80 * index / max(1, deletion.merges.count),
                                          "merging '\(snapshot.name)' into \(merge.active ? "the current state" : "a later snapshot") (\(merge.disk == Self.rootKey ? "root disk" : "disk \(merge.disk.prefix(8))"), \(index + 1) of \(deletion.merges.count))")
                    try await agents.merge(Inventory.endpoint(host), vm: vm.id, .init(into: merge.into, from: merge.from))
                }
            } catch {
                await vms.releaseOperation(vm.id)
                throw failure(error, rolledBack: "snapshot '\(snapshot.name)' stays: the merges done so far only copied data")
            }
            // Every later image now holds the data: the snapshot's own images can go.
            var leftovers: [String] = []
            for image in deletion.removed + [snapshot.memoryFile].compactMap({ $0 }) {
                do { try await agents.deleteDisk(Inventory.endpoint(host), path: image) } catch { leftovers.append(image) }
            }
            try await store.db.write { db in
                for var child in try SnapshotRecord.filter(deletion.reparented.contains(Column("id"))).fetchAll(db) {
                    child.parentId = snapshot.parentId
                    try child.update(db)
                }
                _ = try SnapshotRecord.deleteOne(db, key: snapshot.id)
                guard var row = try VMRecord.fetchOne(db, key: vm.id) else { return }
                row.currentSnapshot = deletion.current
                row.operationTask = nil
                try row.update(db)
            }
            let note = leftovers.isEmpty ? "" : "; could not delete \(leftovers.joined(separator: ", ")) (no longer used)"
            await events.record(.info, "vm.snapshot.deleted", targetType: "vm", targetId: vm.id, targetName: vm.name,
                                "snapshot '\(snapshot.name)' deleted; its data merged into \(deletion.merges.count) later image(s)\(note)")
            return "snapshot '\(snapshot.name)' deleted; its data merged into \(deletion.merges.count) later image(s)\(note)"
        }
        return task
    }

    // MARK: helpers

    /// In one transaction: the VM at rest (off or running, host connected), its disks idle, the
    /// operation's own checks; then its operation lock and the task.
    private func begin<Checked: Sendable>(_ reference: String, kind: String,
                                          _ check: @escaping @Sendable (Database, VMRecord) throws -> Checked) async throws -> (VMRecord, HostRecord, TaskRecord, Checked) {
        try await store.db.write { [tasks] db in
            var vm = try Inventory.vm(db, reference)
            let host = try VMService.checkAtRest(db, vm)
            try DiskService.checkDisksAtRest(db, vm: vm)
            let checked = try check(db, vm)
            let task = tasks.newTask(kind: kind, targetType: "vm", targetId: vm.id, targetName: vm.name)
            try VMService.hold(db, &vm, for: task)
            return (vm, host, task, checked)
        }
    }

    /// `root-<8>.qcow2` next to the image it covers.
    static func overlayPath(for image: String, snapshot id: String) -> String {
        let directory = (image as NSString).deletingLastPathComponent
        var base = ((image as NSString).lastPathComponent as NSString).deletingPathExtension
        // An overlay of an overlay keeps the disk's own name, not a growing chain of ids.
        if let dash = base.range(of: "~", options: .backwards) { base = String(base[..<dash.lowerBound]) }
        return "\(directory)/\(base)~\(id.prefix(8)).qcow2"
    }

    /// Points the VM's root disk and data disks at their new active images.
    static func repoint(_ db: Database, _ vm: inout VMRecord, _ images: [String: String]) throws {
        if let root = images[rootKey] { vm.diskPath = root }
        for (key, path) in images where key != rootKey {
            guard var disk = try DiskRecord.fetchOne(db, key: key) else { continue }
            disk.path = path
            try disk.update(db)
        }
    }
}
