import AsyncHTTPClient
import Foundation
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
// Only for the per-request TLS configuration of `insecure` (AsyncHTTPClient's own dependency).
import NIOSSL
import ShepherdCore

/// A Redfish client for one host's BMC: reads a ComputerSystem's power state and resets it.
///
/// Every call sends HTTP Basic credentials and has its own timeout. Failures are `ShepherdError`s
/// naming the BMC: `bmc_unreachable` (no answer in time), `bmc_failed` (refused credentials, an
/// error status, an unreadable body) or `timed_out` (a power change not confirmed in time).
/// The password never appears in an error, a description or a dump: it would end up in logs and
/// API answers.
public struct RedfishClient: Sendable {
    public let address: Address
    public let user: String
    /// Per HTTP call (connect, request and body together).
    public let timeout: Duration
    /// Skip TLS certificate verification: BMCs ship self-signed certificates more often than not.
    public let insecure: Bool
    private let password: Secret
    private let authorization: Secret
    private let http: HTTPClient
    /// Set per request rather than on the `HTTPClient`, so one shared client serves verified and
    /// unverified BMCs alike (AsyncHTTPClient keeps separate connection pools per TLS configuration).
    private let tls: TLSConfiguration?

    /// `address` is parsed as described at `Address`; a bad one throws `invalid_field` naming "bmc".
    public init(
        address: String, user: String, password: String, http: HTTPClient = .shared,
        timeout: Duration = .seconds(10), insecure: Bool = false
    ) throws {
        self.init(address: try Address(parsing: address), user: user, password: password, http: http, timeout: timeout, insecure: insecure)
    }

    public init(
        address: Address, user: String, password: String, http: HTTPClient = .shared,
        timeout: Duration = .seconds(10), insecure: Bool = false
    ) {
        self.address = address
        self.user = user
        self.password = Secret(password)
        self.authorization = Secret("Basic " + Data("\(user):\(password)".utf8).base64EncodedString())
        self.http = http
        self.timeout = timeout
        self.insecure = insecure
        if insecure && address.scheme == .https {
            var tls = TLSConfiguration.makeClientConfiguration()
            tls.certificateVerification = .none
            self.tls = tls
        } else {
            self.tls = nil
        }
    }

    // MARK: - Reading

    /// The selected ComputerSystem, read afresh: service root → Systems collection → member.
    /// Nothing is cached, since a BMC may renumber its systems (e.g. after a firmware update).
    public func system() async throws -> RedfishWire.ComputerSystem {
        let root: Root = try await get(RedfishWire.serviceRoot, "service root")
        guard let systemsPath = root.systems?.id else {
            throw fail(.bmcFailed, "the BMC at \(address) lists no Systems collection in its service root")
        }
        let collection: Members = try await get(try ownPath(systemsPath), "Systems collection")
        let members = collection.members.map(\.id)
        let chosen: String
        if let wanted = address.systemID {
            guard let match = members.first(where: { Self.lastSegment($0) == wanted }) else {
                let known = members.map(Self.lastSegment).joined(separator: ", ")
                throw fail(.bmcFailed, "the BMC at \(address) has no system '\(wanted)'; it has: \(known.isEmpty ? "none" : known)")
            }
            chosen = match
        } else {
            guard let first = members.first else {
                throw fail(.bmcFailed, "the BMC at \(address) lists no systems in \(systemsPath)")
            }
            chosen = first
        }
        return try await get(try ownPath(chosen), "ComputerSystem")
    }

    public func powerState() async throws -> RedfishWire.PowerState {
        try Self.state(of: try await system(), at: address)
    }

    // MARK: - Power

    /// POSTs `type` to the system's `#ComputerSystem.Reset` target. Refuses, naming the allowed
    /// ones, a type the BMC does not list among its allowable values (when it lists any).
    public func reset(_ type: RedfishWire.ResetType) async throws {
        try await reset(type, of: try await system())
    }

