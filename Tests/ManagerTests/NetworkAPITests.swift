import Foundation
import Testing
import TestSupport

/// Distributed virtual switches, port groups and NICs through the API against the fake driver:
/// the agents only remember their switches (in `switches.json`), and an uplink must be one of the
/// host's default uplinks, which the harness sets to eth1,eth2.
@Suite("Networking API", .serialized)
struct NetworkAPITests {
    // MARK: helpers

    /// A request as the admin: its status and body.
    static func call(_ cluster: TestCluster, _ method: String, _ path: String, _ body: String? = nil) async throws -> (Int, String) {
        try await cluster.raw(method, path, token: cluster.adminToken, body: body)
    }

    static func object(_ text: String) -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any] ?? [:]
    }

    static func array(_ text: String) -> [[String: Any]] {
        (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [[String: Any]] ?? []
    }

    /// Whether an answer is an error `{"code","message"}` with this status and code whose message
    /// contains each of `words`.
    static func refused(_ answer: (Int, String), _ status: Int, _ code: String, _ words: [String]) -> Bool {
        let body = object(answer.1)
        guard answer.0 == status, body["code"] as? String == code, let message = body["message"] as? String else { return false }
        return words.allSatisfy { message.contains($0) }
    }

    /// Follows the task of a 202 answer to its end: whether it succeeded, and its message (or error).
    static func finished(_ cluster: TestCluster, _ answer: (Int, String)) async throws -> (succeeded: Bool, message: String) {
        guard answer.0 == 202, let id = object(answer.1)["id"] as? String else { return (false, "HTTP \(answer.0) \(answer.1)") }
        let task = try await cluster.wait(try await cluster.task(id))
        return (task.state == .succeeded, task.error.map { "\(task.message) — \($0.message)" } ?? task.message)
    }

    static func nics(_ cluster: TestCluster, _ vm: String) async throws -> [[String: Any]] {
        let (status, text) = try await call(cluster, "GET", "/api/v1/vms/\(vm)/nics")
        guard status == 200 else { throw HarnessError("listing the NICs of \(vm): HTTP \(status) \(text)") }
        return array(text)
    }

    /// What the API lists of switches, port groups and the VMs' NICs: equal before and after a
    /// refused request (the harness's database snapshot leaves the network tables out).
    static func networkState(_ cluster: TestCluster, vms: [String] = []) async throws -> String {
        var parts: [String] = []
        for path in ["/api/v1/dvs", "/api/v1/portgroups"] + vms.map({ "/api/v1/vms/\($0)/nics" }) {
            let (status, text) = try await call(cluster, "GET", path)
            parts.append("\(path) \(status) \(text)")
        }
        return parts.joined(separator: "\n")
    }

    /// The bridges a host's agent keeps as wanted, with their uplinks (its switches.json).
    static func agentBridges(_ cluster: TestCluster, _ host: String) -> [String: [String]] {
        let path = cluster.agentDirectory(host) + "/switches.json"
        let list = FileManager.default.contents(atPath: path).flatMap { try? JSONSerialization.jsonObject(with: $0) } as? [[String: Any]] ?? []
        var result: [String: [String]] = [:]
        for entry in list { if let bridge = entry["bridge"] as? String { result[bridge] = entry["uplinks"] as? [String] ?? [] } }
        return result
    }

    // MARK: switches

    @Test("a DVS spans every host of the cluster with its default uplinks bonded, in sync; a taken or bad name is refused")
    func dvsAcrossCluster() async throws {
        try await TestCluster.with(driver: "fake", hosts: 2) { cluster in
            let (created, text) = try await Self.call(cluster, "POST", "/api/v1/dvs", #"{"name":"prod"}"#)
            #expect(created == 201, "\(text)")
            let dvs = Self.object(text)
            #expect(dvs["name"] as? String == "prod" && dvs["bridge"] as? String == "dvs-prod", "\(text)")
            #expect(dvs["bondMode"] as? String == "active-backup", "\(text)")
            let hosts = dvs["hosts"] as? [[String: Any]] ?? []
            #expect(hosts.compactMap { $0["host"] as? String }.sorted() == ["host-1", "host-2"], "\(text)")
            for host in hosts {
                #expect(host["uplinks"] as? [String] == ["eth1", "eth2"], "\(host)")
                #expect(host["bond"] as? String == "bd-prod", "\(host)")
            }
            for host in ["host-1", "host-2"] {
                #expect(Self.agentBridges(cluster, host)["dvs-prod"] == ["eth1", "eth2"], "the agent of \(host) keeps the bridge: \(Self.agentBridges(cluster, host))")
            }

            let (shown, live) = try await Self.call(cluster, "GET", "/api/v1/dvs/prod")
            #expect(shown == 200, "\(live)")
            let liveHosts = Self.object(live)["hosts"] as? [[String: Any]] ?? []
            #expect(liveHosts.count == 2, "\(live)")
            for host in liveHosts {
                #expect(host["state"] as? String == "in-sync", "\(host)")
                #expect((host["differences"] as? [String])?.isEmpty == true, "\(host)")
                let members = (host["members"] as? [[String: Any]] ?? []).compactMap { $0["name"] as? String }
                #expect(members.sorted() == ["eth1", "eth2"], "\(host)")
            }

            let before = try await Self.networkState(cluster)
            let again = try await Self.call(cluster, "POST", "/api/v1/dvs", #"{"name":"prod"}"#)
            #expect(Self.refused(again, 409, "already_exists", ["'prod'"]), "\(again)")
            let bad = try await Self.call(cluster, "POST", "/api/v1/dvs", #"{"name":"bad name!"}"#)
            #expect(Self.refused(bad, 400, "invalid_field", ["name"]), "\(bad)")
            let missing = try await Self.call(cluster, "GET", "/api/v1/dvs/nope")
            #expect(Self.refused(missing, 404, "not_found", ["'nope'"]), "\(missing)")
            #expect(try await Self.networkState(cluster) == before, "refused requests change nothing")

            let (listed, list) = try await Self.call(cluster, "GET", "/api/v1/dvs")
            #expect(listed == 200 && Self.array(list).compactMap { $0["name"] as? String } == ["prod"], "\(list)")
            #expect(try await cluster.events().contains { $0.kind == "dvs.created" })
        }
    }

    @Test("a DVS is built on all its hosts or none: a missing uplink on one host leaves no switch anywhere; a host joins it later once")
    func allHostsOrNone() async throws {
        try await TestCluster.with(driver: "fake", hosts: 2) { cluster in
            let failed = try await Self.call(cluster, "POST", "/api/v1/dvs", #"{"name":"prod","uplinks":[{"host":"host-2","nics":["eth9"]}]}"#)
            let error = Self.object(failed.1)
            let message = error["message"] as? String ?? ""
            // The agent's refusal comes back as agent_failed (502); a 500 would be a crash.
            #expect((400..<600).contains(failed.0) && failed.0 != 500 && error["code"] is String, "\(failed)")
            #expect(message.contains("host-2") && message.contains("eth9") && message.contains("nothing was created"), "\(failed)")
            let (listed, list) = try await Self.call(cluster, "GET", "/api/v1/dvs")
            #expect(listed == 200 && Self.array(list).isEmpty, "\(list)")
            for host in ["host-1", "host-2"] {
                #expect(Self.agentBridges(cluster, host)["dvs-prod"] == nil, "no bridge stays on \(host): \(Self.agentBridges(cluster, host))")
            }

            let (created, text) = try await Self.call(cluster, "POST", "/api/v1/dvs", #"{"name":"prod","hosts":["host-1"]}"#)
            #expect(created == 201, "\(text)")
            #expect((Self.object(text)["hosts"] as? [[String: Any]])?.compactMap { $0["host"] as? String } == ["host-1"], "\(text)")
            #expect(Self.agentBridges(cluster, "host-2")["dvs-prod"] == nil)

            let (added, grown) = try await Self.call(cluster, "POST", "/api/v1/dvs/prod/hosts", #"{"host":"host-2"}"#)
            #expect(added == 200, "\(grown)")
            let hosts = Self.object(grown)["hosts"] as? [[String: Any]] ?? []
            #expect(hosts.compactMap { $0["host"] as? String }.sorted() == ["host-1", "host-2"], "\(grown)")
            #expect(hosts.allSatisfy { $0["uplinks"] as? [String] == ["eth1", "eth2"] }, "\(grown)")
            #expect(Self.agentBridges(cluster, "host-2")["dvs-prod"] == ["eth1", "eth2"])

            let twice = try await Self.call(cluster, "POST", "/api/v1/dvs/prod/hosts", #"{"host":"host-2"}"#)
            #expect(Self.refused(twice, 409, "already_exists", ["host-2", "'prod'"]), "\(twice)")
            let (shown, live) = try await Self.call(cluster, "GET", "/api/v1/dvs/prod")
            #expect(shown == 200 && (Self.object(live)["hosts"] as? [[String: Any]])?.count == 2, "\(live)")
        }
    }

    // MARK: port groups

    @Test("port groups are access (one VLAN) or trunk (VLAN ranges, normalized); bad VLANs, both or neither, a taken name and an unknown DVS are refused")
    func portGroups() async throws {
        try await TestCluster.with(driver: "fake", hosts: 2) { cluster in
            #expect(try await Self.call(cluster, "POST", "/api/v1/dvs", #"{"name":"prod"}"#).0 == 201)
            let before = try await Self.networkState(cluster)
            for (body, words) in [
                (#"{"name":"g1","vlan":4095}"#, ["vlan", "4095"]),
                (#"{"name":"g2","vlan":-1}"#, ["vlan"]),
                (#"{"name":"g3","vlan":100,"trunks":"200"}"#, ["vlan or trunks, not both"]),
                (#"{"name":"g4"}"#, ["vlan", "trunks"]),
                (#"{"name":"g5","trunks":"abc"}"#, ["trunks", "'abc'"]),
                (#"{"name":"g6","trunks":"-"}"#, ["trunks", "'-'"]),
                (#"{"name":"g7","trunks":"5-"}"#, ["trunks"]),
                (#"{"name":"g8","trunks":""}"#, ["trunks"]),
                (#"{"name":"g9","trunks":"300-200"}"#, ["trunks", "300-200"]),
                (#"{"name":"g10","trunks":"100,4095"}"#, ["trunks", "4095"]),
                (#"{"name":"bad name","vlan":1}"#, ["name"]),
            ] {
                let answer = try await Self.call(cluster, "POST", "/api/v1/dvs/prod/portgroups", body)
                #expect(Self.refused(answer, 400, "invalid_field", words), "\(body): \(answer)")
            }
            let (health, _) = try await cluster.raw("GET", "/healthz", token: nil)
            #expect(health == 200, "the manager still answers after the bad trunks")
            #expect(try await Self.networkState(cluster) == before, "refused port groups leave nothing")

            let (access, accessText) = try await Self.call(cluster, "POST", "/api/v1/dvs/prod/portgroups", #"{"name":"web","vlan":100}"#)
            let web = Self.object(accessText)
            #expect(access == 201, "\(accessText)")
            #expect(web["kind"] as? String == "access" && web["vlan"] as? Int == 100, "\(accessText)")
            #expect(web["trunks"] == nil, "\(accessText)")
            #expect(web["dvs"] as? String == "prod" && web["nics"] as? Int == 0, "\(accessText)")
            let (trunk, trunkText) = try await Self.call(cluster, "POST", "/api/v1/dvs/prod/portgroups", #"{"name":"tagged","trunks":"200-202,100"}"#)
            let tagged = Self.object(trunkText)
            #expect(trunk == 201, "\(trunkText)")
            #expect(tagged["kind"] as? String == "trunk" && tagged["trunks"] as? String == "100,200-202", "\(trunkText)")
            #expect(tagged["vlan"] == nil, "\(trunkText)")

            let taken = try await Self.call(cluster, "POST", "/api/v1/dvs/prod/portgroups", #"{"name":"web","vlan":200}"#)
            #expect(Self.refused(taken, 409, "already_exists", ["'web'"]), "\(taken)")
            let unknown = try await Self.call(cluster, "POST", "/api/v1/dvs/nope/portgroups", #"{"name":"other","vlan":5}"#)
            #expect(Self.refused(unknown, 404, "not_found", ["'nope'"]), "\(unknown)")
            let unknownFilter = try await Self.call(cluster, "GET", "/api/v1/portgroups?dvs=nope")
            #expect(Self.refused(unknownFilter, 404, "not_found", ["'nope'"]), "\(unknownFilter)")

            let (listed, list) = try await Self.call(cluster, "GET", "/api/v1/portgroups?dvs=prod")
            let groups = Self.array(list)
            #expect(listed == 200 && groups.compactMap { $0["name"] as? String } == ["tagged", "web"], "\(list)")
            #expect(groups.allSatisfy { $0["nics"] as? Int == 0 && $0["dvs"] as? String == "prod" }, "\(list)")
            let (_, shown) = try await Self.call(cluster, "GET", "/api/v1/dvs/prod")
            #expect(Self.object(shown)["portGroups"] as? [String] == ["tagged", "web"], "\(shown)")
        }
    }

    // MARK: NICs

    @Test("a NIC is hot-plugged with its address and rate, its cable pulled and removed again; bad NICs are refused; its port group and DVS stay while it is on them")
    func nicLifecycle() async throws {
        try await TestCluster.with(driver: "fake", hosts: 2) { cluster in
            #expect(try await cluster.createVM("a", host: "host-1").state == .succeeded)
            #expect(try await cluster.start("a").state == .succeeded)
            #expect(try await Self.call(cluster, "POST", "/api/v1/dvs", #"{"name":"prod"}"#).0 == 201)
            #expect(try await Self.call(cluster, "POST", "/api/v1/dvs/prod/portgroups", #"{"name":"web","vlan":100}"#).0 == 201)

            let before = try await Self.networkState(cluster, vms: ["a"])
            let cases: [(String, String, Int, String, [String])] = [
                ("a", #"{"portGroup":"web","ip":"10.0.0.0/24"}"#, 400, "invalid_field", ["ip", "10.0.0.0/24"]),
                ("a", #"{"portGroup":"web","ip":"10.0.0.5"}"#, 400, "invalid_field", ["ip"]),
                ("a", #"{"portGroup":"web","mac":"01:00:5e:00:00:01"}"#, 400, "invalid_field", ["mac", "multicast"]),
                ("a", #"{"portGroup":"web","mac":"00:00:00:00:00:00"}"#, 400, "invalid_field", ["mac"]),
                ("a", #"{"portGroup":"web","rate":"fast"}"#, 400, "invalid_field", ["rate", "'fast'"]),
                ("a", #"{"portGroup":"nope"}"#, 404, "not_found", ["'nope'"]),
                ("ghost", #"{"portGroup":"web"}"#, 404, "not_found", ["'ghost'"]),
            ]
            for (vm, body, status, code, words) in cases {
                let answer = try await Self.call(cluster, "POST", "/api/v1/vms/\(vm)/nics", body)
                #expect(Self.refused(answer, status, code, words), "\(vm) \(body): \(answer)")
            }
            #expect(try await Self.nics(cluster, "a").isEmpty, "a refused NIC is not added")
            #expect(try await Self.networkState(cluster, vms: ["a"]) == before)

            let added = try await Self.finished(cluster, try await Self.call(cluster, "POST", "/api/v1/vms/a/nics",
                                                                             #"{"portGroup":"web","ip":"10.0.0.5/24","rate":"100M"}"#))
            #expect(added.succeeded && added.message.contains("nic0") && added.message.contains("hot-plugged"), "\(added.message)")
            let listed = try await Self.nics(cluster, "a")
            #expect(listed.count == 1, "\(listed)")
            let nic = listed.first ?? [:]
            #expect(nic["name"] as? String == "nic0" && nic["vm"] as? String == "a", "\(nic)")
            #expect(nic["portGroup"] as? String == "web" && nic["dvs"] as? String == "prod", "\(nic)")
            #expect((nic["mac"] as? String)?.hasPrefix("52:54:00:") == true, "\(nic)")
            #expect(nic["ip"] as? String == "10.0.0.5/24" && nic["rateMbit"] as? Int == 100, "\(nic)")
            #expect(nic["link"] as? String == "up" && nic["slot"] as? Int == 5, "\(nic)")
            #expect((nic["tap"] as? String)?.hasPrefix("tap") == true, "\(nic)")
            let (_, groups) = try await Self.call(cluster, "GET", "/api/v1/portgroups?dvs=prod")
            #expect(Self.array(groups).first?["nics"] as? Int == 1, "\(groups)")

            let unplugged = try await Self.finished(cluster, try await Self.call(cluster, "PATCH", "/api/v1/vms/a/nics/nic0", #"{"link":"down"}"#))
            #expect(unplugged.succeeded && unplugged.message.contains("link down"), "\(unplugged.message)")
            let afterUnplug = try await Self.nics(cluster, "a").first ?? [:]
            #expect(afterUnplug["link"] as? String == "down" && afterUnplug["ip"] as? String == "10.0.0.5/24", "\(afterUnplug)")

            let newMAC = try await Self.call(cluster, "PATCH", "/api/v1/vms/a/nics/nic0", #"{"mac":"52:54:00:aa:bb:cc"}"#)
            #expect(Self.refused(newMAC, 400, "invalid_field", ["mac"]), "a NIC's MAC does not change: \(newMAC)")
            if newMAC.0 == 202 { _ = try await Self.finished(cluster, newMAC) }  // let a wrongly accepted change end before going on
            let macAfter = try await Self.nics(cluster, "a").first?["mac"] as? String
            #expect(macAfter != nil && macAfter == nic["mac"] as? String, "the MAC stays \(nic["mac"] ?? "?"): \(macAfter ?? "none")")
            let badIP = try await Self.call(cluster, "PATCH", "/api/v1/vms/a/nics/nic0", #"{"ip":"10.0.0.255/24"}"#)
            #expect(Self.refused(badIP, 400, "invalid_field", ["ip"]), "\(badIP)")
            let noNIC = try await Self.call(cluster, "PATCH", "/api/v1/vms/a/nics/nic7", #"{"link":"up"}"#)
            #expect(Self.refused(noNIC, 404, "not_found", ["nic7"]), "\(noNIC)")

            let groupInUse = try await Self.call(cluster, "DELETE", "/api/v1/portgroups/web")
            #expect(Self.refused(groupInUse, 409, "illegal_state", ["'web'", "VMs a"]), "\(groupInUse)")
            let dvsInUse = try await Self.call(cluster, "DELETE", "/api/v1/dvs/prod")
            #expect(Self.refused(dvsInUse, 409, "illegal_state", ["'prod'"]), "\(dvsInUse)")

            let removed = try await Self.finished(cluster, try await Self.call(cluster, "DELETE", "/api/v1/vms/a/nics/nic0"))
            #expect(removed.succeeded, "\(removed.message)")
            #expect(try await Self.nics(cluster, "a").isEmpty)
            let (groupDeleted, groupText) = try await Self.call(cluster, "DELETE", "/api/v1/portgroups/web")
            #expect(groupDeleted == 204, "\(groupText)")
            let (dvsDeleted, dvsText) = try await Self.call(cluster, "DELETE", "/api/v1/dvs/prod")
            #expect(dvsDeleted == 204, "\(dvsText)")
            #expect(try await Self.call(cluster, "GET", "/api/v1/dvs/prod").0 == 404)
            for host in ["host-1", "host-2"] {
                #expect(Self.agentBridges(cluster, host).isEmpty, "the bridge left \(host): \(Self.agentBridges(cluster, host))")
            }
            let kinds = Set(try await cluster.events().map(\.kind))
            #expect(kinds.isSuperset(of: ["nic.added", "nic.changed", "nic.removed", "portgroup.deleted", "dvs.deleted"]), "\(kinds.sorted())")
        }
    }

    @Test("a migration target not on the VM's DVS is refused by the preflight, and a NIC for a VM whose host is not on the DVS is refused")
    func hostsOffTheSwitch() async throws {
        try await TestCluster.with(driver: "fake", hosts: 2) { cluster in
            #expect(try await Self.call(cluster, "POST", "/api/v1/dvs", #"{"name":"solo","hosts":["host-1"]}"#).0 == 201)
            #expect(try await Self.call(cluster, "POST", "/api/v1/dvs/solo/portgroups", #"{"name":"lan","vlan":10}"#).0 == 201)
            #expect(try await cluster.createVM("m", host: "host-1").state == .succeeded)
            #expect(try await cluster.start("m").state == .succeeded)
            let added = try await Self.finished(cluster, try await Self.call(cluster, "POST", "/api/v1/vms/m/nics", #"{"portGroup":"lan"}"#))
            #expect(added.succeeded, "\(added.message)")

            let (checked, check) = try await Self.call(cluster, "POST", "/api/v1/vms/m/migrate", #"{"target":"host-2","dryRun":true}"#)
            #expect(checked == 200, "\(check)")
            #expect(check.contains("target_not_on_dvs") && check.contains("'solo'") && check.contains("host-2"), "\(check)")
            #expect(Self.object(check)["ok"] as? Bool == false, "\(check)")

            #expect(try await cluster.createVM("b", host: "host-2").state == .succeeded)
            let refused = try await Self.call(cluster, "POST", "/api/v1/vms/b/nics", #"{"portGroup":"lan"}"#)
            #expect(Self.refused(refused, 409, "preflight_failed", ["host-2", "'solo'"]), "\(refused)")
            #expect(try await Self.nics(cluster, "b").isEmpty)

            // Once host-2 is on the switch, both work.
            #expect(try await Self.call(cluster, "POST", "/api/v1/dvs/solo/hosts", #"{"host":"host-2"}"#).0 == 200)
            let (rechecked, recheck) = try await Self.call(cluster, "POST", "/api/v1/vms/m/migrate", #"{"target":"host-2","dryRun":true}"#)
            #expect(rechecked == 200 && !recheck.contains("target_not_on_dvs"), "\(recheck)")
            let now = try await Self.finished(cluster, try await Self.call(cluster, "POST", "/api/v1/vms/b/nics", #"{"portGroup":"lan"}"#))
            #expect(now.succeeded, "\(now.message)")
            #expect(try await Self.nics(cluster, "b").count == 1)
        }
    }

    @Test("placement keeps a VM with NICs on the hosts of its DVS: maintenance moves it past a host without the switch; a VM without NICs goes to the first choice")
    func placementFollowsTheSwitch() async throws {
        try await TestCluster.with(driver: "fake", hosts: 3) { cluster in
            // host-2 (the lowest-numbered other host, placement's first choice) is not on the switch.
            #expect(try await Self.call(cluster, "POST", "/api/v1/dvs", #"{"name":"edge","hosts":["host-1","host-3"]}"#).0 == 201)
            #expect(try await Self.call(cluster, "POST", "/api/v1/dvs/edge/portgroups", #"{"name":"dmz","vlan":30}"#).0 == 201)
            for name in ["n1", "plain"] {
                #expect(try await cluster.createVM(name, host: "host-1").state == .succeeded)
                #expect(try await cluster.start(name).state == .succeeded)
            }
            let added = try await Self.finished(cluster, try await Self.call(cluster, "POST", "/api/v1/vms/n1/nics", #"{"portGroup":"dmz"}"#))
            #expect(added.succeeded, "\(added.message)")
            let entered = try await cluster.maintenance("enter", "host-1")
            #expect(entered.state == .succeeded, "\(entered.error?.message ?? entered.message)")
            #expect(try await cluster.vm("n1").hostName == "host-3", "the VM with a NIC on 'edge' goes where 'edge' is")
            #expect(try await cluster.vm("plain").hostName == "host-2", "a VM without NICs goes to placement's first choice")
            #expect(try await cluster.maintenance("exit", "host-1").state == .succeeded)
        }
    }

    // MARK: diagnosis

    @Test("diagnosing two VMs without NICs is refused saying neither has one; an unknown VM is not found")
    func diagnoseRefusals() async throws {
        try await TestCluster.with(driver: "fake", hosts: 2) { cluster in
            #expect(try await cluster.createVM("x", host: "host-1").state == .succeeded)
            #expect(try await cluster.createVM("y", host: "host-2").state == .succeeded)
            let neither = try await Self.call(cluster, "GET", "/api/v1/net/diagnose?from=x&to=y")
            #expect(Self.refused(neither, 409, "illegal_state", ["neither 'x' nor 'y' has a NIC"]), "\(neither)")
            let unknown = try await Self.call(cluster, "GET", "/api/v1/net/diagnose?from=x&to=ghost")
            #expect(Self.refused(unknown, 404, "not_found", ["'ghost'"]), "\(unknown)")
            let unknownFrom = try await Self.call(cluster, "GET", "/api/v1/net/diagnose?from=ghost&to=y")
            #expect(Self.refused(unknownFrom, 404, "not_found", ["'ghost'"]), "\(unknownFrom)")
            let same = try await Self.call(cluster, "GET", "/api/v1/net/diagnose?from=x&to=x")
            #expect(Self.refused(same, 400, "invalid_field", ["to"]), "\(same)")
        }
    }
}
