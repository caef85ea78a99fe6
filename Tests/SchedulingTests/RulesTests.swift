import Testing
import ShepherdCore
@testable import Scheduling

private func hosts(_ count: Int) -> [SnapshotHost] {
    (0..<count).map { SnapshotHost(name: "host-\($0)", cpuCapacityMHz: 10_000, cores: 8, memoryMiB: 8192) }
}

private func vm(_ name: String, on host: Int?) -> SnapshotVM {
    SnapshotVM(name: name, host: host, cpuDemandMHz: 500, memoryMiB: 1024)
}

/// host-0: web1, web2 · host-1: web3 · host-2: db1 · host-3: db2 · "off" is powered off.
private let cluster = ClusterSnapshot(
    hosts: hosts(4),
    vms: [vm("web1", on: 0), vm("web2", on: 0), vm("web3", on: 1), vm("db1", on: 2), vm("db2", on: 3), vm("off", on: nil)],
    rules: [
        .keepTogether(name: "web-together", vms: [0, 1, 2, 5]),
        .keepApart(name: "db-apart", vms: [3, 4]),
        .vmToHosts(name: "db-on-2-3", vms: [3, 4], hosts: [2, 3], mandatory: true),
        .vmToHosts(name: "web3-prefers-0", vms: [2], hosts: [0], mandatory: false),
        .vmToHosts(name: "web3-prefers-0-1", vms: [2], hosts: [0, 1], mandatory: false),
        .vmAwayFromHosts(name: "db1-off-0", vms: [3], hosts: [0]),
    ])

@Suite("Affinity rules")
struct RulesTests {
    @Test("each rule kind conflicts exactly where it should", arguments: [
        (0, 0, ["web-together"]),            // web3 still runs on host-1
        (2, 0, []),                          // joins web1 and web2; the powered-off member does not count
        (2, 1, ["web-together"]),            // stays away from web1 and web2
        (3, 3, ["db-apart"]),                // db2 is there
        (3, 2, []),                          // where it is now
        (3, 0, ["db-on-2-3", "db1-off-0"]),  // outside its hosts, and on a host it must avoid
        (4, 2, ["db-apart"]),
        (4, 0, ["db-on-2-3"]),               // db1-off-0 is not about db2
        (5, 3, ["web-together"]),
    ])
    func conflicts(vm: Int, host: Int, rules: [String]) {
        let found = cluster.ruleConflicts(placing: vm, on: host)
        #expect(found.map(\.rule) == rules, "\(found)")
        #expect(cluster.hasRuleConflict(placing: vm, on: host) == !rules.isEmpty)
    }

    @Test("conflict reasons name the VMs, the hosts and the counts", arguments: [
        (2, 1, "keep together: 'web3' on host-1 would be apart from 2 of 2 other running members; the group's home is host-0 with 2"),
        (3, 3, "keep apart: 'db1' on host-3 would share the host with 'db2'"),
        (4, 0, "must run on host-2, host-3: 'db2' on host-0 is outside that set"),
    ])
    func reasons(vm: Int, host: Int, reason: String) {
        #expect(cluster.ruleConflicts(placing: vm, on: host).first?.reason == reason)
    }

    @Test("a host to avoid is named in the reason and in the description")
    func awayDescription() {
        let conflict = cluster.ruleConflicts(placing: 3, on: 0).last
        #expect(conflict == RuleConflict(rule: "db1-off-0", reason: "must stay off host-0: 'db1' on host-0 is one of them"))
        #expect(conflict?.description == "rule 'db1-off-0': must stay off host-0: 'db1' on host-0 is one of them")
    }

