import Foundation
import Testing
import TestSupport

/// HA settings and admission control through the API (fake driver: manager logic only).
@Suite("HA admission API", .serialized)
struct HAAPITests {
    @Test("bad HA settings are refused naming the field; a start that breaks host-failures:1 is refused with the numbers")
    func admission() async throws {
        try await TestCluster.with(driver: "fake", hosts: 2) { cluster in
            for (body, text) in [(#"{"ha":{"admission":"percent:150"}}"#, "ha.admission"),
                                 (#"{"ha":{"admission":"failover-hosts:nope"}}"#, "nope"),
                                 (#"{"ha":{"admission":"host-failures:0"}}"#, "ha.admission"),
                                 (#"{"ha":{"admission":"sometimes"}}"#, "ha.admission")] {
                let (status, answer) = try await cluster.setCluster(body)
                #expect(status == 400 && answer.contains(text), "\(body): \(status) \(answer)")
            }
            let (ok, settings) = try await cluster.setCluster(#"{"ha":{"enabled":true,"admission":"host-failures:1"}}"#)
            #expect(ok == 200 && settings.replacingOccurrences(of: " ", with: "").contains(#""admission":"host-failures:1""#), "\(settings)")

            // Two VMs of two thirds of a host each: either fits alone on the other host, both do not.
            let host = try await cluster.host("host-1")
            let size = (host.memoryTotalMiB - 512) * 2 / 3
            _ = try await cluster.createVM("p1", memoryMiB: size, host: "host-1")
            _ = try await cluster.createVM("p2", memoryMiB: size, host: "host-2")
            #expect(try await cluster.start("p1").state == .succeeded)
            let (refused, why) = try await cluster.raw("POST", "/api/v1/vms/p2/start", token: cluster.adminToken, body: "{}")
            #expect(refused == 422, "\(why)")
            #expect(why.contains("host failures tolerated: 1") && why.contains("\(size)"), "\(why)")
            #expect(try await cluster.vm("p2").state == .stopped)

            // An unprotected VM (policy stop) is outside admission control.
            let (patched, vm) = try await cluster.raw("PATCH", "/api/v1/vms/p2", token: cluster.adminToken, body: #"{"haPolicy":"stop"}"#)
            #expect(patched == 200 && vm.contains("stop"), "\(vm)")
            #expect(try await cluster.start("p2").state == .succeeded)
            #expect(try await cluster.raw("PATCH", "/api/v1/vms/p2", token: cluster.adminToken, body: #"{"haPriority":"urgent"}"#).0 == 400)
        }
    }
}
