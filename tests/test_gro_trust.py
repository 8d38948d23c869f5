"""rxpipe.receive: what the receive pipeline refuses (issue 9: demultiplex like the kernel, no unverified data
reaches the workload), why a read was not coalesced (Outcome), and the kernel's GSO-partial trains (issue 10)."""

from __future__ import annotations

import pytest

import packets as P
from test_gro import ZERO24, expected_coalesced, frame_of, read_of
from test_gso import NEST_ID, VNI, Case, cut
from udpnest.fold import fold
from udpnest.rxpipe import Outcome, finish, merge, receive
from udpnest.wire import csum
from udpnest.wire.errors import Reason
from udpnest.wire.geneve import build_geneve, build_option
from udpnest.wire.options import Echo, build_echo
from udpnest.wire.vnet import VnetHdr


def _dgs(mode: str, nest: str = "vx4c", inner_v6: bool = False, n: int = 5001, mss: int = 1000):
    case = Case(nest=nest, inner_v6=inner_v6, payload_len=n)
    prefix, _, segs = cut(case, mode, mss)
    return case, prefix, segs.datagrams()


# --- demultiplexing ------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["plain", "fold"])
@pytest.mark.parametrize("rows", [1, 6])
def test_wrong_vni_dropped(mode, rows):
    """Issue 9: datagrams from the peer with another VNI reached the TAP; the kernel demultiplexes by VNI."""
    _, _, dgs = _dgs(mode)
    dgs = dgs[:rows]
    buf, n, g = read_of(dgs)
    res = receive(buf, n, g if rows > 1 else 0, vni=VNI + 1)
    assert not res.writes and not res.control
    assert res.drops == [(Reason.WRONG_VNI, 1)] * rows
    res = receive(buf, n, g if rows > 1 else 0, vni=VNI)  # the configured VNI is accepted
    assert not res.drops and res.writes


def test_wrong_vni_echo_is_not_control():
    dg = build_geneve(VNI + 1, 0x6558, build_echo(Echo(1, 2, 3, 4, 1), reply=False), oam=True)
    res = receive(dg, len(dg), 0, vni=VNI)
    assert res.drops == [(Reason.WRONG_VNI, 1)] and not res.control
    ok = build_geneve(VNI, 0x6558, build_echo(Echo(1, 2, 3, 4, 1), reply=False), oam=True)
    assert len(receive(ok, len(ok), 0, vni=VNI).control) == 1


def test_wrong_vni_checked_before_the_options():
    """As the kernel: the fixed header decides which tunnel, so a foreign VNI is a wrong_vni drop even with
    options this endpoint would refuse."""
    frame = P.frame([], P.Inner(payload=b"y" * 64))
    dg = build_geneve(VNI + 1, 0x6558, build_option(0x4444, 0x81, b"")) + frame
    assert receive(dg, len(dg), 0, vni=VNI).drops == [(Reason.WRONG_VNI, 1)]
    assert receive(dg, len(dg), 0, vni=VNI + 1).drops == [(Reason.UNKNOWN_CRITICAL_OPTION, 1)]


@pytest.mark.parametrize("proto", [0x0800, 0x86DD, 0x894F, 0])
@pytest.mark.parametrize("rows", [1, 6])
def test_geneve_protocol_other_than_ethernet(proto, rows):
    _, prefix, dgs = _dgs("plain")
    bad = [build_geneve(VNI, proto) + d[len(prefix):] for d in dgs[:rows]]
    buf, n, g = read_of(bad)
    res = receive(buf, n, g if rows > 1 else 0, vni=VNI)
    assert not res.writes and res.drops == [(Reason.BAD_GENEVE_PROTOCOL, 1)] * rows


def test_geneve_version_refused():
    _, _, dgs = _dgs("plain")
    dg = bytearray(dgs[0])
    dg[0] |= 0x40
    assert receive(bytes(dg), len(dg), 0, vni=VNI).drops == [(Reason.BAD_GENEVE_VERSION, 1)]


@pytest.mark.parametrize("opt_class", [None, 0x0102])
def test_fold_with_another_option_class_is_an_unknown_critical_option(opt_class):
    """The configured class only: a FOLD option of another class (or any, for a legacy endpoint, None) is an
    unknown critical option, never unfolded."""
    _, _, dgs = _dgs("fold")
    buf, n, g = read_of(dgs)
    res = receive(buf, n, g, vni=VNI, opt_class=opt_class)
    assert not res.writes and res.drops == [(Reason.UNKNOWN_CRITICAL_OPTION, 1)] * len(dgs)
    assert res.outcome is Outcome.PARSE


