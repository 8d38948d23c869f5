"""Micro-benchmark: header work of fold and unfold for one 64 KB GSO super-packet.

Not a test: prints timings.  Goal (issue 2): <= 20 us each on the development machine.

    python3 bench/micro_fold.py            # IPv4 VXLAN nested, TCP inner
    python3 bench/micro_fold.py --json
    python3 bench/micro_fold.py --tx        # + the whole TX of one super-packet / one ACK, per engine,
                                            #   with the Python calls each costs (cProfile)
    python3 bench/micro_fold.py --loop      # + the endpoint's TX loop (native engine) per TAP wakeup:
                                            #   64 ACKs / one fold super-packet, TX burst on vs off;
                                            #   and one ACK per wakeup (ping-pong), linger on vs off

Cases: fold (gso=True), unfold with the nested UDP checksum left partial (what the dataplane does for a
super-packet: the kernel regenerates per-segment checksums), unfold computing it (numpy sum over 64 KB),
the numpy sum alone (a yardstick of the machine's speed at the time, no goal) and the full ``.payload`` /
``.frame`` joins (one 64 KB copy each) for comparison.
"""

from __future__ import annotations

import argparse
import json
import struct
import timeit

import numpy as np

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
    words = np.frombuffer(payload, dtype="<u4", count=len(payload) // 4)
    cases = {
        "fold (gso, header work)": lambda: fold(frame, vni=7, gso=True),
        "unfold (nested udp csum partial)": lambda: unfold(payload, udp_csum="partial"),
        "unfold (nested udp csum computed, numpy 64 KB)": lambda: unfold(payload, udp_csum="compute"),
        # not a goal: how fast this machine is right now (its speed moves by a third from hour to hour)
        "yardstick: numpy sum of the 64 KB alone": lambda: np.add.reduce(words, dtype=np.uint64),
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


class _OneWakeup:
    """stop_event for exactly one TX loop round (the frames are queued before: poll returns at once)."""

    def __init__(self) -> None:
        self.n = 0

    def is_set(self) -> bool:
        self.n += 1
        return self.n > 1


def _wakeup_calls(ep, tap_peer, sink, reads) -> int:
    """Function calls (cProfile: Python functions and the C functions Python calls) of one loop wakeup."""
    import cProfile
    import pstats

    for r in reads:
        tap_peer.send(r)
    ep.stop_event = _OneWakeup()
    pr = cProfile.Profile()
    pr.enable()
    ep._tx_loop()
    pr.disable()
    while True:
        try:
            sink.recv(65535)
        except BlockingIOError:
            break
    return pstats.Stats(pr).total_calls - 1


def run_loop(rounds: int = 300) -> dict:
    """Endpoint._tx_loop (native engine, socket TX path) for exactly one TAP wakeup, called in this thread
    (no GIL hand-offs in the measurement), the TAP a SEQPACKET socketpair and the peer a loopback UDP
    socket: 64 fold ACKs, 1 fold ACK, one fold super-packet (64 KB), with the native TX burst
    (csrc/txburst.c) on and off.  Microseconds per frame from entering the loop to its return (TAP reads,
    builds, sends, counters; the loop's per-call setup, a 64 KB buffer and a poll object, is in both),
    best of 3.  The frames are queued and the peer's datagrams drained outside the timing.  The burst's
    linger is off here (``txburst.LINGER_NS = 0``: one call per wakeup, as the loop returns after it);
    :func:`run_ack_wakeups` measures the linger."""
    import os
    import socket
    import time

    from udpnest import engine, txburst
    from udpnest.config import build_config
    from udpnest.endpoint import Endpoint
    from udpnest.io.tap import Tap
    from udpnest.io.udp import UdpSocket
    from udpnest.peers import Event, PeerState

    if not engine.native_available():
        return {}
    cases = {"64 ACKs (fold)": [ack_read()] * 64, "1 ACK (fold)": [ack_read()],
             "super-packet 64 KB (fold)": [tx_read()]}
    out: dict = {}
    old = os.environ.get(txburst.ENV)
    old_linger, txburst.LINGER_NS = txburst.LINGER_NS, 0
    try:
        for what, reads in cases.items():
            per = {}
            for on in (False, True):
                os.environ[txburst.ENV] = "1" if on else "0"
                sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sink.bind(("127.0.0.1", 0))
                sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 23)
                sink.setblocking(False)
                cfg = build_config({"id": 7, "local": "127.0.0.1", "remote": [f"127.0.0.1:{sink.getsockname()[1]}"],
                                    "nested": "fold", "engine": "native"})
                ep = Endpoint(cfg)
                key = next(iter(ep.peers))
                p = ep.prober.peers[key]
                p.valid_until = time.monotonic() + 3600
                if p.state is PeerState.UNKNOWN:
                    p._go(Event.START)
                p._go(Event.REPLY)
                ep.fdb.learn(reads[0][24:30], key, time.monotonic())
                ep.tx = [UdpSocket("127.0.0.1", 0, gro=False, gso=True, bufsize=1 << 22)]
                a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                a.setblocking(False)
                b.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 23)
                tap = Tap.__new__(Tap)
                tap.fd = os.dup(a.fileno())
                ep.tap = tap
                best = float("inf")
                try:
                    for _ in range(3):
                        total = 0
                        for _ in range(rounds):
                            for r in reads:
                                b.send(r)
                            ep.stop_event = _OneWakeup()
                            t0 = time.perf_counter_ns()
                            ep._tx_loop()
                            total += time.perf_counter_ns() - t0
                            while True:
                                try:
                                    sink.recv(65535)
                                except BlockingIOError:
                                    break
                        best = min(best, total / (rounds * len(reads)) / 1000)
                    c = ep.tx_stats.c
                    assert c["frames"] == 3 * rounds * len(reads) and not ep.tx_stats.drops
                    assert not on or c["tx_burst_fast"] == c["frames"]
                    calls = _wakeup_calls(ep, b, sink, reads)
                finally:
                    tap.close()
                    for s_ in (a, b, sink, ep.tx[0]):
                        s_.close()
                per["burst" if on else "per-frame"] = round(best, 2)
                out[f"loop {what} [{'TX burst' if on else 'per-frame Python'}]"] = {"us": round(best, 2),
                                                                                     "calls": calls}
            out[f"loop {what} ratio per-frame / burst"] = round(per["per-frame"] / per["burst"], 2)
    finally:
        txburst.LINGER_NS = old_linger
        if old is None:
            os.environ.pop(txburst.ENV, None)
        else:
            os.environ[txburst.ENV] = old
    return out


