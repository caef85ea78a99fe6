/// One side of a live migration as the preflight sees it.
public struct MigrationHost: Sendable, Equatable {
    public var name: String
    public var cluster: String
    public var clusterMemoryOvercommit: Bool
    public var state: HostState
    public var cpuVendor: String
    public var cpuModel: String
    /// The QEMU CPU model this host provides its guests (agent --cpu-model), nil for its own CPU.
    public var providedModel: String?
    public var cores: Int
    /// Memory left for VMs (after the host reserve and the VMs already there), within the
    /// cluster's overcommit ratio.
    public var freeMiB: Int
    /// Real memory no VM has reserved yet; nil: as `freeMiB` (no overcommit).
    public var unreservedMiB: Int?
    /// CPU (cores × 1000 MHz) no VM has reserved yet; nil: not counted.
    public var unreservedMHz: Int?
    /// Datastores this host sees.
    public var datastores: Set<String>
    /// Distributed virtual switches this host is on.
    public var switches: Set<String> = []

    public init(name: String, cluster: String, clusterMemoryOvercommit: Bool, state: HostState, cpuVendor: String,
                cpuModel: String, providedModel: String? = nil, cores: Int, freeMiB: Int, unreservedMiB: Int? = nil,
                unreservedMHz: Int? = nil, datastores: Set<String>) {
        self.name = name; self.cluster = cluster; self.clusterMemoryOvercommit = clusterMemoryOvercommit; self.state = state
        self.cpuVendor = cpuVendor; self.cpuModel = cpuModel; self.providedModel = providedModel; self.cores = cores
        self.freeMiB = freeMiB; self.unreservedMiB = unreservedMiB; self.unreservedMHz = unreservedMHz; self.datastores = datastores
    }
}

/// Everything a host live migration depends on, as a snapshot.
public struct MigrationRequest: Sendable, Equatable {
    public var vm: String
    public var state: String
    public var toolsRunning: Bool
    public var cpus: Int
    public var memoryMiB: Int
    /// Its QoS reservations, which the target must hold in real memory and cores (nil: all its memory, no CPU).
    public var memoryReservationMiB: Int?
    public var cpuReservationMHz: Int
    /// Passthrough devices (GPU, USB, SR-IOV): a VM with any cannot move live.
    public var passthroughDevices: [String]
    /// The VM is pinned to its host by the operator.
    public var boundToHost: Bool
    public var datastore: String
    /// "shared" (virtualized, every host sees it) or "local"/"block".
    public var datastoreKind: String
    public var source: MigrationHost
    public var target: MigrationHost
    /// The cluster's IMC baseline (a QEMU CPU model every host supports), or nil when IMC is off.
    public var imcBaseline: String?
    /// The named CPU model the VM runs with (the baseline, or its host's model), nil for the host's own CPU.
    public var vmCPUModel: String?
    /// The distributed virtual switches of the VM's NICs (the target must be on each).
    public var switches: Set<String> = []

    public init(vm: String, state: String, toolsRunning: Bool, cpus: Int, memoryMiB: Int, passthroughDevices: [String] = [],
                boundToHost: Bool = false, datastore: String, datastoreKind: String, source: MigrationHost, target: MigrationHost,
                imcBaseline: String? = nil, vmCPUModel: String? = nil, memoryReservationMiB: Int? = nil, cpuReservationMHz: Int = 0) {
        self.vmCPUModel = vmCPUModel
        self.memoryReservationMiB = memoryReservationMiB; self.cpuReservationMHz = cpuReservationMHz
        self.vm = vm; self.state = state; self.toolsRunning = toolsRunning; self.cpus = cpus; self.memoryMiB = memoryMiB
        self.passthroughDevices = passthroughDevices; self.boundToHost = boundToHost; self.datastore = datastore
        self.datastoreKind = datastoreKind; self.source = source; self.target = target; self.imcBaseline = imcBaseline
    }
}

/// A failed preflight check: a stable code and a message with the numbers.
public struct MigrationRefusal: Sendable, Equatable, CustomStringConvertible {
    public enum Check: String, Sendable, CaseIterable, Codable {
        case vmNotRunning = "vm_not_running"
        case toolsNotRunning = "tools_not_running"
        case passthroughDevice = "passthrough_device"
        case boundToHost = "bound_to_host"
        case sameHost = "same_host"
        case targetNotConnected = "target_not_connected"
        case targetInMaintenance = "target_in_maintenance"
        case targetShortOfCPU = "target_short_of_cpu"
        case targetShortOfMemory = "target_short_of_memory"
        case cpuVendorMismatch = "cpu_vendor_mismatch"
        case cpuModelMismatch = "cpu_model_mismatch"
        case overcommitMismatch = "overcommit_mismatch"
        case storageNotShared = "storage_not_shared"
        case targetCannotSeeStorage = "target_cannot_see_storage"
        case networkUnreachable = "network_unreachable"
        case targetNotOnDVS = "target_not_on_dvs"
    }

    public let check: Check
    public let message: String

    public init(_ check: Check, _ message: String) {
        self.check = check
        self.message = message
    }

    public var description: String { "\(check.rawValue): \(message)" }
}

