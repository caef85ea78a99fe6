import Testing
@testable import ShepherdCore

@Suite("VM sizing")
struct SizingTests {
    let started = VMSize(cpus: 2, memoryMiB: 256, maxCpus: 4, maxMemoryMiB: 512)

    @Test("a running VM grows within the maximums it started with; its memory may also shrink down to its reservation")
    func online() throws {
        #expect(try started.applying(SizeChange(cpus: 4, memoryMiB: 512), vm: "v", running: true) == VMSize(cpus: 4, memoryMiB: 512, maxCpus: 4, maxMemoryMiB: 512))
        #expect(try started.applying(SizeChange(memoryMiB: 128), vm: "v", running: true, floorMiB: 128).memoryMiB == 128)
    }

    @Test("each online rule refuses naming the field and the numbers", arguments: [
        (SizeChange(cpus: 1), "cpus: a running VM only gains vCPUs ('v' has 2, asked 1)"),
        (SizeChange(cpus: 5), "cpus: 5 vCPUs is beyond the maximum of 4"),
        (SizeChange(memoryMiB: 600), "memoryMiB: 600 MiB is beyond the maximum of 512 MiB"),
        (SizeChange(memoryMiB: 100), "memoryMiB: 100 MiB is below 128 MiB"),
        (SizeChange(maxCpus: 8), "maxCpus: 'v' runs; QEMU fixed its maximum of 4 vCPUs at start (asked 8)"),
        (SizeChange(maxMemoryMiB: 1024), "maxMemoryMiB: 'v' runs"),
        (SizeChange(cpus: 65), "cpus: 65 is outside 1–64"),
    ])
    func onlineRules(change: SizeChange, message: String) {
        let error = #expect(throws: ShepherdError.self) { try started.applying(change, vm: "v", running: true, floorMiB: 128) }
        #expect(error?.message.contains(message) == true, "\(error?.message ?? "")")
    }

    @Test("off, any valid size goes, and a value beyond its maximum raises the maximum unless the change names one below it")
    func offline() throws {
        #expect(try started.applying(SizeChange(cpus: 1, memoryMiB: 1024), vm: "v", running: false) == VMSize(cpus: 1, memoryMiB: 1024, maxCpus: 4, maxMemoryMiB: 1024))
        #expect(try started.applying(SizeChange(maxCpus: 8), vm: "v", running: false).maxCpus == 8)
        let error = #expect(throws: ShepherdError.self) { try started.applying(SizeChange(cpus: 6, maxCpus: 5), vm: "v", running: false) }
        #expect(error?.message == "maxCpus: 5 is below the 6 vCPUs of 'v'")
        #expect(try VMSize.validated(cpus: 2, memoryMiB: 256, maxCpus: nil, maxMemoryMiB: 1024) == VMSize(cpus: 2, memoryMiB: 256, maxCpus: 2, maxMemoryMiB: 1024))
        #expect(throws: ShepherdError.self) { try VMSize.validated(cpus: 2, memoryMiB: 256, maxCpus: 1, maxMemoryMiB: nil) }
    }
}
