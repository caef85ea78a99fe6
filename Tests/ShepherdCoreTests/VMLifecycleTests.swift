import Foundation
import Testing
@testable import ShepherdCore

@Suite("VM lifecycle")
struct VMLifecycleTests {
    @Test("a stopped or crashed VM can start; anything else is refused with its state")
    func start() throws {
        #expect(try VMLifecycle.stopped.start(vm: "web1", task: "t") == .starting(task: "t"))
        #expect(try VMLifecycle.crashed(reason: "x").start(vm: "web1", task: "t") == .starting(task: "t"))
        let error = #expect(throws: ShepherdError.self) { try VMLifecycle.running(since: Date()).start(vm: "web1", task: "t") }
        #expect(error?.code == .illegalState)
        #expect(error?.message.contains("it is running") == true)
        #expect(error?.message.contains("web1") == true)
    }

    @Test("stop needs a running VM unless forced, and force also reaches stuck states")
    func stop() throws {
        #expect(try VMLifecycle.running(since: Date()).stop(vm: "a", task: "t", force: false) == .stopping(task: "t"))
        #expect(throws: ShepherdError.self) { try VMLifecycle.stopped.stop(vm: "a", task: "t", force: false) }
        #expect(throws: ShepherdError.self) { try VMLifecycle.starting(task: "x").stop(vm: "a", task: "t", force: false) }
        #expect(try VMLifecycle.starting(task: "x").stop(vm: "a", task: "t", force: true) == .stopping(task: "t"))
        #expect(try VMLifecycle.unknown(reason: "lost").stop(vm: "a", task: "t", force: true) == .stopping(task: "t"))
        #expect(throws: ShepherdError.self) { try VMLifecycle.stopped.stop(vm: "a", task: "t", force: true) }
    }

    @Test("only a running VM hibernates; a hibernated one starts (resumes), is deleted, or is stopped only with force (its memory discarded)")
    func hibernate() throws {
        #expect(try VMLifecycle.running(since: Date()).hibernate(vm: "a", task: "t") == .hibernating(task: "t"))
        #expect(VMLifecycle.hibernating(task: "t").consumesHostResources && !VMLifecycle.hibernated.consumesHostResources)
        #expect(throws: ShepherdError.self) { try VMLifecycle.stopped.hibernate(vm: "a", task: "t") }
        #expect(try VMLifecycle.hibernated.start(vm: "a", task: "t") == .starting(task: "t"))
        #expect(try VMLifecycle.hibernated.delete(vm: "a", task: "t", force: false) == .deleting(task: "t"))
        let error = #expect(throws: ShepherdError.self) { try VMLifecycle.hibernated.stop(vm: "a", task: "t", force: false) }
        #expect(error?.message.contains("stop --force discards its saved memory") == true, "\(error?.message ?? "")")
        #expect(try VMLifecycle.hibernated.stop(vm: "a", task: "t", force: true) == .stopping(task: "t"))
        #expect(VMLifecycle(name: "hibernated", task: nil, reason: nil, since: nil) == .hibernated)
        #expect(VMLifecycle(name: "hibernating", task: "t", reason: nil, since: nil) == .hibernating(task: "t"))
    }

    @Test("deleting a running VM needs force, and the refusal says so")
    func delete() throws {
        #expect(try VMLifecycle.stopped.delete(vm: "a", task: "t", force: false) == .deleting(task: "t"))
        let error = #expect(throws: ShepherdError.self) { try VMLifecycle.running(since: Date()).delete(vm: "a", task: "t", force: false) }
        #expect(error?.message.contains("--force") == true)
        #expect(try VMLifecycle.running(since: Date()).delete(vm: "a", task: "t", force: true) == .deleting(task: "t"))
        #expect(throws: ShepherdError.self) { try VMLifecycle.creating(task: "c").delete(vm: "a", task: "t", force: true) }
    }

    @Test("only a running VM reboots or runs commands")
    func rebootAndExec() throws {
        #expect(try VMLifecycle.running(since: Date()).reboot(vm: "a", task: "t") == .rebooting(task: "t"))
        #expect(throws: ShepherdError.self) { try VMLifecycle.stopped.reboot(vm: "a", task: "t") }
        try VMLifecycle.running(since: Date()).checkExec(vm: "a")
        #expect(throws: ShepherdError.self) { try VMLifecycle.crashed(reason: "x").checkExec(vm: "a") }
    }

    @Test("every state survives being stored as columns and read back", arguments: [
        VMLifecycle.creating(task: "t1"), .stopped, .starting(task: "t2"), .running(since: Date(timeIntervalSince1970: 1000)),
        .stopping(task: "t3"), .rebooting(task: "t4"), .crashed(reason: "QEMU died"), .deleting(task: "t5"), .unknown(reason: "host lost"),
    ])
    func roundTrip(state: VMLifecycle) {
        #expect(VMLifecycle(name: state.name, task: state.task, reason: state.reason, since: state.since) == state)
    }

    @Test("only states with a QEMU process count against a host's memory")
    func resources() {
        #expect(VMLifecycle.running(since: Date()).consumesHostResources)
        #expect(VMLifecycle.starting(task: "t").consumesHostResources)
        #expect(!VMLifecycle.stopped.consumesHostResources)
        #expect(!VMLifecycle.crashed(reason: "x").consumesHostResources)
        #expect(!VMLifecycle.creating(task: "t").consumesHostResources)
    }
}
