import Foundation
import GRDB
import Logging
import Scheduling
import ShepherdCore

/// What a user asks for when creating a VM.
public struct VMCreateRequest: Sendable {
    public var name: String
    public var cpus: Int
    public var memoryMiB: Int
    public var template: String?
    public var host: String?
    public var datastore: String?
    /// A linked clone: the root disk is a differencing disk over the template's image, not a copy.
    public var linked: Bool
    /// Room to grow online (nil: none).
    public var maxCpus: Int?
    public var maxMemoryMiB: Int?
    public init(name: String, cpus: Int, memoryMiB: Int, template: String? = nil, host: String? = nil, datastore: String? = nil,
                linked: Bool = false, maxCpus: Int? = nil, maxMemoryMiB: Int? = nil) {
        self.name = name; self.cpus = cpus; self.memoryMiB = memoryMiB; self.maxCpus = maxCpus; self.maxMemoryMiB = maxMemoryMiB
        self.template = template; self.host = host; self.datastore = datastore; self.linked = linked
    }
}

/// VM operations: validate, change state and start a task in one transaction, then run the
/// workflow in the background with named undos.
final class VMService: Sendable {
    let store: Store
    let agents: AgentClient
    let tasks: TaskEngine
    let events: EventLog
    let placement: Placement
    let timing: VMTiming
    let disks: DiskService

    init(store: Store, agents: AgentClient, tasks: TaskEngine, events: EventLog, placement: Placement, timing: VMTiming) {
        self.store = store; self.agents = agents; self.tasks = tasks; self.events = events
        self.placement = placement; self.timing = timing
        self.disks = DiskService(store: store, agents: agents, tasks: tasks, events: events)
    }

    // MARK: create

    func create(_ request: VMCreateRequest) async throws -> TaskRecord {
        try Validate.name(request.name)
        let size = try VMSize.validated(cpus: request.cpus, memoryMiB: request.memoryMiB, maxCpus: request.maxCpus, maxMemoryMiB: request.maxMemoryMiB)
        let templateName = request.template ?? "tiny"
        if let host = request.host { try Validate.name(host, field: "host") }

        let (vm, task, template, host) = try await store.db.write { [placement] db -> (VMRecord, TaskRecord, TemplateRecord, HostRecord) in
            if try VMRecord.filter(Column("name") == request.name).fetchCount(db) > 0 {
                throw ShepherdError(.alreadyExists, "name: a VM named '\(request.name)' already exists")
            }
            guard let template = try TemplateRecord.filter(Column("name") == templateName).fetchOne(db) else {
                throw ShepherdError.invalidField("template", "template '\(templateName)' does not exist")
            }
            let datastore = try Inventory.datastore(db, named: request.datastore ?? template.datastore, field: "datastore")
            let candidates = try Inventory.candidates(db)
            let wanted = PlacementRequest(cpus: request.cpus, memoryMiB: request.memoryMiB, datastore: datastore.name)
            let chosen: HostCandidate
            if let reference = request.host {
                let host = try Inventory.host(db, reference, field: "host")
                chosen = candidates.first { $0.id == host.id }!
                if let refusal = placement.admit(wanted, on: chosen, vm: request.name) { throw refusal }
            } else {
                chosen = try placement.place(wanted, on: candidates).get()
            }
            let host = try HostRecord.fetchOne(db, key: chosen.id)!
            let id = newID()
            let task = self.tasks.newTask(kind: "vm.create", targetType: "vm", targetId: id, targetName: request.name)
            var vm = VMRecord(
                id: id, name: request.name, hostId: host.id, template: template.name, cpus: request.cpus,
                memoryMiB: request.memoryMiB, state: "creating", stateTask: task.id, stateReason: nil, runningSince: nil,
                toolsRunning: false, datastore: datastore.name,
                diskPath: datastore.rootDiskPath(vm: request.name, id: id), pid: nil, createdAt: Date(),
                migrationTarget: nil, cpuModel: nil, linkedTemplate: request.linked ? template.name : nil)
            vm.qos = VMQoS.defaults(memoryMiB: vm.memoryMiB, overcommit: chosen.memoryOvercommit)
            vm.size = size
            try task.insert(db)
            try vm.insert(db)
            return (vm, task, template, host)
        }

        let definition = try await self.definition(vm, template: template)
        tasks.run(task) { [self] progress in
            let rollback = Rollback()
            do {
                await rollback.add("remove VM '\(vm.name)' from the inventory") { [store] in
                    _ = try await store.db.write { db in try VMRecord.deleteOne(db, key: vm.id) }
                }
                await progress.update(10, request.linked ? "making a linked clone of \(template.name) on \(host.name)" : "copying the \(template.name) disk on \(host.name)")
                await rollback.add("delete its files on \(host.name)") { [agents] in
                    try await agents.delete(Inventory.endpoint(host), vm: vm.id)
                }
                _ = try await agents.define(Inventory.endpoint(host), definition)
                await progress.update(90, "disk ready")
                try await setLifecycle(vm.id, .stopped)
            } catch {
                throw failure(error, rolledBack: await rollback.run())
            }
            await events.record(.info, "vm.created", targetType: "vm", targetId: vm.id, targetName: vm.name,
                                "created on \(host.name) from template \(template.name)\(request.linked ? " as a linked clone" : "") (\(vm.cpus) vCPU, \(vm.memoryMiB) MiB)")
            return "created on \(host.name)\(request.linked ? " as a linked clone of \(template.name)" : "")"
        }
        return task
    }

