import Foundation
import GRDB
import ShepherdCore

/// A data disk as the API shows it: the record, who has it, and (when asked) its image as the
/// agent reads it.
struct DiskView: Sendable {
    var disk: DiskRecord
    var attachedTo: [VMRecord]
    var image: AgentWire.DiskImage?
}

/// Data disks: create (thin, thick, thick-lazy; persistent, non-persistent, shared), attach and
/// detach (hot-plug on a running VM), grow (live), delete. Each change is a task that holds the
/// disk (`busyTask`) and rolls back what it did when a step fails.
final class DiskService: Sendable {
    let store: Store
    let agents: AgentClient
    let tasks: TaskEngine
    let events: EventLog

    init(store: Store, agents: AgentClient, tasks: TaskEngine, events: EventLog) {
        self.store = store; self.agents = agents; self.tasks = tasks; self.events = events
    }

    struct CreateRequest: Sendable {
        var vm: String
        var name: String?
        var sizeBytes: Int64
        var type: DiskType
        var mode: DiskMode
        var datastore: String?
    }

    // MARK: reading

    static func disk(_ db: Database, _ reference: String) throws -> DiskRecord {
        if let disk = try DiskRecord.filter(Column("name") == reference).fetchOne(db) ?? DiskRecord.fetchOne(db, key: reference) {
            return disk
        }
        throw ShepherdError.notFound("disk", reference)
    }

    /// The VM's data disks in the order its guest sees them at boot (vdb, vdc, …: by PCI slot).
    static func attached(_ db: Database, vmID: String) throws -> [DiskRecord] {
        try DiskRecord.fetchAll(db, sql: """
            SELECT disk.* FROM disk JOIN diskAttachment ON diskAttachment.diskId = disk.id
            WHERE diskAttachment.vmId = ? ORDER BY diskAttachment.slot, disk.name
            """, arguments: [vmID])
    }

    /// What the VM's QEMU opens: each data disk with its PCI slot.
    static func definitions(_ db: Database, vmID: String) throws -> [AgentWire.DiskDefinition] {
        let slots = Dictionary(uniqueKeysWithValues: try DiskAttachmentRecord.filter(Column("vmId") == vmID).fetchAll(db).map { ($0.diskId, $0.slot) })
        return try attached(db, vmID: vmID).map { $0.definition(slot: slots[$0.id]) }
    }

    static func holders(_ db: Database, diskID: String) throws -> [VMRecord] {
        try VMRecord.fetchAll(db, sql: """
            SELECT vm.* FROM vm JOIN diskAttachment ON diskAttachment.vmId = vm.id
            WHERE diskAttachment.diskId = ? ORDER BY vm.name
            """, arguments: [diskID])
    }

    func list(vm reference: String?) async throws -> [DiskView] {
        try await store.db.read { db in
            let disks = try reference.map { try Self.attached(db, vmID: Inventory.vm(db, $0).id) }
                ?? DiskRecord.order(Column("name")).fetchAll(db)
            return try disks.map { DiskView(disk: $0, attachedTo: try Self.holders(db, diskID: $0.id), image: nil) }
        }
    }

    /// One disk with its image as a host that mounts its datastore reads it now (allocated bytes).
    func show(_ reference: String) async throws -> DiskView {
        var view = try await store.db.read { db in
            let disk = try Self.disk(db, reference)
            return DiskView(disk: disk, attachedTo: try Self.holders(db, diskID: disk.id), image: nil)
        }
        let host = try await hostFor(view.disk, preferring: view.attachedTo.first?.hostId)
        view.image = try await agents.diskImage(Inventory.endpoint(host), path: view.disk.path)
        return view
    }

    // MARK: create

