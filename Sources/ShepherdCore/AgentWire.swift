/// The manager↔agent wire format (JSON over HTTP, bearer-authenticated both ways).
public enum AgentWire {
    /// What a host needs to run a VM: the whole definition travels, so the agent can adopt the
    /// VM after its own restart without asking the manager.
    public struct VMDefinition: Codable, Sendable, Equatable {
        /// The root disk and every data disk.
        public var diskPaths: [String] { [disk] + disks.map(\.path) }
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
        /// A named QEMU CPU model (IMC baseline or the host's); nil runs the host's own CPU.
        public var cpuModel: String?
        /// Data disks in the order the guest sees them (vdb, vdc, …).
        public var disks: [DiskDefinition]
        /// The root disk is made as a differencing disk over `sourceDisk` (a linked clone) rather than a copy.
        public var linkedClone: Bool
        /// CPU and memory QoS, applied through the VM's cgroup and balloon at start and whenever
        /// the definition changes while it runs. nil (a definition saved before QoS): none.
        public var qos: VMQoS?
        /// Its swap disk, used as host swap while it runs on this host (memory overcommit on).
        public var swap: SwapFile?
        /// QEMU's `-smp maxcpus` and `-m`; nil: `cpus` and `memoryMiB` (no room to grow online).
        public var maxCpus: Int?
        public var maxMemoryMiB: Int?
        /// vCPUs QEMU boots with; the rest of `cpus` are hot-plugged CPU devices (a migration
        /// target must start with the same). nil: all of `cpus`.
        public var bootCpus: Int?
        /// NICs, each on a port of its DVS's bridge.
        public var nics: [NICDefinition] = []

        public init(id: String, name: String, cpus: Int, memoryMiB: Int, kernel: String, initrd: String,
                    cmdline: String, disk: String, sourceDisk: String?, cpuModel: String? = nil, disks: [DiskDefinition] = [],
                    linkedClone: Bool = false, qos: VMQoS? = nil, swap: SwapFile? = nil) {
            self.cpuModel = cpuModel
            self.qos = qos
            self.swap = swap
            self.disks = disks
            self.linkedClone = linkedClone
            self.id = id; self.name = name; self.cpus = cpus; self.memoryMiB = memoryMiB
            self.kernel = kernel; self.initrd = initrd; self.cmdline = cmdline
            self.disk = disk; self.sourceDisk = sourceDisk
        }

        private enum CodingKeys: String, CodingKey { case id, name, cpus, memoryMiB, kernel, initrd, cmdline, disk, sourceDisk, cpuModel, disks, linkedClone, qos, swap, maxCpus, maxMemoryMiB, bootCpus, nics }

        /// A definition saved before data disks existed has none.
        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            self.init(id: try c.decode(String.self, forKey: .id), name: try c.decode(String.self, forKey: .name),
                      cpus: try c.decode(Int.self, forKey: .cpus), memoryMiB: try c.decode(Int.self, forKey: .memoryMiB),
                      kernel: try c.decode(String.self, forKey: .kernel), initrd: try c.decode(String.self, forKey: .initrd),
                      cmdline: try c.decode(String.self, forKey: .cmdline), disk: try c.decode(String.self, forKey: .disk),
                      sourceDisk: try c.decodeIfPresent(String.self, forKey: .sourceDisk),
                      cpuModel: try c.decodeIfPresent(String.self, forKey: .cpuModel),
                      disks: try c.decodeIfPresent([DiskDefinition].self, forKey: .disks) ?? [],
                      linkedClone: try c.decodeIfPresent(Bool.self, forKey: .linkedClone) ?? false,
                      qos: try c.decodeIfPresent(VMQoS.self, forKey: .qos), swap: try c.decodeIfPresent(SwapFile.self, forKey: .swap))
            maxCpus = try c.decodeIfPresent(Int.self, forKey: .maxCpus)
            maxMemoryMiB = try c.decodeIfPresent(Int.self, forKey: .maxMemoryMiB)
            bootCpus = try c.decodeIfPresent(Int.self, forKey: .bootCpus)
            nics = try c.decodeIfPresent([NICDefinition].self, forKey: .nics) ?? []
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

