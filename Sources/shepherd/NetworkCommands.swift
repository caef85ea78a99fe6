import ArgumentParser
import Foundation
import ShepherdAPI
import ShepherdCore

typealias APIDVS = Components.Schemas.Dvs
typealias APIDVSHost = Components.Schemas.DVSHost
typealias APIPortGroup = Components.Schemas.PortGroup
typealias APINIC = Components.Schemas.Nic
typealias APIDiagnosis = Components.Schemas.Diagnosis

struct DVSCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dvs", abstract: "Distributed virtual switches: one Open vSwitch bridge on every host of a cluster.",
        subcommands: [List.self, Show.self, Create.self, AddHost.self, Delete.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the switches with each host's state.")
        @OptionGroup var options: ClientOptions
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            let switches = try await calling(options) { client in
                switch try await client.listDVS() {
                case .ok(let ok): return try ok.body.json
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
            if json { return try printJSON(switches) }
            printTable(["NAME", "CLUSTER", "BRIDGE", "BOND", "PORT GROUPS", "HOSTS"], switches.map { dvs in
                [dvs.name, dvs.cluster, dvs.bridge, dvs.bondMode.rawValue, dvs.portGroups.isEmpty ? "-" : dvs.portGroups.joined(separator: ","),
                 dvs.hosts.isEmpty ? "-" : dvs.hosts.map { $0.state == .inSync ? $0.host : "\($0.host) (\($0.state.rawValue))" }.joined(separator: ", ")]
            })
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show a switch and, per host, its uplinks, its state and how it differs from what is wanted.")
        @OptionGroup var options: ClientOptions
        @Flag(help: "Print JSON.") var json = false
        @Argument(help: "The switch's name or id.") var dvs: String

        func run() async throws {
            let found = try await calling(options) { client in
                switch try await client.getDVS(path: .init(dvs: dvs)) {
                case .ok(let ok): return try ok.body.json
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
            if json { return try printJSON(found) }
            printDVS(found)
        }
    }

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a switch on every host of a cluster (or the listed hosts); all hosts or none.",
            discussion: """
                Each host uses its default uplinks (agent --uplinks) unless --uplink names its NICs; more than one are bonded.
                Examples: shepherd dvs create prod --cluster cluster-1
                          shepherd dvs create prod --hosts host-1,host-2 --uplink host-1:eth1,eth2 --uplink host-2:eth1 --bond lacp
                """)
        @OptionGroup var options: ClientOptions
        @Flag(help: "Print JSON.") var json = false
        @Argument(help: "The switch's name.") var name: String
        @Option(help: "The cluster (default: the hosts', or the only one).") var cluster: String?
        @Option(help: "Only these hosts, comma-separated (default: every host of the cluster).") var hosts: String?
        @Option(name: .customLong("uplink"), help: "A host's uplinks as HOST:NIC[,NIC…], e.g. host-1:eth1,eth2 (repeatable).")
        var uplinks: [String] = []
        @Option(help: "How several uplinks are bonded: active-backup, balance-slb or lacp.") var bond: String?

        func run() async throws {
            let hostList = try hosts.map { text in
                guard let names = commaList(text) else {
                    throw ValidationError("--hosts: '\(text)' must list host names separated by commas, such as host-1,host-2")
                }
                return names
            }
            var specs: [Components.Schemas.UplinkSpec] = []
            for text in uplinks {
                let spec = try parseUplink(text)
                guard !specs.contains(where: { $0.host == spec.host }) else {
                    throw ValidationError("--uplink: host \(spec.host) is given more than once")
                }
                specs.append(spec)
            }
            let bondMode = try bond.map { text in
                guard let mode = Components.Schemas.BondMode(rawValue: text) else {
                    throw ValidationError("--bond: '\(text)' must be active-backup, balance-slb or lacp")
                }
                return mode
            }
            let body = Components.Schemas.DVSCreate(name: name, cluster: cluster, hosts: hostList,
                                                    uplinks: specs.isEmpty ? nil : specs, bondMode: bondMode)
            let created = try await calling(options) { client in
                switch try await client.createDVS(body: .json(body)) {
                case .created(let created): return try created.body.json
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
            if json { return try printJSON(created) }
            printDVS(created)
        }

        /// "host-1:eth1,eth2" → host-1 with eth1 and eth2.
        func parseUplink(_ text: String) throws -> Components.Schemas.UplinkSpec {
            let parts = text.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
            let host = parts.first.map { $0.trimmingCharacters(in: .whitespaces) } ?? ""
            guard parts.count == 2, !host.isEmpty, let nics = commaList(String(parts[1])) else {
                throw ValidationError("--uplink: '\(text)' must be HOST:NIC[,NIC…], such as host-1:eth1,eth2")
            }
            return .init(host: host, nics: nics)
        }
    }

    struct AddHost: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "add-host", abstract: "Put one more host of the switch's cluster on it (its default uplinks unless --uplinks).")
        @OptionGroup var options: ClientOptions
        @Flag(help: "Print JSON.") var json = false
        @Argument(help: "The switch's name or id.") var dvs: String
        @Argument(help: "The host's name or id.") var host: String
        @Option(help: "The host's NICs to use as uplinks, comma-separated, e.g. eth1,eth2.") var uplinks: String?

        func run() async throws {
            let nics = try uplinks.map { text in
                guard let names = commaList(text) else {
                    throw ValidationError("--uplinks: '\(text)' must list NICs separated by commas, such as eth1,eth2")
                }
                return names
            }
            let updated = try await calling(options) { client in
                switch try await client.addDVSHost(path: .init(dvs: dvs), body: .json(.init(host: host, uplinks: nics))) {
                case .ok(let ok): return try ok.body.json
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
            if json { return try printJSON(updated) }
            printDVS(updated)
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Delete a switch and its bridge on every host; refused while a port group has NICs.")
        @OptionGroup var options: ClientOptions
        @Argument(help: "The switch's name or id.") var dvs: String

        func run() async throws {
            try await calling(options) { client in
                switch try await client.deleteDVS(path: .init(dvs: dvs)) {
                case .noContent: print("deleted dvs \(dvs)")
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
        }
    }
}

struct PortGroupCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "portgroup", abstract: "Port groups of a switch: an access VLAN (0 untagged) or a trunk of VLANs.",
        subcommands: [List.self, Create.self, Delete.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List port groups, of every switch or one.")
        @OptionGroup var options: ClientOptions
        @Flag(help: "Print JSON.") var json = false
        @Option(help: "Only this switch's port groups.") var dvs: String?

        func run() async throws {
            let groups = try await calling(options) { client in
                switch try await client.listPortGroups(query: .init(dvs: dvs)) {
                case .ok(let ok): return try ok.body.json
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
            if json { return try printJSON(groups) }
            printTable(["NAME", "DVS", "KIND", "VLANS", "NICS"], groups.map { group in
                [group.name, group.dvs, group.kind.rawValue, vlanCell(group), "\(group.nics)"]
            })
        }
    }

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Add a port group to a switch: --vlan (access; 0 is untagged) or --trunk (the VLANs the guests tag themselves).",
            discussion: "Examples: shepherd portgroup create prod web --vlan 100 · shepherd portgroup create prod lab --trunk 100,200-210")
        @OptionGroup var options: ClientOptions
        @Flag(help: "Print JSON.") var json = false
        @Argument(help: "The switch's name or id.") var dvs: String
        @Argument(help: "The port group's name.") var name: String
        @Option(help: "Access: the VLAN its ports tag (0-4094; 0 is untagged).") var vlan: Int?
        @Option(help: "Trunk: the VLANs that pass, e.g. 100,200-210.") var trunk: String?

        func run() async throws {
            guard (vlan == nil) != (trunk == nil) else { throw ValidationError("give exactly one of --vlan and --trunk") }
            if let vlan, !(0...Networking.vlanIDs.upperBound).contains(vlan) {
                throw ValidationError("--vlan: \(vlan) is outside 0-\(Networking.vlanIDs.upperBound)")
            }
            if let trunk { _ = try Networking.parseVLANs(trunk, field: "--trunk") }
            let created = try await calling(options) { client in
                switch try await client.createPortGroup(path: .init(dvs: dvs), body: .json(.init(name: name, vlan: vlan, trunks: trunk))) {
                case .created(let created): return try created.body.json
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
            if json { return try printJSON(created) }
            let kind = created.kind == .trunk ? "trunk VLANs \(created.trunks ?? "-")"
                : (created.vlan ?? 0) == 0 ? "access, untagged" : "access VLAN \(created.vlan!)"
            print("port group \(created.name) on \(created.dvs): \(kind)")
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a port group; refused while NICs use it.")
        @OptionGroup var options: ClientOptions
        @Argument(help: "The port group's name or id.") var portgroup: String

        func run() async throws {
            try await calling(options) { client in
                switch try await client.deletePortGroup(path: .init(portgroup: portgroup)) {
                case .noContent: print("deleted port group \(portgroup)")
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
        }
    }
}

struct NICCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nic", abstract: "VM NICs on port groups: add (hot-plugged), change, remove.",
        subcommands: [List.self, Add.self, Set.self, Remove.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List a VM's NICs.")
        @OptionGroup var options: ClientOptions
        @Flag(help: "Print JSON.") var json = false
        @Argument(help: "The VM's name or id.") var vm: String

        func run() async throws {
            let nics = try await calling(options) { client in
                switch try await client.listNICs(path: .init(vm: vm)) {
                case .ok(let ok): return try ok.body.json
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
            if json { return try printJSON(nics) }
            printTable(["NAME", "PORT GROUP", "DVS", "MAC", "IP", "RATE", "LINK", "SLOT", "TAP"], nics.map { nic in
                [nic.name, nic.portGroup, nic.dvs, nic.mac, nic.ip ?? "-", nic.rateMbit.map { "\($0) Mbit/s" } ?? "-",
                 nic.link.rawValue, "\(nic.slot)", nic.tap]
            })
        }
    }

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Add a NIC on a port group; a running VM gets it hot-plugged and its IP set through the tools.",
            discussion: "Example: shepherd nic add web1 --portgroup web --ip 10.0.0.5/24 --rate 100M")
        @OptionGroup var options: ClientOptions
        @OptionGroup var flags: TaskFlags
        @Argument(help: "The VM's name or id.") var vm: String
        @Option(name: .customLong("portgroup"), help: "The port group to plug it into.") var portGroup: String
        @Option(help: "IPv4 address with its prefix length, e.g. 10.0.0.5/24.") var ip: String?
        @Option(help: "A unicast MAC (default: a new 52:54:00:xx:xx:xx).") var mac: String?
        @Option(help: "Rate limit both ways, e.g. 100M or 1G (bit/s; sent traffic policed, received shaped).") var rate: String?

        func run() async throws {
            if let ip { _ = try Networking.IPv4CIDR(ip, field: "--ip") }
            let mac = try mac.map { try Networking.normalizeMAC($0, field: "--mac") }
            if let rate { _ = try Networking.parseRateMbit(rate, field: "--rate") }
            try await calling(options) { client in
                switch try await client.addNIC(path: .init(vm: vm), body: .json(.init(portGroup: portGroup, ip: ip, mac: mac, rate: rate))) {
                case .accepted(let accepted): try await flags.handle(try accepted.body.json, client: client)
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
        }
    }

    struct Set: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Change a NIC's link, IP, rate limit or port group (live on a running VM).",
            discussion: "Examples: shepherd nic set web1 nic0 --link down · shepherd nic set web1 nic0 --no-ip --rate none")
        @OptionGroup var options: ClientOptions
        @OptionGroup var flags: TaskFlags
        @Argument(help: "The VM's name or id.") var vm: String
        @Argument(help: "The NIC's name (nic0) or id.") var nic: String
        @Option(help: "up or down (down: the guest sees no carrier).") var link: String?
        @Option(help: "A new IPv4 address with its prefix length, e.g. 10.0.0.6/24.") var ip: String?
        @Flag(name: .customLong("no-ip"), help: "Clear the NIC's address.") var noIP = false
        @Option(help: "A new cap such as 100M or 1G, or none.") var rate: String?
        @Option(name: .customLong("portgroup"), help: "Move the NIC to this port group.") var portGroup: String?

        func run() async throws {
            guard !(noIP && ip != nil) else { throw ValidationError("--ip and --no-ip exclude each other") }
            let linkState = try link.map { text in
                guard let state = Components.Schemas.NICLink(rawValue: text) else { throw ValidationError("--link: '\(text)' must be up or down") }
                return state
            }
            if let ip { _ = try Networking.IPv4CIDR(ip, field: "--ip") }
            if let rate, rate != "none" { _ = try Networking.parseRateMbit(rate, field: "--rate") }
            let body = Components.Schemas.NICUpdate(link: linkState, ip: noIP ? "" : ip, rate: rate, portGroup: portGroup)
            guard body != Components.Schemas.NICUpdate() else {
                throw ValidationError("give at least one of --link, --ip, --no-ip, --rate, --portgroup")
            }
            try await calling(options) { client in
                switch try await client.updateNIC(path: .init(vm: vm, nic: nic), body: .json(body)) {
                case .accepted(let accepted): try await flags.handle(try accepted.body.json, client: client)
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove a NIC; a running VM's guest releases it first.")
        @OptionGroup var options: ClientOptions
        @OptionGroup var flags: TaskFlags
        @Argument(help: "The VM's name or id.") var vm: String
        @Argument(help: "The NIC's name (nic0) or id.") var nic: String

        func run() async throws {
            try await calling(options) { client in
                switch try await client.removeNIC(path: .init(vm: vm, nic: nic)) {
                case .accepted(let accepted): try await flags.handle(try accepted.body.json, client: client)
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
        }
    }
}

struct NetCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "net", abstract: "Network troubleshooting between VMs.", subcommands: [Diagnose.self])

    struct Diagnose: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check the path between two VMs hop by hop and name the first faulty hop.",
            discussion: "Prints each hop (status, name, evidence), then the verdict. Exits 1 when the path is not healthy.")
        @OptionGroup var options: ClientOptions
        @Flag(help: "Print JSON.") var json = false
        @Argument(help: "The VM the traffic leaves (name or id).") var from: String
        @Argument(help: "The VM it should reach (name or id).") var to: String

        func run() async throws {
            let diagnosis = try await calling(options) { client in
                switch try await client.diagnoseNetwork(query: .init(from: from, to: to)) {
                case .ok(let ok): return try ok.body.json
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
            if json {
                try printJSON(diagnosis)
            } else {
                printTable(["STATUS", "HOP", "EVIDENCE"], diagnosis.hops.map { hop in [hop.status.rawValue.uppercased(), hop.name, hop.evidence] })
                print(diagnosis.verdict)
            }
            if !diagnosis.healthy { throw ExitCode.failure }
        }
    }
}

/// "eth1,eth2" → ["eth1", "eth2"]; nil when the text is empty or has an empty item.
private func commaList(_ text: String) -> [String]? {
    let items = text.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
    return items.contains(where: \.isEmpty) ? nil : items
}

/// A switch, then one line per host (uplinks, state) with each difference indented below it.
func printDVS(_ dvs: APIDVS) {
    let rows: [(String, String)] = [
        ("name", dvs.name), ("id", dvs.id), ("cluster", dvs.cluster), ("bridge", dvs.bridge), ("bond mode", dvs.bondMode.rawValue),
        ("port groups", dvs.portGroups.isEmpty ? "-" : dvs.portGroups.joined(separator: ", ")),
    ]
    for (key, value) in rows { print(key.padding(toLength: 13, withPad: " ", startingAt: 0) + value) }
    guard !dvs.hosts.isEmpty else { return print("hosts".padding(toLength: 13, withPad: " ", startingAt: 0) + "-") }
    print("hosts")
    let lines = dvs.hosts.map { host in (host.host, uplinkSummary(host), host.state.rawValue) }
    let hostWidth = lines.map(\.0.count).max() ?? 0
    let uplinkWidth = lines.map(\.1.count).max() ?? 0
    for (host, line) in zip(dvs.hosts, lines) {
        print("  " + line.0.padding(toLength: hostWidth, withPad: " ", startingAt: 0) + "  "
              + line.1.padding(toLength: uplinkWidth, withPad: " ", startingAt: 0) + "  " + line.2)
        for difference in host.differences { print("      " + difference) }
    }
}

/// "uplinks eth1 (up), eth2 (down) as bond-prod" or "no uplinks".
private func uplinkSummary(_ host: APIDVSHost) -> String {
    guard !host.uplinks.isEmpty else { return "no uplinks" }
    var states: [String: String] = [:]
    for member in host.members ?? [] where states[member.name] == nil { states[member.name] = member.state }
    let nics = host.uplinks.map { nic in states[nic].map { "\(nic) (\($0))" } ?? nic }.joined(separator: ", ")
    return "uplinks " + nics + (host.bond.map { " as \($0)" } ?? "")
}

/// The VLAN column of a port group: its access VLAN ("untagged" for 0) or its trunk's VLANs.
private func vlanCell(_ group: APIPortGroup) -> String {
    switch group.kind {
    case .access: (group.vlan ?? 0) == 0 ? "untagged" : "\(group.vlan!)"
    case .trunk: group.trunks ?? "-"
    }
}