    /// Resets with `type` (ForceOff unless told otherwise) and polls until the BMC reports Off.
    /// Returns whether a reset was sent: none is when the system already is off.
    @discardableResult
    public func powerOff(
        with type: RedfishWire.ResetType = .forceOff, confirmWithin: Duration = .seconds(60),
        pollEvery: Duration = .milliseconds(500)
    ) async throws -> Bool {
        try await power(.off, with: type, confirmWithin: confirmWithin, pollEvery: pollEvery)
    }

    /// Resets with `type` (On unless told otherwise) and polls until the BMC reports On.
    /// Returns whether a reset was sent: none is when the system already is on.
    @discardableResult
    public func powerOn(
        with type: RedfishWire.ResetType = .on, confirmWithin: Duration = .seconds(60),
        pollEvery: Duration = .milliseconds(500)
    ) async throws -> Bool {
        try await power(.on, with: type, confirmWithin: confirmWithin, pollEvery: pollEvery)
    }

    private func power(
        _ wanted: RedfishWire.PowerState, with type: RedfishWire.ResetType, confirmWithin: Duration, pollEvery: Duration
    ) async throws -> Bool {
        let system = try await system()
        if system.powerState == wanted { return false }
        try await reset(type, of: system)
        let deadline = ContinuousClock.now + confirmWithin
        var lastSeen = system.powerState.map(\.rawValue) ?? "unknown"
        while true {
            do {
                let state = try await powerState()
                if state == wanted { return true }
                lastSeen = state.rawValue
            } catch let error as ShepherdError where error.code == .bmcUnreachable {
                // BMCs are known to stall while they switch power; keep asking until the deadline.
                lastSeen = "no answer (\(error.message))"
            }
            let now = ContinuousClock.now
            guard now < deadline else {
                throw fail(.timedOut, "the BMC at \(address) did not report system \(system.id) \(wanted.rawValue) within \(Self.seconds(confirmWithin)) s after \(type.rawValue); last seen: \(lastSeen)")
            }
            // The last sleep ends at the deadline, so the final reading is taken there.
            do { try await Task.sleep(for: min(pollEvery, deadline - now)) } catch {
                throw fail(.cancelled, "waiting for system \(system.id) at \(address) to be \(wanted.rawValue) was cancelled")
            }
        }
    }

    private func reset(_ type: RedfishWire.ResetType, of system: RedfishWire.ComputerSystem) async throws {
        guard let action = system.actions?.reset else {
            throw fail(.bmcFailed, "the BMC at \(address) offers no #ComputerSystem.Reset action for system \(system.id)")
        }
        if let allowed = action.allowableValues, !allowed.contains(type) {
            let names = allowed.map(\.rawValue).joined(separator: ", ")
            throw fail(.bmcFailed, "the BMC at \(address) does not allow reset type \(type.rawValue) for system \(system.id); it allows: \(names.isEmpty ? "none Shepherd knows" : names)")
        }
        let body = try JSONEncoder().encode(RedfishWire.ResetRequest(type))
        _ = try await send(.POST, try ownPath(action.target), body: body)
    }

    // MARK: - HTTP

    /// Only what the client follows from the service root and a collection; decoded leniently
    /// because real BMCs leave out fields the schema marks as required.
    private struct Root: Decodable {
        var systems: RedfishWire.Link?
        enum CodingKeys: String, CodingKey { case systems = "Systems" }
    }

    private struct Members: Decodable {
        var members: [RedfishWire.Link]
        enum CodingKeys: String, CodingKey { case members = "Members" }
    }

    private func get<Answer: Decodable>(_ path: String, _ what: String) async throws -> Answer {
        let data = try await send(.GET, path, body: nil)
        do {
            return try JSONDecoder().decode(Answer.self, from: data)
        } catch {
            throw fail(.bmcFailed, "the BMC at \(address) answered GET \(path) with a body that is not a Redfish \(what): \(error)")
        }
    }

