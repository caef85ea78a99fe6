import Foundation
import Testing
import TestSupport

extension RealGuests {
/// Storage live migration on a real guest that keeps writing.
@Suite("Storage migration")
struct StorageMigrationTests {
    /// A record every 50 ms on the root file system, each carrying its own checksum.
    static let writer = "(i=0; while [ ! -e /root/stop ]; do i=$((i+1)); echo \"$i $(echo $i | md5sum | cut -c1-32)\" >> /root/records; usleep 50000 || sleep 1; done) >/dev/null 2>&1 &"
    /// Prints OK and the count when records 1…n are all there, in order, each with a right checksum.
    static let verify = "n=0; while read i h; do n=$((n+1)); [ \"$i\" = \"$n\" ] || { echo GAP at $n: $i; exit 1; }; [ \"$(echo $i | md5sum | cut -c1-32)\" = \"$h\" ] || { echo BAD $i; exit 1; }; done < /root/records; echo OK $n"

    static func files(under directory: String) -> [String] {
        let all = (try? FileManager.default.subpathsOfDirectory(atPath: directory)) ?? []
        return all.filter { path in
            var isDirectory: ObjCBool = false
            return FileManager.default.fileExists(atPath: "\(directory)/\(path)", isDirectory: &isDirectory) && !isDirectory.boolValue
        }
    }

