"""Kernel TX path: a TAP in the underlay namespace whose frames the kernel routes out and segments.

udpnest writes one frame per super-packet (outer Eth/IP/UDP + Geneve + inner frame, tunnel-GSO vnet
header, see :mod:`udpnest.outer`).  For the kernel to forward a frame that enters on this TAP with one
of the host's own addresses as source, the underlay namespace needs these sysctls, which udpnest sets
at start, logs, and restores at stop (docs/operations.md):

* ``net.ipv4.ip_forward = 1`` (IPv4) / ``net.ipv6.conf.all.forwarding = 1`` (IPv6): namespace-wide;
* ``net.ipv4.conf.all.rp_filter = 0`` and ``net.ipv4.conf.<tap>.rp_filter = 0``: the source is local;
* ``net.ipv4.conf.<tap>.accept_local = 1``: accept a local source address on this TAP.

The original values of the namespace-wide keys are written to a state file
(``/run/udpnest/kernel-tx-<netns inode>-<tap>.json``) *before* anything is changed and removed after they are
restored.  If udpnest is killed (``kill -9``) the file survives; the next start takes the originals from
it instead of recording the values the killed run left behind (issue 9.5: ``ip_forward = 1`` stayed on
for good), and restores them at its own stop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os

from .tap import DEFAULT_OFFLOADS, Tap, in_netns

log = logging.getLogger("udpnest")

STATE_DIR = "/run/udpnest"


def netns_id(netns: str | None) -> str:
    """The network namespace's inode number: unique while it exists, the same after a restart of udpnest."""
    with in_netns(netns):
        return str(os.stat("/proc/thread-self/ns/net").st_ino)


def state_path(name: str, netns: str | None, state_dir: str = STATE_DIR) -> str:
    try:
        ns = netns_id(netns)
    except OSError:
        ns = netns or "host"
    return os.path.join(state_dir, f"kernel-tx-{ns}-{name}.json")


def load_state(path: str) -> dict[str, str]:
    """Originals recorded by a run that did not stop cleanly ({} if none or unreadable)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): str(v) for k, v in data.items() if isinstance(v, (str, int))}


def save_state(path: str, originals: dict[str, str]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(originals, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _sysctl_path(key: str) -> str:
    return "/proc/sys/" + key.replace(".", "/")


def read_sysctl(key: str, netns: str | None) -> str:
    with in_netns(netns), open(_sysctl_path(key)) as f:
        return f.read().strip()


def write_sysctl(key: str, value: str, netns: str | None) -> None:
    with in_netns(netns), open(_sysctl_path(key), "w") as f:
        f.write(value)


def wanted_sysctls(tap: str, v6: bool) -> list[tuple[str, str]]:
    return ([("net.ipv6.conf.all.forwarding", "1")] if v6 else
            [("net.ipv4.ip_forward", "1"), ("net.ipv4.conf.all.rp_filter", "0"),
             (f"net.ipv4.conf.{tap}.rp_filter", "0"), (f"net.ipv4.conf.{tap}.accept_local", "1")])


def apply_sysctls(wanted: list[tuple[str, str]], tap: str, netns: str | None, path: str) -> list[tuple[str, str]]:
    """Set ``wanted``; returns the (key, original) pairs to restore.  The originals come from the state file of
    a crashed run if there is one, and are recorded in it before the first write."""
    recorded = load_state(path)
    if recorded:
        log.warning("kernel TX path: %s left by a run that did not stop cleanly: originals %s", path, recorded)
    originals: dict[str, str] = {}
    for key, _ in wanted:
        if key.startswith(f"net.ipv4.conf.{tap}."):  # per-TAP keys vanish with the TAP
            continue
        originals[key] = recorded.get(key, read_sysctl(key, netns))
    save_state(path, originals)
    saved = []
    for key, value in wanted:
        old = read_sysctl(key, netns)
        if old != value:
            write_sysctl(key, value, netns)
            log.info("kernel TX path: sysctl %s = %s (was %s; original %s restored at stop)", key, value, old,
                     originals.get(key, old))
        if key in originals:
            saved.append((key, originals[key]))
    return saved


def restore_sysctls(saved: list[tuple[str, str]], netns: str | None, path: str) -> None:
    ok = True
    for key, old in reversed(saved):
        try:
            if read_sysctl(key, netns) != old:
                write_sysctl(key, old, netns)
        except OSError as e:
            ok = False
            log.warning("kernel TX path: cannot restore %s = %s: %s", key, old, e)
    if ok:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


class KernelTx:
    def __init__(self, name: str, *, netns: str | None, v6: bool, state_dir: str = STATE_DIR) -> None:
        self.netns = netns
        self.saved: list[tuple[str, str]] = []
        self.state = state_path(name, netns, state_dir)
        self.tap = Tap(name, netns=netns, offloads=DEFAULT_OFFLOADS, up=True)
        try:
            self.mac = _link_mac(self.tap.ifindex, netns)
            self.saved = apply_sysctls(wanted_sysctls(self.tap.name, v6), self.tap.name, netns, self.state)
        except BaseException:
            self.close()
            raise

    def send(self, parts) -> int:
        return self.tap.writev(parts)

    def close(self) -> None:
        if self.saved:
            restore_sysctls(self.saved, self.netns, self.state)
        self.saved = []
        self.tap.close()


def _link_mac(ifindex: int, netns: str | None) -> bytes:
    from pyroute2 import IPRoute

    kw = {"netns": netns} if netns is not None else {}
    with IPRoute(**kw) as ipr:
        link = ipr.link("get", index=ifindex)[0]
    return bytes.fromhex(link.get_attr("IFLA_ADDRESS").replace(":", ""))


