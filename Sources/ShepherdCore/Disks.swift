import Foundation

/// How a disk's space is allocated (FusionCompute's 普通/普通延迟置零/精简, vSphere's
/// eager-zeroed thick / lazy-zeroed thick / thin).
public enum DiskType: String, Codable, Sendable, CaseIterable {
    /// Grows with writes; `reclaim` gives unused space back.
    case thin
    /// Every block allocated and zeroed at creation (eager-zeroed).
    case thick
    /// Every block allocated at creation, zeroed on first write.
    case thickLazy = "thick-lazy"

    /// qemu-img's `preallocation` option that gives this allocation.
    public var preallocation: String {
        switch self {
        case .thin: "off"
        case .thick: "full"
        case .thickLazy: "falloc"
        }
    }
}

/// What happens to a disk's writes.
public enum DiskMode: String, Codable, Sendable, CaseIterable {
    /// Writes stay, and snapshots include the disk.
    case persistent
    /// Writes go to an overlay discarded at power-off (the disk returns to its state at power-on).
    case nonPersistent = "non-persistent"
    /// Raw and attachable to several VMs at once (cluster file systems, quorum disks).
    case shared
}

/// The image format a disk has on its datastore.
public enum DiskFormat: String, Codable, Sendable {
    case qcow2, raw

    /// Shared disks are raw: two QEMUs can write one raw image (share-rw), never one qcow2.
    public static func `for`(mode: DiskMode) -> DiskFormat { mode == .shared ? .raw : .qcow2 }
}

/// Disk limits and the rules of attaching; each refusal names the rule and its numbers.
public enum DiskRules {
    /// Smallest and largest disk (1 MiB … 16 TiB).
    public static let sizeBytes: ClosedRange<Int64> = 1 << 20 ... 16 << 40
    /// Data disks per VM besides its root disk: virtio-blk takes a PCI slot each, and a `pc`
    /// machine has 32 slots, some already taken.
    public static let maxDataDisks = 16

