import ArgumentParser
import Foundation
import ShepherdAPI

typealias APITask = Components.Schemas.Task

/// Follows a task until it ends, drawing a progress bar on a terminal (lines otherwise).
/// Throws with the task's error when it failed.
func follow(_ task: APITask, client: Client, json: Bool = false) async throws -> APITask {
    let terminal = isatty(STDERR_FILENO) == 1 && !json
    var last = task
    var lastLine = ""
    while true {
        let line = progressLine(last)
        if terminal {
            FileHandle.standardError.write(Data(("\r\u{1B}[K" + line).utf8))
        } else if !json, line != lastLine {
            FileHandle.standardError.write(Data((line + "\n").utf8))
        }
        lastLine = line
        if last.state == .succeeded || last.state == .failed { break }
        try await Task.sleep(for: .milliseconds(300))
        last = try await fetchTask(client, task.id)
    }
    if terminal { FileHandle.standardError.write(Data("\n".utf8)) }
    if json { try printJSON(last) }
    if last.state == .failed {
        throw CLIError("\(last.kind) \(last.targetName) failed: \(last.error?.message ?? last.message)")
    }
    return last
}

func progressLine(_ task: APITask) -> String {
    let width = 24
    let filled = max(0, min(width, task.progress * width / 100))
    let bar = String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled)
    return "\(task.kind) \(task.targetName) [\(bar)] \(String(format: "%3d", task.progress))% \(task.state.rawValue): \(task.message)"
}

struct TaskCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "task", abstract: "Follow long operations.",
                                                    subcommands: [List.self, Show.self, Wait.self, Cancel.self])

    struct Cancel: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Cancel a running migration or maintenance task; it rolls back.")
        @OptionGroup var options: ClientOptions
        @OptionGroup var flags: TaskFlags
        @Argument(help: "The task's id.") var id: String

        func run() async throws {
            try await calling(options) { client in
                switch try await client.cancelTask(path: .init(task: id)) {
                case .accepted(let accepted):
                    do { try await flags.handle(try accepted.body.json, client: client) } catch let error as CLIError {
                        // A cancelled task ends failed with code cancelled: that is what was asked for.
                        guard error.description.contains("cancelled") else { throw error }
                        print("cancelled; \(error.description)")
                    }
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List tasks, newest first.")
        @OptionGroup var options: ClientOptions
        @Flag(help: "Print JSON.") var json = false
        @Option(help: "How many (1-1000).") var limit: Int = 50

        func run() async throws {
            let tasks = try await calling(options) { client in
                switch try await client.listTasks(query: .init(limit: limit)) {
                case .ok(let ok): return try ok.body.json
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
            if json { return try printJSON(tasks) }
            let rows: [[String]] = tasks.map { task in
                let message: String = task.state == .failed ? (task.error?.message ?? task.message) : task.message
                return [task.id, task.kind, task.targetName, task.state.rawValue, "\(task.progress)%", message]
            }
            printTable(["ID", "KIND", "TARGET", "STATE", "PROGRESS", "MESSAGE"], rows)
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one task.")
        @OptionGroup var options: ClientOptions
        @Flag(help: "Print JSON.") var json = false
        @Argument(help: "The task's id.") var id: String

        func run() async throws {
            let task = try await calling(options) { client in try await fetchTask(client, id) }
            if json { return try printJSON(task) }
            printTask(task)
        }
    }

    struct Wait: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Wait for a task to end, showing its progress; fails when it failed.")
        @OptionGroup var options: ClientOptions
        @Flag(help: "Print the final task as JSON.") var json = false
        @Argument(help: "The task's id.") var id: String

        func run() async throws {
            try await calling(options) { client in
                _ = try await follow(try await fetchTask(client, id), client: client, json: json)
            }
        }
    }
}

func fetchTask(_ client: Client, _ id: String) async throws -> APITask {
    switch try await client.getTask(path: .init(task: id)) {
    case .ok(let ok): return try ok.body.json
    case .default(let status, let error): throw CLIError.api(status, error)
    }
}

func printTask(_ task: APITask) {
    let rows: [(String, String)] = [
        ("id", task.id), ("kind", task.kind), ("target", "\(task.targetType) \(task.targetName) (\(task.targetId))"),
        ("state", task.state.rawValue), ("progress", "\(task.progress)%"), ("message", task.message),
        ("error", task.error.map { "\($0.code): \($0.message)" } ?? "-"),
        ("created", formatDate(task.createdAt)), ("started", formatDate(task.startedAt)), ("finished", formatDate(task.finishedAt)),
    ]
    for (key, value) in rows { print(key.padding(toLength: 10, withPad: " ", startingAt: 0) + value) }
}

struct EventCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "event", abstract: "What happened.", subcommands: [List.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List events, newest first.")
        @OptionGroup var options: ClientOptions
        @Flag(help: "Print JSON.") var json = false
        @Option(help: "How many (1-1000).") var limit: Int = 50
        @Option(help: "Only events about this VM, host or cluster.") var target: String?
        @Option(help: "Only events whose kind starts with this (ha., host.power).") var kind: String?

        func run() async throws {
            let events = try await calling(options) { client in
                switch try await client.listEvents(query: .init(limit: limit, target: target, kind: kind)) {
                case .ok(let ok): return try ok.body.json
                case .default(let status, let error): throw CLIError.api(status, error)
                }
            }
            if json { return try printJSON(events) }
            printTable(["TIME", "SEVERITY", "KIND", "TARGET", "MESSAGE"], events.map { event in
                [formatDate(event.time), event.severity.rawValue, event.kind, event.targetName, event.message]
            })
        }
    }
}
