import AsyncHTTPClient
import Foundation
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import ShepherdCore

/// The manager's side of the manager→agent API: JSON over HTTP with the host's own bearer token.
/// Every call has a timeout; failures become `agent_unreachable` or the agent's own error.
final class AgentClient: Sendable {
    private let http: HTTPClient

    init(http: HTTPClient = .shared) { self.http = http }

    /// Where and how to reach one agent.
    struct Endpoint: Sendable {
        var hostName: String
        var address: String
        var token: String
    }

    func define(_ endpoint: Endpoint, _ definition: AgentWire.VMDefinition) async throws -> AgentWire.GuestStatus {
        try await call(endpoint, .PUT, "/agent/v1/vms/\(definition.id)", body: definition, timeout: .seconds(300))
    }

    func status(_ endpoint: Endpoint, vm: String) async throws -> AgentWire.GuestStatus {
        try await call(endpoint, .GET, "/agent/v1/vms/\(vm)", body: Optional<AgentWire.PowerRequest>.none, timeout: .seconds(10))
    }

    func definition(_ endpoint: Endpoint, vm: String) async throws -> AgentWire.VMDefinition {
        try await call(endpoint, .GET, "/agent/v1/vms/\(vm)/definition", body: Optional<AgentWire.PowerRequest>.none, timeout: .seconds(10))
    }

    func start(_ endpoint: Endpoint, vm: String) async throws -> AgentWire.GuestStatus {
        try await call(endpoint, .POST, "/agent/v1/vms/\(vm)/start", body: Optional<AgentWire.PowerRequest>.none, timeout: .seconds(60))
    }

    func stop(_ endpoint: Endpoint, vm: String, force: Bool) async throws -> AgentWire.GuestStatus {
        try await call(endpoint, .POST, "/agent/v1/vms/\(vm)/stop", body: AgentWire.PowerRequest(force: force), timeout: .seconds(30))
    }

    func reboot(_ endpoint: Endpoint, vm: String, force: Bool) async throws -> AgentWire.GuestStatus {
        try await call(endpoint, .POST, "/agent/v1/vms/\(vm)/reboot", body: AgentWire.PowerRequest(force: force), timeout: .seconds(30))
    }

    func delete(_ endpoint: Endpoint, vm: String) async throws {
        let _: AgentWire.GuestStatus = try await call(endpoint, .DELETE, "/agent/v1/vms/\(vm)", body: Optional<AgentWire.PowerRequest>.none, timeout: .seconds(60))
    }

    func exec(_ endpoint: Endpoint, vm: String, _ request: AgentWire.ExecRequest) async throws -> AgentWire.ExecResult {
        try await call(endpoint, .POST, "/agent/v1/vms/\(vm)/exec", body: request, timeout: .seconds(Int64(request.timeoutSeconds) + 10))
    }

    func prepareIncoming(_ endpoint: Endpoint, _ request: AgentWire.IncomingRequest) async throws -> AgentWire.IncomingAnswer {
        try await call(endpoint, .POST, "/agent/v1/incoming", body: request, timeout: .seconds(300))
    }

    func migrate(_ endpoint: Endpoint, vm: String, _ request: AgentWire.MigrateRequest) async throws {
        let _: AgentWire.Done = try await call(endpoint, .POST, "/agent/v1/vms/\(vm)/migrate", body: request, timeout: .seconds(30))
    }

    func migrationProgress(_ endpoint: Endpoint, vm: String) async throws -> AgentWire.MigrationProgress {
        try await call(endpoint, .GET, "/agent/v1/vms/\(vm)/migration", body: Optional<AgentWire.Done>.none, timeout: .seconds(10))
    }

    func startPostcopy(_ endpoint: Endpoint, vm: String) async throws {
        let _: AgentWire.Done = try await call(endpoint, .POST, "/agent/v1/vms/\(vm)/migration/postcopy", body: Optional<AgentWire.Done>.none, timeout: .seconds(10))
    }

    func cancelMigration(_ endpoint: Endpoint, vm: String) async throws {
        let _: AgentWire.Done = try await call(endpoint, .POST, "/agent/v1/vms/\(vm)/migration/cancel", body: Optional<AgentWire.Done>.none, timeout: .seconds(20))
    }

