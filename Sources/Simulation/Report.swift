import Foundation

public enum SimulationReport {
    /// Per policy, the median of every metric over the days (day "median").
    public static func medians(_ results: [DayResult]) -> [DayResult] {
        var policies: [String] = []
        for result in results where !policies.contains(result.policy) { policies.append(result.policy) }
        return policies.map { policy in
            let rows = results.filter { $0.policy == policy }
            func median(_ value: (DayResult) -> Double) -> Double {
                let sorted = rows.map(value).sorted()
                let n = sorted.count
                return n % 2 == 1 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2
            }
            return DayResult(day: "median", policy: policy, energyKWh: median(\.energyKWh), slatah: median(\.slatah),
                             pdm: median(\.pdm), slav: median(\.slav), esv: median(\.esv),
                             migrations: Int(median { Double($0.migrations) }.rounded()),
                             vmsRemoved: Int(median { Double($0.vmsRemoved) }.rounded()),
                             wallSeconds: median(\.wallSeconds))
        }
    }

    /// The paper's units: SLATAH and PDM in %, SLAV × 1e-5, ESV × 1e-3.
    public static func table(_ results: [DayResult], medians: [DayResult]) -> String {
        var lines = ["day       policy         energy kWh  SLATAH %   PDM %  SLAV e-5  ESV e-3  migrations  VMs removed  wall s"]
        func row(_ r: DayResult) -> String {
            func pad(_ s: String, _ width: Int) -> String { s.count >= width ? s : String(repeating: " ", count: width - s.count) + s }
            func left(_ s: String, _ width: Int) -> String { s.count >= width ? s : s + String(repeating: " ", count: width - s.count) }
            return left(r.day, 9) + " " + left(r.policy, 13) + pad(String(format: "%.2f", r.energyKWh), 12)
                + pad(String(format: "%.3f", r.slatah * 100), 10) + pad(String(format: "%.4f", r.pdm * 100), 8)
                + pad(String(format: "%.3f", r.slav * 1e5), 10) + pad(String(format: "%.3f", r.esv * 1e3), 9)
                + pad("\(r.migrations)", 12) + pad("\(r.vmsRemoved)", 13) + pad(String(format: "%.2f", r.wallSeconds), 8)
        }
        lines += results.map(row)
        lines.append("")
        lines += medians.map(row)
        return lines.joined(separator: "\n")
    }
}
