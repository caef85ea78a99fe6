import Foundation

/// Linux networking for the demo's one-machine cluster: network namespaces, a bridge, veth pairs.
///
/// Everything goes through iproute2 (`ip`) with argv arrays via `Command`, 15 s timeout per call.
/// Names are checked first (letters, digits, `_ . -`, not starting with `-`; links at most 15 bytes)
/// and failures throw `HostKitError` with the `ip` command line and its stderr. Needs root (CAP_NET_ADMIN).
public enum Net {
    static let timeout: Duration = .seconds(15)

    /// `ip netns add NAME`; does nothing if the namespace already exists.
    public static func addNamespace(_ name: String) async throws {
        try checkNamespaceName(name)
        if namespaceExists(name) { return }
        try await ip(["netns", "add", name])
    }

    /// `ip netns delete NAME`; fine if it does not exist.
    public static func deleteNamespace(_ name: String) async throws {
        try checkNamespaceName(name)
        guard namespaceExists(name) else { return }
        do {
            try await ip(["netns", "delete", name])
        } catch let error as HostKitError where error.kind == .failed && !namespaceExists(name) {
            return
        }
    }

    /// True if /var/run/netns/NAME exists.
    public static func namespaceExists(_ name: String) -> Bool {
        guard (try? checkNamespaceName(name)) != nil else { return false }
        return FileManager.default.fileExists(atPath: "/var/run/netns/\(name)")
    }

    /// Creates a bridge (reusing an existing bridge of that name), sets `address` (CIDR, replacing) if given, and brings it up.
    public static func addBridge(_ name: String, address: String?) async throws {
        try checkLinkName(name)
        if let address { try checkAddress(address) }
        if !FileManager.default.fileExists(atPath: "/sys/class/net/\(name)/bridge") {
            try await ip(["link", "add", "name", name, "type", "bridge"])
        }
        if let address {
            try await ip(["addr", "replace", address, "dev", name])
        }
        try await ip(["link", "set", "dev", name, "up"])
    }

    /// Creates the veth pair `a` ⇄ `b` and brings `a` up (`b` is usually moved into a namespace next).
    public static func addVethPair(_ a: String, _ b: String) async throws {
        try checkLinkName(a)
        try checkLinkName(b)
        try await ip(["link", "add", "name", a, "type", "veth", "peer", "name", b])
        try await ip(["link", "set", "dev", a, "up"])
    }

    /// A persistent tap device (`ip tuntap add … mode tap`), up; reused if it exists. QEMU opens it
    /// by name, and it outlives QEMU until deleted, so the switch port on it stays put meanwhile.
    public static func addTap(_ name: String) async throws {
        try checkLinkName(name)
        if !linkExists(name) { try await ip(["tuntap", "add", "dev", name, "mode", "tap"]) }
        try await ip(["link", "set", "dev", name, "up"])
    }

    /// Shapes what the kernel sends out of `link` to `mbit` Mbit/s with a token bucket (`tc … tbf`;
    /// 50 ms of queue); nil removes it. On a VM's tap that is the traffic to the VM.
    public static func shape(_ link: String, mbit: Int?) async throws {
        try checkLinkName(link)
        guard let mbit else {
            _ = try? await Command.run("tc", ["qdisc", "del", "dev", link, "root"], timeout: timeout)
            return
        }
        let burstBytes = max(16 * 1024, mbit * 1_000_000 / 8 / 50)   // 20 ms at the rate, at least 16 KiB
        try await Command.check("tc", ["qdisc", "replace", "dev", link, "root", "tbf", "rate", "\(mbit)mbit", "burst", "\(burstBytes)",
                                       "latency", "50ms"], timeout: timeout)
    }

    /// Brings `link` in namespace `ns` up or down.
    public static func setLink(_ link: String, up: Bool, inNamespace ns: String) async throws {
        try checkLinkName(link)
        try checkNamespaceName(ns)
        try await ip(["-n", ns, "link", "set", "dev", link, up ? "up" : "down"])
    }

