"""Gratuitous ARP and unsolicited neighbour advertisements for the TAP's addresses (sans-IO builders).

After a restart the far workload's neighbour entry for our TAP address may point at a MAC it learnt
before; the default TAP MAC is stable (:attr:`udpnest.config.EndpointConfig.effective_tap_mac`), and on
start udpnest also announces every address of the TAP to all peers (issue 9.5: with a random MAC TCP
stalled 72-75 s until the far neighbour entry failed).  The frames go out through the normal TX path,
as if the kernel had sent them from the TAP (``arp_notify`` / ``ndisc_notify`` would, but only on link
or MAC changes, not when the addresses are added later).
"""

from __future__ import annotations

import ipaddress

from .wire import csum

BROADCAST = b"\xff" * 6
ALL_NODES_MAC = bytes.fromhex("333300000001")
ALL_NODES = ipaddress.IPv6Address("ff02::1").packed


def mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


def gratuitous_arp(mac: bytes, addr: str) -> bytes:
    """ARP request with sender = target = ``addr`` (RFC 5227 section 3 "ARP Announcement"), 60 bytes."""
    ip = ipaddress.IPv4Address(addr).packed
    arp = (b"\x00\x01\x08\x00\x06\x04\x00\x01" + mac + ip + b"\x00" * 6 + ip)
    frame = BROADCAST + mac + b"\x08\x06" + arp
    return frame + b"\x00" * (60 - len(frame))


def unsolicited_na(mac: bytes, addr: str) -> bytes:
    """Neighbour advertisement to ff02::1 with the Override flag and the target link-layer option
    (RFC 4861 section 7.2.6)."""
    src = ipaddress.IPv6Address(addr).packed
    body = bytearray(b"\x88\x00\x00\x00" + b"\x20\x00\x00\x00" + src + b"\x02\x01" + mac)
    c = csum.checksum(body, csum.pseudo_sum(src, ALL_NODES, 58, len(body)))
    body[2:4] = c.to_bytes(2, "big")
    ip6 = (b"\x60\x00\x00\x00" + len(body).to_bytes(2, "big") + b"\x3a\xff" + src + ALL_NODES)
    return ALL_NODES_MAC + mac + b"\x86\xdd" + ip6 + bytes(body)


def announcements(mac: str, addresses) -> list[bytes]:
    """One frame per address (``addr`` or ``addr/prefix``), IPv4 and IPv6."""
    m = mac_bytes(mac)
    out = []
    for a in addresses:
        ip = ipaddress.ip_interface(a).ip
        out.append(gratuitous_arp(m, str(ip)) if ip.version == 4 else unsolicited_na(m, str(ip)))
    return out
