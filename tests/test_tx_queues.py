"""A multi-queue TAP (``tap_queues`` > 1) in the TX loops: the queues are served round robin, K frames
(txburst.QUEUE_FRAMES) per turn, in the native burst (csrc/txburst.c) and the per-frame Python loop alike.

No root: each TAP queue is a SOCK_SEQPACKET socketpair (one read = one frame), as in tests/test_tx_burst.py
whose harness (two peers on loopback, the native engine) this reuses."""

from __future__ import annotations

import os
import socket

import pytest

from test_tx_burst import MAC_A, MAC_B2, Harness, _Loop, _recv, ack, ack_csum, small, sp
from udpnest import engine, generation, txburst
from udpnest.io import next_ready
from udpnest.io.tap import Tap

pytestmark = pytest.mark.skipif(not engine.native_available(), reason="native core not built")

K = txburst.QUEUE_FRAMES


class QHarness(Harness):
    """Harness with an N-queue TAP stand-in: queue i is the socketpair (a[i], b[i]); queue 0 is the base's."""

    def __init__(self, burst: bool, monkeypatch, nq: int = 3) -> None:
        super().__init__(burst, monkeypatch)
        self.pairs = [(self.a, self.b)]
        for _ in range(nq - 1):
            a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            a.setblocking(False)
            b.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 23)
            self.pairs.append((a, b))
        self.ep.tap.close()
        t = Tap.__new__(Tap)
        t.fds = [os.dup(a.fileno()) for a, _ in self.pairs]
        t.fd = t.fds[0]
        self.ep.tap = t
        assert txburst.wanted(self.ep) is burst

    def send(self, q: int, frame: bytes) -> None:
        self.pairs[q][1].send(frame)

    def qburst(self, reads: list[tuple[int, bytes]]) -> list[tuple[int, int, bytes]]:
        """One TX loop round with ``reads`` (queue, frame) queued first: what each peer received, in order."""
        for q, r in reads:
            self.send(q, r)
        return self.one_round()

    def close(self) -> None:
        super().close()
        for a, b in self.pairs[1:]:
            a.close()
            b.close()


def qrun(script, burst: bool, monkeypatch, nq: int = 3):
    h = QHarness(burst, monkeypatch, nq)
    out = []
    try:
        for step in script:
            if step[0] == "qburst":
                out.append(h.qburst(step[1]))
            else:
                getattr(h, step[0])(*step[1:])
        return out, h.counters()
    finally:
        h.close()


def test_next_queue_is_round_robin():
    assert next_ready({0, 1, 2}, 0, 3) == 1
    assert next_ready({0, 2}, 0, 3) == 2
    assert next_ready({0}, 0, 3) == 0  # the current queue itself last
    assert next_ready({1}, 2, 3) == 1
    assert next_ready(set(), 1, 3) is None


BULK = 20  # super-packets of the bulk flow
SEGS = 7


@pytest.mark.parametrize("burst", [True, False], ids=["native-burst", "python-loop"])
@pytest.mark.parametrize("bulk_q,sparse_q", [(1, 0), (1, 2), (0, 1)])
def test_a_sparse_frame_waits_behind_at_most_k_bulk_frames(monkeypatch, burst, bulk_q, sparse_q):
    """One queue holds 20 bulk super-packets (queued first), another one small frame of another flow: the
    small frame leaves after at most K of the bulk frames (one FIFO: after all 20)."""
    bulk = [(bulk_q, sp(MAC_A, 1448 * SEGS, 40000)) for _ in range(BULK)]
    probe = small(MAC_A, 300, seq=99, sport=50000)
    out, c = qrun([("learn", MAC_A, 0), ("qburst", [*bulk, (sparse_q, probe)])], burst, monkeypatch)
    got = [d for p, _, d in out[0]]
    assert all(p == 0 for p, _, _ in out[0])
    assert (len(got) - 1) % BULK == 0
    segs = (len(got) - 1) // BULK  # datagrams per bulk super-packet
    small_at = [i for i, d in enumerate(got) if sum(len(x) == len(d) for x in got) == 1]
    assert len(small_at) == 1 and len(got[small_at[0]]) < 1000
    before = small_at[0]
    assert before % segs == 0  # between two super-packets
    assert before // segs <= K, f"the sparse frame waited behind {before // segs} bulk frames"
    assert c["c"]["frames"] == BULK + 1


def _flows_script(nq: int) -> list:
    """Many flows (source ports), each on the queue the steering would put it in (here: port % nq), mixed
    sizes, two peers, fold and plain; some frames handed back (a broadcast, an unknown MAC)."""
    reads = []
    for j in range(6):
        for f in range(9):
            sport = 41000 + f
            q = sport % nq
            kind = (ack, ack_csum, small, sp)[(f + j) % 4]
            dst = MAC_A if f % 3 else MAC_B2
            if kind is sp:
                reads.append((q, sp(dst, 1448 * (2 + f % 5), sport)))
            elif kind is small:
                reads.append((q, small(dst, 200 + 10 * f, seq=j, sport=sport)))
            else:
                reads.append((q, kind(dst, seq=100 * j + f, sport=sport)))
        reads.append((j % nq, ack(b"\xff" * 6, seq=j, sport=45000)))  # flooded: a hand-back
        reads.append(((j + 1) % nq, ack(bytes.fromhex("0200000000ee"), seq=j, sport=45001)))  # unknown: flooded
    return [("learn", MAC_A, 0), ("learn", MAC_B2, 1), ("set_mode", 0, "fold"), ("qburst", reads)]


