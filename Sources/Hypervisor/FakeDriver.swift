import Foundation
import ShepherdCore

/// An in-memory hypervisor for tests of manager logic (placement, validation, tasks, restarts).
/// It never stands in for a data-plane test. Guests "boot" instantly and their tools answer;
/// `exec` answers `echo` with its arguments and everything else with exit code 127.
public actor FakeDriver: HypervisorDriver {
    public nonisolated let accelerator = "fake"
    private var definitions: [String: AgentWire.VMDefinition] = [:]
    private var running: Set<String> = []
    private var crashed: Set<String> = []
    private var migrated: Set<String> = []
    private var nextPid: Int32 = 40_000

    public init() {}

    public func define(_ definition: AgentWire.VMDefinition) async throws -> AgentWire.GuestStatus {
        definitions[definition.id] = definition
        return try status(definition.id)
    }

    public func start(_ vm: String) async throws -> AgentWire.GuestStatus {
        _ = try known(vm)
        guard !running.contains(vm) else { throw ShepherdError(.illegalState, "VM \(vm) already runs here") }
        running.insert(vm)
        crashed.remove(vm)
        nextPid += 1
        return try status(vm)
    }

    public func stop(_ vm: String, force: Bool) async throws -> AgentWire.GuestStatus {
        _ = try known(vm)
        running.remove(vm)
        return try status(vm)
    }

    public func reboot(_ vm: String, force: Bool) async throws -> AgentWire.GuestStatus { try status(vm) }

    public func status(_ vm: String) throws -> AgentWire.GuestStatus {
        _ = try known(vm)
        if crashed.contains(vm) { return AgentWire.GuestStatus(vmId: vm, power: .crashed, toolsRunning: false, reason: "fake crash") }
        let on = running.contains(vm)
        return AgentWire.GuestStatus(vmId: vm, power: on ? .running : .stopped, toolsRunning: on, pid: on ? nextPid : nil)
    }

    public func statuses() async -> [AgentWire.GuestStatus] {
        definitions.keys.sorted().compactMap { try? status($0) }
    }

    public func delete(_ vm: String) async throws {
        definitions[vm] = nil
        running.remove(vm)
        crashed.remove(vm)
    }

    public func exec(_ vm: String, command: [String], timeoutSeconds: Int) async throws -> AgentWire.ExecResult {
        guard running.contains(vm) else { throw ShepherdError(.illegalState, "VM \(vm) does not run here") }
        if command.first == "echo" { return AgentWire.ExecResult(exitCode: 0, stdout: command.dropFirst().joined(separator: " ") + "\n", stderr: "") }
        return AgentWire.ExecResult(exitCode: 127, stdout: "", stderr: "\(command.first ?? ""): not found\n")
    }

    public func prepareIncoming(_ request: AgentWire.IncomingRequest) async throws -> AgentWire.IncomingAnswer {
        definitions[request.definition.id] = request.definition
        running.insert(request.definition.id)
        return AgentWire.IncomingAnswer(uri: "tcp:\(request.address):1", pid: nextPid)
    }

    /// Fake migrations complete at once.
    public func migrate(_ vm: String, _ request: AgentWire.MigrateRequest) async throws {
        guard running.contains(vm) else { throw ShepherdError(.illegalState, "VM \(vm) does not run here") }
        migrated.insert(vm)
    }

    public func migrationProgress(_ vm: String) async throws -> AgentWire.MigrationProgress {
        AgentWire.MigrationProgress(status: migrated.contains(vm) ? "completed" : "none", totalTimeMs: 1, downtimeMs: 1, expectedDowntimeMs: 0,
                                    transferredBytes: 0, remainingBytes: 0, totalBytes: 0, dirtyBytesPerSecond: 0,
                                    bandwidthBytesPerSecond: 0, passes: 1, duplicatePages: 0, error: nil)
    }

    public func startPostcopy(_ vm: String) async throws {}
    public func cancelMigration(_ vm: String) async throws { migrated.remove(vm) }
    public func syncGuestClock(_ vm: String) async throws {}

    public func release(_ vm: String) async throws {
        definitions[vm] = nil
        running.remove(vm)
        migrated.remove(vm)
    }

    /// Makes a running guest "crash", as a killed QEMU would.
    public func crash(_ vm: String) {
        running.remove(vm)
        crashed.insert(vm)
    }

    private func known(_ vm: String) throws -> AgentWire.VMDefinition {
        guard let definition = definitions[vm] else { throw ShepherdError.notFound("VM", vm) }
        return definition
    }
}
