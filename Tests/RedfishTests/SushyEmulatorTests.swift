import Foundation
import HostKit
import Redfish
import ShepherdCore
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The Redfish client against sushy-tools' emulator (OpenStack's reference Redfish BMC), run as a
/// real process with its fake driver and HTTP Basic auth, so the client is checked against a BMC
/// Shepherd did not write.
@Suite("Redfish client against sushy-tools")
struct SushyEmulatorTests {
    @Test("the client reads the power state of a sushy-tools system, selected by order, path or query")
    func readsPowerState() async throws {
        try await SushyEmulator.with { sushy in
            let client = try sushy.client()
            let system = try await client.system()
            #expect(system.id == SushyEmulator.firstID)
            #expect(system.name == "shepherd-host-1")
            #expect(try await client.powerState() == .on)

            #expect(try await sushy.client(suffix: "?system=\(SushyEmulator.secondID)").powerState() == .off)
            #expect(try await sushy.client(suffix: "/\(SushyEmulator.secondID)").powerState() == .off)
            #expect(try await sushy.client(suffix: "/redfish/v1/Systems/\(SushyEmulator.secondID)").system().id == SushyEmulator.secondID)

            let error = await #expect(throws: ShepherdError.self) { try await sushy.client(suffix: "?system=nope").powerState() }
            #expect(error?.code == .bmcFailed)
            #expect(error?.message.contains("has no system 'nope'; it has: ") == true, "\(error?.message ?? "")")
            #expect(error?.message.contains(SushyEmulator.secondID) == true, "\(error?.message ?? "")")
        }
    }

    @Test("the client reads power state and powers a sushy-tools system off and on")
    func powersOffAndOn() async throws {
        try await SushyEmulator.with { sushy in
            let client = try sushy.client()
            #expect(try await client.powerState() == .on)
            // sushy's fake driver applies a power change 1–11 s after the request.
            #expect(try await client.powerOff(confirmWithin: .seconds(30)) == true)
            #expect(try await client.powerState() == .off)
            #expect(try await client.powerOff(confirmWithin: .seconds(30)) == false, "already off: no reset is sent")
            #expect(try await client.powerOn(confirmWithin: .seconds(30)) == true)
            #expect(try await client.powerState() == .on)
        }
    }

    @Test("a reset type the BMC does not list is refused naming the ones it allows")
    func refusesUnlistedResetType() async throws {
        try await SushyEmulator.with { sushy in
            let client = try sushy.client()
            let error = await #expect(throws: ShepherdError.self) { try await client.reset(.powerCycle) }
            #expect(error?.code == .bmcFailed)
            let message = error?.message ?? ""
            #expect(message.contains("does not allow reset type PowerCycle"), "\(message)")
            #expect(message.contains("ForceOff") && message.contains("GracefulShutdown"), "\(message)")
            #expect(try await client.powerState() == .on, "nothing was sent")
        }
    }

    @Test("a wrong password is refused as bmc_failed naming the user, and no text shows the password")
    func wrongPassword() async throws {
        try await SushyEmulator.with { sushy in
            let wrong = "wrong-\(UUID().uuidString)"
            let client = try sushy.client(password: wrong)
            for call in [{ _ = try await client.powerState() }, { try await client.reset(.forceOff) }] as [@Sendable () async throws -> Void] {
                let error = await #expect(throws: ShepherdError.self) { try await call() }
                #expect(error?.code == .bmcFailed)
                let message = error?.message ?? ""
                #expect(message.contains("refused the credentials for user '\(SushyEmulator.user)'"), "\(message)")
                #expect(!message.contains(wrong))
                #expect(!String(describing: error).contains(wrong))
            }
            var dumped = ""
            dump(client, to: &dumped)
            for text in [String(describing: client), String(reflecting: client), "\(client)", dumped] {
                #expect(!text.contains(wrong), "\(text)")
                #expect(text.contains("<redacted>"), "\(text)")
            }
            #expect(try await sushy.client().powerState() == .on, "the system was not touched")
        }
    }

