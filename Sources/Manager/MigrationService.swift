import Foundation
import GRDB
import Logging
import Scheduling
import ShepherdCore
import Synchronization

/// How live migrations run in a cluster.
/// (The migration timeout is the cluster's: `shepherd cluster set --migration-timeout`.)
public struct MigrationSettings: Sendable {
    public var downtimeLimitMs: Int
    public var postcopyAllowed: Bool
    /// Bytes per second for QEMU's max-bandwidth: effectively uncapped (QEMU 7.2 caps at 128 MiB/s by default).
    public var maxBandwidthBytes: Int64
    public init(downtimeLimitMs: Int = 30, postcopyAllowed: Bool = true, maxBandwidthBytes: Int64 = 100 << 30) {
        self.downtimeLimitMs = downtimeLimitMs
        self.postcopyAllowed = postcopyAllowed; self.maxBandwidthBytes = maxBandwidthBytes
    }
}

/// The result of a preflight, for `--dry-run` and for refusals.
public struct MigrationCheckResult: Sendable {
    public var vm: String
    public var source: String
    public var target: String
    public var refusals: [MigrationRefusal]
}

/// Host live migration: preflight, then explicit steps with named undos. Any failure before the
/// switch-over returns to a running source and releases the target.
final class MigrationService: Sendable {
    let store: Store
    let agents: AgentClient
    let tasks: TaskEngine
    let events: EventLog
    let placement: Placement
    let vms: VMService
    let settings: MigrationSettings
    let logger: Logger
    private let slots = MigrationSlots()

    init(store: Store, agents: AgentClient, tasks: TaskEngine, events: EventLog, placement: Placement, vms: VMService,
         settings: MigrationSettings, logger: Logger) {
        self.store = store; self.agents = agents; self.tasks = tasks; self.events = events
        self.placement = placement; self.vms = vms; self.settings = settings; self.logger = logger
    }

    private struct Plan: Sendable {
        var vm: VMRecord
        var source: HostRecord
        var target: HostRecord
        var request: MigrationRequest
        var timeoutSeconds: Int
        var maxConcurrent: Int
        /// Whole-VM migration: the disks move to this datastore of the target too.
        var storage: StoragePlan?
    }

    /// The disks of a whole-VM migration: each from its image on the source to a new one on the
    /// target's datastore, carried over NBD while the VM runs.
    struct StoragePlan: Sendable {
        var datastore: DatastoreRecord
        var mountedByTarget: Bool
        /// The disks that move (those already on the datastore stay: the target mounts it).
        var disks: [StorageMigrationService.Move]
        /// Every disk, for the checks.
        var checks: [StorageMigration.Disk]
        /// The NBD export name of a disk.
        func export(_ key: String) -> String { "disk-" + key.prefix(8) }
    }

    /// Every check of the seed, the network one for real.
    func preflight(_ reference: String, target targetReference: String, datastore: String? = nil) async throws -> MigrationCheckResult {
        let plan = try await self.plan(reference, target: targetReference, datastore: datastore)
        return MigrationCheckResult(vm: plan.vm.name, source: plan.source.name, target: plan.target.name,
                                    refusals: try await refusals(plan))
    }

