"""The native TX burst (csrc/txburst.c, udpnest.txburst): one C call per TAP wakeup must send exactly what
the per-frame loop (Endpoint._tx_loop + _tx_frame, native engine) sends, on the same socket, in the same
order, with the same counters and drops; and every frame it cannot handle goes back to Python.

No root: the TAP is a SOCK_SEQPACKET socketpair (one read = one frame) and each peer a UDP socket on a
loopback address; the source port of what a peer receives tells which TX socket sent it."""

from __future__ import annotations

import os
import random
import socket
import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from micro_fold_frames import MAC_A, gso_read, nested_frame
from udpnest import engine, peers, txburst
from udpnest.config import build_config
from udpnest.endpoint import Endpoint, flow_hash
from udpnest.io.tap import Tap
from udpnest.io.udp import UdpSocket
from udpnest.peers import Event, PeerState
from udpnest.wire.vnet import F_NEEDS_CSUM, GSO_TCPV4, GSO_UDP_L4, VnetHdr

pytestmark = pytest.mark.skipif(not engine.native_available(), reason="native core not built")

MAC_B2 = bytes.fromhex("020000000022")  # behind the second peer
MAC_UNKNOWN = bytes.fromhex("0200000000ee")
BCAST = b"\xff" * 6
AGEING = 300.0


def _fake_tap(sock: socket.socket) -> Tap:
    t = Tap.__new__(Tap)
    t.fd = os.dup(sock.fileno())
    return t


class _OneWakeup:
    """stop_event for exactly one TX loop round (the frames are already queued: poll returns at once)."""

    def __init__(self) -> None:
        self.calls = 0

    def is_set(self) -> bool:
        self.calls += 1
        return self.calls > 1

    def set(self) -> None:
        self.calls = 99


# -- frames ---------------------------------------------------------------------------------------------------


def _with_dst(read: bytes, dst: bytes, sport: int = 49152) -> bytes:
    b = bytearray(read)
    b[24:30] = dst
    b[24 + 34 : 24 + 36] = sport.to_bytes(2, "big")  # the outer UDP source port: another flow hash
    return bytes(b)


def ack(dst=MAC_A, seq=1, sport=49152) -> bytes:
    return _with_dst(bytes(24) + nested_frame(b"", seq=seq), dst, sport)


def ack_csum(dst=MAC_A, seq=1, sport=49152) -> bytes:
    """A CHECKSUM_PARTIAL ACK: the TX path finishes the inner TCP checksum."""
    f = bytearray(_with_dst(bytes(24) + nested_frame(b"", seq=seq), dst, sport))
    tcp = 24 + 14 + 20 + 8 + 8 + 14 + 20
    f[tcp + 16 : tcp + 18] = b"\x12\x34"
    f[:24] = VnetHdr(flags=F_NEEDS_CSUM, csum_start=tcp - 24, csum_offset=16).pack()
    return bytes(f)


def small(dst=MAC_A, n=100, seq=1, sport=49152) -> bytes:
    return _with_dst(bytes(24) + nested_frame(bytes(i & 0xFF for i in range(n)), seq=seq), dst, sport)


def sp(dst=MAC_A, n=1448 * 20, sport=49152) -> bytes:
    return _with_dst(gso_read(n), dst, sport)


def bad_vnet(dst=MAC_A) -> bytes:
    f = bytearray(ack(dst))
    f[1] = 0x09  # an unknown GSO type
    return bytes(f)


def truncated(dst=MAC_A) -> bytes:
    return bytes(24) + dst + b"\x02" * 4


def uso(dst=MAC_A) -> bytes:
    f = bytearray(sp(dst, 3000))
    f[:24] = VnetHdr(flags=F_NEEDS_CSUM, gso_type=GSO_UDP_L4, gso_size=1000, csum_start=34, csum_offset=6).pack()
    return bytes(f)


def plain_gso_frame(dst=MAC_A) -> bytes:
    """A TCP super-packet without a nested tunnel flag (plain_gso with no nested UDP)."""
    f = bytearray(sp(dst, 5000))
    f[:24] = VnetHdr(flags=F_NEEDS_CSUM, gso_type=GSO_TCPV4, gso_size=1448, csum_start=14 + 20 + 8 + 8 + 14 + 20,
                     csum_offset=16).pack()
    return bytes(f)


KINDS = {
    "ack": ack, "ack_csum": ack_csum, "small": lambda d, s: small(d, 700, sport=s), "sp": sp,
    "sp_small": lambda d, s: sp(d, 1000, s), "bad_vnet": lambda d, s: bad_vnet(d),
    "truncated": lambda d, s: truncated(d), "uso": lambda d, s: uso(d), "plain_gso": lambda d, s: plain_gso_frame(d),
}


def frame(kind: str, dst: bytes, sport: int) -> bytes:
    fn = KINDS[kind]
    if kind in ("ack", "ack_csum"):
        return fn(dst, seq=sport, sport=sport)
    if kind == "sp":
        return fn(dst, 1448 * 7, sport)
    return fn(dst, sport)


