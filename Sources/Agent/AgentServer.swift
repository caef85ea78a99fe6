import AsyncHTTPClient
import Foundation
import HostKit
import HTTPTypes
import Hummingbird
import Hypervisor
import Logging
import OpenAPIAsyncHTTPClient
import ServerKit
import ServiceLifecycle
import ShepherdAPI
import ShepherdCore
import Synchronization

/// A datastore this host sees, as given on the agent's command line.
public struct DatastoreMount: Sendable, Equatable {
    public var name: String
    public var kind: String
    public var path: String
    public init(name: String, kind: String, path: String) { self.name = name; self.kind = kind; self.path = path }

    /// Parses `NAME=PATH[,shared|,local]`; a clear error names the flag.
    public static func parse(_ value: String) throws -> DatastoreMount {
        let parts = value.split(separator: "=", maxSplits: 1).map(String.init)
        guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
            throw ShepherdError.invalidField("--datastore", "'\(value)' must be NAME=PATH[,shared|,local]")
        }
        var path = parts[1]
        var kind = "local"
        for suffix in ["shared", "local"] where path.hasSuffix("," + suffix) {
            kind = suffix
            path.removeLast(suffix.count + 1)
        }
        try Validate.name(parts[0], field: "--datastore")
        guard path.hasPrefix("/") else { throw ShepherdError.invalidField("--datastore", "'\(path)' must be an absolute path") }
        return DatastoreMount(name: parts[0], kind: kind, path: path)
    }
}

/// The datastores this host mounts now: those of its command line, plus those the manager added
/// at runtime (`shepherd datastore add`), which are kept in `<state>/datastores.json` so a
/// restarted agent mounts them again.
final class DatastoreMounts: Sendable {
    private let configured: [DatastoreMount]
    private let added: Mutex<[DatastoreMount]>
    private let file: String

    init(configured: [DatastoreMount], stateDirectory: String) {
        self.configured = configured
        file = stateDirectory + "/datastores.json"
        let saved = FileManager.default.contents(atPath: file).flatMap { try? JSONDecoder().decode([AgentWire.DatastoreMountRequest].self, from: $0) } ?? []
        added = Mutex(saved.map { DatastoreMount(name: $0.name, kind: $0.kind, path: $0.path) }
            .filter { mount in !configured.contains { $0.name == mount.name } })
    }

    var all: [DatastoreMount] { configured + added.withLock { $0 } }

    /// Mounts a datastore (its directory is made when missing). The same one again is a no-op.
    func add(_ mount: DatastoreMount) throws {
        if let existing = all.first(where: { $0.name == mount.name }) {
            guard existing == mount else {
                throw ShepherdError(.alreadyExists, "this host mounts a datastore named '\(mount.name)' already, at \(existing.path) (\(existing.kind))")
            }
            return
        }
        try Files.ensureDirectory(mount.path, mode: 0o755)
        try added.withLock { list in
            list.append(mount)
            try save(list)
        }
    }

    /// Forgets a datastore the manager added (its files stay); one of the command line stays.
    func remove(_ name: String) throws {
        if configured.contains(where: { $0.name == name }) {
            throw ShepherdError(.illegalState, "datastore '\(name)' is configured on this agent's command line (--datastore); remove it there")
        }
        try added.withLock { list in
            list.removeAll { $0.name == name }
            try save(list)
        }
    }

    private func save(_ list: [DatastoreMount]) throws {
        let data = try JSONEncoder().encode(list.map { AgentWire.DatastoreMountRequest(name: $0.name, kind: $0.kind, path: $0.path) })
        try Files.writeAtomically(data, to: file, mode: 0o600)
    }
}

extension AgentWire.DatastoreSpace {
    /// statvfs of the datastore's directory; zeros when it cannot be read.
    static func of(_ path: String) -> Self {
        let space = try? FilesystemSpace.of(path: path)
        return .init(capacityBytes: Int64(space?.capacityBytes ?? 0), freeBytes: Int64(space?.freeBytes ?? 0))
    }
}

