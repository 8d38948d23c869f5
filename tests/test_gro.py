"""gro.receive: segment_tcp -> one UDP_GRO read -> TAP writes (coalesced super-packet or one per datagram)."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether

import packets as P
from test_gso import INNER_ID, NEST_ID, NESTS, VNI, Case, cut, scapy_rebuild
from udpnest.fold import fold
from udpnest.rxpipe import Kind, TapWrite, receive, rows_of
from udpnest.wire.errors import Reason
from udpnest.wire.geneve import build_geneve, build_option
from udpnest.wire.options import Echo, build_echo, build_gro_hint
from udpnest.wire.vnet import VnetHdr

ZERO24 = bytes(24)
OPT = build_option(0x0123, 0x01, b"\xde\xad\xbe\xef")  # a non-critical option of someone else


# --- independent expectations ------------------------------------------------------------------------
def pseudo(src: bytes, dst: bytes, proto: int, length: int) -> int:
    words = src + dst
    s = sum(struct.unpack(f"!{len(words) // 2}H", words)) + proto + (length >> 16) + (length & 0xFFFF)
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def addrs(frame: bytes, ip_off: int) -> tuple[bytes, bytes]:
    if frame[ip_off] >> 4 == 6:
        return frame[ip_off + 8 : ip_off + 24], frame[ip_off + 24 : ip_off + 40]
    return frame[ip_off + 12 : ip_off + 16], frame[ip_off + 16 : ip_off + 20]


def expected_coalesced(case: Case, frame: bytes) -> bytes:
    """The super-packet with the TCP (and non-zero nested UDP) checksum replaced by the pseudo-header sum."""
    exp = bytearray(frame)
    t = case.tcp_off
    exp[t + 16 : t + 18] = pseudo(*addrs(frame, case.inner_ip_off), 6, len(frame) - t).to_bytes(2, "big")
    if case.nested_csum:
        u = case.udp_off
        exp[u + 6 : u + 8] = pseudo(*addrs(frame, 14), 17, len(frame) - u).to_bytes(2, "big")
    return bytes(exp)


def expected_vnet(case: Case, mss: int) -> VnetHdr:
    tcp_type = 4 if case.inner_v6 else 1
    nested = case.udp_off is not None
    gso_type = tcp_type | ((0x40 if case.nested_v6 else 0x20) if nested else 0)
    return VnetHdr(flags=1 | (8 if case.nested_csum else 0), gso_type=gso_type, hdr_len=case.hdr_len, gso_size=mss,
                   csum_start=case.tcp_off, csum_offset=16, outer_th_offset=case.udp_off or 0,
                   inner_nh_offset=case.inner_ip_off if nested else 0)


def expected_single(case: Case, mode: str, prefix: bytes, dg: bytes, super_frame: bytes) -> bytes:
    """The frame one datagram must be written as: plain = as received; fold = the super-packet's nested
    headers (lengths/checksums recomputed by scapy) in front of the received innermost frame."""
    inner = dg[len(prefix) :]
    if mode == "plain" or case.udp_off is None:
        return inner
    q = Ether(super_frame[: case.nested_len] + inner)
    ip = q.getlayer(IPv6 if case.nested_v6 else IP)
    if case.nested_v6:
        del ip.plen
    else:
        del ip.len, ip.chksum
    del q[UDP].len
    if case.nested_csum:
        del q[UDP].chksum
    return bytes(q)


def frame_of(w: TapWrite) -> bytes:
    return b"".join(bytes(p) for p in w.parts)


def read_of(dgs: list[bytes]) -> tuple[bytes, int, int]:
    buf = b"".join(dgs)
    return buf, len(buf), len(dgs[0])


def kind_of(mode: str, case: Case) -> Kind:
    return Kind.FOLD if mode == "fold" and case.udp_off is not None else Kind.PLAIN


def assert_split(res, dgs: list[bytes], single) -> None:
    """Not coalesced whole, nothing lost: since the split (rxpipe.split_plan) each run of 2+ rows that does
    coalesce on its own is one super-packet, byte-identical to those rows as a read of their own; every other
    row is written one datagram at a time (``single(row index, write)`` checks it), in order."""
    assert not (len(res.writes) == 1 and res.writes[0].segments == len(dgs)), "coalesced though it must not be"
    i = 0
    for w in res.writes:
        if w.segments > 1:
            [own] = receive(*read_of(dgs[i : i + w.segments])).writes
            assert (w.vnet, frame_of(w)) == (own.vnet, frame_of(own))
        else:
            assert w.vnet == ZERO24
            single(i, w)
        i += w.segments
    assert i == len(dgs), "rows lost"


def assert_fallback(res, case: Case, mode: str, prefix: bytes, dgs: list[bytes], super_frame: bytes) -> None:
    assert not res.drops and not res.control

    def single(i: int, w) -> None:
        assert w.kind is kind_of(mode, case)
        assert frame_of(w) == expected_single(case, mode, prefix, dgs[i], super_frame)

    assert_split(res, dgs, single)


def set_flag_and_fix(case: Case, mode: str, prefix: bytes, dg: bytes, *, flags_or: int = 0, ip_id: int | None = None,
                     seq_add: int = 0) -> bytes:
    """Change one datagram's TCP flags / inner IPv4 ID / seq and make every checksum valid again (scapy)."""
    f = bytearray(dg[len(prefix) :])
    shift = case.nested_len if mode == "fold" else 0
    t = case.tcp_off - shift
    f[t + 13] |= flags_or
    if ip_id is not None:
        ip = case.inner_ip_off - shift
        f[ip + 4 : ip + 6] = ip_id.to_bytes(2, "big")
    if seq_add:
        seq = (int.from_bytes(f[t + 4 : t + 8], "big") + seq_add) & 0xFFFFFFFF
        f[t + 4 : t + 8] = seq.to_bytes(4, "big")
    return prefix + scapy_rebuild(bytes(f))


