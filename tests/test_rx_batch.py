"""The RX fast path (udpnest.rxbatch, csrc/rxbatch.c): small one-datagram reads from peers go to the TAP in C.

Differential: the same datagrams go over a real UDP socket (127.0.0.x on loopback, no root) into the endpoint's
RX loop, with the fast path on and off (``UDPNEST_RX_BATCH=0``); the TAP is stood in for by a SOCK_SEQPACKET
socketpair (one write = one frame).  The frames must be byte-identical and in the same order, the counters,
drops, histogram, control counters and learned MACs the same.  Plus a fuzz of the C entry itself: every
datagram is written, dropped under a reason, or handed back, and nothing crashes."""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import socket
import struct
import threading
import time
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_engine_diff_rx import NOT_PEER, OTHER, PEER, VNI, corrupt, datagrams, reads_for, super_frame
from udpnest import engine
from udpnest.config import build_config
from udpnest.endpoint import Endpoint
from udpnest.io.tap import Tap
from udpnest.io.udp import UdpSocket, segment_cmsg
from udpnest.rxguard import Channel, LearnedMacs
from udpnest.wire.geneve import build_geneve
from udpnest.wire.options import Echo, build_echo

pytestmark = pytest.mark.skipif(not engine.native_available(), reason="native core not built (udpnest._native)")

LOCAL = "127.0.0.1"
# the loopback addresses standing for the test suite's peer names (any 127/8 address is local on Linux)
ADDR = {PEER: "127.0.0.2", OTHER: "127.0.0.4", NOT_PEER: "127.0.0.3", "self": LOCAL}
VOLATILE = ("time_", "rx_batch_")  # timings, and the fast path's own counters


def _fake_tap(sock: socket.socket) -> Tap:
    t = Tap.__new__(Tap)
    t.fd = os.dup(sock.fileno())
    return t


class Sent:
    """Sender sockets bound to the peers' loopback addresses (one per name, reused across a test's runs)."""

    def __init__(self) -> None:
        self.socks = {}
        for name, ip in ADDR.items():
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((ip, 0))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
            self.socks[name] = s

    def port(self, name: str) -> int:
        return self.socks[name].getsockname()[1]

    def send(self, name: str, buf: bytes, n: int, gso: int, to) -> bool:
        data = buf[:n]
        s = self.socks[name]
        try:
            if gso and n > gso:
                s.sendmsg([data], [segment_cmsg(gso)], 0, to)
            else:
                s.sendto(data, to)
        except OSError:  # a GSO size the kernel refuses (too many segments): not a read at all
            return False
        return True

    def close(self) -> None:
        for s in self.socks.values():
            s.close()


def run(reads, sent: Sent, *, fast: bool, eng: str = "native", child: bool = False, monkeypatch=None,
        bad_tap: bool = False, live: bool = False):
    """The RX loop over ``reads`` ((buf, n, gso, source name)); returns (frames, counters, drops, hist, control
    counters, FDB / learned entries, socket counters, parent messages).  ``live``: the loop runs before the
    first datagram is sent, and a ``(None, seconds, 0, "pause")`` entry sleeps between sends (bursts)."""
    monkeypatch.setenv("UDPNEST_RX_BATCH", "1" if fast else "0")
    rx = UdpSocket(LOCAL, 0, gro=True, blocking=True, bufsize=1 << 24)
    port = rx.local_address[1]
    cfg = build_config({"id": VNI, "local": LOCAL, "dstport": port, "nested": "fold", "engine": eng,
                        "remote": [f"{ADDR[PEER]}:{sent.port(PEER)}", f"{ADDR[OTHER]}:{sent.port(OTHER)}"]})
    ep = Endpoint(cfg, clock=lambda: 100.0)
    ep.rx = rx
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (a, b):
        try:
            s.setsockopt(socket.SOL_SOCKET, 32, 1 << 23)  # SO_SNDBUFFORCE (root)
            s.setsockopt(socket.SOL_SOCKET, 33, 1 << 23)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
    ep.tap = _fake_tap(a)
    if bad_tap:  # every TAP write fails (EBADF): the tap_write drop
        os.close(ep.tap.fd)
        ep.tap.fd = os.open("/dev/null", os.O_RDONLY)
    parent = None
    if child:
        parent, ch = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        ep.rx_child, ep.rx_chan = True, ch
        ep._chan = Channel(ch, 1 << 22)
        ep._learned = LearnedMacs(cfg.learned_max, cfg.fdb_ageing / 4)
    frames: list[bytes] = []
    stop_reader = threading.Event()

    def reader():
        b.settimeout(0.05)
        while True:
            try:
                frames.append(b.recv(1 << 17))
            except TimeoutError:
                if stop_reader.is_set():
                    return

    rt = threading.Thread(target=reader, daemon=True)
    rt.start()
    expected = 0
    to = (LOCAL, port)
    t = threading.Thread(target=ep._rx_loop, daemon=True)
    if live:
        t.start()
    for buf, n, g, name in reads:
        if name == "pause":
            time.sleep(n)
        elif name == "wake":  # from our own address and port: the RX child's wake-up (status, reload)
            rx.sock.sendto(b"", to)
            expected += not child
        elif sent.send(name, buf, n, g, to):
            expected += 1
    if not live:
        t.start()
    c = ep.rx_stats.c
    deadline = time.monotonic() + 20
    while c["reads"] < expected and time.monotonic() < deadline and t.is_alive():
        time.sleep(0.005)
    time.sleep(0.05)
    ep.stop_event.set()
    ep._stop_flag[0] = 1
    rx.sock.sendto(b"", to)  # the stop wake-up, as close() does
    t.join(10)
    assert not t.is_alive(), "RX loop did not stop"
    time.sleep(0.1)
    stop_reader.set()
    rt.join(5)
    msgs = []
    if parent is not None:
        parent.setblocking(False)
        while True:
            try:
                msgs.append(pickle.loads(parent.recv(1 << 20)))
            except BlockingIOError:
                break
        parent.close()
        ep.rx_chan.close()
    a.close()
    b.close()
    ep.tap.close()
    rx.close()
    counts = Counter({k: v for k, v in c.items() if not k.startswith(VOLATILE)})
    learned = None if child else list(ep.fdb._t.items())
    return dict(frames=frames, counts=counts, drops=Counter(ep.rx_stats.drops), hist=list(ep.rx_stats.hist),
                control=dict(ep.ctl_stats.c), ctl_drops=dict(ep.ctl_stats.drops), learned=learned,
                sock=(rx.truncated, rx.socket_drops), msgs=[m for m in msgs if m[0] != "stats"],
                nstats=sum(1 for m in msgs if m[0] == "stats"),
                fast=c["rx_batch_fast"], calls=c["rx_batch_calls"], expected=expected, reads=c["reads"])


