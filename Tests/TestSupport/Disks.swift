import Foundation
import ShepherdAPI

/// Data-disk conveniences: each starts the task and waits for it to end.
extension TestCluster {
    public func createDisk(_ vm: String, sizeMiB: Int64, type: Components.Schemas.DiskType = .thin,
                           mode: Components.Schemas.DiskMode = .persistent, name: String? = nil,
                           datastore: String? = nil) async throws -> Components.Schemas.Task {
        let body = Components.Schemas.DiskCreate(vm: vm, name: name, sizeBytes: sizeMiB << 20, _type: type, mode: mode, datastore: datastore)
        switch try await client().createDisk(body: .json(body)) {
        case .accepted(let accepted): return try await wait(try accepted.body.json)
        case .default(let status, let error): throw HarnessError("create disk on \(vm): HTTP \(status) \(String(describing: try? error.body.json))")
        }
    }

    public func attachDisk(_ disk: String, to vm: String) async throws -> Components.Schemas.Task {
        switch try await client().attachDisk(path: .init(disk: disk), body: .json(.init(vm: vm))) {
        case .accepted(let accepted): return try await wait(try accepted.body.json)
        case .default(let status, let error): throw HarnessError("attach \(disk): HTTP \(status) \(String(describing: try? error.body.json))")
        }
    }

    public func detachDisk(_ disk: String, from vm: String? = nil) async throws -> Components.Schemas.Task {
        switch try await client().detachDisk(path: .init(disk: disk), body: .json(.init(vm: vm))) {
        case .accepted(let accepted): return try await wait(try accepted.body.json)
        case .default(let status, let error): throw HarnessError("detach \(disk): HTTP \(status) \(String(describing: try? error.body.json))")
        }
    }

    public func resizeDisk(_ disk: String, sizeMiB: Int64) async throws -> Components.Schemas.Task {
        switch try await client().resizeDisk(path: .init(disk: disk), body: .json(.init(sizeBytes: sizeMiB << 20))) {
        case .accepted(let accepted): return try await wait(try accepted.body.json)
        case .default(let status, let error): throw HarnessError("resize \(disk): HTTP \(status) \(String(describing: try? error.body.json))")
        }
    }

    public func deleteDisk(_ disk: String) async throws -> Components.Schemas.Task {
        switch try await client().deleteDisk(path: .init(disk: disk)) {
        case .accepted(let accepted): return try await wait(try accepted.body.json)
        case .default(let status, let error): throw HarnessError("delete \(disk): HTTP \(status) \(String(describing: try? error.body.json))")
        }
    }

    /// Starts a reclaim (the caller waits: tests look at the task).
    public func reclaim(_ vm: String, disk: String) async throws -> Components.Schemas.Task {
        switch try await client().reclaimDiskSpace(path: .init(vm: vm), body: .json(.init(disk: disk))) {
        case .accepted(let accepted): return try accepted.body.json
        case .default(let status, let error): throw HarnessError("reclaim \(disk) of \(vm): HTTP \(status) \(String(describing: try? error.body.json))")
        }
    }

    public func disk(_ name: String) async throws -> Components.Schemas.Disk {
        switch try await client().getDisk(path: .init(disk: name)) {
        case .ok(let ok): return try ok.body.json
        case .default(let status, let error): throw HarnessError("get disk \(name): HTTP \(status) \(String(describing: try? error.body.json))")
        }
    }

    public func disks(of vm: String? = nil) async throws -> [Components.Schemas.Disk] {
        switch try await client().listDisks(query: .init(vm: vm)) {
        case .ok(let ok): return try ok.body.json
        case .default(let status, let error): throw HarnessError("list disks: HTTP \(status) \(String(describing: try? error.body.json))")
        }
    }
}

/// Snapshot conveniences.
extension TestCluster {
    public func snapshot(_ vm: String, _ name: String, quiesce: Bool = false, memory: Bool = false) async throws -> Components.Schemas.Task {
        switch try await client().createSnapshot(path: .init(vm: vm), body: .json(.init(name: name, quiesce: quiesce, memory: memory))) {
        case .accepted(let accepted): return try await wait(try accepted.body.json)
        case .default(let status, let error): throw HarnessError("snapshot \(vm) \(name): HTTP \(status) \(String(describing: try? error.body.json))")
        }
    }

