import Foundation
import ShepherdAPI
import ShepherdCore

/// The networking handlers: distributed virtual switches, port groups, NICs, diagnosis.
extension API {
    func listDVS(_ input: Operations.ListDVS.Input) async throws -> Operations.ListDVS.Output {
        let views = try await guarded { try await network.list() }
        return .ok(.init(body: .json(views.map(Self.dvs))))
    }

    func createDVS(_ input: Operations.CreateDVS.Input) async throws -> Operations.CreateDVS.Output {
        guard case .json(let body) = input.body else { throw unsupportedBody }
        var uplinks: [String: [String]] = [:]
        for spec in body.uplinks ?? [] {
            guard uplinks[spec.host] == nil else { throw ShepherdError.invalidField("uplinks", "host '\(spec.host)' is listed twice") }
            uplinks[spec.host] = spec.nics
        }
        let view = try await guarded {
            try await network.create(.init(name: body.name, cluster: body.cluster, hosts: body.hosts, uplinks: uplinks,
                                           bondMode: body.bondMode.flatMap { BondMode(rawValue: $0.rawValue) }))
        }
        return .created(.init(body: .json(Self.dvs(view))))
    }

    func getDVS(_ input: Operations.GetDVS.Input) async throws -> Operations.GetDVS.Output {
        let view = try await guarded { try await network.show(input.path.dvs) }
        return .ok(.init(body: .json(Self.dvs(view))))
    }

    func deleteDVS(_ input: Operations.DeleteDVS.Input) async throws -> Operations.DeleteDVS.Output {
        try await guarded { try await network.delete(input.path.dvs) }
        return .noContent(.init())
    }

    func addDVSHost(_ input: Operations.AddDVSHost.Input) async throws -> Operations.AddDVSHost.Output {
        guard case .json(let body) = input.body else { throw unsupportedBody }
        let view = try await guarded { try await network.addHost(input.path.dvs, host: body.host, uplinks: body.uplinks) }
        return .ok(.init(body: .json(Self.dvs(view))))
    }

    func listPortGroups(_ input: Operations.ListPortGroups.Input) async throws -> Operations.ListPortGroups.Output {
        let views = try await guarded { try await network.listPortGroups(dvs: input.query.dvs) }
        return .ok(.init(body: .json(views.map(Self.portGroup))))
    }

    func createPortGroup(_ input: Operations.CreatePortGroup.Input) async throws -> Operations.CreatePortGroup.Output {
        guard case .json(let body) = input.body else { throw unsupportedBody }
        let view = try await guarded { try await network.createPortGroup(dvs: input.path.dvs, name: body.name, vlan: body.vlan, trunks: body.trunks) }
        return .created(.init(body: .json(Self.portGroup(view))))
    }

    func deletePortGroup(_ input: Operations.DeletePortGroup.Input) async throws -> Operations.DeletePortGroup.Output {
        try await guarded { try await network.deletePortGroup(input.path.portgroup) }
        return .noContent(.init())
    }

    func listNICs(_ input: Operations.ListNICs.Input) async throws -> Operations.ListNICs.Output {
        let views = try await guarded { try await network.listNICs(vm: input.path.vm) }
        return .ok(.init(body: .json(views.map(Self.nic))))
    }

    func addNIC(_ input: Operations.AddNIC.Input) async throws -> Operations.AddNIC.Output {
        guard case .json(let body) = input.body else { throw unsupportedBody }
        let task = try await guarded {
            try await network.addNIC(vm: input.path.vm, .init(portGroup: body.portGroup, ip: body.ip.map { $0 }, mac: body.mac, rate: body.rate.map { $0 }))
        }
        return .accepted(.init(body: .json(Self.task(task))))
    }

    func updateNIC(_ input: Operations.UpdateNIC.Input) async throws -> Operations.UpdateNIC.Output {
        guard case .json(let body) = input.body else { throw unsupportedBody }
        let task = try await guarded {
            try await network.updateNIC(vm: input.path.vm, nic: input.path.nic,
                                        .init(portGroup: body.portGroup, ip: body.ip.map { $0.isEmpty ? nil : $0 }, mac: body.mac,
                                              rate: body.rate.map { $0 == "none" ? nil : $0 }, linkUp: body.link.map { $0 == .up }))
        }
        return .accepted(.init(body: .json(Self.task(task))))
    }

    func removeNIC(_ input: Operations.RemoveNIC.Input) async throws -> Operations.RemoveNIC.Output {
        let task = try await guarded { try await network.removeNIC(vm: input.path.vm, nic: input.path.nic) }
        return .accepted(.init(body: .json(Self.task(task))))
    }

    func diagnoseNetwork(_ input: Operations.DiagnoseNetwork.Input) async throws -> Operations.DiagnoseNetwork.Output {
        let (from, to, result) = try await guarded { try await network.diagnose(input.query.from, input.query.to) }
        return .ok(.init(body: .json(Schemas.Diagnosis(
            from: from, to: to, healthy: result.healthy, verdict: result.verdict,
            hops: result.hops.map { hop in
                Schemas.DiagnosisHop(name: hop.name, vm: hop.vm, host: hop.host,
                                     status: Schemas.DiagnosisHop.StatusPayload(rawValue: hop.status.rawValue) ?? .fail, evidence: hop.evidence)
            }))))
    }

    static func dvs(_ view: DVSView) -> Schemas.Dvs {
        Schemas.Dvs(id: view.dvs.id, name: view.dvs.name, cluster: view.cluster, bridge: view.dvs.bridge,
                    bondMode: Schemas.BondMode(rawValue: view.dvs.bondMode) ?? .activeBackup, portGroups: view.portGroups,
                    hosts: view.hosts.map { host in
                        Schemas.DVSHost(host: host.host, uplinks: host.uplinks, bond: host.bond,
                                        state: Schemas.DVSHost.StatePayload(rawValue: host.state) ?? .unknown, differences: host.differences,
                                        members: host.members.map { Schemas.HostNICState(name: $0.name, state: $0.state) })
                    })
    }

    static func portGroup(_ view: PortGroupView) -> Schemas.PortGroup {
        let group = view.portGroup
        return Schemas.PortGroup(id: group.id, name: group.name, dvs: view.dvs, kind: group.vlan == nil ? .trunk : .access,
                                 vlan: group.vlan, trunks: group.trunks, nics: view.nics)
    }

    static func nic(_ view: NICView) -> Schemas.Nic {
        let nic = view.nic
        return Schemas.Nic(id: nic.id, name: nic.name, vm: view.vm, portGroup: view.portGroup, dvs: view.dvs, mac: nic.mac, ip: nic.ip,
                           rateMbit: nic.rateMbit, link: nic.linkUp ? .up : .down, slot: nic.slot, tap: Networking.tapName(nicID: nic.id))
    }
}