def run_ack_wakeups(acks: int = 3000) -> dict:
    """The receiving endpoint's TX thread in a TCP bulk transfer: ONE ACK per TAP wakeup.  The TX loop
    (native engine, TX burst on) runs in its own thread; this thread sends a fold ACK into the TAP (a SEQPACKET
    socketpair) and waits until its datagram arrived at the peer (a loopback UDP socket) before the next one,
    so the TAP is empty between ACKs.  Reported per ACK: the TX thread's CPU time (CLOCK_THREAD_CPUTIME_ID,
    user + system: the syscalls are in both), the native calls (``tx_burst_calls``), the round trip; with
    the linger (``txburst.LINGER_NS``) at its default and at 0 (one C call per wakeup), best of 3."""
    import os
    import socket
    import threading
    import time

    from udpnest import engine, txburst
    from udpnest.config import build_config
    from udpnest.endpoint import Endpoint
    from udpnest.io.tap import Tap
    from udpnest.io.udp import UdpSocket
    from udpnest.peers import Event, PeerState

    if not engine.native_available():
        return {}
    out: dict = {}
    old_env, old_linger = os.environ.get(txburst.ENV), txburst.LINGER_NS
    os.environ[txburst.ENV] = "1"
    try:
        for linger in (old_linger, 0):
            txburst.LINGER_NS = linger
            best = None
            for _ in range(3):
                sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sink.bind(("127.0.0.1", 0))
                cfg = build_config({"id": 7, "local": "127.0.0.1", "remote": [f"127.0.0.1:{sink.getsockname()[1]}"],
                                    "nested": "fold", "engine": "native"})
                ep = Endpoint(cfg)
                key = next(iter(ep.peers))
                p = ep.prober.peers[key]
                p.valid_until = time.monotonic() + 3600
                if p.state is PeerState.UNKNOWN:
                    p._go(Event.START)
                p._go(Event.REPLY)
                read = ack_read()
                ep.fdb.learn(read[24:30], key, time.monotonic())
                ep.tx = [UdpSocket("127.0.0.1", 0, gro=False, gso=True, bufsize=1 << 22)]
                a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                a.setblocking(False)
                tap = Tap.__new__(Tap)
                tap.fd = os.dup(a.fileno())
                ep.tap = tap
                cpu = [0]

                def body(ep=ep, cpu=cpu):
                    t0 = time.thread_time_ns()
                    ep._tx_loop()
                    cpu[0] = time.thread_time_ns() - t0

                t = threading.Thread(target=body)
                try:
                    t.start()
                    sink.settimeout(5.0)
                    w0 = time.perf_counter_ns()
                    for _ in range(acks):
                        b.send(read)
                        sink.recv(65535)
                    wall = time.perf_counter_ns() - w0
                finally:
                    ep._stop_flag[0] = 1
                    ep.stop_event.set()
                    t.join(10.0)
                    tap.close()
                    for s_ in (a, b, sink, ep.tx[0]):
                        s_.close()
                c = ep.tx_stats.c
                assert c["frames"] == c["tx_burst_fast"] == acks and not ep.tx_stats.drops
                r = {"cpu_us": round(cpu[0] / acks / 1000, 2), "calls": round(c["tx_burst_calls"] / acks, 3),
                     "rtt_us": round(wall / acks / 1000, 2)}
                if best is None or r["cpu_us"] < best["cpu_us"]:
                    best = r
            out[f"acks one ACK per wakeup [linger {linger / 1e6:g} ms]"] = best
    finally:
        txburst.LINGER_NS = old_linger
        if old_env is None:
            os.environ.pop(txburst.ENV, None)
        else:
            os.environ[txburst.ENV] = old_env
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--number", type=int, default=20000)
    ap.add_argument("--tx", action="store_true", help="also time TX planning per engine")
    ap.add_argument("--loop", action="store_true", help="also time the TX loop per wakeup, TX burst on/off")
    a = ap.parse_args()
    res = run(a.number)
    if a.tx:
        res.update(run_tx(max(100, a.number // 10)))
    if a.loop:
        res.update(run_loop())
        res.update(run_ack_wakeups())
    if a.json:
        print(json.dumps(res, indent=2))
        return
    print(f"frame: {res.pop('frame_bytes')} bytes (best of 5 repeats, microseconds per call)")
    for k, v in res.items():
        if "ratio" in k:
            print(f"  {k:<60} {v:8.2f}x")
        elif k.startswith("acks "):
            print(f"  {k:<60} {v['cpu_us']:8.2f} us TX thread CPU per ACK  {v['calls']:6.3f} C calls per ACK  "
                  f"{v['rtt_us']:7.2f} us round trip")
        elif k.startswith("loop "):
            print(f"  {k:<60} {v['us']:8.2f} us per frame  {v['calls']:5d} calls per wakeup")
        elif isinstance(v, dict):
            print(f"  {k:<48} {v['us']:8.2f} us  {v['calls']:5d} Python calls")
        else:
            print(f"  {k:<48} {v:8.2f} us")


if __name__ == "__main__":
    main()
