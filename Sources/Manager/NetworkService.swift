import Foundation
import GRDB
import HostKit
import Scheduling
import Synchronization
import ShepherdCore

/// A DVS as the API shows it: its record, hosts with their uplinks, port groups, and (for `show`)
/// each host's actual state next to the wanted one.
struct DVSView: Sendable {
    struct HostView: Sendable {
        var host: String
        var uplinks: [String]
        var bond: String?
        var state: String
        var differences: [String]
        var members: [AgentWire.HostNIC]
    }
    var dvs: DVSRecord
    var cluster: String
    var hosts: [HostView]
    var portGroups: [String]
}

struct PortGroupView: Sendable {
    var portGroup: PortGroupRecord
    var dvs: String
    var nics: Int
}

struct NICView: Sendable {
    var nic: NICRecord
    var vm: String
    var portGroup: String
    var dvs: String
}

/// Distributed virtual switches (one OVS bridge of the same name on each of its hosts, with the
/// host's uplink NICs, bonded when several), port groups (access VLAN or trunk) and VM NICs
/// (hot-plugged into running VMs). The manager owns the definitions and pushes them to the hosts.
final class NetworkService: Sendable {
    let store: Store
    let agents: AgentClient
    let tasks: TaskEngine
    let events: EventLog

    /// Hosts whose switches were pushed since this manager started (or since they joined again).
    private let synced = Mutex<Set<String>>([])

    /// The physical switch (its OVS), when the manager was told of it.
    let physicalSwitch: OVS?

    init(store: Store, agents: AgentClient, tasks: TaskEngine, events: EventLog, physicalSwitch: OVS? = nil) {
        self.store = store; self.agents = agents; self.tasks = tasks; self.events = events; self.physicalSwitch = physicalSwitch
    }

    /// A heartbeat from a host: the first one since this manager started or the host (re)joined
    /// brings its switches up to date in the background.
    func heartbeat(hostID: String) {
        let first = synced.withLock { $0.insert(hostID).inserted }
        if first { Task { await self.sync(hostID: hostID) } }
    }

    /// A host joined (again): its next heartbeat syncs it.
    func joined(hostID: String) { _ = synced.withLock { $0.remove(hostID) } }

    // MARK: lookups (also for other services)

    static func dvs(_ db: Database, _ reference: String) throws -> DVSRecord {
        if let found = try DVSRecord.filter(Column("name") == reference).fetchOne(db) ?? DVSRecord.fetchOne(db, key: reference) { return found }
        throw ShepherdError.notFound("DVS", reference)
    }

    static func portGroup(_ db: Database, _ reference: String, field: String = "portGroup") throws -> PortGroupRecord {
        if let found = try PortGroupRecord.filter(Column("name") == reference).fetchOne(db) ?? PortGroupRecord.fetchOne(db, key: reference) {
            return found
        }
        throw ShepherdError(.notFound, "\(field): no port group '\(reference)'")
    }

    static func nic(_ db: Database, vm: VMRecord, _ reference: String) throws -> NICRecord {
        if let found = try NICRecord.filter(Column("vmId") == vm.id && (Column("name") == reference || Column("id") == reference || Column("mac") == reference.lowercased())).fetchOne(db) {
            return found
        }
        throw ShepherdError.notFound("NIC of '\(vm.name)'", reference)
    }

    /// Names of the DVSes a host is on.
    static func switchNames(_ db: Database, hostID: String) throws -> Set<String> {
        Set(try String.fetchAll(db, sql: "SELECT dvs.name FROM dvs JOIN dvsHost ON dvsHost.dvsId = dvs.id WHERE dvsHost.hostId = ?", arguments: [hostID]))
    }

    /// Names of the DVSes a VM's NICs are on.
    static func switchNames(_ db: Database, vmID: String) throws -> Set<String> {
        Set(try String.fetchAll(db, sql: """
            SELECT DISTINCT dvs.name FROM nic JOIN portGroup ON portGroup.id = nic.portGroupId JOIN dvs ON dvs.id = portGroup.dvsId
            WHERE nic.vmId = ?
            """, arguments: [vmID]))
    }

    /// The hosts a VM can run on for its NICs: those on every DVS of its NICs (nil: no NICs, any host).
    static func allowedHosts(_ db: Database, vmID: String) throws -> Set<String>? {
        let dvses = try String.fetchAll(db, sql: """
            SELECT DISTINCT portGroup.dvsId FROM nic JOIN portGroup ON portGroup.id = nic.portGroupId WHERE nic.vmId = ?
            """, arguments: [vmID])
        guard !dvses.isEmpty else { return nil }
        var allowed: Set<String>?
        for id in dvses {
            let hosts = Set(try String.fetchAll(db, sql: "SELECT hostId FROM dvsHost WHERE dvsId = ?", arguments: [id]))
            allowed = allowed.map { $0.intersection(hosts) } ?? hosts
        }
        return allowed
    }

