import Foundation

/// Looking at and signalling processes by pid (ours or not, e.g. a daemonized QEMU). Never by name.
///
/// Every function refuses pids <= 0 (which kill(2) would read as process groups) and our own pid.
public enum Processes {
    /// True if `pid` exists and is not a zombie (kill(pid, 0), then the state in /proc/pid/stat).
    public static func isAlive(_ pid: Int32) -> Bool {
        guard pid > 0 else { return false }
        if Glibc.kill(pid, 0) != 0 && errno != EPERM { return false }
        guard let state = processState(pid) else {
            // Gone between the two checks, or /proc not mounted: trust kill(2) once more.
            return Glibc.kill(pid, 0) == 0 || errno == EPERM
        }
        return state != "Z" && state != "X" && state != "x"
    }

    /// The argv of `pid` from /proc/pid/cmdline, or nil if unreadable or empty (kernel threads, zombies).
    public static func commandLine(_ pid: Int32) -> [String]? {
        guard pid > 0, let bytes = readWholeFile("/proc/\(pid)/cmdline"), !bytes.isEmpty else { return nil }
        var parts = bytes.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
        if parts.last == "" { parts.removeLast() }
        return parts.isEmpty ? nil : parts
    }

    /// The positive pid in a pid file (surrounding whitespace allowed), or nil.
    public static func readPidFile(_ path: String) -> Int32? {
        guard let bytes = readWholeFile(path, limit: 4096) else { return nil }
        let text = String(decoding: bytes, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard let pid = Int32(text), pid > 0 else { return nil }
        return pid
    }

    /// SIGTERM, wait up to `grace` polling `isAlive`, SIGKILL, wait up to 5 s; true if the process is gone. Not cut short by cancellation.
    ///
    /// A zombie counts as gone; reaping it is its parent's business.
    public static func terminate(_ pid: Int32, grace: Duration) async -> Bool {
        guard pid > 0, pid != getpid() else { return false }
        guard isAlive(pid) else { return true }
        _ = Glibc.kill(pid, SIGTERM)
        if await waitUntilGone(pid, within: grace) { return true }
        _ = Glibc.kill(pid, SIGKILL)
        return await waitUntilGone(pid, within: .seconds(5))
    }

    /// SIGKILL now; true if the signal was delivered.
    public static func kill(_ pid: Int32) -> Bool {
        guard pid > 0, pid != getpid() else { return false }
        return Glibc.kill(pid, SIGKILL) == 0
    }

    /// CPU time (user + system, seconds) a process has used, from /proc/pid/stat.
    public static func cpuSeconds(_ pid: Int32) -> Double? {
        guard let bytes = readWholeFile("/proc/\(pid)/stat", limit: 8192) else { return nil }
        let text = String(decoding: bytes, as: UTF8.self)
        guard let close = text.lastIndex(of: ")") else { return nil }
        // After "(comm)": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime …
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return nil }
        return (user + system) / Double(clockTicksPerSecond)
    }

    /// Live processes named by the pid files `<directory>/<name>/<pidFile>` whose command line
    /// mentions `<name>` (so a reused pid is not taken for them): a host's QEMUs from
    /// `<agent state>/vms/<vm id>/qemu.pid`. Sorted by `<name>`.
    public static func pidsFromPidFiles(under directory: String, named pidFile: String) -> [(name: String, pid: Int32)] {
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter { !$0.hasPrefix(".") }.sorted()
        return names.compactMap { name in
            guard let pid = readPidFile("\(directory)/\(name)/\(pidFile)"), isAlive(pid),
                  commandLine(pid)?.contains(where: { $0.contains(name) }) == true else { return nil }
            return (name, pid)
        }
    }

    /// A process by pid and start time (clock ticks since boot): together they never repeat, so
    /// a later signal never hits a process that reused the pid.
    public struct Identity: Hashable, Sendable {
        public let pid: Int32
        public let startTime: UInt64
        public init(pid: Int32, startTime: UInt64) { self.pid = pid; self.startTime = startTime }
    }

    /// The identity of a live (not zombie) process.
    public static func identity(_ pid: Int32) -> Identity? {
        guard let info = stat(pid), info.state != "Z", info.state != "X" else { return nil }
        return Identity(pid: pid, startTime: info.startTime)
    }

    /// True if `identity.pid` is alive (not a zombie) and is still the process that started then.
    public static func isSame(_ identity: Identity) -> Bool {
        self.identity(identity.pid) == identity
    }

    /// Every living descendant of `root` (children, their children, …), not `root` itself.
    public static func descendants(of root: Int32) -> [Identity] {
        var children: [Int32: [Identity]] = [:]
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = Int32(entry), pid > 0, let info = stat(pid), info.state != "Z", info.state != "X" else { continue }
            children[info.parent, default: []].append(Identity(pid: pid, startTime: info.startTime))
        }
        var result: [Identity] = []
        var queue = children[root] ?? []
        while let next = queue.popLast() {
            guard next.pid != root, !result.contains(next) else { continue }
            result.append(next)
            queue.append(contentsOf: children[next.pid] ?? [])
        }
        return result
    }

    /// Pids of the live children of `parent` (a BMC's agent, say).
    public static func children(of parent: Int32) -> [Int32] {
        guard parent > 0, let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
        return entries.compactMap(Int32.init).filter { pid in
            guard let info = stat(pid) else { return false }
            return info.parent == parent && info.state != "Z" && info.state != "X"
        }.sorted()
    }

    /// State, parent pid and start time from /proc/pid/stat.
    static func stat(_ pid: Int32) -> (state: Character, parent: Int32, startTime: UInt64)? {
        guard pid > 0, let bytes = readWholeFile("/proc/\(pid)/stat", limit: 8192) else { return nil }
        let text = String(decoding: bytes, as: UTF8.self)
        // After "(comm)" — comm may hold spaces and parentheses: state(3) ppid(4) … starttime(22).
        guard let close = text.lastIndex(of: ")") else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 19, let state = fields[0].first, let parent = Int32(fields[1]), let start = UInt64(fields[19]) else { return nil }
        return (state, parent, start)
    }

    static let clockTicksPerSecond: Int = {
        let ticks = sysconf(Int32(_SC_CLK_TCK))
        return ticks > 0 ? ticks : 100
    }()

    // MARK: - Internals

    /// The state letter from /proc/pid/stat (R, S, D, Z, T, ...).
    static func processState(_ pid: Int32) -> Character? { stat(pid)?.state }

    private static func waitUntilGone(_ pid: Int32, within: Duration) async -> Bool {
        let clock = ContinuousClock()
        let deadline = clock.now + within
        var step: Duration = .milliseconds(5)
        while isAlive(pid) {
            if clock.now >= deadline { return false }
            await sleepUninterruptibly(min(step, max(deadline - clock.now, .milliseconds(1))))
            step = min(step * 2, .milliseconds(100))
        }
        return true
    }
}