    func create(_ request: CreateRequest) async throws -> TaskRecord {
        if let name = request.name { try Validate.name(name) }
        try DiskRules.checkSize(request.sizeBytes, field: "sizeBytes")
        if let datastore = request.datastore { try Validate.name(datastore, field: "datastore") }
        let (disk, vm, host, task) = try await store.db.write { [tasks] db -> (DiskRecord, VMRecord, HostRecord, TaskRecord) in
            let vm = try Inventory.vm(db, request.vm)
            let host = try VMService.checkAtRest(db, vm)
            let datastore = try Inventory.datastore(db, named: request.datastore ?? vm.datastore, field: "datastore")
            let count = try Self.attached(db, vmID: vm.id).count
            let name = try request.name ?? Self.firstFreeName(db, ((count + 1)...).lazy.map { "\(vm.name)-disk\($0)" })
            if try DiskRecord.filter(Column("name") == name).fetchCount(db) > 0 {
                throw ShepherdError(.alreadyExists, "name: a disk named '\(name)' already exists")
            }
            let format = DiskFormat.for(mode: request.mode)
            let id = newID()
            let disk = DiskRecord(id: id, name: name, datastore: datastore.name,
                                  path: datastore.dataDiskPath(disk: name, id: id, format: format), format: format.rawValue,
                                  type: request.type.rawValue, mode: request.mode.rawValue, sizeBytes: request.sizeBytes,
                                  busyTask: nil, createdAt: Date())
            try DiskRules.checkAttach(disk: name, mode: request.mode, attachedTo: [], vm: vm.name, dataDisks: count,
                                      vmSeesDatastore: try Inventory.datastoresByHost(db)[host.id]?.contains(datastore.name) ?? false,
                                      datastore: datastore.name)
            try Self.checkFree(datastore, asked: request.sizeBytes, type: request.type)
            var held = disk
            let task = tasks.newTask(kind: "disk.create", targetType: "disk", targetId: id, targetName: name)
            held.busyTask = task.id
            try task.insert(db)
            try held.insert(db)
            try DiskAttachmentRecord.attach(db, disk: disk.id, vm: vm.id)
            return (disk, vm, host, task)
        }
        tasks.run(task) { [self] progress in
            let rollback = Rollback()
            do {
                await rollback.add("remove disk '\(disk.name)' from the inventory") { [store] in
                    _ = try await store.db.write { db in try DiskRecord.deleteOne(db, key: disk.id) }
                }
                let endpoint = Inventory.endpoint(host)
                await progress.update(10, "creating a \(DiskRules.formatBytes(disk.sizeBytes)) \(disk.type) image on \(disk.datastore) (\(host.name))")
                let image = try await agents.createDisk(endpoint, .init(path: disk.path, sizeBytes: disk.sizeBytes,
                                                                       format: disk.diskFormat, type: request.type))
                await rollback.add("delete its image on \(host.name)") { [agents] in try await agents.deleteDisk(endpoint, path: disk.path) }
                await progress.update(70, "attaching it to '\(vm.name)'")
                let how = try await attachOnHost(disk, to: vm, host: host)
                try await release(disk.id)
                await events.record(.info, "disk.created", targetType: "disk", targetId: disk.id, targetName: disk.name,
                                    "\(DiskRules.formatBytes(disk.sizeBytes)) \(disk.type) \(disk.mode) disk on \(disk.datastore), \(DiskRules.formatBytes(image.allocatedBytes)) allocated; attached to '\(vm.name)' \(how)")
                return "\(DiskRules.formatBytes(disk.sizeBytes)) \(disk.type) disk created on \(disk.datastore) (\(DiskRules.formatBytes(image.allocatedBytes)) allocated) and attached to '\(vm.name)' \(how)"
            } catch {
                throw failure(error, rolledBack: await rollback.run())
            }
        }
        return task
    }

    // MARK: attach, detach

