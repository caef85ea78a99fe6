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
    /// The definition this host keeps for the VM (what it runs with).
    func definition(_ vm: String) async throws -> AgentWire.VMDefinition
    /// Every VM this host knows, including the QEMU processes found running at start.
    func statuses() async -> [AgentWire.GuestStatus]
    /// Cuts power when needed and removes the VM's files.
    func delete(_ vm: String) async throws
    func exec(_ vm: String, command: [String], timeoutSeconds: Int) async throws -> AgentWire.ExecResult

    // MARK: live migration primitives (the manager orchestrates them)

    /// Target: defines the VM and starts its QEMU waiting for the incoming migration.
    func prepareIncoming(_ request: AgentWire.IncomingRequest) async throws -> AgentWire.IncomingAnswer
    /// Source: sets capabilities and parameters, then starts sending to `request.uri`.
    func migrate(_ vm: String, _ request: AgentWire.MigrateRequest) async throws
    func migrationProgress(_ vm: String) async throws -> AgentWire.MigrationProgress
    func startPostcopy(_ vm: String) async throws
    func cancelMigration(_ vm: String) async throws
    /// Forgets the VM on this host without touching its disk: the source after a migration,
    /// the target after a failed one. Ends its QEMU if one runs.
    func release(_ vm: String) async throws
    /// Sets the guest's clock from the host's through the tools (after a switch-over).
    func syncGuestClock(_ vm: String) async throws

    // MARK: disks (image paths the manager gives, on this host's datastores)

    /// Creates an empty image with the type's allocation (thin, thick, thick-lazy).
    func createDisk(_ request: AgentWire.DiskCreateRequest) async throws -> AgentWire.DiskImage
    /// The image as it is now: virtual size and the bytes it really takes.
    func diskImage(path: String) async throws -> AgentWire.DiskImage
    func deleteDisk(path: String) async throws
    /// Grows an image no VM has open.
    func resizeDisk(path: String, sizeBytes: Int64) async throws -> AgentWire.DiskImage
    /// Adds a data disk to the VM's definition, hot-plugging it when the VM runs.
    func attachDisk(_ vm: String, _ disk: AgentWire.DiskDefinition) async throws
    /// Removes a data disk from the VM, hot-unplugging it (the guest releases it) when the VM runs.
    func detachDisk(_ vm: String, diskID: String) async throws
    /// Grows an attached disk, live when the VM runs.
    func resizeAttachedDisk(_ vm: String, diskID: String, sizeBytes: Int64) async throws

    // MARK: snapshots (external overlays)

    /// Freezes the layers' active images under new overlays (atomically for a running VM).
    func snapshot(_ vm: String, _ request: AgentWire.SnapshotRequest) async throws -> AgentWire.SnapshotAnswer
    /// Replaces active images by new overlays over a snapshot's images (VM off).
    func revert(_ vm: String, _ request: AgentWire.RevertRequest) async throws
    /// Pulls a deleted snapshot's image into an image above it (live when the VM has it open).
    func merge(_ vm: String, _ request: AgentWire.MergeRequest) async throws

    /// A new size; a running guest gets its new vCPUs hot-plugged and its memory through the balloon.
    func resize(_ vm: String, _ request: AgentWire.ResizeRequest) async throws -> AgentWire.ResizeAnswer
    /// Moves the VM's balloon so its guest has `targetMiB` (the balloon controller).
    func setBalloon(_ vm: String, targetMiB: Int) async throws

    // MARK: hibernation

    /// Saves the running guest's RAM and device state to `file` and ends QEMU.
    func hibernate(_ vm: String, to file: String) async throws
    /// Starts QEMU from a hibernation file (removed once the guest runs).
    func resumeHibernated(_ vm: String, from file: String) async throws -> AgentWire.GuestStatus

    // MARK: storage migration

    /// Starts copying a running VM's disk to a new image; writes land on both once it is ready.
    func startMirror(_ vm: String, _ request: AgentWire.MirrorRequest) async throws -> AgentWire.MirrorStatus
    func mirrorStatus(_ vm: String, job: String) async throws -> AgentWire.MirrorStatus
    /// Switches the guest to the mirror's target.
    func completeMirror(_ vm: String, job: String, _ request: AgentWire.MirrorRequest) async throws
    /// Stops the mirror; the guest stays on its source, the target is deleted.
    func cancelMirror(_ vm: String, job: String, _ request: AgentWire.MirrorRequest) async throws
    /// Copies an image no VM writes into a new one of the given type (cold migration).
    func convertDisk(_ request: AgentWire.ConvertRequest) async throws -> AgentWire.DiskImage

    // MARK: space reclamation

    /// Asks the guest to trim its file systems; with discard=unmap the images give the space back.
    func trim(_ vm: String) async throws -> AgentWire.TrimAnswer
    /// Rewrites an image no VM has open without its unused clusters.
    func compactDisk(path: String) async throws -> AgentWire.DiskImage

    // MARK: whole-VM migration

    /// Source: mirrors a running disk into the target's NBD export (write-blocking).
    func startNBDMirror(_ vm: String, _ request: AgentWire.NBDMirrorRequest) async throws -> AgentWire.MirrorStatus
    /// Source: ends an NBD mirror without switching (after the switch-over, or to give up).
    func endNBDMirror(_ vm: String, job: String) async throws
    /// Target: the disks are complete; stop the NBD server and run the guest.
    func resumeIncoming(_ vm: String) async throws

    // MARK: NICs

    /// Adds a NIC (or updates one of that id), hot-plugging it when the VM runs.
    func attachNIC(_ vm: String, _ nic: AgentWire.NICDefinition) async throws
    /// Removes a NIC, hot-unplugging it (the guest releases it) when the VM runs.
    func detachNIC(_ vm: String, nicID: String) async throws
}
