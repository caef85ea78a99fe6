import Foundation
import GRDB
import Scheduling
import ShepherdCore

/// The manager's state in SQLite, migrated from the first version on.
public final class Store: Sendable {
    public let db: DatabasePool

    /// Opens (creating when absent) the database at `path` and runs every pending migration.
    public init(path: String) throws {
        var configuration = Configuration()
        configuration.busyMode = .timeout(5)
        db = try DatabasePool(path: path, configuration: configuration)
        try Self.migrator.migrate(db)
    }

    /// Waits for a task to end (succeeded, failed or cancelled) and returns it.
    func finished(_ taskID: String) async throws -> TaskRecord {
        while true {
            try await Task.sleep(for: .milliseconds(250))
            guard let task = try await db.read({ db in try TaskRecord.fetchOne(db, key: taskID) }) else {
                throw ShepherdError(.internal, "task \(taskID) vanished")
            }
            if TaskState(rawValue: task.state)?.isFinished ?? true { return task }
        }
    }

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1: clusters, hosts, datastores, templates, vms, tasks, events") { db in
            try db.create(table: "cluster") { t in
                t.primaryKey("id", .text)
                t.column("name", .text).notNull().unique()
                t.column("memoryOvercommit", .boolean).notNull().defaults(to: false)
                t.column("createdAt", .datetime).notNull()
            }
            try db.create(table: "host") { t in
                t.primaryKey("id", .text)
                t.column("name", .text).notNull().unique()
                t.column("clusterId", .text).notNull().references("cluster")
                t.column("address", .text).notNull()
                t.column("token", .text).notNull()
                t.column("state", .text).notNull()
                t.column("cpuModel", .text).notNull()
                t.column("cpuVendor", .text).notNull()
                t.column("cpuFlags", .text).notNull()
                t.column("cores", .integer).notNull()
                t.column("memoryTotalMiB", .integer).notNull()
                t.column("memoryFreeMiB", .integer).notNull()
                t.column("accelerator", .text).notNull()
                t.column("agentVersion", .text).notNull()
                t.column("lastHeartbeat", .datetime)
            }
            try db.create(table: "datastore") { t in
                t.primaryKey("id", .text)
                t.column("name", .text).notNull().unique()
                t.column("kind", .text).notNull()
                t.column("path", .text).notNull()
                t.column("capacityBytes", .integer).notNull()
                t.column("freeBytes", .integer).notNull()
            }
            try db.create(table: "datastoreHost") { t in
                t.column("datastoreId", .text).notNull().references("datastore", onDelete: .cascade)
                t.column("hostId", .text).notNull().references("host", onDelete: .cascade)
                t.primaryKey(["datastoreId", "hostId"])
            }
            try db.create(table: "template") { t in
                t.primaryKey("id", .text)
                t.column("name", .text).notNull().unique()
                t.column("description", .text).notNull()
                t.column("datastore", .text).notNull()
                t.column("kernel", .text).notNull()
                t.column("initrd", .text).notNull()
                t.column("disk", .text).notNull()
                t.column("cmdline", .text).notNull()
                t.column("createdAt", .datetime).notNull()
            }
            try db.create(table: "vm") { t in
                t.primaryKey("id", .text)
                t.column("name", .text).notNull().unique()
                t.column("hostId", .text).notNull().references("host")
                t.column("template", .text).notNull()
                t.column("cpus", .integer).notNull()
                t.column("memoryMiB", .integer).notNull()
                t.column("state", .text).notNull()
                t.column("stateTask", .text)
                t.column("stateReason", .text)
                t.column("runningSince", .datetime)
                t.column("toolsRunning", .boolean).notNull().defaults(to: false)
                t.column("datastore", .text).notNull()
                t.column("diskPath", .text).notNull()
                t.column("pid", .integer)
                t.column("createdAt", .datetime).notNull()
            }
            try db.create(table: "task") { t in
                t.primaryKey("id", .text)
                t.column("kind", .text).notNull()
                t.column("targetType", .text).notNull()
                t.column("targetId", .text).notNull()
                t.column("targetName", .text).notNull()
                t.column("state", .text).notNull()
                t.column("progress", .integer).notNull()
                t.column("message", .text).notNull()
                t.column("errorCode", .text)
                t.column("errorMessage", .text)
                t.column("createdAt", .datetime).notNull().indexed()
                t.column("startedAt", .datetime)
                t.column("finishedAt", .datetime)
            }
            try db.create(table: "event") { t in
                t.autoIncrementedPrimaryKey("id")
                t.column("time", .datetime).notNull()
                t.column("severity", .text).notNull()
                t.column("kind", .text).notNull()
                t.column("targetType", .text).notNull()
                t.column("targetId", .text).notNull()
                t.column("targetName", .text).notNull()
                t.column("message", .text).notNull()
            }
        }
        migrator.registerMigration("v2: live migration target") { db in
            try db.alter(table: "vm") { t in t.add(column: "migrationTarget", .text) }
        }
        migrator.registerMigration("v3: IMC baseline, cluster migration settings, CPU models") { db in
            try db.alter(table: "cluster") { t in
                t.add(column: "imcBaseline", .text)
                t.add(column: "migrationTimeoutSeconds", .integer).notNull().defaults(to: 300)
                t.add(column: "maxConcurrentMigrations", .integer).notNull().defaults(to: 2)
            }
            try db.alter(table: "host") { t in t.add(column: "providedCPUModel", .text) }
            try db.alter(table: "vm") { t in t.add(column: "cpuModel", .text) }
        }
        migrator.registerMigration("v4: DRS settings, rules, recommendations, VM load history") { db in
            try db.alter(table: "cluster") { t in
                t.add(column: "drsMode", .text).notNull().defaults(to: "off")
                t.add(column: "drsThreshold", .integer).notNull().defaults(to: 3)
                t.add(column: "drsBaselineCPU", .double).notNull().defaults(to: 0.5)
                t.add(column: "drsBaselineMemory", .double).notNull().defaults(to: 0.6)
                t.add(column: "drsMetric", .text).notNull().defaults(to: "both")
                t.add(column: "drsIntervalSeconds", .integer).notNull().defaults(to: 300)
            }
            try db.alter(table: "vm") { t in t.add(column: "drsExcluded", .boolean).notNull().defaults(to: false) }
            try db.create(table: "rule") { t in
                t.primaryKey("id", .text)
                t.column("clusterId", .text).notNull().references("cluster", onDelete: .cascade)
                t.column("name", .text).notNull()
                t.column("kind", .text).notNull()
                t.column("vmIds", .text).notNull()
                t.column("hostIds", .text).notNull()
                t.column("mandatory", .boolean).notNull()
                t.column("createdAt", .datetime).notNull()
                t.uniqueKey(["clusterId", "name"])
            }
            try db.create(table: "drsRecommendation") { t in
                t.primaryKey("id", .text)
                t.column("clusterId", .text).notNull().references("cluster", onDelete: .cascade).indexed()
                t.column("vmId", .text).notNull()
                t.column("fromHostId", .text).notNull()
                t.column("toHostId", .text).notNull()
                t.column("reason", .text).notNull()
                t.column("mandatory", .boolean).notNull()
                t.column("gainMHz", .double).notNull()
                t.column("costMiB", .integer).notNull()
                t.column("state", .text).notNull()
                t.column("taskId", .text)
                t.column("createdAt", .datetime).notNull()
                t.column("appliedAt", .datetime)
            }
            try db.create(table: "vmLoad") { t in
                t.column("vmId", .text).notNull()
                t.column("at", .datetime).notNull().indexed()
                t.column("hostId", .text).notNull()
                t.column("cpuCores", .double).notNull()
                t.primaryKey(["vmId", "at"])
            }
        }
        migrator.registerMigration("v5: HA settings and per-VM policy") { db in
            try db.alter(table: "cluster") { t in
                t.add(column: "haEnabled", .boolean).notNull().defaults(to: false)
                t.add(column: "haAdmission", .text).notNull().defaults(to: "off")
            }
            try db.alter(table: "vm") { t in
                t.add(column: "haPolicy", .text).notNull().defaults(to: "restart-in-cluster")
                t.add(column: "haPriority", .text).notNull().defaults(to: "medium")
            }
        }
        migrator.registerMigration("v6: host BMC (Redfish) and power state") { db in
            try db.alter(table: "host") { t in
                t.add(column: "bmcAddress", .text)
                t.add(column: "bmcUser", .text)
                t.add(column: "bmcPassword", .text)
                t.add(column: "bmcInsecure", .boolean).notNull().defaults(to: false)
                t.add(column: "powerState", .text)
                t.add(column: "powerCheckedAt", .datetime)
            }
        }
        migrator.registerMigration("v7: HA isolation response") { db in
            try db.alter(table: "cluster") { t in
                t.add(column: "haIsolationResponse", .text).notNull().defaults(to: IsolationResponse.leaveRunning.rawValue)
            }
        }
        migrator.registerMigration("v8: DPM mode") { db in
            try db.alter(table: "cluster") { t in t.add(column: "dpmMode", .text).notNull().defaults(to: "off") }
        }
        migrator.registerMigration("v9: host lease renewal") { db in
            try db.alter(table: "host") { t in t.add(column: "leaseRenewedAt", .datetime) }
        }
        migrator.registerMigration("v10: data disks and their attachments") { db in
            try db.create(table: "disk") { t in
                t.primaryKey("id", .text)
                t.column("name", .text).notNull().unique()
                t.column("datastore", .text).notNull()
                t.column("path", .text).notNull().unique()
                t.column("format", .text).notNull()
                t.column("type", .text).notNull()
                t.column("mode", .text).notNull()
                t.column("sizeBytes", .integer).notNull()
                t.column("busyTask", .text)
                t.column("createdAt", .datetime).notNull()
            }
            try db.create(table: "diskAttachment") { t in
                t.column("diskId", .text).notNull().references("disk", onDelete: .cascade)
                t.column("vmId", .text).notNull().references("vm", onDelete: .cascade).indexed()
                t.column("attachedAt", .datetime).notNull()
                t.column("slot", .integer).notNull()
                t.primaryKey(["diskId", "vmId"])
            }
        }
        migrator.registerMigration("v11: snapshots, and a VM's operation lock") { db in
            try db.create(table: "snapshot") { t in
                t.primaryKey("id", .text)
                t.column("vmId", .text).notNull().references("vm", onDelete: .cascade).indexed()
                t.column("name", .text).notNull()
                t.column("parentId", .text)
                t.column("description", .text).notNull().defaults(to: "")
                t.column("images", .text).notNull()
                t.column("live", .boolean).notNull()
                t.column("quiesced", .boolean).notNull()
                t.column("createdAt", .datetime).notNull()
                t.uniqueKey(["vmId", "name"])
            }
            try db.alter(table: "vm") { t in
                t.add(column: "currentSnapshot", .text)
                t.add(column: "operationTask", .text)
            }
        }
        migrator.registerMigration("v12: linked clones") { db in
            try db.alter(table: "vm") { t in t.add(column: "linkedTemplate", .text) }
        }
        migrator.registerMigration("v13: memory snapshots") { db in
            try db.alter(table: "snapshot") { t in t.add(column: "memoryFile", .text) }
        }
        migrator.registerMigration("v14: QoS and the overcommit ratio") { db in
            try db.alter(table: "vm") { t in
                t.add(column: "cpuShares", .integer).notNull().defaults(to: VMQoS.defaultShares)
                t.add(column: "cpuReservationMHz", .integer).notNull().defaults(to: 0)
                t.add(column: "cpuLimitMHz", .integer)
                t.add(column: "memoryReservationMiB", .integer).notNull().defaults(to: 0)
                t.add(column: "memoryShares", .integer).notNull().defaults(to: VMQoS.defaultShares)
                t.add(column: "memoryLimitMiB", .integer)
            }
            // Before overcommit existed every VM's memory was real.
            try db.execute(sql: "UPDATE vm SET memoryReservationMiB = memoryMiB")
            try db.alter(table: "host") { t in
                t.add(column: "ksmSavedMiB", .integer).notNull().defaults(to: 0)
                t.add(column: "cgroups", .text)
            }
            try db.alter(table: "cluster") { t in
                t.add(column: "overcommitRatioPercent", .integer).notNull().defaults(to: MemoryOvercommit.defaultRatioPercent)
            }
        }
        migrator.registerMigration("v15: online resize") { db in
            try db.alter(table: "vm") { t in
                t.add(column: "maxCpus", .integer).notNull().defaults(to: 0)
                t.add(column: "maxMemoryMiB", .integer).notNull().defaults(to: 0)
                t.add(column: "bootCpus", .integer)
                t.add(column: "stateChangedAt", .datetime)
            }
            try db.execute(sql: "UPDATE vm SET maxCpus = cpus, maxMemoryMiB = memoryMiB")
        }
        migrator.registerMigration("v16: distributed virtual switches, port groups, NICs") { db in
            try db.create(table: "dvs") { t in
                t.primaryKey("id", .text)
                t.column("name", .text).notNull().unique()
                t.column("clusterId", .text).notNull().references("cluster", onDelete: .cascade)
                t.column("bridge", .text).notNull().unique()
                t.column("bondMode", .text).notNull()
                t.column("allHosts", .boolean).notNull()
                t.column("createdAt", .datetime).notNull()
            }
            try db.create(table: "dvsHost") { t in
                t.column("dvsId", .text).notNull().references("dvs", onDelete: .cascade)
                t.column("hostId", .text).notNull().references("host", onDelete: .cascade)
                t.column("uplinks", .text).notNull()
                t.primaryKey(["dvsId", "hostId"])
            }
            try db.create(table: "portGroup") { t in
                t.primaryKey("id", .text)
                t.column("name", .text).notNull().unique()
                t.column("dvsId", .text).notNull().references("dvs", onDelete: .cascade)
                t.column("vlan", .integer)
                t.column("trunks", .text)
                t.column("createdAt", .datetime).notNull()
            }
            try db.create(table: "nic") { t in
                t.primaryKey("id", .text)
                t.column("vmId", .text).notNull().references("vm", onDelete: .cascade).indexed()
                t.column("name", .text).notNull()
                t.column("portGroupId", .text).notNull().references("portGroup")
                t.column("mac", .text).notNull().unique()
                t.column("ip", .text)
                t.column("rateMbit", .integer)
                t.column("linkUp", .boolean).notNull()
                t.column("slot", .integer).notNull()
                t.column("createdAt", .datetime).notNull()
                t.uniqueKey(["vmId", "name"])
                t.uniqueKey(["vmId", "slot"])
            }
        }
        return migrator
    }
}

