"""Running udpnest as a service: systemd readiness, signals, and reload (SIGHUP) without dropping the TAP.

* :func:`sd_notify` sends ``READY=1`` / ``RELOADING=1`` / ``STOPPING=1`` / ``STATUS=...`` to ``$NOTIFY_SOCKET``
  (the systemd notify protocol: one datagram on a unix socket, ``@`` for the abstract namespace), so the unit
  can be ``Type=notify``; without ``$NOTIFY_SOCKET`` it does nothing.
* :class:`Service` wraps a started :class:`udpnest.endpoint.Endpoint`: SIGTERM/SIGINT stop it (the endpoint
  closes what it opened: TAP, kernel TX TAP, sysctls, control socket), SIGHUP re-reads the configuration and
  applies it with :func:`apply_reload` from the endpoint's main loop (never from the signal handler, which could
  interrupt the main loop while it holds the probe lock), and ``--metrics`` starts the Prometheus exporter.
* :func:`apply_reload` swaps what can change under a running endpoint (:data:`RELOADABLE`): the peer list,
  the nested mode and fallback, probing, nested ports, MTU, TTL/TOS/DF, FDB limits.  The TAP, the sockets and
  the namespaces stay; a setting that would need them re-opened is refused and the old configuration keeps
  running (``reload_errors`` in status).  docs/operations.md, section "Running it as a service", explains it.

How a reload reaches every part of the endpoint (the TX thread and the RX process read the peer set on every
packet, so the swap must never leave them a key they cannot find):

1. *Phase 1* (main thread, at once): the lookup tables (``peers``, ``peer_bytes``) become the union of the old
   and the new peers, then ``cfg``, ``rx_class`` and the prober are replaced.  Peers that stay keep their probe
   state (a capable peer keeps folding: no traffic falls back during the reload).  FDB entries of removed
   peers are forgotten.  The RX child gets ``("reload", cfg)`` over its channel and a wake-up datagram; it
   applies it between two reads and counts ``rx.reloads_applied``.
2. *Phase 2* (main thread, :data:`GRACE` seconds later): the tables shrink to exactly the new peers.  By then
   the TX thread has long finished any frame it started with the old set, and every message the RX child sent
   about a removed peer has been drained.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pickle
import signal
import socket
import threading
from collections.abc import Callable
from types import MappingProxyType

from .config import ConfigError, EndpointConfig
from .generation import bump as _bump_generation
from .peers import Event, Peer

log = logging.getLogger("udpnest")

GRACE = 1.0  # seconds removed peers stay in the lookup tables after a reload (phase 2)

# settings that a reload may change; any other difference is refused (it needs a restart)
RELOADABLE = frozenset({
    "remote", "nested", "fallback", "nested_ports", "max_levels", "opt_class", "ttl", "tos", "df",
    "underlay_mtu", "fdb_max", "fdb_ageing", "probe_interval", "probe_window", "probe_budget", "verify_csum",
})


def sd_notify(state: str, env: dict | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to systemd's ``$NOTIFY_SOCKET``; False when there is none."""
    addr = (os.environ if env is None else env).get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr[0] == "@":
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(state.encode(), addr)
    except OSError as e:
        log.warning("sd_notify %r: %s", state.split("=")[0], e)
        return False
    return True


def reload_changes(old: EndpointConfig, new: EndpointConfig) -> list[str]:
    """Names of the settings that differ; ConfigError naming the first one a reload cannot change."""
    changed = [f.name for f in dataclasses.fields(EndpointConfig) if getattr(old, f.name) != getattr(new, f.name)]
    for name in changed:
        if name not in RELOADABLE:
            raise ConfigError(name, f"cannot change on reload ({getattr(old, name)!r} -> {getattr(new, name)!r}); "
                              "restart the endpoint")
    return changed


def rx_class_for(cfg: EndpointConfig) -> int | None:
    # with nested off we behave as a legacy endpoint: our options are unknown critical options
    return cfg.opt_class if cfg.nested != "off" else None


