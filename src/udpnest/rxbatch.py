"""The RX fast path (native engine): runs of small one-datagram reads (TCP ACKs) received and written in C.

:class:`FastRx` wraps ``_native.rx_batch`` (csrc/rxbatch.c).  The endpoint's RX loop calls :meth:`FastRx.receive`
instead of ``UdpSocket.recv_into`` while the RX driver holds nothing (``RxDriver.pending is None``).  One C call
receives datagrams (blocking for the first, MSG_DONTWAIT after it) and, for each one-datagram read shorter than
``RxDriver.single_min`` from a configured peer, runs the one-datagram path of :mod:`udpnest.rxnative` (plain,
hint, FOLD with a template) and writes the frame to the TAP.  At the first datagram it does not fully handle it
stops: that datagram is left in the caller's buffer and returned as ``(nbytes, gso_size, addr)``, exactly what
``recv_into`` returns, so the Python path handles it unchanged and in order.

Policy stays here: which peers (packed addresses of ``drv.peers``, the exact strings Python's ``addr[0]`` gives),
the FOLD templates the reference validated (``Receiver.folds``), what the counters and drop reasons mean, and
source-MAC learning (the C call hands back one ``(peer, MAC)`` pair per MAC and call; the endpoint's
``_learn_mac`` applies them).  Counters come back once per call: ``reads``, ``bytes``, ``datagrams``,
``tap_writes``, ``tap_bytes``, ``kind_*``, the 1-segment histogram bucket, drop reasons and ``Reason.TAP_WRITE``,
the socket's ``socket_drops`` / ``truncated``, and the fast path's own ``rx_batch_calls`` (calls that handled
at least one datagram: ``udpnest status`` wakes the RX process with a datagram, which must not change counters)
and ``rx_batch_fast`` (datagrams handled entirely in C).

``UDPNEST_RX_BATCH=0`` in the environment switches it off (the differential tests compare both).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import sys

from .wire.errors import Reason
from .wire.vnet import ZERO_VNET_HDR

log = logging.getLogger("udpnest")

#: datagrams handled per call at most (then the loop runs once: stop flags, counters)
BATCH_MAX = 64
_TAP_WRITE = Reason.TAP_WRITE.value


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

    def _bind(self, drv, buf) -> None:
        """The call's arguments for this driver (its peers, settings, FOLD template list) and buffer."""
        ep, rx = self.ep, drv.native_receiver
        width = 16 if ep.rx.sock.family == socket.AF_INET6 else 4
        pk = _packed(drv.peers)[width]
        self._keys = [k for _, k in pk]
        self._args = (ep.rx.sock.fileno(), ep.tap.fd, buf, b"".join(p for p, _ in pk), width, rx.n_vni, rx.n_class,
                      rx.folds, drv.single_min, BATCH_MAX, ZERO_VNET_HDR, ep._stop_flag)
        self._drv, self._buf = drv, buf

    def receive(self, drv, buf):
        """One wakeup: small datagrams from peers go to the TAP in C; returns the first datagram left for the
        Python path as ``(nbytes, gso_size, addr)`` (in ``buf``) or None (nothing more / a syscall returned
        early: the caller loops).  A socket error other than EINTR is raised as OSError, as recv_into does."""
        if drv is not self._drv or buf is not self._buf:
            self._bind(drv, buf)
        ep = self.ep
        item, cnt, drops, learned, err = self.rx_batch(*self._args)
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
            if learned:
                keys, learn = self._keys, ep._learn_mac
                for i, mac in learned:
                    learn(mac, keys[i])
        sock = ep.rx
        if truncated:
            sock.truncated += truncated
        if sdrops >= 0:
            sock.socket_drops = sdrops
        if err and item is None:
            if err == errno.EINTR:  # back to the loop (signal handlers, the stop flag)
                return None
            raise OSError(err, os.strerror(err))
        if item is None:
            return None
        return item[0], item[1], sockaddr_tuple(item[2])