# -- the harness ----------------------------------------------------------------------------------------------


class Harness:
    """An endpoint (native engine, two TX sockets) towards two peers on loopback, the TAP a socketpair."""

    def __init__(self, burst: bool, monkeypatch) -> None:
        monkeypatch.setenv(txburst.ENV, "1" if burst else "0")
        self.rx = []
        for host in ("127.0.0.1", "127.0.0.2"):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((host, 0))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 23)
            s.setblocking(False)
            self.rx.append(s)
        remotes = [f"{s.getsockname()[0]}:{s.getsockname()[1]}" for s in self.rx]
        self.now = [100.0]
        cfg = build_config({"id": 7, "local": "127.0.0.1", "remote": remotes, "nested": "fold", "engine": "native",
                            "fallback": "plain", "fdb_ageing": AGEING})
        self.ep = ep = Endpoint(cfg, clock=lambda: self.now[0])
        self.keys = list(ep.peers)
        ep.tx = [UdpSocket("127.0.0.1", 0, gro=False, gso=True, bufsize=1 << 22) for _ in range(2)]
        self.a, self.b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.a.setblocking(False)
        self.b.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 23)
        ep.tap = _fake_tap(self.a)
        assert txburst.wanted(ep) is burst

    def learn(self, mac: bytes, peer: int) -> None:
        self.ep.fdb.learn(mac, self.keys[peer], self.now[0])

    def set_mode(self, peer: int, mode: str) -> None:
        """Through the prober's state machine (as replies and expiries do): fold, or the fallback."""
        p = self.ep.prober.peers[self.keys[peer]]
        if mode == "fold":
            p.valid_until = self.now[0] + 10.0
            if p.state is PeerState.UNKNOWN:
                p._go(Event.START)
            p._go(Event.REPLY)
        else:
            if p.state is PeerState.UNKNOWN:
                p._go(Event.START)
            p.fallback = mode
            p._go(Event.EXPIRE)

    def burst(self, reads: list[bytes]) -> list[tuple[int, int, bytes]]:
        for r in reads:
            self.b.send(r)
        return self.one_round()

    def one_round(self) -> list[tuple[int, int, bytes]]:
        """One TX loop round over what is queued: (peer, TX socket, datagram) in the order received."""
        self.ep.stop_event = _OneWakeup()
        self.ep._tx_loop()
        got = []
        for i, s in enumerate(self.rx):
            while True:
                try:
                    data, addr = s.recvfrom(65535)
                except BlockingIOError:
                    break
                got.append((i, [t.local_address[1] for t in self.ep.tx].index(addr[1]), data))
        return got

    def counters(self) -> dict:
        st = self.ep.tx_stats
        burst_only = ("time_frame_ns", "tx_burst_calls", "tx_burst_fast", "tx_burst_wakeups")
        c = {k: v for k, v in st.c.items() if v and k not in burst_only}
        return {"c": c, "drops": dict(st.drops), "hist": list(st.hist), "planner": dict(self.ep.planner.counters),
                "fdb": self.ep.fdb.stats()}

    def close(self) -> None:
        for s in self.rx + self.ep.tx:
            s.close()
        self.ep.tap.close()
        self.a.close()
        self.b.close()


def run(script, burst: bool, monkeypatch):
    """script: a list of steps: ("burst", [reads]) or (method name, *args) on the harness."""
    h = Harness(burst, monkeypatch)
    out = []
    try:
        for step in script:
            if step[0] == "burst":
                out.append(h.burst(step[1]))
            elif step[0] == "advance":
                h.now[0] += step[1]
            else:
                getattr(h, step[0])(*step[1:])
        return out, h.counters(), dict(h.ep.tx_stats.c)
    finally:
        h.close()


def both(script, monkeypatch):
    ref, ref_c, _ = run(script, False, monkeypatch)
    got, got_c, raw = run(script, True, monkeypatch)
    assert got == ref
    assert got_c == ref_c
    return ref, raw


# -- tests ----------------------------------------------------------------------------------------------------


def test_crc32_and_flow_hash_equal_zlib_and_the_endpoints():
    rnd = random.Random(1)
    for n in range(0, 300, 7):
        b = rnd.randbytes(n)
        assert engine._native.crc32(b) == zlib.crc32(b)
    for r in (ack(), sp(), ack(sport=1234), truncated() + bytes(60)):
        f = r[24:]
        assert engine._native.flow_hash(f) == flow_hash(memoryview(f))
    v6 = bytes(12) + b"\x86\xdd" + rnd.randbytes(60)
    assert engine._native.flow_hash(v6) == flow_hash(memoryview(v6)) != 0


