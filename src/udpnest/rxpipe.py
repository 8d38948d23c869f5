"""The receive pipeline: turn one UDP_GRO read (many Geneve datagrams) into TAP writes, coalescing TCP.

(Formerly ``udpnest.gro``, which stays importable as an alias of this module.)

A UDP_GRO socket hands over ``count`` datagrams of ``gso_size`` bytes (the last may be shorter) in one
buffer.  When they are consecutive segments of one inner TCP flow they become ONE super-packet written
to the TAP with a GSO virtio_net_hdr, so the workload's kernel receives ~64 KB at a time.  The checks
follow the kernel's ``tcp_gro_receive`` rules and are done column-wise with numpy over all rows:

* identical Geneve header and options (``geneve_hdr_match``), identical headers apart from the fields
  that differ per segment (IP length/ID/checksum, UDP length/checksum, TCP sequence/flags/checksum);
* contiguous sequence numbers, all segments full-sized except the last;
* no SYN/RST/URG/CWR; PSH and FIN only on the last segment;
* IPv4 IDs: the innermost IPv4 header's (the one carrying TCP) incrementing, or fixed with DF, as the
  kernel's ``inet_gro_flush`` requires (a fixed ID is only "atomic" with DF); a nested (tunnel) IPv4
  header's incrementing or fixed, with or without DF: Linux's geneve GRO with the GRO hint merges
  byte-identical nested headers (``geneve_hdr_match`` memcmp's them), and its GSO-partial sender emits
  exactly that, a fixed nested ID without DF; older inet GRO never checked non-innermost IDs at all;
* every TCP checksum, IPv4 header checksum and nested UDP checksum valid (the kernel will not verify a
  NEEDS_CSUM super-packet, so we do).

Demultiplexing follows the kernel's geneve driver: a datagram is accepted only with Geneve version 0,
the configured VNI (``vni``), known critical options of the configured option class only, and the
Ethernet protocol (0x6558, or FOLD options whose innermost level says what follows); each refusal is a
drop reason.  Why a read was not coalesced is an :class:`Outcome` (one counter each, ``coalesce_*``).

A read that does not coalesce whole because some row breaks the run is split (:func:`split_plan`): each
maximal run of 2+ rows becomes its own super-packet, the other rows take the one-datagram path, in order.
Anything else goes through the one-datagram-at-a-time path, written with a zero vnet header so the
workload's kernel verifies every checksum itself.  Pure: no I/O; the endpoint does the reads/writes.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from .fold import (
    DEFAULT_PORTS,
    F_CSUM_ZEROED,
    F_V6,
    Encap,
    decode_folds,
    find_levels,
    restore_headers,
    unfold,
)
from .gso import Layout, aligned_mss, tcp_layout
from .wire import csum
from .wire.errors import ParseError, Reason
from .wire.geneve import parse_geneve
from .wire.ipv4 import IP_DF, PROTO_TCP, parse_ipv4
from .wire.ipv6 import IPV6_HLEN, parse_ipv6
from .wire.options import DEFAULT_OPT_CLASS, GenevePacket, parse_packet
from .wire.tcp import ACK, CWR, FIN, PSH, RST, SYN, URG
from .wire.udp import UDP_HLEN
from .wire.vnet import (
    F_NEEDS_CSUM,
    F_UDP_TUNNEL_CSUM,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_TUNNEL_IPV4,
    GSO_UDP_TUNNEL_IPV6,
    ZERO_VNET_HDR,
    VnetHdr,
)

GSO_MAX_FRAME = 65535  # legacy GSO/GRO limit on an IP packet
ETH_P_TEB = 0x6558  # Geneve protocol: Ethernet


class Kind(enum.Enum):
    PLAIN = "plain"
    HINT = "hint"
    FOLD = "fold"
    ECHO = "echo"


class TapWrite(NamedTuple):
    vnet: bytes  # 24-byte virtio_net_hdr
    parts: tuple  # the frame, as buffers to writev
    kind: Kind
    segments: int  # how many wire datagrams this frame stands for


class Outcome(enum.Enum):
    """What became of one read, as wireguard-go's coalesceResult: one ``coalesce_<value>`` counter each."""

    COALESCED = "coalesced"  # a multi-datagram read became one super-packet
    WHOLE = "whole"  # one datagram larger than the path MTU, written as the super-packet it is
    SINGLE = "single"  # one datagram (ACKs, small frames): nothing to coalesce
    INELIGIBLE = "ineligible"  # not a TCP flow the TAP's GSO can carry (echo, OAM, not TCP, 2+ nested levels)
    PARSE = "parse"  # the first datagram's headers did not parse (its drop reason is counted too)
    LENGTHS = "lengths"  # IP/UDP length fields that do not describe the datagram
    SHORT = "short"  # a segment without payload, or a last one longer than the others
    HDR_MISMATCH = "hdr_mismatch"  # Geneve header/options or headers outside per-segment fields differ
    FLAGS = "flags"  # SYN/RST/URG/CWR, no ACK, or PSH/FIN before the last segment
    SEQ = "seq"  # sequence numbers not contiguous
    IDS = "ids"  # IPv4 IDs neither incrementing nor fixed as allowed
    CSUM = "csum"  # a TCP, IPv4 header or nested UDP checksum is wrong
    FOLD_CSUM = "fold_csum"  # a FOLD level whose checksums were not zeroed by the sender
    TOO_LARGE = "too_large"  # the super-packet would exceed 64 KB
    SINGLE_MERGED = "single_merged"  # one TCP segment (a one-datagram read) merged with the read before/after it
    SPLIT = "split"  # a read that did not coalesce whole, split into runs (counted besides its first break's outcome)


