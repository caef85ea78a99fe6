import Testing
@testable import Scheduling

@Suite("Balloon controller")
struct BallooningTests {
    func vm(_ name: String, memory: Int = 512, reservation: Int = 0, limit: Int? = nil, shares: Int = 1000, current: Int = 512, used: Int?) -> BalloonVM {
        BalloonVM(name: name, memoryMiB: memory, reservationMiB: reservation, limitMiB: limit, shares: shares, currentMiB: current, usedMiB: used)
    }

    @Test("while every VM's ceiling fits, nobody is ballooned; a limit is a ceiling")
    func noPressure() {
        #expect(BalloonPlanner.targets(budgetMiB: 1024, vms: [vm("a", used: 40), vm("b", used: 400)]) == [512, 512])
        #expect(BalloonPlanner.targets(budgetMiB: 1024, vms: [vm("a", limit: 200, used: 40), vm("b", used: 400)]) == [200, 512])
    }

    @Test("an idle VM gives memory to a busy one: demands first, the rest by shares up to the ceilings")
    func idleToBusy() {
        // demands: idle 40+64 = 104, busy 400+100 = 500; surplus 768-604 = 164 → busy takes 12 (to 512), idle the rest.
        let targets = BalloonPlanner.targets(budgetMiB: 768, vms: [vm("idle", used: 40), vm("busy", used: 400)])
        #expect(targets == [256, 512])
        #expect(targets.reduce(0, +) == 768)
    }

    @Test("short of memory: floors first (reservation, and use plus 32 MiB), then shares decide who gets closer to its demand")
    func shortage() {
        // gold: floor 300 (reserved), demand 300; bronze: floor 232, demand 264; 8 MiB left after the floors.
        #expect(BalloonPlanner.targets(budgetMiB: 540, vms: [vm("gold", reservation: 300, used: 200), vm("bronze", used: 200)]) == [300, 240])
        // No reservations: floors 232 each, 36 MiB left, split 3:1 by shares.
        #expect(BalloonPlanner.targets(budgetMiB: 500, vms: [vm("gold", shares: 3000, used: 200), vm("bronze", shares: 1000, used: 200)]) == [259, 241])
    }

    @Test("a guest is never ballooned below what it uses plus 32 MiB, even when that is more than the host has: host swap takes the rest")
    func floorsOverBudget() {
        #expect(BalloonPlanner.targets(budgetMiB: 300, vms: [vm("a", used: 200), vm("b", used: 200)]) == [232, 232])
        #expect(BalloonPlanner.targets(budgetMiB: 300, vms: [vm("a", current: 400, used: nil), vm("b", used: 100)]) == [400, 132])
    }

    @Test("nobody goes below its reservation or above its limit, for any budget", arguments: [300, 500, 700, 900, 1100])
    func bounds(budget: Int) {
        let vms = [vm("r", reservation: 256, used: 100), vm("l", limit: 300, used: 500), vm("s", shares: 2000, used: 350), vm("q", used: nil)]
        let targets = BalloonPlanner.targets(budgetMiB: budget, vms: vms)
        #expect(targets[0] >= 256 && targets[1] <= 300 && targets.allSatisfy { $0 <= 512 })
        let floors = vms.map(\.floorMiB).reduce(0, +)
        #expect(targets.reduce(0, +) <= max(budget, floors), "\(targets) for a budget of \(budget)")
    }

    @Test("small moves are not made, and a guest without statistics is never shrunk")
    func plan() {
        #expect(BalloonPlanner.plan(budgetMiB: 768, vms: [vm("idle", current: 260, used: 40), vm("busy", current: 505, used: 400)]).isEmpty)
        let decisions = BalloonPlanner.plan(budgetMiB: 768, vms: [vm("idle", used: 40), vm("busy", current: 256, used: 230)])
        #expect(decisions.map(\.description) == ["idle 512→289 MiB (uses 40)", "busy 256→479 MiB (uses 230)"], "\(decisions)")
        #expect(BalloonPlanner.plan(budgetMiB: 600, vms: [vm("blind", used: nil), vm("b", used: 500)]).allSatisfy { $0.name != "blind" })
    }
}
