import Foundation

/// What a VM's cgroup enforces (values already in the kernel's units).
public struct CGroupLimits: Sendable, Equatable {
    /// v1 `cpu.shares` (1024 normal) and v2 `cpu.weight` (100 normal).
    public var cpuSharesV1: Int
    public var cpuWeightV2: Int
    /// CFS quota per period (µs); nil: no ceiling.
    public var cpuQuotaMicros: Int?
    public var cpuPeriodMicros: Int
    /// Memory the VM keeps when the host is short: v1 soft limit (reclaimed last), v2 memory.min (never reclaimed).
    public var memoryProtectedBytes: UInt64

    public init(cpuSharesV1: Int, cpuWeightV2: Int, cpuQuotaMicros: Int?, cpuPeriodMicros: Int, memoryProtectedBytes: UInt64) {
        self.cpuSharesV1 = cpuSharesV1; self.cpuWeightV2 = cpuWeightV2; self.cpuQuotaMicros = cpuQuotaMicros
        self.cpuPeriodMicros = cpuPeriodMicros; self.memoryProtectedBytes = memoryProtectedBytes
    }
}

/// The cgroups of one host's VMs: `<root>/shepherd/<host>/<vm>` (v2), or the same path under
/// the cpu and memory controllers' own trees (v1). The host's group can carry the host's memory
/// size (the demo's hosts share one machine); each VM's group carries its QoS. Both versions:
/// production hosts run v2, this build machine v1.
public struct CGroups: Sendable {
    public enum Version: String, Sendable { case v1, v2 }

    public let version: Version
    public let root: String
    /// Relative to the controller root: `shepherd/<host>`.
    public let hostGroup: String

    /// The group of the host whose agent keeps its state in `stateDirectory`: its name (what
    /// operators look for) and a short hash of the directory (two agents of one name on one
    /// machine, as tests start them, stay apart). nil when the machine has no usable cpu and
    /// memory controllers.
    public init?(host: String, stateDirectory: String, root: String = "/sys/fs/cgroup") {
        let fm = FileManager.default
        if fm.fileExists(atPath: root + "/cgroup.controllers") {
            version = .v2
        } else if fm.fileExists(atPath: root + "/cpu/cpu.shares"), fm.fileExists(atPath: root + "/memory/memory.limit_in_bytes") {
            version = .v1
        } else {
            return nil
        }
        self.root = root
        self.hostGroup = "shepherd/\(host)-" + String(String(Files.stableHash(stateDirectory), radix: 16).suffix(8))
    }

    /// Directories making up a group (one per controller on v1).
    func directories(_ group: String) -> [String] {
        switch version {
        case .v1: ["\(root)/cpu/\(group)", "\(root)/memory/\(group)"]
        case .v2: ["\(root)/\(group)"]
        }
    }

    private func directory(_ group: String, controller: String) -> String {
        version == .v1 ? "\(root)/\(controller)/\(group)" : "\(root)/\(group)"
    }

    /// The path operators see for a VM's group.
    public func path(vm: String) -> String { directory("\(hostGroup)/\(vm)", controller: "cpu") }

    /// Creates the host's group; with a memory size, everything of the host's VMs together is
    /// held to it (the demo's "host of 2 GiB").
    public func prepareHost(memoryLimitBytes: UInt64?) throws {
        if version == .v2 {
            // A v2 group hands controllers to its children only when each ancestor enables them.
            try enableControllers(in: root)
            try Files.ensureDirectory("\(root)/shepherd", mode: 0o755)
            try enableControllers(in: "\(root)/shepherd")
            try Files.ensureDirectory("\(root)/\(hostGroup)", mode: 0o755)
            try enableControllers(in: "\(root)/\(hostGroup)")
        } else {
            for directory in directories(hostGroup) { try Files.ensureDirectory(directory, mode: 0o755) }
        }
        let limit = memoryLimitBytes.map(String.init) ?? (version == .v1 ? "-1" : "max")
        try write(directory(hostGroup, controller: "memory") + (version == .v1 ? "/memory.limit_in_bytes" : "/memory.max"), limit)
    }

    private func enableControllers(in directory: String) throws {
        try write(directory + "/cgroup.subtree_control", "+cpu +memory")
    }

    /// Puts a VM's process (every thread) into its group with its limits.
    public func place(pid: Int32, vm: String, limits: CGroupLimits) throws {
        let group = "\(hostGroup)/\(vm)"
        for directory in directories(group) { try Files.ensureDirectory(directory, mode: 0o755) }
        try apply(limits, vm: vm)
        if version == .v1 {
            // Pages the process touched before the move go with it (otherwise they stay charged
            // to the group it came from).
            try? write(directory(group, controller: "memory") + "/memory.move_charge_at_immigrate", "3")
        }
        for directory in directories(group) { try write(directory + "/cgroup.procs", "\(pid)") }
    }

