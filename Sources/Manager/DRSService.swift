import Foundation
import GRDB
import HostKit
import Logging
import Scheduling
import ServiceLifecycle
import ShepherdCore

/// Turns the agents' per-VM CPU time into load samples: one sample (cores used) per VM every
/// `sampleSeconds`, the recent ones kept in memory for DRS, every one stored for a day.
actor LoadTracker {
    struct Reading { var at: ContinuousClock.Instant; var cpuSeconds: Double }
    static let sampleSeconds = 6.0
    static let recentSamples = 36

    private var windowStart: [String: Reading] = [:]
    private var recent: [String: [Double]] = [:]

    /// Feeds one heartbeat's reading; returns a finished sample (cores) when a window closes.
    func observe(vmId: String, cpuSeconds: Double, at now: ContinuousClock.Instant = .now) -> Double? {
        guard let start = windowStart[vmId], cpuSeconds >= start.cpuSeconds else {
            // First reading, or the QEMU process changed (restart, migration): start afresh.
            windowStart[vmId] = Reading(at: now, cpuSeconds: cpuSeconds)
            return nil
        }
        let elapsed = (now - start.at).inSeconds
        guard elapsed >= Self.sampleSeconds else { return nil }
        let cores = max(0, (cpuSeconds - start.cpuSeconds) / elapsed)
        windowStart[vmId] = Reading(at: now, cpuSeconds: cpuSeconds)
        var samples = recent[vmId] ?? []
        samples.insert(cores, at: 0)
        if samples.count > Self.recentSamples { samples.removeLast() }
        recent[vmId] = samples
        return cores
    }

    /// Recent samples, newest first (cores).
    func history(_ vmId: String) -> [Double] { recent[vmId] ?? [] }

    func forget(_ vmId: String) { windowStart[vmId] = nil; recent[vmId] = nil }
}

public struct DRSRecommendationView: Sendable {
    var record: DRSRecommendationRecord
    var vmName: String
    var fromHost: String
    var toHost: String
}

/// DRS in the manager: builds a `ClusterSnapshot` from the database and the load samples, runs
/// the Scheduling core's `DRS.recommend` (the function the simulator runs), keeps the
/// recommendations, and applies them with live migration — at once in automatic mode, on
/// `drs apply` in manual mode.
final class DRSService: Sendable {
    let store: Store
    let events: EventLog
    let migrations: MigrationService
    let loads: LoadTracker
    let hostReserveMiB: Int
    let logger: Logger
    let dpm: DPMService
    /// Rounds a moved VM is held in place (× the cluster's interval).
    static let holdRounds = 6
    /// MHz DRS counts per host core (demand is measured in cores used).
    static let mhzPerCore = 1000.0
    static let keepLoadHistory: TimeInterval = 24 * 3600

    init(store: Store, events: EventLog, migrations: MigrationService, loads: LoadTracker, power: PowerService, hostReserveMiB: Int,
         logger: Logger) {
        self.store = store; self.events = events; self.migrations = migrations; self.loads = loads
        self.hostReserveMiB = hostReserveMiB; self.logger = logger
        dpm = DPMService(store: store, events: events, migrations: migrations, power: power)
    }

    /// Records a heartbeat's CPU readings; finished samples go to the database.
    func record(_ guests: [AgentWire.GuestStatus], hostId: String) async {
        var samples: [VMLoadRecord] = []
        let now = Date()
        for guest in guests where guest.power == .running {
            guard let cpu = guest.cpuSeconds, let cores = await loads.observe(vmId: guest.vmId, cpuSeconds: cpu) else { continue }
            samples.append(VMLoadRecord(vmId: guest.vmId, at: now, hostId: hostId, cpuCores: cores))
        }
        guard !samples.isEmpty else { return }
        let oldest = now.addingTimeInterval(-Self.keepLoadHistory)
        let finished = samples
        try? await store.db.write { db in
            for sample in finished { try sample.insert(db, onConflict: .replace) }
            try VMLoadRecord.filter(Column("at") < oldest).deleteAll(db)
        }
    }

