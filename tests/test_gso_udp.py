"""USO: a UDP super-packet (gso_type UDP_L4) cut into datagrams of the application's size, checked by scapy."""

from __future__ import annotations

import os

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from udpnest import fold
from udpnest.gso import segment_tcp as segment
from udpnest.gso import tcp_layout


def frame(v6: bool, nested: bool, payload: bytes, nested_csum: bool = True) -> bytes:
    ip = IPv6(src="2001:db8::1", dst="2001:db8::2") if v6 else IP(src="203.0.113.1", dst="203.0.113.2", id=9)
    inner = Ether(src="02:00:00:00:00:03", dst="02:00:00:00:00:04") / ip / UDP(sport=4433, dport=443) / payload
    if not nested:
        return bytes(inner)
    udp = UDP(sport=5555, dport=4789) if nested_csum else UDP(sport=5555, dport=4789, chksum=0)
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                 / IP(src="192.0.2.1", dst="192.0.2.18", id=300) / udp / VXLAN(vni=100) / inner)


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("how", ["plain-nested", "fold", "not-nested"])
@pytest.mark.parametrize("size", [0, 1, 1200, 1201, 12000, 30001])
def test_uso_datagrams(v6, how, size):
    payload = os.urandom(size)
    gso = 1200
    f = frame(v6, how != "not-nested", payload)
    if how == "fold":
        fo = fold(f, gso=True)
        prefix, seg_frame, layout = fo.header, fo.inner, tcp_layout(fo.inner, inner_udp=True)
    elif how == "plain-nested":
        prefix, seg_frame, layout = b"GENEVE08", f, tcp_layout(f, (34,), inner_udp=True)
    else:
        prefix, seg_frame, layout = b"", f, tcp_layout(f, inner_udp=True)
    assert layout.l4_proto == 17
    segs = segment(prefix, seg_frame, layout, gso)
    got = b""
    dgs = segs.datagrams()
    assert len(dgs) == max(1, -(-size // gso))
    for d in dgs:
        assert d.startswith(prefix)
        pkt = Ether(d[len(prefix):])
        layers = [layer for layer in pkt.layers() if layer is UDP]
        inner_udp = pkt.getlayer(UDP, len(layers))
        data = bytes(inner_udp.payload)
        assert inner_udp.len == 8 + len(data) <= 8 + gso  # the application's datagram size, never re-cut
        for i in range(1, len(layers) + 1):  # every UDP checksum valid (0 = none for a nested one)
            u = pkt.getlayer(UDP, i)
            if u.chksum == 0 and i < len(layers):
                continue
            sent = u.chksum
            del u.chksum
            assert Ether(bytes(pkt)).getlayer(UDP, i).chksum == sent, (i, how)
        got += data
    assert got == payload