/// The seed's constraints on host live migration, all checked (not just the first that fails),
/// so `--dry-run` can list every reason at once. Pure; the reachability probe is done by the
/// manager for real and added as `networkUnreachable`.
public enum MigrationPreflight {
    public static func check(_ request: MigrationRequest) -> [MigrationRefusal] {
        var refusals: [MigrationRefusal] = []
        let vm = request.vm, source = request.source, target = request.target
        if request.state != "running" {
            refusals.append(.init(.vmNotRunning, "VM '\(vm)' is \(request.state); only a running VM migrates live (a stopped one can simply start elsewhere)"))
        }
        if request.state == "running" && !request.toolsRunning {
            refusals.append(.init(.toolsNotRunning, "the tools of '\(vm)' do not answer; live migration needs them (clock sync after the switch)"))
        }
        if !request.passthroughDevices.isEmpty {
            refusals.append(.init(.passthroughDevice, "'\(vm)' has passthrough devices (\(request.passthroughDevices.joined(separator: ", "))) that cannot move"))
        }
        if request.boundToHost {
            refusals.append(.init(.boundToHost, "'\(vm)' is bound to host '\(source.name)'"))
        }
        if source.name == target.name {
            refusals.append(.init(.sameHost, "'\(vm)' already runs on '\(target.name)'"))
        }
        switch target.state {
        case .connected: break
        case .maintenance: refusals.append(.init(.targetInMaintenance, "target '\(target.name)' is in maintenance mode"))
        case .disconnected: refusals.append(.init(.targetNotConnected, "target '\(target.name)' is disconnected"))
        case .standby: refusals.append(.init(.targetNotConnected, "target '\(target.name)' is in standby (powered off by DPM)"))
        }
        if request.cpus > target.cores {
            refusals.append(.init(.targetShortOfCPU, "'\(vm)' has \(request.cpus) vCPUs; target '\(target.name)' has \(target.cores) cores"))
        }
        if request.memoryMiB > target.freeMiB {
            refusals.append(.init(.targetShortOfMemory, "'\(vm)' needs \(request.memoryMiB) MiB; target '\(target.name)' has \(target.freeMiB) MiB free"))
        } else if let unreserved = target.unreservedMiB, (request.memoryReservationMiB ?? request.memoryMiB) > unreserved {
            refusals.append(.init(.targetShortOfMemory, "'\(vm)' reserves \(request.memoryReservationMiB ?? request.memoryMiB) MiB; target '\(target.name)' has \(unreserved) MiB of real memory unreserved (reservations may not exceed it)"))
        }
        if let unreserved = target.unreservedMHz, request.cpuReservationMHz > unreserved {
            refusals.append(.init(.targetShortOfCPU, "'\(vm)' reserves \(request.cpuReservationMHz) MHz; target '\(target.name)' has \(unreserved) MHz unreserved"))
        }
        if source.cpuVendor != target.cpuVendor {
            refusals.append(.init(.cpuVendorMismatch, "source '\(source.name)' is \(source.cpuVendor), target '\(target.name)' is \(target.cpuVendor); no CPU mode bridges vendors"))
        } else if let model = request.vmCPUModel {
            if !CPUModels.host(providing: target.providedModel, vendor: target.cpuVendor, canRun: model) {
                let hint = request.imcBaseline == nil ? "set the cluster's IMC baseline to a model every host provides and restart the VM"
                    : "the VM started before the cluster's IMC baseline \(request.imcBaseline!) was set: restart it to run with the baseline"
                refusals.append(.init(.cpuModelMismatch, "'\(vm)' runs with CPU model \(model); target '\(target.name)' provides up to \(target.providedModel ?? "?"); \(hint)"))
            }
        } else if source.cpuModel != target.cpuModel || source.providedModel != target.providedModel {
            refusals.append(.init(.cpuModelMismatch, "'\(vm)' runs with the host CPU of '\(source.name)' ('\(source.providedModel ?? source.cpuModel)'); target '\(target.name)' is '\(target.providedModel ?? target.cpuModel)', and the cluster's IMC is off"))
        }
        if source.cluster != target.cluster && source.clusterMemoryOvercommit != target.clusterMemoryOvercommit {
            refusals.append(.init(.overcommitMismatch, "cluster '\(source.cluster)' has memory overcommit \(source.clusterMemoryOvercommit ? "on" : "off"), cluster '\(target.cluster)' has it \(target.clusterMemoryOvercommit ? "on" : "off")"))
        }
        if request.datastoreKind != "shared" {
            refusals.append(.init(.storageNotShared, "the disk of '\(vm)' is on \(request.datastoreKind) datastore '\(request.datastore)'; host migration needs shared storage (move the storage too: whole-VM migration)"))
        } else if !target.datastores.contains(request.datastore) {
            refusals.append(.init(.targetCannotSeeStorage, "target '\(target.name)' does not see datastore '\(request.datastore)'"))
        }
        let missing = request.switches.subtracting(target.switches).sorted()
        if !missing.isEmpty {
            refusals.append(.init(.targetNotOnDVS, "'\(vm)' has NICs on DVS \(missing.map { "'\($0)'" }.joined(separator: ", ")); target '\(target.name)' is not on \(missing.count == 1 ? "it" : "them") (shepherd dvs add-host)"))
        }
        return refusals
    }
}
