import Foundation

/// The demo's (and tests') physical switch: its own network namespace with an Open vSwitch
/// bridge, and each host namespace wired to it by veth pairs that appear in the host as its
/// uplink NICs (eth1, eth2). Switch ports are trunks; each can be limited to a list of VLANs
/// ("the switch does not allow VLAN 300 on host-2's port", the seed's fault) or cut.
public struct PhysicalSwitch: Sendable {
    public let namespace: String
    public let bridge = "pswitch"
    public let ovs: OVS

    public init(namespace: String) {
        self.namespace = namespace
        ovs = .managed(directory: "/run/shepherd/ovs-" + String(Files.stableHash("pswitch:" + namespace), radix: 16))
    }

    /// The switch port a host's NIC is cabled to (15 bytes at most).
    public static func port(hostIndex: Int, nic: String) -> String { "h\(hostIndex)-\(nic)" }

    /// Makes the namespace, starts the switch's OVS in it and its bridge.
    public func create() async throws {
        try await Net.addNamespace(namespace)
        try await Net.setLink("lo", up: true, inNamespace: namespace)
        try await ovs.start(namespace: namespace)
        try await ovs.addBridge(bridge)
        // The bridge's own device up (in the switch's namespace), as a powered switch.
        try await Net.setLink(bridge, up: true, inNamespace: namespace)
    }

    /// Cables host `hostIndex` (its namespace) to the switch with one veth per NIC name; the
    /// switch side is a trunk of every VLAN until `allow` says otherwise. Each port records which
    /// host NIC it is cabled to (what a real switch learns by LLDP).
    public func connect(hostNamespace: String, hostIndex: Int, hostName: String, nics: [String]) async throws {
        for nic in nics {
            let port = Self.port(hostIndex: hostIndex, nic: nic)
            try await Net.addVethPair(nic, inNamespace: hostNamespace, port, inNamespace: namespace)
            try await ovs.addPort(port, bridge: bridge, vlan: .init(tag: nil, trunks: []),
                                  externalIDs: ["lldp-host": hostName, "lldp-port": nic])
        }
    }

    /// Every port with the host NIC cabled to it, its state and the VLANs it allows (nil: all).
    public static func neighbors(of ovs: OVS, bridge: String = "pswitch") async throws -> [Neighbor] {
        try await ovs.ports(bridge: bridge).compactMap { port in
            guard let interface = port.interfaces.first, let host = interface.externalIDs["lldp-host"],
                  let nic = interface.externalIDs["lldp-port"] else { return nil }
            return Neighbor(port: port.name, host: host, nic: nic, up: interface.linkUp && interface.adminUp,
                            allowed: port.trunks.isEmpty ? nil : port.trunks)
        }
    }

    public struct Neighbor: Sendable, Equatable {
        public var port: String
        public var host: String
        public var nic: String
        public var up: Bool
        public var allowed: [Int]?
    }

    /// Limits a switch port to these VLANs (nil: all).
    public func allow(port: String, vlans: [Int]?) async throws {
        try Net.checkLinkName(port)
        try await ovs.vsctl(["set", "Port", port, vlans.map { "trunks=" + $0.map(String.init).joined(separator: ",") } ?? "trunks=[]"])
    }

    /// Takes a switch port down or up (the host's NIC loses or regains its carrier). Going down,
    /// the switch forgets the MACs it learned, as a physical switch does on a link-down: OVS
    /// alone keeps forwarding to the dead port from its flow cache for up to ~5 s (measured:
    /// 40–70 of 100 pings lost over a bond failover without the flush, 0–1 with it).
    public func setPort(_ port: String, up: Bool) async throws {
        try await Net.setLink(port, up: up, inNamespace: namespace)
        if !up { try await ovs.appctl(["fdb/flush", bridge]) }
    }

    /// Stops its OVS and deletes the namespace (the veth pairs go with it).
    public func destroy() async {
        await ovs.stop()
        try? await Net.deleteNamespace(namespace)
    }
}
