import Foundation

/// Networking rules (distributed virtual switches, port groups, NICs): pure, table-tested.
public enum Networking {
    /// VLAN ids a port group may carry (0 is "untagged" for an access port group).
    public static let vlanIDs = 1...4094
    /// At most this many NICs per VM (PCI slots 5–14 of its bus; disks use 16–31).
    public static let nicSlots = 5...14
    /// The OUI of the MACs Shepherd makes (QEMU's locally administered 52:54:00).
    public static let macPrefix = "52:54:00"

    /// "100,200-210" → [100, 200, …, 210] (sorted, each once); every id within 1–4094.
    public static func parseVLANs(_ text: String, field: String) throws -> [Int] {
        var result = Set<Int>()
        let items = text.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
        guard !text.isEmpty, !items.contains(where: \.isEmpty) else {
            throw ShepherdError.invalidField(field, "'\(text)' must list VLAN ids or ranges, such as 100,200-210")
        }
        for item in items {
            let parts = item.split(separator: "-", maxSplits: 1, omittingEmptySubsequences: false)
            let bounds = parts.map { part in part.allSatisfy(\.isASCIIDigit) && !part.isEmpty ? Int(part) : nil }
            guard let low = bounds.first ?? nil, let high = bounds.last ?? nil else {
                throw ShepherdError.invalidField(field, "'\(item)' is not a VLAN id or range (such as 200-210)")
            }
            guard vlanIDs.contains(low), vlanIDs.contains(high) else {
                throw ShepherdError.invalidField(field, "VLAN \(item) is outside \(vlanIDs.lowerBound)–\(vlanIDs.upperBound)")
            }
            guard low <= high else { throw ShepherdError.invalidField(field, "range \(item) ends before it starts") }
            result.formUnion(low...high)
        }
        return result.sorted()
    }

    /// [100, 200, 201, 202] → "100,200-202".
    public static func formatVLANs(_ vlans: [Int]) -> String {
        var parts: [String] = []
        var index = 0
        let sorted = Array(Set(vlans)).sorted()
        while index < sorted.count {
            var end = index
            while end + 1 < sorted.count, sorted[end + 1] == sorted[end] + 1 { end += 1 }
            parts.append(end == index ? "\(sorted[index])" : "\(sorted[index])-\(sorted[end])")
            index = end + 1
        }
        return parts.joined(separator: ",")
    }

    /// A MAC "52:54:00:xx:xx:xx" from three random bytes.
    public static func newMAC<G: RandomNumberGenerator>(using generator: inout G) -> String {
        macPrefix + (0..<3).map { _ in ":" + hex(UInt8.random(in: 0...255, using: &generator)) }.joined()
    }

    public static func newMAC() -> String {
        var generator = SystemRandomNumberGenerator()
        return newMAC(using: &generator)
    }

    private static func hex(_ byte: UInt8) -> String {
        let digits = Array("0123456789abcdef")
        return String([digits[Int(byte >> 4)], digits[Int(byte & 0xf)]])
    }

    /// A unicast MAC in colon form, lower-cased; refuses multicast and all-zero addresses.
    public static func normalizeMAC(_ text: String, field: String = "mac") throws -> String {
        let parts = text.lowercased().split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 6, parts.allSatisfy({ $0.count == 2 && $0.allSatisfy { $0.isASCII && $0.isHexDigit } }),
              let first = UInt8(parts[0], radix: 16) else {
            throw ShepherdError.invalidField(field, "'\(text)' is not a MAC address such as 52:54:00:12:34:56")
        }
        guard first & 1 == 0 else { throw ShepherdError.invalidField(field, "'\(text)' is a multicast address; a NIC needs a unicast one") }
        guard parts.contains(where: { $0 != "00" }) else { throw ShepherdError.invalidField(field, "'\(text)' is all zeros") }
        return parts.joined(separator: ":")
    }

    /// An IPv4 address with its prefix length.
    public struct IPv4CIDR: Sendable, Equatable, CustomStringConvertible {
        public var octets: [UInt8]
        public var prefix: Int
        public var description: String { octets.map(String.init).joined(separator: ".") + "/\(prefix)" }
        public var address: String { octets.map(String.init).joined(separator: ".") }
        var value: UInt32 { octets.reduce(0) { $0 << 8 | UInt32($1) } }
        var mask: UInt32 { prefix == 0 ? 0 : UInt32.max << (32 - prefix) }

