import ArgumentParser
import Foundation
import ShepherdAPI
import ShepherdCore

struct HostCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "host", abstract: "The hosts (agents) of the clusters.",
                                                    subcommands: [List.self, Show.self, Set.self, Power.self, Maintenance.self])

    struct Set: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Set or forget the host's BMC (Redfish), used for power control and HA fencing.",
            discussion: """
            The manager reads the BMC's power state with the credentials before keeping them, and never shows the password again.
            Examples: shepherd host set host-2 --bmc redfish://10.0.0.12 --bmc-user admin --bmc-password-file /root/bmc-host-2
                      shepherd host set host-2 --bmc redfish+http://127.0.0.1:8001 --bmc-user admin --bmc-password-file pw · shepherd host set host-2 --no-bmc
            """)
        @OptionGroup var options: ClientOptions
        @Flag(help: "Print JSON.") var json = false
        @Argument(help: "The host's name or id.") var host: String
        @Option(help: "The BMC: redfish://HOST[:PORT] (HTTPS), redfish+http://HOST[:PORT], https://… or http://…") var bmc: String?
        @Option(help: "The BMC user.") var bmcUser: String?
        @Option(help: "A file holding the BMC password (kept out of the command line and shell history).") var bmcPasswordFile: String?
        @Flag(help: "Do not verify the BMC's TLS certificate (self-signed).") var bmcInsecure = false
        @Flag(help: "Forget the host's BMC.") var noBmc = false

        func validate() throws {
            if noBmc {
                guard bmc == nil, bmcUser == nil, bmcPasswordFile == nil else { throw ValidationError("--no-bmc takes no other --bmc option") }
                return
            }
            guard bmc != nil else { throw ValidationError("--bmc: missing (or --no-bmc)") }
            guard bmcUser != nil else { throw ValidationError("--bmc-user: missing") }
            guard bmcPasswordFile != nil else { throw ValidationError("--bmc-password-file: missing") }
        }

        func run() async throws {
            if noBmc {
                return try await calling(options) { client in
                    switch try await client.deleteHostBMC(path: .init(host: host)) {
                    case .noContent: print("\(host): BMC forgotten")
                    case .default(let status, let error): throw CLIError.api(status, error)
                    }
                }
            }
            guard let bmc, let bmcUser, let bmcPasswordFile else { return }
            let password: String
            do {
                password = try String(contentsOfFile: bmcPasswordFile, encoding: .utf8).trimmingCharacters(in: .newlines)
            } catch {
                throw CLIError("--bmc-password-file: cannot read \(bmcPasswordFile): \(error.localizedDescription)")
            }
            let body = Components.Schemas.BMCSettings(address: bmc, user: bmcUser, password: password, insecure: bmcInsecure)
            let updated = try await calling(options) { client in
                switch try await client.setHostBMC(path: .init(host: host), body: .json(body)) {
                case .ok(let ok): return try ok.body.json
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
            if json { return try printJSON(updated) }
            print("\(updated.name): BMC \(bmc) as \(bmcUser); power \(updated.bmc?.powerState ?? "unknown")")
        }
    }

    struct Power: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Power the host on, off or reset it through its BMC.",
            discussion: """
            off and reset are refused while VMs run on the host (enter maintenance first), unless --force: they stop with it.
            on and reset wait until the host's agent reports again.
            Examples: shepherd host power off host-2 · shepherd host power on host-2 · shepherd host power reset host-2 --force
            """)
        enum Action: String, ExpressibleByArgument, CaseIterable { case on, off, reset }
        @OptionGroup var options: ClientOptions
        @OptionGroup var flags: TaskFlags
        @Argument(help: "on, off or reset.") var action: Action
        @Argument(help: "The host's name or id.") var host: String
        @Flag(help: "Power off or reset even though VMs run there (they are powered off with it).") var force = false

        func run() async throws {
            try await calling(options) { client in
                let kind: Components.Schemas.HostPowerRequest.ActionPayload = switch action { case .on: .on; case .off: .off; case .reset: .reset }
                let body = Components.Schemas.HostPowerRequest(action: kind, force: force)
                switch try await client.powerHost(path: .init(host: host), body: .json(body)) {
                case .accepted(let accepted): try await flags.handle(try accepted.body.json, client: client)
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
        }
    }

    struct Maintenance: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Enter maintenance mode (moves every VM away live; the host then takes no VMs) or exit it.",
            discussion: "Examples: shepherd host maintenance enter host-1 · shepherd host maintenance exit host-1")
        enum Action: String, ExpressibleByArgument, CaseIterable { case enter, exit }
        @OptionGroup var options: ClientOptions
        @OptionGroup var flags: TaskFlags
        @Argument(help: "enter or exit.") var action: Action
        @Argument(help: "The host's name or id.") var host: String

        func run() async throws {
            try await calling(options) { client in
                let body = Components.Schemas.MaintenanceRequest(action: action == .enter ? .enter : .exit)
                switch try await client.setHostMaintenance(path: .init(host: host), body: .json(body)) {
                case .accepted(let accepted): try await flags.handle(try accepted.body.json, client: client)
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List hosts with their state, CPU and memory.")
        @OptionGroup var options: ClientOptions
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            let hosts = try await calling(options) { client in
                switch try await client.listHosts() {
                case .ok(let ok): return try ok.body.json
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
            if json { return try printJSON(hosts) }
            printTable(["NAME", "STATE", "CLUSTER", "CPU", "CORES", "MEMORY", "VM MEMORY", "VMS", "ACCEL"], hosts.map { host in
                [host.name, host.state.rawValue, host.clusterName, host.cpuModel, "\(host.cores)",
                 "\(formatMiB(host.memoryFreeMiB)) free of \(formatMiB(host.memoryTotalMiB))", formatMiB(host.memoryAllocatedMiB),
                 "\(host.vmCount)", host.accelerator]
            })
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one host.")
        @OptionGroup var options: ClientOptions
        @Flag(help: "Print JSON.") var json = false
        @Argument(help: "The host's name or id.") var host: String

        func run() async throws {
            let found = try await calling(options) { client in
                switch try await client.getHost(path: .init(host: host)) {
                case .ok(let ok): return try ok.body.json
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
            if json { return try printJSON(found) }
            let rows: [(String, String)] = [
                ("name", found.name), ("id", found.id), ("state", found.state.rawValue), ("cluster", found.clusterName),
                ("address", found.address), ("cpu", "\(found.cpuModel) (\(found.cpuVendor)), \(found.cores) cores"),
                ("memory", "\(formatMiB(found.memoryFreeMiB)) free of \(formatMiB(found.memoryTotalMiB)); VMs \(formatMiB(found.memoryAllocatedMiB)), reserved \(formatMiB(found.memoryReservedMiB ?? 0))"),
                ("ksm", "\(formatMiB(found.ksmSavedMiB ?? 0)) saved by same-page merging (machine-wide)"),
                ("qos", found.cgroups.map { "enforced through cgroups \($0)" } ?? "not enforced (no cgroup cpu and memory controllers)"),
                ("vms", "\(found.vmCount)"), ("accelerator", found.accelerator), ("agent", found.agentVersion),
                ("heartbeat", formatDate(found.lastHeartbeat)),
                ("lease", found.leaseRenewedAt.map { renewed in
                    let age = Int(Date().timeIntervalSince(renewed))
                    return "renewed \(formatDate(renewed)) (\(age) s ago; \(Double(age) > Leases.expireSeconds ? "expired" : "valid for \(Int(Leases.expireSeconds)) s"))"
                } ?? "none (no shared datastore, or not renewed yet)"),
                ("bmc", found.bmc.map { "\($0.address) as \($0.user)\($0.insecure ? " (certificate not verified)" : "")" } ?? "none (HA fences through the storage lease only)"),
                ("power", found.bmc.map { "\($0.powerState ?? "unknown") (checked \(formatDate($0.powerCheckedAt)))" } ?? "unknown: no BMC"),
            ]
            for (key, value) in rows { print(key.padding(toLength: 12, withPad: " ", startingAt: 0) + value) }
            let history = try await calling(options) { client in
                switch try await client.listEvents(query: .init(limit: 10, target: found.id, kind: "host.")) {
                case .ok(let ok): return try ok.body.json.filter { ["host.fenced", "host.power", "host.lost", "host.connected"].contains($0.kind) }
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
            guard !history.isEmpty else { return }
            print("\npower and fencing history (newest first):")
            printTable(["TIME", "KIND", "MESSAGE"], history.map { [formatDate($0.time), $0.kind, $0.message] })
        }
    }
}

struct ClusterCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "cluster", abstract: "Clusters of hosts.",
                                                    subcommands: [List.self, Create.self, Set.self])

    struct Set: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Change a cluster's settings: memory overcommit, IMC baseline, migrations, DRS/DPM, HA.",
            discussion: "Examples: shepherd cluster set cluster-1 --imc EPYC --migration-timeout 300 · shepherd cluster set cluster-1 --memory-overcommit on --overcommit-ratio 150%")
        @OptionGroup var options: ClientOptions
        @Flag(help: "Print JSON.") var json = false
        @Argument(help: "The cluster's name or id.") var cluster: String
        @Option(help: "IMC (EVC) baseline: a QEMU CPU model every host provides, or off.") var imc: String?
        @Option(help: "Seconds a live migration may take (10-86400).") var migrationTimeout: Int?
        @Option(help: "Live migrations per host at once (1-16).") var maxMigrations: Int?
        @Option(help: "DRS: off, manual (recommendations only) or automatic.") var drs: Components.Schemas.DRSMode?
        @Option(help: "DRS migration threshold: 1 (conservative: only rules and maintenance) … 5 (aggressive).") var drsThreshold: Int?
        @Option(help: "DRS scheduling baseline: no balancing while every host is under it, e.g. cpu:40%,mem:50%.") var drsBaseline: String?
        @Option(help: "DRS metric: cpu, memory or both.") var drsMetric: Components.Schemas.DRSMetric?
        @Option(help: "DRS interval: 30s, 5m, 1h or seconds (5 s – 24 h).") var drsInterval: String?
        @Option(help: "DPM: off, manual (events only) or automatic (empties idle hosts and powers them off through their BMC; powers them on when needed).")
        var dpm: Components.Schemas.DRSMode?
        @Option(help: "HA: on or off (restart protected VMs whose QEMU died or whose guest panicked).") var ha: String?
        @Option(help: "HA admission control: off, percent:25, failover-hosts:host-3 or host-failures:1.") var haAdmission: String?
        @Option(help: "What an isolated host (lost the manager and every peer) does with its VMs: leave-running, power-off or shutdown.")
        var haIsolationResponse: Components.Schemas.IsolationResponse?
        @Option(help: "Memory overcommit: on (VM memory may exceed a host's up to the ratio; new VMs reserve none) or off.") var memoryOvercommit: String?
        @Option(help: "Overcommit ratio, 100%-400% (default 150%).") var overcommitRatio: String?

        func run() async throws {
            if let memoryOvercommit, !["on", "off"].contains(memoryOvercommit) { throw ValidationError("--memory-overcommit: '\(memoryOvercommit)' is not on or off") }
            let ratio: Int? = try overcommitRatio.map { text in
                guard let value = Int(text.hasSuffix("%") ? String(text.dropLast()) : text) else { throw ValidationError("--overcommit-ratio: '\(text)' is not a percentage (150%)") }
                return value
            }
            let baseline = try drsBaseline.map(Self.parseBaseline)
            let interval = try drsInterval.map { try parseDuration($0, option: "--drs-interval") }
            let drsUpdate: Components.Schemas.DRSConfigUpdate? =
                drs == nil && drsThreshold == nil && baseline == nil && drsMetric == nil && interval == nil && dpm == nil ? nil
                : .init(mode: drs, threshold: drsThreshold, baselineCPUPercent: baseline?.cpu, baselineMemoryPercent: baseline?.memory,
                        metric: drsMetric, intervalSeconds: interval, dpm: dpm)
            if let ha, !["on", "off"].contains(ha) { throw ValidationError("--ha: '\(ha)' is not on or off") }
            let haUpdate: Components.Schemas.HAConfigUpdate? = ha == nil && haAdmission == nil && haIsolationResponse == nil ? nil
                : .init(enabled: ha.map { $0 == "on" }, admission: haAdmission, isolationResponse: haIsolationResponse)
            let updated = try await calling(options) { client in
                let body = Components.Schemas.ClusterUpdate(memoryOvercommit: memoryOvercommit.map { $0 == "on" }, overcommitRatioPercent: ratio,
                                                            imcBaseline: imc, migrationTimeoutSeconds: migrationTimeout,
                                                            maxConcurrentMigrations: maxMigrations, drs: drsUpdate, ha: haUpdate)
                switch try await client.updateCluster(path: .init(cluster: cluster), body: .json(body)) {
                case .ok(let ok): return try ok.body.json
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
            if json { return try printJSON(updated) }
            print("\(updated.name): memory overcommit \(updated.memoryOvercommit ? "on at \(updated.overcommitRatioPercent ?? 150) %" : "off")")
            for note in updated.notes ?? [] { print("note: \(note)") }
            print("IMC \(updated.imcBaseline ?? "off"), migration timeout \(updated.migrationTimeoutSeconds ?? 300) s, \(updated.maxConcurrentMigrations ?? 2) migrations per host")
            if let ha = updated.ha { print("HA \(ha.enabled ? "on" : "off"), admission \(ha.admission), isolation response \(ha.isolationResponse.rawValue)") }
            if let drs = updated.drs {
                print("DRS \(drs.mode.rawValue), DPM \(drs.dpm.rawValue), threshold \(drs.threshold), baseline cpu \(drs.baselineCPUPercent) % mem \(drs.baselineMemoryPercent) %, metric \(drs.metric.rawValue), every \(drs.intervalSeconds) s")
            }
        }

        /// "cpu:40%,mem:50%" (either part may be left out).
        static func parseBaseline(_ text: String) throws -> (cpu: Int?, memory: Int?) {
            var cpu: Int?, memory: Int?
            for part in text.split(separator: ",") {
                let pieces = part.split(separator: ":", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
                guard pieces.count == 2, let value = Int(pieces[1].hasSuffix("%") ? String(pieces[1].dropLast()) : pieces[1]) else {
                    throw ValidationError("--drs-baseline: '\(part)' is not cpu:N% or mem:N%")
                }
                switch pieces[0] {
                case "cpu": cpu = value
                case "mem", "memory": memory = value
                default: throw ValidationError("--drs-baseline: '\(pieces[0])' is not cpu or mem")
                }
            }
            return (cpu, memory)
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List clusters.")
        @OptionGroup var options: ClientOptions
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            let clusters = try await calling(options) { client in
                switch try await client.listClusters() {
                case .ok(let ok): return try ok.body.json
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
            if json { return try printJSON(clusters) }
            printTable(["NAME", "HOSTS", "VMS", "MEMORY OVERCOMMIT", "IMC", "ID"], clusters.map { cluster in
                [cluster.name, "\(cluster.hostCount)", "\(cluster.vmCount)", cluster.memoryOvercommit ? "on (\(cluster.overcommitRatioPercent ?? 150) %)" : "off",
                 cluster.imcBaseline ?? "off", cluster.id]
            })
        }
    }

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create an empty cluster (agents join one by name).")
        @OptionGroup var options: ClientOptions
        @Flag(help: "Print JSON.") var json = false
        @Argument(help: "The cluster's name.") var name: String

        func run() async throws {
            let cluster = try await calling(options) { client in
                switch try await client.createCluster(body: .json(.init(name: name))) {
                case .created(let created): return try created.body.json
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
            if json { return try printJSON(cluster) }
            print("created cluster \(cluster.name) (\(cluster.id))")
        }
    }
}

struct DatastoreCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "datastore", abstract: "Storage the hosts see.", subcommands: [List.self, Show.self, Add.self, Remove.self])

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Mount a directory as a datastore: --shared on every connected host (or --host …), --local on one host.")
        @OptionGroup var options: ClientOptions
        @Flag(help: "Print JSON.") var json = false
        @Argument(help: "The datastore's name.") var name: String
        @Option(help: "The directory (absolute) on the hosts.") var path: String
        @Flag(help: "Every host sees the directory (NFS-like).") var shared = false
        @Flag(help: "One host's own directory.") var local = false
        @Option(name: .customLong("host"), help: "A host to mount it on (repeatable; one for --local).") var hosts: [String] = []

        func run() async throws {
            guard shared != local else { throw ValidationError("kind: give exactly one of --shared or --local") }
            let added = try await calling(options) { client in
                switch try await client.addDatastore(body: .json(.init(name: name, kind: shared ? "shared" : "local", path: path,
                                                                        hosts: hosts.isEmpty ? nil : hosts))) {
                case .created(let created): return try created.body.json
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
            if json { return try printJSON(added) }
            print("\(added.name): \(added.kind.rawValue) at \(added.path) on \(added.hosts.joined(separator: ", ")) (\(formatBytes(added.freeBytes)) free of \(formatBytes(added.capacityBytes)))")
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Unmount a datastore added with 'datastore add' (refused while anything is on it; its files stay).")
        @OptionGroup var options: ClientOptions
        @Argument(help: "The datastore's name or id.") var datastore: String

        func run() async throws {
            let removed = try await calling(options) { client in
                switch try await client.removeDatastore(path: .init(datastore: datastore)) {
                case .ok(let ok): return try ok.body.json
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
            print("\(removed.name): removed; its files stay in \(removed.path)")
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show a datastore with what lives on it.")
        @OptionGroup var options: ClientOptions
        @Flag(help: "Print JSON.") var json = false
        @Argument(help: "The datastore's name or id.") var datastore: String

        func run() async throws {
            let detail = try await calling(options) { client in
                switch try await client.getDatastore(path: .init(datastore: datastore)) {
                case .ok(let ok): return try ok.body.json
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
            if json { return try printJSON(detail) }
            let store = detail.datastore
            func list(_ names: [String]) -> String { names.isEmpty ? "-" : names.joined(separator: ", ") }
            let rows: [(String, String)] = [
                ("name", store.name), ("kind", store.kind.rawValue), ("path", store.path), ("hosts", list(store.hosts)),
                ("free", "\(formatBytes(store.freeBytes)) of \(formatBytes(store.capacityBytes))"),
                ("vms", list(detail.vms)), ("disks", list(detail.disks)), ("templates", list(detail.templates)),
                ("provisioned", "\(formatBytes(detail.provisionedBytes)) in data disks"),
            ]
            for (key, value) in rows { print(key.padding(toLength: 12, withPad: " ", startingAt: 0) + value) }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List datastores.")
        @OptionGroup var options: ClientOptions
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            let stores = try await calling(options) { client in
                switch try await client.listDatastores() {
                case .ok(let ok): return try ok.body.json
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
            if json { return try printJSON(stores) }
            printTable(["NAME", "KIND", "HOSTS", "FREE", "CAPACITY", "PATH"], stores.map { store in
                [store.name, store.kind.rawValue, store.hosts.joined(separator: ","), formatBytes(store.freeBytes),
                 formatBytes(store.capacityBytes), store.path]
            })
        }
    }
}

struct TemplateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "template", abstract: "Images VMs are created from.", subcommands: [List.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List templates.")
        @OptionGroup var options: ClientOptions
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            let templates = try await calling(options) { client in
                switch try await client.listTemplates() {
                case .ok(let ok): return try ok.body.json
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
            if json { return try printJSON(templates) }
            printTable(["NAME", "DATASTORE", "DISK", "DESCRIPTION"], templates.map { template in
                [template.name, template.datastore, template.disk, template.description ?? ""]
            })
        }
    }
}
