import ArgumentParser
import Foundation
import ShepherdAPI

extension Components.Schemas.DRSMode: ExpressibleByArgument {}
extension Components.Schemas.DRSMetric: ExpressibleByArgument {}

/// "30s", "5m", "1h" or plain seconds.
func parseDuration(_ text: String, option: String) throws -> Int {
    let units: [Character: Int] = ["s": 1, "m": 60, "h": 3600]
    if let last = text.last, let unit = units[last], let value = Int(text.dropLast()), value >= 0 { return value * unit }
    if let value = Int(text), value >= 0 { return value }
    throw ValidationError("\(option): '\(text)' is not a duration (30s, 5m, 1h or seconds)")
}

struct DRSCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "drs", abstract: "Distributed resource scheduling: recommendations and applying them.",
        discussion: "Turn it on with: shepherd cluster set CL --drs manual|automatic --drs-threshold 3",
        subcommands: [Recommendations.self, Apply.self])

    struct Recommendations: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run DRS now and list its recommendations: mandatory first, then by gain, each with its reason.")
        @OptionGroup var options: ClientOptions
        @Flag(help: "Print JSON.") var json = false
        @Flag(name: .customLong("no-evaluate"), help: "List the pending ones without a fresh round.") var noEvaluate = false
        @Argument(help: "The cluster's name or id.") var cluster: String

        func run() async throws {
            let list = try await calling(options) { client in
                switch try await client.listDRSRecommendations(path: .init(cluster: cluster), query: .init(evaluate: !noEvaluate)) {
                case .ok(let ok): return try ok.body.json
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
            if json { return try printJSON(list) }
            if list.isEmpty { return print("no recommendations: every host is within its DRS threshold and every rule holds") }
            printTable(["ID", "VM", "FROM", "TO", "KIND", "GAIN MHZ", "COST MIB", "REASON"], list.map { r in
                [r.id, r.vm, r.from, r.to, r.mandatory ? "mandatory" : "balance", "\(Int(r.gainMHz))", "\(r.costMiB)", r.reason]
            })
        }
    }

    struct Apply: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Carry out pending recommendations (all, or the ids given) with live migration.",
            discussion: "Example: shepherd drs apply cluster-1 · shepherd drs apply cluster-1 7f3a… 91c2…")
        @OptionGroup var options: ClientOptions
        @OptionGroup var flags: TaskFlags
        @Argument(help: "The cluster's name or id.") var cluster: String
        @Argument(help: "Recommendation ids (all pending ones when none is given).") var ids: [String] = []

        func run() async throws {
            try await calling(options, timeout: .seconds(600)) { client in
                let applied: [Components.Schemas.DRSApplied]
                switch try await client.applyDRSRecommendations(path: .init(cluster: cluster), body: .json(.init(ids: ids.isEmpty ? nil : ids))) {
                case .accepted(let accepted): applied = try accepted.body.json
                case .default(let status, let error): throw CLIError.api(status, error)
                }
                if applied.isEmpty { return print("nothing to apply") }
                for item in applied {
                    if !flags.json { print("\(item.recommendation.vm): \(item.recommendation.from) → \(item.recommendation.to)") }
                    try await flags.handle(item.task, client: client)
                }
            }
        }
    }
}