    // MARK: - Evaluation

    struct Evaluation {
        var snapshot: ClusterSnapshot
        var moves: [DRSMove]
        var unresolved: [Int]
        /// The cluster's hosts, in snapshot order.
        var hosts: [HostRecord]
        var vmIDs: [String]
        var forecastMHz: [Double] = []
        var held: [Bool] = []
    }

    static func settings(_ cluster: ClusterRecord) -> DRSSettings {
        DRSSettings(automation: cluster.drsMode == "automatic" ? .automatic : .manual,
                    metric: DRSSettings.Metric(rawValue: cluster.drsMetric) ?? .both, threshold: cluster.drsThreshold,
                    baselineCPU: cluster.drsBaselineCPU, baselineMemory: cluster.drsBaselineMemory, holdRounds: holdRounds)
    }

    func evaluate(_ cluster: ClusterRecord) async throws -> Evaluation {
        let (hosts, vms, rules, recentMoves) = try await store.db.read { db in
            let hosts = try HostRecord.filter(Column("clusterId") == cluster.id).order(Column("name")).fetchAll(db)
            let vms = try VMRecord.filter(hosts.map(\.id).contains(Column("hostId"))).order(Column("name")).fetchAll(db)
            let rules = try RuleRecord.filter(Column("clusterId") == cluster.id).order(Column("name")).fetchAll(db)
            let since = Date().addingTimeInterval(-Double(cluster.drsIntervalSeconds * Self.holdRounds))
            let moved = try DRSRecommendationRecord.filter(Column("clusterId") == cluster.id && Column("state") == "applied"
                                                           && Column("appliedAt") > since).fetchAll(db).map(\.vmId)
            return (hosts, vms, rules, Set(moved))
        }
        let (snapshotHosts, hostIndex) = Inventory.snapshotHosts(hosts, reserveMiB: hostReserveMiB)
        var snapshotVMs: [SnapshotVM] = []
        var forecast: [Double] = []
        var held: [Bool] = []
        var vmIDs: [String] = []
        for vm in vms where vm.lifecycle.consumesHostResources {
            guard let host = hostIndex[vm.hostId] else { continue }
            let history = await loads.history(vm.id)
            let cores = history.first ?? 0
            let cpus = Double(max(1, vm.cpus))
            // Only running VMs move; starting or migrating ones still count where they are.
            let movable = vm.lifecycle.name == "running" && !vm.drsExcluded
            snapshotVMs.append(SnapshotVM(name: vm.name, host: host, vcpus: vm.cpus, cpuDemandMHz: cores * Self.mhzPerCore,
                                          cpuMaxMHz: min(cpus * Self.mhzPerCore, Double(vm.cpuLimitMHz ?? Int.max)), memoryMiB: vm.memoryMiB,
                                          memoryReservationMiB: vm.memoryReservationMiB, memoryActiveMiB: vm.memoryMiB, drsExcluded: !movable, cpuModel: vm.cpuModel))
            let upper = DemandForecast.upper(current: cores / cpus, historyNewestFirst: history.map { $0 / cpus })
            forecast.append(upper * cpus * Self.mhzPerCore)
            held.append(recentMoves.contains(vm.id))
            vmIDs.append(vm.id)
        }
        let vmIndex = Dictionary(uniqueKeysWithValues: vmIDs.enumerated().map { ($1, $0) })
        let switchRules = try await store.db.read { db in try NetworkService.placementRules(db, vmIndex: vmIndex, hostIndex: hostIndex) }
        let snapshotRules = rules.compactMap { Self.rule($0, vmIndex: vmIndex, hostIndex: hostIndex) } + switchRules
        let snapshot = ClusterSnapshot(hosts: snapshotHosts, vms: snapshotVMs, rules: snapshotRules, memoryOvercommitRatio: cluster.overcommitRatio)
        let result = DRS.recommend(snapshot, settings: Self.settings(cluster), forecastMHz: forecast, held: held)
        return Evaluation(snapshot: snapshot, moves: result.moves, unresolved: result.unresolved,
                          hosts: hosts, vmIDs: vmIDs, forecastMHz: forecast, held: held)
    }

