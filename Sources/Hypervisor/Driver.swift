import ShepherdCore

/// What a host's hypervisor does for the agent. The QEMU driver runs real guests; the fake
/// driver serves tests of manager logic only.
public protocol HypervisorDriver: Sendable {
    /// "kvm" or "tcg" (the fake driver says "fake").
    var accelerator: String { get }
    /// Records the VM and creates its disk from the source when the disk does not exist yet.
    func define(_ definition: AgentWire.VMDefinition) async throws -> AgentWire.GuestStatus
    func start(_ vm: String) async throws -> AgentWire.GuestStatus
    /// Graceful through the tools, ACPI otherwise; `force` cuts power.
    func stop(_ vm: String, force: Bool) async throws -> AgentWire.GuestStatus
    /// Graceful through the tools; `force` resets.
    func reboot(_ vm: String, force: Bool) async throws -> AgentWire.GuestStatus
    func status(_ vm: String) async throws -> AgentWire.GuestStatus
    /// Every VM this host knows, including the QEMU processes found running at start.
    func statuses() async -> [AgentWire.GuestStatus]
    /// Cuts power when needed and removes the VM's files.
    func delete(_ vm: String) async throws
    func exec(_ vm: String, command: [String], timeoutSeconds: Int) async throws -> AgentWire.ExecResult
}