# --- round trips -------------------------------------------------------------------------------------
def _rt_params():
    for nest in NESTS:
        for inner_v6 in (False, True):
            for mode in ("plain", "fold"):
                for mss in (1400, 1397):
                    for size in ("mss+1", "3*mss", "9000", "60000"):
                        n = {"mss+1": mss + 1, "3*mss": 3 * mss}.get(size) or int(size)
                        yield pytest.param(Case(nest=nest, inner_v6=inner_v6, payload_len=n), mode, mss,
                                           id=f"{nest}-{'v6' if inner_v6 else 'v4'}-{mode}-{mss}-{size}")


@pytest.mark.parametrize(("case", "mode", "mss"), list(_rt_params()))
def test_round_trip_coalesced(case: Case, mode: str, mss: int):
    frame = case.frame()
    prefix, _, segs = cut(case, mode, mss)
    assert segs.count > 1
    res = receive(segs.buffer, len(segs.buffer), segs.row_len)
    assert not res.drops and not res.control
    assert len(res.writes) == 1
    w = res.writes[0]
    assert w.kind is kind_of(mode, case)
    assert w.segments == segs.count
    got = frame_of(w)
    assert got == expected_coalesced(case, frame)
    assert len(w.vnet) == 24
    assert VnetHdr.unpack(w.vnet) == expected_vnet(case, mss)


@pytest.mark.parametrize("mode", ["plain", "fold"])
@pytest.mark.parametrize("flags", ["A", "PA", "FA", "FPA", "EA", "EFPA"])
@pytest.mark.parametrize("mss", [1000, 999])
def test_round_trip_flags(mode, flags, mss):
    case = Case(nest="vx6c", flags=flags, payload_len=4500)
    prefix, _, segs = cut(case, mode, mss)
    res = receive(segs.buffer, len(segs.buffer), segs.row_len)
    assert len(res.writes) == 1 and res.writes[0].segments == segs.count
    assert frame_of(res.writes[0]) == expected_coalesced(case, case.frame())


@pytest.mark.parametrize("mode", ["plain", "fold"])
@pytest.mark.parametrize("seq", [(1 << 32) - 2500, (1 << 32) - 1])
def test_round_trip_seq_wrap(mode, seq):
    case = Case(nest="vx4", seq=seq, payload_len=5001)
    prefix, _, segs = cut(case, mode, 1000)
    res = receive(segs.buffer, len(segs.buffer), segs.row_len)
    assert len(res.writes) == 1 and res.writes[0].segments == 6
    assert frame_of(res.writes[0]) == expected_coalesced(case, case.frame())


def _single_params():
    for nest in ("none", "vx4", "vx4c", "vx6c"):
        for mode in ("plain", "fold"):
            for size in (0, 1, 999, 1000):
                yield pytest.param(Case(nest=nest, payload_len=size), mode, id=f"{nest}-{mode}-{size}")


@pytest.mark.parametrize(("case", "mode"), list(_single_params()))
def test_single_segment_is_the_super_packet(case: Case, mode: str):
    """One datagram (payload <= mss): written with a zero vnet header, byte-identical to the super-packet."""
    prefix, _, segs = cut(case, mode, 1000)
    assert segs.count == 1
    res = receive(segs.buffer, len(segs.buffer), segs.row_len)
    assert len(res.writes) == 1 and not res.drops
    w = res.writes[0]
    assert w.vnet == ZERO24 and w.segments == 1
    assert frame_of(w) == case.frame()


