import Foundation
import Testing
import TestSupport

/// VM QoS and the cluster's memory overcommit switch through the API (fake driver: manager logic only).
@Suite("QoS and memory overcommit API", .serialized)
struct QoSAPITests {
    /// One host of 1536 MiB: 1024 MiB for VMs after the manager's 512 MiB host reserve.
    static let smallHost = ["host-1": ["--memory", "1536", "--cores", "2"]]

    @Test("without overcommit a host runs VMs up to its memory; with it, up to the ratio, and reservations never exceed real memory")
    func admission() async throws {
        try await TestCluster.with(driver: "fake", hosts: 1, agentArguments: Self.smallHost) { cluster in
            for name in ["v1", "v2", "v3"] { #expect(try await cluster.createVM(name, memoryMiB: 512, host: "host-1").state == .succeeded) }
            #expect(try await cluster.vm("v1").qos?.memoryReservationMiB == 512, "overcommit off: a new VM reserves all its memory")
            #expect(try await cluster.start("v1").state == .succeeded)
            #expect(try await cluster.start("v2").state == .succeeded)
            let token = cluster.adminToken
            let (full, why) = try await cluster.raw("POST", "/api/v1/vms/v3/start", token: token)
            #expect(full == 422 && why.contains("asked 512 MiB; 0 MiB free"), "\(why)")

            let (on, answer) = try await cluster.setCluster(#"{"memoryOvercommit":true,"overcommitRatioPercent":150}"#)
            #expect(on == 200 && answer.contains("150"), "\(answer)")
            // v3 still reserves all of its 512 MiB, and the host's real memory is reserved by v1 and v2.
            let (reserved, reason) = try await cluster.raw("POST", "/api/v1/vms/v3/start", token: token)
            #expect(reserved == 422 && reason.contains("asked to reserve 512 MiB; 0 MiB unreserved"), "\(reason)")
            let (lowered, vm) = try await cluster.raw("PATCH", "/api/v1/vms/v3/qos", token: token, body: #"{"memoryReservation":"0"}"#)
            #expect(lowered == 200 && vm.replacingOccurrences(of: " ", with: "").contains(#""memoryReservationMiB":0"#), "\(vm)")
            #expect(try await cluster.createVM("v4", memoryMiB: 128, host: "host-1").state == .succeeded)
            #expect(try await cluster.vm("v4").qos?.memoryReservationMiB == 0, "overcommit on: a new VM reserves nothing")
            #expect(try await cluster.start("v3").state == .succeeded, "1536 MiB of VMs within 150 % of 1024 MiB")
            let (ratio, past) = try await cluster.raw("POST", "/api/v1/vms/v4/start", token: token)
            #expect(ratio == 422 && past.contains("asked 128 MiB; 0 MiB free"), "\(past)")
            #expect(try await cluster.host("host-1").memoryReservedMiB == 1024)
        }
    }

    @Test("overcommit off is refused while a running VM reserves less than its memory, naming each; after the batch fix it is allowed")
    func turningOff() async throws {
        try await TestCluster.with(driver: "fake", hosts: 1, agentArguments: Self.smallHost) { cluster in
            let token = cluster.adminToken
            #expect(try await cluster.setCluster(#"{"memoryOvercommit":true}"#).0 == 200)
            for name in ["a", "b", "c"] { #expect(try await cluster.createVM(name, memoryMiB: 256, host: "host-1").state == .succeeded) }
            #expect(try await cluster.start("a").state == .succeeded)
            #expect(try await cluster.start("b").state == .succeeded)
            #expect(try await cluster.raw("PATCH", "/api/v1/vms/b/qos", token: token, body: #"{"memoryReservation":"50%","memoryLimit":"200"}"#).0 == 200)
            let before = try cluster.databaseSnapshot()
            let (refused, why) = try await cluster.setCluster(#"{"memoryOvercommit":false}"#)
            #expect(refused == 409, "\(why)")
            #expect(why.contains("'a' reserves 0 of 256 MiB") && why.contains("'b' reserves 128 of 256 MiB, limited to 200 MiB"), "\(why)")
            #expect(why.contains("shepherd vm qos set --cluster cluster-1 --memory-reservation 100% --memory-limit 0"), "\(why)")
            #expect(try cluster.databaseSnapshot() == before, "a refused switch changes nothing")

            let (fixed, vms) = try await cluster.raw("PATCH", "/api/v1/clusters/cluster-1/vm-qos", token: token,
                                                     body: #"{"memoryReservation":"100%","memoryLimit":"0"}"#)
            #expect(fixed == 200, "\(vms)")
            for name in ["a", "b", "c"] {
                let qos = try await cluster.vm(name).qos
                #expect(qos?.memoryReservationMiB == 256 && qos?.memoryLimitMiB == nil, "\(name): \(String(describing: qos))")
            }
            // c is off: lowering it again does not block the switch; it is raised with it.
            #expect(try await cluster.raw("PATCH", "/api/v1/vms/c/qos", token: token, body: #"{"memoryReservation":"0"}"#).0 == 200)
            let (off, answer) = try await cluster.setCluster(#"{"memoryOvercommit":false}"#)
            #expect(off == 200 && answer.contains("'c'"), "\(answer)")
            #expect(try await cluster.vm("c").qos?.memoryReservationMiB == 256)

            let (below, rule) = try await cluster.raw("PATCH", "/api/v1/vms/a/qos", token: token, body: #"{"memoryReservation":"50%"}"#)
            #expect(below == 409 && rule.contains("memory overcommit is off") && rule.contains("128 of 256 MiB"), "\(rule)")
        }
    }

    @Test("bad QoS values are refused naming the field and the numbers, and nothing changes")
    func refusals() async throws {
        try await TestCluster.with(driver: "fake", hosts: 1, agentArguments: Self.smallHost) { cluster in
            #expect(try await cluster.createVM("q1", cpus: 1, memoryMiB: 256, host: "host-1").state == .succeeded)
            #expect(try await cluster.setCluster(#"{"memoryOvercommit":true}"#).0 == 200)
            let token = cluster.adminToken
            let before = try cluster.databaseSnapshot()
            for (body, status, words) in [
                (#"{}"#, 400, "nothing to change"),
                (#"{"cpuShares":0}"#, 400, "cpuShares"),
                (#"{"memoryShares":200000}"#, 400, "memoryShares"),
                (#"{"cpuReservationMHz":1500}"#, 400, "0–1000 MHz (1 vCPU"),
                (#"{"cpuLimitMHz":20}"#, 400, "cpuLimitMHz"),
                (#"{"cpuReservationMHz":600,"cpuLimitMHz":500}"#, 400, "below its reservation 600 MHz"),
                (#"{"memoryReservation":"abc"}"#, 400, "memoryReservation"),
                (#"{"memoryReservation":"120%"}"#, 400, "memoryReservation"),
                (#"{"memoryReservation":"300"}"#, 400, "0–256 MiB"),
                (#"{"memoryLimit":"32"}"#, 400, "64–256 MiB"),
                (#"{"memoryReservation":"200","memoryLimit":"100"}"#, 400, "below its reservation 200 MiB"),
            ] {
                let (code, answer) = try await cluster.raw("PATCH", "/api/v1/vms/q1/qos", token: token, body: body)
                #expect(code == status && answer.contains(words), "\(body): \(code) \(answer)")
            }
            #expect(try await cluster.raw("PATCH", "/api/v1/vms/nope/qos", token: token, body: #"{"cpuShares":10}"#).0 == 404)
            for (body, field) in [(#"{"overcommitRatioPercent":90}"#, "overcommitRatioPercent"), (#"{"overcommitRatioPercent":500}"#, "100–400")] {
                let (code, answer) = try await cluster.setCluster(body)
                #expect(code == 400 && answer.contains(field), "\(body): \(answer)")
            }
            #expect(try cluster.databaseSnapshot() == before)
        }
    }

    @Test("CPU reservations of a host's running VMs never exceed its cores × 1000 MHz, at start and when changed")
    func cpuReservations() async throws {
        try await TestCluster.with(driver: "fake", hosts: 1, agentArguments: Self.smallHost) { cluster in
            let token = cluster.adminToken
            #expect(try await cluster.createVM("c1", cpus: 2, memoryMiB: 128, host: "host-1").state == .succeeded)
            #expect(try await cluster.createVM("c2", cpus: 1, memoryMiB: 128, host: "host-1").state == .succeeded)
            #expect(try await cluster.raw("PATCH", "/api/v1/vms/c1/qos", token: token, body: #"{"cpuReservationMHz":1500}"#).0 == 200)
            #expect(try await cluster.raw("PATCH", "/api/v1/vms/c2/qos", token: token, body: #"{"cpuReservationMHz":1000}"#).0 == 200)
            #expect(try await cluster.start("c1").state == .succeeded)
            let (refused, why) = try await cluster.raw("POST", "/api/v1/vms/c2/start", token: token)
            #expect(refused == 422 && why.contains("asked to reserve 1000 MHz; 500 MHz unreserved"), "\(why)")
            #expect(try await cluster.raw("PATCH", "/api/v1/vms/c2/qos", token: token, body: #"{"cpuReservationMHz":500}"#).0 == 200)
            #expect(try await cluster.start("c2").state == .succeeded)
            let (raised, reason) = try await cluster.raw("PATCH", "/api/v1/vms/c1/qos", token: token, body: #"{"cpuReservationMHz":1600}"#)
            #expect(raised == 422 && reason.contains("0 MHz unreserved") && reason.contains("100 MHz more"), "\(reason)")
            let shown = try await cluster.vm("c1")
            #expect(shown.qos?.cpuReservationMHz == 1500 && shown.qos?.cpuShares == 1000 && shown.qos?.cpuLimitMHz == nil)
        }
    }

    @Test("the overcommit ratio cannot drop below what a host already runs")
    func ratioBelowLoad() async throws {
        try await TestCluster.with(driver: "fake", hosts: 1, agentArguments: Self.smallHost) { cluster in
            #expect(try await cluster.setCluster(#"{"memoryOvercommit":true,"overcommitRatioPercent":200}"#).0 == 200)
            for name in ["r1", "r2", "r3"] {
                #expect(try await cluster.createVM(name, memoryMiB: 512, host: "host-1").state == .succeeded)
                #expect(try await cluster.start(name).state == .succeeded)
            }
            let (refused, why) = try await cluster.setCluster(#"{"overcommitRatioPercent":140}"#)
            #expect(refused == 409 && why.contains("1536 MiB") && why.contains("allows 1433 MiB"), "\(why)")
            #expect(try await cluster.setCluster(#"{"overcommitRatioPercent":150}"#).0 == 200)
        }
    }
}

/// Hibernation through the API (fake driver: manager logic only).
@Suite("Hibernation API", .serialized)
struct HibernationAPITests {
    @Test("a hibernated VM frees its host's memory, refuses disk changes and a plain stop, resumes on start, and stop --force discards its memory")
    func hibernateResumeDiscard() async throws {
        try await TestCluster.with(driver: "fake", hosts: 1, agentArguments: QoSAPITests.smallHost) { cluster in
            let token = cluster.adminToken
            #expect(try await cluster.createVM("h1", memoryMiB: 512, host: "host-1").state == .succeeded)
            #expect(try await cluster.start("h1").state == .succeeded)
            _ = try await cluster.waitForVM("h1") { $0.toolsStatus == .running }
            #expect(try await cluster.host("host-1").memoryAllocatedMiB == 512)
            let hibernated = try await cluster.hibernate("h1")
            #expect(hibernated.state == .succeeded && hibernated.message.contains("hibernated.state"), "\(hibernated.message)")
            #expect(try await cluster.vm("h1").state == .hibernated)
            #expect(try await cluster.host("host-1").memoryAllocatedMiB == 0, "a hibernated VM holds no host memory")

            let before = try cluster.databaseSnapshot()
            for (method, path, body, words) in [
                ("POST", "/api/v1/vms/h1/hibernate", nil as String?, "cannot hibernate VM 'h1': it is hibernated"),
                ("POST", "/api/v1/vms/h1/stop", #"{"force":false}"#, "stop --force discards its saved memory"),
                ("POST", "/api/v1/disks", #"{"vm":"h1","sizeBytes":16777216}"#, "is hibernated"),
                ("POST", "/api/v1/vms/h1/snapshots", #"{"name":"s"}"#, "is hibernated"),
            ] {
                let (code, answer) = try await cluster.raw(method, path, token: token, body: body)
                #expect(code == 409 && answer.contains(words), "\(method) \(path): \(code) \(answer)")
            }
            #expect(try cluster.databaseSnapshot() == before, "refusals change nothing")

            #expect(try await cluster.start("h1").state == .succeeded)
            #expect(try await cluster.vm("h1").state == .running)
            let events = try await cluster.events().filter { $0.targetName == "h1" }.map(\.kind)
            #expect(events.contains("vm.hibernated"), "\(events)")

            // Hibernate again, then throw the saved memory away.
            _ = try await cluster.waitForVM("h1") { $0.toolsStatus == .running }
            #expect(try await cluster.hibernate("h1").state == .succeeded)
            let discarded = try await cluster.stop("h1", force: true)
            #expect(discarded.state == .succeeded && discarded.message.contains("saved memory discarded"), "\(discarded.message)")
            #expect(try await cluster.vm("h1").state == .stopped)
        }
    }
}

/// Online resize through the API (fake driver: manager logic only).
@Suite("Resize API", .serialized)
struct ResizeAPITests {
    @Test("a running VM grows within its maximums and is admitted on its host; beyond them, or shrinking vCPUs, is refused and changes nothing")
    func resize() async throws {
        try await TestCluster.with(driver: "fake", hosts: 1, agentArguments: QoSAPITests.smallHost) { cluster in
            let token = cluster.adminToken
            let (created, answer) = try await cluster.raw("POST", "/api/v1/vms", token: token,
                                                          body: #"{"name":"g1","cpus":1,"memoryMiB":256,"maxCpus":2,"maxMemoryMiB":768,"host":"host-1"}"#)
            #expect(created == 202, "\(answer)")
            _ = try await cluster.waitForVM("g1") { $0.state == .stopped }
            #expect(try await cluster.createVM("other", memoryMiB: 512, host: "host-1").state == .succeeded)
            #expect(try await cluster.start("g1").state == .succeeded)
            #expect(try await cluster.start("other").state == .succeeded)

            let (grown, vm) = try await cluster.raw("PATCH", "/api/v1/vms/g1", token: token, body: #"{"cpus":2,"memoryMiB":512}"#)
            let compact = vm.replacingOccurrences(of: " ", with: "")
            #expect(grown == 200 && compact.contains(#""cpus":2"#) && compact.contains(#""memoryMiB":512"#) && compact.contains(#""onlineCpus":2"#), "\(vm)")
            #expect(try await cluster.vm("g1").qos?.memoryReservationMiB == 512, "without overcommit the reservation follows the memory")

            let before = try cluster.databaseSnapshot()
            for (body, status, words) in [
                (#"{"cpus":3}"#, 400, "beyond the maximum of 2"),
                (#"{"cpus":1}"#, 409, "only gains vCPUs"),
                (#"{"memoryMiB":768}"#, 422, "asked 768 MiB; 512 MiB free"),
                (#"{"maxCpus":4}"#, 409, "stop it to change it"),
                (#"{}"#, 200, "g1"),
            ] {
                let (code, answer) = try await cluster.raw("PATCH", "/api/v1/vms/g1", token: token, body: body)
                #expect(code == status && answer.contains(words), "\(body): \(code) \(answer)")
            }
            #expect(try cluster.databaseSnapshot() == before, "refusals change nothing")

            #expect(try await cluster.stop("g1", force: true).state == .succeeded)
            let (off, stopped) = try await cluster.raw("PATCH", "/api/v1/vms/g1", token: token, body: #"{"cpus":4,"memoryMiB":128}"#)
            let offCompact = stopped.replacingOccurrences(of: " ", with: "")
            #expect(off == 200 && offCompact.contains(#""cpus":4"#) && offCompact.contains(#""maxCpus":4"#), "\(stopped)")
        }
    }
}
