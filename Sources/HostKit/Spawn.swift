import Foundation

// Process creation shared by `Command` and `ChildProcess`.
//
// Choices, so that killing a child kills only what we started:
// - posix_spawn, never a shell; argv goes to the kernel as given.
// - Every child is the leader of its own process group (POSIX_SPAWN_SETPGROUP, pgid = pid), so a
//   timeout or terminate can signal the child together with helpers it forked (e.g. `sh -c`
//   pipelines), while programs that daemonize (setsid, e.g. `qemu -daemonize`) leave that group
//   and are not touched. We do not start a new session: no controlling terminal is involved anyway.
// - A group is signalled only while its leader is still unreaped, so the number cannot be reused.
// - The child gets an empty signal mask and default dispositions for the usual signals, whatever
//   the spawning thread had blocked or ignored (we block SIGPIPE on our I/O threads).
// - Pipe ends are created close-on-exec and every fd above 2 is closed in the child, so no child
//   (in particular a daemon that outlives us) inherits another command's pipe or our sockets.

enum StdioTarget {
    case devNull
    case fd(Int32)
}

enum Spawner {
    private typealias Pipe2 = @convention(c) (UnsafeMutablePointer<Int32>?, Int32) -> Int32
    private typealias CloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>?, Int32) -> Int32

    // glibc's pipe2 and posix_spawn_file_actions_addclosefrom_np (2.34+) are not exported to Swift
    // without _GNU_SOURCE; look them up at run time and fall back when absent.
    private static let pipe2Fn: Pipe2? =
        dlsym(nil, "pipe2").map { unsafeBitCast($0, to: Pipe2.self) }
    private static let closeFromFn: CloseFrom? =
        dlsym(nil, "posix_spawn_file_actions_addclosefrom_np").map { unsafeBitCast($0, to: CloseFrom.self) }

    /// Serializes pipe creation and spawning when pipe2 is missing (pipe + FD_CLOEXEC is not atomic).
    private static let spawnLock = NSLock()

    static let fallbackPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

    /// The environment a child gets: ours, with `overrides` laid over it.
    static func environment(_ overrides: [String: String]?) -> [String: String] {
        var env = ProcessInfo.processInfo.environment
        if let overrides {
            for (k, v) in overrides { env[k] = v }
        }
        return env
    }

    /// An absolute (or explicitly relative) path for `name`: as is when it contains "/", otherwise
    /// the first executable regular file named `name` in PATH, then in the usual system directories.
    static func resolveExecutable(_ name: String, path: String?) -> String? {
        if name.contains("/") { return name }
        guard !name.isEmpty else { return nil }
        var dirs = (path ?? "").split(separator: ":").map(String.init)
        for d in fallbackPath.split(separator: ":").map(String.init) where !dirs.contains(d) { dirs.append(d) }
        for dir in dirs where !dir.isEmpty {
            let candidate = dir.hasSuffix("/") ? dir + name : dir + "/" + name
            var st = stat()
            if stat(candidate, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG, access(candidate, X_OK) == 0 {
                return candidate
            }
        }
        return nil
    }

    /// A pipe whose both ends are close-on-exec. Returns (read, write).
    static func makePipe() throws -> (read: Int32, write: Int32) {
        var fds: [Int32] = [-1, -1]
        if let pipe2Fn {
            guard pipe2Fn(&fds, O_CLOEXEC) == 0 else { throw pipeError() }
        } else {
            spawnLock.lock()
            defer { spawnLock.unlock() }
            guard pipe(&fds) == 0 else { throw pipeError() }
            _ = fcntl(fds[0], F_SETFD, FD_CLOEXEC)
            _ = fcntl(fds[1], F_SETFD, FD_CLOEXEC)
        }
        return (fds[0], fds[1])
    }

    private static func pipeError() -> HostKitError {
        let code = errno
        return HostKitError(kind: .launchFailed,
                            message: "could not create a pipe: \(String(cString: strerror(code))) (errno \(code))")
    }

    static func setNonBlocking(_ fd: Int32) {
        let flags = fcntl(fd, F_GETFL)
        if flags >= 0 { _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK) }
    }

    /// Starts `executable` with `arguments` (argv[0] is `executable` as given). Returns the pid.
    static func spawn(
        executable: String, arguments: [String], environment overrides: [String: String]?,
        stdin: StdioTarget, stdout: StdioTarget, stderr: StdioTarget
    ) throws -> pid_t {
        let argv = [executable] + arguments
        let shown = describeCommand(argv)
        let env = environment(overrides)
        let envStrings = env.map { "\($0.key)=\($0.value)" }.sorted()

        if argv.contains(where: { $0.utf8.contains(0) }) || envStrings.contains(where: { $0.utf8.contains(0) }) {
            throw HostKitError(kind: .launchFailed, message: "could not launch `\(shown)`: an argument or environment value contains a NUL byte")
        }
        guard let path = resolveExecutable(executable, path: env["PATH"]) else {
            throw HostKitError(kind: .launchFailed, message: "could not launch `\(shown)`: `\(executable)` not found in PATH")
        }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        func add(_ target: StdioTarget, _ fd: Int32, readOnly: Bool) {
            switch target {
            case .devNull:
                posix_spawn_file_actions_addopen(&actions, fd, "/dev/null", readOnly ? O_RDONLY : O_WRONLY, 0)
            case .fd(let source):
                posix_spawn_file_actions_adddup2(&actions, source, fd)
            }
        }
        add(stdin, 0, readOnly: true)
        add(stdout, 1, readOnly: false)
        add(stderr, 2, readOnly: false)
        if let closeFromFn { _ = closeFromFn(&actions, 3) }

        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        posix_spawnattr_setpgroup(&attr, 0)
        var emptyMask = sigset_t()
        sigemptyset(&emptyMask)
        posix_spawnattr_setsigmask(&attr, &emptyMask)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for sig in [SIGPIPE, SIGINT, SIGQUIT, SIGTERM, SIGHUP, SIGUSR1, SIGUSR2, SIGALRM, SIGCHLD, SIGTSTP, SIGTTIN, SIGTTOU] {
            sigaddset(&defaults, sig)
        }
        posix_spawnattr_setsigdefault(&attr, &defaults)

        var pid: pid_t = 0
        let rc: Int32 = withCStringArray(argv) { cargv in
            withCStringArray(envStrings) { cenv in
                if pipe2Fn == nil {
                    spawnLock.lock()
                    defer { spawnLock.unlock() }
                    return posix_spawn(&pid, path, &actions, &attr, cargv, cenv)
                }
                return posix_spawn(&pid, path, &actions, &attr, cargv, cenv)
            }
        }
        guard rc == 0 else {
            throw HostKitError(kind: .launchFailed,
                               message: "could not launch `\(shown)` (\(path)): \(String(cString: strerror(rc))) (errno \(rc))")
        }
        return pid
    }

    private static func withCStringArray<R>(_ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> R) -> R {
        var pointers: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) }
        pointers.append(nil)
        defer { for p in pointers { free(p) } }
        return pointers.withUnsafeBufferPointer { body($0.baseAddress!) }
    }

    /// Exit status from a waitpid status word: the code for a normal exit, 128 + signal otherwise.
    static func decodeWaitStatus(_ status: Int32) -> Int32 {
        let signal = status & 0x7f
        if signal == 0 { return (status >> 8) & 0xff }
        return 128 + signal
    }

    /// Blocks SIGPIPE on the calling (dedicated) thread, so writing to a closed pipe yields EPIPE.
    static func blockSIGPIPEOnThisThread() {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGPIPE)
        pthread_sigmask(SIG_BLOCK, &set, nil)
    }

    /// Reaps `pid` on a throwaway thread (for children we gave up waiting for).
    static func reapInBackground(_ pid: pid_t) {
        let thread = Thread {
            var status: Int32 = 0
            while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
        }
        thread.name = "hostkit-reap-\(pid)"
        thread.start()
    }
}