    @Test("a keep-together group's home is where most members run, ties to the lowest host index")
    func homeTies() {
        let snap = ClusterSnapshot(hosts: hosts(4), vms: [vm("a", on: 2), vm("b", on: 2), vm("c", on: 1), vm("d", on: 1), vm("e", on: 3)],
                                   rules: [.keepTogether(name: "t", vms: [0, 1, 2, 3, 4])])
        #expect(snap.ruleConflicts(placing: 4, on: 1).first?.reason
            == "keep together: 'e' on host-1 would be apart from 2 of 4 other running members; the group's home is host-1 with 2")
        #expect(snap.currentRuleViolations() == [RuleConflict(rule: "t", reason:
            "keep together: the group's home host-1 runs 2 of 5 running members; away: 'a' on host-2, 'b' on host-2, 'e' on host-3")])
    }

    @Test("should-rules are never conflicts; each one broken adds 1 to the penalty", arguments: [
        (2, 0, 0), (2, 1, 1), (2, 3, 2), (3, 1, 0),
    ])
    func softPenalty(vm: Int, host: Int, penalty: Int) {
        #expect(cluster.ruleSoftPenalty(placing: vm, on: host) == penalty)
        #expect(!cluster.ruleConflicts(placing: vm, on: host).contains { $0.rule.hasPrefix("web3-prefers") })
    }

    @Test("the cluster as placed now reports every broken mandatory rule, in rule order")
    func currentViolations() {
        var snap = cluster
        snap.vms[3].host = 0
        snap.vms[4].host = 0
        #expect(snap.currentRuleViolations() == [
            RuleConflict(rule: "web-together", reason: "keep together: the group's home host-0 runs 2 of 3 running members; away: 'web3' on host-1"),
            RuleConflict(rule: "db-apart", reason: "keep apart: 2 members share host-0: 'db1', 'db2'"),
            RuleConflict(rule: "db-on-2-3", reason: "must run on host-2, host-3: 'db1' runs on host-0"),
            RuleConflict(rule: "db-on-2-3", reason: "must run on host-2, host-3: 'db2' runs on host-0"),
            RuleConflict(rule: "db1-off-0", reason: "must stay off host-0: 'db1' runs on host-0"),
        ])
    }

    @Test("a cluster that keeps its rules reports nothing")
    func noViolations() {
        var snap = cluster
        snap.vms[2].host = 0
        #expect(snap.currentRuleViolations().isEmpty)
    }

    @Test("a rule over many hosts names the first four and the count")
    func bigHostSet() {
        let snap = ClusterSnapshot(hosts: hosts(7), vms: [vm("v", on: 6)],
                                   rules: [.vmToHosts(name: "left", vms: [0], hosts: Set(0...5), mandatory: true)])
        #expect(snap.ruleConflicts(placing: 0, on: 6).map(\.reason)
            == ["must run on host-0, host-1, host-2, host-3, … (6 hosts): 'v' on host-6 is outside that set"])
        #expect(snap.ruleConflicts(placing: 0, on: 5).isEmpty)
    }

    @Test("the quick checks, with and without the membership index, agree with the full one for every VM and host")
    func quickCheckAgrees() {
        let membership = RuleMembership(cluster)
        #expect(membership.rules(of: 2) == [0, 3, 4] && membership.rules(of: 3) == [1, 2, 5] && membership.rules(of: 9).isEmpty)
        var conflicts = 0
        for vm in cluster.vms.indices {
            for host in cluster.hosts.indices {
                let full = !cluster.ruleConflicts(placing: vm, on: host).isEmpty
                if full { conflicts += 1 }
                #expect(cluster.hasRuleConflict(placing: vm, on: host) == full)
                #expect(cluster.hasRuleConflict(placing: vm, on: host, membership: membership) == full)
                #expect(cluster.ruleSoftPenalty(placing: vm, on: host, membership: membership) == cluster.ruleSoftPenalty(placing: vm, on: host))
            }
        }
        // web1, web2, off: all 4 hosts (the other members are split over host-0 and host-1);
        // web3: 3 (all but host-0); db1: host-0, host-1, host-3; db2: host-0, host-1, host-2.
        #expect(conflicts == 4 + 4 + 4 + 3 + 3 + 3)
    }
}

