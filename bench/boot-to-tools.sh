#!/bin/bash
# Benchmark: create → tools-ready time of the tiny template through Shepherd, next to the same
# image booted by a plain qemu-system command in the same run (the overhead Shepherd adds).
# Usage: bench/boot-to-tools.sh [ROUNDS]   (root; needs the built binary and guest/tiny)
# Prints a markdown table row set to stdout; paste it into docs/benchmarks.md with the date.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-5}"
binary="$PWD/.build/debug/shepherd"
image="$PWD/guest/tiny"
work="$(mktemp -d /tmp/shepherd-bench.XXXXXX)"
port=17555
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for f in "$work"/agent/vms/*/qemu.pid "$work"/plain-*/pid; do
    [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
  done
  sleep 1
  rm -rf "$work"
}
trap cleanup EXIT

kernel=vmlinuz
[ -f "$image/vmlinux" ] && kernel=vmlinux
cmdline="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["cmdline"])' "$image/manifest.json")"
mkdir -p "$work/shared/templates/tiny"
cp "$image/$kernel" "$image/initrd.img" "$image/rootfs.qcow2" "$work/shared/templates/tiny/"

# A plain QEMU: same kernel, initrd, a fresh copy of the disk, the same devices; time until guest-ping answers.
plain_once() {
  local dir="$work/plain-$1"
  mkdir -p "$dir"
  local start end
  start=$(date +%s.%N)
  qemu-img convert -O qcow2 "$work/shared/templates/tiny/rootfs.qcow2" "$dir/root.qcow2"
  qemu-system-x86_64 -machine pc -accel tcg -cpu max -m 128 -smp 1 -nodefaults -no-user-config -display none \
    -kernel "$work/shared/templates/tiny/$kernel" -initrd "$work/shared/templates/tiny/initrd.img" -append "$cmdline" \
    -blockdev "driver=qcow2,node-name=disk0,file.driver=file,file.filename=$dir/root.qcow2" -device virtio-blk-pci,drive=disk0 \
    -chardev "socket,id=qga0,path=$dir/qga.sock,server=on,wait=off" -device virtio-serial-pci \
    -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0 -serial "file:$dir/serial.log" \
    -no-shutdown -daemonize -pidfile "$dir/pid"
  python3 - "$dir/qga.sock" <<'PY'
import json, socket, sys, time, random
path = sys.argv[1]
deadline = time.time() + 120
while time.time() < deadline:
    try:
        s = socket.socket(socket.AF_UNIX); s.settimeout(1); s.connect(path)
        n = random.randint(1, 1 << 30)
        s.sendall(json.dumps({"execute": "guest-sync", "arguments": {"id": n}}).encode() + b"\n")
        buf = b""
        while True:
            chunk = s.recv(4096)
            if not chunk: break
            buf += chunk
            if str(n).encode() in buf: sys.exit(0)
    except Exception:
        time.sleep(0.1)
    finally:
        s.close()
sys.exit(1)
PY
  end=$(date +%s.%N)
  kill "$(cat "$dir/pid")"
  echo "$end - $start" | bc
}

"$binary" manager --state-dir "$work/manager" --listen "127.0.0.1:$port" >"$work/manager.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do [ -f "$work/manager/join-token" ] && break; sleep 0.1; done
"$binary" agent --name bench-1 --manager "http://127.0.0.1:$port" --listen 127.0.0.1:$((port + 1)) \
  --state-dir "$work/agent" --join-token-file "$work/manager/join-token" --datastore "shared=$work/shared,shared" \
  --accel tcg >"$work/agent.log" 2>&1 & pids+=($!)
export SHEPHERD_URL="http://127.0.0.1:$port" SHEPHERD_STATE_DIR="$work/manager"
for _ in $(seq 100); do "$binary" host list 2>/dev/null | grep -q connected && break; sleep 0.2; done
token="$(cat "$work/manager/admin-token")"
curl -sf -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
  -d "{\"name\":\"tiny\",\"datastore\":\"shared\",\"kernel\":\"templates/tiny/$kernel\",\"initrd\":\"templates/tiny/initrd.img\",\"disk\":\"templates/tiny/rootfs.qcow2\",\"cmdline\":\"$cmdline\"}" \
  "$SHEPHERD_URL/api/v1/templates" >/dev/null

shepherd_once() {
  local start end
  start=$(date +%s.%N)
  "$binary" vm create "bench-$1" --memory 128 >/dev/null 2>&1
  "$binary" vm start "bench-$1" >/dev/null 2>&1
  end=$(date +%s.%N)
  "$binary" vm delete "bench-$1" --force >/dev/null 2>&1
  echo "$end - $start" | bc
}

stats() { python3 -c 'import statistics,sys; v=[float(x) for x in sys.argv[1:]]; print(f"{statistics.median(v):.2f} | {min(v):.2f} | {max(v):.2f}")' "$@"; }

plain=(); managed=()
for i in $(seq "$rounds"); do      # interleaved, so both see the same machine load
  plain+=("$(plain_once "$i")")
  managed+=("$(shepherd_once "$i")")
done
echo "| what | rounds | median s | min s | max s |"
echo "|---|---|---|---|---|"
echo "| plain qemu-system: disk copy + boot → guest-ping | $rounds | $(stats "${plain[@]}") |"
echo "| shepherd vm create + vm start → tools answer | $rounds | $(stats "${managed[@]}") |"
