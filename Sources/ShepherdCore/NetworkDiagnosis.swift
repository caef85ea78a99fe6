/// "Why can't these two VMs talk?" — the seed's checklist (两虚拟机不通) as a pure function:
/// the manager gathers what each guest, host bridge, uplink and the physical switch say, and
/// this walks the path from the inside out, one hop at a time, each with the evidence seen.
/// The first failing hop is the verdict.
public enum NetworkDiagnosis {
    /// One VM's side as observed.
    public struct Side: Sendable, Equatable {
        public var vm: String
        public var running: Bool
        public var host: String
        /// The NIC checked (the first one on a port group the other side shares a DVS with); nil: none.
        public var nic: NIC?
        /// What the guest said through its tools; nil: they did not answer.
        public var guest: Guest?
        /// The NIC's port on the host bridge; nil: no such port.
        public var port: Port?
        /// The host's bridge of the NIC's DVS and its uplink; nil: the bridge is missing.
        public var uplink: Uplink?
        /// The physical switch's ports this host's uplink NICs are cabled to; nil: the switch is not known to Shepherd.
        public var switchPorts: [SwitchPort]?

        public init(vm: String, running: Bool, host: String, nic: NIC? = nil, guest: Guest? = nil, port: Port? = nil,
                    uplink: Uplink? = nil, switchPorts: [SwitchPort]? = nil) {
            self.vm = vm; self.running = running; self.host = host; self.nic = nic; self.guest = guest; self.port = port
            self.uplink = uplink; self.switchPorts = switchPorts
        }
    }

    public struct NIC: Sendable, Equatable {
        public var name: String
        public var mac: String
        public var portGroup: String
        public var dvs: String
        public var vlan: PortGroupVLAN
        /// The cable as configured (nic set --link).
        public var linkUp: Bool
        public init(name: String, mac: String, portGroup: String, dvs: String, vlan: PortGroupVLAN, linkUp: Bool) {
            self.name = name; self.mac = mac; self.portGroup = portGroup; self.dvs = dvs; self.vlan = vlan; self.linkUp = linkUp
        }
    }

    public struct Guest: Sendable, Equatable {
        /// The guest's interface with the NIC's MAC; nil: the guest has none (driver, hot-plug).
        public var interface: String?
        public var interfaceUp: Bool
        /// IPv4 addresses with prefix on the NIC's interface (untagged) and on VLAN interfaces over it, by VLAN.
        public var addresses: [Networking.IPv4CIDR]
        public var vlanAddresses: [Int: [Networking.IPv4CIDR]]
        /// Firewall rules that drop or reject (nft), as the guest lists them.
        public var droppingRules: [String]
        public init(interface: String?, interfaceUp: Bool, addresses: [Networking.IPv4CIDR], vlanAddresses: [Int: [Networking.IPv4CIDR]] = [:],
                    droppingRules: [String] = []) {
            self.interface = interface; self.interfaceUp = interfaceUp; self.addresses = addresses
            self.vlanAddresses = vlanAddresses; self.droppingRules = droppingRules
        }
    }

    public struct Port: Sendable, Equatable {
        public var name: String
        public var tag: Int?
        public var trunks: [Int]
        public var error: String?
        public init(name: String, tag: Int?, trunks: [Int], error: String? = nil) {
            self.name = name; self.tag = tag; self.trunks = trunks; self.error = error
        }
    }

    public struct Uplink: Sendable, Equatable {
        public var bridge: String
        /// Its uplink NICs with whether each has a carrier; empty: no uplink.
        public var members: [(name: String, up: Bool)]
        public init(bridge: String, members: [(name: String, up: Bool)]) { self.bridge = bridge; self.members = members }
        public static func == (a: Uplink, b: Uplink) -> Bool {
            a.bridge == b.bridge && a.members.map(\.name) == b.members.map(\.name) && a.members.map(\.up) == b.members.map(\.up)
        }
    }

    public struct SwitchPort: Sendable, Equatable {
        public var port: String
        /// The host NIC cabled to it.
        public var nic: String
        public var up: Bool
        /// VLANs the port allows; nil: all.
        public var allowed: [Int]?
        public init(port: String, nic: String, up: Bool, allowed: [Int]?) { self.port = port; self.nic = nic; self.up = up; self.allowed = allowed }
    }