def test_steady_state_acks_and_super_packets_in_every_mode(monkeypatch):
    script = [("learn", MAC_A, 0), ("learn", MAC_B2, 1), ("set_mode", 0, "fold"), ("set_mode", 1, "hint")]
    mixed = []
    for i in range(40):
        mixed += [ack(MAC_A, i, 40000 + i % 5), ack_csum(MAC_B2, i, 41000 + i % 3)]
        if i % 9 == 0:
            mixed += [sp(MAC_A, 1448 * (i % 30 + 1), 40000), sp(MAC_B2, 1448 * 5, 41001), plain_gso_frame(MAC_B2)]
    mixed += [sp(MAC_A, 64000, 40000), ack(MAC_A, 99, 40000), sp(MAC_B2, 64000, 41001)]  # > 44 rows: 2 sendmsg
    script += [("burst", mixed), ("set_mode", 0, "plain"), ("set_mode", 1, "fold"), ("burst", mixed),
               ("set_mode", 1, "hint"), ("set_mode", 0, "hint"), ("burst", mixed[:50])]
    ref, raw = both(script, monkeypatch)
    assert sum(len(b) for b in ref) > 3 * 80
    # the C burst really did the work: every frame but the inconsistent non-tunnel GSO ones (a drop: not_nested)
    bad = plain_gso_frame(MAC_B2)
    n_bad = 2 * mixed.count(bad) + mixed[:50].count(bad)
    assert raw["frames"] == len(mixed) * 2 + 50 and raw["tx_burst_fast"] == raw["frames"] - n_bad
    assert raw["mode_fold"] and raw["mode_plain"] and raw["mode_hint"]
    assert raw["sendmsg_calls"] > raw["super_packets"]  # some super-packets took two sendmsg(UDP_SEGMENT)


def test_more_than_a_batch_of_acks_and_two_sockets(monkeypatch):
    reads = [ack(MAC_A, i, 30000 + i) for i in range(200)]
    ref, raw = both([("learn", MAC_A, 0), ("set_mode", 0, "fold"), ("burst", reads)], monkeypatch)
    assert len(ref[0]) == 200 and {s for _, s, _ in ref[0]} == {0, 1}
    assert raw["tx_burst_fast"] == 200 and raw["sendmmsg_calls"] >= 4


def test_hand_back_frames_keep_their_place(monkeypatch):
    """Floods, unknown MACs, corrupt vnet headers, truncated frames and USO interleaved with the steady state."""
    reads = []
    for i in range(12):
        reads += [ack(MAC_A, i), ack(BCAST, i), sp(MAC_A, 1448 * 3), ack(MAC_UNKNOWN, i), bad_vnet(MAC_A),
                  truncated(MAC_A), ack_csum(MAC_B2, i), uso(MAC_A), small(MAC_B2, 300 + i)]
    ref, raw = both([("learn", MAC_A, 0), ("learn", MAC_B2, 1), ("set_mode", 0, "fold"), ("burst", reads)],
                    monkeypatch)
    assert raw["flooded"] == 24 and raw["tx_burst_fast"] == 12 * 4
    assert ref[0]


def test_fdb_expiry_and_fold_validity_between_bursts(monkeypatch):
    reads = [ack(MAC_A, 1), sp(MAC_A, 1448 * 4), ack(MAC_B2, 2)]
    script = [("learn", MAC_A, 0), ("learn", MAC_B2, 1), ("set_mode", 0, "fold"), ("set_mode", 1, "fold"),
              ("burst", reads),
              ("advance", 10.5),  # past valid_until: the fallback (plain), no fold any more
              ("burst", reads),
              ("advance", AGEING - 5.0), ("learn", MAC_B2, 1),  # MAC_A expires, MAC_B2 stays fresh
              ("burst", reads),
              ("learn", MAC_A, 1),  # learned again, behind the other peer
              ("burst", reads)]
    ref, raw = both(script, monkeypatch)
    assert raw["mode_fold"] == 3 and raw["flooded"] == 2
    assert [p for p, _, _ in ref[3]] == [1] * len(ref[3])


_STEP = st.one_of(
    st.tuples(st.just("frame"), st.sampled_from(sorted(KINDS)), st.sampled_from([MAC_A, MAC_B2, MAC_UNKNOWN, BCAST]),
              st.integers(40000, 40003)),
    st.tuples(st.just("set_mode"), st.integers(0, 1), st.sampled_from(["fold", "plain", "hint"])),
    st.tuples(st.just("advance"), st.sampled_from([0.5, 11.0, AGEING])),
    st.tuples(st.just("learn"), st.sampled_from([MAC_A, MAC_B2]), st.integers(0, 1)),
    st.tuples(st.just("cut")),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_STEP, min_size=1, max_size=40))
def test_random_sequences_equal_the_per_frame_loop(monkeypatch, steps):
    script = [("learn", MAC_A, 0), ("learn", MAC_B2, 1)]
    pending: list[bytes] = []
    for s in steps:
        if s[0] == "frame":
            pending.append(frame(s[1], s[2], s[3]))
            continue
        if pending:
            script.append(("burst", pending))
            pending = []
        if s[0] != "cut":
            script.append(s)
    if pending:
        script.append(("burst", pending))
    both(script, monkeypatch)


