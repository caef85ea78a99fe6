import Foundation

/// A VM's swap disk used as host swap (the seed's 内存交换): a file with every block allocated
/// (the kernel refuses swap files with holes), made a swap area and switched on, so pages the
/// host's memory cgroup pushes out of its VMs land on the VM's datastore.
public enum Swap {
    /// Swap files switched on now (from /proc/swaps).
    public static func active() -> Set<String> {
        let text = (try? String(contentsOfFile: "/proc/swaps", encoding: .utf8)) ?? ""
        return Set(text.split(separator: "\n").dropFirst().compactMap { line in
            line.split(separator: " ", omittingEmptySubsequences: true).first.map(String.init)
        })
    }

    /// Makes the file (when missing) and switches it on (when not on yet).
    public static func enable(path: String, sizeBytes: UInt64) async throws {
        guard !active().contains(path) else { return }
        if !FileManager.default.fileExists(atPath: path) {
            let partial = path + ".partial"
            let fd = open(partial, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
            guard fd >= 0 else { throw HostKitError.errno("swap: creating \(partial)") }
            let allocated = posix_fallocate(fd, 0, off_t(sizeBytes))
            close(fd)
            guard allocated == 0 else {
                unlink(partial)
                throw HostKitError(kind: .failed, message: "swap: allocating \(sizeBytes >> 20) MiB for \(path): \(String(cString: strerror(allocated)))")
            }
            do {
                try await Command.check("mkswap", [partial], timeout: .seconds(60))
            } catch {
                unlink(partial)
                throw error
            }
            guard rename(partial, path) == 0 else { throw HostKitError.errno("swap: renaming \(partial)") }
        }
        try await Command.check("swapon", [path], timeout: .seconds(60))
    }

    /// Switches the file off; its pages come back into memory first.
    public static func disable(path: String) async throws {
        if active().contains(path) { try await Command.check("swapoff", [path], timeout: .seconds(300)) }
    }

    /// Switches the file off and deletes it.
    public static func remove(path: String) async throws {
        try await disable(path: path)
        try? FileManager.default.removeItem(atPath: path)
    }
}
