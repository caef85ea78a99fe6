import Foundation

/// A VM's power lifecycle. Transitional states carry the task that owns them; the resting
/// states carry what a user needs to know (since when it runs, why it crashed).
public enum VMLifecycle: Sendable, Equatable {
    case creating(task: String)
    case stopped
    case starting(task: String)
    case running(since: Date)
    case stopping(task: String)
    case rebooting(task: String)
    case crashed(reason: String)
    case deleting(task: String)
    /// Moving live to another host (by id); it runs on the source until the switch-over.
    case migrating(task: String, target: String)
    /// The manager lost track (e.g. its host disconnected); the next heartbeat settles it.
    case unknown(reason: String)
    /// Its RAM and device state are being written to its datastore; QEMU ends after.
    case hibernating(task: String)
    /// Off with its RAM state saved beside its disk (seed: 休眠); a start resumes it. Its disks
    /// must not change meanwhile.
    case hibernated

    /// The state's stable name, as the API spells it.
    public var name: String {
        switch self {
        case .creating: "creating"
        case .stopped: "stopped"
        case .starting: "starting"
        case .running: "running"
        case .stopping: "stopping"
        case .rebooting: "rebooting"
        case .crashed: "crashed"
        case .deleting: "deleting"
        case .migrating: "migrating"
        case .unknown: "unknown"
        case .hibernating: "hibernating"
        case .hibernated: "hibernated"
        }
    }

    /// The task that owns a transitional state.
    public var task: String? {
        switch self {
        case .creating(let task), .starting(let task), .stopping(let task), .rebooting(let task), .deleting(let task),
             .migrating(let task, _), .hibernating(let task): task
        default: nil
        }
    }

    /// Why the VM is in this state, when that says more than its name.
    public var reason: String? {
        switch self {
        case .crashed(let reason), .unknown(let reason): reason
        default: nil
        }
    }

    /// When it started running.
    public var since: Date? {
        if case .running(let since) = self { return since }
        return nil
    }

    /// Does QEMU run (or is it about to) — what counts against a host's memory.
    public var consumesHostResources: Bool {
        switch self {
        case .starting, .running, .stopping, .rebooting, .migrating, .hibernating: true
        default: false
        }
    }

    /// The host a live migration moves the VM to.
    public var migrationTarget: String? {
        if case .migrating(_, let target) = self { return target }
        return nil
    }

    /// Rebuilds a state from its stored columns.
    public init(name: String, task: String?, reason: String?, since: Date?, migrationTarget: String? = nil) {
        switch name {
        case "creating": self = .creating(task: task ?? "")
        case "stopped": self = .stopped
        case "starting": self = .starting(task: task ?? "")
        case "running": self = .running(since: since ?? Date(timeIntervalSince1970: 0))
        case "stopping": self = .stopping(task: task ?? "")
        case "rebooting": self = .rebooting(task: task ?? "")
        case "crashed": self = .crashed(reason: reason ?? "")
        case "deleting": self = .deleting(task: task ?? "")
        case "migrating": self = .migrating(task: task ?? "", target: migrationTarget ?? "")
        case "hibernating": self = .hibernating(task: task ?? "")
        case "hibernated": self = .hibernated
        default: self = .unknown(reason: reason ?? "stored state '\(name)' is not known")
        }
    }

    // MARK: transitions a user asks for; an illegal one throws naming the operation and state.

    public func start(vm: String, task: String) throws -> VMLifecycle {
        switch self {
        case .stopped, .crashed, .hibernated: return .starting(task: task)
        default: throw illegal("start", vm: vm, allowed: ["stopped", "crashed", "hibernated"])
        }
    }

    public func stop(vm: String, task: String, force: Bool) throws -> VMLifecycle {
        switch self {
        case .running: return .stopping(task: task)
        case .unknown, .rebooting, .starting, .stopping, .crashed:
            if force { return .stopping(task: task) }
            throw illegal("stop", vm: vm, allowed: ["running"])
        case .hibernated:
            if force { return .stopping(task: task) }
            throw ShepherdError(.illegalState, "VM '\(vm)' is hibernated: a start resumes it; stop --force discards its saved memory")
        default:
            throw illegal("stop", vm: vm, allowed: force ? ["running", "starting", "stopping", "rebooting", "crashed", "unknown"] : ["running"])
        }
    }

    public func reboot(vm: String, task: String) throws -> VMLifecycle {
        switch self {
        case .running: return .rebooting(task: task)
        default: throw illegal("reboot", vm: vm, allowed: ["running"])
        }
    }

    public func delete(vm: String, task: String, force: Bool) throws -> VMLifecycle {
        switch self {
        case .stopped, .crashed, .unknown, .hibernated: return .deleting(task: task)
        case .running, .starting, .stopping, .rebooting:
            if force { return .deleting(task: task) }
            throw ShepherdError(.illegalState, "cannot delete VM '\(vm)': it is \(name); stop it first or use --force to cut its power")
        default: throw illegal("delete", vm: vm, allowed: ["stopped", "crashed", "unknown"])
        }
    }

    public func hibernate(vm: String, task: String) throws -> VMLifecycle {
        guard case .running = self else { throw illegal("hibernate", vm: vm, allowed: ["running"]) }
        return .hibernating(task: task)
    }

    public func migrate(vm: String, task: String, target: String) throws -> VMLifecycle {
        guard case .running = self else { throw illegal("migrate", vm: vm, allowed: ["running"]) }
        return .migrating(task: task, target: target)
    }

    /// Running a command in the guest needs a running VM (its tools are checked separately).
    public func checkExec(vm: String) throws {
        switch self {
        case .running, .migrating: return
        default: throw illegal("exec in", vm: vm, allowed: ["running", "migrating"])
        }
    }

    private func illegal(_ operation: String, vm: String, allowed: [String]) -> ShepherdError {
        ShepherdError(.illegalState, "cannot \(operation) VM '\(vm)': it is \(name) (allowed when \(allowed.joined(separator: ", ")))")
    }
}
