"""Outer Ethernet/IP/UDP headers and the tunnel-GSO vnet header for the kernel TX path (pure).

With ``tx_path = kernel`` the endpoint does not cut super-packets itself: it writes ONE frame per
super-packet into a TAP in the underlay namespace, ``outer Eth | outer IP | UDP | Geneve+options |
inner Eth | IP | TCP | 64 KB``, with a virtio_net_hdr saying "TCP GSO inside a UDP tunnel"
(``gso_type TCPVx | UDP_TUNNEL_IPVx``, ``UDP_TUNNEL_CSUM``).  The kernel routes it to the underlay
device and its UDP-tunnel GSO cuts it into MTU-sized datagrams, copying outer UDP + Geneve + options to
every segment and computing every checksum (measured-recipes.md, experiment 3).  That works only when
the Geneve payload holds no further UDP tunnel level: fold mode after every nested level was folded, or
plain mode for a frame that was not tunnelled in the first place.

Length/checksum conventions are the kernel's for CHECKSUM_PARTIAL GSO packets: lengths describe the
whole super-packet, the outer UDP and inner TCP checksum fields hold the folded pseudo-header sum.
"""

from __future__ import annotations

import struct

from .wire import csum
from .wire.eth import ETH_HLEN, ETH_P_IPV4, ETH_P_IPV6
from .wire.ipv4 import IP_DF, PROTO_UDP
from .wire.vnet import (
    F_NEEDS_CSUM,
    F_UDP_TUNNEL_CSUM,
    GSO_ECN,
    GSO_UDP_TUNNEL_IPV4,
    GSO_UDP_TUNNEL_IPV6,
    VnetHdr,
)

_IP4 = struct.Struct("!BBHHHBBH4s4s")
_IP6 = struct.Struct("!IHBB16s16s")
_UDP = struct.Struct("!HHHH")


def source_port(flow_hash: int, lo: int = 49152, hi: int = 65535) -> int:
    """Outer UDP source port from a flow hash, in the dynamic range (as the kernel's udp_flow_src_port)."""
    return lo + flow_hash % (hi - lo + 1)


def outer_headers(*, dst_mac: bytes, src_mac: bytes, src: bytes, dst: bytes, sport: int, dport: int,
                  payload_len: int, ident: int = 0, ttl: int = 64, tos: int = 0, df: bool = False,
                  flow_label: int = 0) -> bytes:
    """Ethernet + IPv4/IPv6 + UDP for a UDP payload of ``payload_len`` bytes.  The UDP checksum field
    is the pseudo-header sum (CHECKSUM_PARTIAL: the kernel finishes it per segment)."""
    udp_len = 8 + payload_len
    if len(src) == 4:
        ip = _IP4.pack(0x45, tos, 20 + udp_len, ident & 0xFFFF, IP_DF if df else 0, ttl, PROTO_UDP, 0, src, dst)
        ip = ip[:10] + csum.checksum(ip).to_bytes(2, "big") + ip[12:]
        eth = dst_mac + src_mac + ETH_P_IPV4.to_bytes(2, "big")
    else:
        ip = _IP6.pack((6 << 28) | (tos << 20) | (flow_label & 0xFFFFF), udp_len, PROTO_UDP, ttl, src, dst)
        eth = dst_mac + src_mac + ETH_P_IPV6.to_bytes(2, "big")
    udp = _UDP.pack(sport, dport, udp_len, csum.partial_csum(src, dst, PROTO_UDP, udp_len))
    return eth + ip + udp


def tunnel_gso_vnet(*, outer_v6: bool, base_type: int, ecn: bool, mss: int, outer_len: int, geneve_len: int,
                    inner_nh: int, inner_th: int, inner_hdr_end: int, csum_offset: int = 16) -> bytes:
    """virtio_net_hdr for outer headers (``outer_len`` bytes, ending with UDP) + Geneve (``geneve_len``)
    + an inner frame whose IP/TCP headers start at ``inner_nh``/``inner_th`` and end at ``inner_hdr_end``
    (offsets into the inner frame).  ``csum_offset`` 16 for TCP, 6 for a USO (UDP_L4) super-packet."""
    base = outer_len + geneve_len
    gso = base_type | (GSO_UDP_TUNNEL_IPV6 if outer_v6 else GSO_UDP_TUNNEL_IPV4) | (GSO_ECN if ecn else 0)
    return VnetHdr(flags=F_NEEDS_CSUM | F_UDP_TUNNEL_CSUM, gso_type=gso, hdr_len=base + inner_hdr_end,
                   gso_size=mss, csum_start=base + inner_th, csum_offset=csum_offset, outer_th_offset=outer_len - 8,
                   inner_nh_offset=base + inner_nh).pack()


OUTER_V4_LEN = ETH_HLEN + 20 + 8
OUTER_V6_LEN = ETH_HLEN + 40 + 8
