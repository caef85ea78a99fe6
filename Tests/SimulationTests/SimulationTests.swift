import Foundation
import Testing
@testable import Simulation

/// ../shared/data/planetlab beside the project (as CI has it).
let planetLabFolder: String = {
    let here = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    return here.appendingPathComponent("../../../shared/data/planetlab").standardized.path
}()

func loadDay(_ name: String) throws -> PlanetLabDay {
    let folder = "\(planetLabFolder)/\(name)"
    guard FileManager.default.fileExists(atPath: folder) else {
        Issue.record("PlanetLab traces missing: \(folder) (../shared/data/planetlab must sit beside the project)")
        throw TraceError("missing \(folder)")
    }
    return try PlanetLabLoader.loadDay(folder)
}

@Suite("Power model")
struct PowerModelTests {
    @Test("watts interpolate linearly between the SPECpower points", arguments: [
        (PowerModel.hpProLiantG4, 0.0, 86.0), (PowerModel.hpProLiantG4, 1.0, 117.0), (PowerModel.hpProLiantG4, 0.25, 94.3),
        (PowerModel.hpProLiantG5, 0.05, 95.35), (PowerModel.hpProLiantG5, 0.95, 134.0),
    ])
    func interpolation(model: PowerModel, utilization: Double, watts: Double) throws {
        let value = try #require(model.watts(at: utilization))
        #expect(abs(value - watts) < 1e-9)
    }

    @Test("utilization outside 0…1 has no power")
    func outOfRange() {
        #expect(PowerModel.hpProLiantG4.watts(at: 1.2) == nil)
        #expect(PowerModel.hpProLiantG4.watts(at: -0.1) == nil)
    }

    @Test("energy is the mean of both ends' power over the interval, and zero for a host that was asleep")
    func energy() {
        // G4 from 50 % (102 W) to 100 % (117 W) over 300 s: (102 + 117) / 2 × 300 = 32,850 J.
        #expect(abs(PowerModel.hpProLiantG4.energy(from: 0.5, to: 1, seconds: 300) - 32_850) < 1e-9)
        #expect(PowerModel.hpProLiantG4.energy(from: 0, to: 1, seconds: 300) == 0)
    }
}

@Suite("Detector statistics")
struct StatisticsTests {
    @Test("least squares over x = 1…n finds the line through exact points")
    func linearFit() {
        let fit = Stats.linearFit([0.2, 0.3, 0.4, 0.5][...])
        #expect(abs(fit.slope - 0.1) < 1e-12)
        #expect(abs(fit.intercept - 0.1) < 1e-12)
    }

    @Test("median, MAD and IQR as CloudSim computes them")
    func spread() {
        #expect(Stats.median([5, 1, 3]) == 3)
        #expect(Stats.median([4, 1, 3, 2]) == 2.5)
        // |x − 3| of 1,2,3,4,10 = 2,1,0,1,7 → median 1.
        #expect(Stats.mad([1, 2, 3, 4, 10]) == 1)
        // n = 7: q1 at round(2) − 1 = 1, q3 at round(6) − 1 = 5 → 6 − 2.
        #expect(Stats.iqr([7, 1, 2, 3, 4, 5, 6]) == 4)
    }
}

@Suite("PlanetLab traces")
struct PlanetLabLoaderTests {
    func folder(_ files: [String: String]) throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("planetlab-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        for (name, text) in files { try text.write(toFile: "\(dir)/\(name)", atomically: true, encoding: .utf8) }
        return dir
    }
    let day = (0..<288).map { "\($0 % 100)" }.joined(separator: "\n") + "\n"

    @Test("files are read in Java's order, as fractions, with CloudSim's copy of the last sample")
    func reads() throws {
        let dir = try folder(["b_slice": day, "a slice": day, "B_slice": day])
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let loaded = try PlanetLabLoader.loadDay(dir)
        #expect(loaded.files == ["B_slice", "a slice", "b_slice"])
        #expect(loaded.utilization[0].count == 289)
        #expect(loaded.utilization[0][1] == 0.01)
        #expect(loaded.utilization[0][288] == loaded.utilization[0][287])
    }

    @Test("a non-number names the file and line")
    func badNumber() throws {
        let dir = try folder(["vm1": day.replacingOccurrences(of: "\n7\n", with: "\nseven\n")])
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(throws: TraceError("\(dir)/vm1:8: 'seven' is not a CPU percent (an integer 0–100)")) { try PlanetLabLoader.loadDay(dir) }
    }

    @Test("a wrong line count names the file and the count")
    func lineCount() throws {
        let dir = try folder(["vm1": "1\n2\n3\n"])
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(throws: TraceError("\(dir)/vm1: 3 lines; a day has 288 (one per 5 minutes)")) { try PlanetLabLoader.loadDay(dir) }
    }

    @Test("a missing folder is named")
    func missing() {
        #expect(throws: TraceError("/nonexistent/planetlab: no such folder")) { try PlanetLabLoader.load("/nonexistent/planetlab") }
    }

    @Test("policy names parse with the paper's parameters, and unknown ones are refused")
    func policies() throws {
        #expect(try SimulationPolicy.parse("lr-mmt") == .beloglazov(.localRegression(1.2)))
        #expect(try SimulationPolicy.parse("thr-mmt-0.9") == .beloglazov(.threshold(0.9)))
        #expect(try SimulationPolicy.parse("ours") == .shepherd)
        #expect(throws: TraceError.self) { try SimulationPolicy.parse("best-fit") }
    }
}

@Suite("PlanetLab simulation", .serialized)
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
