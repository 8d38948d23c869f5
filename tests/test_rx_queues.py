"""RX queues (``rx_queues``; io/udp.py RxQueues, csrc/rxbatch.c): N SO_REUSEPORT sockets on the Geneve port,
served round robin by the RX loop, so a sparse flow does not wait behind a bulk flow's queued datagrams.

Loopback only (127.0.0.x, no root); the endpoint's real ``_rx_loop`` with a SOCK_SEQPACKET TAP stand-in (the
fixtures of tests/test_rx_batch.py), in the C fast path and the Python path."""

from __future__ import annotations

import contextlib
import pickle
import random
import select
import socket
import threading
import time

import pytest

from test_engine_diff_rx import NOT_PEER, OTHER, PEER, VNI
from test_rx_batch import ADDR, LOCAL, _fake_tap, data_mix, mixed, plain_acks
from udpnest import engine
from udpnest.config import ConfigError, build_config
from udpnest.endpoint import Endpoint
from udpnest.io.udp import RX_QUANTUM, RxQueues, UdpSocket, segment_cmsg
from udpnest.rxguard import Channel, LearnedMacs
from udpnest.service import reload_changes

NQ = 4


def group(n: int = NQ, *, blocking: bool = True, port: int = 0) -> list[UdpSocket]:
    """``n`` sockets of one SO_REUSEPORT group on ``port`` (0: an ephemeral one) of LOCAL."""
    first = UdpSocket(LOCAL, port, gro=True, blocking=blocking, bufsize=1 << 22, reuseport=True)
    port = first.local_address[1]
    return [first] + [UdpSocket(LOCAL, port, gro=True, blocking=blocking, bufsize=1 << 22, reuseport=True)
                      for _ in range(n - 1)]


