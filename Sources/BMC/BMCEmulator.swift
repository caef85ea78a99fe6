import Foundation
import HostKit
import Logging
import Redfish

/// A power or reset request the BMC refuses or could not carry out.
public struct BMCError: Error, Sendable, CustomStringConvertible {
    public enum Kind: Sendable {
        /// The request names something this BMC does not do (answered 400).
        case unsupported
        /// The power change was attempted and did not complete (answered 500).
        case failed
    }

    public let kind: Kind
    public let message: String
    public init(_ kind: Kind, _ message: String) { self.kind = kind; self.message = message }
    public var description: String { message }
}

/// The baseboard management controller of one emulated host ("machine"): the host's agent process
/// and every QEMU process of that host, with a power switch.
///
/// - Power on: spawns the agent from its argv (logged to `agentLog`, appended). The argv may begin
///   with `ip netns exec NS …`, which execs, so the child's pid is the agent's.
/// - Power off (ForceOff): a power cut. SIGKILL to the agent by its pid and to the processes it had
///   started (collected from /proc before the kill, matched by pid and start time), then SIGKILL to
///   every QEMU of this host: the pid in `<state dir>/vms/<vm id>/qemu.pid`, only if that process is
///   alive and its command line mentions the vm id (never by name). It waits until they are gone,
///   and only then reports Off. Pidfiles are left, as after a real power cut (the next agent sees
///   those VMs as crashed).
/// - GracefulShutdown: SIGTERM to the agent, up to 10 s for it to exit, then the power cut above.
/// - A crashed agent leaves the machine On: a dead operating system is not a powered-off host.
///
/// Power changes run one at a time, in arrival order; reading the power state meanwhile shows
/// PoweringOn/PoweringOff. A power change, once started, completes even if its caller is cancelled.
public actor BMCEmulator {
    /// The host (and Redfish system) name.
    public nonisolated let name: String
    /// The agent's argv; the first element is an absolute path or a name looked up in PATH.
    public nonisolated let agentArguments: [String]
    public nonisolated let agentLog: String
    /// The agent's state directory (where `vms/<id>/qemu.pid` live).
    public nonisolated let stateDirectory: String
    /// How long GracefulShutdown and `shutdownAgent` wait for the agent after SIGTERM.
    public nonisolated let gracePeriod: Duration
    /// The longest a power cut waits for killed processes to disappear before it reports failure.
    public nonisolated let killTimeout: Duration

    /// The reset types this BMC accepts (Nmi is not among them).
    public static let supportedResetTypes: [RedfishWire.ResetType] = [
        .on, .forceOn, .forceOff, .gracefulShutdown, .gracefulRestart, .forceRestart, .powerCycle, .pushPowerButton,
    ]

    private let logger: Logger
    private var state: RedfishWire.PowerState = .off
    private var agent: ChildProcess?
    /// The last queued power change; the next one waits for it.
    private var tail: Task<Void, Never>?
    /// Restarts an agent that exited while the machine is on, as its service manager
    /// (systemd's Restart=on-failure) would on a real host; nil: not supervised.
    private let restartAgentAfter: Duration?
    private var supervisor: Task<Void, Never>?

    public init(name: String, agentArguments: [String], agentLog: String, stateDirectory: String,
                gracePeriod: Duration = .seconds(10), killTimeout: Duration = .seconds(10), restartAgentAfter: Duration? = nil,
                logger: Logger? = nil) {
        self.restartAgentAfter = restartAgentAfter
        self.name = name
        self.agentArguments = agentArguments
        self.agentLog = agentLog
        self.stateDirectory = stateDirectory
        self.gracePeriod = gracePeriod
        self.killTimeout = killTimeout
        self.logger = logger ?? Logger(label: "shepherd.bmc.\(name)")
    }

    /// The current power state.
    public var powerState: RedfishWire.PowerState { state }

    /// The pid of the agent this BMC started, while it runs.
    public var agentPid: Int32? {
        guard let agent, agent.isRunning else { return nil }
        return agent.pid
    }

    /// Brings the machine to its initial state: on spawns the agent (QEMUs still running from
    /// before are left for it to adopt); off makes sure nothing of the host runs (QEMUs left from
    /// before are cut, so Off is never a lie).
    public func start(poweredOn: Bool) async throws {
        try await reset(poweredOn ? .on : .forceOff)
        if let delay = restartAgentAfter, supervisor == nil {
            supervisor = Task { [weak self] in
                while !Task.isCancelled {
                    try? await Task.sleep(for: delay)
                    await self?.restartExitedAgent()
                }
            }
        }
    }

    /// An agent that exited (crashed, killed) while the machine is on starts again; one that is
    /// merely stuck (SIGSTOP, a hung host) does not — that is for fencing to deal with.
    private func restartExitedAgent() async {
        guard state == .on, let child = agent, !child.isRunning else { return }
        logger.warning("the agent of \(name) (pid \(child.pid)) exited while the host is on; starting it again, as its service manager would")
        try? await serialized { me in
            guard me.state == .on, me.agent?.isRunning != true, let executable = me.agentArguments.first else { return }
            me.agent = try ChildProcess.spawn(executable, Array(me.agentArguments.dropFirst()), logFile: me.agentLog)
            me.logger.info("the agent of \(me.name) runs again, pid \(me.agent?.pid ?? 0)")
        }
    }

    /// Carries out a Redfish ComputerSystem.Reset; returns once the power change has completed.
    public func reset(_ type: RedfishWire.ResetType) async throws {
        guard Self.supportedResetTypes.contains(type) else {
            throw BMCError(.unsupported, "ResetType \(type.rawValue) is not supported by this BMC")
        }
        try await serialized { me in try await me.perform(type) }
    }

    /// For the BMC process's own exit (not a power action): SIGTERM to the agent's process group
    /// (SIGKILL after the grace period), waiting for it to end, after any power change under way.
    /// QEMU processes are left running; the reported power state is not changed.
    public func shutdownAgent() async {
        supervisor?.cancel()
        supervisor = nil
        try? await serialized { me in await me.stopAgentGracefully(reason: "BMC exiting") }
    }

    /// QEMU processes of this host now: pids from `<state dir>/vms/*/qemu.pid` that are alive and
    /// whose command line mentions the vm id.
    public nonisolated func hostQEMUPids() -> [Int32] {
        Processes.pidsFromPidFiles(under: stateDirectory + "/vms", named: "qemu.pid").map(\.pid)
    }

    // MARK: - Internals

    /// Runs `body` after every earlier power change, in its own task (not cancelled with the caller).
    private func serialized(_ body: @escaping @Sendable (isolated BMCEmulator) async throws -> Void) async throws {
        let previous = tail
        let operation = Task<Void, any Error> {
            await previous?.value
            try await body(self)
        }
        tail = Task { _ = try? await operation.value }
        try await operation.value
    }

    private func perform(_ type: RedfishWire.ResetType) async throws {
        let before = state
        switch type {
        case .on, .forceOn:
            try await powerOn(action: type)
        case .forceOff:
            try await powerCut(action: type, graceful: false)
        case .gracefulShutdown:
            try await powerCut(action: type, graceful: true)
        case .forceRestart, .powerCycle:
            try await powerCut(action: type, graceful: false)
            try await powerOn(action: type)
        case .gracefulRestart:
            try await powerCut(action: type, graceful: true)
            try await powerOn(action: type)
        case .pushPowerButton:
            // Like a short press: a running machine is asked to shut down, an off one starts.
            if before == .off {
                try await powerOn(action: type)
            } else {
                try await powerCut(action: type, graceful: true)
            }
        case .nmi:
            throw BMCError(.unsupported, "ResetType Nmi is not supported by this BMC")
        }
    }

    private func powerOn(action: RedfishWire.ResetType) async throws {
        guard state != .on else {
            logger.info("power \(action.rawValue): \(name) is already On (agent \(agentPid.map { "pid \($0)" } ?? "not running"))")
            return
        }
        guard let executable = agentArguments.first else {
            throw BMCError(.failed, "no agent command line to power \(name) on with")
        }
        state = .poweringOn
        do {
            let child = try ChildProcess.spawn(executable, Array(agentArguments.dropFirst()), logFile: agentLog)
            agent = child
            state = .on
            logger.info("power \(action.rawValue): \(name) is On, agent pid \(child.pid) (log \(agentLog))")
        } catch {
            state = .off
            logger.error("power \(action.rawValue): \(name) could not start its agent: \(error)")
            throw BMCError(.failed, "could not start the agent of \(name): \(error)")
        }
    }

    /// Power off. `graceful`: SIGTERM to the agent first, up to the grace period.
    private func powerCut(action: RedfishWire.ResetType, graceful: Bool) async throws {
        state = .poweringOff
        var notes: [String] = []
        // The agent's own children (e.g. a qemu-img or a QEMU not yet daemonized), taken before
        // the agent dies and they are reparented.
        var helpers: [Processes.Identity] = []
        if let child = agent, child.isRunning {
            helpers = Processes.descendants(of: child.pid)
            if graceful {
                let status = await child.stop(grace: gracePeriod)
                notes.append("agent pid \(child.pid) asked to stop (SIGTERM), exit status \(status.map(String.init) ?? "unknown")")
            } else {
                _ = Processes.kill(child.pid)
                let status = await child.waitForExitUncancellable(timeout: killTimeout)
                notes.append("agent pid \(child.pid) killed (SIGKILL), exit status \(status.map(String.init) ?? "unknown")")
            }
            if child.isRunning {
                state = .on
                logger.error("power \(action.rawValue): \(name): the agent (pid \(child.pid)) is still alive after SIGKILL")
                throw BMCError(.failed, "the agent of \(name) (pid \(child.pid)) did not end after SIGKILL")
            }
        } else if agent != nil {
            notes.append("agent had already exited")
        } else {
            notes.append("no agent running")
        }
        agent = nil

        // Killed processes are followed by pid and start time: a dying process loses its command
        // line before it is gone, and its pid may be reused right after.
        var killed: [Processes.Identity] = []
        for helper in helpers where Processes.isSame(helper) {
            if Processes.kill(helper.pid) { killed.append(helper) }
        }
        if !killed.isEmpty { notes.append("agent's child process(es) \(killed.map(\.pid)) killed") }

        // QEMUs: kill what the pidfiles show, and look again until a look finds none (a QEMU the
        // agent was starting may write its pidfile a moment later).
        let clock = ContinuousClock()
        let deadline = clock.now + killTimeout
        var qemus: [Int32] = []
        var remaining: [Int32] = []
        var step: Duration = .milliseconds(5)
        while true {
            let found = hostQEMUPids()
            for pid in found {
                guard let identity = Processes.identity(pid) else { continue }
                if !qemus.contains(pid) { qemus.append(pid) }
                if !killed.contains(identity) { killed.append(identity) }
                _ = Processes.kill(pid)
            }
            remaining = killed.filter(Processes.isSame).map(\.pid)
            if found.isEmpty && remaining.isEmpty { break }
            if clock.now >= deadline { break }
            try? await Task.sleep(for: step)
            step = min(step * 2, .milliseconds(100))
        }
        notes.append(qemus.isEmpty ? "no QEMU running" : "QEMU pid(s) \(qemus) killed (SIGKILL)")
        guard remaining.isEmpty else {
            logger.error("power \(action.rawValue): \(name): pid(s) \(remaining) still alive after SIGKILL; \(notes.joined(separator: "; "))")
            throw BMCError(.failed, "process(es) \(remaining) of \(name) did not end after SIGKILL")
        }
        state = .off
        logger.info("power \(action.rawValue): \(name) is Off; \(notes.joined(separator: "; "))")
    }

    private func stopAgentGracefully(reason: String) async {
        guard let child = agent, child.isRunning else {
            logger.info("\(reason): \(name) has no running agent to stop")
            return
        }
        let status = await child.stop(grace: gracePeriod)
        logger.info("\(reason): agent pid \(child.pid) of \(name) stopped (SIGTERM), exit status \(status.map(String.init) ?? "unknown"); QEMU processes left running")
        agent = nil
    }
}

extension ChildProcess {
    /// `waitForExit`, but not cut short by cancellation of the calling task.
    fileprivate func waitForExitUncancellable(timeout: Duration) async -> Int32? {
        await Task.detached { await self.waitForExit(timeout: timeout) }.value
    }

    /// `terminate` (SIGTERM, SIGKILL after `grace`), returning the exit status.
    fileprivate func stop(grace: Duration) async -> Int32? {
        await terminate(grace: grace)
        return await waitForExitUncancellable(timeout: .zero)
    }
}
