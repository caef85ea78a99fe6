import Foundation

/// A VM's claim on its host's CPU and memory (the seed's 资源QoS; vSphere's reservation,
/// shares, limit): the reservation is guaranteed (admission never lets a host's reservations
/// exceed it), shares weigh VMs against each other only while the host is short, the limit is
/// a ceiling even when the host is idle. CPU in MHz (a core counts 1000 MHz, as everywhere in
/// Shepherd); memory in MiB.
public struct VMQoS: Codable, Sendable, Equatable {
    public var cpuShares: Int
    public var cpuReservationMHz: Int
    /// nil: no ceiling.
    public var cpuLimitMHz: Int?
    public var memoryReservationMiB: Int
    public var memoryShares: Int
    /// nil: the VM's whole memory. Below it, the balloon holds the guest to the limit.
    public var memoryLimitMiB: Int?

    /// FusionCompute's "normal" shares.
    public static let defaultShares = 1000
    public static let sharesRange = 1...100_000
    /// A CPU limit below this leaves the guest too little to run its timer interrupts.
    public static let minimumCPULimitMHz = 50
    /// Below this a Linux guest cannot keep its kernel and the tools.
    public static let minimumMemoryLimitMiB = 64

    public init(cpuShares: Int = VMQoS.defaultShares, cpuReservationMHz: Int = 0, cpuLimitMHz: Int? = nil,
                memoryReservationMiB: Int, memoryShares: Int = VMQoS.defaultShares, memoryLimitMiB: Int? = nil) {
        self.cpuShares = cpuShares; self.cpuReservationMHz = cpuReservationMHz; self.cpuLimitMHz = cpuLimitMHz
        self.memoryReservationMiB = memoryReservationMiB; self.memoryShares = memoryShares; self.memoryLimitMiB = memoryLimitMiB
    }

    /// A new VM's QoS: with memory overcommit off it reserves all its memory (the seed: off means
    /// every VM's memory is backed by real memory), with it on nothing.
    public static func defaults(memoryMiB: Int, overcommit: Bool) -> VMQoS {
        VMQoS(memoryReservationMiB: overcommit ? 0 : memoryMiB)
    }

    /// The memory the guest may use now: its size, or the limit below it.
    public func memoryCeilingMiB(memoryMiB: Int) -> Int { min(memoryMiB, memoryLimitMiB ?? memoryMiB) }

    /// cgroup `cpu.shares` (v1; 1024 is the kernel's normal, our 1000).
    public var cgroupV1CPUShares: Int { min(262_144, max(2, cpuShares * 1024 / 1000)) }
    /// cgroup `cpu.weight` (v2; 100 is the kernel's normal, our 1000).
    public var cgroupV2CPUWeight: Int { min(10_000, max(1, cpuShares / 10)) }
    /// CFS quota in microseconds per `cfsPeriodMicros`, nil without a limit.
    public var cfsQuotaMicros: Int? { cpuLimitMHz.map { max(1000, $0 * VMQoS.cfsPeriodMicros / 1000) } }
    public static let cfsPeriodMicros = 100_000
}

extension AgentWire.VMDefinition {
    /// Its QoS, or the defaults for a definition saved before QoS existed.
    public var effectiveQoS: VMQoS { qos ?? VMQoS(memoryReservationMiB: 0) }
    /// The memory its guest may have now: its size, or its limit below it (the balloon's target).
    public var memoryCeilingMiB: Int { effectiveQoS.memoryCeilingMiB(memoryMiB: memoryMiB) }
}

/// An amount of memory given absolutely or as a share of the VM's size (`--memory-reservation 100%`).
public enum MemoryAmount: Sendable, Equatable {
    case mib(Int)
    case percent(Int)

    /// "512", "512MiB", "2GiB" or "50%".
    public static func parse(_ text: String, field: String) throws -> MemoryAmount {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        if trimmed.hasSuffix("%") {
            guard let value = Int(trimmed.dropLast()), (0...100).contains(value) else {
                throw ShepherdError.invalidField(field, "'\(text)' is not a percentage 0–100 %")
            }
            return .percent(value)
        }
        let units: [(String, Int)] = [("GiB", 1024), ("G", 1024), ("MiB", 1), ("M", 1)]
        for (suffix, factor) in units where trimmed.hasSuffix(suffix) {
            guard let value = Int(trimmed.dropLast(suffix.count)), value >= 0 else { break }
            let (mib, overflow) = value.multipliedReportingOverflow(by: factor)
            guard !overflow, mib <= Limits.memoryMiB.upperBound else {
                throw ShepherdError.invalidField(field, "'\(text)' is more memory than any VM has (at most \(Limits.memoryMiB.upperBound) MiB)")
            }
            return .mib(mib)
        }
        guard let value = Int(trimmed), value >= 0 else {
            throw ShepherdError.invalidField(field, "'\(text)' is not an amount of memory (MiB, e.g. 512, 2GiB or 50%)")
        }
        return .mib(value)
    }

