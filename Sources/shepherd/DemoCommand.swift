import ArgumentParser
import Foundation
import HostKit
import ShepherdAPI
import ServerKit
import ShepherdCore

/// `shepherd demo`: a three-host cluster on one machine. Each host is a network namespace with
/// its own agent; the manager listens on 127.0.0.1 and on a bridge the hosts reach.
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo", abstract: "Run a local three-host cluster with real guests until Ctrl-C.")

    @Option(help: "State directory (kept across runs).") var stateDir = "/var/lib/shepherd"
    @Option(help: "The guest image folder (vmlinuz, initrd.img, rootfs.qcow2, manifest.json).") var image = "guest/tiny"
    @Option(help: "Prefix for namespace and link names (tests use it to stay apart).") var prefix = ""
    @Option(help: "First three octets of the management network.") var subnet = "10.77.0"
    @Option(help: "The manager's port.") var port = 7443
    @Option(help: "How many hosts.") var hosts = 3
    @Flag(help: "Do not create or start guests.") var noGuests = false
    @Option(help: "auto, kvm or tcg for the agents.") var accel = "auto"
    @Option(help: "Comma-separated QEMU CPU models the hosts provide, in host order (e.g. EPYC-Rome,EPYC,EPYC), so IMC matters; default: every host its own CPU.")
    var cpuModels: String?
    @Option(help: "Each host's memory in MiB, enforced by its cgroup (so overcommit pressure is real); 0: the machine's.")
    var hostMemory = 2048

    func run() async throws {
        guard getuid() == 0 else { throw CLIError("the demo creates network namespaces: run it as root") }
        guard (1...9).contains(hosts) else { throw ValidationError("--hosts must be 1-9") }
        guard hostMemory == 0 || hostMemory >= 768 else { throw ValidationError("--host-memory must be 0 or at least 768 (MiB)") }
        let models = cpuModels.map { $0.split(separator: ",").map(String.init) } ?? []
        for model in models { try CPUModels.validate(model, field: "--cpu-models") }
        guard models.isEmpty || models.count == hosts else {
            throw ValidationError("--cpu-models names \(models.count) models for \(hosts) hosts")
        }
        let demo = try Demo(stateDirectory: stateDir, image: image, prefix: prefix, subnet: subnet, port: port,
                            hostCount: hosts, accelerator: accel)
        demo.cpuModels = models
        demo.hostMemoryMiB = hostMemory
        let signals = SignalWatcher([SIGINT, SIGTERM])
        do {
            try await demo.up(withGuests: !noGuests, stop: signals)
            demo.say("""

                Shepherd demo is ready: \(hosts) hosts\(hostMemory > 0 ? " of \(hostMemory) MiB each" : ""), manager at http://127.0.0.1:\(port)
                In another terminal, try:
                  shepherd host list
                  shepherd cluster list
                  shepherd vm create web1 --cpus 1 --memory 128
                  shepherd vm create db1 --cpus 1 --memory 256 --host \(prefix)host-2
                  shepherd vm start web1
                  shepherd vm exec web1 -- uname -a
                  shepherd vm list
                  shepherd vm show web1 --json
                  shepherd vm migrate web1 --to \(prefix)host-3 --dry-run
                  shepherd vm migrate web1 --to \(prefix)host-3
                  shepherd host maintenance enter \(prefix)host-1
                  shepherd host show \(prefix)host-3
                  shepherd cluster set \(prefix)cluster-1 --memory-overcommit on --overcommit-ratio 150%
                  shepherd vm qos set web1 --cpu-shares 2000 --memory-limit 96
                  shepherd vm hibernate web1 && shepherd vm start web1
                  shepherd host power off \(prefix)host-3 --force    # through its Redfish BMC
                  shepherd host power on \(prefix)host-3
                  shepherd vm stop web1
                  shepherd task list
                  shepherd event list
                Logs: \(demo.logDirectory)   State: \(stateDir)
                Press Ctrl-C to stop; the VMs are kept for the next run.
                """)
            await signals.wait()
            demo.say("\nstopping the demo…")
        } catch {
            demo.say("the demo could not start: \(error)")
            await demo.down()
            throw ExitCode.failure
        }
        await demo.down()
        demo.say("demo stopped; nothing left running. State kept in \(stateDir).")
    }
}

/// Waits for any of the given signals (their default action is turned off while it lives).
final class SignalWatcher: @unchecked Sendable {
    private let stream: AsyncStream<Int32>
    private let sources: [any DispatchSourceSignal]
    private let fired = Flag()