def compare(a: dict, b: dict) -> None:
    assert a["expected"] == b["expected"]
    assert len(a["frames"]) == len(b["frames"]), (len(a["frames"]), len(b["frames"]))
    for i, (x, y) in enumerate(zip(a["frames"], b["frames"], strict=True)):
        assert x == y, f"frame {i} differs"
    for k in ("counts", "drops", "hist", "control", "ctl_drops", "learned", "sock", "msgs"):
        assert a[k] == b[k], k


def acks(rng: random.Random, flows: int = 3, each: int = 8, srcs=(PEER, PEER, OTHER)) -> list[tuple]:
    """Runs of ACKs of a few flows (plain / hint / fold; the same header again and again, as a flow's ACKs:
    the FOLD ones go through a template after the first), from ``srcs``, some with their last bytes
    (the TCP ACK field and checksum region) changed.  (tests/packets.py gives every frame the same MACs: ACKs
    from both peers are a MAC moving between them.)"""
    out = []
    for _ in range(flows):
        mode = rng.choice(("plain", "hint", "fold"))
        dg = datagrams(rng, super_frame(rng, rng.choice((0, 1, 1, 2)), 0), mode, 1000)[0][0]
        src = rng.choice(srcs)
        for _ in range(each):
            b = bytearray(dg)
            if rng.random() < 0.5:
                b[-rng.randrange(1, 8)] ^= rng.randrange(1, 256)
            out.append((bytes(b), len(b), 0, src))
    rng.shuffle(out)  # interleaved flows
    return out


def mixed(rng: random.Random, corrupt_p: float) -> list[tuple[bytes, int, int, str]]:
    """ACK runs interleaved with everything the fast path must hand back: GRO reads, long singles, echo
    packets, junk, unknown sources, a zero-length datagram from our own address; some ACKs corrupted."""
    out = []
    for _ in range(rng.randrange(2, 5)):
        run_ = acks(rng, rng.randrange(1, 4), rng.randrange(2, 10))
        for i, (bb, n, g, k) in enumerate(run_):
            if rng.random() < corrupt_p:
                bb, n, g = corrupt(rng, bb, 0)
                run_[i] = (bb, n, 0, k)
        out += run_
        extra = rng.randrange(6)
        if extra == 0:
            out += reads_for(rng, corrupt_p=corrupt_p)
        elif extra == 1:
            dg = build_geneve(VNI, 0x6558, build_echo(Echo(rng.randrange(1 << 32), 5, 3, 252, 1),
                                                      reply=rng.random() < 0.5), oam=True)
            out.append((dg, len(dg), 0, PEER))
        elif extra == 2:
            junk = rng.randbytes(rng.randrange(1, 120))
            out.append((junk, len(junk), 0, rng.choice((PEER, NOT_PEER))))
        elif extra == 3:
            out.append((b"", 0, 0, "self"))
        elif extra == 4:
            ack = acks(rng, 1, 1)[0]
            out.append((*ack[:3], NOT_PEER))
    return out


@pytest.fixture
def sent():
    s = Sent()
    yield s
    s.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), corrupt_p=st.sampled_from((0.0, 0.2)))
def test_fast_path_is_invisible(seed, corrupt_p, sent, monkeypatch):
    """Fast path on and off: the same frames, counters, drops, learned MACs."""
    reads = mixed(random.Random(seed), corrupt_p)
    on = run(reads, sent, fast=True, monkeypatch=monkeypatch)
    off = run(reads, sent, fast=False, monkeypatch=monkeypatch)
    assert on["reads"] == on["expected"] - 0  # every datagram read once ("self" is a non-peer read here)
    compare(on, off)
    assert off["fast"] == 0 and off["calls"] == 0


def test_fast_path_takes_the_acks(sent, monkeypatch):
    """The wiring: with the fast path on, the ACK runs are handled in C (fails without it), in few calls;
    everything else still goes through the Python path (the same counters as without)."""
    rng = random.Random(3)
    reads = mixed(rng, 0.0) + acks(rng, 3, 30)
    n_acks = sum(1 for b, n, g, k in reads if k in (PEER, OTHER) and 0 < n < 700 and not g)
    on = run(reads, sent, fast=True, monkeypatch=monkeypatch)
    off = run(reads, sent, fast=False, monkeypatch=monkeypatch)
    compare(on, off)
    assert on["fast"] >= n_acks // 2, (on["fast"], n_acks)
    assert on["counts"]["kind_fold"] + on["counts"]["kind_plain"] + on["counts"]["kind_hint"] > 0
    assert on["calls"] < on["reads"]


