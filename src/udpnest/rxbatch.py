"""The RX fast path (native engine): runs of small one-datagram reads (TCP ACKs) received and written in C.

:class:`FastRx` wraps ``_native.rx_batch`` (csrc/rxbatch.c).  The endpoint's RX loop calls :meth:`FastRx.receive`
instead of ``UdpSocket.recv_into`` while the RX driver holds nothing (``RxDriver.pending is None``).  One C call
receives datagrams (blocking for the first, MSG_DONTWAIT after it) and, for each one-datagram read shorter than
``RxDriver.single_min`` from a configured peer, runs the one-datagram path of :mod:`udpnest.rxnative` (plain,
hint, FOLD with a template) and writes the frame to the TAP.  At the first datagram it does not fully handle it
stops: that datagram is left in the caller's buffer and returned as ``(nbytes, gso_size, addr)``, exactly what
``recv_into`` returns, so the Python path handles it unchanged and in order.

Lingering (:data:`LINGER_NS`, 2 ms): when the socket is empty C does not return at once; it finishes the held run
as a return would, then waits for the socket (poll, GIL released) until the window (from the call's first
datagram) ends with the socket empty, so one call covers many wakeups (a bulk flow's returning ACKs come one per
wakeup).  It still returns at once at a datagram it does not take (the wake-up datagram of ``udpnest status`` and
reloads, echo probes) and at the stop flag.  Hence counters and learned MACs are at most one window late.

Policy stays here: which peers (packed addresses of ``drv.peers``, the exact strings Python's ``addr[0]`` gives),
the FOLD templates the reference validated (``Receiver.folds``), what the counters and drop reasons mean, and
source-MAC learning (the C call hands back one ``(peer, MAC)`` pair per MAC and call; the endpoint's
``_learn_mac`` applies them).  Counters come back once per call: ``reads``, ``bytes``, ``datagrams``,
``tap_writes``, ``tap_bytes``, ``kind_*``, the 1-segment histogram bucket, drop reasons and ``Reason.TAP_WRITE``,
the socket's ``socket_drops`` / ``truncated``, and the fast path's own ``rx_batch_calls`` (calls that handled
at least one datagram: ``udpnest status`` wakes the RX process with a datagram, which must not change counters)
and ``rx_batch_fast`` (datagrams handled entirely in C); with lingering one call covers many wakeups.

``UDPNEST_RX_BATCH=0`` in the environment switches it off (the differential tests compare both).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import sys

from .fold import F_CSUM_ZEROED
from .rxdriver import READS_HIST_PREFIX
from .rxpipe import Run
from .wire.errors import Reason
from .wire.vnet import ZERO_VNET_HDR

log = logging.getLogger("udpnest")

#: datagrams handled per call at most (then the loop runs once: counters); large enough that a linger window is not
#: cut short in steady state (one ACK per ~64 KB super-packet, or per two segments in wire mode: ~130 per 2 ms)
BATCH_MAX = 1024
#: the linger window (ns): at EAGAIN the C call waits for the socket (poll, GIL released) this long after its first
#: datagram before it returns, so one call covers many wakeups; 0: return at EAGAIN (one call per wakeup).
#: ``UDPNEST_RX_LINGER_NS`` in the environment overrides it (read when the fast path binds to a driver).
LINGER_NS = 2_000_000
_TAP_WRITE = Reason.TAP_WRITE.value
_RPS = tuple(f"{READS_HIST_PREFIX}{i}" for i in (1, 2, 3))


def flow_args(last, other=None, max_datagram: int = 0) -> tuple | None:
    """The data path's flow (csrc/rxbatch.c, rxd_parse) for the cache entry ``rxnative.Receiver.last``, or None
    when C must not take that flow's reads (its reads then all go through the Python path): a FOLD level
    whose checksums were not zeroed (the reference's ``fold_csum`` outcome), more than one nested UDP header
    (rx_super handles one), more than one carried level."""
    if last is None:
        return None
    row_len, ref, keep, offs, info, carried, args = last
    G, H, ip4, ip6, udp, tcp_ip, tcp_ip_v6, tcp, kf, kl, verify = args
    if len(udp) > 1:
        return None
    meta, coff, cend = b"", 0, 0
    if info.carried is not None:
        if carried is None or len(info.carried) != 1:
            return None
        c = info.carried[0]
        if not c.flags & F_CSUM_ZEROED:
            return None
        meta, (coff, cend), kind = bytes((c.flags, c.l2, c.l3, c.tun)), carried, 2
    else:
        kind = 1 if info.pkt.gro_hint is not None else 0
    # may a run of one entry's flow continue with a read of the other's (rxpipe.merge: the same G and layout)?
    same = other is not None and other[4].G == info.G and other[4].layout == info.layout
    return (row_len, ref, keep, offs, G, H, ip4, ip6, udp, tcp_ip, tcp_ip_v6, tcp, kf, kl, verify, kind, meta,
            coff, cend, same, max_datagram)


def linger_ns() -> int:
    """The linger window: ``UDPNEST_RX_LINGER_NS`` when set (0 switches lingering off), else LINGER_NS."""
    v = os.environ.get("UDPNEST_RX_LINGER_NS", "")
    try:
        return max(0, min(int(v), 60_000_000_000)) if v else LINGER_NS
    except ValueError:
        log.warning("UDPNEST_RX_LINGER_NS=%r is not a number of nanoseconds: using %d", v, LINGER_NS)
        return LINGER_NS


def enabled(engine: str) -> bool:
    """The fast path runs with the native engine unless ``UDPNEST_RX_BATCH=0``."""
    return engine == "native" and os.environ.get("UDPNEST_RX_BATCH", "1") not in ("0", "off", "no", "false")


def _packed(keys) -> tuple[bytes, int, list[str]]:
    """The peers as rx_batch wants them: packed addresses of one family whose text form is exactly the key
    (the key the Python path compares is ``addr[0]`` as the socket module spells it), their width, the keys."""
    out: dict[int, list] = {4: [], 16: []}
    for k in keys:
        try:
            ip = ipaddress.ip_address(k)
        except ValueError:
            continue
        fam = socket.AF_INET if ip.version == 4 else socket.AF_INET6
        if socket.inet_ntop(fam, ip.packed) != k:  # e.g. an uncompressed spelling: leave it to Python
            continue
        out[len(ip.packed)].append((ip.packed, k))
    return out


def sockaddr_tuple(raw: bytes):
    """The address tuple ``socket.recvmsg`` would give for a raw ``struct sockaddr`` (IPv4 / IPv6), or None."""
    if len(raw) < 2:
        return None
    fam = int.from_bytes(raw[:2], sys.byteorder)
    if fam == socket.AF_INET and len(raw) >= 8:
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), int.from_bytes(raw[2:4], "big")
    if fam == socket.AF_INET6 and len(raw) >= 28:
        host = socket.inet_ntop(socket.AF_INET6, raw[8:24])
        scope = int.from_bytes(raw[24:28], sys.byteorder)
        if scope:
            try:
                host += "%" + socket.if_indextoname(scope)
            except OSError:
                host += f"%{scope}"
        return host, int.from_bytes(raw[2:4], "big"), int.from_bytes(raw[4:8], "big"), scope
    return None


class FastRx:
    """The fast path of one endpoint's RX loop (see the module docstring)."""

    def __init__(self, ep) -> None:
        from . import _native
        from .rxnative import REASONS

        self.ep = ep
        self.rx_batch = _native.rx_batch
        self.reasons = REASONS
        self._drv = None
        self._buf = None
        self._args: tuple = ()
        self._keys: list[str] = []
        self._flow_key: tuple = (None, None)  # (Receiver.last's ref and args objects) the flow was built from
        self._flow = None
        self._linger = 0
        self._queues = None  # RxQueues.sched when the endpoint has several RX sockets (rx_queues > 1)
        from .endpoint import _BUCKETS, _KIND_KEYS, _bucket
        from .rxpipe import Kind

        self._buckets, self._bucket = _BUCKETS, _bucket
        self._kind_keys = (_KIND_KEYS[Kind.PLAIN], _KIND_KEYS[Kind.HINT], _KIND_KEYS[Kind.FOLD])

    def _bind(self, drv, buf) -> None:
        """The call's arguments for this driver (its peers, settings, FOLD template list) and buffer."""
        ep, rx = self.ep, drv.native_receiver
        width = 16 if ep.rx.sock.family == socket.AF_INET6 else 4
        pk = _packed(drv.peers)[width]
        self._keys = [k for _, k in pk]
        self._args = (ep.rx.sock.fileno(), ep.tap.fd, buf, b"".join(p for p, _ in pk), width, rx.n_vni, rx.n_class,
                      rx.folds, drv.single_min, BATCH_MAX, ZERO_VNET_HDR, ep._stop_flag)
        self._drv, self._buf = drv, buf
        self._linger = linger_ns()
        self._queues = ep.rxq.sched if ep.rxq is not None else None

    def receive(self, drv, buf):
        """One call (one wakeup, or several within a linger window): small datagrams from peers go to the TAP
        in C; returns the first datagram left for the Python path as ``(nbytes, gso_size, addr)`` (in ``buf``)
        or None (nothing more / a syscall returned early: the caller loops).  A socket error other than EINTR
        is raised as OSError, as recv_into does."""
        if drv is not self._drv or buf is not self._buf:
            self._bind(drv, buf)
        ep = self.ep
        recv = drv.native_receiver
        entries = (recv.last, recv.prev)
        key = tuple(None if e is None else e[1] for e in entries) + tuple(None if e is None else e[6] for e in entries)
        if key != self._flow_key:  # (compared by identity first: the same objects while the cache stays)
            self._flow_key = key
            md = drv.max_datagram
            self._flow = (flow_args(entries[0], entries[1], md), flow_args(entries[1], entries[0], md))
        flows = self._flow
        if self._queues is None:
            item, cnt, drops, learned, err, data, held = self.rx_batch(*self._args, flows, self._linger)
        else:  # the RX queues: C serves all the sockets by RxQueues' rule, its state in RxQueues.sched
            item, cnt, drops, learned, err, data, held = self.rx_batch(*self._args, flows, self._linger,
                                                                       self._queues)
        reads, nbytes, plain, hint, fold, tap_bytes, tap_errors, tap_errno, truncated, sdrops, handled = cnt
        st = ep.rx_stats
        c = st.c
        if reads:
            c["rx_batch_calls"] += 1  # (only calls that took datagrams: a wake-up or an echo probe alone is no news)
            writes = plain + hint + fold
            c["reads"] += reads
            c["bytes"] += nbytes
            c["rx_batch_fast"] += handled
            if writes:
                c["datagrams"] += writes
                c["tap_writes"] += writes
                c["tap_bytes"] += tap_bytes
                st.hist[0] += writes
                if plain:
                    c["kind_plain"] += plain
                if hint:
                    c["kind_hint"] += hint
                if fold:
                    c["kind_fold"] += fold
            if tap_errors:
                st.drops[_TAP_WRITE] += tap_errors
                log.debug("TAP write: %s", os.strerror(tap_errno))
            for code, k in drops:
                st.drops[self.reasons[code].value] += k
            coalesced, merged, r1, r2, r3, dbytes, ddrop, segs, single_merged = data
            if coalesced:
                self._data(c, st, coalesced, merged, (r1, r2, r3), dbytes, ddrop, segs)
                if single_merged:
                    c["coalesce_single_merged"] += single_merged
            if learned:
                keys, learn = self._keys, ep._learn_mac
                for i, mac in learned:
                    learn(mac, keys[i])
        if held is not None:  # the run C held when it met a read it does not take: RxDriver.pending, as Python has it
            self._hand_back(drv, entries, flows, held)
        sock = ep.rx
        if truncated:
            sock.truncated += truncated
        if sdrops >= 0:
            sock.socket_drops = sdrops
        if err and item is None:
            if err == errno.EINTR and held is None:  # back to the loop (signal handlers, the stop flag)
                return None
            if err != errno.EINTR:
                raise OSError(err, os.strerror(err))
        if item is None:
            if held is not None:  # max_count or EINTR while holding: the next read, as the Python path polls it
                return (sock if ep.rxq is None else ep.rxq).recv_into(buf, nowait=True)
            return None
        return item[0], item[1], sockaddr_tuple(item[2])

    def _data(self, c, st, coalesced, merged, rps, dbytes, ddrop, segs) -> None:
        """The data path's counters, as RxDriver.read / _finish and Endpoint._tap_write count them (``segs``: per
        super-packet written, its segments * 4 + its kind)."""
        c["coalesce_coalesced"] += coalesced
        if merged:
            c["merged_reads"] += merged
        for key, k in zip(_RPS, rps, strict=True):
            if k:
                c[key] += k
        if ddrop:
            st.drops[_TAP_WRITE] += ddrop
        if segs:
            hist, buckets, kinds = st.hist, self._buckets, self._kind_keys
            supers = total = 0
            for v in segs:
                s = v >> 2
                hist[buckets[s] if s < len(buckets) else self._bucket(s)] += 1
                c[kinds[v & 3]] += 1
                supers += s > 1
                total += s
            c["datagrams"] += total
            c["tap_writes"] += len(segs)
            c["tap_bytes"] += dbytes
            if supers:
                c["super_packets"] += supers

    def _hand_back(self, drv, entries, flows, held) -> None:
        """RxDriver.pending for the run C held: the Run rxnative.Receiver._coalesce and rxpipe.merge would have
        made (its info: the flow's, with the carried headers of the run's first read, as Receiver._info gives)."""
        payload, hdr, ref, payload_len, mss, segments, seq0, next_seq, fids, lids, ext, reads, peer, fi = held
        info, flow = entries[fi][4], flows[fi]
        if flow[15] == 2:
            c = info.carried[0]
            mine = ref[flow[17] : flow[18]]
            if mine != c.hdr:
                info = info._replace(carried=[c._replace(hdr=mine)])
        run = Run(info, hdr, (payload,), payload_len, mss, segments, seq0, next_seq, fids, lids, ref, bool(ext))
        drv.pending = (run, self._keys[peer], reads, None)