    /// Mandatory VM-to-hosts rules from the VMs' NICs, one per DVS ("DVS 'prod'"): placement,
    /// HA restarts and DRS keep a VM on hosts that carry its switches.
    static func placementRules(_ db: Database, vmIndex: [String: Int], hostIndex: [String: Int]) throws -> [PlacementRule] {
        let rows = try Row.fetchAll(db, sql: """
            SELECT DISTINCT nic.vmId AS vm, dvs.id AS dvs, dvs.name AS name FROM nic
            JOIN portGroup ON portGroup.id = nic.portGroupId JOIN dvs ON dvs.id = portGroup.dvsId
            """)
        var members: [String: (name: String, vms: [Int])] = [:]
        for row in rows {
            guard let index = vmIndex[row["vm"] as String] else { continue }
            members[row["dvs"] as String, default: (row["name"] as String, [])].vms.append(index)
        }
        return try members.sorted { $0.key < $1.key }.map { id, entry in
            let hosts = Set(try String.fetchAll(db, sql: "SELECT hostId FROM dvsHost WHERE dvsId = ?", arguments: [id]).compactMap { hostIndex[$0] })
            return .vmToHosts(name: "DVS '\(entry.name)' (its NICs)", vms: entry.vms, hosts: hosts, mandatory: true)
        }
    }

    /// What the VM's host runs: each NIC with its bridge and VLAN setting, by slot.
    static func definitions(_ db: Database, vmID: String) throws -> [AgentWire.NICDefinition] {
        try NICRecord.filter(Column("vmId") == vmID).order(Column("slot")).fetchAll(db).map { try definition(db, $0) }
    }

    /// A clone's NICs: the source's, on the same port groups and slots, each with a new MAC and
    /// no address (two guests with one MAC or one IP on a network break both).
    static func copyNICs(_ db: Database, from source: String, to clone: String) throws {
        for nic in try NICRecord.filter(Column("vmId") == source).fetchAll(db) {
            var mac = Networking.newMAC()
            while try NICRecord.filter(Column("mac") == mac).fetchCount(db) > 0 { mac = Networking.newMAC() }
            try NICRecord(id: newID(), vmId: clone, name: nic.name, portGroupId: nic.portGroupId, mac: mac, ip: nil, rateMbit: nic.rateMbit,
                          linkUp: nic.linkUp, slot: nic.slot, createdAt: Date()).insert(db)
        }
    }

    static func definition(_ db: Database, _ nic: NICRecord) throws -> AgentWire.NICDefinition {
        let group = try portGroup(db, nic.portGroupId)
        let dvs = try dvs(db, group.dvsId)
        let vlan: (Int?, [Int]) = switch group.setting {
        case .access(let tag): tag == 0 ? (nil, [0]) : (tag, [])  // trunks=0: untagged frames only
        case .trunk(let vlans): (nil, vlans)
        }
        return AgentWire.NICDefinition(id: nic.id, name: nic.name, mac: nic.mac, bridge: dvs.bridge, vlanTag: vlan.0,
                                       trunks: vlan.1, linkUp: nic.linkUp, ip: nic.ip, rateMbit: nic.rateMbit, slot: nic.slot)
    }

    // MARK: switches

    struct CreateRequest: Sendable {
        var name: String
        var cluster: String?
        var hosts: [String]?
        var uplinks: [String: [String]]
        var bondMode: BondMode?
    }