/// A distributed virtual switch: one OVS bridge of the same name on each of its hosts.
struct DVSRecord: Codable, Sendable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "dvs"
    var id: String
    var name: String
    var clusterId: String
    var bridge: String
    var bondMode: String
    /// Made for every host of its cluster: a host joining the cluster later joins it too.
    var allHosts: Bool
    var createdAt: Date

    var bond: BondMode { BondMode(rawValue: bondMode) ?? .activeBackup }
}

/// A host on a DVS with the NICs that are its uplink there (comma-separated).
struct DVSHostRecord: Codable, Sendable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "dvsHost"
    var dvsId: String
    var hostId: String
    var uplinks: String

    var uplinkList: [String] { uplinks.split(separator: ",").map(String.init) }
}

/// A port group: access (the port tags with `vlan`; 0 untagged) or trunk (`trunks` pass, the VM tags).
struct PortGroupRecord: Codable, Sendable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "portGroup"
    var id: String
    var name: String
    var dvsId: String
    var vlan: Int?
    var trunks: String?
    var createdAt: Date

    var setting: PortGroupVLAN {
        if let vlan { return .access(vlan) }
        // A list that does not parse (never written so) isolates rather than opens every VLAN.
        return (try? Networking.parseVLANs(trunks ?? "", field: "trunks")).map(PortGroupVLAN.trunk) ?? .access(4095)
    }
}

