import Testing
@testable import ShepherdCore

@Suite("Snapshot tree")
struct SnapshotTreeTests {
    // s1 ─ s2 ─ s3
    //    └ s4 ─ (current)
    // Disk "d" was attached after s1, so s1 has only the root disk.
    let nodes: [SnapshotTree.Node] = [
        .init(id: "1", name: "s1", parent: nil, images: ["root": "/r1"]),
        .init(id: "2", name: "s2", parent: "1", images: ["root": "/r2", "d": "/d2"]),
        .init(id: "3", name: "s3", parent: "2", images: ["root": "/r3", "d": "/d3"]),
        .init(id: "4", name: "s4", parent: "1", images: ["root": "/r4", "d": "/d4"]),
    ]
    let active = ["root": "/rA", "d": "/dA"]

    @Test("deleting a node with two children pulls its image into both children's images, and the children move up")
    func middleWithTwoChildren() throws {
        let deletion = try SnapshotTree.deletion(of: "1", nodes: nodes, current: "4", active: active)
        #expect(deletion.merges == [.init(disk: "root", into: "/r2", from: "/r1", active: false), .init(disk: "root", into: "/r4", from: "/r1", active: false)])
        #expect(deletion.removed == ["/r1"])
        #expect(deletion.reparented == ["2", "4"])
        #expect(deletion.current == "4")
    }

    @Test("deleting the current state's parent merges every disk into the active images, live, and the current state moves to its parent")
    func currentParent() throws {
        let deletion = try SnapshotTree.deletion(of: "4", nodes: nodes, current: "4", active: active)
        #expect(deletion.merges == [.init(disk: "d", into: "/dA", from: "/d4", active: true), .init(disk: "root", into: "/rA", from: "/r4", active: true)])
        #expect(Set(deletion.removed) == ["/r4", "/d4"])
        #expect(deletion.reparented.isEmpty)
        #expect(deletion.current == "1")
    }

    @Test("a leaf off the current branch goes without any merge")
    func leaf() throws {
        let deletion = try SnapshotTree.deletion(of: "3", nodes: nodes, current: "4", active: active)
        #expect(deletion.merges.isEmpty)
        #expect(Set(deletion.removed) == ["/r3", "/d3"])
        #expect(deletion.current == "4")
    }

    @Test("an unknown snapshot is not found")
    func unknown() {
        #expect(throws: ShepherdError.notFound("snapshot", "9")) { try SnapshotTree.deletion(of: "9", nodes: nodes, current: nil, active: active) }
    }

    @Test("the tree renders oldest first with where the VM is now")
    func render() {
        #expect(SnapshotTree.render(nodes, current: "4") == ["s1", "  s2", "    s3", "  s4", "    └ you are here"])
        #expect(SnapshotTree.descendants(of: "1", nodes: nodes).sorted() == ["2", "3", "4"])
        #expect(SnapshotTree.render([nodes[0]], current: nil).last == "└ you are here (before the first snapshot)")
    }

    @Test("names follow the name rules and are unique per VM")
    func names() throws {
        try SnapshotTree.checkName("before-upgrade", taken: ["s1"])
        #expect(throws: ShepherdError(.alreadyExists, "name: the VM already has a snapshot named 's1'")) { try SnapshotTree.checkName("s1", taken: ["s1"]) }
        #expect(throws: ShepherdError.self) { try SnapshotTree.checkName("bad name", taken: []) }
    }
}