    func attach(_ reference: String, to vmReference: String) async throws -> TaskRecord {
        let (disk, vm, host, task) = try await store.db.write { [tasks] db -> (DiskRecord, VMRecord, HostRecord, TaskRecord) in
            let vm = try Inventory.vm(db, vmReference)
            let host = try VMService.checkAtRest(db, vm)
            let disk = try Self.disk(db, reference)
            try Self.checkNotBusy(db, disk)
            try DiskRules.checkAttach(disk: disk.name, mode: disk.diskMode, attachedTo: try Self.holders(db, diskID: disk.id).map(\.name),
                                      vm: vm.name, dataDisks: try Self.attached(db, vmID: vm.id).count,
                                      vmSeesDatastore: try Inventory.datastoresByHost(db)[host.id]?.contains(disk.datastore) ?? false,
                                      datastore: disk.datastore)
            let task = try Self.hold(db, disk, tasks.newTask(kind: "disk.attach", targetType: "disk", targetId: disk.id, targetName: disk.name))
            // Recorded now, so a migration or start beginning meanwhile takes the disk along.
            try DiskAttachmentRecord.attach(db, disk: disk.id, vm: vm.id)
            return (disk, vm, host, task)
        }
        tasks.run(task) { [self] progress in
            do {
                await progress.update(20, "attaching '\(disk.name)' to '\(vm.name)'")
                let how = try await attachOnHost(disk, to: vm, host: host)
                try await release(disk.id)
                await events.record(.info, "disk.attached", targetType: "disk", targetId: disk.id, targetName: disk.name, "attached to '\(vm.name)' \(how)")
                return "attached to '\(vm.name)' \(how)"
            } catch {
                try? await release(disk.id)
                throw failure(error, rolledBack: "'\(disk.name)' is not attached to '\(vm.name)'")
            }
        }
        return task
    }

    /// Tells the VM's host about the attachment its task recorded; a running guest gets the disk
    /// hot-plugged. On failure the attachment is gone again.
    private func attachOnHost(_ disk: DiskRecord, to vm: VMRecord, host: HostRecord) async throws -> String {
        do {
            let slot = try await store.db.read { db in
                try DiskAttachmentRecord.fetchOne(db, key: ["diskId": disk.id, "vmId": vm.id])?.slot
            }
            try await agents.attachDisk(Inventory.endpoint(host), vm: vm.id, disk.definition(slot: slot))
        } catch {
            _ = try? await store.db.write { db in try DiskAttachmentRecord.deleteOne(db, key: ["diskId": disk.id, "vmId": vm.id]) }
            throw error
        }
        return vm.lifecycle.consumesHostResources ? "live (hot-plugged; the guest sees serial \(disk.definition().serial))" : "(the VM is off; it sees the disk at its next start)"
    }

    func detach(_ reference: String, from vmReference: String?) async throws -> TaskRecord {
        let (disk, vm, host, task) = try await store.db.write { [tasks] db -> (DiskRecord, VMRecord, HostRecord, TaskRecord) in
            let disk = try Self.disk(db, reference)
            let holders = try Self.holders(db, diskID: disk.id)
            let vm: VMRecord
            if let vmReference {
                vm = try Inventory.vm(db, vmReference)
                guard holders.contains(where: { $0.id == vm.id }) else {
                    throw ShepherdError(.illegalState, "disk '\(disk.name)' is not attached to VM '\(vm.name)'\(holders.isEmpty ? "" : " (it is attached to \(holders.map { "'\($0.name)'" }.joined(separator: ", ")))")")
                }
            } else {
                guard let only = holders.first else { throw ShepherdError(.illegalState, "disk '\(disk.name)' is not attached to any VM") }
                guard holders.count == 1 else {
                    throw ShepherdError.invalidField("vm", "shared disk '\(disk.name)' is attached to \(holders.map { "'\($0.name)'" }.joined(separator: ", ")); name the VM to detach it from")
                }
                vm = only
            }
            let host = try VMService.checkAtRest(db, vm)
            try Self.checkNotBusy(db, disk)
            let snapshots = try SnapshotService.holding(db, diskID: disk.id)
            guard snapshots.isEmpty else {
                throw ShepherdError(.illegalState, "disk '\(disk.name)' is in snapshot(s) \(snapshots.map { "'\($0.name)'" }.joined(separator: ", ")) of VM '\(vm.name)'; it stays attached until they are deleted")
            }
            let task = try Self.hold(db, disk, tasks.newTask(kind: "disk.detach", targetType: "disk", targetId: disk.id, targetName: disk.name))
            return (disk, vm, host, task)
        }
        tasks.run(task) { [self] progress in
            do {
                await progress.update(20, vm.lifecycle.consumesHostResources ? "asking the guest of '\(vm.name)' to release '\(disk.name)'" : "detaching '\(disk.name)'")
                try await agents.detachDisk(Inventory.endpoint(host), vm: vm.id, diskID: disk.id)
                try await store.db.write { db in
                    _ = try DiskAttachmentRecord.deleteOne(db, key: ["diskId": disk.id, "vmId": vm.id])
                    var row = try DiskRecord.fetchOne(db, key: disk.id)
                    row?.busyTask = nil
                    try row?.update(db)
                }
                await events.record(.info, "disk.detached", targetType: "disk", targetId: disk.id, targetName: disk.name, "detached from '\(vm.name)'; the image stays on \(disk.datastore)")
                return "detached from '\(vm.name)'; the image stays on \(disk.datastore)"
            } catch {
                try? await release(disk.id)
                throw failure(error, rolledBack: "'\(disk.name)' stays attached to '\(vm.name)'")
            }
        }
        return task
    }

