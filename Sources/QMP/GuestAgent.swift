import Foundation

/// qemu-guest-agent over its virtio-serial chardev socket (QEMU is the socket server).
/// Every conversation starts with guest-sync-delimited with a random id, discarding stale output
/// until the matching answer (the protocol's documented resync: read up to the 0xFF byte, then the matching {"return": id}).
public enum GuestAgent {
    /// Runs one guest-agent command and returns its "return" value; `timeout` bounds the whole conversation.
    public static func execute(
        socketPath: String, _ command: String, arguments: [String: JSONValue]? = nil,
        timeout: Duration = .seconds(5)
    ) async throws -> JSONValue {
        try await withSyncedAgent(socketPath: socketPath, timeout: timeout) { connection in
            try await connection.perform { socket in
                try run(socket, command, arguments: arguments)
            }
        }
    }

    /// true when guest-ping answers within the timeout; false on timeout/connect failure.
    public static func ping(socketPath: String, timeout: Duration = .seconds(1)) async -> Bool {
        do {
            _ = try await execute(socketPath: socketPath, "guest-ping", timeout: timeout)
            return true
        } catch {
            return false
        }
    }

    /// The outcome of a guest-exec.
    public struct ExecResult: Sendable, Equatable {
        /// The exit status; 128 + signal when the process was killed by a signal (QGA reports no status then).
        public let exitCode: Int32
        /// Captured standard output (UTF-8, invalid bytes replaced).
        public let stdout: String
        /// Captured standard error (UTF-8, invalid bytes replaced).
        public let stderr: String
        /// The signal that killed the process, if any.
        public let signal: Int32?

        /// Creates a result.
        public init(exitCode: Int32, stdout: String, stderr: String, signal: Int32?) {
            self.exitCode = exitCode
            self.stdout = stdout
            self.stderr = stderr
            self.signal = signal
        }
    }

    /// guest-exec with capture-output, then guest-exec-status polled (every ~100 ms) until exited or timeout; decodes base64 out-data/err-data.
    /// `timeout` bounds the whole call; on timeout the guest process keeps running.
    public static func exec(
        socketPath: String, path: String, arguments: [String], input: String? = nil, timeout: Duration
    ) async throws -> ExecResult {
        try await withSyncedAgent(socketPath: socketPath, timeout: timeout) { connection in
            var execArguments: [String: JSONValue] = [
                "path": .string(path),
                "arg": .array(arguments.map { .string($0) }),
                "capture-output": true,
            ]
            if let input {
                execArguments["input-data"] = .string(Data(input.utf8).base64EncodedString())
            }
            let request = execArguments
            let started = try await connection.perform { socket in
                try run(socket, "guest-exec", arguments: request)
            }
            guard let pid = started["pid"]?.intValue else {
                throw QMPError(kind: .protocolError, message: "guest-exec of \(path) returned no pid: \(started.jsonString.prefix(200))")
            }
            let stillRunning = QMPError(
                kind: .timeout,
                message: "guest agent timed out after \(SocketConnection.format(timeout)) waiting for guest-exec of \(path) (guest pid \(pid)) to finish; it may still be running (socket \(socketPath))")
            while true {
                let status: JSONValue
                do {
                    status = try await connection.perform { socket in
                        try run(socket, "guest-exec-status", arguments: ["pid": .number(Double(pid))])
                    }
                } catch let error as QMPError where error.kind == .timeout {
                    throw stillRunning
                }
                if status["exited"]?.boolValue == true {
                    return try result(from: status, path: path)
                }
                // Poll every 100 ms; keep the last poll ~50 ms before the deadline so it can still answer.
                let left = Int(connection.remainingMilliseconds())
                if left <= 60 { throw stillRunning }
                try await Task.sleep(for: .milliseconds(min(100, left - 50)))
            }
        }
    }

