import Foundation

/// Kernel same-page merging: identical pages of VMs (QEMU marks guest memory mergeable) are kept
/// once. Machine-wide: hosts that share one machine (the demo) share these counters.
public enum KSM {
    static let directory = "/sys/kernel/mm/ksm"

    public struct Status: Sendable, Equatable {
        /// Distinct pages kept once for several users.
        public var pagesShared: Int
        /// Pages that point at a shared page: what merging saves.
        public var pagesSharing: Int
        public var running: Bool
        public var savedBytes: UInt64 { UInt64(pagesSharing) * UInt64(sysconf(Int32(_SC_PAGESIZE))) }
    }

    /// Turns merging on. Fails where the kernel has no KSM or the file is read-only.
    public static func enable() throws { try write("run", "1") }

    /// Stops merging; pages merged so far stay merged.
    public static func disable() throws { try write("run", "0") }

    /// Scan rate: pages looked at per wake-up (the kernel's default 100; more under pressure).
    public static func setPagesToScan(_ pages: Int) throws { try write("pages_to_scan", String(pages)) }

    private static func write(_ name: String, _ value: String) throws {
        let path = directory + "/" + name
        guard let handle = FileHandle(forWritingAtPath: path) else { throw HostKitError.errno("KSM: opening \(path)") }
        defer { try? handle.close() }
        try handle.write(contentsOf: Data(value.utf8))
    }

    public static func status() -> Status? {
        func number(_ name: String) -> Int? {
            (try? String(contentsOfFile: directory + "/" + name, encoding: .utf8)).flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        }
        guard let shared = number("pages_shared"), let sharing = number("pages_sharing"), let run = number("run") else { return nil }
        return Status(pagesShared: shared, pagesSharing: sharing, running: run == 1)
    }
}