    @Test("a running guest's disks move to another datastore while it writes: every record verifies and none is missing; a cancel halfway leaves it on its source with its data intact")
    func liveMoveKeepsEveryRecord() async throws {
        let local = NSTemporaryDirectory() + "shepherd-local-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: local) }
        try await TestCluster.with(driver: "qemu", agentArguments: ["host-1": ["--datastore", "local-1=\(local),local"]]) { cluster in
            _ = try await cluster.createVM("sm1")
            try #require(try await cluster.start("sm1").state == .succeeded)
            try #require(try await cluster.createDisk("sm1", sizeMiB: 64, name: "smdata").state == .succeeded)
            let serial = try #require(try await cluster.disk("smdata").serial)
            let device = try #require(try await cluster.guestDevice("sm1", serial: serial, present: true))
            _ = try await cluster.exec("sm1", ["sh", "-c", "dd if=/dev/urandom of=/dev/\(device) bs=1M count=16 conv=fsync 2>/dev/null"])
            let data = try await cluster.guestChecksum("sm1", device, mib: 16)
            let sources = (root: try await cluster.vm("sm1").diskPath, data: try await cluster.disk("smdata").path)
            #expect(try await cluster.exec("sm1", ["sh", "-c", Self.writer]).exitCode == 0)
            try await Task.sleep(for: .seconds(1))

            // Capped at 2 MiB/s the copy takes several seconds: cancel it halfway.
            let slow = try await cluster.startStorageMigration("sm1", to: "local-1", maxBytesPerSecond: 2 << 20)
            let started = ContinuousClock.now
            while try await cluster.task(slow.id).progress < 15, ContinuousClock.now - started < .seconds(60) {
                try await Task.sleep(for: .milliseconds(200))
            }
            let (status, body) = try await cluster.raw("POST", "/api/v1/tasks/\(slow.id)/cancel", token: cluster.adminToken)
            #expect(status == 202 || status == 200, "\(body)")
            let cancelled = try await cluster.wait(slow)
            #expect(cancelled.state == .failed && cancelled.error?.code == "cancelled", "\(cancelled.message) \(cancelled.error?.message ?? "")")
            #expect(cancelled.error?.message.contains("stays on its source disks") == true, "\(cancelled.error?.message ?? "")")
            #expect(try await cluster.vm("sm1").datastore == "shared")
            #expect(try await cluster.disk("smdata").datastore == "shared")
            #expect(Self.files(under: local).isEmpty, "the cancelled copies are gone: \(Self.files(under: local))")
            #expect(try await cluster.guestChecksum("sm1", device, mib: 16) == data)

            let countBefore = try await cluster.exec("sm1", ["sh", "-c", "wc -l < /root/records"]).stdout
            let beforeMove = Int(countBefore.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
            let moved = try await cluster.migrateStorage("sm1", to: "local-1", type: .thickLazy)
            #expect(moved.state == .succeeded && moved.message.contains("live; switch"), "\(moved.message) \(moved.error?.message ?? "") \(cluster.log("agent-host-1.log"))")
            let vm = try await cluster.vm("sm1")
            #expect(vm.datastore == "local-1" && vm.diskPath.hasPrefix(local))
            #expect(try await cluster.disk("smdata").path.hasPrefix(local))
            #expect(!FileManager.default.fileExists(atPath: sources.root) && !FileManager.default.fileExists(atPath: sources.data),
                    "the source images go after the switch")
            #expect(try await cluster.exec("sm1", ["sh", "-c", "touch /root/stop; sleep 1; sync"]).exitCode == 0)
            let check = try await cluster.exec("sm1", ["sh", "-c", Self.verify]).stdout
            #expect(check.hasPrefix("OK "), "\(check)")
            let records = Int(check.dropFirst(3).trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
            #expect(beforeMove > 0 && records > beforeMove, "the writer kept writing through the cancelled move and the full one: \(beforeMove) records before the full move, \(records) after")
            #expect(try await cluster.guestChecksum("sm1", device, mib: 16) == data)

            // A new QEMU opens the moved images.
            #expect(try await cluster.stop("sm1").state == .succeeded)
            try #require(try await cluster.start("sm1").state == .succeeded)
            #expect(try await cluster.exec("sm1", ["sh", "-c", Self.verify]).stdout == "OK \(records)\n")
            let again = try #require(try await cluster.guestDevice("sm1", serial: serial, present: true))
            #expect(try await cluster.guestChecksum("sm1", again, mib: 16) == data)
            #expect(try await cluster.stop("sm1", force: true).state == .succeeded)
        }
    }

    @Test("whole-VM migration: a running guest on one host's local datastore moves with its disks to another host's local datastore while it writes; every record verifies and the old images are gone")
    func wholeVMMigration() async throws {
        let first = NSTemporaryDirectory() + "shepherd-local-\(UInt32.random(in: 0...UInt32.max))"
        let second = NSTemporaryDirectory() + "shepherd-local-\(UInt32.random(in: 0...UInt32.max))"
        defer { for path in [first, second] { try? FileManager.default.removeItem(atPath: path) } }
        try await TestCluster.with(driver: "qemu", hosts: 2, agentArguments: ["host-1": ["--datastore", "local-1=\(first),local"],
                                                                             "host-2": ["--datastore", "local-2=\(second),local"]]) { cluster in
            try #require(try await cluster.createVM("wv1", host: "host-1", datastore: "local-1").state == .succeeded)
            try #require(try await cluster.start("wv1").state == .succeeded)
            try #require(try await cluster.createDisk("wv1", sizeMiB: 32, name: "wvdata").state == .succeeded)
            let serial = try #require(try await cluster.disk("wvdata").serial)
            let device = try #require(try await cluster.guestDevice("wv1", serial: serial))
            _ = try await cluster.exec("wv1", ["sh", "-c", "dd if=/dev/urandom of=/dev/\(device) bs=1M count=8 conv=fsync 2>/dev/null"])
            let data = try await cluster.guestChecksum("wv1", device, mib: 8)
            #expect(try await cluster.exec("wv1", ["sh", "-c", Self.writer]).exitCode == 0)

            let (status, refused) = try await cluster.raw("POST", "/api/v1/vms/wv1/migrate", token: cluster.adminToken, body: #"{"target":"host-2","dryRun":true}"#)
            #expect(status == 200 && refused.contains("storage_not_shared"), "\(refused)")
            let (checked, check) = try await cluster.raw("POST", "/api/v1/vms/wv1/migrate", token: cluster.adminToken,
                                                         body: #"{"target":"host-2","datastore":"local-2","dryRun":true}"#)
            #expect(checked == 200 && (check.contains(#""ok" : true"#) || check.contains(#""ok":true"#)), "\(check)")

            let moved = try await cluster.wait(try await {
                switch try await cluster.client().migrateVM(path: .init(vm: "wv1"), body: .json(.init(target: "host-2", datastore: "local-2"))) {
                case .accepted(let accepted): return try accepted.body.json
                default: throw HarnessError("whole-VM migration of wv1 was not accepted")
                }
            }())
            #expect(moved.state == .succeeded && moved.message.contains("mirrored to local-2"),
                    "\(moved.message) \(moved.error?.message ?? "") \(cluster.log("agent-host-1.log")) \(cluster.log("agent-host-2.log"))")
            let vm = try await cluster.vm("wv1")
            #expect(vm.hostName == "host-2" && vm.datastore == "local-2" && vm.diskPath.hasPrefix(second))
            #expect(try await cluster.disk("wvdata").path.hasPrefix(second))
            #expect(Self.files(under: first).isEmpty, "the old images are gone: \(Self.files(under: first))")
            #expect(try await cluster.exec("wv1", ["sh", "-c", "touch /root/stop; sleep 1; sync"]).exitCode == 0)
            let verified = try await cluster.exec("wv1", ["sh", "-c", Self.verify]).stdout
            #expect(verified.hasPrefix("OK "), "\(verified)")
            let again = try #require(try await cluster.guestDevice("wv1", serial: serial))
            #expect(try await cluster.guestChecksum("wv1", again, mib: 8) == data)
            print("whole-VM migration: \(moved.message)")

            #expect(try await cluster.stop("wv1").state == .succeeded)
            try #require(try await cluster.start("wv1").state == .succeeded)
            #expect(try await cluster.exec("wv1", ["sh", "-c", Self.verify]).stdout == verified, "a new QEMU on host-2 opens the moved images")
            #expect(try await cluster.stop("wv1", force: true).state == .succeeded)
        }
    }
}
}
