import Foundation
#if canImport(Glibc)
import Glibc
#endif
import HostKit
import ShepherdAPI
import Testing
import TestSupport

extension RealGuests {
/// VM-level HA on real guests: QEMU killed, guest kernel panic (pvpanic), policy stop.
@Suite("HA")
struct HATests {
    private func waitForRestart(_ cluster: TestCluster, _ vm: String, oldPid: Int?) async throws -> Int? {
        let restarted = try await cluster.waitForVM(vm, timeout: .seconds(90)) { $0.state == .running && $0.pid != nil && $0.pid != oldPid }
        return restarted.pid
    }

    @Test("with HA on, a VM whose QEMU is killed or whose guest panics is restarted on its host; policy stop leaves it down")
    func restarts() async throws {
        try await TestCluster.with(driver: "qemu", hosts: 1) { cluster in
            #expect(try await cluster.setCluster(#"{"ha":{"enabled":true}}"#).0 == 200)
            _ = try await cluster.createVM("ha1", memoryMiB: 96, host: "host-1")
            try #require(try await cluster.start("ha1").state == .succeeded)

            // QEMU killed from outside.
            let first = try #require(try await cluster.vm("ha1").pid)
            #expect(HostKit.Processes.kill(Int32(first)))
            let second = try await waitForRestart(cluster, "ha1", oldPid: first)
            #expect(try await cluster.events().contains { $0.kind == "ha.restart" && $0.targetName == "ha1" })
            _ = try await cluster.waitForVM("ha1", timeout: .seconds(60)) { $0.toolsStatus == .running }
            #expect(try await cluster.exec("ha1", ["true"]).exitCode == 0)

            // The guest kernel panics: pvpanic tells QEMU, the agent reports it, HA restarts it.
            _ = try? await cluster.exec("ha1", ["sh", "-c", "(sleep 1; echo c > /proc/sysrq-trigger) >/dev/null 2>&1 &"])
            _ = try await waitForRestart(cluster, "ha1", oldPid: second)
            let events = try await cluster.events().filter { $0.targetName == "ha1" }
            #expect(events.contains { $0.kind == "vm.crashed" && $0.message.contains("panicked") }, "\(events.map(\.message))")
            #expect(events.filter { $0.kind == "ha.restart" }.count == 2, "\(events.map(\.message))")

            // Policy stop: HA leaves it crashed.
            #expect(try await cluster.raw("PATCH", "/api/v1/vms/ha1", token: cluster.adminToken, body: #"{"haPolicy":"stop"}"#).0 == 200)
            _ = try await cluster.waitForVM("ha1", timeout: .seconds(60)) { $0.toolsStatus == .running }
            // The restart's start task may still be finishing: a QEMU killed under it fails that
            // task (a user's start reports that), not HA. Kill once the task has ended.
            for _ in 0..<120 where try await cluster.tasks().contains(where: { $0.targetName == "ha1" && ($0.state == .running || $0.state == .queued) }) {
                try await Task.sleep(for: .milliseconds(250))
            }
            let third = try #require(try await cluster.vm("ha1").pid)
            #expect(HostKit.Processes.kill(Int32(third)))
            _ = try await cluster.waitForVM("ha1", timeout: .seconds(30)) { $0.state == .crashed }
            try await Task.sleep(for: .seconds(6))
            #expect(try await cluster.vm("ha1").state == .crashed)
            #expect(try await cluster.events().contains { $0.kind == "ha.skipped" && $0.targetName == "ha1" })
            #expect(try await cluster.delete("ha1", force: true).state == .succeeded)
        }
    }

    private func waitForEvent(_ cluster: TestCluster, _ kind: String, _ vm: String, timeout: Duration = .seconds(120)) async throws -> Components.Schemas.Event? {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let event = try await cluster.events().first(where: { $0.kind == kind && $0.targetName == vm }) { return event }
            try await Task.sleep(for: .seconds(2))
        }
        return nil
    }

    @Test("a host that loses power: once its storage lease expires, its protected VM restarts on another host")
    func powerLoss() async throws {
        try await TestCluster.with(driver: "qemu", hosts: 2) { cluster in
            #expect(try await cluster.setCluster(#"{"ha":{"enabled":true}}"#).0 == 200)
            _ = try await cluster.createVM("hf1", memoryMiB: 96, host: "host-1")
            try #require(try await cluster.start("hf1").state == .succeeded)
            let pid = try #require(try await cluster.vm("hf1").pid)
            // `host show` reports the lease: renewed within the last few seconds while the host lives…
            let renewed = try #require(try await cluster.host("host-1").leaseRenewedAt, "no lease renewal reported")
            #expect(Date().timeIntervalSince(renewed) < 10)
            // Power off host-1: its agent and its QEMU end at once.
            await cluster.stopAgent("host-1", kill: true)
            #expect(HostKit.Processes.kill(Int32(pid)))
            let moved = try await cluster.waitForVM("hf1", timeout: .seconds(120)) { $0.state == .running && $0.hostName == "host-2" }
            #expect(moved.pid != nil && moved.pid != pid)
            let failover = try await waitForEvent(cluster, "ha.failover", "hf1", timeout: .seconds(5))
            #expect(failover?.message.contains("storage lease") == true, "\(String(describing: failover?.message))")
            // …and expired once it is lost, as HA read it from the lease file.
            let last = try #require(try await cluster.host("host-1").leaseRenewedAt)
            #expect(Date().timeIntervalSince(last) > 20, "lease renewed \(last)")
            _ = try await cluster.waitForVM("hf1", timeout: .seconds(60)) { $0.toolsStatus == .running }
            #expect(try await cluster.exec("hf1", ["true"]).exitCode == 0)
            #expect(cluster.qemuPids().count == 1)
        }
    }