def test_hint_kind():
    from udpnest.fold import gro_hint_for

    case = Case(nest="vx4c", payload_len=5001)
    hint = gro_hint_for(case.frame(), gso=True)
    assert hint is not None
    prefix, _, segs = cut(case, "plain", 1000, prefix_options=build_gro_hint(hint))
    res = receive(segs.buffer, len(segs.buffer), segs.row_len)
    assert len(res.writes) == 1
    assert res.writes[0].kind is Kind.HINT and res.writes[0].segments == 6
    assert frame_of(res.writes[0]) == expected_coalesced(case, case.frame())


@pytest.mark.parametrize("mode", ["plain", "fold"])
def test_other_options_same_in_all_rows_coalesce(mode):
    case = Case(nest="vx4c", payload_len=5001)
    prefix, _, segs = cut(case, mode, 1000, prefix_options=OPT)
    res = receive(segs.buffer, len(segs.buffer), segs.row_len)
    assert len(res.writes) == 1 and res.writes[0].segments == 6


# --- fallbacks ---------------------------------------------------------------------------------------
MODES_NESTS = [(m, n, v6) for m in ("plain", "fold") for n in ("none", "vx4c", "vx6") for v6 in (False, True)]
MN_IDS = [f"{m}-{n}-{'v6' if v6 else 'v4'}" for m, n, v6 in MODES_NESTS]


@pytest.mark.parametrize(("mode", "nest", "inner_v6"), MODES_NESTS, ids=MN_IDS)
@pytest.mark.parametrize("mss", [1400, 1397])
@pytest.mark.parametrize("where", ["first", "middle", "last", "odd-offset"])
def test_fallback_corrupt_payload(mode, nest, inner_v6, mss, where):
    case = Case(nest=nest, inner_v6=inner_v6, payload_len=4 * mss + 77)
    prefix, _, segs = cut(case, mode, mss)
    dgs = segs.datagrams()
    row = {"first": 0, "middle": 2, "last": len(dgs) - 1, "odd-offset": 1}[where]
    bad = bytearray(dgs[row])
    pos = len(bad) - 20 if where != "odd-offset" else len(bad) - 33
    bad[pos] ^= 0x5A
    dgs[row] = bytes(bad)
    buf, n, g = read_of(dgs)
    res = receive(buf, n, g)
    assert_fallback(res, case, mode, prefix, dgs, case.frame())
    # the TCP checksum check is what refused it
    res2 = receive(buf, n, g, verify_csum=False)
    assert len(res2.writes) == 1 and res2.writes[0].segments == len(dgs)


@pytest.mark.parametrize(("mode", "nest", "inner_v6"), MODES_NESTS, ids=MN_IDS)
def test_fallback_sequence_gap(mode, nest, inner_v6):
    case = Case(nest=nest, inner_v6=inner_v6, payload_len=5001)
    prefix, _, segs = cut(case, mode, 1000)
    dgs = segs.datagrams()
    del dgs[2]
    res = receive(*read_of(dgs))
    assert_fallback(res, case, mode, prefix, dgs, case.frame())


@pytest.mark.parametrize("mode", ["plain", "fold"])
def test_fallback_sequence_gap_in_place(mode):
    """Same number of rows, one sequence number off by one (checksums fixed)."""
    case = Case(nest="vx4c", payload_len=5001)
    prefix, _, segs = cut(case, mode, 1000)
    dgs = segs.datagrams()
    dgs[3] = set_flag_and_fix(case, mode, prefix, dgs[3], seq_add=1)
    res = receive(*read_of(dgs))
    assert_fallback(res, case, mode, prefix, dgs, case.frame())


@pytest.mark.parametrize(("mode", "nest", "inner_v6"), MODES_NESTS, ids=MN_IDS)
def test_fallback_two_flows(mode, nest, inner_v6):
    a = Case(nest=nest, inner_v6=inner_v6, payload_len=5001)
    b = Case(nest=nest, inner_v6=inner_v6, payload_len=5001, sport=40001, seed=1)
    pa, _, sa = cut(a, mode, 1000)
    pb, _, sb = cut(b, mode, 1000)
    assert pa == pb and sa.row_len == sb.row_len
    dgs = sa.datagrams()[:2] + sb.datagrams()[2:]
    res = receive(*read_of(dgs))
    assert not res.drops
    assert [w.segments for w in res.writes] == [2, len(dgs) - 2]  # split where flow b starts

    def single(i: int, w) -> None:  # pragma: no cover - every row is in a run here
        c = a if i < 2 else b
        assert frame_of(w) == expected_single(c, mode, pa, dgs[i], c.frame())

    assert_split(res, dgs, single)


