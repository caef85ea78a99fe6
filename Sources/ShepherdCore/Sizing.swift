/// A VM's vCPUs and memory with the maximums QEMU fixes at start (`-smp maxcpus`, `-m`): below
/// them a running VM grows online — vCPUs hot-added, memory through the balloon (seed: tools'
/// online CPU and memory change).
public struct VMSize: Sendable, Equatable {
    public var cpus: Int
    public var memoryMiB: Int
    public var maxCpus: Int
    public var maxMemoryMiB: Int

    public init(cpus: Int, memoryMiB: Int, maxCpus: Int? = nil, maxMemoryMiB: Int? = nil) {
        self.cpus = cpus; self.memoryMiB = memoryMiB
        self.maxCpus = max(cpus, maxCpus ?? cpus); self.maxMemoryMiB = max(memoryMiB, maxMemoryMiB ?? memoryMiB)
    }

    /// A new VM's size, each maximum checked against its value.
    public static func validated(cpus: Int, memoryMiB: Int, maxCpus: Int?, maxMemoryMiB: Int?) throws -> VMSize {
        try Validate.cpus(cpus)
        try Validate.memoryMiB(memoryMiB)
        return try VMSize(cpus: cpus, memoryMiB: memoryMiB).applying(SizeChange(maxCpus: maxCpus, maxMemoryMiB: maxMemoryMiB), vm: "the new VM", running: false)
    }

    /// The size after `change`, or the rule it breaks. A running VM only gains vCPUs (a guest
    /// cannot give one back safely) and only up to its maximums; its memory may go either way
    /// within them, never below `floorMiB` (its reservation). Maximums change only while off.
    public func applying(_ change: SizeChange, vm: String, running: Bool, floorMiB: Int = 0) throws -> VMSize {
        var result = self
        if let cpus = change.cpus { try Validate.cpus(cpus) }
        if let memory = change.memoryMiB { try Validate.memoryMiB(memory) }
        if let maxCpus = change.maxCpus { try Validate.cpus(maxCpus, field: "maxCpus") }
        if let maxMemory = change.maxMemoryMiB { try Validate.memoryMiB(maxMemory, field: "maxMemoryMiB") }
        if running {
            if let maxCpus = change.maxCpus, maxCpus != self.maxCpus {
                throw ShepherdError(.illegalState, "maxCpus: '\(vm)' runs; QEMU fixed its maximum of \(self.maxCpus) vCPUs at start (asked \(maxCpus)); stop it to change it")
            }
            if let maxMemory = change.maxMemoryMiB, maxMemory != maxMemoryMiB {
                throw ShepherdError(.illegalState, "maxMemoryMiB: '\(vm)' runs; QEMU fixed its maximum of \(maxMemoryMiB) MiB at start (asked \(maxMemory)); stop it to change it")
            }
            if let cpus = change.cpus {
                guard cpus >= self.cpus else {
                    throw ShepherdError(.illegalState, "cpus: a running VM only gains vCPUs ('\(vm)' has \(self.cpus), asked \(cpus)); stop it to remove some")
                }
                guard cpus <= self.maxCpus else {
                    throw ShepherdError.invalidField("cpus", "\(cpus) vCPUs is beyond the maximum of \(self.maxCpus) '\(vm)' started with; stop it and raise maxCpus")
                }
                result.cpus = cpus
            }
            if let memory = change.memoryMiB {
                guard memory <= maxMemoryMiB else {
                    throw ShepherdError.invalidField("memoryMiB", "\(memory) MiB is beyond the maximum of \(maxMemoryMiB) MiB '\(vm)' started with; stop it and raise maxMemoryMiB")
                }
                guard memory >= max(floorMiB, VMQoS.minimumMemoryLimitMiB) else {
                    throw ShepherdError.invalidField("memoryMiB", "\(memory) MiB is below \(max(floorMiB, VMQoS.minimumMemoryLimitMiB)) MiB (the reservation of '\(vm)', or the 64 MiB a guest needs)")
                }
                result.memoryMiB = memory
            }
            return result
        }
        result.cpus = change.cpus ?? cpus
        result.memoryMiB = change.memoryMiB ?? memoryMiB
        // Off, a value beyond its maximum raises the maximum with it, unless the change names one.
        result.maxCpus = change.maxCpus ?? max(maxCpus, result.cpus)
        result.maxMemoryMiB = change.maxMemoryMiB ?? max(maxMemoryMiB, result.memoryMiB)
        guard result.maxCpus >= result.cpus else {
            throw ShepherdError.invalidField("maxCpus", "\(result.maxCpus) is below the \(result.cpus) vCPUs of '\(vm)'")
        }
        guard result.maxMemoryMiB >= result.memoryMiB else {
            throw ShepherdError.invalidField("maxMemoryMiB", "\(result.maxMemoryMiB) MiB is below the \(result.memoryMiB) MiB of '\(vm)'")
        }
        return result
    }
}

/// A change of size; nil fields stay.
public struct SizeChange: Sendable, Equatable {
    public var cpus: Int?
    public var memoryMiB: Int?
    public var maxCpus: Int?
    public var maxMemoryMiB: Int?
    public init(cpus: Int? = nil, memoryMiB: Int? = nil, maxCpus: Int? = nil, maxMemoryMiB: Int? = nil) {
        self.cpus = cpus; self.memoryMiB = memoryMiB; self.maxCpus = maxCpus; self.maxMemoryMiB = maxMemoryMiB
    }
    public var isEmpty: Bool { self == SizeChange() }
}