        /// Parses "10.0.0.5/24"; refuses the network and broadcast addresses of prefixes up to /30.
        public init(_ text: String, field: String = "ip") throws {
            let parts = text.split(separator: "/", maxSplits: 1)
            func number<T: FixedWidthInteger>(_ text: Substring) -> T? { !text.isEmpty && text.allSatisfy(\.isASCIIDigit) ? T(text) : nil }
            let octets: [UInt8?] = parts.first.map { $0.split(separator: ".", omittingEmptySubsequences: false).map { number($0) } } ?? []
            guard parts.count == 2, octets.count == 4, octets.allSatisfy({ $0 != nil }), let prefix: Int = number(parts[1]), (1...32).contains(prefix) else {
                throw ShepherdError.invalidField(field, "'\(text)' must be an IPv4 address with its prefix length, such as 10.0.0.5/24")
            }
            self.octets = octets.map { $0! }
            self.prefix = prefix
            let host = value & ~mask
            if prefix <= 30, host == 0 || host == ~mask {
                throw ShepherdError.invalidField(field, "\(text) is the \(host == 0 ? "network" : "broadcast") address of its subnet")
            }
        }

        /// Both addresses lie in one subnet as each of them sees it (same prefix and network).
        public func sameSubnet(as other: IPv4CIDR) -> Bool {
            prefix == other.prefix && value & mask == other.value & other.mask
        }

        public var network: String {
            let network = value & mask
            return [24, 16, 8, 0].map { String(network >> UInt32($0) & 0xff) }.joined(separator: ".") + "/\(prefix)"
        }
    }

    /// "100M", "1G", "500k" or a bare number of Mbit/s → Mbit/s (1–100000).
    public static func parseRateMbit(_ text: String, field: String = "rate") throws -> Int {
        let lowered = text.lowercased().replacingOccurrences(of: "bit", with: "").replacingOccurrences(of: "bps", with: "")
        let multipliers: [(String, Double)] = [("g", 1000), ("m", 1), ("k", 0.001)]
        var number = lowered
        var factor = 1.0
        for (suffix, value) in multipliers where lowered.hasSuffix(suffix) {
            number = String(lowered.dropLast())
            factor = value
            break
        }
        guard let amount = Double(number), amount.isFinite, amount > 0 else {
            throw ShepherdError.invalidField(field, "'\(text)' must be a rate such as 100M (Mbit/s) or 1G")
        }
        let rounded = (amount * factor).rounded()
        guard rounded >= 1, rounded <= 100_000 else {
            throw ShepherdError.invalidField(field, "\(text) is outside 1 Mbit/s–100 Gbit/s")
        }
        return Int(rounded)
    }

    /// The tap device of a NIC on its host (15 bytes at most): stable, so a restarted agent finds it.
    public static func tapName(nicID: String) -> String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in nicID.utf8 { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
        return "tap" + String(String(hash, radix: 16).suffix(8)).leftPadded(to: 8)
    }

    /// The OVS bridge of a DVS on every host: "dvs-NAME" when it fits in an interface name.
    public static func bridgeName(dvs name: String) -> String {
        let candidate = "dvs-" + name
        if candidate.utf8.count <= 15, candidate.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }) { return candidate }
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in name.utf8 { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
        return "dvs-" + String(String(hash, radix: 16).suffix(8)).leftPadded(to: 8)
    }
}

/// How a DVS bonds a host's uplinks when it has more than one.
public enum BondMode: String, Codable, Sendable, CaseIterable {
    /// One member carries traffic, another takes over when it fails (no switch support needed).
    case activeBackup = "active-backup"
    /// Traffic spread by source MAC and VLAN (no switch support needed).
    case balanceSLB = "balance-slb"
    /// 802.3ad link aggregation: the switch must speak LACP.
    case lacp

    /// Open vSwitch's bond_mode for it.
    public var ovsMode: String { self == .lacp ? "balance-tcp" : rawValue }
}

/// What a port group does with VLANs.
public enum PortGroupVLAN: Sendable, Equatable {
    /// The port tags the VM's frames with this VLAN and strips it towards the VM (0: untagged).
    case access(Int)
    /// The VM tags its own frames; these VLANs pass.
    case trunk([Int])

    public var summary: String {
        switch self {
        case .access(0): "access, untagged"
        case .access(let vlan): "access VLAN \(vlan)"
        case .trunk(let vlans): "trunk VLANs \(Networking.formatVLANs(vlans))"
        }
    }

    /// Whether this port group carries frames of `vlan`.
    public func carries(_ vlan: Int) -> Bool {
        switch self {
        case .access(let own): own == vlan
        case .trunk(let vlans): vlans.contains(vlan)
        }
    }
}

private extension Character {
    var isASCIIDigit: Bool { isASCII && isNumber }
}