@pytest.mark.parametrize(("mode", "nest", "inner_v6"), MODES_NESTS, ids=MN_IDS)
@pytest.mark.parametrize(("flag", "row"), [(0x02, 2), (0x04, 2), (0x20, 2), (0x80, 2), (0x08, 2), (0x01, 1),
                                           (0x02, 0), (0x04, -1), (0x80, -1)],
                         ids=["SYN-mid", "RST-mid", "URG-mid", "CWR-mid", "PSH-mid", "FIN-mid", "SYN-first",
                              "RST-last", "CWR-last"])
def test_fallback_flags(mode, nest, inner_v6, flag, row):
    case = Case(nest=nest, inner_v6=inner_v6, payload_len=5001)
    prefix, _, segs = cut(case, mode, 1000)
    dgs = segs.datagrams()
    dgs[row] = set_flag_and_fix(case, mode, prefix, dgs[row], flags_or=flag)
    res = receive(*read_of(dgs))
    assert_fallback(res, case, mode, prefix, dgs, case.frame())


@pytest.mark.parametrize("mode", ["plain", "fold"])
@pytest.mark.parametrize("flags", ["CA", "CPA", "SA", "RA", "UA", "P"])
def test_fallback_super_packet_flags(mode, flags):
    """CWR (first segment), SYN/RST/URG on every segment, or no ACK: never coalesced."""
    case = Case(nest="vx4", flags=flags, payload_len=3001)
    prefix, _, segs = cut(case, mode, 1000)
    dgs = segs.datagrams()
    res = receive(*read_of(dgs))
    assert_fallback(res, case, mode, prefix, dgs, case.frame())


@pytest.mark.parametrize("mode", ["plain", "fold"])
@pytest.mark.parametrize("what", ["option-data", "vni", "critical-bit"])
def test_fallback_different_geneve_header(mode, what):
    case = Case(nest="vx4c", payload_len=5001)
    prefix, _, segs = cut(case, mode, 1000, prefix_options=OPT)
    dgs = segs.datagrams()
    G = len(prefix)
    h = bytearray(dgs[2][:G])
    if what == "option-data":
        i = bytes(h).index(b"\xde\xad\xbe\xef")
        h[i + 3] ^= 1
    elif what == "vni":
        h[6] ^= 1
    else:
        h[1] ^= 0x40
    dgs[2] = bytes(h) + dgs[2][G:]
    res = receive(*read_of(dgs))
    assert_fallback(res, case, mode, prefix, dgs, case.frame())


@pytest.mark.parametrize("mode", ["plain", "fold"])
def test_fallback_last_row_longer_than_rows(mode):
    """The last datagram is longer than gso_size: its tail becomes a row of its own; never coalesced with
    it (the read is split before it: the two full rows before it are a super-packet of their own)."""
    case = Case(nest="vx4", payload_len=3000)
    prefix, _, segs = cut(case, mode, 1000)
    long_case = Case(nest="vx4", payload_len=1004, seq=case.seq + 2000)
    lp, _, ls = cut(long_case, mode, 2000)
    dgs = segs.datagrams()[:2] + ls.datagrams()
    buf, n, g = read_of(dgs)
    assert rows_of(n, g) == (4, g, 4)
    res = receive(buf, n, g)
    assert all(w.vnet == ZERO24 and w.segments == 1 for w in res.writes[1:])
    assert (Reason.TRUNCATED_GENEVE, 1) in res.drops
    assert sum(w.segments for w in res.writes) + len(res.drops) == 4
    assert res.writes[0].segments == 2
    assert frame_of(res.writes[0]) == frame_of(receive(*read_of(dgs[:2])).writes[0])


@pytest.mark.parametrize("mode", ["plain", "fold"])
@pytest.mark.parametrize("last", ["headers-only", "short"])
def test_fallback_last_row_too_short(mode, last):
    case = Case(nest="vx4", payload_len=3000)
    prefix, _, segs = cut(case, mode, 1000)
    dgs = segs.datagrams()
    tail = Case(nest="vx4", payload_len=0, seq=case.seq + 3000)
    _, _, ts = cut(tail, mode, 1000)
    if last == "headers-only":
        dgs.append(ts.datagrams()[0])  # a pure ACK after the data: a zero-length last segment
    else:
        dgs.append(dgs[0][:20])
    res = receive(*read_of(dgs))
    # split before the last row (rxpipe.split_plan): the data rows one super-packet, the last one datagram
    assert res.writes[0].segments == len(dgs) - 1
    assert frame_of(res.writes[0]) == frame_of(receive(*read_of(dgs[:-1])).writes[0])
    assert all(w.vnet == ZERO24 for w in res.writes[1:])
    assert sum(w.segments for w in res.writes) + sum(c for _, c in res.drops) == len(dgs)


