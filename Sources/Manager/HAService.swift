import Foundation
import GRDB
import Scheduling
import ServiceLifecycle
import ShepherdCore

/// HA. VM level: a protected VM whose QEMU died or whose guest panicked (pvpanic) is started
/// again on its host, which is alive (it reported the failure). Host level: the protected VMs
/// of a lost host restart elsewhere once the host is proven unable to run them — its BMC reports
/// it off (HA powers it off through Redfish when it must), or its storage lease expired (an
/// agent that cannot renew it ends its own VMs first). Without proof nothing restarts: Shepherd
/// never risks a VM running twice. Admission control (`HAAdmission` in Scheduling) refuses
/// starts that would break the cluster's failover capacity.
final class HAService: Sendable {
    let store: Store
    let events: EventLog
    let vms: VMService
    let agents: AgentClient
    let power: PowerService
    let hostReserveMiB: Int
    private let restarts = RestartBudget()
    private let holds = FailoverHolds()
    private let notes = OnceNotes()

    static let policies = ["restart-in-cluster", "restart-on-original-host", "stop"]
    static let priorities = ["high", "medium", "low"]

    init(store: Store, events: EventLog, vms: VMService, agents: AgentClient, power: PowerService, hostReserveMiB: Int) {
        self.store = store; self.events = events; self.vms = vms; self.agents = agents; self.power = power; self.hostReserveMiB = hostReserveMiB
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
                let task = try await vms.start(vm.id, admission: false)
                await events.record(.warning, "ha.restart", targetType: "vm", targetId: vm.id, targetName: vm.name,
                                    "restarting on its host after: \(failure.reason) (HA priority \(vm.haPriority); task \(task.id))")
            } catch {
                await events.record(.error, "ha.failed", targetType: "vm", targetId: vm.id, targetName: vm.name,
                                    "could not restart after \(failure.reason): \(error)")
            }
        }
    }

    // MARK: - Host failures

    /// Restarts the protected VMs of lost hosts elsewhere — only once the host is proven unable to
    /// run them: its storage lease on a shared datastore, read by a connected peer, has expired
    /// (a host that cannot renew it ends its own VMs before that). Without a lease there is no
    /// proof, and nothing is restarted. QEMU's lock on the disk image is the last guard: a start
    /// while the old QEMU still runs fails, and the VM is handed back to its old host.
    func failoverLostHosts() async {
        guard let clusters = try? await store.db.read({ db in try ClusterRecord.filter(Column("haEnabled") == true).fetchAll(db) }) else { return }
        for cluster in clusters {
            guard let hosts = try? await store.db.read({ db in
                try HostRecord.filter(Column("clusterId") == cluster.id).order(Column("name")).fetchAll(db)
            }) else { continue }
            for lost in hosts where lost.hostState == .disconnected {
                await failover(lost, hosts: hosts)
            }
        }
    }

    private func failover(_ lost: HostRecord, hosts: [HostRecord]) async {
        guard let stranded = try? await store.db.read({ db in
            try VMRecord.filter(Column("hostId") == lost.id && Column("state") == "unknown").fetchAll(db)
        }), !stranded.isEmpty else { return }
        let protected = stranded.filter { $0.haPolicy == "restart-in-cluster" }
        for vm in stranded where vm.haPolicy != "restart-in-cluster" {
            await note("\(vm.id)-policy", .info, "ha.waiting", vm, "host '\(lost.name)' is lost; HA policy \(vm.haPolicy): not restarted elsewhere")
        }
        guard !protected.isEmpty else { return }
        let reason: String
        if let fenced = await fenceThroughBMC(lost, vm: protected[0]) {
            reason = "host '\(lost.name)' failed: no heartbeat; \(fenced)"
        } else if let expired = await leaseExpired(lost, hosts: hosts, vm: protected[0]) {
            reason = expired
        } else {
            return
        }
        // The cluster as restart planning sees it.
        guard let (snapshot, vmIDs) = try? await store.db.read({ db in try self.snapshot(db, hosts: hosts) }),
              let lostIndex = hosts.firstIndex(where: { $0.id == lost.id }) else { return }
        let plan = HARestartPlanner.plan(snapshot, failedHosts: [lostIndex])
        for failure in plan.unplaced {
            let id = vmIDs[failure.vm]
            guard let vm = protected.first(where: { $0.id == id }) else { continue }
            await note("\(id)-unplaced", .error, "ha.failed", vm, "\(reason); no host can take it: \(failure.reason)")
        }
        // Started in the plan's priority order, without waiting for one guest to boot before the
        // next starts (vSphere's default): a host's VMs come back together, not one by one.
        await withTaskGroup(of: Void.self) { group in
            for placement in plan.placements {
                let id = vmIDs[placement.vm]
                guard let vm = protected.first(where: { $0.id == id }) else { continue }
                let target = hosts[placement.host]
                guard let task = await beginRestart(vm, from: lost, on: target, reason: reason) else { continue }
                group.addTask { await self.concludeRestart(vm, task: task, from: lost, on: target) }
            }
        }
    }

    /// The first proof: the lost host's BMC reports it off (HA powers it off when it is on).
    /// Nil when the host has no BMC or the BMC cannot prove it; the storage lease is then the proof.
    private func fenceThroughBMC(_ lost: HostRecord, vm: VMRecord) async -> String? {
        guard lost.bmcAddress != nil else { return nil }
        do {
            return try await power.fence(lost)
        } catch {
            await note("\(lost.id)-fence-\(Int(lost.lastHeartbeat?.timeIntervalSince1970 ?? 0))", .warning, "ha.fencing-failed", vm,
                       "host '\(lost.name)' is lost and its BMC could not power it off (\(error)); waiting for its storage lease to expire instead")
            return nil
        }
    }

    /// The second proof: a connected peer reads the lost host's storage lease and finds it expired.
    private func leaseExpired(_ lost: HostRecord, hosts: [HostRecord], vm: VMRecord) async -> String? {
        guard let peer = hosts.first(where: { $0.hostState == .connected }) else {
            await note("\(lost.id)-peer", .warning, "ha.blocked", vm, "host '\(lost.name)' is lost and no connected host can read its storage lease")
            return nil
        }
        let leases: [AgentWire.Lease]
        do { leases = try await agents.leases(Inventory.endpoint(peer)) } catch { return nil }
        guard let lease = leases.filter({ $0.hostId == lost.id }).min(by: { $0.ageSeconds < $1.ageSeconds }) else {
            await note("\(lost.id)-nolease", .warning, "ha.blocked", vm,
                       "host '\(lost.name)' is lost but holds no storage lease on a shared datastore: nothing proves it stopped, so its VMs are not restarted elsewhere")
            return nil
        }
        // What `host show` says about the lost host's lease: the file, not its last heartbeat.
        try? await store.db.write { db in
            guard var row = try HostRecord.fetchOne(db, key: lost.id) else { return }
            row.leaseRenewedAt = Date(timeIntervalSince1970: lease.renewedAt)
            try row.update(db)
        }
        if lease.isolatedVMsStopped == true {
            return "host '\(lost.name)' is isolated: it lost the manager and every peer and its isolation response ended its VMs, as its storage lease on \(lease.datastore) says"
        }
        guard lease.ageSeconds > Leases.expireSeconds else {
            await note("\(lost.id)-wait-\(Int(lost.lastHeartbeat?.timeIntervalSince1970 ?? 0))", .info, "ha.waiting", vm,
                       "host '\(lost.name)' is lost but renewed its storage lease \(Int(lease.ageSeconds)) s ago (expiry \(Int(Leases.expireSeconds)) s): it may still run its VMs")
            return nil
        }
        return "host '\(lost.name)' failed: no heartbeat, storage lease on \(lease.datastore) expired \(Int(lease.ageSeconds)) s ago"
    }

    /// Moves the VM's record to `target` and starts it there (`beginRestart`, in priority order);
    /// `concludeRestart` waits for the boot, concurrently with the others. If the start fails, the target
    /// forgets the VM and it goes back to its old host, unknown, held for a while before the next
    /// try: a disk still locked by a QEMU on the old host proves the VM runs there, so HA waits
    /// (30 s, doubling to 5 min, not counted against the restart budget) instead of retrying at once.
    private func beginRestart(_ vm: VMRecord, from lost: HostRecord, on target: HostRecord, reason: String) async -> TaskRecord? {
        // The failed attempt's event already said when the next one comes.
        guard await holds.heldUntil(vm.id) == nil else { return nil }
        // A host failure is not the VM's fault: only failed attempts count against its budget.
        guard await !restarts.exhausted(vm.id) else {
            await note("\(vm.id)-gave-up-\(lost.id)", .error, "ha.gave-up", vm,
                       "not restarted elsewhere: \(RestartBudget.limit) attempts within \(Int(RestartBudget.window / 60)) min failed (\(reason))")
            return nil
        }
        do {
            try await store.db.write { db in
                guard var row = try VMRecord.fetchOne(db, key: vm.id), row.state == "unknown", row.hostId == lost.id else { return }
                row.hostId = target.id
                row.lifecycle = .crashed(reason: reason)
                try row.update(db)
            }
            let task = try await vms.start(vm.id, admission: false)
            await events.record(.warning, "ha.failover", targetType: "vm", targetId: vm.id, targetName: vm.name,
                                "\(reason); restarting it on \(target.name) (priority \(vm.haPriority); task \(task.id))")
            return task
        } catch {
            try? await handBack(vm, to: lost, from: target, why: "\(error)")
            await events.record(.error, "ha.failed", targetType: "vm", targetId: vm.id, targetName: vm.name, "failover to \(target.name): \(error)")
            return nil
        }
    }

    /// Waits for the restart's start task; a failed one goes back to its lost host, held (above).
    private func concludeRestart(_ vm: VMRecord, task: TaskRecord, from lost: HostRecord, on target: HostRecord) async {
        do {
            let finished = try await store.finished(task.id)
            guard finished.state != "succeeded" else {
                await holds.clear(vm.id)
                return
            }
            let error = finished.errorMessage ?? "start failed"
            try? await agents.release(Inventory.endpoint(target), vm: vm.id)
            try await handBack(vm, to: lost, from: target, why: error)
            if finished.errorCode == ShepherdError.Code.diskLocked.rawValue {
                let until = await holds.hold(vm.id, locked: true)
                await events.record(.warning, "ha.held", targetType: "vm", targetId: vm.id, targetName: vm.name,
                                    "not restarted on \(target.name): its disk is locked by another QEMU, so it still runs on \(lost.name); handed back to \(lost.name), HA tries again at \(until.formatted(.iso8601)) while the host stays lost (\(error))")
            } else {
                await restarts.record(vm.id)
                let until = await holds.hold(vm.id, locked: false)
                await events.record(.error, "ha.failed", targetType: "vm", targetId: vm.id, targetName: vm.name,
                                    "not restarted on \(target.name): \(error); handed back to \(lost.name) (it may still run there); next attempt at \(until.formatted(.iso8601))")
            }
        } catch {
            try? await handBack(vm, to: lost, from: target, why: "\(error)")
            await events.record(.error, "ha.failed", targetType: "vm", targetId: vm.id, targetName: vm.name, "failover to \(target.name): \(error)")
        }
    }

    /// Puts a VM whose restart on `target` failed back on its lost host, unknown.
    private func handBack(_ vm: VMRecord, to lost: HostRecord, from target: HostRecord, why: String) async throws {
        try await store.db.write { db in
            guard var row = try VMRecord.fetchOne(db, key: vm.id), row.hostId == target.id, !row.lifecycle.consumesHostResources else { return }
            row.hostId = lost.id
            row.lifecycle = .unknown(reason: "host '\(lost.name)' lost; HA could not restart it on \(target.name): \(why)")
            try row.update(db)
        }
    }

    /// Hosts and the VMs that hold resources (plus the lost host's unknown protected ones).
    private func snapshot(_ db: Database, hosts: [HostRecord]) throws -> (ClusterSnapshot, [String]) {
        let (snapshotHosts, index) = Inventory.snapshotHosts(hosts, reserveMiB: hostReserveMiB)
        let vms = try VMRecord.filter(hosts.map(\.id).contains(Column("hostId"))).fetchAll(db)
            .filter { $0.lifecycle.consumesHostResources || ($0.state == "unknown" && $0.haPolicy == "restart-in-cluster") }
        let snapshotVMs = vms.map { vm in
            SnapshotVM(name: vm.name, host: index[vm.hostId], vcpus: vm.cpus, cpuDemandMHz: 0, memoryMiB: vm.memoryMiB,
                       memoryReservationMiB: vm.memoryReservationMiB, haPriority: vm.state == "unknown" ? Self.priority(vm.haPriority) : nil)
        }
        let ratio = try hosts.first.flatMap { try ClusterRecord.fetchOne(db, key: $0.clusterId) }?.overcommitRatio ?? 1
        // A restart lands only on hosts that carry the VM's switches.
        let rules = try NetworkService.placementRules(db, vmIndex: Dictionary(uniqueKeysWithValues: vms.enumerated().map { ($1.id, $0) }), hostIndex: index)
        return (ClusterSnapshot(hosts: snapshotHosts, vms: snapshotVMs, rules: rules, memoryOvercommitRatio: ratio), vms.map(\.id))
    }

    private func note(_ key: String, _ severity: EventLog.Severity, _ kind: String, _ vm: VMRecord, _ message: String) async {
        guard await notes.first(key) else { return }
        await events.record(severity, kind, targetType: "vm", targetId: vm.id, targetName: vm.name, message)
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
    /// cluster's admission policy. Memory counts by reservation and within the overcommit ratio;
    /// CPU demand counts 0 (CPU reservations are checked by placement).
    static func admit(_ db: Database, vm: VMRecord, host: HostRecord, hostReserveMiB: Int) throws {
        guard vm.haPolicy != "stop", let cluster = try ClusterRecord.fetchOne(db, key: host.clusterId), cluster.haEnabled else { return }
        let hosts = try HostRecord.filter(Column("clusterId") == cluster.id).order(Column("name")).fetchAll(db)
        guard let policy = try admissionPolicy(cluster.haAdmission, hosts: hosts) else { return }
        let (snapshotHosts, index) = Inventory.snapshotHosts(hosts, reserveMiB: hostReserveMiB)
        let running = try VMRecord.filter(hosts.map(\.id).contains(Column("hostId")) && Column("id") != vm.id).fetchAll(db)
            .filter { $0.lifecycle.consumesHostResources }
        let snapshotVMs = running.map { other in
            SnapshotVM(name: other.name, host: index[other.hostId], vcpus: other.cpus, cpuDemandMHz: 0, memoryMiB: other.memoryMiB,
                       memoryReservationMiB: other.memoryReservationMiB, haPriority: other.haPolicy == "stop" ? nil : priority(other.haPriority))
        }
        let starting = SnapshotVM(name: vm.name, host: index[vm.hostId], vcpus: vm.cpus, cpuDemandMHz: 0, memoryMiB: vm.memoryMiB,
                                  memoryReservationMiB: vm.memoryReservationMiB, haPriority: priority(vm.haPriority))
        let snapshot = ClusterSnapshot(hosts: snapshotHosts, vms: snapshotVMs, memoryOvercommitRatio: cluster.overcommitRatio)
        if case .failure(let refusal) = HAAdmission.check(snapshot, policy: policy,
                                                          starting: starting) {
            throw ShepherdError(refusal.code, "cannot start VM '\(vm.name)': \(refusal.message)")
        }
    }

    static func priority(_ text: String) -> HAPriority {
        switch text { case "high": .high; case "low": .low; default: .medium }
    }
}

