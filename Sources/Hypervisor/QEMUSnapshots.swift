import Foundation
import HostKit
import QMP
import QemuImg
import ShepherdCore

/// External snapshots on one host: freeze the active images under new overlays (one QMP
/// transaction for all disks of a running VM), revert by a fresh overlay on a snapshot's image,
/// and merge a deleted snapshot's image into the images above it (block-stream live, qemu-img
/// rebase offline).
extension GuestSupervisor {
    func snapshot(_ request: AgentWire.SnapshotRequest) async throws -> AgentWire.SnapshotAnswer {
        try await exclusive { me in
            if me.livePid() != nil {
                let frozen: Int?
                if let memory = request.memoryFile {
                    try await me.pausedSnapshot(request, memoryFile: memory)
                    frozen = nil
                } else {
                    frozen = try await me.liveSnapshot(request)
                }
                try me.repoint(Dictionary(uniqueKeysWithValues: request.layers.map { ($0.active, $0.overlay) }))
                return AgentWire.SnapshotAnswer(live: true, frozenFileSystems: frozen)
            }
            try await Self.createOverlays(request.layers.map { ($0.overlay, $0.active) })
            try me.repoint(Dictionary(uniqueKeysWithValues: request.layers.map { ($0.active, $0.overlay) }))
            return AgentWire.SnapshotAnswer(live: false, frozenFileSystems: nil)
        }
    }

    /// All disks in one transaction, so the snapshot is one moment for every disk; with quiesce
    /// the guest's file systems are frozen around it (and always thawed).
    private func liveSnapshot(_ request: AgentWire.SnapshotRequest) async throws -> Int? {
        let actions = try await snapshotActions(request.layers)
        var frozen: Int?
        if request.quiesce {
            let answer = try await guestAgentCommand("guest-fsfreeze-freeze", timeout: .seconds(20))
            frozen = answer.intValue ?? 0
        }
        do {
            _ = try await qmp("transaction", ["actions": .array(actions)], timeout: .seconds(30))
        } catch {
            if frozen != nil { _ = try? await guestAgentCommand("guest-fsfreeze-thaw", timeout: .seconds(20)) }
            for layer in request.layers { try? FileManager.default.removeItem(atPath: layer.overlay) }
            throw error
        }
        if frozen != nil { _ = try await guestAgentCommand("guest-fsfreeze-thaw", timeout: .seconds(20)) }
        return frozen
    }

    /// A memory snapshot: the guest pauses, its disks freeze in one transaction, its RAM and
    /// device state go to `memoryFile`, and it runs on. Nothing is written to the disks while
    /// paused, so the saved state and the frozen images are the same moment.
    private func pausedSnapshot(_ request: AgentWire.SnapshotRequest, memoryFile: String) async throws {
        try SnapshotTree.checkMemoryPath(memoryFile)
        let actions = try await snapshotActions(request.layers)
        _ = try await qmp("stop")
        do {
            _ = try await qmp("transaction", ["actions": .array(actions)], timeout: .seconds(30))
        } catch {
            for layer in request.layers { try? FileManager.default.removeItem(atPath: layer.overlay) }
            _ = try? await qmp("cont")
            throw error
        }
        do {
            try await saveState(to: memoryFile)
        } catch {
            // The disks are frozen already: the snapshot stands without its memory; the caller
            // reports the failure and the guest runs on.
            try? FileManager.default.removeItem(atPath: memoryFile)
            _ = try? await qmp("cont")
            throw error
        }
        // cont re-activates the block devices the completed save handed over.
        _ = try await qmp("cont")
    }

    /// Saves the paused guest's state with QEMU's migration stream into a file.
    private func saveState(to file: String, timeout: Duration = .seconds(300)) async throws {
        // A previous live migration's capabilities stay set in this QEMU; a file takes none of them.
        _ = try await qmp("migrate-set-capabilities", ["capabilities": [
            ["capability": "xbzrle", "state": false], ["capability": "auto-converge", "state": false],
            ["capability": "postcopy-ram", "state": false],
        ]])
        _ = try await qmp("migrate-set-parameters", ["max-bandwidth": .number(Double(Int64(8) << 30))])
        _ = try await qmp("migrate", ["uri": .string("exec:cat > '\(file)'")])
        let started = ContinuousClock.now
        while true {
            let info = try await qmp("query-migrate")
            switch info["status"]?.stringValue {
            case "completed": return
            case "failed", "cancelled":
                throw ShepherdError(.agentFailed, "saving the memory of '\(definition.name)' failed: \(info["error-desc"]?.stringValue ?? "no reason given")")
            default:
                guard ContinuousClock.now - started < timeout else {
                    _ = try? await qmp("migrate_cancel")
                    throw ShepherdError(.timedOut, "saving the memory of '\(definition.name)' took over \(timeout.inSeconds) s")
                }
                try await Task.sleep(for: .milliseconds(100))
            }
        }
    }

