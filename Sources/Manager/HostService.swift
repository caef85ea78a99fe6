import Foundation
import GRDB
import Logging
import ServerKit
import ShepherdCore

/// What an agent says about its host when it joins or beats.
struct HostReport: Sendable {
    var providedCPUModel: String?
    var cpuModel: String
    var cpuVendor: String
    var cpuFlags: [String]
    var cores: Int
    var memoryTotalBytes: Int64
    var memoryAvailableBytes: Int64
    var ksmSavedBytes: Int64?
    var cgroups: String?
}

struct DatastoreReport: Sendable {
    var name: String
    var kind: String
    var path: String
    var capacityBytes: Int64
    var freeBytes: Int64
}

/// Agents joining, heartbeats, and what they say about the VMs: the manager's view of hosts.
final class HostService: Sendable {
    let store: Store
    let events: EventLog
    let tasks: TaskEngine
    let joinToken: String
    let logger: Logger
    private let startedAt = ContinuousClock.now

    init(store: Store, events: EventLog, tasks: TaskEngine, joinToken: String, logger: Logger) {
        self.store = store; self.events = events; self.tasks = tasks; self.joinToken = joinToken; self.logger = logger
    }

    /// An agent joins with the join token; it gets its host's id and its own credential.
    func register(bearer: String?, name: String, cluster: String, address: String, host report: HostReport,
                  datastores: [DatastoreReport], agentVersion: String, accelerator: String) async throws -> (hostId: String, token: String) {
        guard let bearer else { throw ShepherdError(.unauthorized, "joining needs the join token as bearer token") }
        guard BearerAuth.matches(bearer, joinToken) else { throw ShepherdError(.forbidden, "the join token is not valid") }
        try Validate.name(name)
        try Validate.name(cluster, field: "cluster")
        guard address.hasPrefix("http://") || address.hasPrefix("https://") else {
            throw ShepherdError.invalidField("address", "'\(address)' must be an http(s) URL")
        }
        let token = BearerAuth.newSecret()
        let (hostId, rejoined) = try await store.db.write { db -> (String, Bool) in
            var clusterRow = try ClusterRecord.filter(Column("name") == cluster).fetchOne(db)
            if clusterRow == nil {
                clusterRow = ClusterRecord(id: newID(), name: cluster, memoryOvercommit: false, createdAt: Date())
                try clusterRow!.insert(db)
            }
            if let baseline = clusterRow?.imcBaseline,
               !CPUModels.host(providing: report.providedCPUModel, vendor: report.cpuVendor, canRun: baseline) {
                throw ShepherdError(.preflightFailed, "host '\(name)' cannot join cluster '\(cluster)': it provides \(report.providedCPUModel ?? report.cpuVendor), below the cluster's IMC baseline \(baseline)")
            }
            let existing = try HostRecord.filter(Column("name") == name).fetchOne(db)
            var host = HostRecord(
                id: existing?.id ?? newID(), name: name, clusterId: clusterRow!.id, address: address, token: token,
                state: existing?.hostState == .maintenance ? HostState.maintenance.rawValue : HostState.connected.rawValue,
                cpuModel: report.cpuModel, cpuVendor: report.cpuVendor, cpuFlags: report.cpuFlags.joined(separator: " "),
                cores: report.cores, memoryTotalMiB: Int(report.memoryTotalBytes / 1_048_576),
                memoryFreeMiB: Int(report.memoryAvailableBytes / 1_048_576), accelerator: accelerator,
                agentVersion: agentVersion, lastHeartbeat: Date(), providedCPUModel: report.providedCPUModel)
            // A rejoining host keeps its BMC: the operator set it, not the agent.
            host.bmcAddress = existing?.bmcAddress
            host.bmcUser = existing?.bmcUser
            host.bmcPassword = existing?.bmcPassword
            host.bmcInsecure = existing?.bmcInsecure ?? false
            host.powerState = existing?.powerState
            host.powerCheckedAt = existing?.powerCheckedAt
            try host.save(db)
            try Self.saveDatastores(db, datastores, hostId: host.id)
            return (host.id, existing != nil)
        }
        await events.record(.info, "host.connected", targetType: "host", targetId: hostId, targetName: name,
                            rejoined ? "rejoined from \(address)" : "joined cluster \(cluster) from \(address)")
        return (hostId, token)
    }

    /// What a heartbeat found (VMs newly crashed, for HA) and what its answer tells the agent.
    struct HeartbeatOutcome {
        var failures: [(vmId: String, reason: String)]
        var isolationResponse: IsolationResponse
        var peers: [String]
    }

