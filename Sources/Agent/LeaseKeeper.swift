import Foundation
import HostKit
import Hypervisor
import Logging
import ServiceLifecycle
import ShepherdCore
import Synchronization

/// Storage leases, vSphere's datastore heartbeats: every 2 s the agent renews its lease on each
/// shared datastore. The manager restarts a lost host's VMs elsewhere only after that lease has
/// expired; an agent that cannot renew its lease kills its own VMs before that happens
/// (watchdog-style self-fencing), so the two can never run one VM at once.
final class LeaseKeeper: Service, Sendable {
    let configuration: AgentConfiguration
    let driver: any HypervisorDriver
    let link: ManagerLink
    let logger: Logger
    private let lastRenewal = Mutex<ContinuousClock.Instant>(.now)
    private let fenced = Mutex(false)
    /// Set by the isolation monitor once its response ended every VM; written into the lease.
    let isolatedVMsStopped = Mutex(false)

    init(configuration: AgentConfiguration, driver: any HypervisorDriver, link: ManagerLink, logger: Logger) {
        self.configuration = configuration; self.driver = driver; self.link = link; self.logger = logger
    }

    var sharedDatastores: [DatastoreMount] { link.mounts.all.filter { $0.kind == "shared" } }

    static func directory(_ datastore: DatastoreMount) -> String { datastore.path + "/.shepherd/leases" }

    func run() async throws {
        try? await cancelWhenGracefulShutdown { [self] in
            while !Task.isCancelled {
                renewOrFence()
                try await Task.sleep(for: Heartbeats.interval)
            }
        }
    }

    /// Marks the lease (or clears the mark) and renews it at once, so HA reads it without delay.
    func setIsolatedVMsStopped(_ stopped: Bool) {
        isolatedVMsStopped.withLock { $0 = stopped }
        renewOrFence()
    }

    private func renewOrFence() {
        guard let hostId = link.credential.withLock({ $0?.hostId }), !sharedDatastores.isEmpty else { return }
        var renewed = true
        for datastore in sharedDatastores {
            let lease = AgentWire.Lease(hostId: hostId, host: configuration.name, datastore: datastore.name,
                                        renewedAt: Date().timeIntervalSince1970, ageSeconds: 0,
                                        isolatedVMsStopped: isolatedVMsStopped.withLock { $0 } ? true : nil)
            do {
                try Files.ensureDirectory(Self.directory(datastore), mode: 0o755)
                try Files.writeAtomically(try JSONEncoder().encode(lease), to: "\(Self.directory(datastore))/\(hostId).json", mode: 0o644)
            } catch {
                renewed = false
                logger.warning("cannot renew the storage lease on \(datastore.name): \(error)")
            }
        }
        if renewed {
            lastRenewal.withLock { $0 = .now }
            link.leaseRenewedAt.withLock { $0 = Date() }
            fenced.withLock { $0 = false }
            return
        }
        let since = ContinuousClock.now - lastRenewal.withLock { $0 }
        guard since > .seconds(Leases.selfFenceSeconds), !fenced.withLock({ $0 }) else { return }
        fenced.withLock { $0 = true }
        logger.error("self-fencing: the storage lease was not renewed for \(since); ending every VM before it expires (\(Int(Leases.expireSeconds)) s) and another host restarts them")
        Task { [driver] in
            for status in await driver.statuses() where status.power == .running || status.power == .paused {
                _ = try? await driver.stop(status.vmId, force: true)
            }
        }
    }

    /// Every lease on this host's shared datastores, with its age (for the manager's HA).
    func leases() -> [AgentWire.Lease] {
        var result: [AgentWire.Lease] = []
        let now = Date().timeIntervalSince1970
        for datastore in sharedDatastores {
            let directory = Self.directory(datastore)
            for file in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] where file.hasSuffix(".json") {
                guard let data = FileManager.default.contents(atPath: "\(directory)/\(file)"),
                      var lease = try? JSONDecoder().decode(AgentWire.Lease.self, from: data) else { continue }
                lease.ageSeconds = max(0, now - lease.renewedAt)
                result.append(lease)
            }
        }
        return result
    }
}
