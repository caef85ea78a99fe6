import Testing
@testable import ShepherdCore

/// A generator that counts: the same MACs on every run, each call's bytes different.
private struct CountingGenerator: RandomNumberGenerator {
    var value: UInt64
    mutating func next() -> UInt64 {
        value &+= 0x0123_4567_89ab_cdef
        return value
    }
}

@Suite("Networking rules: VLANs, MACs, addresses, rates and device names")
struct NetworkingTests {
    // MARK: VLAN lists

    @Test("VLAN lists and ranges read as sorted ids, each once", arguments: [
        ("100", [100]),
        ("1,4094", [1, 4094]),
        ("200-203", [200, 201, 202, 203]),
        ("7-7", [7]),
        ("300,100-101,5", [5, 100, 101, 300]),
        ("100,100,99-101", [99, 100, 101]),
        (" 10 , 20 ", [10, 20]),
    ])
    func vlanLists(text: String, ids: [Int]) throws {
        #expect(try Networking.parseVLANs(text, field: "trunks") == ids)
    }

    @Test("bad VLAN lists are refused naming the field and the rule", arguments: [
        ("0", "VLAN 0 is outside 1–4094"),
        ("4095", "VLAN 4095 is outside 1–4094"),
        ("100,4000-4095", "VLAN 4000-4095 is outside 1–4094"),
        ("10-5", "range 10-5 ends before it starts"),
        ("-", "is not a VLAN id or range"),
        ("-5", "is not a VLAN id or range"),
        ("5-", "is not a VLAN id or range"),
        ("100,-", "is not a VLAN id or range"),
        ("+5", "is not a VLAN id or range"),
        ("", "must list VLAN ids or ranges"),
        ("1,,2", "must list VLAN ids or ranges"),
        ("abc", "'abc' is not a VLAN id or range"),
        ("1-2-3", "'1-2-3' is not a VLAN id or range"),
    ])
    func badVLANLists(text: String, rule: String) {
        let error = #expect(throws: ShepherdError.self) { try Networking.parseVLANs(text, field: "trunks") }
        #expect(error?.code == .invalidField)
        #expect(error?.message.hasPrefix("trunks: ") == true && error?.message.contains(rule) == true, "\(error?.message ?? "")")
    }

    @Test("VLAN ids format as runs and read back as the same ids", arguments: [
        ([100], "100"),
        ([100, 200, 201, 202], "100,200-202"),
        ([5, 3, 4, 4, 10], "3-5,10"),
        ([1, 3, 5], "1,3,5"),
        ([1, 2, 4093, 4094], "1-2,4093-4094"),
    ])
    func formatRoundTrip(ids: [Int], text: String) throws {
        #expect(Networking.formatVLANs(ids) == text)
        #expect(try Networking.parseVLANs(text, field: "trunks") == Array(Set(ids)).sorted())
    }

    @Test("no VLAN ids format as an empty string")
    func formatEmpty() {
        #expect(Networking.formatVLANs([]) == "")
    }

    // MARK: MACs

    @Test("unicast MACs are normalised to lower case", arguments: [
        ("52:54:00:AB:cd:EF", "52:54:00:ab:cd:ef"),
        ("52:54:00:12:34:56", "52:54:00:12:34:56"),
        ("02:00:00:00:00:00", "02:00:00:00:00:00"),
        ("FE:FF:FF:FF:FF:FF", "fe:ff:ff:ff:ff:ff"),
    ])
    func macs(text: String, normalized: String) throws {
        #expect(try Networking.normalizeMAC(text) == normalized)
    }

    @Test("multicast, all-zero and malformed MACs are refused naming the field", arguments: [
        ("01:00:5e:00:00:01", "is a multicast address"),
        ("FF:FF:FF:FF:FF:FF", "is a multicast address"),
        ("00:00:00:00:00:00", "is all zeros"),
        ("52:54:00:12:34", "is not a MAC address"),
        ("52:54:00:12:34:56:78", "is not a MAC address"),
        ("52:54:0:12:34:56", "is not a MAC address"),
        ("52:54:00:12:34:567", "is not a MAC address"),
        ("525400123456", "is not a MAC address"),
        ("52-54-00-12-34-56", "is not a MAC address"),
        ("52:54:00:12:34:5g", "is not a MAC address"),
        ("", "is not a MAC address"),
    ])
    func badMACs(text: String, rule: String) {
        let error = #expect(throws: ShepherdError.self) { try Networking.normalizeMAC(text, field: "nics[0].mac") }
        #expect(error?.code == .invalidField)
        #expect(error?.message.hasPrefix("nics[0].mac: ") == true && error?.message.contains(rule) == true, "\(error?.message ?? "")")
    }

