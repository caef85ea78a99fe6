#!/usr/bin/env bash
# Build Shepherd's tiny test guest: Debian 12 cloud kernel + busybox initramfs
# + ext4 root filesystem (busybox, qemu-guest-agent, nft, iperf3, and `dirty`,
# a memory dirtier built here from scripts/guest-dirty.c) in a qcow2 image.
#
# Usage: scripts/build-guest-image.sh [OUTDIR]     (default: <repo>/guest/tiny)
#
# Produces OUTDIR/{vmlinuz,vmlinux,initrd.img,rootfs.qcow2,manifest.json}.
# vmlinux is the same kernel, decompressed out of vmlinuz: an ELF image with a
# PVH entry point that QEMU can boot directly with -kernel. Under TCG it skips
# the bzImage decompressor, which is slow (and very slow after a guest reboot,
# when the decompressor overwrites pages that held translated code).
# Downloaded .debs are cached in OUTDIR/../.cache. Nothing is installed on the
# host; the only network access is `apt-get download` from the configured
# Debian repositories.
#
# Host packages needed (Debian 12): apt dpkg kmod busybox-static
#   qemu-guest-agent nftables iperf3 qemu-utils e2fsprogs cpio gzip lz4
#   coreutils libc-bin gcc libc6-dev
set -euo pipefail

die() { echo "build-guest-image: error: $*" >&2; exit 1; }
log() { echo "build-guest-image: $*" >&2; }
trap 'echo "build-guest-image: error: command failed (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUTDIR="${1:-$REPO_ROOT/guest/tiny}"
mkdir -p "$OUTDIR" || die "cannot create output directory $OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
CACHE="$(dirname "$OUTDIR")/.cache"
ROOTFS_SIZE_MIB="${ROOTFS_SIZE_MIB:-256}"
# cryptomgr.notests skips the crypto self-tests (~0.7 s of boot under TCG).
CMDLINE="console=ttyS0 root=/dev/vda rw quiet panic=-1 cryptomgr.notests"
KERNEL_META="linux-image-cloud-amd64"
# Modules loaded by the initramfs (dependencies are added automatically and
# everything is loaded in dependency order). button+evdev make ACPI power
# button events (QMP system_powerdown) visible to busybox acpid. 8021q gives
# VLAN interfaces; nf_tables (its core holds the payload/cmp/bitwise/meta
# expressions and the filter chain type, enough for address, port and ICMP
# rules) is loaded here because the guest has no /lib/modules for the
# kernel's on-demand modprobe.
MODULES=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
         failover net_failover virtio_net virtio_blk virtio_balloon virtio_console pvpanic_pci
         button evdev 8021q nf_tables)

# ---------------------------------------------------------------- host checks
need() { # need TOOL PACKAGE
    command -v "$1" >/dev/null 2>&1 || die "'$1' not found; install Debian package '$2'"
}
need apt-get apt; need apt-cache apt; need dpkg-deb dpkg; need dpkg-query dpkg
need modinfo kmod; need mke2fs e2fsprogs; need qemu-img qemu-utils
need cpio cpio; need gzip gzip; need ldd libc-bin; need sha256sum coreutils
need gcc gcc
[ -f /usr/lib/x86_64-linux-gnu/libc.a ] || die "the static C library is missing; install Debian package 'libc6-dev'"
BUSYBOX=/bin/busybox
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed' \
    || die "busybox-static is not installed; install Debian package 'busybox-static'"
[ -x "$BUSYBOX" ] || die "$BUSYBOX missing; reinstall Debian package 'busybox-static'"
ldd "$BUSYBOX" >/dev/null 2>&1 && die "$BUSYBOX is dynamically linked; install 'busybox-static'"
# Dynamically linked programs copied into the rootfs: PATH:PACKAGE.
GUEST_PROGRAMS=(/usr/sbin/qemu-ga:qemu-guest-agent /usr/sbin/nft:nftables /usr/bin/iperf3:iperf3)
for p in "${GUEST_PROGRAMS[@]}"; do
    [ -x "${p%%:*}" ] || die "${p%%:*} not found; install Debian package '${p#*:}'"
done
[ "$(uname -m)" = x86_64 ] || die "only x86_64 hosts are supported"
[ "$(id -u)" = 0 ] || log "warning: not root; guest files will be owned by uid $(id -u)"

