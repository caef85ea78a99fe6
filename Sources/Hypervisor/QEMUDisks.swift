import Foundation
import HostKit
import QMP
import QemuImg
import ShepherdCore

/// How a data disk appears in QEMU: one block node and one virtio-blk device per disk, named
/// from the disk's id so hot-plug and hot-unplug find them again after an agent restart.
enum DiskNodes {
    static func node(_ disk: AgentWire.DiskDefinition) -> String { "d" + String(disk.id.filter { $0 != "-" }.prefix(24)) }
    static func device(_ disk: AgentWire.DiskDefinition) -> String { "dev-" + disk.id }

    /// A non-persistent disk's writes land here; the base stays as it was at power-on. Next to
    /// the base, so a migration's target on the same shared datastore continues it.
    static func overlay(_ disk: AgentWire.DiskDefinition, vmID: String) -> String { "\(disk.path).overlay-\(vmID.prefix(8))" }

    /// The image QEMU opens for the disk and its format.
    static func opened(_ disk: AgentWire.DiskDefinition, vmID: String) -> (path: String, format: DiskFormat) {
        disk.mode == .nonPersistent ? (overlay(disk, vmID: vmID), .qcow2) : (disk.path, disk.format)
    }

    static func blockdevOption(_ disk: AgentWire.DiskDefinition, vmID: String) -> String {
        let (path, format) = opened(disk, vmID: vmID)
        return "driver=\(format.rawValue),node-name=\(node(disk)),discard=unmap,file.driver=file,file.discard=unmap,file.filename=\(path.replacingOccurrences(of: ",", with: ",,"))"
    }

    static func deviceOption(_ disk: AgentWire.DiskDefinition) -> String {
        "virtio-blk-pci,drive=\(node(disk)),id=\(device(disk)),serial=\(disk.serial)" + (disk.mode == .shared ? ",share-rw=on" : "")
            + (disk.slot.map { ",addr=0x" + String($0, radix: 16) } ?? "")
    }

    static func blockdevArguments(_ disk: AgentWire.DiskDefinition, vmID: String) -> [String: JSONValue] {
        let (path, format) = opened(disk, vmID: vmID)
        // discard=unmap down to the file: what the guest trims gives its space back (reclaim).
        return ["driver": .string(format.rawValue), "node-name": .string(node(disk)), "discard": "unmap",
                "file": ["driver": "file", "filename": .string(path), "discard": "unmap"]]
    }

    static func deviceArguments(_ disk: AgentWire.DiskDefinition) -> [String: JSONValue] {
        var arguments: [String: JSONValue] = ["driver": "virtio-blk-pci", "drive": .string(node(disk)), "id": .string(device(disk)),
                                              "serial": .string(disk.serial)]
        if disk.mode == .shared { arguments["share-rw"] = .bool(true) }
        if let slot = disk.slot { arguments["addr"] = .string("0x" + String(slot, radix: 16)) }
        return arguments
    }
}

extension GuestSupervisor {
    func overlayPath(for disk: AgentWire.DiskDefinition) -> String { DiskNodes.overlay(disk, vmID: id) }

    /// Replaces a non-persistent disk's overlay with an empty one over its base.
    func freshOverlay(for disk: AgentWire.DiskDefinition) async throws {
        let overlay = overlayPath(for: disk)
        try? FileManager.default.removeItem(atPath: overlay)
        try await QemuImg.createOverlay(path: overlay, backing: disk.path, backingFormat: disk.format.rawValue)
    }

    /// Records the disk; a running guest gets it at once (QMP hot-plug). Nothing changes when the
    /// hot-plug fails.
    func attach(_ disk: AgentWire.DiskDefinition) async throws {
        guard !definition.disks.contains(where: { $0.id == disk.id }) else { return }
        guard FileManager.default.fileExists(atPath: disk.path) else {
            throw ShepherdError(.notFound, "disk image '\(disk.path)' is not on this host")
        }
        try await exclusive { me in
            if me.livePid() != nil { try await me.hotplug(disk) }
            var changed = me.definition
            changed.disks.append(disk)
            try me.redefine(changed)
        }
    }