    // MARK: resize, delete

    func resize(_ reference: String, sizeBytes: Int64) async throws -> TaskRecord {
        let (disk, holders, host, task) = try await store.db.write { [tasks] db -> (DiskRecord, [VMRecord], HostRecord?, TaskRecord) in
            let disk = try Self.disk(db, reference)
            try DiskRules.checkResize(disk: disk.name, from: disk.sizeBytes, to: sizeBytes)
            try Self.checkNotBusy(db, disk)
            let holders = try Self.holders(db, diskID: disk.id)
            var host: HostRecord?
            for vm in holders { host = try VMService.checkAtRest(db, vm) }
            let running = holders.filter { $0.lifecycle.consumesHostResources }
            if disk.diskMode == .shared, !running.isEmpty {
                throw ShepherdError(.illegalState, "shared disk '\(disk.name)' grows only while every VM using it is off; running: \(running.map { "'\($0.name)'" }.joined(separator: ", "))")
            }
            if let datastore = try DatastoreRecord.filter(Column("name") == disk.datastore).fetchOne(db), disk.type != DiskType.thin.rawValue {
                try Self.checkFree(datastore, asked: sizeBytes - disk.sizeBytes, type: DiskType(rawValue: disk.type) ?? .thin)
            }
            let task = try Self.hold(db, disk, tasks.newTask(kind: "disk.resize", targetType: "disk", targetId: disk.id, targetName: disk.name))
            return (disk, holders, running.isEmpty ? nil : host, task)
        }
        tasks.run(task) { [self] progress in
            do {
                await progress.update(20, "growing '\(disk.name)' from \(DiskRules.formatBytes(disk.sizeBytes)) to \(DiskRules.formatBytes(sizeBytes))")
                let how: String
                if let host, let vm = holders.first {
                    try await agents.resizeAttachedDisk(Inventory.endpoint(host), vm: vm.id, diskID: disk.id, sizeBytes: sizeBytes)
                    how = "live: the guest of '\(vm.name)' sees the new capacity"
                } else {
                    let host = try await hostFor(disk, preferring: holders.first?.hostId)
                    _ = try await agents.resizeDisk(Inventory.endpoint(host), path: disk.path, sizeBytes: sizeBytes)
                    how = "offline"
                }
                try await store.db.write { db in
                    var row = try DiskRecord.fetchOne(db, key: disk.id)
                    row?.sizeBytes = sizeBytes
                    row?.busyTask = nil
                    try row?.update(db)
                }
                let message = "grown from \(DiskRules.formatBytes(disk.sizeBytes)) to \(DiskRules.formatBytes(sizeBytes)) (\(how))"
                await events.record(.info, "disk.resized", targetType: "disk", targetId: disk.id, targetName: disk.name, message)
                return message
            } catch {
                try? await release(disk.id)
                throw failure(error, rolledBack: "'\(disk.name)' keeps \(DiskRules.formatBytes(disk.sizeBytes))")
            }
        }
        return task
    }

