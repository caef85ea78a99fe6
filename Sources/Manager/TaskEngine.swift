import Foundation
import GRDB
import Logging
import ShepherdCore

/// Runs long operations as tasks: persisted, with progress, and failed with a reason when the
/// manager restarts under them.
final class TaskEngine: Sendable {
    private let store: Store
    private let events: EventLog
    private let logger: Logger
    private let live = LiveTasks()

    init(store: Store, events: EventLog, logger: Logger) {
        self.store = store
        self.events = events
        self.logger = logger
    }

    /// A task created but not yet started: the caller persists its other changes with it.
    func newTask(kind: String, targetType: String, targetId: String, targetName: String) -> TaskRecord {
        TaskRecord(id: newID(), kind: kind, targetType: targetType, targetId: targetId, targetName: targetName,
                   state: TaskState.queued.rawValue, progress: 0, message: "queued", errorCode: nil, errorMessage: nil,
                   createdAt: Date(), startedAt: nil, finishedAt: nil)
    }

    /// Marks tasks that a previous manager process left unfinished as failed.
    func failInterrupted() throws -> Int {
        try store.db.write { db in
            let open = try TaskRecord.filter([TaskState.queued.rawValue, TaskState.running.rawValue].contains(Column("state"))).fetchAll(db)
            for var task in open {
                task.state = TaskState.failed.rawValue
                task.errorCode = ShepherdError.Code.interrupted.rawValue
                task.errorMessage = "interrupted: the manager stopped while this task was \(task.message.isEmpty ? "running" : "at '\(task.message)'") (\(task.progress)%)"
                task.finishedAt = Date()
                try task.update(db)
            }
            return open.count
        }
    }

    /// The task holding something (a disk, a VM's operation lock) when it has not finished; a
    /// task a previous manager process left behind was failed at start, so it holds nothing.
    static func holding(_ db: Database, _ taskID: String?) throws -> TaskRecord? {
        guard let taskID, let task = try TaskRecord.fetchOne(db, key: taskID),
              !(TaskState(rawValue: task.state)?.isFinished ?? true) else { return nil }
        return task
    }

    /// Is this task running in this manager process?
    func isLive(_ taskID: String?) async -> Bool {
        guard let taskID else { return false }
        return await live.contains(taskID)
    }

    /// Task kinds a user may cancel: their workflows undo what they did.
    static let cancellable: Set<String> = ["vm.migrate", "host.maintenance.enter", "vm.storage.migrate"]

    /// Starts `body` in the background; its returned text becomes the final message.
    func run(_ task: TaskRecord, _ body: @escaping @Sendable (Progress) async throws -> String) {
        let progress = Progress(taskID: task.id, store: store)
        let work = Task {
            await progress.begin()
            do {
                let message = try await body(progress)
                await progress.finish(.succeeded, message: message, error: nil)
            } catch {
                let failure = (error as? ShepherdError)
                    ?? (error is CancellationError ? ShepherdError(.cancelled, "cancelled by the user") : ShepherdError(.internal, "\(error)"))
                logger.warning("task \(task.kind) \(task.targetName) failed: \(failure)")
                await progress.finish(.failed, message: "failed", error: failure)
            }
            await live.remove(task.id)
        }
        Task { await live.insert(task.id, work) }
    }

    /// Runs a short operation as `task` in the caller's context (its answer is the API's answer),
    /// recording it like any task: running, then succeeded with `body`'s message or failed.
    func perform<T: Sendable>(_ task: TaskRecord, _ body: (Progress) async throws -> (T, String)) async throws -> T {
        let progress = Progress(taskID: task.id, store: store)
        await progress.begin()
        do {
            let (value, message) = try await body(progress)
            await progress.finish(.succeeded, message: message, error: nil)
            return value
        } catch {
            await progress.finish(.failed, message: "failed", error: (error as? ShepherdError) ?? ShepherdError(.internal, "\(error)"))
            throw error
        }
    }

    /// Asks a running task to stop; its workflow rolls back and it fails as cancelled.
    func cancel(_ taskID: String) async throws -> TaskRecord {
        guard let task = try await store.db.read({ db in try TaskRecord.fetchOne(db, key: taskID) }) else {
            throw ShepherdError.notFound("task", taskID)
        }
        guard !(TaskState(rawValue: task.state)?.isFinished ?? true) else {
            throw ShepherdError(.illegalState, "task \(taskID) (\(task.kind) \(task.targetName)) already \(task.state)")
        }
        guard Self.cancellable.contains(task.kind) else {
            throw ShepherdError(.illegalState, "\(task.kind) tasks cannot be cancelled (cancellable: \(Self.cancellable.sorted().joined(separator: ", ")))")
        }
        guard await live.cancel(taskID) else {
            throw ShepherdError(.illegalState, "task \(taskID) is not running in this manager")
        }
        return task
    }