/// A VM's NIC on a port group.
struct NICRecord: Codable, Sendable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "nic"
    var id: String
    var vmId: String
    var name: String
    var portGroupId: String
    var mac: String
    var ip: String?
    var rateMbit: Int?
    var linkUp: Bool
    var slot: Int
    var createdAt: Date
}

struct ClusterRecord: Codable, Sendable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "cluster"
    var id: String
    var name: String
    var memoryOvercommit: Bool
    var createdAt: Date
    var imcBaseline: String?
    var migrationTimeoutSeconds: Int = 300
    var maxConcurrentMigrations: Int = 2
    /// off, manual or automatic.
    var drsMode: String = "off"
    /// off, manual or automatic: DPM in each DRS round.
    var dpmMode: String = "off"
    var drsThreshold: Int = 3
    var drsBaselineCPU: Double = 0.5
    var drsBaselineMemory: Double = 0.6
    var drsMetric: String = "both"
    var drsIntervalSeconds: Int = 300
    var haEnabled: Bool = false
    /// off, percent:N, failover-hosts:NAME[,NAME…] or host-failures:N.
    var haAdmission: String = "off"
    /// leave-running, power-off or shutdown (`IsolationResponse`).
    var haIsolationResponse: String = IsolationResponse.leaveRunning.rawValue
    /// With memoryOvercommit on, VM memory on a host may add up to its memory × this / 100.
    var overcommitRatioPercent: Int = MemoryOvercommit.defaultRatioPercent

    /// What placement multiplies a host's memory by: 1 while overcommit is off.
    var overcommitRatio: Double { memoryOvercommit ? Double(overcommitRatioPercent) / 100 : 1 }
}

