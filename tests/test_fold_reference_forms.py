"""The fast forms in fold.py / csum.py against the plain forms they replaced (issue 8).

* ``restore_headers`` sums each header part as one integer modulo 0xFFFF; the reference below is the
  previous per-field form (ip_addresses, pseudo_sum, checksum, add, ones_sum per level).
* ``_check_carried`` writes the Ethernet/IPv4/UDP/VXLAN checks out; the reference calls the wire parsers.
  Both must accept exactly the same carried headers (same next protocol) and reject with the same reason.
* ``ones_sum``'s numpy path (np.add.reduce over little-endian words) against the big-integer definition.
"""

from __future__ import annotations

import random

import packets as P
from udpnest import ParseError, Reason, fold
from udpnest.fold import (
    _GPE_NEXT,
    _L2_LENS,
    _META,
    _NEXT_OK,
    ETH_P_TEB,
    F_CSUM_ZEROED,
    F_KNOWN,
    F_LEN_ZEROED,
    F_UDP_CSUM,
    F_V6,
    FOLD_META_LEN,
    FOLD_VERSION,
    Encap,
    _Carried,
    _decode_fold,
    restore_headers,
)
from udpnest.wire import csum
from udpnest.wire.eth import ETH_P_IPV4, ETH_P_IPV6, parse_eth
from udpnest.wire.geneve import parse_geneve
from udpnest.wire.ipv4 import PROTO_UDP, parse_ipv4
from udpnest.wire.ipv6 import IPV6_HLEN, parse_ipv6
from udpnest.wire.options import parse_packet
from udpnest.wire.udp import UDP_HLEN, parse_udp
from udpnest.wire.vxlan import VXLAN_HLEN, parse_vxlan


# --- the previous forms (main before issue 8), kept verbatim as references ---------------------------
def ref_restore_headers(carried, inner_len, inner_sum=0, udp_csum="compute"):
    suffix_sum = inner_sum
    suffix_len = inner_len
    out = []
    partial_off = None
    for i in range(len(carried) - 1, -1, -1):
        c = carried[i]
        h = bytearray(c.hdr)
        ip, u = c.l2, c.l2 + c.l3
        udp_len = UDP_HLEN + c.tun + suffix_len
        v6 = bool(c.flags & F_V6)
        ip_len = (c.l3 - IPV6_HLEN if v6 else c.l3) + udp_len
        if udp_len > 0xFFFF or ip_len > 0xFFFF:
            raise ParseError(Reason.FOLD_TOO_LARGE, f"level {i}: nested UDP length {udp_len}, IP length {ip_len}")
        if c.flags & F_LEN_ZEROED:
            if v6:
                h[ip + 4 : ip + 6] = ip_len.to_bytes(2, "big")
            else:
                h[ip + 2 : ip + 4] = ip_len.to_bytes(2, "big")
            h[u + 4 : u + 6] = udp_len.to_bytes(2, "big")
        if c.flags & F_CSUM_ZEROED:
            if not v6:
                h[ip + 10 : ip + 12] = csum.checksum(h[ip : ip + c.l3]).to_bytes(2, "big")
            if c.flags & F_UDP_CSUM:
                src, dst = csum.ip_addresses(h, ip, v6)
                pseudo = csum.pseudo_sum(src, dst, PROTO_UDP, udp_len)
                if udp_csum == "partial" and i == 0:
                    value = pseudo
                    partial_off = u
                else:
                    value = csum.checksum(h[u:], csum.add(pseudo, suffix_sum)) or 0xFFFF
                h[u + 6 : u + 8] = value.to_bytes(2, "big")
        suffix_sum = csum.add(csum.ones_sum(h), suffix_sum)
        suffix_len += len(h)
        out.append(bytes(h))
    out.reverse()
    return b"".join(out), partial_off


