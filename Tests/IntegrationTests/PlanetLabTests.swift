import Foundation
import Simulation
import Testing

/// ../shared/data/planetlab beside the project (as CI has it).
private let planetLabFolder: String = {
    let here = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    return here.appendingPathComponent("../../../shared/data/planetlab").standardized.path
}()

private func loadDay(_ name: String) throws -> PlanetLabDay {
    let folder = "\(planetLabFolder)/\(name)"
    guard FileManager.default.fileExists(atPath: folder) else {
        Issue.record("PlanetLab traces missing: \(folder) (../shared/data/planetlab must sit beside the project)")
        throw TraceError("missing \(folder)")
    }
    return try PlanetLabLoader.loadDay(folder)
}

extension RealGuests {
/// Whole PlanetLab days: CPU-heavy, so they run in the serialized heavy suite and never slow a
/// real guest's timing.
@Suite("PlanetLab simulation")
struct PlanetLabSimulationTests {
    /// CloudSim 4.0's own LR-MMT-1.2 and THR-MMT-0.8 figures (../shared/data/planetlab/README.md).
    static let cloudSim: [(day: String, policy: String, energy: Double, migrations: Int, removed: Int)] = [
        ("20110303", "lr-mmt", 163.48, 27859, 532), ("20110306", "lr-mmt", 123.28, 20878, 523),
        ("20110309", "lr-mmt", 142.09, 24959, 782), ("20110322", "lr-mmt", 177.48, 32038, 939),
        ("20110325", "lr-mmt", 152.58, 26513, 591), ("20110306", "thr-mmt", 144.74, 20908, 523),
    ]

    @Test("compat mode lands on CloudSim 4.0's per-day energy and migrations (within 10 %; it matches to the digit)",
          arguments: cloudSim)
    func compat(expected: (day: String, policy: String, energy: Double, migrations: Int, removed: Int)) throws {
        let day = try loadDay(expected.day)
        let result = try Simulator.run(day, policy: try SimulationPolicy.parse(expected.policy), cloudSimCompat: true)
        #expect(abs(result.energyKWh - expected.energy) / expected.energy < 0.10)
        #expect(abs(Double(result.migrations - expected.migrations)) / Double(expected.migrations) < 0.10)
        #expect(abs(result.energyKWh - expected.energy) < 0.005, "energy \(result.energyKWh) kWh")
        #expect(result.migrations == expected.migrations)
        #expect(result.vmsRemoved == expected.removed)
    }

    @Test("the same input gives the same numbers")
    func deterministic() throws {
        let day = try loadDay("20110306")
        let a = try Simulator.run(day, policy: .shepherd, cloudSimCompat: false)
        let b = try Simulator.run(day, policy: .shepherd, cloudSimCompat: false)
        #expect(a == b)
    }

    @Test("ours halves LR-MMT-1.2's ESV without using more energy on a day it was not tuned on")
    func oursBeatsLR() throws {
        let day = try loadDay("20110325")
        let ours = try Simulator.run(day, policy: .shepherd, cloudSimCompat: false)
        let lr = try Simulator.run(day, policy: .beloglazov(.localRegression(1.2)), cloudSimCompat: false)
        #expect(ours.esv <= 0.5 * lr.esv, "ours ESV \(ours.esv), LR \(lr.esv)")
        #expect(ours.energyKWh <= lr.energyKWh, "ours \(ours.energyKWh) kWh, LR \(lr.energyKWh) kWh")
        #expect(ours.migrations < lr.migrations)
        #expect(ours.vmsRemoved == 0 && lr.vmsRemoved == 0)
    }

    @Test("under CloudSim's quirks too, ours uses less energy than LR-MMT-1.2 with a fraction of its ESV")
    func oursBeatsLRInCompat() throws {
        let day = try loadDay("20110325")
        let ours = try Simulator.run(day, policy: .shepherd, cloudSimCompat: true)
        #expect(ours.energyKWh < 152.58, "ours \(ours.energyKWh) kWh; CloudSim's LR-MMT-1.2 152.58 kWh")
        #expect(ours.esv <= 0.5 * 7.206e-3, "ours ESV \(ours.esv); CloudSim's LR-MMT-1.2 7.206e-3")
        #expect(ours.vmsRemoved == 591)
    }
}
}
