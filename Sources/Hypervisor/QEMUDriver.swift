import Foundation
import HostKit
import QMP
import QemuImg
import ShepherdCore

/// Runs each VM as its own daemonized QEMU process (own QMP and guest-agent sockets, pidfile,
/// logs) under `<stateDirectory>/vms/<id>/`. QEMU outlives the agent; a new agent adopts it.
public final class QEMUDriver: HypervisorDriver {
    public let accelerator: String
    private let stateDirectory: String
    private let qemuBinary: String
    /// The host's VM cgroups (QoS); nil where the machine has none (QoS then is not enforced).
    public let cgroups: CGroups?
    /// The host's Open vSwitch, where VM NICs get their ports; nil: no networking on this host.
    public let network: OVS?
    private let supervisors = Supervisors()

    public init(stateDirectory: String, accelerator: String, qemuBinary: String = "qemu-system-x86_64", cgroups: CGroups? = nil,
                network: OVS? = nil) throws {
        self.network = network
        self.stateDirectory = stateDirectory
        self.accelerator = accelerator
        self.qemuBinary = qemuBinary
        self.cgroups = cgroups
        try Files.ensureDirectory(stateDirectory + "/vms", mode: 0o700)
    }


    /// Loads every VM defined on this host; the running QEMU processes among them are adopted.
    public func adopt() async throws -> [AgentWire.GuestStatus] {
        let root = stateDirectory + "/vms"
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
        for id in entries.sorted() {
            let file = "\(root)/\(id)/vm.json"
            guard let data = FileManager.default.contents(atPath: file),
                  let definition = try? JSONDecoder().decode(AgentWire.VMDefinition.self, from: data) else { continue }
            let supervisor = GuestSupervisor(definition: definition, directory: "\(root)/\(id)",
                                             accelerator: accelerator, qemuBinary: qemuBinary, cgroups: cgroups, network: network)
            // A QEMU that ended while no agent watched leaves its swap disk on; one that runs gets
            // its switch ports and rate limits again (an Open vSwitch restarted meanwhile forgot
            // its meters; adding what exists changes nothing).
            if await !supervisor.isRunning { await supervisor.disableSwap() } else { try? await supervisor.plugPorts(definition.nics) }
            await supervisors.insert(supervisor)
        }
        return await statuses()
    }

    public func define(_ definition: AgentWire.VMDefinition) async throws -> AgentWire.GuestStatus {
        guard definition.id.allSatisfy({ $0.isHexDigit || $0 == "-" }), !definition.id.isEmpty else {
            throw ShepherdError.invalidField("id", "'\(definition.id)' is not a VM id")
        }
        let directory = "\(stateDirectory)/vms/\(definition.id)"
        if let existing = await supervisors.get(definition.id) {
            try await existing.update(definition)
            return try await existing.status()
        }
        let supervisor = GuestSupervisor(definition: definition, directory: directory, accelerator: accelerator, qemuBinary: qemuBinary,
                                         cgroups: cgroups, network: network)
        try await supervisor.create()
        await supervisors.insert(supervisor)
        return try await supervisor.status()
    }

    public func start(_ vm: String) async throws -> AgentWire.GuestStatus { try await supervisor(vm).start() }
    public func stop(_ vm: String, force: Bool) async throws -> AgentWire.GuestStatus { try await supervisor(vm).stop(force: force) }
    public func reboot(_ vm: String, force: Bool) async throws -> AgentWire.GuestStatus { try await supervisor(vm).reboot(force: force) }
    public func status(_ vm: String) async throws -> AgentWire.GuestStatus { try await supervisor(vm).status() }
    public func definition(_ vm: String) async throws -> AgentWire.VMDefinition { try await supervisor(vm).definition }

    public func statuses() async -> [AgentWire.GuestStatus] {
        let all = await supervisors.all()
        return await withTaskGroup(of: AgentWire.GuestStatus?.self) { group in
            for supervisor in all { group.addTask { try? await supervisor.status(pingTimeout: .seconds(1)) } }
            var result: [AgentWire.GuestStatus] = []
            for await status in group { if let status { result.append(status) } }
            return result.sorted { $0.vmId < $1.vmId }
        }
    }

    public func delete(_ vm: String) async throws {
        guard let supervisor = await supervisors.get(vm) else { return }
        try await supervisor.destroy()
        await supervisors.remove(vm)
    }

    public func exec(_ vm: String, command: [String], timeoutSeconds: Int) async throws -> AgentWire.ExecResult {
        try await supervisor(vm).exec(command, timeoutSeconds: timeoutSeconds)
    }

    public func prepareIncoming(_ request: AgentWire.IncomingRequest) async throws -> AgentWire.IncomingAnswer {
        let definition = request.definition
        if let existing = await supervisors.get(definition.id), await existing.isRunning {
            throw ShepherdError(.illegalState, "VM '\(definition.name)' already runs on this host")
        }
        let supervisor = GuestSupervisor(definition: definition, directory: "\(stateDirectory)/vms/\(definition.id)",
                                         accelerator: accelerator, qemuBinary: qemuBinary, cgroups: cgroups, network: network)
        // Whole-VM migration: the disks arrive over NBD into empty images made here first.
        var created: [String] = []
        do {
            for disk in request.storage ?? [] {
                guard !FileManager.default.fileExists(atPath: disk.path) else {
                    throw ShepherdError(.alreadyExists, "'\(disk.path)' exists already on this host")
                }
                try Files.ensureDirectory((disk.path as NSString).deletingLastPathComponent, mode: 0o755)
                try await QemuImg.create(path: disk.path, bytes: UInt64(disk.sizeBytes))
                created.append(disk.path)
            }
            try await supervisor.create()
            await supervisors.insert(supervisor)
            return try await supervisor.startIncoming(address: request.address, postcopy: request.postcopy, storage: request.storage ?? [])
        } catch {
            try? await supervisor.forget()
            await supervisors.remove(definition.id)
            for path in created { try? FileManager.default.removeItem(atPath: path) }
            throw error
        }
    }

