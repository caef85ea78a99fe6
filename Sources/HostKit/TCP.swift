import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Small TCP facts about this host's network (IPv4).
public enum TCP {
    /// Ports this process handed out lately: the kernel may give a port that was just released
    /// to the next `bind(0)`, so two callers that pick a port before either binds it (two
    /// incoming migrations; two test clusters starting at once) could otherwise get the same one.
    private static let recent = Locked<[Int]>([])

    /// A port free right now on `address` (bound to port 0, read back, released), not one this
    /// process handed out among its last 256.
    public static func freePort(on address: String = "127.0.0.1") throws -> Int {
        for _ in 0..<32 {
            let port = try probeFreePort(on: address)
            let fresh = recent.withLock { ports -> Bool in
                guard !ports.contains(port) else { return false }
                ports.append(port)
                if ports.count > 256 { ports.removeFirst(ports.count - 256) }
                return true
            }
            if fresh { return port }
        }
        throw HostKitError(kind: .failed, message: "no free port on \(address) that this process has not just handed out")
    }

    private static func probeFreePort(on address: String) throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw HostKitError(kind: .failed, message: "socket(): errno \(errno)") }
        defer { close(fd) }
        var socketAddress = try ipv4(address, port: 0)
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &socketAddress) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard ok else { throw HostKitError(kind: .failed, message: "no free port on \(address): errno \(errno)") }
        return Int(UInt16(bigEndian: socketAddress.sin_port))
    }

    /// Whether a TCP connection to `address:port` opens within `timeout` (on a dedicated thread).
    public static func reachable(_ address: String, port: Int, timeout: Duration) async -> (Bool, String) {
        await withCheckedContinuation { continuation in
            Thread.detachNewThread {
                continuation.resume(returning: connectOnce(address, port: port, timeout: timeout))
            }
        }
    }

    private static func connectOnce(_ address: String, port: Int, timeout: Duration) -> (Bool, String) {
        guard var socketAddress = try? ipv4(address, port: port) else { return (false, "'\(address)' is not an IPv4 address") }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { return (false, "socket(): errno \(errno)") }
        defer { close(fd) }
        let started = withUnsafePointer(to: &socketAddress) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if started == 0 { return (true, "connected") }
        guard errno == EINPROGRESS else { return (false, "connect to \(address):\(port) failed: \(String(cString: strerror(errno)))") }
        var descriptor = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
        let milliseconds = Int32(timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000)
        let ready = poll(&descriptor, 1, milliseconds)
        if ready == 0 { return (false, "no answer from \(address):\(port) within \(milliseconds) ms") }
        var failure: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &failure, &length)
        return failure == 0 ? (true, "connected") : (false, "connect to \(address):\(port) failed: \(String(cString: strerror(failure)))")
    }

    private static func ipv4(_ address: String, port: Int) throws -> sockaddr_in {
        var result = sockaddr_in()
        result.sin_family = sa_family_t(AF_INET)
        result.sin_port = UInt16(port).bigEndian
        guard inet_pton(AF_INET, address, &result.sin_addr) == 1 else {
            throw HostKitError(kind: .failed, message: "'\(address)' is not an IPv4 address")
        }
        return result
    }
}