/// An affinity rule: kind keep-together, keep-apart, vm-host or vm-not-host; ids as JSON arrays.
struct RuleRecord: Codable, Sendable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "rule"
    var id: String
    var clusterId: String
    var name: String
    var kind: String
    var vmIds: String
    var hostIds: String
    var mandatory: Bool
    var createdAt: Date
}

/// One DRS recommendation: pending until applied (or superseded by a newer evaluation).
struct DRSRecommendationRecord: Codable, Sendable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "drsRecommendation"
    var id: String
    var clusterId: String
    var vmId: String
    var fromHostId: String
    var toHostId: String
    var reason: String
    var mandatory: Bool
    var gainMHz: Double
    var costMiB: Int
    var state: String
    var taskId: String?
    var createdAt: Date
    var appliedAt: Date?
}

/// A VM's CPU use over one sampling window (cores) and the host it ran on, kept for a day: the
/// history what-if replays run on.
struct VMLoadRecord: Codable, Sendable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "vmLoad"
    var vmId: String
    var at: Date
    var hostId: String
    var cpuCores: Double
}

struct HostRecord: Codable, Sendable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "host"
    var id: String
    var name: String
    var clusterId: String
    var address: String
    var token: String
    var state: String
    var cpuModel: String
    var cpuVendor: String
    var cpuFlags: String
    var cores: Int
    var memoryTotalMiB: Int
    var memoryFreeMiB: Int
    var accelerator: String
    var agentVersion: String
    var lastHeartbeat: Date?
    var providedCPUModel: String?
    /// The host's BMC (Redfish). The password is a secret: never logged, never in an API answer.
    var bmcAddress: String?
    var bmcUser: String?
    var bmcPassword: String?
    var bmcInsecure: Bool = false
    /// Power state as the BMC last reported it (On, Off, …) and when.
    var powerState: String?
    var powerCheckedAt: Date?
    /// When the host last renewed its storage lease, as its heartbeat or (once lost) its lease file says.
    var leaseRenewedAt: Date?
    /// Memory KSM saves on its machine, and the cgroup version its QoS runs on (nil: none).
    var ksmSavedMiB: Int = 0
    var cgroups: String?

    var hostState: HostState { HostState(rawValue: state) ?? .disconnected }
}

