/// Limits a VM request must respect; refusals name the field and these numbers.
public enum Limits {
    public static let nameMaxLength = 63
    public static let cpus = 1...64
    public static let memoryMiB = 16...1_048_576
    public static let execTimeoutSeconds = 1...3600
}

/// Pure validation of user input. Each function throws `invalid_field` naming the field.
public enum Validate {
    /// Names: 1–63 characters of a-z A-Z 0-9 . _ -, starting with a letter or digit.
    public static func name(_ value: String, field: String = "name") throws {
        if value.isEmpty { throw ShepherdError.invalidField(field, "must not be empty") }
        if value.count > Limits.nameMaxLength {
            throw ShepherdError.invalidField(field, "is \(value.count) characters long; the limit is \(Limits.nameMaxLength)")
        }
        guard let first = value.unicodeScalars.first, isAlnum(first) else {
            throw ShepherdError.invalidField(field, "'\(value)' must start with a letter or a digit")
        }
        for scalar in value.unicodeScalars where !(isAlnum(scalar) || scalar == "." || scalar == "_" || scalar == "-") {
            throw ShepherdError.invalidField(field, "'\(value)' contains '\(scalar)'; allowed are letters, digits, '.', '_' and '-'")
        }
    }

    public static func cpus(_ value: Int, field: String = "cpus") throws {
        guard Limits.cpus.contains(value) else {
            throw ShepherdError.invalidField(field, "\(value) is outside \(Limits.cpus.lowerBound)–\(Limits.cpus.upperBound)")
        }
    }

    public static func memoryMiB(_ value: Int, field: String = "memoryMiB") throws {
        guard Limits.memoryMiB.contains(value) else {
            throw ShepherdError.invalidField(field, "\(value) MiB is outside \(Limits.memoryMiB.lowerBound)–\(Limits.memoryMiB.upperBound) MiB")
        }
    }

    public static func execCommand(_ argv: [String], timeoutSeconds: Int?) throws {
        guard let program = argv.first, !program.isEmpty else {
            throw ShepherdError.invalidField("command", "must name a program to run")
        }
        if let timeout = timeoutSeconds, !Limits.execTimeoutSeconds.contains(timeout) {
            throw ShepherdError.invalidField("timeoutSeconds", "\(timeout) is outside \(Limits.execTimeoutSeconds.lowerBound)–\(Limits.execTimeoutSeconds.upperBound)")
        }
    }

    private static func isAlnum(_ scalar: Unicode.Scalar) -> Bool {
        ("a"..."z").contains(scalar) || ("A"..."Z").contains(scalar) || ("0"..."9").contains(scalar)
    }
}
