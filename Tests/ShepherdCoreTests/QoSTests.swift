import Testing
@testable import ShepherdCore

@Suite("VM QoS and the overcommit switch")
struct QoSTests {
    let base = VMQoS(memoryReservationMiB: 0)

    @Test("memory amounts read as MiB, GiB or a share of the VM", arguments: [
        ("512", 512), ("512MiB", 512), ("2GiB", 2048), ("1G", 1024), ("100%", 1024), ("50%", 512), ("0", 0), ("33%", 338),
    ])
    func amounts(text: String, mib: Int) throws {
        #expect(try MemoryAmount.parse(text, field: "f").mib(of: 1024) == mib)
    }

    @Test("bad memory amounts name the field", arguments: ["abc", "-5", "101%", "x%", ""])
    func badAmounts(text: String) {
        let error = #expect(throws: ShepherdError.self) { try MemoryAmount.parse(text, field: "memoryReservation") }
        #expect(error?.message.hasPrefix("memoryReservation:") == true, "\(error?.message ?? "")")
    }

    @Test("a change keeps what it does not name, and a limit of 0 or of the whole VM means none")
    func keepsAndClears() throws {
        let limited = try QoSChange(cpuShares: 2000, cpuLimitMHz: 500, memoryLimit: .mib(128))
            .applied(to: base, vm: "v", cpus: 2, memoryMiB: 256, overcommit: true)
        #expect(limited == VMQoS(cpuShares: 2000, cpuLimitMHz: 500, memoryReservationMiB: 0, memoryLimitMiB: 128))
        let cleared = try QoSChange(cpuLimitMHz: 0, memoryLimit: .percent(100)).applied(to: limited, vm: "v", cpus: 2, memoryMiB: 256, overcommit: true)
        #expect(cleared == VMQoS(cpuShares: 2000, memoryReservationMiB: 0))
        #expect(try QoSChange(cpuLimitMHz: 2000).applied(to: base, vm: "v", cpus: 2, memoryMiB: 256, overcommit: true).cpuLimitMHz == nil)
    }

    @Test("each rule refuses with the field and the numbers", arguments: [
        (QoSChange(cpuShares: 0), "cpuShares: 0 is outside 1–100000"),
        (QoSChange(cpuReservationMHz: 2001), "cpuReservationMHz: 2001 MHz is outside 0–2000 MHz (2 vCPU"),
        (QoSChange(cpuLimitMHz: 49), "cpuLimitMHz: 49 MHz is outside 50–2000 MHz"),
        (QoSChange(cpuReservationMHz: 800, cpuLimitMHz: 700), "the CPU limit 700 MHz of 'v' is below its reservation 800 MHz"),
        (QoSChange(memoryReservation: .mib(300)), "memoryReservation: 300 MiB is outside 0–256 MiB"),
        (QoSChange(memoryLimit: .mib(63)), "memoryLimit: 63 MiB is outside 64–256 MiB"),
        (QoSChange(memoryReservation: .mib(200), memoryLimit: .mib(100)), "the memory limit 100 MiB of 'v' is below its reservation 200 MiB"),
    ])
    func rules(change: QoSChange, message: String) {
        let error = #expect(throws: ShepherdError.self) { try change.applied(to: base, vm: "v", cpus: 2, memoryMiB: 256, overcommit: true) }
        #expect(error?.message.contains(message) == true, "\(error?.message ?? "")")
    }

    @Test("without overcommit a VM reserves all its memory and has no memory limit")
    func overcommitOff() throws {
        let full = VMQoS.defaults(memoryMiB: 256, overcommit: false)
        #expect(full.memoryReservationMiB == 256 && VMQoS.defaults(memoryMiB: 256, overcommit: true).memoryReservationMiB == 0)
        for change in [QoSChange(memoryReservation: .percent(50)), QoSChange(memoryLimit: .mib(128))] {
            let error = #expect(throws: ShepherdError.self) { try change.applied(to: full, vm: "v", cpus: 1, memoryMiB: 256, overcommit: false) }
            #expect(error?.code == .preflightFailed && error?.message.contains("memory overcommit is off") == true, "\(error?.message ?? "")")
        }
        #expect(try QoSChange(cpuShares: 500).applied(to: full, vm: "v", cpus: 1, memoryMiB: 256, overcommit: false).cpuShares == 500)
    }

    @Test("turning overcommit off names every running VM that reserves less than its memory, and the fix")
    func turningOff() throws {
        try MemoryOvercommit.checkTurningOff(cluster: "c", running: [.init(vm: "full", memoryMiB: 256, reservationMiB: 256)])
        let error = #expect(throws: ShepherdError.self) {
            try MemoryOvercommit.checkTurningOff(cluster: "c", running: [
                .init(vm: "full", memoryMiB: 256, reservationMiB: 256), .init(vm: "half", memoryMiB: 256, reservationMiB: 128),
                .init(vm: "capped", memoryMiB: 512, reservationMiB: 512, limitMiB: 300),
            ])
        }
        let message = error?.message ?? ""
        #expect(message.contains("2 running VM(s)") && message.contains("'half' reserves 128 of 256 MiB")
                && message.contains("'capped' reserves 512 of 512 MiB, limited to 300 MiB") && !message.contains("'full'"), "\(message)")
        #expect(message.hasSuffix("shepherd vm qos set --cluster c --memory-reservation 100% --memory-limit 0"), "\(message)")
    }

    @Test("a VM's swap disk has the seed's size: ceil((memory_GB × 1024 + 128) × 11 / 10240) GB", arguments: [
        (128, 1), (512, 1), (802, 1), (803, 2), (1024, 2), (4096, 5), (8192, 9), (65_536, 71),
    ])
    func swapDisk(memoryMiB: Int, gib: Int) {
        #expect(SwapDisk.sizeGiB(memoryMiB: memoryMiB) == gib)
    }

    @Test("KSM scans harder as the host's memory fills", arguments: [(0.1, 100), (0.49, 100), (0.5, 500), (0.8, 1000), (0.95, 2000)])
    func ksmRate(used: Double, pages: Int) {
        #expect(KSMPolicy.pagesToScan(usedFraction: used) == pages)
    }

    @Test("shares and limits map onto both cgroup versions", arguments: [
        (1000, nil as Int?, 1024, 100, nil as Int?), (2000, 500, 2048, 200, 50_000), (1, 50, 2, 1, 5000), (100_000, 3000, 102_400, 10_000, 300_000),
    ])
    func cgroupValues(shares: Int, limit: Int?, v1: Int, v2: Int, quota: Int?) {
        let qos = VMQoS(cpuShares: shares, cpuLimitMHz: limit, memoryReservationMiB: 0)
        #expect(qos.cgroupV1CPUShares == v1 && qos.cgroupV2CPUWeight == v2 && qos.cfsQuotaMicros == quota)
    }
}
