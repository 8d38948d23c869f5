"""The native engine's receive step: :func:`udpnest.rxpipe.receive` with the per-datagram work in C.

Same inputs, same :class:`~udpnest.rxpipe.RxResult` (writes, drops, control, held run, outcome) as the
reference, byte for byte (tests/test_engine_diff_rx.py).  The split:

* per read, in Python (once, not per datagram): the first row's Geneve/FOLD parse and header layout
  (:func:`udpnest.rxpipe._frame_info`, cached by header bytes) and the Run/TapWrite objects;
* per datagram, in C (``_native.rx_coalesce``, ``_native.rx_rows``): every coalescing check (lengths,
  headers, flags, sequence, IPv4 IDs, every TCP / IPv4 header / nested UDP checksum), the payload
  gather, and the one-datagram path (Geneve header, VNI, options, GRO hint, protocol, first IP header);
* deferred to the reference, counted as ``native_deferred`` (one per datagram or per read): datagrams
  with a FOLD or echo option in the one-datagram path (a FOLD ACK; echo probes), and whole super-packets
  in one datagram (a veth without UDP GSO), both rare in the steady state of the coalescing path.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from . import _native
from .fold import DEFAULT_PORTS, F_CSUM_ZEROED, Encap
from .gso import Layout
from .rxpipe import (
    Kind,
    Outcome,
    Run,
    RxResult,
    TapWrite,
    _frame_info,
    _masks,
    _single,
    receive,
    rows_of,
)
from .wire.errors import ParseError, Reason
from .wire.options import DEFAULT_OPT_CLASS
from .wire.tcp import FIN, PSH
from .wire.vnet import ZERO_VNET_HDR

REASONS = tuple(Reason(v) for v in _native.RX_REASONS)
OUTCOMES = tuple(Outcome(v) for v in _native.RX_OUTCOMES)
_LAYOUT_ARGS: dict[tuple[int, Layout], tuple] = {}
_LAYOUT_ARGS_MAX = 256


def _layout_args(G: int, lay: Layout) -> tuple:
    """The layout as rx_coalesce wants it (cached: a flow's reads share one layout)."""
    key = (G, lay)
    hit = _LAYOUT_ARGS.get(key)
    if hit is None:
        kf, kl = _masks(G, lay)
        ip4 = tuple((off, off == lay.tcp_ip) for off in lay.ip4)
        udp = tuple((u, has, *lay.ip_before(u)) for u, has in lay.udp)
        hit = (ip4, lay.ip6, udp, lay.tcp_ip, lay.tcp_ip_v6, lay.tcp, kf.tobytes(), kl.tobytes())
        if len(_LAYOUT_ARGS) >= _LAYOUT_ARGS_MAX:
            _LAYOUT_ARGS.clear()
        _LAYOUT_ARGS[key] = hit
    return hit


class Receiver:
    """``receive(buf, n, gso)`` as :func:`udpnest.rxpipe.receive` with ``hold=True`` and these settings."""

    def __init__(self, *, opt_class: int | None = DEFAULT_OPT_CLASS, ports: Mapping[int, Encap] = DEFAULT_PORTS,
                 verify_csum: bool = True, max_datagram: int = 1472, vni: int | None = None,
                 counts: Counter | None = None) -> None:
        self.opt_class, self.ports, self.verify = opt_class, ports, verify_csum
        self.max_datagram, self.vni = max_datagram, vni
        self.n_vni = -1 if vni is None else vni
        self.n_class = -1 if opt_class is None else opt_class
        self.counts: Counter = counts if counts is not None else Counter()

    def receive(self, buf, n: int, gso: int) -> RxResult:
        mv = memoryview(buf)[:n]
        count, row_len, last_len = rows_of(n, gso)
        if not gso and n > self.max_datagram:
            self.counts["native_deferred"] += 1
            return receive(buf, n, gso, opt_class=self.opt_class, ports=self.ports, verify_csum=self.verify,
                           max_datagram=self.max_datagram, hold=True, vni=self.vni)
        res = RxResult([], [], [])
        outcome = Outcome.SINGLE
        if count > 1:
            run = self._coalesce(mv, count, row_len, last_len)
            if isinstance(run, Run):
                return res._replace(run=run, outcome=Outcome.COALESCED)
            outcome = run
        codes = _native.rx_rows(mv, count, row_len, last_len, self.n_vni, self.n_class)
        writes, drops = res.writes, res.drops
        for i, code in enumerate(codes):
            start = i * row_len
            end = start + (last_len if i == count - 1 else row_len)
            if code >= 0:
                kind = Kind.HINT if code >> 16 else Kind.PLAIN
                writes.append(TapWrite(ZERO_VNET_HDR, (mv[start + (code & 0xFFFF) : end],), kind, 1))
            elif code == -1:
                self.counts["native_deferred"] += 1
                _single(mv[start:end], self.opt_class, res, self.vni)
            else:
                drops.append((REASONS[-2 - code], 1))
        return res._replace(outcome=outcome)

    def _coalesce(self, mv: memoryview, count: int, row_len: int, last_len: int) -> Run | Outcome:
        try:
            info = _frame_info(mv[:row_len], self.opt_class, self.ports, self.vni)
        except ParseError:
            return Outcome.PARSE
        if info is None:
            return Outcome.INELIGIBLE
        G, lay = info.G, info.layout
        H = lay.hdr_len
        mss = row_len - G - H
        if mss <= 0 or last_len < G + H or (last_len == G + H and count > 1):
            return Outcome.SHORT
        r = _native.rx_coalesce(mv, count, row_len, last_len, G, H, *_layout_args(G, lay), self.verify)
        if isinstance(r, int):
            return OUTCOMES[r]
        if info.carried is not None and not info.carried[0].flags & F_CSUM_ZEROED:
            return Outcome.FOLD_CSUM
        payload, last_flags, seq0, first_ids, last_ids = r
        hdr = bytearray(mv[G : G + H])
        hdr[lay.tcp + 13] = last_flags
        last_payload = last_len - G - H
        total = (count - 1) * mss + last_payload
        return Run(info, bytes(hdr), (payload,), total, mss, count, seq0, (seq0 + total) & 0xFFFFFFFF, first_ids,
                   last_ids, bytes(mv[: G + H]), last_payload == mss and not last_flags & (PSH | FIN))
