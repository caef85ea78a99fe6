import Foundation

/// One Open vSwitch instance, driven through `ovs-vsctl`/`ovs-appctl`/`ovs-ofctl` with argv arrays
/// (10–15 s timeouts).
///
/// Either the machine's own (`OVS.system`: the packaged daemons and their default socket) or one
/// Shepherd runs itself (`OVS.managed(directory:)`): ovsdb-server and ovs-vswitchd started in the
/// caller's network namespace with their database, sockets, pidfiles and logs in one directory —
/// so several instances (one per demo host namespace, one for the demo's physical switch) live side
/// by side on one machine. Bridges it makes use the user-space datapath (`datapath_type=netdev`),
/// which needs no kernel module.
public struct OVS: Sendable, Equatable {
    /// The ovsdb socket (`unix:PATH`).
    public let database: String
    /// The managed instance's directory; nil for the system's.
    public let directory: String?

    static let timeout: Duration = .seconds(15)
    static let schema = "/usr/share/openvswitch/vswitch.ovsschema"

    /// The machine's Open vSwitch (its packaged service).
    public static let system = OVS(database: "unix:/var/run/openvswitch/db.sock", directory: nil)

    /// An instance of our own under `directory` (keep it short: UNIX socket paths end at 107 bytes).
    public static func managed(directory: String) -> OVS {
        OVS(database: "unix:\(directory)/db.sock", directory: directory)
    }

    /// Another instance reached through its database socket only (`unix:PATH` or `tcp:HOST:PORT`).
    public static func remote(database: String) -> OVS { OVS(database: database, directory: nil) }

    /// The managed instance of the agent whose state lives in `stateDirectory` (short, stable).
    public static func managed(forStateDirectory stateDirectory: String) -> OVS {
        managed(directory: "/run/shepherd/ovs-" + String(Files.stableHash(stateDirectory), radix: 16))
    }

    private var environment: [String: String]? {
        directory.map { ["OVS_RUNDIR": $0, "OVS_LOGDIR": $0, "OVS_DBDIR": $0] }
    }

    // MARK: - daemons of a managed instance

    private func pidFile(_ daemon: String) -> String? { directory.map { "\($0)/\(daemon).pid" } }
    private func control(_ daemon: String) -> String? { directory.map { "\($0)/\(daemon).ctl" } }

    /// True when both daemons of a managed instance run (the system's: when its socket exists).
    public var isRunning: Bool {
        guard directory != nil else { return FileManager.default.fileExists(atPath: String(database.dropFirst("unix:".count))) }
        return ["ovsdb-server", "ovs-vswitchd"].allSatisfy { daemon in
            pidFile(daemon).flatMap(Processes.readPidFile).map(Processes.isAlive) ?? false
        }
    }

    /// Starts a managed instance's daemons where they do not run yet (an existing database and
    /// running daemons are kept: a restarted agent adopts its switch). They run in the caller's
    /// network namespace, or in `namespace` (`ip netns exec`).
    public func start(namespace: String? = nil) async throws {
        guard let directory else { return }
        try Files.ensureDirectory(directory, mode: 0o700)
        func inNamespace(_ argv: [String]) -> (String, [String]) {
            let full = namespace.map { Net.inNamespace($0, argv) } ?? argv
            return (full[0], Array(full.dropFirst()))
        }
        let database = directory + "/conf.db"
        if !FileManager.default.fileExists(atPath: database) {
            try await Command.check("ovsdb-tool", ["create", database, Self.schema], timeout: Self.timeout)
        }
        if !(pidFile("ovsdb-server").flatMap(Processes.readPidFile).map(Processes.isAlive) ?? false) {
            let (program, arguments) = inNamespace(["ovsdb-server", database, "--remote=punix:\(directory)/db.sock",
                                                    "--pidfile=\(directory)/ovsdb-server.pid", "--unixctl=\(directory)/ovsdb-server.ctl",
                                                    "--log-file=\(directory)/ovsdb-server.log", "--detach"])
            try await Command.check(program, arguments, timeout: Self.timeout, environment: environment)
            try await vsctl(["--no-wait", "init"])
        }
        if !(pidFile("ovs-vswitchd").flatMap(Processes.readPidFile).map(Processes.isAlive) ?? false) {
            let (program, arguments) = inNamespace(["ovs-vswitchd", self.database, "--pidfile=\(directory)/ovs-vswitchd.pid",
                                                    "--unixctl=\(directory)/ovs-vswitchd.ctl", "--log-file=\(directory)/ovs-vswitchd.log",
                                                    "--detach"])
            try await Command.check(program, arguments, timeout: Self.timeout, environment: environment)
        }
    }