    /// A host's storage lease on a shared datastore, as a peer reads it.
    public struct Lease: Codable, Sendable, Equatable {
        public var hostId: String
        public var host: String
        public var datastore: String
        /// When the holder last renewed it (Unix seconds).
        public var renewedAt: Double
        /// Seconds since then, as the reader saw it.
        public var ageSeconds: Double
        /// Set while the holder is isolated and its isolation response has ended every VM it ran:
        /// with this, a fresh lease still proves the VMs can restart elsewhere.
        public var isolatedVMsStopped: Bool?
        public init(hostId: String, host: String, datastore: String, renewedAt: Double, ageSeconds: Double, isolatedVMsStopped: Bool? = nil) {
            self.hostId = hostId; self.host = host; self.datastore = datastore; self.renewedAt = renewedAt; self.ageSeconds = ageSeconds
            self.isolatedVMsStopped = isolatedVMsStopped
        }
    }

    public struct GuestStatus: Codable, Sendable, Equatable {
        public var vmId: String
        public var power: GuestPower
        public var toolsRunning: Bool
        public var pid: Int32?
        public var reason: String?
        /// CPU time the VM's QEMU process has used (s); DRS turns its growth into load.
        public var cpuSeconds: Double?
        /// Memory the guest has now (its memory less the balloon), and what it counts as
        /// available of it (balloon statistics): the balloon controller's inputs.
        public var balloonMiB: Int?
        public var guestAvailableMiB: Int?
        public init(vmId: String, power: GuestPower, toolsRunning: Bool, pid: Int32? = nil, reason: String? = nil,
                    cpuSeconds: Double? = nil, balloonMiB: Int? = nil, guestAvailableMiB: Int? = nil) {
            self.vmId = vmId; self.power = power; self.toolsRunning = toolsRunning; self.pid = pid; self.reason = reason
            self.cpuSeconds = cpuSeconds; self.balloonMiB = balloonMiB; self.guestAvailableMiB = guestAvailableMiB
        }
    }

    /// A running VM's new size (vCPUs hot-added, memory through the balloon).
    public struct ResizeRequest: Codable, Sendable {
        public var cpus: Int
        public var memoryMiB: Int
        public init(cpus: Int, memoryMiB: Int) { self.cpus = cpus; self.memoryMiB = memoryMiB }
    }

    /// What the guest sees after a resize.
    public struct ResizeAnswer: Codable, Sendable {
        /// vCPUs the guest has online (nil: its tools did not say).
        public var onlineCpus: Int?
        public init(onlineCpus: Int?) { self.onlineCpus = onlineCpus }
    }

    /// A VM's swap disk on one host.
    public struct SwapFile: Codable, Sendable, Equatable {
        public var path: String
        public var sizeBytes: Int64
        public init(path: String, sizeBytes: Int64) { self.path = path; self.sizeBytes = sizeBytes }
    }

    /// The memory a running guest is to have (the balloon controller's target).
    public struct BalloonRequest: Codable, Sendable {
        public var targetMiB: Int
        public init(targetMiB: Int) { self.targetMiB = targetMiB }
    }

    /// A hibernation file: where a running guest's state goes, or what a start resumes from.
    public struct StateFileRequest: Codable, Sendable {
        public var file: String
        public init(file: String) { self.file = file }
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

extension AgentWire {
    /// Target side: start the VM's QEMU waiting for an incoming migration.
    public struct IncomingRequest: Codable, Sendable {
        public var definition: VMDefinition
        /// The target's migration address (its host address, never loopback between hosts).
        public var address: String
        public var postcopy: Bool
        /// Whole-VM migration: empty images to create (the definition's paths on the target's
        /// datastore) and export writable over NBD, so the source can mirror its disks into them.
        /// The target QEMU then stays paused after the memory arrives until told to resume.
        public var storage: [IncomingDisk]?
        public init(definition: VMDefinition, address: String, postcopy: Bool, storage: [IncomingDisk]? = nil) {
            self.definition = definition; self.address = address; self.postcopy = postcopy; self.storage = storage
        }
    }

    public struct IncomingDisk: Codable, Sendable, Equatable {
        public var path: String
        public var sizeBytes: Int64
        public var export: String
        public init(path: String, sizeBytes: Int64, export: String) { self.path = path; self.sizeBytes = sizeBytes; self.export = export }
    }

    /// Where the target listens.
    public struct IncomingAnswer: Codable, Sendable {
        public var uri: String
        public var pid: Int32?
        /// Whole-VM migration: the NBD server the disks are exported on ("host:port").
        public var nbd: String?
        public init(uri: String, pid: Int32?, nbd: String? = nil) { self.uri = uri; self.pid = pid; self.nbd = nbd }
    }