    init(_ signals: [Int32]) {
        var continuation: AsyncStream<Int32>.Continuation!
        stream = AsyncStream { continuation = $0 }
        let yield = continuation!
        let fired = self.fired
        sources = signals.map { number in
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { fired.set(); yield.yield(number) }
            source.resume()
            return source
        }
    }

    var hasFired: Bool { fired.isSet }

    func wait() async {
        if hasFired { return }
        for await _ in stream { return }
    }

    final class Flag: @unchecked Sendable {
        private let lock = NSLock()
        private var value = false
        func set() { lock.lock(); value = true; lock.unlock() }
        var isSet: Bool { lock.lock(); defer { lock.unlock() }; return value }
    }
}

/// The demo's resources: what it creates it removes, by pid and by name it chose.
final class Demo: @unchecked Sendable {
    let stateDirectory: String
    let image: String
    let prefix: String
    let subnet: String
    let port: Int
    let hostCount: Int
    let accelerator: String
    var cpuModels: [String] = []
    /// Each host's memory (agent --memory); 0: the machine's.
    var hostMemoryMiB = 0
    var logDirectory: String { stateDirectory + "/logs" }
    private var manager: ChildProcess?
    private var agents: [ChildProcess] = []

    init(stateDirectory: String, image: String, prefix: String, subnet: String, port: Int, hostCount: Int, accelerator: String) throws {
        self.stateDirectory = stateDirectory
        self.image = (image as NSString).standardizingPath
        self.prefix = prefix
        self.subnet = subnet
        self.port = port
        self.hostCount = hostCount
        self.accelerator = accelerator
    }

    var bridge: String { "\(prefix)shep-br0" }
    func hostName(_ index: Int) -> String { "\(prefix)host-\(index)" }
    func hostAddress(_ index: Int) -> String { "\(subnet).\(10 + index)" }
    var managerAddress: String { "\(subnet).1" }
    func hostStateDirectory(_ index: Int) -> String { "\(stateDirectory)/hosts/\(hostName(index))" }
    var sharedDatastore: String { "\(stateDirectory)/datastores/shared" }
    var runningFile: String { "\(stateDirectory)/demo-running-vms.json" }

    func say(_ text: String) { print(text); fflush(nil) }

    // MARK: up