struct DatastoreRecord: Codable, Sendable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "datastore"
    var id: String
    var name: String
    var kind: String
    var path: String
    var capacityBytes: Int64
    var freeBytes: Int64
}

extension DatastoreRecord {
    /// Where a VM's root disk lives on this datastore.
    func rootDiskPath(vm name: String, id: String) -> String { "\(path)/vms/\(name)-\(id.prefix(8))/root.qcow2" }
    /// Where a data disk lives on this datastore.
    func dataDiskPath(disk name: String, id: String, format: DiskFormat = .qcow2) -> String {
        "\(path)/disks/\(name)-\(id.prefix(8)).\(format.rawValue)"
    }
}

struct DatastoreHostRecord: Codable, Sendable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "datastoreHost"
    var datastoreId: String
    var hostId: String
}

/// A data disk: an image on a datastore, attached to at most one VM unless it is shared.
struct DiskRecord: Codable, Sendable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "disk"
    var id: String
    var name: String
    var datastore: String
    var path: String
    var format: String
    var type: String
    var mode: String
    var sizeBytes: Int64
    /// The task changing this disk now; another change waits for it to end.
    var busyTask: String?
    var createdAt: Date

    var diskMode: DiskMode { DiskMode(rawValue: mode) ?? .persistent }
    var diskFormat: DiskFormat { DiskFormat(rawValue: format) ?? .qcow2 }

    func definition(slot: Int? = nil) -> AgentWire.DiskDefinition {
        AgentWire.DiskDefinition(id: id, name: name, path: path, format: diskFormat, mode: diskMode, slot: slot)
    }
}