    @Test("a BMC that does not answer is bmc_unreachable naming the address, the call and the timeout")
    func unreachable() async throws {
        // Nothing listens: refused at once.
        let closedPort = try TCP.freePort()
        let refused = try RedfishClient(address: "redfish+http://127.0.0.1:\(closedPort)", user: "u", password: "p4ssw0rd", timeout: .seconds(2))
        let error = await #expect(throws: ShepherdError.self) { try await refused.powerState() }
        #expect(error?.code == .bmcUnreachable)
        #expect(error?.message.hasPrefix("the BMC at http://127.0.0.1:\(closedPort) did not answer GET /redfish/v1/ within 2 s") == true, "\(error?.message ?? "")")

        // Accepted by the kernel but never answered: the per-call timeout ends it.
        let silent = try SilentListener()
        defer { silent.close() }
        let client = try RedfishClient(address: "redfish+http://127.0.0.1:\(silent.port)", user: "u", password: "p4ssw0rd", timeout: .seconds(1))
        let started = ContinuousClock.now
        let timedOut = await #expect(throws: ShepherdError.self) { try await client.powerOff(confirmWithin: .seconds(5)) }
        #expect(ContinuousClock.now - started < .seconds(4))
        #expect(timedOut?.code == .bmcUnreachable)
        #expect(timedOut?.message.contains("did not answer GET /redfish/v1/ within 1 s") == true, "\(timedOut?.message ?? "")")
    }

    @Test("a BMC with a self-signed certificate is reached only when the client is told insecure")
    func selfSignedCertificate() async throws {
        try await SushyEmulator.with(https: true) { sushy in
            // AsyncHTTPClient retries a failed handshake until the call's deadline: keep it short.
            let verifying = try sushy.client(timeout: .seconds(2))
            let error = await #expect(throws: ShepherdError.self) { try await verifying.powerState() }
            #expect(error?.code == .bmcUnreachable)
            let message = error?.message ?? ""
            #expect(message.contains("the TLS handshake with the BMC at https://127.0.0.1:\(sushy.port) failed for GET /redfish/v1/"), "\(message)")
            #expect(message.contains("configure the BMC as insecure"), "\(message)")

            #expect(try await sushy.client(insecure: true).powerState() == .on)
        }
    }

    // MARK: - Addresses

    struct Parsed: Sendable, CustomTestStringConvertible {
        var baseURL: String
        var host: String
        var port: Int?
        var systemID: String?
        var testDescription: String { "\(baseURL) system \(systemID ?? "-")" }
    }

    @Test("BMC addresses parse into scheme, host, port and system", arguments: [
        ("redfish://10.0.0.5", Parsed(baseURL: "https://10.0.0.5", host: "10.0.0.5")),
        ("REDFISH://bmc-7.lab.example:8443", Parsed(baseURL: "https://bmc-7.lab.example:8443", host: "bmc-7.lab.example", port: 8443)),
        ("redfish+http://127.0.0.1:8000", Parsed(baseURL: "http://127.0.0.1:8000", host: "127.0.0.1", port: 8000)),
        ("https://10.0.0.5/", Parsed(baseURL: "https://10.0.0.5", host: "10.0.0.5")),
        ("http://10.0.0.5:8000/1", Parsed(baseURL: "http://10.0.0.5:8000", host: "10.0.0.5", port: 8000, systemID: "1")),
        ("https://10.0.0.5/redfish/v1/Systems/System.Embedded.1",
         Parsed(baseURL: "https://10.0.0.5", host: "10.0.0.5", systemID: "System.Embedded.1")),
        ("redfish://10.0.0.5?system=abc%2Fdef", Parsed(baseURL: "https://10.0.0.5", host: "10.0.0.5", systemID: "abc/def")),
        ("redfish://10.0.0.5/1?system=1", Parsed(baseURL: "https://10.0.0.5", host: "10.0.0.5", systemID: "1")),
        ("redfish://[fd00::5]:443/1", Parsed(baseURL: "https://[fd00::5]:443", host: "fd00::5", port: 443, systemID: "1")),
        ("  redfish+http://bmc  ", Parsed(baseURL: "http://bmc", host: "bmc")),
    ])
    func parsesAddresses(text: String, expected: Parsed) throws {
        let address = try RedfishClient.Address(parsing: text)
        #expect(address.baseURL == expected.baseURL)
        #expect(address.host == expected.host)
        #expect(address.port == expected.port)
        #expect(address.systemID == expected.systemID)
    }

