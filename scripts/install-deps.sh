#!/usr/bin/env bash
# Debian packages the lab, the demo and the root tests run (pinned; Debian 12 "bookworm").
# Installs only what is missing, so a second run costs nothing.  Needs root.
set -euo pipefail
pkgs=(
    "python3-venv=3.11.2-1+b1"       # make venv (python3 -m venv)
    "python3-dev=3.11.2-1+b1"        # headers for the optional C engine (csrc/)
    "gcc=4:12.2.0-3"                 # compiles it
    "make=4.3-4.1"                   # present already when `make demo` runs; kept for a script-only install
    "iperf3=3.12-1+deb12u2"          # bench / demo traffic
    "ethtool=1:6.1-1"                # cross-checks the lab offload settings (set via pyroute2) in tests
    "iproute2"                       # ip netns exec (the lab itself uses netlink via pyroute2)
    "iputils-ping=3:20221126-1+deb12u1"
    "tshark=4.0.17-0+deb12u3"        # root tests capture the underlay
    "nftables=1.0.6-2+deb12u2"       # robustness tests: random underlay loss (numgen random)
    "qemu-system-x86=1:7.2+dfsg-7+deb12u18+b3"  # tests/interop: a Linux 7.x guest (TCG), with virtiofsd
    "busybox-static=1:1.35.0-4+deb12u1+b1"      # tests/interop: the guest's initramfs
)
missing=()
for p in "${pkgs[@]}"; do
    name=${p%%=*}
    want=${p#*=}
    have=$(dpkg-query -W -f='${Version}' "$name" 2>/dev/null || true)
    if [ -z "$have" ] || { [ "$want" != "$p" ] && [ "$have" != "$want" ]; }; then
        missing+=("$p")
    fi
done
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# tests/interop boots a pinned Debian Linux 7.x kernel; fetched into /var/cache/udpnest/kernel without touching
# the host's apt configuration.  Not fatal: if it cannot be had, the interop tests skip and say why.
bash "$(dirname "$0")/qemu-kernel.sh" || echo "install-deps: interop kernel unavailable (tests/interop will skip)" >&2