    func delete(_ reference: String) async throws -> TaskRecord {
        let (disk, task) = try await store.db.write { [tasks] db -> (DiskRecord, TaskRecord) in
            let disk = try Self.disk(db, reference)
            try Self.checkNotBusy(db, disk)
            let holders = try Self.holders(db, diskID: disk.id)
            guard holders.isEmpty else {
                throw ShepherdError(.illegalState, "disk '\(disk.name)' is attached to \(holders.map { "'\($0.name)'" }.joined(separator: ", ")); detach it first ('shepherd disk detach \(holders[0].name) \(disk.name)')")
            }
            let task = try Self.hold(db, disk, tasks.newTask(kind: "disk.delete", targetType: "disk", targetId: disk.id, targetName: disk.name))
            return (disk, task)
        }
        tasks.run(task) { [self] progress in
            do {
                let host = try await hostFor(disk, preferring: nil)
                await progress.update(30, "deleting its image on \(disk.datastore) (\(host.name))")
                try await agents.deleteDisk(Inventory.endpoint(host), path: disk.path)
                _ = try await store.db.write { db in try DiskRecord.deleteOne(db, key: disk.id) }
            } catch {
                try? await release(disk.id)
                throw failure(error, rolledBack: "'\(disk.name)' is still there")
            }
            await events.record(.info, "disk.deleted", targetType: "disk", targetId: disk.id, targetName: disk.name, "deleted from \(disk.datastore)")
            return "deleted from \(disk.datastore)"
        }
        return task
    }

    // MARK: reclaim

    /// Gives a thin disk's unused space back: a running guest trims its file systems through
    /// the tools (the images take discards down to the file); off, the image is rewritten
    /// without its unused clusters. Reports the bytes returned, measured on the image.
    func reclaim(_ vmReference: String, disk name: String) async throws -> TaskRecord {
        let (vm, host, path, label, task) = try await store.db.write { [tasks] db -> (VMRecord, HostRecord, String, String, TaskRecord) in
            var vm = try Inventory.vm(db, vmReference)
            let host = try VMService.checkAtRest(db, vm)
            let path: String
            if name == "root" {
                path = vm.diskPath
            } else {
                guard let disk = try Self.attached(db, vmID: vm.id).first(where: { $0.name == name || $0.id == name }) else {
                    throw ShepherdError.invalidField("disk", "VM '\(vm.name)' has no disk '\(name)' (root or one of its data disks)")
                }
                guard disk.type == DiskType.thin.rawValue else {
                    throw ShepherdError(.illegalState, "disk '\(disk.name)' is \(disk.type): its space is allocated by design; only thin disks give space back")
                }
                guard disk.diskMode == .persistent else {
                    throw ShepherdError(.illegalState, "disk '\(disk.name)' is \(disk.mode); reclaim applies to persistent disks")
                }
                try Self.checkNotBusy(db, disk)
                path = disk.path
            }
            if vm.lifecycle.consumesHostResources, !vm.toolsRunning {
                throw ShepherdError(.toolsNotRunning, "reclaiming space on a running VM needs its tools (they trim the guest's file systems); '\(vm.name)''s do not answer")
            }
            let task = tasks.newTask(kind: "disk.reclaim", targetType: "vm", targetId: vm.id, targetName: vm.name)
            try VMService.hold(db, &vm, for: task)
            return (vm, host, path, name, task)
        }
        tasks.run(task) { [self] progress in
            do {
                let endpoint = Inventory.endpoint(host)
                let before = try await agents.diskImage(endpoint, path: path).allocatedBytes
                let how: String
                if vm.lifecycle.consumesHostResources {
                    await progress.update(20, "asking the guest of '\(vm.name)' to trim its file systems")
                    let trim = try await agents.trim(endpoint, vm: vm.id)
                    how = "the guest trimmed \(trim.fileSystems) file system(s)"
                } else {
                    await progress.update(20, "rewriting '\(label)' without its unused clusters (VM off)")
                    _ = try await agents.compactDisk(endpoint, path: path)
                    how = "compacted with the VM off"
                }
                let after = try await agents.diskImage(endpoint, path: path).allocatedBytes
                await VMService.releaseOperation(in: store, vm.id)
                let message = "'\(label)' of '\(vm.name)': \(DiskRules.formatBytes(max(0, before - after))) returned (\(DiskRules.formatBytes(before)) → \(DiskRules.formatBytes(after)) allocated; \(how))"
                await events.record(.info, "disk.reclaimed", targetType: "vm", targetId: vm.id, targetName: vm.name, message)
                return message
            } catch {
                await VMService.releaseOperation(in: store, vm.id)
                throw failure(error, rolledBack: "the disk is as it was")
            }
        }
        return task
    }