    private func plan(_ reference: String, target targetReference: String, datastore: String? = nil) async throws -> Plan {
        try Validate.name(targetReference, field: "target")
        if let datastore { try Validate.name(datastore, field: "datastore") }
        var plan = try await store.db.read { [placement] db in
            let vm = try Inventory.vm(db, reference)
            let source = try Inventory.host(db, vm.hostId)
            let target = try Inventory.host(db, targetReference, field: "target")
            let datastores = try Inventory.datastoresByHost(db)
            let loads = try Inventory.hostLoads(db, excluding: vm.id)
            // Every disk must move with the VM: the check looks at the datastore of the root disk
            // unless a data disk's is worse (not seen by the target, else not shared).
            let diskStores = [vm.datastore] + (try DiskService.attached(db, vmID: vm.id).map(\.datastore))
            let records = try diskStores.compactMap { name in try DatastoreRecord.filter(Column("name") == name).fetchOne(db) }
            let datastore = records.first { !(datastores[target.id] ?? []).contains($0.name) }
                ?? records.first { $0.kind != "shared" } ?? records.first
            func side(_ host: HostRecord) throws -> MigrationHost {
                let cluster = try ClusterRecord.fetchOne(db, key: host.clusterId)
                let candidate = Inventory.candidate(host, cluster: cluster, load: loads[host.id] ?? .init(), datastores: datastores[host.id] ?? [])
                return MigrationHost(name: host.name, cluster: cluster?.name ?? "", clusterMemoryOvercommit: cluster?.memoryOvercommit ?? false,
                                     state: host.hostState, cpuVendor: host.cpuVendor, cpuModel: host.cpuModel,
                                     providedModel: host.providedCPUModel, cores: host.cores,
                                     freeMiB: candidate.freeMiB(hostReserveMiB: placement.hostReserveMiB),
                                     unreservedMiB: candidate.unreservedMiB(hostReserveMiB: placement.hostReserveMiB),
                                     unreservedMHz: candidate.unreservedMHz, datastores: candidate.datastores)
            }
            var sourceSide = try side(source), targetSide = try side(target)
            sourceSide.switches = try NetworkService.switchNames(db, hostID: source.id)
            targetSide.switches = try NetworkService.switchNames(db, hostID: target.id)
            let cluster = try ClusterRecord.fetchOne(db, key: source.clusterId)
            var request = MigrationRequest(vm: vm.name, state: vm.state, toolsRunning: vm.toolsRunning, cpus: vm.cpus,
                                           memoryMiB: vm.memoryMiB, datastore: datastore?.name ?? vm.datastore, datastoreKind: datastore?.kind ?? "unknown",
                                           source: sourceSide, target: targetSide, imcBaseline: cluster?.imcBaseline,
                                           vmCPUModel: vm.cpuModel, memoryReservationMiB: vm.memoryReservationMiB,
                                           cpuReservationMHz: vm.cpuReservationMHz)
            request.switches = try NetworkService.switchNames(db, vmID: vm.id)
            return Plan(vm: vm, source: source, target: target, request: request,
                        timeoutSeconds: cluster?.migrationTimeoutSeconds ?? 300,
                        maxConcurrent: cluster?.maxConcurrentMigrations ?? 2)
        }
        if let datastore { plan.storage = try await storagePlan(plan.vm, source: plan.source, target: plan.target, datastore: datastore) }
        return plan
    }

    /// Where each disk goes on the target's datastore, with what the checks need to know.
    private func storagePlan(_ vm: VMRecord, source: HostRecord, target: HostRecord, datastore name: String) async throws -> StoragePlan {
        let (datastore, mounted) = try await store.db.read { db in
            let datastore = try Inventory.datastore(db, named: name, field: "datastore")
            return (datastore, try Inventory.datastoresByHost(db)[target.id]?.contains(datastore.name) ?? false)
        }
        let all = try await StorageMigrationService.moves(vm, host: source, to: datastore, store: store, agents: agents)
        return StoragePlan(datastore: datastore, mountedByTarget: mounted, disks: all.filter { $0.check.datastore != datastore.name },
                           checks: all.map(\.check))
    }

    private func refusals(_ plan: Plan) async throws -> [MigrationRefusal] {
        var refusals = MigrationPreflight.check(plan.request)
        if let storage = plan.storage {
            // The disks move too: shared storage is not needed, the storage checks apply instead.
            refusals.removeAll { $0.check == .storageNotShared || $0.check == .targetCannotSeeStorage }
            let moving = StorageMigration.refusals(
                vm: plan.vm.name, live: true, disks: storage.checks,
                target: .init(name: storage.datastore.name, kind: storage.datastore.kind, freeBytes: storage.datastore.freeBytes,
                              mountedByHost: storage.mountedByTarget), type: .thin)
            for refusal in moving {
                let message = refusal.check == .targetNotMounted
                    ? "target '\(plan.target.name)' does not mount datastore '\(storage.datastore.name)'" : refusal.message
                refusals.append(.init(.storageNotShared, "\(refusal.check.rawValue): \(message)"))
            }
        }
        let connectionRefused = refusals.contains { $0.check == .targetNotConnected || $0.check == .sameHost }
        if !connectionRefused, plan.source.hostState == .connected, let address = Self.address(of: plan.target) {
            // The source must reach the target on the migration network: try a real TCP connection to its agent.
            do {
                let answer = try await agents.probe(Inventory.endpoint(plan.source), address: address.host, port: address.port)
                if !answer.reachable {
                    refusals.append(.init(.networkUnreachable, "'\(plan.source.name)' cannot reach '\(plan.target.name)' at \(address.host): \(answer.detail)"))
                }
            } catch {
                refusals.append(.init(.networkUnreachable, "could not ask '\(plan.source.name)' to probe '\(plan.target.name)': \(error)"))
            }
        }
        return refusals
    }

