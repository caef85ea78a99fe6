import Foundation
import HostKit
import ShepherdAPI
import Testing
import TestSupport

/// Host power through each host's Redfish BMC (`shepherd bmc`), with real agent processes and
/// the fake hypervisor driver: power-off really ends the agent, power-on starts it again.
@Suite("Host power through the BMC")
struct HostPowerTests {
    @Test("power off is refused while VMs run, forced it stops them and ends the host's agent; power on brings the host back")
    func powerOffAndOn() async throws {
        try await TestCluster.with(driver: "fake", hosts: 1, bmc: true) { cluster in
            _ = try await cluster.createVM("p1", memoryMiB: 64, host: "host-1")
            try #require(try await cluster.start("p1").state == .succeeded)
            let before = try cluster.databaseSnapshot()

            let (status, refusal) = try await cluster.raw("POST", "/api/v1/hosts/host-1/power", token: cluster.adminToken, body: #"{"action":"off"}"#)
            #expect(status == 409 && refusal.contains("illegal_state") && refusal.contains("p1") && refusal.contains("maintenance"), "\(status) \(refusal)")
            #expect(try cluster.databaseSnapshot() == before, "a refused power-off changes nothing")

            let agent = try #require(cluster.agentPid("host-1"))
            let off = try await cluster.power("off", "host-1", force: true)
            #expect(off.state == .succeeded, "\(String(describing: off.error?.message))")
            #expect(!Processes.isAlive(agent), "power-off ends the host's agent")
            let host = try await cluster.host("host-1")
            #expect(host.state == .disconnected && host.bmc?.powerState == "Off")
            let vm = try await cluster.vm("p1")
            #expect(vm.state == .stopped, "the VM stopped with its host: \(vm.state)")

            let on = try await cluster.power("on", "host-1")
            #expect(on.state == .succeeded, "\(String(describing: on.error?.message))")
            let back = try await cluster.host("host-1")
            #expect(back.state == .connected && back.bmc?.powerState == "On")
            #expect(cluster.agentPid("host-1") != nil && cluster.agentPid("host-1") != agent)
        }
    }

    @Test("BMC credentials are checked before they are kept and never appear in an answer, an event or a log")
    func credentials() async throws {
        try await TestCluster.with(driver: "fake", hosts: 1, bmc: true) { cluster in
            let password = try String(contentsOfFile: cluster.bmcPasswordFile, encoding: .utf8).trimmingCharacters(in: .newlines)
            let port = try #require(cluster.bmcPorts["host-1"])
            let (_, shown) = try await cluster.raw("GET", "/api/v1/hosts/host-1", token: cluster.adminToken)
            #expect(shown.contains("127.0.0.1:\(port)") && !shown.contains(password), "\(shown)")
            #expect(try await cluster.host("host-1").bmc?.powerState == "On")

            // A wrong password: refused by the BMC, nothing changes, the answer does not echo it.
            // The host's BMC settings as the API shows them (heartbeats and power checks change the rest).
            func bmcShown() async throws -> String {
                let text = try await cluster.raw("GET", "/api/v1/hosts/host-1", token: cluster.adminToken).1
                let bmc = (try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])?["bmc"] as? [String: Any]
                return "\(bmc?["address"] ?? "none") \(bmc?["user"] ?? "none")"
            }
            let before = try await bmcShown()
            let wrong = "not-the-\(password)"
            let (status, answer) = try await cluster.raw("PUT", "/api/v1/hosts/host-1/bmc", token: cluster.adminToken,
                                                         body: #"{"address":"redfish+http://127.0.0.1:\#(port)","user":"admin","password":"\#(wrong)"}"#)
            #expect(status == 502 && answer.contains("bmc_failed"), "\(status) \(answer)")
            #expect(!answer.contains(wrong))
            #expect(try await bmcShown() == before, "a refused BMC change keeps the old one")

            // A bad address names the field.
            let (badStatus, bad) = try await cluster.raw("PUT", "/api/v1/hosts/host-1/bmc", token: cluster.adminToken,
                                                         body: #"{"address":"ftp://x","user":"admin","password":"p"}"#)
            #expect(badStatus == 400 && bad.contains("bmc"), "\(badStatus) \(bad)")

            // Without a BMC, power control says how to set one.
            let (deleted, _) = try await cluster.raw("DELETE", "/api/v1/hosts/host-1/bmc", token: cluster.adminToken)
            #expect(deleted == 204)
            let (noBMC, message) = try await cluster.raw("POST", "/api/v1/hosts/host-1/power", token: cluster.adminToken, body: #"{"action":"on"}"#)
            #expect(noBMC == 409 && message.contains("--bmc"), "\(noBMC) \(message)")

            let events = try await cluster.events().map(\.message).joined(separator: "\n")
            #expect(!events.contains(password) && !events.contains(wrong))
            let logs = try ["manager.log", "bmc-host-1.log", "agent-host-1.log"].map {
                try String(contentsOfFile: "\(cluster.directory)/\($0)", encoding: .utf8)
            }.joined()
            #expect(!logs.contains(password) && !logs.contains(wrong))
        }
    }
}