def test_fast_path_matches_the_python_engine(sent, monkeypatch):
    """Frames and drops as the reference (Python engine, no fast path) gives them."""
    reads = mixed(random.Random(9), 0.2)
    on = run(reads, sent, fast=True, monkeypatch=monkeypatch)
    py = run(reads, sent, fast=True, eng="python", monkeypatch=monkeypatch)
    assert py["fast"] == 0
    assert on["frames"] == py["frames"]
    assert on["drops"] == py["drops"]
    assert on["learned"] == py["learned"]


def test_learning_in_the_rx_child(sent, monkeypatch):
    """The RX child reports learned MACs to the parent: the same messages with the fast path on and off (one
    report per MAC and peer, then a move to the other peer), the zero-length wake-up from our own address
    still wakes it (counters pushed), and a zero-length datagram from elsewhere is a no_peer drop."""
    rng = random.Random(4)
    reads = acks(rng, 4, 10, (PEER,)) + [(b"", 0, 0, "wake")] + acks(rng, 2, 10, (OTHER,)) + [(b"", 0, 0, "self")]
    on = run(reads, sent, fast=True, child=True, monkeypatch=monkeypatch)
    off = run(reads, sent, fast=False, child=True, monkeypatch=monkeypatch)
    compare(on, off)
    learn = [m for m in on["msgs"] if m[0] == "learn"]
    assert [key for _, _, key in learn] == [ADDR[PEER], ADDR[OTHER]], learn
    assert on["nstats"] == off["nstats"] == 2  # the wake-up mid-stream and the stop each pushed the counters
    # (the first FOLD ACK of each header goes to the Python reference, which makes it a template)
    assert on["fast"] == 60 - on["counts"]["native_deferred"] and off["fast"] == 0
    assert on["counts"]["datagrams"] == off["counts"]["datagrams"] == 60
    assert on["drops"] == off["drops"] == Counter({"no_peer": 1})


def test_learning_a_mac_that_moves_within_a_batch(sent, monkeypatch):
    """One MAC behind both peers in turn within one batch: the fast path reports it once per call, the Python
    path per change; both end with the MAC behind the peer of the last frame (child: the last report;
    in-process: the FDB)."""
    rng = random.Random(8)
    reads = acks(rng, 3, 12, (PEER, OTHER))
    last = ADDR[reads[-1][3]]
    for child in (True, False):
        on = run(reads, sent, fast=True, child=child, monkeypatch=monkeypatch)
        off = run(reads, sent, fast=False, child=child, monkeypatch=monkeypatch)
        assert on["frames"] == off["frames"] and on["counts"] == off["counts"]
        if child:
            assert on["msgs"][-1][2] == off["msgs"][-1][2] == last
            assert len(on["msgs"]) <= len(off["msgs"])
        else:
            assert on["learned"] == off["learned"] and on["learned"][-1][1][0] == last


def test_stop_flag_hands_back(sent, monkeypatch):
    """With the RX process's stop flag set, nothing more is handled in C (the loop returns on the next datagram)."""
    from udpnest import _native
    from udpnest.wire.vnet import ZERO_VNET_HDR

    rx = UdpSocket(LOCAL, 0, gro=True, blocking=True)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        ack = acks(random.Random(1), 1, 1)[0][0]
        for _ in range(3):
            sent.socks[PEER].sendto(ack, rx.local_address)
        buf = bytearray(65600)
        peers = socket.inet_aton(ADDR[PEER])
        stop = bytearray(b"\x01")
        item, cnt, drops, learned, err = _native.rx_batch(rx.fileno(), a.fileno(), buf, peers, 4, VNI, 0xFF4E, [],
                                                          736, 64, ZERO_VNET_HDR, stop)
        assert item is not None and item[0] == len(ack) and bytes(buf[: len(ack)]) == ack
        assert cnt[0] == 0 and cnt[-1] == 0 and err == 0
        stop[0] = 0
        item, cnt, drops, learned, err = _native.rx_batch(rx.fileno(), a.fileno(), buf, peers, 4, VNI, 0xFF4E, [],
                                                          736, 64, ZERO_VNET_HDR, stop)
        assert item is None and cnt[-1] == 2 and cnt[0] == 2 and err == 0
    finally:
        rx.close()
        a.close()
        b.close()


def test_fuzz_rx_batch(sent):
    """Random and mutated datagrams straight into the C entry: no crash; every datagram received is written,
    dropped under a reason, or handed back (then counted here as the Python path would take it)."""
    from udpnest import _native, rxnative
    from udpnest.wire.vnet import ZERO_VNET_HDR

    rng = random.Random(12)
    rx = UdpSocket(LOCAL, 0, gro=True, blocking=True, bufsize=1 << 24)
    rx.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 5, 0))  # a bug fails, not hangs
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    a.setblocking(False)  # a full stand-in TAP is a TAP write error, counted, never a hang
    b.setblocking(False)
    try:
        corpus = [x[0] for x in acks(rng, 6, 1)]
        corpus += [r[0][: r[1]] for r in reads_for(rng, corrupt_p=0.0) if not r[2]]
        folds: list[bytes] = []
        recv = rxnative.Receiver(vni=VNI)
        for dg in corpus:  # FOLD templates as the reference builds them
            recv.receive(bytearray(dg), len(dg), 0)
        folds = recv.folds
        peers = socket.inet_aton(ADDR[PEER]) + socket.inet_aton(ADDR[OTHER])
        buf = bytearray(65600)
        total = handled = back = written = dropped = 0
        for _round in range(60):
            batch = rng.randrange(1, 80)
            for _ in range(batch):
                src = rng.choice(corpus)
                r = rng.random()
                if r < 0.6:
                    dg, n, _ = corrupt(rng, src, 0)
                    dg = dg[:n]
                elif r < 0.8:
                    dg = rng.randbytes(rng.randrange(0, 200))
                else:
                    dg = src
                name = rng.choices((PEER, OTHER, NOT_PEER), (60, 30, 10))[0]
                sent.socks[name].sendto(dg, rx.local_address)
                total += 1
            got = empty = 0
            while got < batch:
                item, cnt, drops, learned, err = _native.rx_batch(
                    rx.fileno(), a.fileno(), buf, peers, 4, VNI, 0xFF4E, folds, rng.choice((100, 736, 2000)),
                    rng.choice((1, 7, 64)), ZERO_VNET_HDR)
                assert err == 0
                reads, _, plain, hint, fold, _, tap_err, _, _, _, fast = cnt
                assert reads == fast
                assert plain + hint + fold + tap_err + sum(k for _, k in drops) == fast
                for code, _ in drops:
                    assert 0 <= code < len(rxnative.REASONS)
                for peer, mac in learned:
                    assert peer in (0, 1) and len(mac) == 6
                handled += fast
                written += plain + hint + fold + tap_err
                dropped += sum(k for _, k in drops)
                got += fast
                if item is not None:
                    back += 1
                    got += 1
                elif not fast:  # the receive timed out: a datagram was lost in the accounting
                    empty += 1
                    assert empty < 2, (got, batch)
                while True:  # drain the stand-in TAP
                    try:
                        b.recv(1 << 17)
                    except BlockingIOError:
                        break
        assert handled + back == total
        assert handled > 200 and back > 100 and dropped > 50 and written > 50
    finally:
        rx.close()
        a.close()
        b.close()


