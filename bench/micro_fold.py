"""Micro-benchmark: header work of fold and unfold for one 64 KB GSO super-packet.

Not a test: prints timings.  Goal (issue 2): <= 20 us each on the development machine.

    python3 bench/micro_fold.py            # IPv4 VXLAN nested, TCP inner
    python3 bench/micro_fold.py --json
    python3 bench/micro_fold.py --tx        # + the whole TX of one super-packet / one ACK, per engine,
                                            #   with the Python calls each costs (cProfile)

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


def tx_read(payload_len: int = 65000 - 50 - 14 - 20 - 32) -> bytes:
    """One TAP read: GSO vnet header (TCPv4 in a UDP tunnel, MSS 1448) + :func:`super_packet`."""
    from udpnest.wire.vnet import F_NEEDS_CSUM, GSO_TCPV4, GSO_UDP_TUNNEL_IPV4, VnetHdr

    f = super_packet(payload_len)
    tcp = 14 + 20 + 8 + 8 + 14 + 20
    vh = VnetHdr(flags=F_NEEDS_CSUM, gso_type=GSO_TCPV4 | GSO_UDP_TUNNEL_IPV4, hdr_len=tcp + 32, gso_size=1448,
                 csum_start=tcp, csum_offset=16, outer_th_offset=34, inner_nh_offset=tcp - 20)
    return vh.pack() + f


def ack_read() -> bytes:
    """One TAP read: a pure ACK in the nested VXLAN (no GSO, checksum complete)."""
    from udpnest.wire import csum

    f = bytearray(super_packet(0, nested_udp_csum=0))
    tcp = 14 + 20 + 8 + 8 + 14 + 20
    f[tcp + 16 : tcp + 18] = csum.checksum(bytes(f[tcp - 8 : tcp - 4]) + bytes(f[tcp - 4 : tcp]) +
                                           b"\0\x06" + (len(f) - tcp).to_bytes(2, "big") + bytes(f[tcp:]))\
        .to_bytes(2, "big")
    return bytes(24) + bytes(f)


def python_calls(fn) -> int:
    """Function calls (Python and C functions called from Python) of one call of ``fn``, by cProfile."""
    import cProfile
    import pstats

    fn()  # warm caches
    pr = cProfile.Profile()
    pr.enable()
    fn()
    pr.disable()
    return pstats.Stats(pr).total_calls - 1  # minus the profiler's own disable()


def run_tx(number: int = 2000) -> dict:
    """TX of one read through TxPlanner (what the endpoint's TX thread does per read, minus the syscall)."""
    from udpnest import engine
    from udpnest.txplan import TxPlanner

    out: dict = {}
    reads = {"super-packet 64 KB": tx_read(), "ACK": ack_read()}
    for eng in engine.ENGINES:
        if eng == "native" and not engine.native_available():
            continue
        for mode in ("fold", "plain", "hint"):
            pl = TxPlanner(vni=7, max_datagram=1472, engine=eng)
            for what, data in reads.items():
                fn = lambda pl=pl, data=data, mode=mode: pl.plan(data, mode)  # noqa: E731
                best = min(timeit.repeat(fn, number=number, repeat=5)) / number
                out[f"tx {mode} {what} [{eng}]"] = {"us": round(best * 1e6, 2), "calls": python_calls(fn)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--number", type=int, default=20000)
    ap.add_argument("--tx", action="store_true", help="also time TX planning per engine")
    a = ap.parse_args()
    res = run(a.number)
    if a.tx:
        res.update(run_tx(max(100, a.number // 10)))
    if a.json:
        print(json.dumps(res, indent=2))
        return
    print(f"frame: {res.pop('frame_bytes')} bytes (best of 5 repeats, microseconds per call)")
    for k, v in res.items():
        if isinstance(v, dict):
            print(f"  {k:<48} {v['us']:8.2f} us  {v['calls']:5d} Python calls")
        else:
            print(f"  {k:<48} {v:8.2f} us")


if __name__ == "__main__":
    main()
