import Foundation
import HostKit
import QMP
import ShepherdCore

/// A VM's NICs: virtio-net devices on persistent taps, each tap a port of its DVS's OVS bridge
/// with the port group's VLAN setting. The agent makes the tap and the port before QEMU opens
/// the tap and removes both after QEMU ends, so a port exists exactly while its VM runs here.
enum NICDevices {
    static func device(_ nic: AgentWire.NICDefinition) -> String { "nic-" + String(nic.id.prefix(8)) }
    static func netdev(_ nic: AgentWire.NICDefinition) -> String { "net-" + String(nic.id.prefix(8)) }

    /// `-netdev` and `-device` of the command line.
    static func arguments(_ nic: AgentWire.NICDefinition) -> [String] {
        ["-netdev", "tap,id=\(netdev(nic)),ifname=\(nic.tap),script=no,downscript=no", "-device", deviceOption(nic)]
    }

    /// Checksum offload off: with it, guest TCP over OVS's user-space datapath arrives with bad
    /// checksums (ICMP hides it).
    static func deviceOption(_ nic: AgentWire.NICDefinition) -> String {
        "virtio-net-pci,id=\(device(nic)),netdev=\(netdev(nic)),mac=\(nic.mac),csum=off,guest_csum=off,addr=0x\(String(nic.slot, radix: 16))"
    }

    static func deviceArguments(_ nic: AgentWire.NICDefinition) -> [String: JSONValue] {
        ["driver": "virtio-net-pci", "id": .string(device(nic)), "netdev": .string(netdev(nic)), "mac": .string(nic.mac),
         "csum": false, "guest_csum": false, "addr": .string("0x" + String(nic.slot, radix: 16))]
    }

    static func vlan(_ nic: AgentWire.NICDefinition) -> OVS.VLANSetting { OVS.VLANSetting(tag: nic.vlanTag, trunks: nic.trunks) }

    /// The NIC's meter id (and flow cookie) on its bridge: stable, from its id.
    static func meter(_ nic: AgentWire.NICDefinition) -> UInt32 { UInt32(truncatingIfNeeded: Files.stableHash(nic.id) % 0x7fff_fff0) + 1 }
}

extension GuestSupervisor {
    private func requireSwitch(for nics: [AgentWire.NICDefinition]) throws -> OVS {
        guard let network else {
            throw ShepherdError(.agentFailed, "'\(definition.name)' has \(nics.count) NIC(s) but this host runs no Open vSwitch (agent started with --ovs off)")
        }
        return network
    }

    /// Makes each NIC's tap and its port on the bridge (with VLAN, policing and the VM's ids).
    /// All or nothing: what this call made goes again on failure.
    func plugPorts(_ nics: [AgentWire.NICDefinition]) async throws {
        guard !nics.isEmpty else { return }
        let network = try requireSwitch(for: nics)
        var plugged: [AgentWire.NICDefinition] = []
        do {
            let bridges = try await network.bridges()
            for nic in nics {
                guard bridges.contains(nic.bridge) else {
                    throw ShepherdError(.preflightFailed, "NIC \(nic.name) of '\(definition.name)' needs bridge \(nic.bridge), which this host does not have (is the host on the NIC's DVS?)")
                }
                // Tap names are a hash of the NIC's id: never take over another NIC's.
                if Net.linkExists(nic.tap), let owner = (try? await network.externalID(of: nic.tap, key: "shepherd-nic")) ?? nil, owner != nic.id {
                    throw ShepherdError(.alreadyExists, "NIC \(nic.name) of '\(definition.name)' would use tap \(nic.tap), which another NIC (\(owner)) has on this host; remove the NIC and add it again (a new id, a new tap)")
                }
                try await Net.addTap(nic.tap)
                plugged.append(nic)
                try await network.addPort(nic.tap, bridge: nic.bridge, vlan: NICDevices.vlan(nic),
                                          externalIDs: ["shepherd-vm": id, "shepherd-nic": nic.id])
                if nic.rateMbit != nil { try await applyRate(nic, on: network) }
            }
        } catch {
            await unplugPorts(plugged)
            throw error
        }
    }

    /// The NIC's rate both ways: what the VM sends is policed by an OpenFlow meter as it enters
    /// the bridge, what it receives is shaped on its tap (the kernel queue OVS sends through).
    func applyRate(_ nic: AgentWire.NICDefinition, on network: OVS) async throws {
        try await network.setRateLimit(port: nic.tap, bridge: nic.bridge, id: NICDevices.meter(nic), kbps: nic.rateMbit.map { $0 * 1000 })
        try await Net.shape(nic.tap, mbit: nic.rateMbit)
    }