    private func hotplug(_ disk: AgentWire.DiskDefinition) async throws {
        if disk.mode == .nonPersistent { try await freshOverlay(for: disk) }
        _ = try await qmp("blockdev-add", DiskNodes.blockdevArguments(disk, vmID: id))
        do {
            _ = try await qmp("device_add", DiskNodes.deviceArguments(disk))
        } catch {
            _ = try? await qmp("blockdev-del", ["node-name": .string(DiskNodes.node(disk))])
            throw error
        }
    }

    /// Removes the disk from the VM; a running guest is asked to release it (ACPI eject) and the
    /// device must be gone within `timeout`, or nothing changes in the record.
    func detach(diskID: String, timeout: Duration = .seconds(30)) async throws {
        guard let disk = definition.disks.first(where: { $0.id == diskID }) else { return }
        try await exclusive { me in
            if me.livePid() != nil { try await me.hotunplug(disk, timeout: timeout) }
            var changed = me.definition
            changed.disks.removeAll { $0.id == diskID }
            try me.redefine(changed)
        }
        if disk.mode == .nonPersistent { try? FileManager.default.removeItem(atPath: overlayPath(for: disk)) }
    }

    private func hotunplug(_ disk: AgentWire.DiskDefinition, timeout: Duration) async throws {
        let device = DiskNodes.device(disk)
        if try await deviceExists(device) {
            _ = try await qmp("device_del", ["id": .string(device)])
            let started = ContinuousClock.now
            while try await deviceExists(device) {
                guard ContinuousClock.now - started < timeout else {
                    throw ShepherdError(.timedOut, "the guest of '\(definition.name)' did not release disk '\(disk.name)' within \(timeout.inSeconds) s (ACPI eject unanswered: is the guest still booting, or does it hold the disk?)")
                }
                try await Task.sleep(for: .milliseconds(200))
            }
        }
        try await removeNode(DiskNodes.node(disk))
    }

    /// Deletes a block node the monitor added, once its device has let go of it (that can lag the
    /// device's removal by a moment); gone already is fine.
    private func removeNode(_ node: String, timeout: Duration = .seconds(10)) async throws {
        let started = ContinuousClock.now
        while true {
            let nodes = try await qmp("query-named-block-nodes", ["flat": true]).arrayValue ?? []
            guard nodes.contains(where: { $0["node-name"]?.stringValue == node }) else { return }
            do {
                _ = try await qmp("blockdev-del", ["node-name": .string(node)])
                return
            } catch {
                guard ContinuousClock.now - started < timeout else {
                    throw ShepherdError(.agentFailed, "the disk's block node '\(node)' of '\(definition.name)' is still in use \(timeout.inSeconds) s after its device went: \(error)")
                }
                try await Task.sleep(for: .milliseconds(200))
            }
        }
    }

    private func deviceExists(_ device: String) async throws -> Bool {
        let children = try await qmp("qom-list", ["path": "/machine/peripheral"])
        return children.arrayValue?.contains { $0["name"]?.stringValue == device } ?? false
    }

    /// Grows an attached disk: live through QMP (the guest sees the new capacity) when QEMU runs,
    /// through qemu-img otherwise.
    func resize(diskID: String, sizeBytes: Int64) async throws {
        guard let disk = definition.disks.first(where: { $0.id == diskID }) else {
            throw ShepherdError.notFound("disk", diskID)
        }
        try await exclusive { me in
            if me.livePid() != nil {
                // The top of the disk's chain: after a live snapshot that is the overlay, not the node it started with.
                let node = try await me.formatNode(file: DiskNodes.opened(disk, vmID: me.id).path)
                _ = try await me.qmp("block_resize", ["node-name": .string(node), "size": .number(Double(sizeBytes))], timeout: .seconds(30))
            } else {
                try await QemuImg.resize(path: disk.path, format: disk.format.rawValue, bytes: UInt64(sizeBytes))
            }
        }
    }
}

