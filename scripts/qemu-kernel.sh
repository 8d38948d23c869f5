#!/usr/bin/env bash
# Fetch the pinned Debian Linux 7.x kernel the interop harness boots in QEMU (tests/interop), into a private
# cache; the host's apt configuration is not touched (private sources list, lists and archive dirs).
#   scripts/qemu-kernel.sh            fetch + extract once (a second run costs nothing)
#   scripts/qemu-kernel.sh --print    print the extracted kernel directory
# Result: $CACHE/$KVER/{vmlinuz,modules/...}; a failure leaves $CACHE/$KVER.missing with the reason, which
# the harness shows as its skip reason.  Needs root only for the cache directory.
set -euo pipefail
KVER="${UDPNEST_KVER:-7.2.13+deb14-cloud-amd64}"
KPKGVER="${UDPNEST_KPKGVER:-7.2.13-1}"
SUITE="${UDPNEST_KSUITE:-sid}"
CACHE="${UDPNEST_KCACHE:-/var/cache/udpnest/kernel}"
out="$CACHE/$KVER"
if [ "${1:-}" = "--print" ]; then echo "$out"; exit 0; fi
[ -s "$out/vmlinuz" ] && [ -d "$out/modules" ] && exit 0
mkdir -p "$CACHE/apt/lists/partial" "$CACHE/apt/archives/partial" "$CACHE/apt/dl"
rm -f "$out.missing"
fail() { echo "qemu-kernel.sh: $*" | tee "$out.missing" >&2; exit 1; }
cat > "$CACHE/apt/sources.list" <<SRC
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $SUITE main
SRC
A=(-o "Dir::Etc::sourcelist=$CACHE/apt/sources.list" -o Dir::Etc::sourceparts=- -o "Dir::State::Lists=$CACHE/apt/lists"
   -o "Dir::Cache=$CACHE/apt" -o "Dir::Cache::Archives=$CACHE/apt/archives" -o Dir::State::status=/dev/null
   -o APT::Architecture=amd64 -o APT::Sandbox::User=root -q)
apt-get "${A[@]}" update >/dev/null 2>&1 || fail "apt-get update of Debian $SUITE failed (no access to the Debian archive?)"
pkgs=("linux-binary-$KVER=$KPKGVER" "linux-modules-$KVER=$KPKGVER")
(cd "$CACHE/apt/dl" && apt-get "${A[@]}" download "${pkgs[@]}" >/dev/null 2>&1) ||
    fail "Debian $SUITE no longer has ${pkgs[*]} (pinned in scripts/qemu-kernel.sh; pick a current 7.x cloud-amd64 with apt-cache search and update KVER/KPKGVER)"
tmp=$(mktemp -d "$CACHE/x.XXXXXX")
for f in "$CACHE"/apt/dl/linux-{binary,modules}-"$KVER"_*.deb; do dpkg-deb -x "$f" "$tmp"; done
mkdir -p "$tmp/out"
mv "$tmp/usr/lib/modules/$KVER/vmlinuz" "$tmp/out/vmlinuz"
mv "$tmp/usr/lib/modules/$KVER/kernel" "$tmp/out/modules"
rm -rf "$out"; mv "$tmp/out" "$out"; rm -rf "$tmp" "$CACHE"/apt/dl/*.deb
echo "qemu-kernel.sh: Linux $KVER in $out"
