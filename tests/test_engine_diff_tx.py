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
    lv = find_levels(frame, max_levels=3, gso=True)
    udp_off = lv[0].udp_off if lv else 34
    try:
        lay = tcp_layout(frame, tuple(x.udp_off for x in lv[:n_levels]), inner_udp=True)
        return udp_off, lay.tcp_ip, lay.tcp
    except ParseError:
        return udp_off, udp_off + 8 + 8 + 14, udp_off + 8 + 8 + 14 + 20


@st.composite
def tap_reads(draw):
    rng = random.Random(draw(st.integers(0, 2**32)))  # hypothesis draws the seed; sizes stay uniform
    n_levels = draw(st.integers(0, 3))
    if rng.random() < 0.5:  # the steady state: plain VXLAN/GPE/Geneve levels (the native fast path's shapes)
        levels = [P.Tunnel(ip=P.IPSpec(v6=rng.random() < 0.5, ident=rng.randrange(65536), df=rng.random() < 0.5),
                           encap=rng.choice(("vxlan", "vxlan", "gpe", "geneve")), udp_csum=rng.random() < 0.5,
                           sport=rng.randrange(1024, 65536)) for _ in range(n_levels)]
    else:
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


SETTINGS = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow,
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


@pytest.mark.parametrize("nests", [(False,), (True,), (False, True), (True, False, True)])
@pytest.mark.parametrize("inner_v6", [False, True])
@pytest.mark.parametrize("csum", [False, True])
@pytest.mark.parametrize("kernel_tx", [False, True])
def test_fold_fast_path_is_taken_and_equal(nests, inner_v6, csum, kernel_tx):
    """The steady state (VXLAN levels, TCP super-packet, fold) is one native call, with the reference's bytes."""
    levels = [P.Tunnel(ip=P.IPSpec(v6=v6, ident=0xFFF0 + i), encap="vxlan", udp_csum=csum)
              for i, v6 in enumerate(nests)]
    inner = P.Inner(ip=P.IPSpec(v6=inner_v6), payload=bytes(range(256)) * 200,
                    tcp_options=[("NOP", None), ("NOP", None), ("Timestamp", (1, 2))])
    frame = P.frame(levels, inner)
    outer_th, inner_nh, l4 = _offsets(frame, len(levels))
    vh = VnetHdr(flags=F_NEEDS_CSUM, gso_type=(GSO_TCPV6 if inner_v6 else GSO_TCPV4)
                 | (GSO_UDP_TUNNEL_IPV6 if nests[0] else GSO_UDP_TUNNEL_IPV4), hdr_len=l4 + 32, gso_size=1448,
                 csum_start=l4, csum_offset=16, outer_th_offset=outer_th, inner_nh_offset=inner_nh)
    py, nat = planners(1472, kernel_tx)
    a, b = outcome(py, vh.pack() + frame, "fold"), outcome(nat, vh.pack() + frame, "fold")
    assert nat.counters == {"native_fast": 1, "native_deferred": 0}
    assert a == b and a[0] == ("kernel" if kernel_tx else "gso")
    assert kernel_tx or a[2] > 30


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
        ports = ((4789, 1), (4790, 2), (6081, 3), (rng.randrange(65536), rng.randrange(5)))
        _native.fold_one(buf, rng.randrange(1 << 24), rng.randrange(65536), ports, rng.randrange(5))
        _native.hint_prefix(buf, rng.randrange(1 << 24), ports, rng.random() < 0.5)
        _native.fold_gso(buf, 7, 0xFF4E, ports, rng.randrange(5), rng.randrange(2000), rng.randrange(3000))
    assert ok and rejected


