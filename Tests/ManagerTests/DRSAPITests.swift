import Foundation
import Testing
import TestSupport

/// DRS settings and rules through the API (fake driver: manager logic only).
@Suite("DRS and rules API", .serialized)
struct DRSAPITests {
    @Test("bad DRS settings and bad rules are refused naming the field, and nothing changes")
    func refusals() async throws {
        try await TestCluster.with(driver: "fake", hosts: 2) { cluster in
            _ = try await cluster.createVM("r1", host: "host-1")
            _ = try await cluster.createVM("r2", host: "host-1")
            let token = cluster.adminToken
            let before = try cluster.databaseSnapshot()
            for (body, field) in [
                (#"{"drs":{"threshold":6}}"#, "drs.threshold"), (#"{"drs":{"baselineCPUPercent":120}}"#, "drs.baselineCPUPercent"),
                (#"{"drs":{"intervalSeconds":1}}"#, "drs.intervalSeconds"), (#"{"drs":{"mode":"sometimes"}}"#, "mode"),
            ] {
                let (status, answer) = try await cluster.setCluster(body)
                #expect(status == 400, "\(body): \(answer)")
                #expect(answer.contains(field), "\(body): \(answer)")
            }
            let rules = "/api/v1/clusters/cluster-1/rules"
            for (body, status, field) in [
                (#"{"name":"a","kind":"keep-apart","vms":["r1"]}"#, 400, "vms"),
                (#"{"name":"a","kind":"keep-apart","vms":["r1","nope"]}"#, 400, "nope"),
                (#"{"name":"a","kind":"vm-host","vms":["r1"]}"#, 400, "hosts"),
                (#"{"name":"a","kind":"vm-host","vms":["r1"],"hosts":["host-9"]}"#, 400, "host-9"),
                (#"{"name":"a b","kind":"keep-apart","vms":["r1","r2"]}"#, 400, "name"),
                (#"{"name":"a","kind":"keep-apart","vms":["r1","r2"],"mandatory":false}"#, 400, "mandatory"),
            ] {
                let (code, answer) = try await cluster.raw("POST", rules, token: token, body: body)
                #expect(code == status, "\(body): \(answer)")
                #expect(answer.contains(field), "\(body): \(answer)")
            }
            #expect(try cluster.databaseSnapshot() == before)

            let (created, rule) = try await cluster.raw("POST", rules, token: token, body: #"{"name":"apart","kind":"keep-apart","vms":["r1","r2"]}"#)
            #expect(created == 201, "\(rule)")
            #expect(try await cluster.raw("POST", rules, token: token, body: #"{"name":"apart","kind":"keep-apart","vms":["r1","r2"]}"#).0 == 409)
            let (_, listed) = try await cluster.raw("GET", rules, token: token)
            #expect(listed.contains("apart") && listed.contains("r1") && listed.contains("r2"), "\(listed)")
            #expect(try await cluster.raw("DELETE", rules + "/apart", token: token).0 == 204)
            #expect(try await cluster.raw("DELETE", rules + "/apart", token: token).0 == 404)

            let (ok, settings) = try await cluster.setCluster(#"{"drs":{"mode":"manual","threshold":4,"baselineCPUPercent":40,"intervalSeconds":60}}"#)
            #expect(ok == 200, "\(settings)")
            let compact = settings.replacingOccurrences(of: " ", with: "")
            #expect(compact.contains(#""mode":"manual""#) && compact.contains(#""threshold":4"#) && compact.contains(#""baselineCPUPercent":40"#), "\(settings)")
        }
    }

    @Test("a broken keep-apart rule is a mandatory recommendation in manual mode, and applying it needs a known id")
    func ruleRecommendation() async throws {
        try await TestCluster.with(driver: "fake", hosts: 2) { cluster in
            for name in ["m1", "m2"] {
                _ = try await cluster.createVM(name, host: "host-1")
                #expect(try await cluster.start(name).state == .succeeded)
            }
            let token = cluster.adminToken
            #expect(try await cluster.setCluster(#"{"drs":{"mode":"manual","threshold":1,"intervalSeconds":3600}}"#).0 == 200)
            #expect(try await cluster.raw("POST", "/api/v1/clusters/cluster-1/rules", token: token,
                                          body: #"{"name":"apart","kind":"keep-apart","vms":["m1","m2"]}"#).0 == 201)
            let (status, list) = try await cluster.raw("GET", "/api/v1/clusters/cluster-1/drs/recommendations", token: token)
            #expect(status == 200, "\(list)")
            let compactList = list.replacingOccurrences(of: " : ", with: ":")
            #expect(compactList.contains(#""mandatory":true"#) && list.contains("rule 'apart'") && compactList.contains(#""to":"host-2""#), "\(list)")
            let first = try await cluster.vm("m1").hostName, second = try await cluster.vm("m2").hostName
            #expect(first == "host-1" && second == "host-1")
            let (unknown, why) = try await cluster.raw("POST", "/api/v1/clusters/cluster-1/drs/apply", token: token, body: #"{"ids":["nope"]}"#)
            #expect(unknown == 404 && why.contains("nope"), "\(why)")
        }
    }

    @Test("a VM whose host would break a mandatory rule starts on a host that keeps it; with none the start is refused naming the rules")
    func rulesAtStart() async throws {
        try await TestCluster.with(driver: "fake", hosts: 2) { cluster in
            for (name, host) in [("s1", "host-1"), ("s2", "host-1"), ("s3", "host-1")] { _ = try await cluster.createVM(name, host: host) }
            let token = cluster.adminToken
            let rules = "/api/v1/clusters/cluster-1/rules"
            #expect(try await cluster.raw("POST", rules, token: token, body: #"{"name":"apart","kind":"keep-apart","vms":["s1","s2","s3"]}"#).0 == 201)
            #expect(try await cluster.start("s1").state == .succeeded)
            // s2 would meet s1 on host-1: it starts on host-2 instead, and says why.
            #expect(try await cluster.start("s2").state == .succeeded)
            let moved = try await cluster.vm("s2")
            #expect(moved.hostName == "host-2" && moved.state == .running)
            let placed = try await cluster.events().first { $0.kind == "vm.placed" && $0.targetName == "s2" }
            #expect(placed?.message.contains("rule 'apart'") == true, "\(String(describing: placed?.message))")
            // s3 would meet one of them on either host: refused, naming the rule and each host's reason; nothing changes.
            let before = try cluster.databaseSnapshot()
            let (status, answer) = try await cluster.raw("POST", "/api/v1/vms/s3/start", token: token)
            #expect(status == 409 && answer.contains("preflight_failed") && answer.contains("rule 'apart'") && answer.contains("host-2"), "\(answer)")
            #expect(try cluster.databaseSnapshot() == before)
            // A VM DRS must not move is marked through the API and shown.
            let (patched, vm) = try await cluster.raw("PATCH", "/api/v1/vms/s1", token: token, body: #"{"drsExcluded":true}"#)
            #expect(patched == 200 && vm.replacingOccurrences(of: " ", with: "").contains(#""drsExcluded":true"#), "\(vm)")
            #expect(try await cluster.vm("s1").drsExcluded == true)
        }
    }
}
