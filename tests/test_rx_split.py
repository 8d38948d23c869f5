"""Splitting a read that does not coalesce whole (rxpipe.split_plan): the maximal runs become super-packets.

A receiving veth's UDP GRO hands over the end of one GSO-partial train and the start of the next as one
read: each train has its own fixed nested IPv4 ID (no DF, as Linux's geneve GSO partial sends it), so the
ID rule breaks at the train boundary; or a PSH ends a burst in the middle of a read; or one row has a bad
checksum.  Before: the whole read went the one-datagram way (one TAP write per datagram).  Now: the read is
cut at each row that breaks the run; each maximal run of 2+ rows is a super-packet byte-identical to
coalescing those rows as a read of their own, a row that cannot be in a run goes the one-datagram way (the
workload's kernel verifies its checksum), order is kept, and both engines agree.
"""

from __future__ import annotations

import random

import pytest

import packets as P
from test_engine_diff_rx import PEER, VNI, datagrams, same
from udpnest.engine import native_available
from udpnest.rxdriver import RxDriver
from udpnest.rxpipe import Outcome, receive
from udpnest.wire.vnet import ZERO_VNET_HDR

ENGINES = ["python"] + (["native"] if native_available() else [])
MSS = 1200
N = 8  # segments per train


class _NoExtraOption(random.Random):
    def random(self) -> float:  # datagrams() adds someone else's option below 0.1: never here
        return 0.5


def train(mode: str, *, seq: int, nested_id: int, inner_id: int, flags: str = "A", segs: int = N,
          short: int = 0, seed: int = 1, nested_df: bool = False) -> tuple[list[bytes], int]:
    """The datagrams of one super-packet of ``segs`` full segments (+ ``short`` bytes in a last one) and
    their row length: a nested VXLAN level with a fixed ID without DF (hint: Linux's GSO partial)."""
    rng = random.Random(f"{mode}{seed}{seq}")
    inner = P.Inner(ip=P.IPSpec(ident=inner_id), payload=rng.randbytes(segs * MSS + short), flags=flags, seq=seq)
    frame = P.frame([P.Tunnel(ip=P.IPSpec(ident=nested_id, df=nested_df), udp_csum=True)], inner)
    dgs, row = datagrams(_NoExtraOption(), frame, mode, MSS)
    assert len(dgs) == segs + (1 if short else 0) and all(len(d) <= 1472 for d in dgs)
    return dgs, row


def two_trains(mode: str, *, flags_a: str = "A", id_b: int = 0x2345, short_b: int = 500):
    a, row = train(mode, seq=1000, nested_id=0x1234, inner_id=100, flags=flags_a)
    b, _ = train(mode, seq=1000 + N * MSS, nested_id=id_b, inner_id=100 + N, short=short_b, seed=2)
    return a, b, row


def drive(engine: str, reads) -> tuple[list, RxDriver]:
    """(buffer, gso) reads through a driver; returns (vnet, frame bytes, segments) per write, in order."""
    d = RxDriver(peers={PEER}, vni=VNI, engine=engine)
    writes = []
    for buf, gso in reads:
        b = bytearray(buf) + bytearray(64)
        out = d.read(b, len(buf), gso, PEER)
        writes += [(w.vnet, b"".join(bytes(p) for p in w.parts), w.segments) for w, _ in out.writes]
        b[:] = b"\x5a" * len(b)  # the buffer is reused: nothing written may point into it
    writes += [(w.vnet, b"".join(bytes(p) for p in w.parts), w.segments) for w, _ in d.flush()]
    return writes, d


def own(rows: list[bytes], row: int) -> tuple:
    """The super-packet these rows make as a read of their own (the reference, not held)."""
    buf = b"".join(rows)
    res = receive(buf, len(buf), row, vni=VNI)
    assert res.outcome is Outcome.COALESCED, res.outcome
    [w] = res.writes
    return w.vnet, b"".join(bytes(p) for p in w.parts), w.segments