    @Test("new MACs carry QEMU's prefix, are valid, and differ from one call to the next")
    func newMACs() throws {
        var generator = CountingGenerator(value: 42)
        let first = Networking.newMAC(using: &generator)
        let second = Networking.newMAC(using: &generator)
        for mac in [first, second, Networking.newMAC()] {
            #expect(mac.hasPrefix("52:54:00:") && mac.count == 17, "\(mac)")
            #expect(try Networking.normalizeMAC(mac) == mac)
        }
        #expect(first != second)
        var replay = CountingGenerator(value: 42)
        #expect(Networking.newMAC(using: &replay) == first)
    }

    // MARK: IPv4 addresses

    @Test("an IPv4 address with its prefix reads back as written and knows its network")
    func cidr() throws {
        let address = try Networking.IPv4CIDR("10.0.0.5/24")
        #expect(address.octets == [10, 0, 0, 5] && address.prefix == 24)
        #expect(address.description == "10.0.0.5/24")
        #expect(address.address == "10.0.0.5")
        #expect(address.network == "10.0.0.0/24")
        #expect(try Networking.IPv4CIDR("192.168.37.200/20").network == "192.168.32.0/20")
        #expect(try Networking.IPv4CIDR("10.1.2.3/32").network == "10.1.2.3/32")
    }

    @Test("two addresses share a subnet only with the same prefix and network", arguments: [
        ("10.0.0.1/24", "10.0.0.2/24", true),
        ("10.0.0.1/24", "10.0.1.2/24", false),
        ("10.0.0.1/24", "10.0.0.2/25", false),
        ("192.168.32.1/20", "192.168.47.254/20", true),
        ("192.168.32.1/20", "192.168.48.1/20", false),
        ("10.0.0.0/31", "10.0.0.1/31", true),
    ])
    func sameSubnet(first: String, second: String, same: Bool) throws {
        let a = try Networking.IPv4CIDR(first), b = try Networking.IPv4CIDR(second)
        #expect(a.sameSubnet(as: b) == same)
        #expect(b.sameSubnet(as: a) == same)
    }

    @Test("network and broadcast addresses are refused up to /30", arguments: [
        ("10.0.0.0/24", "is the network address"),
        ("10.0.0.255/24", "is the broadcast address"),
        ("10.0.0.4/30", "is the network address"),
        ("10.0.0.7/30", "is the broadcast address"),
        ("172.16.0.0/12", "is the network address"),
    ])
    func edgeAddresses(text: String, rule: String) {
        let error = #expect(throws: ShepherdError.self) { try Networking.IPv4CIDR(text) }
        #expect(error?.code == .invalidField)
        #expect(error?.message == "ip: \(text) \(rule) of its subnet", "\(error?.message ?? "")")
    }

    @Test("every address of a /31 or /32 is a host", arguments: ["10.0.0.0/31", "10.0.0.1/31", "10.0.0.0/32", "10.0.0.255/32", "10.0.0.5/30"])
    func pointToPoint(text: String) throws {
        #expect(try Networking.IPv4CIDR(text).description == text)
    }

