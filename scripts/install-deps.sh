#!/usr/bin/env bash
# Debian packages the lab, the demo and the root tests run (pinned; Debian 12 "bookworm").
# Installs only what is missing, so a second run costs nothing.  Needs root.
set -euo pipefail
pkgs=(
    "iperf3=3.12-1+deb12u2"          # bench / demo traffic
    "ethtool=1:6.1-1"                # underlay offload settings (wire mode)
    "iproute2"                       # ip netns exec (the lab itself uses netlink via pyroute2)
    "iputils-ping=3:20221126-1+deb12u1"
    "tshark=4.0.17-0+deb12u3"        # root tests capture the underlay
    "nftables=1.0.6-2+deb12u2"       # robustness tests: random underlay loss (numgen random)
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
