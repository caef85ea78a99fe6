import ArgumentParser
import Foundation
import ShepherdAPI
import ShepherdCore

typealias APIVM = Components.Schemas.Vm

/// Shared flags of the commands that start a task.
struct TaskFlags: ParsableArguments {
    @Flag(name: .customLong("no-wait"), help: "Print the task and return instead of following it.")
    var noWait = false
    @Flag(help: "Print the final task as JSON.") var json = false

    /// Follows (or just prints) a task the manager accepted.
    func handle(_ task: APITask, client: Client) async throws {
        if noWait {
            if json { return try printJSON(task) }
            print(task.id)
            return
        }
        let done = try await follow(task, client: client, json: json)
        if !json { print("\(done.targetName): \(done.message)") }
    }
}

struct VMCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vm", abstract: "Create, run and remove virtual machines.",
        subcommands: [List.self, Show.self, Create.self, Start.self, Stop.self, Reboot.self, Hibernate.self, Delete.self, Exec.self, Migrate.self,
                       MigrateStorage.self, Clone.self, ToTemplate.self, Set.self, QoS.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List VMs.")
        @OptionGroup var options: ClientOptions
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            let vms = try await calling(options) { client in
                switch try await client.listVMs() {
                case .ok(let ok): return try ok.body.json
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
            if json { return try printJSON(vms) }
            printTable(["NAME", "STATE", "HOST", "CPUS", "MEMORY", "TOOLS", "ID"], vms.map { vm in
                [vm.name, vm.state.rawValue, vm.hostName, "\(vm.cpus)", formatMiB(vm.memoryMiB), vm.toolsStatus.rawValue, vm.id]
            })
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one VM.")
        @OptionGroup var options: ClientOptions
        @Flag(help: "Print JSON.") var json = false
        @Argument(help: "The VM's name or id.") var vm: String

        func run() async throws {
            let found = try await calling(options) { client in
                switch try await client.getVM(path: .init(vm: vm)) {
                case .ok(let ok): return try ok.body.json
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
            if json { return try printJSON(found) }
            let state = found.state.rawValue + (found.stateReason.map { " (\($0))" } ?? "")
            var rows: [(String, String)] = [
                ("name", found.name), ("id", found.id), ("state", state),
                ("host", found.hostName), ("cpus", "\(found.cpus) (at most \(found.maxCpus ?? found.cpus) online)"),
                ("memory", "\(formatMiB(found.memoryMiB)) (at most \(formatMiB(found.maxMemoryMiB ?? found.memoryMiB)) online)"
                    + (found.guestMemoryMiB.map { "; the guest has \(formatMiB($0))" + (found.guestUsedMiB.map { ", uses \(formatMiB($0))" } ?? "") } ?? "")),
                ("tools", found.toolsStatus.rawValue), ("template", found.template), ("datastore", found.datastore),
                ("disk", found.diskPath), ("pid", found.pid.map(String.init) ?? "-"), ("created", formatDate(found.createdAt)),
                ("qos", qosSummary(found)),
            ]
            if let template = found.linkedTemplate { rows.append(("linked to", "template \(template) (a linked clone)")) }
            for (key, value) in rows { print(key.padding(toLength: 11, withPad: " ", startingAt: 0) + value) }
        }
    }

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a VM from a template; the scheduler places it unless --host says where.")
        @OptionGroup var options: ClientOptions
        @OptionGroup var flags: TaskFlags
        @Argument(help: "The new VM's name.") var name: String
        @Option(help: "Virtual CPUs (1-64).") var cpus: Int = 1
        @Option(help: "Memory in MiB (16-1048576).") var memory: Int = 128
        @Option(help: "Template (default tiny).") var template: String?
        @Option(help: "Host name; placed by the scheduler when absent.") var host: String?
        @Option(help: "Datastore for the disk (default: the template's).") var datastore: String?
        @Flag(help: "A linked clone: a differencing disk over the template's image instead of a copy.") var linked = false
        @Option(help: "Most vCPUs it may grow to while running (default: --cpus).") var maxCpus: Int?
        @Option(help: "Most memory (MiB) it may grow to while running (default: --memory).") var maxMemory: Int?

        func run() async throws {
            try await calling(options) { client in
                let response = try await client.createVM(body: .json(.init(
                    name: name, cpus: cpus, memoryMiB: memory, template: template, host: host, datastore: datastore, linked: linked,
                    maxCpus: maxCpus, maxMemoryMiB: maxMemory)))
                switch response {
                case .accepted(let accepted): try await flags.handle(try accepted.body.json, client: client)
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
        }
    }

    struct Start: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Power on a VM; waits until its tools answer.")
        @OptionGroup var options: ClientOptions
        @OptionGroup var flags: TaskFlags
        @Argument(help: "The VM's name or id.") var vm: String

        func run() async throws {
            try await calling(options) { client in
                switch try await client.startVM(path: .init(vm: vm)) {
                case .accepted(let accepted): try await flags.handle(try accepted.body.json, client: client)
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
        }
    }

    struct Stop: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Shut a VM down through its tools (ACPI otherwise); --force cuts power.")
        @OptionGroup var options: ClientOptions
        @OptionGroup var flags: TaskFlags
        @Flag(help: "Cut the power instead of asking the guest.") var force = false
        @Argument(help: "The VM's name or id.") var vm: String

        func run() async throws {
            try await calling(options) { client in
                switch try await client.stopVM(path: .init(vm: vm), body: .json(.init(force: force))) {
                case .accepted(let accepted): try await flags.handle(try accepted.body.json, client: client)
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
        }
    }

    struct Reboot: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Reboot a VM through its tools; --force resets it.")
        @OptionGroup var options: ClientOptions
        @OptionGroup var flags: TaskFlags
        @Flag(help: "Reset instead of asking the guest.") var force = false
        @Argument(help: "The VM's name or id.") var vm: String

        func run() async throws {
            try await calling(options) { client in
                switch try await client.rebootVM(path: .init(vm: vm), body: .json(.init(force: force))) {
                case .accepted(let accepted): try await flags.handle(try accepted.body.json, client: client)
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
        }
    }

    struct Hibernate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Save a running VM's memory to its datastore and end its QEMU; 'vm start' resumes it where it was.",
            discussion: "'vm stop --force' on a hibernated VM discards the saved memory instead.")
        @OptionGroup var options: ClientOptions
        @OptionGroup var flags: TaskFlags
        @Argument(help: "The VM's name or id.") var vm: String

        func run() async throws {
            try await calling(options) { client in
                switch try await client.hibernateVM(path: .init(vm: vm)) {
                case .accepted(let accepted): try await flags.handle(try accepted.body.json, client: client)
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a stopped VM and its disk; --force cuts power first.")
        @OptionGroup var options: ClientOptions
        @OptionGroup var flags: TaskFlags
        @Flag(help: "Cut the power of a running VM first.") var force = false
        @Argument(help: "The VM's name or id.") var vm: String

        func run() async throws {
            try await calling(options) { client in
                switch try await client.deleteVM(path: .init(vm: vm), query: .init(force: force)) {
                case .accepted(let accepted): try await flags.handle(try accepted.body.json, client: client)
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
        }
    }

    struct Migrate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Move a running VM to another host without stopping it (host live migration).",
            discussion: "--dry-run runs every preflight check and lists each one that fails, with its numbers.")
        @OptionGroup var options: ClientOptions
        @OptionGroup var flags: TaskFlags
        @Option(help: "The target host's name or id.") var to: String
        @Option(help: "Whole-VM migration: move the disks to this datastore of the target too (no shared storage needed).") var datastore: String?
        @Flag(help: "Only run the preflight checks.") var dryRun = false
        @Argument(help: "The VM's name or id.") var vm: String

        func run() async throws {
            try await calling(options) { client in
                switch try await client.migrateVM(path: .init(vm: vm), body: .json(.init(target: to, datastore: datastore, dryRun: dryRun))) {
                case .ok(let ok):
                    let check = try ok.body.json
                    if flags.json { try printJSON(check) } else if check.ok {
                        print("\(check.vm) can migrate from \(check.source) to \(check.target): every check passed")
                    } else {
                        print("\(check.vm) cannot migrate from \(check.source) to \(check.target):")
                        for refusal in check.refusals { print("  \(refusal.check): \(refusal.message)") }
                    }
                    if !check.ok { throw ExitCode(2) }
                case .accepted(let accepted): try await flags.handle(try accepted.body.json, client: client)
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
        }
    }

    struct Clone: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Clone a VM that is off (a full copy) or a template (a copy, or with --linked a differencing disk over it).")
        @OptionGroup var options: ClientOptions
        @OptionGroup var flags: TaskFlags
        @Argument(help: "The VM (off) or template to clone.") var source: String
        @Argument(help: "The new VM's name.") var name: String
        @Flag(help: "A linked clone of a template.") var linked = false
        @Option(help: "Datastore for the new disks (default: the source's).") var datastore: String?
        @Option(help: "From a template: virtual CPUs (default 1).") var cpus: Int?
        @Option(help: "From a template: memory in MiB (default 128).") var memory: Int?

        func run() async throws {
            try await calling(options) { client in
                let body = Components.Schemas.CloneRequest(name: name, linked: linked, datastore: datastore, cpus: cpus, memoryMiB: memory)
                switch try await client.cloneVM(path: .init(vm: source), body: .json(body)) {
                case .accepted(let accepted): try await flags.handle(try accepted.body.json, client: client)
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
        }
    }

    struct ToTemplate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "to-template", abstract: "Turn a VM that is off into a template (its root disk becomes the template's image).")
        @OptionGroup var options: ClientOptions
        @Flag(help: "Print JSON.") var json = false
        @Argument(help: "The VM.") var vm: String
        @Option(help: "The template's name (default: the VM's).") var name: String?
        @Option(help: "A description.") var description: String?

        func run() async throws {
            let template = try await calling(options) { client in
                switch try await client.convertVMToTemplate(path: .init(vm: vm), body: .json(.init(name: name, description: description))) {
                case .created(let created): return try created.body.json
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
            if json { return try printJSON(template) }
            print("template \(template.name) on \(template.datastore): \(template.disk)")
        }
    }

    struct MigrateStorage: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "migrate-storage",
            abstract: "Move a VM's disks to another datastore: live by mirroring while it runs, by conversion while it is off.",
            discussion: "--disk picks disks by name (root is the root disk); --type converts them on the way. --dry-run lists every failed check. A cancel ('shepherd task cancel ID') leaves the VM on its source disks.")
        @OptionGroup var options: ClientOptions
        @OptionGroup var flags: TaskFlags
        @Option(help: "The target datastore.") var to: String
        @Option(name: .customLong("disk"), help: "A disk to move (repeatable; default all).") var disks: [String] = []
        @Option(help: "thin, thick or thick-lazy (default thin).") var type: String?
        @Option(help: "Cap the copy's rate per second, e.g. 50M (at least 1M).") var bwlimit: String?
        @Flag(help: "Only run the checks.") var dryRun = false
        @Argument(help: "The VM's name or id.") var vm: String

        func run() async throws {
            let diskType = try type.map { value in
                guard let parsed = Components.Schemas.DiskType(rawValue: value) else { throw ValidationError("--type: '\(value)' must be thin, thick or thick-lazy") }
                return parsed
            }
            let rate = try bwlimit.map { try DiskRules.parseSize($0, field: "--bwlimit") }
            try await calling(options) { client in
                let body = Components.Schemas.StorageMigrateRequest(datastore: to, disks: disks.isEmpty ? nil : disks, _type: diskType,
                                                                    maxBytesPerSecond: rate, dryRun: dryRun)
                switch try await client.migrateVMStorage(path: .init(vm: vm), body: .json(body)) {
                case .ok(let ok):
                    let check = try ok.body.json
                    if flags.json { try printJSON(check) } else if check.ok {
                        print("\(check.vm): \(check.disks.joined(separator: ", ")) can move to \(check.datastore) (\(formatBytes(check.bytes)) there): every check passed")
                    } else {
                        print("\(check.vm) cannot move its storage to \(check.datastore):")
                        for refusal in check.refusals { print("  \(refusal.check): \(refusal.message)") }
                    }
                    if !check.ok { throw ExitCode(2) }
                case .accepted(let accepted): try await flags.handle(try accepted.body.json, client: client)
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
        }
    }

    struct Exec: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run a command inside the guest through its tools; exits with the command's exit code.",
            discussion: "Example: shepherd vm exec web1 -- uname -a")
        @OptionGroup var options: ClientOptions
        @Flag(help: "Print the result as JSON.") var json = false
        @Option(help: "Seconds to wait for the command (1-3600).") var timeout: Int = 60
        @Argument(help: "The VM's name or id.") var vm: String
        @Argument(parsing: .postTerminator, help: "The command and its arguments, after --.") var command: [String] = []

        func run() async throws {
            guard !command.isEmpty else { throw ValidationError("command: give the command after --, e.g. shepherd vm exec \(vm) -- uname -a") }
            let result = try await calling(options, timeout: .seconds(timeout + 30)) { client in
                switch try await client.execInVM(path: .init(vm: vm), body: .json(.init(command: command, timeoutSeconds: timeout))) {
                case .ok(let ok): return try ok.body.json
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
            if json {
                try printJSON(result)
            } else {
                FileHandle.standardOutput.write(Data(result.stdout.utf8))
                FileHandle.standardError.write(Data(result.stderr.utf8))
            }
            if result.exitCode != 0 { throw ExitCode(Int32(truncatingIfNeeded: result.exitCode)) }
        }
    }
}