    /// The kernel's operational state of a link in our namespace ("up", "down", "lowerlayerdown"…); nil if it does not exist.
    public static func operationalState(_ name: String) -> String? {
        guard (try? checkLinkName(name)) != nil,
              let text = try? String(contentsOfFile: "/sys/class/net/\(name)/operstate", encoding: .utf8) else { return nil }
        return text.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// A veth pair made straight into two namespaces (`ip link add A netns NSA type veth peer name B netns NSB`),
    /// both ends up: no name is ever taken in our own namespace.
    public static func addVethPair(_ a: String, inNamespace nsA: String, _ b: String, inNamespace nsB: String) async throws {
        try checkLinkName(a); try checkLinkName(b)
        try checkNamespaceName(nsA); try checkNamespaceName(nsB)
        try await ip(["link", "add", "name", a, "netns", nsA, "type", "veth", "peer", "name", b, "netns", nsB])
        try await ip(["-n", nsA, "link", "set", "dev", a, "up"])
        try await ip(["-n", nsB, "link", "set", "dev", b, "up"])
    }

    /// Moves `link` into the namespace `ns`.
    public static func moveLink(_ link: String, toNamespace ns: String) async throws {
        try checkLinkName(link)
        try checkNamespaceName(ns)
        try await ip(["link", "set", "dev", link, "netns", ns])
    }

    /// Attaches `link` to `bridge` and brings it up.
    public static func setMaster(_ link: String, bridge: String) async throws {
        try checkLinkName(link)
        try checkLinkName(bridge)
        try await ip(["link", "set", "dev", link, "master", bridge, "up"])
    }

    /// Brings `link` up or down (down cuts whatever runs over it, as a pulled cable would).
    public static func setLink(_ link: String, up: Bool) async throws {
        try checkLinkName(link)
        try await ip(["link", "set", "dev", link, up ? "up" : "down"])
    }

    /// `ip link delete NAME` in our namespace (a veth's peer goes with it); fine if it does not exist.
    public static func deleteLink(_ name: String) async throws {
        try checkLinkName(name)
        guard linkExists(name) else { return }
        do {
            try await ip(["link", "delete", "dev", name])
        } catch let error as HostKitError where error.kind == .failed && !linkExists(name) {
            return
        }
    }

    /// True if /sys/class/net/NAME exists (in our namespace).
    public static func linkExists(_ name: String) -> Bool {
        guard (try? checkLinkName(name)) != nil else { return false }
        return FileManager.default.fileExists(atPath: "/sys/class/net/\(name)")
    }

    /// Inside namespace `namespace`: sets `address` (CIDR, replacing) on `link`, brings it up, and brings `lo` up.
    public static func configure(namespace: String, link: String, address: String) async throws {
        try checkNamespaceName(namespace)
        try checkLinkName(link)
        try checkAddress(address)
        try await ip(["-n", namespace, "addr", "replace", address, "dev", link])
        try await ip(["-n", namespace, "link", "set", "dev", link, "up"])
        try await ip(["-n", namespace, "link", "set", "dev", "lo", "up"])
    }

    /// `["ip", "netns", "exec", ns] + argv`: run a program inside a namespace with `ChildProcess` or `Command`.
    public static func inNamespace(_ ns: String, _ argv: [String]) -> [String] {
        ["ip", "netns", "exec", ns] + argv
    }

    // MARK: - Internals

    private static func ip(_ arguments: [String]) async throws {
        try await Command.check("ip", arguments, timeout: timeout)
    }

    private static let nameCharacters = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")

    private static func checkName(_ name: String, what: String, maxBytes: Int) throws {
        guard !name.isEmpty, name.utf8.count <= maxBytes, !name.hasPrefix("-"), name != ".", name != "..",
              name.allSatisfy({ nameCharacters.contains($0) })
        else {
            throw HostKitError(kind: .failed, message: "invalid \(what) name \(describeCommand([name])): use 1–\(maxBytes) of letters, digits, _ . - (not starting with -)")
        }
    }

    /// Refuses a name that is not a valid interface name (1–15 of letters, digits, _ . -).
    public static func checkLinkName(_ name: String) throws { try checkName(name, what: "interface", maxBytes: 15) }
    static func checkNamespaceName(_ name: String) throws { try checkName(name, what: "network namespace", maxBytes: 200) }

    static func checkAddress(_ address: String) throws {
        let allowed = Set("0123456789abcdefABCDEF:./")
        guard address.contains("/"), !address.hasPrefix("-"), address.allSatisfy({ allowed.contains($0) }) else {
            throw HostKitError(kind: .failed, message: "invalid address \(describeCommand([address])): expected CIDR such as 10.0.0.1/24")
        }
    }
}
