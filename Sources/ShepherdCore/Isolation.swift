import Foundation

/// What an isolated host does with its VMs (vSphere's host isolation response).
public enum IsolationResponse: String, CaseIterable, Sendable, Codable {
    /// Keep them running: nothing restarts them elsewhere while the host renews its lease.
    case leaveRunning = "leave-running"
    /// Cut their power at once, so HA restarts them elsewhere within seconds.
    case powerOff = "power-off"
    /// Shut the guests down cleanly (power cut after `Isolation.shutdownSeconds`), then as power-off.
    case shutdown
}

/// Host isolation: the agent lost the manager and cannot reach any peer either, so the fault is
/// most likely its own network, not theirs. A host that only lost the manager (peers answer) is
/// not isolated: the manager or its link is down, and the VMs stay put.
public enum Isolation {
    /// Seconds without a manager answer before the agent asks its peers: under the manager's 10 s
    /// host-lost limit, so the response has run by the time HA looks at the host's lease.
    public static let detectSeconds: Double = 6
    /// How long `shutdown` waits for the guests before cutting their power.
    public static let shutdownSeconds: Double = 30

    public enum Verdict: Equatable, Sendable {
        /// The manager answers.
        case connected
        /// The manager has not answered for a while, but `reachable` of the peers do (or the host
        /// knows no peers, and so cannot tell): not isolated, VMs stay.
        case managerLost(peersReachable: Int, peers: Int)
        /// Neither the manager nor any of its peers answer.
        case isolated(peers: Int)
    }

    public static func verdict(secondsSinceManager: Double, peersReachable: Int, peers: Int) -> Verdict {
        guard secondsSinceManager >= detectSeconds else { return .connected }
        guard peers > 0, peersReachable == 0 else { return .managerLost(peersReachable: peersReachable, peers: peers) }
        return .isolated(peers: peers)
    }
}
