/// QEMU's named x86 CPU models by vendor line, oldest first: a host that provides a model can
/// run guests of that model and every older one of its line. This is what IMC (FusionCompute)
/// and EVC (vSphere) rest on: a cluster baseline every host can provide.
public enum CPUModels {
    public static let lines: [(vendor: String, cpuidVendor: String, models: [String])] = [
        ("AMD", "AuthenticAMD", ["EPYC", "EPYC-Rome", "EPYC-Milan", "EPYC-Genoa"]),
        ("Intel", "GenuineIntel", ["Nehalem", "Westmere", "SandyBridge", "IvyBridge", "Haswell", "Broadwell",
                                   "Skylake-Server", "Cascadelake-Server", "Icelake-Server", "SapphireRapids"]),
    ]

    /// Every model Shepherd knows, for error messages.
    public static var all: [String] { lines.flatMap(\.models) }

    /// The CPUID vendor of a model and its generation in its line.
    public static func position(of model: String) -> (cpuidVendor: String, generation: Int)? {
        for line in lines {
            if let index = line.models.firstIndex(of: model) { return (line.cpuidVendor, index) }
        }
        return nil
    }

    /// Can a host run a guest CPU model? A host that names no model (it passes its own CPU, or
    /// TCG's "max") can run every model of its vendor; one that names a model runs that model and
    /// the older ones of its line.
    public static func host(providing hostModel: String?, vendor hostVendor: String, canRun guestModel: String) -> Bool {
        guard let guest = position(of: guestModel), guest.cpuidVendor == hostVendor else { return false }
        guard let hostModel else { return true }
        guard let host = position(of: hostModel), host.cpuidVendor == guest.cpuidVendor else { return false }
        return guest.generation <= host.generation
    }

    /// Checks a model name, naming the field and the known models.
    public static func validate(_ model: String, field: String) throws {
        guard position(of: model) != nil else {
            throw ShepherdError.invalidField(field, "'\(model)' is not a known CPU model (known: \(all.joined(separator: ", ")))")
        }
    }
}