struct DiskAttachmentRecord: Codable, Sendable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "diskAttachment"
    var diskId: String
    var vmId: String
    var attachedAt: Date
    /// The PCI slot of the disk's device in this VM: fixed, so a VM whose disks were hot-plugged
    /// has the same device layout on a migration's target (QEMU refuses the state otherwise).
    var slot: Int

    /// Data disks take slots 16–31 of the VM's PCI bus; the devices of the command line take the low ones.
    static let slots = 16...31

    /// The lowest slot none of the VM's disks uses.
    static func freeSlot(_ db: Database, vmID: String) throws -> Int {
        let used = Set(try Int.fetchAll(db, sql: "SELECT slot FROM diskAttachment WHERE vmId = ?", arguments: [vmID]))
        guard let slot = slots.first(where: { !used.contains($0) }) else {
            throw ShepherdError(.insufficientResources, "every PCI slot for data disks (\(slots.count)) of the VM is taken")
        }
        return slot
    }

    /// Attaches with the VM's next free slot.
    static func attach(_ db: Database, disk: String, vm: String) throws {
        try DiskAttachmentRecord(diskId: disk, vmId: vm, attachedAt: Date(), slot: try freeSlot(db, vmID: vm)).insert(db)
    }
}

/// One node of a VM's snapshot tree: the images holding each disk at that moment.
struct SnapshotRecord: Codable, Sendable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "snapshot"
    var id: String
    var vmId: String
    var name: String
    var parentId: String?
    var description: String
    /// JSON: disk key ("root" or a data disk's id) → image path.
    var images: String
    /// Taken while the VM ran (an atomic QMP transaction) rather than off.
    var live: Bool
    var quiesced: Bool
    var createdAt: Date
    /// The guest's saved RAM and device state (a memory snapshot).
    var memoryFile: String?

    var imageMap: [String: String] { (try? JSONDecoder().decode([String: String].self, from: Data(images.utf8))) ?? [:] }

    var node: SnapshotTree.Node { SnapshotTree.Node(id: id, name: name, parent: parentId, images: imageMap) }

    static func encode(_ images: [String: String]) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        return String(decoding: (try? encoder.encode(images)) ?? Data("{}".utf8), as: UTF8.self)
    }
}

struct TemplateRecord: Codable, Sendable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "template"
    var id: String
    var name: String
    var description: String
    var datastore: String
    var kernel: String
    var initrd: String
    var disk: String
    var cmdline: String
    var createdAt: Date
}