    @Test("garbage and prefixes outside 1–32 are refused naming the field", arguments: [
        "10.0.0.5", "10.0.0/24", "10.0.0.0.5/24", "10..0.5/24", "10.0.0.256/24", "10.0.0.5/0", "10.0.0.5/33", "10.0.0.5/x",
        "10.0.0.5/", "abc", "", "+10.0.0.5/24", "10.0.0.5/+24",
    ])
    func badCIDRs(text: String) {
        let error = #expect(throws: ShepherdError.self) { try Networking.IPv4CIDR(text, field: "nics[0].ip") }
        #expect(error?.code == .invalidField)
        #expect(error?.message.hasPrefix("nics[0].ip: ") == true && error?.message.contains("must be an IPv4 address") == true,
                "\(error?.message ?? "")")
    }

    // MARK: Rates

    @Test("rates read as Mbit/s, sub-Mbit rates rounded to the nearest Mbit", arguments: [
        ("100M", 100), ("1G", 1000), ("500k", 1), ("100", 100), ("100Mbit", 100), ("1Gbps", 1000), ("2.5G", 2500),
        ("1499k", 1), ("100000", 100_000),
    ])
    func rates(text: String, mbit: Int) throws {
        #expect(try Networking.parseRateMbit(text) == mbit)
    }

    @Test("bad rates are refused naming the field", arguments: [
        ("0", "must be a rate"), ("-5", "must be a rate"), ("fast", "must be a rate"), ("", "must be a rate"), ("M", "must be a rate"),
        ("200G", "200G is outside 1 Mbit/s–100 Gbit/s"), ("400k", "400k is outside 1 Mbit/s–100 Gbit/s"),
        ("inf", "must be a rate"), ("1e30", "1e30 is outside 1 Mbit/s–100 Gbit/s"),
        ("99999999999999999999", "99999999999999999999 is outside 1 Mbit/s–100 Gbit/s"),
    ])
    func badRates(text: String, rule: String) {
        let error = #expect(throws: ShepherdError.self) { try Networking.parseRateMbit(text, field: "rateMbit") }
        #expect(error?.code == .invalidField)
        #expect(error?.message.hasPrefix("rateMbit: ") == true && error?.message.contains(rule) == true, "\(error?.message ?? "")")
    }

    // MARK: Device names

    @Test("a NIC's tap name fits an interface name, is the same in every process, and differs between NICs")
    func tapNames() {
        let ids = ["nic-1", "nic-2", "0f1e2d3c-aaaa-bbbb-cccc-1234567890ab", ""]
        let names = ids.map { Networking.tapName(nicID: $0) }
        for name in names {
            #expect(name.hasPrefix("tap") && name.utf8.count <= 15, "\(name)")
            #expect(name.dropFirst(3).count == 8 && name.dropFirst(3).allSatisfy { "0123456789abcdef".contains($0) }, "\(name)")
        }
        #expect(Set(names).count == ids.count, "\(names)")
        // FNV-1a of the id, not Swift's per-process seeded hash: a restarted agent must find the same tap.
        #expect(Networking.tapName(nicID: "nic-1") == "tap387b243f")
        #expect(Networking.tapName(nicID: "nic-1") == Networking.tapName(nicID: "nic-1"))
    }

    @Test("a DVS whose name fits is bridged as dvs-NAME", arguments: [
        ("prod", "dvs-prod"), ("lab_2", "dvs-lab_2"), ("a-b-c", "dvs-a-b-c"), ("abcdefghijk", "dvs-abcdefghijk"),
    ])
    func shortBridgeNames(name: String, bridge: String) {
        #expect(Networking.bridgeName(dvs: name) == bridge)
    }

    @Test("a DVS name too long or not fit for an interface is hashed to a stable name of at most 15 bytes",
          arguments: ["production-east", "abcdefghijkl", "a.b", "two words", "vlan/100"])
    func hashedBridgeNames(name: String) {
        let bridge = Networking.bridgeName(dvs: name)
        #expect(bridge.hasPrefix("dvs-") && bridge.utf8.count <= 15 && bridge != "dvs-" + name, "\(bridge)")
        #expect(bridge.dropFirst(4).count == 8 && bridge.dropFirst(4).allSatisfy { "0123456789abcdef".contains($0) }, "\(bridge)")
        #expect(Networking.bridgeName(dvs: name) == bridge)
    }

    @Test("hashed bridge names are the same in every process and differ between DVSs")
    func hashedBridgeNamesStable() {
        #expect(Networking.bridgeName(dvs: "production-east") == "dvs-ff8af46c")
        #expect(Networking.bridgeName(dvs: "production-east") != Networking.bridgeName(dvs: "production-west"))
    }

    // MARK: Port groups and bonds

    @Test("a port group carries its access VLAN or its trunk's VLANs only", arguments: [
        (PortGroupVLAN.access(100), 100, true),
        (.access(100), 200, false),
        (.access(0), 0, true),
        (.access(0), 100, false),
        (.trunk([100, 200]), 200, true),
        (.trunk([100, 200]), 150, false),
        (.trunk([100, 200]), 0, false),
    ])
    func carries(vlan: PortGroupVLAN, frame: Int, carried: Bool) {
        #expect(vlan.carries(frame) == carried)
    }

    @Test("a port group summarises its VLANs", arguments: [
        (PortGroupVLAN.access(0), "access, untagged"),
        (.access(100), "access VLAN 100"),
        (.trunk([100, 200, 201, 202]), "trunk VLANs 100,200-202"),
    ])
    func summary(vlan: PortGroupVLAN, text: String) {
        #expect(vlan.summary == text)
    }

    @Test("bond modes map to Open vSwitch's bond_mode", arguments: [
        (BondMode.activeBackup, "active-backup"), (.balanceSLB, "balance-slb"), (.lacp, "balance-tcp"),
    ])
    func bondModes(mode: BondMode, ovs: String) {
        #expect(mode.ovsMode == ovs)
    }
}

@Suite("A DVS's uplink port on a host")
struct UplinkPortTests {
    @Test("one uplink is its own port; several are a bond named after the bridge, distinct for every DVS and within 15 bytes")
    func uplinkPorts() {
        let single = AgentWire.SwitchDefinition(dvs: "prod", bridge: Networking.bridgeName(dvs: "prod"), uplinks: ["eth1"], bondMode: .activeBackup)
        #expect(single.uplinkPort == "eth1")
        let names = ["production1", "production2", "prod", "a-very-long-switch-name"].map { name in
            AgentWire.SwitchDefinition(dvs: name, bridge: Networking.bridgeName(dvs: name), uplinks: ["eth1", "eth2"], bondMode: .lacp).uplinkPort ?? ""
        }
        #expect(Set(names).count == names.count, "\(names)")
        #expect(names.allSatisfy { $0.utf8.count <= 15 && $0.hasPrefix("bd-") }, "\(names)")
        let none = AgentWire.SwitchDefinition(dvs: "x", bridge: "dvs-x", uplinks: [], bondMode: .activeBackup)
        #expect(none.uplinkPort == nil)
    }
}