    /// The host part and port of an agent's URL.
    static func address(of host: HostRecord) -> (host: String, port: Int)? {
        guard let url = URL(string: host.address), let name = url.host else { return nil }
        return (name, url.port ?? 80)
    }

    func migrate(_ reference: String, target targetReference: String, datastore: String? = nil) async throws -> TaskRecord {
        let plan = try await self.plan(reference, target: targetReference, datastore: datastore)
        let refused = try await refusals(plan)
        guard refused.isEmpty else {
            throw ShepherdError(.preflightFailed, "cannot migrate '\(plan.vm.name)' from \(plan.source.name) to \(plan.target.name): "
                                + refused.map(\.description).joined(separator: "; "))
        }
        let (vm, task) = try await store.db.write { [tasks] db -> (VMRecord, TaskRecord) in
            var vm = try Inventory.vm(db, reference)
            guard vm.hostId == plan.source.id else {
                throw ShepherdError(.illegalState, "VM '\(vm.name)' moved while its migration was being checked")
            }
            try DiskService.checkDisksAtRest(db, vm: vm)
            try VMService.checkNoOperation(db, vm)
            let task = tasks.newTask(kind: "vm.migrate", targetType: "vm", targetId: vm.id, targetName: vm.name)
            vm.lifecycle = try vm.lifecycle.migrate(vm: vm.name, task: task.id, target: plan.target.id)
            try task.insert(db)
            try vm.update(db)
            return (vm, task)
        }
        var definition = try await vms.definitionFor(vm, on: plan.target.id)
        if let storage = plan.storage {
            // The target opens the images its datastore will hold.
            let moved = Dictionary(uniqueKeysWithValues: storage.disks.map { ($0.source, $0.target) })
            definition.disk = moved[definition.disk] ?? definition.disk
            for index in definition.disks.indices { definition.disks[index].path = moved[definition.disks[index].path] ?? definition.disks[index].path }
            if definition.swap != nil { definition.swap = VMService.swapFile(disk: definition.disk, host: plan.target.name, memoryMiB: vm.memoryMiB) }
            definition.linkedClone = false
        }
        let storage = plan.storage
        let targetDefinition = definition
        tasks.run(task) { [self] progress in
            // The workflow runs detached so its undos and records are never cut short by the
            // cancellation itself; a cancel only raises the flag, which the watch loop honours
            // until post-copy starts (from then on the migration must finish).
            let cancel = CancelFlag()
            let work = Task.detached { [self] () async throws -> String in
                try await slots.acquire([plan.source, plan.target], limit: plan.maxConcurrent, progress: progress, cancel: cancel)
                do {
                    let result = try await run(vm: vm, definition: targetDefinition, source: plan.source, target: plan.target,
                                               timeoutSeconds: plan.timeoutSeconds, storage: storage, cancel: cancel, progress: progress)
                    await slots.release([plan.source.id, plan.target.id])
                    return result
                } catch {
                    await slots.release([plan.source.id, plan.target.id])
                    throw error
                }
            }
            return try await withTaskCancellationHandler { try await work.value } onCancel: { cancel.raise() }
        }
        return task
    }

