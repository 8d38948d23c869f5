"""Issue 10's TX fixes, for both engines: hint-mode trains a Linux geneve receiver merges, and no runt
tail datagram when the segment size is rounded.

* Linux's geneve GRO with the hint option (drivers/net/geneve.c ``geneve_hdr_match``) memcmp's the nested
  headers (``nested_hdr_len`` bytes after the Geneve header) of consecutive datagrams and flushes when
  they differ.  Its own GSO partial sends them identical: fixed nested IPv4 ID, nested lengths and UDP
  checksum those of a full-sized segment.  So must udpnest's hint mode, while every checksum (nested IPv4,
  nested UDP, inner IPv4, TCP) stays valid per datagram (``geneve_opt_gro_hint_validate_csum``).
* With the fold MTU the workload's MSS (e.g. 1338) rounded down to a multiple of 4 cut a 2-segment
  super-packet into 1336 + 1336 + 4; the segment size must not add a datagram.
"""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

import packets as P
from test_gso import assert_valid_frame
from udpnest import engine
from udpnest.fold import find_levels
from udpnest.gso import aligned_mss, segment_size, tcp_layout
from udpnest.txplan import TxPlanner
from udpnest.wire.options import parse_packet
from udpnest.wire.vnet import F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6, GSO_UDP_TUNNEL_IPV4, GSO_UDP_TUNNEL_IPV6, VnetHdr

ENGINES = [pytest.param("python"), pytest.param("native", marks=pytest.mark.skipif(
    not engine.native_available(), reason=f"native core not built: {engine.NATIVE_ERROR}"))]
NEST_ID = 0x4321
INNER_ID = 0x1000


def gso_read(nested_v6: bool, inner_v6: bool, udp_csum: bool, payload_len: int, mss: int = 1448,
             nested_df: bool = False) -> bytes:
    lv = P.Tunnel(ip=P.IPSpec(v6=nested_v6, ident=NEST_ID, df=nested_df), encap="vxlan", udp_csum=udp_csum)
    inner = P.Inner(ip=P.IPSpec(v6=inner_v6, ident=INNER_ID),
                    payload=bytes(i * 7 & 0xFF for i in range(payload_len)),
                    tcp_options=[("NOP", None), ("NOP", None), ("Timestamp", (1, 2))])
    frame = P.frame([lv], inner)
    [level] = find_levels(frame)
    lay = tcp_layout(frame, (level.udp_off,))
    vh = VnetHdr(flags=F_NEEDS_CSUM, gso_type=(GSO_TCPV6 if inner_v6 else GSO_TCPV4)
                 | (GSO_UDP_TUNNEL_IPV6 if nested_v6 else GSO_UDP_TUNNEL_IPV4), hdr_len=lay.hdr_len, gso_size=mss,
                 csum_start=lay.tcp, csum_offset=16, outer_th_offset=level.udp_off, inner_nh_offset=lay.tcp_ip)
    return vh.pack() + frame


@pytest.mark.parametrize("eng", ENGINES)
@pytest.mark.parametrize("nested_v6", [False, True])
@pytest.mark.parametrize("inner_v6", [False, True])
@pytest.mark.parametrize("udp_csum", [False, True])
@pytest.mark.parametrize("nested_df", [False, True])
def test_hint_train_nested_headers_identical(eng, nested_v6, inner_v6, udp_csum, nested_df):
    data = gso_read(nested_v6, inner_v6, udp_csum, payload_len=1448 * 9 + 100, nested_df=nested_df)
    kind, segs = TxPlanner(vni=7, engine=eng).plan(data, "hint")
    assert kind == "gso"
    dgrams = segs.datagrams()
    assert len(dgrams) >= 9
    pkt = parse_packet(dgrams[0])
    hint = pkt.gro_hint
    assert hint is not None
    G = pkt.hdr.hdr_len
    nested = [d[G : G + hint.nested_hdr_len] for d in dgrams]
    full = [n for d, n in zip(dgrams, nested, strict=True) if len(d) == len(dgrams[0])]
    assert len(full) == len(dgrams) - 1  # the short last one carries its own lengths
    assert all(n == full[0] for n in full), "nested headers differ across the train"
    # every checksum of every datagram is valid; nested ID fixed, inner ID +1 per segment, seq contiguous
    seq = None
    for i, d in enumerate(dgrams):
        assert parse_packet(d).gro_hint == hint
        fr = d[G:]
        assert_valid_frame(fr)
        layers = [la for la in Ether(fr).iterpayloads() if isinstance(la, IP)]
        if not nested_v6:
            assert layers[0].id == NEST_ID
        if not inner_v6:
            assert layers[-1].id == (INNER_ID + i) & 0xFFFF
        if udp_csum:
            assert Ether(fr)[UDP].chksum != 0
        t = Ether(fr)[TCP]
        assert seq is None or t.seq == seq
        seq = t.seq + len(bytes(t.payload))


@pytest.mark.parametrize("eng", ENGINES)
def test_plain_mode_keeps_incrementing_nested_ids(eng):
    """Only hint mode fixes nested IDs (plain towards a legacy receiver keeps the kernel's GSO behaviour)."""
    data = gso_read(False, False, True, payload_len=1448 * 3)
    _, segs = TxPlanner(vni=7, engine=eng).plan(data, "plain")
    ids = [[la.id for la in Ether(d[8:]).iterpayloads() if isinstance(la, IP)][0] for d in segs.datagrams()]
    assert len(ids) > 2 and ids == [NEST_ID + i for i in range(len(ids))]