    public func revert(_ vm: String, to snapshot: String) async throws -> Components.Schemas.Task {
        switch try await client().revertSnapshot(path: .init(vm: vm, snapshot: snapshot)) {
        case .accepted(let accepted): return try await wait(try accepted.body.json)
        case .default(let status, let error): throw HarnessError("revert \(vm) to \(snapshot): HTTP \(status) \(String(describing: try? error.body.json))")
        }
    }

    public func deleteSnapshot(_ vm: String, _ snapshot: String) async throws -> Components.Schemas.Task {
        switch try await client().deleteSnapshot(path: .init(vm: vm, snapshot: snapshot)) {
        case .accepted(let accepted): return try await wait(try accepted.body.json)
        case .default(let status, let error): throw HarnessError("delete snapshot \(snapshot) of \(vm): HTTP \(status) \(String(describing: try? error.body.json))")
        }
    }

    public func snapshots(_ vm: String) async throws -> Components.Schemas.SnapshotTree {
        switch try await client().listSnapshots(path: .init(vm: vm)) {
        case .ok(let ok): return try ok.body.json
        case .default(let status, let error): throw HarnessError("list snapshots of \(vm): HTTP \(status) \(String(describing: try? error.body.json))")
        }
    }
}

/// Storage migration conveniences.
extension TestCluster {
    public func startStorageMigration(_ vm: String, to datastore: String, disks: [String]? = nil, type: Components.Schemas.DiskType? = nil,
                                      maxBytesPerSecond: Int64? = nil) async throws -> Components.Schemas.Task {
        let body = Components.Schemas.StorageMigrateRequest(datastore: datastore, disks: disks, _type: type, maxBytesPerSecond: maxBytesPerSecond)
        switch try await client().migrateVMStorage(path: .init(vm: vm), body: .json(body)) {
        case .accepted(let accepted): return try accepted.body.json
        case .ok(let ok): throw HarnessError("storage migration of \(vm) answered a check: \(try ok.body.json)")
        case .default(let status, let error): throw HarnessError("storage migration of \(vm): HTTP \(status) \(String(describing: try? error.body.json))")
        }
    }

    public func migrateStorage(_ vm: String, to datastore: String, disks: [String]? = nil, type: Components.Schemas.DiskType? = nil) async throws -> Components.Schemas.Task {
        try await wait(try await startStorageMigration(vm, to: datastore, disks: disks, type: type))
    }
}

/// Clone and template conveniences.
extension TestCluster {
    public func clone(_ source: String, _ name: String, linked: Bool = false) async throws -> Components.Schemas.Task {
        switch try await client().cloneVM(path: .init(vm: source), body: .json(.init(name: name, linked: linked))) {
        case .accepted(let accepted): return try await wait(try accepted.body.json)
        case .default(let status, let error): throw HarnessError("clone \(source) as \(name): HTTP \(status) \(String(describing: try? error.body.json))")
        }
    }

    public func toTemplate(_ vm: String, name: String? = nil) async throws -> Components.Schemas.Template {
        switch try await client().convertVMToTemplate(path: .init(vm: vm), body: .json(.init(name: name))) {
        case .created(let created): return try created.body.json
        case .default(let status, let error): throw HarnessError("to-template \(vm): HTTP \(status) \(String(describing: try? error.body.json))")
        }
    }
}

/// Finding a disk inside the guest.
extension TestCluster {
    /// The guest's block device (e.g. "vdb") whose virtio serial is `serial`, waiting up to 30 s
    /// for it to appear (`present`) or to go (then nil).
    public func guestDevice(_ vm: String, serial: String, present: Bool = true) async throws -> String? {
        let started = ContinuousClock.now
        while ContinuousClock.now - started < .seconds(30) {
            let found = try await exec(vm, ["sh", "-c", "for d in /sys/block/vd*; do [ \"$(cat $d/serial 2>/dev/null)\" = \"\(serial)\" ] && basename $d; done; true"])
            let name = found.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            if name.isEmpty != present { return name.isEmpty ? nil : name }
            try await Task.sleep(for: .milliseconds(500))
        }
        throw HarnessError("disk with serial \(serial) \(present ? "did not appear" : "did not go away") in \(vm) within 30 s")
    }

    /// md5 of the first `mib` MiB of a guest block device, read past the guest's page cache.
    public func guestChecksum(_ vm: String, _ device: String, mib: Int) async throws -> String {
        let result = try await exec(vm, ["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/\(device) bs=1M count=\(mib) 2>/dev/null | md5sum"])
        return String(result.stdout.prefix(32))
    }
}
