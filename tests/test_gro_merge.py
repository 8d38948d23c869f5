"""Merging two UDP_GRO reads of one sender super-packet into one TAP write (gro.merge / gro.finish)."""

from __future__ import annotations

import os

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from udpnest import fold
from udpnest.gso import segment_tcp, tcp_layout
from udpnest.rxpipe import finish, merge, receive

PAYLOAD = os.urandom(40 * 1000 + 321)


def super_packet(seq: int = 1000, flags: str = "A", payload: bytes = PAYLOAD, dport: int = 2,
                 nested_id: int = 300, inner_id: int = 7) -> bytes:
    return bytes(
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        / IP(src="192.0.2.1", dst="192.0.2.18", id=nested_id) / UDP(sport=5555, dport=4789) / VXLAN(vni=100)
        / Ether(src="02:00:00:00:00:03", dst="02:00:00:00:00:04")
        / IP(src="203.0.113.1", dst="203.0.113.2", id=inner_id, flags="DF")
        / TCP(sport=1, dport=dport, seq=seq, flags=flags, options=[("Timestamp", (1, 2))]) / payload
    )


def reads(frame: bytes, split_rows: int, mss: int = 1000):
    """The datagrams of the folded super-packet, delivered as two UDP_GRO reads split after split_rows."""
    fo = fold(frame, gso=True)
    segs = segment_tcp(fo.header, fo.inner, tcp_layout(fo.inner), mss)
    buf = bytes(segs.buffer)
    cut = split_rows * segs.row_len
    return buf[:cut], buf[cut:], segs.row_len


def test_two_reads_merge_into_the_same_write_as_one_read():
    first, second, row = reads(super_packet(), 30)
    ra = receive(first, len(first), row, hold=True).run
    rb = receive(second, len(second), row, hold=True).run
    assert ra is not None and rb is not None and ra.extendable and not rb.extendable  # rb ends short
    joined = merge(ra, rb)
    assert joined is not None and joined.segments == 41 and joined.payload_len == len(PAYLOAD)
    whole = first + second
    expected = receive(whole, len(whole), row).writes[0]
    got = finish(joined)
    assert got.vnet == expected.vnet
    assert b"".join(bytes(p) for p in got.parts) == b"".join(bytes(p) for p in expected.parts)
    assert got.segments == expected.segments == 41


def test_hold_false_writes_immediately():
    first, _, row = reads(super_packet(), 30)
    res = receive(first, len(first), row)
    assert res.run is None and len(res.writes) == 1 and res.writes[0].segments == 30


@pytest.mark.parametrize("change", ["none", "seq-gap", "other-flow", "psh-in-first", "other-mss", "id-gap"])
def test_no_merge_when_the_second_read_does_not_continue(change):
    """A second super-packet that continues the first (same flow, next sequence number and IPv4 ID) merges;
    each single difference stops it."""
    first, second, row = reads(super_packet(flags="PA" if change == "psh-in-first" else "A"), 30)
    ra = receive(first, len(first), row, hold=True).run
    if change == "psh-in-first":
        ra = ra._replace(extendable=False)  # PSH sits on the super-packet's last segment, in the second read
        other = receive(second, len(second), row, hold=True).run
        assert merge(ra, other) is None
        return
    # the rest of the same super-packet: next sequence number and inner IPv4 ID, the same FOLD option
    # (the nested headers, and so the nested IPv4 ID, are carried once per super-packet)
    seq, iid, dport, nid = 1000 + 30 * 1000, 7 + 30, 2, 300
    if change == "seq-gap":
        seq += 1000
    elif change == "other-flow":
        dport = 3
    elif change == "id-gap":
        iid += 1
    mss = 900 if change == "other-mss" else 1000
    s2 = reads(super_packet(seq=seq, dport=dport, nested_id=nid, inner_id=iid, payload=PAYLOAD[:5000]), 0, mss)
    rb = receive(s2[1], len(s2[1]), s2[2], hold=True).run
    assert rb is not None
    joined = merge(ra, rb)
    if change == "none":
        assert joined is not None and joined.segments == 35 and joined.next_seq == seq + 5000
    else:
        assert joined is None


def test_merge_refuses_more_than_a_super_packet_can_carry():
    first, second, row = reads(super_packet(payload=os.urandom(60000)), 30)
    ra = receive(first, len(first), row, hold=True).run
    big = ra._replace(payload_len=65000)
    rb = receive(second, len(second), row, hold=True).run
    assert merge(big._replace(next_seq=rb.seq0), rb) is None