    public func mib(of memoryMiB: Int) -> Int {
        switch self {
        case .mib(let value): min(value, Limits.memoryMiB.upperBound + 1)
        case .percent(let percent): (memoryMiB * percent + 99) / 100
        }
    }
}

/// A change to a VM's QoS; nil fields stay. A limit of 0 removes the limit.
public struct QoSChange: Sendable, Equatable {
    public var cpuShares: Int?
    public var cpuReservationMHz: Int?
    public var cpuLimitMHz: Int?
    public var memoryReservation: MemoryAmount?
    public var memoryShares: Int?
    public var memoryLimit: MemoryAmount?

    public init(cpuShares: Int? = nil, cpuReservationMHz: Int? = nil, cpuLimitMHz: Int? = nil, memoryReservation: MemoryAmount? = nil,
                memoryShares: Int? = nil, memoryLimit: MemoryAmount? = nil) {
        self.cpuShares = cpuShares; self.cpuReservationMHz = cpuReservationMHz; self.cpuLimitMHz = cpuLimitMHz
        self.memoryReservation = memoryReservation; self.memoryShares = memoryShares; self.memoryLimit = memoryLimit
    }

    public var isEmpty: Bool { self == QoSChange() }

    /// The VM's QoS after the change, or the first rule it breaks (naming the field and numbers).
    /// `overcommit`: the cluster's memory overcommit switch — off, a VM reserves all its memory.
    public func applied(to qos: VMQoS, vm: String, cpus: Int, memoryMiB: Int, overcommit: Bool) throws -> VMQoS {
        var result = qos
        let vcpuMHz = cpus * 1000
        for (field, shares) in [("cpuShares", cpuShares), ("memoryShares", memoryShares)] {
            if let shares, !VMQoS.sharesRange.contains(shares) {
                throw ShepherdError.invalidField(field, "\(shares) is outside \(VMQoS.sharesRange.lowerBound)–\(VMQoS.sharesRange.upperBound) (normal: \(VMQoS.defaultShares))")
            }
        }
        if let cpuShares { result.cpuShares = cpuShares }
        if let memoryShares { result.memoryShares = memoryShares }
        if let cpuReservationMHz {
            guard (0...vcpuMHz).contains(cpuReservationMHz) else {
                throw ShepherdError.invalidField("cpuReservationMHz", "\(cpuReservationMHz) MHz is outside 0–\(vcpuMHz) MHz (\(cpus) vCPU × 1000 MHz of '\(vm)')")
            }
            result.cpuReservationMHz = cpuReservationMHz
        }
        if let cpuLimitMHz {
            guard cpuLimitMHz == 0 || (VMQoS.minimumCPULimitMHz...vcpuMHz).contains(cpuLimitMHz) else {
                throw ShepherdError.invalidField("cpuLimitMHz", "\(cpuLimitMHz) MHz is outside \(VMQoS.minimumCPULimitMHz)–\(vcpuMHz) MHz (\(cpus) vCPU × 1000 MHz of '\(vm)'); 0 removes the limit")
            }
            result.cpuLimitMHz = cpuLimitMHz == 0 || cpuLimitMHz == vcpuMHz ? nil : cpuLimitMHz
        }
        if let limit = result.cpuLimitMHz, limit < result.cpuReservationMHz {
            throw ShepherdError.invalidField(cpuLimitMHz != nil ? "cpuLimitMHz" : "cpuReservationMHz",
                                             "the CPU limit \(limit) MHz of '\(vm)' is below its reservation \(result.cpuReservationMHz) MHz")
        }
        if let memoryReservation {
            let mib = memoryReservation.mib(of: memoryMiB)
            guard (0...memoryMiB).contains(mib) else {
                throw ShepherdError.invalidField("memoryReservation", "\(mib) MiB is outside 0–\(memoryMiB) MiB (the memory of '\(vm)')")
            }
            result.memoryReservationMiB = mib
        }
        if let memoryLimit {
            let mib = memoryLimit.mib(of: memoryMiB)
            guard mib == 0 || (VMQoS.minimumMemoryLimitMiB...memoryMiB).contains(mib) else {
                throw ShepherdError.invalidField("memoryLimit", "\(mib) MiB is outside \(VMQoS.minimumMemoryLimitMiB)–\(memoryMiB) MiB (the memory of '\(vm)'); 0 removes the limit")
            }
            result.memoryLimitMiB = mib == 0 || mib == memoryMiB ? nil : mib
        }
        if !overcommit && result.memoryReservationMiB < memoryMiB {
            throw ShepherdError(.preflightFailed, "memory overcommit is off in the cluster of '\(vm)': every VM reserves all its memory (asked \(result.memoryReservationMiB) of \(memoryMiB) MiB); turn overcommit on first")
        }
        if !overcommit, let limit = result.memoryLimitMiB {
            throw ShepherdError(.preflightFailed, "memory overcommit is off in the cluster of '\(vm)': a memory limit (\(limit) of \(memoryMiB) MiB) would take memory the VM has reserved; turn overcommit on first")
        }
        if let limit = result.memoryLimitMiB, limit < result.memoryReservationMiB {
            throw ShepherdError.invalidField(memoryLimit != nil ? "memoryLimit" : "memoryReservation",
                                             "the memory limit \(limit) MiB of '\(vm)' is below its reservation \(result.memoryReservationMiB) MiB")
        }
        return result
    }
}

