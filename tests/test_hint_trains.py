"""Hint trains as long as the kernel's: a TAP read burst of one TCP flow's super-packets leaves as ONE train.

Measured in the QEMU lab (tests/interop/wirecap.py on the underlay, Linux 7.2, nested VXLAN over IPv4):
udpnest's hint datagrams already carried byte-identical nested headers within each super-packet, and the
kernel merged each of them, but a TCP flow through udpnest gets 2-3 segment TSO bursts (``tcp_tso_autosize``
at its rate), each with its own nested IPv4 ID, and Linux's geneve GRO flushes at every nested header
change (``geneve_hdr_match``): ~390 RX packets per MB where kernel-to-kernel trains of 4-45 segments give
~35-55.  :class:`udpnest.txplan.TrainJoiner` joins contiguous super-packets of a read burst (same headers
and TCP options, sequence numbers adjacent) so the whole burst is one train: one nested header for every
full-sized datagram, as the kernel's GSO partial sends one TSO burst.
"""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

import packets as P
from test_gso import assert_valid_frame
from udpnest import engine
from udpnest.fold import find_levels
from udpnest.gso import tcp_layout
from udpnest.txplan import JOIN_MAX_SEGMENTS, TrainJoiner, TxPlanner, join_frames, join_key
from udpnest.wire.options import parse_packet
from udpnest.wire.vnet import F_NEEDS_CSUM, GSO_TCPV4, GSO_UDP_TUNNEL_IPV4, VnetHdr

ENGINES = [pytest.param("python"), pytest.param("native", marks=pytest.mark.skipif(
    not engine.native_available(), reason=f"native core not built: {engine.NATIVE_ERROR}"))]
MSS = 1338
DATA = bytes((i * 13 + 5) & 0xFF for i in range(MSS * 70))


def read(seq_off: int, nseg: int, *, nest_id: int, inner_id: int, flags: str = "A", tsval: int = 7,
         sport: int = 40000, extra: int = 0, inner_df: bool = True) -> bytes:
    """A TAP read: a TCP super-packet of ``nseg`` MSS (+ ``extra`` bytes) of DATA from ``seq_off``, inside
    nested VXLAN over IPv4 (the interop lab's workload)."""
    lv = P.Tunnel(ip=P.IPSpec(ident=nest_id, df=False), encap="vxlan")
    inner = P.Inner(ip=P.IPSpec(ident=inner_id, df=inner_df), payload=DATA[seq_off : seq_off + nseg * MSS + extra],
                    seq=1000 + seq_off, flags=flags, sport=sport,
                    tcp_options=[("NOP", None), ("NOP", None), ("Timestamp", (tsval, 2))])
    frame = P.frame([lv], inner)
    [level] = find_levels(frame)
    lay = tcp_layout(frame, (level.udp_off,))
    vh = VnetHdr(flags=F_NEEDS_CSUM, gso_type=GSO_TCPV4 | GSO_UDP_TUNNEL_IPV4, hdr_len=lay.hdr_len, gso_size=MSS,
                 csum_start=lay.tcp, csum_offset=16, outer_th_offset=level.udp_off, inner_nh_offset=lay.tcp_ip)
    return vh.pack() + frame


def burst(reads: list[bytes]) -> tuple[list, TrainJoiner]:
    j = TrainJoiner()
    out = []
    for r in reads:
        out += j.push(memoryview(bytearray(r)))  # a view into a reused buffer, as the TAP loop passes
    return out + j.flush(), j


def datagrams(data, eng: str) -> list[bytes]:
    kind, segs = TxPlanner(vni=7, engine=eng, max_datagram=1472).plan(bytes(data), "hint")
    assert kind == "gso"
    return segs.datagrams()


def nested_of(d: bytes) -> bytes:
    pkt = parse_packet(d)
    G = pkt.hdr.hdr_len
    return d[G : G + pkt.gro_hint.nested_hdr_len]


