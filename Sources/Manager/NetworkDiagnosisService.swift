import Foundation
import GRDB
import HostKit
import ShepherdCore

/// `net diagnose A B`: gathers what each guest (through its tools), each host's bridge and
/// uplinks (its agent) and the physical switch (its OVS database) say, probes with a real ping
/// from A to B, and lets `NetworkDiagnosis` name the first faulty hop.
extension NetworkService {
    /// One fixed script run in the guest (no user input in it): interfaces with MAC, state and
    /// carrier, IPv4 addresses, VLAN interfaces, and the nftables ruleset.
    static let guestProbe = """
        for d in /sys/class/net/*; do n=${d##*/}; echo "if $n $(cat $d/address) $(cat $d/operstate) $(cat $d/carrier 2>/dev/null || echo 0)"; done; \
        ip -o -4 addr show | while read -r i n f a rest; do echo "addr $n $a"; done; \
        sed -n 's/^\\([^ ]*\\) *| *\\([0-9]*\\) *| *\\([^ ]*\\).*/vlan \\1 \\2 \\3/p' /proc/net/vlan/config 2>/dev/null; \
        echo nft; nft list ruleset 2>/dev/null; exit 0
        """

    func diagnose(_ fromReference: String, _ toReference: String) async throws -> (String, String, NetworkDiagnosis.Result) {
        let (a, b, nics) = try await store.db.read { db -> (VMRecord, VMRecord, (NICRecord?, NICRecord?)) in
            let a = try Inventory.vm(db, fromReference), b = try Inventory.vm(db, toReference)
            guard a.id != b.id else { throw ShepherdError.invalidField("to", "name a second VM ('\(a.name)' twice)") }
            return (a, b, try Self.pickNICs(db, a, b))
        }
        var sideA = try await side(a, nic: nics.0)
        var sideB = try await side(b, nic: nics.1)
        if sideA.nic == nil, sideB.nic == nil {
            throw ShepherdError(.illegalState, "neither '\(a.name)' nor '\(b.name)' has a NIC: nothing connects them (shepherd nic add VM --portgroup …)")
        }
        var switchProblem: String?
        if let physicalSwitch {
            do {
                let neighbors = try await PhysicalSwitch.neighbors(of: physicalSwitch)
                for index in [0, 1] {
                var side = index == 0 ? sideA : sideB
                side.switchPorts = neighbors.filter { $0.host == side.host }.map {
                    NetworkDiagnosis.SwitchPort(port: $0.port, nic: $0.nic, up: $0.up, allowed: $0.allowed)
                }
                if index == 0 { sideA = side } else { sideB = side }
                }
            } catch {
                switchProblem = "the physical switch (\(physicalSwitch.database)) could not be read: \(error)"
            }
        }
        // A real probe: ping from A to B's address in a shared subnet (or B's first).
        var probe: Bool?
        if let guestA = sideA.guest, let guestB = sideB.guest, sideA.running, sideB.running {
            let theirs = NetworkDiagnosis.allAddresses(guestB), mine = NetworkDiagnosis.allAddresses(guestA)
            if let target = theirs.first(where: { t in mine.contains { $0.sameSubnet(as: t) } }) ?? theirs.first,
               let host = try? await store.db.read({ db in try Inventory.host(db, a.hostId) }) {
                let result = try? await agents.exec(Inventory.endpoint(host), vm: a.id,
                                                    .init(command: ["ping", "-c", "2", "-W", "1", target.address], timeoutSeconds: 10))
                probe = result.map { $0.exitCode == 0 }
            }
        }
        var result = NetworkDiagnosis.diagnose(sideA, sideB, probe: probe)
        if let switchProblem {
            result.hops = result.hops.map { hop in
                var hop = hop
                if hop.name == "physical switch", hop.status == .skip { hop.evidence = switchProblem }
                return hop
            }
        }
        return (a.name, b.name, result)
    }