    /// Ends a managed instance: `exit --cleanup` removes the datapath's own devices (each
    /// bridge's internal port), then the daemons are ended by their pids if they linger.
    /// Ports we made (taps, veths) stay for their owners to delete.
    public func stop() async {
        guard let directory else { return }
        for daemon in ["ovs-vswitchd", "ovsdb-server"] {
            let pid = pidFile(daemon).flatMap(Processes.readPidFile)
            if let pid, Processes.isAlive(pid) {
                _ = try? await appctl(daemon == "ovs-vswitchd" ? ["exit", "--cleanup"] : ["exit"], daemon: daemon)
                for _ in 0..<30 where Processes.isAlive(pid) { try? await Task.sleep(for: .milliseconds(100)) }
                if Processes.isAlive(pid) { _ = await Processes.terminate(pid, grace: .seconds(3)) }
            }
        }
        try? FileManager.default.removeItem(atPath: directory)
    }

    // MARK: - tools

    /// `ovs-vsctl --db=… --timeout=10 ARGS`; returns stdout.
    @discardableResult
    public func vsctl(_ arguments: [String]) async throws -> String {
        try await Command.check("ovs-vsctl", ["--db=\(database)", "--timeout=10"] + arguments, timeout: Self.timeout,
                                environment: environment).stdout
    }

    /// `ovs-appctl -t <daemon's control socket> ARGS` (the system's: by daemon name).
    @discardableResult
    public func appctl(_ arguments: [String], daemon: String = "ovs-vswitchd") async throws -> String {
        try await Command.check("ovs-appctl", ["-t", control(daemon) ?? daemon, "--timeout=10"] + arguments, timeout: Self.timeout,
                                environment: environment).stdout
    }

    /// `ovs-ofctl ARGS` (finds a managed bridge's socket through OVS_RUNDIR).
    @discardableResult
    public func ofctl(_ arguments: [String]) async throws -> String {
        try await Command.check("ovs-ofctl", arguments, timeout: Self.timeout, environment: environment).stdout
    }

    // MARK: - bridges and ports

    /// Makes the bridge (user-space datapath) if it does not exist.
    public func addBridge(_ name: String) async throws {
        try Net.checkLinkName(name)
        // OpenFlow 1.3 for meters (NIC rate limits).
        try await vsctl(["--may-exist", "add-br", name, "--", "set", "Bridge", name, "datapath_type=netdev", "protocols=OpenFlow10,OpenFlow13"])
    }

    /// Removes the bridge and every port on it.
    public func deleteBridge(_ name: String) async throws {
        try Net.checkLinkName(name)
        try await vsctl(["--if-exists", "del-br", name])
    }

    public func bridges() async throws -> [String] {
        try await vsctl(["list-br"]).split(separator: "\n").map(String.init)
    }

    /// A VLAN setting of one port: `tag` (access: the switch tags and strips) or `trunks` (the
    /// VM tags itself; empty: every VLAN).
    public struct VLANSetting: Sendable, Equatable {
        public var tag: Int?
        public var trunks: [Int]
        public init(tag: Int?, trunks: [Int]) { self.tag = tag; self.trunks = trunks }

