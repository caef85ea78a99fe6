import ArgumentParser
import BMC
import Foundation
import ServerKit
import ShepherdCore

/// `shepherd bmc`: a Redfish BMC for one demo or test host (its agent and that agent's QEMUs).
struct BMCCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bmc", abstract: "Run a Redfish BMC for one emulated host: power off cuts its agent and its QEMUs.",
        discussion: """
            Serves Redfish (/redfish/v1/, /redfish/v1/Systems/NAME and its ComputerSystem.Reset action) with HTTP Basic authentication on everything but the service root. Power on starts the agent command line given after `--`; ForceOff kills (SIGKILL) the agent and every QEMU of the host found from STATE_DIR/vms/*/qemu.pid; GracefulShutdown sends the agent SIGTERM and waits up to 10 s first.

            On SIGTERM or SIGINT the BMC stops serving and ends the agent it started with SIGTERM (SIGKILL after 10 s). QEMU processes of the host are left running: ending them is the caller's cleanup (or the next BMC's, started with --power off).

            Example:
              shepherd bmc --name host-1 --listen 127.0.0.1:8101 \\
                --user admin --password-file bmc-password \\
                --state-dir /var/lib/shepherd/hosts/host-1 \\
                --agent-log host-1.log -- \\
                ip netns exec host-1 shepherd agent --name host-1 ...
            """)

    @Option(help: "The host's name (also the Redfish system id).") var name: String
    @Option(help: "host:port to serve Redfish on.") var listen: String
    @Option(help: "The user HTTP Basic authentication accepts.") var user = "admin"
    @Option(help: "File holding the password (trailing newline ignored).") var passwordFile: String
    @Option(help: "The agent's state directory (its QEMUs' pidfiles are under vms/).") var stateDir: String
    @Option(help: "File the agent's output is appended to.") var agentLog: String
    @Option(help: "Initial power: on (start the agent) or off (make sure none of the host's processes run).")
    var power = "on"
    @Argument(parsing: .postTerminator, help: "The agent's command line, after `--`.") var agentCommand: [String] = []

    func validate() throws {
        guard power == "on" || power == "off" else { throw ValidationError("--power must be on or off") }
        guard !agentCommand.isEmpty else { throw ValidationError("give the agent's command line after `--`") }
        _ = try ListenAddress.parse(listen)
    }

    private enum Event: Sendable {
        case listening(Int)
        case serverEnded((any Error)?)
    }

    func run() async throws {
        try Validate.name(name, field: "--name")
        let (host, port) = try ListenAddress.parse(listen)
        let credentials = try BMCCredentials.load(user: user, passwordFile: passwordFile)
        // The agent is supervised like a systemd service: restarted 2 s after it exits.
        let emulator = BMCEmulator(name: name, agentArguments: agentCommand, agentLog: agentLog, stateDirectory: stateDir,
                                   restartAgentAfter: .seconds(2))

        // Serve first and power on once listening, so a port in use starts nothing. SIGTERM or
        // SIGINT stops the server gracefully; then the agent is ended.
        let (events, continuation) = AsyncStream<Event>.makeStream()
        let server = Task {
            do {
                try await emulator.serve(host: host, port: port, credentials: credentials, stopOnSignals: true) {
                    continuation.yield(.listening($0))
                }
                continuation.yield(.serverEnded(nil))
            } catch {
                continuation.yield(.serverEnded(error))
            }
        }
        var failure: (any Error)?
        loop: for await event in events {
            switch event {
            case .listening(let bound):
                do {
                    try await emulator.start(poweredOn: power == "on")
                    print("BMC of \(name) serving Redfish on http://\(host):\(bound)\(emulator.systemPath), power \(await emulator.powerState.rawValue)")
                    fflush(nil)
                } catch {
                    failure = error
                    break loop
                }
            case .serverEnded(let error):
                failure = error
                break loop
            }
        }
        server.cancel()
        _ = await server.value
        continuation.finish()
        await emulator.shutdownAgent()
        if let failure { throw failure }
    }
}