def test_fuzz_the_native_entry_every_frame_accounted(monkeypatch):
    """Random and mutated frames straight into tx_burst: no crash; each frame is sent (counted) or handed back."""
    h = Harness(True, monkeypatch)
    try:
        h.learn(MAC_A, 0)
        h.learn(MAC_B2, 1)
        h.set_mode(0, "fold")
        h.set_mode(1, "hint")
        ep = h.ep
        burst = txburst.TxBurst(ep)
        ep._batch = {}
        buf = bytearray(24 + 65536 + 64)
        rnd = random.Random(8)
        seeds = [ack(), ack_csum(MAC_B2), sp(), sp(MAC_B2, 3000), plain_gso_frame(), uso(), small(MAC_B2, 500)]
        total = handed = sent = 0
        for _round in range(60):
            reads = []
            for _ in range(rnd.randint(1, 40)):
                base = bytearray(rnd.choice(seeds))
                kind = rnd.random()
                if kind < 0.2:
                    base = bytearray(rnd.randbytes(rnd.randint(0, 200)))
                    if len(base) >= 30 and rnd.random() < 0.7:
                        base[24:30] = rnd.choice([MAC_A, MAC_B2])
                elif kind < 0.6:
                    for _ in range(rnd.randint(1, 8)):
                        base[rnd.randrange(len(base))] = rnd.randrange(256)
                elif kind < 0.8:
                    base = base[: rnd.randint(0, len(base))]
                    if len(base) >= 30:
                        base[24:30] = MAC_A
                else:
                    struct.pack_into("<H", base, rnd.choice([4, 6, 8, 20, 22]), rnd.randrange(65536))
                if not base:
                    base = bytearray(b"\x00")
                reads.append(bytes(base))
            for r in reads:
                h.b.send(r)
            total += len(reads)
            while True:
                snap, conf = burst.snapshot(h.now[0])
                rc, n, counts = engine._native.tx_burst(ep.tap.fd, buf, ep, snap, conf)
                burst.account(counts)
                sent += counts[0]
                if rc == engine._native.TXB_HANDBACK:
                    handed += 1
                    before = ep.tx_stats.c["frames"] + sum(ep.tx_stats.drops.values())
                    ep._tx_frame(memoryview(buf)[:n])  # counted as a frame, or dropped with a reason
                    assert ep.tx_stats.c["frames"] + sum(ep.tx_stats.drops.values()) > before
                elif rc == engine._native.TXB_EMPTY:
                    break
                else:
                    assert rc == engine._native.TXB_LIMIT, rc
            if ep._batch:
                ep._flush_batch()
        assert sent + handed == total and sent > 0 and handed > 0
        c = ep.tx_stats.c
        assert c["tx_burst_fast"] == sent
        assert c["frames"] >= sent
    finally:
        h.close()


def test_switch_off_and_python_engine_do_not_use_the_burst(monkeypatch):
    h = Harness(False, monkeypatch)
    try:
        h.learn(MAC_A, 0)
        h.burst([ack(MAC_A, 1)])
        assert "tx_burst_calls" not in h.ep.tx_stats.c
    finally:
        h.close()
    monkeypatch.setenv(txburst.ENV, "1")
    cfg = build_config({"id": 7, "local": "127.0.0.1", "remote": ["127.0.0.2"], "nested": "fold", "engine": "python"})
    assert not txburst.wanted(Endpoint(cfg))
    cfg = build_config({"id": 7, "local": "127.0.0.1", "remote": ["127.0.0.2"], "nested": "fold", "engine": "native",
                        "tx_path": "kernel"})
    ep = Endpoint(cfg)
    ep.tx = [object()]
    assert not txburst.wanted(ep)


def test_snapshot_rebuilds_on_versions_and_never_outlives_fold_validity(monkeypatch):
    h = Harness(True, monkeypatch)
    try:
        b = txburst.TxBurst(h.ep)
        h.learn(MAC_A, 0)
        s1, _ = b.snapshot(100.0)
        assert s1[0] == {MAC_A: 0} and s1[1][0][1] == 0  # plain: not probed yet
        assert b.snapshot(100.0)[0] is s1  # nothing changed: the same snapshot
        h.set_mode(0, "fold")
        s2, _ = b.snapshot(100.0)
        assert s2 is not s1 and s2[1][0][1] == 2
        v = peers.MODE_VERSION[0]
        assert b.snapshot(100.5)[0] is s2 and peers.MODE_VERSION[0] == v
        s3, _ = b.snapshot(110.5)  # past valid_until (100 + 10): rebuilt, plain again
        assert s3 is not s2 and s3[1][0][1] == 0
        h.learn(MAC_B2, 1)
        assert MAC_B2 in b.snapshot(110.5)[0][0]
        h.ep.fdb.forget_peer(h.keys[1])
        assert MAC_B2 not in b.snapshot(110.5)[0][0]
        assert MAC_A not in b.snapshot(100.0 + AGEING)[0][0]  # expired
    finally:
        h.close()


