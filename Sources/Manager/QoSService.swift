import Foundation
import GRDB
import Scheduling
import ShepherdCore

/// VM QoS (`shepherd vm qos set`) and the cluster's memory overcommit switch. A change is checked
/// whole (every VM of a batch) before anything is written; a running VM gets it at once through
/// its agent (cgroup and balloon), and if an agent fails every change is put back.
final class QoSService: Sendable {
    let store: Store
    let agents: AgentClient
    let events: EventLog
    let vms: VMService
    let hostReserveMiB: Int

    init(store: Store, agents: AgentClient, events: EventLog, vms: VMService, hostReserveMiB: Int) {
        self.store = store; self.agents = agents; self.events = events; self.vms = vms; self.hostReserveMiB = hostReserveMiB
    }

    /// One VM's QoS.
    func set(vm reference: String, _ change: QoSChange) async throws -> VMRecord {
        try await apply(change, describe: "VM '\(reference)'") { db in [try Inventory.vm(db, reference)] }.first!
    }

    /// Every VM of a cluster at once (the seed's batch fix before turning overcommit off).
    func set(cluster reference: String, _ change: QoSChange) async throws -> [VMRecord] {
        try await apply(change, describe: "cluster '\(reference)'") { db in
            let cluster = try Inventory.cluster(db, reference)
            return try Inventory.vms(db, inCluster: cluster.id)
        }
    }

    private func apply(_ change: QoSChange, describe: String, select: @escaping @Sendable (Database) throws -> [VMRecord]) async throws -> [VMRecord] {
        guard !change.isEmpty else {
            throw ShepherdError(.invalidBody, "nothing to change: give at least one of cpuShares, cpuReservationMHz, cpuLimitMHz, memoryReservation, memoryShares, memoryLimit")
        }
        let (before, after) = try await store.db.write { [hostReserveMiB] db -> ([VMRecord], [VMRecord]) in
            let before = try select(db)
            var after: [VMRecord] = []
            for vm in before {
                // A VM being started, stopped or moved would run with the QoS its task read.
                if let task = vm.operationTask ?? vm.lifecycle.task {
                    throw ShepherdError(.illegalState, "VM '\(vm.name)' is \(vm.state) (task \(task)); change its QoS when that ends")
                }
                let host = try Inventory.host(db, vm.hostId)
                let overcommit = try ClusterRecord.fetchOne(db, key: host.clusterId)?.memoryOvercommit ?? false
                var changed = vm
                changed.qos = try change.applied(to: vm.qos, vm: vm.name, cpus: vm.cpus, memoryMiB: vm.memoryMiB, overcommit: overcommit)
                // Earlier VMs of the batch are written already, so the host's load counts them.
                if vm.lifecycle.consumesHostResources {
                    let extraMemory = changed.memoryReservationMiB - vm.memoryReservationMiB
                    let extraCPU = changed.cpuReservationMHz - vm.cpuReservationMHz
                    let candidate = try Inventory.candidate(db, host)
                    let unreserved = candidate.unreservedMiB(hostReserveMiB: hostReserveMiB)
                    if extraMemory > unreserved {
                        throw ShepherdError(.insufficientResources, "memoryReservation: host '\(host.name)' of '\(vm.name)' has \(unreserved) MiB of real memory unreserved; the change reserves \(extraMemory) MiB more (reservations may not exceed it)")
                    }
                    if extraCPU > candidate.unreservedMHz {
                        throw ShepherdError(.insufficientResources, "cpuReservationMHz: host '\(host.name)' of '\(vm.name)' has \(candidate.unreservedMHz) MHz unreserved (\(host.cores) cores × 1000 MHz); the change reserves \(extraCPU) MHz more")
                    }
                }
                try changed.update(db)
                after.append(changed)
            }
            return (before, after)
        }
        // Running VMs get it now; if one cannot, every VM gets its old QoS back.
        var pushed: [VMRecord] = []
        do {
            for vm in after where vm.state == "running" && vm.qos != before.first(where: { $0.id == vm.id })?.qos {
                try await push(vm)
                pushed.append(vm)
            }
        } catch {
            var undone: [String] = []
            for old in before {
                _ = try? await store.db.write { db in
                    guard var row = try VMRecord.fetchOne(db, key: old.id) else { return }
                    row.qos = old.qos
                    try row.update(db)
                }
                if pushed.contains(where: { $0.id == old.id }), (try? await push(old)) != nil { undone.append(old.name) }
            }
            throw failure(error, rolledBack: "the QoS of \(describe) is as before" + (undone.isEmpty ? "" : " (re-applied on \(undone.joined(separator: ", ")))"))
        }
        for vm in after {
            await events.record(.info, "vm.qos", targetType: "vm", targetId: vm.id, targetName: vm.name,
                                "QoS \(Self.describe(vm.qos))\(vm.state == "running" ? "; applied to the running VM" : "")")
        }
        return after
    }