    /// Records a heartbeat and settles the VMs that no task of this manager is changing.
    @discardableResult
    func heartbeat(bearer: String?, hostId: String, host report: HostReport, accelerator: String?, agentVersion: String?,
                   datastores: [DatastoreReport], guests: [AgentWire.GuestStatus],
                   leaseRenewedAt: Date? = nil) async throws -> HeartbeatOutcome {
        guard let bearer else { throw ShepherdError(.unauthorized, "heartbeats need the host's credential as bearer token") }
        let (host, wasLost, isolation) = try await store.db.write { db -> (HostRecord, Bool, (IsolationResponse, [String])) in
            guard var host = try HostRecord.fetchOne(db, key: hostId) else { throw ShepherdError.notFound("host", hostId) }
            guard BearerAuth.matches(bearer, host.token) else { throw ShepherdError(.forbidden, "this credential does not belong to host '\(host.name)'") }
            let wasLost = host.hostState == .disconnected || host.hostState == .standby
            if wasLost { host.state = HostState.connected.rawValue }
            host.cpuModel = report.cpuModel
            host.providedCPUModel = report.providedCPUModel
            host.cpuVendor = report.cpuVendor
            host.cpuFlags = report.cpuFlags.joined(separator: " ")
            host.cores = report.cores
            host.memoryTotalMiB = Int(report.memoryTotalBytes / 1_048_576)
            host.memoryFreeMiB = Int(report.memoryAvailableBytes / 1_048_576)
            host.ksmSavedMiB = Int((report.ksmSavedBytes ?? 0) / 1_048_576)
            host.cgroups = report.cgroups
            host.lastHeartbeat = Date()
            if let accelerator { host.accelerator = accelerator }
            if let agentVersion { host.agentVersion = agentVersion }
            if let leaseRenewedAt { host.leaseRenewedAt = leaseRenewedAt }
            try host.update(db)
            try Self.saveDatastores(db, datastores, hostId: host.id)
            // What the agent needs should it become isolated: the cluster's response and its peers.
            let response = try ClusterRecord.fetchOne(db, key: host.clusterId).flatMap { IsolationResponse(rawValue: $0.haIsolationResponse) }
            let peers = try HostRecord.filter(Column("clusterId") == host.clusterId && Column("id") != host.id).order(Column("name")).fetchAll(db)
            return (host, wasLost, (response ?? .leaveRunning, peers.map(\.address)))
        }
        if wasLost {
            await events.record(.info, "host.connected", targetType: "host", targetId: host.id, targetName: host.name, "heartbeats resumed")
        }
        return HeartbeatOutcome(failures: try await reconcile(host: host, guests: guests), isolationResponse: isolation.0, peers: isolation.1)
    }

    /// Brings the stored VM states in line with what the host reports, for VMs no live task owns.
    private func reconcile(host: HostRecord, guests: [AgentWire.GuestStatus]) async throws -> [(vmId: String, reason: String)] {
        var crashed: [(vmId: String, reason: String)] = []
        let reported = Dictionary(guests.map { ($0.vmId, $0) }, uniquingKeysWith: { a, _ in a })
        let vms = try await store.db.read { db in try VMRecord.filter(Column("hostId") == host.id).fetchAll(db) }
        for vm in vms {
            guard let guest = reported[vm.id] else { continue }
            let owned = await tasks.isLive(vm.stateTask)
            // A migration a previous manager process left behind is MigrationService's to settle.
            if vm.state == "migrating" && !owned { continue }
            // "Stopped" about a VM that just started may predate the start: not evidence it ended.
            // (A crash report is acted on at once: after a guest panic the agent reports it once.)
            let settled = vm.runningSince.map { Date().timeIntervalSince($0) >= Heartbeats.startSettleSeconds } ?? true
            // Likewise "running" about a VM that just stopped (a status collected before the stop).
            let stoppedSettled = vm.stateChangedAt.map { Date().timeIntervalSince($0) >= Heartbeats.startSettleSeconds } ?? true
            var changed = vm
            var event: (EventLog.Severity, String, String)?
            switch guest.power {
            case .running, .paused:
                if !owned, stoppedSettled, vm.lifecycle.since == nil {
                    changed.lifecycle = .running(since: Date())
                    event = (.info, "vm.running", "found running on \(host.name) (was \(vm.lifecycle.name))")
                }
                if changed.lifecycle.consumesHostResources {
                    changed.toolsRunning = guest.toolsRunning
                    changed.pid = guest.pid.map(Int.init)
                }
            case .crashed:
                if !owned, !["crashed", "stopped", "hibernated"].contains(vm.lifecycle.name) {
                    let reason = guest.reason ?? "the QEMU process ended unexpectedly"
                    changed.lifecycle = .crashed(reason: reason)
                    event = (.error, "vm.crashed", "crashed on \(host.name): \(reason)")
                    crashed.append((vm.id, reason))
                }
            case .stopped, .shutdown:
                if !owned, settled, vm.lifecycle.consumesHostResources || vm.lifecycle.name == "unknown" {
                    changed.lifecycle = .stopped
                    event = (.info, "vm.stopped", "the guest powered itself off on \(host.name)")
                }
            }
            guard changed.state != vm.state || changed.toolsRunning != vm.toolsRunning || changed.pid != vm.pid else { continue }
            if changed.toolsRunning != vm.toolsRunning, event == nil, changed.lifecycle.consumesHostResources, !owned {
                event = (.info, changed.toolsRunning ? "vm.tools.running" : "vm.tools.stopped",
                         changed.toolsRunning ? "tools answer" : "tools stopped answering")
            }
            // Only over the row as read: a task or HA may have moved or changed the VM meanwhile.
            let (lifecycle, toolsRunning, pid) = (changed.lifecycle, changed.toolsRunning, changed.pid)
            let applied = try await store.db.write { db -> Bool in
                guard var current = try VMRecord.fetchOne(db, key: vm.id), current.hostId == vm.hostId, current.state == vm.state,
                      current.stateTask == vm.stateTask else { return false }
                current.lifecycle = lifecycle
                current.toolsRunning = toolsRunning
                current.pid = pid
                try current.update(db)
                return true
            }
            guard applied else {
                crashed.removeAll { $0.vmId == vm.id }
                continue
            }
            if let (severity, kind, message) = event {
                await events.record(severity, kind, targetType: "vm", targetId: vm.id, targetName: vm.name, message)
            }
        }
        return crashed
    }

