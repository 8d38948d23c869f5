"""Underlay UDP socket with UDP GSO (``UDP_SEGMENT``) on send and UDP GRO (``UDP_GRO``) on receive.

Send: one ``sendmsg`` carries up to :data:`UDP_MAX_SEGMENTS` equal-sized datagrams (the last may be
shorter) and a ``(SOL_UDP, UDP_SEGMENT, u16 gso_size)`` control message; the kernel (or the NIC) cuts it.
The kernel refuses UDP_SEGMENT with EIO when the egress device cannot checksum (``ethtool -K dev tx off``):
then GSO is switched off for the socket (``gso_disabled``, ``gso_eio_errors``; wireguard-go's
``errShouldDisableUDPGSO``) and everything goes out one datagram per syscall.

Receive: with ``UDP_GRO`` enabled the kernel may hand over several same-flow datagrams as one buffer with a
``(SOL_UDP, UDP_GRO, int gso_size)`` control message: segment ``i`` is ``buf[i*gso_size:(i+1)*gso_size]``
(the last one may be shorter).  Without the cmsg the buffer is a single datagram (``gso_size`` 0 here).

The outer UDP checksum stays on: UDP_SEGMENT needs checksum offload and UDP GRO never merges datagrams
whose checksum is 0.
"""

from __future__ import annotations

import errno
import select
import socket
import struct
import sys
import time
from array import array
from collections.abc import Iterator, Sequence

from . import next_ready
from .tap import in_netns

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
SO_NO_CHECK = 11
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
SO_RXQ_OVFL = 40  # cmsg with the socket's drop counter (sk_drops: filter refusals + receive-buffer overflows)
SO_MEMINFO = 55  # getsockopt: u32[SK_MEMINFO_VARS]; index 8 (SK_MEMINFO_DROPS) is sk_drops, the same counter
_SK_MEMINFO_DROPS = 8

#: Datagrams per sendmsg (wireguard-go ``udpSegmentMaxDatagrams``; kernel UDP_MAX_SEGMENTS was 64 until 2024).
UDP_MAX_SEGMENTS = 64
#: Largest UDP payload of one sendmsg (IPv4: 65535 - 20 - 8; IPv6: 65535 - 8).
MAX_PAYLOAD_V4 = 65507
MAX_PAYLOAD_V6 = 65527
#: A receive buffer this large holds any GRO-merged datagram.
RECV_BUF_SIZE = 65536

_U16 = struct.Struct("=H")
_ANC_SIZE = socket.CMSG_SPACE(8) * 4
# plain ints: the socket module's flags are IntFlag members, whose operators cost microseconds per read
_MSG_DONTWAIT, _MSG_TRUNC, _SOL_SOCKET = int(socket.MSG_DONTWAIT), int(socket.MSG_TRUNC), int(socket.SOL_SOCKET)
_BYTEORDER = sys.byteorder


def segment_cmsg(gso_size: int) -> tuple[int, int, bytes]:
    """The ancillary item for ``sendmsg``: ``(SOL_UDP, UDP_SEGMENT, u16 gso_size in host order)``."""
    return (SOL_UDP, UDP_SEGMENT, _U16.pack(gso_size))


def parse_gro_cmsg(ancdata) -> int:
    """``gso_size`` from ``recvmsg`` ancillary data (kernel puts a host-order int); 0 if absent."""
    for level, typ, data in ancdata:
        if level == SOL_UDP and typ == UDP_GRO and len(data) in (2, 4):
            return int.from_bytes(data, sys.byteorder)
    return 0


def parse_ovfl_cmsg(ancdata) -> int | None:
    """The socket's cumulative drop counter from an ``SO_RXQ_OVFL`` cmsg, or None if absent."""
    for level, typ, data in ancdata:
        if level == socket.SOL_SOCKET and typ == SO_RXQ_OVFL and len(data) >= 4:
            return int.from_bytes(data[:4], sys.byteorder)
    return None


def iter_segments(buf, nbytes: int, gso_size: int) -> Iterator[memoryview]:
    """The datagrams of one receive: slices of ``gso_size`` (last may be shorter); all of it if 0."""
    mv = memoryview(buf)[:nbytes]
    if gso_size <= 0 or gso_size >= nbytes:
        yield mv
        return
    for off in range(0, nbytes, gso_size):
        yield mv[off : off + gso_size]


def check_port_free(host: str, port: int, netns: str | None = None) -> None:
    """Raise ``OSError(EADDRINUSE)`` naming ``host:port`` if any socket holds it, with or without
    ``SO_REUSEPORT``.

    A socket group bound with ``SO_REUSEPORT`` (``rx_queues`` > 1) would otherwise silently share the port
    with a second endpoint, or a leftover process of an old one, that bound it the same way: each would get
    a share of the other's datagrams.  A plain bind first fails as the single socket always did.
    """
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with in_netns(netns):
        probe = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        probe.bind((host, port))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise OSError(errno.EADDRINUSE, f"underlay {host}:{port} is already in use (another udpnest, or a "
                                            f"leftover process of an old one? `ss -uanp sport = :{port}`)") from None
        raise
    finally:
        probe.close()


