import Foundation
import HostKit

/// A thin, typed wrapper over `qemu-img` (argv only, explicit timeouts).
public enum QemuImg {
    /// What `qemu-img info --output=json` says about an image.
    public struct Info: Sendable, Decodable, Equatable {
        public let format: String
        public let virtualSize: UInt64
        public let actualSize: UInt64?
        public let backingFilename: String?
        public let backingFormat: String?

        enum CodingKeys: String, CodingKey {
            case format
            case virtualSize = "virtual-size"
            case actualSize = "actual-size"
            case backingFilename = "backing-filename"
            case backingFormat = "backing-filename-format"
        }
    }

    /// Copies `source` into a new standalone image (no backing file) at `destination`.
    public static func convert(source: String, destination: String, format: String = "qcow2", preallocation: String? = nil,
                               timeout: Duration = .seconds(600)) async throws {
        let options = preallocation.map { ["-o", "preallocation=\($0)"] } ?? []
        try await Command.check("qemu-img", ["convert", "-O", format] + options + [source, destination], timeout: timeout)
    }

    /// Creates an empty image of `bytes`. `preallocation` is qemu-img's: off (grows with
    /// writes), falloc (space reserved, zeroed on first write) or full (every byte written).
    public static func create(path: String, bytes: UInt64, format: String = "qcow2", preallocation: String = "off",
                              timeout: Duration = .seconds(60)) async throws {
        try await Command.check("qemu-img", ["create", "-q", "-f", format, "-o", "preallocation=\(preallocation)", path, String(bytes)],
                                timeout: timeout)
    }

    /// Creates a qcow2 overlay whose reads fall through to `backing` (a differencing disk).
    public static func createOverlay(path: String, backing: String, backingFormat: String, timeout: Duration = .seconds(60)) async throws {
        try await Command.check("qemu-img", ["create", "-q", "-f", "qcow2", "-b", backing, "-F", backingFormat, path], timeout: timeout)
    }

    /// Makes `path` back onto `backing` (nil: onto nothing, standalone), first copying into it
    /// every cluster that reads differently through the new backing (qemu-img's safe mode).
    public static func rebase(path: String, backing: String?, backingFormat: String?, timeout: Duration = .seconds(600)) async throws {
        var arguments = ["rebase", "-q", "-f", "qcow2", "-b", backing ?? ""]
        if backing != nil, let backingFormat { arguments += ["-F", backingFormat] }
        try await Command.check("qemu-img", arguments + [path], timeout: timeout)
    }

    /// Grows an image that no running QEMU has open.
    public static func resize(path: String, format: String, bytes: UInt64, timeout: Duration = .seconds(60)) async throws {
        try await Command.check("qemu-img", ["resize", "-q", "-f", format, path, String(bytes)], timeout: timeout)
    }

    public static func info(path: String, timeout: Duration = .seconds(30)) async throws -> Info {
        let result = try await Command.check("qemu-img", ["info", "--output=json", "-U", path], timeout: timeout)
        return try JSONDecoder().decode(Info.self, from: Data(result.stdout.utf8))
    }
}
