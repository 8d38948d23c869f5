"""Coalescing across one-datagram reads (issue 10): consecutive single-datagram reads of one TCP flow are held
and merged like the reads of a multi-datagram UDP_GRO read (rxdriver.RxDriver, rxpipe.single_run/merge).

Before: one TAP write (zero vnet header) per datagram.  Now: one super-packet for a run of consecutive
segments, byte-identical to what one coalesced read of the same datagrams gives; anything that breaks the
run (an ACK, another flow, a sequence gap, PSH, a bad checksum, another peer) ends it, and every byte is
still delivered in order.  A held single that nothing continued goes out exactly as before.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

import packets as P
from test_engine_diff_rx import OTHER, PEER, VNI, datagrams, same, super_frame
from udpnest.engine import native_available
from udpnest.fold import DEFAULT_PORTS, find_levels
from udpnest.gso import tcp_layout
from udpnest.rxdriver import RxDriver
from udpnest.rxpipe import _frame_info, receive
from udpnest.wire.vnet import ZERO_VNET_HDR

ENGINES = ["python"] + (["native"] if native_available() else [])
MODES = ["plain", "hint", "fold"]
MSS = 1200  # every datagram within the 1472-byte path MTU (a larger one would be a "whole" super-packet)
N = 10  # full-sized segments before the short last one


def flow(mode: str, *, seed: int = 1, payload: int = N * MSS + 333, sport: int = 40000, v6=(False, False),
         flags: str = "PA", seq: int = 1000, ident: int = 77) -> list[bytes]:
    """The datagrams a sender cuts one super-packet of one TCP flow into (N full ones, a short last one)."""
    rng = random.Random(f"{mode}{seed}{v6}")
    inner = P.Inner(ip=P.IPSpec(v6=v6[1], ident=ident), payload=rng.randbytes(payload), flags=flags, sport=sport,
                    seq=seq)
    frame = P.frame([P.Tunnel(ip=P.IPSpec(v6=v6[0], ident=ident + 1000), udp_csum=True)], inner)
    dgs, _ = datagrams(rng, frame, mode, MSS)
    assert len(dgs) == -(-payload // MSS) and all(len(d) <= 1472 for d in dgs)
    return dgs


def ack(mode: str) -> bytes:
    rng = random.Random(mode)
    return datagrams(rng, super_frame(rng, 1, 0), mode, MSS)[0][0]


def run(engine: str, reads, *, old: bool = False) -> tuple[list, RxDriver]:
    """Reads (datagram or (buffer, gso)) through a driver, the loop's way: flush when nothing is held.
    ``old``: without the single-datagram path (today's main)."""
    d = RxDriver(peers={PEER, OTHER}, vni=VNI, engine=engine)
    if old:
        d._single_candidate = lambda *a: False
    writes = []
    for r in reads:
        buf, gso, key = (r, 0, PEER) if isinstance(r, bytes) else r
        b = bytearray(buf) + bytearray(64)
        out = d.read(b, len(buf), gso, key)
        writes += [(w.vnet, b"".join(bytes(p) for p in w.parts), w.kind, w.segments, k) for w, k in out.writes]
        b[:] = b"\x5a" * len(b)  # the buffer is reused: nothing written may point into it
    writes += [(w.vnet, b"".join(bytes(p) for p in w.parts), w.kind, w.segments, k) for w, k in d.flush()]
    return writes, d


def tcp_payloads(writes) -> bytes:
    """The TCP payload bytes of the writes, in write order."""
    out = b""
    for _, frame, *_ in writes:
        lay = tcp_layout(frame, tuple(lv.udp_off for lv in find_levels(frame, ports=DEFAULT_PORTS, max_levels=3)))
        out += frame[lay.hdr_len :]
    return out


def check_delivered(engine: str, reads) -> list[int]:
    """Every byte in order as without the single path, every datagram accounted for, both engines equal;
    returns the segments per write."""
    new, d = run(engine, reads)
    old, _ = run(engine, reads, old=True)
    assert tcp_payloads(new) == tcp_payloads(old)
    assert sum(w[3] for w in new) + sum(d.drops.values()) == len(reads) == len(old)
    same([(r, len(r), 0, PEER) if isinstance(r, bytes) else (r[0], len(r[0]), r[1], r[2]) for r in reads])
    return [w[3] for w in new]


def set_psh(dg: bytes, mode: str) -> bytes:
    """The datagram with PSH set, its TCP checksum adjusted (the segment still sums to the same)."""
    b = bytearray(dg)
    info = _frame_info(memoryview(b), 0xFF4E, DEFAULT_PORTS)
    t = info.G + info.layout.tcp
    assert not b[t + 13] & 0x08
    b[t + 13] |= 0x08
    s = (~int.from_bytes(b[t + 16 : t + 18], "big") & 0xFFFF) + 0x0008
    s = (s & 0xFFFF) + (s >> 16)
    b[t + 16 : t + 18] = (~s & 0xFFFF).to_bytes(2, "big")
    return bytes(b)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("v6", [(False, False), (True, True)])
def test_singles_merge_into_what_one_coalesced_read_gives(engine, mode, v6):
    dgs = flow(mode, v6=v6)
    writes, d = run(engine, dgs)
    # the same datagrams as one UDP_GRO read
    whole = b"".join(dgs)
    one, _ = run(engine, [(whole, len(dgs[0]), PEER)])
    assert [w[3] for w in writes] == [N + 1]  # today: N + 1 writes of one segment each
    assert writes == one
    assert writes[0][0] != ZERO_VNET_HDR
    assert tcp_payloads(writes) == tcp_payloads(run(engine, dgs, old=True)[0])
    c = d.counts
    assert (c["merged_reads"], c["coalesce_single_merged"], c["reads_per_super_packet_3"]) == (N, N + 1, 1)
    assert not d.drops
    same([(dg, len(dg), 0, PEER) for dg in dgs])


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("mode", MODES)
def test_lone_single_is_written_as_before(engine, mode):
    dg = flow(mode)[0]
    new, d = run(engine, [dg])
    old, d_old = run(engine, [dg], old=True)
    assert new == old and len(new) == 1 and new[0][0] == ZERO_VNET_HDR
    ref = receive(dg, len(dg), 0, vni=VNI).writes
    assert new[0][1] == b"".join(bytes(p) for p in ref[0].parts)
    assert d.counts == d_old.counts and d.drops == d_old.drops


@pytest.mark.parametrize("engine", ENGINES)
def test_fold_template_learned_by_a_replayed_single(engine):
    """A held FOLD single that nothing continued goes through the one-datagram path at flush: the native
    engine learns its template there (as before), so the following ACKs stay in C."""
    dg = flow("fold")[0]
    acks = [ack("fold") for _ in range(3)]
    new, d = run(engine, [dg, *acks])
    old, d_old = run(engine, [dg, *acks], old=True)
    assert new == old and d.counts == d_old.counts


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case,expect", [
    ("ack", [5, 1, N + 1 - 5]),
    ("other-flow", [5, 1, N + 1 - 5]),
    ("other-peer", [5, N + 1 - 5]),
    ("gap", [4, N + 1 - 5]),
    ("psh", [5, N + 1 - 5]),
    ("bad-csum", [4, 1, N + 1 - 5]),
])
def test_run_breakers(engine, mode, case, expect):
    dgs = flow(mode)
    reads: list = list(dgs)
    if case == "ack":
        reads.insert(5, ack(mode))
    elif case == "other-flow":
        reads.insert(5, flow(mode, seed=2, sport=40001)[0])
    elif case == "other-peer":
        reads[5:] = [(r, 0, OTHER) for r in reads[5:]]
    elif case == "gap":
        del reads[4]
    elif case == "psh":
        reads[4] = set_psh(reads[4], mode)
    elif case == "bad-csum":
        b = bytearray(reads[4])
        b[-7] ^= 0x10
        reads[4] = bytes(b)
    got = check_delivered(engine, reads)
    assert got == expect, got


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("split", [3, 7])
def test_coalesced_read_and_singles_mix(engine, mode, split):
    """A multi-datagram read continued by singles, and singles continued by a multi-datagram read."""
    dgs = flow(mode)
    row = len(dgs[0])
    expected, _ = run(engine, [(b"".join(dgs), row, PEER)])
    for reads in ([(b"".join(dgs[:split]), row, PEER), *dgs[split:]],
                  [*dgs[:split], (b"".join(dgs[split:]), row, PEER)]):
        writes, d = run(engine, reads)
        assert writes == expected, [w[3] for w in writes]
        assert d.counts["merged_reads"] == len(reads) - 1
        assert d.counts["coalesce_single_merged"] == sum(isinstance(r, bytes) for r in reads)
        same([(r, len(r), 0, PEER) if isinstance(r, bytes) else (r[0], len(r[0]), r[1], r[2]) for r in reads])


@pytest.mark.parametrize("engine", ENGINES)
def test_sixty_four_kb_limit(engine):
    """Singles stop merging at the 64 KB a super-packet may carry; the rest starts a new run."""
    dgs = flow("plain", payload=50 * MSS, flags="A") + flow("plain", payload=30 * MSS, flags="A", seq=1000 + 50 * MSS,
                                                             ident=77 + 50)
    got = check_delivered(engine, dgs)
    assert got == [54, 26]  # 54 * 1200 bytes + headers <= 65535


@pytest.mark.parametrize("engine", ENGINES)
def test_acks_skip_the_single_path(engine, monkeypatch):
    """Pure ACKs cost one length comparison: no parse for the single path."""
    d = RxDriver(peers={PEER}, vni=VNI, engine=engine)
    calls = Counter()
    orig = d._single_run
    monkeypatch.setattr(d, "_single_run", lambda *a: calls.update(["x"]) or orig(*a))
    for _ in range(5):
        a = ack("plain")
        assert len(d.read(bytearray(a), len(a), 0, PEER).writes) == 1
    assert not calls and not d.holding
