"""Micro-benchmark: the RX pipeline's per-read work through both engines (rxdriver.RxDriver).

Not a test: prints timings (best of 5 repeats, microseconds per read).  Run on an idle machine.

    python3 bench/micro_rx.py            # both engines (native when built)
    python3 bench/micro_rx.py --json

Cases, each in fold and plain mode (one nested IPv4 VXLAN level with a UDP checksum, TCP inner, path MTU
1500): coalescing a 45-datagram UDP_GRO read into one held run (+ finish: the TAP write's headers), one
ACK datagram, two reads of one super-packet merged (read, read, finish), and a 45-datagram read that does
not coalesce (a sequence gap: 45 one-datagram writes), and one datagram holding a whole super-packet.

The "ACK loop" cases run the endpoint's real RX loop (``Endpoint._rx_loop``) over a loopback UDP socket with
20000 queued ACK datagrams and /dev/null as the TAP: microseconds per datagram from recvmsg to TAP write,
native engine with the RX fast path (udpnest.rxbatch: one C call per batch) and without it
(``UDPNEST_RX_BATCH=0``: one Python round trip per datagram), and the Python engine.  The "paced ACK loop" cases
send the ACKs one at a time, ~100 us apart (about one per wakeup, as a bulk flow's returning ACKs come), while
the loop runs: the RX thread's CPU microseconds per datagram and C calls per datagram, fast path with the linger
window (rxbatch.LINGER_NS: one call covers many wakeups) and without it (0: one call per wakeup).

The "data loop" cases run the same real RX loop over a queued bulk flow: consecutive ~62 KB super-packets of one
TCP flow (contiguous sequence numbers and IPv4 IDs), each arriving as two UDP_GRO reads (as a sender's 64 KB
super-packet does: more than one GRO aggregate), /dev/null as the TAP: microseconds per read from recvmsg to TAP
write, fast path on (the data path of udpnest.rxbatch: coalesce, hold, merge and write in C) and off.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from micro_fold import super_packet  # noqa: E402

from udpnest.engine import native_available  # noqa: E402
from udpnest.fold import fold, gro_hint_for  # noqa: E402
from udpnest.gso import aligned_mss, segment_tcp, tcp_layout  # noqa: E402
from udpnest.rxdriver import RxDriver  # noqa: E402
from udpnest.wire.geneve import build_geneve  # noqa: E402

PEER = "198.51.100.2"
VNI = 7


def reads(mode: str, payload_len: int) -> tuple[bytes, int]:
    frame = super_packet(payload_len=payload_len)
    if mode == "fold":
        f = fold(frame, vni=VNI, gso=True)
        prefix, inner, lay = f.header, f.inner, tcp_layout(f.inner)
    else:
        prefix, inner = build_geneve(VNI, 0x6558), frame
        lay = tcp_layout(frame, (14 + 20,))
        assert gro_hint_for(frame) is not None
    mss = aligned_mss(1472, len(prefix) + lay.hdr_len)
    segs = segment_tcp(prefix, inner, lay, mss)
    return bytes(segs.buffer), segs.row_len


def whole(mode: str) -> bytes:
    """One datagram holding a whole ~62 KB super-packet (a veth without UDP GSO, the lab's offload path)."""
    frame = super_packet(payload_len=45 * 1380)
    return fold(frame, vni=VNI, gso=True).payload if mode == "fold" else build_geneve(VNI, 0x6558) + frame


def _cases(d: RxDriver, row: int, buf45, ack, first, second, gap):
    b45, back, bgap = bytearray(buf45), bytearray(ack), bytearray(gap)
    b1, b2 = bytearray(first), bytearray(second)

    def coalesce():
        return d.read(b45, len(b45), row, PEER).writes + d.flush()

    def one_ack():
        return d.read(back, len(back), 0, PEER)

    def merged():
        d.read(b1, len(b1), row, PEER)
        return d.read(b2, len(b2), row, PEER).writes + d.flush()

    def no_coalesce():
        return d.read(bgap, len(bgap), row, PEER)

    return coalesce, one_ack, merged, no_coalesce


def _whole_case(d: RxDriver, dg: bytes):
    b = bytearray(dg)

    def one_whole():
        return d.read(b, len(b), 0, PEER)

    return one_whole


def run(engines: list[str], number: int = 2000) -> dict:
    out: dict = {}
    for mode in ("fold", "plain"):
        buf45, row = reads(mode, 45 * 1380)  # ~45 datagrams
        ack, _ = reads(mode, 0)
        gap = bytearray(buf45)
        gap[row * 20 + 60] ^= 1  # a bit in a header of row 20: not coalesced
        half = (len(buf45) // row // 2) * row
        first, second = buf45[:half], buf45[half:]
        for engine in engines:
            d = RxDriver(peers={PEER}, vni=VNI, engine=engine)
            coalesce, one_ack, merged, no_coalesce = _cases(d, row, buf45, ack, first, second, gap)
            one_whole = _whole_case(d, whole(mode))
            assert len(one_whole().writes) == 1
            assert coalesce()[0][0].segments == len(buf45) // row + (1 if len(buf45) % row else 0)
            assert len(one_ack().writes) == 1
            assert len(merged()) == 1 and d.counts["merged_reads"] >= 1
            assert len(no_coalesce().writes) > 40
            for name, fn in (("coalesce 45-datagram read", coalesce), ("one ACK datagram", one_ack),
                             ("merge two reads", merged), ("45 datagrams, not coalesced", no_coalesce),
                             ("one whole 62 KB super-packet datagram", one_whole)):
                n = number if "ACK" not in name else number * 10
                best = min(timeit.repeat(fn, number=n, repeat=5)) / n
                out[f"{mode} {engine}: {name}"] = round(best * 1e6, 2)
            out[f"{mode} {engine}: native_deferred"] = d.counts["native_deferred"]
    return out


def ack_loop(engine: str, fast: bool, mode: str, count: int = 20000, per_call: int | None = None) -> float:
    """Microseconds per ACK datagram through Endpoint._rx_loop (recvmsg .. TAP write), ``count`` queued first;
    ``per_call``: the fast path's batch limit (1: as when ACKs arrive one per wakeup, the lab's common case)."""
    from udpnest import rxbatch
    from udpnest.config import build_config
    from udpnest.endpoint import Endpoint
    from udpnest.io.tap import Tap
    from udpnest.io.udp import UdpSocket

    os.environ["UDPNEST_RX_BATCH"] = "1" if fast else "0"
    batch_max = rxbatch.BATCH_MAX
    rxbatch.BATCH_MAX = per_call or batch_max
    ack, _ = reads(mode, 0)
    rx = UdpSocket("127.0.0.1", 0, gro=True, blocking=True, bufsize=1 << 26)
    port = rx.local_address[1]
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.bind(("127.0.0.2", 0))
    cfg = build_config({"id": VNI, "local": "127.0.0.1", "dstport": port, "remote": [f"127.0.0.2:{port}"],
                        "nested": "fold" if mode == "fold" else "off", "engine": engine})
    ep = Endpoint(cfg, clock=time.monotonic)
    ep.rx = rx
    tap = Tap.__new__(Tap)
    tap.fd = os.open("/dev/null", os.O_WRONLY)
    ep.tap = tap
    try:
        for _ in range(count):
            tx.sendto(ack, ("127.0.0.1", port))
        c = ep.rx_stats.c
        t = threading.Thread(target=ep._rx_loop, daemon=True)
        t0 = time.perf_counter()
        t.start()
        while c["reads"] < count and t.is_alive():
            time.sleep(0.0005)
        dt = time.perf_counter() - t0
        ep.stop_event.set()
        rx.sock.sendto(b"", ("127.0.0.1", port))
        t.join(5)
        assert c["tap_writes"] == count, dict(c)
        return round(dt / count * 1e6, 3)
    finally:
        os.environ.pop("UDPNEST_RX_BATCH", None)
        rxbatch.BATCH_MAX = batch_max
        tap.close()
        rx.close()
        tx.close()


def ack_loop_paced(mode: str, linger_ns: int, count: int = 4000, gap_us: int = 100) -> tuple[float, float]:
    """(RX thread CPU microseconds per ACK, fast-path calls per ACK) through Endpoint._rx_loop with the native
    fast path, the ACKs sent one at a time ``gap_us`` apart while the loop runs, linger window ``linger_ns``."""
    from udpnest.config import build_config
    from udpnest.endpoint import Endpoint
    from udpnest.io.tap import Tap
    from udpnest.io.udp import UdpSocket

    os.environ["UDPNEST_RX_BATCH"] = "1"
    os.environ["UDPNEST_RX_LINGER_NS"] = str(linger_ns)
    ack, _ = reads(mode, 0)
    rx = UdpSocket("127.0.0.1", 0, gro=True, blocking=True, bufsize=1 << 26)
    port = rx.local_address[1]
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.bind(("127.0.0.2", 0))
    cfg = build_config({"id": VNI, "local": "127.0.0.1", "dstport": port, "remote": [f"127.0.0.2:{port}"],
                        "nested": "fold" if mode == "fold" else "off", "engine": "native"})
    ep = Endpoint(cfg, clock=time.monotonic)
    ep.rx = rx
    tap = Tap.__new__(Tap)
    tap.fd = os.open("/dev/null", os.O_WRONLY)
    ep.tap = tap
    cpu = []

    def loop():
        t0 = time.thread_time_ns()
        try:
            ep._rx_loop()
        finally:
            cpu.append(time.thread_time_ns() - t0)

    try:
        c = ep.rx_stats.c
        t = threading.Thread(target=loop, daemon=True)
        t.start()
        gap = gap_us / 1e6
        nxt = time.perf_counter()
        for _ in range(count):
            tx.sendto(ack, ("127.0.0.1", port))
            nxt += gap
            while time.perf_counter() < nxt:  # (a sleep this short oversleeps: spin, GIL released by sleep(0))
                time.sleep(0)
        deadline = time.monotonic() + 10
        while c["reads"] < count and t.is_alive() and time.monotonic() < deadline:
            time.sleep(0.001)
        ep._stop_flag[0] = 1
        rx.sock.sendto(b"", ("127.0.0.1", port))
        t.join(5)
        assert c["tap_writes"] == count, dict(c)
        return round(cpu[0] / 1e3 / count, 3), round(c["rx_batch_calls"] / count, 4)
    finally:
        os.environ.pop("UDPNEST_RX_BATCH", None)
        os.environ.pop("UDPNEST_RX_LINGER_NS", None)
        tap.close()
        rx.close()
        tx.close()


def _flow_frame(seq: int, ident: int, payload_len: int) -> bytes:
    """micro_fold.super_packet's shape with a given TCP sequence number and IPv4 IDs (a flow's next packet)."""
    import struct

    from micro_fold import MAC_A, MAC_B

    from udpnest.wire.eth import ETH_P_IPV4, build_eth
    from udpnest.wire.ipv4 import IP_DF, PROTO_TCP, PROTO_UDP, build_ipv4
    from udpnest.wire.tcp import ACK, build_tcp
    from udpnest.wire.udp import build_udp
    from udpnest.wire.vxlan import build_vxlan

    tcp = build_tcp(40000, 5201, seq, 1, ACK, options=b"\x01\x01\x08\x0a" + struct.pack("!II", 1, 2))
    inner_ip = build_ipv4(bytes([203, 0, 113, 1]), bytes([203, 0, 113, 2]), PROTO_TCP, len(tcp) + payload_len,
                          ident=ident & 0xFFFF)
    inner = build_eth(MAC_B, MAC_A, ETH_P_IPV4) + inner_ip + tcp + bytes(payload_len)
    vx = build_vxlan(42)
    udp = build_udp(49152, 4789, len(vx) + len(inner), 0x1234)
    ip = build_ipv4(bytes([198, 51, 100, 1]), bytes([198, 51, 100, 2]), PROTO_UDP, len(udp) + len(vx) + len(inner),
                    frag=IP_DF, ident=ident & 0xFFFF)
    return build_eth(MAC_A, MAC_B, ETH_P_IPV4) + ip + udp + vx + inner


def flow_reads(mode: str, supers: int, payload_len: int = 45 * 1380) -> list[tuple[bytes, int]]:
    """(read, gso size): ``supers`` consecutive super-packets of one flow, each as two GRO reads."""
    out = []
    seq = ident = 1
    for _ in range(supers):
        frame = _flow_frame(seq, ident, payload_len)
        if mode == "fold":
            f = fold(frame, vni=VNI, gso=True)
            prefix, inner, lay = f.header, f.inner, tcp_layout(f.inner)
        else:
            prefix, inner = build_geneve(VNI, 0x6558), frame
            lay = tcp_layout(frame, (14 + 20,))
        mss = aligned_mss(1472, len(prefix) + lay.hdr_len)
        segs = segment_tcp(prefix, inner, lay, mss)
        buf, row = bytes(segs.buffer), segs.row_len
        rows = -(-len(buf) // row)
        half = (rows // 2) * row
        out += [(buf[:half], row), (buf[half:], row)]
        seq += payload_len
        ident += rows
    return out


def data_loop(engine: str, fast: bool, mode: str, supers: int = 300) -> tuple[float, dict]:
    """Microseconds per GRO read of a bulk flow through Endpoint._rx_loop (recvmsg .. TAP write), all queued
    first; and the loop's counters that say what happened (super-packets, merged reads, reads handled in C)."""
    from udpnest.config import build_config
    from udpnest.endpoint import Endpoint
    from udpnest.io.tap import Tap
    from udpnest.io.udp import UdpSocket, segment_cmsg

    os.environ["UDPNEST_RX_BATCH"] = "1" if fast else "0"
    reads_ = flow_reads(mode, supers)
    rx = UdpSocket("127.0.0.1", 0, gro=True, blocking=True, bufsize=1 << 26)
    port = rx.local_address[1]
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.bind(("127.0.0.2", 0))
    tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 24)
    cfg = build_config({"id": VNI, "local": "127.0.0.1", "dstport": port, "remote": [f"127.0.0.2:{port}"],
                        "nested": "fold" if mode == "fold" else "off", "engine": engine})
    ep = Endpoint(cfg, clock=time.monotonic)
    ep.rx = rx
    tap = Tap.__new__(Tap)
    tap.fd = os.open("/dev/null", os.O_WRONLY)
    ep.tap = tap
    try:
        for buf, row in reads_:
            tx.sendmsg([buf], [segment_cmsg(row)], 0, ("127.0.0.1", port))
        c = ep.rx_stats.c
        t = threading.Thread(target=ep._rx_loop, daemon=True)
        t0 = time.perf_counter()
        t.start()
        while c["reads"] < len(reads_) and t.is_alive():
            time.sleep(0.0005)
        while c["tap_writes"] < supers and t.is_alive() and time.perf_counter() - t0 < 30:  # the last one's flush
            time.sleep(0.0005)
        dt = time.perf_counter() - t0
        ep.stop_event.set()
        rx.sock.sendto(b"", ("127.0.0.1", port))
        t.join(5)
        info = {k: c[k] for k in ("reads", "tap_writes", "super_packets", "merged_reads", "rx_batch_fast")}
        assert c["reads"] == len(reads_) and c["datagrams"] > 40 * supers, dict(c)
        return round(dt / len(reads_) * 1e6, 2), info
    finally:
        os.environ.pop("UDPNEST_RX_BATCH", None)
        tap.close()
        rx.close()
        tx.close()


def data_loops(repeat: int = 3) -> dict:
    out: dict = {}
    for mode in ("fold", "plain"):
        for fast in (True, False):
            runs = [data_loop("native", fast, mode) for _ in range(repeat)]
            best = min(r[0] for r in runs)
            name = f"{mode} native{' +fast path' if fast else ''}: data loop, per GRO read"
            out[name] = best
            out[name + " (counters)"] = runs[0][1]
        on = out[f"{mode} native +fast path: data loop, per GRO read"]
        off = out[f"{mode} native: data loop, per GRO read"]
        out[f"{mode}: data loop, fast path off / on"] = round(off / on, 2)
    return out


def ack_loops(engines: list[str], repeat: int = 3) -> dict:
    out: dict = {}
    for mode in ("fold", "plain"):
        variants = [(e, e == "native") for e in engines] + ([("native", False)] if "native" in engines else [])
        for engine, fast in variants:
            best = min(ack_loop(engine, fast, mode) for _ in range(repeat))
            out[f"{mode} {engine}{' +fast path' if fast else ''}: ACK loop, per datagram"] = best
            if fast:
                best = min(ack_loop(engine, fast, mode, per_call=1) for _ in range(repeat))
                out[f"{mode} {engine} +fast path, 1 datagram per call: ACK loop, per datagram"] = best
        if "native" in engines:
            from udpnest.rxbatch import LINGER_NS

            for linger in (LINGER_NS, 0):
                runs = [ack_loop_paced(mode, linger) for _ in range(repeat)]
                name = f"{mode} native +fast path, paced, linger {linger / 1e6:g} ms: ACK loop"
                out[f"{name}, RX CPU us per datagram"] = min(r[0] for r in runs)
                out[f"{name}, calls per datagram"] = min(r[1] for r in runs)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--number", type=int, default=2000)
    ap.add_argument("--only-ack-loop", action="store_true", help="only the RX loop ACK cases")
    ap.add_argument("--only-data-loop", action="store_true", help="only the RX loop bulk-flow cases")
    a = ap.parse_args()
    engines = ["python"] + (["native"] if native_available() else [])
    if a.only_data_loop:
        res = data_loops() if native_available() else {}
    else:
        res = {} if a.only_ack_loop else run(engines, a.number)
        res.update(ack_loops(engines))
        if native_available() and not a.only_ack_loop:
            res.update(data_loops())
    if a.json:
        print(json.dumps(res, indent=2))
        return
    for k, v in res.items():
        print(f"{k:60s} {v!s:>10}")


if __name__ == "__main__":
    main()
