import Foundation
import Testing
import TestSupport
@testable import Manager

/// Manager logic against real manager and agent processes with the fake hypervisor driver.
@Suite("Manager API", .serialized)
struct ManagerAPITests {
    @Test("requests without a valid token get 401; health and the API document are open")
    func authentication() async throws {
        try await TestCluster.with(driver: "fake") { cluster in
            let (noToken, body) = try await cluster.raw("GET", "/api/v1/vms", token: nil)
            #expect(noToken == 401)
            #expect(body.contains("\"code\":\"unauthorized\""))
            #expect(try await cluster.raw("GET", "/api/v1/hosts", token: "wrong").0 == 401)
            #expect(try await cluster.raw("POST", "/api/v1/vms", token: nil, body: #"{"name":"x","cpus":1,"memoryMiB":64}"#).0 == 401)
            #expect(try await cluster.raw("GET", "/api/v1/vms", token: cluster.adminToken).0 == 200)
            #expect(try await cluster.raw("GET", "/healthz", token: nil).0 == 200)
            let (status, yaml) = try await cluster.raw("GET", "/openapi.yaml", token: nil)
            #expect(status == 200)
            #expect(yaml == (try String(contentsOfFile: Paths.repository + "/docs/api/openapi.yaml", encoding: .utf8)))
        }
    }

    @Test("agents need the join token to join and their own credential to beat")
    func agentCredentials() async throws {
        try await TestCluster.with(driver: "fake") { cluster in
            let join = #"{"name":"rogue","cluster":"c","address":"http://127.0.0.1:1","agentVersion":"x","accelerator":"tcg","datastores":[],"host":{"cpuModel":"m","cpuVendor":"v","cpuFlags":[],"cores":1,"memoryTotalBytes":1,"memoryAvailableBytes":1}}"#
            #expect(try await cluster.raw("POST", "/api/v1/agents/register", token: nil, body: join).0 == 401)
            #expect(try await cluster.raw("POST", "/api/v1/agents/register", token: "nope", body: join).0 == 403)
            #expect(try await cluster.raw("POST", "/api/v1/agents/register", token: cluster.adminToken, body: join).0 == 403)
            let beat = #"{"hostId":"x","guests":[],"datastores":[],"host":{"cpuModel":"m","cpuVendor":"v","cpuFlags":[],"cores":1,"memoryTotalBytes":1,"memoryAvailableBytes":1}}"#
            #expect(try await cluster.raw("POST", "/api/v1/agents/heartbeat", token: "nope", body: beat).0 == 404)
            let hosts = try await cluster.raw("GET", "/api/v1/hosts", token: cluster.adminToken).1
            #expect(!hosts.contains("rogue"))
        }
    }

