"""Differential tests of the TX engines: the same TAP reads through the Python reference and the native core.

Every TAP read (vnet header + frame) goes through :class:`udpnest.txplan.TxPlanner` once per engine; the
plans must describe byte-identical datagrams (or the same kernel-TX frame), or both engines must reject
the read with the same :class:`~udpnest.wire.errors.Reason`.  Frames are hypothesis-generated: IPv4/IPv6
at every level, 0-3 nested levels (VXLAN, VXLAN-GPE, Geneve, with and without UDP checksums, VLAN tags,
IPv4 options, IPv6 extension headers), TCP GSO super-packets, USO, single frames with and without a
partial checksum, ACKs, and corrupt reads (random vnet headers, truncations, flipped header bytes, wrong
lengths).  A second part fuzzes the native entry points with arbitrary arguments (0 crashes).
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import packets as P
from udpnest import engine
from udpnest.fold import find_levels
from udpnest.gso import tcp_layout
from udpnest.txplan import TxPlanner
from udpnest.wire import csum
from udpnest.wire.errors import ParseError
from udpnest.wire.vnet import (
    F_NEEDS_CSUM,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    GSO_UDP_TUNNEL_IPV4,
    GSO_UDP_TUNNEL_IPV6,
    VnetHdr,
)

pytestmark = pytest.mark.skipif(not engine.native_available(), reason=f"native core not built: {engine.NATIVE_ERROR}")

MODES = ("plain", "hint", "fold")


def planners(max_datagram: int, kernel_tx: bool) -> tuple[TxPlanner, TxPlanner]:
    kw = {"vni": 0x123456, "max_datagram": max_datagram, "kernel_tx": kernel_tx}
    return TxPlanner(engine="python", **kw), TxPlanner(engine="native", **kw)


def outcome(planner: TxPlanner, data: bytes, mode: str):
    """What the engine would send for this read, as comparable bytes, or the drop reason."""
    try:
        kind, obj = planner.plan(data, mode)
    except ParseError as e:
        return ("drop", e.reason)
    if kind == "gso":
        return ("gso", obj.row_len, obj.count, obj.datagrams())
    if kind == "one":
        return ("one", b"".join(bytes(p) for p in obj))
    prefix, inner, layout, vh, mss = obj
    return ("kernel", bytes(prefix), bytes(inner), tuple(layout), tuple(vh), mss)


def assert_same(data: bytes, mode: str, max_datagram: int = 1472, kernel_tx: bool = False):
    py, nat = planners(max_datagram, kernel_tx)
    a, b = outcome(py, data, mode), outcome(nat, data, mode)
    assert a[0] == b[0], (a[0], b[0], a[1] if a[0] == "drop" else "", b[1] if b[0] == "drop" else "")
    if a[0] == "gso":
        assert a[1:3] == b[1:3]
        for i, (x, y) in enumerate(zip(a[3], b[3], strict=True)):
            assert x == y, f"datagram {i} of {a[2]} differs"
    else:
        assert a == b
    return a


# --- frames ---------------------------------------------------------------------------------------------

def _offsets(frame: bytes, n_levels: int):
    """(outer_th, inner_nh, l4 offset) of a generated frame, for its vnet header (best effort)."""
    lv = find_levels(frame, max_levels=3)
    udp_off = lv[0].udp_off if lv else 34
    try:
        lay = tcp_layout(frame, (udp_off,) if n_levels else (), inner_udp=True)
        return udp_off, lay.tcp_ip, lay.tcp
    except ParseError:
        return udp_off, udp_off + 8 + 8 + 14, udp_off + 8 + 8 + 14 + 20


@st.composite
def tap_reads(draw):
    rng = random.Random(draw(st.integers(0, 2**32)))  # hypothesis draws the seed; sizes stay uniform
    n_levels = draw(st.integers(0, 3))
    levels = [P.random_tunnel(rng) for _ in range(n_levels)]
    kind = draw(st.sampled_from(("gso", "gso", "uso", "single", "single_csum", "ack")))
    tcp = kind != "uso"
    # sizes from the seeded Random: hypothesis would favour tiny payloads (one segment)
    plen = {"gso": rng.randrange(0, 12000), "uso": rng.randrange(0, 6000), "single": rng.randrange(0, 1400),
            "single_csum": rng.randrange(0, 1400), "ack": 0}[kind]
    inner_ip = P.random_ip(rng)
    inner = P.Inner(ip=inner_ip, tcp=tcp or kind.startswith("single") and rng.random() < 0.5,
                    payload=rng.randbytes(plen), flags=rng.choice(("A", "PA", "FPA", "SA", "A")),
                    tcp_options=rng.choice((None, [("NOP", None), ("NOP", None), ("Timestamp", (1, 2))])),
                    seq=rng.randrange(1 << 32))
    if kind == "uso":
        inner = P.replace(inner, tcp=False)
    frame = bytearray(P.frame(levels, inner))
    outer_th, inner_nh, l4 = _offsets(bytes(frame), n_levels)
    if kind in ("gso", "uso"):
        base = (GSO_TCPV6 if inner_ip.v6 else GSO_TCPV4) if kind == "gso" else GSO_UDP_L4
        tun = 0
        if n_levels:
            first_v6 = levels[0].ip.v6
            tun = GSO_UDP_TUNNEL_IPV6 if first_v6 else GSO_UDP_TUNNEL_IPV4
        mss = draw(st.sampled_from((536, 1000, 1338, 1400, 1448, 3000)))
        vh = VnetHdr(flags=F_NEEDS_CSUM, gso_type=base | tun, hdr_len=l4 + 20, gso_size=mss, csum_start=l4,
                     csum_offset=16 if kind == "gso" else 6,
                     outer_th_offset=outer_th if n_levels else 0, inner_nh_offset=inner_nh if n_levels else 0)
    elif kind == "single_csum" and inner.tcp:
        # the kernel's CHECKSUM_PARTIAL: the field holds the pseudo-header sum
        ip = inner_nh
        v6 = frame[ip] >> 4 == 6
        src, dst = csum.ip_addresses(frame, ip, v6)
        if l4 + 18 <= len(frame):
            frame[l4 + 16 : l4 + 18] = csum.partial_csum(src, dst, 6, len(frame) - l4).to_bytes(2, "big")
        vh = VnetHdr(flags=F_NEEDS_CSUM, csum_start=l4, csum_offset=16)
    else:
        vh = VnetHdr()
    vnet = bytearray(vh.pack())
    corrupt = draw(st.sampled_from(("none", "none", "none", "vnet_byte", "vnet_random", "truncate", "flip",
                                    "extend", "length")))
    if corrupt == "vnet_byte":
        vnet[draw(st.integers(0, 23))] = draw(st.integers(0, 255))
    elif corrupt == "vnet_random":
        vnet = bytearray(rng.randbytes(24))
    elif corrupt == "truncate":
        frame = frame[: draw(st.integers(0, len(frame)))]
    elif corrupt == "flip" and frame:
        i = draw(st.integers(0, min(len(frame), 200) - 1))
        frame[i] ^= 1 << draw(st.integers(0, 7))
    elif corrupt == "extend":
        frame += rng.randbytes(draw(st.integers(1, 40)))
    elif corrupt == "length" and len(frame) > 20:
        i = draw(st.sampled_from([o for o in (16, 17, 18, 19, 38, 39, outer_th + 4, outer_th + 5) if o < len(frame)]))
        frame[i] = draw(st.integers(0, 255))
    return bytes(vnet + frame)


SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                           HealthCheck.data_too_large])


@SETTINGS
@given(data=tap_reads(), mode=st.sampled_from(MODES), max_datagram=st.sampled_from((1472, 1452, 1400, 8972)),
       kernel_tx=st.booleans())
def test_engines_send_the_same_bytes(data, mode, max_datagram, kernel_tx):
    assert_same(data, mode, max_datagram, kernel_tx)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", range(40))
def test_engines_agree_on_random_super_packets(mode, seed):
    """Deterministic sweep (no hypothesis): random 1-3 level super-packets as GSO reads."""
    rng = random.Random(seed)
    levels, inner, _ = P.random_frame(rng, max_payload=0)
    inner = P.replace(inner, tcp=True, payload=rng.randbytes(rng.randrange(0, 20000)))
    frame = P.frame(levels, inner)
    outer_th, inner_nh, l4 = _offsets(frame, len(levels))
    tun = GSO_UDP_TUNNEL_IPV6 if levels[0].ip.v6 else GSO_UDP_TUNNEL_IPV4
    vh = VnetHdr(flags=F_NEEDS_CSUM, gso_type=(GSO_TCPV6 if inner.ip.v6 else GSO_TCPV4) | tun, hdr_len=l4 + 20,
                 gso_size=1448, csum_start=l4, csum_offset=16, outer_th_offset=outer_th, inner_nh_offset=inner_nh)
    assert_same(vh.pack() + frame, mode)


# --- fuzzing the native entry points directly ------------------------------------------------------------

def test_native_entry_points_survive_garbage():
    """Arbitrary buffers and layouts: the native core answers with a result or Reject/ValueError/TypeError,
    never a crash (an out-of-bounds read would show under ASan, see docs/development)."""
    from udpnest import _native

    rng = random.Random(7)
    ok = rejected = 0
    for _ in range(20000):
        buf = rng.randbytes(rng.randrange(0, 400))
        try:
            _native.vnet_check(buf)
            ok += 1
        except _native.Reject:
            rejected += 1
        try:
            _native.finish_csum(buf, rng.randrange(0, 500), rng.randrange(0, 500))
        except _native.Reject:
            rejected += 1
        lay = (tuple(rng.randrange(0, 420) for _ in range(rng.randrange(3))),
               tuple(rng.randrange(0, 420) for _ in range(rng.randrange(2))),
               tuple((rng.randrange(0, 420), rng.random() < 0.5) for _ in range(rng.randrange(3))),
               rng.randrange(0, 420), rng.random() < 0.5, rng.randrange(0, 420), rng.randrange(0, 600),
               rng.choice((6, 17)))
        try:
            _native.segment(rng.randbytes(rng.randrange(0, 40)), buf, lay, rng.randrange(1, 2000), rng.randrange(4))
            ok += 1
        except (_native.Reject, ValueError):
            rejected += 1
    assert ok and rejected


def test_native_rejects_bad_layout_types():
    from udpnest import _native

    with pytest.raises(TypeError):
        _native.segment(b"", b"x" * 100, ((), (), (), 0, False, 0, 10), 100)
    with pytest.raises(ValueError):
        _native.segment(b"", b"x" * 100, (tuple(range(20)), (), (), 0, False, 0, 10, 6), 100)
    with pytest.raises(ValueError):
        _native.segment(b"", b"x" * 100, ((), (), (), 0, False, 0, 10, 6), 0)
