import ArgumentParser
import Foundation
import ShepherdAPI
import Simulation

struct SimulateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "simulate",
        abstract: "Replay real workloads through the scheduling core, offline.",
        subcommands: [PlanetLab.self, Cluster.self])

    struct Cluster: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "cluster",
            abstract: "What-if: replay a cluster's recorded load through DRS with other settings.",
            discussion: """
                Replays up to a day of the load the manager recorded (each VM's CPU and host every 6 s)
                through the same DRS function, with the settings given here (the cluster's for the rest;
                DRS automatic unless --drs says otherwise), and prints what would have moved, the
                migrations, each host's time over the threshold's ceiling and an energy estimate, next
                to what really happened.
                Example: shepherd simulate cluster cluster-1 --since 24h --drs-threshold 2
                """)
        @OptionGroup var options: ClientOptions
        @Flag(help: "Print JSON.") var json = false
        @Argument(help: "The cluster's name or id.") var cluster: String
        @Option(help: "How far back: 30m, 6h, 24h or seconds (1 min – 24 h).") var since: String = "24h"
        @Option(help: "DRS mode to replay: manual or automatic (both move in a replay), or off.") var drs: Components.Schemas.DRSMode = .automatic
        @Option(help: "Migration threshold 1-5.") var drsThreshold: Int?
        @Option(help: "Scheduling baseline, e.g. cpu:40%,mem:50%.") var drsBaseline: String?
        @Option(help: "Round interval: 30s, 5m, … (5 s – 24 h).") var drsInterval: String?

        func run() async throws {
            let seconds = try parseDuration(since, option: "--since")
            let baseline = try drsBaseline.map(ClusterCommand.Set.parseBaseline)
            let interval = try drsInterval.map { try parseDuration($0, option: "--drs-interval") }
            let report = try await calling(options, timeout: .seconds(300)) { client in
                let body = Components.Schemas.WhatIfRequest(sinceSeconds: seconds, drs: .init(
                    mode: drs, threshold: drsThreshold, baselineCPUPercent: baseline?.cpu, baselineMemoryPercent: baseline?.memory,
                    intervalSeconds: interval))
                switch try await client.simulateDRS(path: .init(cluster: cluster), body: .json(body)) {
                case .ok(let ok): return try ok.body.json
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
            if json { return try printJSON(report) }
            print("replayed \(report.rounds) rounds of \(report.intervalSeconds) s (\(formatDate(report.since)) – \(formatDate(report.until))) with DRS \(report.drs.mode.rawValue), threshold \(report.drs.threshold); hosts measured against \(report.ceilingPercent) %")
            if report.moves.isEmpty { print("no moves would have been made") } else {
                printTable(["AT", "VM", "FROM", "TO", "REASON"], report.moves.map { [formatDate($0.at), $0.vm, $0.from, $0.to, $0.reason] })
            }
            func over(_ side: Components.Schemas.WhatIfSide) -> String {
                let hosts = side.secondsOverCeiling.additionalProperties.sorted { $0.key < $1.key }
                return hosts.isEmpty ? "none" : hosts.map { "\($0.key) \(Int($0.value)) s" }.joined(separator: ", ")
            }
            printTable(["", "MIGRATIONS", "ENERGY KWH (EST.)", "TIME OVER CEILING"], [
                ["what-if", "\(report.simulated.migrations)", String(format: "%.3f", report.simulated.energyKWh), over(report.simulated)],
                ["actual", "\(report.actual.migrations)", String(format: "%.3f", report.actual.energyKWh), over(report.actual)],
            ])
        }
    }

    struct PlanetLab: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "planetlab",
            abstract: "Consolidate the PlanetLab traces of Beloglazov & Buyya on 800 simulated hosts.",
            discussion: """
                DIR is one day folder (one file per VM, 288 CPU percents) or a folder of day folders.
                Per day and policy it reports energy (kWh), SLATAH, PDM, SLAV = SLATAH × PDM,
                ESV = energy × SLAV, migrations and VMs removed, then the medians per policy.
                --cloudsim-compat reproduces CloudSim 4.0's released behaviour (pooled SLATAH and PDM,
                idle VMs removed for good, its regression and exclusion-list quirks); without it the
                paper's definitions hold (means per host and per VM, no VM removed).
                """)

        @Argument(help: "A day folder or a folder of day folders.")
        var dir: String

        @Option(help: "Comma-separated: ours, lr-mmt, lrr-mmt, thr-mmt, iqr-mmt, mad-mmt (parameter optional: lr-mmt-1.2).")
        var policy: String = "ours,lr-mmt"

        @Flag(help: "Reproduce CloudSim 4.0's released behaviour, quirks included.")
        var cloudsimCompat = false

        @Option(help: "Number of hosts (half ML110 G4, half G5).")
        var hosts: Int = Simulator.defaultHosts

        @Flag(help: "Print {\"days\":[…],\"medians\":[…]} instead of a table.")
        var json = false

        func run() throws {
            guard hosts > 0 else { throw ValidationError("--hosts must be at least 1") }
            let policies: [SimulationPolicy]
            do {
                policies = try policy.split(separator: ",").map { try SimulationPolicy.parse(String($0).trimmingCharacters(in: .whitespaces)) }
            } catch let error as TraceError {
                throw ValidationError("--\(error.description)")
            }
            guard !policies.isEmpty else { throw ValidationError("--policy names no policy") }
            let days: [PlanetLabDay]
            do { days = try PlanetLabLoader.load(dir) } catch let error as TraceError {
                throw ValidationError(error.description)
            }
            var results: [DayResult] = []
            for day in days {
                for policy in policies {
                    let result = try Simulator.run(day, policy: policy, cloudSimCompat: cloudsimCompat, hosts: hosts)
                    results.append(result)
                    if !json {
                        FileHandle.standardError.write(Data("\(day.name) \(result.policy): \(String(format: "%.2f", result.wallSeconds)) s\n".utf8))
                    }
                }
            }
            let medians = SimulationReport.medians(results)
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.sortedKeys]
                struct Output: Encodable { var days: [DayResult]; var medians: [DayResult] }
                print(String(decoding: try encoder.encode(Output(days: results, medians: medians)), as: UTF8.self))
            } else {
                print(SimulationReport.table(results, medians: medians))
            }
        }
    }
}
