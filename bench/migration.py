#!/usr/bin/env python3
"""Live-migration benchmark: QEMU defaults vs a static tuning vs Shepherd, same guests, same run.

Runs on the demo's one-machine cluster (hosts are network namespaces, so migration crosses a
veth and a bridge, not loopback). For each cell (workload x link) it migrates a 256 MiB tiny
guest from host-1 to host-2 three ways:
  defaults  raw QEMU pair, QEMU 7.2's defaults (128 MiB/s cap, 300 ms downtime)
  static    raw QEMU pair, max-bandwidth uncapped, downtime-limit 30 ms, auto-converge, XBZRLE
  shepherd  `shepherd vm migrate` (the same start, plus the convergence policy and post-copy)
The link limit is a tbf qdisc on the bridge port toward host-2. Prints a markdown table.
Usage (root, after `make build guest`): bench/migration.py [--timeout 40]
"""
import argparse, json, os, re, signal, socket, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, ".build/debug/shepherd")
IMAGE = os.path.join(ROOT, "guest/tiny")
STATE = "/tmp/shepherd-bench-migration"
PREFIX, SUBNET, PORT = "bm-", "10.75.0", 17600
MEMORY = 256
WORKLOADS = {
    "idle": None,
    "64 MiB rewritten flat out": "(while :; do cp /run/a /run/d1; cp /run/b /run/d2; cp /run/b /run/d1; cp /run/a /run/d2; done) >/dev/null 2>&1 &",
}
FILL = ("for f in a b; do dd if=/dev/urandom of=/run/$f.seed bs=1M count=1 2>/dev/null; rm -f /run/$f; "
        "for i in $(seq 32); do cat /run/$f.seed >> /run/$f; done; done")
LINKS = {"unlimited": None, "100 MiB/s": "800mbit"}


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


def raw_pair(tuned, workload, timeout):
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
        argv = ["ip", "netns", "exec", ns, "qemu-system-x86_64", "-machine", "pc", "-accel", "tcg", "-cpu", "max",
                "-m", str(MEMORY), "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none",
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
            assert qga_exec(f"{work}/src-qga.sock", FILL) == 0
            qga_exec(f"{work}/src-qga.sock", workload)
            time.sleep(1)
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
        return (info["status"], info.get("total-time", int((time.time() - start) * 1000)), info.get("downtime"),
                ram.get("transferred", 0) >> 20)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=20)


def shepherd(*args, check=True):
    env = dict(os.environ, SHEPHERD_URL=f"http://127.0.0.1:{PORT}", SHEPHERD_STATE_DIR=STATE)
    return subprocess.run([BIN, *args], capture_output=True, text=True, env=env, check=check)


def shepherd_cell(workload, index):
    name = f"bench-{index}"
    shepherd("vm", "delete", name, "--force", check=False)
    shepherd("vm", "create", name, "--memory", str(MEMORY), "--host", PREFIX + "host-1")
    shepherd("vm", "start", name)
    if workload:
        assert shepherd("vm", "exec", name, "--timeout", "120", "--", "sh", "-c", FILL).returncode == 0
        shepherd("vm", "exec", name, "--", "sh", "-c", workload)
        time.sleep(1)
    result = shepherd("vm", "migrate", name, "--to", PREFIX + "host-2", "--json", check=False)
    task = json.loads(result.stdout) if result.stdout.strip().startswith("{") else {}
    text = task.get("message", "") if task.get("state") == "succeeded" else (task.get("error") or {}).get("message", result.stderr)
    shepherd("vm", "delete", name, "--force", check=False)
    # From the workflow's start to the switch-over (both attempts when post-copy restarted it).
    total = re.search(r"migrated to \S+ in (\d+) ms", text)
    downtime = re.search(r"downtime (\d+) ms", text)
    sent = re.search(r"(\d+) MiB sent", text)
    status = "completed" + (" (post-copy)" if "post-copy" in text else "") if task.get("state") == "succeeded" else "failed"
    return (status, int(total.group(1)) if total else None, int(downtime.group(1)) if downtime else None,
            int(sent.group(1)) if sent else None)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--timeout", type=int, default=40, help="seconds before a raw migration counts as not converging")
    args = parser.parse_args()
    sh("rm", "-rf", STATE)
    demo = subprocess.Popen([BIN, "demo", "--state-dir", STATE, "--image", IMAGE, "--prefix", PREFIX, "--subnet", SUBNET,
                             "--port", str(PORT), "--no-guests"], stdout=open("/tmp/bench-migration-demo.log", "w"),
                            stderr=subprocess.STDOUT)
    rows = []
    try:
        for _ in range(240):
            if "is ready" in open("/tmp/bench-migration-demo.log").read():
                break
            time.sleep(0.5)
        index = 0
        for link, rate in LINKS.items():
            port_dev = f"{PREFIX}shep-h2"
            sh("tc", "qdisc", "del", "dev", port_dev, "root", check=False)
            if rate:
                sh("tc", "qdisc", "add", "dev", port_dev, "root", "tbf", "rate", rate, "burst", "1mb", "latency", "100ms")
            for workload, script in WORKLOADS.items():
                index += 1
                for column, run in (("QEMU defaults", lambda: raw_pair(False, script, args.timeout)),
                                    ("static tuning", lambda: raw_pair(True, script, args.timeout)),
                                    ("Shepherd", lambda: shepherd_cell(script, index))):
                    status, total, downtime, sent = run()
                    rows.append((f"{MEMORY} MiB", workload, link, column, status, total, downtime, sent))
                    print(rows[-1], file=sys.stderr, flush=True)
            sh("tc", "qdisc", "del", "dev", port_dev, "root", check=False)
    finally:
        demo.send_signal(signal.SIGTERM)
        demo.wait(timeout=120)
    print("| guest | workload | link | method | status | total ms (Shepherd: start to switch-over) | downtime ms | MiB sent (Shepherd: last attempt) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join("-" if v is None else str(v) for v in r) + " |")


if __name__ == "__main__":
    main()
