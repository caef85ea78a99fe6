import Foundation
import HostKit
import QMP
import QemuImg
import ShepherdCore

/// Storage live migration on one host: a mirror job copies a running disk to a new image while
/// new writes land on both; completing it switches the guest over, cancelling leaves the guest on
/// its source. Stateless between calls: the job id names the target node, so an agent restart
/// in between loses nothing.
extension GuestSupervisor {
    static func mirrorTargetNode(job: String) -> String { "t" + job.filter { $0.isNumber } }

    func startMirror(_ request: AgentWire.MirrorRequest) async throws -> AgentWire.MirrorStatus {
        try await exclusive { me in
            guard me.livePid() != nil else { throw ShepherdError(.illegalState, "VM '\(me.definition.name)' does not run here") }
            let sourceNode = try await me.formatNode(file: request.source)
            let size = try await QemuImg.info(path: request.source).virtualSize
            guard !FileManager.default.fileExists(atPath: request.target) else {
                throw ShepherdError(.alreadyExists, "'\(request.target)' exists already on this host")
            }
            try Files.ensureDirectory((request.target as NSString).deletingLastPathComponent, mode: 0o755)
            try await QemuImg.create(path: request.target, bytes: size, preallocation: request.type.preallocation,
                                     timeout: .seconds(60 + 10 * Int(size >> 30)))
            let job = "mirror-\(UInt32.random(in: 0...UInt32.max))"
            let targetNode = Self.mirrorTargetNode(job: job)
            do {
                _ = try await me.qmp("blockdev-add", ["driver": "qcow2", "node-name": .string(targetNode),
                                                      "file": ["driver": "file", "filename": .string(request.target)]])
                do {
                    var arguments: [String: JSONValue] = ["job-id": .string(job), "device": .string(sourceNode), "target": .string(targetNode),
                                                          "sync": "full", "auto-dismiss": false,
                                                          // Bigger buffers than QEMU's default: fewer, larger copies.
                                                          "buf-size": .number(Double(64 << 20))]
                    if let speed = request.maxBytesPerSecond { arguments["speed"] = .number(Double(speed)) }
                    _ = try await me.qmp("blockdev-mirror", arguments)
                } catch {
                    _ = try? await me.qmp("blockdev-del", ["node-name": .string(targetNode)])
                    throw error
                }
            } catch {
                try? FileManager.default.removeItem(atPath: request.target)
                throw error
            }
            return try await me.mirrorStatus(job: job)
        }
    }

    /// Whole-VM migration, source side: mirror a disk into the target's NBD export. Write-blocking:
    /// once in sync every guest write reaches both sides before it completes, so the target is
    /// complete the moment the source stops.
    func startNBDMirror(_ request: AgentWire.NBDMirrorRequest) async throws -> AgentWire.MirrorStatus {
        try await exclusive { me in
            guard me.livePid() != nil else { throw ShepherdError(.illegalState, "VM '\(me.definition.name)' does not run here") }
            let parts = request.server.split(separator: ":")
            guard parts.count == 2 else { throw ShepherdError.invalidField("server", "'\(request.server)' must be HOST:PORT") }
            let sourceNode = try await me.formatNode(file: request.source)
            let job = "mirror-\(UInt32.random(in: 0...UInt32.max))"
            let targetNode = Self.mirrorTargetNode(job: job)
            _ = try await me.qmp("blockdev-add", ["driver": "nbd", "node-name": .string(targetNode), "export": .string(request.export),
                                                  "server": ["type": "inet", "host": .string(String(parts[0])), "port": .string(String(parts[1]))]],
                                 timeout: .seconds(15))
            do {
                _ = try await me.qmp("blockdev-mirror", ["job-id": .string(job), "device": .string(sourceNode), "target": .string(targetNode),
                                                         "sync": "full", "auto-dismiss": false, "copy-mode": "write-blocking",
                                                         "buf-size": .number(Double(64 << 20))])
            } catch {
                _ = try? await me.qmp("blockdev-del", ["node-name": .string(targetNode)])
                throw error
            }
            return try await me.mirrorStatus(job: job)
        }
    }

    /// Ends an NBD mirror without switching (the target holds the copy); the source keeps its disk.
    func endNBDMirror(job: String) async throws {
        try await exclusive { me in
            if (try? await me.mirrorStatus(job: job)) != nil {
                _ = try? await me.qmp("job-cancel", ["id": .string(job)])
                let outcome = try await me.waitConcluded(job: job)
                if let error = outcome.error, !error.lowercased().contains("cancel") {
                    throw ShepherdError(.agentFailed, "the disk mirror \(job) of '\(me.definition.name)' ended with an error: \(error)")
                }
            }
            _ = try? await me.qmp("blockdev-del", ["node-name": .string(Self.mirrorTargetNode(job: job))])
        }
    }

