"""The native engine's receive step: :func:`udpnest.rxpipe.receive` with the per-datagram work in C.

Same inputs, same :class:`~udpnest.rxpipe.RxResult` (writes, drops, control, held run, outcome) as the
reference, byte for byte (tests/test_engine_diff_rx.py).  The split:

* per read, in Python (once, not per datagram): the first row's Geneve/FOLD parse and header layout
  (:func:`udpnest.rxpipe._frame_info`, reused across a flow's reads, ``rx_same``) and the Run/TapWrite
  objects;
* per datagram, in C (``_native.rx_coalesce``, ``_native.rx_rows``): every coalescing check (lengths,
  headers, flags, sequence, IPv4 IDs, every TCP / IPv4 header / nested UDP checksum), the payload
  gather, and the one-datagram path (Geneve header, VNI, options, GRO hint, protocol, first IP header);
  per super-packet (``_native.rx_super``): its headers and virtio_net_hdr (``rxpipe._super_write``);
* FOLD datagrams in the one-datagram path (ACKs in fold mode): the first one with a given Geneve header
  goes to the reference, which validates it (``decode_folds``); it then becomes a template (at most
  :data:`FOLD_TEMPLATES_MAX`, the oldest evicted and counted ``fold_templates_evicted``) and C restores
  the nested headers of every later datagram whose header is the same but for the carried IPv4 IDs
  (lengths, IPv4 header checksums, nested UDP checksums, as ``fold.restore_headers``);
* deferred to the reference, counted as ``native_deferred`` (one per datagram or per read): echo packets,
  the first FOLD datagram of each header, both rare in the steady state.  A whole super-packet in one
  datagram (a veth without UDP GSO) has its checks in C too (``rx_coalesce`` with count 1).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from . import _native
from .fold import DEFAULT_PORTS, F_CSUM_ZEROED, F_V6, FOLD_META_LEN, Encap, _Carried
from .gso import Layout, aligned_mss
from .rxpipe import (
    SPLIT_OUTCOMES,
    Kind,
    Outcome,
    Run,
    RxResult,
    TapWrite,
    _frame_info,
    _geneve_info,
    _masks,
    _single,
    rows_of,
    split_pieces,
    split_plan,
    too_short,
)
from .rxpipe import merge as _merge
from .wire.errors import ParseError, Reason
from .wire.geneve import OPT_HLEN, parse_options
from .wire.options import DEFAULT_OPT_CLASS, TYPE_FOLD
from .wire.tcp import FIN, PSH
from .wire.vnet import ZERO_VNET_HDR

REASONS = tuple(Reason(v) for v in _native.RX_REASONS)
_COALESCED = Outcome.COALESCED
OUTCOMES = tuple(Outcome(v) for v in _native.RX_OUTCOMES)
_LAYOUT_ARGS: dict[tuple[int, Layout], tuple] = {}
_LAYOUT_ARGS_MAX = 256
FOLD_TEMPLATES_MAX = 16  # FOLD header shapes (peers x nested flows) remembered per receiver, newest first


def fold_template(row, pkt, carried: list[_Carried], opt_class: int | None) -> bytes | None:
    """A validated FOLD header as rx_rows matches and restores it (csrc/rx.c, rx_match): its length, a mask
    (every byte must match but each carried IPv4 header's ID), the bytes, and per level (outermost first)
    flags, l2, l3, tunnel length, header length and the offset of the carried headers (16 bits each)."""
    G = pkt.hdr.hdr_len
    offs = [o.offset + OPT_HLEN + FOLD_META_LEN for o in parse_options(row, 0, pkt.hdr)
            if o.cls == opt_class and o.type == TYPE_FOLD]
    if len(offs) != len(carried):  # pragma: no cover - decode_folds had one per option
        return None
    mask = bytearray(b"\x01" * G)
    levels = bytearray([len(carried)])
    for off, c in zip(offs, carried, strict=True):
        if not c.flags & F_V6:
            mask[off + c.l2 + 4 : off + c.l2 + 6] = b"\0\0"
        levels += bytes((c.flags, c.l2, c.l3, c.tun)) + len(c.hdr).to_bytes(2, "big") + off.to_bytes(2, "big")
    return G.to_bytes(2, "big") + bytes(mask) + bytes(row[:G]) + bytes(levels)


def _carried_span(row, info) -> tuple[int, int] | None:
    """(start, end) of the one FOLD level's carried headers in the Geneve header of ``row``."""
    c = info.carried[0]
    for o in parse_options(row, 0, info.pkt.hdr):
        if o.type == TYPE_FOLD and bytes(row[o.offset + OPT_HLEN + FOLD_META_LEN:][: len(c.hdr)]) == c.hdr:
            start = o.offset + OPT_HLEN + FOLD_META_LEN
            return start, start + len(c.hdr)
    return None


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


def _fold_level(info) -> bytes | None:
    if info.carried is None:
        return None
    c = info.carried[0]
    return bytes((c.flags, c.l2, c.l3, c.tun)) + c.hdr


_SUPER_ARGS: list = [None, None, None]  # the last layout and packet super_write saw, their rx_super arguments


def super_write(info, hdr: bytes, payloads: tuple, payload_len: int, mss: int, segments: int) -> TapWrite | None:
    """rxpipe._super_write with the header and vnet work in C (``_native.rx_super``)."""
    lay, pkt = info.layout, info.pkt
    cache = _SUPER_ARGS
    if cache[0] is lay and cache[1] is pkt:  # a flow's runs share them (fold: not the carried headers)
        args, kind = cache[2]
    else:
        udp = tuple((u, has, *lay.ip_before(u)) for u, has in lay.udp)
        kind = Kind.FOLD if info.carried is not None else (Kind.HINT if pkt.gro_hint is not None else Kind.PLAIN)
        args = (lay.ip4, lay.ip6, udp, lay.tcp_ip, lay.tcp_ip_v6, lay.tcp)
        cache[:] = [lay, pkt, (args, kind)]
    r = _native.rx_super(hdr, payload_len, mss, *args, _fold_level(info))
    if r is None:
        return None
    vnet, nested, h = r
    return TapWrite(vnet, (nested, h, *payloads) if nested else (h, *payloads), kind, segments)


def finish(run: Run) -> TapWrite | None:
    """rxpipe.finish for the native engine."""
    return super_write(run.info, run.hdr, run.payloads, run.payload_len, run.mss, run.segments)


def _same_headers(ra, rb, G: int, lay: Layout, lengths: bool = True) -> bool:
    """rxpipe._same_headers in C: ``rx_same`` on the keep mask (full rows', or the last row's)."""
    return _native.rx_same(rb, ra, _layout_args(G, lay)[6 if lengths else 7], ())


def merge(a: Run, b: Run) -> Run | None:
    """:func:`udpnest.rxpipe.merge` with the header comparison in C (no numpy)."""
    return _merge(a, b, _same_headers)


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
        self.folds: list[bytes] = []  # templates of validated FOLD headers (fold_template), newest first
        self.last: tuple | None = None  # (row_len, first row's headers, keep mask, csum offsets, frame info)
        self.prev: tuple | None = None  # the entry self.last replaced (a flow's full and short single reads)

    def receive(self, buf, n: int, gso: int) -> RxResult:
        mv = memoryview(buf)[:n]
        count, row_len, last_len = rows_of(n, gso)
        if count > 1:
            run = self._coalesce(mv, count, row_len, last_len)
            if run.__class__ is Run:
                return RxResult([], [], [], run, _COALESCED)
            if run in SPLIT_OUTCOMES:
                res = self._split(mv, count, row_len, last_len, run)
                if res is not None:
                    return res
            return self._rows(mv, count, row_len, last_len, run)
        res = RxResult([], [], [])
        outcome = Outcome.SINGLE
        if not gso and n > self.max_datagram:
            w = self._whole(mv, n)
            if w.__class__ is TapWrite:
                res.writes.append(w)
                return res._replace(outcome=Outcome.WHOLE)
            outcome = w
        return self._rows(mv, count, row_len, last_len, outcome, res)

    def _split(self, mv: memoryview, count: int, row_len: int, last_len: int, outcome: Outcome) -> RxResult | None:
        """rxpipe.receive's split of a read that did not coalesce whole (rxpipe.split_plan), or None."""

        def co(start: int, rows: int, ll: int) -> Run | Outcome:
            s = start * row_len
            return self._coalesce(mv[s : s + (rows - 1) * row_len + ll], rows, row_len, ll)

        plan = split_plan(count, row_len, last_len, co)
        if plan is None:
            return None
        res = RxResult([], [], [])

        def singles(start: int, rows: int) -> list[TapWrite]:
            s = start * row_len
            end = start + rows
            ll = last_len if end == count else row_len
            tmp = RxResult([], res.drops, res.control)
            return self._rows(mv[s : s + (rows - 1) * row_len + ll], rows, row_len, ll, outcome, tmp).writes

        return res._replace(pieces=tuple(split_pieces(plan, singles, None)), outcome=outcome, split=True)

    def _rows(self, mv: memoryview, count: int, row_len: int, last_len: int, outcome: Outcome,
              res: RxResult | None = None) -> RxResult:
        """The one-datagram path for every row of a read (rx_rows; deferred rows through the reference)."""
        if res is None:
            res = RxResult([], [], [])
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
                row = mv[start:end]
                before, control = len(writes), len(res.control)
                _single(row, self.opt_class, res, self.vni)
                if len(res.control) == control:  # echo packets are the control plane's, not deferred data
                    self.counts["native_deferred"] += 1
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
        tpl = fold_template(row, pkt, carried, self.opt_class)
        if tpl is None:
            return
        if len(self.folds) >= FOLD_TEMPLATES_MAX:
            self.folds.pop()
            self.counts["fold_templates_evicted"] += 1
        self.folds.insert(0, tpl)

    def _info(self, mv: memoryview, row_len: int):
        """_frame_info of the first row; reused from the previous read (or the one before it: a flow's
        full-sized and short one-datagram reads alternate) when its first row has the same
        length and the same bytes outside the per-segment fields, the TCP fields the parse does not read
        and (fold) the carried IPv4 ID, and its nested UDP checksums are zero or not alike: the parse reads
        nothing else, so it would give the same result (with that row's own carried headers)."""
        last = self.last
        hit = last is not None and last[0] == row_len and _native.rx_same(mv, last[1], last[2], last[3])
        if not hit:
            prev = self.prev
            if prev is not None and prev[0] == row_len and _native.rx_same(mv, prev[1], prev[2], prev[3]):
                self.last, self.prev, last, hit = prev, last, prev, True
        if hit:
            info, carried = last[4], last[5]
            if carried is not None:  # fold: the carried headers are this row's (their IPv4 ID is per packet)
                off, end = carried
                if mv[off:end] != info.carried[0].hdr:
                    info = info._replace(carried=[info.carried[0]._replace(hdr=bytes(mv[off:end]))])
                    self.last = (*last[:4], info, carried, last[6])
            return info
        info = _frame_info(mv[:row_len], self.opt_class, self.ports, self.vni)
        if info is not None and info.G + info.layout.hdr_len <= row_len:
            G, lay = info.G, info.layout
            offs = tuple(G + u + 6 for u, _ in lay.udp)
            # the bytes the parse reads must match; the per-segment fields (_masks) and the TCP fields after
            # the ports but for the data offset (sequence, ACK, flags, window, checksum, options: timestamps
            # change every few reads) are not read by it
            keep, carried = bytearray(_layout_args(G, lay)[6]), None
            t = G + lay.tcp
            keep[t + 4 : G + lay.hdr_len] = bytes(G + lay.hdr_len - t - 4)
            keep[t + 12] = 1
            if info.carried is not None:
                # the carried nested IPv4 header's ID differs from packet to packet and nothing in the FOLD
                # validation (decode_folds) reads it: leave it out of the comparison (as rx_match does) and
                # take the carried headers from each read's own row
                carried = _carried_span(mv, info)
                if carried is None:  # pragma: no cover - decode_folds found the option
                    return info
                c = info.carried[0]
                if not c.flags & F_V6:
                    keep[carried[0] + c.l2 + 4 : carried[0] + c.l2 + 6] = b"\0\0"
            self.prev = self.last
            self.last = (row_len, bytes(mv[: G + lay.hdr_len]), bytes(keep), offs, info, carried,
                         (G, lay.hdr_len, *_layout_args(G, lay), self.verify))
        return info

    def _whole(self, mv: memoryview, n: int) -> TapWrite | Outcome:
        """rxpipe._whole with its checks in C."""
        try:
            info = self._info(mv, n)
        except ParseError:
            return Outcome.PARSE
        if info is None:
            return Outcome.INELIGIBLE
        G, lay = info.G, info.layout
        H = lay.hdr_len
        gso_size = aligned_mss(self.max_datagram, G + H)
        if gso_size < 64 or n - G - H <= gso_size:
            return Outcome.SHORT
        code = _native.rx_coalesce(mv, 1, n, n, G, H, *_layout_args(G, lay), self.verify)
        if code:
            return OUTCOMES[code]
        if info.carried is not None and not info.carried[0].flags & F_CSUM_ZEROED:
            return Outcome.FOLD_CSUM
        w = super_write(info, bytes(mv[G : G + H]), (mv[G + H :],), n - G - H, gso_size,
                        -(-(n - G - H) // gso_size))
        return Outcome.TOO_LARGE if w is None else w

    def single_run(self, buf, n: int) -> Run | None:
        """rxpipe.single_run with the checks in C (``rx_coalesce`` with count 0)."""
        mv = memoryview(buf)[:n]
        try:
            info = self._info(mv, n)
        except ParseError:
            return None
        if info is None:
            return None
        G, lay = info.G, info.layout
        H = lay.hdr_len
        if n <= G + H:
            return None
        last = self.last
        args = last[6] if last is not None and last[4] is info else (G, H, *_layout_args(G, lay), self.verify)
        r = _native.rx_coalesce(mv, 0, n, n, *args)
        if r.__class__ is int:
            return None
        if info.carried is not None and not info.carried[0].flags & F_CSUM_ZEROED:
            return None
        payload, flags, seq, ids, _ = r
        mss = n - G - H
        return Run(info, bytes(mv[G : G + H]), (payload,), mss, mss, 1, seq, (seq + mss) & 0xFFFFFFFF, ids, ids,
                   bytes(mv[: G + H]), not flags & (PSH | FIN))

    def _coalesce(self, mv: memoryview, count: int, row_len: int, last_len: int) -> Run | Outcome:
        try:
            info = self._info(mv, row_len)
        except ParseError:
            return Outcome.PARSE
        if info is None:
            return Outcome.INELIGIBLE
        G, lay = info.G, info.layout
        H = lay.hdr_len
        mss = row_len - G - H
        if too_short(count, row_len, last_len, G, H):
            return Outcome.SHORT
        last = self.last
        args = last[6] if last is not None and last[4] is info else (G, H, *_layout_args(G, lay), self.verify)
        r = _native.rx_coalesce(mv, count, row_len, last_len, *args)
        if r.__class__ is int:
            return OUTCOMES[r]
        if info.carried is not None and not info.carried[0].flags & F_CSUM_ZEROED:
            return Outcome.FOLD_CSUM
        payload, last_flags, seq0, first_ids, last_ids = r
        t = G + lay.tcp + 13
        hdr = bytes(mv[G:t]) + bytes((last_flags,)) + bytes(mv[t + 1 : G + H])
        last_payload = last_len - G - H
        total = (count - 1) * mss + last_payload
        return Run(info, bytes(hdr), (payload,), total, mss, count, seq0, (seq0 + total) & 0xFFFFFFFF, first_ids,
                   last_ids, bytes(mv[: G + H]), last_payload == mss and not last_flags & (PSH | FIN))