def test_a_malformed_snapshot_hands_back_never_crashes(monkeypatch):
    """The C entry trusts nothing in the snapshot: a bad peer index, mode or address hands the frame back."""
    h = Harness(True, monkeypatch)
    try:
        ep = h.ep
        ep._batch = {}
        buf = bytearray(24 + 65536 + 64)
        conf = txburst.TxBurst(ep).rebuild(100.0)[1]
        addr = ep.peers[h.keys[0]].sockaddr
        for peers_, idx in [(((addr, 2),), 5), (((addr, 2),), -1), (((addr, 7),), 0), ((("x",),), 0),
                            (((addr, 2),), "0")]:
            h.b.send(ack(MAC_A, 1))
            h.b.send(sp(MAC_A, 3000))
            snap = ({MAC_A: idx}, peers_, 0.0, 16)
            for _ in range(2):
                rc, n, counts = engine._native.tx_burst(ep.tap.fd, buf, ep, snap, conf)
                assert rc == engine._native.TXB_HANDBACK and counts[0] == 0, (peers_, idx)
            while True:  # empty the TAP
                rc, n, counts = engine._native.tx_burst(ep.tap.fd, buf, ep, ({}, (), 0.0, 16), conf)
                if rc == engine._native.TXB_EMPTY:
                    break
        ep._batch = {}
        with pytest.raises(TypeError):
            engine._native.tx_burst(ep.tap.fd, buf, ep, [], conf)
        with pytest.raises(ValueError):
            engine._native.tx_burst(ep.tap.fd, buf, ep, ({}, (), 0.0, 16), conf[:-1] + ((),))
    finally:
        h.close()


def test_the_c_batch_and_python_batch_stay_one_batch_across_hand_backs(monkeypatch):
    """Single datagrams the C burst batches and those Python's _tx_frame batches for a handed-back frame (a
    flood) go out in one sendmmsg per socket at the wakeup's end, in read order per peer: the C batch is
    handed to ep._batch at a hand-back and taken back by the next call, never flushed early."""
    reads = [ack(MAC_A if i % 2 == 0 else BCAST, i, 40000) for i in range(40)]
    ref, raw = both([("learn", MAC_A, 0), ("set_mode", 0, "fold"), ("burst", reads)], monkeypatch)
    assert len(ref[0]) == 20 + 2 * 20 and len({s for _, s, _ in ref[0]}) == 1
    assert raw["sendmmsg_calls"] == 1 and raw["tx_burst_fast"] == 20 and raw["flooded"] == 20


def csum_beyond(dst=MAC_A, seq=1) -> bytes:
    """A single CHECKSUM_PARTIAL frame whose csum_start + csum_offset lies beyond it: finish_csum rejects it."""
    f = bytearray(ack_csum(dst, seq))
    f[:24] = VnetHdr(flags=F_NEEDS_CSUM, csum_start=len(f) - 24 - 10, csum_offset=16).pack()
    return bytes(f)


def test_a_reject_in_the_core_is_handed_back_and_counted_once(monkeypatch):
    """finish_csum's and vnet_check's rejects inside the C burst: the frame goes back to Python, which drops it
    with its reason, once; the frames around it go out in order as without the burst."""
    reads = []
    for i in range(10):
        reads += [ack(MAC_A, i), csum_beyond(MAC_A, i), ack_csum(MAC_A, i), bad_vnet(MAC_B2), sp(MAC_A, 1448 * 2)]
    script = [("learn", MAC_A, 0), ("learn", MAC_B2, 1), ("set_mode", 0, "fold"), ("burst", reads)]
    ref, ref_c, _ = run(script, False, monkeypatch)
    got, got_c, raw = run(script, True, monkeypatch)
    assert got == ref and got_c == ref_c
    drops = {getattr(k, "value", k): v for k, v in got_c["drops"].items()}
    assert drops["bad_vnet"] == 20
    assert raw["tx_burst_fast"] == 30


def test_frames_the_core_defers_are_handed_back_unmodified(monkeypatch):
    """Ports the C side cannot parse: every frame whose build needs them (fold, hint) is handed back exactly as
    read (a finished checksum is in a copy, never in the read buffer); a plain peer's frames still go out."""
    h = Harness(True, monkeypatch)
    try:
        ep = h.ep
        ep._batch = {}
        buf = bytearray(24 + 65536 + 64)
        conf = txburst.TxBurst(ep).rebuild(100.0)[1]
        bad_conf = conf[:2] + (None,) + conf[3:]
        addr = ep.peers[h.keys[0]].sockaddr
        for mode in (2, 1):
            for read in (ack_csum(MAC_A, 3), ack(MAC_A, 4), sp(MAC_A, 1448 * 3)):
                h.b.send(read)
                rc, n, counts = engine._native.tx_burst(ep.tap.fd, buf, ep, ({MAC_A: 0}, ((addr, mode),), 0.0, 16),
                                                        bad_conf)
                assert rc == engine._native.TXB_HANDBACK and counts[0] == 0
                assert bytes(buf[:n]) == read
        for read in (ack_csum(MAC_A, 3), sp(MAC_A, 1448 * 3)):
            h.b.send(read)
        rc, n, counts = engine._native.tx_burst(ep.tap.fd, buf, ep, ({MAC_A: 0}, ((addr, 0),), 0.0, 16), bad_conf)
        assert rc == engine._native.TXB_EMPTY and counts[0] == 2 and counts[3] == 1
    finally:
        h.close()


