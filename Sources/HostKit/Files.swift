import Foundation

/// Writing files safely: atomically and with an exact POSIX mode.
public enum Files {
    /// FNV-1a of a path: a short name that stays the same across restarts (socket folders, cgroups).
    public static func stableHash(_ text: String) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in text.utf8 { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
        return hash
    }

    /// Writes `data` to a temporary file beside `path` with exactly `mode` (umask ignored), fsyncs it and renames it over `path`.
    public static func writeAtomically(_ data: Data, to path: String, mode: mode_t) throws {
        let url = URL(fileURLWithPath: path)
        let directory = url.deletingLastPathComponent().path
        let temp = directory + "/." + url.lastPathComponent + ".tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"

        let fd = open(temp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        guard fd >= 0 else { throw HostKitError.errno("writing \(path): creating \(temp)") }
        var ok = false
        defer {
            if !ok { unlink(temp) }
        }
        do {
            defer { close(fd) }
            guard fchmod(fd, mode) == 0 else { throw HostKitError.errno("writing \(path): fchmod") }
            try data.withUnsafeBytes { (raw: UnsafeRawBufferPointer) in
                var offset = 0
                while offset < raw.count {
                    let n = write(fd, raw.baseAddress! + offset, raw.count - offset)
                    if n > 0 {
                        offset += n
                    } else if n < 0 && errno == EINTR {
                        continue
                    } else {
                        throw HostKitError.errno("writing \(path)")
                    }
                }
            }
            guard fsync(fd) == 0 else { throw HostKitError.errno("writing \(path): fsync") }
        }
        guard rename(temp, path) == 0 else { throw HostKitError.errno("writing \(path): rename") }
        ok = true
        // Make the rename itself durable; failure here is not worth an error.
        let dirFD = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dirFD >= 0 {
            _ = fsync(dirFD)
            close(dirFD)
        }
    }

    /// Creates `path` and missing parents (like mkdir -p); directories it creates get exactly `mode`, existing ones are left as they are.
    public static func ensureDirectory(_ path: String, mode: mode_t = 0o755) throws {
        guard !path.isEmpty else { throw HostKitError(kind: .failed, message: "ensureDirectory: empty path") }
        var current = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            current += "/" + component
            var st = stat()
            if stat(current, &st) == 0 {
                guard (st.st_mode & S_IFMT) == S_IFDIR else {
                    throw HostKitError(kind: .failed, message: "ensureDirectory \(path): \(current) exists and is not a directory")
                }
                continue
            }
            if mkdir(current, mode) != 0 {
                if errno == EEXIST { continue }   // raced with someone else
                throw HostKitError.errno("ensureDirectory \(path): mkdir \(current)")
            }
            _ = chmod(current, mode)   // mkdir applies the umask; we want the mode as asked
        }
    }
}
