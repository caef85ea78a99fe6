import ArgumentParser
import Foundation
import ShepherdAPI
import ShepherdCore

struct SnapshotCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snapshot", abstract: "Snapshots of a VM's disks: take (live or off), list as a tree, revert, delete any node.",
        subcommands: [List.self, Create.self, Revert.self, Delete.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show a VM's snapshot tree and where its current state is.")
        @OptionGroup var options: ClientOptions
        @Flag(help: "Print JSON.") var json = false
        @Argument(help: "The VM's name or id.") var vm: String

        func run() async throws {
            let tree = try await calling(options) { client in
                switch try await client.listSnapshots(path: .init(vm: vm)) {
                case .ok(let ok): return try ok.body.json
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
            if json { return try printJSON(tree) }
            if tree.snapshots.isEmpty { return print("'\(tree.vm)' has no snapshots") }
            let nodes = tree.snapshots.map { SnapshotTree.Node(id: $0.name, name: $0.name, parent: $0.parent, images: [:]) }
            let details = Dictionary(uniqueKeysWithValues: tree.snapshots.map { snapshot in
                (snapshot.name, "\(formatDate(snapshot.createdAt))  \(snapshot.live ? "live" : "off")\(snapshot.quiesced ? ", quiesced" : "")\(snapshot.memory == true ? ", with memory" : "")  \(snapshot.disks) disk(s)\(snapshot.description.isEmpty ? "" : "  \(snapshot.description)")")
            })
            for line in SnapshotTree.render(nodes, current: tree.current) {
                let name = line.trimmingCharacters(in: .whitespaces)
                print(details[name].map { line.padding(toLength: max(line.count + 2, 24), withPad: " ", startingAt: 0) + $0 } ?? line)
            }
        }
    }

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Take a snapshot of the root disk and every persistent data disk.",
            discussion: "On a running VM (its tools must answer) every disk freezes at the same moment; --quiesce also freezes the guest's file systems for it; --memory saves the guest's memory too (it pauses for that).")
        @OptionGroup var options: ClientOptions
        @OptionGroup var flags: TaskFlags
        @Argument(help: "The VM's name or id.") var vm: String
        @Argument(help: "The snapshot's name.") var name: String
        @Option(help: "A description.") var description: String?
        @Flag(help: "Freeze the guest's file systems through the tools for the moment of the snapshot.") var quiesce = false
        @Flag(help: "Save the running guest's memory too: a revert resumes it where it was.") var memory = false

        func run() async throws {
            try await calling(options) { client in
                switch try await client.createSnapshot(path: .init(vm: vm), body: .json(.init(name: name, description: description, quiesce: quiesce, memory: memory))) {
                case .accepted(let accepted): try await flags.handle(try accepted.body.json, client: client)
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
        }
    }

    struct Revert: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Return a VM to a snapshot; its current state is discarded (a running VM's power is cut first).")
        @OptionGroup var options: ClientOptions
        @OptionGroup var flags: TaskFlags
        @Argument(help: "The VM's name or id.") var vm: String
        @Argument(help: "The snapshot's name.") var snapshot: String

        func run() async throws {
            try await calling(options) { client in
                switch try await client.revertSnapshot(path: .init(vm: vm, snapshot: snapshot)) {
                case .accepted(let accepted): try await flags.handle(try accepted.body.json, client: client)
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a snapshot (any node, also while the VM runs); its data merges into the states after it.")
        @OptionGroup var options: ClientOptions
        @OptionGroup var flags: TaskFlags
        @Argument(help: "The VM's name or id.") var vm: String
        @Argument(help: "The snapshot's name.") var snapshot: String

        func run() async throws {
            try await calling(options) { client in
                switch try await client.deleteSnapshot(path: .init(vm: vm, snapshot: snapshot)) {
                case .accepted(let accepted): try await flags.handle(try accepted.body.json, client: client)
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
        }
    }
}
