import Foundation
import HostKit
import ShepherdAPI
import Testing
import TestSupport

extension RealGuests {
/// `shepherd demo` as a user runs it, under its own names so it never touches a real demo.
@Suite("Demo")
struct DemoTests {
    @Test("the demo comes up with three hosts and a running guest, tears down leaving nothing behind, and comes back with the same VMs")
    func upDownUp() async throws {
        let binary = try Paths.binary()
        let image = try Paths.guestImage()
        let directory = NSTemporaryDirectory() + "shepherd-demo-test-\(UInt32.random(in: 0...UInt32.max))"
        let prefix = "sd\(Int.random(in: 10...99))-"
        let port = try TCP.freePort()
        let subnet = "10.\(Int.random(in: 180...199)).\(Int.random(in: 1...250))"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try Files.ensureDirectory(directory, mode: 0o700)
        let arguments = ["demo", "--state-dir", directory + "/state", "--image", image, "--prefix", prefix,
                         "--subnet", subnet, "--port", "\(port)"]

        for round in 1...2 {
            let log = "\(directory)/demo-\(round).log"
            let demo = try ChildProcess.spawn(binary, arguments, logFile: log)
            var ready = false
            for _ in 0..<600 where demo.isRunning {
                if (try? String(contentsOfFile: log, encoding: .utf8))?.contains("Shepherd demo is ready") == true { ready = true; break }
                try await Task.sleep(for: .milliseconds(500))
            }
            if !ready { await demo.terminate(grace: .seconds(60)) }
            try #require(ready, "the demo did not become ready: \((try? String(contentsOfFile: log, encoding: .utf8)) ?? "")")

            let token = try String(contentsOfFile: directory + "/state/admin-token", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
            let client = try Client.manager(url: "http://127.0.0.1:\(port)", token: token)
            guard case .ok(let hosts) = try await client.listHosts(), case .ok(let vms) = try await client.listVMs() else {
                Issue.record("the demo's manager did not answer")
                await demo.terminate(grace: .seconds(60))
                return
            }
            let connected: Set<String> = Set(try hosts.body.json.filter { $0.state == .connected }.map(\.name))
            let expected: Set<String> = Set((1...3).map { index in prefix + "host-\(index)" })
            #expect(connected == expected)
            #expect(try hosts.body.json.allSatisfy { $0.bmc?.powerState == "On" }, "every demo host has a Redfish BMC that reports it on")
            let demoVM = try vms.body.json.first { $0.name == "demo-1" }
            #expect(demoVM?.state == .running, "round \(round)")
            #expect(demoVM?.toolsStatus == .running, "round \(round)")
            #expect(Net.namespaceExists("\(prefix)host-1"))
            #expect(Net.namespaceExists("\(prefix)pswitch"), "the physical switch namespace")
            // demo-1 is on port group vm-net (VLAN 100) of DVS dvs0, its address set through its tools.
            if case .ok(let nics) = try await client.listNICs(path: .init(vm: "demo-1")) {
                #expect(try nics.body.json.map(\.ip) == ["10.100.0.11/24"], "round \(round)")
            } else {
                Issue.record("demo-1's NICs could not be listed")
            }
            var address = ""
            for _ in 0..<40 where !address.contains("10.100.0.11/24") {
                if case .ok(let ok) = try await client.execInVM(path: .init(vm: "demo-1"), body: .json(.init(command: ["ip", "-o", "-4", "addr"]))) {
                    address = try ok.body.json.stdout
                }
                try await Task.sleep(for: .milliseconds(500))
            }
            #expect(address.contains("10.100.0.11/24"), "the guest has its address: \(address)")

            kill(demo.pid, SIGTERM)
            let status = await demo.waitForExit(timeout: .seconds(120))
            #expect(status == 0, "the demo must stop cleanly: \((try? String(contentsOfFile: log, encoding: .utf8)) ?? "")")
            for index in 1...3 {
                #expect(!Net.namespaceExists("\(prefix)host-\(index)"))
                #expect(!Net.linkExists("\(prefix)shep-h\(index)"))
            }
            #expect(!Net.linkExists("\(prefix)shep-br0"))
            #expect(!Net.namespaceExists("\(prefix)pswitch"))
            let switches = (1...3).map { OVS.managed(forStateDirectory: "\(directory)/state/hosts/\(prefix)host-\($0)").directory! }
                + [PhysicalSwitch(namespace: "\(prefix)pswitch").ovs.directory!]
            for folder in switches {
                #expect(!FileManager.default.fileExists(atPath: folder), "an Open vSwitch of the demo is left: \(folder)")
                #expect(processes(mentioning: folder).isEmpty, "Open vSwitch daemons of \(folder) are left")
            }
            let leftovers = processes(mentioning: directory)
            #expect(leftovers.isEmpty, "processes left behind: \(leftovers)")
            for pid in leftovers { _ = Processes.kill(pid) }
        }
    }

    /// Pids whose command line mentions `text` (the demo's state dir is in every process it starts).
    private func processes(mentioning text: String) -> [Int32] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap(Int32.init).filter { pid in
            pid != getpid() && Processes.isAlive(pid) && (Processes.commandLine(pid)?.contains { $0.contains(text) } ?? false)
        }
    }
}
}