    private func run(vm: VMRecord, definition: AgentWire.VMDefinition, source: HostRecord, target: HostRecord,
                     timeoutSeconds: Int, storage: StoragePlan? = nil, cancel: CancelFlag, progress: TaskEngine.Progress) async throws -> String {
        let from = Inventory.endpoint(source), to = Inventory.endpoint(target)
        let since = vm.runningSince ?? Date()
        let rollback = Rollback()
        await rollback.add("'\(vm.name)' keeps running on \(source.name)") { [vms] in try await vms.setLifecycle(vm.id, .running(since: since)) }
        var decisions: [String] = []
        let started = ContinuousClock.now
        do {
            guard let address = Self.address(of: target) else {
                throw ShepherdError(.invalidField, "target: host '\(target.name)' has no usable address (\(target.address))")
            }
            // Pre-copy first, without the post-copy capability: armed, it makes QEMU wait for the
            // target's acknowledgement at the switch-over (measured here: 29–84 ms of downtime
            // instead of 5–7 ms). Only when the policy predicts that pre-copy cannot finish does
            // the migration restart with post-copy armed and switch at once.
            var mirrors: [(StorageMigrationService.Move, String)] = []
            var incoming = try await startAttempt(vm: vm, definition: definition, from: from, to: to, target: target,
                                                  address: address.host, postcopy: false, rollback: rollback, progress: progress,
                                                  storage: storage) { incoming in
                guard let storage else { return }
                mirrors = try await self.mirrorDisks(storage, incoming: incoming, vm: vm, from: from, to: to, rollback: rollback,
                                                     cancel: cancel, progress: progress)
                decisions.append("\(mirrors.count) disk(s) mirrored to \(storage.datastore.name) on \(target.name) over NBD (write-blocking) before the memory")
            }
            decisions.append("pre-copy with max-bandwidth \(settings.maxBandwidthBytes >> 20) MiB/s, downtime limit \(settings.downtimeLimitMs) ms, auto-converge and XBZRLE on")
            var final: AgentWire.MigrationProgress
            var abandonedBytes: Int64 = 0
            do {
                final = try await watch(vm: vm, from: from, to: to, target: target, timeoutSeconds: timeoutSeconds, postcopyArmed: false,
                                        postcopyAllowed: storage == nil, cancel: cancel, progress: progress, decisions: &decisions)
            } catch let needed as PostcopyNeeded {
                decisions.append("after \(String(format: "%.1f", needed.afterSeconds)) s: \(needed.reason) (the migration restarted with post-copy armed)")
                abandonedBytes = needed.sentBytes
                try await agents.cancelMigration(from, vm: vm.id)
                try await agents.release(to, vm: vm.id)
                incoming = try await startAttempt(vm: vm, definition: definition, from: from, to: to, target: target,
                                                  address: address.host, postcopy: true, rollback: nil, progress: progress)
                cancel.markPostcopy()
                try await agents.startPostcopy(from, vm: vm.id)
                final = try await watch(vm: vm, from: from, to: to, target: target, timeoutSeconds: timeoutSeconds, postcopyArmed: true,
                                        postcopyAllowed: true, cancel: cancel, progress: progress, decisions: &decisions)
            }
            if let storage {
                // The source is paused for good: its mirrors hold every write. End them, then the
                // target runs on complete disks.
                for (disk, job) in mirrors {
                    do { try await agents.endNBDMirror(from, vm: vm.id, job: job) } catch {
                        throw ShepherdError(.agentFailed, "the mirror of '\(disk.name)' did not end cleanly after the switch-over: \(error)")
                    }
                }
                try await agents.resumeIncoming(to, vm: vm.id)
                try await store.db.write { db in
                    guard var row = try VMRecord.fetchOne(db, key: vm.id) else { return }
                    for disk in storage.disks {
                        if disk.key == SnapshotService.rootKey {
                            row.diskPath = disk.target
                            row.datastore = storage.datastore.name
                        } else if var record = try DiskRecord.fetchOne(db, key: disk.key) {
                            record.path = disk.target
                            record.datastore = storage.datastore.name
                            try record.update(db)
                        }
                    }
                    try row.update(db)
                }
            }

            // Switch-over done: the VM runs on the target. Nothing below rolls back.
            let switchedAfter = ContinuousClock.now - started
            let targetPid = incoming.pid
            try await store.db.write { db in
                guard var row = try VMRecord.fetchOne(db, key: vm.id) else { return }
                row.hostId = target.id
                row.lifecycle = .running(since: since)
                row.runningSince = since
                row.pid = targetPid.map(Int.init)
                try row.update(db)
            }
            do { try await agents.release(from, vm: vm.id) } catch {
                await events.record(.warning, "vm.migrate.cleanup", targetType: "vm", targetId: vm.id, targetName: vm.name,
                                    "the source QEMU on \(source.name) could not be ended after the switch-over: \(error)")
            }
            for disk in storage?.disks ?? [] {
                do { try await agents.deleteDisk(from, path: disk.source) } catch {
                    await events.record(.warning, "vm.migrate.cleanup", targetType: "vm", targetId: vm.id, targetName: vm.name,
                                        "the old image '\(disk.source)' on \(source.name) could not be deleted: \(error)")
                }
            }
            do { try await agents.syncClock(to, vm: vm.id) } catch {
                decisions.append("guest clock not set: the tools did not answer")
            }
            let summary = "migrated to \(target.name) in \(Int(switchedAfter / .milliseconds(1))) ms (QEMU's last attempt: \(final.totalTimeMs) ms); downtime \(final.downtimeMs.map { "\($0) ms" } ?? "unknown"); \(final.transferredBytes >> 20) MiB sent in \(final.passes) passes\(abandonedBytes > 0 ? " (\((final.transferredBytes + abandonedBytes) >> 20) MiB with the abandoned pre-copy)" : ""); policy: \(decisions.joined(separator: "; "))"
            await events.record(.info, "vm.migrated", targetType: "vm", targetId: vm.id, targetName: vm.name, "from \(source.name): \(summary)")
            return summary
        } catch {
            if cancel.postcopyStarted {
                // Part of the guest's memory is already on the target: resuming the source would
                // run a guest that lost writes. Say so rather than pretend to roll back.
                let reason = "post-copy to \(target.name) failed: the guest's memory is split between \(source.name) and \(target.name); neither side can safely resume it"
                try? await vms.setLifecycle(vm.id, .unknown(reason: reason))
                await events.record(.error, "vm.migrate.failed", targetType: "vm", targetId: vm.id, targetName: vm.name, "\(reason): \(error)")
                throw ShepherdError(.agentFailed, "\(reason) (\(error)). Policy: " + decisions.joined(separator: "; "))
            }
            let undone = await rollback.run()
            await events.record(.warning, "vm.migrate.failed", targetType: "vm", targetId: vm.id, targetName: vm.name,
                                "migration to \(target.name) failed: \(error); \(undone)")
            throw failure(error, rolledBack: undone + (decisions.isEmpty ? "" : ". Policy: " + decisions.joined(separator: "; ")))
        }
    }