@pytest.mark.parametrize("eng", ENGINES)
def test_read_burst_is_one_train_with_one_nested_header(eng):
    """Three super-packets of one flow (3 + 2 + 4 segments, the last with PSH and a short tail, nested IDs
    +1 each as the workload's VXLAN sends them) go out as one train: identical nested headers on every
    full-sized datagram; every checksum valid; the same bytes as one super-packet of the whole payload."""
    reads = [read(0, 3, nest_id=0x100, inner_id=0x2000),
             read(3 * MSS, 2, nest_id=0x101, inner_id=0x2003),
             read(5 * MSS, 4, nest_id=0x102, inner_id=0x2005, flags="PA", extra=100)]
    out, j = burst(reads)
    assert len(out) == 1 and j.joined == 2
    dgrams = datagrams(out[0], eng)
    assert len(dgrams) == 10
    full = [nested_of(d) for d in dgrams if len(d) == len(dgrams[0])]
    assert len(full) == 9 and all(n == full[0] for n in full), "nested headers differ across the train"
    assert dgrams == datagrams(read(0, 9, nest_id=0x100, inner_id=0x2000, flags="PA", extra=100), eng)
    seq = 1000
    for i, d in enumerate(dgrams):
        fr = d[parse_packet(d).hdr.hdr_len :]
        assert_valid_frame(fr)
        ips = [la for la in Ether(fr).iterpayloads() if isinstance(la, IP)]
        assert ips[0].id == 0x100 and ips[-1].id == 0x2000 + i
        t = Ether(fr)[TCP]
        assert t.seq == seq and (t.flags.P if i == 9 else not t.flags.P)
        seq += len(bytes(t.payload))
    assert seq == 1000 + 9 * MSS + 100


@pytest.mark.parametrize("eng", ENGINES)
def test_without_joining_each_super_packet_has_its_own_nested_header(eng):
    """The shape before: the same burst sent read by read changes the nested header every 2-3 datagrams."""
    a, b = read(0, 2, nest_id=0x100, inner_id=1), read(2 * MSS, 2, nest_id=0x101, inner_id=3)
    assert nested_of(datagrams(a, eng)[0]) != nested_of(datagrams(b, eng)[0])
    out, _ = burst([a, b])
    [d0, *rest] = datagrams(out[0], eng)
    assert len(rest) == 3 and all(nested_of(d) == nested_of(d0) for d in rest)


@pytest.mark.parametrize("name,second", [
    ("sequence gap", lambda: read(3 * MSS + 1, 2, nest_id=2, inner_id=4)),
    ("other TCP timestamp (the receiver's TCP GRO compares options)",
     lambda: read(3 * MSS, 2, nest_id=2, inner_id=4, tsval=8)),
    ("other flow", lambda: read(3 * MSS, 2, nest_id=2, inner_id=4, sport=40001)),
    ("CWR on the second", lambda: read(3 * MSS, 2, nest_id=2, inner_id=4, flags="AC")),
])
def test_not_joined(name, second):
    a = read(0, 3, nest_id=1, inner_id=1)
    b = second()
    out, j = burst([a, b])
    assert j.joined == 0 and [bytes(x) for x in out] == [a, b], name


def test_not_joined_after_psh_or_short_tail():
    """The receiver closes an aggregate after PSH or a short segment: nothing is appended there."""
    for a in (read(0, 3, nest_id=1, inner_id=1, flags="PA"), read(0, 3, nest_id=1, inner_id=1, extra=10)):
        assert join_frames(a, read(3 * MSS + (10 if len(a) % 2 else 0), 1, nest_id=2, inner_id=4),
                           join_key(a)) is None


def test_inner_ids_without_df_must_continue():
    a = read(0, 3, nest_id=1, inner_id=10, inner_df=False)
    assert join_frames(a, read(3 * MSS, 1, nest_id=2, inner_id=13, inner_df=False), join_key(a)) is not None
    assert join_frames(a, read(3 * MSS, 1, nest_id=2, inner_id=20, inner_df=False), join_key(a)) is None


def test_order_kept_and_limits():
    """Frames that cannot join pass through in order (a held super-packet leaves first); a train stops at
    JOIN_MAX_SEGMENTS segments / 64 KB."""
    ack = bytes(VnetHdr().pack()) + P.frame([P.Tunnel(ip=P.IPSpec(df=False))], P.Inner(payload=b"", flags="A"))
    a = read(0, 2, nest_id=1, inner_id=1)
    out, j = burst([a, ack, read(2 * MSS, 2, nest_id=2, inner_id=3)])
    assert [bytes(x) for x in out] == [a, ack, read(2 * MSS, 2, nest_id=2, inner_id=3)] and j.joined == 0
    reads = [read(i * 4 * MSS, 4, nest_id=i, inner_id=4 * i) for i in range(17)]
    out, j = burst(reads)
    sizes = [(len(x) - len(reads[0])) // MSS + 4 for x in out]
    assert sum(sizes) == 68 and all(s * MSS <= 65535 for s in sizes) and max(sizes) <= JOIN_MAX_SEGMENTS
    assert len(out) == 2