    /// "2G", "512M", "1T", "1048576" (bytes) → bytes; binary units (G = GiB).
    public static func parseSize(_ text: String, field: String) throws -> Int64 {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        let units: [Character: Int64] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40]
        var digits = Substring(trimmed.uppercased())
        // 2G, 2GB and 2GiB all mean 2 GiB.
        for suffix in ["IB", "B"] where digits.hasSuffix(suffix) {
            if let unit = digits.dropLast(suffix.count).last, units[unit] != nil { digits = digits.dropLast(suffix.count) }
            break
        }
        var multiplier: Int64 = 1
        if let last = digits.last, let unit = units[last] {
            multiplier = unit
            digits = digits.dropLast()
        }
        guard !digits.isEmpty, digits.allSatisfy(\.isNumber), let number = Int64(digits) else {
            throw ShepherdError.invalidField(field, "'\(text)' is not a size; write it as 2G, 512M or a number of bytes")
        }
        let (bytes, overflow) = number.multipliedReportingOverflow(by: multiplier)
        guard !overflow else { throw ShepherdError.invalidField(field, "'\(text)' is larger than \(formatBytes(sizeBytes.upperBound))") }
        try checkSize(bytes, field: field)
        return bytes
    }

    public static func checkSize(_ bytes: Int64, field: String) throws {
        guard sizeBytes.contains(bytes) else {
            throw ShepherdError.invalidField(field, "\(formatBytes(bytes)) is outside \(formatBytes(sizeBytes.lowerBound))–\(formatBytes(sizeBytes.upperBound))")
        }
        guard bytes % 512 == 0 else {
            throw ShepherdError.invalidField(field, "\(bytes) bytes is not a multiple of 512 (a disk sector)")
        }
    }

    /// Growing only: shrinking a disk under a file system destroys data.
    public static func checkResize(disk: String, from current: Int64, to wanted: Int64) throws {
        try checkSize(wanted, field: "size")
        guard wanted > current else {
            throw ShepherdError.invalidField("size", "disk '\(disk)' is \(formatBytes(current)); a resize must grow it (asked \(formatBytes(wanted))), shrinking would cut the guest's file system")
        }
    }

    /// Can this disk be attached to this VM? `attachedTo` are the VMs that have it now,
    /// `dataDisks` how many data disks the VM has, `vmSeesDatastore` whether the VM's host
    /// mounts the disk's datastore.
    public static func checkAttach(disk: String, mode: DiskMode, attachedTo: [String], vm: String,
                                   dataDisks: Int, vmSeesDatastore: Bool, datastore: String) throws {
        if attachedTo.contains(vm) {
            throw ShepherdError(.alreadyExists, "disk '\(disk)' is already attached to VM '\(vm)'")
        }
        if mode != .shared, let owner = attachedTo.first {
            throw ShepherdError(.illegalState, "disk '\(disk)' is attached to VM '\(owner)'; only a shared disk can be attached to several VMs (this one is \(mode.rawValue))")
        }
        guard dataDisks < maxDataDisks else {
            throw ShepherdError(.insufficientResources, "VM '\(vm)' has \(dataDisks) data disks; the limit is \(maxDataDisks)")
        }
        guard vmSeesDatastore else {
            throw ShepherdError(.preflightFailed, "disk '\(disk)' is on datastore '\(datastore)', which the host of VM '\(vm)' does not mount")
        }
    }

    /// The serial number the guest sees (virtio-blk keeps 20 characters): how a user finds
    /// the disk inside the guest (`/sys/block/vdX/serial`, `/dev/disk/by-id/virtio-<serial>`).
    public static func serial(diskID: String) -> String {
        "sh-" + String(diskID.filter { $0 != "-" }.prefix(17))
    }

    public static func formatBytes(_ bytes: Int64) -> String {
        let units: [(Int64, String)] = [(1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")]
        for (size, name) in units where bytes >= size {
            let value = Double(bytes) / Double(size)
            return value == value.rounded() ? "\(Int64(value)) \(name)" : "\((value * 10).rounded() / 10) \(name)"
        }
        return "\(bytes) B"
    }
}

extension AgentWire {
    /// A data disk as its VM's QEMU opens it.
    public struct DiskDefinition: Codable, Sendable, Equatable {
        public var id: String
        public var name: String
        /// The image QEMU opens (its backing chain is in the qcow2 headers).
        public var path: String
        public var format: DiskFormat
        public var mode: DiskMode
        public var serial: String
        /// Its fixed PCI slot (the same on every host, so live migration finds the same devices).
        public var slot: Int?

        public init(id: String, name: String, path: String, format: DiskFormat, mode: DiskMode, slot: Int? = nil) {
            self.id = id; self.name = name; self.path = path; self.format = format; self.mode = mode
            self.serial = DiskRules.serial(diskID: id)
            self.slot = slot
        }
    }

    /// Create an image on one of the agent's datastores.
    public struct DiskCreateRequest: Codable, Sendable {
        public var path: String
        public var sizeBytes: Int64
        public var format: DiskFormat
        public var type: DiskType
        public init(path: String, sizeBytes: Int64, format: DiskFormat, type: DiskType) {
            self.path = path; self.sizeBytes = sizeBytes; self.format = format; self.type = type
        }
    }

    /// An image on a datastore, as `qemu-img info` reads it.
    public struct DiskImage: Codable, Sendable, Equatable {
        public var path: String
        public var format: String
        public var virtualBytes: Int64
        /// Bytes the image really takes on its datastore.
        public var allocatedBytes: Int64
        public var backing: String?
        public init(path: String, format: String, virtualBytes: Int64, allocatedBytes: Int64, backing: String?) {
            self.path = path; self.format = format; self.virtualBytes = virtualBytes
            self.allocatedBytes = allocatedBytes; self.backing = backing
        }
    }

    /// An image path on a datastore (info, delete), or a new size (resize).
    public struct DiskPathRequest: Codable, Sendable {
        public var path: String
        public var sizeBytes: Int64?
        public init(path: String, sizeBytes: Int64? = nil) { self.path = path; self.sizeBytes = sizeBytes }
    }

    /// Grow a disk of a running VM (QMP block_resize); the guest sees the new capacity.
    public struct DiskResizeRequest: Codable, Sendable {
        public var sizeBytes: Int64
        public init(sizeBytes: Int64) { self.sizeBytes = sizeBytes }
    }

    /// The guest trimmed its file systems (guest-fstrim through the tools).
    public struct TrimAnswer: Codable, Sendable {
        public var fileSystems: Int
        /// What the guest says it trimmed, when it says.
        public var trimmedBytes: Int64?
        public init(fileSystems: Int, trimmedBytes: Int64?) { self.fileSystems = fileSystems; self.trimmedBytes = trimmedBytes }
    }
}