def _new_probing(ep, cfg: EndpointConfig, keys: list[str], removed: set[str], now: float) -> None:
    """A prober and reply limiter for the new peer set; peers that stay keep their state."""
    from .endpoint import probing

    old = ep.prober
    pr, replies = probing(cfg, keys, now)
    replies.keep(ep.replies)
    ep.prober, ep.replies = pr, replies
    if pr is None:
        return
    for k in keys:
        if old is not None and k in old.peers:  # keep what the probing learned about this peer
            p = old.peers[k]
            p.interval, p.window, p.fallback = pr.period, cfg.probe_window, cfg.fallback
            p.on_reset = lambda k=k: pr._reset(k)  # a backed-off peer that answers: the new schedule
            pr.peers[k] = p
    for k in removed:  # echo messages about them may still be queued: keep a Peer to take them until phase 2
        p = old.peers.get(k) if old is not None else None
        if p is None:
            p = Peer(k, pr.period, cfg.probe_window, fallback=cfg.fallback)
            p._go(Event.START)
        pr.peers[k] = p


def reload_message(cfg: EndpointConfig) -> bytes:
    """What the RX process receives: the new configuration's fields, pickled.  Read-only mappings
    (MappingProxyType, which pickle refuses) travel as dicts and are frozen again by :func:`read_message`."""
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(EndpointConfig)}
    proxies = sorted(k for k, v in fields.items() if isinstance(v, MappingProxyType))
    return pickle.dumps(("reload", {k: dict(v) if k in proxies else v for k, v in fields.items()}, proxies))


def read_message(data: bytes) -> tuple[str, EndpointConfig]:
    kind, fields, proxies = pickle.loads(data)
    return kind, EndpointConfig(**{k: MappingProxyType(v) if k in proxies else v for k, v in fields.items()})


def apply_reload(ep, new: EndpointConfig) -> list[str]:
    """Phase 1 of a reload of a running endpoint (call from its main thread).  Returns the changed settings.
    Everything that can fail (validation, the message to the RX process) happens before anything changes."""
    changed = reload_changes(ep.cfg, new)
    if not changed:
        return []
    message = reload_message(new)
    import ipaddress

    now = ep.clock()
    new_peers = {p.address: p for p in new.remote}
    new_bytes = {k: ipaddress.ip_address(k).packed for k in new_peers}
    pending = getattr(ep, "_reload_phase2", None)
    base = pending[1] if pending else ep.peers  # a reload during another's grace period
    removed = (set(ep.peers) | set(base)) - set(new_peers)
    # 1. tables: old | new (the TX thread may hold a key of either set)
    ep.peer_bytes = {**ep.peer_bytes, **new_bytes}
    ep.peers = {**ep.peers, **new_peers}
    if ep.rx is not None:
        ep.filter_sources()  # the kernel must let the new peers in
    # 2. settings the threads read per packet
    ep.cfg = new
    ep.rx_class = rx_class_for(new)
    ep.fdb.max_entries, ep.fdb.ageing = new.fdb_max, new.fdb_ageing
    if {"ttl", "tos", "df"} & set(changed):
        for s in ep.tx:
            ep._tune_tx(s)
    if {"nested_ports", "max_levels", "opt_class", "underlay_mtu"} & set(changed):
        from .txplan import TxPlanner  # the TX thread reads ep.planner once per frame: one assignment swaps it

        old = ep.planner
        ep.planner = TxPlanner(vni=new.id, opt_class=new.opt_class, ports=new.nested_ports, max_levels=new.max_levels,
                               max_datagram=new.max_datagram, kernel_tx=old.kernel_tx, engine=old.engine)
    # 3. probing
    with ep.lock:
        _new_probing(ep, new, list(new_peers), removed, now)
    for k in removed:
        ep.fdb.forget_peer(k)
    # 4. the RX process (or thread) learns the new set
    if ep.rx_pid is not None and ep.rx_chan is not None:
        try:
            ep.rx_chan.send(message)
            ep.rx.sock.sendto(b"", (new.local, new.dstport))  # wakes its recvmsg
        except OSError as e:
            log.error("reload: cannot reach the RX process: %s", e)
    else:
        ep.rx_stats.c["reloads_applied"] += 1
    ep._reload_phase2 = (now + GRACE, new_peers, new_bytes, removed)
    ep.ctl_stats.c["reloads"] += 1
    _bump_generation()  # a lingering TX burst returns and rebuilds its snapshot (new peers, config, prober, planner)
    log.info("reload: %s changed; peers %s", ", ".join(changed), ", ".join(str(p) for p in new.remote))
    return changed