    /// Starts the target QEMU and the sending; registers their undos on the first attempt.
    private func startAttempt(vm: VMRecord, definition: AgentWire.VMDefinition, from: AgentClient.Endpoint, to: AgentClient.Endpoint,
                              target: HostRecord, address: String, postcopy: Bool, rollback: Rollback?,
                              progress: TaskEngine.Progress, storage: StoragePlan? = nil,
                              beforeMemory: (AgentWire.IncomingAnswer) async throws -> Void = { _ in }) async throws -> AgentWire.IncomingAnswer {
        await progress.update(5, "starting the target QEMU on \(target.name)\(postcopy ? " (post-copy armed)" : "")")
        let disks = storage?.disks.map { AgentWire.IncomingDisk(path: $0.target, sizeBytes: $0.check.virtualBytes, export: storage!.export($0.key)) }
        let incoming = try await agents.prepareIncoming(to, AgentWire.IncomingRequest(definition: definition, address: address, postcopy: postcopy,
                                                                                       storage: disks))
        await rollback?.add("stop the target QEMU on \(target.name) and forget the VM there\(disks == nil ? "" : ", deleting the disk copies")") { [agents] in
            try await agents.release(to, vm: vm.id)
            for disk in disks ?? [] { try await agents.deleteDisk(to, path: disk.path) }
        }
        try await beforeMemory(incoming)
        await progress.update(10, "sending memory to \(target.name) (\(incoming.uri))")
        try await agents.migrate(from, vm: vm.id, AgentWire.MigrateRequest(
            uri: incoming.uri, downtimeLimitMs: settings.downtimeLimitMs, maxBandwidthBytes: settings.maxBandwidthBytes,
            postcopy: postcopy, xbzrle: true, autoConverge: true))
        await rollback?.add("cancel the migration so the source keeps running") { [agents] in
            try await agents.cancelMigration(from, vm: vm.id)
        }
        return incoming
    }