    /// Hands the running VM's definition (with its QoS) to its agent, which applies it at once.
    private func push(_ vm: VMRecord) async throws {
        let host = try await store.db.read { db in try Inventory.host(db, vm.hostId) }
        _ = try await agents.define(Inventory.endpoint(host), try await vms.definitionFor(vm))
    }

    static func describe(_ qos: VMQoS) -> String {
        "CPU shares \(qos.cpuShares), reservation \(qos.cpuReservationMHz) MHz, limit \(qos.cpuLimitMHz.map { "\($0) MHz" } ?? "none"); " +
            "memory reservation \(qos.memoryReservationMiB) MiB, shares \(qos.memoryShares), limit \(qos.memoryLimitMiB.map { "\($0) MiB" } ?? "none")"
    }

    // MARK: - the cluster switch

    /// Inside the cluster update: turns memory overcommit on or off and sets its ratio.
    /// Off is refused while a running VM reserves less than its memory (or has a memory limit);
    /// VMs that are off get their reservation raised to their memory and their limit removed.
    /// A ratio is refused when a host already holds more VM memory than it allows.
    static func update(_ db: Database, _ cluster: inout ClusterRecord, overcommit: Bool?, ratioPercent: Int?, hostReserveMiB: Int) throws -> [String] {
        var notes: [String] = []
        if let ratioPercent, !MemoryOvercommit.ratioRange.contains(ratioPercent) {
            throw ShepherdError.invalidField("overcommitRatioPercent", "\(ratioPercent) % is outside \(MemoryOvercommit.ratioRange.lowerBound)–\(MemoryOvercommit.ratioRange.upperBound) % (the seed's default: \(MemoryOvercommit.defaultRatioPercent) %)")
        }
        let vms = try Inventory.vms(db, inCluster: cluster.id)
        if overcommit == false && cluster.memoryOvercommit {
            let running = vms.filter { $0.lifecycle.consumesHostResources }
            try MemoryOvercommit.checkTurningOff(cluster: cluster.name, running: running.map {
                .init(vm: $0.name, memoryMiB: $0.memoryMiB, reservationMiB: $0.memoryReservationMiB, limitMiB: $0.memoryLimitMiB)
            })
            for var vm in vms where !vm.lifecycle.consumesHostResources && (vm.memoryReservationMiB < vm.memoryMiB || vm.memoryLimitMiB != nil) {
                vm.memoryReservationMiB = vm.memoryMiB
                vm.memoryLimitMiB = nil
                try vm.update(db)
                notes.append(vm.name)
            }
        }
        if let overcommit { cluster.memoryOvercommit = overcommit }
        if let ratioPercent { cluster.overcommitRatioPercent = ratioPercent }
        // Whatever the switch now says, no host may already hold more than it allows.
        let loads = try Inventory.hostLoads(db)
        for host in try HostRecord.filter(Column("clusterId") == cluster.id).order(Column("name")).fetchAll(db) {
            let allowed = Int((Double(max(0, host.memoryTotalMiB - hostReserveMiB)) * cluster.overcommitRatio).rounded(.down))
            let holds = loads[host.id]?.memoryMiB ?? 0
            if holds > allowed {
                throw ShepherdError(.preflightFailed, "\(overcommit != nil ? "memoryOvercommit" : "overcommitRatioPercent"): host '\(host.name)' runs VMs with \(holds) MiB of memory; \(cluster.memoryOvercommit ? "\(cluster.overcommitRatioPercent) %" : "without overcommit, 100 %") of its \(host.memoryTotalMiB - hostReserveMiB) MiB for VMs allows \(allowed) MiB")
            }
        }
        return notes.isEmpty ? [] : ["reservation raised to 100 % (and any memory limit removed) on the stopped VM(s) " + notes.map { "'\($0)'" }.joined(separator: ", ")]
    }
}
