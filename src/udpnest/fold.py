"""fold / unfold: carry nested UDP tunnel headers in Geneve options so the wire has one UDP level.

``fold(frame)`` takes an Ethernet frame that is already UDP-tunnelled (e.g. a workload's VXLAN packet
read from the TAP) and returns a Geneve header whose ``FOLD`` options carry the nested tunnel headers
(Ethernet/IP/UDP/VXLAN-or-GPE-or-Geneve, per level, length and checksum fields zeroed) followed by the
innermost frame.  ``unfold(payload)`` validates every carried header and rebuilds the original frame,
restoring lengths from the actual buffer, IPv4 header checksums and nested UDP checksums.

Both are pure (no I/O) and touch headers only: the innermost frame is passed through as a memoryview
and only read when a nested UDP checksum must be computed (one numpy sum, never a Python loop).

Carrier option data (one per folded level, outermost first; docs/wire-format.md has the diagram)::

    byte 0: version:2 (0) | reserved:3 | encap:3 (1 VXLAN, 2 VXLAN-GPE, 3 Geneve)
    byte 1: flags  V6 0x80 | UDP_CSUM 0x40 | LEN_ZEROED 0x20 | CSUM_ZEROED 0x10 | RCO 0x08
    byte 2: L2 length (0, 14 or 18)   byte 3: L3 length   byte 4: tunnel header length   byte 5: 0
    then L2 + L3 + UDP (8) + tunnel header verbatim, zero padded to a multiple of 4 bytes
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple

from .wire import csum
from .wire.errors import ParseError, Reason
from .wire.eth import ETH_HLEN, ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6, ETH_P_TEB, VLAN_HLEN, parse_eth
from .wire.geneve import MAX_OPT_DATA, MAX_OPTS_LEN, OPT_HLEN, build_geneve, build_option, parse_geneve
from .wire.ipv4 import CSUM_OFF as IPV4_CSUM_OFF
from .wire.ipv4 import IP_MF, IP_OFFMASK, IPV4_HLEN, IPV4_MAX_HLEN, PROTO_UDP, parse_ipv4
from .wire.ipv4 import TOTAL_LEN_OFF as IPV4_TOTAL_LEN_OFF
from .wire.ipv6 import IPV6_HLEN, parse_ipv6
from .wire.ipv6 import PAYLOAD_LEN_OFF as IPV6_PAYLOAD_LEN_OFF
from .wire.options import (
    DEFAULT_OPT_CLASS,
    GRO_HINT_PROTO,
    TYPE_FOLD,
    GenevePacket,
    GroHint,
    parse_packet,
    validate_gro_hint,
)
from .wire.udp import CSUM_OFF as UDP_CSUM_OFF
from .wire.udp import LEN_OFF as UDP_LEN_OFF
from .wire.udp import UDP_HLEN, parse_udp
from .wire.vxlan import (
    GPE_FLAG_P,
    GPE_NP_ETHERNET,
    GPE_NP_IPV4,
    GPE_NP_IPV6,
    VXLAN_FLAG_I,
    VXLAN_HLEN,
    parse_vxlan,
)


class Encap(enum.IntEnum):
    VXLAN = 1
    VXLAN_GPE = 2
    GENEVE = 3


#: nested tunnels recognised by UDP destination port (configurable per call)
DEFAULT_PORTS: Mapping[int, Encap] = MappingProxyType(
    {4789: Encap.VXLAN, 8472: Encap.VXLAN, 4790: Encap.VXLAN_GPE, 6081: Encap.GENEVE}
)
DEFAULT_MAX_LEVELS = 3

F_V6 = 0x80
F_UDP_CSUM = 0x40  # the nested UDP checksum was non-zero: the receiver must regenerate it
F_LEN_ZEROED = 0x20  # IPv4 total length / IPv6 payload length and UDP length are zero on the wire
F_CSUM_ZEROED = 0x10  # IPv4 header checksum and UDP checksum are zero on the wire
# Version 0 always zeroes both (so every segment of a super-packet carries identical bytes): a carrier
# without LEN_ZEROED and CSUM_ZEROED is rejected, so no carried length or checksum is ever trusted.
F_RCO = 0x08  # remote checksum offload: the innermost transport checksum is a partial sum
F_KNOWN = F_V6 | F_UDP_CSUM | F_LEN_ZEROED | F_CSUM_ZEROED | F_RCO
FOLD_META_LEN = 6
FOLD_VERSION = 0
_META = struct.Struct("!BBBBBB")
_U16 = struct.Struct("!H")
_U16_PAIR = struct.Struct("!HH")
_IPV4_FIELDS = struct.Struct("!2xH2xHxBH")  # total length, flags+fragment offset, protocol, header checksum
_ZEROED = F_LEN_ZEROED | F_CSUM_ZEROED
_GPE_NEXT = {GPE_NP_ETHERNET: ETH_P_TEB, GPE_NP_IPV4: ETH_P_IPV4, GPE_NP_IPV6: ETH_P_IPV6}
_NEXT_OK = (ETH_P_TEB, ETH_P_IPV4, ETH_P_IPV6)
_L2_LENS = (0, ETH_HLEN, ETH_HLEN + VLAN_HLEN)
_ENCAPS = {e.value: e for e in Encap}


class Level(NamedTuple):
    """One nested tunnel level found in a frame (offsets into that frame)."""

    off: int  # first byte of its L2 header (its L3 header when l2_len == 0)
    l2_len: int
    l3_len: int
    v6: bool
    tun_len: int
    encap: Encap
    next_proto: int  # ethertype of what its tunnel header carries (0x6558: Ethernet)
    udp_csum: int  # the nested UDP checksum field as found

    @property
    def udp_off(self) -> int:
        return self.off + self.l2_len + self.l3_len

    @property
    def end(self) -> int:
        return self.udp_off + UDP_HLEN + self.tun_len

    @property
    def option_size(self) -> int:
        return OPT_HLEN + _padded(FOLD_META_LEN + self.end - self.off)


def _padded(n: int) -> int:
    return (n + 3) & ~3


def find_levels(frame, *, ports: Mapping[int, Encap] = DEFAULT_PORTS, max_levels: int = DEFAULT_MAX_LEVELS,
                gso: bool = False) -> list[Level]:
    """The nested UDP tunnel levels at the start of ``frame``, outermost first.

    The walk stops (without raising) at the first header that is not a recognised, foldable tunnel
    level: not IPv4/IPv6, a fragment, not UDP, an unknown destination port, a tunnel header that does
    not parse, or a level too large for one option.  Unless ``gso`` is set, the IP and UDP length
    fields must match the buffer exactly (so unfold's recomputed lengths equal the originals); for GSO
    super-packets the lengths are taken from the buffer instead.
    """
    n = len(frame)
    levels: list[Level] = []
    pos, kind = 0, ETH_P_TEB
    try:
        while len(levels) < max_levels:
            if kind == ETH_P_TEB:
                eth = parse_eth(frame, pos)
                l2, etype = eth.hdr_len, eth.ethertype
            else:
                l2, etype = 0, kind
            l3off = pos + l2
            if etype == ETH_P_IPV4:
                ip4 = parse_ipv4(frame, l3off, check_len=not gso)
                if ip4.is_fragment or ip4.proto != PROTO_UDP or (not gso and ip4.total_len != n - l3off):
                    break
                l3, v6 = ip4.hdr_len, False
            elif etype == ETH_P_IPV6:
                ip6 = parse_ipv6(frame, l3off, check_len=not gso)
                if ip6.fragment or ip6.proto != PROTO_UDP or (not gso and ip6.payload_len != n - l3off - IPV6_HLEN):
                    break
                l3, v6 = ip6.hdr_len, True
            else:
                break
            uoff = l3off + l3
            udp = parse_udp(frame, uoff, check_len=not gso)
            if not gso and udp.length != n - uoff:
                break
            encap = ports.get(udp.dport)
            toff = uoff + UDP_HLEN
            if encap is Encap.VXLAN:
                parse_vxlan(frame, toff)
                tun, nxt = VXLAN_HLEN, ETH_P_TEB
            elif encap is Encap.VXLAN_GPE:
                nxt = _GPE_NEXT.get(parse_vxlan(frame, toff, gpe=True).next_proto)
                tun = VXLAN_HLEN
            elif encap is Encap.GENEVE:
                g = parse_geneve(frame, toff)
                tun, nxt = g.hdr_len, g.proto
            else:
                break
            if nxt not in _NEXT_OK:
                break
            lv = Level(pos, l2, l3, v6, tun, encap, nxt, udp.csum)
            if lv.option_size - OPT_HLEN > MAX_OPT_DATA:
                break
            levels.append(lv)
            pos, kind = lv.end, nxt
    except ParseError:
        pass  # a header that does not parse is not a level we fold: stop here
    return levels


class Folded(NamedTuple):
    header: bytes  # Geneve header with options
    inner: memoryview  # the innermost frame (a view of the input, not a copy)
    levels: int  # how many nested levels were folded (0: plain Geneve of the whole frame)

    @property
    def payload(self) -> bytes:
        """The UDP payload to send: Geneve header + options + innermost frame."""
        return self.header + self.inner


def fold(frame, *, vni: int = 0, opt_class: int = DEFAULT_OPT_CLASS, ports: Mapping[int, Encap] = DEFAULT_PORTS,
         max_levels: int = DEFAULT_MAX_LEVELS, options: bytes = b"", gso: bool = False,
         rco: bool = False) -> Folded:
    """Fold every recognised nested UDP tunnel level of ``frame`` into Geneve ``FOLD`` options.

    Levels are folded outermost first while they fit, beside ``options`` (other, already built TLVs),
    in the 252-byte option space.  ``gso``: the frame is a GSO super-packet (lengths come from the
    buffer).  ``rco``: mark the innermost transport checksum as a partial sum the receiver must finish.
    The carried headers are byte-identical for every segment of a super-packet (lengths, checksums
    zeroed), so UDP GRO can merge the segments again at the receiver.
    """
    mv = memoryview(frame)
    budget = MAX_OPTS_LEN - len(options)
    parts: list[bytes] = []
    used = 0
    last: Level | None = None
    for lv in find_levels(mv, ports=ports, max_levels=max_levels, gso=gso):
        if used + lv.option_size > budget:
            break
        parts.append(_fold_option(mv, lv, opt_class, rco and last is None))
        used += lv.option_size
        last = lv
    if last is None:
        return Folded(build_geneve(vni, ETH_P_TEB, options), mv, 0)
    return Folded(build_geneve(vni, last.next_proto, b"".join(parts) + options), mv[last.end :], len(parts))


def _fold_option(mv: memoryview, lv: Level, opt_class: int, rco: bool) -> bytes:
    h = bytearray(mv[lv.off : lv.end])
    l3 = lv.l2_len
    u = l3 + lv.l3_len
    flags = F_LEN_ZEROED | F_CSUM_ZEROED
    if lv.v6:
        flags |= F_V6
        h[l3 + 4 : l3 + 6] = b"\0\0"  # payload length
    else:
        h[l3 + 2 : l3 + 4] = b"\0\0"  # total length
        h[l3 + 10 : l3 + 12] = b"\0\0"  # header checksum
    if lv.udp_csum:
        flags |= F_UDP_CSUM
    if rco:
        flags |= F_RCO
    h[u + 4 : u + 8] = b"\0\0\0\0"  # UDP length, checksum
    meta = _META.pack((FOLD_VERSION << 6) | lv.encap, flags, lv.l2_len, lv.l3_len, lv.tun_len, 0)
    data = meta + h
    return build_option(opt_class, TYPE_FOLD, data + b"\0" * (_padded(len(data)) - len(data)))


class _Carried(NamedTuple):
    hdr: bytes
    flags: int
    l2: int
    l3: int
    tun: int
    next_proto: int


class Unfolded(NamedTuple):
    headers: bytes  # the restored nested headers (empty when nothing was folded)
    inner: memoryview  # the innermost frame, a view of the input
    levels: int
    partial_udp_offset: int | None  # offset of the outermost nested UDP header if its csum was left partial
    rco: bool  # the sender left the innermost transport checksum partial (finish it via NEEDS_CSUM)

    @property
    def frame(self) -> bytes:
        return self.headers + self.inner


def unfold(payload, *, opt_class: int = DEFAULT_OPT_CLASS, udp_csum: str = "compute",
           packet: GenevePacket | None = None, carried: list | None = None) -> Unfolded:
    """Rebuild the Ethernet frame from a received Geneve payload (header + options + frame).

    Every ``FOLD`` option is validated before use; lengths are recomputed from the actual buffer, IPv4
    header checksums recomputed, and nested UDP checksums that were present regenerated:
    ``udp_csum="compute"`` computes them, ``"partial"`` leaves the outermost nested one as the
    pseudo-header sum (``partial_udp_offset`` says where) for the caller to offload through the vnet
    header.  A payload without ``FOLD`` options is returned as is (it must carry Ethernet).
    ``packet``: the result of :func:`~udpnest.wire.options.parse_packet` if the caller already has it;
    ``carried``: :func:`decode_folds` of that packet, likewise (the dataplane caches both by header bytes).
    Raises :class:`ParseError` only.
    """
    if udp_csum not in ("compute", "partial"):
        raise ValueError(f"udp_csum must be 'compute' or 'partial' (got {udp_csum!r})")
    mv = memoryview(payload)
    pkt = packet if packet is not None else parse_packet(mv, opt_class=opt_class)
    inner = mv[pkt.hdr.hdr_len :]
    if not pkt.folds:
        if pkt.hdr.proto != ETH_P_TEB:
            raise ParseError(Reason.BAD_ETHERTYPE, f"geneve protocol 0x{pkt.hdr.proto:04x} without fold options")
        return Unfolded(b"", inner, 0, None, False)
    if carried is None:
        carried = decode_folds(pkt)
    # the innermost frame's sum is needed where a nested UDP checksum is computed: at every level with
    # UDP_CSUM in "compute" mode, below the outermost level in "partial" mode
    need_sum = False
    for c in carried if udp_csum == "compute" else carried[1:]:
        if c.flags & F_UDP_CSUM:
            need_sum = True
            break
    headers, partial_off = restore_headers(carried, len(inner), csum.ones_sum(inner) if need_sum else 0, udp_csum)
    return Unfolded(headers, inner, len(carried), partial_off, bool(carried[0].flags & F_RCO))


def decode_folds(pkt: GenevePacket) -> list[_Carried]:
    """Decode and validate every FOLD option of ``pkt`` (outermost first); raises ParseError."""
    carried: list[_Carried] = []
    kind = ETH_P_TEB
    for i, data in enumerate(pkt.folds):
        c = _decode_fold(data, kind, i)
        carried.append(c)
        kind = c.next_proto
    if kind != pkt.hdr.proto:
        raise ParseError(Reason.BAD_FOLD_ORDER,
                         f"innermost fold level carries 0x{kind:04x}, geneve protocol is 0x{pkt.hdr.proto:04x}")
    return carried


def restore_headers(carried: list[_Carried], inner_len: int, inner_sum: int = 0,
                    udp_csum: str = "compute") -> tuple[bytes, int | None]:
    """Rebuild the nested headers for an innermost frame of ``inner_len`` bytes.

    ``inner_sum`` is the one's complement sum of the innermost frame, needed only where a nested UDP
    checksum is computed (every level in "compute" mode, levels below the outermost in "partial" mode).
    Returns the headers and, in "partial" mode, the offset of the outermost nested UDP header whose
    checksum field holds the pseudo-header sum (None if that level has no checksum).

    The levels are restored innermost first, so each UDP checksum can include what follows it.  The
    checksums use the RFC 1071 sum in its arithmetic form (as :func:`csum.ones_sum` does for small
    buffers): the one's complement sum of 16-bit words equals the integer value of the bytes modulo
    0xFFFF (2**16 == 1 mod 0xFFFF), with 0xFFFF standing for a non-zero multiple.  Every carried part is
    an even number of bytes (L2 0/14/18, IP and tunnel headers whole words, UDP 8), so a part of the
    frame can be summed as one integer and the sums of consecutive parts simply added.
    """
    partial = udp_csum == "partial"
    suffix_sum = inner_sum  # sum of everything after the level being restored (reduced modulo 0xFFFF)
    suffix_len = inner_len
    out: list[bytes] = []
    partial_off = None
    for i in range(len(carried) - 1, -1, -1):
        hdr, flags, ip, l3, tun, _ = carried[i]
        h = bytearray(hdr)
        u = ip + l3  # the IP header starts after L2 (ip == l2), UDP after it
        udp_len = UDP_HLEN + tun + suffix_len
        v6 = flags & F_V6
        ip_len = (l3 - IPV6_HLEN if v6 else l3) + udp_len
        if udp_len > 0xFFFF or ip_len > 0xFFFF:
            raise ParseError(Reason.FOLD_TOO_LARGE, f"level {i}: nested UDP length {udp_len}, IP length {ip_len}")
        if flags & F_LEN_ZEROED:
            _U16.pack_into(h, ip + (IPV6_PAYLOAD_LEN_OFF if v6 else IPV4_TOTAL_LEN_OFF), ip_len)
            _U16.pack_into(h, u + UDP_LEN_OFF, udp_len)
        if flags & F_CSUM_ZEROED:
            if not v6:
                # IPv4 header checksum: ~sum of the header (checksum field zero).  The header is never all
                # zero (version 4), so its sum is v % 0xFFFF or 0xFFFF, and ~sum & 0xFFFF is -v % 0xFFFF.
                _U16.pack_into(h, ip + IPV4_CSUM_OFF, -int.from_bytes(h[ip:u], "big") % 0xFFFF)
            if flags & F_UDP_CSUM:
                # pseudo-header: source and destination address (adjacent in IPv4 and IPv6), 17, UDP length
                addrs = h[ip + 8 : ip + 40] if v6 else h[ip + 12 : ip + 20]
                pseudo = int.from_bytes(addrs, "big") + PROTO_UDP + udp_len
                if partial and i == 0:
                    value = pseudo % 0xFFFF or 0xFFFF  # the folded pseudo-header sum (> 0: it counts 17)
                    partial_off = u
                else:
                    # ~sum of pseudo-header + UDP header and tunnel header + suffix.  The total T is > 0
                    # (it counts 17): its sum is T % 0xFFFF, or 0xFFFF for a multiple, whose ~ would be 0;
                    # 0xFFFF - T % 0xFFFF gives 0xFFFF there instead: RFC 768's "a computed 0 is sent as
                    # 0xFFFF", and the field value otherwise.
                    value = 0xFFFF - (pseudo + int.from_bytes(h[u:], "big") + suffix_sum) % 0xFFFF
                _U16.pack_into(h, u + UDP_CSUM_OFF, value)
        suffix_sum = (int.from_bytes(h, "big") + suffix_sum) % 0xFFFF
        suffix_len += len(h)
        out.append(bytes(h))
    out.reverse()
    return b"".join(out), partial_off


def _decode_fold(data: bytes, kind: int, index: int) -> _Carried:
    """Decode and validate one FOLD option; ``kind`` is what the previous level said comes next."""
    n = len(data)
    if n < FOLD_META_LEN:
        raise ParseError(Reason.BAD_FOLD_LENGTHS, f"fold level {index}: {n} bytes, metadata needs {FOLD_META_LEN}")
    b0, flags, l2, l3, tun, rsv = _META.unpack_from(data)
    if b0 >> 6 != FOLD_VERSION or b0 & 0x38 or rsv or flags & ~F_KNOWN & 0xFF or flags & _ZEROED != _ZEROED:
        raise ParseError(
            Reason.BAD_FOLD_VERSION,
            f"fold level {index}: version {b0 >> 6}, reserved bits 0x{b0 & 0x38:02x}/0x{rsv:02x}, flags 0x{flags:02x}",
        )
    encap = _ENCAPS.get(b0 & 0x7)  # a dict, not Encap(code): the enum's constructor costs ~0.5 us
    if encap is None:
        raise ParseError(Reason.BAD_FOLD_ENCAP, f"fold level {index}: encapsulation type {b0 & 0x7}")
    end = FOLD_META_LEN + l2 + l3 + UDP_HLEN + tun
    if l2 not in _L2_LENS or end > n or n - end > 3 or any(data[end:]):
        raise ParseError(Reason.BAD_FOLD_LENGTHS,
                         f"fold level {index}: l2 {l2} l3 {l3} tunnel {tun} do not add up to {n} bytes of option data")
    if (kind == ETH_P_TEB) != (l2 != 0):
        raise ParseError(Reason.BAD_FOLD_ORDER,
                         f"fold level {index}: l2 length {l2} but previous level carries 0x{kind:04x}")
    hdr = data[FOLD_META_LEN:end]
    try:
        nxt = _check_carried(hdr, flags, l2, l3, tun, encap, kind)
    except ParseError as e:
        raise ParseError(Reason.BAD_FOLD_HEADERS, f"fold level {index}: {e}") from None
    return _Carried(hdr, flags, l2, l3, tun, nxt)


def _check_carried(hdr: bytes, flags: int, l2: int, l3: int, tun: int, encap: Encap, kind: int) -> int:
    """Check the carried headers agree with the metadata; return the ethertype the tunnel carries.

    ``hdr`` is exactly ``l2 + l3 + 8 + tun`` bytes (``_decode_fold`` checked), ``l2`` 0, 14 or 18.  The
    Ethernet, IPv4, UDP and VXLAN checks are written out (the checks parse_eth, parse_ipv4, parse_udp and
    parse_vxlan make, minus their result tuples: this runs for every received fold level); IPv6 (its
    extension header walk) and a nested Geneve header (its options) go through their parsers.
    """
    v6 = bool(flags & F_V6)
    if l2:
        etype = hdr[12] << 8 | hdr[13]  # in bounds: hdr has at least 14 + 8 bytes
        eth_len = ETH_HLEN
        if etype == ETH_P_8021Q:  # one 802.1Q tag, then the ethertype
            etype = hdr[16] << 8 | hdr[17]
            eth_len = ETH_HLEN + VLAN_HLEN
        if eth_len != l2:
            raise ParseError(Reason.BAD_FOLD_LENGTHS, f"ethernet header is {eth_len} bytes, metadata says {l2}")
    else:
        etype = kind
    if etype != (ETH_P_IPV6 if v6 else ETH_P_IPV4):
        raise ParseError(Reason.BAD_ETHERTYPE, f"ethertype 0x{etype:04x} with V6 flag {v6}")
    zl, zc = flags & F_LEN_ZEROED, flags & F_CSUM_ZEROED
    if v6:
        ip6 = parse_ipv6(hdr[: l2 + l3], l2, check_len=False)
        if ip6.hdr_len != l3 or ip6.proto != PROTO_UDP or ip6.fragment:
            raise ParseError(Reason.BAD_FOLD_LENGTHS, f"ipv6 headers {ip6.hdr_len} bytes to proto {ip6.proto}")
        if zl and ip6.payload_len:
            raise ParseError(Reason.BAD_IPV6_LENGTH, "payload length not zero though LEN_ZEROED")
    else:
        # IPv4: version 4 and IHL * 4 == l3 (20..60), then UDP, not a fragment
        if l3 < IPV4_HLEN or l3 > IPV4_MAX_HLEN or l3 & 3 or hdr[l2] != 0x40 | l3 >> 2:
            raise ParseError(Reason.BAD_FOLD_LENGTHS, f"ipv4 version/IHL 0x{hdr[l2]:02x}, metadata says {l3} bytes")
        total, frag, proto, ip_csum = _IPV4_FIELDS.unpack_from(hdr, l2)
        if proto != PROTO_UDP or frag & (IP_MF | IP_OFFMASK):
            raise ParseError(Reason.BAD_FOLD_LENGTHS, f"ipv4 proto {proto}, fragment field 0x{frag:04x}")
        if (zl and total) or (zc and ip_csum):
            raise ParseError(Reason.BAD_IPV4_LENGTH, "total length/checksum not zero though zeroed flags set")
    udp_len, udp_csum = _U16_PAIR.unpack_from(hdr, l2 + l3 + UDP_LEN_OFF)
    if (zl and udp_len) or (zc and udp_csum):
        raise ParseError(Reason.BAD_UDP_LENGTH, "udp length/checksum not zero though zeroed flags set")
    toff = l2 + l3 + UDP_HLEN
    if encap is Encap.GENEVE:
        g = parse_geneve(hdr, toff)
        if g.hdr_len != tun:
            raise ParseError(Reason.BAD_GENEVE_OPTLEN, f"nested geneve header {g.hdr_len} bytes, metadata {tun}")
        nxt = g.proto
    else:
        if tun != VXLAN_HLEN:
            raise ParseError(Reason.TRUNCATED_VXLAN, f"vxlan header length {tun}")
        vx_flags = hdr[toff]
        if encap is Encap.VXLAN:  # the I flag; carries Ethernet
            if not vx_flags & VXLAN_FLAG_I:
                raise ParseError(Reason.BAD_VXLAN_FLAGS, f"vxlan flags 0x{vx_flags:02x}: I flag not set")
            nxt = ETH_P_TEB
        else:  # VXLAN-GPE: the I and P flags; next protocol in byte 3
            if vx_flags & (VXLAN_FLAG_I | GPE_FLAG_P) != VXLAN_FLAG_I | GPE_FLAG_P:
                raise ParseError(Reason.BAD_VXLAN_FLAGS, f"vxlan-gpe flags 0x{vx_flags:02x}: I or P flag not set")
            nxt = _GPE_NEXT.get(hdr[toff + 3], 0)
    if nxt not in _NEXT_OK:
        raise ParseError(Reason.BAD_ETHERTYPE, f"nested tunnel carries 0x{nxt:04x}")
    return nxt


# --- hint mode ---------------------------------------------------------------------------------------
def gro_hint_for(frame, *, ports: Mapping[int, Encap] = DEFAULT_PORTS, gso: bool = False) -> GroHint | None:
    """The Linux GRO hint describing ``frame``'s nested tunnel (which stays in place), or None.

    Mirrors the conditions of Linux 7.0's TX path and what its RX validation accepts: exactly one
    nested UDP level, carrying Ethernet, IPv4 or IPv6; a nested IPv4 header without options and with a
    valid checksum.  With two nested levels Linux would fix only the first level's lengths after GRO,
    so no hint is given.
    """
    levels = find_levels(frame, ports=ports, max_levels=2, gso=gso)
    if len(levels) != 1:
        return None
    lv = levels[0]
    if not lv.v6 and lv.l3_len != 20:
        return None  # the receiver requires 0x45 and would then refuse GRO for the flow
    if lv.end > 255:
        return None
    hint = GroHint(GRO_HINT_PROTO.index(lv.next_proto), lv.v6, lv.l2_len, lv.udp_off, lv.end)
    try:
        validate_gro_hint(frame, hint)
    except ParseError:
        return None
    return hint
