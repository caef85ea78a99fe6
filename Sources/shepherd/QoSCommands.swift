import ArgumentParser
import Foundation
import ShepherdAPI

extension VMCommand {
    struct QoS: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "qos", abstract: "CPU and memory QoS: reservation, shares, limit.", subcommands: [Set.self])

        struct Set: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Change the QoS of a VM, or of every VM of a cluster; running VMs get it at once.",
                discussion: """
                    A core counts 1000 MHz. Shares weigh VMs only while their host is short (normal 1000, high 2000).
                    Examples: shepherd vm qos set web1 --cpu-shares 2000 --cpu-limit 500
                              shepherd vm qos set --cluster cluster-1 --memory-reservation 100%
                    """)
            @OptionGroup var options: ClientOptions
            @Flag(help: "Print JSON.") var json = false
            @Argument(help: "The VM's name or id (or --cluster).") var vm: String?
            @Option(help: "Every VM of this cluster.") var cluster: String?
            @Option(help: "Guaranteed CPU in MHz (0 to vCPUs × 1000).") var cpuReservation: Int?
            @Option(help: "CPU shares (1-100000; normal 1000).") var cpuShares: Int?
            @Option(help: "CPU ceiling in MHz (50 to vCPUs × 1000), or none.") var cpuLimit: String?
            @Option(help: "Guaranteed memory: MiB (512, 2GiB) or a share of the VM's (100%).") var memoryReservation: String?
            @Option(help: "Memory shares (1-100000; normal 1000).") var memoryShares: Int?
            @Option(help: "Memory ceiling the guest sees (balloon): MiB or %, or none.") var memoryLimit: String?

            func run() async throws {
                guard (vm == nil) != (cluster == nil) else { throw ValidationError("give a VM or --cluster, not both") }
                let cpuLimitMHz: Int? = try cpuLimit.map { text in
                    if text == "none" { return 0 }
                    guard let value = Int(text), value > 0 else { throw ValidationError("--cpu-limit: '\(text)' is not MHz or none") }
                    return value
                }
                let body = Components.Schemas.VMQoSUpdate(
                    cpuShares: cpuShares, cpuReservationMHz: cpuReservation, cpuLimitMHz: cpuLimitMHz,
                    memoryReservation: memoryReservation, memoryShares: memoryShares,
                    memoryLimit: memoryLimit.map { $0 == "none" ? "0" : $0 })
                guard body != Components.Schemas.VMQoSUpdate() else {
                    throw ValidationError("give at least one of --cpu-reservation, --cpu-shares, --cpu-limit, --memory-reservation, --memory-shares, --memory-limit")
                }
                let changed: [Components.Schemas.Vm] = try await calling(options) { client in
                    if let cluster {
                        switch try await client.setClusterVMQoS(path: .init(cluster: cluster), body: .json(body)) {
                        case .ok(let ok): return try ok.body.json
                        case .default(let status, let error): throw CLIError.api(status, error)
                        }
                    }
                    switch try await client.setVMQoS(path: .init(vm: vm!), body: .json(body)) {
                    case .ok(let ok): return [try ok.body.json]
                    case .default(let status, let error): throw CLIError.api(status, error)
                    }
                }
                if json { return cluster == nil ? try printJSON(changed[0]) : try printJSON(changed) }
                printTable(["VM", "STATE", "CPU RES", "CPU SHARES", "CPU LIMIT", "MEM RES", "MEM SHARES", "MEM LIMIT"], changed.map { vm in
                    [vm.name, vm.state.rawValue] + qosColumns(vm)
                })
            }
        }
    }
}

/// A VM's QoS as table cells: CPU reservation, shares, limit, memory reservation, shares, limit.
func qosColumns(_ vm: Components.Schemas.Vm) -> [String] {
    guard let qos = vm.qos else { return Array(repeating: "-", count: 6) }
    return ["\(qos.cpuReservationMHz) MHz", "\(qos.cpuShares)", qos.cpuLimitMHz.map { "\($0) MHz" } ?? "none",
            formatMiB(qos.memoryReservationMiB), "\(qos.memoryShares)", qos.memoryLimitMiB.map(formatMiB) ?? "none"]
}

/// One line for `vm show`.
func qosSummary(_ vm: Components.Schemas.Vm) -> String {
    guard let qos = vm.qos else { return "-" }
    return "CPU reservation \(qos.cpuReservationMHz) MHz, shares \(qos.cpuShares), limit \(qos.cpuLimitMHz.map { "\($0) MHz" } ?? "none"); " +
        "memory reservation \(formatMiB(qos.memoryReservationMiB)), shares \(qos.memoryShares), limit \(qos.memoryLimitMiB.map(formatMiB) ?? "none")"
}
