"""The native engine's receive step: :func:`udpnest.rxpipe.receive` with the per-datagram work in C.

Same inputs, same :class:`~udpnest.rxpipe.RxResult` (writes, drops, control, held run, outcome) as the
reference, byte for byte (tests/test_engine_diff_rx.py).  The split:

* per read, in Python (once, not per datagram): the first row's Geneve/FOLD parse and header layout
  (:func:`udpnest.rxpipe._frame_info`, cached by header bytes) and the Run/TapWrite objects;
* per datagram, in C (``_native.rx_coalesce``, ``_native.rx_rows``): every coalescing check (lengths,
  headers, flags, sequence, IPv4 IDs, every TCP / IPv4 header / nested UDP checksum), the payload
  gather, and the one-datagram path (Geneve header, VNI, options, GRO hint, protocol, first IP header);
* FOLD datagrams in the one-datagram path (ACKs in fold mode): the first one with a given Geneve header
  goes to the reference, which validates it (``decode_folds``); its header bytes then map to a template
  of the carried levels (at most :data:`FOLD_TEMPLATES_MAX`, counted ``fold_templates_reset`` when the
  table is cleared) and C restores the nested headers of every later datagram with the same header bytes
  (lengths, IPv4 header checksums, nested UDP checksums, as ``fold.restore_headers``);
* deferred to the reference, counted as ``native_deferred`` (one per datagram or per read): echo packets,
  the first FOLD datagram of each header, and whole super-packets in one datagram (a veth without UDP
  GSO), all rare in the steady state.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from . import _native
from .fold import DEFAULT_PORTS, F_CSUM_ZEROED, Encap, _Carried
from .gso import Layout
from .rxpipe import (
    Kind,
    Outcome,
    Run,
    RxResult,
    TapWrite,
    _frame_info,
    _geneve_info,
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
FOLD_TEMPLATES_MAX = 256  # distinct FOLD headers (peers x nested flows) remembered per receiver


def fold_template(carried: list[_Carried]) -> bytes:
    """The carried levels as rx_rows reads them: count, then per level (outermost first) flags, l2, l3,
    tunnel length, header length (16 bits) and the header bytes."""
    out = bytearray([len(carried)])
    for c in carried:
        out += bytes((c.flags, c.l2, c.l3, c.tun)) + len(c.hdr).to_bytes(2, "big") + c.hdr
    return bytes(out)


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
        self.folds: dict[bytes, bytes] = {}  # Geneve header bytes -> template of its carried levels

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
        codes = _native.rx_rows(mv, count, row_len, last_len, self.n_vni, self.n_class, self.folds)
        writes, drops = res.writes, res.drops
        for i, code in enumerate(codes):
            start = i * row_len
            end = start + (last_len if i == count - 1 else row_len)
            if code.__class__ is tuple:
                headers, G = code
                writes.append(TapWrite(ZERO_VNET_HDR, (headers, mv[start + G : end]), Kind.FOLD, 1))
            elif code >= 0:
                kind = Kind.HINT if code >> 16 else Kind.PLAIN
                writes.append(TapWrite(ZERO_VNET_HDR, (mv[start + (code & 0xFFFF) : end],), kind, 1))
            elif code == -1:
                self.counts["native_deferred"] += 1
                row = mv[start:end]
                before = len(writes)
                _single(row, self.opt_class, res, self.vni)
                if len(writes) > before and writes[-1].kind is Kind.FOLD:
                    self._learn_fold(row)
            else:
                drops.append((REASONS[-2 - code], 1))
        return res._replace(outcome=outcome)

    def _learn_fold(self, row: memoryview) -> None:
        """The reference just unfolded ``row``: remember its header's carried levels for the C path."""
        try:
            pkt, carried = _geneve_info(row, self.opt_class, self.vni)
        except ParseError:  # pragma: no cover - it was just parsed
            return
        if carried is None or pkt.echo_request is not None or pkt.echo_reply is not None or pkt.hdr.oam:
            return
        if len(self.folds) >= FOLD_TEMPLATES_MAX:
            self.folds.clear()
            self.counts["fold_templates_reset"] += 1
        self.folds[bytes(row[: pkt.hdr.hdr_len])] = fold_template(carried)

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