BUSYBOX_VERSION="$(dpkg-query -W -f='${Version}' busybox-static)"
QGA_VERSION="$(dpkg-query -W -f='${Version}' qemu-guest-agent)"
NFT_VERSION="$(dpkg-query -W -f='${Version}' nftables)"
IPERF3_VERSION="$(dpkg-query -W -f='${Version}' iperf3)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/shepherd-guest.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# -------------------------------------------------------------------- kernel
KPKG="$(apt-cache depends "$KERNEL_META" 2>/dev/null \
        | sed -n 's/^ *|\{0,1\}Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n1)"
[ -n "$KPKG" ] || die "cannot resolve the package behind '$KERNEL_META' (run 'apt-get update'?)"
KVER="${KPKG#linux-image-}"
KPKG_VERSION="$(apt-cache policy "$KPKG" | sed -n 's/^ *Candidate: //p')"
[ -n "$KPKG_VERSION" ] && [ "$KPKG_VERSION" != "(none)" ] \
    || die "no installable version of $KPKG in the apt sources"
mkdir -p "$CACHE"
KDEB="$CACHE/${KPKG}_${KPKG_VERSION//:/%3a}_amd64.deb"
if [ -f "$KDEB" ] && dpkg-deb --info "$KDEB" >/dev/null 2>&1; then
    log "using cached $(basename "$KDEB")"
else
    log "downloading $KPKG $KPKG_VERSION"
    rm -f "$KDEB"
    (cd "$CACHE" && apt-get download -q "$KPKG=$KPKG_VERSION" 2>&1 | grep -v 'unsandboxed' >&2) || true
    [ -f "$KDEB" ] || die "apt-get download of $KPKG=$KPKG_VERSION failed"
    # Drop superseded kernel packages from the cache.
    find "$CACHE" -maxdepth 1 -name 'linux-image-*-cloud-amd64_*.deb' \
        ! -name "$(basename "$KDEB")" -delete
fi
log "unpacking kernel $KVER"
dpkg-deb -x "$KDEB" "$WORK/kernel"
KROOT="$WORK/kernel"
MODDIR="$KROOT/lib/modules/$KVER"
KCONFIG="$KROOT/boot/config-$KVER"
[ -f "$KROOT/boot/vmlinuz-$KVER" ] || die "vmlinuz-$KVER not found in $KDEB"
[ -d "$MODDIR" ] || die "lib/modules/$KVER not found in $KDEB"
[ -f "$KCONFIG" ] || die "config-$KVER not found in $KDEB"
for opt in CONFIG_EXT4_FS CONFIG_DEVTMPFS CONFIG_BLK_DEV_INITRD CONFIG_RD_GZIP \
           CONFIG_SERIAL_8250_CONSOLE CONFIG_PVH; do
    grep -qx "$opt=y" "$KCONFIG" || die "kernel $KVER lacks built-in $opt"
done

# ---------------------------------------------------------- module resolving
declare -A MODPATH=()
while IFS= read -r f; do
    b="$(basename "$f")"; b="${b%%.ko*}"; MODPATH["${b//-/_}"]="$f"
done < <(find "$MODDIR" -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz')
declare -A SEEN=(); ORDER=()
add_module() {
    local m="${1//-/_}" dep deps
    [ -n "${SEEN[$m]:-}" ] && return 0
    SEEN[$m]=1
    if [ -z "${MODPATH[$m]:-}" ]; then
        grep -q "/${m}.ko" "$MODDIR/modules.builtin" 2>/dev/null \
            || grep -q "/${m//_/-}.ko" "$MODDIR/modules.builtin" 2>/dev/null \
            || die "kernel module '$m' is neither in the package nor built in"
        return 0   # built in
    fi
    deps="$(modinfo -F depends "${MODPATH[$m]}")"
    for dep in ${deps//,/ }; do add_module "$dep"; done
    ORDER+=("$m")
}
for m in "${MODULES[@]}"; do add_module "$m"; done
log "initramfs modules: ${ORDER[*]}"

install_busybox_links() { # ROOTDIR
    local a
    while IFS= read -r a; do
        [ "$a" = linuxrc ] || [ "$a" = bin/busybox ] && continue
        mkdir -p "$1/$(dirname "$a")"
        [ -e "$1/$a" ] || [ -L "$1/$a" ] || ln -s /bin/busybox "$1/$a"
    done < <("$BUSYBOX" --list-full)
}

# ----------------------------------------------------------------- initramfs
IR="$WORK/initramfs"
mkdir -p "$IR"/{bin,dev,proc,sys,newroot,lib/modules}
install -m 0755 "$BUSYBOX" "$IR/bin/busybox"
install_busybox_links "$IR"
for m in "${ORDER[@]}"; do
    src="${MODPATH[$m]}"
    case "$src" in
        *.ko)     cp "$src" "$IR/lib/modules/$m.ko" ;;
        *.ko.xz)  need xz xz-utils; xz -dc "$src" > "$IR/lib/modules/$m.ko" ;;
        *.ko.zst) need zstd zstd; zstd -qdc "$src" > "$IR/lib/modules/$m.ko" ;;
        *.ko.gz)  gzip -dc "$src" > "$IR/lib/modules/$m.ko" ;;
    esac
    echo "$m" >> "$IR/lib/modules/load-order"