def test_send_errors_count_the_same(monkeypatch):
    """Closed TX sockets: every sendmmsg and sendmsg fails (EBADF); the same send_error drops and counters."""

    def script_run(burst):
        h = Harness(burst, monkeypatch)
        try:
            h.learn(MAC_A, 0)
            h.learn(MAC_B2, 1)
            h.set_mode(0, "fold")
            for s in h.ep.tx:
                s.sock.close()
            reads = [ack(MAC_A, i, 40000 + i) for i in range(70)] + [sp(MAC_A, 1448 * 3), ack(MAC_B2, 1), sp(MAC_B2)]
            h.burst(reads)
            return h.counters()
        finally:
            h.close()

    ref, got = script_run(False), script_run(True)
    assert got == ref
    assert ref["drops"]["send_error"] == 70 + 2 + 1 and ref["c"]["frames"] == 73


def test_the_native_side_hands_back_once_the_snapshot_deadline_passed(monkeypatch):
    """With the endpoint on the monotonic clock the C side checks the deadline itself before each frame."""
    import time

    h = Harness(True, monkeypatch)
    try:
        ep = h.ep
        ep.clock = time.monotonic
        h.learn(MAC_A, 0)
        ep.fdb.learn(MAC_A, h.keys[0], time.monotonic())
        b = txburst.TxBurst(ep)
        snap, conf = b.rebuild(time.monotonic())
        assert time.monotonic() < snap[2] <= time.monotonic() + txburst.MAX_AGE  # the C side gets the deadline
        ep._batch = {}
        buf = bytearray(24 + 65536 + 64)
        h.b.send(ack(MAC_A, 1))
        rc, n, counts = engine._native.tx_burst(ep.tap.fd, buf, ep, snap, conf)
        assert rc == engine._native.TXB_EMPTY and counts[0] == 1
        h.b.send(ack(MAC_A, 2))
        past = (snap[0], snap[1], time.monotonic() - 0.001, snap[3])
        rc, n, counts = engine._native.tx_burst(ep.tap.fd, buf, ep, past, conf)
        assert rc == engine._native.TXB_HANDBACK and counts[0] == 0 and bytes(buf[:n]) == ack(MAC_A, 2)
    finally:
        h.close()


# -- the linger: one call for many wakeups ----------------------------------------------------------------------


class _Loop:
    """Endpoint._tx_loop in a thread (a real stop_event), with txburst.LINGER_NS set for it."""

    def __init__(self, h: Harness, linger_ns: int, monkeypatch) -> None:
        import threading

        monkeypatch.setattr(txburst, "LINGER_NS", linger_ns)
        self.h = h
        self.error: list[BaseException] = []
        h.ep.stop_event = threading.Event()

        def body():
            try:
                h.ep._tx_loop()
            except BaseException as e:  # pragma: no cover - reported by the test
                self.error.append(e)

        self.t = threading.Thread(target=body, daemon=True)
        self.t.start()

    def stop(self, timeout: float = 10.0) -> None:
        """The stop path close() takes: the flag byte (and the event); the thread must end."""
        self.h.ep._stop_flag[0] = 1
        self.t.join(timeout)
        alive = self.t.is_alive()
        self.h.ep.stop_event.set()
        self.t.join(timeout)
        self.h.ep._stop_flag[0] = 0
        assert not alive, "the TX thread did not return after the stop flag was set"
        assert not self.error, self.error


def _recv(h: Harness, n: int, timeout: float = 10.0) -> list[tuple[int, bytes]]:
    """n datagrams from the peers' sockets as (peer, datagram), waiting up to timeout (bounded, not timed)."""
    import select
    import time

    got: list[tuple[int, bytes]] = []
    end = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < end:
        r, _, _ = select.select(h.rx, [], [], 0.05)
        for s in r:
            while True:
                try:
                    got.append((h.rx.index(s), s.recv(65535)))
                except BlockingIOError:
                    break
    return got


def _reference(reads: list[bytes], monkeypatch, script=()) -> list[tuple[int, bytes]]:
    """What the per-frame Python loop sends to each peer for the same reads (sorted: batching may differ)."""
    out, _, _ = run([("learn", MAC_A, 0), ("learn", MAC_B2, 1), ("set_mode", 0, "fold"), *script,
                     ("burst", reads)], False, monkeypatch)
    return sorted((p, d) for p, _, d in out[0])


