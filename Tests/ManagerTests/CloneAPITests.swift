import Foundation
import Testing
import TestSupport

/// Templates and clones against the fake driver (linked clones booting are tested on real guests).
@Suite("Clone API", .serialized)
struct CloneAPITests {
    @Test("a VM becomes a template; linked clones record it, full clones copy every disk, and each refusal names its rule")
    func templatesAndClones() async throws {
        let local = NSTemporaryDirectory() + "shepherd-local-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: local) }
        try await TestCluster.with(driver: "fake", hosts: 1, agentArguments: ["host-1": ["--datastore", "local-1=\(local),local"]]) { cluster in
            let token = cluster.adminToken
            _ = try await cluster.createVM("base")
            #expect(try await cluster.createDisk("base", sizeMiB: 8, name: "basedata").state == .succeeded)
            #expect(try await cluster.snapshot("base", "s1").state == .succeeded)
            _ = try await cluster.start("base")
            let before = try cluster.databaseSnapshot()
            let refusals: [(String, String, Int, String)] = [
                ("/api/v1/vms/base/to-template", "{}", 409, "VM 'base' is running; only a VM that is off becomes a template"),
                ("/api/v1/vms/base/clone", #"{"name":"c1"}"#, 409, "VM 'base' is running; a full clone copies its disks while it is off"),
                ("/api/v1/vms/base/clone", #"{"name":"c1","linked":true}"#, 409, "linked clones are made from templates"),
                ("/api/v1/vms/nothing/clone", #"{"name":"c1"}"#, 404, "VM or template 'nothing' does not exist"),
            ]
            for (path, body, status, message) in refusals {
                let (code, answer) = try await cluster.raw("POST", path, token: token, body: body)
                #expect(code == status && answer.contains(message), "\(path) \(body): \(answer)")
            }
            #expect(try cluster.databaseSnapshot() == before)
            _ = try await cluster.stop("base", force: true)

            let full = try await cluster.clone("base", "copy")
            #expect(full.state == .succeeded && full.message.contains("full clone of 'base'") && full.message.contains("copy-basedata"), "\(full.message) \(full.error?.message ?? "")")
            #expect(try await cluster.disks(of: "copy").map(\.name) == ["copy-basedata"])
            #expect(try await cluster.vm("copy").linkedTemplate == nil)

            let (snapshotted, why) = try await cluster.raw("POST", "/api/v1/vms/base/to-template", token: token, body: "{}")
            #expect(snapshotted == 409 && why.contains("has snapshot(s) 's1'; delete them first"), "\(why)")
            #expect(try await cluster.deleteSnapshot("base", "s1").state == .succeeded)
            let (withDisks, because) = try await cluster.raw("POST", "/api/v1/vms/base/to-template", token: token, body: "{}")
            #expect(withDisks == 409 && because.contains("has data disk(s) 'basedata'"), "\(because)")
            #expect(try await cluster.detachDisk("basedata").state == .succeeded)
            let template = try await cluster.toTemplate("base", name: "gold")
            #expect(template.name == "gold" && template.disk.hasPrefix("vms/base-") && template.datastore == "shared")
            #expect(try await cluster.raw("GET", "/api/v1/vms/base", token: token).0 == 404)
            _ = try await cluster.createVM("plain")
            let (duplicate, taken) = try await cluster.raw("POST", "/api/v1/vms/plain/to-template", token: token, body: #"{"name":"gold"}"#)
            #expect(duplicate == 409 && taken.contains("a template named 'gold' already exists"), "\(taken)")

            let linked = try await cluster.clone("gold", "thin1", linked: true)
            #expect(linked.state == .succeeded && linked.message.contains("as a linked clone of gold"), "\(linked.message)")
            #expect(try await cluster.vm("thin1").linkedTemplate == "gold")
            _ = try await cluster.start("thin1")
            let (status, check) = try await cluster.raw("POST", "/api/v1/vms/thin1/migrate-storage", token: token, body: #"{"datastore":"local-1","dryRun":true}"#)
            #expect(status == 200 && check.contains("linked_clone") && check.contains("disk 'root' is a linked clone over its template's image"), "\(check)")
        }
    }
}
