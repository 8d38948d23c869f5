"""TAP reads for TX tests: a nested-VXLAN TCP super-packet and pure ACKs (no scapy: fast to build)."""

from __future__ import annotations

import struct

from udpnest.wire import csum
from udpnest.wire.eth import ETH_P_IPV4, build_eth
from udpnest.wire.ipv4 import IP_DF, PROTO_TCP, PROTO_UDP, build_ipv4
from udpnest.wire.tcp import ACK, build_tcp
from udpnest.wire.udp import build_udp
from udpnest.wire.vnet import F_NEEDS_CSUM, GSO_TCPV4, GSO_UDP_TUNNEL_IPV4, VnetHdr
from udpnest.wire.vxlan import build_vxlan

MAC_A, MAC_B = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
A4, B4 = bytes([203, 0, 113, 1]), bytes([203, 0, 113, 2])
TCP_OFF = 14 + 20 + 8 + 8 + 14 + 20


def nested_frame(payload: bytes, seq: int = 1, nested_udp_csum: int = 0) -> bytes:
    tcp = build_tcp(40000, 5201, seq, 1, ACK, options=b"\x01\x01\x08\x0a" + struct.pack("!II", 1, 2))
    c = csum.checksum(tcp + payload, csum.pseudo_sum(A4, B4, PROTO_TCP, len(tcp) + len(payload)))
    tcp = tcp[:16] + c.to_bytes(2, "big") + tcp[18:]
    inner = build_eth(MAC_B, MAC_A, ETH_P_IPV4) + build_ipv4(A4, B4, PROTO_TCP, len(tcp) + len(payload)) + tcp + payload
    vx = build_vxlan(42)
    udp = build_udp(49152, 4789, len(vx) + len(inner), nested_udp_csum)
    ip = build_ipv4(bytes([198, 51, 100, 1]), bytes([198, 51, 100, 2]), PROTO_UDP, len(udp) + len(vx) + len(inner),
                    frag=IP_DF)
    return build_eth(MAC_A, MAC_B, ETH_P_IPV4) + ip + udp + vx + inner


def ack_reads(n: int, start: int = 0) -> list[bytes]:
    return [bytes(24) + nested_frame(b"", seq=1000 + i) for i in range(start, start + n)]


def gso_read(payload_len: int = 20000) -> bytes:
    f = nested_frame(bytes(i & 0xFF for i in range(payload_len)))
    vh = VnetHdr(flags=F_NEEDS_CSUM, gso_type=GSO_TCPV4 | GSO_UDP_TUNNEL_IPV4, hdr_len=TCP_OFF + 32, gso_size=1448,
                 csum_start=TCP_OFF, csum_offset=16, outer_th_offset=34, inner_nh_offset=TCP_OFF - 20)
    return vh.pack() + f


class KtxRecorder:
    """A stand-in for the kernel TX path's TAP (``io.kernel_tx``): records each frame ``send`` is given."""

    mac = bytes.fromhex("020000000009")

    def __init__(self):
        self.frames = []

    def send(self, parts):
        self.frames.append(b"".join(bytes(p) for p in parts))