class RxResult(NamedTuple):
    writes: list[TapWrite]
    drops: list[tuple[Reason, int]]  # reason, datagram count
    control: list[tuple[GenevePacket, memoryview]]  # echo request/reply packets for the endpoint
    run: Run | None = None  # with hold=True: the coalesced super-packet, not yet in ``writes``
    outcome: Outcome = Outcome.SINGLE
    # a split read (:func:`split_plan`): with hold=True its pieces in order, each a Run (not finished) or a
    # TapWrite (``writes`` and ``run`` empty); without hold, ``writes`` holds them all in order
    pieces: tuple = ()
    split: bool = False


class Run(NamedTuple):
    """A coalesced TCP super-packet that the next read may continue (see :func:`merge`).

    A sender's 64 KB super-packet is often more than one UDP GRO aggregate (65535 bytes with every
    datagram's headers), so it arrives as two reads; merging them gives the workload one super-packet
    instead of two, as the sender's kernel had it.
    """

    info: _Frame
    hdr: bytes  # frame headers of the first segment, TCP flags of the last
    payloads: tuple  # payload buffers, in order
    payload_len: int
    mss: int
    segments: int
    seq0: int
    next_seq: int
    first_ids: tuple[int, ...]  # IPv4 ID of the first / last segment, per IPv4 header of the layout
    last_ids: tuple[int, ...]
    ref: bytes  # Geneve header + headers of the first (full-sized) datagram
    extendable: bool  # the last segment was full-sized and carried no PSH/FIN


_BAD_FLAGS = SYN | RST | URG | CWR


def rows_of(n: int, gso_size: int) -> tuple[int, int, int]:
    """(count, row_len, last_len) of an ``n``-byte read with the UDP_GRO ``gso_size`` (0: one datagram)."""
    if gso_size <= 0 or n <= gso_size:
        return 1, n, n
    full, rem = divmod(n, gso_size)
    return full + (1 if rem else 0), gso_size, rem or gso_size


def receive(buf, n: int, gso_size: int, *, opt_class: int | None = DEFAULT_OPT_CLASS,
            ports: Mapping[int, Encap] = DEFAULT_PORTS, verify_csum: bool = True,
            max_datagram: int = 1472, hold: bool = False, vni: int | None = None) -> RxResult:
    """Process one read of ``n`` bytes from a UDP_GRO socket.

    ``gso_size`` is the UDP_GRO cmsg value (0 when absent).  ``max_datagram`` is the largest datagram the
    underlay MTU allows: a larger one without a cmsg is a whole super-packet that crossed a veth uncut
    (the kernel reports gso_size only for UDP_L4 GSO), re-cut by the TAP at the MSS a sender would use.
    ``hold``: return a coalesced super-packet as ``run`` (not in ``writes``) so the caller can
    :func:`merge` it with the next read's before writing it with :func:`finish`.
    ``vni``: the configured VNI (None accepts any; the endpoint always passes its own).
    ``opt_class``: udpnest's option class (None: udpnest's options are unknown, as for a legacy peer).
    """
    mv = memoryview(buf)[:n]
    res = RxResult([], [], [])
    count, row_len, last_len = rows_of(n, gso_size)
    outcome = Outcome.SINGLE
    if not gso_size and n > max_datagram:
        try:
            w = _whole(mv, max_datagram, opt_class, ports, vni, verify_csum)
        except ParseError:
            w = Outcome.PARSE
        if isinstance(w, TapWrite):
            res.writes.append(w)
            return res._replace(outcome=Outcome.WHOLE)
        outcome = w
    elif count > 1:
        try:
            run = _coalesce(mv, count, row_len, last_len, opt_class, ports, verify_csum, vni)
        except ParseError:
            run = Outcome.PARSE
        if isinstance(run, Run):
            if hold:
                return res._replace(run=run, outcome=Outcome.COALESCED)
            w = finish(run)
            if w is not None:
                res.writes.append(w)
                return res._replace(outcome=Outcome.COALESCED)
            run = Outcome.TOO_LARGE
        outcome = run
        if outcome in SPLIT_OUTCOMES:

            def co(start: int, rows: int, ll: int) -> Run | Outcome:
                s = start * row_len
                try:
                    return _coalesce(mv[s : s + (rows - 1) * row_len + ll], rows, row_len, ll, opt_class, ports,
                                     verify_csum, vni)
                except ParseError:
                    return Outcome.PARSE

            plan = split_plan(count, row_len, last_len, co)
            if plan is not None:

                def singles(start: int, rows: int) -> list[TapWrite]:
                    tmp = RxResult([], res.drops, res.control)
                    for i in range(start, start + rows):
                        s = i * row_len
                        _single(mv[s : s + (last_len if i == count - 1 else row_len)], opt_class, tmp, vni)
                    return tmp.writes

                pieces = split_pieces(plan, singles, None if hold else finish)
                if hold:
                    return res._replace(pieces=tuple(pieces), outcome=outcome, split=True)
                res.writes.extend(pieces)
                return res._replace(outcome=outcome, split=True)
    for i in range(count):
        start = i * row_len
        _single(mv[start : start + (last_len if i == count - 1 else row_len)], opt_class, res, vni)
    return res._replace(outcome=outcome)