    /// Starts QEMU from a saved state; returns once the guest runs.
    private func resume(from file: String, timeout: Duration = .seconds(180)) async throws {
        try SnapshotTree.checkMemoryPath(file)
        guard FileManager.default.fileExists(atPath: file) else {
            throw ShepherdError(.notFound, "the saved memory '\(file)' is not on this host")
        }
        let pid = try await launch(extraArguments: ["-incoming", "exec:cat '\(file)'"])
        let started = ContinuousClock.now
        do {
            while true {
                let status = try await qmp("query-status")["status"]?.stringValue
                if status == "running" { return }
                if status == "postmigrate" || status == "paused" || status == "prelaunch" {
                    // Loaded but not started (QEMU leaves it paused when the state was saved paused).
                    if (try? await qmp("query-migrate"))?["status"]?.stringValue == "completed" { _ = try await qmp("cont"); return }
                }
                guard ContinuousClock.now - started < timeout else {
                    throw ShepherdError(.timedOut, "'\(definition.name)' did not resume from '\(file)' within \(timeout.inSeconds) s (it is \(status ?? "unknown"))")
                }
                try await Task.sleep(for: .milliseconds(200))
            }
        } catch {
            // Nothing half-started stays behind: the saved state is still there to try again.
            if livePid() == pid { await quit(pid: pid) }
            throw error
        }
    }

    /// Revert of a VM that is off: new overlays over the snapshot's images first, then the
    /// definition points at them, then the discarded active images go.
    func revert(_ request: AgentWire.RevertRequest) async throws {
        try await exclusive { me in
            if let pid = me.livePid() {
                throw ShepherdError(.illegalState, "VM '\(me.definition.name)' runs here (QEMU pid \(pid)); a revert needs it off")
            }
            try await Self.createOverlays(request.layers.map { ($0.overlay, $0.base) })
            try me.repoint(Dictionary(uniqueKeysWithValues: request.layers.map { ($0.active, $0.overlay) }))
            for layer in request.layers { try? FileManager.default.removeItem(atPath: layer.active) }
            if let memory = request.memoryFile { try await me.resume(from: memory) }
        }
    }

    /// Hibernation: the guest pauses, its RAM and device state go to `file`, and QEMU ends. If
    /// the save fails the guest runs on and nothing is left behind.
    func hibernate(to file: String) async throws {
        try SnapshotTree.checkMemoryPath(file)
        try await exclusive { me in
            guard let pid = me.livePid() else { throw ShepherdError(.illegalState, "VM '\(me.definition.name)' does not run here") }
            _ = try await me.qmp("stop")
            do {
                try await me.saveState(to: file)
            } catch {
                try? FileManager.default.removeItem(atPath: file)
                _ = try? await me.qmp("cont")
                throw error
            }
            await me.quit(pid: pid)
        }
    }

    /// Resumes a hibernated guest from `file`, which is removed once the guest runs (its disks
    /// move on from that moment, so the state can never be loaded twice).
    func resumeHibernated(from file: String) async throws -> AgentWire.GuestStatus {
        let pid = try await exclusive { me -> Int32? in
            try await me.resume(from: file)
            return me.livePid()
        }
        try? FileManager.default.removeItem(atPath: file)
        return AgentWire.GuestStatus(vmId: id, power: .running, toolsRunning: false, pid: pid)
    }

    /// Pulls `from`'s data into `into`, which then backs onto `from`'s backing file. Live
    /// (block-stream) when this VM's QEMU has `into` open; qemu-img rebase otherwise.
    func merge(_ request: AgentWire.MergeRequest, timeout: Duration = .seconds(900)) async throws {
        let source = try await QemuImg.info(path: request.from)
        let newBacking = source.backingFilename
        try await exclusive { me in
            if me.livePid() != nil, let node = try? await me.formatNode(file: request.into) {
                var base: String?
                if let newBacking { base = try await me.formatNode(file: newBacking) }
                try await me.stream(into: node, base: base, timeout: timeout)
            } else {
                try await QemuImg.rebase(path: request.into, backing: newBacking,
                                         backingFormat: source.backingFormat ?? newBacking.map { _ in "qcow2" }, timeout: timeout)
            }
        }
    }

