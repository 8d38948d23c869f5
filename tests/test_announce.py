"""Gratuitous ARP / unsolicited NA frames (issue 9.5), checked with scapy."""

from __future__ import annotations

from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6
from scapy.layers.l2 import ARP, Ether

from udpnest.announce import announcements

MAC = "02:12:34:56:78:9a"


def test_gratuitous_arp():
    (f,) = announcements(MAC, ["192.0.2.49/28"])
    p = Ether(f)
    assert len(f) == 60 and p.dst == "ff:ff:ff:ff:ff:ff" and p.src == MAC
    a = p[ARP]
    assert a.op == 1 and a.hwsrc == MAC and a.psrc == a.pdst == "192.0.2.49"


def test_unsolicited_na_checksum_and_fields():
    (f,) = announcements(MAC, ["2001:db8:d::1/64"])
    p = Ether(f)
    assert p.dst == "33:33:00:00:00:01"
    ip = p[IPv6]
    assert ip.dst == "ff02::1" and ip.hlim == 255 and ip.src == "2001:db8:d::1"
    na = p[ICMPv6ND_NA]
    assert na.tgt == "2001:db8:d::1" and na.O == 1 and na.S == 0 and na.R == 0
    assert p[ICMPv6NDOptDstLLAddr].lladdr == MAC
    got = na.cksum
    del na.cksum
    assert Ether(bytes(p))[ICMPv6ND_NA].cksum == got