def test_wake_ups_change_no_counter(sent, monkeypatch):
    """`udpnest status` wakes the RX child with an empty datagram from our own address: with the fast path on
    that must leave every counter as it was (tests/privileged' settled_status waits for quiet counters)."""
    on = run([(b"", 0, 0, "wake")] * 3, sent, fast=True, child=True, monkeypatch=monkeypatch)
    assert on["calls"] == 0 and on["fast"] == 0 and on["reads"] == 0
    assert on["nstats"] == 4  # three wake-ups and the stop


def test_ipv6_underlay(monkeypatch):
    """An IPv6 underlay (::1 is the only loopback address: the peer is our own address, another port): ACKs on
    the fast path, handed-back reads (a GRO read, junk, an echo packet) keyed as the Python path keys them."""
    from udpnest.rxbatch import _packed, sockaddr_tuple

    rng = random.Random(6)
    reads = acks(rng, 3, 10, (PEER,))
    reads += [r for r in reads_for(rng, corrupt_p=0.0) if r[3] == PEER] + acks(rng, 2, 5, (PEER,))
    results = []
    for fast in (True, False):
        monkeypatch.setenv("UDPNEST_RX_BATCH", "1" if fast else "0")
        peer = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        peer.bind(("::1", 0))
        rx = UdpSocket("::1", 0, gro=True, blocking=True, bufsize=1 << 24)
        port = rx.local_address[1]
        cfg = build_config({"id": VNI, "local": "::1", "dstport": port, "nested": "fold", "engine": "native",
                            "remote": [f"[::1]:{peer.getsockname()[1]}"]})
        ep = Endpoint(cfg, clock=lambda: 100.0)
        ep.rx = rx
        ep.tap = Tap.__new__(Tap)
        ep.tap.fd = os.open("/dev/null", os.O_WRONLY)  # counters and learning are compared here, not frames
        n = 0
        for buf, m, g, _ in reads:
            try:
                if g and m > g:
                    peer.sendmsg([buf[:m]], [segment_cmsg(g)], 0, ("::1", port))
                else:
                    peer.sendto(buf[:m], ("::1", port))
                n += 1
            except OSError:
                pass
        t = threading.Thread(target=ep._rx_loop, daemon=True)
        t.start()
        c = ep.rx_stats.c
        deadline = time.monotonic() + 20
        while c["reads"] < n and time.monotonic() < deadline:
            time.sleep(0.005)
        ep.stop_event.set()
        rx.sock.sendto(b"", ("::1", port))
        t.join(10)
        assert not t.is_alive()
        results.append((Counter({k: v for k, v in c.items() if not k.startswith(VOLATILE)}),
                        Counter(ep.rx_stats.drops), c["rx_batch_fast"], list(ep.fdb._t.items())))
        ep.tap.close()
        rx.close()
        peer.close()
    on, off = results
    assert on[0] == off[0] and on[1] == off[1] and on[3] == off[3]
    assert on[2] > 20 and off[2] == 0
    assert "no_peer" not in on[1]
    assert _packed(["::1", "2001:db8::1", "2001:DB8::2", "192.0.2.1", "bogus"]) == {
        16: [(socket.inet_pton(socket.AF_INET6, "::1"), "::1"), (socket.inet_pton(socket.AF_INET6, "2001:db8::1"),
                                                                  "2001:db8::1")],
        4: [(socket.inet_aton("192.0.2.1"), "192.0.2.1")]}
    assert sockaddr_tuple(b"") is None


def test_tap_write_errors(sent, monkeypatch):
    """A TAP that refuses every write: the same tap_write drops (and nothing learned) on both paths."""
    reads = mixed(random.Random(2), 0.0)
    on = run(reads, sent, fast=True, monkeypatch=monkeypatch, bad_tap=True)
    off = run(reads, sent, fast=False, monkeypatch=monkeypatch, bad_tap=True)
    compare(on, off)
    assert on["frames"] == [] and on["drops"]["tap_write"] > 0 and on["fast"] > 0
    assert on["learned"] == []