def sender(ip: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((ip, 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
    return s


def landing(socks: list[UdpSocket], s: socket.socket, to) -> int:
    """Which socket of the group a datagram from ``s`` lands in (a probe, read back at once)."""
    s.sendto(b"probe", to)
    r, _, _ = select.select([x.sock for x in socks], [], [], 5)
    assert r, "the probe did not arrive"
    for i, x in enumerate(socks):
        if x.sock in r:
            assert x.recv_into(bytearray(2048), nowait=True)[0] == 5
            return i
    raise AssertionError


def senders_for(socks, ip: str, wanted: list[int], tries: int = 400) -> dict[int, socket.socket]:
    """A sender socket (own source port) from ``ip`` for each wanted socket index of the group."""
    to = socks[0].local_address
    out: dict[int, socket.socket] = {}
    for _ in range(tries):
        s = sender(ip)
        i = landing(socks, s, to)
        if i in wanted and i not in out:
            out[i] = s
        else:
            s.close()
        if len(out) == len(wanted):
            return out
    for s in out.values():
        s.close()
    pytest.skip(f"the kernel's reuseport hash did not reach sockets {wanted} in {tries} source ports")


def test_reuseport_spreads_flows_and_keeps_their_order():
    socks = group()
    to = socks[0].local_address
    q = RxQueues(socks)
    flows = [sender("127.0.0.2") for _ in range(48)]
    per = 6
    try:
        for k in range(per):
            for f, s in enumerate(flows):
                s.sendto(f"{f}:{k}".encode(), to)
        got: dict[int, list[int]] = {}
        where: dict[int, set[int]] = {}
        buf = bytearray(1 << 16)
        for _ in range(per * len(flows)):
            assert select.select([s.sock for s in socks], [], [], 5)[0], "a datagram is missing"
            r = q.recv_into(buf)
            assert r is not None
            f, k = (int(x) for x in bytes(buf[: r[0]]).split(b":"))
            got.setdefault(f, []).append(k)
            where.setdefault(f, set()).add(q.sched[1])
        assert not select.select([s.sock for s in socks], [], [], 0.05)[0], "a datagram came twice"
        assert got == {f: list(range(per)) for f in range(len(flows))}  # each once, in its flow's order
        assert all(len(w) == 1 for w in where.values())  # one flow, one socket
        assert all(r > 0 for r in q.reads), q.reads  # 48 flows over 4 sockets: each used
        assert sum(q.reads) == per * len(flows)
    finally:
        for s in flows + socks:
            s.close()


def test_rx_queues_config():
    base = {"id": 5, "local": "192.0.2.1", "remote": "192.0.2.2"}
    assert build_config(base).rx_queues == 4
    assert build_config({**base, "rx_queues": 1}).rx_queues == 1
    for bad in (0, 65, "x"):
        with pytest.raises(ConfigError, match="rx_queues"):
            build_config({**base, "rx_queues": bad})
    with pytest.raises(ConfigError, match="rx_queues"):  # a socket setting: a restart, not a reload
        reload_changes(build_config(base), build_config({**base, "rx_queues": 8}))


class Loop:
    """The endpoint's RX loop on a group of ``n`` reuseport sockets (``first``: which of them is ``ep.rx``), the
    TAP a SOCK_SEQPACKET pair; not started until :meth:`start`."""

    def __init__(self, socks, *, fast: bool, monkeypatch, child: bool = False, first: int = 0) -> None:
        monkeypatch.setenv("UDPNEST_RX_BATCH", "1" if fast else "0")
        self.socks = socks
        self.to = socks[0].local_address
        peers = [f"{ADDR[PEER]}:1", f"{ADDR[OTHER]}:1"]  # (peers are matched by address only)
        cfg = build_config({"id": VNI, "local": LOCAL, "dstport": self.to[1], "nested": "fold", "engine": "native",
                            "remote": peers})
        self.ep = ep = Endpoint(cfg, clock=lambda: 100.0)
        ep.rx = socks[first]
        ep.rx_more = [s for i, s in enumerate(socks) if i != first]
        self.a, self.b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for s in (self.a, self.b):
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
        ep.tap = _fake_tap(self.a)
        self.parent = None
        if child:
            self.parent, ch = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            ep.rx_child, ep.rx_chan = True, ch
            ep._chan = Channel(ch, 1 << 22)
            ep._learned = LearnedMacs(cfg.learned_max, cfg.fdb_ageing / 4)
        self.t = threading.Thread(target=ep._rx_loop, daemon=True)

    def start(self) -> None:
        self.t.start()

    def frames(self, n: int, timeout: float = 10) -> list[bytes]:
        self.b.settimeout(timeout)
        return [self.b.recv(1 << 17) for _ in range(n)]

    def drain(self, quiet: float = 0.3) -> list[bytes]:
        out = []
        self.b.settimeout(quiet)
        with contextlib.suppress(TimeoutError):
            while True:
                out.append(self.b.recv(1 << 17))
        return out

    def stop(self, *, wake: bool = True) -> None:
        self.ep.stop_event.set()
        self.ep._stop_flag[0] = 1
        if wake:
            with contextlib.suppress(OSError):
                self.socks[0].sock.sendto(b"", self.to)
        self.t.join(10)
        assert not self.t.is_alive(), "RX loop did not stop"

    def close(self) -> None:
        if self.t.is_alive():
            with contextlib.suppress(AssertionError):
                self.stop()
        for s in (self.a, self.b, self.parent, self.ep.rx_chan):
            if s is not None:
                s.close()
        self.ep.tap.close()
        for s in self.socks:
            s.close()


def _native_or_skip(fast: bool) -> None:
    if fast and not engine.native_available():
        pytest.skip("native core not built")


@pytest.mark.parametrize("fast", [True, False], ids=["C", "python"])
def test_sparse_flow_waits_at_most_one_quantum(fast, monkeypatch):
    """The point of the queues: socket 0 (the loop starts on it) holds 200 datagrams of a bulk flow, socket 2 one
    datagram of another flow; the sparse one is written to the TAP after at most RX_QUANTUM bulk frames (with one
    socket it would come after all 200)."""
    _native_or_skip(fast)
    socks = group()
    loop = Loop(socks, fast=fast, monkeypatch=monkeypatch)
    snd = senders_for(socks, ADDR[PEER], [0, 2])
    try:
        rng = random.Random(7)
        bulk = plain_acks(rng, 200)
        sparse = plain_acks(random.Random(8), 1)[0]
        for buf, n, _, _ in bulk:
            snd[0].sendto(buf[:n], loop.to)
        snd[2].sendto(sparse[0][: sparse[1]], loop.to)
        time.sleep(0.05)  # all queued before the loop runs
        loop.start()
        frames = loop.frames(201)
        want = {bytes(b[:n])[-40:] for b, n, _, _ in bulk}
        pos = [i for i, f in enumerate(frames) if f[-40:] not in want]
        assert len(pos) == 1, "the sparse frame is missing or not distinct"
        # the loop starts on socket 0 with no reads on it: exactly one quantum of bulk, then the sparse one
        assert pos[0] == RX_QUANTUM < len(bulk), f"the sparse flow waited behind {pos[0]} bulk frames"
        assert loop.ep.rxq.reads[0] == 200 and loop.ep.rxq.reads[2] == 1
        loop.stop()
        assert loop.ep.rx_stats.c["reads"] == 201
    finally:
        for s in snd.values():
            s.close()
        loop.close()


def _run_mix(seed: int, snd: dict, port: int, *, fast: bool, monkeypatch) -> dict:
    socks = group(port=port)
    loop = Loop(socks, fast=fast, monkeypatch=monkeypatch)
    rng = random.Random(seed)
    reads = mixed(rng, 0.1) + data_mix(rng)
    expected = k = 0
    try:
        for buf, n, g, name in reads:
            if name == "self":
                continue  # the wake-up: not part of this mix
            k = k if rng.random() < 0.8 else rng.randrange(3)  # mostly runs from one port: GRO reads merge
            s = snd[name][k]
            try:
                if g and n > g:
                    s.sendmsg([buf[:n]], [segment_cmsg(g)], 0, loop.to)
                else:
                    s.sendto(buf[:n], loop.to)
            except OSError:  # a GSO size the kernel refuses: not a read at all
                continue
            expected += 1
        time.sleep(0.05)
        loop.start()
        c = loop.ep.rx_stats.c
        deadline = time.monotonic() + 20
        while c["reads"] < expected and time.monotonic() < deadline:
            time.sleep(0.01)
        frames = loop.drain()
        loop.stop()
        counts = {k: v for k, v in c.items() if not k.startswith(("time_", "rx_batch_"))}
        return dict(frames=frames, counts=counts, drops=dict(loop.ep.rx_stats.drops), reads=loop.ep.rxq.reads,
                    fdb=list(loop.ep.fdb._t))
    finally:
        loop.close()


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_fast_path_is_invisible_with_queues(seed, monkeypatch):
    """Differential with 4 queues: the same datagrams (from several source ports per peer, so over several
    sockets) give the same frames in the same order, counters, drops and reads per queue with C on and off (both
    follow RxQueues' rule, their state in RxQueues.sched)."""
    _native_or_skip(True)
    # every source name sends from three source ports (three flows, as the kernel spreads them); the same ports
    # and group port in both runs, so the kernel's hash puts each datagram in the same socket
    snd = {name: [sender(ip) for _ in range(3)] for name, ip in ADDR.items() if name != "self"}
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind((LOCAL, 0))
    port = probe.getsockname()[1]
    probe.close()
    try:
        a = _run_mix(seed, snd, port, fast=True, monkeypatch=monkeypatch)
        b = _run_mix(seed, snd, port, fast=False, monkeypatch=monkeypatch)
    finally:
        for ss in snd.values():
            for s in ss:
                s.close()
    assert len(a["frames"]) > 20 and a["frames"] == b["frames"]
    assert a["counts"] == b["counts"] and a["drops"] == b["drops"]
    assert a["reads"] == b["reads"] and sum(x > 0 for x in a["reads"]) > 1
    assert sorted(a["fdb"]) == sorted(b["fdb"])


def _wake_socket(socks) -> int:
    """Where the wake-up datagram (from the group's own address and port to itself) lands."""
    socks[0].sock.sendto(b"", socks[0].local_address)
    r, _, _ = select.select([s.sock for s in socks], [], [], 5)
    i = [s.sock for s in socks].index(r[0])
    socks[i].recv_into(bytearray(64), nowait=True)
    return i


@pytest.mark.parametrize("fast", [True, False], ids=["C", "python"])
def test_wake_up_on_a_non_first_socket(fast, monkeypatch):
    """The RX child's wake-up (udpnest status, reload) arrives on whichever socket the kernel's hash picks; the
    group is ordered so that it is not ep.rx: the loop still answers with fresh counters."""
    _native_or_skip(fast)
    socks = group()
    w = _wake_socket(socks)
    loop = Loop(socks, fast=fast, monkeypatch=monkeypatch, child=True, first=(w + 1) % NQ)
    assert loop.ep.rx is not socks[w]
    try:
        loop.start()
        for buf, n, _, _ in plain_acks(random.Random(3), 5):
            s = sender(ADDR[PEER])
            s.sendto(buf[:n], loop.to)
            s.close()
        loop.frames(5)
        loop.ep.rx.sock.sendto(b"", loop.to)
        loop.parent.settimeout(5)
        msg = pickle.loads(loop.parent.recv(1 << 20))
        while msg[0] != "stats":
            msg = pickle.loads(loop.parent.recv(1 << 20))
        assert msg[1]["c"]["reads"] == 5
        assert msg[1]["queue_reads"] is not None and sum(msg[1]["queue_reads"]) == 6  # 5 ACKs + the wake-up
        assert msg[1]["queue_reads"][[loop.ep.rx, *loop.ep.rx_more].index(socks[w])] >= 1
    finally:
        loop.close()


@pytest.mark.parametrize("fast", [True, False], ids=["C", "python"])
def test_close_ends_the_loop_on_all_sockets(fast, monkeypatch):
    """No wake-up datagram: the stop flag and shutdown(SHUT_RD) of every socket (Endpoint.close) end a loop that
    waits on all of them (C: lingering after a datagram, then blocking; Python: poll)."""
    _native_or_skip(fast)
    from udpnest import rxbatch

    monkeypatch.setattr(rxbatch, "LINGER_NS", 30_000_000_000)
    socks = group()
    loop = Loop(socks, fast=fast, monkeypatch=monkeypatch)
    try:
        loop.start()
        s = sender(ADDR[PEER])
        buf, n, _, _ = plain_acks(random.Random(4), 1)[0]
        s.sendto(buf[:n], loop.to)
        s.close()
        loop.frames(1)
        loop.ep._stop_flag[0] = 1
        loop.ep.stop_event.set()
        for x in socks:  # as Endpoint.close (ENOTCONN, but the shutdown happens)
            with contextlib.suppress(OSError):
                x.sock.shutdown(socket.SHUT_RD)
        loop.t.join(5)
        assert not loop.t.is_alive(), "the RX loop still waits after close()"
    finally:
        loop.close()


def test_stop_while_lingering_on_all_sockets(monkeypatch):
    """The stop flag alone (nothing wakes the poll) ends C's linger over N sockets."""
    _native_or_skip(True)
    from udpnest import rxbatch

    monkeypatch.setattr(rxbatch, "LINGER_NS", 30_000_000_000)
    socks = group()
    loop = Loop(socks, fast=True, monkeypatch=monkeypatch)
    try:
        loop.start()
        s = sender(ADDR[PEER])
        for buf, n, _, _ in plain_acks(random.Random(4), 3):
            s.sendto(buf[:n], loop.to)
        s.close()
        loop.frames(3)
        loop.ep._stop_flag[0] = 1
        loop.t.join(5)
        assert not loop.t.is_alive(), "C still lingers after the stop flag"
        assert loop.ep.rx_stats.c["reads"] == 3 and loop.ep.rx_stats.c["rx_batch_fast"] == 3
    finally:
        loop.close()


def test_source_filter_on_every_socket_and_drops_summed():
    """filter_sources puts the kernel filter on every socket of the group: a non-peer sending from many source
    ports (so to every socket) gets nothing through, and the kernel's drops (SO_RXQ_OVFL, seen with the next
    datagram of each socket) are summed over the sockets."""
    socks = group()
    cfg = build_config({"id": VNI, "local": LOCAL, "dstport": socks[0].local_address[1], "nested": "fold",
                        "remote": [f"{ADDR[PEER]}:1"]})
    ep = Endpoint(cfg, clock=lambda: 100.0)
    ep.rx, ep.rx_more = socks[0], socks[1:]
    snd = senders_for(socks, ADDR[PEER], list(range(NQ)))
    bad = [sender(ADDR[NOT_PEER]) for _ in range(40)]
    try:
        ep.filter_sources()
        assert all(s.filter_error is None for s in socks)
        to = socks[0].local_address
        for s in bad:
            s.sendto(b"not a peer", to)
        time.sleep(0.05)
        assert not select.select([s.sock for s in socks], [], [], 0.1)[0], "a non-peer datagram got through"
        for s in snd.values():
            s.sendto(b"peer", to)
        q = ep.rxq = RxQueues(socks)
        buf = bytearray(1 << 16)
        got = 0
        while select.select([s.sock for s in socks], [], [], 1)[0]:
            r = q.recv_into(buf)
            got += r is not None and bytes(buf[: r[0]]) == b"peer"
        assert got == NQ
        assert ep._socket_drops() == len(bad)
        assert ep.status()["rx"]["socket_drops"] == len(bad)
        assert ep.status()["underlay"]["rx_queues"] == NQ and ep.status()["underlay"]["source_filter"]
    finally:
        for s in [*snd.values(), *bad, *socks]:
            s.close()


def test_native_socket_drops_per_queue(monkeypatch):
    """The C path records each socket's SO_RXQ_OVFL in RxQueues.sched; the endpoint's socket_drops sums them."""
    _native_or_skip(True)
    socks = group()
    loop = Loop(socks, fast=True, monkeypatch=monkeypatch)
    loop.ep.filter_sources()
    snd = senders_for(socks, ADDR[PEER], list(range(NQ)))
    bad = [sender(ADDR[NOT_PEER]) for _ in range(30)]
    try:
        for s in bad:
            s.sendto(b"not a peer", loop.to)
        acks = plain_acks(random.Random(2), NQ)
        for (buf, n, _, _), s in zip(acks, snd.values(), strict=True):
            s.sendto(buf[:n], loop.to)
        loop.start()
        loop.frames(NQ)
        loop.stop()
        assert loop.ep.rx_stats.c["rx_batch_fast"] >= NQ - 1
        assert loop.ep._socket_drops() == len(bad)
        assert all(v >= 0 for v in loop.ep.rxq.sched[3 + NQ : 3 + 2 * NQ])  # each socket's counter seen in C
    finally:
        for s in [*snd.values(), *bad]:
            s.close()
        loop.close()


def test_one_queue_is_one_plain_socket(monkeypatch):
    """rx_queues = 1 opens no group: no SO_REUSEPORT on the socket, no RxQueues in the loop."""
    s = UdpSocket(LOCAL, 0, blocking=True)
    try:
        assert s.sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
    finally:
        s.close()
    g = group(2)
    try:
        assert all(x.sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1 for x in g)
    finally:
        for x in g:
            x.close()


@pytest.mark.parametrize("fast", [True, False], ids=["C", "python"])
def test_a_held_run_keeps_its_socket_past_the_quantum(fast, monkeypatch):
    """Socket 0: RX_QUANTUM - 1 ACKs, then a 40000-byte super-packet as two GRO reads (reads K and K + 1); socket
    2: one sparse datagram.  The run held at read K stays on socket 0 so the second read merges (one frame,
    ``merged_reads``); the sparse datagram comes right after it."""
    _native_or_skip(fast)
    import packets as P
    from test_engine_diff_rx import datagrams

    socks = group()
    loop = Loop(socks, fast=fast, monkeypatch=monkeypatch)
    snd = senders_for(socks, ADDR[PEER], [0, 2])
    try:
        rng = random.Random(11)
        acks_ = plain_acks(rng, RX_QUANTUM - 1)
        frame = P.frame([], P.Inner(ip=P.IPSpec(v6=False, ident=7, df=True), payload=rng.randbytes(40000),
                                    seq=1000, flags="A"))
        dgs, row = datagrams(rng, frame, "plain", 1400)
        for buf, n, _, _ in acks_:
            snd[0].sendto(buf[:n], loop.to)
        for part in (dgs[:12], dgs[12:]):
            snd[0].sendmsg([b"".join(part)], [segment_cmsg(row)], 0, loop.to)
        sparse = plain_acks(random.Random(8), 1)[0]
        snd[2].sendto(sparse[0][: sparse[1]], loop.to)
        time.sleep(0.05)
        loop.start()
        frames = loop.frames(RX_QUANTUM + 1)
        per_queue = loop.ep.rxq.reads  # (before the stop's wake-up datagram, which may land in any socket)
        loop.stop()
        assert [len(f) > 40000 for f in frames] == [False] * (RX_QUANTUM - 1) + [True, False]
        assert frames[-1][-40:] == sparse[0][: sparse[1]][-40:]
        c = loop.ep.rx_stats.c
        assert c["merged_reads"] == 1 and c["reads"] == RX_QUANTUM + 2
        assert per_queue[0] == RX_QUANTUM + 1 and per_queue[2] == 1
    finally:
        for s in snd.values():
            s.close()
        loop.close()


def test_metrics_export_the_queues():
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from udpnest.metrics import registry_for

    status = {"underlay": {"gso": True, "gro": True, "source_filter": True, "rx_queues": 3,
                           "rx_queue_reads": [5, 0, 7]}}
    text = generate_latest(registry_for(lambda: status)).decode()
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value
           for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert got[("udpnest_underlay_rx_queues", ())] == 3
    assert [got[("udpnest_underlay_rx_queue_reads_total", (("queue", str(i)),))] for i in range(3)] == [5, 0, 7]


def test_drops_of_a_socket_that_only_got_junk_are_counted():
    """A non-peer's datagrams refused by the filter on sockets that never receive anything afterwards (so no
    SO_RXQ_OVFL cmsg ever reports them) are still in socket_drops (SO_MEMINFO at status time)."""
    socks = group()
    cfg = build_config({"id": VNI, "local": LOCAL, "dstport": socks[0].local_address[1], "nested": "fold",
                        "remote": [f"{ADDR[PEER]}:1"]})
    ep = Endpoint(cfg, clock=lambda: 100.0)
    ep.rx, ep.rx_more = socks[0], socks[1:]
    bad = [sender(ADDR[NOT_PEER]) for _ in range(40)]
    try:
        ep.filter_sources()
        for s in bad:
            s.sendto(b"not a peer", socks[0].local_address)
        assert ep._socket_drops() == len(bad)  # before the RX loop built its RxQueues
        ep.rxq = RxQueues(socks)
        assert ep._socket_drops() == len(bad) and ep.status()["rx"]["socket_drops"] == len(bad)
    finally:
        for s in [*bad, *socks]:
            s.close()


def test_a_port_held_by_another_group_is_refused():
    """check_port_free (called before the group binds): a second endpoint, or a leftover process, that holds
    the port with or without SO_REUSEPORT makes it fail as a single socket would, instead of joining it."""
    import errno

    from udpnest.io.udp import check_port_free

    g = group(2)
    port = g[0].local_address[1]
    try:
        with pytest.raises(OSError) as e:
            check_port_free(LOCAL, port)
        assert e.value.errno == errno.EADDRINUSE and f"{LOCAL}:{port}" in str(e.value)
        extra = UdpSocket(LOCAL, port, reuseport=True)  # what the check prevents: a silent joiner
        extra.close()
    finally:
        for x in g:
            x.close()
    plain = UdpSocket(LOCAL, 0)
    try:
        with pytest.raises(OSError, match="already in use"):
            check_port_free(LOCAL, plain.local_address[1])
    finally:
        plain.close()
    check_port_free(LOCAL, port)  # free again: no error
    check_port_free(LOCAL, 0)  # an ephemeral port (tests): nothing to check