def single(dg: bytes) -> tuple:
    res = receive(dg, len(dg), 0, vni=VNI)
    [w] = res.writes
    assert w.vnet == ZERO_VNET_HDR
    return w.vnet, b"".join(bytes(p) for p in w.parts), 1


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("mode", ["plain", "hint", "fold"])
def test_two_trains_in_one_read(engine, mode):
    """End of one train + start of the next (nested IDs 0x1234 then 0x2345, fixed, no DF): two super-packets,
    each byte-identical to its train coalesced alone.  Before: 2N+1 one-datagram writes (coalesce_ids)."""
    a, b, row = two_trains(mode)
    buf = b"".join(a + b)
    writes, d = drive(engine, [(buf, row)])
    assert writes == [own(a, row), own(b, row)]
    c = d.counts
    # fold: the nested IPv4 header is carried in the Geneve header, which must be identical (hdr_mismatch)
    assert c["coalesce_split"] == 1 and c["coalesce_coalesced"] == 0
    assert c["coalesce_hdr_mismatch" if mode == "fold" else "coalesce_ids"] == 1
    same([(buf, len(buf), row, PEER)])


@pytest.mark.parametrize("engine", ENGINES)
def test_split_read_continues_the_held_run(engine):
    """First read: the first half of train A (held); second read: the rest of A and the start of B.  The
    first piece merges with the held run (A as one super-packet of 2 reads), B is its own."""
    a, b, row = two_trains("hint")
    r1, r2 = b"".join(a[:3]), b"".join(a[3:] + b)
    writes, d = drive(engine, [(r1, row), (r2, row)])
    assert writes == [own(a, row), own(b, row)]
    assert d.counts["merged_reads"] == 1 and d.counts["reads_per_super_packet_2"] == 1
    assert d.counts["coalesce_split"] == 1


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("mode", ["plain", "hint"])
def test_psh_mid_read(engine, mode):
    """A PSH on row N-1 (train A ends a burst), the next burst in the same read (same nested ID): a prefix
    super-packet including the PSH row, the rest as a run."""
    a, b, row = two_trains(mode, flags_a="PA", id_b=0x1234)
    buf = b"".join(a + b)
    writes, d = drive(engine, [(buf, row)])
    assert writes == [own(a, row), own(b, row)]
    assert d.counts["coalesce_split"] == 1 and d.counts["coalesce_flags"] == 1
    same([(buf, len(buf), row, PEER)])


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("k", [0, 1, 4, N - 2, N - 1])
def test_bad_checksum_row(engine, k):
    """A payload byte flipped in row k of one train: rows before it a run, row k one datagram with a zero
    vnet header (the workload's kernel sees the bad checksum and drops it), the rows after it a run; a run
    needs 2 rows, so a lone row beside the bad one goes the one-datagram way too."""
    rows, row = train("hint", seq=5000, nested_id=0x777, inner_id=9, segs=N, short=300)
    bad = bytearray(rows[k])
    bad[-7] ^= 0x10
    rows = rows[:k] + [bytes(bad)] + rows[k + 1 :]
    buf = b"".join(rows)
    writes, d = drive(engine, [(buf, row)])
    want = []
    if k >= 2:
        want.append(own(rows[:k], row))
    elif k == 1:
        want.append(single(rows[0]))
    want.append(single(rows[k]))
    rest = rows[k + 1 :]
    want.append(own(rest, row) if len(rest) >= 2 else single(rest[0]))
    assert writes == want
    assert d.counts["coalesce_split"] == 1 and d.counts["coalesce_csum"] == 1
    assert sum(d.drops.values()) == 0
    same([(buf, len(buf), row, PEER)])


@pytest.mark.parametrize("engine", ENGINES)
def test_no_run_no_split(engine):
    """Every row a different train (no two consecutive rows coalesce): no split, every row one datagram, as
    before."""
    rows = []
    for i in range(4):
        t, row = train("hint", seq=1000 + i * 2 * MSS, nested_id=0x100 + i, inner_id=i, segs=1, seed=i)
        rows += t
    buf = b"".join(rows)
    writes, d = drive(engine, [(buf, row)])
    assert writes == [single(r) for r in rows]
    assert d.counts["coalesce_split"] == 0 and d.counts["coalesce_seq"] == 1


def test_reference_without_hold():
    """rxpipe.receive without hold: the split read's writes in order, ``split`` set, the first break's outcome."""
    a, b, row = two_trains("plain")
    buf = b"".join(a + b)
    res = receive(buf, len(buf), row, vni=VNI)
    assert res.split and res.outcome is Outcome.IDS
    assert [(w.vnet, b"".join(bytes(p) for p in w.parts), w.segments) for w in res.writes] == [own(a, row),
                                                                                               own(b, row)]
    held = receive(buf, len(buf), row, vni=VNI, hold=True)
    assert held.split and not held.writes and held.run is None and len(held.pieces) == 2