def finish_reload(ep, force: bool = False) -> bool:
    """Phase 2: shrink the lookup tables to the new peers once the grace period is over."""
    pending = getattr(ep, "_reload_phase2", None)
    if pending is None or (not force and ep.clock() < pending[0]):
        return False
    _, new_peers, new_bytes, removed = pending
    ep.peers = dict(new_peers)
    ep.peer_bytes = dict(new_bytes)
    if ep.rx is not None:
        ep.filter_sources()  # and now shuts out the removed ones
    with ep.lock:
        if ep.prober is not None:
            for k in removed:
                ep.prober.peers.pop(k, None)
    for k in removed:
        ep.fdb.forget_peer(k)
    ep._reload_phase2 = None
    _bump_generation()
    return True


def rx_child_messages(ep) -> None:
    """In the RX child: apply what the parent sent (called when a wake-up datagram arrives)."""
    while True:
        try:
            data = ep.rx_chan.recv(1 << 20, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            log.debug("rx channel: %s", e)
            return
        kind, cfg = read_message(data)
        if kind == "reload":
            ep.cfg = cfg
            ep.peers = {p.address: p for p in cfg.remote}
            ep.rx_class = rx_class_for(cfg)
            ep.rx_stats.c["reloads_applied"] += 1


class Service:
    """Signals, readiness, reload and metrics around an opened endpoint; :meth:`run` blocks until stopped."""

    def __init__(self, ep, load: Callable[[], EndpointConfig], *, env: dict | None = None) -> None:
        self.ep = ep
        self.load = load
        self.env = env
        self.reload_requested = threading.Event()
        self.metrics_server = None

    def notify(self, state: str) -> bool:
        return sd_notify(state, self.env)

    def _stop(self, *_):
        self.notify("STOPPING=1")
        self.ep.stop_event.set()

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGHUP, lambda *_: self.reload_requested.set())

    def tick(self) -> None:
        """Main-loop hook: a requested reload, and the second phase of the last one."""
        if self.reload_requested.is_set():
            self.reload_requested.clear()
            self.reload()
        finish_reload(self.ep)

    def reload(self) -> bool:
        ep = self.ep
        self.notify("RELOADING=1")
        try:
            new = self.load()
            changed = ep.reload(new)
        except Exception as e:  # noqa: BLE001 - ConfigError, OSError, or a bug: the daemon keeps running
            ep.ctl_stats.c["reload_errors"] += 1
            if isinstance(e, ConfigError | OSError):
                log.error("reload refused, the running configuration stays: %s", e)
            else:
                log.exception("reload failed, the running configuration stays")
            self.notify(f"READY=1\nSTATUS=reload refused: {e}")
            return False
        self.notify(f"READY=1\nSTATUS={self.status_line()}" + (" (reloaded)" if changed else ""))
        return True

    def status_line(self) -> str:
        cfg = self.ep.cfg
        return f"nested {cfg.nested}, {len(cfg.remote)} peer(s), tap {cfg.tap}"

    def start_metrics(self) -> None:
        listen = getattr(self.ep.cfg, "metrics", None)
        if not listen:
            return
        from .endpoint import query_status
        from .metrics import serve

        path = self.ep.cfg.control_path
        self.metrics_server = serve(listen, lambda: query_status(path))

    def run(self) -> int:
        ep = self.ep
        try:
            self.start_metrics()
        except OSError:
            ep.close()
            raise
        self.install_signals()
        ep.hooks.append(self.tick)
        self.notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS={self.status_line()}")
        try:
            ep.run(install_signals=False)
        finally:
            if self.metrics_server is not None:
                with contextlib.suppress(Exception):
                    self.metrics_server.shutdown()
            signal.signal(signal.SIGHUP, signal.SIG_DFL)
        return 0