    /// Source side of a whole-VM migration: mirror the disk QEMU writes (`source`) into an NBD export.
    public struct NBDMirrorRequest: Codable, Sendable {
        public var source: String
        /// "host:port" of the target's NBD server.
        public var server: String
        public var export: String
        public init(source: String, server: String, export: String) { self.source = source; self.server = server; self.export = export }
    }

    /// Source side: send the VM to `uri` with these settings.
    public struct MigrateRequest: Codable, Sendable {
        public var uri: String
        public var downtimeLimitMs: Int
        /// Bytes per second; 0 leaves QEMU's default cap (128 MiB/s in QEMU 7.2).
        public var maxBandwidthBytes: Int64
        public var postcopy: Bool
        public var xbzrle: Bool
        public var autoConverge: Bool
        public init(uri: String, downtimeLimitMs: Int, maxBandwidthBytes: Int64, postcopy: Bool, xbzrle: Bool, autoConverge: Bool) {
            self.uri = uri; self.downtimeLimitMs = downtimeLimitMs; self.maxBandwidthBytes = maxBandwidthBytes
            self.postcopy = postcopy; self.xbzrle = xbzrle; self.autoConverge = autoConverge
        }
    }

    /// QEMU's view of a migration (query-migrate), in plain units.
    public struct MigrationProgress: Codable, Sendable, Equatable {
        /// setup, active, postcopy-active, completed, failed, cancelled, …
        public var status: String
        public var totalTimeMs: Int
        public var downtimeMs: Int?
        public var expectedDowntimeMs: Int
        public var transferredBytes: Int64
        public var remainingBytes: Int64
        public var totalBytes: Int64
        public var dirtyBytesPerSecond: Int64
        public var bandwidthBytesPerSecond: Int64
        public var passes: Int
        public var duplicatePages: Int64
        /// The zero pages found so far, in bytes (sent as a marker, not as data).
        public var zeroBytes: Int64?
        /// How hard auto-converge throttles the guest's vCPUs now (0–99; nil when it does not).
        public var cpuThrottlePercent: Int?
        public var error: String?
        public init(status: String, totalTimeMs: Int, downtimeMs: Int?, expectedDowntimeMs: Int, transferredBytes: Int64,
                    remainingBytes: Int64, totalBytes: Int64, dirtyBytesPerSecond: Int64, bandwidthBytesPerSecond: Int64,
                    passes: Int, duplicatePages: Int64, zeroBytes: Int64? = nil, cpuThrottlePercent: Int? = nil, error: String?) {
            self.status = status; self.totalTimeMs = totalTimeMs; self.downtimeMs = downtimeMs; self.expectedDowntimeMs = expectedDowntimeMs
            self.transferredBytes = transferredBytes; self.remainingBytes = remainingBytes; self.totalBytes = totalBytes
            self.dirtyBytesPerSecond = dirtyBytesPerSecond; self.bandwidthBytesPerSecond = bandwidthBytesPerSecond
            self.passes = passes; self.duplicatePages = duplicatePages; self.zeroBytes = zeroBytes
            self.cpuThrottlePercent = cpuThrottlePercent; self.error = error
        }
    }

    /// Can this host reach `address:port` (TCP connect)?
    public struct ProbeRequest: Codable, Sendable {
        public var address: String
        public var port: Int
        public init(address: String, port: Int) { self.address = address; self.port = port }
    }

    public struct ProbeAnswer: Codable, Sendable {
        public var reachable: Bool
        public var detail: String
        public init(reachable: Bool, detail: String) { self.reachable = reachable; self.detail = detail }
    }
}

extension AgentWire {
    /// The answer of an agent call that has nothing else to say.
    public struct Done: Codable, Sendable {
        public var done: Bool
        public init() { done = true }
    }
}

extension AgentWire {
    /// Mount a datastore on a host (a directory: local, or one every host sees: shared).
    public struct DatastoreMountRequest: Codable, Sendable, Equatable {
        public var name: String
        public var kind: String
        public var path: String
        public init(name: String, kind: String, path: String) { self.name = name; self.kind = kind; self.path = path }
    }

    /// A datastore's size as its host's file system reports it.
    public struct DatastoreSpace: Codable, Sendable, Equatable {
        public var capacityBytes: Int64
        public var freeBytes: Int64
        public init(capacityBytes: Int64, freeBytes: Int64) { self.capacityBytes = capacityBytes; self.freeBytes = freeBytes }
    }
}