@pytest.mark.parametrize("mode", ["plain", "fold"])
@pytest.mark.parametrize("nest", ["none", "vx4"])
def test_ip_ids_without_df(mode, nest):
    case = Case(nest=nest, inner_df=False, payload_len=5001)
    prefix, _, segs = cut(case, mode, 1000)
    dgs = segs.datagrams()
    res = receive(*read_of(dgs))
    assert len(res.writes) == 1, "incrementing IDs without DF coalesce"
    dgs[2] = set_flag_and_fix(case, mode, prefix, dgs[2], ip_id=(INNER_ID + 1) & 0xFFFF)  # same as row 1
    res = receive(*read_of(dgs))
    assert_fallback(res, case, mode, prefix, dgs, case.frame())


@pytest.mark.parametrize("mode", ["plain", "fold"])
@pytest.mark.parametrize("nest", ["none", "vx4"])
def test_ip_ids_with_df(mode, nest):
    """With DF: fixed IDs coalesce (frame carries the first ID); IDs jumping around do not."""
    case = Case(nest=nest, inner_df=True, payload_len=5001)
    prefix, _, segs = cut(case, mode, 1000, fix_ip_ids=False)
    dgs = segs.datagrams()
    res = receive(*read_of(dgs))
    assert len(res.writes) == 1 and res.writes[0].segments == 6
    assert frame_of(res.writes[0]) == expected_coalesced(case, case.frame())
    dgs[2] = set_flag_and_fix(case, mode, prefix, dgs[2], ip_id=(INNER_ID + 7) & 0xFFFF)
    res = receive(*read_of(dgs))
    assert_fallback(res, case, mode, prefix, dgs, case.frame())


def test_nested_ip_ids_must_increment_too():
    case = Case(nest="vx4", inner_df=False, payload_len=5001)
    prefix, _, segs = cut(case, "plain", 1000)
    dgs = segs.datagrams()
    f = bytearray(dgs[3][len(prefix) :])
    f[14 + 4 : 14 + 6] = ((NEST_ID + 7) & 0xFFFF).to_bytes(2, "big")  # nested IPv4 (DF set): neither fixed nor +1
    dgs[3] = prefix + scapy_rebuild(bytes(f))
    res = receive(*read_of(dgs))
    assert_fallback(res, case, "plain", prefix, dgs, case.frame())


@pytest.mark.parametrize("inner_v6", [False, True])
@pytest.mark.parametrize("mode", ["plain", "fold"])
def test_fallback_coalesced_frame_too_large(inner_v6, mode):
    """70 full rows of 1000 bytes: contiguous and valid, but a 70 KB IP packet is impossible."""
    nest = "none" if mode == "plain" else "vx4"
    a = Case(nest=nest, inner_v6=inner_v6, payload_len=60000, flags="A")  # no PSH on A's last segment
    b = Case(nest=nest, inner_v6=inner_v6, payload_len=10000, seq=a.seq + 60000, inner_id=(INNER_ID + 60) & 0xFFFF,
             flags="A")
    pa, _, sa = cut(a, mode, 1000)
    pb, _, sb = cut(b, mode, 1000)
    dgs = sa.datagrams() + sb.datagrams()
    assert len({len(d) for d in dgs}) == 1
    res = receive(*read_of(dgs))
    assert len(res.writes) == 70 and all(w.vnet == ZERO24 for w in res.writes)
    # the first 60 of them alone do coalesce
    res = receive(*read_of(dgs[:65]))
    assert len(res.writes) == 1 and res.writes[0].segments == 65


def test_fallback_nested_level_too_large():
    """Folded: the innermost IPv6 packet fits (payload length 65512) but the restored nested IPv4 would not."""
    a = Case(nest="vx4", inner_v6=True, payload_len=60000, flags="A")
    b = Case(nest="vx4", inner_v6=True, payload_len=5480, seq=a.seq + 60000, flags="A")
    _, _, sa = cut(a, "fold", 1000)
    _, _, sb = cut(b, "fold", 1000)
    dgs = sa.datagrams() + sb.datagrams()
    res = receive(*read_of(dgs))
    assert not res.drops
    assert len(res.writes) == len(dgs) == 66 and all(w.vnet == ZERO24 for w in res.writes)
    res = receive(*read_of(dgs[:-2]))  # 64 rows: fits
    assert len(res.writes) == 1 and res.writes[0].segments == 64