# --- the data path: multi-row reads of a known flow held, merged and finished in C -------------------------------
def flow_reads(rng: random.Random, mode: str, *, v6: bool, depth: int, supers: int, src: str = PEER,
               corrupt_p: float = 0.0) -> list[tuple]:
    """Reads of one bulk TCP flow as a UDP_GRO socket gets them: consecutive super-packets (contiguous sequence
    numbers and IPv4 IDs), each cut by the sender's segmenter and arriving as one GRO read, two (a 64 KB
    super-packet is more than one aggregate), or with its short tail as a one-datagram read; some with PSH
    mid-way, some with a gap in the sequence; some rows corrupted (the split path)."""
    import dataclasses

    import packets as P

    levels = []
    for _ in range(depth):
        lv6 = rng.random() < 0.5
        levels.append(P.Tunnel(ip=P.IPSpec(v6=lv6, ident=rng.randrange(65536), df=True), encap="vxlan",
                               udp_csum=rng.random() < 0.5, vni=rng.randrange(1 << 24)))
    ip = P.IPSpec(v6=v6, ident=rng.randrange(65536), df=rng.random() < 0.8)
    seq = rng.randrange(1 << 32)
    mss = rng.choice((1000, 1320, 1397, 1400))
    out = []
    for _ in range(supers):
        payload = rng.choice((mss * 3, mss * 20 + 7, 40000, 60000, 64000, 2 * mss))
        flags = rng.choice(("A", "A", "A", "PA"))
        frame = P.frame(levels, P.Inner(ip=ip, payload=rng.randbytes(payload), seq=seq, flags=flags))
        dgs, row = datagrams(rng, frame, mode, mss)
        n = len(dgs)
        seq = (seq + payload + (rng.random() < 0.05) * mss) & 0xFFFFFFFF  # now and then a gap
        ip = dataclasses.replace(ip, ident=(ip.ident + n) & 0xFFFF)
        levels = [dataclasses.replace(t, ip=dataclasses.replace(t.ip, ident=(t.ip.ident + n) & 0xFFFF))
                  for t in levels]
        r = rng.random()
        if r < 0.45 and n > 2:
            cut = rng.randrange(2, n)
            parts = [dgs[:cut], dgs[cut:]]
        elif r < 0.7 and n > 2:  # the short tail as its own read
            parts = [dgs[:-1], dgs[-1:]]
        else:
            parts = [dgs]
        for p in parts:
            buf = b"".join(p)
            g = row if len(p) > 1 else 0
            n_ = len(buf)
            if rng.random() < corrupt_p:
                buf, n_, g = corrupt(rng, buf, g)
            out.append((buf, n_, g, src))
    return out


def data_mix(rng: random.Random, corrupt_p: float = 0.0, v6=None) -> list[tuple]:
    """Bulk flows (plain / hint / fold, 0-2 nested levels, IPv4 / IPv6) with what the data path hands back mixed
    in: ACK runs, another flow or peer's reads in between, a non-peer, junk, the wake-up datagram."""
    out: list[tuple] = []
    for _ in range(rng.randrange(1, 4)):
        mode = rng.choice(("plain", "hint", "fold"))
        fv6 = rng.random() < 0.5 if v6 is None else v6
        reads = flow_reads(rng, mode, v6=fv6, depth=rng.choice((0, 1, 1, 2)), supers=rng.randrange(2, 7),
                           src=rng.choice((PEER, PEER, OTHER)), corrupt_p=corrupt_p)
        while reads:
            k = rng.randrange(1, 6)
            out += reads[:k]
            reads = reads[k:]
            x = rng.randrange(8)
            if x == 0:
                out += acks(rng, 1, rng.randrange(1, 4))
            elif x == 1:
                other = flow_reads(rng, rng.choice(("plain", "hint", "fold")), v6=rng.random() < 0.5, depth=1,
                                   supers=1, src=rng.choice((PEER, OTHER)))
                out += other
            elif x == 2:
                out.append((*reads[0][:3], NOT_PEER) if reads else (b"junk", 4, 0, NOT_PEER))
            elif x == 3:
                junk = rng.randbytes(rng.randrange(1, 120))
                out.append((junk, len(junk), 0, PEER))
            elif x == 4:
                out.append((b"", 0, 0, "self"))
    return out


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), corrupt_p=st.sampled_from((0.0, 0.0, 0.15)))
def test_data_path_is_invisible(seed, corrupt_p, sent, monkeypatch):
    """Bulk flows with everything interleaved, fast path on and off: the same frames in the same order, the same
    counters (coalescing outcomes, merged reads, reads per super-packet, histogram), drops and learned MACs."""
    reads = data_mix(random.Random(seed), corrupt_p)
    on = run(reads, sent, fast=True, monkeypatch=monkeypatch)
    off = run(reads, sent, fast=False, monkeypatch=monkeypatch)
    compare(on, off)


@pytest.mark.parametrize("mode", ["plain", "hint", "fold"])
@pytest.mark.parametrize("v6", [False, True])
def test_data_path_takes_the_flow(mode, v6, sent, monkeypatch):
    """The wiring: a bulk flow's reads are held, merged and finished in C (fails without the data path: then only
    the first read of each flow and the hand-backs go through Python), with the same frames and counters."""
    rng = random.Random(f"{mode}-{v6}")
    reads = flow_reads(rng, mode, v6=v6, depth=1, supers=12)
    on = run(reads, sent, fast=True, monkeypatch=monkeypatch)
    off = run(reads, sent, fast=False, monkeypatch=monkeypatch)
    compare(on, off)
    assert on["counts"]["merged_reads"] > 0 and on["counts"]["super_packets"] > 0
    # (the first read of each header shape, a short tail and a read of another shape go through Python; without the
    # data path no read here is handled in C: they are all GRO reads or long singles)
    assert on["fast"] >= 3 and off["fast"] == 0, (on["fast"], len(reads))