    /// Calls hosts lost after missed heartbeats; their running VMs become unknown.
    func markLostHosts(now: Date = Date()) async throws {
        guard ContinuousClock.now - startedAt > .seconds(Heartbeats.lostAfterSeconds) else { return }
        let lost = try await store.db.write { db -> [HostRecord] in
            let hosts = try HostRecord.filter(Column("state") == HostState.connected.rawValue).fetchAll(db)
            var lost: [HostRecord] = []
            for var host in hosts where now.timeIntervalSince(host.lastHeartbeat ?? .distantPast) > Heartbeats.lostAfterSeconds {
                host.state = HostState.disconnected.rawValue
                try host.update(db)
                for var vm in try VMRecord.filter(Column("hostId") == host.id).fetchAll(db) where vm.state == "running" {
                    vm.lifecycle = .unknown(reason: "host '\(host.name)' stopped sending heartbeats")
                    try vm.update(db)
                }
                lost.append(host)
            }
            return lost
        }
        for host in lost {
            let seconds = Int(now.timeIntervalSince(host.lastHeartbeat ?? .distantPast))
            await events.record(.warning, "host.lost", targetType: "host", targetId: host.id, targetName: host.name,
                                "no heartbeat for \(seconds) s (limit \(Int(Heartbeats.lostAfterSeconds)) s)")
        }
    }

    private static func saveDatastores(_ db: Database, _ reports: [DatastoreReport], hostId: String) throws {
        let before = Set(try DatastoreHostRecord.filter(Column("hostId") == hostId).fetchAll(db).map(\.datastoreId))
        try DatastoreHostRecord.filter(Column("hostId") == hostId).deleteAll(db)
        for report in reports {
            var row = try DatastoreRecord.filter(Column("name") == report.name).fetchOne(db)
                ?? DatastoreRecord(id: newID(), name: report.name, kind: report.kind, path: report.path, capacityBytes: 0, freeBytes: 0)
            row.kind = report.kind
            row.path = report.path
            row.capacityBytes = report.capacityBytes
            row.freeBytes = report.freeBytes
            try row.save(db)
            try DatastoreHostRecord(datastoreId: row.id, hostId: hostId).save(db)
        }
        // A datastore this host stopped reporting that no host reports and nothing uses goes (a
        // removed one that a heartbeat sent just before its removal brought back, or one taken off
        // an agent's command line).
        let dropped = before.subtracting(Set(try DatastoreHostRecord.filter(Column("hostId") == hostId).fetchAll(db).map(\.datastoreId)))
        guard !dropped.isEmpty else { return }
        try db.execute(sql: """
            DELETE FROM datastore WHERE id IN (\(dropped.map { _ in "?" }.joined(separator: ",")))
              AND id NOT IN (SELECT datastoreId FROM datastoreHost)
              AND name NOT IN (SELECT datastore FROM vm) AND name NOT IN (SELECT datastore FROM disk)
              AND name NOT IN (SELECT datastore FROM template)
            """, arguments: StatementArguments(Array(dropped)))
    }
}