    @Test("an agent that dies while its VM runs: the VM is never started twice — the disk lock stops the restart, it is handed back and held")
    func neverTwice() async throws {
        try await TestCluster.with(driver: "qemu", hosts: 2) { cluster in
            #expect(try await cluster.setCluster(#"{"ha":{"enabled":true}}"#).0 == 200)
            _ = try await cluster.createVM("hf2", memoryMiB: 96, host: "host-1")
            try #require(try await cluster.start("hf2").state == .succeeded)
            let pid = try #require(try await cluster.vm("hf2").pid)
            await cluster.stopAgent("host-1", kill: true)   // QEMU keeps running
            let held = try await waitForEvent(cluster, "ha.held", "hf2")
            let history = try await cluster.events().filter { $0.targetName == "hf2" }.map { "\($0.kind): \($0.message)" }
            #expect(held != nil, "HA never tried, or not stopped by the disk lock: \(history)")
            print("ha.held: \(held?.message ?? "-")")
            #expect(held?.message.contains("Is another process using the image") == true, "the restart must have been stopped by the disk lock: \(history)")
            // Held for 30 s: no second attempt while the test watches, the record stays on host-1.
            for _ in 0..<8 {
                try await Task.sleep(for: .seconds(2))
                let vm = try await cluster.vm("hf2")
                #expect(vm.hostName == "host-1" && vm.state == .unknown, "handed back to its host, unknown: \(vm.hostName) \(vm.state)")
            }
            let attempts = try await cluster.events().filter { $0.targetName == "hf2" && $0.kind == "ha.failover" }.count
            #expect(attempts == 1, "one attempt, then held: \(history)")
            #expect(HostKit.Processes.isAlive(Int32(pid)), "the original QEMU must still run")
            #expect(cluster.qemuPids() == [Int32(pid)], "exactly one QEMU may run hf2: \(cluster.qemuPids())")
            // The agent returns and finds the guest still running.
            try await cluster.startAgent("host-1")
            let back = try await cluster.waitForVM("hf2", timeout: .seconds(60)) { $0.state == .running && $0.hostName == "host-1" }
            #expect(back.pid == pid)
        }
    }

    @Test("under a BMC a killed agent is restarted and keeps its VM; a hung host is fenced through Redfish and its VM runs once elsewhere")
    func bmcFencing() async throws {
        try await TestCluster.with(driver: "qemu", hosts: 2, bmc: true) { cluster in
            #expect(try await cluster.setCluster(#"{"ha":{"enabled":true}}"#).0 == 200)
            _ = try await cluster.createVM("hf3", memoryMiB: 96, host: "host-1")
            try #require(try await cluster.start("hf3").state == .succeeded)
            let pid = try #require(try await cluster.vm("hf3").pid)
            // The agent dies: its service manager (the BMC emulator here) starts it again; the VM stays.
            let agent = try #require(cluster.agentPid("host-1"))
            await cluster.stopAgent("host-1", kill: true)
            try await Task.sleep(for: .seconds(14))   // past the 10 s after which a silent host is lost
            #expect(cluster.agentPid("host-1") != nil && cluster.agentPid("host-1") != agent, "the agent runs again")
            let kept = try await cluster.vm("hf3")
            #expect(kept.hostName == "host-1" && kept.pid == pid && kept.state == .running, "\(kept.hostName) \(String(describing: kept.pid)) \(kept.state)")
            #expect(try await cluster.events().allSatisfy { $0.kind != "host.fenced" })
            // The host hangs (agent and QEMU stopped, BMC still On): only fencing makes a restart safe.
            let hungAgent = try #require(cluster.agentPid("host-1"))
            #expect(Glibc.kill(hungAgent, SIGSTOP) == 0 && Glibc.kill(Int32(pid), SIGSTOP) == 0)
            let hungAt = ContinuousClock.now
            let moved = try await cluster.waitForVM("hf3", timeout: .seconds(120)) { $0.state == .running && $0.hostName == "host-2" }
            let running = try await cluster.waitForVM("hf3", timeout: .seconds(60)) { $0.toolsStatus == .running }
            print("BMC fencing: host hung → tools answer on host-2 after \(ContinuousClock.now - hungAt)")
            #expect(moved.pid != pid)
            #expect(!HostKit.Processes.isAlive(Int32(pid)), "fencing must have ended the old QEMU")
            #expect(cluster.qemuPids() == [Int32(try #require(running.pid))], "exactly one QEMU runs hf3: \(cluster.qemuPids())")
            let events = try await cluster.events()
            let fenced = events.first { $0.kind == "host.fenced" && $0.targetName == "host-1" }
            #expect(fenced != nil, "no host.fenced event: \(events.prefix(15).map { "\($0.kind): \($0.message)" })")
            let failover = events.first { $0.kind == "ha.failover" && $0.targetName == "hf3" }
            #expect(failover?.message.contains("BMC") == true, "\(String(describing: failover?.message))")
            #expect(try await cluster.host("host-1").bmc?.powerState == "Off")
            #expect(try await cluster.exec("hf3", ["true"]).exitCode == 0)
            // The operator powers host-1 back on: its agent returns and the host reconnects.
            let on = try await cluster.power("on", "host-1")
            #expect(on.state == .succeeded, "\(String(describing: on.error?.message))")
            let host = try await cluster.host("host-1")
            #expect(host.state == .connected && host.bmc?.powerState == "On")
            #expect(cluster.qemuPids().count == 1, "powering host-1 on must not start hf3 there again")
        }
    }

