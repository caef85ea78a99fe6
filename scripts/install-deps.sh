#!/bin/bash
# Installs the Debian packages Shepherd needs (Debian 12 / Ubuntu). Idempotent and quick when
# everything is there: apt runs only for what is missing.
set -euo pipefail

packages=(
  qemu-system-x86      # the hypervisor (TCG when KVM does not work)
  qemu-utils           # qemu-img
  qemu-guest-agent     # copied into the guest image: the "tools"
  nftables iperf3      # copied into the guest image: firewall rules and traffic for network tests
  busybox-static       # the guest's userland
  gcc libc6-dev        # the guest's static memory dirtier (scripts/guest-dirty.c)
  cpio gzip lz4 xz-utils zstd e2fsprogs kmod dpkg apt   # building the guest image
  iproute2             # network namespaces, veth, bridges for the demo
  openvswitch-switch   # each host's distributed virtual switch (user-space datapath) and the demo's physical switch
  iputils-ping ethtool # the network benchmark's guest-less reference paths
  libsqlite3-dev       # SQLite for GRDB
  python3 bc curl      # small helpers in benchmarks
  python3-venv         # the venv for sushy-tools (Debian's pip refuses system-wide installs)
  ca-certificates
)

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done

if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing ${missing[*]}; run as root (or with sudo) to install them" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v swift >/dev/null 2>&1 && [ ! -x /opt/swift/usr/bin/swift ]; then
  echo "install-deps: Swift 6 is not installed. Install a Swift 6 toolchain for Linux (swift.org) into /opt/swift or put 'swift' on PATH." >&2
  exit 1
fi

# sushy-tools' Redfish emulator: a BMC the Redfish client's tests talk to. From PyPI into its own
# venv; bcrypt hashes the test's htpasswd file. Skipped when the emulator is already there.
sushy_venv=/opt/shepherd/sushy
if [ ! -x "$sushy_venv/bin/sushy-emulator" ]; then
  if [ ! -w "$(dirname "$sushy_venv")" ] && [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: sushy-tools is missing; run as root (or with sudo) to install it into $sushy_venv" >&2
    exit 1
  fi
  echo "install-deps: installing sushy-tools into $sushy_venv"
  mkdir -p "$(dirname "$sushy_venv")"
  python3 -m venv "$sushy_venv"
  "$sushy_venv/bin/pip" install --quiet --disable-pip-version-check sushy-tools bcrypt
fi

echo "install-deps: all system packages present"