    /// The definition an agent needs, with absolute paths on its datastores.
    func definition(_ vm: VMRecord, template: TemplateRecord) async throws -> AgentWire.VMDefinition {
        let (templateStore, disks, nics) = try await store.db.read { db in
            (try Inventory.datastore(db, named: template.datastore, field: "template"), try DiskService.definitions(db, vmID: vm.id),
             try NetworkService.definitions(db, vmID: vm.id))
        }
        let base = templateStore.path
        var result = AgentWire.VMDefinition(
            id: vm.id, name: vm.name, cpus: vm.cpus, memoryMiB: vm.memoryMiB,
            kernel: "\(base)/\(template.kernel)", initrd: "\(base)/\(template.initrd)", cmdline: template.cmdline,
            disk: vm.diskPath, sourceDisk: "\(base)/\(template.disk)", disks: disks,
            linkedClone: vm.linkedTemplate != nil, qos: vm.qos)
        result.maxCpus = vm.maxCpus
        result.maxMemoryMiB = vm.maxMemoryMiB
        result.bootCpus = vm.bootCpus
        result.nics = nics
        return result
    }

    // MARK: clones and templates

    /// A full clone of a VM that is off: its root disk (its snapshot chain flattened) and its
    /// persistent and non-persistent data disks are copied; a shared disk is attached to the
    /// clone as well. The source is locked meanwhile.
    func clone(_ reference: String, name: String, datastore: String?) async throws -> TaskRecord {
        try Validate.name(name)
        if let datastore { try Validate.name(datastore, field: "datastore") }
        let (source, clone, host, target, task, disks) = try await store.db.write { [tasks] db -> (VMRecord, VMRecord, HostRecord, DatastoreRecord, TaskRecord, [DiskRecord]) in
            var source = try Inventory.vm(db, reference)
            guard case .stopped = source.lifecycle else {
                throw ShepherdError(.illegalState, "VM '\(source.name)' is \(source.state); a full clone copies its disks while it is off")
            }
            let host = try Self.checkAtRest(db, source)
            if try VMRecord.filter(Column("name") == name).fetchCount(db) > 0 {
                throw ShepherdError(.alreadyExists, "name: a VM named '\(name)' already exists")
            }
            let target = try Inventory.datastore(db, named: datastore ?? source.datastore, field: "datastore")
            guard try Inventory.datastoresByHost(db)[host.id]?.contains(target.name) == true else {
                throw ShepherdError(.preflightFailed, "datastore '\(target.name)' is not mounted by '\(host.name)', where '\(source.name)' is")
            }
            let id = newID()
            let task = tasks.newTask(kind: "vm.clone", targetType: "vm", targetId: id, targetName: name)
            var clone = VMRecord(
                id: id, name: name, hostId: host.id, template: source.template, cpus: source.cpus, memoryMiB: source.memoryMiB,
                state: "creating", stateTask: task.id, stateReason: nil, runningSince: nil, toolsRunning: false, datastore: target.name,
                diskPath: target.rootDiskPath(vm: name, id: id), pid: nil, createdAt: Date(), migrationTarget: nil,
                cpuModel: nil, haPolicy: source.haPolicy, haPriority: source.haPriority)
            clone.qos = source.qos
            clone.size = source.size
            try Self.hold(db, &source, for: task)
            try clone.insert(db)
            try NetworkService.copyNICs(db, from: source.id, to: clone.id)
            return (source, clone, host, target, task, try DiskService.attached(db, vmID: source.id))
        }
        tasks.run(task) { [self] progress in
            let endpoint = Inventory.endpoint(host)
            let rollback = Rollback()
            await rollback.add("remove '\(name)' from the inventory") { [store] in _ = try await store.db.write { db in try VMRecord.deleteOne(db, key: clone.id) } }
            do {
                await progress.update(10, "copying the root disk of '\(source.name)'")
                _ = try await agents.convertDisk(endpoint, .init(source: source.diskPath, target: clone.diskPath, type: .thin))
                await rollback.add("delete the copied root disk") { [agents] in try await agents.deleteDisk(endpoint, path: clone.diskPath) }
                var copied: [String] = []
                for (index, disk) in disks.enumerated() {
                    if disk.diskMode == .shared {
                        try await store.db.write { db in try DiskAttachmentRecord.attach(db, disk: disk.id, vm: clone.id) }
                        continue
                    }
                    await progress.update(30 + 60 * index / max(1, disks.count), "copying disk '\(disk.name)'")
                    let id = newID()
                    let base = "\(name)-\(disk.name)"
                    let copyName = try await store.db.read { db in try DiskService.firstFreeName(db, (1...).lazy.map { $0 == 1 ? base : "\(base)-\($0)" }) }
                    let path = target.dataDiskPath(disk: copyName, id: id)
                    _ = try await agents.convertDisk(endpoint, .init(source: disk.path, target: path, type: DiskType(rawValue: disk.type) ?? .thin))
                    await rollback.add("delete the copy of '\(disk.name)'") { [agents] in try await agents.deleteDisk(endpoint, path: path) }
                    try await store.db.write { db in
                        try DiskRecord(id: id, name: copyName, datastore: clone.datastore, path: path, format: DiskFormat.qcow2.rawValue, type: disk.type,
                                       mode: disk.mode, sizeBytes: disk.sizeBytes, busyTask: nil, createdAt: Date()).insert(db)
                        try DiskAttachmentRecord.attach(db, disk: id, vm: clone.id)
                    }
                    copied.append(copyName)
                }
                _ = try await agents.define(endpoint, try await definitionFor(try await store.db.read { db in try Inventory.vm(db, clone.id) }))
                await rollback.add("forget '\(name)' on \(host.name)") { [agents] in try await agents.release(endpoint, vm: clone.id) }
                try await setLifecycle(clone.id, .stopped)
                await releaseOperation(source.id)
                let note = copied.isEmpty ? "" : " with copies of its data disks (\(copied.joined(separator: ", ")))"
                await events.record(.info, "vm.cloned", targetType: "vm", targetId: clone.id, targetName: name, "full clone of '\(source.name)'\(note)")
                return "full clone of '\(source.name)' on \(host.name)\(note)"
            } catch {
                await releaseOperation(source.id)
                throw failure(error, rolledBack: await rollback.run())
            }
        }
        return task
    }

