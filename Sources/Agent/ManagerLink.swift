import Foundation
import HostKit
import OpenAPIRuntime
import Hypervisor
import Logging
import ServiceLifecycle
import ShepherdAPI
import ShepherdCore
import Synchronization

/// The agent's link to the manager: joins once (the credential is kept, mode 0600, so a
/// restarted agent resumes as the same host), then heartbeats every 2 s.
final class ManagerLink: Service, Sendable {
    let configuration: AgentConfiguration
    let driver: any HypervisorDriver
    let logger: Logger
    let credential = Mutex<Credential?>(nil)
    /// The manager's last heartbeat answer and when it came: the isolation monitor's input.
    let lastAnswer = Mutex<ManagerAnswer?>(nil)
    /// The KSM scan rate last set (nil: not yet), so it is written only when it changes.
    private let ksmPagesToScan = Mutex<Int?>(nil)
    /// When the lease keeper last renewed every storage lease; reported with each heartbeat.
    let leaseRenewedAt = Mutex<Date?>(nil)

    /// The datastores this host mounts now (command line + added by the manager).
    let mounts: DatastoreMounts

    init(configuration: AgentConfiguration, driver: any HypervisorDriver, logger: Logger) {
        self.configuration = configuration
        self.driver = driver
        self.logger = logger
        mounts = DatastoreMounts(configured: configuration.datastores, stateDirectory: configuration.stateDirectory)
    }

    private var credentialFile: String { configuration.stateDirectory + "/credential.json" }

    /// The saved credential when it is for this manager, else a fresh join (retried until the manager answers).
    func joinOrResume() async throws -> Credential {
        if let data = FileManager.default.contents(atPath: credentialFile),
           let saved = try? JSONDecoder().decode(Credential.self, from: data), saved.managerURL == configuration.managerURL {
            credential.withLock { $0 = saved }
            return saved
        }
        var attempt = 0
        while true {
            do {
                return try await join()
            } catch let error as ShepherdError where error.code == .forbidden || error.code == .unauthorized || error.code == .invalidField {
                throw error
            } catch {
                attempt += 1
                if attempt % 10 == 1 { logger.warning("cannot join the manager at \(configuration.managerURL) yet: \(error)") }
                try await Task.sleep(for: .seconds(1))
            }
        }
    }

    private func join() async throws -> Credential {
        guard let file = configuration.joinTokenFile,
              let joinToken = try? String(contentsOfFile: file, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines),
              !joinToken.isEmpty else {
            throw ShepherdError.invalidField("--join-token-file", "no readable join token (needed once, to join the manager)")
        }
        let client = try Client.manager(url: configuration.managerURL, token: joinToken, timeout: .seconds(10))
        let report = try await hostReport()
        let response = try await client.registerAgent(body: .json(.init(
            name: configuration.name, cluster: configuration.cluster, address: configuration.advertiseURL, host: report,
            datastores: datastoreReports(), agentVersion: AgentServer.version, accelerator: driver.accelerator)))
        switch response {
        case .ok(let ok):
            let answer = try ok.body.json
            let joined = Credential(hostId: answer.hostId, token: answer.token, managerURL: configuration.managerURL)
            try Files.writeAtomically(try JSONEncoder().encode(joined), to: credentialFile, mode: 0o600)
            credential.withLock { $0 = joined }
            logger.info("joined the manager as host \(joined.hostId)")
            return joined
        case .default(let status, let error):
            let body = try? error.body.json
            throw ShepherdError(ShepherdError.Code(rawValue: body?.code ?? "") ?? .agentFailed,
                                "the manager refused the join (\(status)): \(body?.message ?? "no details")")
        }
    }

    func run() async throws {
        try? await cancelWhenGracefulShutdown { [self] in
            while !Task.isCancelled {
                do { try await beat() } catch { logger.warning("heartbeat failed: \(Self.brief(error))") }
                try await Task.sleep(for: Heartbeats.interval)
            }
        }
    }