# --- no unverified data reaches the workload -----------------------------------------------------------
def _whole_dg(mode: str, nest: str, inner_v6: bool, n: int = 32000):
    case = Case(nest=nest, inner_v6=inner_v6, payload_len=n)
    frame = case.frame()
    dg = build_geneve(VNI, 0x6558) + frame if mode == "plain" else fold(frame, gso=True, vni=VNI).payload
    return case, frame, dg


MNI = [(m, n, v6) for m in ("plain", "fold") for n in ("none", "vx4", "vx4c", "vx6c") for v6 in (False, True)
       if not (m == "fold" and n == "none")]


@pytest.mark.parametrize(("mode", "nest", "inner_v6"), MNI)
@pytest.mark.parametrize("where", ["payload", "payload-last", "tcp-csum"])
def test_whole_super_packet_with_a_flipped_byte_is_not_delivered_as_good(mode, nest, inner_v6, where):
    """Issue 9: one flipped byte in a 32 KB datagram arrived with a valid checksum (NEEDS_CSUM).  Now it is
    written with a zero vnet header and its bytes unchanged, so the workload's kernel verifies and drops it."""
    case, frame, dg = _whole_dg(mode, nest, inner_v6)
    good = receive(dg, len(dg), 0, vni=VNI)
    assert good.outcome is Outcome.WHOLE and VnetHdr.unpack(good.writes[0].vnet).flags & 1  # NEEDS_CSUM
    bad = bytearray(dg)
    pos = {"payload": len(dg) - 20000, "payload-last": len(dg) - 1,
           "tcp-csum": len(dg) - len(frame) + case.tcp_off + 16}[where]
    bad[pos] ^= 0x20
    res = receive(bytes(bad), len(bad), 0, vni=VNI)
    assert res.outcome is Outcome.CSUM
    assert len(res.writes) == 1 and res.writes[0].vnet == ZERO24 and res.writes[0].segments == 1
    out = frame_of(res.writes[0])
    t = out.rfind(frame[case.tcp_off : case.tcp_off + 12])
    seg = out[t:]
    ip = case.inner_ip_off + (len(out) - len(frame))
    src, dst = (out[ip + 8 : ip + 24], out[ip + 24 : ip + 40]) if inner_v6 else (out[ip + 12 : ip + 16],
                                                                                  out[ip + 16 : ip + 20])
    assert csum.ones_sum(seg, csum.pseudo_sum(src, dst, 6, len(seg))) != 0xFFFF, "the workload must see it bad"


@pytest.mark.parametrize("mode", ["plain"])
def test_whole_super_packet_with_a_bad_nested_header_checksum(mode):
    case, frame, dg = _whole_dg(mode, "vx4c", False)
    off = len(dg) - len(frame)
    for field in (14 + 10, case.udp_off + 6):  # nested IPv4 header checksum, nested UDP checksum
        bad = bytearray(dg)
        bad[off + field] ^= 0x01
        res = receive(bytes(bad), len(bad), 0, vni=VNI)
        assert res.outcome is Outcome.CSUM and all(w.vnet == ZERO24 for w in res.writes)


def test_whole_super_packet_verify_csum_off_is_the_operators_choice():
    case, frame, dg = _whole_dg("plain", "none", False)
    bad = bytearray(dg)
    bad[-1] ^= 1
    res = receive(bytes(bad), len(bad), 0, vni=VNI, verify_csum=False)
    assert res.outcome is Outcome.WHOLE


# --- outcomes --------------------------------------------------------------------------------------------
def _fix_ipv4(dg: bytearray, off: int) -> None:
    dg[off + 10 : off + 12] = b"\0\0"
    dg[off + 10 : off + 12] = csum.checksum(dg[off : off + 20]).to_bytes(2, "big")