@pytest.mark.parametrize("mode", ["plain", "fold"])
def test_data_path_merges_short_tails(mode, sent, monkeypatch):
    """Super-packets of one size whose short tail comes as its own one-datagram read: after the first tail (parsed
    by Python: its cache entry), every read and tail is handled in C (fails without the tail path: half of them
    would go back to Python), the tails merged as single_run + merge do."""
    import dataclasses

    import packets as P

    rng = random.Random(mode)
    ip = P.IPSpec(v6=False, ident=100, df=True)
    lv = P.Tunnel(ip=P.IPSpec(v6=True, ident=7, df=True), encap="vxlan", udp_csum=True, vni=5)
    seq, reads = 1000, []
    for _ in range(10):
        frame = P.frame([lv], P.Inner(ip=ip, payload=rng.randbytes(20000), seq=seq, flags="A"))
        dgs, row = datagrams(rng, frame, mode, 1320)
        head = b"".join(dgs[:-1])
        reads += [(head, len(head), row, PEER), (dgs[-1], len(dgs[-1]), 0, PEER)]
        seq += 20000
        ip = dataclasses.replace(ip, ident=ip.ident + len(dgs))
    assert len(dgs[-1]) < row
    on = run(reads, sent, fast=True, monkeypatch=monkeypatch)
    off = run(reads, sent, fast=False, monkeypatch=monkeypatch)
    compare(on, off)
    assert on["counts"]["coalesce_single_merged"] == 10 and on["counts"]["super_packets"] == 10
    # (without the tail path at most the 10 heads; a random foreign option in a few rows changes the shape)
    assert on["fast"] >= 12, on["fast"]


def test_data_path_matches_the_python_engine(sent, monkeypatch):
    """Frames and drops as the reference (Python engine) gives them, bulk flows and all."""
    reads = data_mix(random.Random(21), 0.1)
    on = run(reads, sent, fast=True, monkeypatch=monkeypatch)
    py = run(reads, sent, fast=True, eng="python", monkeypatch=monkeypatch)
    assert on["frames"] == py["frames"]
    assert on["drops"] == py["drops"]


def test_fuzz_rx_batch_data_path(sent):
    """Bulk-flow GRO reads, mutated (rows, lengths, GSO sizes, headers) and not, from peers and not, straight into
    the C entry with the flows a Receiver built: no crash; every read is handled or handed back; every frame on
    the stand-in TAP is one counted write (bytes included); a handed-back run is well formed."""
    from udpnest import _native, rxbatch, rxnative
    from udpnest.wire.vnet import ZERO_VNET_HDR

    rng = random.Random(31)
    rx = UdpSocket(LOCAL, 0, gro=True, blocking=True, bufsize=1 << 24)
    rx.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 5, 0))
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    a.setblocking(False)
    b.setblocking(False)
    try:
        corpus = []
        for mode in ("plain", "hint", "fold", "fold"):
            corpus += [r for r in flow_reads(rng, mode, v6=rng.random() < 0.5, depth=rng.choice((0, 1, 2)), supers=4)
                       if r[1] <= 65000]
        recv = rxnative.Receiver(vni=VNI)
        flows_seen = []
        for buf, n, g, _ in corpus:  # the flows as the reference's cache has them (full reads and tails)
            if g:
                recv.receive(bytearray(buf), n, g)
            else:
                recv.single_run(bytearray(buf), n)
            last, prev = recv.last, recv.prev
            flows_seen.append((rxbatch.flow_args(last, prev, 1472), rxbatch.flow_args(prev, last, 1472)))
        assert any(f[0] is not None for f in flows_seen)
        peers = socket.inet_aton(ADDR[PEER]) + socket.inet_aton(ADDR[OTHER])
        buf = bytearray(65600)
        total = handled = back = frames = held_n = tails = 0
        for _round in range(60):
            flows = rng.choice(flows_seen)
            batch, got, empty = 0, 0, 0
            for _ in range(rng.randrange(1, 12)):
                dg, n, g, _ = rng.choice(corpus)
                if rng.random() < 0.3:
                    dg, n, g = corrupt(rng, dg, g)
                name = rng.choices((PEER, OTHER, NOT_PEER), (70, 20, 10))[0]
                if sent.send(name, dg, n, g, rx.local_address):
                    batch += 1
            total += batch
            while got < batch:
                item, cnt, drops, learned, err, data, held = _native.rx_batch(
                    rx.fileno(), a.fileno(), buf, peers, 4, VNI, 0xFF4E, [], 736, rng.choice((1, 3, 64)),
                    ZERO_VNET_HDR, None, flows)
                assert err == 0
                reads, _, plain, hint, fold, tap_bytes, tap_err, _, _, _, fast = cnt
                coalesced, merged, r1, r2, r3, dbytes, ddrop, segs, single_merged = data
                assert single_merged <= merged
                tails += single_merged
                assert reads == fast and coalesced <= fast and merged <= coalesced
                for code, _ in drops:
                    assert 0 <= code < len(rxnative.REASONS)
                for peer, mac in learned:
                    assert peer in (0, 1) and len(mac) == 6
                if held is not None:
                    payload, hdr, ref, plen, mss, segments, seq0, nseq, fids, lids, ext, nreads, peer, fi = held
                    assert len(payload) == plen and (plen - 1) // mss + 1 == segments and ext and peer in (0, 1)
                    assert flows[fi] is not None and len(ref) == flows[fi][4] + flows[fi][5] == len(ref)
                    assert nseq == (seq0 + plen) & 0xFFFFFFFF and nreads >= 1
                    held_n += 1
                handled += fast
                got += fast
                if item is not None:
                    back += 1
                    got += 1
                elif not fast and held is None:
                    empty += 1
                    assert empty < 2, (got, batch)
                nbytes = nframes = 0
                while True:
                    try:
                        nbytes += len(b.recv(1 << 17)) - 24
                        nframes += 1
                    except BlockingIOError:
                        break
                if not tap_err and not ddrop:  # (a full stand-in TAP refuses some: those are counted drops)
                    assert nframes == plain + hint + fold + len(segs)
                    assert nbytes == tap_bytes + dbytes
                frames += nframes
        assert handled + back == total
        assert handled > 30 and back > 10 and frames > 5 and held_n > 0
    finally:
        rx.close()
        a.close()
        b.close()