    /// A client error without the request it carried (the whole heartbeat, CPU flags and all).
    static func brief(_ error: any Error) -> String {
        guard let client = error as? ClientError else { return "\(error)" }
        return "\(client.causeDescription): \(client.underlyingError)"
    }

    private func beat() async throws {
        guard let current = credential.withLock({ $0 }) else { return }
        let client = try Client.manager(url: configuration.managerURL, token: current.token, timeout: .seconds(10))
        let guests = await driver.statuses().map { status in
            Components.Schemas.GuestReport(vmId: status.vmId, power: .init(rawValue: status.power.rawValue) ?? .crashed,
                                           toolsRunning: status.toolsRunning, pid: status.pid.map(Int.init), reason: status.reason,
                                           cpuSeconds: status.pid.flatMap { Processes.cpuSeconds($0) },
                                           balloonMiB: status.balloonMiB, guestAvailableMiB: status.guestAvailableMiB)
        }
        let host = try await hostReport()
        tuneKSM(total: host.memoryTotalBytes, available: host.memoryAvailableBytes)
        let response = try await client.agentHeartbeat(body: .json(.init(
            hostId: current.hostId, host: host, datastores: datastoreReports(), guests: guests,
            accelerator: driver.accelerator, agentVersion: AgentServer.version, leaseRenewedAt: leaseRenewedAt.withLock { $0 })))
        switch response {
        case .ok(let ok):
            let answer = try ok.body.json
            lastAnswer.withLock {
                $0 = ManagerAnswer(at: .now, isolationResponse: IsolationResponse(rawValue: answer.isolationResponse.rawValue) ?? .leaveRunning,
                                   peers: answer.peers)
            }
        case .default(let status, let error):
            let body = try? error.body.json
            throw ShepherdError(.agentFailed, "the manager refused the heartbeat (\(status)): \(body?.message ?? "no details")")
        }
    }

    /// KSM scans faster as the host's memory fills (machine-wide: hosts sharing one machine set
    /// the same knob; the fullest one's last beat wins).
    private func tuneKSM(total: Int64, available: Int64) {
        guard configuration.ksm, configuration.driver == "qemu", total > 0 else { return }
        let pages = KSMPolicy.pagesToScan(usedFraction: 1 - Double(available) / Double(total))
        guard ksmPagesToScan.withLock({ $0 }) != pages else { return }
        if (try? KSM.setPagesToScan(pages)) != nil { ksmPagesToScan.withLock { $0 = pages } }
    }

    private func hostReport() async throws -> Components.Schemas.HostReport {
        let info = try HostInfo.read()
        let cgroups = (driver as? QEMUDriver)?.cgroups
        var total = info.memoryTotalBytes, available = info.memoryAvailableBytes
        if let size = configuration.memoryMiB.map({ UInt64($0) << 20 }), size < total {
            // A sized host (demo): its VMs' cgroup is held to the size; what they use counts against it.
            total = size
            available = min(available, size - min(size, cgroups?.hostMemoryUsageBytes() ?? 0))
        }
        return .init(cpuModel: info.cpuModel, cpuVendor: info.cpuVendor, cpuFlags: info.cpuFlags,
                     providedCPUModel: configuration.cpuModel, cores: configuration.cores.map { min($0, info.cores) } ?? info.cores,
                     memoryTotalBytes: Int64(total), memoryAvailableBytes: Int64(available),
                     ksmSavedBytes: KSM.status().map { Int64($0.savedBytes) }, cgroups: cgroups?.version.rawValue)
    }

    private func datastoreReports() -> [Components.Schemas.DatastoreReport] {
        mounts.all.map { datastore in
            let space = AgentWire.DatastoreSpace.of(datastore.path)
            return .init(name: datastore.name, kind: .init(rawValue: datastore.kind) ?? .local, path: datastore.path,
                         capacityBytes: space.capacityBytes, freeBytes: space.freeBytes)
        }
    }
}

/// What the manager last said in answer to a heartbeat.
struct ManagerAnswer: Sendable {
    var at: ContinuousClock.Instant
    var isolationResponse: IsolationResponse
    /// Agent URLs of the other hosts of the cluster.
    var peers: [String]
}