    /// Changes a VM's limits in place.
    public func apply(_ limits: CGroupLimits, vm: String) throws {
        let group = "\(hostGroup)/\(vm)"
        let cpu = directory(group, controller: "cpu"), memory = directory(group, controller: "memory")
        switch version {
        case .v1:
            try write(cpu + "/cpu.shares", "\(limits.cpuSharesV1)")
            try write(cpu + "/cpu.cfs_period_us", "\(limits.cpuPeriodMicros)")
            try write(cpu + "/cpu.cfs_quota_us", limits.cpuQuotaMicros.map(String.init) ?? "-1")
            try write(memory + "/memory.soft_limit_in_bytes", "\(limits.memoryProtectedBytes)")
        case .v2:
            try write(cpu + "/cpu.weight", "\(limits.cpuWeightV2)")
            try write(cpu + "/cpu.max", "\(limits.cpuQuotaMicros.map(String.init) ?? "max") \(limits.cpuPeriodMicros)")
            try write(memory + "/memory.min", "\(limits.memoryProtectedBytes)")
            try refreshProtection()
        }
    }

    /// v2 protects a group's memory.min only as far as every ancestor's covers it: the host's
    /// group and `shepherd` carry the sum of what their children protect.
    func refreshProtection() throws {
        guard version == .v2 else { return }
        func children(_ directory: String) -> [String] {
            ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).map { directory + "/" + $0 }
                .filter { FileManager.default.fileExists(atPath: $0 + "/memory.min") }
        }
        func protected(_ directory: String) -> UInt64 {
            (try? String(contentsOfFile: directory + "/memory.min", encoding: .utf8)).flatMap { UInt64($0.trimmingCharacters(in: .whitespacesAndNewlines)) } ?? 0
        }
        let host = "\(root)/\(hostGroup)", top = "\(root)/shepherd"
        try write(host + "/memory.min", "\(children(host).reduce(0) { $0 + protected($1) })")
        try write(top + "/memory.min", "\(children(top).reduce(0) { $0 + protected($1) })")
    }

    /// Whether the VM's process is in its group.
    public func contains(pid: Int32, vm: String) -> Bool {
        let procs = (try? String(contentsOfFile: directory("\(hostGroup)/\(vm)", controller: "cpu") + "/cgroup.procs", encoding: .utf8)) ?? ""
        return procs.split(separator: "\n").contains { $0 == "\(pid)" }
    }

    /// Reads one of the VM group's files (`cpu.shares`, `cpu.max`, …), trimmed.
    public func read(vm: String, controller: String, file: String) -> String? {
        (try? String(contentsOfFile: directory("\(hostGroup)/\(vm)", controller: controller) + "/" + file, encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Memory the host's VMs use together, as the kernel charges it (QEMU overhead included).
    public func hostMemoryUsageBytes() -> UInt64? {
        let file = version == .v1 ? "/memory.usage_in_bytes" : "/memory.current"
        return (try? String(contentsOfFile: directory(hostGroup, controller: "memory") + file, encoding: .utf8))
            .flatMap { UInt64($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }

    /// Removes a VM's group once its process has ended. The kernel refuses (EBUSY) while the
    /// group has tasks, and an ended QEMU stays one until it is reaped: retried for up to 5 s.
    public func remove(vm: String) async {
        for directory in directories("\(hostGroup)/\(vm)") { await Self.removeDirectory(directory, waiting: .seconds(5)) }
        try? refreshProtection()
    }

    /// Removes the groups of VMs whose QEMU is gone (ended while no agent watched; the kernel
    /// keeps a group with tasks), waiting up to `waiting` each for a just-ended one, and with
    /// `includingHost` the host's own group once it is empty.
    public func removeEmptyGroups(includingHost: Bool = false, waiting: Duration = .zero) async {
        for base in directories(hostGroup) {
            for entry in (try? FileManager.default.contentsOfDirectory(atPath: base)) ?? [] {
                var isDirectory: ObjCBool = false
                guard FileManager.default.fileExists(atPath: base + "/" + entry, isDirectory: &isDirectory), isDirectory.boolValue else { continue }
                await Self.removeDirectory(base + "/" + entry, waiting: waiting)
            }
            if includingHost { rmdir(base) }
        }
    }

    private static func removeDirectory(_ path: String, waiting: Duration) async {
        let deadline = ContinuousClock.now + waiting
        while rmdir(path) != 0 && errno == EBUSY && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(100))
        }
    }

    private func write(_ path: String, _ value: String) throws {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw HostKitError.errno("cgroup: opening \(path)") }
        defer { close(fd) }
        let bytes = Array(value.utf8)
        let written = bytes.withUnsafeBufferPointer { Foundation.write(fd, $0.baseAddress, $0.count) }
        guard written == bytes.count else { throw HostKitError.errno("cgroup: writing '\(value)' to \(path)") }
    }
}
