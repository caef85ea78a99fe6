/// The checks of a storage migration (seed: 存储热迁移), each with a stable code and the numbers.
public enum StorageMigration {
    public enum Check: String, Sendable, Codable {
        case alreadyThere = "already_there"
        case targetNotMounted = "target_not_mounted"
        case targetNotVirtualized = "target_not_virtualized"
        case targetTooSmall = "target_too_small"
        case sharedDisk = "shared_disk"
        case linkedClone = "linked_clone"
        case nonPersistentLive = "non_persistent_live"
        case nonPersistentToBlock = "non_persistent_to_block"
        case inSnapshots = "in_snapshots"
        case vmBusy = "vm_state"
    }

    public struct Refusal: Sendable, Equatable, CustomStringConvertible {
        public var check: Check
        public var message: String
        public init(_ check: Check, _ message: String) { self.check = check; self.message = message }
        public var description: String { "\(check.rawValue): \(message)" }
    }

    /// One disk that would move.
    public struct Disk: Sendable, Equatable {
        public var name: String
        public var mode: DiskMode
        public var datastore: String
        public var virtualBytes: Int64
        /// Bytes it takes now (what a thin copy needs).
        public var allocatedBytes: Int64
        /// A differencing disk over a template's image (a linked clone).
        public var linkedClone: Bool
        /// Snapshots that hold an image of it.
        public var snapshots: [String]
        public init(name: String, mode: DiskMode, datastore: String, virtualBytes: Int64, allocatedBytes: Int64,
                    linkedClone: Bool = false, snapshots: [String] = []) {
            self.name = name; self.mode = mode; self.datastore = datastore; self.virtualBytes = virtualBytes
            self.allocatedBytes = allocatedBytes; self.linkedClone = linkedClone; self.snapshots = snapshots
        }
    }

    public struct Target: Sendable, Equatable {
        public var name: String
        /// local, shared or block.
        public var kind: String
        public var freeBytes: Int64
        public var mountedByHost: Bool
        public init(name: String, kind: String, freeBytes: Int64, mountedByHost: Bool) {
            self.name = name; self.kind = kind; self.freeBytes = freeBytes; self.mountedByHost = mountedByHost
        }
    }

    /// Bytes the copy takes on the target: a thin copy what the disk holds, a thick one its size.
    public static func bytesNeeded(_ disk: Disk, as type: DiskType) -> Int64 {
        type == .thin ? min(disk.allocatedBytes, disk.virtualBytes) : disk.virtualBytes
    }

    /// Every reason the move is refused (empty: it may go). `live` when the VM runs.
    public static func refusals(vm: String, live: Bool, disks: [Disk], target: Target, type: DiskType) -> [Refusal] {
        var refusals: [Refusal] = []
        if !target.mountedByHost {
            refusals.append(.init(.targetNotMounted, "the host of '\(vm)' does not mount datastore '\(target.name)'"))
        }
        if live, target.kind == "block" {
            refusals.append(.init(.targetNotVirtualized, "'\(target.name)' is a block (non-virtualized) datastore: a live storage migration needs a virtualized one; stop '\(vm)' to convert its disks there"))
        }
        let moving = disks.filter { $0.datastore != target.name }
        if moving.isEmpty {
            refusals.append(.init(.alreadyThere, "every disk asked for is on '\(target.name)' already"))
        }
        for disk in moving {
            switch disk.mode {
            case .shared:
                refusals.append(.init(.sharedDisk, "disk '\(disk.name)' is shared: it stays where every VM using it sees it"))
            case .nonPersistent where live:
                refusals.append(.init(.nonPersistentLive, "disk '\(disk.name)' is non-persistent: it moves only while '\(vm)' is off (cold migration)"))
            case .nonPersistent where target.kind == "block":
                refusals.append(.init(.nonPersistentToBlock, "disk '\(disk.name)' is non-persistent: it needs an overlay, which a block datastore cannot hold"))
            default: break
            }
            if disk.linkedClone {
                refusals.append(.init(.linkedClone, "disk '\(disk.name)' is a linked clone over its template's image; make a full clone to move it"))
            }
            if !disk.snapshots.isEmpty {
                refusals.append(.init(.inSnapshots, "disk '\(disk.name)' is in snapshot(s) \(disk.snapshots.map { "'\($0)'" }.joined(separator: ", ")); delete them first"))
            }
        }
        let needed = moving.reduce(Int64(0)) { $0 + bytesNeeded($1, as: type) }
        if needed > target.freeBytes {
            refusals.append(.init(.targetTooSmall, "the \(type.rawValue) copies need \(DiskRules.formatBytes(needed)); '\(target.name)' has \(DiskRules.formatBytes(target.freeBytes)) free"))
        }
        return refusals
    }
}

extension AgentWire {
    /// Start mirroring a running VM's disk (`source`, the image it writes) to a new image.
    public struct MirrorRequest: Codable, Sendable {
        public var source: String
        public var target: String
        public var type: DiskType
        /// A cap on the copy's rate (QEMU's job speed), so the move leaves the storage to the guests.
        public var maxBytesPerSecond: Int64?
        public init(source: String, target: String, type: DiskType, maxBytesPerSecond: Int64? = nil) {
            self.source = source; self.target = target; self.type = type; self.maxBytesPerSecond = maxBytesPerSecond
        }
    }

    /// A block job as QEMU reports it.
    public struct MirrorStatus: Codable, Sendable, Equatable {
        public var job: String
        /// created, running, ready (in sync, writes go to both), concluded, …
        public var status: String
        public var copiedBytes: Int64
        public var totalBytes: Int64
        public var error: String?
        public init(job: String, status: String, copiedBytes: Int64, totalBytes: Int64, error: String?) {
            self.job = job; self.status = status; self.copiedBytes = copiedBytes; self.totalBytes = totalBytes; self.error = error
        }
    }

    /// Copy an image no VM writes now into a new one of the given type (cold migration).
    public struct ConvertRequest: Codable, Sendable {
        public var source: String
        public var target: String
        public var type: DiskType
        public init(source: String, target: String, type: DiskType) { self.source = source; self.target = target; self.type = type }
    }
}
