import Foundation

/// A long operation's lifecycle, as the API shows it.
public enum TaskState: String, Sendable, Codable, CaseIterable {
    case queued, running, succeeded, failed

    public var isFinished: Bool { self == .succeeded || self == .failed }
}

/// A host's connection state as the manager sees it.
public enum HostState: String, Sendable, Codable, CaseIterable {
    case connected, disconnected, maintenance
    /// Powered off by DPM through its BMC; DPM powers it on when the cluster needs it.
    case standby
}

/// Storage leases: how long one lasts, and when a holder that cannot renew fences itself.
public enum Leases {
    /// The manager treats a lease older than this as expired: its host cannot run VMs.
    public static let expireSeconds: Double = 20
    /// An agent that could not renew for this long ends its VMs (well before expiry).
    public static let selfFenceSeconds: Double = 12
}

/// How often agents report and how long the manager waits before calling a host lost.
public enum Heartbeats {
    public static let interval: Duration = .seconds(2)
    /// Five missed heartbeats.
    public static let lostAfterSeconds: Double = 10
    /// A heartbeat's guest statuses are collected before it is sent (pinging each guest takes up
    /// to a second), so one collected before a start may arrive after the start finished. A
    /// "stopped" report about a VM that started less than this long ago is left to the next
    /// heartbeats to confirm (a QEMU that ends during boot fails its start task anyway), and so is
    /// a "running" report about a VM whose state changed (it stopped) less than this long ago.
    /// Crash reports are not delayed: after a guest panic the agent reports the crash only once.
    public static let startSettleSeconds: Double = 5
}

/// Mebibytes from bytes, rounded down.
public func mebibytes(_ bytes: UInt64) -> Int { Int(bytes / 1_048_576) }

/// A fresh identifier: a lowercase UUID.
public func newID() -> String { UUID().uuidString.lowercased() }

/// The version every Shepherd binary reports (manager, agent, CLI).
public let shepherdVersion = "0.1.0"