#: whole-read outcomes after which a read is split (:func:`split_plan`): a row breaks the run; the others
#: (ineligible, parse, fold_csum: the first row's frame; too_large) leave the read to the one-datagram way
SPLIT_OUTCOMES = frozenset({Outcome.LENGTHS, Outcome.SHORT, Outcome.HDR_MISMATCH, Outcome.FLAGS, Outcome.SEQ,
                            Outcome.IDS, Outcome.CSUM})


def split_plan(count: int, row_len: int, last_len: int, coalesce) -> list[tuple[int, int, Run | None]] | None:
    """A read that did not coalesce whole, cut into pieces at each row that breaks the run: in order,
    ``(first row, rows, Run)`` for each maximal run of 2+ rows and ``(first row, rows, None)`` for rows
    that go the one-datagram way; None when no run of 2+ rows results (the read goes as before).

    ``coalesce(first row, rows, last_len)`` is the engine's coalesce of those rows as one read (a Run or
    the Outcome why not).  Whether rows ``i .. i+m-1`` coalesce is monotone in ``m`` (each rule compares a
    row with the first or its predecessor; the last row may carry PSH/FIN), so from row ``i`` the longest
    run is found by trying 2, 4, 8, ... rows and bisecting after the first failure: O(k log k) row checks
    for a run of k rows (whole-read failures at row 0 leave ``count`` rows known not to coalesce).  A row
    that does not start a run of 2 (bad checksum, not TCP, ...) goes the one-datagram way; the scan goes on
    with the next row.  Both engines use this with their own ``coalesce`` (which agree), so they cut alike.
    """
    plan: list[tuple[int, int, Run | None]] = []
    runs = 0
    i = 0
    while i < count:
        n = count - i
        lo, hi, best = 1, (n if i == 0 else n + 1), None  # lo rows do coalesce (1: trivially), hi do not
        m = 2
        while m < hi:
            r = coalesce(i, m, last_len if i + m == count else row_len)
            if r.__class__ is not Run:
                hi = m
                break
            lo, best = m, r
            m = min(2 * m, hi - 1) if m < hi - 1 else hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            r = coalesce(i, mid, last_len if i + mid == count else row_len)
            if r.__class__ is Run:
                lo, best = mid, r
            else:
                hi = mid
        if best is None:
            if plan and plan[-1][2] is None:
                plan[-1] = (plan[-1][0], plan[-1][1] + 1, None)
            else:
                plan.append((i, 1, None))
            i += 1
        else:
            plan.append((i, lo, best))
            runs += 1
            i += lo
    return plan if runs else None


def split_pieces(plan, singles, finish_run) -> list:
    """The pieces of a split read in order: each Run as it is (``finish_run`` None: held by the caller) or
    as its TapWrite (``finish_run``; a run that cannot be one super-packet goes the one-datagram way), the
    other rows as ``singles(first row, rows)`` returns them (the engine's one-datagram path)."""
    out: list = []
    for start, rows, run in plan:
        if run is None:
            out.extend(singles(start, rows))
        elif finish_run is None:
            out.append(run)
        else:
            w = finish_run(run)
            out.extend(singles(start, rows) if w is None else (w,))
    return out


