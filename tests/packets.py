"""Nested UDP-tunnel test frames built with scapy (an implementation independent of udpnest.wire).

A frame is described by a list of :class:`Tunnel` levels (outermost nested level first) and an
:class:`Inner` frame::

    Ether / IP|IPv6 [/ ext headers] / UDP / VXLAN|VXLAN-GPE|Geneve(opts)       <- Tunnel 0
        [Ether /] IP|IPv6 / UDP / tunnel                                         <- Tunnel 1, 2
            [Ether /] IP|IPv6 / TCP|UDP / payload                                <- Inner

Level 0 always starts with Ethernet; a later level (and the inner frame) starts with Ethernet when the
previous tunnel carries Ethernet (``carries="eth"``, always so for plain VXLAN) and with the bare IP
header otherwise (GPE next protocol IPv4/IPv6, Geneve protocol 0x0800/0x86DD).
"""

from __future__ import annotations

import pathlib
import random
import sys
from dataclasses import dataclass, field, replace

from scapy.contrib.geneve import GENEVE, GeneveOptions
from scapy.layers.inet import IP, TCP, UDP, IPOption
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop
from scapy.layers.l2 import Dot1Q, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet, Raw

try:  # the tests run from a checkout without the package installed too
    import udpnest  # noqa: F401
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "src"))

ENCAPS = ("vxlan", "gpe", "geneve")
PORTS = {"vxlan": 4789, "gpe": 4790, "geneve": 6081}
ETH_P_IPV4, ETH_P_IPV6, ETH_P_TEB = 0x0800, 0x86DD, 0x6558
# IPv4 options that are a multiple of 4 bytes (scapy would pad otherwise): router alert; NOPs + EOL
IPOPT_RA = b"\x94\x04\x00\x00"
IPOPT_NOPS = b"\x01\x01\x01\x00"


@dataclass(frozen=True)
class IPSpec:
    """One IP header (and the Ethernet header in front of it, if the level has one)."""

    v6: bool = False
    tos: int = 0  # IPv4 TOS / IPv6 traffic class
    ttl: int = 64  # IPv4 TTL / IPv6 hop limit
    ident: int = 1
    df: bool = True
    ip_options: bytes = b""  # IPv4 only, a multiple of 4 bytes
    flow: int = 0  # IPv6 only
    ext: tuple[str, ...] = ()  # IPv6 only: "hop" (hop-by-hop), "dst" (destination options)
    vlan: int | None = None  # 802.1Q TCI of the Ethernet header in front (ignored when there is none)
    src: str | None = None
    dst: str | None = None


@dataclass(frozen=True)
class Tunnel:
    ip: IPSpec = field(default_factory=IPSpec)
    encap: str = "vxlan"
    dport: int | None = None  # default: the encap's standard port (VXLAN may also use 8472)
    sport: int = 49152
    udp_csum: bool = False  # a real checksum (True) or zero (False)
    vni: int = 42
    carries: str = "eth"  # "eth" or "ip" (GPE / Geneve only; VXLAN always carries Ethernet)
    geneve_opts: tuple[tuple[int, int, bytes], ...] = ()  # (class, type, data) for a nested Geneve
    geneve_oam: bool = False
    geneve_critical: bool = False


@dataclass(frozen=True)
class Inner:
    ip: IPSpec = field(default_factory=IPSpec)
    tcp: bool = True
    payload: bytes = b""
    tcp_options: list | None = None
    seq: int = 1000
    flags: str = "PA"
    sport: int = 40000
    dport: int = 5001


def _macs(depth: int) -> tuple[str, str]:
    return f"02:00:00:00:{depth:02x}:01", f"02:00:00:00:{depth:02x}:02"


def _addrs(ip: IPSpec, depth: int) -> tuple[str, str]:
    if ip.v6:
        return ip.src or f"2001:db8:{depth}::1", ip.dst or f"2001:db8:{depth}::2"
    return ip.src or f"10.{depth}.0.1", ip.dst or f"10.{depth}.0.2"


def eth_layer(ip: IPSpec, depth: int) -> Packet:
    dst, src = _macs(depth)
    eth = Ether(dst=dst, src=src)
    if ip.vlan is not None:
        return eth / Dot1Q(prio=ip.vlan >> 13, dei=(ip.vlan >> 12) & 1, vlan=ip.vlan & 0xFFF)
    return eth


def ip_layer(ip: IPSpec, depth: int) -> Packet:
    src, dst = _addrs(ip, depth)
    if ip.v6:
        pkt = IPv6(src=src, dst=dst, tc=ip.tos, fl=ip.flow, hlim=ip.ttl)
        for e in ip.ext:
            pkt = pkt / (IPv6ExtHdrHopByHop() if e == "hop" else IPv6ExtHdrDestOpt())
        return pkt
    kw = {"options": [IPOption(ip.ip_options)]} if ip.ip_options else {}
    return IP(src=src, dst=dst, tos=ip.tos, ttl=ip.ttl, id=ip.ident, flags="DF" if ip.df else 0, **kw)


def tunnel_layer(t: Tunnel, next_v6: bool) -> Packet:
    if t.encap == "vxlan":
        return VXLAN(flags=0x08, vni=t.vni)  # flags explicit: scapy's top-down binding would set P
    if t.encap == "gpe":
        return VXLAN(flags=0x0C, NextProtocol=3 if t.carries == "eth" else (2 if next_v6 else 1), vni=t.vni)
    proto = ETH_P_TEB if t.carries == "eth" else (ETH_P_IPV6 if next_v6 else ETH_P_IPV4)
    opts = [GeneveOptions(classid=c, type=ty, data=d) for c, ty, d in t.geneve_opts]
    return GENEVE(proto=proto, vni=t.vni, oam=int(t.geneve_oam), critical=int(t.geneve_critical), options=opts)