    /// The cluster as placement sees it when `vm` (not running) is about to start: the hosts,
    /// the VMs that hold resources, `vm` on its host (its index is returned) and the rules.
    static func placementSnapshot(_ db: Database, placing vm: VMRecord, clusterId: String,
                                  hostReserveMiB: Int) throws -> (ClusterSnapshot, Int, [HostRecord]) {
        let hosts = try HostRecord.filter(Column("clusterId") == clusterId).order(Column("name")).fetchAll(db)
        let (snapshotHosts, hostIndex) = Inventory.snapshotHosts(hosts, reserveMiB: hostReserveMiB)
        let others = try VMRecord.filter(hosts.map(\.id).contains(Column("hostId")) && Column("id") != vm.id).fetchAll(db)
            .filter { $0.lifecycle.consumesHostResources }
        var snapshotVMs = others.map { other in
            SnapshotVM(name: other.name, host: hostIndex[other.hostId], vcpus: other.cpus, cpuDemandMHz: 0, memoryMiB: other.memoryMiB,
                       memoryReservationMiB: other.memoryReservationMiB, cpuModel: other.cpuModel)
        }
        // Its CPU model is chosen at start, from the host it lands on.
        snapshotVMs.append(SnapshotVM(name: vm.name, host: hostIndex[vm.hostId], vcpus: vm.cpus, cpuDemandMHz: 0, memoryMiB: vm.memoryMiB,
                                      memoryReservationMiB: vm.memoryReservationMiB))
        let vmIndex = Dictionary(uniqueKeysWithValues: (others.map(\.id) + [vm.id]).enumerated().map { ($1, $0) })
        let rules = try RuleRecord.filter(Column("clusterId") == clusterId).order(Column("name")).fetchAll(db)
            .compactMap { rule($0, vmIndex: vmIndex, hostIndex: hostIndex) }
            + NetworkService.placementRules(db, vmIndex: vmIndex, hostIndex: hostIndex)
        let ratio = try ClusterRecord.fetchOne(db, key: clusterId)?.overcommitRatio ?? 1
        return (ClusterSnapshot(hosts: snapshotHosts, vms: snapshotVMs, rules: rules, memoryOvercommitRatio: ratio), snapshotVMs.count - 1, hosts)
    }

    static func rule(_ record: RuleRecord, vmIndex: [String: Int], hostIndex: [String: Int]) -> PlacementRule? {
        let vms = decodeIDs(record.vmIds).compactMap { vmIndex[$0] }
        let hosts = Set(decodeIDs(record.hostIds).compactMap { hostIndex[$0] })
        switch record.kind {
        case "keep-together": return .keepTogether(name: record.name, vms: vms)
        case "keep-apart": return .keepApart(name: record.name, vms: vms)
        case "vm-host": return .vmToHosts(name: record.name, vms: vms, hosts: hosts, mandatory: record.mandatory)
        case "vm-not-host": return .vmAwayFromHosts(name: record.name, vms: vms, hosts: hosts)
        default: return nil
        }
    }

    static func decodeIDs(_ json: String) -> [String] {
        (try? JSONDecoder().decode([String].self, from: Data(json.utf8))) ?? []
    }

    static func encodeIDs(_ ids: [String]) -> String {
        String(decoding: (try? JSONEncoder().encode(ids)) ?? Data("[]".utf8), as: UTF8.self)
    }