    /// Whole-VM migration: every disk mirrored into the target's NBD exports until all are in sync.
    private func mirrorDisks(_ storage: StoragePlan, incoming: AgentWire.IncomingAnswer, vm: VMRecord, from: AgentClient.Endpoint,
                             to: AgentClient.Endpoint, rollback: Rollback, cancel: CancelFlag,
                             progress: TaskEngine.Progress) async throws -> [(StorageMigrationService.Move, String)] {
        guard let server = incoming.nbd else { throw ShepherdError(.agentFailed, "the target exported no disks over NBD") }
        var mirrors: [(StorageMigrationService.Move, String)] = []
        for disk in storage.disks {
            let status = try await agents.startNBDMirror(from, vm: vm.id, .init(source: disk.source, server: server, export: storage.export(disk.key)))
            mirrors.append((disk, status.job))
            await rollback.add("stop mirroring '\(disk.name)'; the source keeps its disk") { [agents] in
                try await agents.endNBDMirror(from, vm: vm.id, job: status.job)
            }
        }
        let started = ContinuousClock.now
        while true {
            if cancel.isRaised { throw ShepherdError(.cancelled, "cancelled by the user") }
            let (copied, total, ready) = try await StorageMigrationService.mirrorProgress(mirrors.map { ($0.0.name, $0.1) }, agents: agents,
                                                                                          endpoint: from, vm: vm.id)
            if ready { return mirrors }
            let seconds = max(0.001, (ContinuousClock.now - started).inSeconds)
            await progress.update(5 + Int(5 * Double(copied) / Double(max(total, 1))),
                                  "mirroring \(mirrors.count) disk(s) to \(storage.datastore.name): \(DiskRules.formatBytes(copied)) of \(DiskRules.formatBytes(total)) (\(DiskRules.formatBytes(Int64(Double(copied) / seconds)))/s)")
            try await Task.sleep(for: .milliseconds(100))
        }
    }