        var vsctlArguments: [String] {
            [tag.map { "tag=\($0)" } ?? "tag=[]", trunks.isEmpty ? "trunks=[]" : "trunks=" + trunks.map(String.init).joined(separator: ",")]
        }
    }

    /// Adds (or updates) port `port` on `bridge` for the existing device of that name, with its
    /// VLAN setting and external ids (what Shepherd knows the port as).
    public func addPort(_ port: String, bridge: String, vlan: VLANSetting, externalIDs: [String: String] = [:]) async throws {
        try Net.checkLinkName(port)
        try Net.checkLinkName(bridge)
        var arguments = ["--may-exist", "add-port", bridge, port, "--", "set", "Port", port] + vlan.vsctlArguments
        for (key, value) in externalIDs.sorted(by: { $0.key < $1.key }) {
            try Self.checkID(key); try Self.checkID(value)
            arguments += ["--", "set", "Interface", port, "external_ids:\(key)=\(value)"]
        }
        try await vsctl(arguments)
    }

    /// Adds a bond port over `members` (or changes its mode); `externalIDs` go on every member.
    public func addBond(_ port: String, bridge: String, members: [String], mode: String, externalIDs: [String: String] = [:]) async throws {
        try Net.checkLinkName(port)
        try Net.checkLinkName(bridge)
        for member in members { try Net.checkLinkName(member) }
        guard ["active-backup", "balance-slb", "balance-tcp"].contains(mode) else {
            throw HostKitError(kind: .failed, message: "bond mode '\(mode)' is not one of active-backup, balance-slb, balance-tcp")
        }
        var arguments = ["--may-exist", "add-bond", bridge, port] + members + ["--", "set", "Port", port, "bond_mode=\(mode)"]
        // LACP for balance-tcp, falling back to active-backup when the switch does not answer it
        // (a bond whose LACP fails would otherwise drop everything); members judged by carrier.
        arguments += ["lacp=\(mode == "balance-tcp" ? "active" : "off")", "other_config:lacp-fallback-ab=true",
                      "other_config:bond-detect-mode=carrier"]
        for member in members {
            for (key, value) in externalIDs.sorted(by: { $0.key < $1.key }) {
                try Self.checkID(key); try Self.checkID(value)
                arguments += ["--", "set", "Interface", member, "external_ids:\(key)=\(value)"]
            }
        }
        try await vsctl(arguments)
    }

    /// An interface's external id `key`, nil when the interface or the id does not exist.
    public func externalID(of interface: String, key: String) async throws -> String? {
        try Net.checkLinkName(interface)
        try Self.checkID(key)
        let value = try await vsctl(["--if-exists", "get", "Interface", interface, "external_ids:\(key)"])
            .trimmingCharacters(in: .whitespacesAndNewlines).trimmingCharacters(in: CharacterSet(charactersIn: "\""))
        return value.isEmpty ? nil : value
    }

    public func deletePort(_ port: String, bridge: String? = nil) async throws {
        try Net.checkLinkName(port)
        try await vsctl(["--if-exists", "del-port"] + (bridge.map { [$0] } ?? []) + [port])
    }

    /// Polices what enters the bridge from `port` to `kbps` (nil: removes the limit) with an
    /// OpenFlow meter and a flow sending the port's traffic through it. The user-space datapath
    /// ignores `ingress_policing_rate` on system ports (measured: a 20 Mbit/s policing rate left
    /// TCP at 133 Mbit/s); meters work (20 Mbit/s → 19.7 with a burst of a quarter second).
    /// `id` names the meter and the flow's cookie on this bridge.
    public func setRateLimit(port: String, bridge: String, id: UInt32, kbps: Int?) async throws {
        try Net.checkLinkName(port)
        try Net.checkLinkName(bridge)
        let cookie = "0x" + String(id, radix: 16)
        _ = try? await ofctl(["-O", "OpenFlow13", "del-flows", bridge, "cookie=\(cookie)/-1"])
        _ = try? await ofctl(["-O", "OpenFlow13", "del-meter", bridge, "meter=\(id)"])
        guard let kbps else { return }
        try await ofctl(["-O", "OpenFlow13", "add-meter", bridge, "meter=\(id),kbps,burst,band=type=drop,rate=\(kbps),burst_size=\(max(1000, kbps / 4))"])
        try await ofctl(["-O", "OpenFlow13", "add-flow", bridge, "cookie=\(cookie),priority=100,in_port=\(port),actions=meter:\(id),NORMAL"])
    }

