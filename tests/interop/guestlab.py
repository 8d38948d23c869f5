"""A two-host lab inside the QEMU guest: udpnest on one side, the guest kernel's own geneve on the other.

    W (workload of udpnest)        U (udpnest host)                  K (kernel host)
    vx0 203.0.113.1  --- wl0 TAP <- udpnest -> u0 ====== veth ====== k0 -> gk (geneve) <- vx0 203.0.113.2
    (VXLAN id 100, port 6082)       198.51.100.1 / 2001:db8:1::1      198.51.100.2 / 2001:db8:1::2

Everything runs as commands in the guest (``Guest.sh``); udpnest is this checkout run by the host's venv
Python over virtiofs.  Only documentation prefixes are used.

Underlay settings on the veth ends (both directions carry data or ACKs):

``wire``     ``tso off tx-udp_tnl-segmentation off tx-udp_tnl-csum-segmentation off tx off`` plus ``gro on
             rx-udp-gro-forwarding on`` on both ends: every frame is <= MTU with valid checksums, and the
             receiver's GRO (and the kernel geneve's GRO-hint path) may merge them again, like a real NIC.
``offload``  the veth defaults (TSO / UDP-tunnel GSO: super-packets cross whole) **except** ``tx off`` on the
             kernel host's end ``k0``: with it on, a kernel sender's CHECKSUM_PARTIAL packets cross the veth
             with unfinished inner TCP checksums that udpnest forwards as they are and the workload drops (a
             real NIC completes them).  udpnest's own lab ``offload`` setting therefore cannot host a kernel
             peer; this is what to set instead.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from udpnest.lab.qemu import Guest

HERE = Path(__file__).resolve().parent
FLOWS = HERE / "flows.py"
PY = sys.executable
LIGHT = f"{sys.executable} -I -S"  # stdlib-only helpers: no site-packages scan (seconds under TCG)
_STATUS = ("import socket,sys\ns=socket.socket(socket.AF_UNIX);s.settimeout(20);s.connect(sys.argv[1]);d=b''\n"
           "while c:=s.recv(65536): d+=c\nsys.stdout.write(d.decode())")
VNI = 42
VXLAN_PORT = 6082
UNDERLAY = {4: ("198.51.100.1", "198.51.100.2", 24), 6: ("2001:db8:1::1", "2001:db8:1::2", 64)}
OVERLAY = ("192.0.2.1", "192.0.2.2")
INNER = ("203.0.113.1", "203.0.113.2")
# workload VXLAN MTU: fits every mode (fold needs the most, docs/operations.md "MTU arithmetic")
VX_MTU = {4: 1390, 6: 1370}
WIRE = "tso off tx-udp_tnl-segmentation off tx-udp_tnl-csum-segmentation off tx off gro on rx-udp-gro-forwarding on"
KERNEL_STATS = ("rx_packets", "rx_bytes", "rx_errors", "rx_dropped", "rx_frame_errors", "rx_length_errors",
                "rx_crc_errors", "tx_packets")
MB = 1_000_000
# RX packets per MB on a receiving device: one per wire datagram is ~750 (1 MB / ~1340 bytes of TCP payload);
# merged trains give ~30-55 kernel-to-kernel in an idle guest.  Under TCG on a busy host the merge depth varies
# run to run (110 seen in CI for a correct kernel-mode pair), so "merged" means at least ~5 datagrams per packet.
MERGED_PER_MB = 150


@dataclass
class Lab:
    guest: Guest
    family: int = 4
    underlay: str = "wire"
    pids: list[int] = field(default_factory=list)

    def sh(self, cmd: str, timeout: float = 120.0, check: bool = True):
        return self.guest.sh(cmd, timeout=timeout, check=check)

    def ns(self, ns: str, cmd: str, **kw):
        return self.sh(f"ip netns exec {ns} {cmd}", **kw)

    # ------------------------------------------------------------------ topology

    def setup(self) -> Lab:
        self.teardown()
        local, remote, plen = UNDERLAY[self.family]
        nodad = " nodad" if self.family == 6 else ""
        cmds = [
            "ip netns add U", "ip netns add K", "ip netns add W",
            "for n in U K W; do ip -n $n link set lo up; done",
            "ip link add name u0 netns U type veth peer name k0 netns K",
            f"ip -n U addr add {local}/{plen} dev u0{nodad}", f"ip -n K addr add {remote}/{plen} dev k0{nodad}",
            "ip -n U link set u0 up", "ip -n K link set k0 up",
            # the workload's TCP must not wait for the slow guest's delayed ACKs to fill windows
            "for n in W K; do ip netns exec $n sysctl -qw net.ipv4.tcp_wmem='4096 4194304 4194304'; done",
        ]
        if self.underlay == "wire":
            cmds += [f"ip netns exec U ethtool -K u0 {WIRE}", f"ip netns exec K ethtool -K k0 {WIRE}"]
        else:
            cmds += ["ip netns exec K ethtool -K k0 tx off"]
        self.sh(" && ".join(cmds))
        return self

    def bg(self, ns: str, cmd: str, log: str) -> int:
        """Start ``cmd`` in the background in namespace ``ns``; its pid is remembered for teardown."""
        pid = int(self.ns(ns, f"sh -c {shlex.quote(f'{cmd} > {log} 2>&1 & echo $!')}").out.split()[-1])
        self.pids.append(pid)
        return pid

    def teardown(self) -> None:
        pids = " ".join(str(p) for p in self.pids)
        if pids:
            self.sh(f"kill -TERM {pids} 2>/dev/null; sleep 1; kill -KILL {pids} 2>/dev/null; true", check=False)
        self.pids = []
        self.sh("ip -all netns delete; true", check=False)

    @property
    def local(self) -> str:
        return UNDERLAY[self.family][0]

    @property
    def remote(self) -> str:
        return UNDERLAY[self.family][1]

    def kernel_geneve(self, hint: bool = False, gso_partial: bool = False, name: str = "gk") -> None:
        """The kernel host's geneve towards udpnest: stock (iproute2) or with the GRO hint (our netlink)."""
        if hint or gso_partial:
            flags = ("" if hint else " --no-hint") + (" --gso-partial" if gso_partial else "")
            self.ns("K", f"{PY} -m udpnest.io.netlink geneve {name} {VNI} {self.local}{flags}")
        else:
            self.ns("K", f"ip link add {name} type geneve id {VNI} remote {self.local}")
        self.sh(f"ip -n K addr add {OVERLAY[1]}/24 dev {name} && ip -n K link set {name} up")

    def kernel_vxlan(self, dev: str = "gk") -> None:
        self.sh(f"ip -n K link add vx0 type vxlan id 100 local {OVERLAY[1]} remote {OVERLAY[0]} "
                f"dstport {VXLAN_PORT} && ip -n K link set vx0 mtu {VX_MTU[self.family]} up && "
                f"ip -n K addr add {INNER[1]}/24 dev vx0")

    def workload_vxlan(self) -> None:
        self.sh(f"ip -n W link add vx0 type vxlan id 100 local {OVERLAY[0]} remote {OVERLAY[1]} "
                f"dstport {VXLAN_PORT} && ip -n W link set vx0 mtu {VX_MTU[self.family]} up && "
                f"ip -n W addr add {INNER[0]}/24 dev vx0")

    # ------------------------------------------------------------------ udpnest

    def udpnest_up(self, nested: str = "off", *extra: str, name: str = "wl0") -> str:
        remote = self.remote if self.family == 4 else f"[{self.remote}]"
        ctl = f"/run/udpnest/{name}.sock"
        argv = [PY, "-m", "udpnest.cli", "up", "--id", str(VNI), "--local", self.local, "--remote", remote,
                "--tap", name, "--tap-netns", "W", "--tap-address", f"{OVERLAY[0]}/24", "--nested", nested,
                "--nested-port", f"{VXLAN_PORT}:vxlan", "--control", ctl, *extra]
        log = f"/tmp/udpnest-{name}.log"
        self.bg("U", shlex.join(argv), log)
        r = self.sh(f"for i in $(seq 600); do test -S {ctl} && exit 0; sleep 0.2; done; exit 1", check=False,
                    timeout=150)
        if r.rc != 0:
            raise TimeoutError(f"udpnest did not come up: {self.udpnest_log(name)}")
        self.sh(f"ip -n W link set {name} up")
        return ctl

    def kernelmode_up(self, side: str, nested: str = "hint") -> str:
        """``udpnest up --dataplane kernel`` on side "U" (device wl0 moved into W) or "K" (device gk in K)."""
        local, remote = (self.local, self.remote) if side == "U" else (self.remote, self.local)
        remote = remote if self.family == 4 else f"[{remote}]"
        name, netns, addr = ("wl0", "W", OVERLAY[0]) if side == "U" else ("gk", "K", OVERLAY[1])
        ctl = f"/run/udpnest/{name}.sock"
        argv = [PY, "-m", "udpnest.cli", "up", "--dataplane", "kernel", "--id", str(VNI), "--local", local,
                "--remote", remote, "--tap", name, "--tap-netns", netns, "--tap-address", f"{addr}/24",
                "--nested", nested, "--control", ctl]
        log = f"/tmp/udpnest-{name}.log"
        self.bg(side, shlex.join(argv), log)
        r = self.sh(f"for i in $(seq 600); do test -S {ctl} && exit 0; sleep 0.2; done; exit 1", check=False,
                    timeout=150)
        if r.rc != 0:
            raise TimeoutError(f"kernel mode did not come up: {self.udpnest_log(name)}")
        return ctl

    def udpnest_status(self, ctl: str = "/run/udpnest/wl0.sock") -> dict:
        return json.loads(self.sh(f"{LIGHT} -c {shlex.quote(_STATUS)} {ctl}").out)

    def udpnest_log(self, name: str = "wl0") -> str:
        return self.sh(f"cat /tmp/udpnest-{name}.log", check=False).out

    # ------------------------------------------------------------------ counters and traffic

    def kernel_stats(self, dev: str = "gk", ns: str = "K") -> dict[str, int]:
        out = self.ns(ns, "sh -c " + shlex.quote(
            " ; ".join(f"echo {s} $(cat /sys/class/net/{dev}/statistics/{s})" for s in KERNEL_STATS))).out
        return {k: int(v) for k, v in (line.split() for line in out.splitlines())}

    def count_cbit(self, ns: str = "K") -> None:
        """Count Geneve packets with the C bit (critical options) arriving in ``ns`` (nftables counter)."""
        rule = "udp dport 6081 @th,72,8 & 0x40 == 0x40 counter"
        self.ns(ns, "sh -c " + shlex.quote(
            "nft add table inet un && nft add chain inet un in '{ type filter hook input priority 0; }' && "
            f"nft add rule inet un in '{rule}'"))

    def cbit_packets(self, ns: str = "K") -> int:
        out = self.ns(ns, "nft list chain inet un in").out
        return int(re.search(r"counter packets (\d+)", out).group(1))

    def ping(self, src_ns: str, dst: str, size: int = 56, count: int = 3) -> None:
        self.ns(src_ns, f"ping -n -c {count} -i 0.3 -W 3 -s {size} {dst}", timeout=60)

    def transfer(self, src: str, nbytes: int, port: int = 5301, timeout: float = 400.0,
                 during=None) -> tuple[dict, dict]:
        """TCP over the workload VXLAN: ``src`` "W" (udpnest side -> kernel) or "K"; sha256 of both ends."""
        dst_ns = "K" if src == "W" else "W"
        dst_addr = INNER[1] if src == "W" else INNER[0]
        rlog, slog = f"/tmp/recv-{port}.json", f"/tmp/send-{port}.json"
        self.bg(dst_ns, f"{LIGHT} {FLOWS} recv {dst_addr} {port} {timeout}", rlog)
        self.bg(src, f"{LIGHT} {FLOWS} send {dst_addr} {port} {nbytes}", slog)
        if during is not None:
            during()
        deadline = time.monotonic() + timeout
        while True:
            r = self.sh(f"cat {rlog}", check=False).out.strip().splitlines()
            s = self.sh(f"cat {slog}", check=False).out.strip().splitlines()
            done = [x for x in (r[-1:] + s[-1:]) if x.startswith("{")]
            if len(done) == 2:
                return json.loads(s[-1]), json.loads(r[-1])
            if any("Error" in line for line in r + s) or time.monotonic() > deadline:
                raise AssertionError(f"transfer failed: sender {s[-5:]} receiver {r[-5:]}\n"
                                     f"udpnest: {self.udpnest_log()[-3000:]}")
            time.sleep(1.0)


def per_mb(packets: int, nbytes: int) -> float:
    return packets / (nbytes / MB)
