import Foundation
import HostKit
import Logging
import ShepherdCore
import Synchronization

/// The host's side of the distributed virtual switches: its Open vSwitch (the machine's, or one
/// the agent runs itself), the DVS bridges the manager wants here with their uplinks, and what
/// they look like now. The wanted switches are kept in `<state>/switches.json`, so a restarted
/// agent (or a rebooted host, whose OVS database lived in /run) builds them again.
///
/// With the fake driver (tests of manager logic) the mode is "fake": switches are only
/// remembered, and an uplink must be one of the host's default uplinks.
final class HostNetworkAgent: Sendable {
    /// "managed", "system", "off" or "fake".
    let mode: String
    let ovs: OVS?
    let defaultUplinks: [String]
    private let file: String
    private let wanted: Mutex<[AgentWire.SwitchDefinition]>
    private let logger: Logger

    init(mode: String, stateDirectory: String, defaultUplinks: [String], logger: Logger) throws {
        guard ["managed", "system", "off", "fake"].contains(mode) else {
            throw ShepherdError.invalidField("--ovs", "'\(mode)' must be managed, system or off")
        }
        for uplink in defaultUplinks { try Validate.name(uplink, field: "--uplinks") }
        self.mode = mode
        self.defaultUplinks = defaultUplinks
        self.logger = logger
        switch mode {
        case "managed": ovs = .managed(forStateDirectory: stateDirectory)
        case "system": ovs = .system
        default: ovs = nil
        }
        file = stateDirectory + "/switches.json"
        wanted = Mutex(FileManager.default.contents(atPath: file).flatMap { try? JSONDecoder().decode([AgentWire.SwitchDefinition].self, from: $0) } ?? [])
    }

    /// Starts a managed OVS (or adopts the running one) and builds the wanted switches again.
    func start() async {
        guard let ovs else { return }
        do {
            try await ovs.start()
            guard ovs.isRunning else {
                logger.error("Open vSwitch (\(mode)) does not run on this host: VM NICs and DVS bridges cannot be made until it does")
                return
            }
            for definition in wanted.withLock({ $0 }) {
                do { try await build(definition, on: ovs) } catch {
                    logger.error("DVS '\(definition.dvs)' (bridge \(definition.bridge)) could not be built again: \(error)")
                }
            }
            logger.info("Open vSwitch (\(mode)) up; \(wanted.withLock(\.count)) DVS bridge(s)")
        } catch {
            logger.error("Open vSwitch (\(mode)) is not usable: \(error)")
        }
    }

    private func requireOVS() throws -> OVS {
        guard let ovs else { throw ShepherdError(.illegalState, "this host's agent runs without Open vSwitch (--ovs off)") }
        guard ovs.isRunning else { throw ShepherdError(.agentFailed, "Open vSwitch (\(mode)) does not run on this host") }
        return ovs
    }

    /// Builds (or corrects) one DVS bridge with its uplink and keeps it as wanted.
    func apply(_ definition: AgentWire.SwitchDefinition) async throws -> AgentWire.SwitchState {
        try Net.checkLinkName(definition.bridge)
        for uplink in definition.uplinks {
            try Net.checkLinkName(uplink)
            let exists = mode == "fake" ? defaultUplinks.contains(uplink) : Net.linkExists(uplink)
            guard exists else { throw ShepherdError(.notFound, "uplink NIC '\(uplink)' does not exist on this host") }
        }
        if mode == "fake" {
            try remember(definition)
            return Self.fakeState(definition)
        }
        let ovs = try requireOVS()
        try await build(definition, on: ovs)
        try remember(definition)
        return try await state(bridge: definition.bridge, on: ovs)
    }

    private func remember(_ definition: AgentWire.SwitchDefinition) throws {
        try wanted.withLock { list in
            list.removeAll { $0.bridge == definition.bridge }
            list.append(definition)
            try save(list)
        }
    }

    /// A fake host's bridge: exactly as wanted, every uplink up.
    private static func fakeState(_ definition: AgentWire.SwitchDefinition) -> AgentWire.SwitchState {
        let uplink = definition.uplinkPort.map { port in
            AgentWire.SwitchPort(name: port, vlanTag: nil, trunks: [], bondMode: definition.uplinks.count > 1 ? definition.bondMode.ovsMode : nil,
                                 members: definition.uplinks.map { .init(name: $0, state: "up") }, nicID: nil, error: nil)
        }
        return AgentWire.SwitchState(wanted: definition, bridge: definition.bridge, exists: true, ports: uplink.map { [$0] } ?? [])
    }