    public func migrate(_ vm: String, _ request: AgentWire.MigrateRequest) async throws { try await supervisor(vm).migrate(request) }
    public func resumeIncoming(_ vm: String) async throws { try await supervisor(vm).resumeIncoming() }
    public func migrationProgress(_ vm: String) async throws -> AgentWire.MigrationProgress { try await supervisor(vm).migrationProgress() }
    public func startPostcopy(_ vm: String) async throws { try await supervisor(vm).startPostcopy() }
    public func cancelMigration(_ vm: String) async throws { try await supervisor(vm).cancelMigration() }
    public func syncGuestClock(_ vm: String) async throws { try await supervisor(vm).syncGuestClock() }
    public func setBalloon(_ vm: String, targetMiB: Int) async throws { try await supervisor(vm).setBalloon(targetMiB: targetMiB) }
    public func resize(_ vm: String, _ request: AgentWire.ResizeRequest) async throws -> AgentWire.ResizeAnswer {
        try await supervisor(vm).resize(request)
    }

    public func release(_ vm: String) async throws {
        guard let supervisor = await supervisors.get(vm) else { return }
        try await supervisor.forget()
        await supervisors.remove(vm)
    }

    func supervisor(_ vm: String) async throws -> GuestSupervisor {
        guard let supervisor = await supervisors.get(vm) else { throw ShepherdError.notFound("VM", vm) }
        return supervisor
    }
}

private actor Supervisors {
    private var byID: [String: GuestSupervisor] = [:]
    func insert(_ supervisor: GuestSupervisor) { byID[supervisor.id] = supervisor }
    func get(_ id: String) -> GuestSupervisor? { byID[id] }
    func remove(_ id: String) { byID[id] = nil }
    func all() -> [GuestSupervisor] { Array(byID.values) }
}