def test_bursts_within_the_linger_window_go_out_in_one_call(monkeypatch):
    """Three bursts of ACKs 30 ms apart: one native call (it waits in ppoll between them), the same datagrams
    as the per-frame loop; the datagrams leave before the call returns (flushed before each wait)."""
    import threading
    import time

    bursts = [[ack(MAC_A, 10 * j + i, 40000 + i) for i in range(5)] + [ack_csum(MAC_B2, j, 41000)] for j in range(3)]
    reads = [r for b in bursts for r in b]
    ref = _reference(reads, monkeypatch)
    h = Harness(True, monkeypatch)
    try:
        h.learn(MAC_A, 0)
        h.learn(MAC_B2, 1)
        h.set_mode(0, "fold")
        for r in bursts[0]:
            h.b.send(r)

        def sender():
            for b in bursts[1:]:
                time.sleep(0.03)
                for r in b:
                    h.b.send(r)

        s = threading.Thread(target=sender)
        loop = _Loop(h, 60_000_000_000, monkeypatch)  # a minute: only the stop flag ends this call
        s.start()
        got = _recv(h, len(reads))
        s.join()
        assert loop.t.is_alive()  # everything arrived while the call still lingers
        loop.stop()
        c = h.ep.tx_stats.c
        assert sorted(got) == ref
        assert c["frames"] == c["tx_burst_fast"] == len(reads) and not h.ep.tx_stats.drops
        assert c["tx_burst_calls"] == 1  # one C call carried the three wakeups
        assert c["tx_burst_wakeups"] >= 2
    finally:
        h.close()


def test_a_short_linger_returns_empty_and_a_zero_linger_is_one_call_per_wakeup(monkeypatch):
    """The window ends the call: EMPTY (the loop's next poll takes the next wakeup), nothing lost."""
    h = Harness(True, monkeypatch)
    try:
        h.learn(MAC_A, 0)
        ep = h.ep
        ep._batch = {}
        b = txburst.TxBurst(ep)
        buf = bytearray(24 + 65536 + 64)
        h.b.send(ack(MAC_A, 1))
        snap, conf = b.snapshot(h.now[0])
        rc, n, counts = engine._native.tx_burst(ep.tap.fd, buf, ep, snap, conf, 20_000_000, ep._stop_flag,
                                                txburst.GENERATION)
        assert rc == engine._native.TXB_EMPTY and counts[0] == 1 and counts[txburst.WAIT_NS] > 0
        assert not ep._batch  # flushed
        assert len(_recv(h, 1)) == 1
        h.b.send(ack(MAC_A, 2))
        rc, n, counts = engine._native.tx_burst(ep.tap.fd, buf, ep, snap, conf, 0, ep._stop_flag,
                                                txburst.GENERATION)
        assert rc == engine._native.TXB_EMPTY and counts[0] == 1 and counts[txburst.WAIT_NS] == 0
        assert len(_recv(h, 1)) == 1
    finally:
        h.close()


def test_the_stop_flag_ends_a_lingering_call(monkeypatch):
    """close() sets ep._stop_flag: a call lingering for a minute returns (TXB_STOP) and the TX thread ends
    (joined within a generous bound; before the linger a TX thread ignored the flag until stop_event)."""
    h = Harness(True, monkeypatch)
    try:
        h.learn(MAC_A, 0)
        h.b.send(ack(MAC_A, 1))
        loop = _Loop(h, 60_000_000_000, monkeypatch)
        assert len(_recv(h, 1)) == 1
        assert loop.t.is_alive()
        h.ep._stop_flag[0] = 1
        loop.t.join(10.0)
        assert not loop.t.is_alive()
        assert h.ep.stop_event.is_set()  # the flag stops the endpoint's TX loop for good
        loop.stop()
        assert h.ep.tx_stats.c["tx_burst_calls"] == 1
        # and directly: the flag already set, nothing is read
        h.ep._stop_flag[0] = 1
        h.b.send(ack(MAC_A, 2))
        ep, buf = h.ep, bytearray(24 + 65536 + 64)
        snap, conf = txburst.TxBurst(ep).snapshot(h.now[0])
        rc, n, counts = engine._native.tx_burst(ep.tap.fd, buf, ep, snap, conf, 60_000_000_000, ep._stop_flag,
                                                txburst.GENERATION)
        assert rc == engine._native.TXB_STOP and counts[0] == 0
        h.ep._stop_flag[0] = 0
        assert engine._native.tx_burst(ep.tap.fd, buf, ep, snap, conf)[2][0] == 1  # it stayed queued
    finally:
        h.close()