    func release(_ endpoint: Endpoint, vm: String) async throws {
        let _: AgentWire.Done = try await call(endpoint, .POST, "/agent/v1/vms/\(vm)/release", body: Optional<AgentWire.Done>.none, timeout: .seconds(30))
    }

    func syncClock(_ endpoint: Endpoint, vm: String) async throws {
        let _: AgentWire.Done = try await call(endpoint, .POST, "/agent/v1/vms/\(vm)/clock", body: Optional<AgentWire.Done>.none, timeout: .seconds(10))
    }

    func probe(_ endpoint: Endpoint, address: String, port: Int) async throws -> AgentWire.ProbeAnswer {
        try await call(endpoint, .POST, "/agent/v1/probe", body: AgentWire.ProbeRequest(address: address, port: port), timeout: .seconds(10))
    }

    /// Every storage lease the agent sees on its shared datastores, with its age.
    func leases(_ endpoint: Endpoint) async throws -> [AgentWire.Lease] {
        try await call(endpoint, .GET, "/agent/v1/leases", body: Optional<AgentWire.Done>.none, timeout: .seconds(10))
    }

    // MARK: datastores

    func mountDatastore(_ endpoint: Endpoint, _ request: AgentWire.DatastoreMountRequest) async throws -> AgentWire.DatastoreSpace {
        try await call(endpoint, .POST, "/agent/v1/datastores", body: request, timeout: .seconds(20))
    }

    func unmountDatastore(_ endpoint: Endpoint, name: String) async throws {
        let _: AgentWire.Done = try await call(endpoint, .DELETE, "/agent/v1/datastores/\(name)", body: Optional<AgentWire.Done>.none, timeout: .seconds(20))
    }

    // MARK: disks

    func createDisk(_ endpoint: Endpoint, _ request: AgentWire.DiskCreateRequest) async throws -> AgentWire.DiskImage {
        // Eager zeroing writes every byte; the agent's own qemu-img timeout is a minute plus 10 s a GiB.
        try await call(endpoint, .POST, "/agent/v1/disks/create", body: request, timeout: .seconds(90 + 10 * (request.sizeBytes >> 30)))
    }

    func diskImage(_ endpoint: Endpoint, path: String) async throws -> AgentWire.DiskImage {
        try await call(endpoint, .POST, "/agent/v1/disks/info", body: AgentWire.DiskPathRequest(path: path), timeout: .seconds(40))
    }

    func deleteDisk(_ endpoint: Endpoint, path: String) async throws {
        let _: AgentWire.Done = try await call(endpoint, .POST, "/agent/v1/disks/delete", body: AgentWire.DiskPathRequest(path: path), timeout: .seconds(30))
    }

    func resizeDisk(_ endpoint: Endpoint, path: String, sizeBytes: Int64) async throws -> AgentWire.DiskImage {
        try await call(endpoint, .POST, "/agent/v1/disks/resize", body: AgentWire.DiskPathRequest(path: path, sizeBytes: sizeBytes), timeout: .seconds(90))
    }

    func attachDisk(_ endpoint: Endpoint, vm: String, _ disk: AgentWire.DiskDefinition) async throws {
        let _: AgentWire.Done = try await call(endpoint, .POST, "/agent/v1/vms/\(vm)/disks", body: disk, timeout: .seconds(60))
    }

    func network(_ endpoint: Endpoint) async throws -> AgentWire.HostNetwork {
        try await call(endpoint, .GET, "/agent/v1/network", body: Optional<AgentWire.Done>.none, timeout: .seconds(20))
    }

    func applySwitch(_ endpoint: Endpoint, _ definition: AgentWire.SwitchDefinition) async throws -> AgentWire.SwitchState {
        try await call(endpoint, .PUT, "/agent/v1/network/switches/\(definition.bridge)", body: definition, timeout: .seconds(60))
    }

    func removeSwitch(_ endpoint: Endpoint, bridge: String) async throws {
        let _: AgentWire.Done = try await call(endpoint, .DELETE, "/agent/v1/network/switches/\(bridge)", body: Optional<AgentWire.Done>.none, timeout: .seconds(60))
    }

