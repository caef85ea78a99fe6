import AsyncHTTPClient
import Foundation
import GRDB
import Redfish
import ShepherdCore

/// Host power through each host's BMC (Redfish): the operator's `host power on|off|reset`, and
/// HA's fencing — proof that a lost host cannot run its VMs because its BMC reports it off.
/// BMC passwords stay in the database: never logged, never in an API answer or an event.
final class PowerService: Sendable {
    let store: Store
    let tasks: TaskEngine
    let events: EventLog
    private let http: HTTPClient

    /// How long a BMC may take to report the new power state.
    static let confirmTimeout: Duration = .seconds(60)
    /// How long a powered-on host may take until its agent's heartbeats arrive.
    static let reconnectTimeout: Duration = .seconds(180)

    init(store: Store, tasks: TaskEngine, events: EventLog, http: HTTPClient = .shared) {
        self.store = store; self.tasks = tasks; self.events = events; self.http = http
    }

    /// `standby` is DPM's power-off: the host waits, off, until DPM (or an operator) powers it on.
    enum Action: String, Sendable { case on, off, reset, standby }

    // MARK: - BMC settings

    /// Sets a host's BMC once its power state could be read with these credentials.
    func setBMC(_ reference: String, address: String, user: String, password: String, insecure: Bool) async throws -> HostRecord {
        guard !user.isEmpty else { throw ShepherdError.invalidField("bmc.user", "is empty") }
        guard !password.isEmpty else { throw ShepherdError.invalidField("bmc.password", "is empty") }
        let host = try await store.db.read { db in try Inventory.host(db, reference) }
        let client = try RedfishClient(address: address, user: user, password: password, http: http, insecure: insecure)
        let state = try await client.powerState()
        let saved = try await store.db.write { db -> HostRecord in
            guard var row = try HostRecord.fetchOne(db, key: host.id) else { throw ShepherdError.notFound("host", reference) }
            row.bmcAddress = address
            row.bmcUser = user
            row.bmcPassword = password
            row.bmcInsecure = insecure
            row.powerState = state.rawValue
            row.powerCheckedAt = Date()
            try row.update(db)
            return row
        }
        await events.record(.info, "host.bmc", targetType: "host", targetId: host.id, targetName: host.name,
                            "BMC set: \(address) as \(user)\(insecure ? ", certificate not verified" : ""); it reports power \(state.rawValue)")
        return saved
    }

    func clearBMC(_ reference: String) async throws {
        let host = try await store.db.write { db -> HostRecord in
            var row = try Inventory.host(db, reference)
            guard row.bmcAddress != nil else { throw ShepherdError(.illegalState, "host '\(row.name)' has no BMC") }
            row.bmcAddress = nil; row.bmcUser = nil; row.bmcPassword = nil; row.bmcInsecure = false
            row.powerState = nil; row.powerCheckedAt = nil
            try row.update(db)
            return row
        }
        await events.record(.info, "host.bmc", targetType: "host", targetId: host.id, targetName: host.name,
                            "BMC forgotten: HA fences this host through its storage lease only")
    }

    // MARK: - Power actions

    func power(_ reference: String, action: Action, force: Bool) async throws -> TaskRecord {
        let (host, task) = try await store.db.write { [tasks] db -> (HostRecord, TaskRecord) in
            let host = try Inventory.host(db, reference)
            guard host.bmcAddress != nil else {
                throw ShepherdError(.illegalState, "host '\(host.name)' has no BMC: set one with `shepherd host set \(host.name) --bmc redfish://ADDRESS --bmc-user USER --bmc-password-file FILE`")
            }
            if action != .on, !force {
                let running = try VMRecord.filter(Column("hostId") == host.id).fetchAll(db).filter { $0.lifecycle.consumesHostResources }
                if !running.isEmpty {
                    throw ShepherdError(.illegalState,
                                        "host '\(host.name)' runs \(running.count) VM(s) (\(running.map(\.name).sorted().joined(separator: ", "))): enter maintenance mode first, or force to power them off with the host")
                }
            }
            let task = tasks.newTask(kind: "host.power.\(action.rawValue)", targetType: "host", targetId: host.id, targetName: host.name)
            try task.insert(db)
            return (host, task)
        }
        let client = try self.client(host)
        tasks.run(task) { [self] progress in
            switch action {
            case .off:
                await progress.update(10, "asking \(host.name)'s BMC to power off")
                try await client.powerOff(confirmWithin: Self.confirmTimeout)
                try await recordPoweredOff(host, why: "powered off through its BMC")
                return "\(host.name) is off (its BMC confirmed)"
            case .standby:
                await progress.update(10, "asking \(host.name)'s BMC to power off into standby")
                try await client.powerOff(confirmWithin: Self.confirmTimeout)
                try await recordPoweredOff(host, why: "powered off into standby by DPM", standby: true)
                return "\(host.name) is in standby (its BMC confirmed it off)"
            case .on:
                await progress.update(10, "asking \(host.name)'s BMC to power on")
                try await client.powerOn(confirmWithin: Self.confirmTimeout)
                try await recordPower(host.id, .on)
                await events.record(.info, "host.power", targetType: "host", targetId: host.id, targetName: host.name, "powered on through its BMC")
                try await waitForHeartbeat(host, progress: progress, from: 40)
                return "\(host.name) is on and its agent reports"
            case .reset:
                await progress.update(10, "asking \(host.name)'s BMC to reset")
                try await client.reset(.forceRestart)
                try await recordPoweredOff(host, why: "reset through its BMC")
                try await client.powerOn(confirmWithin: Self.confirmTimeout)
                try await recordPower(host.id, .on)
                try await waitForHeartbeat(host, progress: progress, from: 40)
                return "\(host.name) was reset and its agent reports again"
            }
        }
        return task
    }