    public enum Status: String, Sendable, Codable { case pass, warn, fail, skip }

    public struct Hop: Sendable, Equatable {
        public var name: String
        public var vm: String?
        public var host: String?
        public var status: Status
        public var evidence: String
        public init(_ name: String, vm: String? = nil, host: String? = nil, _ status: Status, _ evidence: String) {
            self.name = name; self.vm = vm; self.host = host; self.status = status; self.evidence = evidence
        }
    }

    public struct Result: Sendable, Equatable {
        public var hops: [Hop]
        public var healthy: Bool
        public var verdict: String
    }

    /// The VLAN a side's traffic to the other travels on: the access VLAN, or for a trunk the
    /// VLAN of the guest's VLAN interface that holds an address in the other side's subnet.
    static func vlan(of side: Side, towards other: Side) -> Int? {
        guard let nic = side.nic else { return nil }
        switch nic.vlan {
        case .access(let vlan): return vlan
        case .trunk:
            let theirs = other.guest.map(allAddresses) ?? []
            let vlans = side.guest?.vlanAddresses.sorted { $0.key < $1.key } ?? []
            return vlans.first { _, mine in mine.contains { m in theirs.contains { m.sameSubnet(as: $0) } } }?.key ?? vlans.first?.key
        }
    }

    public static func allAddresses(_ guest: Guest) -> [Networking.IPv4CIDR] { guest.addresses + guest.vlanAddresses.values.flatMap { $0 } }

    /// `probe`: whether A's guest got an answer from B's address (nil: not tried).
    public static func diagnose(_ a: Side, _ b: Side, probe: Bool? = nil) -> Result {
        var hops: [Hop] = []
        for side in [a, b] { hops += inside(side) }
        let other = { (side: Side) in side.vm == a.vm ? b : a }
        // Addresses: one subnet between them.
        if let ga = a.guest, let gb = b.guest, !allAddresses(ga).isEmpty, !allAddresses(gb).isEmpty {
            let pairs = allAddresses(ga).flatMap { x in allAddresses(gb).map { (x, $0) } }
            if let match = pairs.first(where: { $0.0.sameSubnet(as: $0.1) }) {
                hops.append(Hop("same subnet", .pass, "\(a.vm) \(match.0) and \(b.vm) \(match.1) are both in \(match.0.network)"))
            } else {
                hops.append(Hop("same subnet", .fail, "\(a.vm) has \(allAddresses(ga).map(\.description).joined(separator: ", ")), \(b.vm) has \(allAddresses(gb).map(\.description).joined(separator: ", ")): no common subnet and no gateway between them — fix one address (shepherd nic set VM NIC --ip …)"))
            }
        }
        // VLANs: both sides' port groups carry one VLAN.
        if let na = a.nic, let nb = b.nic {
            if na.dvs != nb.dvs {
                hops.append(Hop("same DVS", .fail, "\(a.vm) is on DVS '\(na.dvs)', \(b.vm) on '\(nb.dvs)': separate switches"))
            }
            let va = vlan(of: a, towards: b), vb = vlan(of: b, towards: a)
            switch (va, vb) {
            case (let x?, let y?) where x == y && nb.vlan.carries(x) && na.vlan.carries(y):
                hops.append(Hop("VLAN", .pass, "both on VLAN \(x == 0 ? "untagged" : String(x)): '\(na.portGroup)' (\(na.vlan.summary)) and '\(nb.portGroup)' (\(nb.vlan.summary))"))
            case (let x, let y):
                let hint = mismatchHint(a, b, x, y)
                hops.append(Hop("VLAN", .fail, "\(a.vm) sends on \(describe(x)) via '\(na.portGroup)' (\(na.vlan.summary)), \(b.vm) on \(describe(y)) via '\(nb.portGroup)' (\(nb.vlan.summary)): \(hint)"))
            }
        }
        // The way between hosts: bridges, uplinks, the physical switch.
        if a.host == b.host {
            hops.append(Hop("path", host: a.host, .pass, "both on host \(a.host): traffic stays in its bridge"))
        } else {
            for side in [a, b] { hops += between(side, vlan: vlan(of: side, towards: other(side))) }
        }
        if let probe {
            hops.append(Hop("probe", vm: a.vm, probe ? .pass : .fail,
                            probe ? "\(a.vm) got ping answers from \(b.vm)" : "\(a.vm) got no ping answer from \(b.vm)"))
        }
        let failing = hops.first { $0.status == .fail }
        let verdict: String
        if let failing {
            verdict = "\(failing.name)\(failing.vm.map { " of \($0)" } ?? failing.host.map { " on \($0)" } ?? ""): \(failing.evidence)"
        } else {
            let warnings = hops.filter { $0.status == .warn }
            verdict = warnings.isEmpty ? "healthy: \(a.vm) and \(b.vm) can reach each other on every hop checked"
                : "healthy, with \(warnings.count) warning(s): " + warnings.map { "\($0.name): \($0.evidence)" }.joined(separator: "; ")
        }
        return Result(hops: hops, healthy: failing == nil, verdict: verdict)
    }

