#!/usr/bin/env python3
"""Live-migration benchmark: QEMU defaults vs a static tuning vs Shepherd, same guests, same run.

Runs on the demo's one-machine cluster (hosts are network namespaces, so migration crosses a
veth and a bridge, not loopback). For each cell (guest size x workload x link) it migrates a
tiny guest from host-1 to host-2 three ways:
  defaults  raw QEMU pair, QEMU 7.2's defaults (128 MiB/s cap, 300 ms downtime)
  static    raw QEMU pair, max-bandwidth uncapped, downtime-limit 30 ms, auto-converge, XBZRLE
  shepherd  `shepherd vm migrate` (the same start, plus the convergence policy and post-copy)
Guests use Shepherd's TCG CPU (max with Intel's CPUID vendor: with AMD's, QEMU 7.2 TCG guests often
die on the target after a multi-pass migration; QEMUCommandLine.cpuArgument). The workload is the image's memory dirtier (`dirty SIZE RATE`, scripts/guest-dirty.c): fresh
pseudo-random pages, so neither zero-page detection nor XBZRLE shrinks them. The link limit is a
tbf qdisc on the bridge port toward host-2. "total ms" is QEMU's own for the raw pairs and, for
Shepherd, the workflow's from its start (target QEMU start included) to the switch-over, both
attempts when it restarted with post-copy; "QEMU ms" is QEMU's own time where one attempt did it
all. Prints a markdown table and the Shepherd downtime p95.
Usage (root, after `make build guest`): bench/migration.py [--timeout 40] [--rounds 2] [--guests 256,1024]
"""
import argparse, json, math, os, re, signal, socket, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, ".build/debug/shepherd")
IMAGE = os.path.join(ROOT, "guest/tiny")
STATE = "/tmp/shepherd-bench-migration"
PREFIX, SUBNET, PORT = "bm-", "10.75.0", 17600
# name -> (MiB dirtied, MiB/s or 0 for flat out); None: idle.
WORKLOADS = {
    "idle": None,
    "128 MiB at 40 MiB/s": (128, 40),
    "512 MiB at 100 MiB/s": (512, 100),
    "512 MiB flat out": (512, 0),
}
LINKS = {"unlimited": None, "100 MiB/s": "800mbit"}
# What a guest can spare for the dirtier (the rest holds its kernel, tools and page cache).
GUEST_OVERHEAD_MIB = 96


def dirtier(workload, memory):
    """The guest command for a workload on a guest of `memory` MiB, and the size it really dirties."""
    size, rate = workload
    size = min(size, memory - GUEST_OVERHEAD_MIB)
    assert size > 0, f"a {memory} MiB guest has no room for the dirtier"
    # Run until the whole set has been written once (paced: size/rate seconds) before migrating.
    warmup = 1 + (size / rate if rate else 0.5)
    return f"dirty {size} {rate} >/dev/null 2>&1 &", size, warmup


def sh(*argv, check=True, **kw):
    return subprocess.run(list(argv), check=check, capture_output=True, text=True, **kw)


class Conn:
    """One line-JSON conversation (QMP or the guest agent) over a UNIX socket."""
    def __init__(self, path, qmp):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.settimeout(30)
        self.s.connect(path)
        self.buf = b""
        if qmp:
            self.read()
            self.cmd("qmp_capabilities")

    def read(self):
        while b"\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line.strip(b"\xff") or b"{}")

    def cmd(self, name, **args):
        self.s.sendall(json.dumps({"execute": name, "arguments": args} if args else {"execute": name}).encode() + b"\n")
        while True:
            msg = self.read()
            if "return" in msg:
                return msg["return"]
            if "error" in msg:
                raise RuntimeError(f"{name}: {msg['error']}")


def qga_exec(sock, script, timeout=120):
    deadline = time.time() + timeout
    while True:
        try:
            c = Conn(sock, qmp=False)
            c.s.sendall(b"\xff" + json.dumps({"execute": "guest-sync-delimited", "arguments": {"id": 4242}}).encode() + b"\n")
            while c.read() != {"return": 4242}:
                pass
            pid = c.cmd("guest-exec", path="/bin/sh", arg=["-c", script], **{"capture-output": True})["pid"]
            while True:
                st = c.cmd("guest-exec-status", pid=pid)
                if st.get("exited"):
                    return st.get("exitcode")
                time.sleep(0.1)
        except (OSError, EOFError, RuntimeError):
            if time.time() > deadline:
                raise
            time.sleep(0.5)