def test_data_path_tap_write_errors(sent, monkeypatch):
    """A TAP that refuses every write: the super-packets' segments are the same tap_write drops on both paths."""
    reads = data_mix(random.Random(5))
    on = run(reads, sent, fast=True, monkeypatch=monkeypatch, bad_tap=True)
    off = run(reads, sent, fast=False, monkeypatch=monkeypatch, bad_tap=True)
    compare(on, off)
    assert on["frames"] == [] and on["drops"]["tap_write"] > 0 and on["fast"] > 0


@pytest.mark.parametrize("seed", range(4))
def test_data_path_ipv6_flows_in_rx_child(seed, sent, monkeypatch):
    """IPv6 inner flows, the RX child's learning messages and wake-ups: the same frames and counters on both paths,
    and the same last report per MAC (the fast path reports one (peer, MAC) per MAC and call, as for ACKs)."""
    rng = random.Random(100 + seed)
    reads = data_mix(rng, v6=True) + [(b"", 0, 0, "wake")] + data_mix(rng, v6=True)
    on = run(reads, sent, fast=True, child=True, monkeypatch=monkeypatch)
    off = run(reads, sent, fast=False, child=True, monkeypatch=monkeypatch)
    msgs = on.pop("msgs"), off.pop("msgs")
    on["msgs"] = off["msgs"] = None
    compare(on, off)
    last = [{m[1]: m[2] for m in ms if m[0] == "learn"} for ms in msgs]
    assert last[0] == last[1] and len(msgs[0]) <= len(msgs[1])
    assert on["nstats"] == off["nstats"] == 2


@pytest.mark.parametrize("limit", [1, 2, 3])
def test_data_path_batch_limit(limit, sent, monkeypatch):
    """A call that reaches its datagram limit while holding a run hands the run back and the next read is polled
    as the Python path polls it (never a flush while more is waiting): the same frames and counters."""
    from udpnest import rxbatch

    monkeypatch.setattr(rxbatch, "BATCH_MAX", limit)
    reads = data_mix(random.Random(40 + limit))
    on = run(reads, sent, fast=True, monkeypatch=monkeypatch)
    off = run(reads, sent, fast=False, monkeypatch=monkeypatch)
    compare(on, off)
    assert on["fast"] > 0


# --- lingering: one C call covers many wakeups (rxbatch.LINGER_NS) ---------------------------------------------


def plain_acks(rng: random.Random, n: int, src: str = PEER) -> list[tuple]:
    """``n`` ACKs of one plain or hint flow (no FOLD: its first ACK would wait for a template in Python)."""
    dg = datagrams(rng, super_frame(rng, 1, 0), rng.choice(("plain", "hint")), 1000)[0][0]
    out = []
    for k in range(n):
        b = bytearray(dg)
        b[-1] ^= k & 0xFF
        out.append((bytes(b), len(b), 0, src))
    return out


def test_linger_takes_bursts_in_one_call(sent, monkeypatch):
    """ACKs arriving in bursts a few ms apart, within one linger window: one C call takes them all (on today's
    call-per-wakeup it is one call per burst), and the frames and counters are those of the Python path."""
    from udpnest import rxbatch

    monkeypatch.setattr(rxbatch, "LINGER_NS", 500_000_000)  # generous: the bursts come within it on a busy host
    rng = random.Random(11)
    reads = []
    for i in range(4):
        reads += plain_acks(rng, 6, (PEER, OTHER)[i % 2])
        reads.append((None, 0.005, 0, "pause"))
    on = run(reads, sent, fast=True, monkeypatch=monkeypatch, live=True)
    off = run(reads, sent, fast=False, monkeypatch=monkeypatch, live=True)
    compare(on, off)
    assert on["fast"] == on["reads"] == 24
    assert on["calls"] == 1, on["calls"]


def test_linger_off_is_one_call_per_wakeup(sent, monkeypatch):
    """LINGER_NS = 0 keeps the call-per-wakeup behaviour (the bursts above then take one call each at least)."""
    from udpnest import rxbatch

    monkeypatch.setattr(rxbatch, "LINGER_NS", 0)
    rng = random.Random(11)
    reads = []
    for _ in range(4):
        reads += plain_acks(rng, 6)
        reads.append((None, 0.05, 0, "pause"))
    on = run(reads, sent, fast=True, monkeypatch=monkeypatch, live=True)
    assert on["fast"] == on["reads"] == 24
    assert on["calls"] >= 4, on["calls"]


def _pauses(rng: random.Random, reads: list) -> list:
    """``reads`` with short pauses in between, keeping only reads the RX driver never holds (whether a held run
    merges with the next read depends on whether that read is already queued: live, that is timing)."""
    out = []
    for r in reads:
        if r[3] in (PEER, OTHER) and (r[2] or r[1] >= 700):
            continue
        out.append(r)
        if rng.random() < 0.15:
            out.append((None, rng.choice((0.0005, 0.002, 0.004)), 0, "pause"))
    return out


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), corrupt_p=st.sampled_from((0.0, 0.2)))
def test_lingering_is_invisible(seed, corrupt_p, sent, monkeypatch):
    """Reads arriving live with pauses inside the linger window (ACKs, everything the fast path hands back:
    echo packets, junk, unknown sources, wake-ups): the same frames, counters, drops and learned MACs as the
    Python path."""
    from udpnest import rxbatch

    monkeypatch.setattr(rxbatch, "LINGER_NS", 20_000_000)
    rng = random.Random(seed)
    reads = _pauses(rng, mixed(rng, corrupt_p))
    on = run(reads, sent, fast=True, monkeypatch=monkeypatch, live=True)
    off = run(reads, sent, fast=False, monkeypatch=monkeypatch, live=True)
    compare(on, off)


