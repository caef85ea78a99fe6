import Foundation
import HostKit
import Hummingbird
import Logging
import OpenAPIHummingbird
import Scheduling
import ServerKit
import ServiceLifecycle
import ShepherdCore

/// How a manager runs.
public struct ManagerConfiguration: Sendable {
    /// Where the database and tokens live (mode 0700).
    public var stateDirectory: String
    /// host:port pairs to listen on; the first is the one the CLI uses.
    public var listen: [String]
    /// Memory each host keeps for itself; VMs never get it.
    public var hostReserveMiB: Int
    public var timing: VMTiming
    public var migration: MigrationSettings
    /// The physical switch's Open vSwitch database (`unix:PATH`), read by `net diagnose` for the
    /// VLANs each switch port allows and which host NIC is cabled to it; nil: not known.
    public var physicalSwitch: String?

    public init(stateDirectory: String = "/var/lib/shepherd", listen: [String] = ["127.0.0.1:7443"],
                hostReserveMiB: Int = 512, timing: VMTiming = VMTiming(), migration: MigrationSettings = MigrationSettings()) {
        self.migration = migration
        self.stateDirectory = stateDirectory
        self.listen = listen
        self.hostReserveMiB = hostReserveMiB
        self.timing = timing
    }

    public var adminTokenPath: String { stateDirectory + "/admin-token" }
    public var joinTokenPath: String { stateDirectory + "/join-token" }
    public var databasePath: String { stateDirectory + "/shepherd.sqlite" }
}

/// The manager process: HTTP API on each listen address, the host monitor, graceful shutdown.
public enum ManagerServer {
    public static let version = shepherdVersion

    /// Runs until SIGTERM or SIGINT.
    public static func run(_ configuration: ManagerConfiguration) async throws {
        var logger = Logger(label: "shepherd.manager")
        logger.logLevel = .info
        try Files.ensureDirectory(configuration.stateDirectory, mode: 0o700)
        let adminToken = try loadOrCreateSecret(configuration.adminTokenPath)
        let joinToken = try loadOrCreateSecret(configuration.joinTokenPath)
        let store = try Store(path: configuration.databasePath)
        let events = EventLog(store: store, logger: logger)
        let tasks = TaskEngine(store: store, events: events, logger: logger)
        let interrupted = try tasks.failInterrupted()
        if interrupted > 0 { logger.warning("marked \(interrupted) task(s) failed: the previous manager stopped while they ran") }
        let hosts = HostService(store: store, events: events, tasks: tasks, joinToken: joinToken, logger: logger)
        let agents = AgentClient()
        let placement = Placement(hostReserveMiB: configuration.hostReserveMiB)
        let vms = VMService(store: store, agents: agents, tasks: tasks, events: events, placement: placement, timing: configuration.timing)
        let migrations = MigrationService(store: store, agents: agents, tasks: tasks, events: events, placement: placement, vms: vms,
                                          settings: configuration.migration, logger: logger)
        // Migrations the previous process left mid-way: the hosts say how they ended.
        Task { await migrations.recoverInterrupted() }
        let maintenance = MaintenanceService(store: store, tasks: tasks, events: events, placement: placement, migrations: migrations)
        let power = PowerService(store: store, tasks: tasks, events: events)
        let drs = DRSService(store: store, events: events, migrations: migrations, loads: LoadTracker(), power: power,
                             hostReserveMiB: configuration.hostReserveMiB, logger: logger)
        let ha = HAService(store: store, events: events, vms: vms, agents: agents, power: power, hostReserveMiB: configuration.hostReserveMiB)
        let snapshots = SnapshotService(store: store, agents: agents, tasks: tasks, events: events, vms: vms)
        let api = API(store: store, vms: vms, hosts: hosts, migrations: migrations, maintenance: maintenance, drs: drs, ha: ha, power: power,
                      snapshots: snapshots, storage: StorageMigrationService(store: store, agents: agents, tasks: tasks, events: events, vms: vms),
                      datastores: DatastoreService(store: store, agents: agents, events: events),
                      qos: QoSService(store: store, agents: agents, events: events, vms: vms, hostReserveMiB: configuration.hostReserveMiB),
                      balloons: BalloonService(store: store, agents: agents, events: events, hostReserveMiB: configuration.hostReserveMiB),
                      network: NetworkService(store: store, agents: agents, tasks: tasks, events: events,
                                              physicalSwitch: configuration.physicalSwitch.map { OVS.remote(database: $0) }),
                      tasks: tasks, version: version)

        let router = Router()
        router.middlewares.add(ErrorMiddleware())
        router.middlewares.add(ManagerAuth(adminToken: adminToken))
        router.get("/openapi.yaml") { _, _ in
            Response(status: .ok, headers: [.contentType: "application/yaml"],
                     body: ResponseBody(byteBuffer: ByteBuffer(string: OpenAPIDocument.yaml)))
        }
        try api.registerHandlers(on: router)
        let responder = router.buildResponder()

        var services: [any Service] = [HostMonitor(hosts: hosts, logger: logger), DRSMonitor(drs: drs, store: store, logger: logger),
                                       HAMonitor(ha: ha)]
        for address in configuration.listen {
            let (host, port) = try ListenAddress.parse(address)
            services.append(Application(responder: responder,
                                        configuration: .init(address: .hostname(host, port: port), serverName: "shepherd-manager"),
                                        logger: logger))
        }
        logger.info("manager \(version) listening on \(configuration.listen.joined(separator: ", ")); state in \(configuration.stateDirectory)")
        let group = ServiceGroup(configuration: .init(services: services.map { .init(service: $0) },
                                                      gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }


    /// Reads a secret file, or creates it with mode 0600.
    static func loadOrCreateSecret(_ path: String) throws -> String {
        if let existing = try? String(contentsOfFile: path, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines), !existing.isEmpty {
            return existing
        }
        let secret = BearerAuth.newSecret()
        try Files.writeAtomically(Data((secret + "\n").utf8), to: path, mode: 0o600)
        return secret
    }
}

/// Every endpoint but /healthz and /openapi.yaml needs the admin token; the agent endpoints
/// check their own credentials (the join token, the host's secret).
struct ManagerAuth<Context: RequestContext>: RouterMiddleware {
    let adminToken: String

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let path = request.uri.path
        if path == "/healthz" || path == "/openapi.yaml" { return try await next(request, context) }
        let token = BearerAuth.token(in: request)
        if path.hasPrefix("/api/v1/agents/") {
            return try await RequestBearer.$token.withValue(token) { try await next(request, context) }
        }
        guard let token else { throw BearerAuth.missing }
        guard BearerAuth.matches(token, adminToken) else { throw BearerAuth.wrong }
        return try await next(request, context)
    }
}

/// Calls hosts lost when their heartbeats stop.
struct HostMonitor: Service {
    let hosts: HostService
    let logger: Logger

    func run() async throws {
        try? await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                do { try await hosts.markLostHosts() } catch { logger.error("host monitor: \(error)") }
                try await Task.sleep(for: Heartbeats.interval)
            }
        }
    }
}