def carries_eth(t: Tunnel) -> bool:
    return t.encap == "vxlan" or t.carries == "eth"


def build(levels: list[Tunnel] | tuple[Tunnel, ...], inner: Inner) -> Packet:
    """The scapy packet (lengths and checksums computed by scapy when the frame is built)."""
    pkt: Packet | None = None
    has_eth = True
    for depth, t in enumerate(levels):
        nxt_v6 = levels[depth + 1].ip.v6 if depth + 1 < len(levels) else inner.ip.v6
        dport = t.dport if t.dport is not None else PORTS[t.encap]
        udp = UDP(sport=t.sport, dport=dport) if t.udp_csum else UDP(sport=t.sport, dport=dport, chksum=0)
        part = ip_layer(t.ip, depth) / udp / tunnel_layer(t, nxt_v6)
        if has_eth:
            part = eth_layer(t.ip, depth) / part
        pkt = part if pkt is None else pkt / part
        has_eth = carries_eth(t)
    depth = len(levels)
    l4 = (TCP(sport=inner.sport, dport=inner.dport, seq=inner.seq, flags=inner.flags,
              options=inner.tcp_options or [])
          if inner.tcp else UDP(sport=inner.sport, dport=inner.dport))
    part = ip_layer(inner.ip, depth) / l4 / Raw(inner.payload)
    if has_eth:
        part = eth_layer(inner.ip, depth) / part
    return part if pkt is None else pkt / part


def frame(levels, inner: Inner) -> bytes:
    return bytes(build(levels, inner))


# --- sizes (an independent model of what one fold option needs) ----------------------------------------
def l3_len(ip: IPSpec) -> int:
    return 40 + 8 * len(ip.ext) if ip.v6 else 20 + len(ip.ip_options)


def tun_len(t: Tunnel) -> int:
    if t.encap == "geneve":
        return 8 + sum(4 + len(d) for _c, _t, d in t.geneve_opts)
    return 8


def level_hdr_len(levels, i: int) -> int:
    """Bytes of headers level ``i`` contributes to the frame (L2 + L3 + UDP + tunnel)."""
    has_eth = i == 0 or carries_eth(levels[i - 1])
    l2 = (18 if levels[i].ip.vlan is not None else 14) if has_eth else 0
    return l2 + l3_len(levels[i].ip) + 8 + tun_len(levels[i])


def option_size(levels, i: int) -> int:
    return 4 + ((6 + level_hdr_len(levels, i) + 3) & ~3)


def expected_levels(levels, *, budget: int = 252, max_levels: int = 3) -> int:
    """How many levels fold() should fold: outermost first while one option holds the level (data at most
    124 bytes) and all options fit in ``budget`` bytes."""
    used = n = 0
    for i in range(min(len(levels), max_levels)):
        size = option_size(levels, i)
        if size - 4 > 124 or used + size > budget:
            break
        used += size
        n += 1
    return n


# --- random specs (for the fuzzer's seed corpus and quick sweeps) ---------------------------------------
def random_ip(rng: random.Random, v6: bool | None = None) -> IPSpec:
    v6 = rng.random() < 0.5 if v6 is None else v6
    return IPSpec(
        v6=v6,
        tos=rng.randrange(256),
        ttl=rng.randrange(1, 256),
        ident=rng.randrange(65536),
        df=rng.random() < 0.5,
        ip_options=rng.choice((b"", b"", IPOPT_RA, IPOPT_NOPS)) if not v6 else b"",
        flow=rng.randrange(1 << 20) if v6 else 0,
        ext=tuple(rng.choice(("hop", "dst")) for _ in range(rng.choice((0, 0, 1)))) if v6 else (),
        vlan=rng.choice((None, None, rng.randrange(65536))),
    )


def random_tunnel(rng: random.Random, v6: bool | None = None) -> Tunnel:
    encap = rng.choice(ENCAPS)
    opts: tuple = ()
    if encap == "geneve":
        opts = tuple((rng.randrange(0x10000), rng.randrange(0x80), rng.randbytes(4 * rng.randrange(4)))
                     for _ in range(rng.randrange(3)))
    return Tunnel(
        ip=random_ip(rng, v6),
        encap=encap,
        dport=8472 if encap == "vxlan" and rng.random() < 0.3 else None,
        sport=rng.randrange(1024, 65536),
        udp_csum=rng.random() < 0.5,
        vni=rng.randrange(1 << 24),
        carries="eth" if encap == "vxlan" or rng.random() < 0.6 else "ip",
        geneve_opts=opts,
    )


def random_frame(rng: random.Random, *, max_payload: int = 200) -> tuple[list[Tunnel], Inner, bytes]:
    levels = [random_tunnel(rng) for _ in range(rng.randrange(1, 4))]
    inner = Inner(ip=random_ip(rng), tcp=rng.random() < 0.5, payload=rng.randbytes(rng.randrange(max_payload + 1)))
    return levels, inner, frame(levels, inner)


__all__ = [
    "IPSpec", "Tunnel", "Inner", "build", "frame", "replace", "expected_levels", "option_size", "level_hdr_len",
    "random_frame", "random_tunnel", "random_ip", "IPOPT_RA", "IPOPT_NOPS", "ENCAPS", "PORTS",
]
