import Foundation
import HostKit
import Hypervisor
import Logging
import ServiceLifecycle
import ShepherdCore
import Synchronization

/// Host isolation (vSphere's isolation response): when the manager has not answered for
/// `Isolation.detectSeconds`, the agent probes its peers' agents; if none answers either, the
/// host is isolated and applies the cluster's response — leave the VMs, power them off, or shut
/// them down — then marks its storage lease so HA may restart them elsewhere without waiting for
/// an expiry that never comes (the host can still reach storage and keeps renewing).
final class IsolationMonitor: Service, Sendable {
    let driver: any HypervisorDriver
    let link: ManagerLink
    let leases: LeaseKeeper
    let logger: Logger

    private enum Phase: Equatable { case connected, managerLost, isolated }
    private let phase = Mutex(Phase.connected)

    init(driver: any HypervisorDriver, link: ManagerLink, leases: LeaseKeeper, logger: Logger) {
        self.driver = driver; self.link = link; self.leases = leases; self.logger = logger
    }

    func run() async throws {
        try? await cancelWhenGracefulShutdown { [self] in
            while !Task.isCancelled {
                await check()
                try await Task.sleep(for: Heartbeats.interval)
            }
        }
    }

    private func check() async {
        // Never heard from the manager: nothing to go on (no peers, no response).
        guard let answer = link.lastAnswer.withLock({ $0 }) else { return }
        let seconds = (ContinuousClock.now - answer.at).inSeconds
        if seconds < Isolation.detectSeconds {
            let before = phase.withLock { old -> Phase in defer { old = .connected }; return old }
            if before == .isolated {
                leases.setIsolatedVMsStopped(false)
                logger.notice("isolation over: the manager answers again")
            }
            return
        }
        guard phase.withLock({ $0 }) != .isolated else { return }
        let reachable = await reachablePeers(answer.peers)
        switch Isolation.verdict(secondsSinceManager: seconds, peersReachable: reachable, peers: answer.peers.count) {
        case .connected:
            return
        case .managerLost(let peersReachable, let peers):
            let before = phase.withLock { old -> Phase in defer { old = .managerLost }; return old }
            if before != .managerLost {
                logger.warning("the manager has not answered for \(Int(seconds)) s, but \(peersReachable) of \(peers) peer(s) answer: not isolated, VMs stay")
            }
        case .isolated(let peers):
            phase.withLock { $0 = .isolated }
            logger.error("isolated: no answer from the manager for \(Int(seconds)) s nor from any of \(peers) peer(s); isolation response \(answer.isolationResponse.rawValue)")
            await apply(answer.isolationResponse)
        }
    }

    private func apply(_ response: IsolationResponse) async {
        switch response {
        case .leaveRunning:
            logger.warning("isolation response leave-running: the VMs keep running; HA will not restart them while this host renews its storage lease")
            return
        case .shutdown:
            for vm in await runningVMs() { _ = try? await driver.stop(vm, force: false) }
            let deadline = ContinuousClock.now + .seconds(Isolation.shutdownSeconds)
            while ContinuousClock.now < deadline, !(await runningVMs()).isEmpty {
                try? await Task.sleep(for: .milliseconds(500))
            }
        case .powerOff:
            break
        }
        // Guests that shut down still have a QEMU (-no-shutdown) holding their disks: end it too.
        for vm in await liveVMs() { _ = try? await driver.stop(vm, force: true) }
        let left = await liveVMs()
        guard left.isEmpty else {
            logger.error("isolation response \(response.rawValue): \(left.count) VM(s) still run (\(left.joined(separator: ", "))); the storage lease is not marked, so HA will not restart them")
            return
        }
        // Only while still isolated: the manager may have come back meanwhile.
        guard phase.withLock({ $0 }) == .isolated else { return }
        leases.setIsolatedVMsStopped(true)
        logger.error("isolation response \(response.rawValue) applied: every VM is off; the storage lease says so, and HA restarts them elsewhere")
    }

    /// VMs whose guest runs.
    private func runningVMs() async -> [String] { await vms(in: [.running, .paused]) }

    /// VMs with a QEMU process, whatever their guest does.
    private func liveVMs() async -> [String] { await vms(in: [.running, .paused, .shutdown]) }

    private func vms(in powers: Set<AgentWire.GuestPower>) async -> [String] {
        await driver.statuses().filter { powers.contains($0.power) }.map(\.vmId)
    }

    /// How many peer agents accept a TCP connection within a second (probed in parallel).
    private func reachablePeers(_ peers: [String]) async -> Int {
        await withTaskGroup(of: Bool.self) { group in
            for peer in peers {
                guard let url = URLComponents(string: peer), let host = url.host else { continue }
                let port = url.port ?? (url.scheme == "https" ? 443 : 80)
                group.addTask { await TCP.reachable(host, port: port, timeout: .seconds(1)).0 }
            }
            var count = 0
            for await reachable in group where reachable { count += 1 }
            return count
        }
    }
}
