import Foundation
import GRDB
import Scheduling
import ShepherdCore

/// Read-side lookups over the store, shared by the services.
struct Inventory: Sendable {
    let store: Store

    /// A VM by name or id.
    static func vm(_ db: Database, _ reference: String) throws -> VMRecord {
        if let vm = try VMRecord.filter(Column("name") == reference).fetchOne(db) ?? VMRecord.fetchOne(db, key: reference) {
            return vm
        }
        throw ShepherdError.notFound("VM", reference)
    }

    /// A cluster by name or id.
    static func cluster(_ db: Database, _ reference: String) throws -> ClusterRecord {
        if let cluster = try ClusterRecord.filter(Column("name") == reference).fetchOne(db) ?? ClusterRecord.fetchOne(db, key: reference) {
            return cluster
        }
        throw ShepherdError.notFound("cluster", reference)
    }

    /// The cluster's hosts as DRS, HA and what-if see them (capacity = cores × 1000 MHz, memory
    /// less the host reserve), with each host id's index.
    static func snapshotHosts(_ hosts: [HostRecord], reserveMiB: Int) -> (hosts: [SnapshotHost], index: [String: Int]) {
        let snapshot = hosts.map { host in
            // A standby host is DPM's to wake: connected as far as planning goes, but powered off.
            SnapshotHost(name: host.name, state: host.hostState == .standby ? .connected : host.hostState,
                         power: host.hostState == .disconnected ? .off : host.hostState == .standby ? .standby : .on,
                         cpuCapacityMHz: Double(host.cores) * DRSService.mhzPerCore, cores: host.cores,
                         memoryMiB: max(0, host.memoryTotalMiB - reserveMiB), cpuModel: host.providedCPUModel)
        }
        return (snapshot, Dictionary(uniqueKeysWithValues: hosts.enumerated().map { ($1.id, $0) }))
    }

    /// The VMs on a cluster's hosts, by name.
    static func vms(_ db: Database, inCluster clusterID: String) throws -> [VMRecord] {
        try VMRecord.filter(sql: "hostId IN (SELECT id FROM host WHERE clusterId = ?)", arguments: [clusterID]).order(Column("name")).fetchAll(db)
    }

    /// A host by name or id.
    static func host(_ db: Database, _ reference: String, field: String? = nil) throws -> HostRecord {
        if let host = try HostRecord.filter(Column("name") == reference).fetchOne(db) ?? HostRecord.fetchOne(db, key: reference) {
            return host
        }
        if let field { throw ShepherdError.invalidField(field, "host '\(reference)' does not exist") }
        throw ShepherdError.notFound("host", reference)
    }

    static func datastore(_ db: Database, named name: String, field: String) throws -> DatastoreRecord {
        guard let datastore = try DatastoreRecord.filter(Column("name") == name).fetchOne(db) else {
            throw ShepherdError.invalidField(field, "datastore '\(name)' does not exist")
        }
        return datastore
    }

    /// Names of the datastores each host sees.
    static func datastoresByHost(_ db: Database) throws -> [String: Set<String>] {
        let rows = try Row.fetchAll(db, sql: """
            SELECT datastoreHost.hostId AS hostId, datastore.name AS name
            FROM datastoreHost JOIN datastore ON datastore.id = datastoreHost.datastoreId
            """)
        var result: [String: Set<String>] = [:]
        for row in rows { result[row["hostId"], default: []].insert(row["name"]) }
        return result
    }

    /// What the VMs that run on a host take of it.
    struct HostLoad: Sendable {
        var memoryMiB = 0
        var memoryReservedMiB = 0
        var cpuReservedMHz = 0

        mutating func add(_ vm: VMRecord) {
            memoryMiB += vm.memoryMiB
            memoryReservedMiB += vm.memoryReservationMiB
            cpuReservedMHz += vm.cpuReservationMHz
        }
    }

    /// The load of the VMs that run on each host, leaving one VM out (the one being admitted).
    static func hostLoads(_ db: Database, excluding vmID: String? = nil) throws -> [String: HostLoad] {
        var result: [String: HostLoad] = [:]
        for vm in try VMRecord.fetchAll(db) where vm.id != vmID && vm.lifecycle.consumesHostResources {
            result[vm.hostId, default: HostLoad()].add(vm)
            // A migration holds memory on both hosts until the switch-over.
            if let target = vm.lifecycle.migrationTarget { result[target, default: HostLoad()].add(vm) }
        }
        return result
    }

    /// Every host as placement sees it.
    static func candidates(_ db: Database, excluding vmID: String? = nil) throws -> [HostCandidate] {
        let loads = try hostLoads(db, excluding: vmID)
        let datastores = try datastoresByHost(db)
        let clusters = Dictionary(uniqueKeysWithValues: try ClusterRecord.fetchAll(db).map { ($0.id, $0) })
        return try HostRecord.order(Column("name")).fetchAll(db).map { host in
            candidate(host, cluster: clusters[host.clusterId], load: loads[host.id] ?? HostLoad(), datastores: datastores[host.id] ?? [])
        }
    }

    /// One host as placement sees it, given everything running elsewhere is known.
    static func candidate(_ db: Database, _ host: HostRecord, excluding vmID: String? = nil) throws -> HostCandidate {
        candidate(host, cluster: try ClusterRecord.fetchOne(db, key: host.clusterId),
                  load: try hostLoads(db, excluding: vmID)[host.id] ?? HostLoad(), datastores: try datastoresByHost(db)[host.id] ?? [])
    }

    static func candidate(_ host: HostRecord, cluster: ClusterRecord?, load: HostLoad, datastores: Set<String>) -> HostCandidate {
        HostCandidate(id: host.id, name: host.name, state: host.hostState, cores: host.cores,
                      memoryTotalMiB: host.memoryTotalMiB, memoryAllocatedMiB: load.memoryMiB, memoryReservedMiB: load.memoryReservedMiB,
                      cpuReservedMHz: load.cpuReservedMHz, memoryOvercommit: cluster?.memoryOvercommit ?? false,
                      overcommitRatio: cluster?.overcommitRatio ?? 1, datastores: datastores)
    }

    static func endpoint(_ host: HostRecord) -> AgentClient.Endpoint {
        AgentClient.Endpoint(hostName: host.name, address: host.address, token: host.token)
    }
}