    /// One DRS round for a cluster: fresh recommendations replace the pending ones; automatic
    /// mode applies them at once.
    @discardableResult
    func run(_ cluster: ClusterRecord) async throws -> [DRSRecommendationView] {
        let evaluation = try await evaluate(cluster)
        let now = Date()
        let records = evaluation.moves.map { move in
            DRSRecommendationRecord(id: newID(), clusterId: cluster.id, vmId: evaluation.vmIDs[move.vm],
                                    fromHostId: evaluation.hosts[move.from].id, toHostId: evaluation.hosts[move.to].id,
                                    reason: Self.describe(move, evaluation.snapshot), mandatory: move.isMandatory,
                                    gainMHz: move.gain, costMiB: move.costMiB, state: "pending", taskId: nil, createdAt: now)
        }
        try await store.db.write { db in
            try DRSRecommendationRecord.filter(Column("clusterId") == cluster.id && Column("state") == "pending")
                .updateAll(db, Column("state").set(to: "superseded"))
            for record in records { try record.insert(db) }
        }
        for host in evaluation.unresolved {
            await events.record(.warning, "drs.unresolved", targetType: "host", targetId: evaluation.hosts[host].id,
                                targetName: evaluation.snapshot.hosts[host].name,
                                "DRS found no host to relieve it within the threshold's ceiling")
        }
        if cluster.drsMode == "automatic", !records.isEmpty {
            _ = try await apply(cluster, ids: nil)
        }
        // DPM only in a round where DRS had nothing to move: the snapshot is then what runs.
        if cluster.dpmMode != "off", records.isEmpty {
            await dpm.round(cluster, evaluation)
        }
        return try await recommendations(cluster)
    }

    static func describe(_ move: DRSMove, _ snapshot: ClusterSnapshot) -> String {
        move.reasonText { snapshot.hosts[$0].name }
    }

    /// Pending recommendations, mandatory first, then by gain.
    func recommendations(_ cluster: ClusterRecord) async throws -> [DRSRecommendationView] {
        try await store.db.read { db in
            let records = try DRSRecommendationRecord.filter(Column("clusterId") == cluster.id && Column("state") == "pending")
                .fetchAll(db)
                .sorted { ($0.mandatory ? 1 : 0, $0.gainMHz, $1.id) > ($1.mandatory ? 1 : 0, $1.gainMHz, $0.id) }
            return try records.map { record in
                let vm = try VMRecord.fetchOne(db, key: record.vmId)
                let from = try HostRecord.fetchOne(db, key: record.fromHostId), to = try HostRecord.fetchOne(db, key: record.toHostId)
                return DRSRecommendationView(record: record, vmName: vm?.name ?? record.vmId, fromHost: from?.name ?? record.fromHostId,
                                             toHost: to?.name ?? record.toHostId)
            }
        }
    }

    /// Starts the live migrations of the given (or all) pending recommendations.
    func apply(_ cluster: ClusterRecord, ids: [String]?) async throws -> [(DRSRecommendationView, TaskRecord)] {
        let pending = try await recommendations(cluster)
        if let ids {
            let known = Set(pending.map(\.record.id))
            if let unknown = ids.first(where: { !known.contains($0) }) {
                throw ShepherdError(.notFound, "recommendation '\(unknown)' is not pending in cluster '\(cluster.name)' (list them with: shepherd drs recommendations \(cluster.name))")
            }
        }
        let chosen = ids.map { Set($0) }.map { wanted in pending.filter { wanted.contains($0.record.id) } } ?? pending
        var started: [(DRSRecommendationView, TaskRecord)] = []
        for view in chosen {
            do {
                let task = try await migrations.migrate(view.record.vmId, target: view.record.toHostId)
                var record = view.record
                record.state = "applied"; record.taskId = task.id; record.appliedAt = Date()
                let row = record
                try await store.db.write { db in try row.update(db) }
                await events.record(.info, "drs.applied", targetType: "vm", targetId: view.record.vmId, targetName: view.vmName,
                                    "\(view.fromHost) → \(view.toHost): \(view.record.reason)")
                started.append((DRSRecommendationView(record: row, vmName: view.vmName, fromHost: view.fromHost, toHost: view.toHost), task))
            } catch {
                var record = view.record
                record.state = "failed"
                let row = record
                try await store.db.write { db in try row.update(db) }
                await events.record(.warning, "drs.failed", targetType: "vm", targetId: view.record.vmId, targetName: view.vmName,
                                    "\(view.fromHost) → \(view.toHost) not started: \(error)")
                if ids != nil { throw error }
            }
        }
        return started
    }
}