    /// Removes the NICs' ports and taps (gone already is fine).
    func unplugPorts(_ nics: [AgentWire.NICDefinition]) async {
        for nic in nics {
            if nic.rateMbit != nil, let network { try? await network.setRateLimit(port: nic.tap, bridge: nic.bridge, id: NICDevices.meter(nic), kbps: nil) }
            try? await network?.deletePort(nic.tap)
            try? await Net.deleteLink(nic.tap)
        }
    }

    /// After launch: NICs whose cable is unplugged say so to the guest.
    func applyLinkStates() async throws {
        for nic in definition.nics where !nic.linkUp {
            _ = try await qmp("set_link", ["name": .string(NICDevices.device(nic)), "up": false])
        }
    }

    /// Adds a NIC to the definition; a running VM gets it hot-plugged (and its address set
    /// through its tools). Nothing stays half-done on failure.
    func attach(_ nic: AgentWire.NICDefinition) async throws {
        guard !definition.nics.contains(where: { $0.id == nic.id }) else { return try await update(nic) }
        try await exclusive { me in
            if me.livePid() != nil {
                try await me.plugPorts([nic])
                do {
                    _ = try await me.qmp("netdev_add", ["type": "tap", "id": .string(NICDevices.netdev(nic)), "ifname": .string(nic.tap),
                                                        "script": "no", "downscript": "no"])
                    do {
                        _ = try await me.qmp("device_add", NICDevices.deviceArguments(nic))
                    } catch {
                        _ = try? await me.qmp("netdev_del", ["id": .string(NICDevices.netdev(nic))])
                        throw error
                    }
                } catch {
                    await me.unplugPorts([nic])
                    throw error
                }
                if !nic.linkUp { _ = try? await me.qmp("set_link", ["name": .string(NICDevices.device(nic)), "up": false]) }
            }
            var changed = me.definition
            changed.nics.append(nic)
            try me.redefine(changed)
        }
        if isRunning { await configureGuestNetworkSoon(only: nic.id) }
    }

    /// Removes a NIC; a running guest must release the device (ACPI) within `timeout`.
    func detach(nicID: String, timeout: Duration = .seconds(30)) async throws {
        guard let nic = definition.nics.first(where: { $0.id == nicID }) else { return }
        try await exclusive { me in
            if me.livePid() != nil {
                let device = NICDevices.device(nic)
                if try await me.qomExists("/machine/peripheral/\(device)") {
                    _ = try await me.qmp("device_del", ["id": .string(device)])
                    let started = ContinuousClock.now
                    while try await me.qomExists("/machine/peripheral/\(device)") {
                        guard ContinuousClock.now - started < timeout else {
                            throw ShepherdError(.timedOut, "the guest of '\(me.definition.name)' did not release NIC \(nic.name) within \(timeout.inSeconds) s (ACPI eject unanswered)")
                        }
                        try await Task.sleep(for: .milliseconds(200))
                    }
                }
                _ = try? await me.qmp("netdev_del", ["id": .string(NICDevices.netdev(nic))])
                await me.unplugPorts([nic])
            }
            var changed = me.definition
            changed.nics.removeAll { $0.id == nicID }
            try me.redefine(changed)
        }
    }

    /// A NIC's new settings (cable, VLAN, rate, address), live on a running VM.
    func update(_ nic: AgentWire.NICDefinition) async throws {
        guard let old = definition.nics.first(where: { $0.id == nic.id }) else {
            throw ShepherdError.notFound("NIC", nic.name)
        }
        guard old.mac == nic.mac, old.slot == nic.slot else {
            throw ShepherdError(.illegalState, "NIC \(nic.name): the MAC and slot of an existing NIC do not change")
        }
        try await exclusive { me in
            if me.livePid() != nil {
                let network = try me.requireSwitch(for: [nic])
                do {
                    try await me.applyLive(from: old, to: nic, on: network)
                } catch {
                    // Nothing half-done: the port, VLAN, rate and cable as they were.
                    try? await me.applyLive(from: nic, to: old, on: network, force: true)
                    throw error
                }
            }
            var changed = me.definition
            changed.nics = changed.nics.map { $0.id == nic.id ? nic : $0 }
            try me.redefine(changed)
        }
        if old.ip != nic.ip, isRunning { await configureGuestNetworkSoon(only: nic.id, removing: old.ip) }
    }

