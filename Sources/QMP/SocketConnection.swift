#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Dispatch
import Foundation

/// One client connection to a Unix stream socket carrying newline-delimited JSON.
///
/// All blocking I/O runs on the connection's own serial DispatchQueue, never on a
/// Swift-concurrency thread; `perform` bridges it back with a continuation. Every wait is
/// bounded by one deadline for the whole conversation (poll(2) with the remaining time).
///
/// Safety of `@unchecked Sendable`: `fd` and `cancelled` are guarded by `lock`; `buffer` is
/// touched only inside `perform` bodies, which run one at a time on `queue` (callers await each
/// `perform` before starting the next).
final class SocketConnection: @unchecked Sendable {
    /// "QMP" or "guest agent": used in error messages.
    let label: String
    let socketPath: String
    let timeout: Duration
    let deadline: ContinuousClock.Instant

    private let queue: DispatchQueue
    private let lock = NSLock()
    private var fd: Int32 = -1
    private var cancelled = false
    private var buffer: [UInt8] = []

    /// Largest single message accepted (guest-exec output is capped at 16 MiB, base64 inflates it).
    static let maxMessageBytes = 64 << 20

    /// The longest path a sockaddr_un can hold (its sun_path minus the terminating NUL).
    static var maxPathBytes: Int {
        MemoryLayout.size(ofValue: sockaddr_un().sun_path) - 1
    }

    private init(label: String, socketPath: String, timeout: Duration) {
        self.label = label
        self.socketPath = socketPath
        self.timeout = timeout
        self.deadline = ContinuousClock.now.advanced(by: timeout)
        self.queue = DispatchQueue(label: "shepherd.qmp.\(label)")
    }

    /// Connects, runs `body`, and always closes the socket afterwards.
    static func withConnection<T: Sendable>(
        label: String, socketPath: String, timeout: Duration,
        _ body: (SocketConnection) async throws -> T
    ) async throws -> T {
        try validate(path: socketPath, label: label)
        let connection = SocketConnection(label: label, socketPath: socketPath, timeout: timeout)
        defer { connection.closeSocket() }
        try await connection.perform { try $0.openSocket() }
        return try await body(connection)
    }

    static func validate(path: String, label: String) throws {
        let length = path.utf8.count
        if length == 0 {
            throw QMPError(kind: .connect, message: "\(label) socket path is empty")
        }
        if path.utf8.contains(0) {
            throw QMPError(kind: .connect, message: "\(label) socket path contains a NUL byte: \(path)")
        }
        if length > maxPathBytes {
            throw QMPError(
                kind: .connect,
                message: "\(label) socket path is \(length) bytes; Unix socket paths are limited to \(maxPathBytes) bytes: \(path)")
        }
    }

