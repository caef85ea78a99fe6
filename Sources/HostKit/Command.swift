import Foundation

/// Runs short-lived external programs with argv arrays (never a shell), with a timeout.
///
/// Each run gets one dedicated thread that spawns the child, feeds stdin, drains stdout/stderr
/// with poll(2) and reaps it; the calling task only awaits a continuation, so no thread of the
/// Swift concurrency pool ever blocks. Cancelling the calling task kills the child like a timeout
/// does and throws `CancellationError`.
public enum Command {
    /// How long to keep reading after the direct child exited, for pipes held open by a daemonized grandchild.
    static let exitGrace: Duration = .milliseconds(200)
    /// Between SIGTERM and SIGKILL on timeout.
    static let killGrace: Duration = .seconds(2)

    /// Runs `executable` (absolute path, or looked up in PATH) with `arguments` and returns when it exits; never throws for a non-zero exit.
    ///
    /// - `environment` is laid over the inherited environment (it does not replace it).
    /// - `input`, when given, is written to stdin, which is then closed; otherwise stdin is /dev/null.
    /// - On timeout the child's process group gets SIGTERM, then SIGKILL 2 s later, and `timedOut` is thrown.
    /// - Returns shortly (~200 ms) after the direct child exits even if a daemonized grandchild keeps the
    ///   pipes open; what was read by then is returned.
    public static func run(
        _ executable: String, _ arguments: [String], timeout: Duration = .seconds(30),
        environment: [String: String]? = nil, input: String? = nil
    ) async throws -> CommandResult {
        try Task.checkCancellation()
        let cancelled = Locked(false)
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (cont: CheckedContinuation<CommandResult, any Error>) in
                let thread = Thread {
                    let result = Result {
                        try runBlocking(executable, arguments, timeout: timeout, environment: environment,
                                        input: input, cancelled: cancelled)
                    }
                    cont.resume(with: result)
                }
                thread.name = "hostkit-run"
                thread.start()
            }
        } onCancel: {
            cancelled.withLock { $0 = true }
        }
    }

    /// Like `run`, but throws `failed` (naming the exit status and the stderr tail) on a non-zero exit.
    @discardableResult
    public static func check(
        _ executable: String, _ arguments: [String], timeout: Duration = .seconds(30),
        environment: [String: String]? = nil
    ) async throws -> CommandResult {
        let result = try await run(executable, arguments, timeout: timeout, environment: environment)
        guard result.status == 0 else {
            let shown = describeCommand([executable] + arguments)
            var detail = tail(result.stderr)
            var label = "stderr"
            if detail.isEmpty {
                detail = tail(result.stdout)
                label = "stdout"
            }
            let suffix = detail.isEmpty ? " (no output)" : "; \(label): \(detail)"
            throw HostKitError(kind: .failed, message: "`\(shown)` exited with status \(result.status)\(suffix)")
        }
        return result
    }

    // MARK: - The blocking part, on a dedicated thread

    private struct Reader {
        var fd: Int32
        var bytes: [UInt8] = []
        var open: Bool { fd >= 0 }

        mutating func close() {
            if fd >= 0 { Glibc.close(fd) }
            fd = -1
        }

        /// Reads what is available; closes on EOF or error.
        mutating func drain(into buffer: inout [UInt8]) {
            while fd >= 0 {
                let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if n > 0 {
                    bytes.append(contentsOf: buffer[0..<n])
                    if n < buffer.count { return }
                } else if n == 0 {
                    close()
                } else if errno == EINTR {
                    continue
                } else if errno == EAGAIN || errno == EWOULDBLOCK {
                    return
                } else {
                    close()
                }
            }
        }
    }

    private static func runBlocking(
        _ executable: String, _ arguments: [String], timeout: Duration,
        environment: [String: String]?, input: String?, cancelled: Locked<Bool>
    ) throws -> CommandResult {
        Spawner.blockSIGPIPEOnThisThread()
        let shown = describeCommand([executable] + arguments)

        let outPipe = try Spawner.makePipe()
        let errPipe: (read: Int32, write: Int32)
        do { errPipe = try Spawner.makePipe() } catch {
            close(outPipe.read); close(outPipe.write)
            throw error
        }
        var inPipe: (read: Int32, write: Int32)? = nil
        if input != nil {
            do { inPipe = try Spawner.makePipe() } catch {
                close(outPipe.read); close(outPipe.write); close(errPipe.read); close(errPipe.write)
                throw error
            }
        }

        let pid: pid_t
        do {
            pid = try Spawner.spawn(
                executable: executable, arguments: arguments, environment: environment,
                stdin: inPipe.map { .fd($0.read) } ?? .devNull,
                stdout: .fd(outPipe.write), stderr: .fd(errPipe.write))
        } catch {
            close(outPipe.read); close(outPipe.write); close(errPipe.read); close(errPipe.write)
            if let inPipe { close(inPipe.read); close(inPipe.write) }
            throw error
        }
        // The child has its copies; keep only our ends.
        close(outPipe.write)
        close(errPipe.write)
        if let inPipe { close(inPipe.read) }

        var out = Reader(fd: outPipe.read)
        var err = Reader(fd: errPipe.read)
        Spawner.setNonBlocking(out.fd)
        Spawner.setNonBlocking(err.fd)
        var stdinFD: Int32 = inPipe?.write ?? -1
        let inputBytes = Array((input ?? "").utf8)
        var inputOffset = 0
        if stdinFD >= 0 {
            Spawner.setNonBlocking(stdinFD)
            if inputBytes.isEmpty { close(stdinFD); stdinFD = -1 }
        }
        defer {
            out.close()
            err.close()
            if stdinFD >= 0 { close(stdinFD) }
        }

        let clock = ContinuousClock()
        let start = clock.now
        let deadline = start + timeout
        var exitStatus: Int32? = nil
        var exitedAt: ContinuousClock.Instant? = nil
        var stopReason: HostKitError.Kind? = nil   // .timedOut, or .failed standing in for cancellation
        var termSentAt: ContinuousClock.Instant? = nil
        var killSentAt: ContinuousClock.Instant? = nil
        var pollStep: Duration = .milliseconds(1)
        var buffer = [UInt8](repeating: 0, count: 65536)

        func signalGroup(_ sig: Int32) {
            // Only while unreaped: the group id (= pid) cannot have been reused.
            if Glibc.kill(-pid, sig) != 0 { _ = Glibc.kill(pid, sig) }
        }

        while true {
            let now = clock.now

            // Reap?
            if exitStatus == nil {
                var status: Int32 = 0
                let r = waitpid(pid, &status, WNOHANG)
                if r == pid {
                    exitStatus = Spawner.decodeWaitStatus(status)
                    exitedAt = now
                } else if r == -1 && errno == ECHILD {
                    // Someone else reaped it (should not happen); treat as gone.
                    exitStatus = -1
                    exitedAt = now
                }
            }

            // Stop (timeout or cancellation) and escalate.
            if exitStatus == nil {
                if stopReason == nil {
                    if cancelled.withLock({ $0 }) {
                        stopReason = .failed
                    } else if now >= deadline {
                        stopReason = .timedOut
                    }
                    if stopReason != nil {
                        signalGroup(SIGTERM)
                        termSentAt = now
                    }
                }
                if let termSentAt, killSentAt == nil, now >= termSentAt + killGrace {
                    signalGroup(SIGKILL)
                    killSentAt = now
                }
                if let killSentAt, now >= killSentAt + .seconds(5) {
                    // Unkillable for now (D state); do not hang the caller on it.
                    Spawner.reapInBackground(pid)
                    exitStatus = -1
                    exitedAt = now
                }
            }

            // Done?
            if let exitedAt {
                if stdinFD >= 0 { close(stdinFD); stdinFD = -1 }
                if (!out.open && !err.open) || now >= exitedAt + exitGrace { break }
            }

            // Wait for I/O, or until the next thing to check.
            var wait: Duration = pollStep
            if exitStatus == nil {
                pollStep = min(pollStep * 2, .milliseconds(50))
                if stopReason == nil { wait = min(wait, max(deadline - now, .zero)) }
            } else if let exitedAt {
                wait = max(exitedAt + exitGrace - now, .zero)
            }
            var fds: [pollfd] = []
            if out.open { fds.append(pollfd(fd: out.fd, events: Int16(POLLIN), revents: 0)) }
            if err.open { fds.append(pollfd(fd: err.fd, events: Int16(POLLIN), revents: 0)) }
            if stdinFD >= 0 { fds.append(pollfd(fd: stdinFD, events: Int16(POLLOUT), revents: 0)) }
            let waitMS = Int32(min(max((wait.inSeconds * 1000).rounded(.up), 0), 1000))
            let n = fds.withUnsafeMutableBufferPointer { poll($0.baseAddress, nfds_t($0.count), waitMS) }
            if n <= 0 { continue }

            for p in fds where p.revents != 0 {
                if p.fd == out.fd {
                    out.drain(into: &buffer)
                    if !out.open { pollStep = .milliseconds(1) }   // EOF usually means the exit is imminent
                } else if p.fd == err.fd {
                    err.drain(into: &buffer)
                    if !err.open { pollStep = .milliseconds(1) }
                } else if p.fd == stdinFD {
                    if p.revents & Int16(POLLOUT) != 0 {
                        let count = min(inputBytes.count - inputOffset, 65536)
                        let w = inputBytes.withUnsafeBytes { write(stdinFD, $0.baseAddress! + inputOffset, count) }
                        if w > 0 {
                            inputOffset += w
                        } else if w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR {
                            inputOffset = inputBytes.count   // EPIPE etc.: the child does not want more
                        }
                    } else {
                        inputOffset = inputBytes.count   // POLLERR/POLLHUP: reader is gone
                    }
                    if inputOffset >= inputBytes.count { close(stdinFD); stdinFD = -1 }
                }
            }
        }

        switch stopReason {
        case .timedOut?:
            let how = killSentAt == nil ? "sent SIGTERM" : "sent SIGTERM, then SIGKILL"
            throw HostKitError(kind: .timedOut, message: "`\(shown)` timed out after \(formatSeconds(timeout)) s (\(how))")
        case .some:
            throw CancellationError()
        case nil:
            return CommandResult(
                status: exitStatus ?? -1,
                stdout: String(decoding: out.bytes, as: UTF8.self),
                stderr: String(decoding: err.bytes, as: UTF8.self))
        }
    }
}