    @Test("bad BMC addresses are refused as invalid_field naming bmc and the rule", arguments: [
        ("", "must start with redfish://"),
        ("10.0.0.5", "must start with redfish://"),
        ("ftp://10.0.0.5", "has scheme 'ftp'"),
        ("redfish://", "has no host"),
        ("redfish://:8000", "has no host"),
        ("redfish://10.0.0.5:0", "a port is 1–65535"),
        ("redfish://10.0.0.5:65536", "a port is 1–65535"),
        ("redfish://10.0.0.5:+80", "a port is 1–65535"),
        ("redfish://10.0.0.5:", "a port is 1–65535"),
        ("redfish://admin:hunter2@10.0.0.5", "must not carry credentials"),
        ("redfish://10.0.0.5/a/b", "has path '/a/b'"),
        ("redfish://10.0.0.5?foo=1", "the only one known is system=ID"),
        ("redfish://10.0.0.5?system=", "has an empty system="),
        ("redfish://10.0.0.5/1?system=2", "names system '1' in its path and '2' in its query"),
        ("redfish://10.0.0.5#x", "must not have a fragment"),
        ("redfish://fd00::5", "more than one ':'"),
        ("redfish://[zz]", "not an IPv6 address"),
        ("redfish://[fd00::5", "unclosed '['"),
        ("redfish://bad host", "not a host name or IP address"),
    ])
    func refusesBadAddresses(text: String, rule: String) {
        let error = #expect(throws: ShepherdError.self) {
            try RedfishClient(address: text, user: "admin", password: "hunter2")
        }
        #expect(error?.code == .invalidField)
        let message = error?.message ?? ""
        #expect(message.hasPrefix("bmc: "), "\(message)")
        #expect(message.contains(rule), "\(message)")
        #expect(!message.contains("hunter2"), "\(message)")
    }
}

// MARK: - The emulator

/// A setup problem, shown as the failing test's message.
struct SetupFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// One sushy-emulator process with the fake driver, two systems and Basic auth, on a free port of
/// 127.0.0.1, in a directory of its own (config, htpasswd, the driver's state, the log).
struct SushyEmulator: Sendable {
    static let user = "shepherd"
    static let password = "Corr3ct-horse&battery"
    /// The fake driver lists systems by uuid; these sort the On one first.
    static let firstID = "00000000-0000-4000-8000-000000000001"
    static let secondID = "00000000-0000-4000-8000-000000000002"

    let process: ChildProcess
    let port: Int
    let https: Bool
    let directory: String

    var address: String { "\(https ? "redfish" : "redfish+http")://127.0.0.1:\(port)" }

    func client(
        password: String = SushyEmulator.password, suffix: String = "", insecure: Bool = false, timeout: Duration = .seconds(10)
    ) throws -> RedfishClient {
        try RedfishClient(address: address + suffix, user: Self.user, password: password, timeout: timeout, insecure: insecure)
    }

    /// Runs `body` against a fresh emulator and stops it (by pid) however `body` ends.
    static func with<T: Sendable>(https: Bool = false, _ body: (SushyEmulator) async throws -> T) async throws -> T {
        let sushy = try await start(https: https)
        do {
            let result = try await body(sushy)
            await sushy.stop()
            return result
        } catch {
            await sushy.stop()
            throw error
        }
    }

    static func executable() throws -> String {
        let path = ProcessInfo.processInfo.environment["SHEPHERD_SUSHY_EMULATOR"] ?? "/opt/shepherd/sushy/bin/sushy-emulator"
        guard FileManager.default.isExecutableFile(atPath: path) else {
            throw SetupFailure("sushy-emulator is not installed at \(path): run scripts/install-deps.sh (or set SHEPHERD_SUSHY_EMULATOR to one)")
        }
        return path
    }