struct RuleCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rule", abstract: "Affinity rules DRS, HA and placement honour.",
        subcommands: [Create.self, List.self, Delete.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a rule: keep VMs apart or together, or bind VMs to (away from) hosts.",
            discussion: """
                Examples: shepherd rule create cluster-1 keep-web-apart --anti-affinity web1,web2
                          shepherd rule create cluster-1 db-with-app --affinity db1,app1
                          shepherd rule create cluster-1 licensed --vm-host db1 --hosts host-1,host-2 [--should]
                          shepherd rule create cluster-1 not-on-3 --vm-not-host web1 --hosts host-3
                """)
        @OptionGroup var options: ClientOptions
        @Flag(help: "Print JSON.") var json = false
        @Argument(help: "The cluster's name or id.") var cluster: String
        @Argument(help: "The rule's name.") var name: String
        @Option(help: "VMs that never share a host (comma-separated).") var antiAffinity: String?
        @Option(help: "VMs that run on one host (comma-separated).") var affinity: String?
        @Option(help: "VMs that run only on --hosts.") var vmHost: String?
        @Option(help: "VMs that never run on --hosts.") var vmNotHost: String?
        @Option(help: "Hosts for --vm-host / --vm-not-host (comma-separated).") var hosts: String?
        @Flag(help: "--vm-host is a preference (should), not a must.") var should = false

        func run() async throws {
            let given = [("--anti-affinity", antiAffinity, Components.Schemas.RuleKind.keepApart),
                         ("--affinity", affinity, .keepTogether), ("--vm-host", vmHost, .vmHost), ("--vm-not-host", vmNotHost, .vmNotHost)]
                .filter { $0.1 != nil }
            guard given.count == 1, let (option, list, kind) = given.first, let list else {
                throw ValidationError("give exactly one of --anti-affinity, --affinity, --vm-host, --vm-not-host")
            }
            let vms = list.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            let hostList = hosts?.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            if kind == .vmHost || kind == .vmNotHost {
                guard let hostList, !hostList.isEmpty else { throw ValidationError("--hosts: \(option) needs the hosts") }
            } else if hosts != nil {
                throw ValidationError("--hosts: \(option) names VMs only")
            }
            if should && kind != .vmHost { throw ValidationError("--should: only --vm-host rules can be preferences") }
            let rule = try await calling(options) { client in
                let body = Components.Schemas.RuleCreate(name: name, kind: kind, vms: vms, hosts: hostList,
                                                         mandatory: kind == .vmHost ? !should : nil)
                switch try await client.createRule(path: .init(cluster: cluster), body: .json(body)) {
                case .created(let created): return try created.body.json
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
            if json { return try printJSON(rule) }
            print("created rule \(rule.name) (\(rule.kind.rawValue)): \(rule.vms.joined(separator: ", "))"
                  + (rule.hosts.isEmpty ? "" : " · hosts \(rule.hosts.joined(separator: ", "))"))
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List a cluster's rules.")
        @OptionGroup var options: ClientOptions
        @Flag(help: "Print JSON.") var json = false
        @Argument(help: "The cluster's name or id.") var cluster: String

        func run() async throws {
            let rules = try await calling(options) { client in
                switch try await client.listRules(path: .init(cluster: cluster)) {
                case .ok(let ok): return try ok.body.json
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
            if json { return try printJSON(rules) }
            printTable(["NAME", "KIND", "VMS", "HOSTS", "MUST"], rules.map { rule in
                [rule.name, rule.kind.rawValue, rule.vms.joined(separator: ","), rule.hosts.joined(separator: ","), rule.mandatory ? "yes" : "should"]
            })
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a rule.")
        @OptionGroup var options: ClientOptions
        @Argument(help: "The cluster's name or id.") var cluster: String
        @Argument(help: "The rule's name or id.") var rule: String

        func run() async throws {
            try await calling(options) { client in
                switch try await client.deleteRule(path: .init(cluster: cluster, rule: rule)) {
                case .noContent: print("deleted rule \(rule)")
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
        }
    }
}

extension Components.Schemas.HAPolicy: ExpressibleByArgument {}
extension Components.Schemas.HAPriority: ExpressibleByArgument {}
extension Components.Schemas.IsolationResponse: ExpressibleByArgument {}

extension VMCommand {
    struct Set: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Change a VM's settings: its size (online while it runs), HA policy and restart priority, whether DRS may move it.",
            discussion: """
                Examples: shepherd vm set web1 --cpus 4 --memory 512     (running: within the maximums it started with)
                          shepherd vm set web1 --max-cpus 8 --max-memory 2048   (while off: room to grow online)
                          shepherd vm set web1 --ha-policy restart-in-cluster --ha-priority high · shepherd vm set db1 --drs-excluded on
                """)
        @OptionGroup var options: ClientOptions
        @Flag(help: "Print JSON.") var json = false
        @Argument(help: "The VM's name or id.") var vm: String
        @Option(help: "vCPUs (running: only more, up to its maximum).") var cpus: Int?
        @Option(help: "Memory in MiB (running: up to its maximum, through the balloon).") var memory: Int?
        @Option(help: "Most vCPUs it may grow to while running (only while off).") var maxCpus: Int?
        @Option(help: "Most memory (MiB) it may grow to while running (only while off).") var maxMemory: Int?
        @Option(help: "restart-in-cluster, restart-on-original-host or stop (HA leaves it down).") var haPolicy: Components.Schemas.HAPolicy?
        @Option(help: "high, medium or low: restart order and admission.") var haPriority: Components.Schemas.HAPriority?
        @Option(help: "on: DRS and DPM never move this VM (rules and maintenance still may); off: they may.") var drsExcluded: String?

        func run() async throws {
            guard haPolicy != nil || haPriority != nil || drsExcluded != nil || cpus != nil || memory != nil || maxCpus != nil || maxMemory != nil else {
                throw ValidationError("give --cpus, --memory, --max-cpus, --max-memory, --ha-policy, --ha-priority and/or --drs-excluded")
            }
            if let drsExcluded, !["on", "off"].contains(drsExcluded) { throw ValidationError("--drs-excluded: '\(drsExcluded)' is not on or off") }
            let body = Components.Schemas.VMUpdate(haPolicy: haPolicy, haPriority: haPriority, drsExcluded: drsExcluded.map { $0 == "on" },
                                                   cpus: cpus, memoryMiB: memory, maxCpus: maxCpus, maxMemoryMiB: maxMemory)
            let updated = try await calling(options) { client in
                switch try await client.updateVM(path: .init(vm: vm), body: .json(body)) {
                case .ok(let ok): return try ok.body.json
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
            if json { return try printJSON(updated) }
            print("\(updated.name): \(updated.cpus) vCPU (at most \(updated.maxCpus ?? updated.cpus)), \(formatMiB(updated.memoryMiB)) (at most \(formatMiB(updated.maxMemoryMiB ?? updated.memoryMiB)))"
                  + (updated.onlineCpus.map { "; the guest has \($0) vCPU online" } ?? ""))
            print("HA policy \(updated.haPolicy?.rawValue ?? "-"), priority \(updated.haPriority?.rawValue ?? "-"), DRS \(updated.drsExcluded == true ? "excluded" : "may move it")")
        }
    }
}