    /// Creates the DVS on every host of the cluster (or those named), each with its default
    /// uplinks unless given. All hosts or none: a host that refuses undoes the others.
    func create(_ request: CreateRequest) async throws -> DVSView {
        try Validate.name(request.name)
        for (host, nics) in request.uplinks {
            try Validate.name(host, field: "uplinks.host")
            for nic in nics { try Self.checkNICName(nic, field: "uplinks.nics") }
            if Set(nics).count != nics.count { throw ShepherdError.invalidField("uplinks.nics", "\(host) lists a NIC twice (\(nics.joined(separator: ",")))") }
        }
        if let hosts = request.hosts, Set(hosts).count != hosts.count {
            throw ShepherdError.invalidField("hosts", "a host is listed twice (\(hosts.joined(separator: ",")))")
        }
        let bridge = Networking.bridgeName(dvs: request.name)
        let (cluster, hosts) = try await store.db.read { db -> (ClusterRecord, [HostRecord]) in
            if try DVSRecord.filter(Column("name") == request.name).fetchCount(db) > 0 {
                throw ShepherdError(.alreadyExists, "name: a DVS named '\(request.name)' already exists")
            }
            if let clash = try DVSRecord.filter(Column("bridge") == bridge).fetchOne(db) {
                throw ShepherdError(.alreadyExists, "name: '\(request.name)' would use bridge \(bridge), which DVS '\(clash.name)' has")
            }
            let cluster: ClusterRecord
            if let name = request.cluster {
                cluster = try Inventory.cluster(db, name)
            } else {
                let all = try ClusterRecord.fetchAll(db)
                guard all.count == 1 else { throw ShepherdError.invalidField("cluster", "name the cluster (there are \(all.count))") }
                cluster = all[0]
            }
            let members = try HostRecord.filter(Column("clusterId") == cluster.id).order(Column("name")).fetchAll(db)
            let hosts = try request.hosts.map { names in
                try names.map { name in
                    guard let host = members.first(where: { $0.name == name }) else {
                        throw ShepherdError.invalidField("hosts", "'\(name)' is not a host of cluster '\(cluster.name)'")
                    }
                    return host
                }
            } ?? members
            for name in request.uplinks.keys where !hosts.contains(where: { $0.name == name }) {
                throw ShepherdError.invalidField("uplinks", "'\(name)' is not one of the DVS's hosts (\(hosts.map(\.name).joined(separator: ", ")))")
            }
            // A DVS for the whole cluster skips hosts that cannot be reached now; they join it
            // on their first heartbeat back. Named hosts must all be there.
            let reachable = request.hosts == nil ? hosts.filter { $0.hostState == .connected || $0.hostState == .maintenance } : hosts
            guard !reachable.isEmpty else { throw ShepherdError.invalidField("hosts", "cluster '\(cluster.name)' has no connected hosts to put on the DVS") }
            return (cluster, reachable)
        }
        let record = DVSRecord(id: newID(), name: request.name, clusterId: cluster.id, bridge: bridge,
                               bondMode: (request.bondMode ?? .activeBackup).rawValue, allHosts: request.hosts == nil, createdAt: Date())
        var placed: [(HostRecord, [String])] = []
        for host in hosts { placed.append((host, try await uplinks(for: host, given: request.uplinks[host.name], dvs: record))) }
        try await push(record, to: placed)
        try await store.db.write { [placed] db in
            try record.insert(db)
            for (host, uplinks) in placed {
                try DVSHostRecord(dvsId: record.id, hostId: host.id, uplinks: uplinks.joined(separator: ",")).insert(db)
            }
        }
        await events.record(.info, "dvs.created", targetType: "dvs", targetId: record.id, targetName: record.name,
                            "bridge \(bridge) on \(placed.map { "\($0.0.name) (\($0.1.isEmpty ? "no uplink" : $0.1.joined(separator: "+")))" }.joined(separator: ", "))")
        return try await show(record.name, live: false)
    }

    /// Adds a host of the DVS's cluster to it.
    func addHost(_ reference: String, host hostName: String, uplinks given: [String]?) async throws -> DVSView {
        try Validate.name(hostName, field: "host")
        for nic in given ?? [] { try Self.checkNICName(nic, field: "uplinks") }
        if let given, Set(given).count != given.count { throw ShepherdError.invalidField("uplinks", "a NIC is listed twice (\(given.joined(separator: ",")))") }
        let (record, host) = try await store.db.read { db -> (DVSRecord, HostRecord) in
            let record = try Self.dvs(db, reference)
            let host = try Inventory.host(db, hostName, field: "host")
            guard host.clusterId == record.clusterId else {
                throw ShepherdError(.illegalState, "host '\(host.name)' is not in the cluster of DVS '\(record.name)'")
            }
            if try DVSHostRecord.fetchOne(db, key: ["dvsId": record.id, "hostId": host.id]) != nil {
                throw ShepherdError(.alreadyExists, "host '\(host.name)' is on DVS '\(record.name)' already")
            }
            return (record, host)
        }
        let uplinks = try await uplinks(for: host, given: given, dvs: record)
        try await push(record, to: [(host, uplinks)])
        try await store.db.write { db in
            try DVSHostRecord(dvsId: record.id, hostId: host.id, uplinks: uplinks.joined(separator: ",")).insert(db)
        }
        await events.record(.info, "dvs.host-added", targetType: "dvs", targetId: record.id, targetName: record.name,
                            "\(host.name) joined with \(uplinks.isEmpty ? "no uplink" : uplinks.joined(separator: "+"))")
        return try await show(record.name, live: false)
    }

    /// The NICs a host gives the DVS: those asked for (which must exist there), else the host's
    /// defaults (agent --uplinks). A NIC is the uplink of one DVS at a time.
    private func uplinks(for host: HostRecord, given: [String]?, dvs: DVSRecord) async throws -> [String] {
        guard host.hostState == .connected || host.hostState == .maintenance else {
            throw ShepherdError(.hostNotConnected, "host '\(host.name)' is \(host.state); a DVS is built on connected hosts")
        }
        let network = try await agents.network(Inventory.endpoint(host))
        let chosen = given ?? network.defaultUplinks
        let taken = try await store.db.read { db in
            try DVSHostRecord.filter(Column("hostId") == host.id && Column("dvsId") != dvs.id).fetchAll(db).flatMap { row in
                row.uplinkList.map { ($0, (try? DVSRecord.fetchOne(db, key: row.dvsId))?.name ?? row.dvsId) }
            }
        }
        for nic in chosen {
            if let owner = taken.first(where: { $0.0 == nic }) {
                throw ShepherdError(.illegalState, "uplinks: \(nic) on '\(host.name)' is already the uplink of DVS '\(owner.1)'")
            }
        }
        return chosen
    }

