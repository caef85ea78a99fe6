import ArgumentParser
import Foundation
import Simulation

struct SimulateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "simulate",
        abstract: "Replay real workloads through the scheduling core, offline.",
        subcommands: [PlanetLab.self])

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