    /// Turns a VM that is off into a template: its root disk becomes the template's image (never
    /// written again) and the VM leaves the inventory. New VMs copy it, or (linked clones) write
    /// differencing disks over it.
    func toTemplate(_ reference: String, name: String?, description: String?) async throws -> TemplateRecord {
        let (vm, host, template) = try await store.db.write { db -> (VMRecord, HostRecord, TemplateRecord) in
            let vm = try Inventory.vm(db, reference)
            try Self.checkNoOperation(db, vm)
            let templateName = name ?? vm.name
            try Validate.name(templateName)
            guard case .stopped = vm.lifecycle else {
                throw ShepherdError(.illegalState, "VM '\(vm.name)' is \(vm.state); only a VM that is off becomes a template")
            }
            let snapshots = try SnapshotService.snapshots(db, vmID: vm.id)
            guard snapshots.isEmpty else {
                throw ShepherdError(.illegalState, "VM '\(vm.name)' has snapshot(s) \(snapshots.map { "'\($0.name)'" }.joined(separator: ", ")); delete them first (a template is one image)")
            }
            let disks = try DiskService.attached(db, vmID: vm.id)
            guard disks.isEmpty else {
                throw ShepherdError(.illegalState, "VM '\(vm.name)' has data disk(s) \(disks.map { "'\($0.name)'" }.joined(separator: ", ")); a template holds the root disk only: detach them first")
            }
            if try TemplateRecord.filter(Column("name") == templateName).fetchCount(db) > 0 {
                throw ShepherdError(.alreadyExists, "name: a template named '\(templateName)' already exists")
            }
            guard let base = try TemplateRecord.filter(Column("name") == vm.template).fetchOne(db) else {
                throw ShepherdError(.notFound, "template '\(vm.template)' of VM '\(vm.name)' no longer exists: its kernel cannot be found")
            }
            guard base.datastore == vm.datastore else {
                throw ShepherdError(.preflightFailed, "VM '\(vm.name)' is on '\(vm.datastore)' but its kernel lives with template '\(base.name)' on '\(base.datastore)'; move its storage there first")
            }
            let datastore = try Inventory.datastore(db, named: vm.datastore, field: "datastore")
            guard vm.diskPath.hasPrefix(datastore.path + "/") else {
                throw ShepherdError(.internal, "the disk '\(vm.diskPath)' of '\(vm.name)' is not under its datastore '\(datastore.path)'")
            }
            let template = TemplateRecord(id: newID(), name: templateName, description: description ?? "from VM '\(vm.name)'",
                                          datastore: vm.datastore, kernel: base.kernel, initrd: base.initrd,
                                          disk: String(vm.diskPath.dropFirst(datastore.path.count + 1)), cmdline: base.cmdline, createdAt: Date())
            try template.insert(db)
            _ = try VMRecord.deleteOne(db, key: vm.id)
            return (vm, try Inventory.host(db, vm.hostId), template)
        }
        // The host forgets the VM but keeps the image, which now belongs to the template.
        try? await agents.release(Inventory.endpoint(host), vm: vm.id)
        await events.record(.info, "vm.templated", targetType: "template", targetId: template.id, targetName: template.name,
                            "VM '\(vm.name)' became template '\(template.name)' (its image: \(vm.diskPath))")
        return template
    }

    // MARK: power