    static func start(https: Bool) async throws -> SushyEmulator {
        let emulator = try executable()
        let directory = NSTemporaryDirectory() + "shepherd-sushy-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)

        // sushy accepts bcrypt hashes only; the emulator's own venv has bcrypt. Cost 4 keeps each
        // request's check fast. The password goes through the environment, not argv.
        let siblingPython = URL(fileURLWithPath: emulator).deletingLastPathComponent().appendingPathComponent("python3").path
        let python = FileManager.default.isExecutableFile(atPath: siblingPython) ? siblingPython : "python3"
        let hash = try await Command.run(
            python, ["-c", "import bcrypt, os, sys; sys.stdout.write(bcrypt.hashpw(os.environ['PW'].encode(), bcrypt.gensalt(rounds=4)).decode())"],
            environment: ["PW": password])
        guard hash.status == 0, hash.stdout.hasPrefix("$2") else {
            throw SetupFailure("could not hash the test password with \(python) and bcrypt (run scripts/install-deps.sh): \(hash.stderr)")
        }
        try "\(user):\(hash.stdout)\n".write(toFile: directory + "/htpasswd", atomically: true, encoding: .utf8)

        let port = try TCP.freePort()
        func quoted(_ text: String) -> String { "'" + text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "'", with: "\\'") + "'" }
        var config = """
            SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'
            SUSHY_EMULATOR_LISTEN_PORT = \(port)
            SUSHY_EMULATOR_AUTH_FILE = \(quoted(directory + "/htpasswd"))
            SUSHY_EMULATOR_FAKE_DRIVER = True
            # The fake driver persists power states; by default in one directory shared by every run.
            SUSHY_EMULATOR_STATE_DIR = \(quoted(directory + "/state"))
            SUSHY_EMULATOR_FAKE_SYSTEMS = [
                {'uuid': '\(firstID)', 'name': 'shepherd-host-1', 'power_state': 'On', 'external_notifier': False, 'nics': []},
                {'uuid': '\(secondID)', 'name': 'shepherd-host-2', 'power_state': 'Off', 'external_notifier': False, 'nics': []},
            ]

            """
        if https {
            let tls = try await Command.run("openssl", [
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                "-keyout", directory + "/key.pem", "-out", directory + "/cert.pem",
            ])
            guard tls.status == 0 else { throw SetupFailure("could not make a self-signed certificate with openssl: \(tls.stderr)") }
            config += "SUSHY_EMULATOR_SSL_CERT = \(quoted(directory + "/cert.pem"))\nSUSHY_EMULATOR_SSL_KEY = \(quoted(directory + "/key.pem"))\n"
        }
        try config.write(toFile: directory + "/sushy.conf", atomically: true, encoding: .utf8)

        let log = directory + "/sushy.log"
        let process = try ChildProcess.spawn(emulator, ["--config", directory + "/sushy.conf"], logFile: log)
        let sushy = SushyEmulator(process: process, port: port, https: https, directory: directory)
        let deadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < deadline {
            guard process.isRunning else {
                let output = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
                await sushy.stop()
                throw SetupFailure("sushy-emulator (pid \(process.pid)) exited during start-up:\n\(output.suffix(3000))")
            }
            if await TCP.reachable("127.0.0.1", port: port, timeout: .milliseconds(200)).0 { return sushy }
            try? await Task.sleep(for: .milliseconds(100))
        }
        let output = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        await sushy.stop()
        throw SetupFailure("sushy-emulator (pid \(process.pid)) did not listen on port \(port) within 30 s:\n\(output.suffix(3000))")
    }

    /// Stops the process (its pid's group: SIGTERM, then SIGKILL) and removes its directory.
    func stop() async {
        await process.terminate(grace: .seconds(5))
        try? FileManager.default.removeItem(atPath: directory)
    }
}

/// A TCP socket that listens but never accepts: the kernel completes the handshake and the
/// request goes unanswered, like a wedged BMC.
struct SilentListener {
    let fd: Int32
    let port: Int

    init() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw SetupFailure("socket(): errno \(errno)") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, length) == 0 && listen(fd, 8) == 0 && getsockname(fd, $0, &length) == 0
            }
        }
        guard ok else {
            Glibc.close(fd)
            throw SetupFailure("could not listen on 127.0.0.1: errno \(errno)")
        }
        self.fd = fd
        port = Int(UInt16(bigEndian: address.sin_port))
    }

    func close() { Glibc.close(fd) }
}