def ref_decode_fold(data, kind, index):
    where = f"fold level {index}"
    if len(data) < FOLD_META_LEN:
        raise ParseError(Reason.BAD_FOLD_LENGTHS, f"{where}: {len(data)} bytes, metadata needs {FOLD_META_LEN}")
    b0, flags, l2, l3, tun, rsv = _META.unpack_from(data)
    zeroed = F_LEN_ZEROED | F_CSUM_ZEROED
    if b0 >> 6 != FOLD_VERSION or b0 & 0x38 or rsv or flags & ~F_KNOWN & 0xFF or flags & zeroed != zeroed:
        raise ParseError(Reason.BAD_FOLD_VERSION, where)
    try:
        encap = Encap(b0 & 0x7)
    except ValueError:
        raise ParseError(Reason.BAD_FOLD_ENCAP, where) from None
    end = FOLD_META_LEN + l2 + l3 + UDP_HLEN + tun
    if l2 not in _L2_LENS or end > len(data) or len(data) - end > 3 or any(data[end:]):
        raise ParseError(Reason.BAD_FOLD_LENGTHS, where)
    if (kind == ETH_P_TEB) != (l2 != 0):
        raise ParseError(Reason.BAD_FOLD_ORDER, where)
    hdr = data[FOLD_META_LEN:end]
    try:
        nxt = ref_check_carried(hdr, flags, l2, l3, tun, encap, kind)
    except ParseError as e:
        raise ParseError(Reason.BAD_FOLD_HEADERS, f"{where}: {e}") from None
    return _Carried(hdr, flags, l2, l3, tun, nxt)


def ref_check_carried(hdr, flags, l2, l3, tun, encap, kind):
    v6 = bool(flags & F_V6)
    if l2:
        eth = parse_eth(hdr)
        if eth.hdr_len != l2:
            raise ParseError(Reason.BAD_FOLD_LENGTHS, "eth")
        etype = eth.ethertype
    else:
        etype = kind
    if etype != (ETH_P_IPV6 if v6 else ETH_P_IPV4):
        raise ParseError(Reason.BAD_ETHERTYPE, "ethertype")
    zl, zc = flags & F_LEN_ZEROED, flags & F_CSUM_ZEROED
    if v6:
        ip6 = parse_ipv6(hdr[: l2 + l3], l2, check_len=False)
        if ip6.hdr_len != l3 or ip6.proto != PROTO_UDP or ip6.fragment:
            raise ParseError(Reason.BAD_FOLD_LENGTHS, "ipv6")
        if zl and ip6.payload_len:
            raise ParseError(Reason.BAD_IPV6_LENGTH, "ipv6 len")
    else:
        ip4 = parse_ipv4(hdr, l2, check_len=False)
        if ip4.hdr_len != l3 or ip4.proto != PROTO_UDP or ip4.is_fragment:
            raise ParseError(Reason.BAD_FOLD_LENGTHS, "ipv4")
        if (zl and ip4.total_len) or (zc and ip4.csum):
            raise ParseError(Reason.BAD_IPV4_LENGTH, "ipv4 len")
    udp = parse_udp(hdr, l2 + l3, check_len=False)
    if (zl and udp.length) or (zc and udp.csum):
        raise ParseError(Reason.BAD_UDP_LENGTH, "udp")
    toff = l2 + l3 + UDP_HLEN
    if encap is Encap.GENEVE:
        g = parse_geneve(hdr, toff)
        if g.hdr_len != tun:
            raise ParseError(Reason.BAD_GENEVE_OPTLEN, "geneve")
        nxt = g.proto
    else:
        if tun != VXLAN_HLEN:
            raise ParseError(Reason.TRUNCATED_VXLAN, "vxlan")
        vx = parse_vxlan(hdr, toff, gpe=encap is Encap.VXLAN_GPE)
        nxt = _GPE_NEXT.get(vx.next_proto, 0) if encap is Encap.VXLAN_GPE else ETH_P_TEB
    if nxt not in _NEXT_OK:
        raise ParseError(Reason.BAD_ETHERTYPE, "next")
    return nxt


def ones_sum_ref(b: bytes) -> int:
    """RFC 1071 by definition: 16-bit big-endian words (odd tail padded), end-around carry."""
    if len(b) & 1:
        b += b"\0"
    s = 0
    v = int.from_bytes(b, "big")
    while v:
        s += v & 0xFFFF
        v >>= 16
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


