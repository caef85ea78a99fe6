import ArgumentParser
import Foundation

@main
struct Shepherd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "shepherd",
        abstract: "Manage a cluster of QEMU/KVM hosts: VMs, hosts, tasks.",
        discussion: """
            The CLI talks to the manager at http://127.0.0.1:7443 unless --url or SHEPHERD_URL says
            otherwise, and authenticates with the admin token from --token, SHEPHERD_TOKEN, or
            /var/lib/shepherd/admin-token (SHEPHERD_STATE_DIR moves it).
            """,
        subcommands: [
            VMCommand.self, HostCommand.self, ClusterCommand.self, DatastoreCommand.self, TemplateCommand.self,
            TaskCommand.self, EventCommand.self, ManagerCommand.self, AgentCommand.self, DemoCommand.self,
            DRSCommand.self, RuleCommand.self, SimulateCommand.self, BMCCommand.self, DiskCommand.self, SnapshotCommand.self,
            DVSCommand.self, PortGroupCommand.self, NICCommand.self, NetCommand.self,
        ])
}