    /// One call with Basic credentials; maps failures to ShepherdErrors naming the BMC and the call.
    private func send(_ method: HTTPMethod, _ path: String, body: Data?) async throws -> Data {
        var request = HTTPClientRequest(url: address.baseURL + path)
        request.method = method
        request.tlsConfiguration = tls
        request.headers.add(name: "Authorization", value: authorization.value)
        request.headers.add(name: "Accept", value: "application/json")
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(data: body))
        }
        let response: HTTPClientResponse
        let bytes: ByteBuffer
        do {
            response = try await http.execute(request, deadline: .now() + .nanoseconds(Self.nanoseconds(timeout)))
            bytes = try await response.body.collect(upTo: 4 << 20)
        } catch is NIOTooManyBytesError {
            throw fail(.bmcFailed, "the BMC at \(address) answered \(method) \(path) with more than 4 MiB")
        } catch {
            if Task.isCancelled { throw fail(.cancelled, "\(method) \(path) to the BMC at \(address) was cancelled") }
            if error is NIOSSLError {
                // The BMC did answer, so "did not answer" would mislead; the usual cause is a self-signed certificate.
                let hint = insecure ? "" : "; BMCs often have self-signed certificates: configure the BMC as insecure to skip verification"
                throw fail(.bmcUnreachable, "the TLS handshake with the BMC at \(address) failed for \(method) \(path) (retried for \(Self.seconds(timeout)) s): \(error)\(hint)")
            }
            throw fail(.bmcUnreachable, "the BMC at \(address) did not answer \(method) \(path) within \(Self.seconds(timeout)) s: \(error)")
        }
        let data = Data(buffer: bytes)
        let status = Int(response.status.code)
        if status == 401 || status == 403 {
            throw fail(.bmcFailed, "the BMC at \(address) refused the credentials for user '\(user)' (HTTP \(status) to \(method) \(path))")
        }
        guard (200..<300).contains(status) else {
            var detail = ""
            if let body = try? JSONDecoder().decode(RedfishWire.ErrorBody.self, from: data), let message = body.error.message {
                detail = ": \(message)"
            }
            throw fail(.bmcFailed, "the BMC at \(address) answered HTTP \(status) to \(method) \(path)\(detail)")
        }
        return data
    }

    /// A link the BMC handed out, as a path on this BMC. Absolute URLs elsewhere are refused:
    /// following them would send our credentials to another host.
    private func ownPath(_ link: String) throws -> String {
        if link.hasPrefix("/") { return link }
        if let components = URLComponents(string: link), let host = components.host,
           host.trimmingCharacters(in: CharacterSet(charactersIn: "[]")).lowercased() == address.host.lowercased(),
           components.port == address.port {
            let path = components.percentEncodedPath.isEmpty ? "/" : components.percentEncodedPath
            return path + (components.percentEncodedQuery.map { "?" + $0 } ?? "")
        }
        throw fail(.bmcFailed, "the BMC at \(address) links to '\(link)', which is not on that BMC")
    }

    /// Every error leaves through here: whatever a BMC or a library put into the text, the
    /// password is cut out before it can reach a log or an API answer. A password short enough to
    /// occur in ordinary words garbles the message; that is the price of the guarantee.
    private func fail(_ code: ShepherdError.Code, _ message: String) -> ShepherdError {
        ShepherdError(code, password.redact(in: message))
    }

    static func state(of system: RedfishWire.ComputerSystem, at address: Address) throws -> RedfishWire.PowerState {
        guard let state = system.powerState else {
            throw ShepherdError(.bmcFailed, "the BMC at \(address) does not report a PowerState for system \(system.id)")
        }
        return state
    }

    static func lastSegment(_ path: String) -> String {
        let segment = path.split(separator: "/").last.map(String.init) ?? path
        return segment.removingPercentEncoding ?? segment
    }

    static func nanoseconds(_ duration: Duration) -> Int64 {
        let (seconds, attoseconds) = duration.components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }

    /// "10" for 10 s, "0.5" for 500 ms.
    static func seconds(_ duration: Duration) -> String {
        let milliseconds = nanoseconds(duration) / 1_000_000
        if milliseconds % 1000 == 0 { return String(milliseconds / 1000) }
        return String(format: "%.3g", Double(milliseconds) / 1000)
    }
}

