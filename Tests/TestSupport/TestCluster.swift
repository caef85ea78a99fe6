import AsyncHTTPClient
import Foundation
import GRDB
import HostKit
import NIOCore
import NIOFoundationCompat
import ShepherdAPI
import ShepherdCore

/// A failure of the test environment, with what to do about it.
public struct HarnessError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Where the repository, the built binary and the guest image are.
public enum Paths {
    public static let repository: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    public static func binary() throws -> String {
        let path = ProcessInfo.processInfo.environment["SHEPHERD_BINARY"] ?? repository + "/.build/debug/shepherd"
        guard FileManager.default.isExecutableFile(atPath: path) else {
            throw HarnessError("the shepherd binary is missing at \(path): run `swift build` (make test does) or set SHEPHERD_BINARY")
        }
        return path
    }

    public static func guestImage() throws -> String {
        let path = ProcessInfo.processInfo.environment["SHEPHERD_GUEST_IMAGE"] ?? repository + "/guest/tiny"
        for file in ["vmlinuz", "initrd.img", "rootfs.qcow2", "manifest.json"] where !FileManager.default.fileExists(atPath: "\(path)/\(file)") {
            throw HarnessError("the guest image is missing \(path)/\(file): run `make guest` (scripts/build-guest-image.sh) or set SHEPHERD_GUEST_IMAGE")
        }
        return path
    }
}

/// A manager and its agents as real processes in a temporary directory. Everything it starts
/// it ends by pid in `shutdown()`, including QEMU processes its agents left behind.
public final class TestCluster: @unchecked Sendable {
    public let directory: String
    public let driver: String
    public private(set) var managerPort: Int
    public private(set) var manager: ChildProcess?
    public private(set) var agents: [String: ChildProcess] = [:]
    /// With `bmc: true`, each host's agent runs under a Redfish BMC (`shepherd bmc`).
    public private(set) var bmcs: [String: ChildProcess] = [:]
    public private(set) var bmcPorts: [String: Int] = [:]
    public let bmcUser = "admin"
    public var bmcPasswordFile: String { directory + "/bmc-password" }
    private let withBMC: Bool
    /// Hosts whose agent runs in its own network namespace, reaching the manager over a bridge,
    /// so that their management link can be cut (`cutManagementLink`).
    public let namespacedHosts: Set<String>
    /// With `network: true`: the physical switch the namespaced hosts are cabled to (eth1, eth2
    /// each), and each of them runs its own Open vSwitch for VM NICs.
    public private(set) var physicalSwitch: PhysicalSwitch?
    /// The namespace of a namespaced host (for running probes inside it).
    public func hostNamespace(_ name: String) -> String { namespace(name) }
    private let netTag = String(Int.random(in: 100...999))
    private let subnet = "10.\(Int.random(in: 200...230)).\(Int.random(in: 1...250))"
    private var bridge: String { "stb\(netTag)" }
    private func namespace(_ name: String) -> String { "st\(netTag)-\(name)" }
    private func outerLink(_ name: String) -> String { "stv\(netTag)\(name.filter(\.isNumber))" }
    private func hostAddress(_ name: String) -> String { "\(subnet).\(10 + (Int(name.filter(\.isNumber)) ?? 0))" }
    private var agentPorts: [String: Int] = [:]
    /// Extra flags for each agent, by host name.
    public var agentArguments: [String: [String]] = [:]
    /// Whether KSM ran before this cluster started (a test that switches it on switches it back).
    private var ksmBefore: Bool?
    private let binary: String
    private let managerArguments: [String]

    public var url: String { "http://127.0.0.1:\(managerPort)" }
    public var stateDirectory: String { directory + "/manager" }
    public var sharedDatastore: String { directory + "/shared" }
    public func agentDirectory(_ name: String) -> String { "\(directory)/hosts/\(name)" }