    /// `admission: false` for HA's own restarts: admission control keeps room for failures, so it
    /// never blocks the restart it kept the room for.
    func start(_ reference: String, admission: Bool = true) async throws -> TaskRecord {
        try await honourRules(reference)
        let (vm, task, host, previous) = try await beginTransition(reference, kind: "vm.start") { [placement] db, vm, host, task in
            guard host.hostState == .connected else {
                throw ShepherdError(.hostNotConnected, "cannot start VM '\(vm.name)': its host '\(host.name)' is \(host.state)")
            }
            let candidate = try Inventory.candidate(db, host, excluding: vm.id)
            let wanted = vm.placementRequest
            if let refusal = placement.admit(wanted, on: candidate, vm: vm.name) { throw refusal }
            let next = try vm.lifecycle.start(vm: vm.name, task: task.id)
            if admission { try HAService.admit(db, vm: vm, host: host, hostReserveMiB: placement.hostReserveMiB) }
            return next
        }
        // The VM runs with the cluster's IMC baseline, else with the model its host provides.
        let cpuModel = try await store.db.write { db -> String? in
            let cluster = try ClusterRecord.fetchOne(db, key: host.clusterId)
            // A fresh boot starts with all its vCPUs; a resumed one with what it was saved with.
            if previous != .hibernated, var row = try VMRecord.fetchOne(db, key: vm.id) {
                row.bootCpus = row.cpus
                try row.update(db)
            }
            // A hibernated guest resumes on the CPU model it was saved with.
            let model = previous == .hibernated ? vm.cpuModel : cluster?.imcBaseline ?? host.providedCPUModel
            guard var row = try VMRecord.fetchOne(db, key: vm.id) else { return model }
            row.cpuModel = model
            try row.update(db)
            return model
        }
        var configured = try await definitionFor(try await store.db.read { db in try Inventory.vm(db, vm.id) })
        configured.cpuModel = cpuModel
        let definition = configured
        tasks.run(task) { [self] progress in
            let rollback = Rollback()
            let markPrevious = "mark '\(vm.name)' \(previous.name) again"
            await rollback.add(markPrevious) { try await self.setLifecycle(vm.id, previous) }
            do {
                await progress.update(5, "defining the VM on \(host.name)")
                _ = try await agents.define(Inventory.endpoint(host), definition)
                let status: AgentWire.GuestStatus
                if previous == .hibernated {
                    await progress.update(15, "resuming '\(vm.name)' from its saved memory on \(host.name)")
                    status = try await agents.resumeHibernated(Inventory.endpoint(host), vm: vm.id, file: vm.hibernationFile)
                    // The saved memory is consumed: from here a failure leaves the VM off, not hibernated.
                    await rollback.remove(named: markPrevious)
                    await rollback.add("mark '\(vm.name)' stopped (its saved memory was consumed by the resume)") {
                        try await self.setLifecycle(vm.id, .stopped)
                    }
                } else {
                    await progress.update(15, "starting QEMU on \(host.name)")
                    status = try await agents.start(Inventory.endpoint(host), vm: vm.id)
                }
                await rollback.add("power off the half-started VM") { [agents] in
                    _ = try await agents.stop(Inventory.endpoint(host), vm: vm.id, force: true)
                }
                try await store.db.write { db in
                    guard var row = try VMRecord.fetchOne(db, key: vm.id) else { return }
                    row.lifecycle = .running(since: Date())
                    row.pid = status.pid.map(Int.init)
                    try row.update(db)
                }
                await progress.update(30, "booting; waiting for the guest's tools")
                let tools = try await waitForTools(vm: vm, host: host, progress: progress, from: 30, to: 95)
                if previous == .hibernated && tools {
                    // It slept: its clock is as old as its hibernation (the seed's NTP sync after a resume).
                    try? await agents.syncClock(Inventory.endpoint(host), vm: vm.id)
                }
                await events.record(.info, "vm.started", targetType: "vm", targetId: vm.id, targetName: vm.name,
                                    tools ? "powered on on \(host.name); tools answer" : "powered on on \(host.name); tools did not answer within \(timing.toolsTimeoutSeconds) s")
                return tools ? "running on \(host.name); tools answer" : "running on \(host.name); tools did not answer within \(timing.toolsTimeoutSeconds) s"
            } catch {
                throw failure(error, rolledBack: await rollback.run())
            }
        }
        return task
    }

    /// Initial placement under mandatory rules (vSphere's DRS at power-on): a VM that is not
    /// running, whose host would break a mandatory rule, first moves to the host cluster placement
    /// picks (its disk must be on a shared datastore that host sees). Without such a host the
    /// start is refused naming every rule, and nothing changes.
    private func honourRules(_ reference: String) async throws {
        let moved = try await store.db.write { [placement] db -> (VMRecord, from: String, to: String, [RuleConflict])? in
            let vm = try Inventory.vm(db, reference)
            guard !vm.lifecycle.consumesHostResources, let host = try HostRecord.fetchOne(db, key: vm.hostId) else { return nil }
            let (snapshot, index, hosts) = try DRSService.placementSnapshot(db, placing: vm, clusterId: host.clusterId,
                                                                            hostReserveMiB: placement.hostReserveMiB)
            guard let current = hosts.firstIndex(where: { $0.id == host.id }) else { return nil }
            let conflicts = snapshot.ruleConflicts(placing: index, on: current)
            guard !conflicts.isEmpty else { return nil }
            let refusal = "cannot start VM '\(vm.name)' on \(host.name): " + conflicts.map(\.description).joined(separator: "; ")
            guard try DatastoreRecord.filter(Column("name") == vm.datastore).fetchOne(db)?.kind == "shared" else {
                throw ShepherdError(.preflightFailed, "\(refusal); its disk is on the local datastore '\(vm.datastore)', so it cannot start elsewhere")
            }
            let decision = ClusterPlacement.place(index, in: snapshot)
            let seeing = try Inventory.datastoresByHost(db)
            guard let target = decision.host, seeing[hosts[target].id]?.contains(vm.datastore) == true else {
                let why = decision.rejections.keys.sorted().map { "\(hosts[$0].name): " + decision.rejections[$0]!.map(\.description).joined(separator: ", ") }
                throw ShepherdError(.preflightFailed, "\(refusal); no host can take it (\(why.joined(separator: "; ")))")
            }
            var row = vm
            row.hostId = hosts[target].id
            try row.update(db)
            return (vm, host.name, hosts[target].name, conflicts)
        }
        if let (vm, from, to, conflicts) = moved {
            await events.record(.info, "vm.placed", targetType: "vm", targetId: vm.id, targetName: vm.name,
                                "starts on \(to), not \(from): there it would break " + conflicts.map { $0.description }.joined(separator: "; "))
        }
    }

