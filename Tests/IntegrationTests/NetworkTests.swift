import Foundation
import HostKit
import Testing
import TestSupport

extension RealGuests {
/// Distributed virtual switches on real guests: two host namespaces, each with its own Open
/// vSwitch, cabled (eth1+eth2, bonded) to a physical switch namespace; guests ping and talk TCP
/// as a user would check it.
@Suite("Networking")
struct NetworkTests {
    /// A JSON request that must answer `status`; returns the decoded body.
    @discardableResult
    static func call(_ cluster: TestCluster, _ method: String, _ path: String, _ body: String? = nil, expect status: Int) async throws -> Any {
        let (code, text) = try await cluster.raw(method, path, token: cluster.adminToken, body: body)
        try #require(code == status, "\(method) \(path) answered \(code): \(text)")
        return text.isEmpty ? [:] as [String: Any] : try JSONSerialization.jsonObject(with: Data(text.utf8), options: [.fragmentsAllowed])
    }

    /// Runs a NIC task (add/set/remove) and waits for it to succeed.
    static func nicTask(_ cluster: TestCluster, _ method: String, _ path: String, _ body: String? = nil) async throws {
        let answer = try await call(cluster, method, path, body, expect: 202) as? [String: Any]
        let id = try #require(answer?["id"] as? String)
        let done = try await cluster.wait(try await cluster.task(id))
        try #require(done.state == .succeeded, "\(method) \(path): \(done.error?.message ?? done.message)")
    }

    /// Whether `vm` gets an answer from `address` (3 pings, 1 s each).
    static func pings(_ cluster: TestCluster, _ vm: String, _ address: String, count: Int = 3) async throws -> Bool {
        try await cluster.exec(vm, ["ping", "-c", "\(count)", "-W", "1", address]).exitCode == 0
    }

    static func waitForPing(_ cluster: TestCluster, _ vm: String, _ address: String, timeout: Duration = .seconds(20)) async throws -> Bool {
        let started = ContinuousClock.now
        while ContinuousClock.now - started < timeout {
            if try await pings(cluster, vm, address, count: 1) { return true }
        }
        return false
    }