    static func describe(_ vlan: Int?) -> String {
        switch vlan {
        case nil: "no VLAN (the guest has no VLAN interface with an address)"
        case 0?: "untagged frames"
        case let v?: "VLAN \(v)"
        }
    }

    static func mismatchHint(_ a: Side, _ b: Side, _ va: Int?, _ vb: Int?) -> String {
        guard let na = a.nic, let nb = b.nic else { return "" }
        // Access vs trunk: the trunk side's guest sends untagged, or the access side is on another VLAN.
        for (side, nic, mine, theirs) in [(a, na, va, vb), (b, nb, vb, va)] {
            if case .trunk(let vlans) = nic.vlan, side.guest?.vlanAddresses.isEmpty ?? true, side.guest?.addresses.isEmpty == false {
                return "'\(nic.portGroup)' is a trunk (\(Networking.formatVLANs(vlans))) but \(side.vm)'s guest sends untagged frames: put it on an access port group of \(theirs.map { "VLAN \($0)" } ?? "the other's VLAN"), or tag inside the guest"
            }
            if case .trunk(let vlans) = nic.vlan, let theirs, !vlans.contains(theirs) {
                return "trunk '\(nic.portGroup)' does not pass VLAN \(theirs)"
            }
            _ = mine
        }
        return "different VLANs never meet: put both NICs on port groups of one VLAN (shepherd nic set VM NIC --portgroup …)"
    }

    static func inside(_ side: Side) -> [Hop] {
        var hops: [Hop] = []
        let vm = side.vm
        guard side.running else { return [Hop("VM running", vm: vm, .fail, "\(vm) is not running")] }
        guard let nic = side.nic else { return [Hop("NIC", vm: vm, .fail, "\(vm) has no NIC on a port group (shepherd nic add \(vm) --portgroup …)")] }
        hops.append(nic.linkUp ? Hop("NIC link", vm: vm, .pass, "\(nic.name) (\(nic.mac)) on '\(nic.portGroup)' has its link up")
                    : Hop("NIC link", vm: vm, .fail, "\(nic.name) of \(vm) has its link set down (shepherd nic set \(vm) \(nic.name) --link up)"))
        if let guest = side.guest {
            if let interface = guest.interface {
                hops.append(guest.interfaceUp ? Hop("guest interface", vm: vm, .pass, "\(interface) in the guest carries \(nic.mac) and is up")
                            : Hop("guest interface", vm: vm, .fail, "\(interface) in the guest is down (ip link set \(interface) up)"))
                let addresses = allAddresses(guest)
                hops.append(addresses.isEmpty ? Hop("guest IP", vm: vm, .fail, "\(interface) has no IPv4 address (shepherd nic set \(vm) \(nic.name) --ip …)")
                            : Hop("guest IP", vm: vm, .pass, "\(addresses.map(\.description).joined(separator: ", "))"))
            } else {
                hops.append(Hop("guest interface", vm: vm, .fail, "the guest has no interface with MAC \(nic.mac) (no virtio-net driver, or the hot-plug was not seen)"))
            }
            hops.append(guest.droppingRules.isEmpty ? Hop("guest firewall", vm: vm, .pass, "no nftables rule drops or rejects")
                        : Hop("guest firewall", vm: vm, .fail, "the guest's firewall drops traffic: \(guest.droppingRules.prefix(3).joined(separator: "; "))"))
        } else {
            hops.append(Hop("guest", vm: vm, .skip, "the tools of \(vm) did not answer: guest interface, address and firewall not checked"))
        }
        if let port = side.port {
            if let error = port.error {
                hops.append(Hop("bridge port", vm: vm, host: side.host, .fail, "port \(port.name) on \(side.host): \(error)"))
            } else {
                let expected: (Int?, [Int]) = switch nic.vlan {
                case .access(0): (nil, [0])
                case .access(let v): (v, [])
                case .trunk(let vlans): (nil, vlans)
                }
                let actual = port.tag.map { "tag \($0)" } ?? (port.trunks.isEmpty ? "all VLANs" : "trunks \(Networking.formatVLANs(port.trunks))")
                hops.append(port.tag == expected.0 && port.trunks == expected.1
                            ? Hop("bridge port", vm: vm, host: side.host, .pass, "port \(port.name) on \(side.host): \(actual), as '\(nic.portGroup)' says")
                            : Hop("bridge port", vm: vm, host: side.host, .fail, "port \(port.name) on \(side.host) has \(actual), but '\(nic.portGroup)' is \(nic.vlan.summary)"))
            }
        } else {
            hops.append(Hop("bridge port", vm: vm, host: side.host, .fail, "\(nic.name) of \(vm) has no port on its DVS bridge on \(side.host)"))
        }
        return hops
    }

