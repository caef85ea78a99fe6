import Foundation
import HostKit
import Testing
import TestSupport

/// The virtual switch path on real guests (`make bench-network`, not `make test`): TCP throughput
/// and ping latency between guests on one host and across hosts (through each host's Open
/// vSwitch, the bonds and the physical switch namespace), next to the same measurements without
/// guests in the same run — two namespaces over a plain veth pair (the kernel alone), and two
/// host namespaces over the DVS path (OVS internal ports on VLAN 100) — so the table shows what
/// each layer keeps. Then NIC rate limits: asked vs measured, both directions.
///
/// The tables go to stdout and to `bench/results/network-<date>T<time>Z.md`.
@Suite("Network benchmark")
struct NetworkBenchmark {
    struct Row {
        var path: String
        var mbit: Double
        var rttMs: Double
    }

    /// iperf3's received rate (Mbit/s) from its JSON.
    static func mbit(_ json: String) -> Double {
        let object = try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any]
        let end = object?["end"] as? [String: Any]
        return ((end?["sum_received"] as? [String: Any])?["bits_per_second"] as? Double ?? .nan) / 1e6
    }

    /// The average of "min/avg/max" in a ping summary (busybox or iputils).
    static func averageRTT(_ output: String) -> Double {
        guard let line = output.split(separator: "\n").first(where: { $0.contains("min/avg/max") }),
              let numbers = line.split(separator: "=").last?.split(separator: "/"), numbers.count >= 2 else { return .nan }
        return Double(numbers[1].trimmingCharacters(in: .whitespaces)) ?? .nan
    }

    /// Runs `argv` inside namespace `ns` (host binaries: iperf3, ping).
    static func inNamespace(_ ns: String, _ argv: [String], timeout: Duration = .seconds(30)) async throws -> String {
        let full = Net.inNamespace(ns, argv)
        let result = try await Command.run(full[0], Array(full.dropFirst()), timeout: timeout)
        try #require(result.status == 0, "\(argv.joined(separator: " ")) in \(ns): \(result.stderr) \(result.stdout.suffix(300))")
        return result.stdout
    }

    /// An iperf3 server in `ns` for the duration of `body`, ended by its pid.
    static func withServer<T>(in ns: String, _ body: () async throws -> T) async throws -> T {
        let argv = Net.inNamespace(ns, ["iperf3", "-s"])
        let server = try ChildProcess.spawn(argv[0], Array(argv.dropFirst()), logFile: NSTemporaryDirectory() + "iperf3-\(ns).log")
        try await Task.sleep(for: .milliseconds(500))
        do {
            let result = try await body()
            await server.terminate(grace: .seconds(3))
            return result
        } catch {
            await server.terminate(grace: .seconds(3))
            throw error
        }
    }

    /// Kernel only: two fresh namespaces over one veth pair.
    static func rawVeth() async throws -> Row {
        let tag = String(Int.random(in: 100...999))
        let (a, b) = ("nb\(tag)a", "nb\(tag)b")
        try await Net.addNamespace(a)
        try await Net.addNamespace(b)
        defer { Task { try? await Net.deleteNamespace(a); try? await Net.deleteNamespace(b) } }
        try await Net.addVethPair("v0", inNamespace: a, "v0", inNamespace: b)
        try await Net.configure(namespace: a, link: "v0", address: "10.9.9.1/24")
        try await Net.configure(namespace: b, link: "v0", address: "10.9.9.2/24")
        return try await withServer(in: b) {
            let rate = mbit(try await inNamespace(a, ["iperf3", "-c", "10.9.9.2", "-t", "5", "-J"]))
            let rtt = averageRTT(try await inNamespace(a, ["ping", "-c", "20", "-i", "0.2", "10.9.9.2"]))
            return Row(path: "two namespaces over one veth pair (kernel only)", mbit: rate, rttMs: rtt)
        }
    }

    /// The DVS path without guests: an OVS internal port on VLAN 100 in each host namespace.
    static func hostToHost(_ cluster: TestCluster) async throws -> Row {
        let (one, two) = (cluster.hostNamespace("host-1"), cluster.hostNamespace("host-2"))
        for (index, host) in ["host-1", "host-2"].enumerated() {
            let ovs = OVS.managed(forStateDirectory: cluster.agentDirectory(host))
            try await ovs.vsctl(["--may-exist", "add-port", "dvs-prod", "bench0", "tag=100", "--", "set", "Interface", "bench0", "type=internal"])
            let ns = cluster.hostNamespace(host)
            try await Net.configure(namespace: ns, link: "bench0", address: "10.9.5.\(201 + index)/24")
            // Kernel TCP over the user-space datapath needs checksums done in software (as csum=off for guests).
            _ = try await inNamespace(ns, ["ethtool", "-K", "bench0", "tx", "off"])
        }
        return try await withServer(in: two) {
            let rate = mbit(try await inNamespace(one, ["iperf3", "-c", "10.9.5.202", "-t", "5", "-J"]))
            let rtt = averageRTT(try await inNamespace(one, ["ping", "-c", "20", "-i", "0.2", "10.9.5.202"]))
            return Row(path: "host-1 → host-2 namespaces over the DVS path (OVS, bonds, switch), no guest", mbit: rate, rttMs: rtt)
        }
    }

    static func guests(_ cluster: TestCluster, from: String, to address: String, path: String, reverse: Bool = false) async throws -> Row {
        let run = try await cluster.exec(from, ["iperf3", "-c", address, "-t", "5", "-J"] + (reverse ? ["-R"] : []))
        try #require(run.exitCode == 0, "\(run.stdout.suffix(300)) \(run.stderr)")
        let ping = try await cluster.exec(from, ["ping", "-c", "20", "-i", "0.2", address])
        return Row(path: path, mbit: mbit(run.stdout), rttMs: averageRTT(ping.stdout))
    }

    static func call(_ cluster: TestCluster, _ method: String, _ path: String, _ body: String?, expect: Int) async throws -> String {
        let (code, text) = try await cluster.raw(method, path, token: cluster.adminToken, body: body)
        try #require(code == expect, "\(method) \(path): \(code) \(text)")
        return text
    }

    static func nic(_ cluster: TestCluster, _ method: String, _ path: String, _ body: String?) async throws {
        let text = try await call(cluster, method, path, body, expect: 202)
        let id = try #require((try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])?["id"] as? String)
        let done = try await cluster.wait(try await cluster.task(id))
        try #require(done.state == .succeeded, "\(method) \(path): \(done.error?.message ?? done.message)")
    }

    @Test("guest-to-guest TCP and ping on one host and across hosts, next to the kernel-only and the guest-less DVS path; NIC rate limits asked vs measured")
    func network() async throws {
        let stamp = ISO8601DateFormatter().string(from: Date()).replacingOccurrences(of: ":", with: "")
        let raw = try await Self.rawVeth()
        let (rows, limits) = try await TestCluster.with(driver: "qemu", hosts: 2, namespaced: ["host-1", "host-2"], network: true) { cluster in
            _ = try await Self.call(cluster, "POST", "/api/v1/dvs", #"{"name":"prod"}"#, expect: 201)
            _ = try await Self.call(cluster, "POST", "/api/v1/dvs/prod/portgroups", #"{"name":"web","vlan":100}"#, expect: 201)
            for (name, host, ip) in [("a1", "host-1", "10.9.5.11/24"), ("a2", "host-1", "10.9.5.12/24"), ("b1", "host-2", "10.9.5.21/24")] {
                try #require(try await cluster.createVM(name, host: host).state == .succeeded)
                try await Self.nic(cluster, "POST", "/api/v1/vms/\(name)/nics", #"{"portGroup":"web","ip":"\#(ip)"}"#)
                try #require(try await cluster.start(name).state == .succeeded)
            }
            for name in ["a2", "b1"] {
                _ = try await cluster.waitForVM(name, timeout: .seconds(90)) { $0.toolsStatus == .running }
                #expect(try await cluster.exec(name, ["iperf3", "-s", "-D"]).exitCode == 0)
            }
            _ = try await cluster.waitForVM("a1", timeout: .seconds(90)) { $0.toolsStatus == .running }
            for address in ["10.9.5.12", "10.9.5.21"] {
                for _ in 0..<20 where try await cluster.exec("a1", ["ping", "-c", "1", "-W", "1", address]).exitCode != 0 {}
            }
            var rows = [try await Self.hostToHost(cluster)]
            rows.append(try await Self.guests(cluster, from: "a1", to: "10.9.5.12", path: "guest → guest, same host (one bridge)"))
            rows.append(try await Self.guests(cluster, from: "a1", to: "10.9.5.21", path: "guest → guest, across hosts (bridges, bonds, switch)"))
            var limits: [(asked: Int, sent: Double, received: Double)] = []
            for asked in [5, 10, 20] {
                try await Self.nic(cluster, "PATCH", "/api/v1/vms/a1/nics/nic0", #"{"rate":"\#(asked)M"}"#)
                let sent = try await Self.guests(cluster, from: "a1", to: "10.9.5.21", path: "").mbit
                let received = try await Self.guests(cluster, from: "a1", to: "10.9.5.21", path: "", reverse: true).mbit
                limits.append((asked, sent, received))
            }
            return (rows, limits)
        }
        var table = """

            ## Network (\(stamp)): TCP (iperf3, 5 s) and ping (20 × 200 ms)

            | path | TCP Mbit/s | share of kernel-only | ping avg ms |
            |---|---:|---:|---:|

            """
        for row in [raw] + rows {
            table += "| \(row.path) | \(String(format: "%.0f", row.mbit)) | \(String(format: "%.1f", row.mbit / raw.mbit * 100)) % | \(String(format: "%.2f", row.rttMs)) |\n"
        }
        table += """

            | NIC rate limit asked | VM sends (meter) | VM receives (tc tbf) |
            |---:|---:|---:|

            """
        for limit in limits {
            table += "| \(limit.asked) Mbit/s | \(String(format: "%.1f", limit.sent)) Mbit/s (\(String(format: "%+.0f", (limit.sent / Double(limit.asked) - 1) * 100)) %) | \(String(format: "%.1f", limit.received)) Mbit/s (\(String(format: "%+.0f", (limit.received / Double(limit.asked) - 1) * 100)) %) |\n"
        }
        print(table)
        let results = Paths.repository + "/bench/results"
        try? FileManager.default.createDirectory(atPath: results, withIntermediateDirectories: true)
        try table.write(toFile: "\(results)/network-\(stamp).md", atomically: true, encoding: .utf8)
        for row in [raw] + rows { #expect(row.mbit > 0 && row.rttMs > 0, "\(row.path): \(row.mbit) Mbit/s, \(row.rttMs) ms") }
        for limit in limits {
            #expect(abs(limit.sent - Double(limit.asked)) <= Double(limit.asked) * 0.2, "sent under \(limit.asked) Mbit/s: \(limit.sent)")
            #expect(abs(limit.received - Double(limit.asked)) <= Double(limit.asked) * 0.2, "received under \(limit.asked) Mbit/s: \(limit.received)")
        }
    }
}
