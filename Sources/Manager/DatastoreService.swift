import Foundation
import GRDB
import ShepherdCore

/// Datastores added and removed at runtime (`shepherd datastore add|remove`): the manager mounts
/// the directory on the hosts (each agent keeps it across restarts) and records it at once;
/// heartbeats then keep its size current. Those given on an agent's command line stay there.
final class DatastoreService: Sendable {
    let store: Store
    let agents: AgentClient
    let events: EventLog

    init(store: Store, agents: AgentClient, events: EventLog) {
        self.store = store; self.agents = agents; self.events = events
    }

    func add(name: String, kind: String, path: String, hosts hostNames: [String]?) async throws -> DatastoreRecord {
        try Validate.name(name)
        guard kind == "shared" || kind == "local" else {
            throw ShepherdError.invalidField("kind", "'\(kind)' must be shared (every host sees the directory) or local (one host)")
        }
        let components = path.split(separator: "/")
        guard path.hasPrefix("/"), path.count > 1, !components.contains(".."), !components.contains(".") else {
            throw ShepherdError.invalidField("path", "'\(path)' must be an absolute path without . or .. steps")
        }
        let clean = "/" + components.joined(separator: "/")
        let hosts = try await store.db.read { db -> [HostRecord] in
            if try DatastoreRecord.filter(Column("name") == name).fetchCount(db) > 0 {
                throw ShepherdError(.alreadyExists, "name: a datastore named '\(name)' already exists")
            }
            for other in try DatastoreRecord.fetchAll(db) where clean.hasPrefix(other.path + "/") || other.path.hasPrefix(clean + "/") || other.path == clean {
                throw ShepherdError.invalidField("path", "'\(clean)' overlaps datastore '\(other.name)' at \(other.path); datastores do not nest")
            }
            let hosts: [HostRecord]
            if let hostNames {
                hosts = try hostNames.map { try Inventory.host(db, $0, field: "hosts") }
            } else {
                hosts = try HostRecord.filter(Column("state") == HostState.connected.rawValue).order(Column("name")).fetchAll(db)
            }
            if kind == "local", hosts.count != 1 {
                throw ShepherdError.invalidField("hosts", "a local datastore belongs to exactly one host; \(hosts.count) given")
            }
            guard !hosts.isEmpty else { throw ShepherdError.invalidField("hosts", "no connected host to mount it on") }
            for host in hosts where host.hostState != .connected {
                throw ShepherdError(.hostNotConnected, "host '\(host.name)' is \(host.state); it cannot mount '\(name)' now")
            }
            return hosts
        }
        var mounted: [HostRecord] = []
        var space = AgentWire.DatastoreSpace(capacityBytes: 0, freeBytes: 0)
        do {
            for host in hosts {
                space = try await agents.mountDatastore(Inventory.endpoint(host), .init(name: name, kind: kind, path: clean))
                mounted.append(host)
            }
        } catch {
            for host in mounted { try? await agents.unmountDatastore(Inventory.endpoint(host), name: name) }
            throw failure(error, rolledBack: mounted.isEmpty ? "" : "unmounted again from \(mounted.map(\.name).joined(separator: ", "))")
        }
        let record = DatastoreRecord(id: newID(), name: name, kind: kind, path: clean, capacityBytes: space.capacityBytes, freeBytes: space.freeBytes)
        try await store.db.write { db in
            try record.insert(db)
            for host in hosts { try DatastoreHostRecord(datastoreId: record.id, hostId: host.id).save(db) }
        }
        await events.record(.info, "datastore.added", targetType: "datastore", targetId: record.id, targetName: name,
                            "\(kind) datastore at \(clean) mounted on \(hosts.map(\.name).joined(separator: ", "))")
        return record
    }

    /// Refused while anything lives on it; the files stay in the directory.
    func remove(_ reference: String) async throws -> DatastoreRecord {
        let (record, hosts) = try await store.db.read { db -> (DatastoreRecord, [HostRecord]) in
            guard let record = try DatastoreRecord.filter(Column("name") == reference || Column("id") == reference).fetchOne(db) else {
                throw ShepherdError.notFound("datastore", reference)
            }
            var users: [String] = []
            users += try VMRecord.filter(Column("datastore") == record.name).fetchAll(db).map { "VM '\($0.name)'" }
            users += try DiskRecord.filter(Column("datastore") == record.name).fetchAll(db).map { "disk '\($0.name)'" }
            users += try TemplateRecord.filter(Column("datastore") == record.name).fetchAll(db).map { "template '\($0.name)'" }
            guard users.isEmpty else {
                throw ShepherdError(.illegalState, "datastore '\(record.name)' holds \(users.joined(separator: ", ")); move or delete them first")
            }
            let hostIDs = try DatastoreHostRecord.filter(Column("datastoreId") == record.id).fetchAll(db).map(\.hostId)
            return (record, try HostRecord.filter(hostIDs.contains(Column("id"))).fetchAll(db))
        }
        for host in hosts {
            try await agents.unmountDatastore(Inventory.endpoint(host), name: record.name)
        }
        _ = try await store.db.write { db in try DatastoreRecord.deleteOne(db, key: record.id) }
        await events.record(.info, "datastore.removed", targetType: "datastore", targetId: record.id, targetName: record.name,
                            "unmounted from \(hosts.isEmpty ? "no host" : hosts.map(\.name).joined(separator: ", ")); its files stay in \(record.path)")
        return record
    }
}