    /// Follows the migration until it completes, applying the convergence policy.
    private func watch(vm: VMRecord, from: AgentClient.Endpoint, to: AgentClient.Endpoint, target: HostRecord, timeoutSeconds: Int,
                       postcopyArmed: Bool, postcopyAllowed: Bool, cancel: CancelFlag, progress: TaskEngine.Progress,
                       decisions: inout [String]) async throws -> AgentWire.MigrationProgress {
        let convergence = ConvergenceSettings(downtimeLimitMs: settings.downtimeLimitMs, timeoutSeconds: Double(timeoutSeconds),
                                              postcopyAllowed: settings.postcopyAllowed && postcopyAllowed)
        var inPostcopy = postcopyArmed
        var polls = 0
        var cancelNoted = false
        var peakRemaining: Int64 = 0, peakThrottle = 0
        // The throttle the published dirty rate was measured under (QEMU raises it at a sync, then
        // publishes the rate of the period before), and the guest's non-zero memory at the first sync.
        var lastPasses = 0, throttleSeen = 0, rateThrottle = 0
        var nonZeroAtFirstSync: Int64?
        func noteThrottle() {
            if peakThrottle > 0 { decisions.append("auto-converge throttled the guest's vCPUs up to \(peakThrottle) %") }
        }
        while true {
            try await Task.sleep(for: .milliseconds(100))
            polls += 1
            if cancel.isRaised {
                guard inPostcopy else { throw ShepherdError(.cancelled, "cancelled by the user") }
                if !cancelNoted {
                    decisions.append("a cancel came during post-copy and was not honoured: post-copy must finish")
                    cancelNoted = true
                }
            }
            let state = try await agents.migrationProgress(from, vm: vm.id)
            switch state.status {
            case "completed":
                noteThrottle()
                return state
            case "failed", "cancelled", "cancelling":
                throw ShepherdError(.agentFailed, "QEMU reports the migration \(state.status)\(state.error.map { ": " + $0 } ?? "")")
            default:
                break
            }
            if polls % 10 == 0 {
                let targetStatus = try await agents.status(to, vm: vm.id)
                if targetStatus.power == .crashed || targetStatus.power == .stopped {
                    throw ShepherdError(.agentFailed, "the target QEMU on \(target.name) ended during the migration (\(targetStatus.reason ?? targetStatus.power.rawValue))")
                }
            }
            if state.status == "postcopy-active" { inPostcopy = true; cancel.markPostcopy() }
            // After the first pass, what waits to be sent is what the guest dirtied meanwhile.
            if state.passes >= 2 { peakRemaining = max(peakRemaining, state.remainingBytes) }
            if state.passes >= 2, nonZeroAtFirstSync == nil { nonZeroAtFirstSync = max(0, state.totalBytes - (state.zeroBytes ?? 0)) }
            let throttle = state.cpuThrottlePercent ?? 0
            if state.passes != lastPasses { rateThrottle = throttleSeen; lastPasses = state.passes }
            throttleSeen = throttle
            peakThrottle = max(peakThrottle, throttle)
            let sample = MigrationSample(
                elapsedSeconds: Double(state.totalTimeMs) / 1000, pass: state.passes, remainingBytes: Double(state.remainingBytes),
                transferredBytes: Double(state.transferredBytes), dirtyBytesPerSecond: Double(state.dirtyBytesPerSecond),
                bandwidthBytesPerSecond: Double(state.bandwidthBytesPerSecond), expectedDowntimeMs: Double(state.expectedDowntimeMs),
                throttlePercent: Double(throttle), rateThrottlePercent: Double(rateThrottle), peakRemainingBytes: Double(peakRemaining),
                nonZeroBytes: Double(nonZeroAtFirstSync ?? max(0, state.totalBytes - (state.zeroBytes ?? 0))))
            switch ConvergencePolicy.decide(sample, settings: convergence, inPostcopy: inPostcopy) {
            case .keepGoing:
                break
            case .switchToPostcopy(let reason):
                noteThrottle()
                guard postcopyArmed else { throw PostcopyNeeded(reason: reason, afterSeconds: sample.elapsedSeconds, sentBytes: state.transferredBytes) }
                decisions.append("after \(String(format: "%.1f", sample.elapsedSeconds)) s: \(reason)")
                cancel.markPostcopy()
                try await agents.startPostcopy(from, vm: vm.id)
                inPostcopy = true
            case .abort(let reason):
                noteThrottle()
                decisions.append("aborted: \(reason)")
                throw ShepherdError(.timedOut, reason)
            }
            let total = max(1, state.transferredBytes + state.remainingBytes)
            let percent = 10 + Int(85 * Double(state.transferredBytes) / Double(total))
            let throttled = throttle > 0 ? " (guest throttled \(throttle) %)" : ""
            await progress.update(percent, "\(inPostcopy ? "post-copy" : "pass \(state.passes)"): \(state.remainingBytes >> 20) MiB left, \(state.bandwidthBytesPerSecond >> 20) MiB/s, dirty \(state.dirtyBytesPerSecond >> 20) MiB/s\(throttled), expected downtime \(state.expectedDowntimeMs) ms")
        }
    }
}

/// At most N migrations per host at once (the cluster's setting); further ones wait their turn.
actor MigrationSlots {
    private var running: [String: Int] = [:]

    func acquire(_ hosts: [HostRecord], limit: Int, progress: TaskEngine.Progress, cancel: CancelFlag) async throws {
        var announced = false
        while let busy = hosts.first(where: { (running[$0.id] ?? 0) >= limit }) {
            if cancel.isRaised { throw ShepherdError(.cancelled, "cancelled by the user while queued") }
            if !announced {
                await progress.update(1, "queued: \(busy.name) already runs \(running[busy.id] ?? 0) migration(s) (limit \(limit))")
                announced = true
            }
            try await Task.sleep(for: .milliseconds(250))
        }
        for host in hosts { running[host.id, default: 0] += 1 }
    }

    func release(_ hostIDs: [String]) {
        for id in hostIDs { running[id, default: 1] -= 1 }
    }
}

/// A user's cancel, raised from outside the detached workflow; and whether post-copy began.
final class CancelFlag: Sendable {
    private let state = Mutex<(raised: Bool, postcopy: Bool)>((false, false))
    func raise() { state.withLock { $0.raised = true } }
    var isRaised: Bool { state.withLock { $0.raised } }
    func markPostcopy() { state.withLock { $0.postcopy = true } }
    var postcopyStarted: Bool { state.withLock { $0.postcopy } }
}

/// The policy wants post-copy but this attempt did not arm it: restart with it armed.
struct PostcopyNeeded: Error {
    let reason: String
    let afterSeconds: Double
    /// What the abandoned pre-copy attempt had sent.
    let sentBytes: Int64
}