private extension String {
    func leftPadded(to length: Int) -> String { String(repeating: "0", count: max(0, length - count)) + self }
}

extension AgentWire {
    /// One NIC of a VM as its host runs it: a virtio-net device on a tap in the DVS's bridge.
    public struct NICDefinition: Codable, Sendable, Equatable {
        public var id: String
        /// The NIC's name in Shepherd ("nic0"…), for messages.
        public var name: String
        public var mac: String
        /// The OVS bridge of its DVS on every host.
        public var bridge: String
        /// The port group's VLAN: a tag (access) or the VLANs a trunk passes.
        public var vlanTag: Int?
        public var trunks: [Int]
        /// The cable: false keeps the device but the guest sees no carrier.
        public var linkUp: Bool
        /// Configured in the guest through its tools ("10.0.0.5/24").
        public var ip: String?
        /// Traffic the VM sends is policed to this (Mbit/s); nil: unlimited.
        public var rateMbit: Int?
        /// Fixed PCI slot (the same on a migration target).
        public var slot: Int

        public init(id: String, name: String, mac: String, bridge: String, vlanTag: Int?, trunks: [Int], linkUp: Bool,
                    ip: String?, rateMbit: Int?, slot: Int) {
            self.id = id; self.name = name; self.mac = mac; self.bridge = bridge; self.vlanTag = vlanTag; self.trunks = trunks
            self.linkUp = linkUp; self.ip = ip; self.rateMbit = rateMbit; self.slot = slot
        }

        public var tap: String { Networking.tapName(nicID: id) }
    }

    /// A DVS as one host carries it: its bridge and the host NICs bonded or not as its uplink.
    public struct SwitchDefinition: Codable, Sendable, Equatable {
        public var dvs: String
        public var bridge: String
        public var uplinks: [String]
        public var bondMode: BondMode
        public init(dvs: String, bridge: String, uplinks: [String], bondMode: BondMode) {
            self.dvs = dvs; self.bridge = bridge; self.uplinks = uplinks; self.bondMode = bondMode
        }
        /// The uplink port's name on the bridge: the NIC itself, or a bond of several.
        public var uplinkPort: String? {
            // "bd-" + the bridge's own suffix: unique per host as the bridges are, and within 15 bytes.
            uplinks.count > 1 ? "bd-" + String(bridge.dropFirst(4)) : uplinks.first
        }
    }

    /// A host's network as its agent sees it now.
    public struct HostNetwork: Codable, Sendable, Equatable {
        /// "managed" (the agent runs its own OVS), "system", or why there is none.
        public var ovs: String
        public var ovsRunning: Bool
        /// The NICs a new DVS uses on this host unless told otherwise.
        public var defaultUplinks: [String]
        /// Physical-side NICs of the host with their link state.
        public var nics: [HostNIC]
        public var switches: [SwitchState]
        public init(ovs: String, ovsRunning: Bool, defaultUplinks: [String], nics: [HostNIC], switches: [SwitchState]) {
            self.ovs = ovs; self.ovsRunning = ovsRunning; self.defaultUplinks = defaultUplinks; self.nics = nics; self.switches = switches
        }
    }

    public struct HostNIC: Codable, Sendable, Equatable {
        public var name: String
        /// The kernel's operational state ("up", "down", "lowerlayerdown"…).
        public var state: String
        public init(name: String, state: String) { self.name = name; self.state = state }
    }

    /// One bridge as it is: the wanted definition the agent keeps, and what OVS has.
    public struct SwitchState: Codable, Sendable, Equatable {
        public var wanted: SwitchDefinition?
        public var bridge: String
        public var exists: Bool
        public var ports: [SwitchPort]
        public init(wanted: SwitchDefinition?, bridge: String, exists: Bool, ports: [SwitchPort]) {
            self.wanted = wanted; self.bridge = bridge; self.exists = exists; self.ports = ports
        }
    }

    public struct SwitchPort: Codable, Sendable, Equatable {
        public var name: String
        public var vlanTag: Int?
        public var trunks: [Int]
        public var bondMode: String?
        /// Member interfaces with their link state ("up"/"down") as OVS sees them.
        public var members: [HostNIC]
        /// The VM NIC on this port, if any.
        public var nicID: String?
        public var error: String?
        public init(name: String, vlanTag: Int?, trunks: [Int], bondMode: String?, members: [HostNIC], nicID: String?, error: String?) {
            self.name = name; self.vlanTag = vlanTag; self.trunks = trunks; self.bondMode = bondMode; self.members = members
            self.nicID = nicID; self.error = error
        }
    }
}