    @Test("a host cut off from the manager and its peers (storage kept) powers its VMs off per the isolation response; HA restarts them elsewhere, once")
    func isolation() async throws {
        try await TestCluster.with(driver: "qemu", hosts: 2, namespaced: ["host-2"]) { cluster in
            #expect(try await cluster.setCluster(#"{"ha":{"enabled":true,"isolationResponse":"power-off"}}"#).0 == 200)
            _ = try await cluster.createVM("iso1", memoryMiB: 96, host: "host-2")
            try #require(try await cluster.start("iso1").state == .succeeded)
            let pid = try #require(try await cluster.vm("iso1").pid)
            try await Task.sleep(for: .seconds(3))   // a heartbeat answer carries the response to the agent
            let cutAt = ContinuousClock.now
            try await cluster.cutManagementLink("host-2")
            let moved = try await cluster.waitForVM("iso1", timeout: .seconds(120)) { $0.state == .running && $0.hostName == "host-1" }
            let running = try await cluster.waitForVM("iso1", timeout: .seconds(60)) { $0.toolsStatus == .running }
            print("isolation: link cut → tools answer on host-1 after \(ContinuousClock.now - cutAt)")
            #expect(moved.pid != pid)
            #expect(!HostKit.Processes.isAlive(Int32(pid)), "the isolated host must have powered off its VM")
            #expect(cluster.qemuPids() == [Int32(try #require(running.pid))], "exactly one QEMU runs iso1: \(cluster.qemuPids())")
            let failover = try await cluster.events().first { $0.kind == "ha.failover" && $0.targetName == "iso1" }
            #expect(failover?.message.contains("isolated") == true, "\(String(describing: failover?.message))")
            #expect(cluster.log("agent-host-2.log").contains("isolation response power-off applied"))
            // The link returns: host-2 reconnects, and iso1 still runs once, on host-1.
            try await cluster.cutManagementLink("host-2", restore: true)
            try await cluster.waitForHosts(connected: 2, timeout: .seconds(60))
            try await Task.sleep(for: .seconds(4))
            #expect(try await cluster.vm("iso1").hostName == "host-1")
            #expect(cluster.qemuPids().count == 1)
        }
    }

    @Test("an agent that cannot renew its storage lease ends its own VMs before the lease expires")
    func selfFencing() async throws {
        try await TestCluster.with(driver: "qemu", hosts: 1) { cluster in
            _ = try await cluster.createVM("sf1", memoryMiB: 96, host: "host-1")
            try #require(try await cluster.start("sf1").state == .succeeded)
            let pid = try #require(try await cluster.vm("sf1").pid)
            let hostID = try await cluster.host("host-1").id
            // A directory where the lease file goes: every renewal now fails (root ignores modes).
            let lease = "\(cluster.sharedDatastore)/.shepherd/leases/\(hostID).json"
            var blocked = false
            for _ in 0..<50 where !blocked {
                try? FileManager.default.removeItem(atPath: lease)
                blocked = (try? FileManager.default.createDirectory(atPath: lease, withIntermediateDirectories: false)) != nil
            }
            try #require(blocked, "could not put a directory at \(lease)")
            let started = ContinuousClock.now
            while HostKit.Processes.isAlive(Int32(pid)), ContinuousClock.now - started < .seconds(40) {
                try await Task.sleep(for: .milliseconds(500))
            }
            let elapsed = ContinuousClock.now - started
            #expect(!HostKit.Processes.isAlive(Int32(pid)), "the agent did not fence itself in 40 s")
            #expect(elapsed < .seconds(Int64(20)), "fenced after \(elapsed); the lease expires after 20 s")
            #expect(cluster.log("agent-host-1.log").contains("self-fencing"))
            try FileManager.default.removeItem(atPath: lease)
        }
    }
}
}