/// One VM's QEMU process: starts it, watches it, talks QMP and the guest agent to it.
/// Guest-agent conversations are serialized (its socket takes one client); while one runs,
/// status reports reuse the last known tools state instead of queueing a ping.
actor GuestSupervisor {
    nonisolated let id: String
    private(set) var definition: AgentWire.VMDefinition
    private let directory: String
    private let accelerator: String
    private let qemuBinary: String
    private let cgroups: CGroups?
    let network: OVS?
    /// The swap disk this VM's start switched on (off again when its QEMU ends).
    private var activeSwap: String?
    /// A swapoff going on after QEMU ended: it pages everything back in, which can take minutes,
    /// so a stop does not wait for it; a start or removal of the same disk does.
    private var swapRelease: Task<Void, Never>?
    private var guestAgentBusy = 0
    private var changingProcess = false
    private var lastToolsRunning = false
    /// Pings missed in a row; tools count as gone only after `toolsMissLimit` (a loaded host
    /// can miss one short ping while the guest agent is fine).
    private var missedPings = 0
    private let toolsMissLimit = 3

    init(definition: AgentWire.VMDefinition, directory: String, accelerator: String, qemuBinary: String, cgroups: CGroups?, network: OVS?) {
        self.network = network
        self.id = definition.id
        self.cgroups = cgroups
        self.definition = definition
        self.directory = directory
        self.accelerator = accelerator
        self.qemuBinary = qemuBinary
    }

    /// Sockets live under /run (short, fixed paths): a UNIX socket path is limited to 107
    /// bytes, which a deep state directory would exceed. The agent's own folder there keeps two
    /// agents on one machine (a migration's source and target) apart.
    private var socketDirectory: String { "\(runtimeDirectory)/\(id)" }
    private var qmpSocket: String { socketDirectory + "/qmp.sock" }
    var qmpSocketPath: String { qmpSocket }
    private var guestAgentSocket: String { socketDirectory + "/qga.sock" }
    private var runtimeDirectory: String { GuestSupervisor.runtimeDirectory(forStateDirectory: (directory as NSString).deletingLastPathComponent) }

    /// `/run/shepherd/<hash of the agent's state dir>`: stable across agent restarts, short.
    static func runtimeDirectory(forStateDirectory path: String) -> String {
        "/run/shepherd/" + String(Files.stableHash(path), radix: 16)
    }
    private var pidFile: String { directory + "/qemu.pid" }
    private var logFile: String { directory + "/qemu.log" }
    private var serialLog: String { directory + "/serial.log" }

    /// Creates the VM's directory and its disk (copied from the template) and saves the definition.
    func create() async throws {
        try Files.ensureDirectory(directory, mode: 0o700)
        do {
            if !FileManager.default.fileExists(atPath: definition.disk) {
                guard let source = definition.sourceDisk else {
                    throw ShepherdError(.invalidField, "disk: '\(definition.disk)' does not exist and no source disk was given")
                }
                guard FileManager.default.fileExists(atPath: source) else {
                    throw ShepherdError(.notFound, "the template disk '\(source)' is not on this host")
                }
                let diskDirectory = (definition.disk as NSString).deletingLastPathComponent
                try Files.ensureDirectory(diskDirectory, mode: 0o755)
                let partial = definition.disk + ".partial"
                try? FileManager.default.removeItem(atPath: partial)
                if definition.linkedClone {
                    // A differencing disk over the template's image: the template is never written.
                    try await QemuImg.createOverlay(path: partial, backing: source, backingFormat: try await QemuImg.info(path: source).format)
                } else {
                    try await QemuImg.convert(source: source, destination: partial)
                }
                try FileManager.default.moveItem(atPath: partial, toPath: definition.disk)
            }
            try save()
        } catch {
            try? FileManager.default.removeItem(atPath: directory)
            throw error
        }
    }

    func redefine(_ definition: AgentWire.VMDefinition) throws {
        self.definition = definition
        try save()
    }

    /// The manager's new definition; a running VM whose QoS changed gets the new one at once,
    /// and if it cannot, the old definition stays (so a retry applies it again).
    func update(_ definition: AgentWire.VMDefinition) async throws {
        let previous = self.definition
        try redefine(definition)
        guard definition.qos != previous.qos, let pid = livePid() else { return }
        do {
            try await applyQoS(pid: pid, placing: false)
        } catch {
            try? redefine(previous)
            throw error
        }
    }

    // MARK: QoS

    /// The VM's cgroup limits for its QoS (defaults without one).
    var cgroupLimits: CGroupLimits {
        let qos = definition.effectiveQoS
        return CGroupLimits(cpuSharesV1: qos.cgroupV1CPUShares, cpuWeightV2: qos.cgroupV2CPUWeight, cpuQuotaMicros: qos.cfsQuotaMicros,
                            cpuPeriodMicros: VMQoS.cfsPeriodMicros, memoryProtectedBytes: UInt64(qos.memoryReservationMiB) << 20)
    }

    /// What the guest has (memory less the balloon) and what it counts as available of it;
    /// nil where QEMU or the guest's balloon driver does not say (yet).
    func balloonReport() async -> (Int?, Int?) {
        let actual = (try? await qmp("query-balloon", timeout: .seconds(2)))?["actual"]?.doubleValue
        let stats = try? await qmp("qom-get", ["path": .string(Self.balloonPath), "property": "guest-stats"], timeout: .seconds(2))
        let available = stats?["stats"]?["stat-available-memory"]?.doubleValue
        // A statistic the guest has not reported yet reads as -1 or as 2^64-1.
        func mib(_ bytes: Double?) -> Int? { bytes.flatMap { $0 >= 0 && $0 < 1e15 ? Int($0) >> 20 : nil } }
        return (mib(actual), mib(available))
    }

    static let balloonPath = "/machine/peripheral/balloon0"

    /// A new size: a running guest gets its new vCPUs hot-plugged (and onlined through its
    /// tools) and its memory through the balloon; a VM that is off just keeps the new size.
    func resize(_ request: AgentWire.ResizeRequest) async throws -> AgentWire.ResizeAnswer {
        try await exclusive { me in
            var changed = me.definition
            let before = changed.cpus
            changed.cpus = request.cpus
            changed.memoryMiB = request.memoryMiB
            guard me.livePid() != nil else {
                try me.redefine(changed)
                return AgentWire.ResizeAnswer(onlineCpus: nil)
            }
            let most = changed.maxCpus ?? before
            guard request.cpus >= before, request.cpus <= most, request.memoryMiB <= (changed.maxMemoryMiB ?? changed.memoryMiB) else {
                throw ShepherdError(.illegalState, "'\(changed.name)' runs with \(before) of at most \(most) vCPUs and at most \(changed.maxMemoryMiB ?? me.definition.memoryMiB) MiB; asked \(request.cpus) vCPUs, \(request.memoryMiB) MiB")
            }
            if changed.bootCpus == nil { changed.bootCpus = before }
            let model = QEMUCommandLine.cpuModel(changed, accelerator: me.accelerator)
            let original = me.definition
            var added: [String] = []
            do {
                for index in before..<request.cpus {
                    _ = try await me.qmp("device_add", ["driver": .string("\(model)-x86_64-cpu"), "id": .string("vcpu\(index)"),
                                                        "socket-id": .number(Double(index)), "core-id": 0, "thread-id": 0])
                    added.append("vcpu\(index)")
                }
            } catch {
                // Nothing half-done: the vCPUs this call added go again (ACPI unplug).
                for id in added.reversed() { _ = try? await me.qmp("device_del", ["id": .string(id)]) }
                try? me.redefine(original)
                throw error
            }
            try me.redefine(changed)
            try await me.balloon(to: changed.memoryCeilingMiB)
            return AgentWire.ResizeAnswer(onlineCpus: request.cpus > before ? await me.onlineAllVCPUs(expecting: request.cpus) : nil)
        }
    }

    /// Hot-added vCPUs arrive offline in a guest without udev: its tools bring them online.
    /// Returns how many are online (nil when the tools do not answer).
    private func onlineAllVCPUs(expecting count: Int, timeout: Duration = .seconds(20)) async -> Int? {
        let started = ContinuousClock.now
        var online: Int?
        while ContinuousClock.now - started < timeout {
            guard let vcpus = try? await withGuestAgent({ try await GuestAgent.execute(socketPath: self.guestAgentSocket, "guest-get-vcpus", timeout: .seconds(5)) }),
                  let list = vcpus.arrayValue else { return online }
            let offline = list.filter { $0["online"]?.boolValue == false }.compactMap { $0["logical-id"]?.intValue }
            online = list.count - offline.count
            if online! >= count { return online }
            if !offline.isEmpty {
                let wanted: [JSONValue] = offline.map { ["logical-id": .number(Double($0)), "online": true] }
                _ = try? await withGuestAgent {
                    try await GuestAgent.execute(socketPath: self.guestAgentSocket, "guest-set-vcpus", arguments: ["vcpus": .array(wanted)], timeout: .seconds(5))
                }
            }
            try? await Task.sleep(for: .milliseconds(500))
        }
        return online
    }

    /// Moves the balloon so the guest has `targetMiB` (never below 64 MiB nor above its memory ceiling).
    func setBalloon(targetMiB: Int) async throws {
        guard livePid() != nil else { throw ShepherdError(.illegalState, "VM '\(definition.name)' does not run here") }
        try await balloon(to: min(definition.memoryCeilingMiB, max(VMQoS.minimumMemoryLimitMiB, targetMiB)))
    }

    private func balloon(to mib: Int) async throws {
        _ = try await qmp("balloon", ["value": .number(Double(UInt64(mib) << 20))])
    }

    /// Puts QEMU into the VM's cgroup (or updates its limits there) and sets the balloon to the
    /// memory limit. A start whose QoS cannot be enforced fails rather than run unbounded.
    func applyQoS(pid: Int32, placing: Bool) async throws {
        if let cgroups {
            // A QEMU started before QoS existed has no group yet: it gets one now.
            if placing || !cgroups.contains(pid: pid, vm: id) { try cgroups.place(pid: pid, vm: id, limits: cgroupLimits) } else {
                try cgroups.apply(cgroupLimits, vm: id)
            }
        }
        do {
            try await balloon(to: definition.memoryCeilingMiB)
        } catch where !placing && definition.effectiveQoS.memoryLimitMiB == nil {
            // A QEMU started before the balloon existed has none; only a memory limit needs it.
        }
        if placing {
            // The guest's balloon driver reports its memory use every 2 s (the balloon controller's input).
            _ = try await qmp("qom-set", ["path": .string(Self.balloonPath), "property": "guest-stats-polling-interval", "value": 2])
        }
    }

    func save() throws {
        let data = try JSONEncoder().encode(definition)
        try Files.writeAtomically(data, to: directory + "/vm.json", mode: 0o600)
    }

    // MARK: state

    /// The pid of this VM's QEMU if it runs (checked against its command line, since pids get reused).
    func livePid() -> Int32? {
        guard let pid = Processes.readPidFile(pidFile), Processes.isAlive(pid),
              let argv = Processes.commandLine(pid), argv.contains(where: { $0.contains(id) }) else { return nil }
        return pid
    }

    /// What runs now. A pidfile whose process is gone means QEMU died without being asked to
    /// (QEMU removes its pidfile when it exits cleanly, and so do we after cutting power).
    func status(pingTimeout: Duration = .seconds(1)) async throws -> AgentWire.GuestStatus {
        guard let pid = livePid() else {
            if let stale = Processes.readPidFile(pidFile) {
                await cgroups?.remove(vm: id)
                // Only while no start is under way: its new ports must not be unplugged.
                await exclusive { me in if me.livePid() == nil { await me.unplugPorts(me.definition.nics) } }
                if activeSwap != nil { await disableSwap() }
                return AgentWire.GuestStatus(vmId: id, power: .crashed, toolsRunning: false, pid: nil,
                                             reason: "the QEMU process (pid \(stale)) ended unexpectedly\(lastLogLine().map { ": " + $0 } ?? "")")
            }
            return AgentWire.GuestStatus(vmId: id, power: .stopped, toolsRunning: false)
        }
        let answer = try? await QMP.execute(socketPath: qmpSocket, "query-status", timeout: .seconds(3))
        let qemuStatus = answer?["status"]?.stringValue ?? "unknown"
        if qemuStatus == "guest-panicked" {
            // pvpanic told QEMU the guest kernel panicked (-action panic=pause): end this QEMU and
            // report the crash, so HA can restart the VM.
            await exclusive { me in if me.livePid() == pid { await me.quit(pid: pid) } }
            return AgentWire.GuestStatus(vmId: id, power: .crashed, toolsRunning: false, pid: nil,
                                         reason: "the guest kernel panicked (pvpanic)")
        }
        if qemuStatus == "shutdown" {
            // The guest powered itself off; QEMU waits (-no-shutdown) for us to end it. Only that
            // same process: a start may have replaced it while this status was in flight.
            await exclusive { me in if me.livePid() == pid { await me.quit(pid: pid) } }
            return AgentWire.GuestStatus(vmId: id, power: .stopped, toolsRunning: false, reason: "the guest powered off")
        }
        let tools: Bool
        if guestAgentBusy > 0 {
            tools = lastToolsRunning
        } else if await GuestAgent.ping(socketPath: guestAgentSocket, timeout: pingTimeout) {
            missedPings = 0
            // Tools just came up (a boot, a reboot, an agent restart): the guest's NICs get the
            // addresses Shepherd manages where they are missing — adding only, so the guest's
            // other addresses and its routes stay.
            if !lastToolsRunning, !definition.nics.isEmpty { Task { await self.configureGuestNetwork() } }
            lastToolsRunning = true
            tools = true
        } else {
            missedPings += 1
            if missedPings >= toolsMissLimit { lastToolsRunning = false }
            tools = lastToolsRunning
        }
        let power: AgentWire.GuestPower = qemuStatus == "running" ? .running : .paused
        let (balloon, available) = power == .running ? await balloonReport() : (nil, nil)
        return AgentWire.GuestStatus(vmId: id, power: power, toolsRunning: tools, pid: pid, balloonMiB: balloon, guestAvailableMiB: available)
    }

    func lastLogLine() -> String? {
        guard let text = try? String(contentsOfFile: logFile, encoding: .utf8) else { return nil }
        return text.split(separator: "\n").last.map(String.init)
    }

    // MARK: power

    func start() async throws -> AgentWire.GuestStatus {
        let pid = try await exclusive { me in try await me.launch(extraArguments: []) }
        return AgentWire.GuestStatus(vmId: id, power: .running, toolsRunning: false, pid: pid)
    }

    /// Starts this VM's QEMU (daemonized) and returns its pid.
    func launch(extraArguments: [String]) async throws -> Int32 {
        if let pid = livePid() {
            throw ShepherdError(.illegalState, "VM '\(definition.name)' already runs here (QEMU pid \(pid))")
        }
        for stale in [pidFile, qmpSocket, guestAgentSocket] { try? FileManager.default.removeItem(atPath: stale) }
        try Files.ensureDirectory(socketDirectory, mode: 0o700)
        let files = [definition.kernel, definition.initrd, definition.disk] + definition.disks.map(\.path)
        for file in files where !FileManager.default.fileExists(atPath: file) {
            throw ShepherdError(.notFound, "cannot start VM '\(definition.name)': '\(file)' is not on this host")
        }
        // A power-on (not an incoming migration, which continues the source's overlay) starts
        // every non-persistent disk from its base again.
        if !extraArguments.contains("-incoming") {
            for disk in definition.disks where disk.mode == .nonPersistent { try await freshOverlay(for: disk) }
        }
        let argv = QEMUCommandLine(definition: definition, accelerator: accelerator, qmpSocket: qmpSocket,
                                   guestAgentSocket: guestAgentSocket, pidFile: pidFile, logFile: logFile, serialLog: serialLog).arguments
        if let swap = definition.swap {
            await swapSettled()
            do {
                try await Swap.enable(path: swap.path, sizeBytes: UInt64(swap.sizeBytes))
            } catch {
                throw ShepherdError(.agentFailed, "cannot start '\(definition.name)': its swap disk '\(swap.path)' (\(swap.sizeBytes >> 30) GiB) could not be switched on: \(error)")
            }
            activeSwap = swap.path
        }
        do {
            try await plugPorts(definition.nics)
        } catch {
            await disableSwap()
            throw error
        }
        do {
            try await Command.check(qemuBinary, argv + extraArguments, timeout: .seconds(60))
        } catch let error as HostKitError {
            await unplugPorts(definition.nics)
            await disableSwap()
            let logLine = lastLogLine()
            // QEMU's image lock: another QEMU (on this or another host) still has the disk open.
            let locked = logLine.map { $0.contains("Is another process using the image") || $0.contains("Failed to get \"write\" lock") } ?? false
            throw ShepherdError(locked ? .diskLocked : .agentFailed,
                                "QEMU did not start for '\(definition.name)': \(error.message)\(logLine.map { "; its log says: " + $0 } ?? "")")
        }
        lastToolsRunning = false
        missedPings = 0
        guard let pid = livePid() else {
            await unplugPorts(definition.nics)
            await disableSwap()
            throw ShepherdError(.agentFailed, "QEMU for '\(definition.name)' exited right after starting\(lastLogLine().map { ": " + $0 } ?? "")")
        }
        do {
            try await applyQoS(pid: pid, placing: true)
            try await applyLinkStates()
        } catch {
            await quit(pid: pid)
            throw ShepherdError(.agentFailed, "QEMU for '\(definition.name)' was ended again: its QoS could not be applied: \(error)")
        }
        return pid
    }

    func stop(force: Bool) async throws -> AgentWire.GuestStatus {
        guard let pid = livePid() else {
            try? FileManager.default.removeItem(atPath: pidFile)
            return AgentWire.GuestStatus(vmId: id, power: .stopped, toolsRunning: false, reason: "was not running")
        }
        if force {
            await exclusive { me in if me.livePid() == pid { await me.quit(pid: pid) } }
            return AgentWire.GuestStatus(vmId: id, power: .stopped, toolsRunning: false, reason: "power cut")
        }
        if await withGuestAgent({ await GuestAgent.ping(socketPath: self.guestAgentSocket, timeout: .seconds(2)) }) {
            try await withGuestAgent { try await GuestAgent.shutdown(socketPath: self.guestAgentSocket, mode: "powerdown") }
            return AgentWire.GuestStatus(vmId: id, power: .running, toolsRunning: true, pid: pid, reason: "through the tools")
        }
        _ = try await qmp("system_powerdown")
        return AgentWire.GuestStatus(vmId: id, power: .running, toolsRunning: false, pid: pid, reason: "ACPI power button")
    }

    func reboot(force: Bool) async throws -> AgentWire.GuestStatus {
        guard let pid = livePid() else {
            throw ShepherdError(.illegalState, "VM '\(definition.name)' does not run here")
        }
        if force {
            _ = try await qmp("system_reset")
            return AgentWire.GuestStatus(vmId: id, power: .running, toolsRunning: false, pid: pid, reason: "reset")
        }
        try await withGuestAgent { try await GuestAgent.shutdown(socketPath: self.guestAgentSocket, mode: "reboot") }
        lastToolsRunning = false
        return AgentWire.GuestStatus(vmId: id, power: .running, toolsRunning: false, pid: pid, reason: "through the tools")
    }

    /// Ends QEMU: `quit` over QMP, then the SIGTERM→SIGKILL ladder; clears the pidfile so a
    /// power cut we asked for is never mistaken for a crash.
    func quit(pid: Int32) async {
        _ = try? await QMP.execute(socketPath: qmpSocket, "quit", timeout: .seconds(3))
        for _ in 0..<50 where Processes.isAlive(pid) { try? await Task.sleep(for: .milliseconds(100)) }
        if Processes.isAlive(pid) { _ = await Processes.terminate(pid, grace: .seconds(5)) }
        try? FileManager.default.removeItem(atPath: pidFile)
        lastToolsRunning = false
        await cgroups?.remove(vm: id)
        await unplugPorts(definition.nics)
        await disableSwap()
    }

    /// Switches off the swap disk this VM had on (or, after an agent restart, its definition's
    /// if the kernel still has it on). The file stays for the next start.
    func disableSwap() async {
        guard let path = activeSwap ?? definition.swap?.path else { return }
        activeSwap = nil
        let previous = swapRelease
        swapRelease = Task {
            await previous?.value
            try? await Swap.disable(path: path)
        }
    }

    /// Waits for a swapoff still going on.
    func swapSettled() async { await swapRelease?.value }

    /// Deletes the swap disk once any swapoff has ended, without making the caller wait.
    func removeSwapDisk() {
        guard let path = definition.swap?.path else { return }
        let previous = swapRelease
        swapRelease = Task {
            await previous?.value
            try? await Swap.remove(path: path)
        }
    }

    var isRunning: Bool { livePid() != nil }

    /// Starts QEMU with `-incoming defer`, enables post-copy when asked (both sides need it),
    /// and listens on a free port of `address`.
    func startIncoming(address: String, postcopy: Bool, storage: [AgentWire.IncomingDisk] = []) async throws -> AgentWire.IncomingAnswer {
        // With storage arriving over NBD the guest must not run before the last disk write is in:
        // -S keeps it paused after the memory until the manager says resume.
        _ = try await exclusive { me in try await me.launch(extraArguments: ["-incoming", "defer"] + (storage.isEmpty ? [] : ["-S"])) }
        if postcopy {
            _ = try await qmp("migrate-set-capabilities", ["capabilities": [["capability": "postcopy-ram", "state": true]]])
        }
        var nbd: String?
        if !storage.isEmpty {
            let port = try TCP.freePort(on: address)
            _ = try await qmp("nbd-server-start", ["addr": ["type": "inet", "data": ["host": .string(address), "port": .string(String(port))]]])
            for disk in storage {
                let node = try await formatNode(file: disk.path)
                _ = try await qmp("block-export-add", ["type": "nbd", "id": .string("export-" + disk.export), "node-name": .string(node),
                                                       "name": .string(disk.export), "writable": true])
            }
            nbd = "\(address):\(port)"
        }
        let port = try TCP.freePort(on: address)
        let uri = "tcp:\(address):\(port)"
        _ = try await qmp("migrate-incoming", ["uri": .string(uri)])
        return AgentWire.IncomingAnswer(uri: uri, pid: livePid(), nbd: nbd)
    }

    /// Whole-VM migration, target side: the disks are complete; stop serving them and run.
    func resumeIncoming() async throws {
        guard livePid() != nil else {
            throw ShepherdError(.agentFailed, "the target QEMU of '\(definition.name)' ended\(lastLogLine().map { ": " + $0 } ?? "")")
        }
        _ = try? await qmp("nbd-server-stop")
        let started = ContinuousClock.now
        while true {
            let status = try await qmp("query-status")["status"]?.stringValue
            if status == "running" { return }
            if status != "inmigrate" {
                _ = try await qmp("cont")
                return
            }
            guard ContinuousClock.now - started < .seconds(30) else {
                throw ShepherdError(.timedOut, "the target QEMU of '\(definition.name)' is still receiving memory after 30 s")
            }
            try await Task.sleep(for: .milliseconds(100))
        }
    }

    func migrate(_ request: AgentWire.MigrateRequest) async throws {
        guard livePid() != nil else { throw ShepherdError(.illegalState, "VM '\(definition.name)' does not run here") }
        let capabilities: [JSONValue] = [
            ["capability": "xbzrle", "state": .bool(request.xbzrle)],
            ["capability": "auto-converge", "state": .bool(request.autoConverge)],
            ["capability": "postcopy-ram", "state": .bool(request.postcopy)],
        ]
        _ = try await qmp("migrate-set-capabilities", ["capabilities": .array(capabilities)])
        var parameters: [String: JSONValue] = ["downtime-limit": .number(Double(request.downtimeLimitMs))]
        if request.maxBandwidthBytes > 0 { parameters["max-bandwidth"] = .number(Double(request.maxBandwidthBytes)) }
        _ = try await qmp("migrate-set-parameters", parameters)
        _ = try await qmp("migrate", ["uri": .string(request.uri)])
    }

    func migrationProgress() async throws -> AgentWire.MigrationProgress {
        let info = try await qmp("query-migrate")
        let ram = info["ram"]
        let pageSize = Double(ram?["page-size"]?.intValue ?? 4096)
        func int(_ value: JSONValue?) -> Int64 { Int64(value?.doubleValue ?? 0) }
        return AgentWire.MigrationProgress(
            status: info["status"]?.stringValue ?? "none", totalTimeMs: info["total-time"]?.intValue ?? 0,
            downtimeMs: info["downtime"]?.intValue, expectedDowntimeMs: info["expected-downtime"]?.intValue ?? 0,
            transferredBytes: int(ram?["transferred"]), remainingBytes: int(ram?["remaining"]), totalBytes: int(ram?["total"]),
            dirtyBytesPerSecond: Int64((ram?["dirty-pages-rate"]?.doubleValue ?? 0) * pageSize),
            bandwidthBytesPerSecond: Int64((ram?["mbps"]?.doubleValue ?? 0) * 1_000_000 / 8),
            passes: ram?["dirty-sync-count"]?.intValue ?? 0, duplicatePages: int(ram?["duplicate"]),
            zeroBytes: Int64(Double(int(ram?["duplicate"])) * pageSize), cpuThrottlePercent: info["cpu-throttle-percentage"]?.intValue,
            error: info["error-desc"]?.stringValue)
    }

    func startPostcopy() async throws { _ = try await qmp("migrate-start-postcopy") }

    func cancelMigration() async throws {
        _ = try await qmp("migrate_cancel")
        // A cancelled pre-copy leaves the source running; make sure it is.
        for _ in 0..<50 {
            let status = try await qmp("query-status")["status"]?.stringValue
            if status == "running" { return }
            if status == "paused" || status == "postmigrate" || status == "finish-migrate" {
                _ = try? await qmp("cont")
            }
            try await Task.sleep(for: .milliseconds(100))
        }
    }

    /// guest-set-time without a time reads the hardware clock into the system clock: QEMU's RTC
    /// follows the host's clock while the guest was paused for the switch-over.
    func syncGuestClock() async throws {
        _ = try await withGuestAgent {
            try await GuestAgent.execute(socketPath: self.guestAgentSocket, "guest-set-time", timeout: .seconds(5))
        }
    }

    /// One guest-agent command, serialized with the others.
    func guestAgentCommand(_ command: String, timeout: Duration) async throws -> JSONValue {
        do {
            return try await withGuestAgent { try await GuestAgent.execute(socketPath: self.guestAgentSocket, command, timeout: timeout) }
        } catch let error as QMPError {
            throw ShepherdError(.toolsNotRunning, "the tools of '\(definition.name)' did not answer \(command): \(error.message)")
        }
    }

    /// Ends QEMU if it runs and removes this host's record of the VM, keeping the disk.
    func forget() async throws {
        await exclusive { me in if let pid = me.livePid() { await me.quit(pid: pid) } }
        // The VM has left this host: so has its swap disk here (after its swapoff, in the background).
        removeSwapDisk()
        try? FileManager.default.removeItem(atPath: directory)
        try? FileManager.default.removeItem(atPath: socketDirectory)
    }

    /// Cuts power if needed and removes the VM's directory and disk.
    func destroy() async throws {
        await exclusive { me in if let pid = me.livePid() { await me.quit(pid: pid) } }
        removeSwapDisk()
        let diskDirectory = (definition.disk as NSString).deletingLastPathComponent
        try? FileManager.default.removeItem(atPath: definition.disk)
        try? FileManager.default.removeItem(atPath: definition.disk + ".partial")
        if (try? FileManager.default.contentsOfDirectory(atPath: diskDirectory))?.isEmpty == true {
            try? FileManager.default.removeItem(atPath: diskDirectory)
        }
        for disk in definition.disks where disk.mode == .nonPersistent { try? FileManager.default.removeItem(atPath: overlayPath(for: disk)) }
        try FileManager.default.removeItem(atPath: directory)
        try? FileManager.default.removeItem(atPath: socketDirectory)
    }

    // MARK: guest

    func exec(_ command: [String], timeoutSeconds: Int) async throws -> AgentWire.ExecResult {
        guard livePid() != nil else { throw ShepherdError(.illegalState, "VM '\(definition.name)' does not run here") }
        guard let program = command.first else { throw ShepherdError.invalidField("command", "must name a program") }
        // A guest busy at full speed under TCG can take seconds to answer; up to 10 s of the
        // command's own time go to finding out whether its tools run at all.
        let pingSeconds = min(10, max(2, timeoutSeconds))
        guard await withGuestAgent({ await GuestAgent.ping(socketPath: self.guestAgentSocket, timeout: .seconds(pingSeconds)) }) else {
            throw ShepherdError(.toolsNotRunning, "the tools of '\(definition.name)' do not answer (qemu-guest-agent ping timed out after \(pingSeconds) s)")
        }
        let result: GuestAgent.ExecResult
        do {
            result = try await withGuestAgent {
                try await GuestAgent.exec(socketPath: self.guestAgentSocket, path: program, arguments: Array(command.dropFirst()),
                                          timeout: .seconds(timeoutSeconds))
            }
        } catch let error as QMPError {
            if error.kind == .timeout {
                throw ShepherdError(.timedOut, "'\(command.joined(separator: " "))' did not finish in '\(definition.name)' within \(timeoutSeconds) s")
            }
            throw ShepherdError(.agentFailed, "running '\(program)' in '\(definition.name)' failed: \(error.message)")
        }
        let code = result.signal.map { 128 + Int($0) } ?? Int(result.exitCode)
        return AgentWire.ExecResult(exitCode: code, stdout: result.stdout, stderr: result.stderr)
    }

    /// Runs one change of the QEMU process (start, end) at a time: the actor is reentrant, and a
    /// status call that ends a powered-off QEMU must never reach a QEMU a start just launched
    /// (it would send `quit` to the new one through the same socket path).
    func exclusive<T: Sendable>(_ body: (isolated GuestSupervisor) async throws -> T) async rethrows -> T {
        while changingProcess { try? await Task.sleep(for: .milliseconds(20)) }
        changingProcess = true
        defer { changingProcess = false }
        return try await body(self)
    }

    private func withGuestAgent<T: Sendable>(_ body: @Sendable () async throws -> T) async rethrows -> T {
        guestAgentBusy += 1
        defer { guestAgentBusy -= 1 }
        return try await body()
    }

    func qmp(_ command: String, _ arguments: [String: JSONValue]? = nil, timeout: Duration = .seconds(5)) async throws -> JSONValue {
        do {
            return try await QMP.execute(socketPath: qmpSocket, command, arguments: arguments, timeout: timeout)
        } catch let error as QMPError {
            throw ShepherdError(.agentFailed, "QMP \(command) on '\(definition.name)' failed: \(error.message)")
        }
    }
}

