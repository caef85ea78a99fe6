import Foundation
import Testing
import TestSupport

/// Datastores added and removed at runtime, against the fake driver (the directories are real).
@Suite("Datastore API", .serialized)
struct DatastoreAPITests {
    @Test("a datastore added at runtime is mounted, used, kept across an agent restart, refused removal while in use, then removed; bad requests change nothing")
    func addUseRemove() async throws {
        let base = NSTemporaryDirectory() + "shepherd-ds-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: base) }
        try await TestCluster.with(driver: "fake", hosts: 2) { cluster in
            let token = cluster.adminToken
            let (created, body) = try await cluster.raw("POST", "/api/v1/datastores", token: token,
                                                        body: #"{"name":"fast-1","kind":"local","path":"\#(base)/fast","hosts":["host-1"]}"#)
            #expect(created == 201 && body.contains(#""hosts" : [\n    "host-1"\n  ]"#) || body.contains("host-1"), "\(body)")
            #expect(FileManager.default.fileExists(atPath: base + "/fast"), "the agent made the directory")

            let before = try cluster.databaseSnapshot()
            let refusals: [(String, String, String, Int, String)] = [
                ("POST", "/api/v1/datastores", #"{"name":"fast-1","kind":"local","path":"/tmp/x","hosts":["host-1"]}"#, 409, "a datastore named 'fast-1' already exists"),
                ("POST", "/api/v1/datastores", #"{"name":"two","kind":"local","path":"\#(base)/two"}"#, 400, "hosts: a local datastore belongs to exactly one host; 2 given"),
                ("POST", "/api/v1/datastores", #"{"name":"odd","kind":"nfs","path":"\#(base)/odd"}"#, 400, "kind: 'nfs' must be shared"),
                ("POST", "/api/v1/datastores", #"{"name":"rel","kind":"shared","path":"data/x"}"#, 400, "must be an absolute path without . or .. steps"),
                ("POST", "/api/v1/datastores", #"{"name":"inner","kind":"shared","path":"\#(base)/fast/inner"}"#, 400, "overlaps datastore 'fast-1'"),
                ("POST", "/api/v1/datastores", #"{"name":"nohost","kind":"local","path":"\#(base)/n","hosts":["host-9"]}"#, 400, "hosts: host 'host-9' does not exist"),
                ("DELETE", "/api/v1/datastores/shared", "", 409, "datastore 'shared' holds template 'tiny'"),
                ("DELETE", "/api/v1/datastores/nods", "", 404, "datastore 'nods' does not exist"),
            ]
            for (method, path, request, status, message) in refusals {
                let (code, answer) = try await cluster.raw(method, path, token: token, body: request.isEmpty ? nil : request)
                #expect(code == status && answer.contains(message), "\(method) \(path) \(request): \(answer)")
            }
            #expect(try cluster.databaseSnapshot() == before)

            _ = try await cluster.createVM("dsvm", host: "host-1")
            #expect(try await cluster.createDisk("dsvm", sizeMiB: 8, name: "fastdisk", datastore: "fast-1").state == .succeeded)
            #expect(try await cluster.disk("fastdisk").path.hasPrefix(base + "/fast/disks/"))
            let (detail, shown) = try await cluster.raw("GET", "/api/v1/datastores/fast-1", token: token)
            #expect(detail == 200 && shown.contains("fastdisk"), "\(shown)")
            let (inUse, why) = try await cluster.raw("DELETE", "/api/v1/datastores/fast-1", token: token)
            #expect(inUse == 409 && why.contains("datastore 'fast-1' holds disk 'fastdisk'; move or delete them first"), "\(why)")

            #expect(try await cluster.detachDisk("fastdisk").state == .succeeded)
            #expect(try await cluster.deleteDisk("fastdisk").state == .succeeded)
            // The agent mounts it again after a restart (its heartbeat keeps reporting it).
            await cluster.stopAgent("host-1")
            try await cluster.startAgent("host-1")
            try await cluster.waitForHosts(connected: 2)
            try await Task.sleep(for: .seconds(3))
            let (detailAgain, again) = try await cluster.raw("GET", "/api/v1/datastores/fast-1", token: token)
            #expect(detailAgain == 200 && again.contains("host-1"), "\(again)")
            let (removed, gone) = try await cluster.raw("DELETE", "/api/v1/datastores/fast-1", token: token)
            #expect(removed == 200, "\(gone)")
            try await Task.sleep(for: .seconds(3))
            let (_, after) = try await cluster.raw("GET", "/api/v1/datastores", token: token)
            #expect(!after.contains("fast-1"), "the agent no longer reports it: \(after)")
        }
    }
}
