"""Vectorised TCP segmentation of a (possibly UDP-tunnelled) GSO super-packet, for UDP_SEGMENT sends.

The TAP hands us ~64 KB TCP super-packets.  A peer needs MTU-sized datagrams, each a complete packet:
every IP header with its own length, ID and checksum, every nested UDP header with its own length (and
checksum if it had one), the TCP header with its own sequence number, flags and checksum.  Python never
loops over segments or payload bytes here: one numpy array holds all datagrams (``prefix | headers |
payload slice`` per row), and each varying field is written as one column.

Checksums use the "local checksum offload" identity: a TCP segment with a valid checksum sums to the
complement of its pseudo-header, and a valid IPv4 header sums to 0xFFFF, so a nested UDP checksum is
the same for every full-sized segment and is computed once per block of equal-sized rows.

The output rows are exactly what ``sendmsg(UDP_SEGMENT=row_len)`` wants: all rows of ``full`` have the
same length; ``last`` (zero or one row) is shorter.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .wire import csum
from .wire.errors import ParseError, Reason
from .wire.eth import ETH_P_IPV4, ETH_P_IPV6, parse_eth
from .wire.ipv4 import IP_DF, PROTO_TCP, PROTO_UDP, parse_ipv4
from .wire.ipv6 import IPV6_HLEN, parse_ipv6
from .wire.tcp import CWR, FIN, PSH, parse_tcp
from .wire.udp import UDP_HLEN, parse_udp


class Layout(NamedTuple):
    """Where the per-segment fields are, as offsets into the frame (not counting the prefix)."""

    ip4: tuple[int, ...]  # IPv4 headers: total length, ID, checksum vary per segment
    ip6: tuple[int, ...]  # IPv6 headers: payload length varies per block
    udp: tuple[tuple[int, bool], ...]  # nested UDP headers (offset, has checksum), outermost first
    tcp_ip: int  # offset of the IP header the TCP checksum's pseudo-header comes from
    tcp_ip_v6: bool
    tcp: int  # TCP header offset (the innermost UDP header's with l4_proto 17)
    hdr_len: int  # headers up to the TCP payload
    l4_proto: int = PROTO_TCP  # 6, or 17 for a UDP super-packet (USO)

    def ip_before(self, off: int) -> tuple[int, bool]:
        """(offset, is IPv6) of the IP header that carries the header at ``off``."""
        return max([(o, False) for o in self.ip4 if o < off] + [(o, True) for o in self.ip6 if o < off])


def tcp_layout(frame, udp_offsets: tuple[int, ...] = (), *, inner_udp: bool = False) -> Layout:
    """Find the IP/UDP/TCP headers of ``frame``: Ethernet, then IP (/UDP at one of ``udp_offsets``/tunnel
    header/[Ethernet]/IP ...) down to TCP.  ``udp_offsets`` are the nested UDP header offsets (from the
    vnet header's outer_th_offset, or from :func:`udpnest.fold.find_levels`).  ``inner_udp``: the
    innermost transport may be UDP (a USO super-packet) instead of TCP.  Raises ParseError.
    """
    eth = parse_eth(frame, 0)
    pos, etype = eth.hdr_len, eth.ethertype
    ip4: list[int] = []
    ip6: list[int] = []
    udps: list[tuple[int, bool]] = []
    todo = list(udp_offsets)
    while True:
        if etype == ETH_P_IPV4:
            h4 = parse_ipv4(frame, pos, check_len=False)
            if h4.is_fragment:
                raise ParseError(Reason.FRAGMENT, f"ipv4 fragment at {pos}")
            ip4.append(pos)
            proto, l4, v6 = h4.proto, pos + h4.hdr_len, False
        elif etype == ETH_P_IPV6:
            h6 = parse_ipv6(frame, pos, check_len=False)
            if h6.fragment:
                raise ParseError(Reason.FRAGMENT, f"ipv6 fragment at {pos}")
            ip6.append(pos)
            proto, l4, v6 = h6.proto, pos + h6.hdr_len, True
        else:
            raise ParseError(Reason.BAD_ETHERTYPE, f"ethertype 0x{etype:04x} at {pos}")
        if proto == PROTO_TCP and not todo:
            t = parse_tcp(frame, l4)
            return Layout(tuple(ip4), tuple(ip6), tuple(udps), pos, v6, l4, l4 + t.hdr_len)
        if proto == PROTO_UDP and not todo and inner_udp:
            parse_udp(frame, l4, check_len=False)
            return Layout(tuple(ip4), tuple(ip6), tuple(udps), pos, v6, l4, l4 + UDP_HLEN, PROTO_UDP)
        if not todo or todo[0] != l4:
            raise ParseError(Reason.NOT_NESTED, f"expected nested UDP at {todo[:1]}, found proto {proto} at {l4}")
        u = parse_udp(frame, l4, check_len=False)
        udps.append((l4, u.csum != 0))
        todo.pop(0)
        # what follows the tunnel header: the next offset we are told about, or the inner L3 for the last
        nxt = todo[0] if todo else None
        pos, etype = _after_tunnel(frame, l4 + UDP_HLEN, nxt)


def _after_tunnel(frame, tun_off: int, next_udp: int | None) -> tuple[int, int]:
    """Skip a tunnel header to the next L3 header: try Ethernet after VXLAN/GPE (8 bytes) or Geneve."""
    from .wire.geneve import parse_geneve

    candidates = [tun_off + 8]
    try:
        g = parse_geneve(frame, tun_off)
        candidates.append(tun_off + g.hdr_len)
    except ParseError:
        pass
    for start in candidates:
        try:
            eth = parse_eth(frame, start)
        except ParseError:
            continue
        if eth.ethertype in (ETH_P_IPV4, ETH_P_IPV6):
            return start + eth.hdr_len, eth.ethertype
    raise ParseError(Reason.NOT_NESTED, f"no Ethernet/IP after the tunnel header at {tun_off}")


def aligned_mss(max_datagram: int, overhead: int, limit: int | None = None) -> int:
    """The TCP payload per datagram a udpnest sender uses: the most that fits ``max_datagram`` behind
    ``overhead`` header bytes (never more than ``limit``, the workload's MSS), rounded down so each
    datagram is a multiple of 4 bytes (the receiver then checks checksums over 32-bit words)."""
    mss = max_datagram - overhead if limit is None else min(limit, max_datagram - overhead)
    return mss - (overhead + mss) % 4


def segment_size(max_datagram: int, overhead: int, limit: int | None, payload_len: int) -> int:
    """The TCP payload per datagram for a super-packet of ``payload_len`` bytes: :func:`aligned_mss`,
    unless rounding down to a multiple of 4 would cost an extra datagram (a runt tail: 2676 bytes at
    MSS 1338 would go out as 1336 + 1336 + 4); then the unrounded size, never more than the path allows."""
    aligned = aligned_mss(max_datagram, overhead, limit)
    raw = max_datagram - overhead if limit is None else min(limit, max_datagram - overhead)
    if aligned > 0 and raw > aligned and -(-payload_len // aligned) > -(-payload_len // raw):
        return raw
    return aligned


def _put16(a: np.ndarray, off: int, values) -> None:
    a[:, off : off + 2] = np.asarray(values, dtype=">u2").reshape(-1, 1).view(np.uint8)


def _put32(a: np.ndarray, off: int, values) -> None:
    a[:, off : off + 4] = np.asarray(values, dtype=">u4").reshape(-1, 1).view(np.uint8)


def _fold_arr(s: np.ndarray) -> np.ndarray:
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return (s & 0xFFFF) + (s >> 16)


def _payload_sums(mv: memoryview, off: int, rows: int, width: int) -> np.ndarray:
    """Folded one's complement sums (uint64, 0..0xFFFF) of ``rows`` consecutive ``width``-byte slices of
    ``mv`` starting at ``off``: one numpy reduction over the payload, no Python loop."""
    if rows == 0:
        return np.zeros(0, dtype=np.uint64)
    if width % 4 == 0 or width % 2 == 0:
        # little-endian words; the one's complement sum is byte-order independent, swap once at the end
        dt, w = ("<u4", width // 4) if width % 4 == 0 else ("<u2", width // 2)
        t = np.frombuffer(mv, dtype=dt, offset=off, count=rows * w).reshape(rows, w).sum(axis=1, dtype=np.uint64)
        t = _fold_arr(t)
        return ((t & np.uint64(0xFF)) << np.uint64(8)) | (t >> np.uint64(8))
    p = np.frombuffer(mv, dtype=np.uint8, offset=off, count=rows * width).reshape(rows, width)
    hi = p[:, 0::2].sum(axis=1, dtype=np.uint64)
    lo = p[:, 1::2].sum(axis=1, dtype=np.uint64)
    return _fold_arr(hi * np.uint64(256) + lo)


class Segments(NamedTuple):
    """All datagrams in one buffer: ``count`` rows of ``row_len`` bytes, the last row cut to ``last_len``.

    ``buffer`` is exactly what one ``sendmsg(UDP_SEGMENT=row_len)`` sends (the kernel cuts it every
    ``row_len`` bytes; only the last datagram may be shorter).
    """

    rows: np.ndarray  # (count, row_len) uint8; the last row is valid up to last_len
    last_len: int
    mss: int

    @property
    def count(self) -> int:
        return self.rows.shape[0]

    @property
    def row_len(self) -> int:
        return self.rows.shape[1]

    @property
    def buffer(self) -> memoryview:
        n = (self.count - 1) * self.row_len + self.last_len
        return memoryview(self.rows.reshape(-1))[:n]

    def datagrams(self) -> list[bytes]:
        """Every datagram as bytes (tests and the per-datagram fallback path)."""
        out = [r.tobytes() for r in self.rows[:-1]]
        return out + [self.rows[-1, : self.last_len].tobytes()]


def segment_tcp(prefix: bytes, frame, layout: Layout, mss: int, *, fix_ip_ids: bool = True,
                fixed_nested_ids: bool = False) -> Segments:
    """Cut the TCP super-packet ``frame`` into ``mss``-byte segments, each behind ``prefix``.

    With a UDP layout (``l4_proto`` 17, a USO super-packet) the UDP payload is cut into ``mss``-byte
    datagrams instead, each with its own UDP length and checksum.

    ``frame`` headers may carry any length/checksum values (kernel GSO frames carry partial sums): all
    are rewritten.  IPv4 IDs increase by one per segment from the super-packet's (as the kernel's GSO
    does) unless ``fix_ip_ids`` is false and DF is set.  ``fixed_nested_ids``: every IPv4 header other
    than the innermost (the nested tunnel levels) keeps the super-packet's ID in every segment, DF or
    not, as Linux's GSO partial leaves them; with lengths and checksums equal too, the nested headers of
    all full-sized segments are byte-identical, which a Linux geneve receiver with the GRO hint requires
    before it merges (``geneve_hdr_match``).
    """
    if mss <= 0:
        raise ValueError(f"mss must be positive (got {mss})")
    mv = memoryview(frame)
    H = layout.hdr_len
    payload = np.frombuffer(mv, dtype=np.uint8, offset=H)
    total = payload.shape[0]
    n_full, rem = divmod(total, mss)
    count = n_full + (1 if rem or not n_full else 0)
    last_seg = rem if (rem or not n_full) else mss
    P = len(prefix)
    W = P + H + mss
    tmpl = bytearray(mv[:H])
    tcp = layout.tcp
    is_udp = layout.l4_proto == PROTO_UDP
    if is_udp:
        seq0 = flags0 = mid_flags = 0
        tmpl[tcp + 4 : tcp + 8] = b"\0\0\0\0"  # length and checksum, rewritten per row
    else:
        seq0 = int.from_bytes(tmpl[tcp + 4 : tcp + 8], "big")
        flags0 = tmpl[tcp + 13]
        mid_flags = flags0 & ~(FIN | PSH | CWR)
        tmpl[tcp + 13] = mid_flags
        tmpl[tcp + 4 : tcp + 8] = b"\0\0\0\0"
        tmpl[tcp + 16 : tcp + 18] = b"\0\0"
    ids0 = []
    for off in layout.ip4:
        ids0.append(int.from_bytes(tmpl[off + 4 : off + 6], "big"))
        tmpl[off + 2 : off + 4] = tmpl[off + 4 : off + 6] = tmpl[off + 10 : off + 12] = b"\0\0"
    for off, _ in layout.udp:
        tmpl[off + 6 : off + 8] = b"\0\0"

    a = np.empty((count, W), dtype=np.uint8)
    if P:
        a[:, :P] = np.frombuffer(prefix, dtype=np.uint8)
    a[:, P : P + H] = np.frombuffer(tmpl, dtype=np.uint8)
    if n_full:
        a[:n_full, P + H :] = payload[: n_full * mss].reshape(n_full, mss)
    if count > n_full:
        a[-1, P + H : P + H + last_seg] = payload[n_full * mss :]
        a[-1, P + H + last_seg :] = 0
    idx = np.arange(count, dtype=np.uint64)
    seg_len = np.full(count, H + mss, dtype=np.uint64)  # frame bytes per row
    seg_len[-1] = H + last_seg
    for off in layout.ip4:
        _put16(a, P + off + 2, seg_len - np.uint64(off))
    for off in layout.ip6:
        _put16(a, P + off + 4, seg_len - np.uint64(off + IPV6_HLEN))
    for off, _ in layout.udp:
        _put16(a, P + off + 4, seg_len - np.uint64(off))
    # IPv4 IDs and header checksums (a header differing only in ID and length sums to base + ID + length)
    for off, id0 in zip(layout.ip4, ids0, strict=True):
        df = int.from_bytes(tmpl[off + 6 : off + 8], "big") & IP_DF
        fixed = (fixed_nested_ids and off != layout.tcp_ip) or (not fix_ip_ids and df)
        ids = np.full(count, id0, np.uint64) if fixed else (np.uint64(id0) + idx) & np.uint64(0xFFFF)
        _put16(a, P + off + 4, ids)
        base = np.uint64(csum.ones_sum(tmpl[off : off + (tmpl[off] & 0xF) * 4]))
        _put16(a, P + off + 10, ~_fold_arr(base + ids + seg_len - np.uint64(off)) & np.uint64(0xFFFF))
    if is_udp:
        _segment_udp_csums(a, P, tmpl, layout, mv, seg_len, n_full, count, mss)
    else:
        _segment_tcp_fields(a, P, tmpl, layout, mv, seg_len, n_full, count, mss, idx, seq0, flags0, mid_flags)
    _nested_udp_csums(a, P, tmpl, layout, seg_len, n_full, count)
    return Segments(a, P + int(seg_len[-1]), mss)


def _l4_sums(mv, H: int, n_full: int, count: int, mss: int) -> np.ndarray:
    sums = np.empty(count, dtype=np.uint64)
    sums[:n_full] = _payload_sums(mv, H, n_full, mss)
    if count > n_full:
        sums[-1] = csum.ones_sum(mv[H + n_full * mss :])
    return sums


def _segment_udp_csums(a, P, tmpl, layout: Layout, mv, seg_len, n_full, count, mss) -> None:
    """Inner UDP (USO): length and checksum per datagram (the length is in the header and the pseudo-header)."""
    u, H = layout.tcp, layout.hdr_len
    ulen = seg_len - np.uint64(u)
    _put16(a, P + u + 4, ulen)
    src, dst = csum.ip_addresses(tmpl, layout.tcp_ip, layout.tcp_ip_v6)
    fixed = csum.add(csum.ones_sum(src), csum.ones_sum(dst), PROTO_UDP, csum.ones_sum(tmpl[u:H]))
    s = np.uint64(fixed) + ulen + ulen + _l4_sums(mv, H, n_full, count, mss)
    c = ~_fold_arr(s) & np.uint64(0xFFFF)
    c[c == 0] = 0xFFFF  # RFC 768: a computed 0 is sent as all ones
    _put16(a, P + u + 6, c)


def _segment_tcp_fields(a, P, tmpl, layout: Layout, mv, seg_len, n_full, count, mss, idx, seq0, flags0,
                        mid_flags) -> None:
    """TCP: sequence numbers, flags (CWR on the first segment only, FIN/PSH on the last only), checksum."""
    tcp, H = layout.tcp, layout.hdr_len
    seqs = (np.uint64(seq0) + idx * np.uint64(mss)) & np.uint64(0xFFFFFFFF)
    _put32(a, P + tcp + 4, seqs)
    extra = np.zeros(count, dtype=np.uint64)
    extra[0] |= np.uint64(flags0 & CWR)
    extra[-1] |= np.uint64(flags0 & (FIN | PSH))
    a[:, P + tcp + 13] = (extra + np.uint64(mid_flags)).astype(np.uint8)
    tip = layout.tcp_ip
    src, dst = csum.ip_addresses(tmpl, tip, layout.tcp_ip_v6)
    # pseudo-header: addresses + proto + TCP length (per row); header sum with seq/csum zero
    fixed = csum.add(csum.ones_sum(src), csum.ones_sum(dst), PROTO_TCP, csum.ones_sum(tmpl[tcp:H]))
    s = np.uint64(fixed) + (seg_len - np.uint64(tcp)) + (seqs >> np.uint64(16)) + (seqs & np.uint64(0xFFFF)) + extra
    s += _l4_sums(mv, H, n_full, count, mss)
    _put16(a, P + tcp + 16, ~_fold_arr(s) & np.uint64(0xFFFF))


def _nested_udp_csums(a, P, tmpl, layout: Layout, seg_len, n_full, count) -> None:
    """Nested UDP checksums, innermost first: the same for every full-sized row (module docstring), so
    computed on the first row and on the short last row only."""
    for off, has in reversed(layout.udp):
        if not has:
            continue
        addrs = csum.ip_addresses(tmpl, *layout.ip_before(off))
        # (first row, rows it stands for): the full-sized block, then the short last row if any
        for r, rows in ((0, slice(0, n_full)), (count - 1, slice(n_full, count))):
            if rows.start == rows.stop:
                continue
            n = int(seg_len[r]) - off
            c = csum.checksum(a[r, P + off : P + off + n].tobytes(), csum.pseudo_sum(*addrs, 17, n)) or 0xFFFF
            a[rows, P + off + 6 : P + off + 8] = np.frombuffer(c.to_bytes(2, "big"), dtype=np.uint8)

