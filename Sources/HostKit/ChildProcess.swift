import Foundation

/// A long-lived child (e.g. an agent process the demo starts); stdout and stderr are appended to a log file.
///
/// The child leads its own process group; `terminate` signals that group while the child is unreaped.
/// A dedicated thread waits for the exit and reaps it, so the status is never lost and no zombie is left.
/// Dropping the object does not stop the child.
public final class ChildProcess: Sendable {
    private struct Waiter {
        let continuation: CheckedContinuation<Int32?, Never>
        var timer: Task<Void, Never>?
    }

    private struct State {
        var exitStatus: Int32?
        var waiters: [Int: Waiter] = [:]
        var nextWaiterID = 0
    }

    /// The child's process id (also its process group id).
    public let pid: Int32
    private let state: Locked<State>

    private init(pid: Int32) {
        self.pid = pid
        self.state = Locked(State())
    }

    /// Starts `executable` (absolute path, or looked up in PATH) with `arguments`; output is appended to `logFile` (created 0644), stdin is /dev/null; `environment` is laid over ours.
    public static func spawn(
        _ executable: String, _ arguments: [String], logFile: String, environment: [String: String]? = nil
    ) throws -> ChildProcess {
        let logFD = open(logFile, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard logFD >= 0 else {
            let code = errno
            throw HostKitError(
                kind: .launchFailed,
                message: "could not launch `\(describeCommand([executable] + arguments))`: cannot open log file \(logFile): \(String(cString: strerror(code))) (errno \(code))")
        }
        defer { close(logFD) }
        let pid = try Spawner.spawn(
            executable: executable, arguments: arguments, environment: environment,
            stdin: .devNull, stdout: .fd(logFD), stderr: .fd(logFD))
        let child = ChildProcess(pid: pid)
        child.startReaper()
        return child
    }

    /// True until the child has exited (and been reaped).
    public var isRunning: Bool {
        state.withLock { $0.exitStatus == nil }
    }

    /// SIGTERM to the child's group, wait up to `grace`, then SIGKILL; waits for the exit (reaps). Not cut short by cancellation.
    public func terminate(grace: Duration = .seconds(5)) async {
        guard signal(SIGTERM) else { return }
        if await wait(timeout: grace, cancellable: false) != nil { return }
        _ = signal(SIGKILL)
        _ = await wait(timeout: .seconds(10), cancellable: false)
    }

    /// Waits for the exit: its status (128 + N if killed by signal N), or nil on timeout or task cancellation.
    public func waitForExit(timeout: Duration) async -> Int32? {
        await wait(timeout: timeout, cancellable: true)
    }

    // MARK: - Internals

    /// Signals the group (or the pid alone if the child left its group) while unreaped. False if already exited.
    @discardableResult
    private func signal(_ sig: Int32) -> Bool {
        let pid = self.pid
        return state.withLock { s in
            guard s.exitStatus == nil else { return false }
            if Glibc.kill(-pid, sig) != 0 { _ = Glibc.kill(pid, sig) }
            return true
        }
    }

    private func startReaper() {
        let pid = self.pid
        let state = self.state
        let thread = Thread {
            // Block until it exits without reaping, so signals sent under the lock never hit a reused pid.
            var info = siginfo_t()
            while waitid(P_PID, id_t(pid), &info, WEXITED | WNOWAIT) == -1 && errno == EINTR {}
            let (status, waiters): (Int32, [Waiter]) = state.withLock { s in
                var raw: Int32 = 0
                var r: pid_t
                repeat { r = waitpid(pid, &raw, 0) } while r == -1 && errno == EINTR
                let status = r == pid ? Spawner.decodeWaitStatus(raw) : -1
                s.exitStatus = status
                let waiters = Array(s.waiters.values)
                s.waiters.removeAll()
                return (status, waiters)
            }
            for w in waiters {
                w.timer?.cancel()
                w.continuation.resume(returning: status)
            }
        }
        thread.name = "hostkit-child-\(pid)"
        thread.start()
    }

    private func wait(timeout: Duration, cancellable: Bool) async -> Int32? {
        let state = self.state
        if let status = state.withLock({ $0.exitStatus }) { return status }
        if cancellable && Task.isCancelled { return nil }
        let id = state.withLock { s -> Int in
            s.nextWaiterID += 1
            return s.nextWaiterID
        }
        @Sendable func giveUp() {
            if let w = state.withLock({ $0.waiters.removeValue(forKey: id) }) {
                w.timer?.cancel()
                w.continuation.resume(returning: nil)
            }
        }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (cont: CheckedContinuation<Int32?, Never>) in
                let done: Int32? = state.withLock { s in
                    if let status = s.exitStatus { return status }
                    s.waiters[id] = Waiter(continuation: cont, timer: nil)
                    return nil
                }
                if let done {
                    cont.resume(returning: done)
                    return
                }
                let timer = Task {
                    try? await Task.sleep(for: timeout)
                    if !Task.isCancelled { giveUp() }
                }
                let stillWaiting = state.withLock { s -> Bool in
                    guard s.waiters[id] != nil else { return false }
                    s.waiters[id]?.timer = timer
                    return true
                }
                if !stillWaiting { timer.cancel() }
                if cancellable && Task.isCancelled { giveUp() }
            }
        } onCancel: {
            if cancellable { giveUp() }
        }
    }
}
