import Testing
import ShepherdCore
@testable import Scheduling

private func host(_ name: String, _ state: HostState = .connected, cores: Int = 4, total: Int = 4096, allocated: Int = 0,
                  datastores: Set<String> = ["shared"]) -> HostCandidate {
    HostCandidate(id: "id-\(name)", name: name, state: state, cores: cores, memoryTotalMiB: total,
                  memoryAllocatedMiB: allocated, datastores: datastores)
}

@Suite("Placement")
struct PlacementTests {
    let placement = Placement(hostReserveMiB: 512)

    @Test("the host with the most free memory wins")
    func mostFreeMemory() throws {
        let chosen = try placement.place(PlacementRequest(cpus: 1, memoryMiB: 128, datastore: "shared"), on: [
            host("host-1", allocated: 2048), host("host-2", allocated: 512), host("host-3", allocated: 1024),
        ]).get()
        #expect(chosen.name == "host-2")
    }

    @Test("ties go to the first name, so placement is repeatable")
    func ties() throws {
        let chosen = try placement.place(PlacementRequest(cpus: 1, memoryMiB: 128, datastore: nil),
                                         on: [host("host-3"), host("host-1"), host("host-2")]).get()
        #expect(chosen.name == "host-1")
    }

    @Test("disconnected hosts, hosts in maintenance, and hosts that do not see the datastore are filtered out")
    func filters() throws {
        let chosen = try placement.place(PlacementRequest(cpus: 1, memoryMiB: 128, datastore: "shared"), on: [
            host("host-1", .disconnected), host("host-2", .maintenance), host("host-3", datastores: ["local-3"]),
            host("host-4", allocated: 3000),
        ]).get()
        #expect(chosen.name == "host-4")
    }

    @Test("a VM that fits nowhere is refused with what it asked and the largest free memory")
    func refusalNumbers() {
        let result = placement.place(PlacementRequest(cpus: 1, memoryMiB: 4096, datastore: "shared"), on: [
            host("host-1", total: 2048), host("host-2", total: 4096, allocated: 1684), host("host-3", total: 3000),
        ])
        guard case .failure(let error) = result else { Issue.record("placed a VM that fits nowhere"); return }
        #expect(error.code == .insufficientResources)
        #expect(error.message == "no host can take the VM: asked 4096 MiB; largest free 2488 MiB on host-3")
    }

    @Test("too many vCPUs for every host is refused with the core count")
    func tooManyCPUs() {
        guard case .failure(let error) = placement.place(PlacementRequest(cpus: 8, memoryMiB: 128, datastore: nil), on: [host("h", cores: 2)]) else {
            Issue.record("placed"); return
        }
        #expect(error.message.contains("asked 8 vCPUs; the most cores on a host is 2"))
    }

    @Test("an empty or fully disconnected cluster says so")
    func noHosts() {
        guard case .failure(let empty) = placement.place(PlacementRequest(cpus: 1, memoryMiB: 1, datastore: nil), on: []) else { Issue.record("placed"); return }
        #expect(empty.message.contains("no hosts"))
        guard case .failure(let down) = placement.place(PlacementRequest(cpus: 1, memoryMiB: 1, datastore: nil), on: [host("a", .disconnected)]) else {
            Issue.record("placed"); return
        }
        #expect(down.message.contains("none of 1 hosts is connected"))
    }

    @Test("admission on a named host explains its refusal", arguments: [
        (host("h", .maintenance), ShepherdError.Code.hostNotConnected, "maintenance"),
        (host("h", total: 1024, allocated: 256), .insufficientResources, "asked 512 MiB; 256 MiB free"),
        (host("h", datastores: []), .invalidField, "does not see datastore 'shared'"),
    ])
    func admission(candidate: HostCandidate, code: ShepherdError.Code, text: String) {
        let error = placement.admit(PlacementRequest(cpus: 1, memoryMiB: 512, datastore: "shared"), on: candidate, vm: "web1")
        #expect(error?.code == code)
        #expect(error?.message.contains(text) == true, "\(error?.message ?? "nil")")
    }

    @Test("admission lets a VM in that fits exactly")
    func exactFit() {
        #expect(placement.admit(PlacementRequest(cpus: 4, memoryMiB: 3584, datastore: "shared"), on: host("h"), vm: "v") == nil)
    }
}

@Suite("Placement with reservations and overcommit")
struct ReservationPlacementTests {
    let placement = Placement(hostReserveMiB: 512)

    /// 2048 MiB, 1536 for VMs; 1024 of VM memory placed, `reserved` of it reserved.
    func loaded(reserved: Int, overcommit: Bool, cpuReserved: Int = 0) -> HostCandidate {
        HostCandidate(id: "h", name: "h", state: .connected, cores: 2, memoryTotalMiB: 2048, memoryAllocatedMiB: 1024,
                      memoryReservedMiB: reserved, cpuReservedMHz: cpuReserved, memoryOvercommit: overcommit, overcommitRatio: 1.5, datastores: [])
    }

    @Test("each rule admits up to its bound and not one MiB or MHz more", arguments: [
        // overcommit off: memory within real memory
        (false, 1024, PlacementRequest(cpus: 1, memoryMiB: 512, datastore: nil), nil as String?),
        (false, 1024, PlacementRequest(cpus: 1, memoryMiB: 513, datastore: nil), "asked 513 MiB; 512 MiB free"),
        // overcommit on at 150 %: memory within 2304 MiB, reservations within 1536 MiB
        (true, 0, PlacementRequest(cpus: 1, memoryMiB: 1280, datastore: nil), nil),
        (true, 0, PlacementRequest(cpus: 1, memoryMiB: 1281, datastore: nil), "asked 1281 MiB; 1280 MiB free"),
        (true, 1024, PlacementRequest(cpus: 1, memoryMiB: 600, memoryReservationMiB: 512, datastore: nil), nil),
        (true, 1024, PlacementRequest(cpus: 1, memoryMiB: 600, memoryReservationMiB: 513, datastore: nil), "asked to reserve 513 MiB; 512 MiB unreserved"),
        // a new VM reserves what its host's cluster gives: nothing with overcommit on
        (true, 1536, PlacementRequest(cpus: 1, memoryMiB: 600, datastore: nil), nil),
        (true, 0, PlacementRequest(cpus: 1, memoryMiB: 64, cpuReservationMHz: 1500, datastore: nil), nil),
        (true, 0, PlacementRequest(cpus: 1, memoryMiB: 64, cpuReservationMHz: 1501, datastore: nil), "asked to reserve 1501 MHz; 1500 MHz unreserved"),
    ])
    func bounds(overcommit: Bool, reserved: Int, request: PlacementRequest, refusal: String?) {
        let host = loaded(reserved: reserved, overcommit: overcommit, cpuReserved: 500)
        let why = placement.rejection(of: host, for: request)
        if let refusal {
            #expect(why?.description.contains(refusal) == true, "\(String(describing: why))")
        } else {
            #expect(why == nil, "\(String(describing: why))")
        }
    }

    @Test("when only reservations are short, the refusal lists each host's reason")
    func reservationsShort() {
        let full = loaded(reserved: 1536, overcommit: true)
        guard case .failure(let error) = placement.place(PlacementRequest(cpus: 1, memoryMiB: 256, memoryReservationMiB: 256, datastore: nil), on: [full]) else {
            Issue.record("placed"); return
        }
        #expect(error.message.contains("h: reservations may not exceed real memory: asked to reserve 256 MiB; 0 MiB unreserved"), "\(error.message)")
    }
}