    /// guest-shutdown mode "powerdown" | "reboot" | "halt". The guest may never answer (it goes down): treat a closed socket or a timeout after the command was sent as success.
    public static func shutdown(socketPath: String, mode: String, timeout: Duration = .seconds(3)) async throws {
        guard ["powerdown", "reboot", "halt"].contains(mode) else {
            throw QMPError(
                kind: .commandFailed,
                message: "InvalidParameter: guest-shutdown mode must be powerdown, reboot or halt, not '\(mode)'",
                errorClass: "InvalidParameter")
        }
        try await withSyncedAgent(socketPath: socketPath, timeout: timeout) { connection in
            try await connection.perform { socket in
                try socket.sendMessage(
                    ["execute": "guest-shutdown", "arguments": ["mode": .string(mode)]],
                    activity: "sending command 'guest-shutdown'")
                do {
                    // Success normally means no answer at all; only an error reply is a failure.
                    while true {
                        let message = try socket.readMessage(activity: "waiting after command 'guest-shutdown'")
                        if try QMP.reply(message) != nil { return }
                    }
                } catch let error as QMPError where error.kind == .timeout || error.kind == .closed {
                    return
                }
            }
        }
    }

    // MARK: - Internals

    /// Connects, resynchronizes with guest-sync-delimited, then runs `body` on the same connection.
    static func withSyncedAgent<T: Sendable>(
        socketPath: String, timeout: Duration, _ body: (SocketConnection) async throws -> T
    ) async throws -> T {
        try await SocketConnection.withConnection(label: "guest agent", socketPath: socketPath, timeout: timeout) { connection in
            try await connection.perform { socket in try sync(socket) }
            return try await body(connection)
        }
    }

    /// Sends 0xFF (flushes the agent's parser of any partial input from an earlier client) and
    /// guest-sync-delimited, then discards everything until 0xFF followed by {"return": id}.
    static func sync(_ socket: SocketConnection) throws {
        let id = Int.random(in: 1...Int(Int32.max))
        try socket.sendMessage(
            ["execute": "guest-sync-delimited", "arguments": ["id": .number(Double(id))]],
            prefix: [0xFF], activity: "sending command 'guest-sync-delimited'")
        let activity = "waiting for the reply to command 'guest-sync-delimited' (is the guest agent running in the guest?)"
        while true {
            try socket.skip(through: 0xFF, activity: activity)
            let line = try socket.readLine(activity: activity)
            // Stale or garbled output before our sentinel is expected; ignore anything that doesn't match.
            guard let message = try? SocketConnection.decode(line, label: socket.label) else { continue }
            if message["return"]?.intValue == id { return }
        }
    }

    /// Sends one command and returns its "return" value (the agent emits no events).
    static func run(_ socket: SocketConnection, _ command: String, arguments: [String: JSONValue]?) throws -> JSONValue {
        var request: [String: JSONValue] = ["execute": .string(command)]
        if let arguments { request["arguments"] = .object(arguments) }
        try socket.sendMessage(.object(request), activity: "sending command '\(command)'")
        let activity = "waiting for the reply to command '\(command)'"
        while true {
            let message = try socket.readMessage(activity: activity)
            if let result = try QMP.reply(message) { return result }
        }
    }

    static func result(from status: JSONValue, path: String) throws -> ExecResult {
        func text(_ key: String) throws -> String {
            guard let encoded = status[key]?.stringValue else { return "" }
            guard let data = Data(base64Encoded: encoded, options: .ignoreUnknownCharacters) else {
                throw QMPError(kind: .protocolError, message: "guest-exec-status for \(path): \(key) is not valid base64")
            }
            return String(decoding: data, as: UTF8.self)
        }
        let signal = status["signal"]?.intValue.map { Int32(clamping: $0) }
        let exitCode: Int32
        if let code = status["exitcode"]?.intValue {
            exitCode = Int32(clamping: code)
        } else if let signal {
            exitCode = 128 + signal
        } else {
            exitCode = -1
        }
        return ExecResult(exitCode: exitCode, stdout: try text("out-data"), stderr: try text("err-data"), signal: signal)
    }
}
