import Testing
@testable import ShepherdCore

private typealias Side = NetworkDiagnosis.Side

/// One VM on access VLAN 100 of DVS "prod", everything up, its host's two uplinks cabled to switch ports that allow all VLANs.
private func healthySide(_ vm: String, host: String, ip: String, index: Int) throws -> Side {
    Side(vm: vm, running: true, host: host,
         nic: NetworkDiagnosis.NIC(name: "nic0", mac: "52:54:00:00:00:0\(index)", portGroup: "vlan100", dvs: "prod",
                                   vlan: .access(100), linkUp: true),
         guest: NetworkDiagnosis.Guest(interface: "eth0", interfaceUp: true, addresses: [try Networking.IPv4CIDR(ip)]),
         port: NetworkDiagnosis.Port(name: Networking.tapName(nicID: "nic-\(index)"), tag: 100, trunks: []),
         uplink: NetworkDiagnosis.Uplink(bridge: "dvs-prod", members: [(name: "eth1", up: true), (name: "eth2", up: true)]),
         switchPorts: [NetworkDiagnosis.SwitchPort(port: "\(host)/1", nic: "eth1", up: true, allowed: nil),
                       NetworkDiagnosis.SwitchPort(port: "\(host)/2", nic: "eth2", up: true, allowed: nil)])
}

/// web1 (10.0.0.1/24) on host-1 and web2 (10.0.0.2/24) on host-2, after `change` breaks something.
private func diagnose(probe: Bool? = nil, _ change: (inout Side, inout Side) throws -> Void = { _, _ in }) throws -> NetworkDiagnosis.Result {
    var a = try healthySide("web1", host: "host-1", ip: "10.0.0.1/24", index: 1)
    var b = try healthySide("web2", host: "host-2", ip: "10.0.0.2/24", index: 2)
    try change(&a, &b)
    return NetworkDiagnosis.diagnose(a, b, probe: probe)
}

private func failing(_ result: NetworkDiagnosis.Result) -> [String] {
    result.hops.filter { $0.status == .fail }.map(\.name)
}