    func mirrorStatus(job: String) async throws -> AgentWire.MirrorStatus {
        let jobs = try await qmp("query-jobs").arrayValue ?? []
        guard let entry = jobs.first(where: { $0["id"]?.stringValue == job }) else {
            throw ShepherdError(.notFound, "no block job '\(job)' on '\(definition.name)'")
        }
        return AgentWire.MirrorStatus(job: job, status: entry["status"]?.stringValue ?? "unknown",
                                      copiedBytes: Int64(entry["current-progress"]?.doubleValue ?? 0),
                                      totalBytes: Int64(entry["total-progress"]?.doubleValue ?? 0),
                                      error: entry["error"]?.stringValue)
    }

    /// Switches the guest to the target (the mirror must be ready) and forgets the source node.
    func completeMirror(job: String, _ request: AgentWire.MirrorRequest) async throws {
        try await exclusive { me in
            let sourceNode = try? await me.formatNode(file: request.source)
            _ = try await me.qmp("job-complete", ["id": .string(job)])
            let outcome = try await me.waitConcluded(job: job)
            if let error = outcome.error { throw ShepherdError(.agentFailed, "the switch to '\(request.target)' failed: \(error)") }
            if let sourceNode { _ = try? await me.qmp("blockdev-del", ["node-name": .string(sourceNode)]) }
            try me.repoint([request.source: request.target])
        }
    }

    /// Stops the mirror without switching; the guest stays on its source and the target goes.
    func cancelMirror(job: String, _ request: AgentWire.MirrorRequest) async throws {
        try await exclusive { me in
            if (try? await me.mirrorStatus(job: job)) != nil {
                _ = try? await me.qmp("job-cancel", ["id": .string(job)])
                _ = try await me.waitConcluded(job: job)
            }
            _ = try? await me.qmp("blockdev-del", ["node-name": .string(Self.mirrorTargetNode(job: job))])
            try? FileManager.default.removeItem(atPath: request.target)
        }
    }

    func waitConcluded(job: String, timeout: Duration = .seconds(60)) async throws -> AgentWire.MirrorStatus {
        let started = ContinuousClock.now
        while true {
            let status = try await mirrorStatus(job: job)
            if status.status == "concluded" || status.status == "null" {
                _ = try? await qmp("job-dismiss", ["id": .string(job)])
                return status
            }
            guard ContinuousClock.now - started < timeout else {
                throw ShepherdError(.timedOut, "block job '\(job)' of '\(definition.name)' did not conclude within \(timeout.inSeconds) s (it is \(status.status))")
            }
            try await Task.sleep(for: .milliseconds(100))
        }
    }
}

extension QEMUDriver {
    public func startMirror(_ vm: String, _ request: AgentWire.MirrorRequest) async throws -> AgentWire.MirrorStatus {
        try await supervisor(vm).startMirror(request)
    }
    public func mirrorStatus(_ vm: String, job: String) async throws -> AgentWire.MirrorStatus { try await supervisor(vm).mirrorStatus(job: job) }
    public func completeMirror(_ vm: String, job: String, _ request: AgentWire.MirrorRequest) async throws {
        try await supervisor(vm).completeMirror(job: job, request)
    }
    public func cancelMirror(_ vm: String, job: String, _ request: AgentWire.MirrorRequest) async throws {
        try await supervisor(vm).cancelMirror(job: job, request)
    }

    public func startNBDMirror(_ vm: String, _ request: AgentWire.NBDMirrorRequest) async throws -> AgentWire.MirrorStatus {
        try await supervisor(vm).startNBDMirror(request)
    }
    public func endNBDMirror(_ vm: String, job: String) async throws { try await supervisor(vm).endNBDMirror(job: job) }

    public func convertDisk(_ request: AgentWire.ConvertRequest) async throws -> AgentWire.DiskImage {
        guard !FileManager.default.fileExists(atPath: request.target) else {
            throw ShepherdError(.alreadyExists, "'\(request.target)' exists already on this host")
        }
        try Files.ensureDirectory((request.target as NSString).deletingLastPathComponent, mode: 0o755)
        let partial = request.target + ".partial"
        do {
            try await QemuImg.convert(source: request.source, destination: partial, preallocation: request.type.preallocation)
            try FileManager.default.moveItem(atPath: partial, toPath: request.target)
        } catch {
            try? FileManager.default.removeItem(atPath: partial)
            throw error
        }
        return try await diskImage(path: request.target)
    }
}