# --- the single-datagram super-packet path --------------------------------------------------------------
@pytest.mark.parametrize(("mode", "nest", "inner_v6"), MODES_NESTS, ids=MN_IDS)
@pytest.mark.parametrize("max_datagram", [1472, 1452, 1450])
def test_whole_super_packet_datagram(mode, nest, inner_v6, max_datagram):
    """One datagram (no UDP_GRO cmsg) larger than the path allows: a whole super-packet that crossed a veth
    uncut.  Written as one GSO frame, cut at the row length a sender would use (a multiple of 4)."""
    case = Case(nest=nest, inner_v6=inner_v6, payload_len=20000)
    frame = case.frame()
    dg = build_geneve(VNI, 0x6558) + frame if mode == "plain" else fold(frame, gso=True, vni=VNI).payload
    G = len(dg) - len(frame) + case.nested_len if mode == "fold" else len(dg) - len(frame)
    H = case.hdr_len - (case.nested_len if mode == "fold" else 0)
    mss = (max_datagram & ~3) - G - H
    res = receive(dg, len(dg), 0, max_datagram=max_datagram)
    assert not res.drops and len(res.writes) == 1
    w = res.writes[0]
    assert w.segments == -(-20000 // mss)
    assert w.kind is kind_of(mode, case)
    assert VnetHdr.unpack(w.vnet) == expected_vnet(case, mss)
    assert frame_of(w) == expected_coalesced(case, frame)


@pytest.mark.parametrize("mode", ["plain", "fold"])
def test_whole_datagram_not_a_super_packet(mode):
    """A big datagram whose IP length does not describe it, or a UDP inner: written/dropped one to one."""
    case = Case(nest="vx4", payload_len=3000)
    frame = case.frame()
    dg = build_geneve(VNI, 0x6558) + frame if mode == "plain" else fold(frame, gso=True, vni=VNI).payload
    res = receive(dg + b"\0" * 4, len(dg) + 4, 0)  # padded: lengths say 4 bytes less
    assert all(w.vnet == ZERO24 for w in res.writes)
    assert len(res.writes) + len(res.drops) == 1
    udp = P.frame([], P.Inner(tcp=False, payload=b"u" * 3000))
    dg = build_geneve(VNI, 0x6558) + udp
    res = receive(dg, len(dg), 0)
    assert len(res.writes) == 1 and res.writes[0].vnet == ZERO24 and frame_of(res.writes[0]) == udp


# --- non-TCP, control and junk -------------------------------------------------------------------------
def _non_tcp_frames():
    udp = P.frame([], P.Inner(tcp=False, payload=b"u" * 300))
    icmp = bytes(Ether() / IP(src="10.9.0.1", dst="10.9.0.2") / ICMP() / (b"i" * 300))
    arp = bytes(Ether(dst="ff:ff:ff:ff:ff:ff") / ARP(pdst="10.9.0.2"))
    nested_udp = P.frame([P.Tunnel(udp_csum=True)], P.Inner(tcp=False, payload=b"n" * 300))
    nested_tcp_small = P.frame([P.Tunnel(ip=P.IPSpec(v6=True))], P.Inner(payload=b"t" * 300))
    return {"udp": udp, "icmp": icmp, "arp": arp, "nested-udp": nested_udp, "nested-tcp": nested_tcp_small}


@pytest.mark.parametrize("mode", ["plain", "fold"])
@pytest.mark.parametrize("name", list(_non_tcp_frames()))
@pytest.mark.parametrize("count", [1, 3])
def test_non_tcp_one_to_one(mode, name, count):
    frame = _non_tcp_frames()[name]
    dg = build_geneve(VNI, 0x6558) + frame if mode == "plain" else fold(frame, vni=VNI).payload
    buf = dg * count
    res = receive(buf, len(buf), len(dg) if count > 1 else 0)
    assert not res.drops and not res.control
    assert len(res.writes) == count
    for w in res.writes:
        assert w.vnet == ZERO24 and w.segments == 1
        assert frame_of(w) == frame
    folded = mode == "fold" and name.startswith("nested")
    assert res.writes[0].kind is (Kind.FOLD if folded else Kind.PLAIN)


def _echo_dg(reply: bool, nonce: int = 7) -> bytes:
    e = Echo(nonce, 123456789, 3, 252, 1)
    return build_geneve(VNI, 0x6558, build_echo(e, reply=reply), oam=True)


def test_echo_to_control():
    req, rep = _echo_dg(False), _echo_dg(True, 8)
    for dg in (req, rep):
        res = receive(dg, len(dg), 0)
        assert not res.writes and not res.drops and len(res.control) == 1
        pkt, raw = res.control[0]
        assert bytes(raw) == dg
    res = receive(req, len(req), 0)
    assert res.control[0][0].echo_request.nonce == 7 and res.control[0][0].echo_reply is None
    res = receive(rep, len(rep), 0)
    assert res.control[0][0].echo_reply.nonce == 8
    # several in one GRO read, with a junk datagram of the same length
    junk = build_geneve(VNI, 0x6558, build_option(0x4444, 0x85, bytes(20)))
    assert len(junk) == len(req)
    buf = req + rep + junk + req
    res = receive(buf, len(buf), len(req))
    assert not res.writes
    assert [p.echo_request is not None for p, _ in res.control] == [True, False, True]
    assert res.drops == [(Reason.UNKNOWN_CRITICAL_OPTION, 1)]


def _folded_dg() -> bytes:
    return fold(P.frame([P.Tunnel()], P.Inner(payload=b"x" * 64)), vni=VNI).payload


def _junk():
    frame = P.frame([], P.Inner(payload=b"y" * 64))
    fd = _folded_dg()
    bad_version = bytearray(fd)
    bad_version[12] |= 0x40  # FOLD metadata byte 0: version 1
    bad_encap = bytearray(fd)
    bad_encap[12] = (bad_encap[12] & ~0x7) | 5
    bad_flags = bytearray(fd)
    bad_flags[13] &= ~0x10  # CSUM_ZEROED missing
    two_echo = build_geneve(VNI, 0x6558, build_echo(Echo(1, 2, 3, 4, 1), reply=False) * 2, oam=True)
    return {
        "truncated-geneve": (b"\x00\x00\x65", Reason.TRUNCATED_GENEVE),
        "truncated-options": (build_geneve(VNI, 0x6558, OPT)[:10], Reason.TRUNCATED_GENEVE),
        "geneve-version": (bytes([0x40]) + build_geneve(VNI, 0x6558)[1:] + frame, Reason.BAD_GENEVE_VERSION),
        "unknown-critical": (build_geneve(VNI, 0x6558, build_option(0x4444, 0x81, b"")) + frame,
                             Reason.UNKNOWN_CRITICAL_OPTION),
        "bad-fold-version": (bytes(bad_version), Reason.BAD_FOLD_VERSION),
        "bad-fold-encap": (bytes(bad_encap), Reason.BAD_FOLD_ENCAP),
        "bad-fold-flags": (bytes(bad_flags), Reason.BAD_FOLD_VERSION),
        "oam-without-echo": (build_geneve(VNI, 0x6558, oam=True) + frame, Reason.OAM),
        "ip-without-fold": (build_geneve(VNI, 0x0800) + frame[14:], Reason.BAD_GENEVE_PROTOCOL),
        "two-echo-requests": (two_echo, Reason.BAD_ECHO),
    }


@pytest.mark.parametrize("name", list(_junk()))
def test_junk_dropped_with_reason(name):
    dg, reason = _junk()[name]
    res = receive(dg, len(dg), 0)
    assert res.drops == [(reason, 1)]
    assert not res.writes and not res.control


def test_junk_among_good_rows():
    """One bad row in a GRO read: dropped with its reason; the row before it written alone, the rows after it
    one super-packet (the read is split at the bad row, rxpipe.split_plan)."""
    case = Case(nest="vx4", payload_len=4001)
    prefix, _, segs = cut(case, "fold", 1000)
    dgs = segs.datagrams()
    bad = bytearray(dgs[1])
    bad[12] |= 0x40
    dgs[1] = bytes(bad)
    res = receive(*read_of(dgs))
    assert res.drops == [(Reason.BAD_FOLD_VERSION, 1)]
    assert [w.segments for w in res.writes] == [1, len(dgs) - 2]
    assert frame_of(res.writes[0]) == expected_single(case, "fold", prefix, dgs[0], case.frame())
    assert frame_of(res.writes[1]) == frame_of(receive(*read_of(dgs[2:])).writes[0])


# --- rows_of ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("n", "g", "want"), [
    (0, 0, (1, 0, 0)),
    (0, 1000, (1, 0, 0)),
    (100, 0, (1, 100, 100)),
    (100, -5, (1, 100, 100)),
    (99, 100, (1, 99, 99)),
    (100, 100, (1, 100, 100)),
    (101, 100, (2, 100, 1)),
    (200, 100, (2, 100, 100)),
    (201, 100, (3, 100, 1)),
    (299, 100, (3, 100, 99)),
    (5, 1, (5, 1, 1)),
    (65535, 1448, (46, 1448, 65535 - 45 * 1448)),
])
def test_rows_of(n, g, want):
    assert rows_of(n, g) == want
    count, row_len, last = want
    assert (count - 1) * row_len + last == n


