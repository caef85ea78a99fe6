import Testing
@testable import ShepherdCore

@Suite("Input validation")
struct ValidationTests {
    @Test("good names pass", arguments: ["web1", "db-1", "a", "x.y_z", String(repeating: "a", count: 63)])
    func goodNames(name: String) throws {
        try Validate.name(name)
    }

    @Test("bad names are refused naming the field and the rule", arguments: [
        ("", "must not be empty"), ("-web", "must start"), ("web 1", "contains ' '"), ("wéb", "contains"),
        (String(repeating: "a", count: 64), "64 characters long; the limit is 63"), ("a/b", "contains '/'"),
    ])
    func badNames(name: String, rule: String) {
        let error = #expect(throws: ShepherdError.self) { try Validate.name(name) }
        #expect(error?.code == .invalidField)
        #expect(error?.message.hasPrefix("name:") == true)
        #expect(error?.message.contains(rule) == true, "\(error?.message ?? "")")
    }

    @Test("cpus and memory outside their ranges are refused with the numbers", arguments: [0, -1, 65, 10_000])
    func badCPUs(cpus: Int) {
        let error = #expect(throws: ShepherdError.self) { try Validate.cpus(cpus) }
        #expect(error?.message == "cpus: \(cpus) is outside 1–64")
    }

    @Test("memory limits", arguments: [(0, false), (15, false), (16, true), (128, true), (1_048_576, true), (1_048_577, false)])
    func memory(value: Int, ok: Bool) {
        if ok { #expect(throws: Never.self) { try Validate.memoryMiB(value) } } else {
            #expect(throws: ShepherdError.self) { try Validate.memoryMiB(value) }
        }
    }

    @Test("exec needs a program and a sane timeout")
    func exec() throws {
        try Validate.execCommand(["uname", "-a"], timeoutSeconds: nil)
        #expect(throws: ShepherdError.self) { try Validate.execCommand([], timeoutSeconds: nil) }
        #expect(throws: ShepherdError.self) { try Validate.execCommand([""], timeoutSeconds: nil) }
        #expect(throws: ShepherdError.self) { try Validate.execCommand(["ls"], timeoutSeconds: 0) }
    }

    @Test("caller mistakes map to 4xx and our failures to 5xx")
    func statuses() {
        for code in ShepherdError.Code.allCases {
            switch code {
            case .agentUnreachable, .agentFailed, .timedOut, .interrupted, .internal, .bmcUnreachable, .bmcFailed: #expect(code.httpStatus >= 500)
            default: #expect((400..<500).contains(code.httpStatus), "\(code)")
            }
        }
    }
}

@Suite("Host isolation")
struct IsolationTests {
    @Test("a host is isolated only when neither the manager nor any known peer has answered", arguments: [
        (1.0, 0, 2, Isolation.Verdict.connected),
        (5.9, 0, 2, .connected),
        (6.0, 0, 2, .isolated(peers: 2)),
        (30.0, 1, 2, .managerLost(peersReachable: 1, peers: 2)),
        (30.0, 0, 0, .managerLost(peersReachable: 0, peers: 0)),   // no peers known: cannot tell, VMs stay
    ])
    func verdicts(seconds: Double, reachable: Int, peers: Int, expected: Isolation.Verdict) {
        #expect(Isolation.verdict(secondsSinceManager: seconds, peersReachable: reachable, peers: peers) == expected)
    }
}