    static func bootWithNIC(_ cluster: TestCluster, _ vm: String, host: String, portGroup: String, ip: String?, hotplug: Bool) async throws {
        try #require(try await cluster.createVM(vm, host: host).state == .succeeded)
        let body = ip.map { #"{"portGroup":"\#(portGroup)","ip":"\#($0)"}"# } ?? #"{"portGroup":"\#(portGroup)"}"#
        if !hotplug { try await nicTask(cluster, "POST", "/api/v1/vms/\(vm)/nics", body) }
        try #require(try await cluster.start(vm).state == .succeeded)
        _ = try await cluster.waitForVM(vm, timeout: .seconds(90)) { $0.toolsStatus == .running }
        if hotplug { try await nicTask(cluster, "POST", "/api/v1/vms/\(vm)/nics", body) }
    }

    @Test("same VLAN pings on one host and across hosts, other VLANs do not; a trunk guest tags VLAN 200 itself; TCP works; a cable pulled and a switch port not allowing the VLAN cut it")
    func vlanMatrix() async throws {
        try await TestCluster.with(driver: "qemu", hosts: 2, namespaced: ["host-1", "host-2"], network: true) { cluster in
            let dvs = try await Self.call(cluster, "POST", "/api/v1/dvs", #"{"name":"prod"}"#, expect: 201) as? [String: Any]
            #expect((dvs?["hosts"] as? [[String: Any]])?.count == 2, "the DVS spans both hosts: \(String(describing: dvs))")
            try await Self.call(cluster, "POST", "/api/v1/dvs/prod/portgroups", #"{"name":"web","vlan":100}"#, expect: 201)
            try await Self.call(cluster, "POST", "/api/v1/dvs/prod/portgroups", #"{"name":"db","vlan":200}"#, expect: 201)
            try await Self.call(cluster, "POST", "/api/v1/dvs/prod/portgroups", #"{"name":"tagged","trunks":"100,200"}"#, expect: 201)
            let shown = try await Self.call(cluster, "GET", "/api/v1/dvs/prod", expect: 200) as? [String: Any]
            for host in shown?["hosts"] as? [[String: Any]] ?? [] {
                #expect(host["state"] as? String == "in-sync", "\(host)")
                #expect((host["uplinks"] as? [String]) == ["eth1", "eth2"], "\(host)")
            }

            // Everyone in one IP subnet: only the VLANs keep them apart. Some NICs are there at
            // boot, the others are hot-plugged into the running guest.
            try await Self.bootWithNIC(cluster, "a1", host: "host-1", portGroup: "web", ip: "10.9.0.11/24", hotplug: false)
            try await Self.bootWithNIC(cluster, "a2", host: "host-1", portGroup: "web", ip: "10.9.0.12/24", hotplug: true)
            try await Self.bootWithNIC(cluster, "a3", host: "host-2", portGroup: "web", ip: "10.9.0.13/24", hotplug: false)
            try await Self.bootWithNIC(cluster, "b1", host: "host-1", portGroup: "db", ip: "10.9.0.21/24", hotplug: true)
            try await Self.bootWithNIC(cluster, "t2", host: "host-2", portGroup: "tagged", ip: nil, hotplug: false)

            #expect(try await Self.waitForPing(cluster, "a1", "10.9.0.12"), "same host, same VLAN")
            #expect(try await Self.waitForPing(cluster, "a1", "10.9.0.13"), "different hosts, same VLAN (through the bonds and the switch)")
            #expect(try await !Self.pings(cluster, "a1", "10.9.0.21"), "same host, VLAN 100 vs 200")
            #expect(try await !Self.pings(cluster, "a3", "10.9.0.21"), "different hosts, VLAN 100 vs 200")

            // The trunk guest tags VLAN 200 itself and reaches the VLAN-200 access guest on the other host.
            let nics = try await Self.call(cluster, "GET", "/api/v1/vms/t2/nics", expect: 200) as? [[String: Any]]
            let mac = try #require(nics?.first?["mac"] as? String)
            let setup = try await cluster.exec("t2", ["sh", "-c", """
                dev=$(for d in /sys/class/net/*; do [ "$(cat $d/address)" = "\(mac)" ] && basename $d; done); \
                ip link set $dev up && ip link add link $dev name vlan200 type vlan id 200 && ip link set vlan200 up && \
                ip addr add 10.9.0.32/24 dev vlan200
                """])
            try #require(setup.exitCode == 0, "\(setup.stdout) \(setup.stderr)")
            #expect(try await Self.waitForPing(cluster, "t2", "10.9.0.21"), "the trunk guest's VLAN 200 reaches b1")
            #expect(try await !Self.pings(cluster, "t2", "10.9.0.13"), "its VLAN 200 does not reach VLAN 100 on its own host")

            // TCP (checksums right over the user-space datapath): iperf3 across hosts.
            #expect(try await cluster.exec("a3", ["iperf3", "-s", "-D", "-1"]).exitCode == 0)
            try await Task.sleep(for: .milliseconds(500))
            let tcp = try await cluster.exec("a1", ["iperf3", "-c", "10.9.0.13", "-t", "2"])
            #expect(tcp.exitCode == 0, "TCP across hosts: \(tcp.stdout) \(tcp.stderr)")

            // The cable of a2 pulled, then plugged in again.
            try await Self.nicTask(cluster, "PATCH", "/api/v1/vms/a2/nics/nic0", #"{"link":"down"}"#)
            #expect(try await !Self.pings(cluster, "a1", "10.9.0.12"), "a2's link is down")
            try await Self.nicTask(cluster, "PATCH", "/api/v1/vms/a2/nics/nic0", #"{"link":"up"}"#)
            #expect(try await Self.waitForPing(cluster, "a1", "10.9.0.12"), "a2's link is up again")

            // The physical switch stops passing VLAN 100 to host-2.
            let physical = try #require(cluster.physicalSwitch)
            for nic in ["eth1", "eth2"] { try await physical.allow(port: PhysicalSwitch.port(hostIndex: 2, nic: nic), vlans: [200]) }
            #expect(try await !Self.pings(cluster, "a1", "10.9.0.13"), "host-2's switch ports do not allow VLAN 100")
            #expect(try await Self.waitForPing(cluster, "t2", "10.9.0.21"), "VLAN 200 still passes")
            for nic in ["eth1", "eth2"] { try await physical.allow(port: PhysicalSwitch.port(hostIndex: 2, nic: nic), vlans: nil) }
            #expect(try await Self.waitForPing(cluster, "a1", "10.9.0.13"), "VLAN 100 allowed again")

            // Hot-unplug: the guest loses the device; the port group can go only after its NICs.
            let (refused, why) = try await cluster.raw("DELETE", "/api/v1/portgroups/db", token: cluster.adminToken)
            #expect(refused == 409, "\(why)")
            try await Self.nicTask(cluster, "DELETE", "/api/v1/vms/b1/nics/nic0")
            #expect(try await !Self.pings(cluster, "t2", "10.9.0.21"), "b1 has no NIC any more")
            try await Self.call(cluster, "DELETE", "/api/v1/portgroups/db", expect: 204)
        }
    }

    @Test("a live migration keeps the NIC and its port (a ping across it loses at most 3 packets); a bond member going down loses at most 3; a target not on the DVS is refused")
    func migrationAndBond() async throws {
        try await TestCluster.with(driver: "qemu", hosts: 3, namespaced: ["host-1", "host-2", "host-3"], network: true) { cluster in
            try await Self.call(cluster, "POST", "/api/v1/dvs", #"{"name":"prod","hosts":["host-1","host-2"]}"#, expect: 201)
            try await Self.call(cluster, "POST", "/api/v1/dvs/prod/portgroups", #"{"name":"web","vlan":100}"#, expect: 201)
            try await Self.bootWithNIC(cluster, "pinger", host: "host-1", portGroup: "web", ip: "10.9.1.11/24", hotplug: false)
            try await Self.bootWithNIC(cluster, "mover", host: "host-2", portGroup: "web", ip: "10.9.1.12/24", hotplug: false)
            #expect(try await Self.waitForPing(cluster, "pinger", "10.9.1.12"))

            // Host-2's active bond member goes down at the switch.
            async let failover = cluster.exec("pinger", ["ping", "-c", "100", "-i", "0.1", "-W", "1", "10.9.1.12"])
            try await Task.sleep(for: .seconds(3))
            let physical = try #require(cluster.physicalSwitch)
            let active = try await Self.activeMember(cluster, host: "host-2")
            try await physical.setPort(PhysicalSwitch.port(hostIndex: 2, nic: active), up: false)
            try await Task.sleep(for: .milliseconds(300))
            let secondHost = OVS.managed(forStateDirectory: cluster.agentDirectory("host-2"))
            let bond = try await secondHost.appctl(["bond/show"])
            let fdb = try await physical.ovs.appctl(["fdb/show", physical.bridge]) + (try await physical.ovs.ofctl(["show", physical.bridge]))
                + (try await secondHost.appctl(["fdb/show", "dvs-prod"])) + (try await secondHost.ofctl(["show", "dvs-prod"]))
            let pinged = try await failover.stdout
            let failed = Self.received(pinged)
            let answered = Set(pinged.split(separator: "\n").compactMap { line in line.split(separator: " ").first { $0.hasPrefix("seq=") }.flatMap { Int($0.dropFirst(4)) } })
            print("network: ping across a bond failover (\(active) down on host-2): \(failed) of 100 answered; missing seq \((0..<100).filter { !answered.contains($0) })")
            if failed < 97 { print("host-2 bond:\n\(bond)\npswitch fdb:\n\(fdb)") }
            #expect(failed >= 97, "lost \(100 - failed) pings when \(active) went down")
            let shown = try await Self.call(cluster, "GET", "/api/v1/dvs/prod", expect: 200) as? [String: Any]
            let host2 = (shown?["hosts"] as? [[String: Any]])?.first { $0["host"] as? String == "host-2" }
            #expect((host2?["differences"] as? [String])?.contains { $0.contains(active) } == true, "dvs show names the member that is down: \(String(describing: host2))")
            // host-3 is not on the DVS: the preflight says so.
            let (code, text) = try await cluster.raw("POST", "/api/v1/vms/mover/migrate", token: cluster.adminToken,
                                                     body: #"{"target":"host-3","dryRun":true}"#)
            #expect(code == 200 && text.contains("target_not_on_dvs"), "\(code) \(text)")

            // Ping every 100 ms through a live migration host-2 → host-1.
            async let pinging = cluster.exec("pinger", ["ping", "-c", "75", "-i", "0.2", "-W", "1", "10.9.1.12"])
            try await Task.sleep(for: .seconds(2))
            let moved = try await cluster.migrate("mover", to: "host-1")
            try #require(moved.state == .succeeded, "\(moved.error?.message ?? moved.message)")
            let output = try await pinging.stdout
            let received = Self.received(output)
            print("network: ping every 200 ms across the migration: \(received) of 75 answered (\(moved.message))")
            #expect(received >= 72, "lost \(75 - received) pings across the migration: \(output.suffix(300))")
            #expect(try await Self.waitForPing(cluster, "pinger", "10.9.1.12"))

        }
    }

    /// `net diagnose` between two VMs: whether it says healthy, and its verdict.
    static func diagnose(_ cluster: TestCluster, _ from: String, _ to: String) async throws -> (healthy: Bool, verdict: String) {
        let answer = try await call(cluster, "GET", "/api/v1/net/diagnose?from=\(from)&to=\(to)", expect: 200) as? [String: Any]
        return (answer?["healthy"] as? Bool ?? false, answer?["verdict"] as? String ?? "\(String(describing: answer))")
    }

    @Test("net diagnose says healthy for a healthy pair and names each injected fault: NIC link down, wrong subnet, guest firewall, VLAN mismatch, access vs trunk, uplinks down, switch port not allowing the VLAN")
    func diagnoseFaults() async throws {
        try await TestCluster.with(driver: "qemu", hosts: 2, namespaced: ["host-1", "host-2"], network: true) { cluster in
            try await Self.call(cluster, "POST", "/api/v1/dvs", #"{"name":"prod"}"#, expect: 201)
            try await Self.call(cluster, "POST", "/api/v1/dvs/prod/portgroups", #"{"name":"web","vlan":100}"#, expect: 201)
            try await Self.call(cluster, "POST", "/api/v1/dvs/prod/portgroups", #"{"name":"db","vlan":200}"#, expect: 201)
            try await Self.call(cluster, "POST", "/api/v1/dvs/prod/portgroups", #"{"name":"tagged","trunks":"100,200"}"#, expect: 201)
            try await Self.bootWithNIC(cluster, "a", host: "host-1", portGroup: "web", ip: "10.9.2.11/24", hotplug: false)
            try await Self.bootWithNIC(cluster, "b", host: "host-2", portGroup: "web", ip: "10.9.2.12/24", hotplug: false)
            #expect(try await Self.waitForPing(cluster, "a", "10.9.2.12"))

            func expectFault(_ what: String, _ words: [String], sourceLocation: SourceLocation = #_sourceLocation) async throws {
                let (healthy, verdict) = try await Self.diagnose(cluster, "a", "b")
                print("network: diagnose with \(what): \(verdict)")
                #expect(!healthy, "\(what): \(verdict)", sourceLocation: sourceLocation)
                for word in words { #expect(verdict.contains(word), "\(what): the verdict should name '\(word)': \(verdict)", sourceLocation: sourceLocation) }
            }
            func expectHealthy(_ what: String, sourceLocation: SourceLocation = #_sourceLocation) async throws {
                let (healthy, verdict) = try await Self.diagnose(cluster, "a", "b")
                #expect(healthy && verdict.hasPrefix("healthy"), "\(what): \(verdict)", sourceLocation: sourceLocation)
            }
            try await expectHealthy("a healthy pair")

            try await Self.nicTask(cluster, "PATCH", "/api/v1/vms/a/nics/nic0", #"{"link":"down"}"#)
            try await expectFault("a's link down", ["NIC link", "of a", "--link up"])
            try await Self.nicTask(cluster, "PATCH", "/api/v1/vms/a/nics/nic0", #"{"link":"up"}"#)

            try await Self.nicTask(cluster, "PATCH", "/api/v1/vms/b/nics/nic0", #"{"ip":"10.9.3.12/24"}"#)
            try await expectFault("b in another subnet", ["same subnet", "10.9.3.12/24", "10.9.2.11/24"])
            try await Self.nicTask(cluster, "PATCH", "/api/v1/vms/b/nics/nic0", #"{"ip":"10.9.2.12/24"}"#)

            let firewall = try await cluster.exec("b", ["sh", "-c", "nft add table inet f && nft add chain inet f input '{ type filter hook input priority 0; }' && nft add rule inet f input icmp type echo-request drop"])
            try #require(firewall.exitCode == 0, "\(firewall.stderr)")
            try await expectFault("b's firewall dropping pings", ["guest firewall of b", "echo-request drop"])
            #expect(try await cluster.exec("b", ["nft", "delete", "table", "inet", "f"]).exitCode == 0)

            try await Self.nicTask(cluster, "PATCH", "/api/v1/vms/b/nics/nic0", #"{"portGroup":"db"}"#)
            try await expectFault("b on VLAN 200", ["VLAN", "VLAN 100", "VLAN 200"])
            // Shepherd refuses an address on a trunk; the mistake happens when the guest sets one itself.
            let (refused, why) = try await cluster.raw("PATCH", "/api/v1/vms/b/nics/nic0", token: cluster.adminToken, body: #"{"portGroup":"tagged"}"#)
            #expect(refused == 400 && why.contains("trunk"), "\(why)")
            try await Self.nicTask(cluster, "PATCH", "/api/v1/vms/b/nics/nic0", #"{"ip":"","portGroup":"tagged"}"#)
            let own = try await cluster.exec("b", ["sh", "-c", "ip addr add 10.9.2.12/24 dev $(ip -o link | grep -v ' lo:' | head -1 | cut -d: -f2 | tr -d ' ')"])
            try #require(own.exitCode == 0, "\(own.stderr)")
            try await expectFault("b on a trunk sending untagged", ["trunk", "untagged"])
            try await Self.nicTask(cluster, "PATCH", "/api/v1/vms/b/nics/nic0", #"{"portGroup":"web","ip":"10.9.2.12/24"}"#)
            try await expectHealthy("b back on web")

            let physical = try #require(cluster.physicalSwitch)
            let ports = ["eth1", "eth2"].map { PhysicalSwitch.port(hostIndex: 2, nic: $0) }
            try await physical.setPort(ports[0], up: false)
            let (oneDown, warning) = try await Self.diagnose(cluster, "a", "b")
            #expect(oneDown && warning.contains("warning") && warning.contains("eth1"), "one bond member down is a warning: \(warning)")
            try await physical.setPort(ports[1], up: false)
            try await expectFault("every uplink of host-2 down", ["uplink", "host-2"])
            for port in ports { try await physical.setPort(port, up: true) }
            #expect(try await Self.waitForPing(cluster, "a", "10.9.2.12"))

            for port in ports { try await physical.allow(port: port, vlans: [200]) }
            try await expectFault("the switch not allowing VLAN 100 to host-2", ["physical switch", "VLAN 100", "host-2"])
            for port in ports { try await physical.allow(port: port, vlans: nil) }
            #expect(try await Self.waitForPing(cluster, "a", "10.9.2.12"))
            try await expectHealthy("everything restored")
        }
    }

    @Test("a NIC's rate limit holds TCP both ways (what the VM sends: policed by a meter; what it receives: shaped on its tap) to within 20 %")
    func nicRateLimit() async throws {
        try await TestCluster.with(driver: "qemu", hosts: 2, namespaced: ["host-1", "host-2"], network: true) { cluster in
            try await Self.call(cluster, "POST", "/api/v1/dvs", #"{"name":"prod"}"#, expect: 201)
            try await Self.call(cluster, "POST", "/api/v1/dvs/prod/portgroups", #"{"name":"web","vlan":100}"#, expect: 201)
            try await Self.bootWithNIC(cluster, "sender", host: "host-1", portGroup: "web", ip: "10.9.4.11/24", hotplug: false)
            try await Self.bootWithNIC(cluster, "receiver", host: "host-2", portGroup: "web", ip: "10.9.4.12/24", hotplug: false)
            #expect(try await Self.waitForPing(cluster, "sender", "10.9.4.12"))
            #expect(try await cluster.exec("receiver", ["iperf3", "-s", "-D"]).exitCode == 0)
            try await Task.sleep(for: .milliseconds(500))
            let limit = 10.0
            let unlimited = try await Self.iperf(cluster, from: "sender", to: "10.9.4.12")
            try await Self.nicTask(cluster, "PATCH", "/api/v1/vms/sender/nics/nic0", #"{"rate":"10M"}"#)
            let sent = try await Self.iperf(cluster, from: "sender", to: "10.9.4.12")
            let received = try await Self.iperf(cluster, from: "sender", to: "10.9.4.12", reverse: true)
            print("network: TCP across hosts: \(Int(unlimited)) Mbit/s unlimited; with a 10 Mbit/s limit \(String(format: "%.1f", sent)) sent, \(String(format: "%.1f", received)) received")
            #expect(abs(sent - limit) <= limit * 0.2, "what the VM sends under a 10 Mbit/s limit: \(sent) Mbit/s (unlimited: \(unlimited))")
            #expect(abs(received - limit) <= limit * 0.2, "what the VM receives under a 10 Mbit/s limit: \(received) Mbit/s (unlimited: \(unlimited))")
            try await Self.nicTask(cluster, "PATCH", "/api/v1/vms/sender/nics/nic0", #"{"rate":"none"}"#)
            let again = try await Self.iperf(cluster, from: "sender", to: "10.9.4.12")
            #expect(again > limit * 1.5, "without the limit TCP is well above it again: \(again) Mbit/s (first unlimited run: \(unlimited))")
        }
    }

    /// TCP throughput (Mbit/s) from `vm` to `address` (or back with `reverse`), 4 s of iperf3.
    static func iperf(_ cluster: TestCluster, from vm: String, to address: String, reverse: Bool = false) async throws -> Double {
        let run = try await cluster.exec(vm, ["iperf3", "-c", address, "-t", "4", "-J"] + (reverse ? ["-R"] : []))
        try #require(run.exitCode == 0, "\(run.stdout.suffix(400)) \(run.stderr)")
        let json = try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any]
        let end = json?["end"] as? [String: Any]
        return ((end?["sum_received"] as? [String: Any])?["bits_per_second"] as? Double ?? 0) / 1e6
    }

    /// "N packets received" from busybox ping's summary.
    static func received(_ output: String) -> Int {
        guard let line = output.split(separator: "\n").first(where: { $0.contains("packets received") }) else { return 0 }
        return line.split(separator: ",").compactMap { part -> Int? in
            part.contains("received") ? Int(part.trimmingCharacters(in: .whitespaces).split(separator: " ").first ?? "") : nil
        }.first ?? 0
    }

    /// The bond member carrying traffic on a host, from its OVS.
    static func activeMember(_ cluster: TestCluster, host: String) async throws -> String {
        let ovs = OVS.managed(forStateDirectory: cluster.agentDirectory(host))
        let bonds = try await ovs.appctl(["bond/show"])
        let line = try #require(bonds.split(separator: "\n").first { $0.contains("active member mac") },
                                "bond/show: \(bonds)")
        // "active member mac: xx:xx (eth1)"
        let name = line.split(separator: "(").last.map { String($0.dropLast()) } ?? ""
        try #require(name == "eth1" || name == "eth2", "bond/show: \(bonds)")
        return name
    }
}
}
