"""Kernel TX path: a TAP in the underlay namespace whose frames the kernel routes out and segments.

udpnest writes one frame per super-packet (outer Eth/IP/UDP + Geneve + inner frame, tunnel-GSO vnet
header, see :mod:`udpnest.outer`).  For the kernel to forward a frame that enters on this TAP with one
of the host's own addresses as source, the underlay namespace needs these sysctls, which udpnest sets
at start, logs, and restores at stop (docs/operations.md):

* ``net.ipv4.ip_forward = 1`` (IPv4) / ``net.ipv6.conf.all.forwarding = 1`` (IPv6): namespace-wide;
* ``net.ipv4.conf.all.rp_filter = 0`` and ``net.ipv4.conf.<tap>.rp_filter = 0``: the source is local;
* ``net.ipv4.conf.<tap>.accept_local = 1``: accept a local source address on this TAP.
"""

from __future__ import annotations

import contextlib
import logging

from .tap import DEFAULT_OFFLOADS, Tap, in_netns

log = logging.getLogger("udpnest")


def _sysctl_path(key: str) -> str:
    return "/proc/sys/" + key.replace(".", "/")


def read_sysctl(key: str, netns: str | None) -> str:
    with in_netns(netns), open(_sysctl_path(key)) as f:
        return f.read().strip()


def write_sysctl(key: str, value: str, netns: str | None) -> None:
    with in_netns(netns), open(_sysctl_path(key), "w") as f:
        f.write(value)


class KernelTx:
    def __init__(self, name: str, *, netns: str | None, v6: bool) -> None:
        self.netns = netns
        self.saved: list[tuple[str, str]] = []
        self.tap = Tap(name, netns=netns, offloads=DEFAULT_OFFLOADS, up=True)
        try:
            self.mac = _link_mac(self.tap.ifindex, netns)
            n = self.tap.name
            wanted = ([("net.ipv6.conf.all.forwarding", "1")] if v6 else
                      [("net.ipv4.ip_forward", "1"), ("net.ipv4.conf.all.rp_filter", "0"),
                       (f"net.ipv4.conf.{n}.rp_filter", "0"), (f"net.ipv4.conf.{n}.accept_local", "1")])
            for key, value in wanted:
                old = read_sysctl(key, netns)
                if old != value:
                    write_sysctl(key, value, netns)
                    if not key.startswith(f"net.ipv4.conf.{n}."):  # per-TAP keys vanish with the TAP
                        self.saved.append((key, old))
                    log.info("kernel TX path: sysctl %s = %s (was %s; restored at stop)", key, value, old)
        except BaseException:
            self.close()
            raise

    def send(self, parts) -> int:
        return self.tap.writev(parts)

    def close(self) -> None:
        for key, old in reversed(self.saved):
            with contextlib.suppress(OSError):
                write_sysctl(key, old, self.netns)
        self.saved = []
        self.tap.close()


def _link_mac(ifindex: int, netns: str | None) -> bytes:
    from pyroute2 import IPRoute

    kw = {"netns": netns} if netns is not None else {}
    with IPRoute(**kw) as ipr:
        link = ipr.link("get", index=ifindex)[0]
    return bytes.fromhex(link.get_attr("IFLA_ADDRESS").replace(":", ""))