struct VMRecord: Codable, Sendable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "vm"
    var id: String
    var name: String
    var hostId: String
    var template: String
    var cpus: Int
    var memoryMiB: Int
    var state: String
    var stateTask: String?
    var stateReason: String?
    var runningSince: Date?
    var toolsRunning: Bool
    var datastore: String
    var diskPath: String
    var pid: Int?
    var createdAt: Date
    var migrationTarget: String?
    /// The named CPU model the VM was started with (IMC baseline or its host's), nil for the host CPU.
    var cpuModel: String?
    /// DRS leaves it where it is.
    var drsExcluded: Bool = false
    /// restart-in-cluster, restart-on-original-host or stop.
    var haPolicy: String = "restart-in-cluster"
    /// high, medium or low.
    var haPriority: String = "medium"
    /// The snapshot the VM's current state descends from (nil: before any).
    var currentSnapshot: String?
    /// A task working on the VM without changing its power state (a snapshot); others wait for it.
    var operationTask: String?
    /// The template whose image its root disk is a differencing disk over (a linked clone).
    var linkedTemplate: String?
    /// What QEMU is started with: below these a running VM grows online.
    var maxCpus: Int = 0
    var maxMemoryMiB: Int = 0
    /// vCPUs its QEMU booted with (the rest of `cpus` were hot-added); nil while off.
    var bootCpus: Int?
    /// When its state last changed (the manager's clock): a heartbeat collected before that may
    /// arrive after it and must not undo it.
    var stateChangedAt: Date?
    var cpuShares: Int = VMQoS.defaultShares
    var cpuReservationMHz: Int = 0
    var cpuLimitMHz: Int?
    var memoryReservationMiB: Int = 0
    var memoryShares: Int = VMQoS.defaultShares
    var memoryLimitMiB: Int?

    /// Where its RAM state goes while it is hibernated: beside its root disk, so any host that
    /// sees the datastore can resume it.
    var hibernationFile: String { (diskPath as NSString).deletingLastPathComponent + "/hibernated.state" }

    var size: VMSize {
        get { VMSize(cpus: cpus, memoryMiB: memoryMiB, maxCpus: maxCpus, maxMemoryMiB: maxMemoryMiB) }
        set { cpus = newValue.cpus; memoryMiB = newValue.memoryMiB; maxCpus = newValue.maxCpus; maxMemoryMiB = newValue.maxMemoryMiB }
    }

    /// What admitting it to a host asks.
    var placementRequest: PlacementRequest {
        PlacementRequest(cpus: cpus, memoryMiB: memoryMiB, memoryReservationMiB: memoryReservationMiB,
                         cpuReservationMHz: cpuReservationMHz, datastore: datastore)
    }

    var qos: VMQoS {
        get {
            VMQoS(cpuShares: cpuShares, cpuReservationMHz: cpuReservationMHz, cpuLimitMHz: cpuLimitMHz,
                  memoryReservationMiB: memoryReservationMiB, memoryShares: memoryShares, memoryLimitMiB: memoryLimitMiB)
        }
        set {
            cpuShares = newValue.cpuShares; cpuReservationMHz = newValue.cpuReservationMHz; cpuLimitMHz = newValue.cpuLimitMHz
            memoryReservationMiB = newValue.memoryReservationMiB; memoryShares = newValue.memoryShares; memoryLimitMiB = newValue.memoryLimitMiB
        }
    }

    var lifecycle: VMLifecycle {
        get { VMLifecycle(name: state, task: stateTask, reason: stateReason, since: runningSince, migrationTarget: migrationTarget) }
        set {
            if newValue.name != state { stateChangedAt = Date() }
            state = newValue.name
            stateTask = newValue.task
            stateReason = newValue.reason
            if newValue.name != "migrating" { runningSince = newValue.since }
            migrationTarget = newValue.migrationTarget
            if !newValue.consumesHostResources { pid = nil; toolsRunning = false }
        }
    }
}

struct TaskRecord: Codable, Sendable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "task"
    var id: String
    var kind: String
    var targetType: String
    var targetId: String
    var targetName: String
    var state: String
    var progress: Int
    var message: String
    var errorCode: String?
    var errorMessage: String?
    var createdAt: Date
    var startedAt: Date?
    var finishedAt: Date?
}

struct EventRecord: Codable, Sendable, FetchableRecord, MutablePersistableRecord {
    static let databaseTableName = "event"
    var id: Int64?
    var time: Date
    var severity: String
    var kind: String
    var targetType: String
    var targetId: String
    var targetName: String
    var message: String

    mutating func didInsert(_ inserted: InsertionSuccess) { id = inserted.rowID }
}
