"""The RX driver: a sans-IO object that owns what happens between one UDP_GRO read and the TAP writes.

The endpoint's RX loop does the syscalls and calls, per read, :meth:`RxDriver.read` with the peer's
address; it gets back the TAP writes to make (in order), the echo packets for the control plane, and
whether the driver holds a coalesced run (then the next read should not block: :attr:`holding`).  When
nothing more is waiting the loop calls :meth:`flush` and writes what it returns.

State is bounded: at most one held run (the first half of a sender's 64 KB super-packet that the next
read may continue, :func:`udpnest.rxpipe.merge`), never a flow table.  Every datagram is accounted for:
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


class RxOut(NamedTuple):
    writes: list[tuple[rxpipe.TapWrite, str]]  # (write, peer key), in order
    control: list[tuple[GenevePacket, str, int]]  # echo request/reply packets, peer key, datagram length


class RxDriver:
    def __init__(self, *, peers: Container[str], vni: int | None, opt_class: int | None = DEFAULT_OPT_CLASS,
                 ports: Mapping[int, Encap] = DEFAULT_PORTS, verify_csum: bool = True, max_datagram: int = 1472,
                 engine: str = "python", counts: Counter | None = None, drops: Counter | None = None) -> None:
        self.peers = peers
        self.kw = dict(opt_class=opt_class, ports=ports, verify_csum=verify_csum, max_datagram=max_datagram,
                       vni=vni)
        self.engine = engine
        self.counts: Counter = counts if counts is not None else Counter()
        self.drops: Counter = drops if drops is not None else Counter()
        self.pending: tuple[rxpipe.Run, str, int] | None = None  # the one held run, its peer key, its reads
        if engine == "native":
            from . import rxnative

            self._receive = rxnative.Receiver(counts=self.counts, **self.kw).receive
            self._finish_run = rxnative.finish
            self._merge = rxnative.merge
        else:
            self._receive = self._receive_python
            self._finish_run = rxpipe.finish
            self._merge = rxpipe.merge

    def _receive_python(self, buf, n: int, gso: int) -> rxpipe.RxResult:
        return rxpipe.receive(buf, n, gso, hold=True, **self.kw)

    @property
    def holding(self) -> bool:
        """A run is held: the caller should poll (not block) for the next read, then :meth:`flush`."""
        return self.pending is not None

    def read(self, buf, n: int, gso: int, key: str) -> RxOut:
        """One read of ``n`` bytes (UDP_GRO ``gso`` size, 0 for one datagram) from peer address ``key``.

        The returned writes reference ``buf`` only until the next read: the caller writes them first.
        """
        c = self.counts
        c["reads"] += 1
        c["bytes"] += n
        out = RxOut([], [])
        if key not in self.peers:
            self.drops[Reason.NO_PEER.value] += max(1, -(-n // gso)) if gso else 1
            return out
        res = self._receive(buf, n, gso)
        if res.outcome is not _SINGLE:  # one datagram: reads minus the other outcomes
            c[_OUTCOME_KEYS[res.outcome]] += 1
        run = res.run
        reads = 1  # reads the run is made of (merged reads counted in the reads_per_super_packet histogram)
        if self.pending is not None:
            joined = self._merge(self.pending[0], run) if run is not None and self.pending[1] == key else None
            if joined is not None:
                c["merged_reads"] += 1
                run, reads = joined, self.pending[2] + 1
            else:
                self._finish(*self.pending, out.writes)
            self.pending = None
        if run is not None:
            # the payload views point into buf: copy them out before the next read reuses it
            if any(p.__class__ is not bytes for p in run.payloads):  # the native engine's are bytes already
                run = run._replace(payloads=tuple(bytes(p) for p in run.payloads))
            if run.extendable:
                self.pending = (run, key, reads)
            else:
                self._finish(run, key, reads, out.writes)
        for reason, cnt in res.drops:
            self.drops[reason.value] += cnt
        for w in res.writes:
            out.writes.append((w, key))
        for pkt, dg in res.control:
            out.control.append((pkt, key, len(dg)))
        return out

    def flush(self) -> list[tuple[rxpipe.TapWrite, str]]:
        """Nothing more is waiting: the held run (if any) as its TAP write."""
        writes: list = []
        if self.pending is not None:
            self._finish(*self.pending, writes)
            self.pending = None
        return writes

    def _finish(self, run: rxpipe.Run, key: str, reads: int, writes: list) -> None:
        self.counts[f"{READS_HIST_PREFIX}{min(reads, READS_HIST_MAX)}"] += 1
        w = self._finish_run(run)
        if w is None:
            self.drops[Reason.FOLD_TOO_LARGE.value] += run.segments
            return
        writes.append((w, key))