done
if [ "$(id -u)" = 0 ]; then
    mknod -m 0600 "$IR/dev/console" c 5 1
    mknod -m 0666 "$IR/dev/null" c 1 3
fi
cat > "$IR/init" <<'EOF'
#!/bin/busybox sh
# Shepherd tiny guest initramfs: load virtio drivers, mount root, switch_root.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t devtmpfs -o mode=0755 devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys

rescue() {
    echo
    echo "initramfs: ERROR: $*"
    echo "initramfs: dropping to a shell on the console"
    exec setsid cttyhack sh
}

while read -r m; do
    insmod "/lib/modules/$m.ko" || echo "initramfs: warning: insmod $m failed"
done < /lib/modules/load-order

root=/dev/vda fstype=ext4 flags=rw
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        root=*) root="${arg#root=}" ;;
        rootfstype=*) fstype="${arg#rootfstype=}" ;;
        ro) flags=ro ;;
        rw) flags=rw ;;
    esac
done

i=0
while [ ! -b "$root" ]; do
    i=$((i + 1))
    [ "$i" -gt 100 ] && rescue "root device $root did not appear within 10 s (is there a virtio disk? -drive ...,if=virtio)"
    sleep 0.1
done
mount -t "$fstype" -o "$flags" "$root" /newroot || rescue "cannot mount $root ($fstype) on /newroot"
[ -x /newroot/sbin/init ] || [ -L /newroot/sbin/init ] || rescue "$root has no /sbin/init"

for fs in dev proc sys; do
    mkdir -p "/newroot/$fs"
    mount --move "/$fs" "/newroot/$fs"
done
exec switch_root /newroot /sbin/init
echo "initramfs: switch_root failed"
exec setsid cttyhack sh
EOF
chmod 0755 "$IR/init"

# -------------------------------------------------------------------- rootfs
R="$WORK/rootfs"
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,etc/init.d,etc/acpi,dev,proc,sys,run,tmp,root,var/lib/tiny,var/log}
chmod 1777 "$R/tmp"; chmod 0700 "$R/root"
ln -s ../run "$R/var/run"
install -m 0755 "$BUSYBOX" "$R/bin/busybox"
install_busybox_links "$R"

# A host program plus every shared library it needs (and the loader), at the
# same paths as on the host.
install_with_libs() { # install_with_libs BINARY
    local bin="$1" lib libs
    install -D -m 0755 "$bin" "$R$bin"
    libs="$(ldd "$bin")" || die "ldd failed on $bin"
    # The awk below sees only resolved libraries: an unresolved one would be skipped.
    if grep -q 'not found' <<<"$libs"; then
        die "$bin needs libraries missing on this host:$(grep 'not found' <<<"$libs" | tr -s ' \t\n' ' ')"
    fi
    libs="$(awk '/=> \//{print $3} /^[ \t]*\/[^ ]+ \(/{print $1}' <<<"$libs" | sort -u)"
    [ -n "$libs" ] || die "ldd found no libraries for $bin"
    grep -q 'ld-linux' <<<"$libs" || die "ldd did not report the dynamic loader of $bin"
    while IFS= read -r lib; do
        [ -e "$lib" ] || die "library $lib (needed by $bin) not found"
        mkdir -p "$R$(dirname "$lib")"
        cp -L "$lib" "$R$lib"
    done <<<"$libs"
}
for p in "${GUEST_PROGRAMS[@]}"; do install_with_libs "${p%%:*}"; done
# The memory dirtier for migration tests and benchmarks: static, so it needs no library.
gcc -static -O2 -Wall -o "$R/usr/bin/dirty" "$REPO_ROOT/scripts/guest-dirty.c" || die "cannot compile scripts/guest-dirty.c"

echo tiny > "$R/etc/hostname"
cat > "$R/etc/hosts" <<'EOF'
127.0.0.1	localhost
127.0.1.1	tiny
EOF
cat > "$R/etc/passwd" <<'EOF'
root::0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat > "$R/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
cat > "$R/etc/os-release" <<EOF
NAME="Shepherd tiny guest"
ID=shepherd-tiny
PRETTY_NAME="Shepherd tiny guest (Debian $KVER kernel, busybox $BUSYBOX_VERSION)"
VERSION_ID=1
EOF
cat > "$R/etc/fstab" <<'EOF'
/dev/vda	/	ext4	rw	0 1
EOF