    @Test("every listed bad input is refused with a 4xx naming the field, and the database is unchanged")
    func badInput() async throws {
        try await TestCluster.with(driver: "fake") { cluster in
            _ = try await cluster.createVM("exists")
            _ = try await cluster.start("exists")
            let before = try cluster.databaseSnapshot()
            let token = cluster.adminToken
            let cases: [(String, String, String?, Int, String)] = [
                ("POST", "/api/v1/vms", #"{"name":"","cpus":1,"memoryMiB":64}"#, 400, "name: must not be empty"),
                ("POST", "/api/v1/vms", #"{"name":"exists","cpus":1,"memoryMiB":64}"#, 409, "name: a VM named 'exists' already exists"),
                ("POST", "/api/v1/vms", #"{"name":"bad name","cpus":1,"memoryMiB":64}"#, 400, "name: 'bad name' contains ' '"),
                ("POST", "/api/v1/vms", #"{"name":"a","cpus":0,"memoryMiB":64}"#, 400, "cpus: 0 is outside 1–64"),
                ("POST", "/api/v1/vms", #"{"name":"a","cpus":1000,"memoryMiB":64}"#, 400, "cpus: 1000 is outside"),
                ("POST", "/api/v1/vms", #"{"name":"a","cpus":1,"memoryMiB":0}"#, 400, "memoryMiB: 0 MiB is outside"),
                ("POST", "/api/v1/vms", #"{"name":"a","cpus":1,"memoryMiB":99999999}"#, 400, "memoryMiB: 99999999 MiB is outside"),
                ("POST", "/api/v1/vms", #"{"name":"a","cpus":1,"memoryMiB":64,"host":"nohost"}"#, 400, "host: host 'nohost' does not exist"),
                ("POST", "/api/v1/vms", #"{"name":"a","cpus":1,"memoryMiB":64,"template":"none"}"#, 400, "template: template 'none' does not exist"),
                ("POST", "/api/v1/vms", #"{"name":"a","cpus":1,"memoryMiB":64,"datastore":"none"}"#, 400, "datastore: datastore 'none' does not exist"),
                ("POST", "/api/v1/vms", #"{"name":"a","cpus":1,"memoryMiB":900000}"#, 422, "asked 900000 MiB; largest free"),
                ("POST", "/api/v1/vms", #"{"name":"a","cpus":1}"#, 400, "memoryMiB"),
                ("POST", "/api/v1/vms", #"{"name":"a","cpus":"one","memoryMiB":64}"#, 400, "cpus"),
                ("POST", "/api/v1/vms", "not json", 400, "not valid JSON"),
                ("POST", "/api/v1/vms/exists/start", nil, 409, "cannot start VM 'exists': it is running"),
                ("POST", "/api/v1/vms/nosuch/start", nil, 404, "VM 'nosuch' does not exist"),
                ("DELETE", "/api/v1/vms/exists", nil, 409, "stop it first or use --force"),
                ("POST", "/api/v1/vms/exists/exec", #"{"command":[]}"#, 400, "command: must name a program"),
                ("POST", "/api/v1/vms/exists/exec", #"{"command":["ls"],"timeoutSeconds":0}"#, 400, "timeoutSeconds: 0 is outside"),
                ("GET", "/api/v1/tasks?limit=0", nil, 400, "limit: 0 is outside 1–1000"),
                ("GET", "/api/v1/tasks/nosuch", nil, 404, "task 'nosuch' does not exist"),
                ("POST", "/api/v1/templates", #"{"name":"t2","datastore":"shared","kernel":"../x","initrd":"i","disk":"d","cmdline":"c"}"#, 400, "kernel: '../x'"),
                ("POST", "/api/v1/clusters", #"{"name":""}"#, 400, "name: must not be empty"),
            ]
            for (method, path, body, status, message) in cases {
                let (got, answer) = try await cluster.raw(method, path, token: token, body: body)
                #expect(got == status, "\(method) \(path) \(body ?? ""): \(answer)")
                let decoded = try? JSONDecoder().decode([String: String].self, from: Data(answer.utf8))
                #expect(decoded?["code"] != nil && decoded?["message"] != nil, "\(method) \(path): not {code,message}: \(answer)")
                #expect(decoded?["message"]?.contains(message) == true, "\(method) \(path): \(answer)")
            }
            #expect(try cluster.databaseSnapshot() == before)
        }
    }

    @Test("a VM goes through create, start, exec, stop and delete, each a task with an event")
    func lifecycle() async throws {
        try await TestCluster.with(driver: "fake", hosts: 2) { cluster in
            #expect(try await cluster.createVM("web1").state == .succeeded)
            #expect(try await cluster.createVM("db1", memoryMiB: 256, host: "host-2").state == .succeeded)
            #expect(try await cluster.vm("db1").hostName == "host-2")
            let started = try await cluster.start("web1")
            #expect(started.state == .succeeded && started.progress == 100)
            #expect(try await cluster.vm("web1").state == .running)
            let echo = try await cluster.exec("web1", ["echo", "hi"])
            #expect(echo.stdout == "hi\n" && echo.exitCode == 0)
            #expect(try await cluster.stop("web1").state == .succeeded)
            #expect(try await cluster.vm("web1").state == .stopped)
            #expect(try await cluster.delete("web1").state == .succeeded)
            #expect(try await cluster.raw("GET", "/api/v1/vms/web1", token: cluster.adminToken).0 == 404)
            let kinds = try await cluster.events().map(\.kind)
            for kind in ["vm.created", "vm.started", "vm.stopped", "vm.deleted", "host.connected"] { #expect(kinds.contains(kind), "\(kind)") }
        }
    }

    @Test("placement spreads VMs to the host with the most free memory")
    func placement() async throws {
        try await TestCluster.with(driver: "fake", hosts: 2) { cluster in
            _ = try await cluster.createVM("a", memoryMiB: 2048, host: "host-1")
            _ = try await cluster.start("a")
            _ = try await cluster.createVM("b", memoryMiB: 128)
            #expect(try await cluster.vm("b").hostName == "host-2")
        }
    }

    @Test("a manager restart keeps every VM, host and task, and fails the tasks it interrupted")
    func managerRestart() async throws {
        try await TestCluster.with(driver: "fake", hosts: 2) { cluster in
            _ = try await cluster.createVM("keep1")
            _ = try await cluster.start("keep1")
            _ = try await cluster.createVM("keep2", host: "host-2")
            // Freeze host-2's agent so the next task hangs on it, then crash the manager under it.
            let frozen = cluster.agents["host-2"]!.pid
            kill(frozen, SIGSTOP)
            defer { kill(frozen, SIGCONT) }
            let client = try cluster.client()
            guard case .accepted(let accepted) = try await client.startVM(path: .init(vm: "keep2")) else { Issue.record("start refused"); return }
            let hanging = try accepted.body.json
            try await Task.sleep(for: .seconds(1))
            let tasksBefore = try await cluster.tasks().map(\.id)
            await cluster.stopManager(kill: true)
            kill(frozen, SIGCONT)
            try await cluster.startManager()
            let vms = try await cluster.raw("GET", "/api/v1/vms", token: cluster.adminToken).1
            #expect(vms.contains("keep1") && vms.contains("keep2"))
            #expect(try await cluster.vm("keep1").state == .running)
            let tasks = try await cluster.tasks()
            #expect(Set(tasks.map(\.id)) == Set(tasksBefore))
            let interrupted = try #require(tasks.first { $0.id == hanging.id })
            #expect(interrupted.state == .failed)
            #expect(interrupted.error?.code == "interrupted")
            #expect(interrupted.error?.message.contains("the manager stopped") == true)
            try await cluster.waitForHosts(connected: 2)
            // Heartbeats settle the VM the interrupted start left behind.
            let settled = try await cluster.waitForVM("keep2", timeout: .seconds(30)) { $0.state == .running || $0.state == .stopped }
            #expect(settled.state == .running || settled.state == .stopped)
        }
    }

    @Test("a VM that fits nowhere is refused with the numbers and nothing is created")
    func noRoom() async throws {
        try await TestCluster.with(driver: "fake", hosts: 1) { cluster in
            let (status, body) = try await cluster.raw("POST", "/api/v1/vms", token: cluster.adminToken,
                                                       body: #"{"name":"huge","cpus":1,"memoryMiB":1000000}"#)
            #expect(status == 422)
            #expect(body.contains("asked 1000000 MiB; largest free"))
            #expect(body.contains("MiB on host-1"))
            #expect(try await cluster.tasks().isEmpty)
        }
    }

    @Test("the served API document is the one in docs/api")
    func embeddedDocument() throws {
        #expect(OpenAPIDocument.yaml == (try String(contentsOfFile: Paths.repository + "/docs/api/openapi.yaml", encoding: .utf8)))
    }
}
