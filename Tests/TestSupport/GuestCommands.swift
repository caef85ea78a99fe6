import Foundation

/// A shell command that fills `mib` MiB of the guest's RAM (tmpfs) with non-zero data: one random
/// MiB repeated (random data is slow to make under TCG; QEMU skips only zero pages, so repeated
/// random pages cost the link as much as fresh ones).
public func fillMemory(_ mib: Int, file: String = "/run/fill") -> String {
    "dd if=/dev/urandom of=\(file).seed bs=1M count=1 2>/dev/null && rm -f \(file) && for i in $(seq \(mib)); do cat \(file).seed >> \(file); done"
}