    /// Builds the bridge on each host; a failure removes it again from the hosts done so far.
    private func push(_ record: DVSRecord, to hosts: [(HostRecord, [String])]) async throws {
        var done: [HostRecord] = []
        for (host, uplinks) in hosts {
            do {
                _ = try await agents.applySwitch(Inventory.endpoint(host), .init(dvs: record.name, bridge: record.bridge, uplinks: uplinks, bondMode: record.bond))
                done.append(host)
            } catch {
                // The failing host too: it may have built part of it.
                for undone in done + [host] { try? await agents.removeSwitch(Inventory.endpoint(undone), bridge: record.bridge) }
                let code = (error as? ShepherdError)?.code ?? .agentFailed
                throw ShepherdError(code, "DVS '\(record.name)' could not be built on '\(host.name)': \((error as? ShepherdError)?.message ?? "\(error)")\(done.isEmpty ? "" : "; removed again from \(done.map(\.name).joined(separator: ", "))"); nothing was created")
            }
        }
    }

    /// Puts a host on the DVSes made for all its cluster's hosts, then pushes every DVS it is
    /// on to it again (after it joins or comes back).
    func sync(hostID: String) async {
        let missing = (try? await store.db.read { db -> [String] in
            guard let host = try HostRecord.fetchOne(db, key: hostID) else { return [] }
            return try DVSRecord.fetchAll(db, sql: """
                SELECT * FROM dvs WHERE clusterId = ? AND allHosts AND id NOT IN (SELECT dvsId FROM dvsHost WHERE hostId = ?)
                """, arguments: [host.clusterId, hostID]).map(\.name)
        }) ?? []
        for name in missing {
            guard let hostName = try? await store.db.read({ db in try HostRecord.fetchOne(db, key: hostID)?.name }) else { break }
            do {
                _ = try await addHost(name, host: hostName, uplinks: nil)
            } catch {
                await events.record(.warning, "dvs.sync-failed", targetType: "dvs", targetId: name, targetName: name,
                                    "host '\(hostName)' joined the cluster but could not join the DVS: \(error)")
            }
        }
        guard let (host, switches) = try? await store.db.read({ db -> (HostRecord, [(DVSRecord, [String])])? in
            guard let host = try HostRecord.fetchOne(db, key: hostID) else { return nil }
            let rows = try DVSHostRecord.filter(Column("hostId") == hostID).fetchAll(db)
            return (host, try rows.compactMap { row in try DVSRecord.fetchOne(db, key: row.dvsId).map { ($0, row.uplinkList) } })
        }) else { return }
        // Bridges the host still builds for a DVS this manager no longer has (deleted while the host was away).
        if let network = try? await agents.network(Inventory.endpoint(host)) {
            let known = Set((try? await store.db.read { db in try DVSRecord.fetchAll(db).map(\.bridge) }) ?? [])
            for stale in network.switches where stale.wanted != nil && !known.contains(stale.bridge) {
                try? await agents.removeSwitch(Inventory.endpoint(host), bridge: stale.bridge)
            }
        }
        for (record, uplinks) in switches {
            do {
                _ = try await agents.applySwitch(Inventory.endpoint(host), .init(dvs: record.name, bridge: record.bridge, uplinks: uplinks, bondMode: record.bond))
            } catch {
                await events.record(.warning, "dvs.sync-failed", targetType: "dvs", targetId: record.id, targetName: record.name,
                                    "could not rebuild bridge \(record.bridge) on '\(host.name)': \(error)")
            }
        }
    }

    /// Deletes a DVS (refused while a NIC is on one of its port groups), then removes it from
    /// every host; a host that cannot be reached drops it when it comes back (sync).
    func delete(_ reference: String) async throws {
        let (record, hosts) = try await store.db.write { db -> (DVSRecord, [HostRecord]) in
            let record = try Self.dvs(db, reference)
            let nics = try NICRecord.fetchAll(db, sql: "SELECT nic.* FROM nic JOIN portGroup ON portGroup.id = nic.portGroupId WHERE portGroup.dvsId = ?",
                                              arguments: [record.id])
            if !nics.isEmpty {
                let vms = try VMRecord.filter(keys: Set(nics.map(\.vmId))).fetchAll(db).map(\.name).sorted()
                throw ShepherdError(.illegalState, "DVS '\(record.name)' still has \(nics.count) NIC(s) on its port groups (VMs \(vms.joined(separator: ", "))); remove them first")
            }
            let hosts = try HostRecord.fetchAll(db, sql: "SELECT host.* FROM host JOIN dvsHost ON dvsHost.hostId = host.id WHERE dvsHost.dvsId = ?",
                                                arguments: [record.id])
            // In the same transaction as the check: no NIC can join it meanwhile.
            try DVSRecord.deleteOne(db, key: record.id)
            return (record, hosts)
        }
        var unreachable: [String] = []
        for host in hosts {
            do { try await agents.removeSwitch(Inventory.endpoint(host), bridge: record.bridge) } catch { unreachable.append("\(host.name) (\(error))") }
        }
        await events.record(unreachable.isEmpty ? .info : .warning, "dvs.deleted", targetType: "dvs", targetId: record.id, targetName: record.name,
                            unreachable.isEmpty ? "removed from \(hosts.count) host(s)" : "deleted; bridge \(record.bridge) may remain on \(unreachable.joined(separator: ", "))")
    }

