"""The endpoint's TX loop and send step (issue 8, TX CPU per GB): the trimmed per-frame Python must send
exactly what the reference planner plans, to the right peer, with the same counters.

No root: the TAP is stood in for by a SOCK_SEQPACKET socketpair (one read = one frame, like a TAP)."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from micro_fold_frames import KtxRecorder, ack_reads, gso_read
from udpnest import engine
from udpnest.config import build_config
from udpnest.endpoint import Endpoint
from udpnest.io.tap import Tap
from udpnest.io.udp import UdpSocket
from udpnest.txplan import TxPlanner

needs_native = pytest.mark.skipif(not engine.native_available(), reason="native core not built")


def _fake_tap(sock: socket.socket) -> Tap:
    """A Tap object around a duplicate of ``sock``'s fd (it closes that copy itself)."""
    t = Tap.__new__(Tap)
    t.fd = os.dup(sock.fileno())
    return t


def test_tap_reader_returns_none_when_empty_and_the_length_otherwise():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        a.setblocking(False)
        tap = _fake_tap(a)
        read = tap.reader()
        buf = bytearray(2000)
        assert read(buf) is None
        b.send(b"\x01" * 1500)
        b.send(b"\x02" * 60)
        assert read(buf) == 1500 and buf[:1500] == b"\x01" * 1500
        assert read(buf) == 60 and buf[:60] == b"\x02" * 60
        assert read(buf) is None
        tap.close()
        with pytest.raises(OSError):
            read(buf)  # a closed fd is an error, not "nothing pending"
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("eng", ["python", pytest.param("native", marks=needs_native)])
def test_tx_loop_sends_every_frame_of_a_burst_as_planned(eng):
    """ACKs and super-packets written into the stand-in TAP in bursts come out on the UDP socket exactly as
    the reference planner plans them, in order (native: ACKs batched per burst, flushed before a super-packet)."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(3)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    port = rx.getsockname()[1]
    cfg = build_config({"id": 7, "local": "127.0.0.1", "remote": [f"127.0.0.1:{port}"], "nested": "fold",
                        "engine": eng})
    ep = Endpoint(cfg, clock=lambda: 100.0)
    for p in ep.prober.peers.values():
        p.mode = lambda now: "fold"
    ep.tx = [UdpSocket("127.0.0.1", 0, gro=False, gso=True, bufsize=1 << 22)]
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    a.setblocking(False)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
    ep.tap = _fake_tap(a)
    reads = ack_reads(10) + [gso_read(1448 * 20)] + ack_reads(70, start=10) + [gso_read(3000)] + ack_reads(3, start=80)
    py = TxPlanner(vni=7, engine="python", max_datagram=cfg.max_datagram, ports=cfg.nested_ports)
    expected = []
    for r in reads:
        kind, obj = py.plan(r, "fold")
        expected += obj.datagrams() if kind == "gso" else [b"".join(bytes(p) for p in obj)]
    t = threading.Thread(target=ep._tx_loop, daemon=True)
    t.start()
    try:
        for r in reads:
            b.send(r)
        got = [rx.recv(65535) for _ in expected]
    finally:
        ep.stop_event.set()
        t.join(timeout=5)
        rx.close()
        ep.tap.close()
        a.close()
        b.close()
        ep.tx[0].close()
    assert not t.is_alive()
    assert got == expected
    c = ep.tx_stats.c
    assert c["frames"] == len(reads) and c["mode_fold"] == len(reads) and c["flooded"] == len(reads)
    assert c["super_packets"] == 2 and c["datagrams"] == len(expected)
    assert c["time_frame_ns"] > 0 and not ep.tx_stats.drops


@needs_native
def test_kernel_path_headers_per_peer_and_after_a_config_change():
    """_send_kernel caches the per-peer header arguments: flooding to two peers, and a changed TTL (a
    reload replaces the config), must still give the reference engine's frames byte for byte."""
    frames = {}
    for eng in ("python", "native"):
        cfg = build_config({"id": 7, "local": "198.51.100.1", "remote": ["198.51.100.2", "198.51.100.3"],
                            "nested": "fold", "engine": eng, "tx_path": "kernel"})
        ep = Endpoint(cfg, clock=lambda: 100.0)
        for p in ep.prober.peers.values():
            p.mode = lambda now: "fold"
        ep.ktx, ep.tx = KtxRecorder(), [None]
        ep._tx_frame(memoryview(gso_read(1448 * 30)))  # flooded: one frame per peer
        ep.cfg = build_config({"id": 7, "local": "198.51.100.1", "remote": ["198.51.100.2", "198.51.100.3"],
                               "nested": "fold", "engine": eng, "tx_path": "kernel", "ttl": 17})
        ep._tx_frame(memoryview(gso_read(5000)))
        frames[eng] = ep.ktx.frames
        assert ep.tx_stats.c["kernel_writes"] == 4 and ep.tx_stats.c["flooded"] == 2
    assert frames["python"] == frames["native"]
    f = frames["native"]
    ip = 24 + 14  # vnet header, Ethernet
    assert f[0][ip + 16 : ip + 20] == bytes([198, 51, 100, 2]) and f[1][ip + 16 : ip + 20] == bytes([198, 51, 100, 3])
    assert f[0][ip + 8] != f[2][ip + 8] and f[2][ip + 8] == 18  # the new TTL (+1: the kernel TX TAP hop)