# --- never raises ----------------------------------------------------------------------------------------
def _accounted(res, n: int, g: int) -> None:
    count = rows_of(n, g)[0]
    total = sum(w.segments for w in res.writes) + sum(c for _, c in res.drops) + len(res.control)
    assert total == count
    for w in res.writes:
        assert isinstance(w, TapWrite) and len(w.vnet) == 24
        if w.vnet != ZERO24:
            h = VnetHdr.unpack(w.vnet)  # a header the kernel accepts
            assert h.hdr_len <= len(frame_of(w))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=2000), g=st.integers(min_value=-1, max_value=700))
def test_random_bytes_never_raise(data, g):
    res = receive(data, len(data), g)
    _accounted(res, len(data), g)


def _base_reads():
    out = []
    for mode in ("plain", "fold"):
        for nest, v6 in (("vx4c", False), ("vx6", True), ("none", False)):
            case = Case(nest=nest, inner_v6=v6, payload_len=1601)
            _, _, segs = cut(case, mode, 400)
            out.append((bytes(segs.buffer), segs.row_len))
    return out


_BASES = _base_reads()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(which=st.integers(0, len(_BASES) - 1),
       flips=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(1, 255)), max_size=6),
       cut_to=st.one_of(st.none(), st.integers(0, 4000)),
       g_delta=st.sampled_from([0, 0, 0, -1, 1, -8, 8, -200]))