    /// Polls the agent until the guest's tools answer; false when they did not in time.
    /// Throws when QEMU ends during boot.
    private func waitForTools(vm: VMRecord, host: HostRecord, progress: TaskEngine.Progress, from: Int, to: Int) async throws -> Bool {
        let started = ContinuousClock.now
        let limit = Duration.seconds(timing.toolsTimeoutSeconds)
        while ContinuousClock.now - started < limit {
            let status = try await agents.status(Inventory.endpoint(host), vm: vm.id)
            switch status.power {
            case .crashed, .stopped, .shutdown:
                throw ShepherdError(.agentFailed, "QEMU of '\(vm.name)' ended during boot (\(status.power.rawValue)\(status.reason.map { ": " + $0 } ?? ""))")
            case .running, .paused:
                if status.toolsRunning {
                    try await store.db.write { db in
                        guard var row = try VMRecord.fetchOne(db, key: vm.id) else { return }
                        row.toolsRunning = true
                        try row.update(db)
                    }
                    return true
                }
            }
            let elapsed = (ContinuousClock.now - started) / limit
            await progress.update(from + Int(Double(to - from) * min(1, elapsed * 4)), "booting; waiting for the guest's tools")
            try await Task.sleep(for: timing.pollInterval)
        }
        return false
    }

    func stop(_ reference: String, force: Bool) async throws -> TaskRecord {
        let (vm, task, host, previous) = try await beginTransition(reference, kind: force ? "vm.poweroff" : "vm.stop") { _, vm, _, task in
            try vm.lifecycle.stop(vm: vm.name, task: task.id, force: force)
        }
        if previous == .hibernated {
            tasks.run(task) { [self] progress in
                await progress.update(50, "discarding the saved memory of '\(vm.name)'")
                do {
                    try await agents.deleteDisk(Inventory.endpoint(host), path: vm.hibernationFile)
                } catch {
                    try? await setLifecycle(vm.id, previous)
                    throw failure(error, rolledBack: "'\(vm.name)' is hibernated again")
                }
                try await setLifecycle(vm.id, .stopped)
                await events.record(.info, "vm.stopped", targetType: "vm", targetId: vm.id, targetName: vm.name, "powered off: its saved memory was discarded")
                return "powered off (saved memory discarded)"
            }
            return task
        }
        tasks.run(task) { [self] progress in
            do {
                await progress.update(10, force ? "cutting power" : "asking the guest to shut down")
                let first = try await agents.stop(Inventory.endpoint(host), vm: vm.id, force: force)
                let how = first.reason ?? (force ? "power cut" : "shutdown requested")
                let limit = force ? 30 : timing.gracefulStopSeconds
                try await waitForPower(vm: vm, host: host, seconds: limit, progress: progress, message: "waiting for the guest to power off (\(how))") {
                    $0 == .stopped
                } timeoutMessage: {
                    force ? "QEMU of '\(vm.name)' did not end within \(limit) s"
                          : "the guest of '\(vm.name)' did not power off within \(limit) s (\(how)); 'shepherd vm stop \(vm.name) --force' cuts its power"
                }
                try await setLifecycle(vm.id, .stopped)
                await events.record(.info, "vm.stopped", targetType: "vm", targetId: vm.id, targetName: vm.name,
                                    force ? "powered off (power cut)" : "shut down (\(how))")
                return force ? "powered off" : "shut down (\(how))"
            } catch {
                try? await setLifecycle(vm.id, previous)
                throw failure(error, rolledBack: "'\(vm.name)' is \(previous.name) again")
            }
        }
        return task
    }