// MARK: - Rules

struct RuleView: Sendable {
    var record: RuleRecord
    var vmNames: [String]
    var hostNames: [String]
}

extension DRSService {
    static let ruleKinds = ["keep-together", "keep-apart", "vm-host", "vm-not-host"]

    func rules(_ clusterReference: String) async throws -> [RuleView] {
        try await store.db.read { db in
            let cluster = try Inventory.cluster(db, clusterReference)
            return try RuleRecord.filter(Column("clusterId") == cluster.id).order(Column("name")).fetchAll(db).map { try Self.view($0, db) }
        }
    }

    static func view(_ record: RuleRecord, _ db: Database) throws -> RuleView {
        let vms = try decodeIDs(record.vmIds).map { try VMRecord.fetchOne(db, key: $0)?.name ?? $0 }
        let hosts = try decodeIDs(record.hostIds).map { try HostRecord.fetchOne(db, key: $0)?.name ?? $0 }
        return RuleView(record: record, vmNames: vms, hostNames: hosts)
    }

    /// Validates every field against the cluster's VMs and hosts; nothing is stored on a refusal.
    func createRule(_ clusterReference: String, name: String, kind: String, vms: [String], hosts: [String],
                    mandatory: Bool?) async throws -> RuleView {
        try Validate.name(name)
        guard Self.ruleKinds.contains(kind) else {
            throw ShepherdError.invalidField("kind", "'\(kind)' is not one of \(Self.ruleKinds.joined(separator: ", "))")
        }
        let groupRule = kind == "keep-together" || kind == "keep-apart"
        if groupRule {
            guard Set(vms).count >= 2 else { throw ShepherdError.invalidField("vms", "\(kind) needs at least two different VMs; got \(Set(vms).count)") }
            guard hosts.isEmpty else { throw ShepherdError.invalidField("hosts", "\(kind) names VMs only") }
            if mandatory == false { throw ShepherdError.invalidField("mandatory", "\(kind) rules are always mandatory") }
        } else {
            guard !vms.isEmpty else { throw ShepherdError.invalidField("vms", "\(kind) needs at least one VM") }
            guard !hosts.isEmpty else { throw ShepherdError.invalidField("hosts", "\(kind) needs at least one host") }
            if kind == "vm-not-host", mandatory == false { throw ShepherdError.invalidField("mandatory", "vm-not-host rules are always mandatory") }
        }
        return try await store.db.write { db in
            let cluster = try Inventory.cluster(db, clusterReference)
            if try RuleRecord.filter(Column("clusterId") == cluster.id && Column("name") == name).fetchCount(db) > 0 {
                throw ShepherdError(.alreadyExists, "name: cluster '\(cluster.name)' already has a rule named '\(name)'")
            }
            let clusterHosts = try HostRecord.filter(Column("clusterId") == cluster.id).fetchAll(db)
            let clusterHostIDs = Set(clusterHosts.map(\.id))
            var vmIDs: [String] = []
            for reference in vms {
                guard let vm = try VMRecord.filter(Column("name") == reference).fetchOne(db) ?? VMRecord.fetchOne(db, key: reference) else {
                    throw ShepherdError.invalidField("vms", "VM '\(reference)' does not exist")
                }
                guard clusterHostIDs.contains(vm.hostId) else {
                    throw ShepherdError.invalidField("vms", "VM '\(vm.name)' is not in cluster '\(cluster.name)'")
                }
                if !vmIDs.contains(vm.id) { vmIDs.append(vm.id) }
            }
            var hostIDs: [String] = []
            for reference in hosts {
                let host = try Inventory.host(db, reference, field: "hosts")
                guard host.clusterId == cluster.id else {
                    throw ShepherdError.invalidField("hosts", "host '\(host.name)' is not in cluster '\(cluster.name)'")
                }
                if !hostIDs.contains(host.id) { hostIDs.append(host.id) }
            }
            let record = RuleRecord(id: newID(), clusterId: cluster.id, name: name, kind: kind, vmIds: Self.encodeIDs(vmIDs),
                                    hostIds: Self.encodeIDs(hostIDs), mandatory: kind == "vm-host" ? (mandatory ?? true) : true,
                                    createdAt: Date())
            try record.insert(db)
            return try Self.view(record, db)
        }
    }

