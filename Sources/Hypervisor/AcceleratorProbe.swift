import Foundation
import HostKit

/// Decides between KVM and TCG by booting for real: `/dev/kvm` can exist while KVM guests hang
/// (broken nested virtualization; even the firmware runs, so only a kernel boot tells). The probe
/// boots the guest kernel with no root disk under KVM: a working KVM reaches the kernel's
/// "unable to mount root" panic in well under the timeout.
public enum AcceleratorProbe {
    /// "kvm" when a KVM guest kernel really boots, else "tcg". Cached until the host reboots.
    public static func choose(kernel: String?, qemuBinary: String = "qemu-system-x86_64",
                              cacheFile: String = "/run/shepherd/accelerator", timeout: Duration = .seconds(10)) async -> String {
        if let cached = try? String(contentsOfFile: cacheFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines),
           cached == "kvm" || cached == "tcg" {
            return cached
        }
        guard let kernel else { return "tcg" }
        let answer = await kernelBoots(kernel: kernel, accelerator: "kvm", qemuBinary: qemuBinary, timeout: timeout) ? "kvm" : "tcg"
        try? Files.ensureDirectory((cacheFile as NSString).deletingLastPathComponent, mode: 0o755)
        try? Files.writeAtomically(Data((answer + "\n").utf8), to: cacheFile, mode: 0o644)
        return answer
    }

    /// Boots `kernel` without a root disk and reports whether it got as far as looking for one.
    public static func kernelBoots(kernel: String, accelerator: String, qemuBinary: String = "qemu-system-x86_64",
                                   timeout: Duration) async -> Bool {
        if accelerator == "kvm", !FileManager.default.fileExists(atPath: "/dev/kvm") { return false }
        let directory = NSTemporaryDirectory() + "shepherd-probe-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        guard (try? Files.ensureDirectory(directory, mode: 0o700)) != nil else { return false }
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let console = directory + "/console.log"
        let argv = ["-accel", accelerator, "-cpu", accelerator == "kvm" ? "host" : "max", "-m", "128",
                    "-nodefaults", "-no-user-config", "-display", "none", "-kernel", kernel,
                    "-append", "console=ttyS0 panic=-1 root=/dev/nonexistent", "-serial", "file:\(console)", "-no-reboot"]
        guard let child = try? ChildProcess.spawn(qemuBinary, argv, logFile: directory + "/qemu.log") else { return false }
        let started = ContinuousClock.now
        var booted = false
        while ContinuousClock.now - started < timeout {
            if let text = try? String(contentsOfFile: console, encoding: .utf8),
               text.contains("VFS: Unable to mount root") || text.contains("Kernel panic") {
                booted = true
                break
            }
            if !child.isRunning { break }
            try? await Task.sleep(for: .milliseconds(100))
        }
        await child.terminate(grace: .seconds(2))
        return booted
    }

    /// The first guest kernel found under the datastores' templates, to probe with.
    public static func findKernel(in datastores: [String]) -> String? {
        for root in datastores {
            let templates = root + "/templates"
            for name in ((try? FileManager.default.contentsOfDirectory(atPath: templates)) ?? []).sorted() {
                let kernel = "\(templates)/\(name)/vmlinuz"
                if FileManager.default.fileExists(atPath: kernel) { return kernel }
            }
        }
        return nil
    }
}
