import Testing
@testable import ShepherdCore

private func side(_ name: String, cluster: String = "c1", overcommit: Bool = false, state: HostState = .connected,
                  vendor: String = "AuthenticAMD", model: String = "AMD EPYC", provided: String? = nil, cores: Int = 4, free: Int = 4096,
                  datastores: Set<String> = ["shared"]) -> MigrationHost {
    MigrationHost(name: name, cluster: cluster, clusterMemoryOvercommit: overcommit, state: state, cpuVendor: vendor,
                  cpuModel: model, providedModel: provided, cores: cores, freeMiB: free, datastores: datastores)
}

private func request(state: String = "running", tools: Bool = true, cpus: Int = 1, memory: Int = 512, devices: [String] = [],
                     bound: Bool = false, kind: String = "shared", source: MigrationHost = side("host-1"),
                     target: MigrationHost = side("host-2"), imc: String? = nil, vmModel: String? = nil) -> MigrationRequest {
    MigrationRequest(vm: "web1", state: state, toolsRunning: tools, cpus: cpus, memoryMiB: memory, passthroughDevices: devices,
                     boundToHost: bound, datastore: "shared", datastoreKind: kind, source: source, target: target, imcBaseline: imc,
                     vmCPUModel: vmModel)
}

@Suite("Migration preflight")
struct MigrationPreflightTests {
    @Test("a running VM with tools on shared storage to a connected, roomy, same-model host passes")
    func passes() {
        #expect(MigrationPreflight.check(request()).isEmpty)
    }

    @Test("each constraint of the seed fails alone with its own code and numbers", arguments: [
        (request(state: "stopped"), MigrationRefusal.Check.vmNotRunning, "is stopped"),
        (request(tools: false), .toolsNotRunning, "do not answer"),
        (request(devices: ["gpu0"]), .passthroughDevice, "gpu0"),
        (request(bound: true), .boundToHost, "bound to host 'host-1'"),
        (request(target: side("host-1")), .sameHost, "already runs on 'host-1'"),
        (request(target: side("host-2", state: .maintenance)), .targetInMaintenance, "maintenance"),
        (request(target: side("host-2", state: .disconnected)), .targetNotConnected, "disconnected"),
        (request(cpus: 8), .targetShortOfCPU, "has 8 vCPUs; target 'host-2' has 4 cores"),
        (request(memory: 5000), .targetShortOfMemory, "needs 5000 MiB; target 'host-2' has 4096 MiB free"),
        (request(target: side("host-2", vendor: "GenuineIntel")), .cpuVendorMismatch, "AuthenticAMD"),
        (request(target: side("host-2", model: "AMD EPYC-Rome")), .cpuModelMismatch, "IMC is off"),
        (request(target: side("host-2", cluster: "c2", overcommit: true)), .overcommitMismatch, "memory overcommit off"),
        (request(kind: "local"), .storageNotShared, "whole-VM migration"),
        (request(target: side("host-2", datastores: ["other"])), .targetCannotSeeStorage, "does not see datastore 'shared'"),
    ])
    func single(input: MigrationRequest, check: MigrationRefusal.Check, text: String) {
        let refusals = MigrationPreflight.check(input)
        #expect(refusals.map(\.check) == [check])
        #expect(refusals.first?.message.contains(text) == true, "\(refusals)")
    }

    @Test("a VM on a named CPU model moves to any host that provides that model or a newer one of its line")
    func namedModels() {
        let rome = side("host-2", model: "AMD EPYC 7B13", provided: "EPYC-Rome")
        let naples = side("host-2", model: "AMD EPYC 7B13", provided: "EPYC")
        #expect(MigrationPreflight.check(request(target: rome, vmModel: "EPYC")).isEmpty)
        #expect(MigrationPreflight.check(request(target: naples, vmModel: "EPYC")).isEmpty)
        let refused = MigrationPreflight.check(request(target: naples, imc: nil, vmModel: "EPYC-Rome"))
        #expect(refused.map(\.check) == [.cpuModelMismatch])
        #expect(refused.first?.message.contains("runs with CPU model EPYC-Rome; target 'host-2' provides up to EPYC") == true)
        #expect(refused.first?.message.contains("set the cluster's IMC baseline") == true)
        let stale = MigrationPreflight.check(request(target: naples, imc: "EPYC", vmModel: "EPYC-Rome"))
        #expect(stale.first?.message.contains("restart it to run with the baseline") == true)
    }

    @Test("no CPU model bridges vendors")
    func vendors() {
        let intel = side("host-2", vendor: "GenuineIntel", model: "Xeon", provided: "Haswell")
        #expect(MigrationPreflight.check(request(target: intel, vmModel: "EPYC")).map(\.check) == [.cpuVendorMismatch])
    }

    @Test("clusters that agree on overcommit may exchange VMs")
    func crossCluster() {
        #expect(MigrationPreflight.check(request(target: side("host-2", cluster: "c2"))).isEmpty)
    }

    @Test("every failed check is listed, not only the first")
    func all() {
        let refusals = MigrationPreflight.check(request(state: "stopped", devices: ["usb1"], kind: "local",
                                                        target: side("host-2", state: .maintenance, free: 100)))
        #expect(Set(refusals.map(\.check)) == [.vmNotRunning, .passthroughDevice, .targetInMaintenance, .targetShortOfMemory, .storageNotShared])
    }
}

@Suite("CPU models")
struct CPUModelTests {
    @Test("a host runs its own model and older ones of its line, never newer ones or another vendor's", arguments: [
        ("EPYC-Rome", "AuthenticAMD", "EPYC", true), ("EPYC-Rome", "AuthenticAMD", "EPYC-Rome", true),
        ("EPYC-Rome", "AuthenticAMD", "EPYC-Milan", false), ("EPYC", "AuthenticAMD", "Haswell", false),
        ("Haswell", "GenuineIntel", "Westmere", true), ("Haswell", "GenuineIntel", "Skylake-Server", false),
    ])
    func support(host: String, vendor: String, guest: String, expected: Bool) {
        #expect(CPUModels.host(providing: host, vendor: vendor, canRun: guest) == expected)
    }

    @Test("a host that names no model runs every model of its vendor")
    func ownCPU() {
        #expect(CPUModels.host(providing: nil, vendor: "AuthenticAMD", canRun: "EPYC-Genoa"))
        #expect(!CPUModels.host(providing: nil, vendor: "AuthenticAMD", canRun: "Haswell"))
    }

    @Test("an unknown model is refused naming the field and the known models")
    func unknown() {
        let error = #expect(throws: ShepherdError.self) { try CPUModels.validate("Pentium", field: "imcBaseline") }
        #expect(error?.message.contains("imcBaseline: 'Pentium' is not a known CPU model") == true)
        #expect(error?.message.contains("EPYC-Rome") == true)
    }
}
