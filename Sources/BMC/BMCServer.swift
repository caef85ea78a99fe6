import Foundation
import Hummingbird
import Logging
import Redfish

/// The user and password a BMC accepts (HTTP Basic). The password is never printed.
public struct BMCCredentials: Sendable, CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    public let user: String
    private let password: String

    public init(user: String, password: String) {
        self.user = user
        self.password = password
    }

    /// The password is the file's content without trailing line breaks; an empty one is refused.
    public static func load(user: String, passwordFile: String) throws -> BMCCredentials {
        guard let data = FileManager.default.contents(atPath: passwordFile) else {
            throw BMCError(.failed, "cannot read the password file \(passwordFile)")
        }
        var password = String(decoding: data, as: UTF8.self)
        while password.hasSuffix("\n") || password.hasSuffix("\r") { password.removeLast() }
        guard !password.isEmpty else { throw BMCError(.failed, "the password file \(passwordFile) is empty") }
        guard !user.isEmpty, !user.contains(":") else { throw BMCError(.failed, "the user name must be non-empty and without ':'") }
        return BMCCredentials(user: user, password: password)
    }

    /// Whether an `Authorization: Basic …` header value names this user and password (compared in
    /// constant time for given lengths).
    func accepts(authorization header: String?) -> Bool {
        guard let header, header.count > 6, header.prefix(6).lowercased() == "basic " else { return false }
        let encoded = header.dropFirst(6).trimmingCharacters(in: .whitespaces)
        guard let decoded = Data(base64Encoded: encoded) else { return false }
        let pair = Array(decoded)
        guard let colon = pair.firstIndex(of: UInt8(ascii: ":")) else { return false }
        let userOK = Self.constantTimeEqual(Array(pair[..<colon]), Array(user.utf8))
        let passwordOK = Self.constantTimeEqual(Array(pair[(colon + 1)...]), Array(password.utf8))
        return userOK && passwordOK  // both were computed in full
    }

    static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        // Runs over the longer of the two, so the time does not tell where they differ.
        var difference: UInt8 = a.count == b.count ? 0 : 1
        for i in 0..<max(a.count, b.count) {
            difference |= (i < a.count ? a[i] : 0) ^ (i < b.count ? b[i] : 0)
        }
        return difference == 0
    }

    public var description: String { "user \(user), password <redacted>" }
    public var debugDescription: String { description }
    public var customMirror: Mirror { Mirror(self, children: ["user": user, "password": "<redacted>"]) }
}

extension BMCEmulator {
    /// Redfish paths of this BMC.
    public nonisolated var systemsPath: String { "/redfish/v1/Systems" }
    public nonisolated var systemPath: String { "/redfish/v1/Systems/\(name)" }
    public nonisolated var resetPath: String { systemPath + "/Actions/ComputerSystem.Reset" }

    /// Serves Redfish over HTTP on `host:port` (port 0: any free port) until the calling task is
    /// cancelled or, with `stopOnSignals`, until SIGTERM or SIGINT (then it returns normally, having
    /// stopped gracefully). `onListening` gets the bound port once the server accepts connections.
    /// Serving does not touch the machine: power it with `start(poweredOn:)`, and end the agent
    /// with `shutdownAgent()` when the BMC goes away.
    ///
    /// Routes: GET /redfish/v1/ (service root, no authentication, as on real BMCs), GET
    /// /redfish/v1/Systems, GET /redfish/v1/Systems/<name>, POST
    /// /redfish/v1/Systems/<name>/Actions/ComputerSystem.Reset `{"ResetType": …}` → 204 once the
    /// power change is done. Everything but the service root needs HTTP Basic authentication.
    public nonisolated func serve(host: String, port: Int, credentials: BMCCredentials, stopOnSignals: Bool = false,
                                  logger: Logger? = nil, onListening: @escaping @Sendable (Int) async -> Void = { _ in }) async throws {
        let logger = logger ?? Logger(label: "shepherd.bmc.\(name)")
        let router = Router()
        router.middlewares.add(RedfishBasicAuth(credentials: credentials, logger: logger))
        RedfishRoutes(emulator: self, logger: logger).register(on: router)
        let app = Application(
            router: router, configuration: .init(address: .hostname(host, port: port), serverName: "shepherd-bmc"),
            onServerRunning: { channel in await onListening(channel.localAddress?.port ?? port) },
            logger: logger)
        if stopOnSignals {
            try await app.runService()
        } else {
            try await app.run()
        }
    }
}

