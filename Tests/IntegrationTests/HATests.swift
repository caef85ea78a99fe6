import Foundation
import HostKit
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
            let third = try #require(try await cluster.vm("ha1").pid)
            #expect(HostKit.Processes.kill(Int32(third)))
            _ = try await cluster.waitForVM("ha1", timeout: .seconds(30)) { $0.state == .crashed }
            try await Task.sleep(for: .seconds(6))
            #expect(try await cluster.vm("ha1").state == .crashed)
            #expect(try await cluster.events().contains { $0.kind == "ha.skipped" && $0.targetName == "ha1" })
            #expect(try await cluster.delete("ha1", force: true).state == .succeeded)
        }
    }
}
}