/// The swap disk every VM gets while its cluster overcommits memory (seed: 内存交换).
public enum SwapDisk {
    /// The seed's size: ceil((memory_GB × 1024 + 128) × 11 / 10240) GB — the VM's memory plus
    /// 128 MiB of device state, and 10 % more.
    public static func sizeGiB(memoryMiB: Int) -> Int {
        ((memoryMiB + 128) * 11 + 10_239) / 10_240
    }
}

/// How hard KSM looks for identical pages: the kernel's 100 pages per 20 ms wake-up while the
/// host has room, more as its memory fills (merging is what lets it take more), up to 2000.
public enum KSMPolicy {
    public static func pagesToScan(usedFraction: Double) -> Int {
        switch usedFraction {
        case ..<0.5: 100
        case ..<0.75: 500
        case ..<0.9: 1000
        default: 2000
        }
    }
}

/// The seed's rules for the cluster's memory overcommit switch.
public enum MemoryOvercommit {
    public static let ratioRange = 100...400
    /// The seed's 150 %.
    public static let defaultRatioPercent = 150

    /// A running VM's memory claim: turning overcommit off needs its reservation at 100 % and no limit.
    public struct Claim: Sendable, Equatable, CustomStringConvertible {
        public var vm: String
        public var memoryMiB: Int
        public var reservationMiB: Int
        public var limitMiB: Int?
        public init(vm: String, memoryMiB: Int, reservationMiB: Int, limitMiB: Int? = nil) {
            self.vm = vm; self.memoryMiB = memoryMiB; self.reservationMiB = reservationMiB; self.limitMiB = limitMiB
        }
        var isShort: Bool { reservationMiB < memoryMiB || limitMiB != nil }
        public var description: String {
            "'\(vm)' reserves \(reservationMiB) of \(memoryMiB) MiB" + (limitMiB.map { ", limited to \($0) MiB" } ?? "")
        }
    }

    /// Turning overcommit off is refused while a running VM reserves less than its memory (or
    /// is limited below it): its pages may already be shared, ballooned or swapped. Every
    /// offender is named, with the one command that fixes them all.
    public static func checkTurningOff(cluster: String, running: [Claim]) throws {
        let short = running.filter(\.isShort)
        guard !short.isEmpty else { return }
        let limited = short.contains { $0.limitMiB != nil }
        throw ShepherdError(.preflightFailed, "memoryOvercommit: cannot turn it off in cluster '\(cluster)': \(short.count) running VM(s) reserve less than their memory (" +
                            short.map(\.description).joined(separator: "; ") +
                            "); first: shepherd vm qos set --cluster \(cluster) --memory-reservation 100%" + (limited ? " --memory-limit 0" : ""))
    }
}
