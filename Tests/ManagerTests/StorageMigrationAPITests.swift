import Foundation
import Testing
import TestSupport

/// Storage-migration checks and bookkeeping against the fake driver (the copy is tested on real guests).
@Suite("Storage migration API", .serialized)
struct StorageMigrationAPITests {
    @Test("a dry run lists every refusal with its numbers, and a refused move changes nothing")
    func refusals() async throws {
        let local = NSTemporaryDirectory() + "shepherd-local-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: local) }
        try await TestCluster.with(driver: "fake", hosts: 2, agentArguments: ["host-2": ["--datastore", "local-2=\(local),local"]]) { cluster in
            _ = try await cluster.createVM("sm", host: "host-1")
            #expect(try await cluster.createDisk("sm", sizeMiB: 16, mode: .shared, name: "smshared").state == .succeeded)
            #expect(try await cluster.createDisk("sm", sizeMiB: 16, mode: .nonPersistent, name: "smscratch").state == .succeeded)
            #expect(try await cluster.createDisk("sm", sizeMiB: 16 << 20, name: "smhuge").state == .succeeded)
            #expect(try await cluster.snapshot("sm", "before").state == .succeeded)
            let started = try await cluster.start("sm")
            try #require(started.state == .succeeded, "\(started.error?.message ?? "")")
            let token = cluster.adminToken
            let (status, check) = try await cluster.raw("POST", "/api/v1/vms/sm/migrate-storage", token: token,
                                                        body: #"{"datastore":"local-2","type":"thick","dryRun":true}"#)
            #expect(status == 200, "\(check)")
            let expected: [(String, String)] = [
                ("target_not_mounted", "the host of 'sm' does not mount datastore 'local-2'"),
                ("shared_disk", "disk 'smshared' is shared"),
                ("non_persistent_live", "disk 'smscratch' is non-persistent: it moves only while 'sm' is off"),
                ("in_snapshots", "disk 'root' is in snapshot(s) 'before'; delete them first"),
                ("target_too_small", "the thick copies need 16.0 TiB; 'local-2' has"),
            ]
            for (code, message) in expected {
                #expect(check.contains(code) && check.contains(message), "missing \(code): \(message) in \(check)")
            }
            #expect(!check.contains("smscratch' is in snapshot"), "non-persistent disks are not in snapshots")
            let before = try cluster.databaseSnapshot()
            let (refused, answer) = try await cluster.raw("POST", "/api/v1/vms/sm/migrate-storage", token: token, body: #"{"datastore":"local-2"}"#)
            #expect(refused == 409 && answer.contains("preflight_failed") && answer.contains("cannot move the storage of 'sm' to 'local-2'"), "\(answer)")
            let (unknownDisk, why) = try await cluster.raw("POST", "/api/v1/vms/sm/migrate-storage", token: token, body: #"{"datastore":"shared","disks":["nope"]}"#)
            #expect(unknownDisk == 400 && why.contains("disks: VM 'sm' has no disk 'nope'"), "\(why)")
            let (already, there) = try await cluster.raw("POST", "/api/v1/vms/sm/migrate-storage", token: token, body: #"{"datastore":"shared","disks":["smhuge"],"dryRun":true}"#)
            #expect(already == 200 && there.contains("already_there"), "\(there)")
            let (slow, cap) = try await cluster.raw("POST", "/api/v1/vms/sm/migrate-storage", token: token, body: #"{"datastore":"shared","maxBytesPerSecond":1000}"#)
            #expect(slow == 400 && cap.contains("maxBytesPerSecond: 1000 B") && cap.contains("is below the smallest cap, 1 MiB"), "\(cap)")
            #expect(try cluster.databaseSnapshot() == before)
        }
    }

    @Test("running, the disks move by mirror; off, by conversion; the inventory follows them and the type changes on the way")
    func moves() async throws {
        let local = NSTemporaryDirectory() + "shepherd-local-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: local) }
        try await TestCluster.with(driver: "fake", hosts: 1, agentArguments: ["host-1": ["--datastore", "local-1=\(local),local"]]) { cluster in
            _ = try await cluster.createVM("mv")
            #expect(try await cluster.createDisk("mv", sizeMiB: 16, name: "mvdata").state == .succeeded)
            _ = try await cluster.start("mv")
            let live = try await cluster.migrateStorage("mv", to: "local-1", type: .thickLazy)
            #expect(live.state == .succeeded && live.message.contains("'root', 'mvdata' moved to local-1 as thick-lazy") && live.message.contains("live; switch"),
                    "\(live.message) \(live.error?.message ?? "")")
            let vm = try await cluster.vm("mv")
            #expect(vm.datastore == "local-1" && vm.diskPath.hasPrefix(local + "/vms/mv-"))
            let disk = try await cluster.disk("mvdata")
            #expect(disk.datastore == "local-1" && disk._type == .thickLazy && disk.path.hasPrefix(local + "/disks/mvdata-"))
            _ = try await cluster.stop("mv", force: true)
            let cold = try await cluster.migrateStorage("mv", to: "shared", disks: ["mvdata"])
            #expect(cold.state == .succeeded && cold.message.contains("'mvdata' moved to shared as thin") && cold.message.contains("VM off"), "\(cold.message)")
            #expect(try await cluster.disk("mvdata").datastore == "shared")
            #expect(try await cluster.vm("mv").datastore == "local-1")
            #expect(try await cluster.events().contains { $0.kind == "vm.storage.migrated" })
        }
    }

    @Test("a whole-VM migration's dry run replaces the shared-storage check by the storage checks, each with its numbers")
    func wholeVMChecks() async throws {
        let first = NSTemporaryDirectory() + "shepherd-local-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: first) }
        try await TestCluster.with(driver: "fake", hosts: 2, agentArguments: ["host-1": ["--datastore", "local-1=\(first),local"]]) { cluster in
            try #require(try await cluster.createVM("wm", host: "host-1", datastore: "local-1").state == .succeeded)
            #expect(try await cluster.createDisk("wm", sizeMiB: 8, mode: .shared, name: "wmshared", datastore: "shared").state == .succeeded)
            _ = try await cluster.start("wm")
            let token = cluster.adminToken
            let (plain, refused) = try await cluster.raw("POST", "/api/v1/vms/wm/migrate", token: token, body: #"{"target":"host-2","dryRun":true}"#)
            #expect(plain == 200 && refused.contains("storage_not_shared") && refused.contains("datastore 'local-1'"), "\(refused)")
            let (whole, check) = try await cluster.raw("POST", "/api/v1/vms/wm/migrate", token: token,
                                                       body: #"{"target":"host-2","datastore":"local-1","dryRun":true}"#)
            #expect(whole == 200, "\(check)")
            #expect(check.contains("target_not_mounted: target 'host-2' does not mount datastore 'local-1'"), "\(check)")
            #expect(check.contains("shared_disk: disk 'wmshared' is shared"), "\(check)")
            let (ok, fine) = try await cluster.raw("POST", "/api/v1/vms/wm/migrate", token: token,
                                                   body: #"{"target":"host-2","datastore":"nods","dryRun":true}"#)
            #expect(ok == 400 && fine.contains("datastore: datastore 'nods' does not exist"), "\(fine)")
        }
    }
}