    static func between(_ side: Side, vlan: Int?) -> [Hop] {
        var hops: [Hop] = []
        let host = side.host
        guard let uplink = side.uplink else {
            return [Hop("host DVS", host: host, .fail, "\(host) has no bridge for DVS '\(side.nic?.dvs ?? "?")'")]
        }
        let up = uplink.members.filter(\.up), down = uplink.members.filter { !$0.up }
        if uplink.members.isEmpty {
            hops.append(Hop("uplink", host: host, .fail, "bridge \(uplink.bridge) on \(host) has no uplink: traffic cannot leave the host"))
        } else if up.isEmpty {
            hops.append(Hop("uplink", host: host, .fail, "every uplink NIC of \(host) is down (\(down.map(\.name).joined(separator: ", ")))"))
        } else if !down.isEmpty {
            hops.append(Hop("uplink", host: host, .warn, "\(down.map(\.name).joined(separator: ", ")) of \(host)'s bond is down; \(up.map(\.name).joined(separator: ", ")) carries the traffic (no redundancy)"))
        } else {
            hops.append(Hop("uplink", host: host, .pass, "\(up.map(\.name).joined(separator: ", ")) up"))
        }
        guard let ports = side.switchPorts else {
            hops.append(Hop("physical switch", host: host, .skip, "no physical switch registered: its ports were not checked"))
            return hops
        }
        guard let vlan else { return hops }
        let usable = ports.filter { port in up.contains { $0.name == port.nic } && port.up }
        let allowing = usable.filter { $0.allowed.map { $0.contains(vlan) || vlan == 0 } ?? true }
        if usable.isEmpty {
            hops.append(Hop("physical switch", host: host, .fail, "no switch port cabled to \(host)'s uplinks is up"))
        } else if allowing.isEmpty {
            let list = usable.map { "\($0.port) allows \($0.allowed.map(Networking.formatVLANs) ?? "all")" }.joined(separator: "; ")
            hops.append(Hop("physical switch", host: host, .fail, "the physical switch does not allow VLAN \(vlan) on \(host)'s ports (\(list)): add VLAN \(vlan) to those switch ports"))
        } else if allowing.count < usable.count {
            hops.append(Hop("physical switch", host: host, .warn, "VLAN \(vlan) is allowed on \(allowing.map(\.port).joined(separator: ", ")) but not on \(usable.filter { !allowing.contains($0) }.map(\.port).joined(separator: ", ")): a failover would cut it"))
        } else {
            hops.append(Hop("physical switch", host: host, .pass, "\(allowing.map(\.port).joined(separator: ", ")) allow VLAN \(vlan)"))
        }
        return hops
    }
}
