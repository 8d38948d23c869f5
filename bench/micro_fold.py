"""Micro-benchmark: header work of fold and unfold for one 64 KB GSO super-packet.

Not a test: prints timings.  Goal (issue 2): <= 20 us each on the development machine.

    python3 bench/micro_fold.py            # IPv4 VXLAN nested, TCP inner
    python3 bench/micro_fold.py --json

Cases: fold (gso=True), unfold with the nested UDP checksum left partial (what the dataplane does for a
super-packet: the kernel regenerates per-segment checksums), unfold computing it (numpy sum over 64 KB),
and the full ``.payload`` / ``.frame`` joins (one 64 KB copy each) for comparison.
"""

from __future__ import annotations

import argparse
import json
import struct
import timeit

from udpnest import fold, unfold
from udpnest.wire.eth import ETH_P_IPV4, build_eth
from udpnest.wire.ipv4 import IP_DF, PROTO_TCP, PROTO_UDP, build_ipv4
from udpnest.wire.tcp import ACK, build_tcp
from udpnest.wire.udp import build_udp
from udpnest.wire.vxlan import build_vxlan

MAC_A, MAC_B = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")


def super_packet(payload_len: int = 65000 - 50 - 14 - 20 - 32, nested_udp_csum: int = 0x1234) -> bytes:
    """Ethernet/IPv4/UDP 4789/VXLAN/Ethernet/IPv4/TCP(+12 B timestamp option) super-packet."""
    tcp = build_tcp(40000, 5201, 1, 1, ACK, options=b"\x01\x01\x08\x0a" + struct.pack("!II", 1, 2))
    inner_ip = build_ipv4(bytes([203, 0, 113, 1]), bytes([203, 0, 113, 2]), PROTO_TCP, len(tcp) + payload_len)
    inner = build_eth(MAC_B, MAC_A, ETH_P_IPV4) + inner_ip + tcp + bytes(payload_len)
    vx = build_vxlan(42)
    udp = build_udp(49152, 4789, len(vx) + len(inner), nested_udp_csum)
    ip = build_ipv4(bytes([198, 51, 100, 1]), bytes([198, 51, 100, 2]), PROTO_UDP, len(udp) + len(vx) + len(inner),
                    frag=IP_DF)
    return build_eth(MAC_A, MAC_B, ETH_P_IPV4) + ip + udp + vx + inner


def run(number: int = 20000) -> dict[str, float]:
    frame = super_packet()
    folded = fold(frame, vni=7, gso=True)
    payload = folded.payload
    cases = {
        "fold (gso, header work)": lambda: fold(frame, vni=7, gso=True),
        "unfold (nested udp csum partial)": lambda: unfold(payload, udp_csum="partial"),
        "unfold (nested udp csum computed, numpy 64 KB)": lambda: unfold(payload, udp_csum="compute"),
        "fold + .payload join (64 KB copy)": lambda: fold(frame, vni=7, gso=True).payload,
        "unfold + .frame join (64 KB copy)": lambda: unfold(payload, udp_csum="partial").frame,
    }
    out = {"frame_bytes": len(frame)}
    for name, fn in cases.items():
        best = min(timeit.repeat(fn, number=number, repeat=5)) / number
        out[name] = round(best * 1e6, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--number", type=int, default=20000)
    a = ap.parse_args()
    res = run(a.number)
    if a.json:
        print(json.dumps(res, indent=2))
        return
    print(f"frame: {res.pop('frame_bytes')} bytes (best of 5 repeats, microseconds per call)")
    for k, v in res.items():
        print(f"  {k:<48} {v:8.2f} us")


if __name__ == "__main__":
    main()
