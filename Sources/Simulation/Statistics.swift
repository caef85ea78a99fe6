import Foundation

/// The statistics the Beloglazov–Buyya overload detectors use, computed the way CloudSim's
/// MathUtil (Apache Commons Math) computes them, so compat runs take the same decisions.
enum Stats {
    /// Intercept and slope of y over x = 1…n, by Commons Math's SimpleRegression update formulas.
    static func linearFit(_ y: ArraySlice<Double>) -> (intercept: Double, slope: Double) {
        var n = 0.0, xbar = 0.0, ybar = 0.0, sumXX = 0.0, sumXY = 0.0, sumX = 0.0, sumY = 0.0
        for (offset, value) in y.enumerated() {
            let x = Double(offset + 1)
            if n == 0 { xbar = x; ybar = value } else {
                let fact1 = 1.0 + n, fact2 = n / (1.0 + n)
                let dx = x - xbar, dy = value - ybar
                sumXX += dx * dx * fact2
                sumXY += dx * dy * fact2
                xbar += dx / fact1
                ybar += dy / fact1
            }
            sumX += x; sumY += value; n += 1
        }
        let slope = sumXY / sumXX
        return ((sumY - slope * sumX) / n, slope)
    }

    /// Weighted least squares of y over x = 1…n.
    static func weightedFit(_ y: [Double], weights: [Double]) -> (intercept: Double, slope: Double) {
        var sw = 0.0, sx = 0.0, sy = 0.0
        for i in y.indices { let x = Double(i + 1); sw += weights[i]; sx += weights[i] * x; sy += weights[i] * y[i] }
        let mx = sx / sw, my = sy / sw
        var sxx = 0.0, sxy = 0.0
        for i in y.indices { let dx = Double(i + 1) - mx; sxx += weights[i] * dx * dx; sxy += weights[i] * dx * (y[i] - my) }
        let slope = sxx == 0 ? 0 : sxy / sxx
        return (my - slope * mx, slope)
    }

    /// Tricube weights by distance from the newest point (the paper's local regression).
    static func tricube(_ n: Int) -> [Double] {
        let spread = Double(n)
        return (0..<n).map { i in
            let d = Double(n - 1 - i) / spread
            return pow(1 - d * d * d, 3)
        }
    }

    /// Commons Math's default percentile (the "legacy" estimator) at p in 0…100.
    static func percentile(_ values: [Double], _ p: Double) -> Double {
        let sorted = values.sorted()
        let n = Double(sorted.count)
        let pos = p * (n + 1) / 100
        let fpos = pos.rounded(.down)
        if pos < 1 { return sorted[0] }
        if pos >= n { return sorted[sorted.count - 1] }
        let lower = sorted[Int(fpos) - 1], upper = sorted[Int(fpos)]
        return lower + (pos - fpos) * (upper - lower)
    }

    static func median(_ values: [Double]) -> Double { percentile(values, 50) }

    static func mad(_ values: [Double]) -> Double {
        guard !values.isEmpty else { return 0 }
        let m = median(values)
        return median(values.map { abs(m - $0) })
    }

    /// CloudSim's MathUtil.iqr: quartiles by rounded rank.
    static func iqr(_ values: [Double]) -> Double {
        let sorted = values.sorted()
        let n = Double(sorted.count)
        let q1 = Int((0.25 * (n + 1)).rounded(.toNearestOrAwayFromZero)) - 1
        let q3 = Int((0.75 * (n + 1)).rounded(.toNearestOrAwayFromZero)) - 1
        return sorted[q3] - sorted[q1]
    }
}
