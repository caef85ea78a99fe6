/// External snapshots as a tree. Taking snapshot S freezes every included disk's active image:
/// that image becomes S's image for the disk, and a new overlay on top of it takes the writes.
/// So a disk's image in snapshot S is the backing file of (a) its image in each child snapshot
/// that has the disk and (b) the active image when the VM's current state descends from S
/// directly. Deleting S pulls its data up into exactly those images (block-stream / qemu-img
/// rebase), after which S's images can go without losing a byte of any later state.
public enum SnapshotTree {
    public struct Node: Sendable, Equatable {
        public var id: String
        public var name: String
        public var parent: String?
        /// Disk key ("root" or the data disk's id) → the image holding that disk at this snapshot.
        public var images: [String: String]
        public init(id: String, name: String, parent: String?, images: [String: String]) {
            self.id = id; self.name = name; self.parent = parent; self.images = images
        }
    }

    /// One image that must absorb the data of a deleted snapshot's image before it goes.
    public struct Merge: Sendable, Equatable {
        public var disk: String
        /// The image to pull data into (a child snapshot's image or the active image).
        public var into: String
        /// The deleted snapshot's image, whose data moves up.
        public var from: String
        /// The active image of the VM (written by a running guest: merged live).
        public var active: Bool
        public init(disk: String, into: String, from: String, active: Bool) {
            self.disk = disk; self.into = into; self.from = from; self.active = active
        }
    }

    public struct Deletion: Sendable, Equatable {
        /// Every pull, children before the active image (any order is safe: each is independent).
        public var merges: [Merge]
        /// Images that can be deleted once every merge is done.
        public var removed: [String]
        /// Children whose parent becomes the deleted snapshot's parent.
        public var reparented: [String]
        /// The VM's current snapshot after the deletion.
        public var current: String?
    }

    /// What deleting `id` takes. `active` maps disk keys to the VM's active images now.
    public static func deletion(of id: String, nodes: [Node], current: String?, active: [String: String]) throws -> Deletion {
        guard let node = nodes.first(where: { $0.id == id }) else { throw ShepherdError.notFound("snapshot", id) }
        let children = nodes.filter { $0.parent == id }
        var merges: [Merge] = []
        for (disk, image) in node.images.sorted(by: { $0.key < $1.key }) {
            for child in children {
                if let childImage = child.images[disk] { merges.append(Merge(disk: disk, into: childImage, from: image, active: false)) }
            }
            if current == id, let activeImage = active[disk] {
                merges.append(Merge(disk: disk, into: activeImage, from: image, active: true))
            }
        }
        return Deletion(merges: merges, removed: node.images.keys.sorted().compactMap { node.images[$0] },
                        reparented: children.map(\.id), current: current == id ? node.parent : current)
    }

    /// Every snapshot below `id` (its subtree, without it).
    public static func descendants(of id: String, nodes: [Node]) -> [String] {
        var result: [String] = []
        var frontier = [id]
        while let next = frontier.popLast() {
            let children = nodes.filter { $0.parent == next }.map(\.id)
            result += children
            frontier += children
        }
        return result
    }

    /// The tree as indented lines, oldest first, with "you are here" under the current snapshot.
    public static func render(_ nodes: [Node], current: String?) -> [String] {
        var lines: [String] = []
        func walk(_ parent: String?, depth: Int) {
            for node in nodes where node.parent == parent {
                lines.append(String(repeating: "  ", count: depth) + node.name)
                walk(node.id, depth: depth + 1)
                if current == node.id { lines.append(String(repeating: "  ", count: depth + 1) + "└ you are here") }
            }
        }
        walk(nil, depth: 0)
        if current == nil, !nodes.isEmpty { lines.append("└ you are here (before the first snapshot)") }
        return lines
    }

    /// Names: the same rules as every name, unique per VM.
    /// A memory file's path reaches QEMU's exec: migration URI (a shell): only plain characters.
    public static func checkMemoryPath(_ path: String) throws {
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-~")
        guard path.hasPrefix("/"), path.allSatisfy({ allowed.contains($0) }) else {
            throw ShepherdError.invalidField("memoryFile", "'\(path)' must be an absolute path of letters, digits and / . _ - ~")
        }
    }

    public static func checkName(_ name: String, taken: [String]) throws {
        try Validate.name(name)
        if taken.contains(name) { throw ShepherdError(.alreadyExists, "name: the VM already has a snapshot named '\(name)'") }
    }
}

extension AgentWire {
    /// One disk's layer change: `active` (the image QEMU writes now) and the new `overlay`.
    public struct SnapshotLayer: Codable, Sendable, Equatable {
        public var active: String
        public var overlay: String
        public init(active: String, overlay: String) { self.active = active; self.overlay = overlay }
    }

    /// Take a snapshot: every layer's active image freezes and its overlay takes the writes, in
    /// one QMP transaction when the VM runs (atomically across disks), with qemu-img when it is off.
    public struct SnapshotRequest: Codable, Sendable {
        public var layers: [SnapshotLayer]
        /// Freeze the guest's file systems through the tools for the moment of the snapshot.
        public var quiesce: Bool
        /// Save the guest's RAM and device state here too (the VM pauses for it).
        public var memoryFile: String?
        public init(layers: [SnapshotLayer], quiesce: Bool, memoryFile: String? = nil) {
            self.layers = layers; self.quiesce = quiesce; self.memoryFile = memoryFile
        }
    }

    public struct SnapshotAnswer: Codable, Sendable {
        public var live: Bool
        /// File systems the guest froze (quiesce), nil when not asked.
        public var frozenFileSystems: Int?
        public init(live: Bool, frozenFileSystems: Int?) { self.live = live; self.frozenFileSystems = frozenFileSystems }
    }

    /// Revert (VM off): each layer's `active` image is discarded and a new `overlay` over the
    /// snapshot's image (`base`) becomes active.
    public struct RevertLayer: Codable, Sendable, Equatable {
        public var active: String
        public var base: String
        public var overlay: String
        public init(active: String, base: String, overlay: String) { self.active = active; self.base = base; self.overlay = overlay }
    }

    public struct RevertRequest: Codable, Sendable {
        public var layers: [RevertLayer]
        /// Resume the guest from this saved state once the disks are back (a memory snapshot).
        public var memoryFile: String?
        public init(layers: [RevertLayer], memoryFile: String? = nil) { self.layers = layers; self.memoryFile = memoryFile }
    }

    /// Pull `from`'s data into `into` and make `into` back onto `from`'s own backing file.
    public struct MergeRequest: Codable, Sendable {
        public var into: String
        public var from: String
        public init(into: String, from: String) { self.into = into; self.from = from }
    }
}
