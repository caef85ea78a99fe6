import Foundation

/// A failure talking to a QMP or guest-agent socket.
public struct QMPError: Error, Sendable, CustomStringConvertible, LocalizedError {
    /// What went wrong.
    public enum Kind: Sendable, Hashable {
        /// The socket could not be opened (bad or too long path, nothing listening, permission).
        case connect
        /// No answer before the call's deadline; the message names the command and the seconds.
        case timeout
        /// The peer sent something that is not the expected protocol.
        case protocolError
        /// QEMU or the guest agent answered with an error; `errorClass` holds its class.
        case commandFailed
        /// The peer closed the connection (or a write failed) before the answer arrived.
        case closed
    }

    /// What went wrong.
    public let kind: Kind
    /// Human-readable detail; for `commandFailed` it is "<class>: <desc>" as QEMU reported it.
    public let message: String
    /// For `commandFailed`: QEMU's error class, e.g. "CommandNotFound" or "GenericError".
    public let errorClass: String?

    /// Creates an error.
    public init(kind: Kind, message: String, errorClass: String? = nil) {
        self.kind = kind
        self.message = message
        self.errorClass = errorClass
    }

    /// "<kind>: <message>".
    public var description: String {
        let label: String
        switch kind {
        case .connect: label = "connect failed"
        case .timeout: label = "timeout"
        case .protocolError: label = "protocol error"
        case .commandFailed: label = "command failed"
        case .closed: label = "connection closed"
        }
        return "\(label): \(message)"
    }

    /// Same as `description`.
    public var errorDescription: String? { description }
}