# --- corpus ------------------------------------------------------------------------------------------
def folded_options(n: int, seed: int) -> list[tuple[int, bytes]]:
    """(kind, FOLD option data) of every level of n random folded frames; kind as the previous level says."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        _, _, f = P.random_frame(rng, max_payload=40)
        pkt = parse_packet(fold(f).payload)
        kind = ETH_P_TEB
        for i, data in enumerate(pkt.folds):
            out.append((kind, data))
            kind = ref_decode_fold(data, kind, i).next_proto
    return out


def outcome(fn, *a):
    try:
        return fn(*a)
    except ParseError as e:
        return e.reason


def test_decode_fold_same_verdicts_as_parser_based_reference():
    rng = random.Random(81)
    kinds = (ETH_P_TEB, ETH_P_IPV4, ETH_P_IPV6)
    verdicts: set = set()
    for kind, data in folded_options(120, 80):
        assert _decode_fold(data, kind, 0) == ref_decode_fold(data, kind, 0)
        for _ in range(60):
            d = bytearray(data)
            for _ in range(rng.choice((1, 1, 2, 3))):
                pos = rng.randrange(2, len(d))  # metadata lengths and every carried byte
                d[pos] = rng.choice((0, 0xFF, d[pos] ^ (1 << rng.randrange(8)), rng.randrange(256)))
            d = bytes(d)
            k = rng.choice((kind, kind, rng.choice(kinds)))
            got, want = outcome(_decode_fold, d, k, 1), outcome(ref_decode_fold, d, k, 1)
            assert got == want, (d.hex(), hex(k))
            verdicts.add(want if isinstance(want, Reason) else "ok")
    # the mutations reached accepted headers and the header, length and order checks
    assert {"ok", Reason.BAD_FOLD_HEADERS, Reason.BAD_FOLD_LENGTHS, Reason.BAD_FOLD_ORDER} <= verdicts


def test_restore_headers_equals_per_field_reference():
    rng = random.Random(82)
    opts = folded_options(150, 83)
    kinds = {}
    seen_partial = 0
    for trial in range(600):
        # a chain of up to 3 decoded levels (each decoded against what the previous one carries)
        kind, carried = ETH_P_TEB, []
        for _ in range(rng.randrange(1, 4)):
            fits = [d for k, d in opts if k == kind] or [d for k, d in opts if k == ETH_P_TEB]
            c = _decode_fold(rng.choice(fits), kind, len(carried))
            if rng.random() < 0.5:  # the UDP checksum flag on or off: either is a valid carrier
                c = c._replace(flags=c.flags ^ F_UDP_CSUM)
            carried.append(c)
            kind = c.next_proto
        kinds[len(carried)] = kinds.get(len(carried), 0) + 1
        inner_len = rng.choice((0, 1, 2, 61, 1500, rng.randrange(65535), 65535 - 400))
        inner_sum = rng.choice((0, 0xFFFF, 1, 0xFFFE, rng.randrange(0x10000), rng.randrange(1 << 20)))
        for mode in ("compute", "partial"):
            got, want = outcome(restore_headers, carried, inner_len, inner_sum, mode), \
                outcome(ref_restore_headers, carried, inner_len, inner_sum, mode)
            assert got == want, (trial, mode, inner_len, inner_sum)
            if mode == "partial" and not isinstance(got, Reason) and got[1] is not None:
                seen_partial += 1
    assert seen_partial > 50 and len(kinds) == 3


def test_restore_headers_checksum_edge_values():
    """Sums that land on 0 / 0xFFFF: search inner_sum values where the UDP checksum computes to 0 (sent as
    0xFFFF) and where the pseudo-header sum is a multiple of 0xFFFF."""
    for kind, data in folded_options(40, 84):
        if kind != ETH_P_TEB:
            continue
        c = _decode_fold(data, kind, 0)
        c = c._replace(flags=c.flags | F_UDP_CSUM)
        for inner_len in (0, 100, 1001):
            base, _ = ref_restore_headers([c], inner_len, 0)
            u = c.l2 + c.l3
            v = int.from_bytes(base[u + 6 : u + 8], "big")
            # v = ~(S + 0): inner sums making the total exactly 0xFFFF, or 0 / 0xFFFF more or less than that
            for s in {v, (v + 1) & 0xFFFF, (v - 1) & 0xFFFF, 0, 0xFFFF}:
                for mode in ("compute", "partial"):
                    assert restore_headers([c], inner_len, s, mode) == ref_restore_headers([c], inner_len, s, mode)
            got, _ = restore_headers([c], inner_len, v)
            assert int.from_bytes(got[u + 6 : u + 8], "big") == 0xFFFF  # a computed 0 is sent as 0xFFFF


def test_ones_sum_every_length_and_alignment():
    rng = random.Random(85)
    buf = rng.randbytes(70000)
    lengths = list(range(0, 2001)) + [4095, 4096, 4097, 65535, 65536, 65537, 69996]
    for n in lengths:
        off = rng.randrange(4)  # numpy reads unaligned words too
        b = buf[off : off + n]
        want = ones_sum_ref(b)
        assert csum.ones_sum(b) == want, n
        assert csum.ones_sum(memoryview(buf)[off : off + n]) == want, (n, off)
        assert csum.ones_sum(bytearray(b)) == want, n
    for n in (511, 512, 513, 65536, 65537):
        for fill in (0, 0xFF):
            b = bytes([fill]) * n
            assert csum.ones_sum(b) == ones_sum_ref(b), (n, fill)
            if n % 2 == 0:
                assert csum.ones_sum(b) == (0 if fill == 0 else 0xFFFF)  # 0 only for all-zero words


def _ones_add(a: int, b: int) -> int:
    t = a + b
    return (t & 0xFFFF) + (t >> 16)


def test_restore_headers_ipv4_header_sum_0xffff_and_pseudo_multiple():
    """The two 0-vs-0xFFFF cases of the arithmetic form: an IPv4 header whose sum is exactly 0xFFFF (its
    checksum field is 0, not 0xFFFF), and a pseudo-header sum that is a multiple of 0xFFFF (the partial value
    is 0xFFFF, not 0)."""
    done_ip = done_pseudo = 0
    for kind, data in folded_options(60, 86):
        c = _decode_fold(data, kind, 0) if kind == ETH_P_TEB else None
        if c is None:
            continue
        c = c._replace(flags=c.flags | F_UDP_CSUM)
        ip, u = c.l2, c.l2 + c.l3
        if not c.flags & F_V6:
            # adjust the identification so the restored header (checksum field zero) sums to 0xFFFF
            restored, _ = ref_restore_headers([c], 300)
            field = int.from_bytes(restored[ip + 10 : ip + 12], "big")
            h = bytearray(c.hdr)
            h[ip + 4 : ip + 6] = _ones_add(int.from_bytes(h[ip + 4 : ip + 6], "big"), field).to_bytes(2, "big")
            c2 = c._replace(hdr=bytes(h))
            want, _ = ref_restore_headers([c2], 300)
            assert want[ip + 10 : ip + 12] == b"\0\0"
            assert restore_headers([c2], 300) == ref_restore_headers([c2], 300)
            done_ip += 1
        # an inner length that makes the pseudo-header sum (addresses + 17 + UDP length) a multiple of 0xFFFF
        addrs = c.hdr[ip + 8 : ip + 40] if c.flags & F_V6 else c.hdr[ip + 12 : ip + 20]
        fixed = csum.ones_sum(addrs, 17 + 8 + c.tun)
        inner_len = (0xFFFF - fixed) % 0xFFFF
        if inner_len + 8 + c.tun + c.l3 > 0xFFFF:
            continue
        want = ref_restore_headers([c], inner_len, 0x1234, "partial")
        assert want[0][u + 6 : u + 8] == b"\xff\xff" and want[1] == u
        assert restore_headers([c], inner_len, 0x1234, "partial") == want
        assert restore_headers([c], inner_len, 0x1234) == ref_restore_headers([c], inner_len, 0x1234)
        done_pseudo += 1
    assert done_ip >= 5 and done_pseudo >= 5


def test_decode_fold_ipv4_ihl_beyond_60():
    """Metadata l3 = 64 with a 0x50 first byte (version 5, IHL 0) must not pass as IHL 16."""
    for kind, data in folded_options(60, 87):
        b0, flags, l2, l3, tun, _ = _META.unpack_from(data)
        if flags & F_V6 or l3 != 20:
            continue
        hdr = bytearray(data[FOLD_META_LEN : FOLD_META_LEN + l2 + 20 + 8 + tun])
        hdr[l2] = 0x50
        hdr[l2 + 20 : l2 + 20] = bytes(44)  # 44 bytes more of 'IPv4 header'
        meta = bytes((b0, flags, l2, 64, tun, 0))
        d = meta + hdr
        d += bytes(-len(d) % 4)
        if len(d) > 124:
            continue
        assert outcome(_decode_fold, d, kind, 0) == outcome(ref_decode_fold, d, kind, 0) == Reason.BAD_FOLD_HEADERS
        return
    raise AssertionError("no IPv4 level in the corpus")