@pytest.mark.parametrize("mode", ["plain", "fold"])
def test_outcomes(mode):
    case, prefix, dgs = _dgs(mode, nest="vx4")
    P0 = len(prefix)
    shift = case.nested_len if mode == "fold" else 0
    t = P0 + case.tcp_off - shift

    def out(rows):
        buf, n, g = read_of(rows)
        return receive(buf, n, g, vni=VNI).outcome

    assert out(dgs) is Outcome.COALESCED
    assert receive(dgs[0], len(dgs[0]), 0, vni=VNI).outcome is Outcome.SINGLE
    gap = [bytearray(d) for d in dgs]
    gap[2][t + 7] ^= 1  # sequence number (the checksum is not checked before the sequence)
    assert out([bytes(d) for d in gap]) is Outcome.SEQ
    corrupt = [bytearray(d) for d in dgs]
    corrupt[3][-1] ^= 1
    assert out([bytes(d) for d in corrupt]) is Outcome.CSUM
    syn = [bytearray(d) for d in dgs]
    syn[0][t + 13] |= 0x02
    assert out([bytes(d) for d in syn]) is Outcome.FLAGS
    other = [bytearray(d) for d in dgs]
    other[1][t + 2] ^= 1  # destination port
    assert out([bytes(d) for d in other]) is Outcome.HDR_MISMATCH
    ids = [bytearray(d) for d in dgs]
    ip = P0 + case.inner_ip_off - shift
    ids[2][ip + 4] ^= 0x10
    _fix_ipv4(ids[2], ip)
    assert out([bytes(d) for d in ids]) is Outcome.IDS
    lengths = [bytearray(d) for d in dgs]
    lengths[0][ip + 3] ^= 1
    assert out([bytes(d) for d in lengths]) is Outcome.LENGTHS
    echo = build_geneve(VNI, 0x6558, build_echo(Echo(1, 2, 3, 4, 1), reply=False), oam=True)
    assert out([echo, echo]) is Outcome.INELIGIBLE
    junk = b"\x00" * 7
    assert out([junk, junk]) is Outcome.PARSE


def test_outcome_not_tcp_is_ineligible():
    udp = P.frame([], P.Inner(tcp=False, payload=b"u" * 100))
    dg = build_geneve(VNI, 0x6558) + udp
    res = receive(dg * 3, 3 * len(dg), len(dg), vni=VNI)
    assert res.outcome is Outcome.INELIGIBLE and len(res.writes) == 3


def test_outcome_too_large():
    a = Case(nest="none", payload_len=60000, flags="A")
    b = Case(nest="none", payload_len=10000, seq=a.seq + 60000, inner_id=(a.inner_id + 60) & 0xFFFF, flags="A")
    _, _, sa = cut(a, "plain", 1000)
    _, _, sb = cut(b, "plain", 1000)
    buf, n, g = read_of(sa.datagrams() + sb.datagrams())
    assert receive(buf, n, g, vni=VNI).outcome is Outcome.TOO_LARGE


# --- the kernel's GSO-partial trains (issue 10) ----------------------------------------------------------
def _gso_partial(dgs: list[bytes], prefix_len: int, ident: int = 0x1234, df: bool = False) -> list[bytes]:
    """Rewrite the nested IPv4 header of every datagram as Linux's geneve GSO partial sends it: one fixed ID,
    DF not set (header checksum recomputed; the nested UDP checksum does not cover the IPv4 header)."""
    out = []
    for d in dgs:
        b = bytearray(d)
        ip = prefix_len + 14
        b[ip + 4 : ip + 6] = ident.to_bytes(2, "big")
        b[ip + 6] = (b[ip + 6] | 0x40) if df else (b[ip + 6] & ~0x40)
        _fix_ipv4(b, ip)
        out.append(bytes(b))
    return out


@pytest.mark.parametrize("nest", ["vx4", "vx4c"])
@pytest.mark.parametrize("inner_v6", [False, True])
def test_kernel_gso_partial_train_coalesces(nest, inner_v6):
    """Fixed nested ID without DF (what a kernel geneve with gro-hint + tx-gso-partial sends) coalesces, as the
    kernel's own geneve GRO merges byte-identical nested headers.  Failed on main (one write per datagram)."""
    case, prefix, dgs = _dgs("plain", nest=nest, inner_v6=inner_v6)
    train = _gso_partial(dgs, len(prefix))
    buf, n, g = read_of(train)
    res = receive(buf, n, g, vni=VNI)
    assert res.outcome is Outcome.COALESCED and len(res.writes) == 1 and res.writes[0].segments == len(dgs)
    w = res.writes[0]
    frame = bytearray(case.frame())
    frame[14 + 4 : 14 + 6] = (0x1234).to_bytes(2, "big")  # the first segment's nested header
    frame[14 + 6] &= ~0x40
    got = frame_of(w)
    exp = expected_coalesced(case, bytes(frame))
    # the nested IPv4 header checksum is recomputed for the super-packet's length
    exp = bytearray(exp)
    _fix_ipv4(exp, 14)
    assert got == bytes(exp)


