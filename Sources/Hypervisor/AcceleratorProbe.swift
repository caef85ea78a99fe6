import Foundation
import HostKit

/// Decides between KVM and TCG by booting for real: `/dev/kvm` can exist while KVM guests hang
/// (broken nested virtualization). The probe starts QEMU with KVM and no disk; SeaBIOS prints
/// its banner to the debug console within a fraction of a second when guest code runs.
public enum AcceleratorProbe {
    /// "kvm" when a KVM guest really runs, else "tcg". The answer is cached until the host reboots.
    public static func choose(qemuBinary: String = "qemu-system-x86_64", cacheFile: String = "/run/shepherd/accelerator",
                              timeout: Duration = .seconds(5)) async -> String {
        if let cached = try? String(contentsOfFile: cacheFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines),
           cached == "kvm" || cached == "tcg" {
            return cached
        }
        let answer = await kvmRuns(qemuBinary: qemuBinary, timeout: timeout) ? "kvm" : "tcg"
        try? Files.ensureDirectory((cacheFile as NSString).deletingLastPathComponent, mode: 0o755)
        try? Files.writeAtomically(Data((answer + "\n").utf8), to: cacheFile, mode: 0o644)
        return answer
    }

    /// Boots SeaBIOS under KVM and waits for its banner on the debug console.
    public static func kvmRuns(qemuBinary: String = "qemu-system-x86_64", timeout: Duration = .seconds(5)) async -> Bool {
        guard FileManager.default.fileExists(atPath: "/dev/kvm") else { return false }
        return await bannerAppears(qemuBinary: qemuBinary, accelerator: "kvm", timeout: timeout)
    }

    /// Starts QEMU with `accelerator` and reports whether guest code ran (SeaBIOS's banner) in time.
    public static func bannerAppears(qemuBinary: String, accelerator: String, timeout: Duration) async -> Bool {
        let directory = NSTemporaryDirectory() + "shepherd-probe-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        guard (try? Files.ensureDirectory(directory, mode: 0o700)) != nil else { return false }
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let debugLog = directory + "/debugcon.log"
        let argv = ["-accel", accelerator, "-m", "32", "-nodefaults", "-no-user-config", "-display", "none",
                    "-chardev", "file,id=dbg,path=\(debugLog)", "-device", "isa-debugcon,iobase=0x402,chardev=dbg", "-no-reboot"]
        guard let child = try? ChildProcess.spawn(qemuBinary, argv, logFile: directory + "/qemu.log") else { return false }
        let started = ContinuousClock.now
        var seen = false
        while ContinuousClock.now - started < timeout, child.isRunning {
            if let text = try? String(contentsOfFile: debugLog, encoding: .utf8), text.contains("SeaBIOS") { seen = true; break }
            try? await Task.sleep(for: .milliseconds(100))
        }
        await child.terminate(grace: .seconds(2))
        return seen
    }
}
