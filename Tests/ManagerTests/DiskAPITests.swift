import Foundation
import Testing
import TestSupport

/// Data-disk bookkeeping and refusals against the fake driver (hot-plug is tested on real guests).
@Suite("Disk API", .serialized)
struct DiskAPITests {
    @Test("a disk is created and attached, grown, detached, attached elsewhere and deleted, each as a task")
    func lifecycle() async throws {
        try await TestCluster.with(driver: "fake", hosts: 1) { cluster in
            _ = try await cluster.createVM("a", host: "host-1")
            _ = try await cluster.createVM("b", host: "host-1")
            _ = try await cluster.start("a")
            let created = try await cluster.createDisk("a", sizeMiB: 64, type: .thickLazy)
            #expect(created.state == .succeeded, "\(created.error?.message ?? "")")
            #expect(created.message.contains("64 MiB thick-lazy disk created on shared") && created.message.contains("attached to 'a' live"), "\(created.message)")
            let disk = try await cluster.disk("a-disk1")
            #expect(disk.attachedTo == ["a"] && disk.sizeBytes == 64 << 20 && disk.format == "qcow2" && disk.mode == .persistent)
            #expect(disk.path.hasPrefix(cluster.sharedDatastore + "/disks/a-disk1-"))
            #expect(try await cluster.disks(of: "a").map(\.name) == ["a-disk1"])
            #expect(try await cluster.disks(of: "b").isEmpty)

            let (thick, why) = try await cluster.raw("POST", "/api/v1/vms/a/reclaim", token: cluster.adminToken, body: #"{"disk":"a-disk1"}"#)
            #expect(thick == 409 && why.contains("disk 'a-disk1' is thick-lazy: its space is allocated by design"), "\(why)")
            let reclaimed = try await cluster.wait(try await cluster.reclaim("a", disk: "root"))
            #expect(reclaimed.state == .succeeded && reclaimed.message.contains("'root' of 'a': 32 MiB returned (64 MiB → 32 MiB allocated; the guest trimmed 1 file system(s))"),
                    "\(reclaimed.message) \(reclaimed.error?.message ?? "")")
            let grown = try await cluster.resizeDisk("a-disk1", sizeMiB: 128)
            #expect(grown.state == .succeeded && grown.message.contains("grown from 64 MiB to 128 MiB (live"), "\(grown.message)")
            #expect(try await cluster.disk("a-disk1").sizeBytes == 128 << 20)

            #expect(try await cluster.detachDisk("a-disk1", from: "a").state == .succeeded)
            #expect(try await cluster.disk("a-disk1").attachedTo.isEmpty)
            let attached = try await cluster.attachDisk("a-disk1", to: "b")
            #expect(attached.state == .succeeded && attached.message.contains("the VM is off"), "\(attached.message)")
            #expect(try await cluster.disk("a-disk1").attachedTo == ["b"])
            #expect(try await cluster.detachDisk("a-disk1").state == .succeeded)
            #expect(try await cluster.deleteDisk("a-disk1").state == .succeeded)
            #expect(try await cluster.raw("GET", "/api/v1/disks/a-disk1", token: cluster.adminToken).0 == 404)
            let kinds = Set(try await cluster.events().map(\.kind))
            #expect(kinds.isSuperset(of: ["disk.created", "disk.resized", "disk.detached", "disk.attached", "disk.deleted"]))
        }
    }