/// How an agent runs.
public struct AgentConfiguration: Sendable {
    public var name: String
    public var cluster: String
    public var managerURL: String
    public var listen: String
    /// The URL the manager uses to reach this agent.
    public var advertiseURL: String
    public var stateDirectory: String
    public var joinTokenFile: String?
    public var datastores: [DatastoreMount]
    /// "qemu" or "fake" (tests of manager logic only).
    public var driver: String
    /// "auto" (probe), "kvm" or "tcg".
    public var accelerator: String
    /// The QEMU CPU model this host provides its guests (for IMC), nil for its own CPU.
    public var cpuModel: String? = nil
    /// Cores offered to VMs (DRS capacity); nil: every core the machine has.
    public var cores: Int? = nil
    /// The host's memory (MiB): the host's cgroup holds all its VMs to it (demo hosts sharing
    /// one machine); nil: the machine's memory, unbounded.
    public var memoryMiB: Int? = nil
    /// Turn on kernel same-page merging (KSM) at start.
    public var ksm: Bool = true
    /// Open vSwitch for VM NICs: "system" (the machine's), "managed" (the agent runs its own in
    /// its network namespace: demo hosts) or "off".
    public var ovs: String = "system"
    /// The host NICs a new DVS takes as its uplinks here unless told otherwise.
    public var uplinks: [String] = []

    public init(name: String, cluster: String, managerURL: String, listen: String, advertiseURL: String, stateDirectory: String,
                joinTokenFile: String?, datastores: [DatastoreMount], driver: String, accelerator: String) {
        self.name = name; self.cluster = cluster; self.managerURL = managerURL; self.listen = listen
        self.advertiseURL = advertiseURL; self.stateDirectory = stateDirectory; self.joinTokenFile = joinTokenFile
        self.datastores = datastores; self.driver = driver; self.accelerator = accelerator
    }
}

/// The agent process: joins the manager, beats every 2 s, serves the manager→agent API.
public enum AgentServer {
    public static let version = shepherdVersion