@pytest.mark.parametrize("seed", range(2))
def test_mutated_frames_fold_the_same(seed):
    """Mutation fuzz of the native fast paths against the reference: real 1-3 level frames (single and GSO
    reads) with 1-4 random bytes changed anywhere in the headers, or cut short."""
    rng = random.Random(seed)
    py, nat = planners(1472, False)
    for _ in range(300):  # scapy builds the frames: the slow part
        levels, inner, frame = P.random_frame(rng, max_payload=300)
        outer_th, inner_nh, l4 = _offsets(frame, len(levels))
        frame = bytearray(frame)
        for _ in range(rng.randrange(1, 5)):
            i = rng.randrange(min(len(frame), 260))
            frame[i] = rng.randrange(256) if rng.random() < 0.5 else frame[i] ^ (1 << rng.randrange(8))
        if rng.random() < 0.2:
            frame = frame[: rng.randrange(len(frame) + 1)]
        gso = rng.random() < 0.5
        if gso:
            tun = GSO_UDP_TUNNEL_IPV6 if levels[0].ip.v6 else GSO_UDP_TUNNEL_IPV4
            vh = VnetHdr(flags=F_NEEDS_CSUM, gso_type=GSO_TCPV4 | tun, gso_size=rng.choice((100, 536, 1448)),
                         csum_start=max(l4, inner_nh + 40), csum_offset=16, outer_th_offset=outer_th,
                         inner_nh_offset=inner_nh)
        else:
            vh = VnetHdr()
        data = vh.pack() + bytes(frame)
        mode = rng.choice(MODES)
        a, b = outcome(py, data, mode), outcome(nat, data, mode)
        assert a == b, (seed, a[0], b[0])
    assert nat.counters["native_fast"] > 40


def test_native_rejects_bad_layout_types():
    from udpnest import _native

    with pytest.raises(TypeError):
        _native.segment(b"", b"x" * 100, ((), (), (), 0, False, 0, 10), 100)
    with pytest.raises(ValueError):
        _native.segment(b"", b"x" * 100, (tuple(range(20)), (), (), 0, False, 0, 10, 6), 100)
    with pytest.raises(ValueError):
        _native.segment(b"", b"x" * 100, ((), (), (), 0, False, 0, 10, 6), 0)


# --- batched single datagrams (sendmmsg) ---------------------------------------------------------------

def test_small_frames_of_a_burst_leave_in_one_sendmmsg():
    """The TX loop's batching (native engine): ACKs of one read burst go out in one sendmmsg, a super-packet
    in between flushes them first (order kept); the receiver gets exactly the reference's datagrams in order."""
    import socket

    from micro_fold_frames import ack_reads, gso_read
    from udpnest.config import build_config
    from udpnest.endpoint import Endpoint
    from udpnest.io.udp import UdpSocket

    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(2)
    port = rx.getsockname()[1]
    cfg = build_config({"id": 7, "local": "127.0.0.1", "remote": [f"127.0.0.1:{port}"], "nested": "fold",
                        "engine": "native"})
    ep = Endpoint(cfg, clock=lambda: 100.0)
    for p in ep.prober.peers.values():
        p.mode = lambda now: "fold"
    ep.tx = [UdpSocket("127.0.0.1", 0, gro=False, gso=True, bufsize=1 << 22)]
    ep._batch = {}
    reads = ack_reads(100) + [gso_read()] + ack_reads(5, start=100)
    py = TxPlanner(vni=7, engine="python", max_datagram=cfg.max_datagram, ports=cfg.nested_ports)
    expected = []
    for r in reads:
        kind, obj = py.plan(r, "fold")
        expected += obj.datagrams() if kind == "gso" else [b"".join(bytes(p) for p in obj)]
    try:
        for r in reads:
            ep._tx_frame(memoryview(r))
        ep._flush_batch()
        got = [rx.recv(65535) for _ in expected]
    finally:
        rx.close()
        ep.tx[0].close()
    assert got == expected
    c = ep.tx_stats.c
    assert c["sendmmsg_calls"] == 3  # 64 + 36 before the super-packet, 5 after
    assert not ep.tx_stats.drops