    /// A new size. A running VM grows online within the maximums it started with (vCPUs
    /// hot-added and brought online through its tools, memory through the balloon), admitted on
    /// its host like a start; one that is off takes any valid size at its next start. Without
    /// overcommit the reservation follows the memory. Returns the VM and its guest's online vCPUs.
    func resize(_ reference: String, _ change: SizeChange) async throws -> (VMRecord, onlineCpus: Int?) {
        guard !change.isEmpty else { throw ShepherdError(.invalidBody, "nothing to change: give cpus, memoryMiB, maxCpus or maxMemoryMiB") }
        let (before, after, host, task) = try await store.db.write { [placement, tasks] db -> (VMRecord, VMRecord, HostRecord, TaskRecord) in
            var vm = try Inventory.vm(db, reference)
            try Self.checkNoOperation(db, vm)
            switch vm.lifecycle {
            case .running, .stopped, .crashed: break
            case .hibernated:
                throw ShepherdError(.illegalState, "VM '\(vm.name)' is hibernated: its saved memory has its current size; start it, then resize")
            default:
                throw ShepherdError(.illegalState, "VM '\(vm.name)' is \(vm.state)\(vm.lifecycle.task.map { " (task \($0))" } ?? ""); resize it when that ends")
            }
            let running = vm.lifecycle.consumesHostResources
            let host = try Inventory.host(db, vm.hostId)
            let overcommit = try ClusterRecord.fetchOne(db, key: host.clusterId)?.memoryOvercommit ?? false
            var next = vm
            next.size = try vm.size.applying(change, vm: vm.name, running: running, floorMiB: vm.memoryReservationMiB)
            // Without overcommit a VM reserves all its memory; QoS stays within the new size.
            next.memoryReservationMiB = overcommit ? min(vm.memoryReservationMiB, next.memoryMiB) : next.memoryMiB
            if let limit = next.memoryLimitMiB, limit >= next.memoryMiB { next.memoryLimitMiB = nil }
            next.cpuReservationMHz = min(next.cpuReservationMHz, next.cpus * 1000)
            if let limit = next.cpuLimitMHz, limit >= next.cpus * 1000 { next.cpuLimitMHz = nil }
            if running {
                var asked = next.placementRequest
                asked.datastore = nil   // it is already there
                if let refusal = placement.admit(asked, on: try Inventory.candidate(db, host, excluding: vm.id), vm: vm.name) { throw refusal }
            }
            // The VM's operation lock: no migration, snapshot or other change while its size moves.
            let task = tasks.newTask(kind: "vm.resize", targetType: "vm", targetId: vm.id, targetName: vm.name)
            try Self.hold(db, &vm, for: task)
            next.operationTask = vm.operationTask
            try next.update(db)
            return (vm, next, host, task)
        }
        do {
            let result = try await performResize(task: task, before: before, after: after, host: host)
            await releaseOperation(after.id)
            return result
        } catch {
            await releaseOperation(after.id)
            throw error
        }
    }

    private func performResize(task: TaskRecord, before: VMRecord, after: VMRecord, host: HostRecord) async throws -> (VMRecord, onlineCpus: Int?) {
        try await tasks.perform(task) { _ in
            guard before.lifecycle.consumesHostResources else {
                let message = "now \(after.cpus) vCPU (at most \(after.maxCpus)), \(after.memoryMiB) MiB (at most \(after.maxMemoryMiB)); from its next start"
                await events.record(.info, "vm.resized", targetType: "vm", targetId: after.id, targetName: after.name, message)
                return ((after, nil), message)
            }
            do {
                let answer = try await agents.resize(Inventory.endpoint(host), vm: after.id, .init(cpus: after.cpus, memoryMiB: after.memoryMiB))
                // The reservation may have followed the memory: the cgroup follows the record.
                if after.qos != before.qos { _ = try? await agents.define(Inventory.endpoint(host), try await definitionFor(after)) }
                let message = "online: \(before.cpus) → \(after.cpus) vCPU\(answer.onlineCpus.map { " (\($0) online in the guest)" } ?? ""), \(before.memoryMiB) → \(after.memoryMiB) MiB"
                await events.record(.info, "vm.resized", targetType: "vm", targetId: after.id, targetName: after.name, message)
                return ((after, answer.onlineCpus), message)
            } catch {
                // What the guest runs with now is what its host says (a hot-plug undone, or not).
                let actual = try? await agents.definition(Inventory.endpoint(host), vm: after.id)
                _ = try? await store.db.write { db in
                    guard var row = try VMRecord.fetchOne(db, key: before.id) else { return }
                    row.size = before.size
                    if let actual { row.cpus = actual.cpus; row.memoryMiB = actual.memoryMiB }
                    row.qos = before.qos
                    try row.update(db)
                }
                let kept = actual.map { "\($0.cpus) vCPU and \($0.memoryMiB) MiB, as its host reports" } ?? "\(before.cpus) vCPU and \(before.memoryMiB) MiB"
                throw failure(error, rolledBack: "'\(before.name)' keeps \(kept)")
            }
        }
    }

    /// Hibernation (seed: 休眠): the guest's RAM and device state go to a file beside its root
    /// disk and its QEMU ends; it then takes no host memory. A start resumes it where it was.
    func hibernate(_ reference: String) async throws -> TaskRecord {
        let (vm, task, host, previous) = try await beginTransition(reference, kind: "vm.hibernate") { _, vm, _, task in
            let next = try vm.lifecycle.hibernate(vm: vm.name, task: task.id)
            guard vm.toolsRunning else {
                throw ShepherdError(.toolsNotRunning, "cannot hibernate '\(vm.name)': its tools do not answer (its clock is set right through them on resume)")
            }
            return next
        }
        tasks.run(task) { [self] progress in
            do {
                await progress.update(10, "pausing '\(vm.name)' and saving its \(vm.memoryMiB) MiB of memory")
                let started = ContinuousClock.now
                try await agents.hibernate(Inventory.endpoint(host), vm: vm.id, file: vm.hibernationFile)
                let seconds = (ContinuousClock.now - started) / .seconds(1)
                try await setLifecycle(vm.id, .hibernated)
                let message = "hibernated in \(String(format: "%.1f", seconds)) s: its memory is saved in \(vm.hibernationFile)"
                await events.record(.info, "vm.hibernated", targetType: "vm", targetId: vm.id, targetName: vm.name, message)
                return message
            } catch {
                try? await setLifecycle(vm.id, previous)
                throw failure(error, rolledBack: "'\(vm.name)' runs on, as before")
            }
        }
        return task
    }