    /// The NIC of each VM to check: a pair on one DVS, preferring one VLAN; else each one's first.
    static func pickNICs(_ db: Database, _ a: VMRecord, _ b: VMRecord) throws -> (NICRecord?, NICRecord?) {
        func nics(_ vm: VMRecord) throws -> [(NICRecord, PortGroupRecord)] {
            try NICRecord.filter(Column("vmId") == vm.id).order(Column("slot")).fetchAll(db).map { ($0, try portGroup(db, $0.portGroupId)) }
        }
        let left = try nics(a), right = try nics(b)
        let pairs = left.flatMap { l in right.map { (l, $0) } }
        let best = pairs.first { $0.0.1.dvsId == $0.1.1.dvsId && $0.0.1.setting == $0.1.1.setting }
            ?? pairs.first { $0.0.1.dvsId == $0.1.1.dvsId } ?? pairs.first
        return (best?.0.0 ?? left.first?.0, best?.1.0 ?? right.first?.0)
    }

    private func side(_ vm: VMRecord, nic record: NICRecord?) async throws -> NetworkDiagnosis.Side {
        let (host, definition, group, dvs) = try await store.db.read { db in
            let host = try Inventory.host(db, vm.hostId)
            guard let record else { return (host, nil as AgentWire.NICDefinition?, nil as PortGroupRecord?, nil as DVSRecord?) }
            let group = try Self.portGroup(db, record.portGroupId)
            return (host, try Self.definition(db, record), group, try Self.dvs(db, group.dvsId))
        }
        var side = NetworkDiagnosis.Side(vm: vm.name, running: vm.state == "running", host: host.name)
        guard let record, let definition, let group, let dvs else { return side }
        side.nic = .init(name: record.name, mac: record.mac, portGroup: group.name, dvs: dvs.name, vlan: group.setting, linkUp: record.linkUp)
        let endpoint = Inventory.endpoint(host)
        if let network = try? await agents.network(endpoint), let bridge = network.switches.first(where: { $0.bridge == dvs.bridge }), bridge.exists {
            if let port = bridge.ports.first(where: { $0.nicID == record.id }) {
                side.port = .init(name: port.name, tag: port.vlanTag, trunks: port.trunks, error: port.error)
            }
            let uplinkName = AgentWire.SwitchDefinition(dvs: dvs.name, bridge: dvs.bridge, uplinks: bridge.wanted?.uplinks ?? [], bondMode: dvs.bond).uplinkPort
            let members = bridge.ports.first { $0.name == uplinkName }?.members ?? []
            side.uplink = .init(bridge: dvs.bridge, members: members.map { ($0.name, $0.state == "up") })
        }
        if side.running, let output = try? await agents.exec(endpoint, vm: vm.id, .init(command: ["sh", "-c", Self.guestProbe], timeoutSeconds: 15)),
           output.exitCode == 0 {
            side.guest = Self.parseGuest(output.stdout, mac: definition.mac)
        }
        return side
    }

    /// Reads the guest probe's output for the interface with `mac`.
    static func parseGuest(_ text: String, mac: String) -> NetworkDiagnosis.Guest {
        var interface: String?
        var up = false
        var addresses: [String: [Networking.IPv4CIDR]] = [:]
        var vlans: [(name: String, id: Int, parent: String)] = []
        var rules: [String] = []
        var inRules = false
        for line in text.split(separator: "\n").map(String.init) {
            if inRules {
                let rule = line.trimmingCharacters(in: .whitespaces)
                if rule.hasSuffix(" drop") || rule.contains(" reject") || rule.contains("policy drop") { rules.append(rule) }
                continue
            }
            let fields = line.split(separator: " ").map(String.init)
            switch fields.first {
            case "if" where fields.count >= 5 && fields[2].lowercased() == mac:
                interface = fields[1]
                up = fields[3] == "up" || (fields[3] == "unknown" && fields[4] == "1")
            case "addr" where fields.count >= 3:
                if let cidr = try? Networking.IPv4CIDR(fields[2]) { addresses[fields[1].split(separator: "@").first.map(String.init) ?? fields[1], default: []].append(cidr) }
            case "vlan" where fields.count >= 4:
                if let id = Int(fields[2]) { vlans.append((fields[1], id, fields[3])) }
            case "nft": inRules = true
            default: break
            }
        }
        guard let interface else { return .init(interface: nil, interfaceUp: false, addresses: [], droppingRules: rules) }
        var vlanAddresses: [Int: [Networking.IPv4CIDR]] = [:]
        for vlan in vlans where vlan.parent == interface { vlanAddresses[vlan.id, default: []] += addresses[vlan.name] ?? [] }
        return .init(interface: interface, interfaceUp: up, addresses: addresses[interface] ?? [], vlanAddresses: vlanAddresses, droppingRules: rules)
    }
}
