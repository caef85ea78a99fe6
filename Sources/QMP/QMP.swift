import Foundation

/// One QMP conversation per call: connect, read greeting, qmp_capabilities, run command(s), close.
/// QEMU's QMP socket serves one client at a time, so callers serialize per VM.
public enum QMP {
    /// Runs one QMP command and returns its "return" value; `timeout` bounds the whole conversation.
    /// Asynchronous events are skipped. A QEMU error throws `commandFailed` with its class and desc.
    public static func execute(
        socketPath: String, _ command: String, arguments: [String: JSONValue]? = nil,
        timeout: Duration = .seconds(5)
    ) async throws -> JSONValue {
        try await SocketConnection.withConnection(label: "QMP", socketPath: socketPath, timeout: timeout) { connection in
            try await connection.perform { socket in
                try negotiate(socket)
                return try run(socket, command, arguments: arguments, id: "shepherd-cmd")
            }
        }
    }

    /// Reads the greeting and leaves capabilities negotiation mode.
    static func negotiate(_ socket: SocketConnection) throws {
        var greeting = try socket.readMessage(
            activity: "waiting for the QMP greeting (is another client connected to this socket?)")
        // An event QEMU queued while the previous client was leaving can arrive first; skip it.
        for _ in 0..<16 where greeting["event"] != nil {
            greeting = try socket.readMessage(activity: "waiting for the QMP greeting after an event")
        }
        guard greeting["QMP"] != nil else {
            throw QMPError(kind: .protocolError, message: "expected the QMP greeting on \(socket.socketPath), got \(greeting.jsonString.prefix(200))")
        }
        _ = try run(socket, "qmp_capabilities", arguments: nil, id: "shepherd-caps")
    }

    /// Sends one command (with an "id" QEMU echoes back) and waits for its answer.
    static func run(
        _ socket: SocketConnection, _ command: String, arguments: [String: JSONValue]?, id: String
    ) throws -> JSONValue {
        var request: [String: JSONValue] = ["execute": .string(command), "id": .string(id)]
        if let arguments { request["arguments"] = .object(arguments) }
        try socket.sendMessage(.object(request), activity: "sending command '\(command)'")
        let activity = "waiting for the reply to command '\(command)'"
        while true {
            let message = try socket.readMessage(activity: activity)
            if message["event"] != nil { continue }
            // A reply without an id is for us too: QEMU omits it when it could not parse the request.
            if let replyID = message["id"], replyID != .string(id) { continue }
            if let result = try reply(message) { return result }
        }
    }

    /// The "return" value, or throws for an "error" reply; nil for anything else (skipped).
    static func reply(_ message: JSONValue) throws -> JSONValue? {
        if let result = message["return"] { return result }
        if let error = message["error"] {
            let errorClass = error["class"]?.stringValue ?? "UnknownError"
            let desc = error["desc"]?.stringValue ?? error.jsonString
            throw QMPError(kind: .commandFailed, message: "\(errorClass): \(desc)", errorClass: errorClass)
        }
        return nil
    }
}
