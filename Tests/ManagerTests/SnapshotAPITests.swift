import Foundation
import Testing
import TestSupport

/// Snapshot bookkeeping against the fake driver (the data is checked on real guests).
@Suite("Snapshot API", .serialized)
struct SnapshotAPITests {
    @Test("snapshots form a tree; reverts and deletions move the current state and re-parent children")
    func tree() async throws {
        try await TestCluster.with(driver: "fake", hosts: 1) { cluster in
            _ = try await cluster.createVM("t")
            let root = try await cluster.vm("t").diskPath
            #expect(try await cluster.snapshot("t", "s1").state == .succeeded)
            let afterFirst = try await cluster.vm("t").diskPath
            #expect(afterFirst != root && afterFirst.contains("root~"), "the VM writes to a new overlay: \(afterFirst)")
            _ = try await cluster.start("t")
            let live = try await cluster.snapshot("t", "s2", quiesce: true)
            #expect(live.state == .succeeded && live.message.contains("taken live"), "\(live.message)")
            _ = try await cluster.stop("t", force: true)
            #expect(try await cluster.revert("t", to: "s1").state == .succeeded)
            #expect(try await cluster.snapshot("t", "s3").state == .succeeded)
            var tree = try await cluster.snapshots("t")
            #expect(tree.current == "s3")
            #expect(tree.snapshots.map { "\($0.name)<\($0.parent ?? "-")" } == ["s1<-", "s2<s1", "s3<s1"])
            #expect(tree.snapshots.map(\.live) == [false, true, false] && tree.snapshots.map(\.quiesced) == [false, true, false])

            let deleted = try await cluster.deleteSnapshot("t", "s1")
            #expect(deleted.state == .succeeded && deleted.message.contains("merged into 2 later image(s)"), "\(deleted.message) \(deleted.error?.message ?? "") \(cluster.log("agent-host-1.log"))")
            tree = try await cluster.snapshots("t")
            #expect(tree.snapshots.map { "\($0.name)<\($0.parent ?? "-")" } == ["s2<-", "s3<-"])
            #expect(try await cluster.deleteSnapshot("t", "s3").state == .succeeded)
            tree = try await cluster.snapshots("t")
            #expect(tree.current == nil && tree.snapshots.map(\.name) == ["s2"])
            let kinds = Set(try await cluster.events().map(\.kind))
            #expect(kinds.isSuperset(of: ["vm.snapshot.created", "vm.snapshot.reverted", "vm.snapshot.deleted"]))
        }
    }

    @Test("snapshot refusals name the rule, and change nothing")
    func refusals() async throws {
        try await TestCluster.with(driver: "fake", hosts: 1) { cluster in
            _ = try await cluster.createVM("r")
            #expect(try await cluster.createDisk("r", sizeMiB: 8, name: "rdata").state == .succeeded)
            #expect(try await cluster.snapshot("r", "s1").state == .succeeded)
            _ = try await cluster.start("r")
            let token = cluster.adminToken
            let before = try cluster.databaseSnapshot()
            let cases: [(String, String, String, Int, String)] = [
                ("POST", "/api/v1/vms/r/snapshots", #"{"name":"s1"}"#, 409, "name: the VM already has a snapshot named 's1'"),
                ("POST", "/api/v1/vms/r/snapshots", #"{"name":"bad name"}"#, 400, "name: 'bad name' contains ' '"),
                ("POST", "/api/v1/vms/nope/snapshots", #"{"name":"x"}"#, 404, "VM 'nope' does not exist"),
                ("POST", "/api/v1/vms/r/snapshots/nosuch/revert", "", 404, "snapshot 'nosuch' of VM 'r' does not exist"),
                ("DELETE", "/api/v1/vms/r/snapshots/nosuch", "", 404, "snapshot 'nosuch' of VM 'r' does not exist"),
                ("POST", "/api/v1/disks/rdata/detach", #"{"vm":"r"}"#, 409, "disk 'rdata' is in snapshot(s) 's1' of VM 'r'; it stays attached"),
                ("POST", "/api/v1/vms/r/snapshots", #"{"name":"mq","memory":true,"quiesce":true}"#, 400, "quiesce: a memory snapshot holds the guest's whole state"),
            ]
            for (method, path, body, status, message) in cases {
                let (code, answer) = try await cluster.raw(method, path, token: token, body: body.isEmpty ? nil : body)
                #expect(code == status, "\(method) \(path) \(body): \(answer)")
                #expect(answer.contains(message), "\(method) \(path) \(body): \(answer)")
            }
            #expect(try cluster.databaseSnapshot() == before)
            let reverted = try await cluster.revert("r", to: "s1")
            #expect(reverted.state == .succeeded && reverted.message.contains("'r': its power was cut, then returned to snapshot 's1'"), "\(reverted.message)")
            #expect(try await cluster.vm("r").state == .stopped)
            let (offQuiesce, answer) = try await cluster.raw("POST", "/api/v1/vms/r/snapshots", token: token, body: #"{"name":"q","quiesce":true}"#)
            #expect(offQuiesce == 400 && answer.contains("quiesce: VM 'r' is off"), "\(answer)")
            let (offMemory, why) = try await cluster.raw("POST", "/api/v1/vms/r/snapshots", token: token, body: #"{"name":"m","memory":true}"#)
            #expect(offMemory == 400 && why.contains("memory: VM 'r' is off: there is no memory to save"), "\(why)")
        }
    }
}