    /// The host's VMs died with it: they are stopped, and the host disconnected until it reports.
    private func recordPoweredOff(_ host: HostRecord, why: String, standby: Bool = false) async throws {
        let stopped = try await store.db.write { db -> [VMRecord] in
            guard var row = try HostRecord.fetchOne(db, key: host.id) else { return [] }
            row.powerState = RedfishWire.PowerState.off.rawValue
            row.powerCheckedAt = Date()
            if row.hostState == .connected { row.state = (standby ? HostState.standby : .disconnected).rawValue }
            try row.update(db)
            var stopped: [VMRecord] = []
            for var vm in try VMRecord.filter(Column("hostId") == host.id).fetchAll(db)
            where vm.lifecycle.consumesHostResources || vm.state == "unknown" {
                vm.lifecycle = .stopped
                vm.pid = nil
                vm.toolsRunning = false
                try vm.update(db)
                stopped.append(vm)
            }
            return stopped
        }
        await events.record(.warning, "host.power", targetType: "host", targetId: host.id, targetName: host.name,
                            "\(why)\(stopped.isEmpty ? "" : "; \(stopped.count) VM(s) stopped with it: \(stopped.map(\.name).sorted().joined(separator: ", "))")")
        for vm in stopped {
            await events.record(.warning, "vm.stopped", targetType: "vm", targetId: vm.id, targetName: vm.name, "powered off with host '\(host.name)' (\(why))")
        }
    }

    private func recordPower(_ hostID: String, _ state: RedfishWire.PowerState) async throws {
        try await store.db.write { db in
            guard var row = try HostRecord.fetchOne(db, key: hostID) else { return }
            row.powerState = state.rawValue
            row.powerCheckedAt = Date()
            try row.update(db)
        }
    }

    private func waitForHeartbeat(_ host: HostRecord, progress: TaskEngine.Progress, from percent: Int) async throws {
        await progress.update(percent, "waiting for \(host.name)'s agent to report")
        let since = Date()
        let started = ContinuousClock.now
        while ContinuousClock.now - started < Self.reconnectTimeout {
            let row = try await store.db.read { db in try HostRecord.fetchOne(db, key: host.id) }
            if let row, row.hostState != .disconnected, row.hostState != .standby, (row.lastHeartbeat ?? .distantPast) > since { return }
            try await Task.sleep(for: .seconds(1))
        }
        throw ShepherdError(.timedOut, "host '\(host.name)' is powered on but its agent did not report within \(Self.reconnectTimeout.components.seconds) s")
    }

    // MARK: - Fencing

    /// Proves a lost host cannot run its VMs: its BMC reports it off, powering it off first if
    /// it is on. Returns what was done, for HA's event; throws when the BMC cannot prove it.
    func fence(_ host: HostRecord) async throws -> String {
        let client = try self.client(host)
        let before = try await client.powerState()
        if before == .off {
            try await recordPower(host.id, .off)
            return "its BMC reports it powered off"
        }
        try await client.powerOff(confirmWithin: .seconds(30))
        try await recordPower(host.id, .off)
        await events.record(.warning, "host.fenced", targetType: "host", targetId: host.id, targetName: host.name,
                            "powered off through its BMC (was \(before.rawValue)) so that its VMs can restart elsewhere; `shepherd host power on \(host.name)` brings it back")
        return "fenced: its BMC powered it off"
    }

    private func client(_ host: HostRecord) throws -> RedfishClient {
        guard let address = host.bmcAddress, let user = host.bmcUser, let password = host.bmcPassword else {
            throw ShepherdError(.illegalState, "host '\(host.name)' has no BMC")
        }
        return try RedfishClient(address: address, user: user, password: password, http: http, insecure: host.bmcInsecure)
    }
}
