import ShepherdCore

/// A cluster as DRS, DPM, HA admission and restart planning see it: plain values, no I/O.
/// Hosts and VMs are addressed by their index in `hosts` / `vms`, so the simulator can run the
/// same functions over 800 hosts and 1,000 VMs every 5 minutes without hashing names.
public struct ClusterSnapshot: Sendable, Equatable {
    public var hosts: [SnapshotHost]
    public var vms: [SnapshotVM]
    public var rules: [PlacementRule]
    /// Memory overcommit: the sum of VM memory on a host may reach `memoryMiB × ratio`
    /// (1.0 when overcommit is off). Reservations never exceed the host's memory.
    public var memoryOvercommitRatio: Double

    public init(hosts: [SnapshotHost], vms: [SnapshotVM], rules: [PlacementRule] = [], memoryOvercommitRatio: Double = 1.0) {
        self.hosts = hosts; self.vms = vms; self.rules = rules; self.memoryOvercommitRatio = memoryOvercommitRatio
    }

    /// Indices of the VMs placed on a host.
    public func vms(on host: Int) -> [Int] { vms.indices.filter { vms[$0].host == host } }

    /// CPU the VMs on a host ask for (MHz), and memory they are given (MiB).
    public func cpuDemand(on host: Int) -> Double {
        vms.reduce(0) { $1.host == host ? $0 + $1.cpuDemandMHz : $0 }
    }
    public func memoryAllocated(on host: Int) -> Int {
        vms.reduce(0) { $1.host == host ? $0 + $1.memoryMiB : $0 }
    }
    public func memoryReserved(on host: Int) -> Int {
        vms.reduce(0) { $1.host == host ? $0 + $1.memoryReservationMiB : $0 }
    }
}

public enum SnapshotHostPower: String, Sendable, Equatable {
    /// Running and able to take VMs (unless in maintenance or disconnected).
    case on
    /// Powered off by DPM: not lost, HA does not fence it, placement may wake it.
    case standby
    /// Powered off by an operator or failed.
    case off
}

public struct SnapshotHost: Sendable, Equatable {
    public var name: String
    public var state: HostState
    public var power: SnapshotHostPower
    /// CPU capacity in MHz (cores × per-core MHz).
    public var cpuCapacityMHz: Double
    public var cores: Int
    public var memoryMiB: Int
    /// The QEMU CPU model the host offers (nil: any).
    public var cpuModel: String?

    public init(name: String, state: HostState = .connected, power: SnapshotHostPower = .on,
                cpuCapacityMHz: Double, cores: Int, memoryMiB: Int, cpuModel: String? = nil) {
        self.name = name; self.state = state; self.power = power; self.cpuCapacityMHz = cpuCapacityMHz
        self.cores = cores; self.memoryMiB = memoryMiB; self.cpuModel = cpuModel
    }

    /// Connected, powered on and not in maintenance: it may run VMs and take new ones.
    public var isUsable: Bool { state == .connected && power == .on }
}

public enum HAPriority: Int, Sendable, Equatable, Comparable, CaseIterable {
    case low = 1, medium = 2, high = 3
    public static func < (a: HAPriority, b: HAPriority) -> Bool { a.rawValue < b.rawValue }
}

public struct SnapshotVM: Sendable, Equatable {
    public var name: String
    /// The host it runs on (index into `hosts`), nil when powered off.
    public var host: Int?
    public var vcpus: Int
    /// CPU the VM uses now (MHz).
    public var cpuDemandMHz: Double
    /// CPU a VM may reach: vcpus × the host's per-core speed, or a limit.
    public var cpuMaxMHz: Double
    public var memoryMiB: Int
    /// Memory guaranteed to the VM; with overcommit off it equals memoryMiB.
    public var memoryReservationMiB: Int
    /// Memory the guest really touches (balloon statistics); what a migration must copy.
    public var memoryActiveMiB: Int
    /// DRS leaves it where it is (per-VM exclusion).
    public var drsExcluded: Bool
    /// Restarted by HA when its host fails (nil: not protected).
    public var haPriority: HAPriority?
    /// The CPU model it needs (nil: any host).
    public var cpuModel: String?

    public init(name: String, host: Int?, vcpus: Int = 1, cpuDemandMHz: Double, cpuMaxMHz: Double? = nil,
                memoryMiB: Int, memoryReservationMiB: Int? = nil, memoryActiveMiB: Int? = nil,
                drsExcluded: Bool = false, haPriority: HAPriority? = nil, cpuModel: String? = nil) {
        self.name = name; self.host = host; self.vcpus = vcpus; self.cpuDemandMHz = cpuDemandMHz
        self.cpuMaxMHz = cpuMaxMHz ?? cpuDemandMHz; self.memoryMiB = memoryMiB
        self.memoryReservationMiB = memoryReservationMiB ?? memoryMiB
        self.memoryActiveMiB = memoryActiveMiB ?? memoryMiB
        self.drsExcluded = drsExcluded; self.haPriority = haPriority; self.cpuModel = cpuModel
    }
}

/// Affinity rules (FusionCompute: 聚集/互斥/VM–host rules; vSphere: DRS rules).
public enum PlacementRule: Sendable, Equatable {
    /// These VMs run on one host.
    case keepTogether(name: String, vms: [Int])
    /// No two of these VMs share a host.
    case keepApart(name: String, vms: [Int])
    /// These VMs run only on (must) / preferably on (should) these hosts.
    case vmToHosts(name: String, vms: [Int], hosts: Set<Int>, mandatory: Bool)
    /// These VMs never run on these hosts.
    case vmAwayFromHosts(name: String, vms: [Int], hosts: Set<Int>)

    public var name: String {
        switch self {
        case .keepTogether(let name, _), .keepApart(let name, _), .vmToHosts(let name, _, _, _),
             .vmAwayFromHosts(let name, _, _): name
        }
    }
}