    /// One port as the switch has it now.
    public struct Port: Sendable, Equatable, Codable {
        public var name: String
        public var tag: Int?
        public var trunks: [Int]
        /// nil unless a bond.
        public var bondMode: String?
        public var interfaces: [Interface]
    }

    public struct Interface: Sendable, Equatable, Codable {
        public var name: String
        public var type: String
        /// "up"/"down" as OVS sees the device (link state), and its admin state.
        public var linkUp: Bool
        public var adminUp: Bool
        public var externalIDs: [String: String]
        /// OVS's error for a device it could not open (e.g. "could not open network device tapX (No such device)").
        public var error: String?
    }

    /// Every port of `bridge` with its interfaces (two `list` calls, however many ports).
    public func ports(bridge: String) async throws -> [Port] {
        try Net.checkLinkName(bridge)
        let names = Set(try await vsctl(["list-ports", bridge]).split(separator: "\n").map(String.init))
        let portRows = try await vsctl(["-f", "csv", "--data=bare", "--no-headings", "--columns=name,tag,trunks,bond_mode,interfaces", "list", "Port"])
        let interfaceRows = try await vsctl(["-f", "csv", "--data=bare", "--no-headings",
                                             "--columns=_uuid,name,type,link_state,admin_state,external_ids,error", "list", "Interface"])
        var interfaces: [String: Interface] = [:]
        for row in Self.csvRows(interfaceRows) where row.count >= 7 {
            let ids = Dictionary(row[5].split(separator: " ").compactMap { pair -> (String, String)? in
                let parts = pair.split(separator: "=", maxSplits: 1)
                return parts.count == 2 ? (String(parts[0]), String(parts[1])) : nil
            }, uniquingKeysWith: { first, _ in first })
            interfaces[row[0]] = Interface(name: row[1], type: row[2], linkUp: row[3] == "up", adminUp: row[4] == "up",
                                           externalIDs: ids, error: row[6].isEmpty ? nil : row[6])
        }
        return Self.csvRows(portRows).compactMap { row -> Port? in
            guard row.count >= 5, names.contains(row[0]) else { return nil }
            return Port(name: row[0], tag: Int(row[1]), trunks: row[2].split(separator: " ").compactMap { Int($0) },
                        bondMode: row[3].isEmpty ? nil : row[3],
                        interfaces: row[4].split(separator: " ").compactMap { interfaces[String($0)] })
        }.sorted { $0.name < $1.name }
    }

    /// Splits ovs-vsctl's CSV (fields may be quoted, with "" for a quote inside).
    static func csvRows(_ text: String) -> [[String]] {
        var rows: [[String]] = []
        var row: [String] = []
        var field = ""
        var quoted = false
        var characters = Array(text)[...]
        while let character = characters.popFirst() {
            switch (character, quoted) {
            case ("\"", true) where characters.first == "\"": field.append("\""); characters.removeFirst()
            case ("\"", _): quoted.toggle()
            case (",", false): row.append(field); field = ""
            case ("\n", false): row.append(field); rows.append(row); row = []; field = ""
            default: field.append(character)
            }
        }
        if !field.isEmpty || !row.isEmpty { row.append(field); rows.append(row) }
        return rows
    }

    private static func checkID(_ value: String) throws {
        guard !value.isEmpty, value.allSatisfy({ $0.isLetter || $0.isNumber || "-_.:".contains($0) }) else {
            throw HostKitError(kind: .failed, message: "invalid OVS external id \(describeCommand([value]))")
        }
    }
}
