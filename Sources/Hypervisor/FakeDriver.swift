import Foundation
import ShepherdCore

/// An in-memory hypervisor for tests of manager logic (placement, validation, tasks, restarts).
/// It never stands in for a data-plane test. Guests "boot" instantly and their tools answer;
/// `exec` answers `echo` with its arguments and everything else with exit code 127.
public actor FakeDriver: HypervisorDriver {
    public nonisolated let accelerator = "fake"
    private var definitions: [String: AgentWire.VMDefinition] = [:]
    private var running: Set<String> = []
    private var crashed: Set<String> = []
    /// Hibernation files "written".
    private var hibernated: Set<String> = []
    private var migrated: Set<String> = []
    private var nextPid: Int32 = 40_000
    /// Each running VM's "QEMU pid", fixed at its start (as a real one is).
    private var pids: [String: Int32] = [:]

    public init() {}

    public func define(_ definition: AgentWire.VMDefinition) async throws -> AgentWire.GuestStatus {
        definitions[definition.id] = definition
        // The root disk "copied from the template": 1 GiB, 64 MiB of it used.
        if images[definition.disk] == nil {
            images[definition.disk] = AgentWire.DiskImage(path: definition.disk, format: "qcow2", virtualBytes: 1 << 30,
                                                          allocatedBytes: 64 << 20, backing: nil)
        }
        return try status(definition.id)
    }

    public func start(_ vm: String) async throws -> AgentWire.GuestStatus {
        _ = try known(vm)
        guard !running.contains(vm) else { throw ShepherdError(.illegalState, "VM \(vm) already runs here") }
        running.insert(vm)
        crashed.remove(vm)
        nextPid += 1
        pids[vm] = nextPid
        return try status(vm)
    }

    public func stop(_ vm: String, force: Bool) async throws -> AgentWire.GuestStatus {
        _ = try known(vm)
        running.remove(vm)
        return try status(vm)
    }

    public func reboot(_ vm: String, force: Bool) async throws -> AgentWire.GuestStatus { try status(vm) }

    public func status(_ vm: String) throws -> AgentWire.GuestStatus {
        _ = try known(vm)
        if crashed.contains(vm) { return AgentWire.GuestStatus(vmId: vm, power: .crashed, toolsRunning: false, reason: "fake crash") }
        let on = running.contains(vm)
        return AgentWire.GuestStatus(vmId: vm, power: on ? .running : .stopped, toolsRunning: on, pid: on ? pids[vm] ?? nextPid : nil)
    }

    public func statuses() async -> [AgentWire.GuestStatus] {
        definitions.keys.sorted().compactMap { try? status($0) }
    }

    public func delete(_ vm: String) async throws {
        definitions[vm] = nil
        running.remove(vm)
        crashed.remove(vm)
    }

    public func exec(_ vm: String, command: [String], timeoutSeconds: Int) async throws -> AgentWire.ExecResult {
        guard running.contains(vm) else { throw ShepherdError(.illegalState, "VM \(vm) does not run here") }
        if command.first == "echo" { return AgentWire.ExecResult(exitCode: 0, stdout: command.dropFirst().joined(separator: " ") + "\n", stderr: "") }
        return AgentWire.ExecResult(exitCode: 127, stdout: "", stderr: "\(command.first ?? ""): not found\n")
    }

    public func prepareIncoming(_ request: AgentWire.IncomingRequest) async throws -> AgentWire.IncomingAnswer {
        definitions[request.definition.id] = request.definition
        for disk in request.storage ?? [] {
            images[disk.path] = AgentWire.DiskImage(path: disk.path, format: "qcow2", virtualBytes: disk.sizeBytes, allocatedBytes: 196_608, backing: nil)
        }
        running.insert(request.definition.id)
        nextPid += 1
        pids[request.definition.id] = nextPid
        return AgentWire.IncomingAnswer(uri: "tcp:\(request.address):1", pid: nextPid, nbd: request.storage == nil ? nil : "\(request.address):2")
    }

    /// Fake migrations complete at once.
    public func migrate(_ vm: String, _ request: AgentWire.MigrateRequest) async throws {
        guard running.contains(vm) else { throw ShepherdError(.illegalState, "VM \(vm) does not run here") }
        migrated.insert(vm)
    }

    public func migrationProgress(_ vm: String) async throws -> AgentWire.MigrationProgress {
        AgentWire.MigrationProgress(status: migrated.contains(vm) ? "completed" : "none", totalTimeMs: 1, downtimeMs: 1, expectedDowntimeMs: 0,
                                    transferredBytes: 0, remainingBytes: 0, totalBytes: 0, dirtyBytesPerSecond: 0,
                                    bandwidthBytesPerSecond: 0, passes: 1, duplicatePages: 0, error: nil)
    }

    public func startPostcopy(_ vm: String) async throws {}
    public func cancelMigration(_ vm: String) async throws { migrated.remove(vm) }
    public func syncGuestClock(_ vm: String) async throws {}

    public func release(_ vm: String) async throws {
        definitions[vm] = nil
        running.remove(vm)
        migrated.remove(vm)
    }

    // MARK: disks: images are sizes in memory

    private var images: [String: AgentWire.DiskImage] = [:]

    public func createDisk(_ request: AgentWire.DiskCreateRequest) async throws -> AgentWire.DiskImage {
        guard images[request.path] == nil else { throw ShepherdError(.alreadyExists, "disk image '\(request.path)' already exists") }
        let allocated = request.type == .thin ? 196_608 : request.sizeBytes
        let image = AgentWire.DiskImage(path: request.path, format: request.format.rawValue, virtualBytes: request.sizeBytes,
                                        allocatedBytes: allocated, backing: nil)
        images[request.path] = image
        return image
    }

    public func diskImage(path: String) async throws -> AgentWire.DiskImage {
        guard let image = images[path] else { throw ShepherdError(.notFound, "disk image '\(path)' is not on this host") }
        return image
    }

    public func deleteDisk(path: String) async throws { images[path] = nil }

    public func resizeDisk(path: String, sizeBytes: Int64) async throws -> AgentWire.DiskImage {
        guard var image = images[path] else { throw ShepherdError(.notFound, "disk image '\(path)' is not on this host") }
        image.virtualBytes = sizeBytes
        images[path] = image
        return image
    }

    public func attachDisk(_ vm: String, _ disk: AgentWire.DiskDefinition) async throws {
        var definition = try known(vm)
        guard images[disk.path] != nil else { throw ShepherdError(.notFound, "disk image '\(disk.path)' is not on this host") }
        if !definition.disks.contains(where: { $0.id == disk.id }) { definition.disks.append(disk) }
        definitions[vm] = definition
    }

    public func detachDisk(_ vm: String, diskID: String) async throws {
        var definition = try known(vm)
        definition.disks.removeAll { $0.id == diskID }
        definitions[vm] = definition
    }

    public func attachNIC(_ vm: String, _ nic: AgentWire.NICDefinition) async throws {
        var definition = try known(vm)
        definition.nics.removeAll { $0.id == nic.id }
        definition.nics.append(nic)
        definitions[vm] = definition
    }

    public func detachNIC(_ vm: String, nicID: String) async throws {
        var definition = try known(vm)
        definition.nics.removeAll { $0.id == nicID }
        definitions[vm] = definition
    }

    public func resizeAttachedDisk(_ vm: String, diskID: String, sizeBytes: Int64) async throws {
        guard let disk = try known(vm).disks.first(where: { $0.id == diskID }) else { throw ShepherdError.notFound("disk", diskID) }
        _ = try await resizeDisk(path: disk.path, sizeBytes: sizeBytes)
    }

    public func snapshot(_ vm: String, _ request: AgentWire.SnapshotRequest) async throws -> AgentWire.SnapshotAnswer {
        for layer in request.layers {
            images[layer.overlay] = AgentWire.DiskImage(path: layer.overlay, format: "qcow2", virtualBytes: images[layer.active]?.virtualBytes ?? 0,
                                                        allocatedBytes: 196_608, backing: layer.active)
        }
        try repoint(vm, request.layers.map { ($0.active, $0.overlay) })
        return AgentWire.SnapshotAnswer(live: running.contains(vm), frozenFileSystems: request.quiesce ? 1 : nil)
    }

    public func definition(_ vm: String) async throws -> AgentWire.VMDefinition {
        guard let definition = definitions[vm] else { throw ShepherdError.notFound("VM", vm) }
        return definition
    }

    public func resize(_ vm: String, _ request: AgentWire.ResizeRequest) async throws -> AgentWire.ResizeAnswer {
        guard var definition = definitions[vm] else { throw ShepherdError.notFound("VM", vm) }
        definition.cpus = request.cpus
        definition.memoryMiB = request.memoryMiB
        definitions[vm] = definition
        return AgentWire.ResizeAnswer(onlineCpus: running.contains(vm) ? request.cpus : nil)
    }

    public func setBalloon(_ vm: String, targetMiB: Int) async throws {
        guard running.contains(vm) else { throw ShepherdError(.illegalState, "VM \(vm) does not run here") }
    }

    public func hibernate(_ vm: String, to file: String) async throws {
        guard running.contains(vm) else { throw ShepherdError(.illegalState, "VM \(vm) does not run here") }
        running.remove(vm)
        hibernated.insert(file)
    }

    public func resumeHibernated(_ vm: String, from file: String) async throws -> AgentWire.GuestStatus {
        guard hibernated.remove(file) != nil else { throw ShepherdError(.notFound, "the saved memory '\(file)' is not on this host") }
        return try await start(vm)
    }

    public func revert(_ vm: String, _ request: AgentWire.RevertRequest) async throws {
        guard !running.contains(vm) else { throw ShepherdError(.illegalState, "VM \(vm) runs here; a revert needs it off") }
        for layer in request.layers {
            images[layer.overlay] = AgentWire.DiskImage(path: layer.overlay, format: "qcow2", virtualBytes: images[layer.base]?.virtualBytes ?? 0,
                                                        allocatedBytes: 196_608, backing: layer.base)
            images[layer.active] = nil
        }
        try repoint(vm, request.layers.map { ($0.active, $0.overlay) })
        if request.memoryFile != nil { running.insert(vm) }
    }

    /// Records every merge it was asked for, in order (tests read them).
    public private(set) var merges: [AgentWire.MergeRequest] = []
    public func merge(_ vm: String, _ request: AgentWire.MergeRequest) async throws {
        _ = try known(vm)
        merges.append(request)
        let backing = images[request.from]?.backing
        images[request.into]?.backing = backing
    }

    private func repoint(_ vm: String, _ pairs: [(String, String)]) throws {
        var definition = try known(vm)
        let mapping = Dictionary(uniqueKeysWithValues: pairs)
        definition.disk = mapping[definition.disk] ?? definition.disk
        for index in definition.disks.indices { definition.disks[index].path = mapping[definition.disks[index].path] ?? definition.disks[index].path }
        definitions[vm] = definition
    }

    // Fake mirrors are ready at once.
    public func startMirror(_ vm: String, _ request: AgentWire.MirrorRequest) async throws -> AgentWire.MirrorStatus {
        guard running.contains(vm) else { throw ShepherdError(.illegalState, "VM \(vm) does not run here") }
        let size = images[request.source]?.virtualBytes ?? 0
        images[request.target] = AgentWire.DiskImage(path: request.target, format: "qcow2", virtualBytes: size,
                                                     allocatedBytes: request.type == .thin ? 196_608 : size, backing: nil)
        return AgentWire.MirrorStatus(job: "mirror-1", status: "ready", copiedBytes: size, totalBytes: size, error: nil)
    }

    public func mirrorStatus(_ vm: String, job: String) async throws -> AgentWire.MirrorStatus {
        AgentWire.MirrorStatus(job: job, status: "ready", copiedBytes: 1, totalBytes: 1, error: nil)
    }

    public func completeMirror(_ vm: String, job: String, _ request: AgentWire.MirrorRequest) async throws {
        try repoint(vm, [(request.source, request.target)])
    }

    public func cancelMirror(_ vm: String, job: String, _ request: AgentWire.MirrorRequest) async throws { images[request.target] = nil }

    public func convertDisk(_ request: AgentWire.ConvertRequest) async throws -> AgentWire.DiskImage {
        guard let source = images[request.source] else { throw ShepherdError(.notFound, "disk image '\(request.source)' is not on this host") }
        let image = AgentWire.DiskImage(path: request.target, format: "qcow2", virtualBytes: source.virtualBytes,
                                        allocatedBytes: request.type == .thin ? 196_608 : source.virtualBytes, backing: nil)
        images[request.target] = image
        return image
    }

    /// A fake trim halves what every image of the VM takes.
    public func trim(_ vm: String) async throws -> AgentWire.TrimAnswer {
        guard running.contains(vm) else { throw ShepherdError(.illegalState, "VM \(vm) does not run here") }
        let definition = try known(vm)
        for path in [definition.disk] + definition.disks.map(\.path) { images[path]?.allocatedBytes /= 2 }
        return AgentWire.TrimAnswer(fileSystems: 1, trimmedBytes: nil)
    }

    public func compactDisk(path: String) async throws -> AgentWire.DiskImage {
        guard var image = images[path] else { throw ShepherdError(.notFound, "disk image '\(path)' is not on this host") }
        image.allocatedBytes /= 2
        images[path] = image
        return image
    }

    public func startNBDMirror(_ vm: String, _ request: AgentWire.NBDMirrorRequest) async throws -> AgentWire.MirrorStatus {
        guard running.contains(vm) else { throw ShepherdError(.illegalState, "VM \(vm) does not run here") }
        return AgentWire.MirrorStatus(job: "mirror-\(request.export)", status: "ready", copiedBytes: 1, totalBytes: 1, error: nil)
    }
    public func endNBDMirror(_ vm: String, job: String) async throws {}
    public func resumeIncoming(_ vm: String) async throws {}

    /// The data disks the VM's definition on this host lists (what its QEMU would open).
    public func attachedDisks(_ vm: String) -> [AgentWire.DiskDefinition] { definitions[vm]?.disks ?? [] }

    /// Makes a running guest "crash", as a killed QEMU would.
    public func crash(_ vm: String) {
        running.remove(vm)
        crashed.insert(vm)
    }

    private func known(_ vm: String) throws -> AgentWire.VMDefinition {
        guard let definition = definitions[vm] else { throw ShepherdError.notFound("VM", vm) }
        return definition
    }
}