def _hdr_csums_ok(mv: memoryview, count: int, row_len: int, last_len: int, G: int, lay: Layout) -> bool:
    """IPv4 header checksums and non-zero nested UDP checksums of every row (the TCP ones are checked).

    A valid IPv4 header sums to 0xFFFF.  For a nested UDP checksum the TCP segment behind it, whose
    checksum is valid, sums to minus its pseudo-header, so only the header bytes between the nested UDP
    header and the TCP header need summing (the same identity the TX side uses, gso.py).
    """
    for off in lay.ip4:
        hl = (mv[G + off] & 0xF) * 4
        hs = np.ndarray((count, hl // 2), dtype=">u2", buffer=mv, offset=G + off, strides=(row_len, 2))
        if (hs.sum(axis=1, dtype=np.uint64) % np.uint64(0xFFFF)).any():
            return False
    for u, has in lay.udp:
        if not has:
            continue
        nip, nv6 = lay.ip_before(u)
        src, dst = csum.ip_addresses(mv, G + nip, nv6)
        t = lay.tcp
        tsrc, tdst = csum.ip_addresses(mv, G + lay.tcp_ip, lay.tcp_ip_v6)
        for start, rows, length in ((0, count - 1, row_len), ((count - 1) * row_len, 1, last_len)):
            if rows == 0:
                continue
            region = np.ndarray((rows, (t - u) // 2), dtype=">u2", buffer=mv, offset=start + G + u,
                                strides=(row_len, 2))
            p_udp = csum.pseudo_sum(src, dst, 17, length - G - u)
            p_tcp = csum.pseudo_sum(tsrc, tdst, PROTO_TCP, length - G - t)
            total = region.sum(axis=1, dtype=np.uint64) + np.uint64(0xFFFF - p_tcp + p_udp)
            if (total % np.uint64(0xFFFF)).any():
                return False
    return True


def _check_l3(frame) -> None:
    """The frame's first IP header must fit the frame: a cut or padded frame is refused here rather than
    handed to the TAP (where the kernel would drop it without a trace in our counters)."""
    if len(frame) < 14:
        raise ParseError(Reason.TRUNCATED_ETH, f"frame of {len(frame)} bytes")
    et = frame[12] << 8 | frame[13]
    if et == 0x0800:
        parse_ipv4(frame, 14)
    elif et == 0x86DD:
        parse_ipv6(frame, 14)


def _single(dg: memoryview, opt_class: int | None, res: RxResult, vni: int | None = None) -> None:
    try:
        pkt, carried = _geneve_info(dg, opt_class, vni)
        if pkt.echo_request is not None or pkt.echo_reply is not None:
            res.control.append((pkt, dg))
            return
        if pkt.hdr.oam:
            res.drops.append((Reason.OAM, 1))
            return
        if carried is None and pkt.hdr.proto != ETH_P_TEB:
            raise ParseError(Reason.BAD_GENEVE_PROTOCOL, f"geneve protocol 0x{pkt.hdr.proto:04x}")
        u = unfold(dg, packet=pkt, carried=carried, udp_csum="compute")
        _check_l3(u.inner)
    except ParseError as e:
        res.drops.append((e.reason, 1))
        return
    kind = Kind.FOLD if u.levels else (Kind.HINT if pkt.gro_hint is not None else Kind.PLAIN)
    parts = (u.headers, u.inner) if u.headers else (u.inner,)
    res.writes.append(TapWrite(ZERO_VNET_HDR, parts, kind, 1))


class _Frame(NamedTuple):
    pkt: GenevePacket
    carried: list | None  # decoded FOLD levels (fold mode) or None
    layout: Layout  # of the frame after the Geneve header (innermost frame in fold mode)
    G: int  # Geneve header + options length


_HDR_CACHE: dict[tuple[bytes, int | None], tuple] = {}
_HDR_CACHE_MAX = 256


def _geneve_info(row: memoryview, opt_class: int | None, vni: int | None = None) -> tuple:
    """(packet, decoded FOLD levels or None) for the Geneve header + options at the start of ``row``.

    The fixed header is checked first, as the kernel's geneve driver does: version 0 (and the options
    fit), then the VNI (``WRONG_VNI``), then the options.  Consecutive reads of a flow carry
    byte-identical Geneve headers, so the option parse and the FOLD validation are cached by those bytes
    (identical bytes give an identical result; a ParseError is not cached).
    """
    hdr = parse_geneve(row, 0)  # truncated_geneve / bad_geneve_version
    if vni is not None and hdr.vni != vni:
        raise ParseError(Reason.WRONG_VNI, f"vni {hdr.vni}, configured {vni}")
    key = (bytes(row[: hdr.hdr_len]), opt_class)
    hit = _HDR_CACHE.get(key)
    if hit is not None:
        return hit
    pkt = parse_packet(row, opt_class=opt_class)
    carried = decode_folds(pkt) if pkt.folds else None
    if len(_HDR_CACHE) >= _HDR_CACHE_MAX:
        _HDR_CACHE.clear()
    _HDR_CACHE[key] = (pkt, carried)
    return pkt, carried


def _frame_info(row: memoryview, opt_class: int | None, ports, vni: int | None = None) -> _Frame | None:
    pkt, carried = _geneve_info(row, opt_class, vni)
    if pkt.echo_request is not None or pkt.echo_reply is not None or pkt.hdr.oam:
        return None
    G = pkt.hdr.hdr_len
    frame = row[G:]
    if carried is not None:
        if len(carried) > 1 or carried[0].next_proto != ETH_P_TEB:
            return None  # the TAP's tunnel GSO describes exactly one nested UDP level carrying Ethernet
        try:
            return _Frame(pkt, carried, tcp_layout(frame), G)
        except ParseError:
            return None  # not TCP: the one-datagram path says what it is
    if pkt.hdr.proto != ETH_P_TEB:
        return None
    try:
        levels = find_levels(frame, ports=ports, max_levels=2)
        if len(levels) > 1:
            return None
        udp = (levels[0].udp_off,) if levels else ()
        return _Frame(pkt, None, tcp_layout(frame, udp), G)
    except ParseError:
        return None


def _mask(layout: Layout, H: int, lengths: bool) -> np.ndarray:
    """Header bytes that must be equal in every row (False where a per-segment field lives)."""
    keep = np.ones(H, dtype=bool)
    for off in layout.ip4:
        keep[off + 4 : off + 6] = keep[off + 10 : off + 12] = False
        if not lengths:
            keep[off + 2 : off + 4] = False
    for off in layout.ip6:
        if not lengths:
            keep[off + 4 : off + 6] = False
    for off, _ in layout.udp:
        keep[off + 6 : off + 8] = False
        if not lengths:
            keep[off + 4 : off + 6] = False
    t = layout.tcp
    keep[t + 4 : t + 8] = keep[t + 13] = keep[t + 16 : t + 18] = False
    return keep


@functools.lru_cache(maxsize=64)
def _masks(G: int, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    """(full rows, last row) masks of the bytes that must equal the first row's."""
    geneve = np.ones(G, dtype=bool)
    return (np.concatenate([geneve, _mask(layout, layout.hdr_len, lengths=True)]),
            np.concatenate([geneve, _mask(layout, layout.hdr_len, lengths=False)]))


def _col(mv: memoryview, dtype: str, off: int, count: int, stride: int) -> np.ndarray:
    """A view of one header field in each of ``count`` rows ``stride`` bytes apart (no copy)."""
    return np.ndarray((count,), dtype=dtype, buffer=mv, offset=off, strides=(stride,))


def _lengths_fit(row, G: int, lay: Layout, length: int) -> bool:
    """Do the IPv4/IPv6/UDP length fields of the frame after the Geneve header describe exactly a
    ``length``-byte datagram (one row; never trusted, always checked)?"""
    for off in lay.ip4:
        if int.from_bytes(row[G + off + 2 : G + off + 4], "big") != length - G - off:
            return False
    for off in lay.ip6:
        if int.from_bytes(row[G + off + 4 : G + off + 6], "big") != length - G - off - IPV6_HLEN:
            return False
    for off, _ in lay.udp:
        if int.from_bytes(row[G + off + 4 : G + off + 6], "big") != length - G - off:
            return False
    return True


def _fixed_id_ok(lay: Layout, off: int, df: bool) -> bool:
    """May the IPv4 header at ``off`` keep one ID across the segments?  The innermost one (carrying TCP)
    only with DF (the kernel's ``is_atomic``); a nested tunnel header always (module docstring)."""
    return df or off != lay.tcp_ip


def too_short(count: int, row_len: int, last_len: int, G: int, H: int) -> bool:
    """A read whose rows cannot be segments of one super-packet: no payload in a full row, or a last row
    shorter than the headers (or only headers while more than one row)."""
    return row_len - G - H <= 0 or last_len < G + H or (last_len == G + H and count > 1)


def _coalesce(mv: memoryview, count: int, row_len: int, last_len: int, opt_class: int | None, ports,
              verify_csum: bool, vni: int | None = None) -> Run | Outcome:
    info = _frame_info(mv[:row_len], opt_class, ports, vni)
    if info is None:
        return Outcome.INELIGIBLE
    G, lay = info.G, info.layout
    H = lay.hdr_len
    mss = row_len - G - H
    if too_short(count, row_len, last_len, G, H):
        return Outcome.SHORT
    all_rows = np.frombuffer(mv, dtype=np.uint8, count=(count - 1) * row_len).reshape(count - 1, row_len)
    last = np.frombuffer(mv, dtype=np.uint8, offset=(count - 1) * row_len, count=last_len).reshape(1, last_len)
    row0 = all_rows[0]
    if not (_lengths_fit(row0, G, lay, row_len) and _lengths_fit(last[0], G, lay, last_len)):
        return Outcome.LENGTHS
    # equal Geneve header + options + header bytes outside the per-segment fields
    keep_full, keep_last = _masks(G, lay)
    ref = row0[: G + H]
    if ((all_rows[:, : G + H] != ref) & keep_full).any() or ((last[:, : G + H] != ref) & keep_last).any():
        return Outcome.HDR_MISMATCH
    last_payload = last_len - G - H
    # TCP flags, sequence numbers, IPv4 IDs: one strided column view per field, all rows incl. the last
    t = G + lay.tcp
    flags = _col(mv, "u1", t + 13, count, row_len)
    base = int(flags[0])
    if base & (_BAD_FLAGS | PSH | FIN) or not base & ACK:
        return Outcome.FLAGS
    if (flags[:-1] != base).any() or (int(flags[-1]) & ~(PSH | FIN)) != base:
        return Outcome.FLAGS
    idx = np.arange(count, dtype=np.uint64)
    seqs = _col(mv, ">u4", t + 4, count, row_len).astype(np.uint64)
    if ((seqs - seqs[0]) & np.uint64(0xFFFFFFFF) != idx * np.uint64(mss)).any():
        return Outcome.SEQ
    for off in lay.ip4:
        ids = _col(mv, ">u2", G + off + 4, count, row_len).astype(np.uint64)
        step = (ids - ids[0]) & np.uint64(0xFFFF)
        fixed_ok = _fixed_id_ok(lay, off, bool(row0[G + off + 6] & (IP_DF >> 8))) and not step.any()
        if not fixed_ok and (step != idx & np.uint64(0xFFFF)).any():
            return Outcome.IDS
    if verify_csum and not (_tcp_csums_ok(mv, count, row_len, last_len, G, lay)
                            and _hdr_csums_ok(mv, count, row_len, last_len, G, lay)):
        return Outcome.CSUM
    if info.carried is not None and not info.carried[0].flags & F_CSUM_ZEROED:
        return Outcome.FOLD_CSUM
    # build the super-packet
    payload = all_rows[:, G + H :].tobytes() + last[0, G + H :].tobytes()
    total_payload = (count - 1) * mss + last_payload
    hdr = bytearray(row0[G : G + H])
    hdr[lay.tcp + 13] = int(flags[-1])  # PSH/FIN of the last segment
    ids = [(int(row0[G + off + 4]) << 8 | int(row0[G + off + 5]),
            int(last[0, G + off + 4]) << 8 | int(last[0, G + off + 5])) for off in lay.ip4]
    return Run(info, bytes(hdr), (payload,), total_payload, mss, count, int(seqs[0]),
               (int(seqs[0]) + total_payload) & 0xFFFFFFFF, tuple(i[0] for i in ids), tuple(i[1] for i in ids),
               bytes(ref), last_payload == mss and not int(flags[-1]) & (PSH | FIN))


def single_run(mv: memoryview, opt_class: int | None, ports, verify_csum: bool, vni: int | None = None) -> Run | None:
    """A one-datagram read as a 1-segment :class:`Run` (segment size: its payload) that :func:`merge` can
    join with the reads before and after it, or None when it is not a TCP segment with payload that a
    row of a multi-datagram read could be: frame info, lengths, ACK without SYN/RST/URG/CWR, every
    checksum valid (``verify_csum``), the FOLD csum-zeroed rule.  PSH/FIN are allowed: such a segment
    can only end a run (not extendable).  Counts nothing and raises nothing: a None read goes the
    one-datagram way (:func:`receive`), which says what it is."""
    try:
        info = _frame_info(mv, opt_class, ports, vni)
    except ParseError:
        return None
    if info is None:
        return None
    G, lay = info.G, info.layout
    H = lay.hdr_len
    n = len(mv)
    mss = n - G - H
    if mss <= 0 or not _lengths_fit(mv, G, lay, n):
        return None
    t = G + lay.tcp
    flags = mv[t + 13]
    if flags & _BAD_FLAGS or not flags & ACK:
        return None
    if verify_csum and not (_tcp_csums_ok(mv, 1, n, n, G, lay) and _hdr_csums_ok(mv, 1, n, n, G, lay)):
        return None
    if info.carried is not None and not info.carried[0].flags & F_CSUM_ZEROED:
        return None
    seq = int.from_bytes(mv[t + 4 : t + 8], "big")
    ids = tuple(mv[G + off + 4] << 8 | mv[G + off + 5] for off in lay.ip4)
    return Run(info, bytes(mv[G : G + H]), (bytes(mv[G + H :]),), mss, mss, 1, seq, (seq + mss) & 0xFFFFFFFF, ids,
               ids, bytes(mv[: G + H]), not flags & (PSH | FIN))


def finish(run: Run) -> TapWrite | None:
    """The TAP write for a (possibly merged) run; None if it cannot be one super-packet."""
    return _super_write(run.info, run.hdr, run.payloads, run.payload_len, run.mss, run.segments)


def _same_headers(ra, rb, G: int, lay: Layout, lengths: bool = True) -> bool:
    """The two first rows equal on every byte outside the per-segment fields (the keep mask), numpy;
    ``lengths=False``: the length fields may differ too (``rb`` is a shorter last segment)."""
    keep = _masks(G, lay)[0 if lengths else 1]
    return not ((np.frombuffer(ra, dtype=np.uint8) != np.frombuffer(rb, dtype=np.uint8)) & keep).any()


def merge(a: Run, b: Run, same=_same_headers) -> Run | None:
    """``a`` continued by ``b`` (the next read) as one run, or None if ``b`` does not continue ``a``.

    The same checks as within one read: identical Geneve header and headers outside the per-segment
    fields (lengths included: both first datagrams are full-sized), the same segment size, contiguous
    sequence numbers, IPv4 IDs continuing (or fixed, as within one read: the innermost only with DF),
    ``a`` ending without PSH/FIN on a full segment; and the result must stay within the 64 KB a GSO
    super-packet may carry.  ``same(ra, rb, G, layout, lengths)`` compares the first rows' headers (the
    native engine passes its C compare, :func:`udpnest.rxnative.merge`).

    One-datagram reads (:func:`single_run`, 1-segment runs) take part as the rows of one read would: a
    held single ``a`` (segment size = its payload) continues with a ``b`` of the same segment size, and
    a 1-segment ``b`` SHORTER than ``a.mss`` is a last segment: it ends the run (not extendable), its
    length fields compared as a last row's are (not at all).
    """
    if not a.extendable or b.seq0 != a.next_seq or len(a.ref) != len(b.ref):
        return None
    short = b.mss != a.mss
    if short and not (b.segments == 1 and b.payload_len < a.mss):
        return None
    info = a.info
    G, lay = info.G, info.layout
    if b.info is not info and (b.info.G != G or b.info.layout != lay):
        return None
    ref = a.ref
    if not same(ref, b.ref, G, lay, not short):
        return None
    for off, la, fb in zip(lay.ip4, a.last_ids, b.first_ids, strict=True):
        fixed = _fixed_id_ok(lay, off, bool(ref[G + off + 6] & (IP_DF >> 8))) and la == fb
        if not fixed and fb != (la + 1) & 0xFFFF:
            return None
    payload_len = a.payload_len + b.payload_len
    if lay.hdr_len + payload_len > GSO_MAX_FRAME - 64:
        return None
    t = lay.tcp + 13  # the TCP flags of the last segment
    hdr = a.hdr if a.hdr[t] == b.hdr[t] else a.hdr[:t] + b.hdr[t : t + 1] + a.hdr[t + 1 :]
    return Run(info, hdr, a.payloads + b.payloads, payload_len, a.mss, a.segments + b.segments, a.seq0, b.next_seq,
               a.first_ids, b.last_ids, ref, b.extendable and not short)


def _tcp_csums_ok(mv: memoryview, count: int, row_len: int, last_len: int, G: int, lay: Layout) -> bool:
    """Every row's TCP checksum, vectorised.

    A segment is valid when sum(segment) + pseudo-header is 0 modulo 0xFFFF (one's complement -0).  Sums
    of little-endian 16-bit words equal the big-endian sum times 256 modulo 0xFFFF, so the check is one
    ``(256 * le_sum + pseudo) % 0xFFFF`` per row, with no folding.  For even rows the segment sum is the
    whole row (32-bit words, contiguous) minus the headers in front of TCP.
    """
    t = G + lay.tcp
    seg_full = row_len - t
    nfull = count - 1
    src, dst = csum.ip_addresses(mv, G + lay.tcp_ip, lay.tcp_ip_v6)
    pseudo = np.uint64(csum.pseudo_sum(src, dst, PROTO_TCP, seg_full))
    if row_len % 4 == 0 and t % 2 == 0:
        whole = np.frombuffer(mv, dtype="<u4", count=nfull * row_len // 4).reshape(nfull, row_len // 4)
        head = np.frombuffer(mv, dtype="<u2", count=nfull * row_len // 2).reshape(nfull, row_len // 2)[:, : t // 2]
        le = whole.sum(axis=1, dtype=np.uint64) - head.sum(axis=1, dtype=np.uint64)
        ok = not ((le * np.uint64(256) + pseudo) % np.uint64(0xFFFF)).any()
    else:
        a = np.frombuffer(mv, dtype=np.uint8, count=nfull * row_len).reshape(nfull, row_len)[:, t:]
        be = a[:, 0::2].sum(axis=1, dtype=np.uint64) * np.uint64(256) + a[:, 1::2].sum(axis=1, dtype=np.uint64)
        ok = not ((be + pseudo) % np.uint64(0xFFFF)).any()
    if not ok:
        return False
    start = nfull * row_len
    last_seg = mv[start + t : start + last_len]
    return csum.ones_sum(last_seg, csum.pseudo_sum(src, dst, PROTO_TCP, len(last_seg))) == 0xFFFF


def _whole(mv: memoryview, max_datagram: int, opt_class: int | None, ports, vni: int | None = None,
           verify_csum: bool = True) -> TapWrite | Outcome:
    """A single datagram holding a whole TCP super-packet (its length fields describe the whole datagram,
    not one MTU-sized row), or why not.

    Its checksums are checked first (:func:`_whole_csums_ok`): the NEEDS_CSUM header written for it
    makes the workload's kernel compute a fresh checksum, so corrupt bytes would otherwise arrive as good.
    A datagram failing a check goes the one-datagram way (zero vnet header: the workload's kernel
    verifies it and drops it).
    """
    info = _frame_info(mv, opt_class, ports, vni)
    if info is None:
        return Outcome.INELIGIBLE
    G, lay = info.G, info.layout
    H = lay.hdr_len
    n = len(mv)
    gso_size = aligned_mss(max_datagram, G + H)  # what a udpnest sender picks for this path MTU
    if gso_size < 64 or n - G - H <= gso_size:
        return Outcome.SHORT
    if not _lengths_fit(mv, G, lay, n):
        return Outcome.LENGTHS
    flags = mv[G + lay.tcp + 13]
    if flags & _BAD_FLAGS:
        return Outcome.FLAGS
    if verify_csum and not _whole_csums_ok(mv, n, G, lay):
        return Outcome.CSUM
    if info.carried is not None and not info.carried[0].flags & F_CSUM_ZEROED:
        return Outcome.FOLD_CSUM
    w = _super_write(info, bytes(mv[G : G + H]), (mv[G + H :],), n - G - H, gso_size,
                     -(-(n - G - H) // gso_size))
    return Outcome.TOO_LARGE if w is None else w


def _whole_csums_ok(mv: memoryview, n: int, G: int, lay: Layout) -> bool:
    """Checksums of a whole super-packet in one datagram: every IPv4 header checksum valid; the TCP
    checksum and each non-zero nested UDP checksum either valid, or exactly the pseudo-header sum a
    CHECKSUM_PARTIAL packet carries.  The second form is what a local sender's tunnel-GSO skb has when it
    crosses a veth uncut (the kernel TX path in the lab): its bytes never crossed a wire, and the kernel
    does not finish checksums that nobody will verify.  A payload corruption of a packet whose checksum
    was complete leaves the field as it was, so it is refused unless that checksum happened to equal the
    pseudo-header sum (a 2^-16 coincidence per packet, not per corruption)."""
    for off in lay.ip4:
        hl = (mv[G + off] & 0xF) * 4
        if csum.ones_sum(mv[G + off : G + off + hl]) != 0xFFFF:
            return False
    ends = [(lay.tcp, lay.tcp_ip, lay.tcp_ip_v6, PROTO_TCP, 16)]
    ends += [(u, *lay.ip_before(u), 17, 6) for u, has in lay.udp if has]
    for off, ip, v6, proto, field in ends:
        src, dst = csum.ip_addresses(mv, G + ip, v6)
        pseudo = csum.pseudo_sum(src, dst, proto, n - G - off)
        seg = mv[G + off : n]
        if csum.ones_sum(seg, pseudo) == 0xFFFF:
            continue
        if int.from_bytes(seg[field : field + 2], "big") != pseudo:
            return False
    return True


def _super_write(info: _Frame, hdr: bytes, payloads: tuple, payload_len: int, mss: int,
                 segments: int) -> TapWrite | None:
    """Headers of the coalesced super-packet: lengths for the whole, partial TCP/nested-UDP checksums."""
    lay = info.layout
    H = lay.hdr_len
    frame_len = H + payload_len
    h = bytearray(hdr)
    for off in lay.ip4:
        if frame_len - off > GSO_MAX_FRAME:
            return None
        h[off + 2 : off + 4] = (frame_len - off).to_bytes(2, "big")
        h[off + 10 : off + 12] = b"\0\0"
        h[off + 10 : off + 12] = csum.checksum(h[off : off + (h[off] & 0xF) * 4]).to_bytes(2, "big")
    for off in lay.ip6:
        if frame_len - off - IPV6_HLEN > GSO_MAX_FRAME:
            return None
        h[off + 4 : off + 6] = (frame_len - off - IPV6_HLEN).to_bytes(2, "big")
    tip, t = lay.tcp_ip, lay.tcp
    src, dst = csum.ip_addresses(h, tip, lay.tcp_ip_v6)
    h[t + 16 : t + 18] = csum.partial_csum(src, dst, PROTO_TCP, frame_len - t).to_bytes(2, "big")
    gso_type = GSO_TCPV6 if lay.tcp_ip_v6 else GSO_TCPV4
    flags = F_NEEDS_CSUM
    nested = b""
    outer_th = inner_nh = 0
    if info.carried is not None:  # fold: rebuild the nested level in front of the innermost frame
        c = info.carried[0]
        if c.l3 + UDP_HLEN + c.tun + frame_len > GSO_MAX_FRAME:
            return None
        nested, partial_off = restore_headers(info.carried, frame_len, 0, "partial")
        outer_th = c.l2 + c.l3
        gso_type |= GSO_UDP_TUNNEL_IPV6 if c.flags & F_V6 else GSO_UDP_TUNNEL_IPV4
        if partial_off is not None:
            flags |= F_UDP_TUNNEL_CSUM
    elif lay.udp:  # plain/hint: the nested level is in the frame
        u, has = lay.udp[0]
        h[u + 4 : u + 6] = (frame_len - u).to_bytes(2, "big")
        nip, v6 = lay.ip_before(u)
        if has:
            nsrc, ndst = csum.ip_addresses(h, nip, v6)
            h[u + 6 : u + 8] = csum.partial_csum(nsrc, ndst, 17, frame_len - u).to_bytes(2, "big")
            flags |= F_UDP_TUNNEL_CSUM
        outer_th = u
        gso_type |= GSO_UDP_TUNNEL_IPV6 if v6 else GSO_UDP_TUNNEL_IPV4
    shift = len(nested)
    if gso_type & (GSO_UDP_TUNNEL_IPV4 | GSO_UDP_TUNNEL_IPV6):
        inner_nh = shift + tip
    vnet = VnetHdr(flags=flags, gso_type=gso_type, hdr_len=shift + H, gso_size=mss, csum_start=shift + t,
                   csum_offset=16, outer_th_offset=outer_th, inner_nh_offset=inner_nh).pack()
    kind = Kind.FOLD if info.carried is not None else (Kind.HINT if info.pkt.gro_hint is not None else Kind.PLAIN)
    parts = (nested, bytes(h), *payloads) if nested else (bytes(h), *payloads)
    return TapWrite(vnet, parts, kind, segments)