cat > "$R/etc/inittab" <<'EOF'
# busybox init
::sysinit:/etc/init.d/rcS
::respawn:/usr/sbin/qemu-ga-run
::respawn:/sbin/acpid -f -l /run/acpid.log
::askfirst:-/bin/sh
::ctrlaltdel:/sbin/reboot
::shutdown:/etc/init.d/rcK
EOF

cat > "$R/etc/init.d/rcS" <<'EOF'
#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mounted() { grep -q " $1 " /proc/mounts 2>/dev/null; }
mounted /proc || mount -t proc -o nosuid,nodev,noexec proc /proc
mounted /sys  || mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mounted /dev  || mount -t devtmpfs -o mode=0755 devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mounted /dev/pts || mount -t devpts -o gid=5,mode=0620 devpts /dev/pts
mounted /run || mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs /run
[ -L /var/run ] || { mkdir -p /var/run; mounted /var/run || mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs /var/run; }
mounted /tmp || mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /tmp
grep -q '^[^ ]* / [^ ]* ro[, ]' /proc/mounts && mount -o remount,rw /
# No udev: create the /dev/virtio-ports/<name> links ourselves.
mkdir -p /dev/virtio-ports
for p in /sys/class/virtio-ports/*; do
    [ -r "$p/name" ] || continue
    read -r n < "$p/name"
    [ -n "$n" ] && ln -sf "../${p##*/}" "/dev/virtio-ports/$n"
done
hostname -F /etc/hostname
ip link set lo up 2>/dev/null
# Persistent boot counter (root is on the virtual disk).
c=0
[ -r /var/lib/tiny/boot-count ] && read -r c < /var/lib/tiny/boot-count
echo $((c + 1)) > /var/lib/tiny/boot-count
EOF

cat > "$R/etc/init.d/rcK" <<'EOF'
#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
sync
mount -o remount,ro / 2>/dev/null || sync
EOF

cat > "$R/usr/sbin/qemu-ga-run" <<'EOF'
#!/bin/sh
# Started (and respawned) by init. guest-exec looks programs up via this PATH.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
dev=/dev/virtio-ports/org.qemu.guest_agent.0
# Throttle respawns if qemu-ga keeps exiting.
[ -e /run/qemu-ga.started ] && sleep 1
: > /run/qemu-ga.started
while [ ! -e "$dev" ]; do sleep 1; done
exec /usr/sbin/qemu-ga -m virtio-serial -p "$dev"
EOF

# qemu-ga guest-shutdown runs /sbin/shutdown -h -P|-H|-r +0 "msg"
cat > "$R/sbin/shutdown" <<'EOF'
#!/bin/sh
# Minimal shutdown(8) for qemu-ga: -r reboots, anything else powers off.
# Fast path: sync and remount / read-only, then reboot/poweroff at once
# (busybox init's own sequence spends ~2 s in SIGTERM/SIGKILL pauses). If /
# cannot be made read-only, fall back to the graceful path through init.
action=poweroff
for a in "$@"; do
    case "$a" in
        -r|--reboot|-[!-]*r*) action=reboot ;;
    esac
done
sync
if mount -o remount,ro / 2>/dev/null; then
    echo "shutdown: $action" > /dev/console 2>/dev/null
    /bin/busybox "$action" -f
fi
/bin/busybox "$action"
exit 0
EOF

# ACPI power button (QMP system_powerdown) -> poweroff, via busybox acpid.
echo "PWRF power" > "$R/etc/acpid.conf"
cat > "$R/etc/acpi/power" <<'EOF'
#!/bin/sh
exec /sbin/shutdown -h -P +0 "ACPI power button"
EOF
chmod 0755 "$R/etc/init.d/rcS" "$R/etc/init.d/rcK" "$R/usr/sbin/qemu-ga-run" \
    "$R/sbin/shutdown" "$R/etc/acpi/power"

# ------------------------------------------------------------------- outputs
log "writing initrd.img"
find "$IR" -exec touch -h -d @0 {} +   # reproducible cpio
(cd "$IR" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --reproducible --quiet) \
    | gzip -9n > "$WORK/initrd.img"

log "writing rootfs.qcow2 (${ROOTFS_SIZE_MIB} MiB virtual)"
truncate -s "${ROOTFS_SIZE_MIB}M" "$WORK/rootfs.raw"
mke2fs -q -F -t ext4 -b 4096 -L tiny -d "$R" \
    -E lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0 \
    "$WORK/rootfs.raw" \
    || die "mke2fs failed"