class _Live:
    """An endpoint's RX loop running (thread) on a loopback socket before anything is sent; the TAP a
    SOCK_SEQPACKET pair; ``child``: as the RX process (its parent channel in ``self.parent``)."""

    def __init__(self, sent: Sent, *, child: bool, start: bool = True) -> None:
        rx = UdpSocket(LOCAL, 0, gro=True, blocking=True, bufsize=1 << 22)
        self.to = (LOCAL, rx.local_address[1])
        cfg = build_config({"id": VNI, "local": LOCAL, "dstport": self.to[1], "nested": "fold", "engine": "native",
                            "remote": [f"{ADDR[PEER]}:{sent.port(PEER)}", f"{ADDR[OTHER]}:{sent.port(OTHER)}"]})
        self.ep = ep = Endpoint(cfg, clock=lambda: 100.0)
        ep.rx = self.rx = rx
        self.a, self.b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ep.tap = _fake_tap(self.a)
        self.parent = None
        if child:
            self.parent, ch = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            ep.rx_child, ep.rx_chan = True, ch
            ep._chan = Channel(ch, 1 << 22)
            ep._learned = LearnedMacs(cfg.learned_max, cfg.fdb_ageing / 4)
        self.t = threading.Thread(target=ep._rx_loop, daemon=True)
        if start:
            self.t.start()

    def frames(self, n: int) -> list[bytes]:
        self.b.settimeout(10)
        return [self.b.recv(1 << 17) for _ in range(n)]

    def close(self) -> None:
        if self.rx is None:
            return
        self.ep._stop_flag[0] = 1
        with contextlib.suppress(OSError):
            self.rx.sock.sendto(b"", self.to)
        if self.t.ident is not None:
            self.t.join(10)
        for s in (self.a, self.b, self.parent, self.ep.rx_chan):
            if s is not None:
                s.close()
        self.ep.tap.close()
        self.rx.close()
        self.rx = None


def test_stop_while_lingering(sent, monkeypatch):
    """The stop flag set while C waits in a (30 s) linger window, with no wake-up datagram: the loop returns
    (bounded by a generous join timeout; it would otherwise sleep out the window) and the call's counters are in."""
    from udpnest import rxbatch

    monkeypatch.setenv("UDPNEST_RX_BATCH", "1")
    monkeypatch.setattr(rxbatch, "LINGER_NS", 30_000_000_000)
    live = _Live(sent, child=False)
    try:
        reads = plain_acks(random.Random(5), 3)
        for buf, n, _, name in reads:
            sent.send(name, buf, n, 0, live.to)
        assert len(live.frames(3)) == 3  # written in C: the call now lingers
        live.ep._stop_flag[0] = 1  # nothing wakes the poll: C must look at the flag while it waits
        live.t.join(5)
        assert not live.t.is_alive(), "the RX loop still lingers after the stop flag"
        c = live.ep.rx_stats.c
        assert c["reads"] == 3 and c["rx_batch_fast"] == 3 and c["rx_batch_calls"] == 1
    finally:
        live.close()


def test_wake_up_reaches_python_while_lingering(sent, monkeypatch):
    """`udpnest status` (and a reload) wake the RX process with an empty datagram from its own address: during a
    (30 s) linger window it is handed back to Python at once, which pushes counters that include the ACKs the
    same call took before it."""
    from udpnest import rxbatch

    monkeypatch.setenv("UDPNEST_RX_BATCH", "1")
    monkeypatch.setattr(rxbatch, "LINGER_NS", 30_000_000_000)
    live = _Live(sent, child=True)
    try:
        for buf, n, _, name in plain_acks(random.Random(6), 4):
            sent.send(name, buf, n, 0, live.to)
        live.frames(4)  # written in C: the call now lingers
        live.rx.sock.sendto(b"", live.to)
        live.parent.settimeout(5)  # generous: without the hand-back it would come 30 s later
        msg = pickle.loads(live.parent.recv(1 << 20))
        while msg[0] != "stats":
            msg = pickle.loads(live.parent.recv(1 << 20))
        assert msg[1]["c"]["reads"] == 4 and msg[1]["c"]["rx_batch_fast"] == 4
        assert msg[1]["c"]["rx_batch_calls"] == 1
    finally:
        live.close()


@pytest.mark.parametrize("seed", [5, 9])  # (their last run is held in C at EAGAIN: they fail without the flush)
def test_held_run_goes_out_before_lingering(seed, sent, monkeypatch):
    """A bulk flow queued, then the loop started with a (30 s) linger window: at EAGAIN the run C holds is finished
    and written before C waits (as today's return does), so every frame of the Python path's run is on the TAP
    while C still lingers (bounded by a generous timeout; it would otherwise come at the window's end)."""
    from udpnest import rxbatch

    rng = random.Random(seed)
    reads = flow_reads(rng, rng.choice(("plain", "hint", "fold")), v6=False, depth=rng.choice((0, 1)), supers=4)
    off = run(reads, sent, fast=False, monkeypatch=monkeypatch)
    monkeypatch.setenv("UDPNEST_RX_BATCH", "1")
    monkeypatch.setattr(rxbatch, "LINGER_NS", 30_000_000_000)
    live = _Live(sent, child=False, start=False)
    try:
        for buf, n, g, name in reads:
            sent.send(name, buf, n, g, live.to)  # (one the kernel refuses is no read, for run() either)
        live.t.start()
        assert live.frames(len(off["frames"])) == off["frames"]
        live.close()  # (the stop flag and the wake-up datagram, as Endpoint.close)
        assert live.ep.rx_stats.c["rx_batch_fast"] > 0
    finally:
        live.close()