    /// Starts a manager and `hosts` agents (host-1…) with `driver` ("fake" or "qemu").
    public static func start(driver: String, hosts: Int = 1, managerArguments: [String] = [],
                             agentArguments: [String: [String]] = [:], bmc: Bool = false,
                             namespaced: Set<String> = [], network: Bool = false) async throws -> TestCluster {
        let cluster = try TestCluster(driver: driver, managerArguments: managerArguments, bmc: bmc, namespaced: namespaced)
        cluster.agentArguments = agentArguments
        cluster.ksmBefore = KSM.status()?.running
        do {
            if !namespaced.isEmpty { try await Net.addBridge(cluster.bridge, address: "\(cluster.subnet).1/24") }
            if network {
                guard !namespaced.isEmpty else { throw HarnessError("network: true needs namespaced hosts") }
                let physical = PhysicalSwitch(namespace: "st\(cluster.netTag)-pswitch")
                cluster.physicalSwitch = physical
                try await physical.create()
            }
            try await cluster.startFirstManager()
            for index in 1...max(1, hosts) where hosts > 0 { try await cluster.startAgent("host-\(index)") }
            if hosts > 0 { try await cluster.waitForHosts(connected: hosts) }
            if bmc { for index in 1...max(1, hosts) where hosts > 0 { try await cluster.registerBMC("host-\(index)") } }
            if driver == "qemu" { try await cluster.registerGuestTemplate() } else { try await cluster.registerFakeTemplate() }
            return cluster
        } catch {
            await cluster.shutdown()
            throw error
        }
    }

    /// Runs `body` with a fresh cluster and always shuts it down afterwards.
    public static func with<T>(driver: String, hosts: Int = 1, managerArguments: [String] = [], agentArguments: [String: [String]] = [:],
                               bmc: Bool = false, namespaced: Set<String> = [], network: Bool = false,
                               _ body: (TestCluster) async throws -> T) async throws -> T {
        let cluster = try await start(driver: driver, hosts: hosts, managerArguments: managerArguments, agentArguments: agentArguments,
                                      bmc: bmc, namespaced: namespaced, network: network)
        do {
            let result = try await body(cluster)
            await cluster.shutdown()
            return result
        } catch {
            await cluster.shutdown()
            throw error
        }
    }

    private init(driver: String, managerArguments: [String], bmc: Bool, namespaced: Set<String>) throws {
        binary = try Paths.binary()
        self.driver = driver
        self.managerArguments = managerArguments
        withBMC = bmc
        namespacedHosts = namespaced
        directory = NSTemporaryDirectory() + "shepherd-test-\(UInt32.random(in: 0...UInt32.max))"
        managerPort = try TCP.freePort()
        try Files.ensureDirectory(directory, mode: 0o700)
        try Files.ensureDirectory(directory + "/shared", mode: 0o755)
    }

    /// The first start picks another port when the chosen one was taken meanwhile: `freePort`
    /// releases the port it found, and tests running in parallel start many servers.
    private func startFirstManager() async throws {
        for attempt in 1...5 {
            do {
                return try await startManager()
            } catch let error as HarnessError where attempt < 5 && error.description.contains("Address already in use") {
                manager = nil
                try? FileManager.default.removeItem(atPath: directory + "/manager.log")
                managerPort = try TCP.freePort()
            }
        }
    }

