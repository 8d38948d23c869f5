"""The endpoint: TAP <-> Geneve over UDP: a TX thread, an RX process, a main thread for control and probes.

Data path (docs/architecture.md has the diagram):

* TX thread: ``read(TAP)`` one frame (vnet header + up to 64 KB) -> forwarding table picks the peer(s)
  -> per peer mode (plain / hint / fold) -> headers built once; the payload is cut into MTU-sized
  datagrams by :mod:`udpnest.gso` (numpy, no per-segment Python) and sent with ``sendmsg(UDP_SEGMENT)``,
  or handed whole to the kernel's UDP-tunnel GSO through a TAP (``--tx-path kernel``, :mod:`udpnest.outer`).
* RX process (forked; a thread with ``rx_process = false``): ``recvmsg(UDP_GRO)`` up to 64 KB of
  datagrams -> :mod:`udpnest.rxdriver` (:mod:`udpnest.rxpipe`) validates, unfolds, coalesces and merges
  consecutive reads -> one ``writev(TAP)`` per super-packet (GSO vnet header); learned MACs, echo packets
  and counters go to the main loop over a socketpair.
* Main thread: unix control socket (``udpnest status``), echo probes (:mod:`udpnest.peers`), the FDB,
  signals.

Only this module and :mod:`udpnest.io` make syscalls; everything they call is pure.
"""

from __future__ import annotations

import array
import contextlib
import ipaddress
import itertools
import json
import logging
import mmap
import os
import pickle
import select
import signal
import socket
import threading
import time
import zlib
from collections import Counter

from . import engine as _engine
from . import rxbatch, txburst
from .announce import announcements
from .config import EndpointConfig
from .engine import check as check_engine
from .fdb import Fdb
from .io import next_ready
from .io.kernel_tx import KernelTx
from .io.sched import set_thread_nice, thread_nice
from .io.tap import DEFAULT_OFFLOADS, Tap, offload_names
from .io.udp import RECV_BUF_SIZE, RxQueues, UdpSocket, check_port_free
from .outer import OUTER_V4_LEN, OUTER_V6_LEN, outer_headers, source_port, tunnel_gso_vnet
from .peers import Prober, ReplyLimiter, TokenBucket
from .rxguard import Channel, LearnedMacs
from .rxpipe import Kind
from .txplan import TxPlanner
from .wire.errors import ParseError, Reason
from .wire.geneve import build_geneve
from .wire.options import CAP_FOLD, CAP_HINT, Echo, build_echo
from .wire.vnet import GSO_ECN, VNET_HDR_LEN, ZERO_VNET_HDR

log = logging.getLogger("udpnest")

ETH_P_TEB = 0x6558
TAP_BUF = VNET_HDR_LEN + 65536 + 64
IP_MTU_DISCOVER, IP_PMTUDISC_DONT, IP_PMTUDISC_DO = 10, 0, 2  # <linux/in.h>; not in Python 3.11's socket
HIST_EDGES = (1, 2, 4, 8, 16, 32, 64)  # segments per super-packet: 1, 2-3, 4-7, ..., 64+
ECHO_FORWARD_RATE = 1000.0  # echo packets per second the RX process hands to the main process at most


def _bucket(n: int) -> int:
    for i in range(len(HIST_EDGES) - 1, -1, -1):
        if n >= HIST_EDGES[i]:
            return i
    return 0


_BUCKETS = tuple(_bucket(n) for n in range(HIST_EDGES[-1] + 1))  # per TAP write, without the loop
_KIND_KEYS = {k: f"kind_{k.value}" for k in Kind}
_MODE_KEYS = {m: f"mode_{m}" for m in ("plain", "hint", "fold")}  # TX counters without per-frame f-strings
_STATIC_MODE = {"off": "plain", "hint": "hint", "fold": "fold"}  # peer mode without probing


class Stats:
    """Counters of one thread (each thread owns one; status adds them up)."""

    def __init__(self) -> None:
        self.c: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()
        self.hist = [0] * len(HIST_EDGES)

    def drop(self, reason: Reason, n: int = 1) -> None:
        self.drops[reason.value] += n


def hist_labels() -> list[str]:
    out = []
    for i, lo in enumerate(HIST_EDGES):
        hi = HIST_EDGES[i + 1] - 1 if i + 1 < len(HIST_EDGES) else None
        out.append(f"{lo}" if hi == lo else (f"{lo}-{hi}" if hi else f"{lo}+"))
    return out


def flow_hash(frame) -> int:
    """Entropy for the outer UDP source port: the (nested) IP addresses and the following 4 bytes (ports
    of the nested UDP header, whose source port already hashes the workload's inner flow)."""
    et = frame[12] << 8 | frame[13]
    if et == 0x0800 and len(frame) >= 38:
        return zlib.crc32(frame[26:38])
    if et == 0x86DD and len(frame) >= 58:
        return zlib.crc32(frame[22:58])
    return 0