# --- the kernel TX path's headers -----------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(300))
def test_kernel_headers_equal_the_reference(seed):
    from udpnest import _native
    from udpnest.outer import outer_headers, tunnel_gso_vnet

    rng = random.Random(seed)
    v6 = rng.random() < 0.5
    alen = 16 if v6 else 4
    a = dict(dst_mac=rng.randbytes(6), src_mac=rng.randbytes(6), src=rng.randbytes(alen), dst=rng.randbytes(alen),
             sport=rng.randrange(65536), dport=rng.randrange(65536), payload_len=rng.randrange(65535 - 48),
             ident=rng.randrange(65536), ttl=rng.randrange(256), tos=rng.randrange(256), df=rng.random() < 0.5,
             flow_label=rng.randrange(1 << 32))
    k = dict(base_type=rng.choice((1, 4, 5)), ecn=rng.random() < 0.5, mss=rng.randrange(1, 9000),
             geneve_len=rng.randrange(8, 260, 4), inner_nh=rng.randrange(14, 100), inner_th=rng.randrange(34, 200),
             inner_hdr_end=rng.randrange(54, 300), csum_offset=rng.choice((6, 16)))
    ref = tunnel_gso_vnet(outer_v6=v6, base_type=k["base_type"], ecn=k["ecn"], mss=k["mss"],
                          outer_len=14 + (40 if v6 else 20) + 8, geneve_len=k["geneve_len"], inner_nh=k["inner_nh"],
                          inner_th=k["inner_th"], inner_hdr_end=k["inner_hdr_end"], csum_offset=k["csum_offset"])
    ref += outer_headers(**a)
    got = _native.kernel_headers(v6, a["dst_mac"], a["src_mac"], a["src"], a["dst"], a["sport"], a["dport"],
                                 a["payload_len"], a["ident"], a["ttl"], a["tos"], a["df"], a["flow_label"] & 0xFFFFF,
                                 *k.values())
    assert got == ref


@pytest.mark.parametrize("v6", [False, True])
def test_kernel_tx_frames_equal_across_engines(v6):
    """Endpoint._send_kernel: the frame written to the kernel TX TAP is the same for both engines."""
    from micro_fold_frames import KtxRecorder, gso_read
    from udpnest.config import build_config
    from udpnest.endpoint import Endpoint

    frames = {}
    for eng in ("python", "native"):
        local, remote = ("2001:db8::1", "2001:db8::2") if v6 else ("198.51.100.1", "198.51.100.2")
        cfg = build_config({"id": 7, "local": local, "remote": [remote], "nested": "fold", "engine": eng,
                            "tx_path": "kernel"})
        ep = Endpoint(cfg, clock=lambda: 100.0)
        for p in ep.prober.peers.values():
            p.mode = lambda now: "fold"
        ep.ktx, ep.tx = KtxRecorder(), [None]
        for payload in (1448 * 40, 5000, 100):
            ep._tx_frame(memoryview(gso_read(payload)))
        assert ep.tx_stats.c["kernel_writes"] == 3 and not ep.tx_stats.drops
        frames[eng] = ep.ktx.frames
    assert frames["python"] == frames["native"]


def test_kernel_path_too_large_for_16_bit_lengths_is_cut_by_udpnest():
    """A super-packet whose Geneve payload would overflow the outer IP/UDP length: both engines plan "gso"
    (udpnest cuts it) instead of handing the kernel a frame with a wrapped length."""
    from micro_fold_frames import gso_read
    from udpnest.txplan import KERNEL_MAX_PAYLOAD

    data = gso_read(KERNEL_MAX_PAYLOAD - 60)  # + the inner headers: just over the limit after folding
    py, nat = planners(1472, True)
    a, b = outcome(py, data, "fold"), outcome(nat, data, "fold")
    assert a[0] == "gso" and a == b
    ok = gso_read(20000)
    assert outcome(py, ok, "fold")[0] == outcome(nat, ok, "fold")[0] == "kernel"
