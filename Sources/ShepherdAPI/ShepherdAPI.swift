@_exported import OpenAPIRuntime
import Foundation
import HTTPTypes
import OpenAPIAsyncHTTPClient

/// Adds `Authorization: Bearer <token>` to every request.
public struct BearerMiddleware: ClientMiddleware {
    let token: @Sendable () -> String?

    public init(token: @escaping @Sendable () -> String?) { self.token = token }

    public func intercept(
        _ request: HTTPRequest, body: HTTPBody?, baseURL: URL, operationID: String,
        next: @Sendable (HTTPRequest, HTTPBody?, URL) async throws -> (HTTPResponse, HTTPBody?)
    ) async throws -> (HTTPResponse, HTTPBody?) {
        var request = request
        if let token = token() { request.headerFields[.authorization] = "Bearer \(token)" }
        return try await next(request, body, baseURL)
    }
}

extension Client {
    /// A client of the manager at `url` that presents `token`.
    public static func manager(url: String, token: String?, timeout: Duration = .seconds(60)) throws -> Client {
        guard let serverURL = URL(string: url), serverURL.scheme == "http" || serverURL.scheme == "https" else {
            throw URLError(.badURL)
        }
        let seconds = Int64(timeout.components.seconds)
        let transport = AsyncHTTPClientTransport(configuration: .init(timeout: .seconds(seconds)))
        return Client(serverURL: serverURL, transport: transport, middlewares: [BearerMiddleware { token }])
    }
}
