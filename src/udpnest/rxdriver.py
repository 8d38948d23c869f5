"""The RX driver: a sans-IO object that owns what happens between one UDP_GRO read and the TAP writes.

The endpoint's RX loop does the syscalls and calls, per read, :meth:`RxDriver.read` with the peer's
address; it gets back the TAP writes to make (in order), the echo packets for the control plane, and
whether the driver holds a coalesced run (then the next read should not block: :attr:`holding`).  When
nothing more is waiting the loop calls :meth:`flush` and writes what it returns.

State is bounded: at most one held run (the first half of a sender's 64 KB super-packet that the next
read may continue, :func:`udpnest.rxpipe.merge`, or a one-datagram read that is a TCP segment,
:func:`udpnest.rxpipe.single_run`, kept as a copy and replayed through the one-datagram path if nothing
continues it), never a flow table.  Every datagram is accounted for:
written, handed to the control plane, or counted in ``drops`` under its :class:`~udpnest.wire.errors.Reason`.
Counters (``reads``, ``bytes``, ``merged_reads``, ``coalesce_<outcome>``, ``native_deferred``) go into
the ``counts`` mapping the caller hands in (the endpoint's RX :class:`~udpnest.endpoint.Stats`).

``engine``: "python" runs :mod:`udpnest.rxpipe` (the reference); "native" runs the per-datagram work of
the steady state in the C core (``udpnest._native``, csrc/rx.c) and the reference for what it defers.
Both give the same writes, drops and outcomes (tests/test_engine_diff_rx.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Container, Mapping
from typing import NamedTuple

from . import rxpipe
from .fold import DEFAULT_PORTS, Encap
from .wire.errors import Reason
from .wire.options import DEFAULT_OPT_CLASS, GenevePacket

#: RX counters ``reads_per_super_packet_1`` .. ``_3``: how many reads each coalesced super-packet was made of
#: (3 stands for 3 or more); the metrics exporter turns them into a histogram
READS_HIST_PREFIX = "reads_per_super_packet_"
READS_HIST_MAX = 3


_SINGLE = rxpipe.Outcome.SINGLE
_OUTCOME_KEYS = {o: f"coalesce_{o.value}" for o in rxpipe.Outcome}
_SINGLE_MERGED = _OUTCOME_KEYS[rxpipe.Outcome.SINGLE_MERGED]
_SPLIT = _OUTCOME_KEYS[rxpipe.Outcome.SPLIT]


class RxOut(NamedTuple):
    writes: list[tuple[rxpipe.TapWrite, str]]  # (write, peer key), in order
    control: list[tuple[GenevePacket, str, int]]  # echo request/reply packets, peer key, datagram length


class RxDriver:
    def __init__(self, *, peers: Container[str], vni: int | None, opt_class: int | None = DEFAULT_OPT_CLASS,
                 ports: Mapping[int, Encap] = DEFAULT_PORTS, verify_csum: bool = True, max_datagram: int = 1472,
                 engine: str = "python", counts: Counter | None = None, drops: Counter | None = None,
                 single_min: int | None = None) -> None:
        self.peers = peers
        self.kw = dict(opt_class=opt_class, ports=ports, verify_csum=verify_csum, max_datagram=max_datagram,
                       vni=vni)
        self.engine = engine
        self.max_datagram = max_datagram
        # a one-datagram read is tried as a segment to hold (single_run) only from this length on (ACKs and
        # small frames skip it with one comparison), or when it could end/continue the held run
        self.single_min = max_datagram // 2 if single_min is None else single_min
        self.counts: Counter = counts if counts is not None else Counter()
        self.drops: Counter = drops if drops is not None else Counter()
        # the one held run, its peer key, how many reads it is made of, and (a held one-datagram read not
        # merged yet) that datagram's bytes, replayed through the one-datagram path if nothing continues it
        self.pending: tuple[rxpipe.Run, str, int, bytes | None] | None = None
        self.native_receiver = None  # the native engine's rxnative.Receiver (its FOLD templates: udpnest.rxbatch)
        if engine == "native":
            from . import rxnative

            receiver = self.native_receiver = rxnative.Receiver(counts=self.counts, **self.kw)
            self._receive = receiver.receive
            self._single_run = receiver.single_run
            self._finish_run = rxnative.finish
            self._merge = rxnative.merge
        else:
            self._receive = self._receive_python
            self._single_run = self._single_run_python
            self._finish_run = rxpipe.finish
            self._merge = rxpipe.merge

    def _receive_python(self, buf, n: int, gso: int) -> rxpipe.RxResult:
        return rxpipe.receive(buf, n, gso, hold=True, **self.kw)

    def _single_run_python(self, buf, n: int) -> rxpipe.Run | None:
        kw = self.kw
        return rxpipe.single_run(memoryview(buf)[:n], kw["opt_class"], kw["ports"], kw["verify_csum"], kw["vni"])

    @property
    def holding(self) -> bool:
        """A run is held: the caller should poll (not block) for the next read, then :meth:`flush`."""
        return self.pending is not None

    def _single_candidate(self, n: int, gso: int, key: str) -> bool:
        """Is a read worth trying as a 1-segment run?  One datagram within the path MTU, and either long
        enough to start a run or of a length that could continue/end the held one (cheap: no parse)."""
        if (gso and n > gso) or n > self.max_datagram:
            return False
        if n >= self.single_min:
            return True
        p = self.pending
        if p is None or p[1] != key:
            return False
        hl = len(p[0].ref)
        return hl < n <= hl + p[0].mss

    def read(self, buf, n: int, gso: int, key: str) -> RxOut:
        """One read of ``n`` bytes (UDP_GRO ``gso`` size, 0 for one datagram) from peer address ``key``.

        The returned writes reference ``buf`` only until the next read: the caller writes them first.
        A one-datagram read that is a TCP segment with payload (:func:`udpnest.rxpipe.single_run`) is
        held or merged like a coalesced read; counted ``coalesce_single_merged`` when it does become part
        of a super-packet with another read (a held one that nothing continued goes out as it always did:
        the one-datagram path, zero vnet header).
        """
        c = self.counts
        c["reads"] += 1
        c["bytes"] += n
        out = RxOut([], [])
        if key not in self.peers:
            self.drops[Reason.NO_PEER.value] += max(1, -(-n // gso)) if gso else 1
            return out
        res = None
        run = None
        if (n >= self.single_min or self.pending is not None) and self._single_candidate(n, gso, key):
            run = self._single_run(buf, n)  # (an ACK with nothing held costs the one comparison)
        single = run is not None
        if not single:
            res = self._receive(buf, n, gso)
            if res.outcome is not _SINGLE:  # one datagram: reads minus the other outcomes
                c[_OUTCOME_KEYS[res.outcome]] += 1
            if res.pieces:
                self._pieces(res, key, out)
                return out
            run = res.run
            # the payload views point into buf: copy them out before the next read reuses it
            if run is not None and any(p.__class__ is not bytes for p in run.payloads):  # native: bytes already
                run = run._replace(payloads=tuple(bytes(p) for p in run.payloads))
        reads = 1  # reads the run is made of (merged reads counted in the reads_per_super_packet histogram)
        raw = None  # a held single's datagram
        if self.pending is not None:
            p = self.pending
            joined = self._merge(p[0], run) if run is not None and p[1] == key else None
            if joined is not None:
                c["merged_reads"] += 1
                c[_SINGLE_MERGED] += (p[3] is not None) + single
                run, reads, single = joined, p[2] + 1, False
            else:
                self._finish(*p, out.writes)
            self.pending = None
        if single:
            if run.extendable:  # held: copy the datagram (buf is reused by the next read)
                raw = bytes(memoryview(buf)[:n])
                run = run._replace(payloads=(memoryview(raw)[n - run.payload_len :],))
                self.pending = (run, key, 1, raw)
                return out
            # it ends a run but continued none: the one-datagram path, as always
            res = self._receive(buf, n, gso)
            run = None
        if run is not None:  # (its payloads are bytes, or views of a held single's own copy)
            if run.extendable:
                self.pending = (run, key, reads, None)
            else:
                self._finish(run, key, reads, None, out.writes)
        if res is not None:
            for reason, cnt in res.drops:
                self.drops[reason.value] += cnt
            for w in res.writes:
                out.writes.append((w, key))
            for pkt, dg in res.control:
                out.control.append((pkt, key, len(dg)))
        return out

    def _pieces(self, res: rxpipe.RxResult, key: str, out: RxOut) -> None:
        """A split read (rxpipe.split_plan): its pieces in order.  Only the first may continue the held run;
        a later run is not merged with the piece before it (they are of one read: something broke between
        them); only the last may be held for the next read.  Counted ``coalesce_split`` once."""
        c = self.counts
        c[_SPLIT] += 1
        last = len(res.pieces) - 1
        for i, piece in enumerate(res.pieces):
            p = self.pending
            if piece.__class__ is not rxpipe.Run:
                if p is not None:
                    self._finish(*p, out.writes)
                    self.pending = None
                out.writes.append((piece, key))
                continue
            run, reads = piece, 1
            if any(q.__class__ is not bytes for q in run.payloads):  # views into buf: copy them out
                run = run._replace(payloads=tuple(bytes(q) for q in run.payloads))
            if p is not None:
                joined = self._merge(p[0], run) if i == 0 and p[1] == key else None
                if joined is not None:
                    c["merged_reads"] += 1
                    c[_SINGLE_MERGED] += p[3] is not None
                    run, reads = joined, p[2] + 1
                else:
                    self._finish(*p, out.writes)
                self.pending = None
            if i == last and run.extendable:
                self.pending = (run, key, reads, None)
            else:
                self._finish(run, key, reads, None, out.writes)
        for reason, cnt in res.drops:
            self.drops[reason.value] += cnt
        for pkt, dg in res.control:
            out.control.append((pkt, key, len(dg)))

    def flush(self) -> list[tuple[rxpipe.TapWrite, str]]:
        """Nothing more is waiting: the held run (if any) as its TAP write."""
        writes: list = []
        if self.pending is not None:
            self._finish(*self.pending, writes)
            self.pending = None
        return writes

    def _finish(self, run: rxpipe.Run, key: str, reads: int, raw: bytes | None, writes: list) -> None:
        if raw is not None:  # a held single nothing continued: the one-datagram path, as without holding
            res = self._receive(raw, len(raw), 0)
            for reason, cnt in res.drops:
                self.drops[reason.value] += cnt
            writes.extend((w, key) for w in res.writes)
            # (no control packets: an echo datagram is never a TCP segment, single_run refused it)
            return
        self.counts[f"{READS_HIST_PREFIX}{min(reads, READS_HIST_MAX)}"] += 1
        w = self._finish_run(run)
        if w is None:
            self.drops[Reason.FOLD_TOO_LARGE.value] += run.segments
            return
        writes.append((w, key))