def raw_pair(tuned, workload, memory, timeout):
    """Boots a source in host-1 and a target in host-2, migrates, returns the result row."""
    work = os.path.join(STATE, "raw")
    sh("rm", "-rf", work)
    os.makedirs(work)
    disk = os.path.join(work, "root.qcow2")
    sh("qemu-img", "convert", "-O", "qcow2", os.path.join(IMAGE, "rootfs.qcow2"), disk)
    kernel = os.path.join(IMAGE, "vmlinux" if os.path.exists(os.path.join(IMAGE, "vmlinux")) else "vmlinuz")
    cmdline = json.load(open(os.path.join(IMAGE, "manifest.json")))["cmdline"]
    port = 49000 + int(time.time()) % 1000
    procs = []
    for side in ("src", "dst"):
        ns = PREFIX + ("host-1" if side == "src" else "host-2")
        argv = ["ip", "netns", "exec", ns, "qemu-system-x86_64", "-machine", "pc", "-accel", "tcg", "-cpu", "max,vendor=GenuineIntel",
                "-m", str(memory), "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none",
                "-kernel", kernel, "-initrd", os.path.join(IMAGE, "initrd.img"), "-append", cmdline,
                "-blockdev", f"driver=qcow2,node-name=disk0,file.driver=file,file.filename={disk}",
                "-device", "virtio-blk-pci,drive=disk0",
                "-chardev", f"socket,id=qga0,path={work}/{side}-qga.sock,server=on,wait=off",
                "-device", "virtio-serial-pci", "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
                "-qmp", f"unix:{work}/{side}-qmp.sock,server=on,wait=off", "-serial", f"file:{work}/{side}.log"]
        if side == "dst":
            argv += ["-incoming", f"tcp:{SUBNET}.12:{port}"]
        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(0.5)
    try:
        assert qga_exec(f"{work}/src-qga.sock", "true") == 0
        if workload:
            command, _, warmup = dirtier(workload, memory)
            assert qga_exec(f"{work}/src-qga.sock", command) == 0
            time.sleep(warmup)
        q = Conn(f"{work}/src-qmp.sock", qmp=True)
        if tuned:
            q.cmd("migrate-set-capabilities", capabilities=[{"capability": "xbzrle", "state": True},
                                                            {"capability": "auto-converge", "state": True}])
            q.cmd("migrate-set-parameters", **{"max-bandwidth": 100 << 30, "downtime-limit": 30})
        q.cmd("migrate", uri=f"tcp:{SUBNET}.12:{port}")
        start = time.time()
        while True:
            time.sleep(0.2)
            info = q.cmd("query-migrate")
            if info["status"] in ("completed", "failed", "cancelled"):
                break
            if time.time() - start > timeout:
                q.cmd("migrate_cancel")
                info = dict(info, status=f"no convergence in {timeout} s")
                break
        ram = info.get("ram", {})
        total = info.get("total-time", int((time.time() - start) * 1000))
        return (info["status"], total, total, info.get("downtime"), ram.get("transferred", 0) >> 20)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=20)


def shepherd(*args, check=True):
    env = dict(os.environ, SHEPHERD_URL=f"http://127.0.0.1:{PORT}", SHEPHERD_STATE_DIR=STATE)
    return subprocess.run([BIN, *args], capture_output=True, text=True, env=env, check=check)