    public func startManager() async throws {
        let bridgeListen = namespacedHosts.isEmpty ? [] : ["--listen", "\(subnet).1:\(managerPort)"]
        let process = try ChildProcess.spawn(binary, ["manager", "--state-dir", stateDirectory, "--listen", "127.0.0.1:\(managerPort)",
                                                      "--tools-timeout", "90", "--stop-timeout", "60"] + bridgeListen
                                                      + (physicalSwitch.map { ["--physical-switch", $0.ovs.database] } ?? []) + managerArguments,
                                             logFile: directory + "/manager.log")
        manager = process
        for _ in 0..<200 {
            if !process.isRunning { throw HarnessError("the manager exited: \(log("manager.log"))") }
            if let client = try? client(), case .ok = try? await client.healthz(),
               FileManager.default.fileExists(atPath: stateDirectory + "/admin-token") { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw HarnessError("the manager did not answer within 20 s: \(log("manager.log"))")
    }

    /// Ends the manager: SIGTERM (graceful) or SIGKILL (a crash).
    public func stopManager(kill: Bool = false) async {
        guard let manager else { return }
        if kill { _ = Processes.kill(manager.pid); _ = await manager.waitForExit(timeout: .seconds(10)) } else {
            await manager.terminate(grace: .seconds(10))
        }
        self.manager = nil
    }

    public func startAgent(_ name: String) async throws {
        let port = try agentPorts[name] ?? TCP.freePort()
        agentPorts[name] = port
        try Files.ensureDirectory(directory + "/hosts", mode: 0o700)
        let namespaced = namespacedHosts.contains(name)
        if namespaced, !Net.namespaceExists(namespace(name)) {
            try await Net.addNamespace(namespace(name))
            try await Net.addVethPair(outerLink(name), outerLink(name) + "p")
            try await Net.setMaster(outerLink(name), bridge: bridge)
            try await Net.moveLink(outerLink(name) + "p", toNamespace: namespace(name))
            try await Net.configure(namespace: namespace(name), link: outerLink(name) + "p", address: "\(hostAddress(name))/24")
            if let physicalSwitch {
                try await physicalSwitch.connect(hostNamespace: namespace(name), hostIndex: Int(name.filter(\.isNumber)) ?? 0, hostName: name,
                                                 nics: ["eth1", "eth2"])
            }
        }
        let managerURL = namespaced ? "http://\(subnet).1:\(managerPort)" : url
        let listen = namespaced ? "\(hostAddress(name)):\(port)" : "127.0.0.1:\(port)"
        let agentArgv = [
            "agent", "--name", name, "--manager", managerURL, "--listen", listen,
            "--state-dir", agentDirectory(name), "--join-token-file", stateDirectory + "/join-token",
            "--datastore", "shared=\(sharedDatastore),shared", "--driver", driver,
        ] + (namespaced && physicalSwitch != nil ? ["--ovs", "managed", "--uplinks", "eth1,eth2"]
             : driver == "fake" ? ["--uplinks", "eth1,eth2"] : ["--ovs", "off"])
            + (agentArguments[name] ?? [])
            // KSM is machine-wide: only tests that ask for it (--ksm on) switch it on.
            + ((agentArguments[name] ?? []).contains("--ksm") ? [] : ["--ksm", "off"])
        guard withBMC else {
            let argv = namespaced ? Net.inNamespace(namespace(name), [binary] + agentArgv) : [binary] + agentArgv
            agents[name] = try ChildProcess.spawn(argv[0], Array(argv.dropFirst()), logFile: "\(directory)/agent-\(name).log")
            return
        }
        guard bmcs[name] == nil else { throw HarnessError("\(name) runs under its BMC: power it on through the manager") }
        if !FileManager.default.fileExists(atPath: bmcPasswordFile) {
            try Files.writeAtomically(Data("bmc-\(UInt32.random(in: 0...UInt32.max))\n".utf8), to: bmcPasswordFile, mode: 0o600)
        }
        let bmcPort = try bmcPorts[name] ?? TCP.freePort()
        bmcPorts[name] = bmcPort
        bmcs[name] = try ChildProcess.spawn(binary, [
            "bmc", "--name", name, "--listen", "127.0.0.1:\(bmcPort)", "--user", bmcUser, "--password-file", bmcPasswordFile,
            "--state-dir", agentDirectory(name), "--agent-log", "\(directory)/agent-\(name).log", "--",
        ] + (namespaced ? Net.inNamespace(namespace(name), [binary] + agentArgv) : [binary] + agentArgv),
        logFile: "\(directory)/bmc-\(name).log")
    }

    /// Cuts (or restores) a namespaced host's only link: manager and peers become unreachable
    /// from it, while its storage (a directory) stays.
    public func cutManagementLink(_ name: String, restore: Bool = false) async throws {
        guard namespacedHosts.contains(name) else { throw HarnessError("\(name) is not namespaced") }
        try await Net.setLink(outerLink(name), up: restore)
    }

    /// The pid of a host's agent: the process the harness started, or its BMC's child.
    public func agentPid(_ name: String) -> Int32? {
        if let agent = agents[name] { return agent.isRunning ? agent.pid : nil }
        guard let bmc = bmcs[name] else { return nil }
        return Processes.children(of: bmc.pid).first
    }

    /// Tells the manager about a host's BMC.
    public func registerBMC(_ name: String) async throws {
        guard let port = bmcPorts[name] else { throw HarnessError("\(name) has no BMC") }
        let password = try String(contentsOfFile: bmcPasswordFile, encoding: .utf8).trimmingCharacters(in: .newlines)
        let body = Components.Schemas.BMCSettings(address: "redfish+http://127.0.0.1:\(port)", user: bmcUser, password: password)
        var lastError = ""
        for _ in 0..<50 {   // the BMC may still be starting
            switch try await client().setHostBMC(path: .init(host: name), body: .json(body)) {
            case .ok: return
            case .default(let status, let error): lastError = "HTTP \(status) \(String(describing: try? error.body.json))"
            }
            try await Task.sleep(for: .milliseconds(200))
        }
        throw HarnessError("registering \(name)'s BMC failed: \(lastError); \(log("bmc-\(name).log"))")
    }

    /// Ends an agent without touching its QEMU processes (under a BMC: the machine stays on).
    public func stopAgent(_ name: String, kill: Bool = false) async {
        if agents[name] == nil, bmcs[name] != nil {
            guard let pid = agentPid(name) else { return }
            if kill { _ = Processes.kill(pid) }
            _ = await Processes.terminate(pid, grace: .seconds(10))
            return
        }
        guard let agent = agents[name] else { return }
        if kill { _ = Processes.kill(agent.pid); _ = await agent.waitForExit(timeout: .seconds(10)) } else {
            await agent.terminate(grace: .seconds(10))
        }
        agents[name] = nil
    }

    public func waitForHosts(connected count: Int, timeout: Duration = .seconds(60)) async throws {
        let started = ContinuousClock.now
        while ContinuousClock.now - started < timeout {
            if case .ok(let ok) = try? await client().listHosts(), let hosts = try? ok.body.json,
               hosts.filter({ $0.state == .connected }).count >= count { return }
            try await Task.sleep(for: .milliseconds(200))
        }
        throw HarnessError("\(count) host(s) did not connect within \(timeout): \(agents.keys.sorted().map { log("agent-\($0).log") })")
    }

    public var adminToken: String {
        (try? String(contentsOfFile: stateDirectory + "/admin-token", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
    }

    /// An authenticated API client (or one presenting `token`).
    public func client(token: String? = nil) throws -> Client {
        // Longer than the 120 s exec timeout the harness asks for.
        try Client.manager(url: url, token: token ?? adminToken, timeout: .seconds(180))
    }

    private func registerGuestTemplate() async throws {
        let image = try Paths.guestImage()
        try Files.ensureDirectory(sharedDatastore + "/templates/tiny", mode: 0o755)
        let manifest = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: image + "/manifest.json"))) as? [String: Any]
        let kernel = (manifest?["kernelPVH"] as? String).flatMap { FileManager.default.fileExists(atPath: "\(image)/\($0)") ? $0 : nil } ?? "vmlinuz"
        for file in Set(["vmlinuz", kernel, "initrd.img", "rootfs.qcow2"]) {
            try FileManager.default.copyItem(atPath: "\(image)/\(file)", toPath: "\(sharedDatastore)/templates/tiny/\(file)")
        }
        try await createTemplate(kernel: kernel, cmdline: manifest?["cmdline"] as? String ?? "console=ttyS0 root=/dev/vda rw")
    }

    private func registerFakeTemplate() async throws {
        try await createTemplate(kernel: "vmlinuz", cmdline: "console=ttyS0")
    }

    private func createTemplate(kernel: String, cmdline: String) async throws {
        let answer = try await client().createTemplate(body: .json(.init(
            name: "tiny", description: "test", datastore: "shared", kernel: "templates/tiny/\(kernel)",
            initrd: "templates/tiny/initrd.img", disk: "templates/tiny/rootfs.qcow2", cmdline: cmdline)))
        guard case .created = answer else { throw HarnessError("registering template tiny failed: \(answer)") }
    }

    // MARK: API conveniences that fail loudly

    public func createVM(_ name: String, cpus: Int = 1, memoryMiB: Int = 128, host: String? = nil, datastore: String? = nil) async throws -> Components.Schemas.Task {
        switch try await client().createVM(body: .json(.init(name: name, cpus: cpus, memoryMiB: memoryMiB, host: host, datastore: datastore))) {
        case .accepted(let accepted): return try await wait(try accepted.body.json)
        case .default(let status, let error): throw HarnessError("create \(name): HTTP \(status) \(String(describing: try? error.body.json))")
        }
    }

    public func start(_ vm: String) async throws -> Components.Schemas.Task {
        switch try await client().startVM(path: .init(vm: vm)) {
        case .accepted(let accepted): return try await wait(try accepted.body.json)
        case .default(let status, let error): throw HarnessError("start \(vm): HTTP \(status) \(String(describing: try? error.body.json))")
        }
    }

    public func stop(_ vm: String, force: Bool = false) async throws -> Components.Schemas.Task {
        switch try await client().stopVM(path: .init(vm: vm), body: .json(.init(force: force))) {
        case .accepted(let accepted): return try await wait(try accepted.body.json)
        case .default(let status, let error): throw HarnessError("stop \(vm): HTTP \(status) \(String(describing: try? error.body.json))")
        }
    }

    public func hibernate(_ vm: String) async throws -> Components.Schemas.Task {
        switch try await client().hibernateVM(path: .init(vm: vm)) {
        case .accepted(let accepted): return try await wait(try accepted.body.json)
        case .default(let status, let error): throw HarnessError("hibernate \(vm): HTTP \(status) \(String(describing: try? error.body.json))")
        }
    }

    public func reboot(_ vm: String, force: Bool = false) async throws -> Components.Schemas.Task {
        switch try await client().rebootVM(path: .init(vm: vm), body: .json(.init(force: force))) {
        case .accepted(let accepted): return try await wait(try accepted.body.json)
        case .default(let status, let error): throw HarnessError("reboot \(vm): HTTP \(status) \(String(describing: try? error.body.json))")
        }
    }

    public func delete(_ vm: String, force: Bool = false) async throws -> Components.Schemas.Task {
        switch try await client().deleteVM(path: .init(vm: vm), query: .init(force: force)) {
        case .accepted(let accepted): return try await wait(try accepted.body.json)
        case .default(let status, let error): throw HarnessError("delete \(vm): HTTP \(status) \(String(describing: try? error.body.json))")
        }
    }

    public func migrate(_ vm: String, to target: String, timeout: Duration = .seconds(240)) async throws -> Components.Schemas.Task {
        switch try await client().migrateVM(path: .init(vm: vm), body: .json(.init(target: target))) {
        case .accepted(let accepted): return try await wait(try accepted.body.json, timeout: timeout)
        case .ok: throw HarnessError("migrate \(vm): answered a dry run")
        case .default(let status, let error): throw HarnessError("migrate \(vm): HTTP \(status) \(String(describing: try? error.body.json))")
        }
    }

    /// Starts a migration and returns its task at once.
    public func startMigration(_ vm: String, to target: String) async throws -> Components.Schemas.Task {
        switch try await client().migrateVM(path: .init(vm: vm), body: .json(.init(target: target))) {
        case .accepted(let accepted): return try accepted.body.json
        case .ok: throw HarnessError("migrate \(vm): answered a dry run")
        case .default(let status, let error): throw HarnessError("migrate \(vm): HTTP \(status) \(String(describing: try? error.body.json))")
        }
    }

    public func maintenance(_ action: String, _ host: String) async throws -> Components.Schemas.Task {
        let body = Components.Schemas.MaintenanceRequest(action: action == "enter" ? .enter : .exit)
        switch try await client().setHostMaintenance(path: .init(host: host), body: .json(body)) {
        case .accepted(let accepted): return try await wait(try accepted.body.json, timeout: .seconds(300))
        case .default(let status, let error): throw HarnessError("maintenance \(action) \(host): HTTP \(status) \(String(describing: try? error.body.json))")
        }
    }

    /// Powers a host on, off or resets it through its BMC; waits for the task.
    public func power(_ action: String, _ host: String, force: Bool = false) async throws -> Components.Schemas.Task {
        let kind: Components.Schemas.HostPowerRequest.ActionPayload = switch action { case "on": .on; case "off": .off; default: .reset }
        switch try await client().powerHost(path: .init(host: host), body: .json(.init(action: kind, force: force))) {
        case .accepted(let accepted): return try await wait(try accepted.body.json, timeout: .seconds(240))
        case .default(let status, let error): throw HarnessError("power \(action) \(host): HTTP \(status) \(String(describing: try? error.body.json))")
        }
    }

    /// Changes the cluster's settings; the answer's status and body.
    public func setCluster(_ body: String) async throws -> (Int, String) {
        try await raw("PATCH", "/api/v1/clusters/cluster-1", token: adminToken, body: body)
    }

    public func host(_ name: String) async throws -> Components.Schemas.Host {
        switch try await client().getHost(path: .init(host: name)) {
        case .ok(let ok): return try ok.body.json
        case .default(let status, let error): throw HarnessError("get host \(name): HTTP \(status) \(String(describing: try? error.body.json))")
        }
    }

    public func task(_ id: String) async throws -> Components.Schemas.Task {
        guard case .ok(let ok) = try await client().getTask(path: .init(task: id)) else { throw HarnessError("task \(id) not found") }
        return try ok.body.json
    }

    public func exec(_ vm: String, _ command: [String]) async throws -> Components.Schemas.ExecResult {
        switch try await client().execInVM(path: .init(vm: vm), body: .json(.init(command: command, timeoutSeconds: 120))) {
        case .ok(let ok): return try ok.body.json
        case .default(let status, let error): throw HarnessError("exec in \(vm): HTTP \(status) \(String(describing: try? error.body.json))")
        }
    }

    public func vm(_ name: String) async throws -> Components.Schemas.Vm {
        switch try await client().getVM(path: .init(vm: name)) {
        case .ok(let ok): return try ok.body.json
        case .default(let status, let error): throw HarnessError("get \(name): HTTP \(status) \(String(describing: try? error.body.json))")
        }
    }

    public func events() async throws -> [Components.Schemas.Event] {
        guard case .ok(let ok) = try await client().listEvents(query: .init(limit: 1000)) else { throw HarnessError("listing events failed") }
        return try ok.body.json
    }

    public func tasks() async throws -> [Components.Schemas.Task] {
        guard case .ok(let ok) = try await client().listTasks(query: .init(limit: 1000)) else { throw HarnessError("listing tasks failed") }
        return try ok.body.json
    }

    /// Polls a task until it ends (or `timeout`).
    public func wait(_ task: Components.Schemas.Task, timeout: Duration = .seconds(240)) async throws -> Components.Schemas.Task {
        let started = ContinuousClock.now
        var current = task
        while current.state != .succeeded && current.state != .failed {
            if ContinuousClock.now - started > timeout { throw HarnessError("task \(task.kind) \(task.targetName) still \(current.state) after \(timeout): \(current.message)") }
            try await Task.sleep(for: .milliseconds(200))
            guard case .ok(let ok) = try await client().getTask(path: .init(task: task.id)) else { throw HarnessError("task \(task.id) vanished") }
            current = try ok.body.json
        }
        return current
    }

    /// Polls until `condition` holds for the VM (or `timeout`).
    public func waitForVM(_ name: String, timeout: Duration = .seconds(60), _ condition: (Components.Schemas.Vm) -> Bool) async throws -> Components.Schemas.Vm {
        let started = ContinuousClock.now
        while true {
            let vm = try await vm(name)
            if condition(vm) { return vm }
            if ContinuousClock.now - started > timeout { throw HarnessError("VM \(name) did not reach the expected state within \(timeout); it is \(vm.state) \(vm.stateReason ?? "")") }
            try await Task.sleep(for: .milliseconds(250))
        }
    }

    /// A raw HTTP request (for auth and malformed-body tests): status and body.
    public func raw(_ method: String, _ path: String, token: String?, body: String? = nil) async throws -> (Int, String) {
        var request = HTTPClientRequest(url: url + path)
        request.method = .init(rawValue: method)
        if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(string: body))
        }
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(30))
        let bytes = try await response.body.collect(upTo: 16 << 20)
        return (Int(response.status.code), String(buffer: bytes))
    }

    /// Every row of the tables a refused request must not touch, as text.
    public func databaseSnapshot() throws -> String {
        var configuration = Configuration()
        configuration.readonly = true
        configuration.busyMode = .timeout(10)
        let queue = try DatabaseQueue(path: stateDirectory + "/shepherd.sqlite", configuration: configuration)
        return try queue.read { db in
            try ["cluster", "template", "vm", "disk", "diskAttachment", "snapshot", "task", "event"].map { table in
                "\(table): " + (try Row.fetchAll(db, sql: "SELECT * FROM \(table) ORDER BY rowid")).map(\.description).joined(separator: "; ")
            }.joined(separator: "\n")
        }
    }

    public func log(_ file: String) -> String {
        let text = (try? String(contentsOfFile: "\(directory)/\(file)", encoding: .utf8)) ?? "(no \(file))"
        return String(text.suffix(3000))
    }

    /// Pids of QEMU processes that agents of this cluster run (from their pidfiles).
    public func qemuPids() -> [Int32] {
        agentPorts.keys.flatMap { name in
            Processes.pidsFromPidFiles(under: agentDirectory(name) + "/vms", named: "qemu.pid").map(\.pid)
        }
    }

    /// Ends agents, any QEMU they left, and the manager; removes the directory.
    public func shutdown() async {
        for name in Array(agents.keys) { await stopAgent(name) }
        for (name, bmc) in bmcs {
            let agent = agentPid(name)
            await bmc.terminate(grace: .seconds(15))
            if let agent { _ = await Processes.terminate(agent, grace: .seconds(5)) }
        }
        bmcs = [:]
        for pid in qemuPids() { _ = await Processes.terminate(pid, grace: .seconds(3)) }
        if ksmBefore == false, KSM.status()?.running == true { try? KSM.disable() }
        // Swap disks the agents switched on (memory overcommit) under this cluster's folder.
        for path in Swap.active() where path.hasPrefix(directory + "/") { try? await Swap.disable(path: path) }
        // The hosts' cgroups (VM QoS), now that their QEMUs are gone.
        for name in agentPorts.keys {
            await CGroups(host: name, stateDirectory: agentDirectory(name))?.removeEmptyGroups(includingHost: true, waiting: .seconds(5))
        }
        await stopManager()
        if physicalSwitch != nil {
            for name in namespacedHosts { await OVS.managed(forStateDirectory: agentDirectory(name)).stop() }
            await physicalSwitch?.destroy()
        }
        for name in namespacedHosts {
            try? await Net.deleteNamespace(namespace(name))
            try? await Net.deleteLink(outerLink(name))
        }
        if !namespacedHosts.isEmpty { try? await Net.deleteLink(bridge) }
        if ProcessInfo.processInfo.environment["SHEPHERD_KEEP_TEST_DIRS"] == nil {
            try? FileManager.default.removeItem(atPath: directory)
        }
    }
}
