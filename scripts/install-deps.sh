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
    "gcc=4:12.2.0-3"                 # builds udpnest's native core (csrc/; without it: Python engine)
    "python3-dev=3.11.2-1+b1"        # Python.h for the native core
    "python3-venv=3.11.2-1+b1"       # python3 -m venv (make venv) on a stock Debian 12
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