/// Says yes once per key: "waiting for the lease" is an event, not one every 2 s.
actor OnceNotes {
    private var seen = Set<String>()
    func first(_ key: String) -> Bool { seen.insert(key).inserted }
}

/// Watches for lost hosts whose VMs HA must restart elsewhere.
struct HAMonitor: Service {
    let ha: HAService
    func run() async throws {
        try? await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                await ha.failoverLostHosts()
                try await Task.sleep(for: Heartbeats.interval)
            }
        }
    }
}

/// When HA may next try to restart a VM elsewhere after a failed attempt.
actor FailoverHolds {
    static let firstHold: TimeInterval = 30
    static let longestHold: TimeInterval = 300
    private var holds: [String: (until: Date, seconds: TimeInterval)] = [:]

    func heldUntil(_ vm: String, now: Date = Date()) -> Date? {
        guard let hold = holds[vm], hold.until > now else { return nil }
        return hold.until
    }

    /// Holds the VM: 30 s after a first failure, doubling (to 5 min) while its disk stays locked.
    func hold(_ vm: String, locked: Bool, now: Date = Date()) -> Date {
        let seconds = locked ? min((holds[vm]?.seconds).map { $0 * 2 } ?? Self.firstHold, Self.longestHold) : Self.firstHold
        let until = now.addingTimeInterval(seconds)
        holds[vm] = (until, seconds)
        return until
    }

    func clear(_ vm: String) { holds[vm] = nil }
}

/// No crash loops: at most `limit` VM-level HA restarts (or failed failovers) of one VM within
/// `window` seconds.
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

    /// Whether the VM used up its budget (without using any of it).
    func exhausted(_ vm: String, now: Date = Date()) -> Bool {
        (recent[vm] ?? []).filter { now.timeIntervalSince($0) < Self.window }.count >= Self.limit
    }

    /// Counts a failed attempt against the budget.
    func record(_ vm: String, now: Date = Date()) {
        recent[vm, default: []].append(now)
    }
}