    /// The bridge and its uplink port; another uplink port left from an earlier definition goes.
    private func build(_ definition: AgentWire.SwitchDefinition, on ovs: OVS) async throws {
        try await ovs.addBridge(definition.bridge)
        // The bridge's own internal port: up, so the switch forwards (it carries no address).
        let existing = try await ovs.ports(bridge: definition.bridge)
        // An uplink Shepherd made that is no longer as wanted goes (also one whose members were
        // changed by hand: add-bond cannot change members in place); ports an operator added
        // (a mirror, a host address) are left alone.
        for port in existing where !port.interfaces.isEmpty && port.interfaces.allSatisfy({ $0.externalIDs[Self.uplinkID] != nil }) {
            let asWanted = port.name == definition.uplinkPort && Set(port.interfaces.map(\.name)) == Set(definition.uplinks.count > 1 ? definition.uplinks : [port.name])
            if !asWanted { try await ovs.deletePort(port.name, bridge: definition.bridge) }
        }
        for uplink in definition.uplinks where Net.linkExists(uplink) { try await Net.setLink(uplink, up: true) }
        if definition.uplinks.count > 1, let port = definition.uplinkPort {
            try await ovs.addBond(port, bridge: definition.bridge, members: definition.uplinks, mode: definition.bondMode.ovsMode,
                                  externalIDs: [Self.uplinkID: definition.dvs])
        } else if let port = definition.uplinkPort {
            try await ovs.addPort(port, bridge: definition.bridge, vlan: .init(tag: nil, trunks: []), externalIDs: [Self.uplinkID: definition.dvs])
        }
    }

    /// The external id marking the interfaces of an uplink Shepherd made.
    static let uplinkID = "shepherd-uplink"

    /// Removes a DVS bridge; refused while a VM NIC is on it.
    func remove(bridge: String) async throws {
        try Net.checkLinkName(bridge)
        if mode == "fake" {
            try wanted.withLock { list in
                list.removeAll { $0.bridge == bridge }
                try save(list)
            }
            return
        }
        let ovs = try requireOVS()
        if try await ovs.bridges().contains(bridge) {
            let nics = try await ovs.ports(bridge: bridge).filter { $0.interfaces.contains { $0.externalIDs["shepherd-nic"] != nil } }
            guard nics.isEmpty else {
                throw ShepherdError(.illegalState, "bridge \(bridge) still carries \(nics.count) VM NIC port(s): \(nics.map(\.name).joined(separator: ", "))")
            }
            try await ovs.deleteBridge(bridge)
        }
        try wanted.withLock { list in
            list.removeAll { $0.bridge == bridge }
            try save(list)
        }
    }

    /// Everything: OVS, the host's NICs, every bridge (wanted or found).
    func report() async -> AgentWire.HostNetwork {
        let nicNames = Set(defaultUplinks + wanted.withLock { $0.flatMap(\.uplinks) })
        let nics = nicNames.sorted().map { AgentWire.HostNIC(name: $0, state: mode == "fake" ? "up" : Net.operationalState($0) ?? "missing") }
        if mode == "fake" {
            return AgentWire.HostNetwork(ovs: "fake", ovsRunning: true, defaultUplinks: defaultUplinks, nics: nics,
                                         switches: wanted.withLock { $0 }.map(Self.fakeState))
        }
        guard let ovs else {
            return AgentWire.HostNetwork(ovs: "off", ovsRunning: false, defaultUplinks: defaultUplinks, nics: nics, switches: [])
        }
        guard ovs.isRunning, let bridges = try? await ovs.bridges() else {
            return AgentWire.HostNetwork(ovs: mode, ovsRunning: false, defaultUplinks: defaultUplinks, nics: nics,
                                         switches: wanted.withLock { $0 }.map { .init(wanted: $0, bridge: $0.bridge, exists: false, ports: []) })
        }
        var switches: [AgentWire.SwitchState] = []
        for bridge in Set(bridges + wanted.withLock { $0.map(\.bridge) }).sorted() {
            if let found = try? await state(bridge: bridge, on: ovs) { switches.append(found) }
        }
        return AgentWire.HostNetwork(ovs: mode, ovsRunning: true, defaultUplinks: defaultUplinks, nics: nics, switches: switches)
    }

    private func state(bridge: String, on ovs: OVS) async throws -> AgentWire.SwitchState {
        let definition = wanted.withLock { $0.first { $0.bridge == bridge } }
        guard try await ovs.bridges().contains(bridge) else {
            return AgentWire.SwitchState(wanted: definition, bridge: bridge, exists: false, ports: [])
        }
        let ports = try await ovs.ports(bridge: bridge).filter { $0.name != bridge }.map { port in
            AgentWire.SwitchPort(name: port.name, vlanTag: port.tag, trunks: port.trunks, bondMode: port.bondMode,
                                 members: port.interfaces.map { .init(name: $0.name, state: $0.linkUp ? "up" : "down") },
                                 nicID: port.interfaces.first?.externalIDs["shepherd-nic"], error: port.interfaces.compactMap(\.error).first)
        }
        return AgentWire.SwitchState(wanted: definition, bridge: bridge, exists: true, ports: ports)
    }

    private func save(_ list: [AgentWire.SwitchDefinition]) throws {
        try Files.writeAtomically(try JSONEncoder().encode(list), to: file, mode: 0o600)
    }
}