// MARK: - Keeping the password out of text

/// Redacted: the client ends up in log lines and error contexts via string interpolation,
/// `String(reflecting:)` and `dump`; none of them may show the password.
extension RedfishClient: CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    public var description: String {
        "RedfishClient(bmc: \(address), user: \(user), password: <redacted>, timeout: \(Self.seconds(timeout)) s, insecure: \(insecure))"
    }

    public var debugDescription: String { description }

    public var customMirror: Mirror {
        Mirror(self, children: [
            "address": address, "user": user, "password": "<redacted>", "timeout": timeout, "insecure": insecure,
        ], displayStyle: .struct)
    }
}

/// A credential that prints as `<redacted>` however it is printed.
private struct Secret: Sendable, CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    let value: String
    init(_ value: String) { self.value = value }
    var description: String { "<redacted>" }
    var debugDescription: String { "<redacted>" }
    var customMirror: Mirror { Mirror(self, children: [], displayStyle: .struct) }

    /// Replaces every occurrence of the secret (and its percent-encoded form) in `text`.
    func redact(in text: String) -> String {
        guard !value.isEmpty else { return text }
        var result = text.replacingOccurrences(of: value, with: "<redacted>")
        if let encoded = value.addingPercentEncoding(withAllowedCharacters: .urlUserAllowed), encoded != value {
            result = result.replacingOccurrences(of: encoded, with: "<redacted>")
        }
        return result
    }
}

// MARK: - Address

extension RedfishClient {
    /// Where a BMC is, as configured on a host:
    ///
    /// - `redfish://HOST[:PORT]` and `https://HOST[:PORT]`: Redfish over HTTPS (the norm);
    /// - `redfish+http://HOST[:PORT]` and `http://HOST[:PORT]`: plain HTTP (emulators, labs);
    /// - then optionally `/ID`, `/redfish/v1/Systems/ID` or `?system=ID`, selecting the system with
    ///   that id; without one, the first member of the BMC's Systems collection.
    ///
    /// HOST is a name, an IPv4 address or a bracketed IPv6 address. Credentials in the address
    /// (`user:password@`) are refused: addresses are shown in errors and listings.
    public struct Address: Sendable, Equatable, CustomStringConvertible {
        public enum Scheme: String, Sendable { case http, https }

        public var scheme: Scheme
        /// Without brackets for IPv6.
        public var host: String
        public var port: Int?
        public var systemID: String?

        public init(scheme: Scheme, host: String, port: Int? = nil, systemID: String? = nil) {
            self.scheme = scheme; self.host = host; self.port = port; self.systemID = systemID
        }

        /// `https://HOST[:PORT]`, what requests go to.
        public var baseURL: String {
            let shownHost = host.contains(":") ? "[\(host)]" : host
            return "\(scheme.rawValue)://\(shownHost)\(port.map { ":\($0)" } ?? "")"
        }

        public var description: String { baseURL }

