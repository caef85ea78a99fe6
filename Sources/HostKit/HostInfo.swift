import Foundation

/// What this host has: CPU, memory, kernel, name (from /proc/cpuinfo, /proc/meminfo, uname).
public struct HostInfo: Sendable, Codable, Equatable {
    /// CPU model name, e.g. "AMD EPYC 7B13" ("unknown" if the kernel does not say).
    public let cpuModel: String
    /// CPU vendor, e.g. "GenuineIntel", "AuthenticAMD" (on ARM the implementer code).
    public let cpuVendor: String
    /// CPU feature flags as the kernel lists them (e.g. "vmx", "svm", "avx2").
    public let cpuFlags: [String]
    /// Logical CPUs online (hyperthreads count).
    public let cores: Int
    /// MemTotal, in bytes.
    public let memoryTotalBytes: UInt64
    /// MemAvailable, in bytes.
    public let memoryAvailableBytes: UInt64
    /// Kernel release, e.g. "6.1.0-18-amd64".
    public let kernel: String
    /// Host name (uname nodename).
    public let hostname: String

    /// Makes a value by hand (for tests and fakes).
    public init(cpuModel: String, cpuVendor: String, cpuFlags: [String], cores: Int,
                memoryTotalBytes: UInt64, memoryAvailableBytes: UInt64, kernel: String, hostname: String) {
        self.cpuModel = cpuModel
        self.cpuVendor = cpuVendor
        self.cpuFlags = cpuFlags
        self.cores = cores
        self.memoryTotalBytes = memoryTotalBytes
        self.memoryAvailableBytes = memoryAvailableBytes
        self.kernel = kernel
        self.hostname = hostname
    }

    /// Reads the host's facts now.
    public static func read() throws -> HostInfo {
        guard let cpuBytes = readWholeFile("/proc/cpuinfo") else { throw HostKitError.errno("reading /proc/cpuinfo") }
        guard let memBytes = readWholeFile("/proc/meminfo") else { throw HostKitError.errno("reading /proc/meminfo") }
        let cpu = parseCPUInfo(String(decoding: cpuBytes, as: UTF8.self))
        let mem = parseMemInfo(String(decoding: memBytes, as: UTF8.self))
        guard let total = mem["MemTotal"] else {
            throw HostKitError(kind: .failed, message: "reading /proc/meminfo: no MemTotal line")
        }
        // MemAvailable exists since Linux 3.14; older kernels get MemFree as an underestimate.
        let available = mem["MemAvailable"] ?? mem["MemFree"] ?? 0

        var names = utsname()
        guard uname(&names) == 0 else { throw HostKitError.errno("uname") }
        let release = withUnsafeBytes(of: &names.release) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
        let node = withUnsafeBytes(of: &names.nodename) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }

        let online = sysconf(Int32(_SC_NPROCESSORS_ONLN))
        let cores = online > 0 ? Int(online) : max(cpu.processors, 1)
        return HostInfo(cpuModel: cpu.model, cpuVendor: cpu.vendor, cpuFlags: cpu.flags, cores: cores,
                        memoryTotalBytes: total, memoryAvailableBytes: available, kernel: release, hostname: node)
    }

    /// Parses /proc/cpuinfo text (x86 and ARM field names).
    static func parseCPUInfo(_ text: String) -> (model: String, vendor: String, flags: [String], processors: Int) {
        var model: String?
        var vendor: String?
        var flags: [String]?
        var processors = 0
        for line in text.split(separator: "\n") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let key = line[..<colon].trimmingCharacters(in: .whitespaces)
            let value = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            switch key {
            case "processor": processors += 1
            case "model name", "Model", "Hardware", "cpu model": if model == nil, !value.isEmpty { model = value }
            case "vendor_id", "CPU implementer": if vendor == nil { vendor = value }
            case "flags", "Features": if flags == nil { flags = value.split(separator: " ").map(String.init) }
            default: break
            }
        }
        return (model ?? "unknown", vendor ?? "unknown", flags ?? [], processors)
    }

    /// Parses /proc/meminfo text into bytes per key ("MemTotal: 123 kB" → 125952).
    static func parseMemInfo(_ text: String) -> [String: UInt64] {
        var result: [String: UInt64] = [:]
        for line in text.split(separator: "\n") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let key = String(line[..<colon])
            let fields = line[line.index(after: colon)...].split(separator: " ")
            guard let first = fields.first, let number = UInt64(first) else { continue }
            let unit = fields.dropFirst().first
            result[key] = unit == "kB" ? number * 1024 : number
        }
        return result
    }
}

/// Size and free space of the filesystem holding a path.
public struct FilesystemSpace: Sendable, Equatable {
    /// Total size, in bytes.
    public let capacityBytes: UInt64
    /// Space available to unprivileged users (f_bavail), in bytes.
    public let freeBytes: UInt64

    /// Makes a value by hand (for tests and fakes).
    public init(capacityBytes: UInt64, freeBytes: UInt64) {
        self.capacityBytes = capacityBytes
        self.freeBytes = freeBytes
    }

    /// statvfs(3) of `path`.
    public static func of(path: String) throws -> FilesystemSpace {
        var st = statvfs()
        guard statvfs(path, &st) == 0 else { throw HostKitError.errno("statvfs \(path)") }
        let unit = UInt64(st.f_frsize != 0 ? st.f_frsize : st.f_bsize)
        return FilesystemSpace(capacityBytes: UInt64(st.f_blocks) * unit, freeBytes: UInt64(st.f_bavail) * unit)
    }
}
