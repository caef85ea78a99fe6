import AsyncHTTPClient
@testable import BMC
import Foundation
import HostKit
import NIOCore
import NIOHTTP1
import Redfish
import ShepherdCore
import Testing

/// Shepherd's own BMC, in-process on a free port, over plain HTTP. Its "agent" is a harmless shell
/// that starts a `sleep` of its own; the host's "QEMU" is a `tail -f` the test starts, whose command
/// line mentions the vm id (as QEMU's `-pidfile …/vms/<id>/qemu.pid` does).
@Suite("BMC emulator", .serialized)
struct BMCEmulatorTests {
    @Test("the service root answers without credentials; everything else needs the right user and password")
    func authentication() async throws {
        try await BMCFixture.with { bmc in
            for path in ["/redfish/v1/", "/redfish/v1"] {
                let root = try await bmc.call(.GET, path, credentials: .anonymous)
                #expect(root.status == 200, "\(path): \(root.status) \(root.body)")
                #expect(root.body.contains(#""Systems":{"@odata.id":"/redfish/v1/Systems"}"#), "\(root.body)")
            }

            let anonymous = try await bmc.call(.GET, "/redfish/v1/Systems", credentials: .anonymous)
            #expect(anonymous.status == 401)
            #expect(anonymous.headers.first(name: "WWW-Authenticate") == #"Basic realm="shepherd-bmc""#)
            let wrongPassword = try await bmc.call(.GET, "/redfish/v1/Systems", credentials: .basic(bmc.user, "not-the-password"))
            #expect(wrongPassword.status == 401)
            #expect(wrongPassword.headers.first(name: "WWW-Authenticate") == #"Basic realm="shepherd-bmc""#)
            let wrongUser = try await bmc.call(.GET, "/redfish/v1/Systems", credentials: .basic("root", bmc.password))
            #expect(wrongUser.status == 401)
            let resetWithoutCredentials = try await bmc.call(.POST, bmc.emulator.resetPath, credentials: .anonymous, body: #"{"ResetType":"ForceOff"}"#)
            #expect(resetWithoutCredentials.status == 401)
            #expect(await bmc.emulator.powerState == .on, "an unauthenticated reset must not change anything")

            let systems = try await bmc.call(.GET, "/redfish/v1/Systems")
            #expect(systems.status == 200)
            let collection = try JSONDecoder().decode(RedfishWire.Collection.self, from: Data(systems.body.utf8))
            #expect(collection.members == [RedfishWire.Link("/redfish/v1/Systems/\(bmc.name)")])
            #expect(collection.count == 1)

            #expect(!bmc.credentials.description.contains(bmc.password))
            #expect(!String(reflecting: bmc.credentials).contains(bmc.password))
            var dumped = ""
            dump(bmc.credentials, to: &dumped)
            #expect(!dumped.contains(bmc.password), "\(dumped)")
        }
    }

    @Test("ForceOff kills the agent, its children and the host's QEMU, and reports Off; On starts a new agent")
    func forceOffAndOn() async throws {
        try await BMCFixture.with { bmc in
            let system = try await bmc.system()
            #expect(system.powerState == .on)
            #expect(system.id == bmc.name)
            #expect(system.actions?.reset?.target == "/redfish/v1/Systems/\(bmc.name)/Actions/ComputerSystem.Reset")
            let allowed = system.actions?.reset?.allowableValues ?? []
            #expect(allowed.contains(.forceOff) && allowed.contains(.on) && allowed.contains(.gracefulShutdown))
            #expect(!allowed.contains(.nmi))

            let agent = try #require(await bmc.emulator.agentPid)
            let agentChildren = try await bmc.childrenOf(agent)
            let qemu = try bmc.startFakeQEMU(vmID: "vm-1")
            let decoy = try bmc.startDecoy(vmID: "vm-2")
            #expect(bmc.emulator.hostQEMUPids() == [qemu.pid], "only the process whose command line names its vm is that vm's QEMU")

            let off = try await bmc.reset("ForceOff")
            #expect(off.status == 204, "\(off.body)")
            #expect(!Processes.isAlive(agent), "the agent (pid \(agent)) must be dead when ForceOff answers")
            for child in agentChildren { #expect(!Processes.isSame(child), "the agent's child \(child.pid) must be dead") }
            #expect(!Processes.isAlive(qemu.pid), "the host's QEMU (pid \(qemu.pid)) must be dead when ForceOff answers")
            #expect(Processes.isAlive(decoy.pid), "a pidfile naming a process without the vm id in its command line is not a QEMU of the host")
            #expect(try await bmc.system().powerState == .off)
            #expect(await bmc.emulator.agentPid == nil)

            let offAgain = try await bmc.reset("ForceOff")
            #expect(offAgain.status == 204, "ForceOff of an Off machine is a no-op: \(offAgain.body)")

            let on = try await bmc.reset("On")
            #expect(on.status == 204, "\(on.body)")
            let newAgent = try #require(await bmc.emulator.agentPid)
            #expect(newAgent != agent)
            #expect(Processes.isAlive(newAgent))
            #expect(try await bmc.system().powerState == .on)
            let onAgain = try await bmc.reset("On")
            #expect(onAgain.status == 204)
            #expect(await bmc.emulator.agentPid == newAgent, "On of an On machine starts nothing")

            let restart = try await bmc.reset("ForceRestart")
            #expect(restart.status == 204)
            let restarted = try #require(await bmc.emulator.agentPid)
            #expect(restarted != newAgent && !Processes.isAlive(newAgent) && Processes.isAlive(restarted))
            #expect(try await bmc.system().powerState == .on)
        }
    }

    @Test("an unknown or unsupported ResetType and a malformed body get 400 with a Redfish error; an unknown system 404")
    func refusals() async throws {
        try await BMCFixture.with { bmc in
            let agent = try #require(await bmc.emulator.agentPid)
            for (body, code, text) in [(#"{"ResetType":"Explode"}"#, "Base.1.8.ActionParameterValueNotInList", "Explode"),
                                       (#"{"ResetType":"Nmi"}"#, "Base.1.8.ActionParameterNotSupported", "Nmi"),
                                       (#"{"Other":"ForceOff"}"#, "Base.1.8.ActionParameterMissing", "ResetType"),
                                       ("ForceOff", "Base.1.8.MalformedJSON", "ResetType")] {
                let answer = try await bmc.call(.POST, bmc.emulator.resetPath, body: body)
                #expect(answer.status == 400, "\(body): \(answer.status) \(answer.body)")
                let error = try? JSONDecoder().decode(RedfishWire.ErrorBody.self, from: Data(answer.body.utf8))
                #expect(error?.error.code == code, "\(body): \(answer.body)")
                #expect(error?.error.message?.contains(text) == true, "\(body): \(answer.body)")
            }
            let unknown = try await bmc.call(.POST, "/redfish/v1/Systems/other-host/Actions/ComputerSystem.Reset", body: #"{"ResetType":"ForceOff"}"#)
            #expect(unknown.status == 404, "\(unknown.body)")
            #expect(unknown.body.contains("other-host"))
            #expect(try await bmc.call(.GET, "/redfish/v1/Systems/other-host").status == 404)
            #expect(await bmc.emulator.agentPid == agent, "no refused request may touch the machine")
            #expect(await bmc.emulator.powerState == .on)
        }
    }

    @Test("GracefulShutdown sends the agent SIGTERM before the power cut; a crashed agent leaves the machine On")
    func gracefulShutdownAndCrash() async throws {
        // This agent notes SIGTERM in its log and exits.
        let agent = ["/bin/sh", "-c", #"trap 'echo agent-got-sigterm; exit 0' TERM; while :; do sleep 0.2; done"#]
        try await BMCFixture.with(agent: agent) { bmc in
            let first = try #require(await bmc.emulator.agentPid)
            let qemu = try bmc.startFakeQEMU(vmID: "vm-9")
            let off = try await bmc.reset("GracefulShutdown")
            #expect(off.status == 204, "\(off.body)")
            #expect(!Processes.isAlive(first) && !Processes.isAlive(qemu.pid))
            #expect(try await bmc.system().powerState == .off)
            let log = (try? String(contentsOfFile: bmc.agentLog, encoding: .utf8)) ?? ""
            #expect(log.contains("agent-got-sigterm"), "the agent's log: \(log)")

            #expect(try await bmc.reset("PushPowerButton").status == 204)
            let second = try #require(await bmc.emulator.agentPid)
            #expect(try await bmc.system().powerState == .on)

            // The agent dies on its own: the host is still powered.
            #expect(Processes.kill(second))
            for _ in 0..<200 {
                if await bmc.emulator.agentPid == nil { break }
                try await Task.sleep(for: .milliseconds(25))
            }
            #expect(await bmc.emulator.agentPid == nil)
            #expect(try await bmc.system().powerState == .on)
            #expect(try await bmc.reset("PowerCycle").status == 204)
            let third = try #require(await bmc.emulator.agentPid)
            #expect(third != second && Processes.isAlive(third))
        }
    }

    @Test("Shepherd's Redfish client powers the emulated host off and on")
    func redfishClient() async throws {
        try await BMCFixture.with { bmc in
            let client = try RedfishClient(address: "http://127.0.0.1:\(bmc.port)", user: bmc.user, password: bmc.password)
            #expect(try await client.powerState() == .on)
            let agent = try #require(await bmc.emulator.agentPid)
            let qemu = try bmc.startFakeQEMU(vmID: "vm-c")
            #expect(try await client.powerOff(pollEvery: .milliseconds(50)))
            #expect(!Processes.isAlive(agent) && !Processes.isAlive(qemu.pid))
            #expect(try await client.powerState() == .off)
            #expect(try await client.powerOn(pollEvery: .milliseconds(50)))
            #expect(try await client.powerState() == .on)

            let named = try RedfishClient(address: "http://127.0.0.1:\(bmc.port)/\(bmc.name)", user: bmc.user, password: bmc.password)
            #expect(try await named.system().id == bmc.name)
            let wrong = try RedfishClient(address: "http://127.0.0.1:\(bmc.port)", user: bmc.user, password: "nope")
            let error = await #expect(throws: ShepherdError.self) { try await wrong.powerState() }
            #expect(error?.code == .bmcFailed)
        }
    }
}

/// One emulator serving on a free port, a directory for its host, and every process the test
/// started; `with` ends them all by pid, whatever the test did.
final class BMCFixture: @unchecked Sendable {
    let name = "bmc-test-host"
    let user = "admin"
    let password = "s3cret-\(UUID().uuidString.prefix(8))"
    let directory: String
    let emulator: BMCEmulator
    let credentials: BMCCredentials
    var port = 0
    var agentLog: String { directory + "/agent.log" }
    private let lock = NSLock()
    private var started: [ChildProcess] = []
    private var extraPids: [Processes.Identity] = []

    private init(agent: [String]) throws {
        directory = NSTemporaryDirectory() + "shepherd-bmc-test-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: directory + "/state/vms", withIntermediateDirectories: true)
        let passwordFile = directory + "/password"
        try Data((password + "\n").utf8).write(to: URL(fileURLWithPath: passwordFile))
        credentials = try BMCCredentials.load(user: user, passwordFile: passwordFile)
        emulator = BMCEmulator(name: name, agentArguments: agent, agentLog: directory + "/agent.log",
                               stateDirectory: directory + "/state", gracePeriod: .seconds(5))
    }

    static func with(agent: [String] = ["/bin/sh", "-c", "sleep 600 & wait"],
                     _ body: (BMCFixture) async throws -> Void) async throws {
        let fixture = try BMCFixture(agent: agent)
        let (ports, continuation) = AsyncStream<Int>.makeStream()
        let server = Task {
            try await fixture.emulator.serve(host: "127.0.0.1", port: 0, credentials: fixture.credentials) { continuation.yield($0) }
        }
        var failure: (any Error)?
        do {
            let listening = Task { for await port in ports { return port }; return 0 }
            let timeout = Task { try await Task.sleep(for: .seconds(20)); listening.cancel() }
            fixture.port = await listening.value
            timeout.cancel()
            guard fixture.port > 0 else { throw HostKitError(kind: .failed, message: "the BMC did not start listening") }
            try await fixture.emulator.start(poweredOn: true)
            try await body(fixture)
        } catch {
            failure = error
        }
        await fixture.cleanUp()
        server.cancel()
        _ = await server.result
        if let failure { throw failure }
    }

    /// A stand-in for the QEMU of `vmID`: its pidfile in the host's state dir, its command line naming the vm.
    func startFakeQEMU(vmID: String) throws -> ChildProcess {
        let vm = directory + "/state/vms/" + vmID
        try FileManager.default.createDirectory(atPath: vm, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: vm + "/serial.log", contents: nil)
        let child = try track(ChildProcess.spawn("/usr/bin/tail", ["-f", vm + "/serial.log"], logFile: directory + "/qemu.log"))
        try Data("\(child.pid)\n".utf8).write(to: URL(fileURLWithPath: vm + "/qemu.pid"))
        return child
    }

    /// A pidfile for `vmID` naming a live process that is not that vm's QEMU (e.g. a reused pid).
    func startDecoy(vmID: String) throws -> ChildProcess {
        let vm = directory + "/state/vms/" + vmID
        try FileManager.default.createDirectory(atPath: vm, withIntermediateDirectories: true)
        let child = try track(ChildProcess.spawn("/bin/sleep", ["600"], logFile: directory + "/decoy.log"))
        try Data("\(child.pid)\n".utf8).write(to: URL(fileURLWithPath: vm + "/qemu.pid"))
        return child
    }

    /// The processes `pid` started, once it has started one (remembered for the clean-up).
    func childrenOf(_ pid: Int32) async throws -> [Processes.Identity] {
        for _ in 0..<200 {
            let found = Processes.descendants(of: pid)
            if !found.isEmpty {
                lock.withLock { extraPids += found }
                return found
            }
            try await Task.sleep(for: .milliseconds(25))
        }
        throw HostKitError(kind: .failed, message: "pid \(pid) started no child")
    }

    func system() async throws -> RedfishWire.ComputerSystem {
        let answer = try await call(.GET, "/redfish/v1/Systems/\(name)")
        guard answer.status == 200 else { throw HostKitError(kind: .failed, message: "GET system: \(answer.status) \(answer.body)") }
        return try JSONDecoder().decode(RedfishWire.ComputerSystem.self, from: Data(answer.body.utf8))
    }

    func reset(_ type: String) async throws -> (status: Int, headers: HTTPHeaders, body: String) {
        try await call(.POST, emulator.resetPath, body: #"{"ResetType":"\#(type)"}"#)
    }

    enum Credentials {
        /// The fixture's user and password.
        case right
        /// No Authorization header.
        case anonymous
        case basic(String, String)
    }

    /// One HTTP call.
    func call(_ method: HTTPMethod, _ path: String, credentials: Credentials = .right,
              body: String? = nil) async throws -> (status: Int, headers: HTTPHeaders, body: String) {
        var request = HTTPClientRequest(url: "http://127.0.0.1:\(port)\(path)")
        request.method = method
        let pair: (String, String)? = switch credentials {
        case .right: (user, password)
        case .anonymous: nil
        case .basic(let user, let password): (user, password)
        }
        if let (user, password) = pair {
            request.headers.add(name: "Authorization", value: "Basic " + Data("\(user):\(password)".utf8).base64EncodedString())
        }
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(string: body))
        }
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(30))
        let bytes = try await response.body.collect(upTo: 1 << 20)
        return (Int(response.status.code), response.headers, String(buffer: bytes))
    }

    private func track(_ child: ChildProcess) -> ChildProcess {
        lock.withLock { started.append(child) }
        return child
    }

    /// Power off (kills the agent, its children and the host's QEMUs), then every process the test
    /// started, by pid.
    private func cleanUp() async {
        try? await emulator.reset(.forceOff)
        for child in lock.withLock({ started }) { await child.terminate(grace: .seconds(2)) }
        for identity in lock.withLock({ extraPids }) where Processes.isSame(identity) { _ = Processes.kill(identity.pid) }
        if ProcessInfo.processInfo.environment["SHEPHERD_KEEP_TEST_DIRS"] == nil {
            try? FileManager.default.removeItem(atPath: directory)
        }
    }
}