    func list() async throws -> [DVSView] {
        let names = try await store.db.read { db in try DVSRecord.order(Column("name")).fetchAll(db).map(\.name) }
        var result: [DVSView] = []
        for name in names { result.append(try await show(name, live: false)) }
        return result
    }

    /// One DVS; `live` asks each host what it has and lists where that differs from the wanted.
    func show(_ reference: String, live: Bool = true) async throws -> DVSView {
        let (record, cluster, rows, groups) = try await store.db.read { db -> (DVSRecord, String, [(HostRecord, DVSHostRecord)], [String]) in
            let record = try Self.dvs(db, reference)
            let rows = try DVSHostRecord.filter(Column("dvsId") == record.id).fetchAll(db).compactMap { row in
                try HostRecord.fetchOne(db, key: row.hostId).map { ($0, row) }
            }.sorted { $0.0.name < $1.0.name }
            let groups = try PortGroupRecord.filter(Column("dvsId") == record.id).order(Column("name")).fetchAll(db).map(\.name)
            return (record, try ClusterRecord.fetchOne(db, key: record.clusterId)?.name ?? record.clusterId, rows, groups)
        }
        var hosts: [DVSView.HostView] = []
        for (host, row) in rows {
            let wanted = AgentWire.SwitchDefinition(dvs: record.name, bridge: record.bridge, uplinks: row.uplinkList, bondMode: record.bond)
            var view = DVSView.HostView(host: host.name, uplinks: row.uplinkList, bond: row.uplinkList.count > 1 ? wanted.uplinkPort : nil,
                                        state: "unknown", differences: [], members: [])
            if live {
                do {
                    let network = try await agents.network(Inventory.endpoint(host))
                    let actual = network.switches.first { $0.bridge == record.bridge }
                    view.differences = Self.differences(wanted: wanted, actual: actual, network: network)
                    view.members = actual?.ports.first { $0.name == wanted.uplinkPort }?.members ?? []
                    view.state = view.differences.isEmpty ? "in-sync" : "differs"
                } catch {
                    view.state = "unreachable"
                    view.differences = ["cannot ask '\(host.name)': \(error)"]
                }
            }
            hosts.append(view)
        }
        return DVSView(dvs: record, cluster: cluster, hosts: hosts, portGroups: groups)
    }

    /// Where a host's bridge differs from the DVS's definition, as sentences.
    static func differences(wanted: AgentWire.SwitchDefinition, actual: AgentWire.SwitchState?, network: AgentWire.HostNetwork) -> [String] {
        guard network.ovsRunning else { return ["Open vSwitch (\(network.ovs)) does not run on the host"] }
        guard let actual, actual.exists else { return ["bridge \(wanted.bridge) is missing"] }
        var result: [String] = []
        if let port = wanted.uplinkPort {
            if let found = actual.ports.first(where: { $0.name == port }) {
                let members = Set(found.members.map(\.name))
                if members != Set(wanted.uplinks) {
                    result.append("uplink \(port) has \(members.sorted().joined(separator: ", ")); wanted \(wanted.uplinks.joined(separator: ", "))")
                }
                if wanted.uplinks.count > 1, found.bondMode != wanted.bondMode.ovsMode {
                    result.append("bond \(port) runs \(found.bondMode ?? "no bond mode"); wanted \(wanted.bondMode.ovsMode)")
                }
                for member in found.members where member.state != "up" {
                    result.append("uplink NIC \(member.name) is \(member.state)")
                }
            } else {
                result.append("uplink port \(port) is missing")
            }
        }
        for port in actual.ports where port.nicID == nil && port.name != wanted.uplinkPort {
            result.append("port \(port.name) is on the bridge but not in the DVS's definition")
        }
        return result
    }

    // MARK: port groups

