import Foundation

/// What a finished command left behind: its exit status and everything it printed.
public struct CommandResult: Sendable {
    /// Exit status; a process killed by signal N reports 128 + N, as a shell would.
    public let status: Int32
    /// Everything written to standard output, decoded as UTF-8 (invalid bytes replaced).
    public let stdout: String
    /// Everything written to standard error, decoded as UTF-8 (invalid bytes replaced).
    public let stderr: String

    /// Makes a result by hand (for tests and fakes).
    public init(status: Int32, stdout: String, stderr: String) {
        self.status = status
        self.stdout = stdout
        self.stderr = stderr
    }
}

/// The one error type of HostKit; `message` names the command and the numbers involved.
public struct HostKitError: Error, Sendable, CustomStringConvertible {
    /// What went wrong.
    public enum Kind: Sendable {
        /// The program could not be started (not found, not executable, bad argument, no pipes).
        case launchFailed
        /// The program did not finish in time and was killed.
        case timedOut
        /// The program or host operation failed (non-zero exit, failed syscall, bad input).
        case failed
    }

    /// What went wrong, as a category.
    public let kind: Kind
    /// Human-readable detail: the command line, timeout seconds, exit status, stderr tail, errno.
    public let message: String

    /// Makes an error by hand (for tests and fakes).
    public init(kind: Kind, message: String) {
        self.kind = kind
        self.message = message
    }

    /// The message.
    public var description: String { message }
}

extension HostKitError {
    /// A `failed` error for the errno just set; errno is read before the message is built.
    static func errno(_ what: @autoclosure () -> String) -> HostKitError {
        let code = Glibc.errno
        return HostKitError(kind: .failed, message: "\(what()): \(String(cString: strerror(code))) (errno \(code))")
    }
}

// MARK: - Small shared helpers

/// A value behind a lock; the only shared mutable state in the module goes through this.
final class Locked<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value

    init(_ value: Value) { self.value = value }

    func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        lock.lock()
        defer { lock.unlock() }
        return try body(&value)
    }
}

extension Duration {
    /// The duration in (fractional) seconds.
    public var inSeconds: Double {
        let c = components
        return Double(c.seconds) + Double(c.attoseconds) * 1e-18
    }
}

/// "30" for whole seconds, "0.5" otherwise.
func formatSeconds(_ d: Duration) -> String {
    let s = d.inSeconds
    if s == s.rounded(), abs(s) < 1e12 { return String(Int64(s)) }
    return String(format: "%.3g", s)
}

/// A command line as a person would type it: arguments with spaces or quotes single-quoted.
func describeCommand(_ argv: [String]) -> String {
    let plain = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./:=,+@%")
    return argv.map { arg in
        if !arg.isEmpty, arg.allSatisfy({ plain.contains($0) }) { return arg }
        return "'" + arg.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }.joined(separator: " ")
}

/// The last `limit` characters of `text`, trimmed, with "…" in front when cut.
func tail(_ text: String, limit: Int = 800) -> String {
    let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
    guard trimmed.count > limit else { return trimmed }
    return "…" + trimmed.suffix(limit)
}

/// Reads a whole file with plain read(2); works for /proc files, whose size reads as 0.
func readWholeFile(_ path: String, limit: Int = 64 << 20) -> [UInt8]? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var result: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while result.count < limit {
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n > 0 {
            result.append(contentsOf: buffer[0..<n])
        } else if n == 0 {
            break
        } else if errno == EINTR {
            continue
        } else {
            return nil
        }
    }
    return result
}

/// Sleeps without occupying a thread and without being cut short by task cancellation.
func sleepUninterruptibly(_ duration: Duration) async {
    let nanos = max(0, Int(duration.inSeconds * 1e9))
    await withCheckedContinuation { (cont: CheckedContinuation<Void, Never>) in
        DispatchQueue.global().asyncAfter(deadline: .now() + .nanoseconds(nanos)) { cont.resume() }
    }
}
