import Foundation
import GRDB
import Scheduling
import ShepherdCore

/// VM-level HA: a protected VM whose QEMU died or whose guest panicked (pvpanic) is started
/// again on its host, which is alive (it reported the failure). Host failures are not acted on
/// yet: restarting a VM elsewhere needs proof its old host cannot run it (fencing through a BMC
/// or a storage lease, issue #8), and without that proof Shepherd never risks a VM running twice.
/// Admission control (`HAAdmission` in Scheduling) refuses starts that would break the cluster's
/// failover capacity.
final class HAService: Sendable {
    let store: Store
    let events: EventLog
    let vms: VMService
    let hostReserveMiB: Int
    private let restarts = RestartBudget()

    static let policies = ["restart-in-cluster", "restart-on-original-host", "stop"]
    static let priorities = ["high", "medium", "low"]

    init(store: Store, events: EventLog, vms: VMService, hostReserveMiB: Int) {
        self.store = store; self.events = events; self.vms = vms; self.hostReserveMiB = hostReserveMiB
    }

    /// Called with the VMs a heartbeat just found crashed or panicked.
    func handleFailures(_ failed: [(vmId: String, reason: String)]) async {
        for failure in failed {
            guard let (vm, cluster) = try? await store.db.read({ db -> (VMRecord, ClusterRecord)? in
                guard let vm = try VMRecord.fetchOne(db, key: failure.vmId), let host = try HostRecord.fetchOne(db, key: vm.hostId),
                      let cluster = try ClusterRecord.fetchOne(db, key: host.clusterId) else { return nil }
                return (vm, cluster)
            }) ?? nil else { continue }
            guard cluster.haEnabled else { continue }
            guard vm.haPolicy != "stop" else {
                await events.record(.info, "ha.skipped", targetType: "vm", targetId: vm.id, targetName: vm.name,
                                    "not restarted: its HA policy is stop")
                continue
            }
            guard await restarts.allow(vm.id) else {
                await events.record(.error, "ha.gave-up", targetType: "vm", targetId: vm.id, targetName: vm.name,
                                    "not restarted: it failed \(RestartBudget.limit) times within \(Int(RestartBudget.window / 60)) min (\(failure.reason))")
                continue
            }
            do {
                let task = try await vms.start(vm.id)
                await events.record(.warning, "ha.restart", targetType: "vm", targetId: vm.id, targetName: vm.name,
                                    "restarting on its host after: \(failure.reason) (HA priority \(vm.haPriority); task \(task.id))")
            } catch {
                await events.record(.error, "ha.failed", targetType: "vm", targetId: vm.id, targetName: vm.name,
                                    "could not restart after \(failure.reason): \(error)")
            }
        }
    }

    // MARK: - Admission

    /// The cluster's admission policy, parsed (nil when off); errors name the field.
    static func admissionPolicy(_ text: String, hosts: [HostRecord]) throws -> HAAdmissionPolicy? {
        let parts = text.split(separator: ":", maxSplits: 1).map(String.init)
        switch (parts.first ?? "", parts.count) {
        case ("off", 1): return nil
        case ("percent", 2):
            guard let value = Double(parts[1].hasSuffix("%") ? String(parts[1].dropLast()) : parts[1]), (0...100).contains(value) else {
                throw ShepherdError.invalidField("ha.admission", "'\(parts[1])' is not a percentage 0–100 (percent:25)")
            }
            return .reservePercent(cpu: value, memory: value)
        case ("failover-hosts", 2):
            var indices = Set<Int>()
            for name in parts[1].split(separator: ",").map(String.init) {
                guard let index = hosts.firstIndex(where: { $0.name == name || $0.id == name }) else {
                    throw ShepherdError.invalidField("ha.admission", "failover host '\(name)' is not in the cluster")
                }
                indices.insert(index)
            }
            guard !indices.isEmpty else { throw ShepherdError.invalidField("ha.admission", "failover-hosts needs at least one host") }
            return .failoverHosts(indices)
        case ("host-failures", 2):
            guard let count = Int(parts[1]), count >= 1 else {
                throw ShepherdError.invalidField("ha.admission", "'\(parts[1])' is not a number of host failures ≥ 1 (host-failures:1)")
            }
            return .hostFailuresTolerated(count)
        default:
            throw ShepherdError.invalidField("ha.admission", "'\(text)' is not off, percent:N, failover-hosts:HOST[,HOST…] or host-failures:N")
        }
    }

    /// Inside the start transaction: refuses a protected VM's start that would break the
    /// cluster's admission policy. Memory counts (reservations = VM memory, no overcommit yet);
    /// CPU is not reserved, so it counts 0.
    static func admit(_ db: Database, vm: VMRecord, host: HostRecord, hostReserveMiB: Int) throws {
        guard vm.haPolicy != "stop", let cluster = try ClusterRecord.fetchOne(db, key: host.clusterId), cluster.haEnabled else { return }
        let hosts = try HostRecord.filter(Column("clusterId") == cluster.id).order(Column("name")).fetchAll(db)
        guard let policy = try admissionPolicy(cluster.haAdmission, hosts: hosts) else { return }
        let index = Dictionary(uniqueKeysWithValues: hosts.enumerated().map { ($1.id, $0) })
        let snapshotHosts = hosts.map { h in
            SnapshotHost(name: h.name, state: h.hostState, cpuCapacityMHz: Double(h.cores) * DRSService.mhzPerCore, cores: h.cores,
                         memoryMiB: max(0, h.memoryTotalMiB - hostReserveMiB))
        }
        let running = try VMRecord.filter(hosts.map(\.id).contains(Column("hostId")) && Column("id") != vm.id).fetchAll(db)
            .filter { $0.lifecycle.consumesHostResources }
        let snapshotVMs = running.map { other in
            SnapshotVM(name: other.name, host: index[other.hostId], vcpus: other.cpus, cpuDemandMHz: 0, memoryMiB: other.memoryMiB,
                       haPriority: other.haPolicy == "stop" ? nil : priority(other.haPriority))
        }
        let starting = SnapshotVM(name: vm.name, host: index[vm.hostId], vcpus: vm.cpus, cpuDemandMHz: 0, memoryMiB: vm.memoryMiB,
                                  haPriority: priority(vm.haPriority))
        if case .failure(let refusal) = HAAdmission.check(ClusterSnapshot(hosts: snapshotHosts, vms: snapshotVMs), policy: policy,
                                                          starting: starting) {
            throw ShepherdError(refusal.code, "cannot start VM '\(vm.name)': \(refusal.message)")
        }
    }

    static func priority(_ text: String) -> HAPriority {
        switch text { case "high": .high; case "low": .low; default: .medium }
    }
}

/// No crash loops: at most `limit` HA restarts of one VM within `window` seconds.
actor RestartBudget {
    static let limit = 3
    static let window: TimeInterval = 600
    private var recent: [String: [Date]] = [:]

    func allow(_ vm: String, now: Date = Date()) -> Bool {
        var times = (recent[vm] ?? []).filter { now.timeIntervalSince($0) < Self.window }
        guard times.count < Self.limit else { recent[vm] = times; return false }
        times.append(now)
        recent[vm] = times
        return true
    }
}
