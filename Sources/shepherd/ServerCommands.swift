import Agent
import ArgumentParser
import Foundation
import Manager
import ServerKit
import ShepherdCore

struct ManagerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "manager", abstract: "Run the manager (API, state, tasks).")

    @Option(help: "State directory: database and tokens.") var stateDir = "/var/lib/shepherd"
    @Option(help: "host:port to listen on; repeat for several.") var listen: [String] = ["127.0.0.1:7443"]
    @Option(help: "Memory (MiB) each host keeps for itself.") var hostReserve = 512
    @Option(help: "Seconds a power-on waits for the guest's tools.") var toolsTimeout = 120
    @Option(help: "Seconds a graceful stop waits before giving up.") var stopTimeout = 90
    @Option(help: "Milliseconds of pause a live migration's switch-over may take.") var migrationDowntime = 30
    @Flag(help: "Never switch a live migration to post-copy.") var noPostcopy = false
    @Option(help: "MiB/s a live migration may use (0: uncapped).") var migrationMaxBandwidth = 0
    @Option(help: "The physical switch's Open vSwitch database (unix:PATH), for net diagnose.") var physicalSwitch: String?

    func run() async throws {
        for address in listen { _ = try ListenAddress.parse(address) }
        // QEMU takes 1 ms and more; 0 would never let a migration switch over.
        guard migrationDowntime >= 1 else { throw ValidationError("--migration-downtime must be at least 1 ms, not \(migrationDowntime)") }
        guard migrationMaxBandwidth >= 0 else { throw ValidationError("--migration-max-bandwidth must be 0 (uncapped) or more MiB/s, not \(migrationMaxBandwidth)") }
        var configuration = ManagerConfiguration(
            stateDirectory: stateDir, listen: listen, hostReserveMiB: hostReserve,
            timing: VMTiming(toolsTimeoutSeconds: toolsTimeout, gracefulStopSeconds: stopTimeout),
            migration: MigrationSettings(downtimeLimitMs: migrationDowntime, postcopyAllowed: !noPostcopy,
                                         maxBandwidthBytes: migrationMaxBandwidth > 0 ? Int64(migrationMaxBandwidth) << 20 : 100 << 30))
        if let physicalSwitch {
            guard physicalSwitch.hasPrefix("unix:/") || physicalSwitch.hasPrefix("tcp:") else {
                throw ValidationError("--physical-switch must be unix:/PATH or tcp:HOST:PORT")
            }
            configuration.physicalSwitch = physicalSwitch
        }
        try await ManagerServer.run(configuration)
    }
}

struct AgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "agent", abstract: "Run a host's agent (QEMU guests, heartbeats).")

    @Option(help: "This host's name.") var name: String
    @Option(help: "The cluster to join (created when absent).") var cluster = "cluster-1"
    @Option(help: "The manager's URL as seen from this host.") var manager: String
    @Option(help: "host:port for the manager→agent API.") var listen: String
    @Option(help: "The URL the manager reaches this agent at (default http://LISTEN).") var advertise: String?
    @Option(help: "State directory: VM definitions, sockets, logs, credential.") var stateDir: String
    @Option(help: "File holding the join token (read once, to join).") var joinTokenFile: String?
    @Option(help: "A datastore this host sees: NAME=PATH[,shared|,local]; repeatable.") var datastore: [String] = []
    @Option(help: "qemu, or fake for tests of manager logic.") var driver = "qemu"
    @Option(help: "auto (a real boot probe decides), kvm or tcg.") var accel = "auto"
    @Option(help: "The QEMU CPU model this host provides its guests (e.g. EPYC, EPYC-Rome, Haswell), for IMC; default: its own CPU.")
    var cpuModel: String?
    @Option(help: "Cores this host offers its VMs (demo and tests: hosts sharing one machine), default: all it has.")
    var cores: Int?
    @Option(help: "This host's memory in MiB: its VMs together are held to it (cgroup), default: the machine's.")
    var memory: Int?
    @Option(help: "Kernel same-page merging: on (default) or off.") var ksm = "on"
    @Option(help: "Open vSwitch for VM NICs: system (the machine's, default), managed (run one in this network namespace) or off.") var ovs = "system"
    @Option(help: "Host NICs a new DVS uses as uplinks here unless told otherwise (comma-separated, e.g. eth1,eth2).") var uplinks = ""

    func run() async throws {
        guard ["auto", "kvm", "tcg"].contains(accel) else { throw ValidationError("--accel must be auto, kvm or tcg") }
        if let cores, cores < 1 { throw ValidationError("--cores must be at least 1") }
        if let memory, memory < 256 { throw ValidationError("--memory must be at least 256 (MiB)") }
        guard ["on", "off"].contains(ksm) else { throw ValidationError("--ksm must be on or off") }
        if let cpuModel { try CPUModels.validate(cpuModel, field: "--cpu-model") }
        var configuration = AgentConfiguration(
            name: name, cluster: cluster, managerURL: manager, listen: listen, advertiseURL: advertise ?? "http://\(listen)",
            stateDirectory: stateDir, joinTokenFile: joinTokenFile, datastores: try datastore.map(DatastoreMount.parse),
            driver: driver, accelerator: accel)
        configuration.cpuModel = cpuModel
        configuration.cores = cores
        configuration.memoryMiB = memory
        configuration.ksm = ksm == "on"
        configuration.ovs = ovs
        configuration.uplinks = uplinks.split(separator: ",").map(String.init)
        try await AgentServer.run(configuration)
    }
}