    func deleteRule(_ clusterReference: String, _ reference: String) async throws {
        try await store.db.write { db in
            let cluster = try Inventory.cluster(db, clusterReference)
            guard let rule = try RuleRecord.filter(Column("clusterId") == cluster.id && (Column("name") == reference || Column("id") == reference)).fetchOne(db) else {
                throw ShepherdError.notFound("rule", reference)
            }
            try rule.delete(db)
        }
    }

    /// Validated DRS settings for a cluster (a refusal changes nothing).
    static func update(_ cluster: inout ClusterRecord, mode: String?, threshold: Int?, baselineCPUPercent: Int?,
                       baselineMemoryPercent: Int?, metric: String?, intervalSeconds: Int?, dpm: String? = nil) throws {
        if let threshold, !(1...5).contains(threshold) {
            throw ShepherdError.invalidField("drs.threshold", "\(threshold) is not 1 (conservative) … 5 (aggressive)")
        }
        for (field, value) in [("drs.baselineCPUPercent", baselineCPUPercent), ("drs.baselineMemoryPercent", baselineMemoryPercent)] {
            if let value, !(0...100).contains(value) { throw ShepherdError.invalidField(field, "\(value) % is outside 0–100 %") }
        }
        if let intervalSeconds, !(5...86_400).contains(intervalSeconds) {
            throw ShepherdError.invalidField("drs.intervalSeconds", "\(intervalSeconds) s is outside 5–86400 s")
        }
        if let mode { cluster.drsMode = mode }
        if let threshold { cluster.drsThreshold = threshold }
        if let value = baselineCPUPercent { cluster.drsBaselineCPU = Double(value) / 100 }
        if let value = baselineMemoryPercent { cluster.drsBaselineMemory = Double(value) / 100 }
        if let metric { cluster.drsMetric = metric }
        if let intervalSeconds { cluster.drsIntervalSeconds = intervalSeconds }
        if let dpm { cluster.dpmMode = dpm }
    }
}

/// Runs each cluster's DRS round when its interval has passed.
struct DRSMonitor: Service {
    let drs: DRSService
    let store: Store
    let logger: Logger

    func run() async throws {
        try? await cancelWhenGracefulShutdown {
            var lastRun: [String: ContinuousClock.Instant] = [:]
            while !Task.isCancelled {
                do {
                    let clusters = try await store.db.read { db in
                        try ClusterRecord.filter(Column("drsMode") != "off").fetchAll(db)
                    }
                    for cluster in clusters {
                        let due = lastRun[cluster.id].map { ContinuousClock.now - $0 >= .seconds(cluster.drsIntervalSeconds) } ?? true
                        guard due else { continue }
                        lastRun[cluster.id] = .now
                        try await drs.run(cluster)
                    }
                } catch {
                    logger.error("DRS: \(error)")
                }
                try await Task.sleep(for: .seconds(2))
            }
        }
    }
}
