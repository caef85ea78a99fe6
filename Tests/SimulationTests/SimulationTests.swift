import Foundation
import Testing
@testable import Simulation

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

