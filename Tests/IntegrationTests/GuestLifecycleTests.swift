import Foundation
import HostKit
import Testing
import TestSupport

extension RealGuests {
/// Real QEMU guests (TCG when KVM does not work) booted from the tiny template.
@Suite("Real guests")
struct GuestLifecycleTests {
    @Test("a guest goes from create to delete, and its commands' output and exit codes come back")
    func createStartExecStopDelete() async throws {
        try await TestCluster.with(driver: "qemu") { cluster in
            let created = try await cluster.createVM("life1", memoryMiB: 128)
            #expect(created.state == .succeeded, "\(created.error?.message ?? "")")
            let disk = try await cluster.vm("life1").diskPath
            #expect(FileManager.default.fileExists(atPath: disk))

            let started = try await cluster.start("life1")
            #expect(started.state == .succeeded, "\(started.error?.message ?? "") \(cluster.log("agent-host-1.log"))")
            #expect(started.message.contains("tools answer"))
            let running = try await cluster.vm("life1")
            #expect(running.state == .running && running.toolsStatus == .running)

            let uname = try await cluster.exec("life1", ["uname", "-a"])
            #expect(uname.exitCode == 0)
            #expect(uname.stdout.hasPrefix("Linux tiny"))
            let failing = try await cluster.exec("life1", ["sh", "-c", "echo out; echo err >&2; exit 3"])
            #expect(failing.exitCode == 3)
            #expect(failing.stdout == "out\n")
            #expect(failing.stderr == "err\n")

            let pid = try #require(running.pid)
            let stopped = try await cluster.stop("life1")
            #expect(stopped.state == .succeeded, "\(stopped.error?.message ?? "")")
            #expect(stopped.message.contains("through the tools"))
            #expect(try await cluster.vm("life1").state == .stopped)
            #expect(!Processes.isAlive(Int32(pid)))

            #expect(try await cluster.delete("life1").state == .succeeded)
            #expect(!FileManager.default.fileExists(atPath: disk))
            #expect(try await cluster.raw("GET", "/api/v1/vms/life1", token: cluster.adminToken).0 == 404)
        }
    }

    @Test("an agent restart keeps the guest running and the new agent adopts it")
    func agentRestartAdopts() async throws {
        try await TestCluster.with(driver: "qemu") { cluster in
            _ = try await cluster.createVM("adopt1")
            let started = try await cluster.start("adopt1")
            try #require(started.state == .succeeded, "\(started.error?.message ?? "")")
            let bootID = try await cluster.exec("adopt1", ["cat", "/proc/sys/kernel/random/boot_id"]).stdout
            let pid = try #require(try await cluster.vm("adopt1").pid)

            await cluster.stopAgent("host-1")
            #expect(Processes.isAlive(Int32(pid)), "QEMU must outlive its agent")
            try await cluster.startAgent("host-1")
            try await Task.sleep(for: .seconds(3))
            try await cluster.waitForHosts(connected: 1)

            let after = try await cluster.exec("adopt1", ["cat", "/proc/sys/kernel/random/boot_id"])
            #expect(after.stdout == bootID, "the guest must not have rebooted")
            let vm = try await cluster.vm("adopt1")
            #expect(vm.state == .running)
            #expect(vm.pid == pid)
            #expect(cluster.log("agent-host-1.log").contains("1 QEMU process(es) adopted"))
            #expect(try await cluster.stop("adopt1", force: true).state == .succeeded)
        }
    }

    @Test("killing QEMU marks the VM crashed with an event, and it can start again")
    func crashIsReported() async throws {
        try await TestCluster.with(driver: "qemu") { cluster in
            _ = try await cluster.createVM("crash1")
            try #require(try await cluster.start("crash1").state == .succeeded)
            let pid = try #require(try await cluster.vm("crash1").pid)
            #expect(Processes.kill(Int32(pid)))

            let crashed = try await cluster.waitForVM("crash1", timeout: .seconds(20)) { $0.state == .crashed }
            #expect(crashed.stateReason?.contains("pid \(pid)") == true)
            let event = try #require(try await cluster.events().first { $0.kind == "vm.crashed" && $0.targetName == "crash1" })
            #expect(event.severity == .error)
            #expect(event.message.contains("ended unexpectedly"))

            let restarted = try await cluster.start("crash1")
            #expect(restarted.state == .succeeded, "\(restarted.error?.message ?? "")")
            #expect(try await cluster.exec("crash1", ["true"]).exitCode == 0)
            #expect(try await cluster.delete("crash1", force: true).state == .succeeded)
        }
    }

    @Test("what the guest writes to its root disk survives a reboot")
    func rootDiskPersists() async throws {
        try await TestCluster.with(driver: "qemu") { cluster in
            _ = try await cluster.createVM("disk1")
            try #require(try await cluster.start("disk1").state == .succeeded)
            let before = try await cluster.exec("disk1", ["cat", "/proc/sys/kernel/random/boot_id"]).stdout
            #expect(try await cluster.exec("disk1", ["sh", "-c", "echo kept > /root/marker && sync"]).exitCode == 0)

            let rebooted = try await cluster.reboot("disk1")
            #expect(rebooted.state == .succeeded, "\(rebooted.error?.message ?? "")")
            let after = try await cluster.exec("disk1", ["cat", "/proc/sys/kernel/random/boot_id"]).stdout
            #expect(after != before, "the guest must have rebooted")
            #expect(try await cluster.exec("disk1", ["cat", "/root/marker"]).stdout == "kept\n")
            #expect(try await cluster.stop("disk1", force: true).state == .succeeded)
        }
    }
}
}
