import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Parent links and start times from /proc, to find the processes an agent started and to kill
/// them later only if the pid still names the same process.
enum ProcessTable {
    /// A process by pid and start time (clock ticks since boot), which together never repeat.
    struct Identity: Hashable, Sendable {
        let pid: Int32
        let startTime: UInt64
    }

    /// Every living descendant of `root` (children, their children, …), not `root` itself.
    static func descendants(of root: Int32) -> [Identity] {
        var children: [Int32: [Identity]] = [:]
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = Int32(entry), pid > 0, let info = stat(pid), info.state != "Z" else { continue }
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

    /// True if `identity.pid` is alive (not a zombie) and started when it did.
    static func isSame(_ identity: Identity) -> Bool {
        guard let info = stat(identity.pid) else { return false }
        return info.startTime == identity.startTime && info.state != "Z" && info.state != "X"
    }

    /// State, parent pid and start time from /proc/pid/stat.
    static func stat(_ pid: Int32) -> (state: Character, parent: Int32, startTime: UInt64)? {
        guard let text = read("/proc/\(pid)/stat"), let close = text.lastIndex(of: ")") else { return nil }
        // After "(comm)": state(3) ppid(4) pgrp session tty_nr tpgid flags minflt cminflt majflt
        // cmajflt utime stime cutime cstime priority nice num_threads itrealvalue starttime(22).
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 19, let state = fields[0].first, let parent = Int32(fields[1]),
              let start = UInt64(fields[19]) else { return nil }
        return (state, parent, start)
    }

    private static func read(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while bytes.count < 65536 {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { break }
            bytes.append(contentsOf: chunk[0..<n])
        }
        return bytes.isEmpty ? nil : String(decoding: bytes, as: UTF8.self)
    }
}
