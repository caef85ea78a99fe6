import Foundation
import GRDB
import Scheduling
import ShepherdCore

/// What-if replay: the cluster's recorded load (the `vmLoad` samples, with the host each ran on)
/// replayed through the same `DRS.recommend` with other settings, next to what really happened.
struct WhatIfReport: Sendable {
    struct Move: Sendable { var at: Date; var vm: String; var from: String; var to: String; var reason: String }
    struct Side: Sendable {
        var migrations = 0
        /// Seconds each host spent over the compared ceiling.
        var secondsOverCeiling: [String: Double] = [:]
        var energyKWh = 0.0
    }
    var since: Date
    var until: Date
    var intervalSeconds: Int
    var rounds: Int
    var ceiling: Double
    var settings: DRSSettings
    var moves: [Move] = []
    var simulated = Side()
    var actual = Side()
}

extension DRSService {
    /// Host power for the estimate: idle 100 W, 200 W at full CPU, linear (no DPM yet: every
    /// connected host counts).
    static let idleWatts = 100.0, busyWatts = 200.0

    func whatIf(_ cluster: ClusterRecord, sinceSeconds: Int, settings: DRSSettings, enabled: Bool,
                intervalSeconds: Int) async throws -> WhatIfReport {
        let until = Date(), since = until.addingTimeInterval(-Double(sinceSeconds))
        let (hosts, samples, names, rules, migrated) = try await store.db.read { db in
            let hosts = try HostRecord.filter(Column("clusterId") == cluster.id).order(Column("name")).fetchAll(db)
            let samples = try VMLoadRecord.filter(hosts.map(\.id).contains(Column("hostId")) && Column("at") >= since)
                .order(Column("at")).fetchAll(db)
            let vmNames = Dictionary(try VMRecord.fetchAll(db).map { ($0.id, $0.name) }, uniquingKeysWith: { a, _ in a })
            let rules = try RuleRecord.filter(Column("clusterId") == cluster.id).order(Column("name")).fetchAll(db)
            // What really happened: the live migrations that finished in the window.
            let clusterVMs = Set(try VMRecord.filter(hosts.map(\.id).contains(Column("hostId"))).fetchAll(db).map(\.id))
            let migrated = try TaskRecord.filter(Column("kind") == "vm.migrate" && Column("state") == "succeeded"
                                                 && Column("finishedAt") >= since).fetchAll(db)
                .filter { clusterVMs.contains($0.targetId) }.count
            return (hosts, samples, vmNames, rules, migrated)
        }
        var report = WhatIfReport(since: since, until: until, intervalSeconds: intervalSeconds, rounds: 0,
                                  ceiling: settings.ceiling ?? 1.0, settings: settings)
        guard let first = samples.first?.at, let last = samples.last?.at else { return report }
        // Host states over the window are not recorded: every host counts as connected.
        var (snapshotHosts, hostIndex) = Inventory.snapshotHosts(hosts, reserveMiB: hostReserveMiB)
        for index in snapshotHosts.indices { snapshotHosts[index].state = .connected; snapshotHosts[index].power = .on }
        let byVM = Dictionary(grouping: samples, by: \.vmId)
        let vmIDs = byVM.keys.sorted()
        var simulatedHost: [String: Int] = [:]
        var lastMovedRound: [String: Int] = [:]
        let interval = Double(intervalSeconds)
        var cursor: [String: Int] = [:]   // per VM: how many of its samples are at or before `time`
        var round = 0
        var time = first.addingTimeInterval(interval)
        while time <= last.addingTimeInterval(0.001) {
            // Each VM's latest sample in this round (absent VMs were stopped).
            var present: [(id: String, cores: Double, history: [Double], host: Int)] = []
            for id in vmIDs {
                let all = byVM[id]!
                var seen = cursor[id] ?? 0
                while seen < all.count && all[seen].at <= time { seen += 1 }
                cursor[id] = seen
                let upTo = all[..<seen]
                guard let latest = upTo.last, time.timeIntervalSince(latest.at) <= 2 * interval,
                      let host = hostIndex[latest.hostId] else { simulatedHost[id] = nil; continue }
                present.append((id, latest.cpuCores, upTo.suffix(LoadTracker.recentSamples).reversed().map(\.cpuCores), host))
                if simulatedHost[id] == nil { simulatedHost[id] = host }
            }
            let vms = present.map { vm in
                SnapshotVM(name: names[vm.id] ?? vm.id, host: simulatedHost[vm.id], cpuDemandMHz: vm.cores * Self.mhzPerCore,
                           cpuMaxMHz: Self.mhzPerCore, memoryMiB: 0)
            }
            let forecast = present.map { vm in
                DemandForecast.upper(current: min(1, vm.cores), historyNewestFirst: vm.history.map { min(1, $0) }) * Self.mhzPerCore
            }
            if enabled {
                let held = present.map { round - (lastMovedRound[$0.id] ?? -1_000) < settings.holdRounds }
                // Today's rules, over the VMs present in this round.
                let vmIndex = Dictionary(uniqueKeysWithValues: present.enumerated().map { ($1.id, $0) })
                let snapshot = ClusterSnapshot(hosts: snapshotHosts, vms: vms,
                                               rules: rules.compactMap { Self.rule($0, vmIndex: vmIndex, hostIndex: hostIndex) })
                for move in DRS.recommend(snapshot, settings: settings, forecastMHz: forecast, held: held).moves {
                    let id = present[move.vm].id
                    simulatedHost[id] = move.to
                    lastMovedRound[id] = round
                    report.simulated.migrations += 1
                    report.moves.append(.init(at: time, vm: names[id] ?? id, from: hosts[move.from].name, to: hosts[move.to].name,
                                              reason: Self.describe(move, snapshot)))
                }
            }
            // This round's interval, measured on both placements.
            for (side, placement) in [(0, present.map { simulatedHost[$0.id] ?? $0.host }), (1, present.map(\.host))] {
                var load = [Double](repeating: 0, count: hosts.count)
                for (index, vm) in present.enumerated() { load[placement[index]] += vm.cores * Self.mhzPerCore }
                for host in hosts.indices {
                    let u = load[host] / snapshotHosts[host].cpuCapacityMHz
                    let joules = (Self.idleWatts + (Self.busyWatts - Self.idleWatts) * min(1, u)) * interval
                    if side == 0 { report.simulated.energyKWh += joules / 3.6e6 } else { report.actual.energyKWh += joules / 3.6e6 }
                    if u > report.ceiling {
                        if side == 0 { report.simulated.secondsOverCeiling[hosts[host].name, default: 0] += interval }
                        else { report.actual.secondsOverCeiling[hosts[host].name, default: 0] += interval }
                    }
                }
            }
            round += 1
            time = time.addingTimeInterval(interval)
        }
        report.rounds = round
        report.actual.migrations = migrated
        return report
    }
}
