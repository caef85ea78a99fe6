import Foundation
import Testing
import TestSupport

extension RealGuests {
/// Data disks on real guests: what the guest sees (serial, size, content), what the images take.
@Suite("Data disks")
struct DiskTests {
    static func sizeBytes(_ cluster: TestCluster, _ vm: String, _ device: String) async throws -> Int64 {
        let sectors = try await cluster.exec(vm, ["cat", "/sys/block/\(device)/size"]).stdout
        return (Int64(sectors.trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1) * 512
    }

    @Test("a disk hot-plugged into a running guest appears with its serial, keeps its data through detach and re-attach, and grows live; thin < thick-lazy ≤ thick")
    func hotplugKeepsDataAndGrows() async throws {
        try await TestCluster.with(driver: "qemu") { cluster in
            _ = try await cluster.createVM("d1")
            try #require(try await cluster.start("d1").state == .succeeded)

            let created = try await cluster.createDisk("d1", sizeMiB: 64, name: "data")
            #expect(created.state == .succeeded, "\(created.error?.message ?? "") \(cluster.log("agent-host-1.log"))")
            let serial = try #require(try await cluster.disk("data").serial)
            let device = try #require(try await cluster.guestDevice("d1", serial: serial, present: true))
            #expect(try await Self.sizeBytes(cluster, "d1", device) == 64 << 20)

            let wrote = try await cluster.exec("d1", ["sh", "-c", "dd if=/dev/urandom of=/dev/\(device) bs=1M count=4 conv=fsync 2>&1"])
            #expect(wrote.exitCode == 0, "\(wrote.stdout)")
            let written = try await cluster.guestChecksum("d1", device, mib: 4)

            let detached = try await cluster.detachDisk("data", from: "d1")
            #expect(detached.state == .succeeded, "\(detached.error?.message ?? "")")
            #expect(try await cluster.guestDevice("d1", serial: serial, present: false) == nil)
            let reattached = try await cluster.attachDisk("data", to: "d1")
            #expect(reattached.state == .succeeded, "\(reattached.error?.message ?? "") \(cluster.log("agent-host-1.log"))")
            let again = try #require(try await cluster.guestDevice("d1", serial: serial, present: true))
            #expect(try await cluster.guestChecksum("d1", again, mib: 4) == written, "the data written before the detach must be there after re-attaching")

            let grown = try await cluster.resizeDisk("data", sizeMiB: 96)
            #expect(grown.state == .succeeded, "\(grown.error?.message ?? "")")
            #expect(try await Self.sizeBytes(cluster, "d1", again) == 96 << 20, "the guest sees the new capacity at once")

            #expect(try await cluster.createDisk("d1", sizeMiB: 64, type: .thickLazy, name: "lazy").state == .succeeded)
            #expect(try await cluster.createDisk("d1", sizeMiB: 64, type: .thick, name: "eager").state == .succeeded)
            let thin = try #require(try await cluster.disk("data").allocatedBytes)
            let lazy = try #require(try await cluster.disk("lazy").allocatedBytes)
            let eager = try #require(try await cluster.disk("eager").allocatedBytes)
            #expect(thin < 16 << 20, "thin: 4 MiB written take \(thin) bytes")
            #expect(lazy >= 64 << 20 && lazy <= eager, "thick-lazy \(lazy) bytes, thick \(eager) bytes")
            #expect(try await cluster.disks(of: "d1").map(\.name) == ["data", "lazy", "eager"])
            #expect(try await cluster.stop("d1", force: true).state == .succeeded)
        }
    }

    @Test("a VM with a hot-plugged data disk live-migrates to another host: its device layout matches (fixed PCI slots) and the guest still reads its data")
    func hotpluggedDiskMigrates() async throws {
        try await TestCluster.with(driver: "qemu", hosts: 2) { cluster in
            _ = try await cluster.createVM("hm1", host: "host-1")
            try #require(try await cluster.start("hm1").state == .succeeded)
            try #require(try await cluster.createDisk("hm1", sizeMiB: 16, name: "hmdata").state == .succeeded)
            let serial = try #require(try await cluster.disk("hmdata").serial)
            let device = try #require(try await cluster.guestDevice("hm1", serial: serial))
            _ = try await cluster.exec("hm1", ["sh", "-c", "dd if=/dev/urandom of=/dev/\(device) bs=1M count=4 conv=fsync 2>/dev/null"])
            let data = try await cluster.guestChecksum("hm1", device, mib: 4)
            let moved = try await cluster.migrate("hm1", to: "host-2")
            #expect(moved.state == .succeeded, "\(moved.message) \(moved.error?.message ?? "")")
            #expect(try await cluster.vm("hm1").hostName == "host-2")
            #expect(try await cluster.guestChecksum("hm1", device, mib: 4) == data)
            #expect(try await cluster.stop("hm1", force: true).state == .succeeded)
        }
    }

    @Test("reclaim gives back what the guest deleted: trimmed live through the tools, compacted with the VM off")
    func reclaimReturnsDeletedSpace() async throws {
        try await TestCluster.with(driver: "qemu") { cluster in
            _ = try await cluster.createVM("rc1")
            try #require(try await cluster.start("rc1").state == .succeeded)
            let root = try await cluster.vm("rc1").diskPath
            func allocated() throws -> Int64 {
                var stats = stat()
                guard stat(root, &stats) == 0 else { throw HarnessError("cannot stat \(root)") }
                return Int64(stats.st_blocks) * 512
            }
            let empty = try allocated()
            #expect(try await cluster.exec("rc1", ["sh", "-c", "dd if=/dev/urandom of=/root/big bs=1M count=24 conv=fsync 2>/dev/null && sync"]).exitCode == 0)
            let full = try allocated()
            #expect(full > empty + (20 << 20), "24 MiB written: \(empty) → \(full) bytes")
            #expect(try await cluster.exec("rc1", ["sh", "-c", "rm /root/big && sync"]).exitCode == 0)
            let live = try await cluster.wait(try await cluster.reclaim("rc1", disk: "root"))
            #expect(live.state == .succeeded && live.message.contains("the guest trimmed"), "\(live.message) \(live.error?.message ?? "")")
            let trimmed = try allocated()
            #expect(trimmed < full - (16 << 20), "the deleted 24 MiB come back: \(full) → \(trimmed) bytes (\(live.message))")

            #expect(try await cluster.stop("rc1").state == .succeeded)
            let off = try await cluster.wait(try await cluster.reclaim("rc1", disk: "root"))
            #expect(off.state == .succeeded && off.message.contains("compacted with the VM off"), "\(off.message) \(off.error?.message ?? "")")
            print("reclaim: \(live.message) | \(off.message)")
            try #require(try await cluster.start("rc1").state == .succeeded)
            #expect(try await cluster.exec("rc1", ["uname", "-s"]).stdout == "Linux\n", "the compacted disk boots")
            #expect(try await cluster.stop("rc1", force: true).state == .succeeded)
        }
    }

    @Test("a shared disk shows one guest's writes to another; a non-persistent disk forgets its writes at power-off; a deleted VM takes its own disks along")
    func sharedAndNonPersistent() async throws {
        try await TestCluster.with(driver: "qemu") { cluster in
            _ = try await cluster.createVM("s1")
            _ = try await cluster.createVM("s2")
            try #require(try await cluster.start("s1").state == .succeeded)
            try #require(try await cluster.start("s2").state == .succeeded)

            #expect(try await cluster.createDisk("s1", sizeMiB: 16, mode: .shared, name: "quorum").state == .succeeded)
            let attached = try await cluster.attachDisk("quorum", to: "s2")
            #expect(attached.state == .succeeded, "\(attached.error?.message ?? "") \(cluster.log("agent-host-1.log"))")
            let serial = try #require(try await cluster.disk("quorum").serial)
            let one = try #require(try await cluster.guestDevice("s1", serial: serial, present: true))
            let two = try #require(try await cluster.guestDevice("s2", serial: serial, present: true))
            _ = try await cluster.exec("s1", ["sh", "-c", "dd if=/dev/urandom of=/dev/\(one) bs=1M count=2 conv=fsync 2>/dev/null"])
            let fromOne = try await cluster.guestChecksum("s1", one, mib: 2)
            #expect(try await cluster.guestChecksum("s2", two, mib: 2) == fromOne, "s2 reads what s1 wrote")

            #expect(try await cluster.createDisk("s1", sizeMiB: 16, mode: .nonPersistent, name: "scratch").state == .succeeded)
            let scratchSerial = try #require(try await cluster.disk("scratch").serial)
            let scratch = try #require(try await cluster.guestDevice("s1", serial: scratchSerial, present: true))
            let zeros = try await cluster.guestChecksum("s1", scratch, mib: 1)
            _ = try await cluster.exec("s1", ["sh", "-c", "dd if=/dev/urandom of=/dev/\(scratch) bs=1M count=1 conv=fsync 2>/dev/null"])
            #expect(try await cluster.guestChecksum("s1", scratch, mib: 1) != zeros, "the write lands while the VM runs")
            #expect(try await cluster.stop("s1", force: true).state == .succeeded)
            try #require(try await cluster.start("s1").state == .succeeded)
            let back = try #require(try await cluster.guestDevice("s1", serial: scratchSerial, present: true))
            #expect(try await cluster.guestChecksum("s1", back, mib: 1) == zeros, "after a power cycle the non-persistent disk is as it was created")

            let scratchPath = try await cluster.disk("scratch").path
            #expect(try await cluster.delete("s1", force: true).state == .succeeded)
            #expect(!FileManager.default.fileExists(atPath: scratchPath))
            #expect(try await cluster.disk("quorum").attachedTo == ["s2"])
            let stillTwo = try #require(try await cluster.guestDevice("s2", serial: serial, present: true))
            #expect(try await cluster.guestChecksum("s2", stillTwo, mib: 2) == fromOne)
            #expect(try await cluster.stop("s2", force: true).state == .succeeded)
        }
    }
}
}
