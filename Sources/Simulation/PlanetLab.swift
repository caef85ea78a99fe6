import Foundation

/// One day of PlanetLab CPU traces: one VM per file, 288 five-minute samples of CPU percent.
public struct PlanetLabDay: Sendable {
    public var name: String
    /// File names, sorted as Java sorts strings (UTF-16 code units), which decides each VM's type.
    public var files: [String]
    /// Per VM, 289 fractions (the 288 samples and a copy of the last, as CloudSim keeps them).
    public var utilization: [[Double]]

    public static let samplesPerDay = 288

    public init(name: String, files: [String], utilization: [[Double]]) {
        self.name = name; self.files = files; self.utilization = utilization
    }
}

public struct TraceError: Error, CustomStringConvertible, Equatable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

public enum PlanetLabLoader {
    /// `path` is one day folder (files only) or a folder of day folders.
    public static func load(_ path: String) throws -> [PlanetLabDay] {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: path, isDirectory: &isDir) else {
            throw TraceError("\(path): no such folder")
        }
        guard isDir.boolValue else { throw TraceError("\(path): not a folder (give a day folder or a folder of day folders)") }
        let entries = try fm.contentsOfDirectory(atPath: path).filter { !$0.hasPrefix(".") }
        let subfolders = entries.filter { isDirectory("\(path)/\($0)") }
        if !subfolders.isEmpty {
            return try subfolders.sorted(by: javaOrder).map { try loadDay("\(path)/\($0)") }
        }
        return [try loadDay(path)]
    }

    public static func loadDay(_ folder: String) throws -> PlanetLabDay {
        let fm = FileManager.default
        let names = try fm.contentsOfDirectory(atPath: folder)
            .filter { !$0.hasPrefix(".") && !isDirectory("\(folder)/\($0)") && $0 != "README.md" }
            .sorted(by: javaOrder)
        guard !names.isEmpty else { throw TraceError("\(folder): no trace files") }
        var rows: [[Double]] = []
        rows.reserveCapacity(names.count)
        for name in names {
            rows.append(try parse(file: "\(folder)/\(name)"))
        }
        let dayName = URL(fileURLWithPath: folder).lastPathComponent
        return PlanetLabDay(name: dayName, files: names, utilization: rows)
    }

    /// 288 lines, each an integer percent 0…100; the error names the file and line.
    static func parse(file: String) throws -> [Double] {
        guard let data = FileManager.default.contents(atPath: file), let text = String(data: data, encoding: .utf8) else {
            throw TraceError("\(file): cannot be read as UTF-8 text")
        }
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
        while lines.last == "" { lines.removeLast() }
        guard lines.count == PlanetLabDay.samplesPerDay else {
            throw TraceError("\(file): \(lines.count) lines; a day has \(PlanetLabDay.samplesPerDay) (one per 5 minutes)")
        }
        var values: [Double] = []
        values.reserveCapacity(lines.count + 1)
        for (index, line) in lines.enumerated() {
            guard let percent = Int(line), (0...100).contains(percent) else {
                throw TraceError("\(file):\(index + 1): '\(line)' is not a CPU percent (an integer 0–100)")
            }
            values.append(Double(percent) / 100.0)
        }
        values.append(values[values.count - 1])
        return values
    }

    static func isDirectory(_ path: String) -> Bool {
        var isDir: ObjCBool = false
        return FileManager.default.fileExists(atPath: path, isDirectory: &isDir) && isDir.boolValue
    }

    /// Java's String.compareTo: UTF-16 code units, so VM types match CloudSim's sorted order.
    static func javaOrder(_ a: String, _ b: String) -> Bool { a.utf16.lexicographicallyPrecedes(b.utf16) }
}