def test_fixed_innermost_id_without_df_still_refused():
    """The innermost IPv4 (carrying TCP) keeps the kernel's rule: a fixed ID only with DF (is_atomic)."""
    case = Case(nest="none", inner_df=False, payload_len=5001)
    prefix, _, segs = cut(case, "plain", 1000)
    dgs = _gso_partial(segs.datagrams(), len(prefix), ident=case.inner_id)  # nest none: offset 14 is the inner IP
    buf, n, g = read_of(dgs)
    res = receive(buf, n, g, vni=VNI)
    assert res.outcome is Outcome.IDS and len(res.writes) == len(dgs)


def test_nested_ids_neither_fixed_nor_incrementing_refused():
    case, prefix, dgs = _dgs("plain", nest="vx4")
    dgs = _gso_partial(dgs, len(prefix))
    dgs[3] = _gso_partial([dgs[3]], len(prefix), ident=(NEST_ID + 9) & 0xFFFF)[0]
    buf, n, g = read_of(dgs)
    assert receive(buf, n, g, vni=VNI).outcome is Outcome.IDS


def test_kernel_gso_partial_two_reads_merge():
    case, prefix, dgs = _dgs("plain", nest="vx4c", n=40000)
    train = _gso_partial(dgs, len(prefix))
    a, b = train[:30], train[30:]
    ra = receive(*read_of(a), vni=VNI, hold=True).run
    rb = receive(*read_of(b), vni=VNI, hold=True).run
    assert ra is not None and rb is not None
    joined = merge(ra, rb)
    assert joined is not None and joined.segments == len(dgs)
    whole = receive(*read_of(train), vni=VNI).writes[0]
    got = finish(joined)
    assert got.vnet == whole.vnet and frame_of(got) == frame_of(whole)


@pytest.mark.parametrize(("mode", "nest", "inner_v6"), [("plain", "vx4c", False), ("plain", "none", True),
                                                        ("fold", "vx6c", False)])
def test_whole_super_packet_with_partial_checksums_is_a_super_packet(mode, nest, inner_v6):
    """A local sender's tunnel-GSO skb that crossed a veth uncut carries CHECKSUM_PARTIAL fields (the
    pseudo-header sums): a super-packet, as before (the lab's kernel TX path depends on it)."""
    case, frame, _ = _whole_dg(mode, nest, inner_v6)
    part = bytearray(frame)
    t = case.tcp_off
    ip = case.inner_ip_off
    src, dst = ((part[ip + 8 : ip + 24], part[ip + 24 : ip + 40]) if inner_v6 else
                (part[ip + 12 : ip + 16], part[ip + 16 : ip + 20]))
    part[t + 16 : t + 18] = csum.pseudo_sum(bytes(src), bytes(dst), 6, len(part) - t).to_bytes(2, "big")
    if case.nested_csum:
        u = case.udp_off
        nsrc, ndst = (part[14 + 8 : 14 + 24], part[14 + 24 : 14 + 40]) if case.nested_v6 else (part[26:30], part[30:34])
        part[u + 6 : u + 8] = csum.pseudo_sum(bytes(nsrc), bytes(ndst), 17, len(part) - u).to_bytes(2, "big")
    dg = build_geneve(VNI, 0x6558) + bytes(part) if mode == "plain" else fold(bytes(part), gso=True, vni=VNI).payload
    res = receive(dg, len(dg), 0, vni=VNI)
    assert res.outcome is Outcome.WHOLE and len(res.writes) == 1
    assert frame_of(res.writes[0]) == expected_coalesced(case, frame)
    bad = bytearray(dg)
    bad[len(dg) - len(frame) + t + 16] ^= 0x10  # neither valid nor the pseudo-header sum
    assert receive(bytes(bad), len(bad), 0, vni=VNI).outcome is Outcome.CSUM