qemu-img convert -f raw -O qcow2 "$WORK/rootfs.raw" "$WORK/rootfs.qcow2" \
    || die "qemu-img convert failed"

cp "$KROOT/boot/vmlinuz-$KVER" "$WORK/vmlinuz"

# Uncompressed PVH-bootable vmlinux: the bzImage payload is located with the
# boot protocol header (setup_sects @0x1f1, payload_offset/_length @0x248).
log "extracting vmlinux (PVH ELF)"
u8()  { od -An -tu1 -j "$2" -N1 "$1" | tr -d ' \n'; }
u32() { od -An -tu4 -j "$2" -N4 "$1" | tr -d ' \n'; }
BZ="$WORK/vmlinuz"
[ "$(od -An -c -j $((0x202)) -N4 "$BZ" | tr -d ' \n')" = HdrS ] || die "vmlinuz is not a bzImage"
SETUP_SECTS="$(u8 "$BZ" $((0x1f1)))"; [ "$SETUP_SECTS" = 0 ] && SETUP_SECTS=4
PAYLOAD_OFF=$(( (SETUP_SECTS + 1) * 512 + $(u32 "$BZ" $((0x248))) ))
PAYLOAD_LEN="$(u32 "$BZ" $((0x24c)))"
# The payload ends with the little-endian uncompressed size; strip it.
dd if="$BZ" of="$WORK/payload" iflag=skip_bytes,count_bytes bs=1M \
    skip="$PAYLOAD_OFF" count=$((PAYLOAD_LEN - 4)) status=none
VMLINUX_SIZE="$(u32 "$BZ" $((PAYLOAD_OFF + PAYLOAD_LEN - 4)))"
case "$(od -An -tx1 -N4 "$WORK/payload" | tr -d ' \n')" in
    02214c18) need lz4 lz4;          lz4 -dc < "$WORK/payload" > "$WORK/vmlinux" ;;
    1f8b*)                           gzip -dc < "$WORK/payload" > "$WORK/vmlinux" ;;
    fd377a58) need xz xz-utils;      xz -dc < "$WORK/payload" > "$WORK/vmlinux" ;;
    28b52ffd) need zstd zstd;        zstd -qdc < "$WORK/payload" > "$WORK/vmlinux" ;;
    *) die "unknown compression of the kernel payload in vmlinuz" ;;
esac
[ "$(od -An -c -N4 "$WORK/vmlinux" | tr -d ' \n')" = 177ELF ] || die "extracted vmlinux is not an ELF file"
[ "$(stat -c %s "$WORK/vmlinux")" = "$VMLINUX_SIZE" ] || die "extracted vmlinux has the wrong size"
rm -f "$WORK/payload"
sha() { sha256sum "$1" | cut -d' ' -f1; }
cat > "$WORK/manifest.json" <<EOF
{
  "name": "tiny",
  "arch": "x86_64",
  "kernel": "vmlinuz",
  "kernelPVH": "vmlinux",
  "initrd": "initrd.img",
  "rootfs": "rootfs.qcow2",
  "rootfsFormat": "qcow2",
  "rootfsVirtualSizeMiB": $ROOTFS_SIZE_MIB,
  "cmdline": "$CMDLINE",
  "kernelVersion": "$KVER",
  "packages": {
    "$KPKG": "$KPKG_VERSION",
    "busybox-static": "$BUSYBOX_VERSION",
    "qemu-guest-agent": "$QGA_VERSION",
    "nftables": "$NFT_VERSION",
    "iperf3": "$IPERF3_VERSION"
  },
  "programs": ["dirty"],
  "initrdModules": [$(printf '"%s",' "${ORDER[@]}" | sed 's/,$//')],
  "guestAgentPort": "org.qemu.guest_agent.0",
  "sha256": {
    "vmlinuz": "$(sha "$WORK/vmlinuz")",
    "vmlinux": "$(sha "$WORK/vmlinux")",
    "initrd.img": "$(sha "$WORK/initrd.img")",
    "rootfs.qcow2": "$(sha "$WORK/rootfs.qcow2")"
  }
}
EOF

# Replace outputs only after everything was built successfully.
for f in vmlinuz vmlinux initrd.img rootfs.qcow2 manifest.json; do
    mv -f "$WORK/$f" "$OUTDIR/$f"
done
log "done: $OUTDIR ($(du -sh --apparent-size "$OUTDIR" | cut -f1) apparent;" \
    "kernel $KVER; cmdline: $CMDLINE)"
