/// The one error of Shepherd's domain: a stable code, a message naming the field or rule and
/// the numbers behind it, and what caused it. Transports map it at their edge.
public struct ShepherdError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Stable, machine-readable codes; the API documents them as strings.
    public enum Code: String, Sendable, Codable, CaseIterable {
        case invalidField = "invalid_field"
        case invalidBody = "invalid_body"
        case notFound = "not_found"
        case alreadyExists = "already_exists"
        case illegalState = "illegal_state"
        case preflightFailed = "preflight_failed"
        case insufficientResources = "insufficient_resources"
        case toolsNotRunning = "tools_not_running"
        case hostNotConnected = "host_not_connected"
        case unauthorized = "unauthorized"
        case forbidden = "forbidden"
        case agentUnreachable = "agent_unreachable"
        case agentFailed = "agent_failed"
        /// Another QEMU holds the disk image's write lock: the VM still runs somewhere.
        case diskLocked = "disk_locked"
        /// A host's BMC did not answer, refused the credentials, or failed the request.
        case bmcUnreachable = "bmc_unreachable"
        case bmcFailed = "bmc_failed"
        case timedOut = "timed_out"
        case interrupted = "interrupted"
        case cancelled = "cancelled"
        case `internal` = "internal"

        /// The HTTP status a server answers with for this code.
        public var httpStatus: Int {
            switch self {
            case .invalidField, .invalidBody: 400
            case .unauthorized: 401
            case .forbidden: 403
            case .notFound: 404
            case .alreadyExists, .illegalState, .toolsNotRunning, .hostNotConnected, .preflightFailed, .cancelled, .diskLocked: 409
            case .insufficientResources: 422
            case .agentUnreachable, .agentFailed, .timedOut, .bmcUnreachable, .bmcFailed: 502
            case .interrupted, .internal: 500
            }
        }
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code.rawValue): \(message)" }

    /// A field failed validation; the message must name the field and the rule.
    public static func invalidField(_ field: String, _ rule: String) -> ShepherdError {
        ShepherdError(.invalidField, "\(field): \(rule)")
    }

    public static func notFound(_ kind: String, _ reference: String) -> ShepherdError {
        ShepherdError(.notFound, "\(kind) '\(reference)' does not exist")
    }
}

/// The JSON body of every error answer: `{"code","message"}`.
public struct ErrorBody: Codable, Sendable, Equatable {
    public let code: String
    public let message: String
    public init(code: String, message: String) {
        self.code = code
        self.message = message
    }
    public init(_ error: ShepherdError) {
        self.init(code: error.code.rawValue, message: error.message)
    }
}