    public static func run(_ configuration: AgentConfiguration) async throws {
        var logger = Logger(label: "shepherd.agent.\(configuration.name)")
        logger.logLevel = .info
        try Files.ensureDirectory(configuration.stateDirectory, mode: 0o700)
        for datastore in configuration.datastores { try Files.ensureDirectory(datastore.path, mode: 0o755) }

        let network = try HostNetworkAgent(mode: configuration.driver == "fake" ? "fake" : configuration.ovs,
                                           stateDirectory: configuration.stateDirectory, defaultUplinks: configuration.uplinks, logger: logger)
        await network.start()
        let driver: any HypervisorDriver
        switch configuration.driver {
        case "fake":
            driver = FakeDriver()
        case "qemu":
            let accelerator: String
            if configuration.accelerator == "auto" {
                let kernel = AcceleratorProbe.findKernel(in: configuration.datastores.map(\.path))
                accelerator = await AcceleratorProbe.choose(kernel: kernel)
                logger.info("accelerator: \(accelerator)\(kernel.map { " (probe: booted \($0) under KVM; cached in /run/shepherd/accelerator)" } ?? " (no guest kernel under the datastores' templates to probe KVM with)")")
            } else {
                accelerator = configuration.accelerator
            }
            var cgroups = CGroups(host: configuration.name, stateDirectory: configuration.stateDirectory)
            if let found = cgroups {
                do {
                    try found.prepareHost(memoryLimitBytes: configuration.memoryMiB.map { UInt64($0) << 20 })
                    await found.removeEmptyGroups()
                    logger.info("cgroups \(found.version.rawValue): VMs under \(found.path(vm: "<vm>"))\(configuration.memoryMiB.map { ", held to \($0) MiB together" } ?? "")")
                } catch {
                    // A read-only cgroup file system (some containers) or a busy v2 root: run without.
                    cgroups = nil
                    logger.warning("cgroups cannot be used (\(error)): VM QoS (shares, limits, reservations) and --memory are not enforced on this host")
                }
            } else {
                logger.warning("no cgroup cpu and memory controllers: VM QoS (shares, limits, reservations) is not enforced on this host")
            }
            if configuration.ksm {
                do { try KSM.enable() } catch { logger.warning("KSM stays off: \(error)") }
            }
            let qemu = try QEMUDriver(stateDirectory: configuration.stateDirectory, accelerator: accelerator, cgroups: cgroups, network: network.ovs)
            let adopted = try await qemu.adopt()
            let running = adopted.filter { $0.power == .running || $0.power == .paused }
            logger.info("accelerator \(accelerator); \(adopted.count) VM(s) defined here, \(running.count) QEMU process(es) adopted")
            driver = qemu
        default:
            throw ShepherdError.invalidField("--driver", "'\(configuration.driver)' must be qemu or fake")
        }

        let manager = ManagerLink(configuration: configuration, driver: driver, logger: logger)
        let credential = try await manager.joinOrResume()
        let (host, port) = try ListenAddress.parse(configuration.listen)
        let router = Router()
        router.middlewares.add(ErrorMiddleware())
        router.middlewares.add(AgentAuth(link: manager))
        let leases = LeaseKeeper(configuration: configuration, driver: driver, link: manager, logger: logger)
        AgentRoutes(driver: driver, mounts: manager.mounts).register(on: router)
        NetworkRoutes(driver: driver, network: network).register(on: router)
        router.get("/agent/v1/leases") { _, _ in JSONResponse.make(leases.leases()) }
        let app = Application(router: router, configuration: .init(address: .hostname(host, port: port), serverName: "shepherd-agent"),
                              logger: logger)
        logger.info("agent \(configuration.name) serving on \(configuration.listen) as host \(credential.hostId)")
        let isolation = IsolationMonitor(driver: driver, link: manager, leases: leases, logger: logger)
        let group = ServiceGroup(configuration: .init(services: [.init(service: app), .init(service: manager), .init(service: leases),
                                                                 .init(service: isolation)],
                                                      gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }

}

/// The credential an agent got when it joined (its host id and secret).
struct Credential: Codable, Sendable {
    var hostId: String
    var token: String
    var managerURL: String
}

/// Only the manager, holding this host's secret, may call the agent.
struct AgentAuth<Context: RequestContext>: RouterMiddleware {
    let link: ManagerLink

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard let token = BearerAuth.token(in: request) else { throw BearerAuth.missing }
        guard let expected = link.credential.withLock({ $0?.token }), BearerAuth.matches(token, expected) else { throw BearerAuth.wrong }
        return try await next(request, context)
    }
}

/// The manager→agent API: thin handlers over the driver.
struct AgentRoutes: Sendable {
    let driver: any HypervisorDriver
    let mounts: DatastoreMounts

    /// The agent touches disk images only inside its own datastores: a path from the wire must
    /// lie under one, with no `..` step out of it.
    func checkOnDatastore(_ path: String, field: String = "path") throws {
        let datastores = mounts.all
        let components = path.split(separator: "/")
        guard path.hasPrefix("/"), !components.contains(".."), !components.contains("."),
              datastores.contains(where: { path.hasPrefix($0.path.hasSuffix("/") ? $0.path : $0.path + "/") }) else {
            throw ShepherdError.invalidField(field, "'\(path)' is not inside a datastore of this host (\(datastores.map(\.path).joined(separator: ", ")))")
        }
    }

    func register(on router: Router<BasicRequestContext>) {
        let vms = router.group("/agent/v1/vms")
        vms.get { _, _ in JSONResponse.make(await driver.statuses()) }
        vms.put(":id") { request, context in
            let definition = try await request.decode(as: AgentWire.VMDefinition.self, context: context)
            guard definition.id == (try context.parameters.require("id")) else {
                throw ShepherdError.invalidField("id", "the body's id must match the path")
            }
            return JSONResponse.make(try await driver.define(definition))
        }
        vms.get(":id") { _, context in JSONResponse.make(try await driver.status(context.parameters.require("id"))) }
        vms.delete(":id") { _, context in
            let id = try context.parameters.require("id")
            try await driver.delete(id)
            return JSONResponse.make(AgentWire.GuestStatus(vmId: id, power: .stopped, toolsRunning: false, reason: "deleted"))
        }
        vms.post(":id/start") { _, context in JSONResponse.make(try await driver.start(context.parameters.require("id"))) }
        vms.post(":id/stop") { request, context in
            let body = try await request.decode(as: AgentWire.PowerRequest.self, context: context)
            return JSONResponse.make(try await driver.stop(context.parameters.require("id"), force: body.force))
        }
        vms.post(":id/reboot") { request, context in
            let body = try await request.decode(as: AgentWire.PowerRequest.self, context: context)
            return JSONResponse.make(try await driver.reboot(context.parameters.require("id"), force: body.force))
        }
        vms.post(":id/migrate") { request, context in
            let body = try await request.decode(as: AgentWire.MigrateRequest.self, context: context)
            try await driver.migrate(context.parameters.require("id"), body)
            return JSONResponse.make(AgentWire.Done())
        }
        vms.get(":id/definition") { _, context in JSONResponse.make(try await driver.definition(context.parameters.require("id"))) }
        vms.get(":id/migration") { _, context in JSONResponse.make(try await driver.migrationProgress(context.parameters.require("id"))) }
        // Actions on one VM that answer only that they were done.
        let actions: [(String, @Sendable (String) async throws -> Void)] = [
            ("migration/postcopy", driver.startPostcopy), ("migration/cancel", driver.cancelMigration),
            ("release", driver.release), ("clock", driver.syncGuestClock),
        ]
        for (path, action) in actions {
            vms.post(RouterPath(":id/" + path)) { _, context in
                try await action(context.parameters.require("id"))
                return JSONResponse.make(AgentWire.Done())
            }
        }
        router.post("/agent/v1/incoming") { request, context in
            let body = try await request.decode(as: AgentWire.IncomingRequest.self, context: context)
            for disk in body.storage ?? [] { try checkOnDatastore(disk.path) }
            return JSONResponse.make(try await driver.prepareIncoming(body))
        }
        router.post("/agent/v1/probe") { request, context in
            let body = try await request.decode(as: AgentWire.ProbeRequest.self, context: context)
            let (reachable, detail) = await TCP.reachable(body.address, port: body.port, timeout: .seconds(3))
            return JSONResponse.make(AgentWire.ProbeAnswer(reachable: reachable, detail: detail))
        }
        router.post("/agent/v1/datastores") { request, context in
            let body = try await request.decode(as: AgentWire.DatastoreMountRequest.self, context: context)
            let mount = try DatastoreMount.parse("\(body.name)=\(body.path),\(body.kind)")
            try mounts.add(mount)
            return JSONResponse.make(AgentWire.DatastoreSpace.of(mount.path))
        }
        router.delete("/agent/v1/datastores/:name") { _, context in
            try mounts.remove(try context.parameters.require("name"))
            return JSONResponse.make(AgentWire.Done())
        }
        let disks = router.group("/agent/v1/disks")
        disks.post("create") { request, context in
            let body = try await request.decode(as: AgentWire.DiskCreateRequest.self, context: context)
            try checkOnDatastore(body.path)
            try DiskRules.checkSize(body.sizeBytes, field: "sizeBytes")
            return JSONResponse.make(try await driver.createDisk(body))
        }
        disks.post("info") { request, context in
            let body = try await request.decode(as: AgentWire.DiskPathRequest.self, context: context)
            try checkOnDatastore(body.path)
            return JSONResponse.make(try await driver.diskImage(path: body.path))
        }
        disks.post("delete") { request, context in
            let body = try await request.decode(as: AgentWire.DiskPathRequest.self, context: context)
            try checkOnDatastore(body.path)
            try await driver.deleteDisk(path: body.path)
            return JSONResponse.make(AgentWire.Done())
        }
        disks.post("resize") { request, context in
            let body = try await request.decode(as: AgentWire.DiskPathRequest.self, context: context)
            try checkOnDatastore(body.path)
            guard let size = body.sizeBytes else { throw ShepherdError.invalidField("sizeBytes", "must be given") }
            try DiskRules.checkSize(size, field: "sizeBytes")
            return JSONResponse.make(try await driver.resizeDisk(path: body.path, sizeBytes: size))
        }
        vms.post(":id/disks") { request, context in
            let body = try await request.decode(as: AgentWire.DiskDefinition.self, context: context)
            try checkOnDatastore(body.path)
            try await driver.attachDisk(context.parameters.require("id"), body)
            return JSONResponse.make(AgentWire.Done())
        }
        vms.delete(":id/disks/:disk") { _, context in
            try await driver.detachDisk(context.parameters.require("id"), diskID: context.parameters.require("disk"))
            return JSONResponse.make(AgentWire.Done())
        }
        vms.post(":id/disks/:disk/resize") { request, context in
            let body = try await request.decode(as: AgentWire.DiskResizeRequest.self, context: context)
            try DiskRules.checkSize(body.sizeBytes, field: "sizeBytes")
            try await driver.resizeAttachedDisk(context.parameters.require("id"), diskID: context.parameters.require("disk"), sizeBytes: body.sizeBytes)
            return JSONResponse.make(AgentWire.Done())
        }
        vms.post(":id/snapshot") { request, context in
            let body = try await request.decode(as: AgentWire.SnapshotRequest.self, context: context)
            for layer in body.layers { try checkOnDatastore(layer.active, field: "active"); try checkOnDatastore(layer.overlay, field: "overlay") }
            return JSONResponse.make(try await driver.snapshot(context.parameters.require("id"), body))
        }
        vms.post(":id/resize") { request, context in
            let body = try await request.decode(as: AgentWire.ResizeRequest.self, context: context)
            try Validate.cpus(body.cpus)
            try Validate.memoryMiB(body.memoryMiB)
            return JSONResponse.make(try await driver.resize(context.parameters.require("id"), body))
        }
        vms.post(":id/balloon") { request, context in
            let body = try await request.decode(as: AgentWire.BalloonRequest.self, context: context)
            try await driver.setBalloon(context.parameters.require("id"), targetMiB: body.targetMiB)
            return JSONResponse.make(AgentWire.Done())
        }
        vms.post(":id/hibernate") { request, context in
            let body = try await request.decode(as: AgentWire.StateFileRequest.self, context: context)
            try checkOnDatastore(body.file, field: "file")
            try await driver.hibernate(context.parameters.require("id"), to: body.file)
            return JSONResponse.make(AgentWire.Done())
        }
        vms.post(":id/resume") { request, context in
            let body = try await request.decode(as: AgentWire.StateFileRequest.self, context: context)
            try checkOnDatastore(body.file, field: "file")
            return JSONResponse.make(try await driver.resumeHibernated(context.parameters.require("id"), from: body.file))
        }
        vms.post(":id/revert") { request, context in
            let body = try await request.decode(as: AgentWire.RevertRequest.self, context: context)
            for layer in body.layers {
                try checkOnDatastore(layer.active, field: "active"); try checkOnDatastore(layer.base, field: "base")
                try checkOnDatastore(layer.overlay, field: "overlay")
            }
            try await driver.revert(context.parameters.require("id"), body)
            return JSONResponse.make(AgentWire.Done())
        }
        vms.post(":id/merge") { request, context in
            let body = try await request.decode(as: AgentWire.MergeRequest.self, context: context)
            try checkOnDatastore(body.into, field: "into"); try checkOnDatastore(body.from, field: "from")
            try await driver.merge(context.parameters.require("id"), body)
            return JSONResponse.make(AgentWire.Done())
        }
        vms.post(":id/mirrors") { request, context in
            let body = try await request.decode(as: AgentWire.MirrorRequest.self, context: context)
            try checkOnDatastore(body.source, field: "source"); try checkOnDatastore(body.target, field: "target")
            return JSONResponse.make(try await driver.startMirror(context.parameters.require("id"), body))
        }
        vms.get(":id/mirrors/:job") { _, context in
            JSONResponse.make(try await driver.mirrorStatus(context.parameters.require("id"), job: context.parameters.require("job")))
        }
        for (action, run) in [("complete", driver.completeMirror), ("cancel", driver.cancelMirror)] as [(String, @Sendable (String, String, AgentWire.MirrorRequest) async throws -> Void)] {
            vms.post(RouterPath(":id/mirrors/:job/" + action)) { request, context in
                let body = try await request.decode(as: AgentWire.MirrorRequest.self, context: context)
                try checkOnDatastore(body.source, field: "source"); try checkOnDatastore(body.target, field: "target")
                try await run(context.parameters.require("id"), context.parameters.require("job"), body)
                return JSONResponse.make(AgentWire.Done())
            }
        }
        vms.post(":id/nbd-mirrors") { request, context in
            let body = try await request.decode(as: AgentWire.NBDMirrorRequest.self, context: context)
            try checkOnDatastore(body.source, field: "source")
            return JSONResponse.make(try await driver.startNBDMirror(context.parameters.require("id"), body))
        }
        vms.post(":id/nbd-mirrors/:job/end") { _, context in
            try await driver.endNBDMirror(context.parameters.require("id"), job: context.parameters.require("job"))
            return JSONResponse.make(AgentWire.Done())
        }
        vms.post(":id/incoming/resume") { _, context in
            try await driver.resumeIncoming(context.parameters.require("id"))
            return JSONResponse.make(AgentWire.Done())
        }
        disks.post("convert") { request, context in
            let body = try await request.decode(as: AgentWire.ConvertRequest.self, context: context)
            try checkOnDatastore(body.source, field: "source"); try checkOnDatastore(body.target, field: "target")
            return JSONResponse.make(try await driver.convertDisk(body))
        }
        vms.post(":id/trim") { _, context in JSONResponse.make(try await driver.trim(context.parameters.require("id"))) }
        disks.post("compact") { request, context in
            let body = try await request.decode(as: AgentWire.DiskPathRequest.self, context: context)
            try checkOnDatastore(body.path)
            return JSONResponse.make(try await driver.compactDisk(path: body.path))
        }
        vms.post(":id/exec") { request, context in
            let body = try await request.decode(as: AgentWire.ExecRequest.self, context: context)
            try Validate.execCommand(body.command, timeoutSeconds: body.timeoutSeconds)
            return JSONResponse.make(try await driver.exec(context.parameters.require("id"), command: body.command,
                                                           timeoutSeconds: body.timeoutSeconds))
        }
    }
}

/// The manager→agent API of the host's network: DVS bridges and VM NICs.
struct NetworkRoutes: Sendable {
    let driver: any HypervisorDriver
    let network: HostNetworkAgent

    func register(on router: Router<BasicRequestContext>) {
        router.get("/agent/v1/network") { _, _ in JSONResponse.make(await network.report()) }
        router.put("/agent/v1/network/switches/:bridge") { request, context in
            let body = try await request.decode(as: AgentWire.SwitchDefinition.self, context: context)
            guard body.bridge == (try context.parameters.require("bridge")) else {
                throw ShepherdError.invalidField("bridge", "the body's bridge must match the path")
            }
            return JSONResponse.make(try await network.apply(body))
        }
        router.delete("/agent/v1/network/switches/:bridge") { _, context in
            try await network.remove(bridge: context.parameters.require("bridge"))
            return JSONResponse.make(AgentWire.Done())
        }
        router.put("/agent/v1/vms/:id/nics/:nic") { request, context in
            let body = try await request.decode(as: AgentWire.NICDefinition.self, context: context)
            guard body.id == (try context.parameters.require("nic")) else { throw ShepherdError.invalidField("id", "the body's id must match the path") }
            _ = try Networking.normalizeMAC(body.mac)
            if let ip = body.ip { _ = try Networking.IPv4CIDR(ip) }
            try await driver.attachNIC(context.parameters.require("id"), body)
            return JSONResponse.make(AgentWire.Done())
        }
        router.delete("/agent/v1/vms/:id/nics/:nic") { _, context in
            try await driver.detachNIC(context.parameters.require("id"), nicID: context.parameters.require("nic"))
            return JSONResponse.make(AgentWire.Done())
        }
    }
}
