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
    }

    /// Every check of the seed, the network one for real.
    func preflight(_ reference: String, target targetReference: String) async throws -> MigrationCheckResult {
        let plan = try await self.plan(reference, target: targetReference)
        return MigrationCheckResult(vm: plan.vm.name, source: plan.source.name, target: plan.target.name,
                                    refusals: try await refusals(plan))
    }

    private func plan(_ reference: String, target targetReference: String) async throws -> Plan {
        try Validate.name(targetReference, field: "target")
        return try await store.db.read { [placement] db in
            let vm = try Inventory.vm(db, reference)
            let source = try Inventory.host(db, vm.hostId)
            let target = try Inventory.host(db, targetReference, field: "target")
            let datastores = try Inventory.datastoresByHost(db)
            let allocated = try Inventory.allocatedMiB(db, excluding: vm.id)
            // Every disk must move with the VM: the check looks at the datastore of the root disk
            // unless a data disk's is worse (not seen by the target, else not shared).
            let diskStores = [vm.datastore] + (try DiskService.attached(db, vmID: vm.id).map(\.datastore))
            let records = try diskStores.compactMap { name in try DatastoreRecord.filter(Column("name") == name).fetchOne(db) }
            let datastore = records.first { !(datastores[target.id] ?? []).contains($0.name) }
                ?? records.first { $0.kind != "shared" } ?? records.first
            func side(_ host: HostRecord) throws -> MigrationHost {
                let cluster = try ClusterRecord.fetchOne(db, key: host.clusterId)
                let candidate = Inventory.candidate(host, allocated: allocated[host.id] ?? 0, datastores: datastores[host.id] ?? [])
                return MigrationHost(name: host.name, cluster: cluster?.name ?? "", clusterMemoryOvercommit: cluster?.memoryOvercommit ?? false,
                                     state: host.hostState, cpuVendor: host.cpuVendor, cpuModel: host.cpuModel,
                                     providedModel: host.providedCPUModel, cores: host.cores,
                                     freeMiB: candidate.freeMiB(hostReserveMiB: placement.hostReserveMiB), datastores: candidate.datastores)
            }
            let cluster = try ClusterRecord.fetchOne(db, key: source.clusterId)
            let request = MigrationRequest(vm: vm.name, state: vm.state, toolsRunning: vm.toolsRunning, cpus: vm.cpus,
                                           memoryMiB: vm.memoryMiB, datastore: datastore?.name ?? vm.datastore, datastoreKind: datastore?.kind ?? "unknown",
                                           source: try side(source), target: try side(target), imcBaseline: cluster?.imcBaseline,
                                           vmCPUModel: vm.cpuModel)
            return Plan(vm: vm, source: source, target: target, request: request,
                        timeoutSeconds: cluster?.migrationTimeoutSeconds ?? 300,
                        maxConcurrent: cluster?.maxConcurrentMigrations ?? 2)
        }
    }

    private func refusals(_ plan: Plan) async throws -> [MigrationRefusal] {
        var refusals = MigrationPreflight.check(plan.request)
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

    func migrate(_ reference: String, target targetReference: String) async throws -> TaskRecord {
        let plan = try await self.plan(reference, target: targetReference)
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
        let definition = try await vms.definitionFor(vm)
        tasks.run(task) { [self] progress in
            // The workflow runs detached so its undos and records are never cut short by the
            // cancellation itself; a cancel only raises the flag, which the watch loop honours
            // until post-copy starts (from then on the migration must finish).
            let cancel = CancelFlag()
            let work = Task.detached { [self] () async throws -> String in
                try await slots.acquire([plan.source, plan.target], limit: plan.maxConcurrent, progress: progress, cancel: cancel)
                do {
                    let result = try await run(vm: vm, definition: definition, source: plan.source, target: plan.target,
                                               timeoutSeconds: plan.timeoutSeconds, cancel: cancel, progress: progress)
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
                     timeoutSeconds: Int, cancel: CancelFlag, progress: TaskEngine.Progress) async throws -> String {
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
            var incoming = try await startAttempt(vm: vm, definition: definition, from: from, to: to, target: target,
                                                  address: address.host, postcopy: false, rollback: rollback, progress: progress)
            decisions.append("pre-copy with max-bandwidth \(settings.maxBandwidthBytes >> 20) MiB/s, downtime limit \(settings.downtimeLimitMs) ms, auto-converge and XBZRLE on")
            var final: AgentWire.MigrationProgress
            do {
                final = try await watch(vm: vm, from: from, to: to, target: target, timeoutSeconds: timeoutSeconds, postcopyArmed: false,
                                        cancel: cancel, progress: progress, decisions: &decisions)
            } catch let needed as PostcopyNeeded {
                decisions.append("after \(String(format: "%.1f", needed.afterSeconds)) s: \(needed.reason) (the migration restarted with post-copy armed)")
                try await agents.cancelMigration(from, vm: vm.id)
                try await agents.release(to, vm: vm.id)
                incoming = try await startAttempt(vm: vm, definition: definition, from: from, to: to, target: target,
                                                  address: address.host, postcopy: true, rollback: nil, progress: progress)
                cancel.markPostcopy()
                try await agents.startPostcopy(from, vm: vm.id)
                final = try await watch(vm: vm, from: from, to: to, target: target, timeoutSeconds: timeoutSeconds, postcopyArmed: true,
                                        cancel: cancel, progress: progress, decisions: &decisions)
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
            do { try await agents.syncClock(to, vm: vm.id) } catch {
                decisions.append("guest clock not set: the tools did not answer")
            }
            let summary = "migrated to \(target.name) in \(Int(switchedAfter / .milliseconds(1))) ms (QEMU's last attempt: \(final.totalTimeMs) ms); downtime \(final.downtimeMs.map { "\($0) ms" } ?? "unknown"); \(final.transferredBytes >> 20) MiB sent in \(final.passes) passes; policy: \(decisions.joined(separator: "; "))"
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
                              progress: TaskEngine.Progress) async throws -> AgentWire.IncomingAnswer {
        await progress.update(5, "starting the target QEMU on \(target.name)\(postcopy ? " (post-copy armed)" : "")")
        let incoming = try await agents.prepareIncoming(to, AgentWire.IncomingRequest(definition: definition, address: address, postcopy: postcopy))
        await rollback?.add("stop the target QEMU on \(target.name) and forget the VM there") { [agents] in
            try await agents.release(to, vm: vm.id)
        }
        await progress.update(10, "sending memory to \(target.name) (\(incoming.uri))")
        try await agents.migrate(from, vm: vm.id, AgentWire.MigrateRequest(
            uri: incoming.uri, downtimeLimitMs: settings.downtimeLimitMs, maxBandwidthBytes: settings.maxBandwidthBytes,
            postcopy: postcopy, xbzrle: true, autoConverge: true))
        await rollback?.add("cancel the migration so the source keeps running") { [agents] in
            try await agents.cancelMigration(from, vm: vm.id)
        }
        return incoming
    }

    /// Follows the migration until it completes, applying the convergence policy.
    private func watch(vm: VMRecord, from: AgentClient.Endpoint, to: AgentClient.Endpoint, target: HostRecord, timeoutSeconds: Int,
                       postcopyArmed: Bool, cancel: CancelFlag, progress: TaskEngine.Progress,
                       decisions: inout [String]) async throws -> AgentWire.MigrationProgress {
        let convergence = ConvergenceSettings(downtimeLimitMs: settings.downtimeLimitMs, timeoutSeconds: Double(timeoutSeconds),
                                              postcopyAllowed: settings.postcopyAllowed)
        var inPostcopy = postcopyArmed
        var polls = 0
        var cancelNoted = false
        while true {
            try await Task.sleep(for: .milliseconds(200))
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
                return state
            case "failed", "cancelled", "cancelling":
                throw ShepherdError(.agentFailed, "QEMU reports the migration \(state.status)\(state.error.map { ": " + $0 } ?? "")")
            default:
                break
            }
            if polls % 5 == 0 {
                let targetStatus = try await agents.status(to, vm: vm.id)
                if targetStatus.power == .crashed || targetStatus.power == .stopped {
                    throw ShepherdError(.agentFailed, "the target QEMU on \(target.name) ended during the migration (\(targetStatus.reason ?? targetStatus.power.rawValue))")
                }
            }
            if state.status == "postcopy-active" { inPostcopy = true; cancel.markPostcopy() }
            let sample = MigrationSample(
                elapsedSeconds: Double(state.totalTimeMs) / 1000, pass: state.passes, remainingBytes: Double(state.remainingBytes),
                transferredBytes: Double(state.transferredBytes), dirtyBytesPerSecond: Double(state.dirtyBytesPerSecond),
                bandwidthBytesPerSecond: Double(state.bandwidthBytesPerSecond), expectedDowntimeMs: Double(state.expectedDowntimeMs))
            switch ConvergencePolicy.decide(sample, settings: convergence, inPostcopy: inPostcopy) {
            case .keepGoing:
                break
            case .switchToPostcopy(let reason):
                guard postcopyArmed else { throw PostcopyNeeded(reason: reason, afterSeconds: sample.elapsedSeconds) }
                decisions.append("after \(String(format: "%.1f", sample.elapsedSeconds)) s: \(reason)")
                cancel.markPostcopy()
                try await agents.startPostcopy(from, vm: vm.id)
                inPostcopy = true
            case .abort(let reason):
                decisions.append("aborted: \(reason)")
                throw ShepherdError(.timedOut, reason)
            }
            let total = max(1, state.transferredBytes + state.remainingBytes)
            let percent = 10 + Int(85 * Double(state.transferredBytes) / Double(total))
            await progress.update(percent, "\(inPostcopy ? "post-copy" : "pass \(state.passes)"): \(state.remainingBytes >> 20) MiB left, \(state.bandwidthBytesPerSecond >> 20) MiB/s, dirty \(state.dirtyBytesPerSecond >> 20) MiB/s, expected downtime \(state.expectedDowntimeMs) ms")
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
}