    /// Runs blocking work on the connection's queue; task cancellation shuts the socket down,
    /// which wakes any wait, and the call then throws CancellationError.
    func perform<T: Sendable>(_ body: @escaping @Sendable (SocketConnection) throws -> T) async throws -> T {
        try Task.checkCancellation()
        do {
            return try await withTaskCancellationHandler {
                try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
                    queue.async {
                        continuation.resume(with: Result { try body(self) })
                    }
                }
            } onCancel: {
                self.cancelIO()
            }
        } catch {
            if isCancelled { throw CancellationError() }
            throw error
        }
    }

    // MARK: - Lifecycle

    private var isCancelled: Bool {
        lock.lock()
        defer { lock.unlock() }
        return cancelled
    }

    private func cancelIO() {
        lock.lock()
        defer { lock.unlock() }
        cancelled = true
        if fd >= 0 { _ = shutdown(fd, Int32(SHUT_RDWR)) }
    }

    func closeSocket() {
        lock.lock()
        defer { lock.unlock() }
        if fd >= 0 {
            _ = close(fd)
            fd = -1
        }
    }

    private var socketFD: Int32 {
        lock.lock()
        defer { lock.unlock() }
        return fd
    }

    // MARK: - Blocking operations (call only inside `perform`)

    func openSocket() throws {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let pathBytes = Array(socketPath.utf8)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: pathBytes)  // validated shorter than sun_path; the rest stays NUL
        }
        #if canImport(Darwin)
        address.sun_len = UInt8(MemoryLayout<sockaddr_un>.size)
        let descriptor = socket(AF_UNIX, SOCK_STREAM, 0)
        #else
        let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        #endif
        if descriptor < 0 {
            throw QMPError(kind: .connect, message: "cannot create a socket for \(label) at \(socketPath): \(SocketConnection.errnoText())")
        }
        #if canImport(Darwin)
        _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC)
        _ = fcntl(descriptor, F_SETFL, fcntl(descriptor, F_GETFL) | O_NONBLOCK)
        var one: Int32 = 1
        _ = setsockopt(descriptor, SOL_SOCKET, SO_NOSIGPIPE, &one, socklen_t(MemoryLayout<Int32>.size))
        #endif
        lock.lock()
        let wasCancelled = cancelled
        if !wasCancelled { fd = descriptor }
        lock.unlock()
        if wasCancelled {
            _ = close(descriptor)
            throw CancellationError()
        }

        while true {
            let result = withUnsafePointer(to: &address) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                }
            }
            if result == 0 { return }
            let code = errno
            switch code {
            case EAGAIN:
                // AF_UNIX: the listener's backlog is full. Retry until the deadline.
                if remainingMilliseconds() <= 0 {
                    throw timeoutError("connecting (the listener's backlog stayed full)")
                }
                usleep(20_000)
            case EINPROGRESS, EINTR:
                try waitFor(Int16(POLLOUT), activity: "connecting")
                var soError: Int32 = 0
                var length = socklen_t(MemoryLayout<Int32>.size)
                _ = getsockopt(descriptor, SOL_SOCKET, SO_ERROR, &soError, &length)
                if soError == 0 { return }
                throw connectError(soError)
            default:
                throw connectError(code)
            }
        }
    }

    /// Sends the bytes in full.
    func writeAll(_ bytes: [UInt8], activity: String) throws {
        let descriptor = socketFD
        var offset = 0
        while offset < bytes.count {
            let sent = bytes.withUnsafeBytes { raw in
                #if canImport(Darwin)
                send(descriptor, raw.baseAddress! + offset, raw.count - offset, 0)
                #else
                send(descriptor, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
                #endif
            }
            if sent > 0 {
                offset += sent
                continue
            }
            let code = errno
            if sent < 0 && code == EINTR { continue }
            if sent < 0 && (code == EAGAIN || code == EWOULDBLOCK) {
                try waitFor(Int16(POLLOUT), activity: activity)
                continue
            }
            throw QMPError(
                kind: .closed,
                message: "\(label) socket \(socketPath): write failed while \(activity): \(SocketConnection.errnoText(code))")
        }
    }

    /// Sends one JSON message followed by a newline, optionally preceded by raw bytes.
    func sendMessage(_ message: JSONValue, prefix: [UInt8] = [], activity: String) throws {
        try writeAll(prefix + Array(message.jsonString.utf8) + [0x0A], activity: activity)
    }

    /// Reads the next non-blank line and decodes it; throws protocolError if it is not JSON.
    func readMessage(activity: String) throws -> JSONValue {
        while true {
            let line = try readLine(activity: activity)
            if let message = try SocketConnection.decode(line, label: label) { return message }
        }
    }

    /// Reads up to the next newline (which is consumed, not returned).
    func readLine(activity: String) throws -> [UInt8] {
        var searchFrom = 0
        while true {
            if let newline = buffer[searchFrom...].firstIndex(of: 0x0A) {
                let line = Array(buffer[..<newline])
                buffer.removeSubrange(...newline)
                return line
            }
            searchFrom = buffer.count
            if buffer.count > SocketConnection.maxMessageBytes {
                throw QMPError(
                    kind: .protocolError,
                    message: "\(label) socket \(socketPath): message longer than \(SocketConnection.maxMessageBytes) bytes while \(activity)")
            }
            try fill(activity: activity)
        }
    }

    /// Discards input up to and including the next `byte`.
    func skip(through byte: UInt8, activity: String) throws {
        while true {
            if let index = buffer.firstIndex(of: byte) {
                buffer.removeSubrange(...index)
                return
            }
            buffer.removeAll(keepingCapacity: true)
            try fill(activity: activity)
        }
    }

    /// Decodes one line; nil for a blank line.
    static func decode(_ line: [UInt8], label: String) throws -> JSONValue? {
        var end = line.count
        while end > 0, [0x0D, 0x20, 0x09].contains(line[end - 1]) { end -= 1 }
        var start = 0
        while start < end, [0x20, 0x09].contains(line[start]) { start += 1 }
        if start == end { return nil }
        let slice = line[start..<end]
        do {
            return try JSONValue(jsonData: Data(slice))
        } catch {
            let preview = String(decoding: slice.prefix(200), as: UTF8.self)
            throw QMPError(kind: .protocolError, message: "\(label) sent a line that is not JSON: \(preview)")
        }
    }

    private func fill(activity: String) throws {
        let descriptor = socketFD
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            try waitFor(Int16(POLLIN), activity: activity)
            let count = chunk.withUnsafeMutableBytes { raw in
                recv(descriptor, raw.baseAddress!, raw.count, 0)
            }
            if count > 0 {
                buffer.append(contentsOf: chunk[0..<count])
                return
            }
            if count == 0 {
                throw QMPError(kind: .closed, message: "\(label) socket \(socketPath) was closed by the other side while \(activity)")
            }
            let code = errno
            if code == EINTR || code == EAGAIN || code == EWOULDBLOCK { continue }
            throw QMPError(
                kind: .closed,
                message: "\(label) socket \(socketPath): read failed while \(activity): \(SocketConnection.errnoText(code))")
        }
    }

    /// Waits until the socket is ready for `events` or throws a timeout at the deadline.
    private func waitFor(_ events: Int16, activity: String) throws {
        let descriptor = socketFD
        while true {
            let remaining = remainingMilliseconds()
            if remaining <= 0 { throw timeoutError(activity) }
            var pfd = pollfd(fd: descriptor, events: events, revents: 0)
            let result = poll(&pfd, 1, remaining)
            if result > 0 { return }  // ready, or HUP/ERR: the following read/write reports it
            if result < 0 && errno != EINTR {
                throw QMPError(kind: .closed, message: "\(label) socket \(socketPath): poll failed: \(SocketConnection.errnoText())")
            }
        }
    }

    /// Milliseconds left until the deadline, rounded up; 0 once it has passed.
    func remainingMilliseconds() -> Int32 {
        let left = deadline - ContinuousClock.now
        if left <= .zero { return 0 }
        let (seconds, attoseconds) = left.components
        let milliseconds = seconds * 1000 + (attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000
        return Int32(clamping: milliseconds)
    }

    func timeoutError(_ activity: String) -> QMPError {
        QMPError(
            kind: .timeout,
            message: "\(label) timed out after \(SocketConnection.format(timeout)) \(activity) (socket \(socketPath))")
    }

    private func connectError(_ code: Int32) -> QMPError {
        var hint = ""
        if code == ENOENT { hint = " (no such socket: is the VM running?)" }
        if code == ECONNREFUSED { hint = " (nothing is listening: is the VM running?)" }
        return QMPError(
            kind: .connect,
            message: "cannot connect to \(label) socket \(socketPath): \(SocketConnection.errnoText(code))\(hint)")
    }

    static func errnoText(_ code: Int32 = errno) -> String {
        String(cString: strerror(code))
    }

    /// "5 s", "1.5 s", "0.25 s".
    static func format(_ duration: Duration) -> String {
        let (seconds, attoseconds) = duration.components
        let value = Double(seconds) + Double(attoseconds) / 1e18
        if value == value.rounded() { return "\(Int64(value)) s" }
        return "\((value * 1000).rounded() / 1000) s"
    }
}