class Endpoint:
    def __init__(self, cfg: EndpointConfig, *, clock=time.monotonic) -> None:
        self.cfg = cfg
        self.clock = clock
        # which engine does the per-packet work (udpnest.engine); an unusable choice fails here, loudly
        self.engine = check_engine(getattr(cfg, "engine", None))
        self._batch: dict | None = None  # socket -> [(datagram, addr)] while _tx_loop batches (native)
        self._tx_burst = None  # txburst.TxBurst: the native TX burst's snapshot (the TX thread's)
        self._kh: tuple | None = None  # _send_kernel: (cfg, addr, ktx, per-peer arguments, per-config arguments)
        self.planner = TxPlanner(vni=cfg.id, opt_class=cfg.opt_class, ports=cfg.nested_ports,
                                 max_levels=cfg.max_levels, max_datagram=cfg.max_datagram,
                                 kernel_tx=cfg.tx_path == "kernel", engine=self.engine)
        self.stop_event = threading.Event()
        self.fdb = Fdb(cfg.fdb_max, cfg.fdb_ageing)
        self.peers = {p.address: p for p in cfg.remote}
        self.prober, self.replies = probing(cfg, list(self.peers), clock())
        self.lock = threading.Lock()
        self.tx_stats, self.rx_stats, self.ctl_stats = Stats(), Stats(), Stats()
        self.tx_stats.c["sendmsg_calls"] = 0  # present even when every send so far was a sendmmsg batch
        # with nested off we behave as a legacy endpoint: our options are unknown critical options
        self.rx_class = cfg.opt_class if cfg.nested != "off" else None
        self.caps = CAP_FOLD | CAP_HINT
        self.tap: Tap | None = None
        self.rx: UdpSocket | None = None
        # rx_queues > 1: the other sockets of the SO_REUSEPORT group (self.rx is the first), served round robin by
        # the RX loop through self.rxq (io/udp.py RxQueues; built by _rx_loop)
        self.rx_more: list[UdpSocket] = []
        self.rxq: RxQueues | None = None
        self.tx: list[UdpSocket] = []
        self.ctl: socket.socket | None = None
        self.ktx: KernelTx | None = None
        self._tx_tid: int | None = None  # the TX thread's kernel thread id (status: its nice value)
        self.local_bytes = ipaddress.ip_address(cfg.local).packed
        self.peer_bytes = {k: ipaddress.ip_address(k).packed for k in self.peers}
        self.outer_len = OUTER_V6_LEN if cfg.family_v6 else OUTER_V4_LEN
        self.ip_ids = itertools.count()
        # RX in a child process (no GIL shared with TX); it reports learned MACs, echo packets and its
        # counters to the main loop over a datagram socketpair
        self.rx_pid: int | None = None
        self.rx_chan: socket.socket | None = None  # parent's end
        self.rx_child = False  # True in the RX child
        self.rx_snapshot: dict = {}
        self._stop_flag = mmap.mmap(-1, 1)
        self._learned = LearnedMacs(cfg.learned_max, cfg.fdb_ageing / 4)  # RX process: bounded (rxguard)
        self._chan: Channel | None = None  # RX process's non-blocking end of rx_chan
        self._last_learn: tuple | None = None  # RX process: (mac, key, refresh due) of the last report
        self._echo_fwd = TokenBucket(ECHO_FORWARD_RATE, ECHO_FORWARD_RATE, 0.0)  # RX process -> main
        self.threads: list[threading.Thread] = []
        self.started = time.time()
        self._announce_due = [0.0, 1.0, 3.0]  # seconds after start: gratuitous ARP / NA (announce.py)
        self.hooks: list = []  # called by the main loop each round (service.py: reload)

    # -- lifetime ---------------------------------------------------------------------------------------------

    def open(self) -> None:
        cfg = self.cfg
        try:
            self.tap = Tap(cfg.tap, netns=cfg.tap_netns, offloads=DEFAULT_OFFLOADS, mtu=cfg.tap_mtu,
                           addresses=cfg.tap_addresses, mac=cfg.effective_tap_mac, up=True,
                           queues=cfg.tap_queues)
            if self.tap.steering == "automq":
                log.warning("TAP %s: no steering program (%s): tun's automq picks the %d queues (flows udpnest "
                            "writes stay on queue 0)", self.tap.name, self.tap.steering_error, cfg.tap_queues)
            if self.tap.refused:
                log.warning("TAP %s: kernel refused offloads %s; using %s", self.tap.name,
                            offload_names(self.tap.refused), offload_names(self.tap.offloads))
            # blocking: the RX thread sleeps in recvmsg itself (no select per datagram); close() wakes it
            # with shutdown(SHUT_RD)
            _set_txqueuelen(self.tap, cfg.tap_txqueuelen)
            # buffers sized from the rate (config.socket_buffer), not a fixed 8 MB: a full buffer is latency
            nq = cfg.rx_queues
            if nq > 1:  # a group would silently share the port with another SO_REUSEPORT holder
                check_port_free(cfg.local, cfg.dstport, cfg.underlay_netns)
            self.rx = UdpSocket(cfg.local, cfg.dstport, netns=cfg.underlay_netns, gro=True, gso=cfg.udpcsum,
                                bufsize=cfg.socket_buffer, blocking=True, reuseport=nq > 1)
            for _ in range(nq - 1):  # the same address and port (a dstport of 0 in tests: the first's)
                self.rx_more.append(UdpSocket(cfg.local, self.rx.local_address[1], netns=cfg.underlay_netns,
                                              gro=True, gso=cfg.udpcsum, bufsize=cfg.socket_buffer, blocking=True,
                                              reuseport=True))
            self.filter_sources()
            for _ in range(cfg.tx_sockets):
                s = UdpSocket(cfg.local, 0, netns=cfg.underlay_netns, gro=False, gso=cfg.udpcsum,
                              bufsize=cfg.socket_buffer)
                self._tune_tx(s)
                self.tx.append(s)
            if cfg.tx_path == "kernel":
                self.ktx = KernelTx(cfg.tx_tap_name, netns=cfg.underlay_netns, v6=cfg.family_v6)
            self._open_control()
        except BaseException:
            self.close()
            raise
        log.info("udpnest up: tap %s (offloads %s), %s:%d -> %s, nested %s, engine %s", self.tap.name,
                 ",".join(offload_names(self.tap.offloads)), cfg.local, cfg.dstport,
                 ", ".join(str(p) for p in cfg.remote), cfg.nested, self.engine)
        if self.engine == "python":
            from .engine import NATIVE_ERROR

            log.warning("udpnest is running the pure-Python engine (much slower)%s",
                        f": native core not built ({NATIVE_ERROR})" if NATIVE_ERROR else "")

    def filter_sources(self) -> None:
        """Drop non-peers in the kernel, before they take receive-buffer space (io/bpf.py); called at open
        and whenever the peer set changes (service.py's reload).  Our own address passes: the status
        wake-up datagram comes from it."""
        for s in (self.rx, *self.rx_more):
            if not s.restrict_sources(list(self.peers) + [self.cfg.local], self.cfg.allow):
                log.warning("no kernel source filter (%s): non-peers are dropped in userspace only",
                            s.filter_error)

    def _tune_tx(self, s: UdpSocket) -> None:
        cfg = self.cfg
        sk = s.sock
        if cfg.family_v6:
            sk.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, cfg.ttl)
            sk.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, cfg.tos)
        else:
            sk.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, cfg.ttl)
            sk.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, cfg.tos)
            sk.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO if cfg.df == "set" else IP_PMTUDISC_DONT)
            if not cfg.udpcsum:
                sk.setsockopt(socket.SOL_SOCKET, 11, 1)  # SO_NO_CHECK; UDP GRO will not merge these

    def _open_control(self) -> None:
        self.ctl = control_socket(self.cfg.control_path)
        self.ctl.setblocking(False)

    def close(self) -> None:
        self.stop_event.set()
        self._stop_flag[0] = 1
        for s in (self.rx, *self.rx_more) if self.rx is not None else ():
            with contextlib.suppress(OSError):  # ENOTCONN, but the shutdown still wakes recvmsg (and poll)
                s.sock.shutdown(socket.SHUT_RD)
        if self.rx_pid is not None:
            _reap(self.rx_pid, timeout=3.0)
            self.rx_pid = None
        if self.rx_chan is not None:
            self.rx_chan.close()
            self.rx_chan = None
        for t in self.threads:
            t.join(timeout=5)
        self.threads = []
        if self.ctl is not None:
            self.ctl.close()
            self.ctl = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.cfg.control_path)
        for s in self.tx:
            s.close()
        self.tx = []
        if self.ktx is not None:
            self.ktx.close()
            self.ktx = None
        if self.rx is not None:
            self.rx.close()
            self.rx = None
        for s in self.rx_more:
            s.close()
        self.rx_more = []
        self.rxq = None
        if self.tap is not None:
            self.tap.close()
            self.tap = None

    def run(self, *, install_signals: bool = True) -> None:
        """Run until SIGINT/SIGTERM (or :meth:`stop`); always closes what it opened."""
        if install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: self.stop_event.set())
        try:
            self.start_threads()
            self._main_loop()
        finally:
            self.close()

    def start_threads(self) -> None:
        loops = [("udpnest-tx", self._tx_loop)]
        if self.cfg.rx_process:
            self._fork_rx()
        else:
            loops.append(("udpnest-rx", self._rx_loop))
        for name, fn in loops:
            t = threading.Thread(target=self._guard, args=(fn, True), name=name, daemon=True)
            t.start()
            self.threads.append(t)

    def _fork_rx(self) -> None:
        """Fork the RX loop into its own process (before any thread starts)."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for sk in (parent, child):
            sk.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        cfg_ipc_queue = self.cfg.ipc_queue
        pid = os.fork()
        if pid == 0:  # the RX child: never returns
            code = 0
            try:
                parent.close()
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, lambda *_: self._stop_flag.__setitem__(0, 1))
                self.rx_child, self.rx_chan = True, child
                self._chan = Channel(child, cfg_ipc_queue)
                _die_with_parent()
                self._dataplane_nice()
                self._rx_loop()
            except BaseException:
                log.exception("udpnest-rx process crashed")
                code = 1
            finally:
                os._exit(code)
        child.close()
        parent.setblocking(False)
        self.rx_pid, self.rx_chan = pid, parent

    def _dataplane_nice(self) -> None:
        """Give the calling dataplane thread (TX thread, RX process or thread) the ``nice`` setting."""
        value, err = set_thread_nice(self.cfg.nice)
        if err:
            log.warning("%s keeps nice %d (%s): it waits behind the workloads for a CPU when they saturate it",
                        threading.current_thread().name, value, err)

    def _guard(self, fn, dataplane: bool = False) -> None:
        try:
            if dataplane:
                if fn == self._tx_loop:
                    self._tx_tid = threading.get_native_id()
                self._dataplane_nice()
            fn()
        except Exception:
            log.exception("%s crashed; stopping", threading.current_thread().name)
            self.stop_event.set()

    def stop(self) -> None:
        self.stop_event.set()

    # -- main thread: control socket and probes --------------------------------------------------------------

    def _main_loop(self) -> None:
        while not self.stop_event.is_set():
            timeout = 0.25
            if self.prober is not None:
                with self.lock:
                    d = self.prober.next_deadline()
                if d is not None:
                    timeout = max(0.0, min(timeout, d - self.clock()))
            fds = [self.ctl] if self.rx_chan is None else [self.ctl, self.rx_chan]
            r, _, _ = select.select(fds, [], [], timeout)
            if self.rx_chan in r:
                self._drain_rx_channel()
            if self.ctl in r:
                self._serve_control()
            if self.rx_pid is not None and os.waitpid(self.rx_pid, os.WNOHANG)[0]:
                self.rx_pid = None
                log.error("udpnest-rx process exited; stopping")
                self.stop_event.set()
            if self.prober is not None:
                self._send_probes()
            if self._announce_due and time.time() - self.started >= self._announce_due[0]:
                self._announce()
            for hook in self.hooks:
                hook()

    def _drain_rx_channel(self) -> None:
        while True:
            try:
                msg = pickle.loads(self.rx_chan.recv(1 << 20))
            except (BlockingIOError, InterruptedError):
                return
            kind = msg[0]
            if kind == "learn":
                self.fdb.learn(msg[1], msg[2], self.clock())
            elif kind == "echo":
                self._on_echo(msg[1], msg[2], msg[3] if len(msg) > 3 else None)
            elif kind == "stats":
                self.rx_snapshot = msg[1]

    def _to_parent(self, msg) -> bool:
        """Never blocks the RX loop: a full channel drops the message (counted as ``ipc_dropped``)."""
        if self._chan.send(msg):
            return True
        self.rx_stats.c["ipc_dropped"] += 1
        return False

    def _push_stats(self) -> None:
        st = self.rx_stats
        st.c["socket_drops"] = self._socket_drops()
        self._to_parent(("stats", {"c": dict(st.c), "drops": dict(st.drops), "hist": list(st.hist),
                                   "queue_reads": self.rxq.reads if self.rxq is not None else None}))

    def _socket_drops(self) -> int:
        """The kernel's receive drops (SO_RXQ_OVFL) of the underlay socket(s), summed over the RX queues."""
        if self.rxq is not None:
            return self.rxq.socket_drops
        if self.rx_more:  # (the RX loop has not built its RxQueues yet)
            return sum(max(s.socket_drops, s.kernel_drops() or 0) for s in (self.rx, *self.rx_more))
        return self.rx.socket_drops

    def _send_probes(self) -> None:
        now = self.clock()
        with self.lock:
            due = self.prober.due(now)
            echoes = [(k, self.prober.make_echo(k, now, caps=self.caps, max_levels=self.cfg.max_levels,
                                                max_option_bytes=252)) for k in due]
        for k, echo in echoes:
            self._send_echo(k, echo, reply=False)

    def _send_echo(self, key: str, echo: Echo, *, reply: bool, limit: int | None = None) -> None:
        pkt = build_geneve(self.cfg.id, ETH_P_TEB, build_echo(echo, reply=reply, opt_class=self.cfg.opt_class),
                           oam=True)
        if limit is not None and len(pkt) > limit:  # never larger than the request: no amplification
            self.ctl_stats.c["echo_replies_too_large"] += 1
            return
        try:
            self.rx.sock.sendto(pkt, self.peers[key].sockaddr)
            self.ctl_stats.c["echo_replies_sent" if reply else "echo_requests_sent"] += 1
        except OSError as e:
            self.ctl_stats.drop(Reason.SEND_ERROR)
            log.debug("echo to %s: %s", key, e)

    def _announce(self) -> None:
        """Announce the TAP's addresses to every peer (the far workload updates its neighbour entry at once)."""
        self._announce_due.pop(0)
        if self.tap is None or not hasattr(self.tap, "current_addresses"):
            return
        for frame in announcements(self.cfg.effective_tap_mac, self.tap.current_addresses()):
            self._tx_frame(memoryview(ZERO_VNET_HDR + frame))
            self.ctl_stats.c["announcements_sent"] += 1

    def _serve_control(self) -> None:
        try:
            conn, _ = self.ctl.accept()
        except BlockingIOError:
            return
        with conn:
            conn.settimeout(1.0)
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps(self.status()).encode() + b"\n")

    def _refresh_rx_stats(self, timeout: float = 0.3) -> None:
        """Ask the RX child for its counters (an empty datagram to our own port wakes it) and wait."""
        before = self.rx_snapshot
        with contextlib.suppress(OSError):
            self.rx.sock.sendto(b"", (self.cfg.local, self.cfg.dstport))
        deadline = time.monotonic() + timeout
        while self.rx_snapshot is before and time.monotonic() < deadline:
            r, _, _ = select.select([self.rx_chan], [], [], max(0.0, deadline - time.monotonic()))
            if r:
                self._drain_rx_channel()

    def status(self) -> dict:
        if self.rx_pid is not None:
            self._refresh_rx_stats()
        now = self.clock()
        tx, rx = self.tx_stats, self.rx_stats
        if self.rx_pid is not None or self.rx_snapshot:
            rx = Stats()
            rx.c.update(self.rx_snapshot.get("c", {}))
            rx.drops.update(self.rx_snapshot.get("drops", {}))
            rx.hist = list(self.rx_snapshot.get("hist", rx.hist))
        elif self.rx is not None:
            rx.c["socket_drops"] = self._socket_drops()
        queue_reads = self.rx_snapshot.get("queue_reads") if self.rx_pid is not None else (
            self.rxq.reads if self.rxq is not None else None)
        drops = Counter()
        for st in (tx, rx, self.ctl_stats):
            drops.update(st.drops)
        labels = hist_labels()
        with self.lock:
            if self.prober is not None:
                peers = {str(self.peers[k]): p.status(now) for k, p in self.prober.peers.items()}
            else:
                mode = {"off": "plain", "hint": "hint", "fold": "fold"}[self.cfg.nested]
                peers = {str(p): {"state": "static", "mode": mode} for p in self.cfg.remote}
        return {
            "pid": os.getpid(),
            "engine": self.engine,
            "uptime_s": round(time.time() - self.started, 3),
            "nice": {"setting": self.cfg.nice,
                     "tx": thread_nice(os.getpid(), self._tx_tid) if self._tx_tid is not None else None,
                     "rx": thread_nice(self.rx_pid) if self.rx_pid is not None else None},
            "config": {"id": self.cfg.id, "local": self.cfg.local, "dstport": self.cfg.dstport,
                       "nested": self.cfg.nested, "fallback": self.cfg.fallback,
                       "underlay_mtu": self.cfg.underlay_mtu},
            "tap": {"name": self.tap.name if self.tap else None, "netns": self.cfg.tap_netns,
                    "offloads": offload_names(self.tap.offloads) if self.tap else [],
                    "refused": offload_names(self.tap.refused) if self.tap else [],
                    "queues": max(1, len(getattr(self.tap, "fds", ()))) if self.tap else 0,
                    "steering": getattr(self.tap, "steering", None) if self.tap else None},
            "underlay": {"gso": bool(self.tx and not self.tx[0].gso_disabled),
                         "gro": bool(self.rx and self.rx.gro_supported),
                         "gso_eio_errors": sum(s.gso_eio_errors for s in self.tx),
                         "source_filter": bool(self.rx and self.rx.filter_error is None and
                                               all(s.filter_error is None for s in self.rx_more)),
                         "rx_queues": 1 + len(self.rx_more),
                         # reads per RX queue (socket) since start: how the kernel's hash spread the flows
                         "rx_queue_reads": queue_reads},
            "tx": dict(tx.c, **self.planner.counters), "rx": dict(rx.c), "control": dict(self.ctl_stats.c),
            "tx_segments_hist": dict(zip(labels, tx.hist, strict=True)),
            "rx_segments_hist": dict(zip(labels, rx.hist, strict=True)),
            "drops": dict(drops),
            "drops_by_direction": {"tx": dict(tx.drops), "rx": dict(rx.drops), "control": dict(self.ctl_stats.drops)},
            "peers": peers,
            "fdb": self.fdb.stats(),
        }

    # -- TX: TAP -> peers ------------------------------------------------------------------------------------

    def _tx_loop(self) -> None:
        if txburst.wanted(self):  # the native TX burst: one C call per wakeup (udpnest.txburst)
            if self._tx_burst is None:
                self._tx_burst = txburst.TxBurst(self)
            return self._tx_loop_burst(self._tx_burst)
        # native engine: single datagrams (ACKs) of one read burst leave in one sendmmsg per socket
        self._batch = {} if self.engine == "native" else None
        if len(_tap_fds(self.tap)) > 1:  # tap_queues > 1: the queues served round robin
            return self._tx_loop_queues()
        buf = bytearray(TAP_BUF)
        mv = memoryview(buf)
        poll = select.poll()
        poll.register(self.tap.fd, select.POLLIN)
        read, clock, tx_frame = self.tap.reader(), time.perf_counter_ns, self._tx_frame
        c = self.tx_stats.c
        stop = self.stop_event
        while not stop.is_set():
            if not poll.poll(250):
                continue
            t0 = clock()
            # the whole burst (TAP reads included) is timed once, not every frame (time_frame_ns)
            while True:
                try:
                    n = read(buf)  # None: the queue is empty (no BlockingIOError raised per burst)
                except OSError as e:
                    c["tap_read_errors"] += 1
                    log.warning("TAP read: %s", e)
                    break
                if not n:
                    break
                tx_frame(mv[:n])
            if self._batch:  # the burst is over: its small frames go out now (no added latency)
                self._flush_batch()
            c["time_frame_ns"] += clock() - t0

    def _tx_loop_queues(self) -> None:
        """_tx_loop for a multi-queue TAP (``tap_queues`` > 1; the per-frame loop, csrc/txburst.c has the same
        rule): at most txburst.QUEUE_FRAMES (K) frames from one queue, then ONE poll(0) over all queues and the
        next ready queue after it; when none is ready the round is over (the batch is flushed, the loop blocks
        in poll on all queues).  A sparse flow's frame waits behind at most K frames of each other busy queue
        instead of behind a bulk flow's whole ring."""
        fds = _tap_fds(self.tap)
        index = {fd: i for i, fd in enumerate(fds)}
        readers = self.tap.readers()
        k_frames = txburst.QUEUE_FRAMES
        buf = bytearray(TAP_BUF)
        mv = memoryview(buf)
        poll = select.poll()
        for fd in fds:
            poll.register(fd, select.POLLIN)
        clock, tx_frame = time.perf_counter_ns, self._tx_frame
        c = self.tx_stats.c
        stop = self.stop_event
        cur, nq = 0, len(fds)
        while not stop.is_set():
            ev = poll.poll(250)
            if not ev:
                continue
            t0 = clock()
            failed = False
            while not failed:
                q = next_ready({index[fd] for fd, _ in ev}, cur, nq)
                if q is None:
                    break
                cur, read = q, readers[q]
                for _ in range(k_frames):
                    try:
                        n = read(buf)  # None: this queue is empty
                    except OSError as e:
                        c["tap_read_errors"] += 1
                        log.warning("TAP read (queue %d): %s", q, e)
                        failed = True  # the round ends (as the single-queue loop's burst)
                        break
                    if not n:
                        break
                    tx_frame(mv[:n])
                ev = poll.poll(0)
            if self._batch:
                self._flush_batch()
            c["time_frame_ns"] += clock() - t0

    def _tx_loop_burst(self, burst) -> None:
        """_tx_loop with the native TX burst (csrc/txburst.c): one call reads and sends the steady state of a
        wakeup; a frame it hands back (flooding, a drop, a deferred build, ...) runs _tx_frame here, in order,
        then the burst goes on.  Counters arrive as deltas per call (TxBurst.account)."""
        native = _engine._native
        run, handback, empty, read_error = native.tx_burst, native.TXB_HANDBACK, native.TXB_EMPTY, native.TXB_READ_ERROR
        stopped, limit = native.TXB_STOP, native.TXB_LIMIT
        # one call covers the wakeups within the linger window (txburst.LINGER_NS); it returns early for the
        # stop flag and when the generation word moves (a change the snapshot depends on)
        linger, stop_flag, gen, wait_ns = txburst.LINGER_NS, self._stop_flag, txburst.GENERATION, txburst.WAIT_NS
        self._batch = {}
        buf = bytearray(TAP_BUF)
        mv = memoryview(buf)
        poll = select.poll()
        fd = self.tap.fd
        fds = _tap_fds(self.tap)
        for f in fds:
            poll.register(f, select.POLLIN)
        # tap_queues > 1: every queue's fd, the round robin's K and its place kept across calls (int32 cur, left)
        queues = (tuple(fds), txburst.QUEUE_FRAMES, array.array("i", [0, 0])) if len(fds) > 1 else None
        clock, now, tx_frame = time.perf_counter_ns, self.clock, self._tx_frame
        snapshot, account = burst.snapshot, burst.account
        c = self.tx_stats.c
        stop = self.stop_event
        while not stop.is_set():
            if not poll.poll(250):
                continue
            t0, waited = clock(), 0
            while True:
                snap, conf = snapshot(now())
                if queues is None:
                    rc, n, counts = run(fd, buf, self, snap, conf, linger, stop_flag, gen)
                else:
                    rc, n, counts = run(queues[0], buf, self, snap, conf, linger, stop_flag, gen, queues[1], queues[2])
                account(counts)
                waited += counts[wait_ns]
                if rc == handback:
                    tx_frame(mv[:n])
                elif rc == empty:
                    break
                elif rc == read_error:
                    c["tap_read_errors"] += 1
                    log.warning("TAP read: %s", os.strerror(n))
                    break
                elif rc == stopped:
                    break
                elif rc == limit:  # busy time so far (a steady stream may never leave this loop)
                    t1 = clock()
                    c["time_frame_ns"] += t1 - t0 - waited
                    t0, waited = t1, 0
                # MAX_FRAMES done, the generation moved, EINTR: look at the snapshot again, go on (the batch
                # stays: it leaves at the wakeup's end, as in the per-frame loop; the stop flag ends this)
            if self._batch:
                self._flush_batch()
            c["time_frame_ns"] += clock() - t0 - waited  # busy time: the linger's waits are not counted
            if rc == stopped:  # the endpoint's stop flag (close(), or the RX process's SIGTERM): it stops
                stop.set()
                return

    def reload(self, new_cfg: EndpointConfig) -> list[str]:
        """Apply a new configuration without closing the TAP or the sockets (main thread only; see
        :mod:`udpnest.service`).  Returns the changed settings; ConfigError if one cannot change."""
        from .service import apply_reload

        return apply_reload(self, new_cfg)

    def peer_mode(self, key: str, now: float) -> str:
        prober = self.prober  # one read: a reload (service.py) may replace it meanwhile
        if prober is not None:
            p = prober.peers.get(key)
            return p.mode(now) if p is not None else self.cfg.fallback
        return _STATIC_MODE[self.cfg.nested]

    def _tx_frame(self, data: memoryview) -> None:
        st = self.tx_stats
        c = st.c
        planner = self.planner
        try:
            vh, frame = planner.parse(data)
        except ParseError as e:
            st.drop(e.reason)
            return
        c["frames"] += 1
        c["bytes"] += len(frame)
        now = self.clock()
        key = self.fdb.lookup(frame[0:6].tobytes(), now)
        fh = flow_hash(frame)
        if key is not None:  # the steady state: one known peer (no target list, no per-mode dict)
            mode = self.peer_mode(key, now)
            try:
                out = planner.build(frame, vh, mode)
            except ParseError as e:
                st.drop(e.reason)
                return
            self._send(out, self.peers[key].sockaddr, fh, mode)
            return
        c["flooded"] += 1
        built: dict[str, object] = {}
        for k in list(self.peers):
            mode = self.peer_mode(k, now)
            if mode not in built:
                try:
                    built[mode] = planner.build(frame, vh, mode)
                except ParseError as e:
                    built[mode] = e
            out = built[mode]
            if isinstance(out, ParseError):
                st.drop(out.reason)
                continue
            self._send(out, self.peers[k].sockaddr, fh, mode)

    def _send(self, out, addr: tuple, fh: int, mode: str) -> None:
        st = self.tx_stats
        c = st.c
        kind, obj = out
        batch = self._batch
        try:
            if kind == "one":
                tx = self.tx
                sock = tx[fh % len(tx)]
                if batch is not None:
                    # a copy: the parts are views into the TAP read buffer, reused by the next read
                    items = batch.get(sock)
                    if items is None:
                        items = batch[sock] = []
                    items.append((b"".join(obj), addr))
                    if len(items) >= 64:
                        self._flush_batch()
                else:
                    sock.send_parts(obj, addr)
                    c["sendmsg_calls"] += 1
                c["datagrams"] += 1
                st.hist[0] += 1
            else:
                if batch:
                    self._flush_batch()  # keep the order of a flow's small frames and its super-packets
                if kind == "kernel":
                    c["sendmsg_calls"] += self._send_kernel(obj, addr, fh)
                    inner, layout, mss = obj[1], obj[2], obj[4]
                    cut = -(-(len(inner) - layout.hdr_len) // mss)  # datagrams the kernel will cut
                    c["kernel_writes"] += 1
                else:
                    tx = self.tx
                    c["sendmsg_calls"] += tx[fh % len(tx)].send_segments(obj.buffer, obj.row_len, addr)
                    cut = obj.count
                c["datagrams"] += cut
                c["super_packets"] += 1
                st.hist[_BUCKETS[cut] if cut < len(_BUCKETS) else _bucket(cut)] += 1
            c[_MODE_KEYS[mode]] += 1
        except OSError as e:
            st.drop(Reason.SEND_ERROR)
            log.debug("send to %s: %s", addr, e)

    def _flush_batch(self) -> None:
        """Send the single datagrams collected during one TAP read burst: one sendmmsg per socket (native
        core); what the socket does not take at once goes out one by one (waiting for buffer space)."""
        send_batch = _engine._native.send_batch
        st = self.tx_stats
        c = st.c
        batch, self._batch = self._batch, {}
        for sock, items in batch.items():
            done = 0
            fd = sock.sock.fileno()
            while done < len(items):
                try:
                    sent = send_batch(fd, items[done : done + 64] if done or len(items) > 64 else items)
                    c["sendmmsg_calls"] += 1
                    if sent == 0:
                        data, addr = items[done]
                        sock.send_parts([data], addr)
                        sent = 1
                        c["sendmsg_calls"] += 1
                    done += sent
                except OSError as e:
                    st.drop(Reason.SEND_ERROR)
                    log.debug("send to %s: %s", items[done][1], e)
                    done += 1

    def _send_kernel(self, plan, addr: tuple, fh: int) -> int:
        prefix, inner, layout, vh, mss = plan
        cfg = self.cfg
        if self.engine == "native":
            # the per-peer constant arguments, built once per (config, peer, kernel TX TAP)
            kh = self._kh
            if kh is None or kh[0] is not cfg or kh[1] != addr or kh[2] is not self.ktx:
                kh = self._kh = (cfg, addr, self.ktx, (cfg.family_v6, self.ktx.mac, _TX_SRC_MAC, self.local_bytes,
                                                       self.peer_bytes[addr[0]]),
                                 (min(255, cfg.ttl + 1), cfg.tos, cfg.df == "set"), _engine._native.kernel_headers)
            plen = len(prefix)
            hdrs = kh[5](*kh[3], source_port(fh), addr[1], plen + len(inner), next(self.ip_ids) & 0xFFFF, *kh[4],
                         fh & 0xFFFFF, vh.base_type, bool(vh.gso_type & GSO_ECN), mss, plen, layout.tcp_ip,
                         layout.tcp, layout.hdr_len, 6 if layout.l4_proto == 17 else 16)
            self.ktx.send([hdrs, prefix, inner])
            return 1
        outer = outer_headers(dst_mac=self.ktx.mac, src_mac=_TX_SRC_MAC, src=self.local_bytes,
                              dst=self.peer_bytes[addr[0]], sport=source_port(fh), dport=addr[1],
                              payload_len=len(prefix) + len(inner), ident=next(self.ip_ids),
                              ttl=min(255, cfg.ttl + 1), tos=cfg.tos, df=cfg.df == "set", flow_label=fh)
        vnet = tunnel_gso_vnet(outer_v6=cfg.family_v6, base_type=vh.base_type, ecn=bool(vh.gso_type & GSO_ECN),
                               mss=mss, outer_len=self.outer_len, geneve_len=len(prefix), inner_nh=layout.tcp_ip,
                               inner_th=layout.tcp, inner_hdr_end=layout.hdr_len,
                               csum_offset=6 if layout.l4_proto == 17 else 16)
        self.ktx.send([vnet, outer, prefix, inner])
        return 1

    # -- RX: peers -> TAP ------------------------------------------------------------------------------------

    def _rx_driver(self):
        """The sans-IO RX pipeline driver (:mod:`udpnest.rxdriver`) for this endpoint's config and engine."""
        from .rxdriver import RxDriver

        cfg = self.cfg
        st = self.rx_stats
        return RxDriver(peers=self.peers, vni=cfg.id, opt_class=self.rx_class, ports=cfg.nested_ports,
                        verify_csum=cfg.verify_csum, max_datagram=cfg.max_datagram, engine=self.engine,
                        counts=st.c, drops=st.drops)

    def _rx_loop(self) -> None:
        """Receive, hand each read to the RX driver, write what it returns.  A coalesced super-packet is held
        while the next read is already waiting (MSG_DONTWAIT) so that the two halves of a sender's 64 KB
        super-packet (more than one UDP GRO aggregate) become one TAP write; it is written as soon as
        nothing more is waiting."""
        buf = bytearray(RECV_BUF_SIZE + 64)
        drv, drv_cfg = self._rx_driver(), self.cfg
        c = self.rx_stats.c
        clock = time.perf_counter_ns
        child = self.rx_child
        wake = (self.cfg.local, self.cfg.dstport)
        fast = None  # the native fast path for small one-datagram reads (udpnest.rxbatch) while nothing is held
        rxq = self.rxq = RxQueues([self.rx, *self.rx_more]) if self.rx_more else None
        recv = self.rx.recv_into if rxq is None else rxq.recv_into  # one socket: exactly today's syscalls
        if rxbatch.enabled(self.engine):
            fast = rxbatch.FastRx(self)
        while True:
            try:
                if fast is not None and drv.pending is None and drv.peers is self.peers and drv_cfg is self.cfg:
                    r = fast.receive(drv, buf)  # None: returned between datagrams (no stop check in C)
                else:
                    r = recv(buf, nowait=drv.holding)
            except OSError as e:
                if self.stop_event.is_set() or self._stop_flag[0]:
                    return
                c["recv_errors"] += 1
                log.debug("recv: %s", e)
                continue
            if r is None:  # nothing more waiting: the held super-packet goes out now
                for w, key in drv.flush():
                    self._tap_write(w, key)
                if fast is not None and (self.stop_event.is_set() or self._stop_flag[0]):
                    if child:
                        self._push_stats()
                    return
                continue
            if self.stop_event.is_set() or self._stop_flag[0]:
                if child:
                    self._push_stats()
                return
            n, gso, addr = r
            if child and n == 0 and addr[:2] == wake:
                from .service import rx_child_messages

                rx_child_messages(self)  # a reload (service.py) sends the new configuration first
                self._push_stats()  # the main loop wants fresh counters (udpnest status)
                continue
            if drv.peers is not self.peers or drv_cfg is not self.cfg:  # a reload: a driver for the new set
                for w, key in drv.flush():
                    self._tap_write(w, key)
                drv, drv_cfg = self._rx_driver(), self.cfg
            t1 = clock()
            out = drv.read(buf, n, gso, addr[0])
            t2 = clock()
            for w, key in out.writes:
                self._tap_write(w, key)
            for pkt, key, size in out.control:
                if child:
                    if self._echo_fwd.peek(time.monotonic()):  # bounded work for the main process
                        self._echo_fwd.take()
                        self._to_parent(("echo", pkt, key, size))
                    else:
                        c["echo_forward_limited"] += 1
                else:
                    self._on_echo(pkt, key, size)
            c["time_process_ns"] += t2 - t1
            c["time_tap_ns"] += clock() - t2

    def _tap_write(self, w, key: str) -> None:
        st = self.rx_stats
        segments = w.segments
        parts = w.parts
        try:
            n = self.tap.writev((w.vnet, *parts)) - VNET_HDR_LEN
        except OSError as e:
            st.drop(Reason.TAP_WRITE, segments)
            log.debug("TAP write: %s", e)
            return
        c = st.c
        c["datagrams"] += segments
        c["tap_writes"] += 1
        c["tap_bytes"] += n
        c[_KIND_KEYS[w.kind]] += 1
        st.hist[_BUCKETS[segments] if segments < len(_BUCKETS) else _bucket(segments)] += 1
        if segments > 1:
            c["super_packets"] += 1
        first = parts[0]
        if len(first) >= 12:
            self._learn_mac(first[6:12], key)

    def _learn_mac(self, src, key: str) -> None:
        """Source MAC ``src`` (6 bytes) of a frame from peer ``key`` written to the TAP (also called once per
        (peer, MAC) of a native fast-path batch, udpnest.rxbatch)."""
        st = self.rx_stats
        now = self.clock()
        last = self._last_learn
        # the same source as the last write, reported less than `refresh` ago: nothing is news (every
        # ACK of a flow comes from the same MAC; LearnedMacs.report would say the same, slower)
        if last is not None and last[1] == key and now <= last[2] and src == last[0]:
            return
        mac = bytes(src)
        if not self.rx_child:
            self.fdb.learn(mac, key, now)
            return
        # tell the main loop only what changed, and refresh well within the ageing time (bounded LRU)
        learned = self._learned
        evicted = learned.evicted
        if learned.report(mac, key, now):
            if learned.evicted != evicted:
                st.c["learned_evicted"] += learned.evicted - evicted
            if self._to_parent(("learn", mac, key)):
                self._last_learn = (mac, key, now + learned.refresh)
            else:
                learned.forget(mac)  # try again with the next frame
                self._last_learn = None

    def _on_echo(self, pkt, key: str, size: int | None = None) -> None:
        """An echo packet from configured peer ``key`` (``size``: the request datagram's length).

        A request earns at most a reply (rate-limited, never larger than the request) and never changes
        the peer's state; only a reply to an outstanding nonce of ours does (:mod:`udpnest.peers`)."""
        now = self.clock()
        if pkt.echo_request is not None:
            self.ctl_stats.c["echo_requests_received"] += 1
            req = pkt.echo_request
            if self.cfg.nested == "off" or key not in self.peers:  # a legacy endpoint never answers
                self.ctl_stats.drop(Reason.UNKNOWN_CRITICAL_OPTION if key in self.peers else Reason.NO_PEER)
                return
            with self.lock:
                if self.prober is not None:
                    ok = self.prober.may_reply(key, now)
                    self.prober.on_request(key, req, now)
                else:
                    ok = self.replies.allow(key, now)
            if ok:
                self._send_echo(key, Echo(req.nonce, req.timestamp, self.cfg.max_levels, 252, self.caps),
                                reply=True, limit=size)
            else:
                self.ctl_stats.drop(Reason.RATE_LIMITED)
        if pkt.echo_reply is not None:
            self.ctl_stats.c["echo_replies_received"] += 1
            if self.prober is None:
                self.ctl_stats.drop(Reason.UNSOLICITED_REPLY)
                return
            with self.lock:
                result = self.prober.peers[key].on_reply(pkt.echo_reply, now)
            self.ctl_stats.c[f"echo_reply_{result.value}"] += 1


def probing(cfg: EndpointConfig, keys: list, now: float) -> tuple[Prober | None, ReplyLimiter]:
    """The prober (``nested fold`` only) and the echo reply limiter for peers ``keys``: replies only in the
    modes that speak the option class (hint, fold), with per-peer and global limits."""
    prober = (Prober(keys, interval=cfg.probe_interval, window=cfg.probe_window, budget=cfg.probe_budget,
                     fallback=cfg.fallback, now=now, reply_rate=cfg.echo_reply_rate, reply_burst=cfg.echo_reply_burst,
                     reply_global_rate=cfg.echo_reply_global_rate, reply_global_burst=cfg.echo_reply_global_burst,
                     backoff_max=cfg.probe_backoff_max)
              if cfg.nested == "fold" else None)
    replies = (prober.replies if prober is not None else
               ReplyLimiter(keys, rate=cfg.echo_reply_rate, burst=cfg.echo_reply_burst,
                            global_rate=cfg.echo_reply_global_rate, global_burst=cfg.echo_reply_global_burst, now=now))
    return prober, replies


_TX_SRC_MAC = bytes.fromhex("02756e657374")  # locally administered; only the kernel TX TAP sees it


def _tap_fds(tap) -> list[int]:
    """The TAP's queue fds (``Tap.fds``; a stand-in with only ``fd`` has one)."""
    return list(getattr(tap, "fds", None) or [tap.fd])


def _set_txqueuelen(tap, qlen: int) -> None:
    """Bound the TAP's queue (frames the workload's kernel may queue towards udpnest: latency under load)."""
    from pyroute2 import IPRoute

    kw = {"netns": tap.netns} if tap.netns is not None else {}
    try:
        with IPRoute(**kw) as ipr:
            ipr.link("set", index=tap.ifindex, txqlen=qlen)
    except Exception as e:  # noqa: BLE001 - a tuning knob: log, keep running
        log.warning("TAP %s: cannot set txqueuelen %d: %s", tap.name, qlen, e)


def _die_with_parent() -> None:
    """prctl(PR_SET_PDEATHSIG, SIGKILL): the RX child must not outlive a killed endpoint."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)


def _reap(pid: int, timeout: float) -> None:
    """Wait for the RX child; SIGKILL it if it does not exit in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
        except ChildProcessError:
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def control_socket(path: str) -> socket.socket:
    """The listening unix socket ``udpnest status`` connects to (owner-only, a stale one replaced)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    s.bind(path)
    os.chmod(path, 0o600)
    s.listen(4)
    return s


def query_status(path: str, timeout: float = 2.0) -> dict:
    """Read the status JSON from a running endpoint's control socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return json.loads(data)




def lab_argv(plan, nested: str = "fold", tx_path: str | None = None, extra: tuple[str, ...] = ()) -> list[str]:
    """Command line of one endpoint serving a lab host (``udpnest.lab.topology.EndpointPlan``).

    ``tx_path`` None leaves the endpoint's default; ``extra`` arguments are appended.

    The TAP stays in the host namespace (the lab routes the workload's nested VXLAN into it); the
    control socket is named after the namespace so both endpoints can run on one machine.
    """
    import sys

    argv = [sys.executable, "-m", "udpnest.cli", "up", "--id", "7", "--local", plan.underlay_local,
            "--remote", plan.underlay_remote if plan.underlay_family == 4 else f"[{plan.underlay_remote}]",
            "--dstport", str(plan.geneve_port), "--tap", plan.tap_ifname, "--tap-mtu", str(plan.tap_mtu),
            "--nested", nested, "--nested-port", f"{plan.nested_port}:vxlan",
            "--control", lab_control_path(plan)]
    if tx_path is not None:
        argv += ["--tx-path", tx_path]
    return argv + list(extra)


def lab_control_path(plan) -> str:
    return f"/run/udpnest/{plan.netns}.sock"