def test_fdb_changes_during_the_linger_are_honoured_for_the_next_frame(monkeypatch):
    """While one call lingers: a MAC moves to the other peer, a new MAC is learned, a peer stops folding.
    Each next frame goes where (and how) the per-frame loop would send it, without a Python frame."""
    h = Harness(True, monkeypatch)
    try:
        h.learn(MAC_A, 0)
        h.set_mode(0, "fold")
        h.set_mode(1, "fold")
        h.b.send(ack(MAC_A, 1))
        loop = _Loop(h, 60_000_000_000, monkeypatch)
        got = _recv(h, 1)
        assert [p for p, _ in got] == [0]
        h.learn(MAC_A, 1)  # moved (the main loop learns it from the RX process)
        h.b.send(ack(MAC_A, 2))
        got += _recv(h, 1)
        h.learn(MAC_B2, 0)  # a new MAC
        h.b.send(ack(MAC_B2, 3))
        got += _recv(h, 1)
        h.set_mode(0, "plain")  # the prober: peer 0 no longer folds
        h.b.send(ack(MAC_B2, 4))
        got += _recv(h, 1)
        assert loop.t.is_alive()
        loop.stop()
        assert not _recv(h, 1, timeout=0.2)  # nothing flooded, nothing twice
        c = h.ep.tx_stats.c
        assert [p for p, _ in got] == [0, 1, 0, 0]
        assert c["frames"] == c["tx_burst_fast"] == 4 and not c.get("flooded")
        assert c["mode_fold"] == 3 and c["mode_plain"] == 1
        assert 2 <= c["tx_burst_calls"] <= 1 + 3 + 3  # the generation moved: C returned, Python rebuilt
    finally:
        h.close()
    # the same datagrams as the per-frame loop after the same changes
    ref = run([("learn", MAC_A, 0), ("set_mode", 0, "fold"), ("set_mode", 1, "fold"), ("burst", [ack(MAC_A, 1)]),
               ("learn", MAC_A, 1), ("burst", [ack(MAC_A, 2)]), ("learn", MAC_B2, 0), ("burst", [ack(MAC_B2, 3)]),
               ("set_mode", 0, "plain"), ("burst", [ack(MAC_B2, 4)])], False, monkeypatch)[0]
    assert got == [(p, d) for out in ref for p, _, d in out]


def test_a_moved_generation_returns_before_reading(monkeypatch):
    """A snapshot built under an older generation: TXB_STALE, the frame stays queued for the rebuilt one."""
    from udpnest import generation

    h = Harness(True, monkeypatch)
    try:
        h.learn(MAC_A, 0)
        ep = h.ep
        ep._batch = {}
        b = txburst.TxBurst(ep)
        buf = bytearray(24 + 65536 + 64)
        snap, conf = b.snapshot(h.now[0])
        assert snap[4] == generation.WORD[0]
        generation.bump()
        h.b.send(ack(MAC_A, 1))
        rc, n, counts = engine._native.tx_burst(ep.tap.fd, buf, ep, snap, conf, 0, None, txburst.GENERATION)
        assert rc == engine._native.TXB_STALE and counts[0] == 0
        snap2, conf = b.snapshot(h.now[0])
        assert snap2 is not snap and snap2[4] == generation.WORD[0]
        rc, n, counts = engine._native.tx_burst(ep.tap.fd, buf, ep, snap2, conf, 0, None, txburst.GENERATION)
        assert rc == engine._native.TXB_EMPTY and counts[0] == 1
        with pytest.raises(ValueError):
            engine._native.tx_burst(ep.tap.fd, buf, ep, snap2, conf, 0, None, bytearray(4))
        with pytest.raises(ValueError):
            engine._native.tx_burst(ep.tap.fd, buf, ep, snap2, conf, 0, bytearray(0), None)
    finally:
        h.close()


def test_the_generation_moves_with_every_change_a_snapshot_depends_on():
    """Learned, moved, expired, forgotten FDB entries, peer state changes and both reload phases write a new
    value (a refresh of an entry that stays does not); the TX burst's snapshot records it."""
    from test_service import NEW, PEER, cfg, ep_with_clock
    from udpnest import generation
    from udpnest.fdb import Fdb
    from udpnest.service import finish_reload

    word = generation.WORD

    def moved(fn) -> bool:
        before = word[0]
        fn()
        return word[0] != before

    f = Fdb(16, 10.0)
    assert moved(lambda: f.learn(MAC_A, "p", 0.0))
    assert not moved(lambda: f.learn(MAC_A, "p", 1.0))  # a refresh: the snapshot stays valid
    assert moved(lambda: f.learn(MAC_A, "q", 1.0))
    assert not moved(lambda: f.lookup(MAC_A, 2.0))
    assert moved(lambda: f.lookup(MAC_A, 20.0))  # expired
    f.learn(MAC_B2, "q", 20.0)
    assert moved(lambda: f.forget_peer("q"))
    assert not moved(lambda: f.forget_peer("q"))
    ep = ep_with_clock()
    p = ep.prober.peers[PEER]
    assert moved(lambda: p._go(Event.START) if p.state is PeerState.UNKNOWN else p._go(Event.EXPIRE))
    assert moved(lambda: ep.reload(cfg((PEER, NEW))))
    assert moved(lambda: finish_reload(ep, force=True))
    b = txburst.TxBurst(ep)
    assert b.snapshot(ep.clock())[0][4] == word[0]
