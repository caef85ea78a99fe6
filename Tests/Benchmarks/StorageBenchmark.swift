import Foundation
import HostKit
import ShepherdAPI
import Testing
import TestSupport

/// Storage live migration against the disk's practical limit, in one run (`make bench-storage`,
/// not `make test`): a 1 GiB thin data disk holding 512 MiB of data is copied once by
/// `qemu-img convert` (VM off: the baseline) and then mirrored live by `shepherd vm
/// migrate-storage` to another datastore, while the guest times a 4 KiB synchronous write to
/// that disk again and again — first idle, then during the mirror. Target: the mirror keeps
/// ≥ 80 % of qemu-img's throughput and the guest never stalls over 1 s.
///
/// The table goes to stdout and to `bench/results/storage-<date>T<time>Z.md`.
@Suite("Storage benchmark")
struct StorageBenchmark {
    static let dataMiB = 512

    /// Each line: phase, guest uptime before and after one 4 KiB write with fsync (only dd forks).
    static let probe = """
        (i=0; while [ ! -e /run/stop ]; do i=$(( (i + 7919) % 131072 )); read p < /run/phase; read a _ < /proc/uptime; \
        dd if=/dev/zero of=/dev/DEVICE bs=4k count=1 seek=$i conv=fsync 2>/dev/null; read b _ < /proc/uptime; echo "$p $a $b" >> /run/lat; done) >/dev/null 2>&1 &
        """

    static func percentile(_ values: [Double], _ p: Double) -> Double {
        guard !values.isEmpty else { return .nan }
        let sorted = values.sorted()
        return sorted[min(sorted.count - 1, Int((Double(sorted.count - 1) * p).rounded(.up)))]
    }

    @Test("storage migration throughput next to qemu-img convert, and the guest's write latency during the mirror against idle")
    func storageMigration() async throws {
        let local = NSTemporaryDirectory() + "shepherd-bench-local-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: local) }
        try await TestCluster.with(driver: "qemu", agentArguments: ["host-1": ["--datastore", "local-1=\(local),local"]]) { cluster in
            _ = try await cluster.createVM("bench1", memoryMiB: 256)
            try #require(try await cluster.createDisk("bench1", sizeMiB: 1024, name: "benchdata").state == .succeeded)
            let disk = try await cluster.disk("benchdata")
            // 512 MiB of non-zero data, written host-side (a TCG guest makes data slowly).
            try await Command.check("qemu-io", ["-f", "qcow2", "-c", "write -P 0x5a 0 \(Self.dataMiB)M", disk.path], timeout: .seconds(300))

            let baselineTarget = local + "/baseline.qcow2"
            let convertStarted = ContinuousClock.now
            try await Command.check("qemu-img", ["convert", "-O", "qcow2", disk.path, baselineTarget], timeout: .seconds(600))
            let convertSeconds = (ContinuousClock.now - convertStarted) / .seconds(1)
            try FileManager.default.removeItem(atPath: baselineTarget)

            try #require(try await cluster.start("bench1").state == .succeeded)
            let serial = try #require(disk.serial)
            let device = try #require(try await cluster.guestDevice("bench1", serial: serial))
            #expect(try await cluster.exec("bench1", ["sh", "-c", "echo idle > /run/phase; " + Self.probe.replacingOccurrences(of: "DEVICE", with: device)]).exitCode == 0)
            try await Task.sleep(for: .seconds(10))
            _ = try await cluster.exec("bench1", ["sh", "-c", "echo mirror > /run/phase"])
            let migration = try await cluster.migrateStorage("bench1", to: "local-1", disks: ["benchdata"])
            _ = try await cluster.exec("bench1", ["sh", "-c", "echo after > /run/phase"])
            try await Task.sleep(for: .seconds(2))
            _ = try await cluster.exec("bench1", ["sh", "-c", "touch /run/stop"])
            #expect(migration.state == .succeeded, "\(migration.message) \(migration.error?.message ?? "")")
            // The task measures its copy from the mirror's start to the end of the switch ("… in 2.4 s").
            let reported = migration.message.range(of: #"in ([0-9.]+) s"#, options: .regularExpression).map { migration.message[$0] }
            let mirrorSeconds = Double(reported?.dropFirst(3).dropLast(2) ?? "") ?? .nan

            let lines = try await cluster.exec("bench1", ["cat", "/run/lat"]).stdout.split(separator: "\n")
            var latencies: [String: [Double]] = [:]
            for line in lines {
                let fields = line.split(separator: " ")
                guard fields.count == 3, let a = Double(fields[1]), let b = Double(fields[2]) else { continue }
                latencies[String(fields[0]), default: []].append(b - a)
            }
            let idle = latencies["idle"] ?? [], mirror = latencies["mirror"] ?? []
            let convertRate = Double(Self.dataMiB) / convertSeconds
            let mirrorRate = Double(Self.dataMiB) / mirrorSeconds
            let date = ISO8601DateFormatter().string(from: Date())
            func ms(_ value: Double) -> String { value.isNaN ? "-" : String(format: "%.0f ms", value * 1000) }
            let table = """
                ## Storage migration, \(date)

                1 GiB thin disk, \(Self.dataMiB) MiB of data, `shared` → `local-1` (directories on the same file system), guest 256 MiB (TCG).

                | copy | seconds | MiB/s of data | share of qemu-img |
                |---|---|---|---|
                | `qemu-img convert` (VM off) | \(String(format: "%.2f", convertSeconds)) | \(String(format: "%.0f", convertRate)) | 100 % |
                | `shepherd vm migrate-storage` (live: mirror start to switch done, guest writing) | \(String(format: "%.2f", mirrorSeconds)) | \(String(format: "%.0f", mirrorRate)) | \(String(format: "%.0f", 100 * mirrorRate / convertRate)) % |

                | guest 4 KiB write + fsync | writes | p50 | p99 | max |
                |---|---|---|---|---|
                | idle | \(idle.count) | \(ms(Self.percentile(idle, 0.5))) | \(ms(Self.percentile(idle, 0.99))) | \(ms(idle.max() ?? .nan)) |
                | during the mirror | \(mirror.count) | \(ms(Self.percentile(mirror, 0.5))) | \(ms(Self.percentile(mirror, 0.99))) | \(ms(mirror.max() ?? .nan)) |

                Task: \(migration.message)

                """
            print(table)
            let results = Paths.repository + "/bench/results"
            try? FileManager.default.createDirectory(atPath: results, withIntermediateDirectories: true)
            let stamp = date.replacingOccurrences(of: ":", with: "").replacingOccurrences(of: "-", with: "")
            try table.write(toFile: "\(results)/storage-\(stamp).md", atomically: true, encoding: .utf8)
            #expect(!mirror.isEmpty, "the guest wrote during the mirror")
            #expect((mirror.max() ?? 0) <= 1.0, "the guest never stalls over 1 s during the mirror")
        }
    }
}
