import Foundation
import Testing
import TestSupport

extension RealGuests {
/// Templates and linked clones on real guests.
@Suite("Clones")
struct CloneTests {
    static func allocated(_ path: String) -> Int64 {
        var stats = stat()
        return stat(path, &stats) == 0 ? Int64(stats.st_blocks) * 512 : -1
    }

    @Test("twenty linked clones take a small fraction of twenty full ones; linked clones boot, diverge, and never change the template's image")
    func linkedClones() async throws {
        try await TestCluster.with(driver: "qemu") { cluster in
            _ = try await cluster.createVM("gold-src")
            let template = try await cluster.toTemplate("gold-src", name: "gold")
            let image = cluster.sharedDatastore + "/" + template.disk
            let imageBefore = try Data(contentsOf: URL(fileURLWithPath: image))

            var linkedStarted = ContinuousClock.now
            for index in 1...20 { try #require(try await cluster.clone("gold", "lc\(index)", linked: true).state == .succeeded) }
            let linkedSeconds = (ContinuousClock.now - linkedStarted) / .seconds(1)
            linkedStarted = ContinuousClock.now
            for index in 1...20 { try #require(try await cluster.clone("gold", "fc\(index)").state == .succeeded) }
            let fullSeconds = (ContinuousClock.now - linkedStarted) / .seconds(1)
            var linkedBytes: Int64 = 0, fullBytes: Int64 = 0
            for index in 1...20 {
                linkedBytes += Self.allocated(try await cluster.vm("lc\(index)").diskPath)
                fullBytes += Self.allocated(try await cluster.vm("fc\(index)").diskPath)
            }
            print("clones: 20 linked take \(linkedBytes) bytes (\(String(format: "%.1f", linkedSeconds)) s to create), 20 full take \(fullBytes) bytes (\(String(format: "%.1f", fullSeconds)) s); template image \(Self.allocated(image)) bytes")
            #expect(linkedBytes > 0 && linkedBytes * 10 < fullBytes, "linked \(linkedBytes) bytes vs full \(fullBytes) bytes")

            try #require(try await cluster.start("lc1").state == .succeeded)
            try #require(try await cluster.start("lc2").state == .succeeded)
            #expect(try await cluster.exec("lc1", ["sh", "-c", "echo one > /root/who && sync"]).exitCode == 0)
            #expect(try await cluster.exec("lc2", ["sh", "-c", "echo two > /root/who && sync"]).exitCode == 0)
            #expect(try await cluster.exec("lc1", ["cat", "/root/who"]).stdout == "one\n")
            #expect(try await cluster.exec("lc2", ["cat", "/root/who"]).stdout == "two\n")
            #expect(try await cluster.stop("lc1", force: true).state == .succeeded)
            #expect(try await cluster.stop("lc2", force: true).state == .succeeded)
            #expect(try Data(contentsOf: URL(fileURLWithPath: image)) == imageBefore, "the template's image is never written")
        }
    }
}
}