    /// When a VM is deleted its own disks go with it; a shared disk another VM still uses stays.
    /// Returns what it did, for the VM's task message.
    func deleteDisks(of vm: VMRecord, host: HostRecord) async throws -> [String] {
        let owned = try await store.db.read { db in
            try Self.attached(db, vmID: vm.id).filter { try Self.holders(db, diskID: $0.id).count == 1 }
        }
        var deleted: [String] = []
        for disk in owned {
            try await agents.deleteDisk(Inventory.endpoint(host), path: disk.path)
            _ = try await store.db.write { db in try DiskRecord.deleteOne(db, key: disk.id) }
            deleted.append(disk.name)
        }
        return deleted
    }

    // MARK: rules and helpers

    /// One change at a time per disk.
    private static func checkNotBusy(_ db: Database, _ disk: DiskRecord) throws {
        guard let task = try TaskEngine.holding(db, disk.busyTask) else { return }
        throw ShepherdError(.illegalState, "disk '\(disk.name)' is being changed by task \(task.id) (\(task.kind), \(task.progress)%)")
    }

    /// A VM whose disk is being attached, detached or grown does not move until that ends.
    static func checkDisksAtRest(_ db: Database, vm: VMRecord) throws {
        for disk in try attached(db, vmID: vm.id) {
            do { try checkNotBusy(db, disk) } catch let error as ShepherdError {
                throw ShepherdError(.illegalState, "VM '\(vm.name)': \(error.message)")
            }
        }
    }

    private static func hold(_ db: Database, _ disk: DiskRecord, _ task: TaskRecord) throws -> TaskRecord {
        var held = disk
        held.busyTask = task.id
        try task.insert(db)
        try held.update(db)
        return task
    }

    private func release(_ diskID: String) async throws {
        try await store.db.write { db in
            guard var row = try DiskRecord.fetchOne(db, key: diskID) else { return }
            row.busyTask = nil
            try row.update(db)
        }
    }

    /// Thick disks take their whole size at once: refuse what the datastore cannot hold.
    private static func checkFree(_ datastore: DatastoreRecord, asked: Int64, type: DiskType) throws {
        guard type != .thin, asked > datastore.freeBytes else { return }
        throw ShepherdError(.insufficientResources, "a \(type.rawValue) disk takes all its \(DiskRules.formatBytes(asked)) at once; datastore '\(datastore.name)' has \(DiskRules.formatBytes(datastore.freeBytes)) free")
    }

    /// The first of `candidates` no disk is named yet.
    static func firstFreeName(_ db: Database, _ candidates: some Sequence<String>) throws -> String {
        for name in candidates where try DiskRecord.filter(Column("name") == name).fetchCount(db) == 0 { return name }
        throw ShepherdError(.internal, "no free disk name")
    }

    /// A connected host that mounts the disk's datastore, the given one first.
    private func hostFor(_ disk: DiskRecord, preferring hostID: String?) async throws -> HostRecord {
        try await store.db.read { db in
            let seeing = try Inventory.datastoresByHost(db)
            let hosts = try HostRecord.fetchAll(db).filter { $0.hostState == .connected || $0.hostState == .maintenance }
                .filter { seeing[$0.id]?.contains(disk.datastore) == true }
            guard let host = hosts.first(where: { $0.id == hostID }) ?? hosts.first else {
                throw ShepherdError(.hostNotConnected, "no connected host mounts datastore '\(disk.datastore)' of disk '\(disk.name)'")
            }
            return host
        }
    }
}