    func reboot(_ reference: String, force: Bool) async throws -> TaskRecord {
        let (vm, task, host, previous) = try await beginTransition(reference, kind: "vm.reboot") { _, vm, _, task in
            try vm.lifecycle.reboot(vm: vm.name, task: task.id)
        }
        tasks.run(task) { [self] progress in
            do {
                let endpoint = Inventory.endpoint(host)
                let bootIDCommand = AgentWire.ExecRequest(command: ["cat", "/proc/sys/kernel/random/boot_id"], timeoutSeconds: 10)
                let before = try? await agents.exec(endpoint, vm: vm.id, bootIDCommand).stdout
                if before == nil && !force {
                    throw ShepherdError(.toolsNotRunning, "cannot reboot '\(vm.name)' gracefully: its tools do not answer; 'shepherd vm reboot \(vm.name) --force' resets it")
                }
                await progress.update(10, force ? "resetting" : "asking the guest to reboot")
                _ = try await agents.reboot(endpoint, vm: vm.id, force: force)
                if let before {
                    let started = ContinuousClock.now
                    let limit = Duration.seconds(timing.toolsTimeoutSeconds + 60)
                    while true {
                        if ContinuousClock.now - started > limit {
                            throw ShepherdError(.timedOut, "'\(vm.name)' did not come back from its reboot within \(limit.components.seconds) s")
                        }
                        try await Task.sleep(for: timing.pollInterval)
                        if let now = try? await agents.exec(endpoint, vm: vm.id, bootIDCommand).stdout, now != before { break }
                        await progress.update(40, "rebooting; waiting for the guest's tools")
                    }
                }
                try await store.db.write { db in
                    guard var row = try VMRecord.fetchOne(db, key: vm.id) else { return }
                    row.lifecycle = .running(since: Date())
                    row.toolsRunning = before != nil
                    try row.update(db)
                }
                await events.record(.info, "vm.rebooted", targetType: "vm", targetId: vm.id, targetName: vm.name, force ? "reset" : "rebooted through its tools")
                return before != nil ? "rebooted; tools answer again" : "reset"
            } catch {
                try? await setLifecycle(vm.id, previous)
                throw failure(error, rolledBack: "'\(vm.name)' is \(previous.name) again")
            }
        }
        return task
    }

    func delete(_ reference: String, force: Bool) async throws -> TaskRecord {
        let (vm, task, host, previous) = try await beginTransition(reference, kind: "vm.delete") { _, vm, _, task in
            try vm.lifecycle.delete(vm: vm.name, task: task.id, force: force)
        }
        tasks.run(task) { [self] progress in
            do {
                await progress.update(20, previous.consumesHostResources ? "cutting power and deleting files on \(host.name)" : "deleting files on \(host.name)")
                try await agents.delete(Inventory.endpoint(host), vm: vm.id)
            } catch {
                try? await setLifecycle(vm.id, previous)
                throw failure(error, rolledBack: "'\(vm.name)' is \(previous.name) again")
            }
            // Its QEMU and root disk are gone: from here on the VM is deleted even if one of its data disks is not.
            var disksNote = ""
            var snapshotImages = Set((try? await store.db.read { db in
                try SnapshotService.snapshots(db, vmID: vm.id).flatMap { Array($0.imageMap.values) + [$0.memoryFile].compactMap { $0 } }
            }) ?? [])
            if previous == .hibernated { snapshotImages.insert(vm.hibernationFile) }
            do {
                for image in snapshotImages { try await agents.deleteDisk(Inventory.endpoint(host), path: image) }
                let deleted = try await disks.deleteDisks(of: vm, host: host)
                if !deleted.isEmpty { disksNote = " with its data disks " + deleted.map { "'\($0)'" }.joined(separator: ", ") }
            } catch {
                disksNote = "; its data disks could not all be deleted (\(error)): 'shepherd disk list' shows what is left"
            }
            _ = try? await store.db.write { db in try VMRecord.deleteOne(db, key: vm.id) }
            await events.record(.info, "vm.deleted", targetType: "vm", targetId: vm.id, targetName: vm.name, "deleted from \(host.name)\(disksNote)")
            return "deleted\(disksNote)"
        }
        return task
    }

    func exec(_ reference: String, command: [String], timeoutSeconds: Int?) async throws -> AgentWire.ExecResult {
        try Validate.execCommand(command, timeoutSeconds: timeoutSeconds)
        let (vm, host) = try await store.db.read { db in
            let vm = try Inventory.vm(db, reference)
            return (vm, try Inventory.host(db, vm.hostId))
        }
        try vm.lifecycle.checkExec(vm: vm.name)
        return try await agents.exec(Inventory.endpoint(host), vm: vm.id,
                                     AgentWire.ExecRequest(command: command, timeoutSeconds: timeoutSeconds ?? 60))
    }

    // MARK: helpers

    /// In one transaction: find the VM and its host, apply the transition, persist it with a new task.
    private func beginTransition(
        _ reference: String, kind: String,
        _ transition: @escaping @Sendable (Database, VMRecord, HostRecord, TaskRecord) throws -> VMLifecycle
    ) async throws -> (VMRecord, TaskRecord, HostRecord, VMLifecycle) {
        try await store.db.write { [tasks] db in
            var vm = try Inventory.vm(db, reference)
            try Self.checkNoOperation(db, vm)
            let host = try Inventory.host(db, vm.hostId)
            let task = tasks.newTask(kind: kind, targetType: "vm", targetId: vm.id, targetName: vm.name)
            let previous = vm.lifecycle
            vm.lifecycle = try transition(db, vm, host, task)
            try task.insert(db)
            try vm.update(db)
            return (vm, task, host, previous)
        }
    }

