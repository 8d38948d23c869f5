"""Differential tests of the RX engines: the same reads through RxDriver(engine="python") and
RxDriver(engine="native") must give byte-identical TAP writes (vnet header + frame), identical drop reasons
and counts, identical control packets and identical coalescing outcomes.

Reads are realistic (tests/packets.py frames, cut by gso.segment_tcp behind plain / hint / fold prefixes, as
a udpnest sender makes them; 0-3 nested levels; every IPv4/IPv6 mix; GSO multi-datagram reads, reads split
in two (merge), single datagrams and ACKs) and then corrupted (truncations, bit flips, wrong GSO sizes,
wrong lengths and checksums).  The same generator drives the native fuzz runs (0 crashes, every datagram
accounted for under a reason); the long runs are marked slow.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import packets as P
from udpnest.engine import native_available
from udpnest.fold import DEFAULT_PORTS, find_levels, fold, gro_hint_for
from udpnest.gso import segment_tcp, tcp_layout
from udpnest.rxdriver import RxDriver
from udpnest.rxpipe import Run, _frame_info, receive, rows_of
from udpnest.wire import csum
from udpnest.wire.errors import Reason
from udpnest.wire.geneve import build_geneve, build_option
from udpnest.wire.options import Echo, build_echo, build_gro_hint

pytestmark = pytest.mark.skipif(not native_available(), reason="native core not built (udpnest._native)")

VNI = 0x654321
PEER = "198.51.100.2"
OTHER = "198.51.100.3"
NOT_PEER = "203.0.113.99"
PORTS = DEFAULT_PORTS


# --- reads ----------------------------------------------------------------------------------------------
def _ip(rng: random.Random, v6: bool) -> P.IPSpec:
    if rng.random() < 0.7:  # the common shape
        return P.IPSpec(v6=v6, ident=rng.randrange(65536), df=rng.random() < 0.8)
    return P.random_ip(rng, v6)


def _levels(rng: random.Random, depth: int) -> list[P.Tunnel]:
    out = []
    for _ in range(depth):
        v6 = rng.random() < 0.5
        if rng.random() < 0.7:
            out.append(P.Tunnel(ip=_ip(rng, v6), encap="vxlan", udp_csum=rng.random() < 0.5,
                                vni=rng.randrange(1 << 24)))
        else:
            out.append(P.random_tunnel(rng, v6))
    return out


def super_frame(rng: random.Random, depth: int, payload: int, flags: str = "A") -> bytes:
    inner = P.Inner(ip=_ip(rng, rng.random() < 0.5), payload=rng.randbytes(payload), seq=rng.randrange(1 << 32),
                    flags=flags, tcp_options=rng.choice((None, [("NOP", None), ("NOP", None),
                                                               ("Timestamp", (1, 2))])))
    return P.frame(_levels(rng, depth), inner)


def datagrams(rng: random.Random, frame: bytes, mode: str, mss: int) -> tuple[list[bytes], int]:
    """The datagrams a udpnest sender makes of ``frame`` in ``mode`` (and their row length); a frame the
    segmenter cannot cut goes out as one datagram."""
    try:
        if mode == "fold":
            f = fold(frame, gso=True, vni=VNI)
            prefix, inner, lay = f.header, f.inner, tcp_layout(f.inner)
        else:
            opts = b""
            if mode == "hint":
                h = gro_hint_for(frame, gso=True)
                opts = build_gro_hint(h) if h is not None else b""
            if rng.random() < 0.1:
                opts += build_option(0x0123, 0x01, b"\xde\xad\xbe\xef")  # someone else's, non-critical
            prefix, inner = build_geneve(VNI, 0x6558, opts), frame
            lay = tcp_layout(frame, tuple(lv.udp_off for lv in find_levels(frame, max_levels=3)))
        segs = segment_tcp(prefix, inner, lay, mss)
        return segs.datagrams(), segs.row_len
    except Exception:  # noqa: BLE001 - a shape the TX side does not segment: one datagram
        if mode == "fold":
            try:
                dg = fold(frame, vni=VNI).payload
            except Exception:  # noqa: BLE001
                dg = build_geneve(VNI, 0x6558) + frame
        else:
            dg = build_geneve(VNI, 0x6558) + frame
        return [dg], len(dg)


def corrupt(rng: random.Random, buf: bytes, gso: int) -> tuple[bytes, int, int]:
    b = bytearray(buf)
    n = len(b)
    what = rng.randrange(9)
    if what == 0 and n:  # bit flips anywhere
        for _ in range(rng.randrange(1, 4)):
            b[rng.randrange(n)] ^= 1 << rng.randrange(8)
    elif what == 1 and n:  # bit flips in the headers of one row
        row = rng.randrange(max(1, n // max(gso, 1)))
        base = row * (gso or n)
        for _ in range(rng.randrange(1, 3)):
            i = base + rng.randrange(min(160, max(1, n - base)))
            if i < n:
                b[i] ^= 1 << rng.randrange(8)
    elif what == 2:  # truncated read
        n = rng.randrange(n + 1)
    elif what == 3 and gso:  # wrong GSO size
        gso = max(0, gso + rng.choice((-4, -1, 1, 2, 4, 100, -gso)))
    elif what == 4 and n > 16:  # a length or checksum field set to junk
        i = rng.randrange(min(n - 2, 200))
        b[i : i + 2] = rng.randbytes(2)
    elif what == 5 and n:  # a byte of one row's payload
        b[rng.randrange(n)] ^= 0x40
    elif what == 6:  # one per-segment header field of one row (IDs, lengths, checksums, seq, flags)
        _field_flip(rng, b, n, gso)
    # 7, 8: unchanged
    return bytes(b), n, gso


def _field_flip(rng: random.Random, b: bytearray, n: int, gso: int) -> None:
    row = gso if gso and n > gso else n
    try:
        info = _frame_info(memoryview(b)[:row], 0xFF4E, PORTS)
    except Exception:  # noqa: BLE001 - not parseable: nothing to aim at
        return
    if info is None:
        return
    G, lay = info.G, info.layout
    fields = [o + d for o in lay.ip4 for d in (2, 4, 5, 6, 10, 11)] + [o + 4 for o in lay.ip6]
    fields += [u + d for u, _ in lay.udp for d in (4, 6, 7)] + [lay.tcp + d for d in (4, 7, 13, 16, 17)]
    rows = max(1, -(-n // row))
    i = rng.randrange(rows) * row + G + rng.choice(fields)
    if i < n:
        b[i] ^= 1 << rng.randrange(8)


def mixed_read(rng: random.Random, mode: str, depth: int) -> list[tuple[bytes, int, int]] | None:
    """Two bursts of one flow in one UDP_GRO read (rxpipe.split_plan): the first's full rows, then the
    next's, which starts a new GSO-partial train (new nested IPv4 IDs), follows a PSH, or leaves a sequence
    gap; None when the two do not cut into rows of one length."""
    mss = rng.choice((1000, 1400, 1397))
    levels = _levels(rng, depth)
    ip = _ip(rng, rng.random() < 0.5)
    seq = rng.randrange(1 << 32)
    n1 = rng.randrange(1, 7)
    opts = rng.choice((None, [("NOP", None), ("NOP", None), ("Timestamp", (1, 2))]))
    f1 = P.frame(levels, P.Inner(ip=ip, payload=rng.randbytes(n1 * mss), seq=seq, tcp_options=opts,
                                 flags=rng.choice(("A", "A", "PA"))))
    if rng.random() < 0.6:  # a new train: new nested IDs (fixed within the train, as Linux's GSO partial)
        levels = [replace(t, ip=replace(t.ip, ident=rng.randrange(65536))) for t in levels]
    ip2 = replace(ip, ident=(ip.ident + n1) & 0xFFFF) if not ip.v6 else ip
    seq2 = (seq + n1 * mss + (0 if rng.random() < 0.8 else mss)) & 0xFFFFFFFF
    f2 = P.frame(levels, P.Inner(ip=ip2, payload=rng.randbytes(rng.choice((1, 999, 5001, 20000))), seq=seq2,
                                 tcp_options=opts, flags=rng.choice(("A", "PA"))))
    d1, row1 = datagrams(rng, f1, mode, mss)
    d2, row2 = datagrams(rng, f2, mode, mss)
    if row1 != row2 or len(d2) < 2 or any(len(d) != row1 for d in d1):
        return None
    buf = b"".join(d1 + d2)
    return [(buf, len(buf), row1)]


def reads_for(rng: random.Random, *, corrupt_p: float = 0.3) -> list[tuple[bytes, int, int, str]]:
    """A short sequence of reads as an RX loop sees them."""
    out = []
    for _ in range(rng.randrange(1, 4)):
        mode = rng.choice(("plain", "hint", "fold"))
        depth = rng.choice((0, 1, 1, 1, 2, 3))
        kind = rng.randrange(10)
        if kind < 2:  # an ACK / small frame, one datagram
            frame = super_frame(rng, depth, rng.choice((0, 0, 1, 50)), flags=rng.choice(("A", "PA", "S", "FA")))
            dgs, _ = datagrams(rng, frame, mode, 1000)
            items = [(dg, len(dg), 0) for dg in dgs[:1]]
        elif kind == 2:  # an echo packet, a non-TCP frame, or junk
            c = rng.randrange(3)
            if c == 0:
                dg = build_geneve(VNI, 0x6558, build_echo(Echo(rng.randrange(1 << 32), 5, 3, 252, 1),
                                                          reply=rng.random() < 0.5), oam=True)
            elif c == 1:
                dg = build_geneve(VNI, 0x6558) + P.frame(_levels(rng, depth), P.Inner(tcp=False, payload=b"u" * 40))
            else:
                dg = rng.randbytes(rng.randrange(64))
            items = [(dg, len(dg), 0)]
        elif kind == 3 and (mixed := mixed_read(rng, mode, depth)) is not None:
            items = mixed
        else:
            payload = rng.choice((1, 999, 1000, 5001, 20000, 40321, 64000))
            mss = rng.choice((1000, 1400, 1397, 1320))
            frame = super_frame(rng, depth, payload)
            dgs, row = datagrams(rng, frame, mode, mss)
            r = rng.random()
            if r < 0.3 and len(dgs) > 2:  # two reads of one super-packet (merge)
                cut = rng.randrange(1, len(dgs))
                parts = [dgs[:cut], dgs[cut:]]
            elif r < 0.55 and len(dgs) > 1:  # one-datagram reads (issue 10), maybe after a coalesced read
                cut = rng.choice((0, 0, rng.randrange(len(dgs))))
                parts = ([dgs[:cut]] if cut else []) + [[dg] for dg in dgs[cut:]]
            else:
                parts = [dgs]
            items = []
            for p in parts:
                buf = b"".join(p)
                items.append((buf, len(buf), row if len(p) > 1 else 0))
            if rng.random() < 0.1 and len(dgs) == 1 and len(dgs[0]) > 1472:
                items = [(dgs[0], len(dgs[0]), 0)]  # a whole super-packet in one datagram
        for buf, n, g in items:
            if rng.random() < corrupt_p:
                buf, n, g = corrupt(rng, buf, g)
            key = rng.choices((PEER, OTHER, NOT_PEER), (90, 5, 5))[0]
            out.append((buf, n, g, key))
    return out


# --- running both engines ----------------------------------------------------------------------------------
def drive(engine: str, reads, *, vni=VNI, opt_class=0xFF4E, verify=True) -> tuple[list, Counter, Counter]:
    d = RxDriver(peers={PEER, OTHER}, vni=vni, opt_class=opt_class, ports=PORTS, verify_csum=verify,
                 max_datagram=1472, engine=engine)
    log = []

    def take(writes):
        for w, key in writes:
            log.append(("w", w.vnet, b"".join(bytes(p) for p in w.parts), w.kind, w.segments, key))

    for buf, n, g, key in reads:
        b = bytearray(buf) + bytearray(64)  # as the loop's buffer: larger than the read
        out = d.read(b, n, g, key)
        take(out.writes)
        for pkt, k, size in out.control:
            log.append(("c", pkt, k, size))
        if not d.holding or random.random() < 0.2:
            take(d.flush())
        b[:] = b"\xa5" * len(b)  # the next read reuses the buffer: nothing may still point into it
    take(d.flush())
    counts = Counter({k: v for k, v in d.counts.items() if k != "native_deferred" and not k.startswith("fold_templ")})
    return log, counts, d.drops


def accounted(reads, **kw) -> None:
    """Every datagram of a read is written, handed to control, or dropped under a reason (the reference,
    read by read; a whole super-packet in one datagram is one write standing for its MTU segments)."""
    for buf, n, g, key in reads:
        if key == NOT_PEER:
            continue
        res = receive(buf, n, g, opt_class=kw.get("opt_class", 0xFF4E), ports=PORTS, vni=kw.get("vni", VNI),
                      verify_csum=kw.get("verify", True))
        written = sum(w.segments if g else 1 for w in res.writes)
        assert written + len(res.control) + sum(c for _, c in res.drops) == (rows_of(n, g)[0] if g else 1)
        for r, _ in res.drops:
            assert isinstance(r, Reason)


def same(reads, **kw) -> None:
    state = random.getstate()
    random.seed(1)
    a = drive("python", reads, **kw)
    random.seed(1)
    b = drive("native", reads, **kw)
    random.setstate(state)
    la, lb = a[0], b[0]
    assert len(la) == len(lb), (len(la), len(lb))
    for i, (x, y) in enumerate(zip(la, lb, strict=True)):
        assert x == y, f"event {i}: python {x[:1] + x[3:] if x[0] == 'w' else x} native {y[:1] + y[3:]}"
    assert a[1] == b[1], "counters"
    assert a[2] == b[2], "drops"
    accounted(reads, **kw)


# --- tests -----------------------------------------------------------------------------------------------
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), corrupt_p=st.sampled_from((0.0, 0.3, 1.0)))
def test_engines_agree(seed, corrupt_p):
    same(reads_for(random.Random(seed), corrupt_p=corrupt_p))


@pytest.mark.parametrize("vni", [VNI, VNI + 1, None])
@pytest.mark.parametrize("opt_class", [0xFF4E, None, 0x0100])
def test_engines_agree_across_settings(vni, opt_class):
    rng = random.Random(f"{vni}-{opt_class}")
    for _ in range(15):
        same(reads_for(rng), vni=vni, opt_class=opt_class)


def test_engines_agree_without_verification():
    rng = random.Random(7)
    for _ in range(20):
        same(reads_for(rng, corrupt_p=1.0), verify=False)


@pytest.mark.parametrize("mode", ["plain", "hint", "fold"])
@pytest.mark.parametrize("depth", [0, 1])
@pytest.mark.parametrize("v6", [(False, False), (False, True), (True, False), (True, True)])
def test_common_shapes_coalesce_natively(mode, depth, v6):
    """The steady state: the native engine coalesces these itself (no deferral), with the same result."""
    rng = random.Random(f"{mode}{depth}{v6}")
    inner = P.Inner(ip=P.IPSpec(v6=v6[1], ident=77), payload=rng.randbytes(40000), flags="A")
    levels = [P.Tunnel(ip=P.IPSpec(v6=v6[0]), udp_csum=True)] * depth
    frame = P.frame(levels, inner)
    dgs, row = datagrams(rng, frame, mode, 1400)
    assert len(dgs) > 1
    buf = b"".join(dgs)
    d = RxDriver(peers={PEER}, vni=VNI, engine="native")
    out = d.read(bytearray(buf), len(buf), row, PEER)
    writes = out.writes + d.flush()
    assert [w.segments for w, _ in writes] == [len(dgs)]
    assert d.counts["native_deferred"] == 0 and d.counts["coalesce_coalesced"] == 1
    same([(buf, len(buf), row, PEER)])


@pytest.mark.parametrize("mode", ["plain", "hint", "fold"])
@pytest.mark.parametrize("shape", ["v4-v4c", "v6-v4", "v4-v6c", "none-v6"])
def test_engines_agree_on_every_header_bit(mode, shape):
    """Exhaustive: each header byte of the second row, the last row and the first row flipped (one bit at a
    time) in a coalescible read.  Both engines give the same outcome, writes and drops."""
    rng = random.Random(shape)
    nest, inner = shape.split("-")
    levels = [] if nest == "none" else [P.Tunnel(ip=P.IPSpec(v6=nest == "v6", ident=0xFFFE),
                                                 udp_csum=inner.endswith("c"))]
    frame = P.frame(levels, P.Inner(ip=P.IPSpec(v6=inner.startswith("v6"), ident=0xFFF0), flags="A",
                                    payload=rng.randbytes(6000)))
    dgs, row = datagrams(rng, frame, mode, 1000)
    assert len(dgs) > 2
    base = bytearray(b"".join(dgs))
    G = 8 + (base[0] & 0x3F) * 4
    info = _frame_info(memoryview(base)[:row], 0xFF4E, PORTS)
    assert info is not None
    H = info.layout.hdr_len
    reads = []
    for r in (1, len(dgs) - 1, 0):
        for i in range(G + H):
            b = bytearray(base)
            b[r * row + i] ^= 1 << (i % 8)
            reads.append((bytes(b), len(b), row, PEER))
    same(reads)
    outcomes = Counter()
    for b, n, g, _ in reads:
        outcomes[receive(b, n, g, vni=VNI).outcome.value] += 1
    assert {"csum", "hdr_mismatch", "seq", "flags"} <= set(outcomes), outcomes


@pytest.mark.parametrize("mode", ["plain", "hint"])
@pytest.mark.parametrize("depth", [0, 1])
def test_acks_natively(mode, depth):
    rng = random.Random(depth)
    acks = [datagrams(rng, super_frame(rng, depth, 0), mode, 1000)[0][0] for _ in range(5)]
    d = RxDriver(peers={PEER}, vni=VNI, engine="native")
    for a in acks:
        assert len(d.read(bytearray(a), len(a), 0, PEER).writes) == 1
    assert d.counts["native_deferred"] == 0
    same([(a, len(a), 0, PEER) for a in acks])


def single_reads_for(rng: random.Random, *, corrupt_p: float = 0.2) -> list[tuple[bytes, int, int, str]]:
    """One-datagram reads of one or two flows, interleaved, with ACKs and corruption in between (issue 10:
    the driver holds and merges them)."""
    streams = []
    for _ in range(rng.randrange(1, 3)):
        mode = rng.choice(("plain", "hint", "fold"))
        frame = super_frame(rng, rng.choice((0, 1, 1)), rng.choice((1000, 3999, 9000, 12000)),
                            flags=rng.choice(("A", "PA")))
        dgs, _ = datagrams(rng, frame, mode, rng.choice((1000, 1200)))
        if rng.random() < 0.2 and len(dgs) > 3:  # a sequence gap
            del dgs[rng.randrange(1, len(dgs) - 1)]
        streams.append(dgs)
    out = []
    while any(streams):
        s = rng.choice([x for x in streams if x])
        dg = s.pop(0)
        if rng.random() < 0.1:
            mode = rng.choice(("plain", "hint", "fold"))
            ack = datagrams(rng, super_frame(rng, 1, 0), mode, 1000)[0][0]
            out.append((ack, len(ack), 0, PEER))
        n, g = len(dg), 0
        if rng.random() < corrupt_p:
            dg, n, g = corrupt(rng, dg, 0)
        out.append((dg, n, g, rng.choices((PEER, OTHER), (95, 5))[0]))
    return out


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), corrupt_p=st.sampled_from((0.0, 0.1, 0.5)))
def test_engines_agree_on_single_reads(seed, corrupt_p):
    same(single_reads_for(random.Random(seed), corrupt_p=corrupt_p))


def test_single_reads_do_merge():
    """The sequences above do exercise the merging (not only the one-datagram path)."""
    rng = random.Random(5)
    merged = 0
    for _ in range(20):
        _, counts, _ = drive("python", single_reads_for(rng))
        merged += counts["coalesce_single_merged"]
    assert merged > 50, merged


def mixed_reads_for(rng: random.Random, *, corrupt_p: float = 0.2) -> list[tuple[bytes, int, int, str]]:
    """Reads that mix two bursts (mixed_read), some split in two (the first piece merges with the held
    run), some with a corrupted row or field, between ordinary reads."""
    out = []
    while len(out) < 4:
        mode = rng.choice(("plain", "hint", "fold"))
        items = mixed_read(rng, mode, rng.choice((0, 1, 1, 2)))
        if items is None:
            continue
        buf, n, g = items[0]
        if rng.random() < 0.3 and n > 3 * g:  # the first rows a read of their own
            cut = rng.randrange(2, n // g) * g
            items = [(buf[:cut], cut, g), (buf[cut:], n - cut, g)]
        for b, m, gg in items:
            if rng.random() < corrupt_p:
                b, m, gg = corrupt(rng, b, gg)
            out.append((b, m, gg, rng.choices((PEER, OTHER), (95, 5))[0]))
    return out


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), corrupt_p=st.sampled_from((0.0, 0.3, 1.0)))
def test_engines_agree_on_mixed_reads(seed, corrupt_p):
    same(mixed_reads_for(random.Random(seed), corrupt_p=corrupt_p))


def test_mixed_reads_do_split():
    """The reads above do exercise the split (rxpipe.split_plan), not only the one-datagram path."""
    rng = random.Random(6)
    counts: Counter = Counter()
    for _ in range(20):
        counts += drive("python", mixed_reads_for(rng, corrupt_p=0.0))[1]
    assert counts["coalesce_split"] > 15, counts


# --- fuzz: the native engine as hard as the Python one --------------------------------------------------
def _fuzz(engine: str, n_target: int, seed: int) -> int:
    """Mutated reads through one engine: no exception, every datagram accounted for. Returns inputs run."""
    rng = random.Random(seed)
    corpus = []
    while len(corpus) < 60:
        corpus.extend(reads_for(rng, corrupt_p=0.0))
    d = RxDriver(peers={PEER, OTHER}, vni=VNI, ports=PORTS, engine=engine)
    buf = bytearray(1 << 17)
    done = 0
    total = 0
    written = 0
    while done < n_target:
        src, n, g, _ = corpus[rng.randrange(len(corpus))]
        data, n, g = corrupt(rng, src, g)
        if rng.random() < 0.05:
            data, n = rng.randbytes(rng.randrange(200)), -1
        n = len(data) if n < 0 else min(n, len(data))
        buf[:n] = data[:n]
        if not g:  # flushed first, so this read's writes are its own
            written += sum(w.segments for w, _ in d.flush())
        out = d.read(buf, n, g, PEER)
        total += rows_of(n, g)[0] if g else 1
        # a whole super-packet in one datagram is one write standing for several segments
        written += (len(out.writes) if not g else sum(w.segments for w, _ in out.writes)) + len(out.control)
        if not d.holding or rng.random() < 0.5:
            written += sum(w.segments for w, _ in d.flush())
        done += 1
    written += sum(w.segments for w, _ in d.flush())
    assert written + sum(d.drops.values()) == total
    return done


@pytest.mark.parametrize("engine", ["native", "python"])
def test_fuzz_engine(engine):
    assert _fuzz(engine, 4000, 11) == 4000


def _fuzz_fast(engine: str, n_target: int, seed: int) -> int:
    """The long run: reads of at most 8 datagrams, 1-3 bits flipped in place (and undone), sometimes cut or
    given another GSO size, straight through the engine's receive step.  No exception may escape; every
    10th input is also checked for full accounting."""
    rng = random.Random(seed)
    corpus = []
    while len(corpus) < 200:
        for buf, n, g, _ in reads_for(rng, corrupt_p=0.0):
            if g and n > 8 * g:
                n = 8 * g
            corpus.append((bytearray(buf[:n]), n, g))
    d = RxDriver(peers={PEER}, vni=VNI, ports=PORTS, engine=engine)
    receive_one = d._receive
    for i in range(n_target):
        b, n, g = corpus[rng.randrange(len(corpus))]
        flips = [rng.randrange(min(n, 200) if rng.random() < 0.7 else n) + (rng.randrange(n // g) * g if g else 0)
                 for _ in range(rng.randrange(1, 4))] if n else []
        flips = [f for f in flips if f < n]
        for f in flips:
            b[f] ^= 1 << (f % 8)
        m, gg = n, g
        r = rng.random()
        if r < 0.1:
            m = rng.randrange(n + 1)
        elif r < 0.15 and g:
            gg = max(0, g + rng.choice((-4, -1, 1, 4)))
        res = receive_one(b, m, gg)
        runs = [p for p in res.pieces if p.__class__ is Run] + ([res.run] if res.run is not None else [])
        for r in runs:
            d._finish_run(r)
        if i % 10 == 0:
            written = sum(w.segments if gg else 1 for w in res.writes)
            written += sum(1 for p in res.pieces if p.__class__ is not Run) + sum(r.segments for r in runs)
            assert written + len(res.control) + sum(c for _, c in res.drops) == (rows_of(m, gg)[0] if gg else 1)
        for f in flips:
            b[f] ^= 1 << (f % 8)
    return n_target


def _fuzz_core(n_target: int, seed: int) -> int:
    """The C entry points straight, as hard as the fuzzers hit the Python parsers: reads of at most 8
    datagrams with 1-4 bits flipped in place (and undone), sometimes cut or given another row length, through
    ``rx_rows`` (with learnt FOLD templates) and ``rx_coalesce`` (with the layout of the unmutated read, so
    the mutated rows no longer fit it: the C bounds checks are what is tested; a ValueError naming the layout
    is the documented refusal).  Every 64th input also goes through the whole native receive step."""
    from udpnest import _native, rxnative
    from udpnest.rxnative import Receiver, _layout_args

    rng = random.Random(seed)
    rcv = Receiver(vni=VNI, ports=PORTS)
    corpus = []
    while len(corpus) < 200:
        for buf, n, g, _ in reads_for(rng, corrupt_p=0.0):
            if g and n > 8 * g:
                n = 8 * g
            b = bytearray(buf[:n])
            lay = None
            count, row, last = rows_of(n, g)
            if count > 1:
                try:
                    info = _frame_info(memoryview(b)[:row], 0xFF4E, PORTS, VNI)
                except Exception:  # noqa: BLE001 - no layout: rx_rows only
                    info = None
                if info is not None:
                    lay = (info.G, info.layout.hdr_len, *_layout_args(info.G, info.layout))
            rcv.receive(b, n, g)  # learns FOLD templates
            corpus.append((b, n, g, lay))
    folds = rcv.folds
    refused = 0
    for i in range(n_target):
        b, n, g, lay = corpus[rng.randrange(len(corpus))]
        flips = [(rng.randrange(n), 1 << rng.randrange(8)) for _ in range(rng.randrange(1, 5))] if n else []
        for f, bit in flips:
            b[f] ^= bit
        m, gg = n, g
        r = rng.random()
        if r < 0.1:
            m = rng.randrange(n + 1)
        elif r < 0.15 and g:
            gg = max(1, g + rng.choice((-4, -1, 1, 4)))
        count, row, last = rows_of(m, gg)
        mv = memoryview(b)[:m]
        _native.rx_rows(mv, count, row, last, VNI, 0xFF4E, folds)
        if lay is not None and count > 1:
            G, H = lay[0], lay[1]
            if row > G + H and last > G + H:
                try:
                    _native.rx_coalesce(mv, count, row, last, G, H, *lay[2:], True)
                except ValueError as e:
                    assert "layout does not fit" in str(e), e
                    refused += 1
                # the first row alone as a one-datagram segment (count 0, rxpipe.single_run) and as a whole
                # super-packet (count 1, rxpipe._whole), with a length that may cut into the headers
                one = min(row, m) if rng.random() < 0.9 else min(m, rng.randrange(G + H + 1, row + 1))
                for c in (0, 1):
                    if one > G + H:
                        try:
                            _native.rx_coalesce(mv[:one], c, one, one, G, H, *lay[2:], True)
                        except ValueError as e:
                            assert "layout does not fit" in str(e), e
        if i % 64 == 0:
            res = rcv.receive(b, m, gg)
            for r in [p for p in res.pieces if p.__class__ is Run] + ([res.run] if res.run is not None else []):
                rxnative.finish(r)  # the super-packet's headers (rx_super)
        for f, bit in flips:
            b[f] ^= bit
    return n_target


@pytest.mark.slow
@pytest.mark.parametrize(("engine", "n"), [("native", int(os.environ.get("UDPNEST_FUZZ_NATIVE", 10**7))),
                                           ("python", int(os.environ.get("UDPNEST_FUZZ_PYTHON", 10**6)))])
def test_fuzz_engine_long(engine, n):
    """Issue 9 item 8: 10^7 fuzzed inputs straight into the native RX core's entry points (every 64th through
    the whole native receive step) and 10^6 through the Python engine's receive step (the reference; its
    parsers have their own fuzzers in tests/test_fuzz.py).  UDPNEST_FUZZ_NATIVE / _PYTHON change the counts."""
    t0 = time.perf_counter()
    assert (_fuzz_core(n, 12345) if engine == "native" else _fuzz_fast(engine, n, 12345)) == n
    print(f"\n{engine}: {n} inputs in {time.perf_counter() - t0:.0f} s")


def test_fuzz_fast_short():
    for engine in ("native", "python"):
        assert _fuzz_fast(engine, 3000, 99) == 3000
    assert _fuzz_core(20000, 98) == 20000


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("csum_v6", [(True, False), (False, True), (True, True)])
def test_fold_acks_natively_after_the_first(depth, csum_v6):
    """Fold mode's ACKs: the first datagram of a header goes to the reference, every later one with the same
    header is unfolded in C (lengths, IPv4 header checksums, nested UDP checksums restored), byte-identical."""
    rng = random.Random(depth)
    udp_csum, v6 = csum_v6
    acks = []
    for i in range(6):  # each packet's carried IPv4 headers have their own ID, as a kernel's VXLAN sends them
        levels = [P.Tunnel(ip=P.IPSpec(v6=v6 if k % 2 == 0 else not v6, ident=100 * k + i), udp_csum=udp_csum)
                  for k in range(depth)]
        frame = P.frame(levels, P.Inner(ip=P.IPSpec(v6=i % 2 == 1), payload=rng.randbytes(rng.choice((0, 0, 7))),
                                        flags="A", seq=1000 + i))
        acks.append(fold(frame, vni=VNI).payload)
    bad = bytearray(acks[3])
    bad = bytes(bad[: len(bad) - 30])  # inner frame cut: a drop reason from the C path
    reads = [(a, len(a), 0, PEER) for a in acks + [bad]]
    d = RxDriver(peers={PEER}, vni=VNI, engine="native")
    for a, n, g, k in reads:
        d.read(bytearray(a), n, g, k)
    assert d.counts["native_deferred"] == 1
    same(reads)
    # another header (other VNI of the nested level) is not matched: deferred, then learnt
    other = fold(P.frame([P.Tunnel(vni=99)], P.Inner(flags="A")), vni=VNI).payload
    d.read(bytearray(other), len(other), 0, PEER)
    d.read(bytearray(other), len(other), 0, PEER)
    assert d.counts["native_deferred"] == 2


@pytest.mark.parametrize("mode", ["plain", "hint", "fold"])
@pytest.mark.parametrize("depth", [0, 1])
def test_whole_super_packets_natively(mode, depth):
    """One datagram holding a whole super-packet (a veth without UDP GSO): checked in C, not deferred; good,
    partial-checksum and corrupted variants give the same results in both engines."""
    rng = random.Random(f"whole{mode}{depth}")
    reads = []
    for i in range(4):
        levels = [P.Tunnel(ip=P.IPSpec(v6=i % 2 == 0), udp_csum=True)] * depth
        frame = bytearray(P.frame(levels, P.Inner(ip=P.IPSpec(v6=i >= 2), payload=rng.randbytes(20000), flags="A")))
        if mode == "fold":
            dg = fold(bytes(frame), gso=True, vni=VNI).payload
        else:
            h = gro_hint_for(bytes(frame)) if mode == "hint" else None
            dg = build_geneve(VNI, 0x6558, build_gro_hint(h) if h else b"") + bytes(frame)
        reads.append((dg, len(dg), 0, PEER))
        # the CHECKSUM_PARTIAL form (what the lab's kernel TX path sends over a veth)
        lay = tcp_layout(bytes(frame), tuple(lv.udp_off for lv in find_levels(bytes(frame))))
        part = bytearray(frame)
        for off, ip, v6, proto, field in [(lay.tcp, lay.tcp_ip, lay.tcp_ip_v6, 6, 16)] + [
                (u, *lay.ip_before(u), 17, 6) for u, has in lay.udp if has]:
            src, dst = csum.ip_addresses(part, ip, v6)
            part[off + field : off + field + 2] = csum.pseudo_sum(src, dst, proto, len(part) - off).to_bytes(2, "big")
        pdg = dg[: len(dg) - len(frame)] + bytes(part) if mode != "fold" else fold(bytes(part), gso=True,
                                                                                     vni=VNI).payload
        reads.append((pdg, len(pdg), 0, PEER))
        for pos in (len(dg) - 1, len(dg) - 15000, 60, 40):
            b = bytearray(dg)
            b[pos] ^= 0x08
            reads.append((bytes(b), len(b), 0, PEER))
    d = RxDriver(peers={PEER}, vni=VNI, engine="native")
    d.read(bytearray(reads[0][0]), reads[0][1], 0, PEER)
    assert d.counts["coalesce_whole"] == 1 and d.counts["native_deferred"] == 0
    same(reads)


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("split", [False, True])
def test_fold_flow_parsed_once(monkeypatch, v6, split):
    """A fold flow's super-packets differ in the carried nested IPv4 ID (and the sequence): the native engine
    parses the FOLD header once per flow, not once per read (nor again when the TCP timestamp moves on), and
    still writes each super-packet's own carried headers (byte-identical to the reference), merged reads
    included."""
    from udpnest import rxnative

    rng = random.Random(f"flow{v6}{split}")
    reads, seq = [], 5000
    for i in range(5):
        frame = P.frame([P.Tunnel(ip=P.IPSpec(v6=False, ident=7 * i + 1), udp_csum=True)],
                        P.Inner(ip=P.IPSpec(v6=v6), payload=rng.randbytes(8000), flags="A", seq=seq,
                                tcp_options=[("NOP", None), ("NOP", None), ("Timestamp", (1000 + i, 7))]))
        seq += 8000
        dgs, row = datagrams(rng, frame, "fold", 1400)
        parts = [dgs[:3], dgs[3:]] if split else [dgs]
        for p in parts:
            buf = b"".join(p)
            reads.append((buf, len(buf), row, PEER))
    calls = []
    real = rxnative._frame_info
    monkeypatch.setattr(rxnative, "_frame_info", lambda *a: calls.append(1) or real(*a))
    d = RxDriver(peers={PEER}, vni=VNI, engine="native")
    for buf, n, g, k in reads:
        d.read(bytearray(buf), n, g, k)
    d.flush()
    assert d.counts["coalesce_coalesced"] == len(reads)
    assert len(calls) == 1
    same(reads)