    @Test("every bad disk request is refused naming the rule and its numbers, and changes nothing")
    func refusals() async throws {
        let local = NSTemporaryDirectory() + "shepherd-local-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: local) }
        try await TestCluster.with(driver: "fake", hosts: 2, agentArguments: ["host-2": ["--datastore", "local-2=\(local),local"]]) { cluster in
            _ = try await cluster.createVM("a", host: "host-1")
            _ = try await cluster.createVM("b", host: "host-1")
            #expect(try await cluster.createDisk("a", sizeMiB: 16, name: "data").state == .succeeded)
            let token = cluster.adminToken
            let before = try cluster.databaseSnapshot()
            let cases: [(String, String, String, Int, String)] = [
                ("POST", "/api/v1/disks", #"{"vm":"a","sizeBytes":0}"#, 400, "sizeBytes: 0 B is outside 1 MiB–16 TiB"),
                ("POST", "/api/v1/disks", #"{"vm":"a","sizeBytes":1048577}"#, 400, "not a multiple of 512"),
                ("POST", "/api/v1/disks", #"{"vm":"nope","sizeBytes":1048576}"#, 404, "VM 'nope' does not exist"),
                ("POST", "/api/v1/disks", #"{"vm":"a","sizeBytes":1048576,"datastore":"nods"}"#, 400, "datastore: datastore 'nods' does not exist"),
                ("POST", "/api/v1/disks", #"{"vm":"a","sizeBytes":1048576,"name":"data"}"#, 409, "a disk named 'data' already exists"),
                ("POST", "/api/v1/disks", #"{"vm":"a","sizeBytes":1048576,"name":"bad name"}"#, 400, "name: 'bad name' contains ' '"),
                ("POST", "/api/v1/disks", #"{"vm":"a","sizeBytes":1048576,"datastore":"local-2"}"#, 409, "datastore 'local-2', which the host of VM 'a' does not mount"),
                ("POST", "/api/v1/disks", #"{"vm":"a","sizeBytes":17592186044416,"type":"thick"}"#, 422, "a thick disk takes all its 16 TiB at once; datastore 'shared' has"),
                ("POST", "/api/v1/disks/data/attach", #"{"vm":"b"}"#, 409, "disk 'data' is attached to VM 'a'; only a shared disk"),
                ("POST", "/api/v1/disks/data/attach", #"{"vm":"a"}"#, 409, "already attached to VM 'a'"),
                ("POST", "/api/v1/disks/data/detach", #"{"vm":"b"}"#, 409, "disk 'data' is not attached to VM 'b' (it is attached to 'a')"),
                ("POST", "/api/v1/disks/data/resize", #"{"sizeBytes":8388608}"#, 400, "disk 'data' is 16 MiB; a resize must grow it (asked 8 MiB)"),
                ("DELETE", "/api/v1/disks/data", "", 409, "disk 'data' is attached to 'a'; detach it first"),
                ("GET", "/api/v1/disks/nodisk", "", 404, "disk 'nodisk' does not exist"),
                ("POST", "/api/v1/vms/a/reclaim", #"{"disk":"nope"}"#, 400, "disk: VM 'a' has no disk 'nope' (root or one of its data disks)"),
            ]
            for (method, path, body, status, message) in cases {
                let (code, answer) = try await cluster.raw(method, path, token: token, body: body.isEmpty ? nil : body)
                #expect(code == status, "\(method) \(path) \(body): \(answer)")
                #expect(answer.contains(message), "\(method) \(path) \(body): \(answer)")
                #expect(answer.contains(#""code""#), "\(answer)")
            }
            #expect(try cluster.databaseSnapshot() == before)
        }
    }

    @Test("a VM with a disk on a local datastore is refused host migration; deleting a VM deletes its own disks and keeps a shared one in use")
    func migrationAndDelete() async throws {
        let local = NSTemporaryDirectory() + "shepherd-local-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: local) }
        try await TestCluster.with(driver: "fake", hosts: 2, agentArguments: ["host-1": ["--datastore", "local-1=\(local),local"]]) { cluster in
            _ = try await cluster.createVM("m", host: "host-1")
            _ = try await cluster.createVM("n", host: "host-1")
            _ = try await cluster.start("m")
            #expect(try await cluster.createDisk("m", sizeMiB: 8, name: "scratch", datastore: "local-1").state == .succeeded)
            let (status, check) = try await cluster.raw("POST", "/api/v1/vms/m/migrate", token: cluster.adminToken, body: #"{"target":"host-2","dryRun":true}"#)
            #expect(status == 200)
            #expect(check.contains("storage_not_shared") && check.contains("datastore 'local-1'"), "\(check)")

            #expect(try await cluster.createDisk("m", sizeMiB: 8, mode: .shared, name: "quorum").state == .succeeded)
            #expect(try await cluster.disk("quorum").format == "raw")
            #expect(try await cluster.attachDisk("quorum", to: "n").state == .succeeded)
            #expect(try await cluster.disk("quorum").attachedTo == ["m", "n"])
            let detachWhich = try await cluster.raw("POST", "/api/v1/disks/quorum/detach", token: cluster.adminToken, body: "{}")
            #expect(detachWhich.0 == 400 && detachWhich.1.contains("vm: shared disk 'quorum' is attached to 'm', 'n'; name the VM"), "\(detachWhich.1)")

            let deleted = try await cluster.delete("m", force: true)
            #expect(deleted.state == .succeeded && deleted.message.contains("with its data disks 'scratch'"), "\(deleted.message)")
            #expect(try await cluster.disks().map(\.name) == ["quorum"])
            #expect(try await cluster.disk("quorum").attachedTo == ["n"])
        }
    }
}