    /// Refuses while a task works on the VM without changing its power state (a snapshot).
    static func checkNoOperation(_ db: Database, _ vm: VMRecord) throws {
        guard let task = try TaskEngine.holding(db, vm.operationTask) else { return }
        throw ShepherdError(.illegalState, "VM '\(vm.name)' is busy with task \(task.id) (\(task.kind), \(task.progress)%: \(task.message))")
    }

    /// A VM at rest for a change that keeps its power state (a disk change, snapshot, clone,
    /// reclaim): off or running, no task of its own or holding it, its host connected (or in
    /// maintenance while the VM is off). Returns the host.
    static func checkAtRest(_ db: Database, _ vm: VMRecord) throws -> HostRecord {
        switch vm.lifecycle {
        case .stopped, .running: break
        default:
            throw ShepherdError(.illegalState, "VM '\(vm.name)' is \(vm.state)\(vm.stateTask.map { " (task \($0))" } ?? ""); this changes only a VM that is off or running")
        }
        try checkNoOperation(db, vm)
        let host = try Inventory.host(db, vm.hostId)
        guard host.hostState == .connected || (host.hostState == .maintenance && !vm.lifecycle.consumesHostResources) else {
            throw ShepherdError(.hostNotConnected, "the host of VM '\(vm.name)', '\(host.name)', is \(host.state)")
        }
        return host
    }

    /// Writes `task` and makes it hold the VM's operation lock, in the caller's transaction.
    static func hold(_ db: Database, _ vm: inout VMRecord, for task: TaskRecord) throws {
        try task.insert(db)
        vm.operationTask = task.id
        try vm.update(db)
    }

    /// Ends the operation lock a snapshot, storage or reclaim task held on the VM.
    func releaseOperation(_ vmID: String) async { await Self.releaseOperation(in: store, vmID) }

    static func releaseOperation(in store: Store, _ vmID: String) async {
        _ = try? await store.db.write { db in
            guard var row = try VMRecord.fetchOne(db, key: vmID) else { return }
            row.operationTask = nil
            try row.update(db)
        }
    }

    /// The definition for the VM's host, or for `hostId` (a migration's target).
    func definitionFor(_ vm: VMRecord, on hostId: String? = nil) async throws -> AgentWire.VMDefinition {
        let (template, host, overcommit) = try await store.db.read { db in
            let host = try Inventory.host(db, hostId ?? vm.hostId)
            return (try TemplateRecord.filter(Column("name") == vm.template).fetchOne(db), host,
                    try ClusterRecord.fetchOne(db, key: host.clusterId)?.memoryOvercommit ?? false)
        }
        guard let template else { throw ShepherdError(.notFound, "template '\(vm.template)' of VM '\(vm.name)' no longer exists") }
        var result = try await definition(vm, template: template)
        result.cpuModel = vm.cpuModel
        if overcommit { result.swap = Self.swapFile(disk: result.disk, host: host.name, memoryMiB: vm.memoryMiB) }
        return result
    }

    /// A VM's swap disk on one host: beside its root disk, one per host (a host's kernel owns a
    /// swap area while it is on; a migration target gets its own), of the seed's size.
    static func swapFile(disk: String, host: String, memoryMiB: Int) -> AgentWire.SwapFile {
        AgentWire.SwapFile(path: (disk as NSString).deletingLastPathComponent + "/swap-\(host).img",
                           sizeBytes: Int64(SwapDisk.sizeGiB(memoryMiB: memoryMiB)) << 30)
    }

    func setLifecycle(_ id: String, _ lifecycle: VMLifecycle) async throws {
        try await store.db.write { db in
            guard var row = try VMRecord.fetchOne(db, key: id) else { return }
            row.lifecycle = lifecycle
            try row.update(db)
        }
    }

    private func waitForPower(
        vm: VMRecord, host: HostRecord, seconds: Int, progress: TaskEngine.Progress, message: String,
        until done: (AgentWire.GuestPower) -> Bool, timeoutMessage: () -> String
    ) async throws {
        let started = ContinuousClock.now
        while ContinuousClock.now - started < .seconds(seconds) {
            let status = try await agents.status(Inventory.endpoint(host), vm: vm.id)
            if done(status.power) { return }
            let fraction = (ContinuousClock.now - started) / .seconds(seconds)
            await progress.update(20 + Int(70 * fraction), message)
            try await Task.sleep(for: timing.pollInterval)
        }
        throw ShepherdError(.timedOut, timeoutMessage())
    }
}

/// How long VM workflows wait; tests shorten these.
public struct VMTiming: Sendable {
    public var toolsTimeoutSeconds: Int = 120
    public var gracefulStopSeconds: Int = 90
    public var pollInterval: Duration = .milliseconds(250)
    public init(toolsTimeoutSeconds: Int = 120, gracefulStopSeconds: Int = 90, pollInterval: Duration = .milliseconds(250)) {
        self.toolsTimeoutSeconds = toolsTimeoutSeconds
        self.gracefulStopSeconds = gracefulStopSeconds
        self.pollInterval = pollInterval
    }
}