def test_mutated_reads_never_raise(which, flips, cut_to, g_delta):
    buf, g = _BASES[which]
    b = bytearray(buf)
    for pos, x in flips:
        b[pos % len(b)] ^= x
    n = len(b) if cut_to is None else min(cut_to, len(b))
    res = receive(b, n, g + g_delta)
    _accounted(res, n, g + g_delta)


def test_mutated_header_bytes_exhaustive_single_flip():
    """Every single header byte of one row flipped: never raises, never coalesces into something else."""
    case = Case(nest="vx4c", payload_len=1601)
    prefix, _, segs = cut(case, "fold", 400)
    buf = bytes(segs.buffer)
    good = frame_of(receive(buf, len(buf), segs.row_len).writes[0])
    rng = random.Random(5)
    for pos in range(segs.row_len + 0, segs.row_len + len(prefix) + case.hdr_len - case.nested_len):
        b = bytearray(buf)
        b[pos] ^= 1 << rng.randrange(8)
        res = receive(b, len(b), segs.row_len)
        _accounted(res, len(b), segs.row_len)
        if len(res.writes) == 1 and res.writes[0].segments > 1:
            # only bytes that are rewritten anyway (IP checksum/ID...) may be flipped without effect
            assert frame_of(res.writes[0]) == good, pos


@pytest.mark.parametrize(("mode", "nest", "inner_v6"), MODES_NESTS, ids=MN_IDS)
def test_fix_helper_is_identity(mode, nest, inner_v6):
    """set_flag_and_fix without a change reproduces the datagram: the fallbacks above test only their change."""
    case = Case(nest=nest, inner_v6=inner_v6, payload_len=3001)
    prefix, _, segs = cut(case, mode, 1000)
    for dg in segs.datagrams():
        assert set_flag_and_fix(case, mode, prefix, dg) == dg


BUG_IP_CSUM = (
    "bug: gro.py _coalesce never verifies the rows' IPv4 header checksums (_mask excludes bytes off+10..11 and "
    "_super_write recomputes the checksum), so a datagram with a corrupt IPv4 header checksum is coalesced and "
    "silently repaired; Linux inet_gro_receive refuses to merge such a packet (and ip_rcv then drops it)"
)


@pytest.mark.parametrize(("mode", "level"), [("plain", "inner"), ("fold", "inner"), ("plain", "nested")])
def test_bad_ipv4_header_checksum_not_coalesced(mode, level):
    case = Case(nest="vx4", payload_len=5001)
    prefix, _, segs = cut(case, mode, 1000)
    dgs = segs.datagrams()
    ip = len(prefix) + (14 if level == "nested" else case.inner_ip_off - (case.nested_len if mode == "fold" else 0))
    b = bytearray(dgs[2])
    b[ip + 10] ^= 0x11
    dgs[2] = bytes(b)
    res = receive(*read_of(dgs))
    # split around the bad row (rxpipe.split_plan), which goes alone with a zero vnet header
    assert [w.segments for w in res.writes] == [2, 1, len(dgs) - 3] and res.writes[1].vnet == ZERO24
