import Foundation
import Testing
import TestSupport

extension RealGuests {
/// Snapshots on a real guest: what its root file system and a data disk hold after every step.
@Suite("Snapshots")
struct SnapshotTests {
    /// Writes `value` to /root/state and 2 MiB of fresh random data to the data disk; returns the disk's checksum.
    static func write(_ cluster: TestCluster, _ vm: String, _ value: Int, device: String) async throws -> String {
        let result = try await cluster.exec(vm, ["sh", "-c", "echo \(value) > /root/state && dd if=/dev/urandom of=/dev/\(device) bs=1M count=2 conv=fsync 2>/dev/null && sync"])
        #expect(result.exitCode == 0, "\(result.stderr)")
        return try await cluster.guestChecksum(vm, device, mib: 2)
    }

    static func state(_ cluster: TestCluster, _ vm: String, serial: String) async throws -> (Int, String) {
        let value = Int(try await cluster.exec(vm, ["cat", "/root/state"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
        let device = try #require(try await cluster.guestDevice(vm, serial: serial, present: true))
        return (value, try await cluster.guestChecksum(vm, device, mib: 2))
    }

    @Test("a memory snapshot brings the running guest back where it was: same boot, its RAM-only counter continues from the snapshot's value")
    func memorySnapshot() async throws {
        try await TestCluster.with(driver: "qemu") { cluster in
            _ = try await cluster.createVM("mem1")
            try #require(try await cluster.start("mem1").state == .succeeded)
            // /run is a tmpfs: the counter lives in RAM only.
            #expect(try await cluster.exec("mem1", ["sh", "-c", "(i=0; while :; do i=$((i+1)); echo $i > /run/counter; usleep 200000 || sleep 1; done) >/dev/null 2>&1 &"]).exitCode == 0)
            try await Task.sleep(for: .seconds(2))
            let boot = try await cluster.exec("mem1", ["cat", "/proc/sys/kernel/random/boot_id"]).stdout
            let taken = try await cluster.snapshot("mem1", "m1", memory: true)
            #expect(taken.state == .succeeded && taken.message.contains("with its memory"), "\(taken.message) \(taken.error?.message ?? "") \(cluster.log("agent-host-1.log"))")
            let atSnapshot = Int(try await cluster.exec("mem1", ["cat", "/run/counter"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
            try await Task.sleep(for: .seconds(3))
            let later = Int(try await cluster.exec("mem1", ["cat", "/run/counter"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
            #expect(later > atSnapshot + 5, "the guest ran on after the snapshot: \(atSnapshot) → \(later)")
            #expect(try await cluster.snapshots("mem1").snapshots.first?.memory == true)

            // Reverting the running VM cuts its power first, then resumes the saved one.
            let reverted = try await cluster.revert("mem1", to: "m1")
            #expect(reverted.state == .succeeded && reverted.message.contains("its power was cut") && reverted.message.contains("running again from its saved memory"),
                    "\(reverted.message) \(reverted.error?.message ?? "") \(cluster.log("agent-host-1.log"))")
            #expect(try await cluster.vm("mem1").state == .running)
            let resumed = Int(try await cluster.exec("mem1", ["cat", "/run/counter"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
            #expect(try await cluster.exec("mem1", ["cat", "/proc/sys/kernel/random/boot_id"]).stdout == boot, "the same boot, not a fresh one")
            #expect(resumed >= atSnapshot - 3 && resumed < later, "the counter is back near its snapshot value \(atSnapshot), not \(later): \(resumed)")
            try await Task.sleep(for: .seconds(2))
            let goingOn = Int(try await cluster.exec("mem1", ["cat", "/run/counter"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
            #expect(goingOn > resumed, "and it keeps counting: \(resumed) → \(goingOn)")
            print("memory snapshot: \(taken.message); counter at snapshot \(atSnapshot), later \(later), after revert \(resumed) → \(goingOn)")
            #expect(try await cluster.deleteSnapshot("mem1", "m1").state == .succeeded)
            #expect(try await cluster.stop("mem1", force: true).state == .succeeded)
        }
    }

    @Test("live snapshots freeze root and data disk together; deleting middle and current-parent snapshots live keeps the latest state; revert returns to a snapshot any number of times; an offline delete merges into a later snapshot")
    func snapshotTree() async throws {
        try await TestCluster.with(driver: "qemu") { cluster in
            _ = try await cluster.createVM("snap1")
            try #require(try await cluster.start("snap1").state == .succeeded)
            try #require(try await cluster.createDisk("snap1", sizeMiB: 16, name: "snapdata").state == .succeeded)
            let serial = try #require(try await cluster.disk("snapdata").serial)
            let device = try #require(try await cluster.guestDevice("snap1", serial: serial, present: true))

            _ = try await Self.write(cluster, "snap1", 1, device: device)
            let s1 = try await cluster.snapshot("snap1", "s1", quiesce: true)
            #expect(s1.state == .succeeded && s1.message.contains("of 2 disk(s) taken live") && s1.message.contains("file system(s) frozen"),
                    "\(s1.message) \(s1.error?.message ?? "")")
            _ = try await Self.write(cluster, "snap1", 2, device: device)
            #expect(try await cluster.snapshot("snap1", "s2").state == .succeeded)
            let third = try await Self.write(cluster, "snap1", 3, device: device)

            // s1 is in the middle of the running chain (s1 ← s2 ← now): its data streams into s2's images, live.
            let middle = try await cluster.deleteSnapshot("snap1", "s1")
            #expect(middle.state == .succeeded, "\(middle.error?.message ?? "") \(cluster.log("agent-host-1.log"))")
            // s2 is the current state's parent: its data streams into the active images, live.
            let parent = try await cluster.deleteSnapshot("snap1", "s2")
            #expect(parent.state == .succeeded, "\(parent.error?.message ?? "")")
            #expect(try await cluster.snapshots("snap1").snapshots.isEmpty)
            var now = try await Self.state(cluster, "snap1", serial: serial)
            #expect(now.0 == 3 && now.1 == third, "the running guest keeps its latest state")

            let s3 = try await cluster.snapshot("snap1", "s3")
            #expect(s3.state == .succeeded)
            _ = try await Self.write(cluster, "snap1", 4, device: device)
            #expect(try await cluster.stop("snap1").state == .succeeded)
            for round in 1...2 {
                let reverted = try await cluster.revert("snap1", to: "s3")
                #expect(reverted.state == .succeeded, "\(reverted.error?.message ?? "")")
                try #require(try await cluster.start("snap1").state == .succeeded)
                now = try await Self.state(cluster, "snap1", serial: serial)
                #expect(now.0 == 3 && now.1 == third, "revert \(round): the guest is back at s3")
                _ = try await Self.write(cluster, "snap1", 5, device: device)
                #expect(try await cluster.stop("snap1").state == .succeeded)
            }
            // Off: s4 under s3, a new state after it, then s3 (now in the middle) deleted — merged into s4's images by qemu-img.
            #expect(try await cluster.snapshot("snap1", "s4").state == .succeeded)
            try #require(try await cluster.start("snap1").state == .succeeded)
            let sixth = try await Self.write(cluster, "snap1", 6, device: try #require(try await cluster.guestDevice("snap1", serial: serial, present: true)))
            #expect(try await cluster.stop("snap1").state == .succeeded)
            let offline = try await cluster.deleteSnapshot("snap1", "s3")
            #expect(offline.state == .succeeded && offline.message.contains("merged into 2 later image(s)"), "\(offline.message) \(offline.error?.message ?? "")")
            try #require(try await cluster.start("snap1").state == .succeeded)
            now = try await Self.state(cluster, "snap1", serial: serial)
            #expect(now.0 == 6 && now.1 == sixth, "the latest state survives the offline merge")
            #expect(try await cluster.stop("snap1").state == .succeeded)
            #expect(try await cluster.revert("snap1", to: "s4").state == .succeeded)
            try #require(try await cluster.start("snap1").state == .succeeded)
            #expect(try await Self.state(cluster, "snap1", serial: serial).0 == 5, "s4 was taken after the second revert's write of 5")

            let tree = try await cluster.snapshots("snap1")
            #expect(tree.snapshots.map(\.name) == ["s4"] && tree.current == "s4")
            let images = try FileManager.default.subpathsOfDirectory(atPath: cluster.sharedDatastore).filter { $0.contains("~") }
            #expect(try await cluster.delete("snap1", force: true).state == .succeeded)
            let left = try FileManager.default.subpathsOfDirectory(atPath: cluster.sharedDatastore).filter { $0.contains("~") }
            #expect(!images.isEmpty && left.isEmpty, "every snapshot image goes with the VM; left: \(left)")
        }
    }
}
}