class UdpSocket:
    """A bound UDP socket (IPv4 or IPv6, chosen by ``host``), optionally created inside a named netns.

    Feature probes: ``gso_supported`` (UDP_SEGMENT known), ``gro_supported`` (UDP_GRO enabled).
    Fallback state: ``gso_disabled`` and ``gso_eio_errors``.  ``truncated`` counts receives that did not
    fit the caller's buffer (MSG_TRUNC).
    """

    def __init__(
        self,
        host: str,
        port: int = 0,
        *,
        netns: str | None = None,
        gro: bool = True,
        gso: bool = True,
        bufsize: int | None = None,
        blocking: bool = False,
        send_timeout: float = 1.0,
        reuseport: bool = False,
    ) -> None:
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.netns = netns
        self.send_timeout = send_timeout
        self.max_payload = MAX_PAYLOAD_V6 if self.family == socket.AF_INET6 else MAX_PAYLOAD_V4
        with in_netns(netns):
            sock = socket.socket(self.family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock = sock
        try:
            if bufsize:
                for force, plain in ((SO_SNDBUFFORCE, socket.SO_SNDBUF), (SO_RCVBUFFORCE, socket.SO_RCVBUF)):
                    try:
                        sock.setsockopt(socket.SOL_SOCKET, force, bufsize)
                    except PermissionError:
                        sock.setsockopt(socket.SOL_SOCKET, plain, bufsize)
            if self.family == socket.AF_INET:
                sock.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 0)  # the default; stated for the record
            if reuseport:  # one of a group bound to the same address and port (RxQueues): before bind
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.setblocking(blocking)
        except BaseException:
            sock.close()
            raise
        self.gso_supported = self._probe_gso()
        self.gro_supported = self._enable_gro() if gro else False
        self.gso_disabled = not (gso and self.gso_supported)
        self.gso_eio_errors = 0
        self.truncated = 0
        self.socket_drops = 0  # kernel-side drops (SO_RXQ_OVFL), as of the last receive
        self.filter_error: str | None = None
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
        except OSError:
            pass

    # -- probes ------------------------------------------------------------------------------------------

    def _probe_gso(self) -> bool:
        try:
            self.sock.getsockopt(SOL_UDP, UDP_SEGMENT)
        except OSError:
            return False
        return True

    def _enable_gro(self) -> bool:
        try:
            self.sock.setsockopt(SOL_UDP, UDP_GRO, 1)
            return self.sock.getsockopt(SOL_UDP, UDP_GRO) != 0
        except OSError:
            return False

    # -- send --------------------------------------------------------------------------------------------

    def _wait_writable(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("udp send: socket buffer stayed full")
        select.select([], [self.sock], [], left)

    def _sendmsg(self, bufs, anc, addr) -> int:
        deadline = 0.0
        while True:
            try:
                if addr is None:
                    return self.sock.sendmsg(bufs, anc)
                return self.sock.sendmsg(bufs, anc, 0, addr)
            except BlockingIOError:
                if not deadline:
                    deadline = time.monotonic() + self.send_timeout
                self._wait_writable(deadline)

    def _send_gso(self, bufs, seg_size: int, addr) -> bool:
        """One UDP_SEGMENT sendmsg; False (and GSO switched off) if the kernel says EIO."""
        try:
            self._sendmsg(bufs, [segment_cmsg(seg_size)], addr)
            return True
        except OSError as e:
            if e.errno != errno.EIO:
                raise
            self.gso_disabled = True
            self.gso_eio_errors += 1
            return False

    def send_segments(self, buf, seg_size: int, addr=None) -> int:
        """Send ``buf`` as consecutive datagrams of ``seg_size`` bytes (the last may be shorter).

        Uses UDP_SEGMENT (up to :data:`UDP_MAX_SEGMENTS` datagrams and ``max_payload`` bytes per call)
        unless GSO is off.  Returns the number of send syscalls made.
        """
        mv = memoryview(buf).cast("B")
        n = len(mv)
        if seg_size <= 0 or seg_size > self.max_payload:
            raise ValueError(f"segment size {seg_size} out of range 1..{self.max_payload}")
        if n == 0:
            self._sendmsg([mv], [], addr)
            return 1
        per_call = min(UDP_MAX_SEGMENTS, self.max_payload // seg_size) * seg_size
        calls = 0
        off = 0
        while off < n:
            if self.gso_disabled or n - off <= seg_size:
                end = min(off + seg_size, n)
                self._sendmsg([mv[off:end]], [], addr)
            else:
                end = min(off + per_call, n)
                if not self._send_gso([mv[off:end]], seg_size, addr):
                    continue  # same chunk again, one datagram at a time
            calls += 1
            off = end
        return calls

    def send_parts(self, parts: Sequence, addr=None) -> int:
        """Send ONE datagram given as several buffers (an iovec: e.g. Geneve header + frame, no join)."""
        return self._sendmsg(list(parts), [], addr)

    def send_datagrams(self, datagrams: Sequence, addr=None) -> int:
        """Send separate datagram buffers; runs of equal length (plus one shorter tail) share a sendmsg.

        The buffers are passed as an iovec (no copy).  Returns the number of send syscalls made.
        """
        calls = 0
        i, count = 0, len(datagrams)
        while i < count:
            size = len(datagrams[i])
            j = i + 1
            if not self.gso_disabled and size > 0:
                limit = min(UDP_MAX_SEGMENTS, self.max_payload // size)
                total = size
                while j < count and j - i < limit and len(datagrams[j]) == size:
                    total += size
                    j += 1
                if j < count and j - i < limit and 0 < len(datagrams[j]) < size:
                    if total + len(datagrams[j]) <= self.max_payload:
                        j += 1
            if j - i > 1:
                if not self._send_gso(list(datagrams[i:j]), size, addr):
                    continue
            else:
                self._sendmsg([datagrams[i]], [], addr)
            calls += 1
            i = j
        return calls

    # -- receive -----------------------------------------------------------------------------------------

    def recv_into(self, buf, *, nowait: bool = False) -> tuple[int, int, tuple] | None:
        """Receive into ``buf`` (>= :data:`RECV_BUF_SIZE`): ``(nbytes, gso_size, peer)`` or ``None``.

        ``gso_size`` is 0 for a single (unmerged) datagram.  ``nowait``: MSG_DONTWAIT on a blocking socket.
        """
        try:
            n, anc, flags, addr = self.sock.recvmsg_into([buf], _ANC_SIZE, _MSG_DONTWAIT if nowait else 0)
        except BlockingIOError:
            return None
        if flags & _MSG_TRUNC:
            self.truncated += 1
        gso = 0
        for level, typ, data in anc:  # parse_gro_cmsg and parse_ovfl_cmsg in one pass (once per read)
            if level == SOL_UDP:
                if typ == UDP_GRO and len(data) in (2, 4):
                    gso = int.from_bytes(data, _BYTEORDER)
            elif level == _SOL_SOCKET and typ == SO_RXQ_OVFL and len(data) >= 4:
                self.socket_drops = int.from_bytes(data[:4], _BYTEORDER)
        return n, gso, addr

    # -- kernel-side source filter -----------------------------------------------------------------------

    def restrict_sources(self, addresses: Sequence[str], networks: Sequence[str] = ()) -> bool:
        """Drop datagrams from any other source in the kernel, before they are queued (:mod:`udpnest.io.bpf`).

        False (reason in ``filter_error``) if the program would be too large or the kernel refuses it:
        then only the caller's userspace check remains."""
        from . import bpf

        try:
            bpf.attach(self.sock, bpf.build_filter(self.family == socket.AF_INET6, addresses, networks))
        except (OSError, ValueError) as e:
            self.filter_error = str(e)
            return False
        self.filter_error = None
        return True

    def kernel_drops(self) -> int | None:
        """The socket's drop counter now (SO_MEMINFO's sk_drops: what SO_RXQ_OVFL reports with the next
        datagram), or None when the kernel does not tell."""
        try:
            raw = self.sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * (_SK_MEMINFO_DROPS + 1))
        except OSError:
            return None
        if len(raw) < 4 * (_SK_MEMINFO_DROPS + 1):
            return None
        return int.from_bytes(raw[4 * _SK_MEMINFO_DROPS : 4 * _SK_MEMINFO_DROPS + 4], _BYTEORDER)

    def recv_batch(self, bufs: Sequence) -> list[tuple[int, int, tuple]]:
        """Fill ``bufs[0]``, ``bufs[1]``, ... until the socket is empty; result ``k`` belongs to ``bufs[k]``."""
        out = []
        for buf in bufs:
            r = self.recv_into(buf)
            if r is None:
                break
            out.append(r)
        return out

    def wait_readable(self, timeout: float | None) -> bool:
        r, _, _ = select.select([self.sock], [], [], timeout)
        return bool(r)

    # -- misc --------------------------------------------------------------------------------------------

    @property
    def local_address(self) -> tuple:
        return self.sock.getsockname()

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> UdpSocket:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<UdpSocket {self.sock.getsockname() if self.sock.fileno() >= 0 else 'closed'}"
            f" gso={self.gso_supported and not self.gso_disabled} gro={self.gro_supported}>"
        )


#: reads one socket of an :class:`RxQueues` group may give in a row (outside a held run) before the others are
#: looked at; csrc/rxbatch.c takes it from ``RxQueues.sched``, so C and Python switch at the same reads
RX_QUANTUM = 8
RX_QUEUES_MAX = 64


class RxQueues:
    """Flow queueing on receive: N sockets bound to one address and port with SO_REUSEPORT, served round robin.

    The kernel hands each datagram to one socket of the group by a hash of its 4-tuple; a sender puts its inner
    flow's hash in the outer UDP source port, so one inner flow always lands in the same socket (its order is
    kept) and a sparse flow mostly lands in another socket than a bulk one: it no longer waits behind the bulk
    flow's queued data (docs/architecture.md, "RX queues").

    Scheduling (the same in csrc/rxbatch.c): stay on the current socket while a coalesced run is held
    (``nowait``: RxDriver.holding) and for at most ``quantum`` reads; after ``quantum`` reads, or when the
    current socket is empty, one ``poll`` of all sockets picks the next ready socket after the current one (the
    current one last).  Empty and not holding: the poll blocks until any socket is readable (the single socket's
    blocking recvmsg of today).  Holding and empty: None at once (the caller flushes the run, then asks again).

    ``sched`` (an ``array('q')``, shared with the native RX fast path): ``[quantum, current index, reads on it
    since the last switch, fd_0 .. fd_N-1, SO_RXQ_OVFL last seen by C per socket (-1: none), reads per socket]``.
    """

    def __init__(self, socks: Sequence[UdpSocket], quantum: int = RX_QUANTUM) -> None:
        if not 1 <= len(socks) <= RX_QUEUES_MAX or quantum < 1:
            raise ValueError(f"RxQueues: 1..{RX_QUEUES_MAX} sockets and a quantum >= 1")
        n = self.n = len(socks)
        self.socks = list(socks)
        fds = [s.fileno() for s in socks]
        self.sched = array("q", [quantum, 0, 0, *fds] + [-1] * n + [0] * n)
        self._drops0, self._reads0 = 3 + n, 3 + 2 * n
        self._poll = select.poll()
        for fd in fds:
            self._poll.register(fd, select.POLLIN | select.POLLRDHUP)
        self._index = {fd: i for i, fd in enumerate(fds)}

    def _pick(self, timeout: int | None) -> int:
        """One poll of all sockets (``timeout`` ms, None: block); the next ready socket after the current one
        becomes current (its read count 0).  0: none ready; 1: it has data; 2: it reports something else too
        (a shutdown, an error: its next recvmsg blocks, and returns at once what today's blocking one would)."""
        ev = self._poll.poll(timeout)
        if not ev:
            return 0
        q, index = self.sched, self._index
        ready = {index[fd]: e for fd, e in ev}
        j = next_ready(ready, q[1], self.n)
        if j is None:
            return 0
        q[1], q[2] = j, 0
        return 1 if ready[j] == select.POLLIN else 2

    def recv_into(self, buf, nowait: bool = False) -> tuple[int, int, tuple] | None:
        """``UdpSocket.recv_into`` over the group (see the class docstring for which socket); ``nowait``: a run
        is held (stay on the current socket, None when it is empty)."""
        q = self.sched
        p = 1
        if q[2] >= q[0] and not nowait:
            p = self._pick(None)
            if not p:
                return None
        i = q[1]
        r = self.socks[i].recv_into(buf, nowait=p == 1)
        if r is None:
            q[2] = q[0]  # empty: the next read that is not holding polls first
            if nowait:
                return None
            p = self._pick(None)
            if not p:
                return None
            i = q[1]
            r = self.socks[i].recv_into(buf, nowait=p == 1)
            if r is None:  # readable but nothing to read (e.g. a bad checksum): the caller loops
                q[2] = q[0]
                return None
        q[2] += 1
        q[self._reads0 + i] += 1
        return r

    @property
    def socket_drops(self) -> int:
        """The kernel's drops (sk_drops) summed over the sockets: each socket's counter now (SO_MEMINFO: a socket
        that only ever got junk refused by the filter reports no SO_RXQ_OVFL cmsg), at least the last value
        either path saw in a cmsg (the counters only grow).  Read when status asks, not per datagram."""
        q, d = self.sched, self._drops0
        return sum(max(s.socket_drops, q[d + i], s.kernel_drops() or 0) for i, s in enumerate(self.socks))

    @property
    def truncated(self) -> int:
        return sum(s.truncated for s in self.socks)

    @property
    def reads(self) -> list[int]:
        """Reads per socket (both paths)."""
        return list(self.sched[self._reads0 :])