def shepherd_cell(workload, memory, index):
    name = f"bench-{index}"
    shepherd("vm", "delete", name, "--force", check=False)
    shepherd("vm", "create", name, "--memory", str(memory), "--host", PREFIX + "host-1")
    shepherd("vm", "start", name)
    if workload:
        command, _, warmup = dirtier(workload, memory)
        assert shepherd("vm", "exec", name, "--timeout", "60", "--", "sh", "-c", command).returncode == 0
        time.sleep(warmup)
    result = shepherd("vm", "migrate", name, "--to", PREFIX + "host-2", "--json", check=False)
    task = json.loads(result.stdout) if result.stdout.strip().startswith("{") else {}
    text = task.get("message", "") if task.get("state") == "succeeded" else (task.get("error") or {}).get("message", result.stderr)
    shepherd("vm", "delete", name, "--force", check=False)
    # From the workflow's start to the switch-over (both attempts when post-copy restarted it).
    total = re.search(r"migrated to \S+ in (\d+) ms", text)
    qemu = re.search(r"QEMU's last attempt: (\d+) ms", text)
    downtime = re.search(r"downtime (\d+) ms", text)
    sent = re.search(r"\((\d+) MiB with the abandoned pre-copy\)", text) or re.search(r"(\d+) MiB sent", text)
    status = "completed" + (" (post-copy)" if "post-copy" in text else "") if task.get("state") == "succeeded" else "failed"
    # QEMU's own time only where one attempt did it all (after a restart it leaves out the first).
    qemu_ms = int(qemu.group(1)) if qemu and "post-copy" not in status else None
    return (status, int(total.group(1)) if total else None, qemu_ms, int(downtime.group(1)) if downtime else None,
            int(sent.group(1)) if sent else None)


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1)] if ordered else None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--timeout", type=int, default=40, help="seconds before a raw migration counts as not converging")
    parser.add_argument("--rounds", type=int, default=2, help="Shepherd migrations per cell (for the downtime p95)")
    parser.add_argument("--guests", default="256,1024", help="guest sizes in MiB")
    args = parser.parse_args()
    sh("rm", "-rf", STATE)
    demo = subprocess.Popen([BIN, "demo", "--state-dir", STATE, "--image", IMAGE, "--prefix", PREFIX, "--subnet", SUBNET,
                             "--port", str(PORT), "--no-guests", "--host-memory", "4096"],
                            stdout=open("/tmp/bench-migration-demo.log", "w"), stderr=subprocess.STDOUT)
    rows, downtimes, started = [], [], time.time()
    try:
        for _ in range(240):
            if "is ready" in open("/tmp/bench-migration-demo.log").read():
                break
            time.sleep(0.5)
        index = 0
        for memory in (int(m) for m in args.guests.split(",")):
            for link, rate in LINKS.items():
                port_dev = f"{PREFIX}shep-h2"
                sh("tc", "qdisc", "del", "dev", port_dev, "root", check=False)
                if rate:
                    sh("tc", "qdisc", "add", "dev", port_dev, "root", "tbf", "rate", rate, "burst", "1mb", "latency", "100ms")
                for name, workload in WORKLOADS.items():
                    index += 1
                    label = name
                    if workload and dirtier(workload, memory)[1] < workload[0]:
                        label = name.replace(f"{workload[0]} MiB", f"{dirtier(workload, memory)[1]} MiB")
                    runs = [("QEMU defaults", lambda: raw_pair(False, workload, memory, args.timeout)),
                            ("static tuning", lambda: raw_pair(True, workload, memory, args.timeout))]
                    runs += [("Shepherd", lambda: shepherd_cell(workload, memory, index))] * args.rounds
                    for column, run in runs:
                        status, total, qemu_ms, downtime, sent = run()
                        if column == "Shepherd" and downtime is not None:
                            downtimes.append(downtime)
                        rows.append((f"{memory} MiB", label, link, column, status, total, qemu_ms, downtime, sent))
                        print(rows[-1], file=sys.stderr, flush=True)
                sh("tc", "qdisc", "del", "dev", port_dev, "root", check=False)
    finally:
        demo.send_signal(signal.SIGTERM)
        demo.wait(timeout=120)
    print("| guest | workload | link | method | status | total ms | QEMU ms | downtime ms | MiB sent |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join("-" if v is None else str(v) for v in r) + " |")
    print(f"\nShepherd: {len(downtimes)} migrations, downtime p50 {percentile(downtimes, 50)} ms, "
          f"p95 {percentile(downtimes, 95)} ms, max {max(downtimes) if downtimes else None} ms; run took {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
