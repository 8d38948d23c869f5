"""``udpnest up --dataplane kernel``: let a Linux >= 7.0 kernel carry the tunnel itself.

Linux 7.0 added the geneve GRO hint (``IFLA_GENEVE_GRO_HINT``): with it on the receiving device and GSO partial
on the sending one, double-UDP-encapsulated super-packets (a workload's VXLAN inside the Geneve overlay) are cut
by the kernel with byte-identical nested headers and merged again by the receiver's GRO, with no userspace
copy at all.  This module creates and configures that device with one command and serves the same control
socket / ``udpnest status`` surface as the userspace dataplane (counters come from the device's statistics).

What maps to what: ``--nested off`` -> plain Geneve (no hint, no GSO partial); ``--nested hint`` -> GRO hint
+ GSO partial (the peer must be a Linux >= 7.0 geneve with gro-hint, a udpnest kernel dataplane, or a udpnest
userspace endpoint in ``hint`` mode).  ``fold`` is a udpnest wire format the kernel does not speak: it needs
the userspace dataplane.  The kernel's geneve device has one remote, so exactly one ``--remote``.

On an older kernel (or one without the geneve module) it refuses with the reason and points to the userspace
dataplane.  :func:`unsupported_reason` is the pure decision; :func:`run` does the netlink.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import signal
import socket
import threading
import time

from pyroute2.netlink.exceptions import NetlinkError

from .config import EndpointConfig

log = logging.getLogger("udpnest.kernelmode")

MIN_KERNEL = (7, 0)
USERSPACE_HINT = ("use the userspace dataplane instead: udpnest up --dataplane userspace (the default) with "
                  "--nested fold (peers running udpnest) or --nested hint (Linux >= 7.0 peers)")
STATS = ("rx_packets", "rx_bytes", "rx_errors", "rx_dropped", "rx_frame_errors", "rx_length_errors",
         "rx_crc_errors", "rx_over_errors", "tx_packets", "tx_bytes", "tx_errors", "tx_dropped",
         "tx_carrier_errors")


class KernelModeError(RuntimeError):
    """Kernel mode cannot run here; the message says why and what to use instead."""


def parse_release(release: str) -> tuple[int, int] | None:
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else None


def unsupported_reason(release: str, cfg: EndpointConfig) -> str | None:
    """Why kernel mode cannot serve ``cfg`` on a kernel ``release`` (``uname -r``), or None."""
    if cfg.nested == "fold":
        return ("--nested fold is udpnest's own wire format and the kernel's geneve does not speak it; "
                "kernel mode speaks plain (--nested off) and the Linux GRO hint (--nested hint); "
                "fold needs the userspace dataplane (--dataplane userspace)")
    if len(cfg.remote) != 1:
        return f"the kernel's geneve device has one remote, {len(cfg.remote)} given"
    if cfg.remote[0].port != cfg.dstport:
        return f"the kernel's geneve device sends to its own dstport {cfg.dstport}, not to {cfg.remote[0]}"
    ver = parse_release(release)
    if ver is None:
        return f"cannot read the kernel version from {release!r}; {USERSPACE_HINT}"
    if ver < MIN_KERNEL and cfg.nested == "hint":
        return (f"Linux {release} is older than {MIN_KERNEL[0]}.{MIN_KERNEL[1]}: its geneve driver has no GRO "
                f"hint (IFLA_GENEVE_GRO_HINT), so the kernel cannot merge double-UDP-encapsulated traffic; "
                f"{USERSPACE_HINT}")
    return None


def explain_create_error(e: Exception, release: str) -> str:
    code = getattr(e, "code", None) or getattr(e, "errno", None)
    if code == errno.EOPNOTSUPP:
        return (f"Linux {release} has no geneve driver (creating a geneve link: EOPNOTSUPP; "
                f"is the geneve module available? modprobe geneve); {USERSPACE_HINT}")
    if code in (errno.EINVAL, errno.ERANGE):
        return (f"Linux {release} refused the geneve device with the GRO hint ({e}); the hint needs Linux >= 7.0; "
                f"{USERSPACE_HINT}")
    if code == errno.EEXIST:
        return f"a device with that name, or a geneve device with the same VNI and remote, already exists ({e})"
    return f"cannot create the geneve device: {e}"


class KernelDataplane:
    def __init__(self, cfg: EndpointConfig, release: str | None = None) -> None:
        self.cfg = cfg
        self.release = release or os.uname().release
        self.hint = cfg.nested == "hint"
        self.features: dict[str, bool] = {}
        self.refused: list[str] = []
        self.started = time.time()
        self.stop_event = threading.Event()
        self.ctl: socket.socket | None = None

    # -- netlink (in the right namespaces)

    def _ipr(self, netns: str | None):
        from pyroute2 import IPRoute

        return IPRoute(netns=netns) if netns else IPRoute()

    def open(self) -> None:
        why = unsupported_reason(self.release, self.cfg)
        if why:
            raise KernelModeError(why)
        from .io import netlink

        cfg = self.cfg
        with _netns(cfg.underlay_netns):
            try:
                netlink.create_geneve(cfg.tap, cfg.id, cfg.remote[0].address, port=cfg.dstport, gro_hint=self.hint,
                                      udp_csum=cfg.udpcsum, ttl=cfg.ttl, tos=cfg.tos, df=cfg.df)
            except (OSError, NetlinkError) as e:
                raise KernelModeError(explain_create_error(e, self.release)) from e
            try:
                if self.hint:
                    info = netlink.geneve_info(cfg.tap)
                    if not info.get("IFLA_GENEVE_GRO_HINT"):
                        raise KernelModeError(f"Linux {self.release} ignored the GRO hint attribute; {USERSPACE_HINT}")
                    self.refused = sorted(netlink.set_features(
                        cfg.tap, dict.fromkeys(netlink.GSO_PARTIAL_FEATURES, True)))
                    if self.refused:
                        log.warning("kernel refused features %s on %s", self.refused, cfg.tap)
                self.features = netlink.get_features(cfg.tap)
                with self._ipr(None) as ipr:
                    (idx,) = ipr.link_lookup(ifname=cfg.tap)
                    if cfg.tap_mac:
                        ipr.link("set", index=idx, address=cfg.tap_mac)
                    if cfg.tap_netns:
                        ipr.link("set", index=idx, net_ns_fd=cfg.tap_netns)
            except BaseException:
                self._delete()
                raise
        with self._ipr(cfg.tap_netns) as ipr:
            (idx,) = ipr.link_lookup(ifname=cfg.tap)
            for a in cfg.tap_addresses:
                addr, plen = a.split("/")
                ipr.addr("add", index=idx, address=addr, prefixlen=int(plen))
            ipr.link("set", index=idx, state="up")
        tnl = sorted(k for k, v in self.features.items() if v and ("gso" in k or "udp_tnl" in k))
        log.info("kernel dataplane: geneve %s id %d remote %s%s, features %s", cfg.tap, cfg.id, cfg.remote[0],
                 " gro-hint" if self.hint else "", ",".join(tnl))
        from .endpoint import control_socket

        self.ctl = control_socket(cfg.control_path)
        self.ctl.settimeout(0.2)

    def _delete(self) -> None:
        for ns in {self.cfg.tap_netns, self.cfg.underlay_netns}:
            with contextlib.suppress(Exception), self._ipr(ns) as ipr:
                for idx in ipr.link_lookup(ifname=self.cfg.tap):
                    ipr.link("del", index=idx)

    def close(self) -> None:
        if self.ctl is not None:
            self.ctl.close()
            self.ctl = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.cfg.control_path)
        self._delete()

    # -- status

    def stats(self) -> dict[str, int]:
        with self._ipr(self.cfg.tap_netns) as ipr:
            (link,) = ipr.get_links(ifname=self.cfg.tap)
        st = link.get_attr("IFLA_STATS64") or link.get_attr("IFLA_STATS")
        return {k: int(st[k]) for k in STATS if k in st} if st is not None else {}

    def status(self) -> dict:
        s = self.stats()
        mode = "hint" if self.hint else "plain"
        on = sorted(k for k, v in self.features.items() if v)
        return {
            "pid": os.getpid(), "uptime_s": time.time() - self.started, "dataplane": "kernel",
            "kernel": {"release": self.release, "gro_hint": self.hint, "features": on, "refused": self.refused},
            "config": {"nested": self.cfg.nested, "id": self.cfg.id, "remote": [str(p) for p in self.cfg.remote]},
            "tap": {"name": self.cfg.tap, "offloads": [f for f in on if f.startswith("tx-")],
                    "refused": self.refused},
            "underlay": {"gso": True, "gro": True},
            "tx": {"frames": s.get("tx_packets", 0), "bytes": s.get("tx_bytes", 0), f"mode_{mode}": 1},
            "rx": {"tap_writes": s.get("rx_packets", 0), "tap_bytes": s.get("rx_bytes", 0)},
            "tx_segments_hist": {}, "rx_segments_hist": {},
            "peers": {str(self.cfg.remote[0]): {"state": "static", "mode": mode}},
            "drops": {k: v for k, v in s.items() if ("errors" in k or "dropped" in k) and v},
            "device": s,
        }

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                conn, _ = self.ctl.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            with conn:
                with contextlib.suppress(OSError):
                    conn.sendall(json.dumps(self.status()).encode())


@contextlib.contextmanager
def _netns(name: str | None):
    """Run the block in network namespace ``name`` (this thread), then come back."""
    if not name:
        yield
        return
    from pyroute2 import netns

    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        netns.setns(name, flags=0)
        yield
    finally:
        netns.setns(own, flags=0)
        os.close(own)


def run(cfg: EndpointConfig, release: str | None = None) -> int:
    """``udpnest up --dataplane kernel``; returns the exit status."""
    import sys

    dp = KernelDataplane(cfg, release)
    try:
        dp.open()
    except KernelModeError as e:
        print(f"udpnest: kernel dataplane unavailable: {e}", file=sys.stderr)
        return 1
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: dp.stop_event.set())
    try:
        dp.run()
    finally:
        dp.close()
    return 0