    func createPortGroup(dvs reference: String, name: String, vlan: Int?, trunks: String?) async throws -> PortGroupView {
        try Validate.name(name)
        let setting: PortGroupVLAN
        switch (vlan, trunks) {
        case (let vlan?, nil):
            guard vlan == 0 || Networking.vlanIDs.contains(vlan) else {
                throw ShepherdError.invalidField("vlan", "\(vlan) is outside 0–4094 (0: untagged)")
            }
            setting = .access(vlan)
        case (nil, let trunks?): setting = .trunk(try Networking.parseVLANs(trunks, field: "trunks"))
        case (nil, nil): throw ShepherdError.invalidField("vlan", "give either vlan (an access port group) or trunks (a trunk)")
        case (_?, _?): throw ShepherdError.invalidField("trunks", "give either vlan or trunks, not both")
        }
        let (record, dvs) = try await store.db.write { db -> (PortGroupRecord, DVSRecord) in
            let dvs = try Self.dvs(db, reference)
            if try PortGroupRecord.filter(Column("name") == name).fetchCount(db) > 0 {
                throw ShepherdError(.alreadyExists, "name: a port group named '\(name)' already exists")
            }
            var record = PortGroupRecord(id: newID(), name: name, dvsId: dvs.id, vlan: nil, trunks: nil, createdAt: Date())
            switch setting {
            case .access(let tag): record.vlan = tag
            case .trunk(let vlans): record.trunks = Networking.formatVLANs(vlans)
            }
            try record.insert(db)
            return (record, dvs)
        }
        await events.record(.info, "portgroup.created", targetType: "portgroup", targetId: record.id, targetName: name,
                            "\(setting.summary) on DVS '\(dvs.name)'")
        return PortGroupView(portGroup: record, dvs: dvs.name, nics: 0)
    }

    func deletePortGroup(_ reference: String) async throws {
        let record = try await store.db.write { db -> PortGroupRecord in
            let record = try Self.portGroup(db, reference, field: "portgroup")
            let nics = try NICRecord.filter(Column("portGroupId") == record.id).fetchAll(db)
            if !nics.isEmpty {
                let vms = try VMRecord.filter(keys: Set(nics.map(\.vmId))).fetchAll(db).map(\.name).sorted()
                throw ShepherdError(.illegalState, "port group '\(record.name)' has \(nics.count) NIC(s) (VMs \(vms.joined(separator: ", "))); remove them first")
            }
            try record.delete(db)
            return record
        }
        await events.record(.info, "portgroup.deleted", targetType: "portgroup", targetId: record.id, targetName: record.name, "deleted")
    }

    func listPortGroups(dvs reference: String?) async throws -> [PortGroupView] {
        try await store.db.read { db in
            let filter = try reference.map { try Self.dvs(db, $0) }
            let groups = try PortGroupRecord.order(Column("name")).fetchAll(db).filter { filter == nil || $0.dvsId == filter!.id }
            return try groups.map { group in
                PortGroupView(portGroup: group, dvs: try Self.dvs(db, group.dvsId).name,
                              nics: try NICRecord.filter(Column("portGroupId") == group.id).fetchCount(db))
            }
        }
    }

    // MARK: NICs

    func listNICs(vm reference: String) async throws -> [NICView] {
        try await store.db.read { db in
            let vm = try Inventory.vm(db, reference)
            return try NICRecord.filter(Column("vmId") == vm.id).order(Column("slot")).fetchAll(db).map { try Self.view(db, $0, vm: vm) }
        }
    }

    static func view(_ db: Database, _ nic: NICRecord, vm: VMRecord) throws -> NICView {
        let group = try portGroup(db, nic.portGroupId)
        return NICView(nic: nic, vm: vm.name, portGroup: group.name, dvs: try dvs(db, group.dvsId).name)
    }

    struct NICRequest: Sendable {
        var portGroup: String?
        var ip: String??
        var mac: String?
        var rate: String??
        var linkUp: Bool?
    }