    func up(withGuests: Bool, stop: SignalWatcher) async throws {
        let selfPath = try executablePath()
        for file in ["vmlinuz", "initrd.img", "rootfs.qcow2", "manifest.json"] where !FileManager.default.fileExists(atPath: "\(image)/\(file)") {
            throw CLIError("--image: \(image)/\(file) is missing; build it with scripts/build-guest-image.sh \(image)")
        }
        try Files.ensureDirectory(stateDirectory, mode: 0o700)
        try Files.ensureDirectory(logDirectory, mode: 0o755)
        try Files.ensureDirectory(sharedDatastore + "/templates/tiny", mode: 0o755)
        for file in ["vmlinuz", "vmlinux", "initrd.img", "rootfs.qcow2", "manifest.json"]
        where FileManager.default.fileExists(atPath: "\(image)/\(file)") {
            try copyIfChanged("\(image)/\(file)", "\(sharedDatastore)/templates/tiny/\(file)")
        }

        say("setting up \(hostCount) hosts as network namespaces on bridge \(bridge) (\(subnet).0/24)…")
        try await removeNetwork(quiet: true)
        try await Net.addBridge(bridge, address: "\(managerAddress)/24")
        for index in 1...hostCount {
            let namespace = hostName(index)
            let outer = "\(prefix)shep-h\(index)", inner = "\(prefix)shep-h\(index)p"
            try await Net.addNamespace(namespace)
            try await Net.addVethPair(outer, inner)
            try await Net.setMaster(outer, bridge: bridge)
            try await Net.moveLink(inner, toNamespace: namespace)
            try await Net.configure(namespace: namespace, link: inner, address: "\(hostAddress(index))/24")
        }
        say("cabling each host's eth1 and eth2 to the physical switch (namespace \(physicalSwitch.namespace), Open vSwitch trunk ports)…")
        try await physicalSwitch.create()
        for index in 1...hostCount {
            try await physicalSwitch.connect(hostNamespace: hostName(index), hostIndex: index, hostName: hostName(index), nics: ["eth1", "eth2"])
        }
        if stop.hasFired { throw CLIError("interrupted") }

        if !FileManager.default.fileExists(atPath: bmcPasswordFile) {
            try Files.writeAtomically(Data((BearerAuth.newSecret() + "\n").utf8), to: bmcPasswordFile, mode: 0o600)
        }
        say("starting the manager on 127.0.0.1:\(port) and \(managerAddress):\(port)…")
        manager = try ChildProcess.spawn(selfPath, [
            "manager", "--state-dir", stateDirectory, "--listen", "127.0.0.1:\(port)", "--listen", "\(managerAddress):\(port)",
            "--physical-switch", physicalSwitch.ovs.database,
        ], logFile: logDirectory + "/manager.log")
        let client = try await waitForManager()

        for index in 1...hostCount {
            let name = hostName(index)
            let argv = Net.inNamespace(name, [selfPath, "agent", "--name", name, "--cluster", "\(prefix)cluster-1",
                "--manager", "http://\(managerAddress):\(port)", "--listen", "\(hostAddress(index)):7444",
                "--state-dir", hostStateDirectory(index), "--join-token-file", stateDirectory + "/join-token",
                "--datastore", "shared=\(sharedDatastore),shared",
                "--datastore", "local-\(name)=\(stateDirectory)/datastores/local-\(name),local", "--accel", accelerator,
                "--ovs", "managed", "--uplinks", "eth1,eth2"]
                + (cpuModels.isEmpty ? [] : ["--cpu-model", cpuModels[index - 1]])
                + (hostMemoryMiB > 0 ? ["--memory", "\(hostMemoryMiB)"] : []))
            // Each host's agent runs under its own Redfish BMC, as a server under its BMC: power-off
            // through it ends every process of that host, power-on starts the agent again.
            agents.append(try ChildProcess.spawn(selfPath, [
                "bmc", "--name", name, "--listen", "127.0.0.1:\(bmcPort(index))", "--user", "admin",
                "--password-file", bmcPasswordFile, "--state-dir", hostStateDirectory(index),
                "--agent-log", "\(logDirectory)/agent-\(name).log", "--",
            ] + argv, logFile: "\(logDirectory)/bmc-\(name).log"))
        }
        say("waiting for \(hostCount) agents to join…")
        try await waitForHosts(client)
        if stop.hasFired { throw CLIError("interrupted") }
        try await registerBMCs(client)
        try await registerTemplate(client)
        try await setUpNetwork(client)
        if withGuests { try await bringGuests(client) }
    }

    func bmcPort(_ index: Int) -> Int { port + 10 + index }
    var bmcPasswordFile: String { stateDirectory + "/bmc-password" }

    /// Tells the manager each host's BMC (the same password for all demo BMCs, kept 0600).
    private func registerBMCs(_ client: Client) async throws {
        let password = try String(contentsOfFile: bmcPasswordFile, encoding: .utf8).trimmingCharacters(in: .newlines)
        for index in 1...hostCount {
            let body = Components.Schemas.BMCSettings(address: "redfish+http://127.0.0.1:\(bmcPort(index))", user: "admin", password: password)
            var answer = try await client.setHostBMC(path: .init(host: hostName(index)), body: .json(body))
            for _ in 0..<20 {   // a BMC may still be starting
                guard case .default = answer else { break }
                try await Task.sleep(for: .milliseconds(250))
                answer = try await client.setHostBMC(path: .init(host: hostName(index)), body: .json(body))
            }
            if case .default(let status, let error) = answer { throw CLIError.api(status, error) }
        }
        say("each host has a Redfish BMC on 127.0.0.1:\(bmcPort(1))…\(bmcPort(hostCount)) (user admin, password in \(bmcPasswordFile))")
    }

    private func executablePath() throws -> String {
        let path = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().path
        if FileManager.default.isExecutableFile(atPath: path) { return path }
        return try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
    }

    private func copyIfChanged(_ source: String, _ destination: String) throws {
        let manager = FileManager.default
        let a = try manager.attributesOfItem(atPath: source)
        if let b = try? manager.attributesOfItem(atPath: destination),
           (a[.size] as? Int) == (b[.size] as? Int), (a[.modificationDate] as? Date) ?? .distantPast <= (b[.modificationDate] as? Date) ?? .distantPast {
            return
        }
        try? manager.removeItem(atPath: destination)
        try manager.copyItem(atPath: source, toPath: destination)
    }