/// The QEMU command line of one VM: direct kernel boot, virtio disk, guest-agent port, QMP,
/// serial to a file, `-no-shutdown` so a guest power-off is seen before QEMU ends.
public struct QEMUCommandLine: Sendable {
    public let definition: AgentWire.VMDefinition
    public let accelerator: String
    public let qmpSocket: String
    public let guestAgentSocket: String
    public let pidFile: String
    public let logFile: String
    public let serialLog: String

    public init(definition: AgentWire.VMDefinition, accelerator: String, qmpSocket: String, guestAgentSocket: String,
                pidFile: String, logFile: String, serialLog: String) {
        self.definition = definition; self.accelerator = accelerator; self.qmpSocket = qmpSocket
        self.guestAgentSocket = guestAgentSocket; self.pidFile = pidFile; self.logFile = logFile; self.serialLog = serialLog
    }

    var cpuModel: String { Self.cpuModel(definition, accelerator: accelerator) }

    static func cpuModel(_ definition: AgentWire.VMDefinition, accelerator: String) -> String {
        definition.cpuModel ?? (accelerator == "kvm" ? "host" : "max")
    }

    /// `-cpu`: the model; TCG's default "max" with Intel's CPUID vendor. Measured on this
    /// machine kind (QEMU 7.2 TCG, Debian 6.1 guest kernel): a guest with an AMD vendor (max,
    /// qemu64 or EPYC) died on the migration target in 21 of 36 multi-pass migrations of a raw
    /// QEMU pair (its per-CPU hrtimer queue corrupt: "Kernel panic - not syncing: Attempted to
    /// kill the idle task!"); with vendor=GenuineIntel, 0 of 9. TCG emulates either vendor on any
    /// host, so nothing else changes. A named model (IMC) is passed as it is.
    static func cpuArgument(_ model: String, accelerator: String) -> String {
        model == "max" && accelerator != "kvm" ? "max,vendor=GenuineIntel" : model
    }

