import Foundation
import HostKit
import Testing
import TestSupport

extension RealGuests {
/// CPU and memory QoS on real guests, measured as an operator would: CPU time of the QEMU
/// processes on the host, memory as the guest itself sees it.
@Suite("QoS")
struct QoSTests {
    /// A VM's cgroup directory for one controller, from /proc/<pid>/cgroup (v1 lines name their
    /// controller; v2 has the single "0::" line).
    static func cgroupDirectory(pid: Int, controller: String) throws -> String {
        let lines = try String(contentsOfFile: "/proc/\(pid)/cgroup", encoding: .utf8).split(separator: "\n")
        for line in lines {
            let parts = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false).map(String.init)
            guard parts.count == 3 else { continue }
            if parts[0] == "0" && parts[1].isEmpty { return "/sys/fs/cgroup" + parts[2] }
            if parts[1].split(separator: ",").contains(Substring(controller)) { return "/sys/fs/cgroup/\(controller)" + parts[2] }
        }
        throw HarnessError("QEMU pid \(pid) is in no \(controller) cgroup: \(lines)")
    }

    static func read(_ path: String) throws -> String {
        try String(contentsOfFile: path, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Pins every thread of the process to one core (what "two guests on one core" means).
    static func pin(_ pid: Int, core: Int) async throws {
        try await Command.check("taskset", ["-a", "-p", "-c", "\(core)", "\(pid)"], timeout: .seconds(10))
    }

    /// CPU seconds each process uses over `seconds` of wall time, as a fraction of one core.
    static func coreShares(_ pids: [Int], seconds: Double) async throws -> [Double] {
        let before = pids.map { Processes.cpuSeconds(Int32($0)) ?? 0 }
        let started = ContinuousClock.now
        try await Task.sleep(for: .seconds(seconds))
        let elapsed = (ContinuousClock.now - started) / .seconds(1)
        return zip(pids, before).map { pid, start in ((Processes.cpuSeconds(Int32(pid)) ?? 0) - start) / elapsed }
    }

    @Test("two CPU-bound guests on one core with shares 2000 and 1000 get CPU within 10 % of 2:1; a limit of half a core holds within 10 %")
    func cpuSharesAndLimit() async throws {
        try await TestCluster.with(driver: "qemu") { cluster in
            let token = cluster.adminToken
            for name in ["heavy", "light"] { try #require(try await cluster.createVM(name).state == .succeeded) }
            // Set before the start: the agent applies it as QEMU starts.
            try #require(try await cluster.raw("PATCH", "/api/v1/vms/heavy/qos", token: token, body: #"{"cpuShares":2000}"#).0 == 200)
            for name in ["heavy", "light"] { try #require(try await cluster.start(name).state == .succeeded) }
            let heavy = try #require(try await cluster.vm("heavy").pid), light = try #require(try await cluster.vm("light").pid)
            let cpuGroup = try Self.cgroupDirectory(pid: heavy, controller: "cpu")
            #expect(cpuGroup.contains("/shepherd/host-1-"), "\(cpuGroup)")
            let v2 = FileManager.default.fileExists(atPath: cpuGroup + "/cpu.weight")
            #expect(try Self.read(cpuGroup + (v2 ? "/cpu.weight" : "/cpu.shares")) == (v2 ? "200" : "2048"))

            for name in ["heavy", "light"] {
                #expect(try await cluster.exec(name, ["sh", "-c", "while :; do :; done >/dev/null 2>&1 &"]).exitCode == 0)
            }
            for pid in [heavy, light] { try await Self.pin(pid, core: 0) }
            try await Task.sleep(for: .seconds(3))
            let shares = try await Self.coreShares([heavy, light], seconds: 15)
            let ratio = shares[0] / max(shares[1], 0.001)
            print("qos: on one core, shares 2000 vs 1000 got \(String(format: "%.3f", shares[0])) vs \(String(format: "%.3f", shares[1])) of the core = \(String(format: "%.2f", ratio)):1")
            #expect(abs(ratio - 2) <= 0.2, "shares 2000:1000 gave \(ratio):1 (\(shares))")

            // A limit set on the running VM, alone on the other core: half a core.
            let (limited, answer) = try await cluster.raw("PATCH", "/api/v1/vms/light/qos", token: token, body: #"{"cpuLimitMHz":500}"#)
            try #require(limited == 200, "\(answer)")
            let lightGroup = try Self.cgroupDirectory(pid: light, controller: "cpu")
            #expect(try Self.read(lightGroup + (v2 ? "/cpu.max" : "/cpu.cfs_quota_us")) == (v2 ? "50000 100000" : "50000"))
            try await Self.pin(light, core: 1)
            try await Task.sleep(for: .seconds(2))
            let alone = try await Self.coreShares([light], seconds: 10)[0]
            print("qos: a limit of 500 MHz held the guest to \(String(format: "%.3f", alone)) of a core")
            #expect(abs(alone - 0.5) <= 0.05, "a 500 MHz limit gave \(alone) of a core")

            #expect(try await cluster.stop("light", force: true).state == .succeeded)
            #expect(!FileManager.default.fileExists(atPath: lightGroup), "the VM's cgroup goes with its QEMU")
        }
    }

    @Test("a memory limit set on a running guest takes memory from it through the balloon, and removing it gives it back; the reservation protects it in its cgroup")
    func memoryLimitAndReservation() async throws {
        try await TestCluster.with(driver: "qemu") { cluster in
            let token = cluster.adminToken
            #expect(try await cluster.setCluster(#"{"memoryOvercommit":true}"#).0 == 200)
            try #require(try await cluster.createVM("ball", memoryMiB: 256).state == .succeeded)
            try #require(try await cluster.start("ball").state == .succeeded)
            func guestTotalMiB() async throws -> Int {
                let out = try await cluster.exec("ball", ["sh", "-c", "grep MemTotal /proc/meminfo"]).stdout
                return (Int(out.split(separator: " ").dropFirst().first { !$0.isEmpty }.map(String.init) ?? "") ?? 0) / 1024
            }
            let full = try await guestTotalMiB()
            try #require(full > 200, "the guest sees \(full) MiB")

            let (set, answer) = try await cluster.raw("PATCH", "/api/v1/vms/ball/qos", token: token,
                                                      body: #"{"memoryLimit":"128","memoryReservation":"96"}"#)
            try #require(set == 200, "\(answer)")
            var limited = full
            let deadline = ContinuousClock.now + .seconds(30)
            while ContinuousClock.now < deadline {
                limited = try await guestTotalMiB()
                if limited <= full - 100 { break }
                try await Task.sleep(for: .seconds(1))
            }
            print("qos: memory limit 128 MiB: the guest's MemTotal went from \(full) to \(limited) MiB")
            #expect(limited <= full - 100 && limited >= 64, "with a 128 MiB limit the guest sees \(limited) of \(full) MiB")

            let pid = try #require(try await cluster.vm("ball").pid)
            let memoryGroup = try Self.cgroupDirectory(pid: pid, controller: "memory")
            let v2 = FileManager.default.fileExists(atPath: memoryGroup + "/memory.min")
            #expect(try Self.read(memoryGroup + (v2 ? "/memory.min" : "/memory.soft_limit_in_bytes")) == "\(96 << 20)")

            #expect(try await cluster.raw("PATCH", "/api/v1/vms/ball/qos", token: token, body: #"{"memoryLimit":"0"}"#).0 == 200)
            var back = limited
            let again = ContinuousClock.now + .seconds(30)
            while ContinuousClock.now < again {
                back = try await guestTotalMiB()
                if back >= full - 8 { break }
                try await Task.sleep(for: .seconds(1))
            }
            #expect(back >= full - 8, "without the limit the guest sees \(back) of \(full) MiB again")
        }
    }

    @Test("hibernate then start: the guest's QEMU is gone meanwhile, and it resumes in the same boot with its RAM-only counter going on")
    func hibernateAndResume() async throws {
        try await TestCluster.with(driver: "qemu") { cluster in
            try #require(try await cluster.createVM("sleeper").state == .succeeded)
            try #require(try await cluster.start("sleeper").state == .succeeded)
            // /run is a tmpfs: the counter lives in the guest's RAM only.
            #expect(try await cluster.exec("sleeper", ["sh", "-c", "(i=0; while :; do i=$((i+1)); echo $i > /run/counter; usleep 200000 || sleep 1; done) >/dev/null 2>&1 &"]).exitCode == 0)
            func counter() async throws -> Int {
                Int(try await cluster.exec("sleeper", ["cat", "/run/counter"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
            }
            try await Task.sleep(for: .seconds(2))
            let boot = try await cluster.exec("sleeper", ["cat", "/proc/sys/kernel/random/boot_id"]).stdout
            let pid = try #require(try await cluster.vm("sleeper").pid)
            let before = try await counter()
            let hibernated = try await cluster.hibernate("sleeper")
            try #require(hibernated.state == .succeeded, "\(hibernated.message)")
            print("hibernate: \(hibernated.message)")
            let vm = try await cluster.vm("sleeper")
            let file = (vm.diskPath as NSString).deletingLastPathComponent + "/hibernated.state"
            #expect(vm.state == .hibernated && !Processes.isAlive(Int32(pid)) && FileManager.default.fileExists(atPath: file))

            try await Task.sleep(for: .seconds(3))
            try #require(try await cluster.start("sleeper").state == .succeeded)
            let after = try await counter()
            #expect(try await cluster.exec("sleeper", ["cat", "/proc/sys/kernel/random/boot_id"]).stdout == boot, "the same boot: resumed, not rebooted")
            #expect(after >= before && after < before + 40, "the counter went on from \(before), not from 0 and not through the sleep: \(after)")
            try await Task.sleep(for: .seconds(2))
            #expect(try await counter() > after, "and it keeps counting")
            #expect(!FileManager.default.fileExists(atPath: file), "the saved memory is consumed by the resume")
        }
    }

    /// The guest's MemTotal in MiB (what the balloon leaves it).
    static func guestTotalMiB(_ cluster: TestCluster, _ vm: String) async throws -> Int {
        let out = try await cluster.exec(vm, ["sh", "-c", "grep MemTotal /proc/meminfo"]).stdout
        return (Int(out.split(separator: " ").dropFirst().first { !$0.isEmpty }.map(String.init) ?? "") ?? 0) / 1024
    }

    /// Polls until `condition` holds for the guest's MemTotal; returns it and the seconds waited.
    static func waitForTotal(_ cluster: TestCluster, _ vm: String, seconds: Int, _ condition: (Int) -> Bool) async throws -> (Int, Double) {
        let started = ContinuousClock.now
        var total = try await guestTotalMiB(cluster, vm)
        while !condition(total), ContinuousClock.now - started < .seconds(seconds) {
            try await Task.sleep(for: .seconds(1))
            total = try await guestTotalMiB(cluster, vm)
        }
        return (total, (ContinuousClock.now - started) / .seconds(1))
    }

    @Test("on a host short of memory the balloon controller takes memory from an idle guest, never from one its reservation protects, and hands it to a guest that fills its memory")
    func balloonController() async throws {
        // 1280 MiB host: 768 MiB for VMs; two 512 MiB guests only fit with overcommit.
        try await TestCluster.with(driver: "qemu", agentArguments: ["host-1": ["--memory", "1280"]]) { cluster in
            let token = cluster.adminToken
            #expect(try await cluster.setCluster(#"{"memoryOvercommit":true}"#).0 == 200)
            for name in ["keeper", "idle"] { try #require(try await cluster.createVM(name, memoryMiB: 512).state == .succeeded) }
            try #require(try await cluster.raw("PATCH", "/api/v1/vms/keeper/qos", token: token, body: #"{"memoryReservation":"448"}"#).0 == 200)
            for name in ["keeper", "idle"] {
                let started = try await cluster.start(name)
                try #require(started.state == .succeeded, "\(name): \(started.message) \(started.error?.message ?? "")")
            }
            // Both guests have the same size; the reserved one keeps all of it while the idle one is ballooned down.
            let started = ContinuousClock.now
            var (keeperFull, idleShrunk) = (0, 0)
            while ContinuousClock.now - started < .seconds(60) {
                (keeperFull, idleShrunk) = (try await Self.guestTotalMiB(cluster, "keeper"), try await Self.guestTotalMiB(cluster, "idle"))
                if idleShrunk <= keeperFull - 150 { break }
                try await Task.sleep(for: .seconds(1))
            }
            let shrinkSeconds = (ContinuousClock.now - started) / .seconds(1)
            #expect(idleShrunk <= keeperFull - 150, "the idle guest has \(idleShrunk) MiB, the reserved one \(keeperFull) MiB")
            try await Task.sleep(for: .seconds(8))
            let keeperNow = try await Self.guestTotalMiB(cluster, "keeper")
            print("balloon: idle guest down to \(idleShrunk) MiB within \(String(format: "%.0f", shrinkSeconds)) s of both running; the reserved guest keeps \(keeperFull) → \(keeperNow) MiB")
            #expect(keeperNow >= keeperFull - 16, "the reserved guest lost memory: \(keeperNow) of \(keeperFull) MiB")
            let events = try await cluster.events().filter { $0.kind == "host.balloon" }
            #expect(events.contains { $0.message.contains("idle 512→") }, "\(events.map(\.message))")

            // Without the reservation both idle guests share the host alike; then one fills its memory.
            try #require(try await cluster.raw("PATCH", "/api/v1/vms/keeper/qos", token: token, body: #"{"memoryReservation":"0"}"#).0 == 200)
            let (keeperShared, _) = try await Self.waitForTotal(cluster, "keeper", seconds: 60) { $0 <= keeperFull - 80 }
            #expect(keeperShared <= keeperFull - 80, "without a reservation the idle keeper gives memory back too: \(keeperShared) of \(keeperFull) MiB")
            let fill = "mkdir -p /run/fill && mount -t tmpfs -o size=400m tmpfs /run/fill && " + fillMemory(256, file: "/run/fill/data")
            let filled = try await cluster.exec("keeper", ["sh", "-c", fill])
            #expect(filled.exitCode == 0, "\(filled.stderr)")
            let (keeperGrown, growSeconds) = try await Self.waitForTotal(cluster, "keeper", seconds: 90) { $0 >= keeperShared + 100 }
            let idleAfter = try await Self.guestTotalMiB(cluster, "idle")
            print("balloon: the busy guest grew \(keeperShared) → \(keeperGrown) MiB \(String(format: "%.0f", growSeconds)) s after filling 256 MiB; the idle one has \(idleAfter) MiB")
            #expect(keeperGrown >= keeperShared + 100, "the busy guest got \(keeperGrown - keeperShared) MiB more")
            #expect(idleAfter < keeperGrown - 150, "the idle guest (\(idleAfter) MiB) gave way to the busy one (\(keeperGrown) MiB)")
        }
    }

    @Test("a host of 1 GiB runs guests adding up to 150 % of its memory for VMs, each with a swap disk of the seed's size, all answering within 2 s while one fills its memory; identical guests share pages through KSM")
    func overcommittedHost() async throws {
        // 1024 MiB host: 512 MiB for VMs; three 256 MiB guests are 150 % of it.
        try await TestCluster.with(driver: "qemu", agentArguments: ["host-1": ["--memory", "1024", "--ksm", "on"]]) { cluster in
            #expect(try await cluster.setCluster(#"{"memoryOvercommit":true,"overcommitRatioPercent":150}"#).0 == 200)
            let names = ["oc1", "oc2", "oc3"]
            for name in names { try #require(try await cluster.createVM(name, memoryMiB: 256).state == .succeeded) }
            for name in names {
                let started = try await cluster.start(name)
                try #require(started.state == .succeeded, "\(name): \(started.message) \(started.error?.message ?? "")")
            }
            let swaps = Swap.active().filter { $0.hasPrefix(cluster.directory + "/") }
            #expect(swaps.count == 3 && swaps.allSatisfy { $0.hasSuffix("/swap-host-1.img") }, "\(swaps)")
            for path in swaps {
                let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
                #expect(size == 1 << 30, "\(path): \(size) bytes; the seed's formula gives 1 GiB for 256 MiB")
            }

            // One guest fills its memory while every guest is asked something each second.
            let fill = "mkdir -p /run/fill && mount -t tmpfs -o size=400m tmpfs /run/fill && " + fillMemory(170, file: "/run/fill/data")
            #expect(try await cluster.exec("oc1", ["sh", "-c", "(\(fill)) >/dev/null 2>&1 &"]).exitCode == 0)
            var slowest = 0.0
            for _ in 0..<25 {
                for name in names {
                    let asked = ContinuousClock.now
                    let answer = try await cluster.exec(name, ["cat", "/proc/loadavg"])
                    slowest = max(slowest, (ContinuousClock.now - asked) / .seconds(1))
                    #expect(answer.exitCode == 0)
                }
                try await Task.sleep(for: .seconds(1))
            }
            let filled = try await cluster.exec("oc1", ["sh", "-c", "du -m /run/fill/data | cut -f1"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            let host = try await cluster.host("host-1")
            print("overcommit: 768 MiB of guests on a 1024 MiB host (512 for VMs); oc1 filled \(filled) MiB; slowest answer \(String(format: "%.2f", slowest)) s; KSM saves \(host.ksmSavedMiB ?? 0) MiB")
            #expect(slowest < 2, "a guest took \(slowest) s to answer")
            #expect(Int(filled) ?? 0 >= 160, "oc1 filled \(filled) MiB")
            for name in names { #expect(try await cluster.vm(name).state == .running, "\(name) still runs") }

            // Identical guests: KSM finds their common pages (machine-wide counter).
            var saved = host.ksmSavedMiB ?? 0
            let deadline = ContinuousClock.now + .seconds(90)
            while saved == 0, ContinuousClock.now < deadline {
                try await Task.sleep(for: .seconds(3))
                saved = try await cluster.host("host-1").ksmSavedMiB ?? 0
            }
            #expect(saved > 0, "KSM saved nothing with three identical guests")

            // The swapoff and the deletion run after the task (a swapoff can take minutes).
            func eventually(_ condition: () -> Bool) async throws -> Bool {
                for _ in 0..<50 where !condition() { try await Task.sleep(for: .milliseconds(200)) }
                return condition()
            }
            #expect(try await cluster.stop("oc3", force: true).state == .succeeded)
            let oc3Swap = try #require(swaps.first { $0.contains("/oc3-") })
            #expect(try await eventually { !Swap.active().contains(oc3Swap) } && FileManager.default.fileExists(atPath: oc3Swap),
                    "stopped: its swap is off, the disk stays")
            #expect(try await cluster.delete("oc3").state == .succeeded)
            #expect(try await eventually { !FileManager.default.fileExists(atPath: oc3Swap) }, "deleted with the VM")
        }
    }

    @Test("a running guest grows online: hot-added vCPUs show in nproc, memory in /proc/meminfo; it migrates with them and boots with them next time")
    func onlineResize() async throws {
        try await TestCluster.with(driver: "qemu", hosts: 2) { cluster in
            let token = cluster.adminToken
            let (created, answer) = try await cluster.raw("POST", "/api/v1/vms", token: token,
                                                          body: #"{"name":"grow","cpus":1,"memoryMiB":192,"maxCpus":2,"maxMemoryMiB":384,"host":"host-1"}"#)
            try #require(created == 202, "\(answer)")
            _ = try await cluster.waitForVM("grow") { $0.state == .stopped }
            try #require(try await cluster.start("grow").state == .succeeded)
            func nproc() async throws -> String { try await cluster.exec("grow", ["nproc"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines) }
            #expect(try await nproc() == "1")
            let memoryBefore = try await Self.guestTotalMiB(cluster, "grow")

            let (resized, vm) = try await cluster.raw("PATCH", "/api/v1/vms/grow", token: token, body: #"{"cpus":2,"memoryMiB":320}"#)
            try #require(resized == 200, "\(vm)")
            #expect(vm.replacingOccurrences(of: " ", with: "").contains(#""onlineCpus":2"#), "\(vm)")
            #expect(try await nproc() == "2")
            let (memoryAfter, _) = try await Self.waitForTotal(cluster, "grow", seconds: 30) { $0 >= memoryBefore + 100 }
            print("resize: 1 → 2 vCPU online; MemTotal \(memoryBefore) → \(memoryAfter) MiB")
            #expect(memoryAfter >= memoryBefore + 100, "the guest sees \(memoryAfter) MiB after growing from \(memoryBefore)")

            let (refused, why) = try await cluster.raw("PATCH", "/api/v1/vms/grow", token: token, body: #"{"memoryMiB":512}"#)
            #expect(refused == 400 && why.contains("beyond the maximum of 384 MiB"), "\(why)")

            let migrated = try await cluster.migrate("grow", to: "host-2")
            #expect(migrated.state == .succeeded, "\(migrated.message) \(migrated.error?.message ?? "")")
            #expect(try await nproc() == "2", "the hot-added vCPU moved with it")
            #expect(try await Self.guestTotalMiB(cluster, "grow") >= memoryBefore + 100)

            #expect(try await cluster.stop("grow", force: true).state == .succeeded)
            try #require(try await cluster.start("grow").state == .succeeded)
            #expect(try await nproc() == "2", "it boots with its new size")
        }
    }
}
}