        public init(parsing input: String) throws {
            let text = input.trimmingCharacters(in: .whitespaces)
            let schemes: [String: Scheme] = ["redfish": .https, "https": .https, "redfish+http": .http, "http": .http]
            guard let separator = text.range(of: "://") else {
                throw Self.invalid(text, "must start with redfish://, redfish+http://, https:// or http://, e.g. redfish://10.0.0.5")
            }
            guard let scheme = schemes[text[..<separator.lowerBound].lowercased()] else {
                throw Self.invalid(text, "has scheme '\(text[..<separator.lowerBound])'; use redfish://, redfish+http://, https:// or http://")
            }
            let rest = text[separator.upperBound...]
            let authorityEnd = rest.firstIndex(where: { "/?#".contains($0) }) ?? rest.endIndex
            let authority = rest[..<authorityEnd]
            var remainder = rest[authorityEnd...]
            guard !authority.contains("@") else {
                throw Self.invalid(text, "must not carry credentials; give the BMC user and password separately")
            }
            guard !remainder.contains("#") else { throw Self.invalid(text, "must not have a fragment (#…)") }

            // Host and port.
            let host: String
            var portText: Substring?
            if authority.hasPrefix("[") {
                guard let close = authority.firstIndex(of: "]") else { throw Self.invalid(text, "has an unclosed '[' in its host") }
                host = String(authority[authority.index(after: authority.startIndex)..<close])
                let after = authority[authority.index(after: close)...]
                if !after.isEmpty {
                    guard after.hasPrefix(":") else { throw Self.invalid(text, "has '\(after)' after its IPv6 host") }
                    portText = after.dropFirst()
                }
                guard !host.isEmpty, host.contains(":"), host.allSatisfy({ $0.isHexDigit || $0 == ":" || $0 == "." }) else {
                    throw Self.invalid(text, "has '\(host)' in brackets, which is not an IPv6 address")
                }
            } else {
                let parts = authority.split(separator: ":", omittingEmptySubsequences: false)
                guard parts.count <= 2 else { throw Self.invalid(text, "has more than one ':' in its host; put an IPv6 address in brackets") }
                host = String(parts[0])
                if parts.count == 2 { portText = parts[1] }
                guard !host.isEmpty else { throw Self.invalid(text, "has no host") }
                guard host.allSatisfy({ ($0.isASCII && ($0.isLetter || $0.isNumber)) || $0 == "-" || $0 == "." || $0 == "_" }) else {
                    throw Self.invalid(text, "has host '\(host)', which is not a host name or IP address")
                }
            }
            var port: Int?
            if let portText {
                guard portText.allSatisfy({ $0.isASCII && $0.isNumber }), let number = Int(portText), (1...65535).contains(number) else {
                    throw Self.invalid(text, "has port '\(portText)'; a port is 1–65535")
                }
                port = number
            }

            // System id: from the path, the query, or both when they agree.
            var query: Substring?
            if let mark = remainder.firstIndex(of: "?") {
                query = remainder[remainder.index(after: mark)...]
                remainder = remainder[..<mark]
            }
            let segments = remainder.split(separator: "/").map { String($0).removingPercentEncoding ?? String($0) }
            var fromPath: String?
            switch segments.count {
            case 0: break
            case 1: fromPath = segments[0]
            case 4 where segments[0] == "redfish" && segments[1] == "v1" && segments[2] == "Systems": fromPath = segments[3]
            default: throw Self.invalid(text, "has path '\(remainder)'; a path names a system: /ID or /redfish/v1/Systems/ID")
            }
            var fromQuery: String?
            for pair in (query ?? "").split(separator: "&") {
                let keyValue = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                guard keyValue.count == 2, keyValue[0] == "system" else {
                    throw Self.invalid(text, "has query '\(pair)'; the only one known is system=ID")
                }
                let value = String(keyValue[1]).removingPercentEncoding ?? String(keyValue[1])
                guard !value.isEmpty else { throw Self.invalid(text, "has an empty system=") }
                guard fromQuery == nil || fromQuery == value else { throw Self.invalid(text, "names two different systems") }
                fromQuery = value
            }
            if let fromPath, let fromQuery, fromPath != fromQuery {
                throw Self.invalid(text, "names system '\(fromPath)' in its path and '\(fromQuery)' in its query")
            }
            self.init(scheme: scheme, host: host, port: port, systemID: fromPath ?? fromQuery)
        }

        /// Rejected addresses are quoted without anything before an '@', which could be a password.
        private static func invalid(_ text: String, _ rule: String) -> ShepherdError {
            var shown = text
            if let at = text.lastIndex(of: "@") {
                let start = text.range(of: "://")?.upperBound ?? text.startIndex
                shown = start < at ? String(text[..<start]) + "…" + String(text[at...]) : "…" + String(text[at...])
            }
            return .invalidField("bmc", "'\(shown)' \(rule)")
        }
    }
}
