import Foundation
import Hummingbird
import NIOCore
import OpenAPIRuntime
import ShepherdCore

/// Turns every error into `{"code","message"}` with the status its code calls for, at the edge.
/// Anything that is not a ShepherdError and escapes from the OpenAPI layer is a request the
/// runtime could not decode (handlers wrap their own unexpected errors as `internal`).
public struct ErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    public init() {}

    public func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch {
            let shepherd = Self.map(error)
            if shepherd.code.httpStatus >= 500 {
                context.logger.error("\(request.method) \(request.uri.path) failed: \(shepherd)")
            }
            return JSONResponse.error(shepherd)
        }
    }

    /// The domain error a failure stands for.
    public static func map(_ error: any Error) -> ShepherdError {
        switch error {
        case let error as ShepherdError:
            return error
        case let error as ServerError:
            if let inner = error.underlyingError as? ShepherdError { return inner }
            if let decoding = error.underlyingError as? DecodingError {
                return ShepherdError(.invalidBody, describe(decoding))
            }
            return ShepherdError(.invalidBody, "the request could not be read: \(error.causeDescription) (\(error.underlyingError))")
        case let error as DecodingError:
            return ShepherdError(.invalidBody, describe(error))
        case let error as HTTPError:
            let code: ShepherdError.Code = switch error.status.code {
            case 401: .unauthorized
            case 403: .forbidden
            case 404: .notFound
            case 400..<500: .invalidBody
            default: .internal
            }
            return ShepherdError(code, error.body ?? error.status.reasonPhrase)
        default:
            return ShepherdError(.internal, "\(error)")
        }
    }

    /// A decoding failure said in terms of the request's fields.
    public static func describe(_ error: DecodingError) -> String {
        func path(_ context: DecodingError.Context) -> String {
            let joined = context.codingPath.map { $0.intValue.map(String.init) ?? $0.stringValue }.joined(separator: ".")
            return joined.isEmpty ? "body" : joined
        }
        switch error {
        case .keyNotFound(let key, let context):
            let parent = path(context)
            return "\(parent == "body" ? key.stringValue : parent + "." + key.stringValue): is required"
        case .typeMismatch(let type, let context): return "\(path(context)): expected \(type)"
        case .valueNotFound(let type, let context): return "\(path(context)): expected \(type), got null"
        case .dataCorrupted(let context): return "\(path(context)): \(context.debugDescription)"
        @unknown default: return "the body could not be decoded"
        }
    }
}

/// JSON answers built by hand (the agent's API, errors, /healthz).
public enum JSONResponse {
    public static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting = [.sortedKeys]
        return encoder
    }()

    public static func make<T: Encodable>(_ value: T, status: HTTPResponse.Status = .ok) -> Response {
        let data = (try? encoder.encode(value)) ?? Data("{}".utf8)
        return Response(status: status, headers: [.contentType: "application/json"],
                        body: ResponseBody(byteBuffer: ByteBuffer(bytes: data)))
    }

    public static func error(_ error: ShepherdError) -> Response {
        make(ErrorBody(error), status: HTTPResponse.Status(code: error.code.httpStatus))
    }
}
