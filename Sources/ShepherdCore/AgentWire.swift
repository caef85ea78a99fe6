/// The manager↔agent wire format (JSON over HTTP, bearer-authenticated both ways).
public enum AgentWire {
    /// What a host needs to run a VM: the whole definition travels, so the agent can adopt the
    /// VM after its own restart without asking the manager.
    public struct VMDefinition: Codable, Sendable, Equatable {
        public var id: String
        public var name: String
        public var cpus: Int
        public var memoryMiB: Int
        public var kernel: String
        public var initrd: String
        public var cmdline: String
        /// The VM's own root disk (qcow2).
        public var disk: String
        /// The template disk the root disk is copied from when it does not exist yet.
        public var sourceDisk: String?

        public init(id: String, name: String, cpus: Int, memoryMiB: Int, kernel: String, initrd: String,
                    cmdline: String, disk: String, sourceDisk: String?) {
            self.id = id; self.name = name; self.cpus = cpus; self.memoryMiB = memoryMiB
            self.kernel = kernel; self.initrd = initrd; self.cmdline = cmdline
            self.disk = disk; self.sourceDisk = sourceDisk
        }
    }

    /// What the agent sees of a VM's QEMU process.
    public enum GuestPower: String, Codable, Sendable, CaseIterable {
        /// QEMU runs the guest.
        case running
        /// QEMU is up with the guest paused.
        case paused
        /// The guest powered itself off and QEMU waits to be told to quit.
        case shutdown
        /// No QEMU process, and it ended cleanly.
        case stopped
        /// The QEMU process died without being asked to.
        case crashed
    }

    public struct GuestStatus: Codable, Sendable, Equatable {
        public var vmId: String
        public var power: GuestPower
        public var toolsRunning: Bool
        public var pid: Int32?
        public var reason: String?
        public init(vmId: String, power: GuestPower, toolsRunning: Bool, pid: Int32? = nil, reason: String? = nil) {
            self.vmId = vmId; self.power = power; self.toolsRunning = toolsRunning; self.pid = pid; self.reason = reason
        }
    }

    public struct PowerRequest: Codable, Sendable {
        public var force: Bool
        public init(force: Bool) { self.force = force }
    }

    public struct ExecRequest: Codable, Sendable {
        public var command: [String]
        public var timeoutSeconds: Int
        public init(command: [String], timeoutSeconds: Int) { self.command = command; self.timeoutSeconds = timeoutSeconds }
    }

    public struct ExecResult: Codable, Sendable, Equatable {
        public var exitCode: Int
        public var stdout: String
        public var stderr: String
        public init(exitCode: Int, stdout: String, stderr: String) { self.exitCode = exitCode; self.stdout = stdout; self.stderr = stderr }
    }
}