    /// Adds or updates a NIC; the agent waits up to 10 s for the guest's tools to set its address
    /// (then goes on in the background), each guest command at most 5 s.
    func putNIC(_ endpoint: Endpoint, vm: String, _ nic: AgentWire.NICDefinition) async throws {
        let _: AgentWire.Done = try await call(endpoint, .PUT, "/agent/v1/vms/\(vm)/nics/\(nic.id)", body: nic, timeout: .seconds(90))
    }

    func removeNIC(_ endpoint: Endpoint, vm: String, nicID: String) async throws {
        let _: AgentWire.Done = try await call(endpoint, .DELETE, "/agent/v1/vms/\(vm)/nics/\(nicID)", body: Optional<AgentWire.Done>.none, timeout: .seconds(45))
    }

    /// The guest has 30 s to release the disk (ACPI eject).
    func detachDisk(_ endpoint: Endpoint, vm: String, diskID: String) async throws {
        let _: AgentWire.Done = try await call(endpoint, .DELETE, "/agent/v1/vms/\(vm)/disks/\(diskID)", body: Optional<AgentWire.Done>.none, timeout: .seconds(45))
    }

    func resizeAttachedDisk(_ endpoint: Endpoint, vm: String, diskID: String, sizeBytes: Int64) async throws {
        let _: AgentWire.Done = try await call(endpoint, .POST, "/agent/v1/vms/\(vm)/disks/\(diskID)/resize",
                                               body: AgentWire.DiskResizeRequest(sizeBytes: sizeBytes), timeout: .seconds(60))
    }

    func trim(_ endpoint: Endpoint, vm: String) async throws -> AgentWire.TrimAnswer {
        try await call(endpoint, .POST, "/agent/v1/vms/\(vm)/trim", body: Optional<AgentWire.Done>.none, timeout: .seconds(150))
    }

    func compactDisk(_ endpoint: Endpoint, path: String) async throws -> AgentWire.DiskImage {
        try await call(endpoint, .POST, "/agent/v1/disks/compact", body: AgentWire.DiskPathRequest(path: path), timeout: .seconds(660))
    }

    // MARK: snapshots

    func snapshot(_ endpoint: Endpoint, vm: String, _ request: AgentWire.SnapshotRequest) async throws -> AgentWire.SnapshotAnswer {
        try await call(endpoint, .POST, "/agent/v1/vms/\(vm)/snapshot", body: request, timeout: .seconds(90))
    }

    /// Hot-plugging vCPUs and waiting for the guest to bring them online: up to 30 s.
    func resize(_ endpoint: Endpoint, vm: String, _ request: AgentWire.ResizeRequest) async throws -> AgentWire.ResizeAnswer {
        try await call(endpoint, .POST, "/agent/v1/vms/\(vm)/resize", body: request, timeout: .seconds(45))
    }

    func setBalloon(_ endpoint: Endpoint, vm: String, targetMiB: Int) async throws {
        let _: AgentWire.Done = try await call(endpoint, .POST, "/agent/v1/vms/\(vm)/balloon", body: AgentWire.BalloonRequest(targetMiB: targetMiB), timeout: .seconds(10))
    }

    /// Saving RAM goes at disk speed: up to 5 minutes (the agent's own limit), plus a margin.
    func hibernate(_ endpoint: Endpoint, vm: String, file: String) async throws {
        let _: AgentWire.Done = try await call(endpoint, .POST, "/agent/v1/vms/\(vm)/hibernate", body: AgentWire.StateFileRequest(file: file), timeout: .seconds(330))
    }

    func resumeHibernated(_ endpoint: Endpoint, vm: String, file: String) async throws -> AgentWire.GuestStatus {
        try await call(endpoint, .POST, "/agent/v1/vms/\(vm)/resume", body: AgentWire.StateFileRequest(file: file), timeout: .seconds(210))
    }

    func revert(_ endpoint: Endpoint, vm: String, _ request: AgentWire.RevertRequest) async throws {
        let _: AgentWire.Done = try await call(endpoint, .POST, "/agent/v1/vms/\(vm)/revert", body: request, timeout: .seconds(120))
    }

    /// Merges copy data: up to 15 minutes (the agent's own limit), plus a margin.
    func merge(_ endpoint: Endpoint, vm: String, _ request: AgentWire.MergeRequest) async throws {
        let _: AgentWire.Done = try await call(endpoint, .POST, "/agent/v1/vms/\(vm)/merge", body: request, timeout: .seconds(960))
    }