    private func adminClient() throws -> Client {
        let token = try String(contentsOfFile: stateDirectory + "/admin-token", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        return try Client.manager(url: "http://127.0.0.1:\(port)", token: token)
    }

    private func waitForManager() async throws -> Client {
        for _ in 0..<120 {
            if manager?.isRunning == false { throw CLIError("the manager exited; see \(logDirectory)/manager.log") }
            if FileManager.default.fileExists(atPath: stateDirectory + "/admin-token"),
               let client = try? adminClient(), case .ok = try? await client.healthz() {
                return client
            }
            try await Task.sleep(for: .milliseconds(250))
        }
        throw CLIError("the manager did not answer within 30 s; see \(logDirectory)/manager.log")
    }

    private func waitForHosts(_ client: Client) async throws {
        let names = Set((1...hostCount).map(hostName))
        for _ in 0..<240 {
            for (index, agent) in agents.enumerated() where !agent.isRunning {
                throw CLIError("the BMC of \(hostName(index + 1)) exited; see \(logDirectory)/bmc-\(hostName(index + 1)).log and agent-\(hostName(index + 1)).log")
            }
            if case .ok(let ok) = try await client.listHosts() {
                let connected = Set(try ok.body.json.filter { $0.state == .connected }.map(\.name))
                if names.isSubset(of: connected) { return }
            }
            try await Task.sleep(for: .milliseconds(500))
        }
        throw CLIError("the agents did not all join within 120 s; see \(logDirectory)/agent-*.log")
    }

    private func registerTemplate(_ client: Client) async throws {
        if case .ok(let ok) = try await client.listTemplates(), try ok.body.json.contains(where: { $0.name == "tiny" }) { return }
        let manifest = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(image)/manifest.json"))) as? [String: Any]
        guard let cmdline = manifest?["cmdline"] as? String else { throw CLIError("\(image)/manifest.json has no cmdline") }
        // The uncompressed kernel boots directly (PVH) and skips self-decompression, slow under TCG.
        let kernel = (manifest?["kernelPVH"] as? String).flatMap { name in
            FileManager.default.fileExists(atPath: "\(sharedDatastore)/templates/tiny/\(name)") ? name : nil
        } ?? "vmlinuz"
        switch try await client.createTemplate(body: .json(.init(
            name: "tiny", description: "Debian cloud kernel, busybox, qemu-guest-agent; root on its own qcow2 disk",
            datastore: "shared", kernel: "templates/tiny/\(kernel)", initrd: "templates/tiny/initrd.img",
            disk: "templates/tiny/rootfs.qcow2", cmdline: cmdline))) {
        case .created: say("registered template tiny")
        case .default(let status, let error): throw CLIError.api(status, error)
        }
    }

    /// First run: a DVS on every host (eth1+eth2 bonded to the physical switch) with port group
    /// vm-net on VLAN 100.
    private func setUpNetwork(_ client: Client) async throws {
        if case .ok(let ok) = try await client.listDVS(), try !ok.body.json.isEmpty { return }
        switch try await client.createDVS(body: .json(.init(name: "dvs0"))) {
        case .created: break
        case .default(let status, let error): throw CLIError.api(status, error)
        }
        switch try await client.createPortGroup(path: .init(dvs: "dvs0"), body: .json(.init(name: "vm-net", vlan: 100))) {
        case .created: break
        case .default(let status, let error): throw CLIError.api(status, error)
        }
        say("network: DVS dvs0 on every host (eth1+eth2 bonded, active-backup, to the physical switch \(physicalSwitch.namespace)), port group vm-net on VLAN 100")
    }

    /// First run: create and start demo-1. Later runs: start the VMs that ran when the demo stopped.
    private func bringGuests(_ client: Client) async throws {
        guard case .ok(let ok) = try await client.listVMs() else { return }
        let vms = try ok.body.json
        var toStart: [String]
        if vms.isEmpty {
            say("creating VM demo-1 (1 vCPU, 128 MiB) from template tiny…")
            switch try await client.createVM(body: .json(.init(name: "demo-1", cpus: 1, memoryMiB: 128))) {
            case .accepted(let accepted): _ = try await follow(try accepted.body.json, client: client)
            case .default(let status, let error): throw CLIError.api(status, error)
            }
            say("adding a NIC on vm-net (10.100.0.11/24, set in the guest through its tools)…")
            switch try await client.addNIC(path: .init(vm: "demo-1"), body: .json(.init(portGroup: "vm-net", ip: "10.100.0.11/24"))) {
            case .accepted(let accepted): _ = try await follow(try accepted.body.json, client: client)
            case .default(let status, let error): throw CLIError.api(status, error)
            }
            toStart = ["demo-1"]
        } else {
            let saved = (try? JSONDecoder().decode([String].self, from: Data(contentsOf: URL(fileURLWithPath: runningFile)))) ?? []
            let running = Set(vms.filter { $0.state == .running }.map(\.name))
            toStart = saved.filter { name in vms.contains { $0.name == name } && !running.contains(name) }
            say("found \(vms.count) VM(s) from the last run: \(vms.map(\.name).joined(separator: ", "))")
        }
        for name in toStart {
            say("starting \(name)…")
            switch try await client.startVM(path: .init(vm: name)) {
            case .accepted(let accepted): _ = try await follow(try accepted.body.json, client: client)
            case .default(let status, let error): say("could not start \(name): \(CLIError.api(status, error))")
            }
        }
    }

    // MARK: down

    /// Stops the guests (gracefully, then by force), the agents, the manager, any QEMU the agents
    /// left, and removes the namespaces and links. Keeps the state.
    func down() async {
        if manager?.isRunning == true, let client = try? adminClient() {
            await stopGuests(client)
        }
        for agent in agents { await agent.terminate(grace: .seconds(10)) }
        agents.removeAll()
        for index in 1...hostCount {
            let vmsDirectory = hostStateDirectory(index) + "/vms"
            for (id, pid) in Processes.pidsFromPidFiles(under: vmsDirectory, named: "qemu.pid") {
                say("ending QEMU \(pid) left by an agent")
                _ = await Processes.terminate(pid, grace: .seconds(5))
                try? FileManager.default.removeItem(atPath: "\(vmsDirectory)/\(id)/qemu.pid")
            }
        }
        await manager?.terminate(grace: .seconds(10))
        manager = nil
        try? await removeNetwork(quiet: false)
    }

    private func stopGuests(_ client: Client) async {
        guard case .ok(let ok) = try? await client.listVMs(), let vms = try? ok.body.json else { return }
        let running = vms.filter { $0.state == .running || $0.state == .starting || $0.state == .rebooting }
        if let data = try? JSONEncoder().encode(running.map(\.name)) {
            try? Files.writeAtomically(data, to: runningFile, mode: 0o600)
        }
        guard !running.isEmpty else { return }
        say("shutting down \(running.map(\.name).joined(separator: ", "))…")
        var tasks: [String: String] = [:]
        for vm in running {
            if case .accepted(let accepted) = try? await client.stopVM(path: .init(vm: vm.name), body: .json(.init(force: false))),
               let task = try? accepted.body.json {
                tasks[vm.name] = task.id
            }
        }
        let deadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < deadline, !tasks.isEmpty {
            for (name, id) in tasks {
                if let task = try? await fetchTask(client, id), task.state == .succeeded || task.state == .failed { tasks[name] = nil }
            }
            try? await Task.sleep(for: .milliseconds(500))
        }
        for name in running.map(\.name) {
            if case .ok(let ok) = try? await client.getVM(path: .init(vm: name)), let vm = try? ok.body.json, vm.state != .stopped,
               case .accepted(let accepted) = try? await client.stopVM(path: .init(vm: name), body: .json(.init(force: true))),
               let task = try? accepted.body.json {
                say("\(name) did not shut down in time; cutting its power")
                for _ in 0..<40 {
                    if let done = try? await fetchTask(client, task.id), done.state == .succeeded || done.state == .failed { break }
                    try? await Task.sleep(for: .milliseconds(250))
                }
            }
        }
    }

    /// The switch the hosts' uplinks are cabled to.
    var physicalSwitch: PhysicalSwitch { PhysicalSwitch(namespace: "\(prefix)pswitch") }

    private func removeNetwork(quiet: Bool) async throws {
        // Each host's Open vSwitch (its agent started it and leaves it running), then the switch.
        for index in 1...hostCount { await OVS.managed(forStateDirectory: hostStateDirectory(index)).stop() }
        await physicalSwitch.destroy()
        for index in 1...hostCount {
            try await Net.deleteNamespace(hostName(index))
            try await Net.deleteLink("\(prefix)shep-h\(index)")
        }
        try await Net.deleteLink(bridge)
        if !quiet { say("removed namespaces \((1...hostCount).map(hostName).joined(separator: ", ")) and bridge \(bridge)") }
    }
}