@pytest.mark.parametrize("nq", [2, 4])
def test_burst_on_and_off_send_the_same_with_n_queues(monkeypatch, nq):
    """The native burst and the per-frame loop follow the same rule: the same datagrams, on the same
    sockets, in the same order, with the same counters; and each flow's datagrams in the order read."""
    script = _flows_script(nq)
    ref, ref_c = qrun(script, False, monkeypatch, nq)
    got, got_c = qrun(script, True, monkeypatch, nq)
    assert got == ref
    assert got_c == ref_c
    assert got_c["c"]["frames"] == len(script[-1][1])


def test_the_round_robin_place_carries_over_calls(monkeypatch):
    """Direct calls with the state buffer: a call that ends at max_frames resumes the same queue's turn."""
    import array

    h = QHarness(True, monkeypatch, 2)
    try:
        h.learn(MAC_A, 0)
        ep = h.ep
        ep._batch = {}
        b = txburst.TxBurst(ep)
        buf = bytearray(24 + 65536 + 64)
        for i in range(6):
            h.send(0, ack(MAC_A, seq=i, sport=40000))
            h.send(1, ack(MAC_A, seq=100 + i, sport=40001))
        snap, conf = b.snapshot(h.now[0])
        snap1 = (*snap[:3], 3, *snap[4:])  # max_frames 3
        rr = array.array("i", [0, 0])
        fds = tuple(ep.tap.fds)
        rc, n, counts = engine._native.tx_burst(fds, buf, ep, snap1, conf, 0, None, None, 4, rr)
        assert rc == engine._native.TXB_LIMIT and counts[0] == 3
        assert list(rr) == [1, 1]  # queue 1 (after 0), one frame of its turn left
        rc, n, counts = engine._native.tx_burst(fds, buf, ep, snap1, conf, 0, None, None, 4, rr)
        assert counts[0] == 3 and list(rr) == [0, 2]  # queue 1's 4th, then queue 0's first two
        rc, n, counts = engine._native.tx_burst(fds, buf, ep, snap, conf, 0, None, None, 4, rr)
        assert rc == engine._native.TXB_EMPTY and counts[0] == 6
        ep._flush_batch()
        got = [d for _, d in _recv(h, 12)]
        assert len(got) == 12
        with pytest.raises(ValueError):
            engine._native.tx_burst(fds, buf, ep, snap, conf, 0, None, None, 4, bytearray(4))
        with pytest.raises(ValueError):
            engine._native.tx_burst((), buf, ep, snap, conf)
        with pytest.raises(ValueError):
            engine._native.tx_burst(tuple(range(65)), buf, ep, snap, conf)
    finally:
        h.close()


def test_the_stop_flag_ends_a_call_lingering_on_n_queues(monkeypatch):
    h = QHarness(True, monkeypatch, 4)
    try:
        h.learn(MAC_A, 0)
        loop = _Loop(h, 60_000_000_000, monkeypatch)
        for q in (3, 1, 2, 0):  # a frame on each queue, one after the other: each wakes the lingering call
            h.send(q, ack(MAC_A, seq=q, sport=40000 + q))
            assert len(_recv(h, 1)) == 1
        assert loop.t.is_alive()
        h.ep._stop_flag[0] = 1
        loop.t.join(10.0)
        assert not loop.t.is_alive()
        assert h.ep.stop_event.is_set()
        loop.stop()
        c = h.ep.tx_stats.c
        # the first frame may wake the loop's poll rather than the lingering call
        assert c["tx_burst_calls"] == 1 and c["frames"] == 4 and c["tx_burst_wakeups"] >= 3
    finally:
        h.close()


def test_a_generation_bump_is_honoured_while_lingering_on_n_queues(monkeypatch):
    """A MAC moves to the other peer while one call lingers on 3 queues: the next frame, on another queue,
    goes to the new peer."""
    h = QHarness(True, monkeypatch, 3)
    try:
        h.learn(MAC_A, 0)
        h.send(2, ack(MAC_A, 1, sport=40002))
        loop = _Loop(h, 60_000_000_000, monkeypatch)
        got = _recv(h, 1)
        before = generation.WORD[0]
        h.learn(MAC_A, 1)  # moved: the FDB bumps the generation word
        assert generation.WORD[0] != before
        h.send(1, ack(MAC_A, 2, sport=40001))
        got += _recv(h, 1)
        assert loop.t.is_alive()
        loop.stop()
        assert [p for p, _ in got] == [0, 1]
        c = h.ep.tx_stats.c
        assert c["frames"] == c["tx_burst_fast"] == 2 and c["tx_burst_calls"] >= 2
    finally:
        h.close()


def test_one_queue_keeps_the_single_fd_call(monkeypatch):
    """tap_queues = 1: the burst is called with the fd (an int) and no round-robin arguments, as before."""
    h = Harness(True, monkeypatch)
    calls = []
    native = engine._native
    real = native.tx_burst

    class Spy:
        def __getattr__(self, name):
            return getattr(native, name)

        @staticmethod
        def tx_burst(*args):
            calls.append(args)
            return real(*args)

    try:
        h.learn(MAC_A, 0)
        monkeypatch.setattr(engine, "_native", Spy())
        h.burst([ack(MAC_A, 1)])
        assert calls and all(isinstance(a[0], int) and len(a) == 8 for a in calls)
    finally:
        h.close()
