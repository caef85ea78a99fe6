import Testing
@testable import ShepherdCore

@Suite("Disk rules")
struct DiskRulesTests {
    @Test("sizes read as binary units or bytes", arguments: [
        ("2G", Int64(2) << 30), ("512M", Int64(512) << 20), ("1T", Int64(1) << 40), ("64MiB", Int64(64) << 20),
        ("1048576", Int64(1) << 20), ("4096k", Int64(4) << 20), ("2GB", Int64(2) << 30),
    ])
    func sizes(text: String, bytes: Int64) throws {
        #expect(try DiskRules.parseSize(text, field: "--size") == bytes)
    }

    @Test("bad sizes are refused naming the field and the limits", arguments: [
        ("", "is not a size"), ("2X", "is not a size"), ("GiB", "is not a size"), ("2iB", "is not a size"), ("-1G", "is not a size"), ("1.5G", "is not a size"),
        ("512K", "512 KiB is outside 1 MiB–16 TiB"), ("17T", "17 TiB is outside"), ("1048577", "not a multiple of 512"),
        ("99999999999T", "is larger than 16 TiB"),
    ])
    func badSizes(text: String, rule: String) {
        let error = #expect(throws: ShepherdError.self) { try DiskRules.parseSize(text, field: "--size") }
        #expect(error?.code == .invalidField)
        #expect(error?.message.hasPrefix("--size:") == true)
        #expect(error?.message.contains(rule) == true, "\(error?.message ?? "")")
    }

    @Test("a resize must grow the disk")
    func resizeGrows() throws {
        try DiskRules.checkResize(disk: "d", from: 64 << 20, to: 128 << 20)
        for smaller in [Int64(64) << 20, 32 << 20] {
            let error = #expect(throws: ShepherdError.self) { try DiskRules.checkResize(disk: "d", from: 64 << 20, to: smaller) }
            #expect(error?.message.contains("disk 'd' is 64 MiB; a resize must grow it") == true, "\(error?.message ?? "")")
        }
    }

    @Test("attach refusals name the rule and the numbers", arguments: [
        (DiskMode.persistent, ["other"], 0, true, ShepherdError.Code.illegalState, "attached to VM 'other'; only a shared disk"),
        (.nonPersistent, ["other"], 0, true, .illegalState, "this one is non-persistent"),
        (.shared, ["vm1"], 0, true, .alreadyExists, "already attached to VM 'vm1'"),
        (.shared, [], 16, true, .insufficientResources, "has 16 data disks; the limit is 16"),
        (.persistent, [], 0, false, .preflightFailed, "datastore 'local-2', which the host of VM 'vm1' does not mount"),
    ])
    func attachRefusals(mode: DiskMode, holders: [String], disks: Int, sees: Bool, code: ShepherdError.Code, rule: String) {
        let error = #expect(throws: ShepherdError.self) {
            try DiskRules.checkAttach(disk: "d", mode: mode, attachedTo: holders, vm: "vm1", dataDisks: disks,
                                      vmSeesDatastore: sees, datastore: "local-2")
        }
        #expect(error?.code == code)
        #expect(error?.message.contains(rule) == true, "\(error?.message ?? "")")
    }

    @Test("a shared disk attaches to a second VM; a free disk to its first")
    func attachAllowed() throws {
        try DiskRules.checkAttach(disk: "d", mode: .shared, attachedTo: ["a"], vm: "b", dataDisks: 15, vmSeesDatastore: true, datastore: "s")
        try DiskRules.checkAttach(disk: "d", mode: .persistent, attachedTo: [], vm: "b", dataDisks: 0, vmSeesDatastore: true, datastore: "s")
    }

    @Test("shared disks are raw, and the guest's serial fits virtio's 20 characters")
    func formatsAndSerials() {
        #expect(DiskFormat.for(mode: .shared) == .raw && DiskFormat.for(mode: .persistent) == .qcow2 && DiskFormat.for(mode: .nonPersistent) == .qcow2)
        let serial = DiskRules.serial(diskID: "0f9b8c1e-2d3a-4b5c-8d7e-6f5a4b3c2d1e")
        #expect(serial == "sh-0f9b8c1e2d3a4b5c8")
        #expect(serial.count == 20)
    }

    static let disk = StorageMigration.Disk(name: "data", mode: .persistent, datastore: "shared", virtualBytes: 4 << 30, allocatedBytes: 1 << 30)
    static let roomy = StorageMigration.Target(name: "local-1", kind: "local", freeBytes: 100 << 30, mountedByHost: true)

    @Test("a storage move that may go is refused nothing")
    func storageMoveAllowed() {
        #expect(StorageMigration.refusals(vm: "v", live: true, disks: [Self.disk], target: Self.roomy, type: .thin).isEmpty)
    }

    @Test("storage move refusals name their check and numbers", arguments: [
        (true, StorageMigration.Target(name: "lun", kind: "block", freeBytes: 100 << 30, mountedByHost: true), DiskType.thin, StorageMigration.Check.targetNotVirtualized, "'lun' is a block (non-virtualized) datastore"),
        (true, StorageMigration.Target(name: "small", kind: "local", freeBytes: 2 << 30, mountedByHost: true), .thick, .targetTooSmall, "the thick copies need 4 GiB; 'small' has 2 GiB free"),
        (true, StorageMigration.Target(name: "far", kind: "shared", freeBytes: 100 << 30, mountedByHost: false), .thin, .targetNotMounted, "does not mount datastore 'far'"),
        (false, StorageMigration.Target(name: "shared", kind: "shared", freeBytes: 100 << 30, mountedByHost: true), .thin, .alreadyThere, "on 'shared' already"),
    ])
    func storageMoveRefusals(live: Bool, target: StorageMigration.Target, type: DiskType, check: StorageMigration.Check, message: String) {
        let refusals = StorageMigration.refusals(vm: "v", live: live, disks: [Self.disk], target: target, type: type)
        #expect(refusals.map(\.check) == [check])
        #expect(refusals.first?.message.contains(message) == true, "\(refusals)")
    }

    @Test("a thin copy needs what the disk holds, a thick one its whole size")
    func bytesNeeded() {
        #expect(StorageMigration.bytesNeeded(Self.disk, as: .thin) == 1 << 30)
        #expect(StorageMigration.bytesNeeded(Self.disk, as: .thickLazy) == 4 << 30)
    }

    @Test("per-disk refusals: shared, non-persistent live or to block, linked clone, in snapshots", arguments: [
        (DiskMode.shared, false, [String](), true, "local", StorageMigration.Check.sharedDisk),
        (.nonPersistent, false, [], true, "local", .nonPersistentLive),
        (.nonPersistent, false, [], false, "block", .nonPersistentToBlock),
        (.persistent, true, [], false, "local", .linkedClone),
        (.persistent, false, ["s1"], false, "local", .inSnapshots),
    ])
    func diskRefusals(mode: DiskMode, linked: Bool, snapshots: [String], live: Bool, kind: String, check: StorageMigration.Check) {
        let disk = StorageMigration.Disk(name: "d", mode: mode, datastore: "shared", virtualBytes: 1 << 20, allocatedBytes: 1 << 20,
                                         linkedClone: linked, snapshots: snapshots)
        let target = StorageMigration.Target(name: "t", kind: kind, freeBytes: 1 << 40, mountedByHost: true)
        #expect(StorageMigration.refusals(vm: "v", live: live, disks: [disk], target: target, type: .thin).map(\.check) == [check])
    }
}