/// 401 with a Basic challenge for every request but GET of the service root.
struct RedfishBasicAuth<Context: RequestContext>: RouterMiddleware {
    let credentials: BMCCredentials
    let logger: Logger

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let path = request.uri.path
        if request.method == .get && (path == "/redfish/v1" || path == "/redfish/v1/") {
            return try await next(request, context)
        }
        guard credentials.accepts(authorization: request.headers[.authorization]) else {
            logger.notice("refused \(request.method) \(path): \(request.headers[.authorization] == nil ? "no" : "wrong") credentials")
            var response = RedfishJSON.error(.unauthorized, code: "Base.1.8.InsufficientPrivilege",
                                             message: "HTTP Basic authentication with this BMC's user and password is required")
            response.headers[.wwwAuthenticate] = #"Basic realm="shepherd-bmc""#
            return response
        }
        return try await next(request, context)
    }
}

struct RedfishRoutes: Sendable {
    let emulator: BMCEmulator
    let logger: Logger

    func register(on router: Router<BasicRequestContext>) {
        let emulator = self.emulator
        let logger = self.logger
        router.get("/redfish/v1") { _, _ in
            RedfishJSON.response(RedfishWire.ServiceRoot(systems: .init(emulator.systemsPath), name: "Shepherd BMC of \(emulator.name)"))
        }
        router.get("/redfish/v1/Systems") { _, _ in
            RedfishJSON.response(RedfishWire.Collection(odataID: emulator.systemsPath, name: "Computer System Collection",
                                                        members: [.init(emulator.systemPath)]))
        }
        router.get("/redfish/v1/Systems/:id") { _, context in
            guard let id = context.parameters.get("id"), id == emulator.name else { return Self.unknownSystem(context) }
            let system = RedfishWire.ComputerSystem(
                odataID: emulator.systemPath, id: emulator.name, name: emulator.name, powerState: await emulator.powerState,
                actions: .init(reset: .init(target: emulator.resetPath, allowableValues: BMCEmulator.supportedResetTypes)))
            return RedfishJSON.response(system)
        }
        router.post("/redfish/v1/Systems/:id/Actions/ComputerSystem.Reset") { request, context in
            guard let id = context.parameters.get("id"), id == emulator.name else { return Self.unknownSystem(context) }
            let body: ByteBuffer
            do {
                body = try await request.body.collect(upTo: 64 * 1024)
            } catch {
                return RedfishJSON.error(.badRequest, code: "Base.1.8.MalformedJSON", message: "the request body is too large")
            }
            let bytes = body.getBytes(at: body.readerIndex, length: body.readableBytes) ?? []
            guard let parsed = try? JSONDecoder().decode(ResetBody.self, from: Data(bytes)) else {
                return RedfishJSON.error(.badRequest, code: "Base.1.8.MalformedJSON",
                                         message: #"the body must be a JSON object such as {"ResetType": "ForceOff"}"#)
            }
            guard let name = parsed.resetType else {
                return RedfishJSON.error(.badRequest, code: "Base.1.8.ActionParameterMissing",
                                         message: "the action ComputerSystem.Reset requires the parameter ResetType")
            }
            let allowed = BMCEmulator.supportedResetTypes.map(\.rawValue).joined(separator: ", ")
            guard let type = RedfishWire.ResetType(rawValue: name) else {
                return RedfishJSON.error(.badRequest, code: "Base.1.8.ActionParameterValueNotInList",
                                         message: "ResetType '\(name)' is not one of \(allowed)")
            }
            logger.info("Redfish reset of \(emulator.name) requested: \(type.rawValue)")
            do {
                try await emulator.reset(type)
            } catch let error as BMCError {
                switch error.kind {
                case .unsupported:
                    return RedfishJSON.error(.badRequest, code: "Base.1.8.ActionParameterNotSupported",
                                             message: "\(error.message); supported: \(allowed)")
                case .failed:
                    return RedfishJSON.error(.internalServerError, code: "Base.1.8.InternalError", message: error.message)
                }
            }
            return Response(status: .noContent)
        }
    }

    private struct ResetBody: Decodable {
        var resetType: String?
        enum CodingKeys: String, CodingKey { case resetType = "ResetType" }
    }

    static func unknownSystem(_ context: BasicRequestContext) -> Response {
        RedfishJSON.error(.notFound, code: "Base.1.8.ResourceMissingAtURI",
                          message: "there is no system '\(context.parameters.get("id") ?? "")' on this BMC")
    }
}

enum RedfishJSON {
    static func response(_ value: some Encodable, status: HTTPResponse.Status = .ok) -> Response {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let data = (try? encoder.encode(value)) ?? Data("{}".utf8)
        var headers = HTTPFields()
        headers[.contentType] = "application/json; charset=utf-8"
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: Array(data))))
    }

    static func error(_ status: HTTPResponse.Status, code: String, message: String) -> Response {
        response(RedfishWire.ErrorBody(code: code, message: message), status: status)
    }
}