class _Sock:
    gso_disabled = False

    def __init__(self):
        self.sent = []

    def send_segments(self, buf, row_len, addr):
        self.sent.append(addr)
        return 1


def test_unicast_fast_path_sends_to_the_learned_peer_only():
    cfg = build_config({"id": 7, "local": "198.51.100.1", "remote": ["198.51.100.2", "198.51.100.3"],
                        "nested": "off", "engine": "python"})
    ep = Endpoint(cfg, clock=lambda: 100.0)
    ep.tx = [_Sock()]
    r = gso_read(1448 * 4)
    key = list(ep.peers)[1]
    ep.fdb.learn(r[24:30], key, 100.0)
    ep._tx_frame(memoryview(r))
    assert ep.tx[0].sent == [ep.peers[key].sockaddr]
    c = ep.tx_stats.c
    assert c["flooded"] == 0 and c["mode_plain"] == 1 and c["frames"] == 1 and c["super_packets"] == 1
    ep._tx_frame(memoryview(gso_read(1448 * 4)[:24] + b"\xff" * 6 + r[30:]))  # broadcast: both peers
    assert len(ep.tx[0].sent) == 3 and c["flooded"] == 1 and c["mode_plain"] == 3


def test_rx_child_reports_a_repeated_source_mac_once_per_refresh_and_retries_a_lost_report():
    """_tap_write in the RX process: every ACK of a flow carries the same source MAC; it is reported once,
    again after the refresh interval, and on the next frame when the report was lost (full channel)."""
    from udpnest.rxpipe import Kind, TapWrite
    from udpnest.wire.vnet import ZERO_VNET_HDR

    class FakeTap:
        def writev(self, parts):
            return sum(len(p) for p in parts)

    class FakeChan:
        def __init__(self):
            self.sent, self.ok = [], True

        def send(self, msg):
            self.sent.append(msg)
            return self.ok

    now = [100.0]
    cfg = build_config({"id": 7, "local": "198.51.100.1", "remote": ["198.51.100.2"], "nested": "off",
                        "engine": "python"})
    ep = Endpoint(cfg, clock=lambda: now[0])
    ep.rx_child, ep.tap, ep._chan = True, FakeTap(), FakeChan()
    key = list(ep.peers)[0]
    frame = bytes(6) + bytes([2, 0, 0, 0, 0, 1]) + b"\x08\x00" + bytes(40)
    other = bytes(6) + bytes([2, 0, 0, 0, 0, 2]) + b"\x08\x00" + bytes(40)

    def write(f, k=key):
        ep._tap_write(TapWrite(ZERO_VNET_HDR, (memoryview(f),), Kind.PLAIN, 1), k)

    for _ in range(50):
        write(frame)
    assert ep._chan.sent == [("learn", frame[6:12], key)]
    write(other)
    write(frame)  # known and fresh: no report
    assert len(ep._chan.sent) == 2
    now[0] += ep._learned.refresh + 0.01
    write(frame)
    write(frame)
    assert ep._chan.sent[2:] == [("learn", frame[6:12], key)]
    ep._chan.ok = False
    write(other, "198.51.100.9:6081")  # moved: news, but the report is lost
    ep._chan.ok = True
    write(other, "198.51.100.9:6081")  # so it is sent again
    assert ep._chan.sent[3:] == [("learn", other[6:12], "198.51.100.9:6081")] * 2
    assert ep.rx_stats.c["tap_writes"] == 56 and ep.rx_stats.c["ipc_dropped"] == 1
