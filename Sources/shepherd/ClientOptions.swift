import ArgumentParser
import Foundation
import ShepherdAPI
import ShepherdCore

/// How the CLI reaches and authenticates with the manager.
struct ClientOptions: ParsableArguments {
    @Option(help: "The manager's URL (default: SHEPHERD_URL or http://127.0.0.1:7443).")
    var url: String?

    @Option(help: "The admin token (default: SHEPHERD_TOKEN, else the manager's state dir admin-token file).")
    var token: String?

    var resolvedURL: String {
        url ?? ProcessInfo.processInfo.environment["SHEPHERD_URL"] ?? "http://127.0.0.1:7443"
    }

    func resolvedToken() -> String? {
        if let token { return token }
        let environment = ProcessInfo.processInfo.environment
        if let token = environment["SHEPHERD_TOKEN"], !token.isEmpty { return token }
        let stateDirectory = environment["SHEPHERD_STATE_DIR"] ?? "/var/lib/shepherd"
        return (try? String(contentsOfFile: stateDirectory + "/admin-token", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines)
    }

    func client(timeout: Duration = .seconds(60)) throws -> Client {
        do {
            return try Client.manager(url: resolvedURL, token: resolvedToken(), timeout: timeout)
        } catch {
            throw CLIError("--url: '\(resolvedURL)' is not an http(s) URL")
        }
    }
}

/// An error the CLI prints as one line and exits non-zero with.
struct CLIError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }

    /// The manager's {"code","message"} answer.
    static func api(_ status: Int, _ response: Components.Responses._Error) -> CLIError {
        if let body = try? response.body.json {
            return CLIError("\(body.message) [\(body.code), HTTP \(status)]")
        }
        return CLIError("the manager answered HTTP \(status)")
    }
}

/// Runs a call to the manager and turns transport failures into one readable line.
func calling<T>(_ options: ClientOptions, timeout: Duration = .seconds(60), _ body: (Client) async throws -> T) async throws -> T {
    let client = try options.client(timeout: timeout)
    do {
        return try await body(client)
    } catch let error as CLIError {
        throw error
    } catch let error as ClientError {
        throw CLIError("cannot reach the manager at \(options.resolvedURL): \(error.underlyingError)")
    }
}

/// JSON output with stable, sorted keys and ISO 8601 dates.
func printJSON<T: Encodable>(_ value: T) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    encoder.dateEncodingStrategy = .iso8601
    print(String(decoding: try encoder.encode(value), as: UTF8.self))
}

/// A plain text table: a header row, then one row per item, columns padded.
func printTable(_ header: [String], _ rows: [[String]]) {
    let widths = header.indices.map { column in
        ([header[column]] + rows.map { column < $0.count ? $0[column] : "" }).map(\.count).max() ?? 0
    }
    func line(_ cells: [String]) -> String {
        cells.enumerated().map { index, cell in
            index == cells.count - 1 ? cell : cell.padding(toLength: widths[index], withPad: " ", startingAt: 0)
        }.joined(separator: "  ")
    }
    print(line(header))
    for row in rows { print(line(row)) }
}

/// "2.0 GiB", "512 MiB".
func formatMiB(_ mib: Int) -> String {
    mib >= 1024 ? String(format: "%.1f GiB", Double(mib) / 1024) : "\(mib) MiB"
}

func formatBytes(_ bytes: Int64) -> String { formatMiB(Int(bytes / 1_048_576)) }

func formatDate(_ date: Date?) -> String {
    guard let date else { return "-" }
    let formatter = ISO8601DateFormatter()
    return formatter.string(from: date)
}
