import Foundation
import Testing
import TestSupport

/// Migration orchestration against the fake driver (the data plane is tested on real guests).
@Suite("Migration API", .serialized)
struct MigrationAPITests {
    @Test("a dry run lists every failed check, and a refused migration changes nothing")
    func dryRunListsEverything() async throws {
        try await TestCluster.with(driver: "fake", hosts: 2) { cluster in
            _ = try await cluster.createVM("m1", host: "host-1")
            let token = cluster.adminToken
            let (status, body) = try await cluster.raw("POST", "/api/v1/vms/m1/migrate", token: token, body: #"{"target":"host-1","dryRun":true}"#)
            #expect(status == 200)
            #expect(body.contains("vm_not_running") && body.contains("same_host"), "\(body)")
            #expect(body.contains(#""ok" : false"#) || body.contains(#""ok":false"#), "\(body)")
            let before = try cluster.databaseSnapshot()
            let (refused, answer) = try await cluster.raw("POST", "/api/v1/vms/m1/migrate", token: token, body: #"{"target":"host-2"}"#)
            #expect(refused == 409)
            #expect(answer.contains("preflight_failed") && answer.contains("vm_not_running: VM 'm1' is stopped"), "\(answer)")
            #expect(try cluster.databaseSnapshot() == before)
            let (unknown, why) = try await cluster.raw("POST", "/api/v1/vms/m1/migrate", token: token, body: #"{"target":"nohost"}"#)
            #expect(unknown == 400 && why.contains("target: host 'nohost' does not exist"))
        }
    }

    @Test("a target the source cannot reach is refused by a real connection attempt")
    func unreachableTarget() async throws {
        try await TestCluster.with(driver: "fake", hosts: 2) { cluster in
            _ = try await cluster.createVM("m3", host: "host-1")
            _ = try await cluster.start("m3")
            // The target's agent is gone but the manager still counts host-2 connected (no heartbeat missed yet).
            await cluster.stopAgent("host-2", kill: true)
            let (status, body) = try await cluster.raw("POST", "/api/v1/vms/m3/migrate", token: cluster.adminToken, body: #"{"target":"host-2","dryRun":true}"#)
            #expect(status == 200)
            #expect(body.contains("network_unreachable") && body.contains("'host-1' cannot reach 'host-2'"), "\(body)")
            #expect(!body.contains("target_not_connected"), "\(body)")
        }
    }

    @Test("a running VM moves to the target host and the source forgets it")
    func moves() async throws {
        try await TestCluster.with(driver: "fake", hosts: 2) { cluster in
            _ = try await cluster.createVM("m2", host: "host-1")
            _ = try await cluster.start("m2")
            let (status, check) = try await cluster.raw("POST", "/api/v1/vms/m2/migrate", token: cluster.adminToken, body: #"{"target":"host-2","dryRun":true}"#)
            #expect(status == 200 && (check.contains(#""ok" : true"#) || check.contains(#""ok":true"#)), "\(check)")
            let task = try await cluster.migrate("m2", to: "host-2")
            #expect(task.state == .succeeded, "\(task.error?.message ?? "")")
            #expect(task.message.contains("migrated to host-2"))
            let vm = try await cluster.vm("m2")
            #expect(vm.hostName == "host-2" && vm.state == .running)
            #expect(try await cluster.events().contains { $0.kind == "vm.migrated" && $0.targetName == "m2" })
        }
    }
}

@Suite("Maintenance mode", .serialized)
struct MaintenanceTests {
    @Test("a host whose VMs have nowhere to go does not enter maintenance, says which VM and why, and takes VMs again")
    func refusesWhenStuck() async throws {
        try await TestCluster.with(driver: "fake", hosts: 1) { cluster in
            _ = try await cluster.createVM("only", host: "host-1")
            _ = try await cluster.start("only")
            let task = try await cluster.maintenance("enter", "host-1")
            #expect(task.state == .failed)
            let reason = task.error?.message ?? ""
            #expect(reason.contains("only: no host can take the VM"), "\(reason)")
            #expect(reason.contains("out of maintenance mode again"))
            #expect(try await cluster.host("host-1").state == .connected)
        }
    }

    @Test("a host in maintenance takes no new VMs, and exit brings it back")
    func noNewVMs() async throws {
        try await TestCluster.with(driver: "fake", hosts: 2) { cluster in
            #expect(try await cluster.maintenance("enter", "host-1").state == .succeeded)
            #expect(try await cluster.host("host-1").state == .maintenance)
            let (status, body) = try await cluster.raw("POST", "/api/v1/vms", token: cluster.adminToken,
                                                       body: #"{"name":"new","cpus":1,"memoryMiB":64,"host":"host-1"}"#)
            #expect(status == 409 && body.contains("maintenance"), "\(body)")
            _ = try await cluster.createVM("placed")
            #expect(try await cluster.vm("placed").hostName == "host-2")
            #expect(try await cluster.maintenance("exit", "host-1").state == .succeeded)
            #expect(try await cluster.host("host-1").state == .connected)
        }
    }
}