    private func stream(into node: String, base: String?, timeout: Duration) async throws {
        let job = "stream-\(UInt32.random(in: 0...UInt32.max))"
        var arguments: [String: JSONValue] = ["job-id": .string(job), "device": .string(node), "auto-dismiss": false]
        if let base { arguments["base-node"] = .string(base) }
        _ = try await qmp("block-stream", arguments)
        let started = ContinuousClock.now
        while true {
            let jobs = try await qmp("query-jobs").arrayValue ?? []
            guard let entry = jobs.first(where: { $0["id"]?.stringValue == job }) else {
                throw ShepherdError(.agentFailed, "the block-stream job \(job) of '\(definition.name)' vanished")
            }
            if entry["status"]?.stringValue == "concluded" {
                _ = try? await qmp("job-dismiss", ["id": .string(job)])
                if let error = entry["error"]?.stringValue {
                    throw ShepherdError(.agentFailed, "merging into '\(node)' of '\(definition.name)' failed: \(error)")
                }
                return
            }
            if ContinuousClock.now - started > timeout {
                _ = try? await qmp("job-cancel", ["id": .string(job)])
                throw ShepherdError(.timedOut, "merging into '\(node)' of '\(definition.name)' did not finish within \(timeout.inSeconds) s; cancelled, nothing lost")
            }
            try await Task.sleep(for: .milliseconds(200))
        }
    }

    /// One `blockdev-snapshot-sync` per layer, for a single QMP transaction.
    private func snapshotActions(_ layers: [AgentWire.SnapshotLayer]) async throws -> [JSONValue] {
        var actions: [JSONValue] = []
        for (index, layer) in layers.enumerated() {
            let node = try await formatNode(file: layer.active)
            actions.append(["type": "blockdev-snapshot-sync", "data": [
                "node-name": .string(node), "snapshot-file": .string(layer.overlay), "format": "qcow2",
                "snapshot-node-name": .string("s\(UInt32.random(in: 0...UInt32.max))x\(index)"),
            ]])
        }
        return actions
    }

    /// qcow2 overlays (path, backing) made by qemu-img, all or none.
    static func createOverlays(_ overlays: [(path: String, backing: String)]) async throws {
        var created: [String] = []
        do {
            for overlay in overlays {
                let format = try await QemuImg.info(path: overlay.backing).format
                try await QemuImg.createOverlay(path: overlay.path, backing: overlay.backing, backingFormat: format)
                created.append(overlay.path)
            }
        } catch {
            for path in created { try? FileManager.default.removeItem(atPath: path) }
            throw error
        }
    }

    /// The format node (qcow2/raw, not the file protocol node) QEMU has open for `file`.
    func formatNode(file: String) async throws -> String {
        let nodes = try await qmp("query-named-block-nodes", ["flat": true]).arrayValue ?? []
        guard let node = nodes.first(where: { $0["file"]?.stringValue == file && $0["drv"]?.stringValue != "file" })?["node-name"]?.stringValue else {
            throw ShepherdError(.agentFailed, "QEMU of '\(definition.name)' has no block node for '\(file)'")
        }
        return node
    }

    /// The definition's disk paths after a layer change: each old active path → its new image.
    func repoint(_ mapping: [String: String]) throws {
        var changed = definition
        changed.disk = mapping[changed.disk] ?? changed.disk
        for index in changed.disks.indices { changed.disks[index].path = mapping[changed.disks[index].path] ?? changed.disks[index].path }
        try redefine(changed)
    }
}

extension QEMUDriver {
    public func snapshot(_ vm: String, _ request: AgentWire.SnapshotRequest) async throws -> AgentWire.SnapshotAnswer {
        try await supervisor(vm).snapshot(request)
    }
    public func revert(_ vm: String, _ request: AgentWire.RevertRequest) async throws { try await supervisor(vm).revert(request) }
    public func merge(_ vm: String, _ request: AgentWire.MergeRequest) async throws { try await supervisor(vm).merge(request) }
    public func hibernate(_ vm: String, to file: String) async throws { try await supervisor(vm).hibernate(to: file) }
    public func resumeHibernated(_ vm: String, from file: String) async throws -> AgentWire.GuestStatus {
        try await supervisor(vm).resumeHibernated(from: file)
    }
}