extension GuestSupervisor {
    func trim() async throws -> AgentWire.TrimAnswer {
        guard livePid() != nil else { throw ShepherdError(.illegalState, "VM '\(definition.name)' does not run here") }
        let answer = try await guestAgentCommand("guest-fstrim", timeout: .seconds(120))
        let paths = answer["paths"]?.arrayValue ?? []
        let failures = paths.compactMap { path in path["error"]?.stringValue.map { "\(path["path"]?.stringValue ?? "?"): \($0)" } }
        if !failures.isEmpty, failures.count == paths.count {
            throw ShepherdError(.agentFailed, "the guest of '\(definition.name)' could not trim: \(failures.joined(separator: "; "))")
        }
        let trimmed = paths.compactMap { $0["trimmed"]?.doubleValue }
        return AgentWire.TrimAnswer(fileSystems: paths.count - failures.count, trimmedBytes: trimmed.isEmpty ? nil : Int64(trimmed.reduce(0, +)))
    }
}

extension QEMUDriver {
    public func trim(_ vm: String) async throws -> AgentWire.TrimAnswer { try await supervisor(vm).trim() }

    public func compactDisk(path: String) async throws -> AgentWire.DiskImage {
        let info = try await QemuImg.info(path: path)
        guard info.backingFilename == nil else {
            throw ShepherdError(.illegalState, "'\(path)' is an overlay over '\(info.backingFilename!)': compacting it offline would copy its backing chain into it")
        }
        let compacted = path + ".compact"
        try? FileManager.default.removeItem(atPath: compacted)
        do {
            // convert writes only clusters that hold data, and no zeros.
            try await QemuImg.convert(source: path, destination: compacted, format: info.format)
            // rename(2) swaps the files atomically: the image is never missing.
            guard rename(compacted, path) == 0 else {
                throw ShepherdError(.agentFailed, "could not replace '\(path)' by its compacted copy: \(String(cString: strerror(errno)))")
            }
        } catch {
            try? FileManager.default.removeItem(atPath: compacted)
            throw error
        }
        return try await diskImage(path: path)
    }

    public func createDisk(_ request: AgentWire.DiskCreateRequest) async throws -> AgentWire.DiskImage {
        guard !FileManager.default.fileExists(atPath: request.path) else {
            throw ShepherdError(.alreadyExists, "disk image '\(request.path)' already exists on this host")
        }
        try Files.ensureDirectory((request.path as NSString).deletingLastPathComponent, mode: 0o755)
        let partial = request.path + ".partial"
        try? FileManager.default.removeItem(atPath: partial)
        // Eager zeroing writes every byte: allow a minute plus 10 s per GiB on slow storage.
        let timeout = Duration.seconds(60 + 10 * Int(request.sizeBytes >> 30))
        do {
            try await QemuImg.create(path: partial, bytes: UInt64(request.sizeBytes), format: request.format.rawValue,
                                     preallocation: request.type.preallocation, timeout: timeout)
            try FileManager.default.moveItem(atPath: partial, toPath: request.path)
        } catch {
            try? FileManager.default.removeItem(atPath: partial)
            throw error
        }
        return try await diskImage(path: request.path)
    }

    public func diskImage(path: String) async throws -> AgentWire.DiskImage {
        guard FileManager.default.fileExists(atPath: path) else { throw ShepherdError(.notFound, "disk image '\(path)' is not on this host") }
        let info = try await QemuImg.info(path: path)
        return AgentWire.DiskImage(path: path, format: info.format, virtualBytes: Int64(info.virtualSize),
                                   allocatedBytes: Int64(info.actualSize ?? 0), backing: info.backingFilename)
    }

    public func deleteDisk(path: String) async throws {
        guard FileManager.default.fileExists(atPath: path) else { return }
        try FileManager.default.removeItem(atPath: path)
    }

    public func resizeDisk(path: String, sizeBytes: Int64) async throws -> AgentWire.DiskImage {
        let info = try await QemuImg.info(path: path)
        try await QemuImg.resize(path: path, format: info.format, bytes: UInt64(sizeBytes))
        return try await diskImage(path: path)
    }

    public func attachDisk(_ vm: String, _ disk: AgentWire.DiskDefinition) async throws { try await supervisor(vm).attach(disk) }
    public func detachDisk(_ vm: String, diskID: String) async throws { try await supervisor(vm).detach(diskID: diskID) }
    public func resizeAttachedDisk(_ vm: String, diskID: String, sizeBytes: Int64) async throws {
        try await supervisor(vm).resize(diskID: diskID, sizeBytes: sizeBytes)
    }
}
