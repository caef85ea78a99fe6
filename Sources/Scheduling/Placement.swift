import ShepherdCore

/// A host as placement sees it: a snapshot, no I/O.
public struct HostCandidate: Sendable, Equatable {
    public var id: String
    public var name: String
    public var state: HostState
    public var cores: Int
    public var memoryTotalMiB: Int
    /// Memory of the VMs that run (or are starting) on the host.
    public var memoryAllocatedMiB: Int
    /// Their memory reservations: never more than the host's real memory.
    public var memoryReservedMiB: Int
    /// Their CPU reservations: never more than cores × 1000 MHz.
    public var cpuReservedMHz: Int
    /// The cluster's memory overcommit switch and ratio: VM memory may add up to the host's ×
    /// the ratio (1 while off).
    public var memoryOvercommit: Bool
    public var overcommitRatio: Double
    /// Names of the datastores the host sees.
    public var datastores: Set<String>

    public init(id: String, name: String, state: HostState, cores: Int, memoryTotalMiB: Int,
                memoryAllocatedMiB: Int, memoryReservedMiB: Int? = nil, cpuReservedMHz: Int = 0, memoryOvercommit: Bool = false,
                overcommitRatio: Double = 1, datastores: Set<String>) {
        self.id = id; self.name = name; self.state = state; self.cores = cores
        self.memoryTotalMiB = memoryTotalMiB; self.memoryAllocatedMiB = memoryAllocatedMiB
        self.memoryReservedMiB = memoryReservedMiB ?? memoryAllocatedMiB; self.cpuReservedMHz = cpuReservedMHz
        self.memoryOvercommit = memoryOvercommit; self.overcommitRatio = memoryOvercommit ? overcommitRatio : 1
        self.datastores = datastores
    }

    /// Memory VMs may still be given: within the overcommit ratio of what the host keeps for VMs.
    public func freeMiB(hostReserveMiB: Int) -> Int {
        max(0, Int((Double(memoryTotalMiB - hostReserveMiB) * overcommitRatio).rounded(.down)) - memoryAllocatedMiB)
    }

    /// Real memory not yet reserved by a VM.
    public func unreservedMiB(hostReserveMiB: Int) -> Int {
        max(0, memoryTotalMiB - hostReserveMiB - memoryReservedMiB)
    }

    /// CPU not yet reserved by a VM (cores × 1000 MHz).
    public var unreservedMHz: Int { max(0, cores * 1000 - cpuReservedMHz) }
}

/// What a VM asks of a host.
public struct PlacementRequest: Sendable, Equatable {
    public var cpus: Int
    public var memoryMiB: Int
    /// Memory that must be real (the VM's reservation); nil for a new VM, which reserves what
    /// its host's cluster gives by default (all of it without overcommit, nothing with it).
    public var memoryReservationMiB: Int?
    public var cpuReservationMHz: Int
    /// The datastore that holds the VM's disk; the host must see it.
    public var datastore: String?
    public init(cpus: Int, memoryMiB: Int, memoryReservationMiB: Int? = nil, cpuReservationMHz: Int = 0, datastore: String?) {
        self.cpus = cpus; self.memoryMiB = memoryMiB; self.memoryReservationMiB = memoryReservationMiB
        self.cpuReservationMHz = cpuReservationMHz; self.datastore = datastore
    }

    /// The memory this VM reserves on `host`.
    public func reservationMiB(on host: HostCandidate) -> Int {
        memoryReservationMiB ?? VMQoS.defaults(memoryMiB: memoryMiB, overcommit: host.memoryOvercommit).memoryReservationMiB
    }
}

/// Why one host was passed over.
public enum HostRejection: Sendable, Equatable, CustomStringConvertible {
    case notConnected(HostState)
    case inMaintenance
    case tooFewCores(asked: Int, has: Int)
    case tooLittleMemory(askedMiB: Int, freeMiB: Int)
    case memoryReservations(askedMiB: Int, unreservedMiB: Int)
    case cpuReservations(askedMHz: Int, unreservedMHz: Int)
    case datastoreNotVisible(String)

    public var description: String {
        switch self {
        case .notConnected(let state): "not connected (\(state.rawValue))"
        case .inMaintenance: "in maintenance mode"
        case .tooFewCores(let asked, let has): "asked \(asked) vCPUs; it has \(has) cores"
        case .tooLittleMemory(let asked, let free): "asked \(asked) MiB; \(free) MiB free"
        case .memoryReservations(let asked, let unreserved):
            "reservations may not exceed real memory: asked to reserve \(asked) MiB; \(unreserved) MiB unreserved"
        case .cpuReservations(let asked, let unreserved):
            "CPU reservations may not exceed its cores: asked to reserve \(asked) MHz; \(unreserved) MHz unreserved"
        case .datastoreNotVisible(let name): "does not see datastore '\(name)'"
        }
    }
}

/// Filters then weighs, as Nova's scheduler does: filters drop hosts that cannot take the VM,
/// the weigher prefers the host with the most free memory (ties: fewer VMs' memory, then name).
public struct Placement: Sendable {
    /// Memory a host keeps for itself and its agent, never given to VMs.
    public var hostReserveMiB: Int

