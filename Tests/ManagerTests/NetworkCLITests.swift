import Foundation
import HostKit
import Testing
import TestSupport

/// The networking commands as an operator types them (fake driver: manager logic only).
@Suite("Networking CLI")
struct NetworkCLITests {
    /// Runs `shepherd ARGS` against the cluster; returns exit status and output.
    static func shepherd(_ cluster: TestCluster, _ arguments: [String]) async throws -> (Int32, String) {
        let result = try await Command.run(try Paths.binary(), arguments + ["--url", cluster.url, "--token", cluster.adminToken],
                                           timeout: .seconds(60))
        return (result.status, result.stdout + result.stderr)
    }

    @Test("dvs, portgroup and nic commands build a switch, a port group and a NIC; bad flags are refused naming the flag before any request")
    func commands() async throws {
        try await TestCluster.with(driver: "fake", hosts: 2) { cluster in
            var (status, output) = try await Self.shepherd(cluster, ["dvs", "create", "prod", "--bond", "balance-slb"])
            #expect(status == 0, "\(output)")
            (status, output) = try await Self.shepherd(cluster, ["dvs", "show", "prod"])
            #expect(status == 0 && output.contains("host-1") && output.contains("host-2") && output.contains("in-sync"), "\(output)")
            (status, output) = try await Self.shepherd(cluster, ["portgroup", "create", "prod", "web", "--vlan", "100"])
            #expect(status == 0, "\(output)")
            (status, output) = try await Self.shepherd(cluster, ["portgroup", "create", "prod", "tagged", "--trunk", "100,200-210"])
            #expect(status == 0, "\(output)")
            (status, output) = try await Self.shepherd(cluster, ["portgroup", "list", "--json"])
            let groups = try JSONSerialization.jsonObject(with: Data(output.utf8)) as? [[String: Any]]
            #expect(groups?.compactMap { $0["trunks"] as? String } == ["100,200-210"], "\(output)")

            try #require(try await cluster.createVM("web1").state == .succeeded)
            (status, output) = try await Self.shepherd(cluster, ["nic", "add", "web1", "--portgroup", "web", "--ip", "10.0.0.5/24", "--rate", "100M"])
            #expect(status == 0, "\(output)")
            (status, output) = try await Self.shepherd(cluster, ["nic", "list", "web1", "--json"])
            let nics = try JSONSerialization.jsonObject(with: Data(output.utf8)) as? [[String: Any]]
            #expect(nics?.first?["ip"] as? String == "10.0.0.5/24" && nics?.first?["rateMbit"] as? Int == 100, "\(output)")
            (status, output) = try await Self.shepherd(cluster, ["nic", "set", "web1", "nic0", "--link", "down", "--no-ip"])
            #expect(status == 0, "\(output)")
            (status, output) = try await Self.shepherd(cluster, ["nic", "list", "web1", "--json"])
            let changed = try JSONSerialization.jsonObject(with: Data(output.utf8)) as? [[String: Any]]
            #expect(changed?.first?["link"] as? String == "down" && changed?.first?["ip"] == nil, "\(output)")

            // Refused before any request, naming the flag.
            for (arguments, flag) in [(["dvs", "create", "x", "--uplink", "eth1"], "--uplink"), (["portgroup", "create", "prod", "y", "--vlan", "5000"], "--vlan"),
                                      (["nic", "add", "web1", "--portgroup", "web", "--ip", "10.0.0.0/24"], "--ip"),
                                      (["nic", "set", "web1", "nic0", "--link", "sideways"], "--link")] {
                (status, output) = try await Self.shepherd(cluster, arguments)
                #expect(status != 0 && output.contains(flag), "\(arguments): \(output)")
            }
            (status, output) = try await Self.shepherd(cluster, ["portgroup", "list", "--json"])
            #expect((try JSONSerialization.jsonObject(with: Data(output.utf8)) as? [Any])?.count == 2, "the refusals created nothing: \(output)")
        }
    }
}