@pytest.mark.parametrize("eng", ENGINES)
@pytest.mark.parametrize("mode", ["plain", "hint", "fold"])
@pytest.mark.parametrize("segments", [1, 2, 3, 45])
def test_no_runt_tail(eng, mode, segments):
    """MSS 1337 behind 74+ header bytes: rounding to a multiple of 4 would give 1334-byte segments and a
    tiny extra datagram; every datagram must carry a full MSS instead (same count as the workload's)."""
    mss = 1337
    data = gso_read(False, False, True, payload_len=mss * segments, mss=mss)
    kind, segs = TxPlanner(vni=7, engine=eng, max_datagram=1600).plan(data, mode)
    sizes = [len(d) for d in segs.datagrams()]
    assert len(sizes) == segments, sizes
    assert len(set(sizes)) == 1
    assert segs.row_len == sizes[0]


def test_segment_size_never_adds_a_datagram():
    for overhead in range(60, 200):
        for limit in (536, 1337, 1338, 1448, None):
            raw = 1472 - overhead if limit is None else min(limit, 1472 - overhead)
            for n in (1, 2, 3, 7, 44):
                for extra in (0, 1, raw // 2):
                    payload = raw * (n - 1) + (extra or raw)
                    s = segment_size(1472, overhead, limit, payload)
                    assert s <= raw and s >= aligned_mss(1472, overhead, limit)
                    assert -(-payload // s) == -(-payload // raw)


@pytest.mark.parametrize("tx_eng", ENGINES)
@pytest.mark.parametrize("rx_eng", ENGINES)
@pytest.mark.parametrize("mode", ["plain", "fold"])
@pytest.mark.parametrize("segments", [2, 45])
def test_odd_segment_sizes_coalesce_at_the_receiver(tx_eng, rx_eng, mode, segments):
    """Without the multiple-of-4 rounding, datagrams can have odd sizes (MSS 1337): the receiver's checksum
    checks (both RX engines) must still accept and coalesce them into one TAP write of the whole payload."""
    from udpnest.rxdriver import RxDriver

    mss = 1337
    payload = bytes(i * 7 & 0xFF for i in range(mss * segments))
    data = gso_read(False, False, True, payload_len=len(payload), mss=mss)
    kind, segs = TxPlanner(vni=7, engine=tx_eng, max_datagram=1600).plan(data, mode)
    dgrams = segs.datagrams()
    assert len(dgrams) == segments and len(dgrams[0]) % 2 == 1
    buf = bytearray(b"".join(dgrams) + bytes(64))
    from collections import Counter

    drops: Counter = Counter()
    drv = RxDriver(peers={"p"}, vni=7, max_datagram=1600, engine=rx_eng, drops=drops)
    out = drv.read(buf, len(buf) - 64, len(dgrams[0]), "p")
    writes = [w for w, _ in out.writes] + [w for w, _ in drv.flush()]
    assert not drops
    assert len(writes) == 1 and writes[0].segments == segments
    frame = b"".join(bytes(p) for p in writes[0].parts)
    assert frame.endswith(payload)


def kernel_gro_rx_packets(dgrams: list[bytes]) -> int:
    """How many packets a Linux >= 7.0 geneve receiver with gro-hint delivers for ``dgrams`` arriving in one
    NAPI poll, modelled on drivers/net/geneve.c: ``geneve_hdr_match()`` compares the Geneve header with its
    options and the hinted nested headers with the aggregate's first datagram (a difference flushes), and
    the TCP GRO behind it closes an aggregate after a shorter segment."""
    rx, head, closed = 0, None, True
    for d in dgrams:
        pkt = parse_packet(d)
        key = d[: pkt.hdr.hdr_len + pkt.gro_hint.nested_hdr_len]
        if closed or key != head[0]:
            rx += 1
            head = (key, len(d))
        closed = len(d) < head[1]
    return rx


@pytest.mark.parametrize("eng", ENGINES)
@pytest.mark.parametrize("segments,tail,rx", [(2, 0, 1), (23, 0, 1), (44, 0, 1), (3, 100, 2), (44, 1, 2)])
def test_hint_train_is_one_kernel_rx_packet(eng, segments, tail, rx):
    """The interop lab's shape (workload VXLAN over IPv4 with its UDP checksum, nested IPv4 without DF, MSS
    1338): a train merges into one RX packet at a Linux receiver, two with a short tail (as the kernel's own
    trains: tools/testing/selftests/net/double_udp_encap.sh "short last pkt").  One packet per datagram
    before the nested IPv4 ID was fixed across the train (1091 RX packets/MB in the lab)."""
    mss = 1338
    data = gso_read(False, False, True, payload_len=mss * segments + tail, mss=mss)
    _, segs = TxPlanner(vni=42, engine=eng).plan(data, "hint")
    dgrams = segs.datagrams()
    assert len(dgrams) == segments + (1 if tail else 0)
    assert kernel_gro_rx_packets(dgrams) == rx


@pytest.mark.parametrize("eng", ENGINES)
def test_hint_geneve_header_is_the_kernels(eng):
    """Geneve header + GRO hint option of a hint train for VNI 42 and VXLAN over IPv4 carrying Ethernet:
    the bytes Linux 7.2's geneve (gro-hint, GSO partial) put on the interop lab's underlay (wirecap.py)."""
    _, segs = TxPlanner(vni=42, engine=eng).plan(gso_read(False, False, False, payload_len=1338 * 3, mss=1338),
                                                 "hint")
    for d in segs.datagrams():
        assert d[:16] == bytes.fromhex("0200655800002a0001000101000e2232")