@Suite("Network diagnosis: why two VMs cannot talk")
struct NetworkDiagnosisTests {
    @Test("a healthy pair on two hosts passes every hop")
    func healthy() throws {
        let result = try diagnose()
        #expect(result.healthy)
        #expect(result.hops.allSatisfy { $0.status == .pass }, "\(result.hops)")
        #expect(result.verdict == "healthy: web1 and web2 can reach each other on every hop checked")
        #expect(Set(result.hops.map(\.name)) == ["NIC link", "guest interface", "guest IP", "guest firewall", "bridge port",
                                                  "same subnet", "VLAN", "uplink", "physical switch"])
        #expect(result.hops.filter { $0.name == "uplink" }.map(\.host) == ["host-1", "host-2"])
        #expect(result.hops.filter { $0.name == "physical switch" }.map(\.host) == ["host-1", "host-2"])
    }

    @Test("a NIC whose link is set down fails at its NIC link")
    func nicLinkDown() throws {
        let result = try diagnose { a, _ in a.nic?.linkUp = false }
        #expect(!result.healthy)
        #expect(failing(result) == ["NIC link"])
        #expect(result.verdict == "NIC link of web1: nic0 of web1 has its link set down (shepherd nic set web1 nic0 --link up)")
    }

    @Test("a guest interface that is down fails in that guest")
    func guestInterfaceDown() throws {
        let result = try diagnose { _, b in b.guest?.interfaceUp = false }
        #expect(!result.healthy)
        #expect(failing(result) == ["guest interface"])
        #expect(result.verdict == "guest interface of web2: eth0 in the guest is down (ip link set eth0 up)")
    }

    @Test("addresses in different subnets fail, naming both")
    func wrongSubnet() throws {
        let result = try diagnose { _, b in b.guest?.addresses = [try Networking.IPv4CIDR("10.0.1.2/24")] }
        #expect(!result.healthy)
        #expect(failing(result) == ["same subnet"])
        #expect(result.verdict.hasPrefix("same subnet: web1 has 10.0.0.1/24, web2 has 10.0.1.2/24: no common subnet"), "\(result.verdict)")
    }

    @Test("a guest firewall rule that drops fails, quoting the rule")
    func guestFirewall() throws {
        let result = try diagnose { _, b in b.guest?.droppingRules = ["ip protocol icmp drop"] }
        #expect(!result.healthy)
        #expect(failing(result) == ["guest firewall"])
        #expect(result.verdict == "guest firewall of web2: the guest's firewall drops traffic: ip protocol icmp drop")
    }

    @Test("port groups on different access VLANs fail at the VLAN hop")
    func vlanMismatch() throws {
        let result = try diagnose { _, b in
            b.nic?.vlan = .access(200)
            b.nic?.portGroup = "vlan200"
            b.port?.tag = 200
        }
        #expect(!result.healthy)
        #expect(failing(result) == ["VLAN"])
        #expect(result.verdict.hasPrefix("VLAN: web1 sends on VLAN 100 via 'vlan100' (access VLAN 100), web2 on VLAN 200 via 'vlan200'"),
                "\(result.verdict)")
        #expect(result.verdict.contains("different VLANs never meet"), "\(result.verdict)")
    }

    @Test("a trunk port group whose guest only has an untagged address is told to use an access port group or tag")
    func accessVersusTrunk() throws {
        let result = try diagnose { _, b in
            b.nic?.vlan = .trunk([100, 200])
            b.nic?.portGroup = "trunk"
            b.port = NetworkDiagnosis.Port(name: Networking.tapName(nicID: "nic-2"), tag: nil, trunks: [100, 200])
        }
        #expect(!result.healthy)
        #expect(failing(result) == ["VLAN"])
        #expect(result.verdict.contains("'trunk' is a trunk (100,200) but web2's guest sends untagged frames"), "\(result.verdict)")
        #expect(result.verdict.contains("put it on an access port group of VLAN 100, or tag inside the guest"), "\(result.verdict)")
    }

    @Test("every uplink of a host down fails, naming the host")
    func allUplinksDown() throws {
        let result = try diagnose { _, b in b.uplink?.members = [(name: "eth1", up: false), (name: "eth2", up: false)] }
        #expect(!result.healthy)
        #expect(result.hops.filter { $0.status == .fail }.map(\.host) == ["host-2", "host-2"])
        #expect(failing(result) == ["uplink", "physical switch"])
        #expect(result.verdict == "uplink on host-2: every uplink NIC of host-2 is down (eth1, eth2)")
    }

    @Test("one bond member down is a warning, not a failure")
    func oneUplinkDown() throws {
        let result = try diagnose { _, b in b.uplink?.members = [(name: "eth1", up: true), (name: "eth2", up: false)] }
        #expect(result.healthy)
        #expect(failing(result).isEmpty)
        let warnings = result.hops.filter { $0.status == .warn }
        #expect(warnings.map(\.name) == ["uplink"] && warnings.map(\.host) == ["host-2"])
        #expect(result.verdict == "healthy, with 1 warning(s): uplink: eth2 of host-2's bond is down; eth1 carries the traffic (no redundancy)")
    }

    @Test("a physical switch that does not allow the VLAN on a host's ports fails, naming the VLAN and the host")
    func switchDisallowsVLAN() throws {
        let result = try diagnose { _, b in
            b.switchPorts = b.switchPorts?.map { port in
                var port = port
                port.allowed = [200]
                return port
            }
        }
        #expect(!result.healthy)
        #expect(failing(result) == ["physical switch"])
        #expect(result.verdict.hasPrefix("physical switch on host-2: the physical switch does not allow VLAN 100 on host-2's ports"),
                "\(result.verdict)")
        #expect(result.verdict.contains("add VLAN 100 to those switch ports"), "\(result.verdict)")
    }

    @Test("a bridge port tagged differently from its port group fails")
    func bridgePortWrongTag() throws {
        let result = try diagnose { a, _ in a.port?.tag = 200 }
        #expect(!result.healthy)
        #expect(failing(result) == ["bridge port"])
        #expect(result.hops.first { $0.status == .fail }?.host == "host-1")
        #expect(result.verdict.hasPrefix("bridge port of web1: port \(Networking.tapName(nicID: "nic-1")) on host-1 has tag 200"),
                "\(result.verdict)")
        #expect(result.verdict.hasSuffix("but 'vlan100' is access VLAN 100"), "\(result.verdict)")
    }

    @Test("a VM that is not running fails first")
    func notRunning() throws {
        let result = try diagnose { a, _ in
            a.running = false
            a.guest = nil
            a.port = nil
        }
        #expect(!result.healthy)
        #expect(failing(result) == ["VM running"])
        #expect(result.verdict == "VM running of web1: web1 is not running")
    }

    @Test("a trunk guest with an address on its VLAN 200 interface reaches an access VLAN 200 guest")
    func trunkSubInterface() throws {
        let result = try diagnose { a, b in
            a.nic?.vlan = .trunk([100, 200])
            a.nic?.portGroup = "trunk"
            a.port = NetworkDiagnosis.Port(name: Networking.tapName(nicID: "nic-1"), tag: nil, trunks: [100, 200])
            let onVLAN200 = try Networking.IPv4CIDR("10.0.0.1/24")
            a.guest = NetworkDiagnosis.Guest(interface: "eth0", interfaceUp: true, addresses: [], vlanAddresses: [200: [onVLAN200]])
            b.nic?.vlan = .access(200)
            b.nic?.portGroup = "vlan200"
            b.port?.tag = 200
        }
        #expect(result.healthy, "\(result.verdict)")
        #expect(failing(result).isEmpty)
        #expect(result.hops.first { $0.name == "VLAN" }?.evidence.hasPrefix("both on VLAN 200") == true)
        #expect(result.hops.filter { $0.name == "physical switch" }.allSatisfy { $0.evidence.hasSuffix("allow VLAN 200") })
    }

    @Test("two VMs on one host skip the uplink and the physical switch")
    func sameHost() throws {
        let result = try diagnose { _, b in b.host = "host-1" }
        #expect(result.healthy, "\(result.verdict)")
        #expect(!result.hops.contains { $0.name == "uplink" || $0.name == "physical switch" })
        #expect(result.hops.contains { $0.name == "path" && $0.status == .pass && $0.host == "host-1" })
    }

    @Test("a probe without answer adds a failing probe hop; one with answers a passing one")
    func probe() throws {
        let silent = try diagnose(probe: false)
        #expect(!silent.healthy)
        #expect(failing(silent) == ["probe"])
        #expect(silent.hops.last?.name == "probe" && silent.hops.last?.vm == "web1")
        #expect(silent.verdict == "probe of web1: web1 got no ping answer from web2")
        let answered = try diagnose(probe: true)
        #expect(answered.healthy)
        #expect(answered.hops.last?.name == "probe" && answered.hops.last?.status == .pass)
    }
}