    // MARK: storage migration

    func startMirror(_ endpoint: Endpoint, vm: String, _ request: AgentWire.MirrorRequest) async throws -> AgentWire.MirrorStatus {
        try await call(endpoint, .POST, "/agent/v1/vms/\(vm)/mirrors", body: request, timeout: .seconds(120))
    }

    func mirrorStatus(_ endpoint: Endpoint, vm: String, job: String) async throws -> AgentWire.MirrorStatus {
        try await call(endpoint, .GET, "/agent/v1/vms/\(vm)/mirrors/\(job)", body: Optional<AgentWire.Done>.none, timeout: .seconds(10))
    }

    func completeMirror(_ endpoint: Endpoint, vm: String, job: String, _ request: AgentWire.MirrorRequest) async throws {
        let _: AgentWire.Done = try await call(endpoint, .POST, "/agent/v1/vms/\(vm)/mirrors/\(job)/complete", body: request, timeout: .seconds(90))
    }

    func cancelMirror(_ endpoint: Endpoint, vm: String, job: String, _ request: AgentWire.MirrorRequest) async throws {
        let _: AgentWire.Done = try await call(endpoint, .POST, "/agent/v1/vms/\(vm)/mirrors/\(job)/cancel", body: request, timeout: .seconds(90))
    }

    func startNBDMirror(_ endpoint: Endpoint, vm: String, _ request: AgentWire.NBDMirrorRequest) async throws -> AgentWire.MirrorStatus {
        try await call(endpoint, .POST, "/agent/v1/vms/\(vm)/nbd-mirrors", body: request, timeout: .seconds(60))
    }

    func endNBDMirror(_ endpoint: Endpoint, vm: String, job: String) async throws {
        let _: AgentWire.Done = try await call(endpoint, .POST, "/agent/v1/vms/\(vm)/nbd-mirrors/\(job)/end", body: Optional<AgentWire.Done>.none, timeout: .seconds(90))
    }

    func resumeIncoming(_ endpoint: Endpoint, vm: String) async throws {
        let _: AgentWire.Done = try await call(endpoint, .POST, "/agent/v1/vms/\(vm)/incoming/resume", body: Optional<AgentWire.Done>.none, timeout: .seconds(45))
    }

    func convertDisk(_ endpoint: Endpoint, _ request: AgentWire.ConvertRequest) async throws -> AgentWire.DiskImage {
        try await call(endpoint, .POST, "/agent/v1/disks/convert", body: request, timeout: .seconds(1800))
    }

    private func call<Body: Encodable, Answer: Decodable>(
        _ endpoint: Endpoint, _ method: HTTPMethod, _ path: String, body: Body?, timeout: TimeAmount
    ) async throws -> Answer {
        var request = HTTPClientRequest(url: endpoint.address + path)
        request.method = method
        request.headers.add(name: "Authorization", value: "Bearer \(endpoint.token)")
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(data: try JSONEncoder().encode(body)))
        }
        let response: HTTPClientResponse
        let bytes: ByteBuffer
        do {
            response = try await http.execute(request, timeout: timeout)
            bytes = try await response.body.collect(upTo: 64 << 20)
        } catch {
            throw ShepherdError(.agentUnreachable, "the agent of host '\(endpoint.hostName)' at \(endpoint.address) did not answer \(method) \(path) within \(timeout.nanoseconds / 1_000_000_000) s: \(error)")
        }
        let data = Data(buffer: bytes)
        guard (200..<300).contains(Int(response.status.code)) else {
            if let body = try? JSONDecoder().decode(ErrorBody.self, from: data) {
                let code = ShepherdError.Code(rawValue: body.code) ?? .agentFailed
                throw ShepherdError(code, "host '\(endpoint.hostName)': \(body.message)")
            }
            throw ShepherdError(.agentFailed, "host '\(endpoint.hostName)' answered \(response.status.code) to \(method) \(path)")
        }
        do {
            return try JSONDecoder().decode(Answer.self, from: data)
        } catch {
            throw ShepherdError(.agentFailed, "host '\(endpoint.hostName)' answered \(method) \(path) with an unreadable body: \(error)")
        }
    }
}
