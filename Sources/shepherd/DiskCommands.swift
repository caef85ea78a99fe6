import ArgumentParser
import Foundation
import ShepherdAPI
import ShepherdCore

typealias APIDisk = Components.Schemas.Disk

struct DiskCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "disk", abstract: "Data disks: create (thin, thick, thick-lazy), attach, detach, grow, delete.",
        subcommands: [List.self, Show.self, Create.self, Attach.self, Detach.self, Resize.self, Reclaim.self, Delete.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List every data disk, or one VM's in the order its guest sees them.")
        @OptionGroup var options: ClientOptions
        @Flag(help: "Print JSON.") var json = false
        @Argument(help: "Only this VM's disks.") var vm: String?

        func run() async throws {
            let disks = try await calling(options) { client in
                switch try await client.listDisks(query: .init(vm: vm)) {
                case .ok(let ok): return try ok.body.json
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
            if json { return try printJSON(disks) }
            printTable(["NAME", "SIZE", "TYPE", "MODE", "DATASTORE", "ATTACHED TO", "SERIAL"], disks.map { disk in
                [disk.name, DiskRules.formatBytes(disk.sizeBytes), disk._type.rawValue, disk.mode.rawValue, disk.datastore,
                 disk.attachedTo.isEmpty ? "-" : disk.attachedTo.joined(separator: ","), disk.serial ?? "-"]
            })
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show a disk with the bytes its image takes now.")
        @OptionGroup var options: ClientOptions
        @Flag(help: "Print JSON.") var json = false
        @Argument(help: "The disk's name or id.") var disk: String

        func run() async throws {
            let found = try await calling(options) { client in
                switch try await client.getDisk(path: .init(disk: disk)) {
                case .ok(let ok): return try ok.body.json
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
            if json { return try printJSON(found) }
            let rows: [(String, String)] = [
                ("name", found.name), ("id", found.id), ("size", DiskRules.formatBytes(found.sizeBytes)),
                ("allocated", found.allocatedBytes.map(DiskRules.formatBytes) ?? "-"), ("type", found._type.rawValue),
                ("mode", found.mode.rawValue), ("format", found.format), ("datastore", found.datastore), ("path", found.path),
                ("serial", found.serial ?? "-"), ("attached", found.attachedTo.isEmpty ? "-" : found.attachedTo.joined(separator: ", ")),
                ("created", formatDate(found.createdAt)),
            ]
            for (key, value) in rows { print(key.padding(toLength: 11, withPad: " ", startingAt: 0) + value) }
        }
    }

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a data disk and attach it to a VM (hot-plugged when it runs).",
            discussion: "thin grows with writes; thick allocates and zeroes every block now; thick-lazy allocates now and zeroes on first write. non-persistent disks forget their writes at power-off; shared disks are raw and attachable to several VMs.")
        @OptionGroup var options: ClientOptions
        @OptionGroup var flags: TaskFlags
        @Argument(help: "The VM to attach it to.") var vm: String
        @Option(help: "Size: 2G, 512M, 1T or bytes.") var size: String
        @Option(help: "thin, thick or thick-lazy.") var type: String = "thin"
        @Option(help: "persistent, non-persistent or shared.") var mode: String = "persistent"
        @Option(help: "Datastore (default: the VM's).") var datastore: String?
        @Option(help: "Name (default <vm>-diskN).") var name: String?

        func run() async throws {
            let bytes = try DiskRules.parseSize(size, field: "--size")
            guard let type = Components.Schemas.DiskType(rawValue: type) else {
                throw ValidationError("--type: '\(type)' must be thin, thick or thick-lazy")
            }
            guard let mode = Components.Schemas.DiskMode(rawValue: mode) else {
                throw ValidationError("--mode: '\(mode)' must be persistent, non-persistent or shared")
            }
            try await calling(options) { client in
                switch try await client.createDisk(body: .json(.init(vm: vm, name: name, sizeBytes: bytes, _type: type, mode: mode, datastore: datastore))) {
                case .accepted(let accepted): try await flags.handle(try accepted.body.json, client: client)
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
        }
    }

    struct Attach: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Attach an existing disk to a VM (hot-plugged when it runs).")
        @OptionGroup var options: ClientOptions
        @OptionGroup var flags: TaskFlags
        @Argument(help: "The VM.") var vm: String
        @Argument(help: "The disk's name or id.") var disk: String

        func run() async throws {
            try await calling(options) { client in
                switch try await client.attachDisk(path: .init(disk: disk), body: .json(.init(vm: vm))) {
                case .accepted(let accepted): try await flags.handle(try accepted.body.json, client: client)
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
        }
    }

    struct Detach: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Detach a disk from a VM; a running guest releases it first. The image stays.")
        @OptionGroup var options: ClientOptions
        @OptionGroup var flags: TaskFlags
        @Argument(help: "The VM.") var vm: String
        @Argument(help: "The disk's name or id.") var disk: String

        func run() async throws {
            try await calling(options) { client in
                switch try await client.detachDisk(path: .init(disk: disk), body: .json(.init(vm: vm))) {
                case .accepted(let accepted): try await flags.handle(try accepted.body.json, client: client)
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
        }
    }

    struct Resize: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Grow a disk; live on a running VM, whose guest sees the new size.")
        @OptionGroup var options: ClientOptions
        @OptionGroup var flags: TaskFlags
        @Argument(help: "The disk's name or id.") var disk: String
        @Option(help: "The new size: 4G, 512M or bytes (larger than now).") var size: String

        func run() async throws {
            let bytes = try DiskRules.parseSize(size, field: "--size")
            try await calling(options) { client in
                switch try await client.resizeDisk(path: .init(disk: disk), body: .json(.init(sizeBytes: bytes))) {
                case .accepted(let accepted): try await flags.handle(try accepted.body.json, client: client)
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
        }
    }

    struct Reclaim: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Give a thin disk's unused space back and say how much came back.",
            discussion: "Running: the guest trims its file systems through the tools. Off: the image is rewritten without unused clusters.")
        @OptionGroup var options: ClientOptions
        @OptionGroup var flags: TaskFlags
        @Argument(help: "The VM.") var vm: String
        @Argument(help: "root, or a data disk's name.") var disk: String

        func run() async throws {
            try await calling(options) { client in
                switch try await client.reclaimDiskSpace(path: .init(vm: vm), body: .json(.init(disk: disk))) {
                case .accepted(let accepted): try await flags.handle(try accepted.body.json, client: client)
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a detached disk and its image.")
        @OptionGroup var options: ClientOptions
        @OptionGroup var flags: TaskFlags
        @Argument(help: "The disk's name or id.") var disk: String

        func run() async throws {
            try await calling(options) { client in
                switch try await client.deleteDisk(path: .init(disk: disk)) {
                case .accepted(let accepted): try await flags.handle(try accepted.body.json, client: client)
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
        }
    }
}
