import Foundation
import Hummingbird
import ShepherdCore

/// Bearer-token helpers shared by the manager and the agent.
public enum BearerAuth {
    /// The token of an `Authorization: Bearer …` header, or nil.
    public static func token(in request: Request) -> String? {
        guard let header = request.headers[.authorization] else { return nil }
        let prefix = "Bearer "
        guard header.hasPrefix(prefix) else { return nil }
        let token = header.dropFirst(prefix.count).trimmingCharacters(in: .whitespaces)
        return token.isEmpty ? nil : token
    }

    /// Compares in time independent of where the strings differ.
    public static func matches(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8), y = Array(b.utf8)
        guard x.count == y.count else { return false }
        var difference: UInt8 = 0
        for i in x.indices { difference |= x[i] ^ y[i] }
        return difference == 0
    }

    /// A new random secret: 32 bytes as hex.
    public static func newSecret() -> String {
        var generator = SystemRandomNumberGenerator()
        return (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &generator)) }.joined()
    }

    public static let missing = ShepherdError(.unauthorized, "missing or malformed 'Authorization: Bearer <token>' header")
    public static let wrong = ShepherdError(.unauthorized, "the bearer token is not valid")
}

/// A `host:port` to listen on.
public enum ListenAddress {
    /// "host:port" → its parts; a clear error names the flag.
    public static func parse(_ value: String, flag: String = "--listen") throws -> (host: String, port: Int) {
        guard let colon = value.lastIndex(of: ":"), let port = Int(value[value.index(after: colon)...]), (1...65535).contains(port),
              colon > value.startIndex else {
            throw ShepherdError.invalidField(flag, "'\(value)' must be host:port with a port of 1–65535")
        }
        return (String(value[..<colon]), port)
    }
}
