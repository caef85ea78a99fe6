import Foundation
import Scheduling

/// One policy's figures for one day, in the paper's units (fractions; `--json` prints them raw).
public struct DayResult: Sendable, Codable, Equatable {
    public var day: String
    public var policy: String
    public var energyKWh: Double
    public var slatah: Double
    public var pdm: Double
    public var slav: Double
    public var esv: Double
    public var migrations: Int
    public var vmsRemoved: Int
    /// Wall time of the run, seconds (not part of the result's identity).
    public var wallSeconds: Double

    public static func == (a: DayResult, b: DayResult) -> Bool {
        a.day == b.day && a.policy == b.policy && a.energyKWh == b.energyKWh && a.slatah == b.slatah && a.pdm == b.pdm
            && a.migrations == b.migrations && a.vmsRemoved == b.vmsRemoved
    }
}

public enum SimulationPolicy: Sendable, Equatable {
    case beloglazov(OverloadDetector)
    /// Shepherd's own DRS + DPM from the Scheduling module.
    case shepherd

    public var name: String {
        switch self {
        case .beloglazov(let detector): detector.name
        case .shepherd: "ours"
        }
    }

    /// "lr-mmt", "lr-mmt-1.2", "thr-mmt-0.8", "ours" …
    public static func parse(_ text: String) throws -> SimulationPolicy {
        let name = text.lowercased()
        if name == "ours" || name == "shepherd" { return .shepherd }
        if let detector = OverloadDetector.paperDefaults[name] { return .beloglazov(detector) }
        for (prefix, base) in OverloadDetector.paperDefaults where name.hasPrefix(prefix + "-") {
            guard let value = Double(name.dropFirst(prefix.count + 1)), value >= 0 else { break }
            switch base {
            case .threshold: return .beloglazov(.threshold(value))
            case .interQuartileRange: return .beloglazov(.interQuartileRange(value))
            case .medianAbsoluteDeviation: return .beloglazov(.medianAbsoluteDeviation(value))
            case .localRegression: return .beloglazov(.localRegression(value))
            case .robustLocalRegression: return .beloglazov(.robustLocalRegression(value))
            }
        }
        throw TraceError("policy: '\(text)' is not one of ours, lr-mmt, lrr-mmt, thr-mmt, iqr-mmt, mad-mmt (optionally with a parameter: lr-mmt-1.2)")
    }
}

public enum Simulator {
    public static let defaultHosts = 800

    public static func run(_ day: PlanetLabDay, policy: SimulationPolicy, cloudSimCompat: Bool,
                           hosts: Int = defaultHosts) throws -> DayResult {
        let started = DispatchTime.now().uptimeNanoseconds
        let dc = DataCenter(day: day, hosts: hosts, quirks: cloudSimCompat ? .cloudSim : .paper)
        switch policy {
        case .beloglazov(let detector):
            let belo = BeloglazovPolicy(detector: detector)
            let startThreshold: Double
            if case .threshold(let limit) = detector { startThreshold = limit } else { startThreshold = belo.fallbackThreshold }
            try dc.run(initialPlacement: { try InitialPlacement.place($0, overloadThreshold: startThreshold) },
                       optimize: { belo.optimize($0) })
        case .shepherd:
            let ours = ShepherdConsolidation()
            try dc.run(initialPlacement: { try InitialPlacement.place($0, overloadThreshold: ours.startThreshold) },
                       optimize: { ours.optimize($0) })
        }
        let energy = dc.energyJoules / (3600 * 1000)
        let slatah = dc.slatah, pdm = dc.pdm
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
        return DayResult(day: day.name, policy: policy.name, energyKWh: energy, slatah: slatah, pdm: pdm,
                         slav: slatah * pdm, esv: energy * slatah * pdm, migrations: dc.migrations,
                         vmsRemoved: dc.removed.filter { $0 }.count, wallSeconds: seconds)
    }
}