    /// Progress reports of one task.
    struct Progress: Sendable {
        let taskID: String
        let store: Store

        /// Records how far the task got, 0–100, and what it is doing.
        func update(_ percent: Int, _ message: String) async {
            await write { task in
                task.progress = max(task.progress, min(99, percent))
                task.message = message
            }
        }

        func begin() async {
            await write { task in
                task.state = TaskState.running.rawValue
                task.startedAt = Date()
                task.message = "running"
            }
        }

        func finish(_ state: TaskState, message: String, error: ShepherdError?) async {
            await write { task in
                task.state = state.rawValue
                if state == .succeeded { task.progress = 100 }
                task.message = message
                task.errorCode = error?.code.rawValue
                task.errorMessage = error?.message
                task.finishedAt = Date()
            }
        }

        /// Detached: a cancelled task must still record how it ended (GRDB's async access
        /// throws in a cancelled task).
        private func write(_ change: @escaping @Sendable (inout TaskRecord) -> Void) async {
            let id = taskID, store = self.store
            await Task.detached {
                _ = try? await store.db.write { db in
                    guard var task = try TaskRecord.fetchOne(db, key: id) else { return }
                    change(&task)
                    try task.update(db)
                }
            }.value
        }
    }
}

private actor LiveTasks {
    private var handles: [String: Task<Void, Never>] = [:]
    private var finished: Set<String> = []
    func insert(_ id: String, _ handle: Task<Void, Never>) {
        // The task may have ended before it was registered.
        if finished.remove(id) == nil { handles[id] = handle }
    }
    func remove(_ id: String) {
        if handles.removeValue(forKey: id) == nil { finished.insert(id) }
    }
    func contains(_ id: String) -> Bool { handles[id] != nil }
    func cancel(_ id: String) -> Bool {
        guard let handle = handles[id] else { return false }
        handle.cancel()
        return true
    }
}

/// Undo actions collected while a workflow acquires things; run in reverse when it fails
/// (Proxmox's phase/cleanup pairs, Nova's rollback).
actor Rollback {
    private var undos: [(name: String, action: @Sendable () async throws -> Void)] = []

    /// Registers how to give back what a step just acquired.
    func add(_ name: String, _ action: @escaping @Sendable () async throws -> Void) {
        undos.append((name, action))
    }

    /// Forgets an undo a later step made wrong (a resumed VM's saved memory is gone: it cannot
    /// be "hibernated again").
    func remove(named name: String) {
        undos.removeAll { $0.name == name }
    }

    /// Runs every undo, newest first, outside any cancellation of the caller; says what was
    /// undone and what could not be.
    nonisolated func run() async -> String {
        await Task.detached { await self.runUndos() }.value
    }

    private func runUndos() async -> String {
        var done: [String] = []
        var failed: [String] = []
        for undo in undos.reversed() {
            do {
                try await undo.action()
                done.append(undo.name)
            } catch {
                failed.append("\(undo.name) (\(error))")
            }
        }
        undos.removeAll()
        var parts: [String] = []
        if !done.isEmpty { parts.append("rolled back: " + done.joined(separator: "; ")) }
        if !failed.isEmpty { parts.append("could not roll back: " + failed.joined(separator: "; ")) }
        return parts.joined(separator: ". ")
    }
}

/// A failure that carries what its rollback did.
func failure(_ error: any Error, rolledBack: String) -> ShepherdError {
    let base = (error as? ShepherdError)
        ?? (error is CancellationError ? ShepherdError(.cancelled, "cancelled by the user") : ShepherdError(.internal, "\(error)"))
    return rolledBack.isEmpty ? base : ShepherdError(base.code, "\(base.message); \(rolledBack)")
}

/// The append-only log of what happened.
final class EventLog: Sendable {
    private let store: Store
    private let logger: Logger

    init(store: Store, logger: Logger) {
        self.store = store
        self.logger = logger
    }

    enum Severity: String { case info, warning, error }

    func record(_ severity: Severity, _ kind: String, targetType: String, targetId: String, targetName: String, _ message: String) async {
        let event = EventRecord(id: nil, time: Date(), severity: severity.rawValue, kind: kind, targetType: targetType,
                                targetId: targetId, targetName: targetName, message: message)
        logger.info("event \(kind) \(targetName): \(message)")
        let store = self.store
        await Task.detached {
            _ = try? await store.db.write { db in
                var row = event
                try row.insert(db)
            }
        }.value
    }
}