    /// Moves a running NIC's port, VLAN, rate and cable from `old` to `new` (`force`: every step, to undo).
    private func applyLive(from old: AgentWire.NICDefinition, to new: AgentWire.NICDefinition, on network: OVS, force: Bool = false) async throws {
        if old.bridge != new.bridge || force {
            if old.rateMbit != nil { try? await network.setRateLimit(port: old.tap, bridge: old.bridge, id: NICDevices.meter(old), kbps: nil) }
            if old.bridge != new.bridge { try await network.deletePort(new.tap) }
        }
        if old.bridge != new.bridge || NICDevices.vlan(old) != NICDevices.vlan(new) || force {
            try await network.addPort(new.tap, bridge: new.bridge, vlan: NICDevices.vlan(new), externalIDs: ["shepherd-vm": id, "shepherd-nic": new.id])
        }
        if old.rateMbit != new.rateMbit || old.bridge != new.bridge || force { try await applyRate(new, on: network) }
        if old.linkUp != new.linkUp || force {
            _ = try await qmp("set_link", ["name": .string(NICDevices.device(new)), "up": .bool(new.linkUp)])
        }
    }

    private func qomExists(_ path: String) async throws -> Bool {
        do {
            _ = try await QMP.execute(socketPath: qmpSocketPath, "qom-list", arguments: ["path": .string(path)], timeout: .seconds(5))
            return true
        } catch let error as QMPError where error.kind == .commandFailed {
            return false
        }
    }

    /// Sets the guest's addresses within the request when its tools answer in 10 s (so the task
    /// ends with the guest configured), else keeps trying in the background for a minute (a guest
    /// still booting, or slow to see a hot-plugged device).
    func configureGuestNetworkSoon(only nicID: String, removing: String? = nil) async {
        if await configureGuestNetwork(only: nicID, waitForTools: .seconds(10), removing: removing) { return }
        Task { await self.configureGuestNetwork(only: nicID, waitForTools: .seconds(60), removing: removing) }
    }

    /// Brings the guest's interfaces of the NICs up and adds their addresses through the tools
    /// (found by MAC) where the guest does not have them yet; `removing`: the address Shepherd set
    /// before goes. Never flushes: other addresses and the guest's routes stay. Quietly does
    /// nothing when the tools do not answer within `waitForTools`.
    @discardableResult
    func configureGuestNetwork(only nicID: String? = nil, waitForTools: Duration = .zero, removing: String? = nil) async -> Bool {
        let nics = definition.nics.filter { nicID == nil || $0.id == nicID }
        guard !nics.isEmpty else { return true }
        let started = ContinuousClock.now
        var interfaces: [JSONValue] = []
        while true {
            if let list = try? await guestAgentCommand("guest-network-get-interfaces", timeout: .seconds(5)).arrayValue,
               nics.allSatisfy({ nic in list.contains { $0["hardware-address"]?.stringValue?.lowercased() == nic.mac } }) {
                interfaces = list
                break
            }
            guard ContinuousClock.now - started < waitForTools else { return false }
            try? await Task.sleep(for: .milliseconds(500))
        }
        for nic in nics {
            guard let name = interfaces.first(where: { $0["hardware-address"]?.stringValue?.lowercased() == nic.mac })?["name"]?.stringValue,
                  name.allSatisfy({ $0.isLetter || $0.isNumber || "-_.".contains($0) }) else { continue }
            let has = Set((interfaces.first { $0["name"]?.stringValue == name }?["ip-addresses"]?.arrayValue ?? []).compactMap { entry -> String? in
                guard let address = entry["ip-address"]?.stringValue, let prefix = entry["prefix"]?.intValue else { return nil }
                return "\(address)/\(prefix)"
            })
            var commands = [["ip", "link", "set", "dev", name, "up"]]
            if let removing, removing != nic.ip, has.contains(removing) { commands.append(["ip", "addr", "del", removing, "dev", name]) }
            if let ip = nic.ip, !has.contains(ip) { commands.append(["ip", "addr", "add", ip, "dev", name]) }
            for command in commands { _ = try? await exec(command, timeoutSeconds: 5) }
        }
        return true
    }
}

extension QEMUDriver {
    public func attachNIC(_ vm: String, _ nic: AgentWire.NICDefinition) async throws { try await supervisor(vm).attach(nic) }
    public func detachNIC(_ vm: String, nicID: String) async throws { try await supervisor(vm).detach(nicID: nicID) }
}
