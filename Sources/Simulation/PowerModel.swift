/// SPECpower table of a server: watts at 0 %, 10 %, … 100 % load, linear in between.
public struct PowerModel: Sendable, Equatable {
    public var watts: [Double]

    public init(watts: [Double]) { precondition(watts.count == 11); self.watts = watts }

    /// HP ProLiant ML110 G4 (Xeon 3040), as in the paper and CloudSim.
    public static let hpProLiantG4 = PowerModel(watts: [86, 89.4, 92.6, 96, 99.5, 102, 106, 108, 112, 114, 117])
    /// HP ProLiant ML110 G5 (Xeon 3075).
    public static let hpProLiantG5 = PowerModel(watts: [93.7, 97, 101, 105, 110, 116, 121, 125, 129, 133, 135])

    /// Watts at a utilization in 0…1 (nil outside), interpolated exactly as CloudSim's
    /// PowerModelSpecPower does, so compat energy matches to the last digit of the formula.
    public func watts(at utilization: Double) -> Double? {
        guard utilization >= 0, utilization <= 1 else { return nil }
        if utilization.truncatingRemainder(dividingBy: 0.1) == 0 { return watts[Int(utilization * 10)] }
        let low = Int((utilization * 10).rounded(.down)), high = Int((utilization * 10).rounded(.up))
        let delta = (watts[high] - watts[low]) / 10
        return watts[low] + delta * (utilization - Double(low) / 10) * 100
    }

    /// Energy (joules) over `seconds` when utilization moves linearly from `from` to `to`;
    /// a host that starts the interval idle is asleep and draws nothing.
    public func energy(from: Double, to: Double, seconds: Double) -> Double {
        if from == 0 { return 0 }
        let p0 = watts(at: min(from, 1)) ?? watts[10], p1 = watts(at: min(to, 1)) ?? watts[10]
        return (p0 + (p1 - p0) / 2) * seconds
    }
}