    /// Adds a NIC (hot-plugged when the VM runs). The VM's host must be on the port group's DVS.
    func addNIC(vm reference: String, _ request: NICRequest) async throws -> TaskRecord {
        guard let groupName = request.portGroup else { throw ShepherdError.invalidField("portGroup", "name the port group") }
        let ip = try (request.ip ?? nil).map { try Networking.IPv4CIDR($0).description }
        let mac = try request.mac.map { try Networking.normalizeMAC($0) }
        let rate = try (request.rate ?? nil).map { try Networking.parseRateMbit($0) }
        let (vm, host, nic, task) = try await store.db.write { [tasks] db -> (VMRecord, HostRecord, NICRecord, TaskRecord) in
            var vm = try Inventory.vm(db, reference)
            let host = try VMService.checkAtRest(db, vm)
            let group = try Self.portGroup(db, groupName)
            let dvs = try Self.dvs(db, group.dvsId)
            try Self.checkHostOnDVS(db, host: host, dvs: dvs, vm: vm)
            try Self.checkAddress(db, ip, on: group, except: nil)
            let existing = try NICRecord.filter(Column("vmId") == vm.id).fetchAll(db)
            guard let slot = Networking.nicSlots.first(where: { slot in !existing.contains { $0.slot == slot } }) else {
                throw ShepherdError(.insufficientResources, "'\(vm.name)' has \(existing.count) NICs, the most a VM can have")
            }
            let name = (0...).lazy.map { "nic\($0)" }.first { name in !existing.contains { $0.name == name } }!
            var chosenMAC = mac ?? Networking.newMAC()
            while mac == nil, try NICRecord.filter(Column("mac") == chosenMAC).fetchCount(db) > 0 { chosenMAC = Networking.newMAC() }
            if let taken = try NICRecord.filter(Column("mac") == chosenMAC).fetchOne(db) {
                let owner = try VMRecord.fetchOne(db, key: taken.vmId)?.name ?? taken.vmId
                throw ShepherdError(.alreadyExists, "mac: \(chosenMAC) is already \(taken.name) of '\(owner)'")
            }
            let nic = NICRecord(id: newID(), vmId: vm.id, name: name, portGroupId: group.id, mac: chosenMAC, ip: ip, rateMbit: rate,
                                linkUp: request.linkUp ?? true, slot: slot, createdAt: Date())
            let task = tasks.newTask(kind: "nic.add", targetType: "vm", targetId: vm.id, targetName: vm.name)
            try VMService.hold(db, &vm, for: task)
            // Recorded now, so a start or migration beginning after this task takes it along.
            try nic.insert(db)
            return (vm, host, nic, task)
        }
        tasks.run(task) { [self] progress in
            do {
                await progress.update(20, vm.state == "running" ? "hot-plugging \(nic.name) into '\(vm.name)'" : "adding \(nic.name) to '\(vm.name)'")
                let definition = try await store.db.read { db in try Self.definition(db, nic) }
                try await agents.putNIC(Inventory.endpoint(host), vm: vm.id, definition)
                let message = "\(nic.name) (\(nic.mac)) on port group '\(groupName)'\(ip.map { ", \($0)" } ?? "")\(vm.state == "running" ? ", hot-plugged" : "")"
                await events.record(.info, "nic.added", targetType: "vm", targetId: vm.id, targetName: vm.name, message)
                await release(vm.id, task: task.id)
                return message
            } catch {
                // The host may have plugged it before the error (a timeout): take it out there too.
                try? await agents.removeNIC(Inventory.endpoint(host), vm: vm.id, nicID: nic.id)
                _ = try? await store.db.write { db in try NICRecord.deleteOne(db, key: nic.id) }
                await release(vm.id, task: task.id)
                throw failure(error, rolledBack: "'\(vm.name)' has no new NIC")
            }
        }
        return task
    }

    /// Changes a NIC's cable, address, rate or port group (live on a running VM).
    func updateNIC(vm reference: String, nic nicReference: String, _ request: NICRequest) async throws -> TaskRecord {
        let ip = try request.ip.map { value in try value.flatMap { $0.isEmpty ? nil : try Networking.IPv4CIDR($0).description } }
        let rate = try request.rate.map { value in try value.flatMap { $0 == "none" ? nil : try Networking.parseRateMbit($0) } }
        if request.mac != nil { throw ShepherdError.invalidField("mac", "a NIC's MAC does not change; remove the NIC and add one with the new MAC") }
        let (vm, host, old, new, task) = try await store.db.write { [tasks] db -> (VMRecord, HostRecord, NICRecord, NICRecord, TaskRecord) in
            var vm = try Inventory.vm(db, reference)
            let host = try VMService.checkAtRest(db, vm)
            let old = try Self.nic(db, vm: vm, nicReference)
            var new = old
            if let groupName = request.portGroup {
                let group = try Self.portGroup(db, groupName)
                try Self.checkHostOnDVS(db, host: host, dvs: try Self.dvs(db, group.dvsId), vm: vm)
                new.portGroupId = group.id
            }
            if let ip { new.ip = ip }
            if let rate { new.rateMbit = rate }
            if new.ip != old.ip || new.portGroupId != old.portGroupId {
                try Self.checkAddress(db, new.ip, on: try Self.portGroup(db, new.portGroupId), except: old.id)
            }
            if let link = request.linkUp { new.linkUp = link }
            let task = tasks.newTask(kind: "nic.update", targetType: "vm", targetId: vm.id, targetName: vm.name)
            try VMService.hold(db, &vm, for: task)
            try new.update(db)
            return (vm, host, old, new, task)
        }
        tasks.run(task) { [self] progress in
            do {
                await progress.update(20, "changing \(new.name) of '\(vm.name)'")
                let definition = try await store.db.read { db in try Self.definition(db, new) }
                try await agents.putNIC(Inventory.endpoint(host), vm: vm.id, definition)
                let changes = Self.describeChanges(old, new)
                await events.record(.info, "nic.changed", targetType: "vm", targetId: vm.id, targetName: vm.name, "\(new.name): \(changes)")
                await release(vm.id, task: task.id)
                return "\(new.name): \(changes)"
            } catch {
                _ = try? await store.db.write { db in try old.update(db) }
                // The host may have taken part of it: tell it the old settings again.
                if let definition = try? await store.db.read({ db in try Self.definition(db, old) }) {
                    try? await agents.putNIC(Inventory.endpoint(host), vm: vm.id, definition)
                }
                await release(vm.id, task: task.id)
                throw failure(error, rolledBack: "\(old.name) of '\(vm.name)' keeps its settings")
            }
        }
        return task
    }