    /// `-smp`: the boot vCPUs within the maximum (one per socket, so socket k is vCPU k).
    var smp: String {
        let boot = definition.bootCpus ?? definition.cpus
        let most = max(definition.maxCpus ?? definition.cpus, definition.cpus)
        return most > boot ? "cpus=\(boot),maxcpus=\(most),sockets=\(most),cores=1,threads=1" : "\(boot)"
    }

    /// vCPUs hot-added since boot, as devices: a migration target or a resume needs them too.
    var hotpluggedCPUs: [String] {
        let boot = definition.bootCpus ?? definition.cpus
        guard definition.cpus > boot else { return [] }
        return (boot..<definition.cpus).flatMap { ["-device", QEMUCommandLine.cpuDevice(model: cpuModel, index: $0)] }
    }

    static func cpuDevice(model: String, index: Int) -> String {
        "\(model)-x86_64-cpu,id=vcpu\(index),socket-id=\(index),core-id=0,thread-id=0"
    }

    public var arguments: [String] {
        [
            "-name", "guest=\(definition.name.replacingOccurrences(of: ",", with: ",,")),debug-threads=on",
            "-uuid", definition.id,
            "-machine", "pc", "-accel", accelerator, "-cpu", Self.cpuArgument(cpuModel, accelerator: accelerator),
            // Memory up to the maximum; the balloon holds the guest to its size (`applyQoS`).
            "-m", "\(max(definition.maxMemoryMiB ?? definition.memoryMiB, definition.memoryMiB))", "-smp", smp,
            "-nodefaults", "-no-user-config", "-display", "none",
            "-kernel", definition.kernel, "-initrd", definition.initrd, "-append", definition.cmdline,
            "-blockdev", "driver=qcow2,node-name=disk0,discard=unmap,file.driver=file,file.discard=unmap,file.filename=\(definition.disk.replacingOccurrences(of: ",", with: ",,"))",
            "-device", "virtio-blk-pci,drive=disk0",
        ] + definition.disks.flatMap { disk in
            ["-blockdev", DiskNodes.blockdevOption(disk, vmID: definition.id), "-device", DiskNodes.deviceOption(disk)]
        } + [
            "-chardev", "socket,id=qga0,path=\(guestAgentSocket),server=on,wait=off",
            "-device", "virtio-serial-pci",
            "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
            "-qmp", "unix:\(qmpSocket),server=on,wait=off",
            // A guest panic pauses the VM and tells QEMU (the seed's blue-screen detection).
            "-device", "pvpanic-pci", "-action", "panic=pause",
            // The balloon (memory limit, later overcommit); a fixed slot keeps the layout the same
            // on a migration target. Freed guest pages go back to the host as the guest frees them.
            "-device", "virtio-balloon-pci,id=balloon0,addr=0x0f",
        ] + definition.nics.flatMap(NICDevices.arguments) + [
            "-serial", "file:\(serialLog)",
            "-D", logFile,
            "-no-shutdown", "-daemonize", "-pidfile", pidFile,
        ] + hotpluggedCPUs
    }
}