    public init(hostReserveMiB: Int = 512) { self.hostReserveMiB = hostReserveMiB }

    /// Why this host cannot take the VM, or nil when it can.
    public func rejection(of host: HostCandidate, for request: PlacementRequest) -> HostRejection? {
        switch host.state {
        case .maintenance: return .inMaintenance
        case .disconnected, .standby: return .notConnected(host.state)
        case .connected: break
        }
        if let datastore = request.datastore, !host.datastores.contains(datastore) {
            return .datastoreNotVisible(datastore)
        }
        if request.cpus > host.cores { return .tooFewCores(asked: request.cpus, has: host.cores) }
        let free = host.freeMiB(hostReserveMiB: hostReserveMiB)
        if request.memoryMiB > free { return .tooLittleMemory(askedMiB: request.memoryMiB, freeMiB: free) }
        let unreserved = host.unreservedMiB(hostReserveMiB: hostReserveMiB)
        let reservation = request.reservationMiB(on: host)
        if reservation > unreserved {
            return .memoryReservations(askedMiB: reservation, unreservedMiB: unreserved)
        }
        if request.cpuReservationMHz > host.unreservedMHz {
            return .cpuReservations(askedMHz: request.cpuReservationMHz, unreservedMHz: host.unreservedMHz)
        }
        return nil
    }

    /// The chosen host, or a refusal whose message carries the numbers
    /// ("asked 4096 MiB; largest free 1900 MiB on host-2").
    public func place(_ request: PlacementRequest, on hosts: [HostCandidate]) -> Result<HostCandidate, ShepherdError> {
        let fitting = hosts.filter { rejection(of: $0, for: request) == nil }
        if let best = fitting.min(by: isBetter) { return .success(best) }
        return .failure(refusal(request, hosts: hosts))
    }

    /// Admission check for one given host (`--host`, or power-on where the VM lives).
    public func admit(_ request: PlacementRequest, on host: HostCandidate, vm: String) -> ShepherdError? {
        guard let why = rejection(of: host, for: request) else { return nil }
        switch why {
        case .notConnected, .inMaintenance:
            return ShepherdError(.hostNotConnected, "host '\(host.name)' cannot take VM '\(vm)': it is \(why)")
        case .datastoreNotVisible:
            return ShepherdError(.invalidField, "host: '\(host.name)' \(why)")
        case .tooFewCores, .tooLittleMemory, .memoryReservations, .cpuReservations:
            return ShepherdError(.insufficientResources, "host '\(host.name)' cannot take VM '\(vm)': \(why) (host reserve \(hostReserveMiB) MiB)")
        }
    }

    /// Orders hosts best first: most free memory, then least allocated, then name.
    private func isBetter(_ a: HostCandidate, than b: HostCandidate) -> Bool {
        let freeA = a.freeMiB(hostReserveMiB: hostReserveMiB), freeB = b.freeMiB(hostReserveMiB: hostReserveMiB)
        if freeA != freeB { return freeA > freeB }
        if a.memoryAllocatedMiB != b.memoryAllocatedMiB { return a.memoryAllocatedMiB < b.memoryAllocatedMiB }
        return a.name < b.name
    }

    private func refusal(_ request: PlacementRequest, hosts: [HostCandidate]) -> ShepherdError {
        if hosts.isEmpty {
            return ShepherdError(.insufficientResources, "no host can take the VM: the cluster has no hosts")
        }
        let usable = hosts.filter { $0.state == .connected }
        if usable.isEmpty {
            return ShepherdError(.insufficientResources, "no host can take the VM: none of \(hosts.count) hosts is connected")
        }
        if let datastore = request.datastore, !usable.contains(where: { $0.datastores.contains(datastore) }) {
            return ShepherdError(.insufficientResources, "no connected host sees datastore '\(datastore)'")
        }
        let seeing = usable.filter { request.datastore == nil || $0.datastores.contains(request.datastore!) }
        if let maxCores = seeing.map(\.cores).max(), request.cpus > maxCores {
            return ShepherdError(.insufficientResources, "no host can take the VM: asked \(request.cpus) vCPUs; the most cores on a host is \(maxCores)")
        }
        let largest = seeing.max { $0.freeMiB(hostReserveMiB: hostReserveMiB) < $1.freeMiB(hostReserveMiB: hostReserveMiB) }!
        if request.memoryMiB > largest.freeMiB(hostReserveMiB: hostReserveMiB) {
            return ShepherdError(.insufficientResources,
                "no host can take the VM: asked \(request.memoryMiB) MiB; largest free \(largest.freeMiB(hostReserveMiB: hostReserveMiB)) MiB on \(largest.name)")
        }
        // Every host has the memory; reservations are what is short.
        let reasons = seeing.compactMap { host in rejection(of: host, for: request).map { "\(host.name): \($0)" } }
        return ShepherdError(.insufficientResources, "no host can take the VM: " + reasons.joined(separator: "; "))
    }
}