    /// Removes a NIC (hot-unplugged from a running VM: the guest must release it).
    func removeNIC(vm reference: String, nic nicReference: String) async throws -> TaskRecord {
        let (vm, host, nic, task) = try await store.db.write { [tasks] db -> (VMRecord, HostRecord, NICRecord, TaskRecord) in
            var vm = try Inventory.vm(db, reference)
            let host = try VMService.checkAtRest(db, vm)
            let nic = try Self.nic(db, vm: vm, nicReference)
            let task = tasks.newTask(kind: "nic.remove", targetType: "vm", targetId: vm.id, targetName: vm.name)
            try VMService.hold(db, &vm, for: task)
            return (vm, host, nic, task)
        }
        tasks.run(task) { [self] progress in
            do {
                await progress.update(20, vm.state == "running" ? "hot-unplugging \(nic.name) from '\(vm.name)'" : "removing \(nic.name)")
                try await agents.removeNIC(Inventory.endpoint(host), vm: vm.id, nicID: nic.id)
                _ = try await store.db.write { db in try NICRecord.deleteOne(db, key: nic.id) }
                await events.record(.info, "nic.removed", targetType: "vm", targetId: vm.id, targetName: vm.name, "\(nic.name) (\(nic.mac)) removed")
                await release(vm.id, task: task.id)
                return "\(nic.name) removed from '\(vm.name)'"
            } catch {
                await release(vm.id, task: task.id)
                throw failure(error, rolledBack: "\(nic.name) stays on '\(vm.name)'")
            }
        }
        return task
    }

    /// Ends the VM's operation lock if this task still holds it.
    private func release(_ vmID: String, task: String) async {
        _ = try? await store.db.write { db in
            guard var row = try VMRecord.fetchOne(db, key: vmID), row.operationTask == task else { return }
            row.operationTask = nil
            try row.update(db)
        }
    }

    static func describeChanges(_ old: NICRecord, _ new: NICRecord) -> String {
        var parts: [String] = []
        if old.linkUp != new.linkUp { parts.append("link \(new.linkUp ? "up" : "down")") }
        if old.ip != new.ip { parts.append("ip \(new.ip ?? "none")") }
        if old.rateMbit != new.rateMbit { parts.append("rate \(new.rateMbit.map { "\($0) Mbit/s" } ?? "unlimited")") }
        if old.portGroupId != new.portGroupId { parts.append("moved to another port group") }
        return parts.isEmpty ? "nothing changed" : parts.joined(separator: ", ")
    }

    /// An address Shepherd sets must be reachable (not on a trunk, where the guest tags its own
    /// frames) and not another NIC's on the same port group.
    private static func checkAddress(_ db: Database, _ ip: String?, on group: PortGroupRecord, except nicID: String?) throws {
        guard let ip, let address = try? Networking.IPv4CIDR(ip) else { return }
        if case .trunk = group.setting {
            throw ShepherdError.invalidField("ip", "'\(group.name)' is a trunk: its guest tags its own frames, so an untagged address there reaches nothing; set the address on the guest's VLAN interface, or use an access port group")
        }
        for other in try NICRecord.filter(Column("portGroupId") == group.id && Column("ip") != nil).fetchAll(db) where other.id != nicID {
            if let theirs = try? Networking.IPv4CIDR(other.ip ?? ""), theirs.address == address.address {
                let owner = try VMRecord.fetchOne(db, key: other.vmId)?.name ?? other.vmId
                throw ShepherdError(.alreadyExists, "ip: \(address.address) is already \(other.name) of '\(owner)' on port group '\(group.name)'")
            }
        }
    }

    private static func checkHostOnDVS(_ db: Database, host: HostRecord, dvs: DVSRecord, vm: VMRecord) throws {
        guard try DVSHostRecord.fetchOne(db, key: ["dvsId": dvs.id, "hostId": host.id]) != nil else {
            throw ShepherdError(.preflightFailed, "the host of '\(vm.name)', '\(host.name)', is not on DVS '\(dvs.name)' (shepherd dvs add-host \(dvs.name) \(host.name))")
        }
    }

    private static func checkNICName(_ name: String, field: String) throws {
        guard !name.isEmpty, name.utf8.count <= 15, !name.hasPrefix("-"), name.allSatisfy({ $0.isLetter || $0.isNumber || "_.-".contains($0) }) else {
            throw ShepherdError.invalidField(field, "'\(name)' is not an interface name (1–15 of letters, digits, _ . -)")
        }
    }
}
