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

    /// Is this task running in this manager process?
    func isLive(_ taskID: String?) async -> Bool {
        guard let taskID else { return false }
        return await live.contains(taskID)
    }

    /// Starts `body` in the background; its returned text becomes the final message.
    func run(_ task: TaskRecord, _ body: @escaping @Sendable (Progress) async throws -> String) {
        let progress = Progress(taskID: task.id, store: store)
        Task {
            await live.insert(task.id)
            defer { Task { await self.live.remove(task.id) } }
            await progress.begin()
            do {
                let message = try await body(progress)
                await progress.finish(.succeeded, message: message, error: nil)
            } catch {
                let failure = (error as? ShepherdError) ?? ShepherdError(.internal, "\(error)")
                logger.warning("task \(task.kind) \(task.targetName) failed: \(failure)")
                await progress.finish(.failed, message: "failed", error: failure)
            }
        }
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

        private func write(_ change: @escaping @Sendable (inout TaskRecord) -> Void) async {
            let id = taskID
            _ = try? await store.db.write { db in
                guard var task = try TaskRecord.fetchOne(db, key: id) else { return }
                change(&task)
                try task.update(db)
            }
        }
    }
}

private actor LiveTasks {
    private var ids: Set<String> = []
    func insert(_ id: String) { ids.insert(id) }
    func remove(_ id: String) { ids.remove(id) }
    func contains(_ id: String) -> Bool { ids.contains(id) }
}

/// Undo actions collected while a workflow acquires things; run in reverse when it fails
/// (Proxmox's phase/cleanup pairs, Nova's rollback).
actor Rollback {
    private var undos: [(name: String, action: @Sendable () async throws -> Void)] = []

    /// Registers how to give back what a step just acquired.
    func add(_ name: String, _ action: @escaping @Sendable () async throws -> Void) {
        undos.append((name, action))
    }

    /// Runs every undo, newest first; says what was undone and what could not be.
    func run() async -> String {
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
    let base = (error as? ShepherdError) ?? ShepherdError(.internal, "\(error)")
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
        _ = try? await store.db.write { db in
            var row = event
            try row.insert(db)
        }
    }
}
