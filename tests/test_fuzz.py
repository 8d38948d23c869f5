"""Mutation fuzzing of every parser, unfold, fold, find_levels and gro_hint_for (fixed seeds).

Promises checked (from the docstrings):

* parsers and ``unfold`` raise :class:`udpnest.ParseError` and nothing else, on any input;
* ``find_levels`` never raises ("stops (without raising)"); ``fold`` and ``gro_hint_for`` (built on it) raise
  nothing on any byte string either;
* when ``unfold`` succeeds, the restored nested headers parse with the project's own strict parsers and their
  lengths and checksums agree with the buffer;
* ``unfold(fold(x).payload)`` succeeds for every ``x`` and gives back ``x`` (up to the IP/UDP checksum fields of
  the folded levels, which unfold regenerates);
* a hint from ``gro_hint_for`` survives build/parse and the receiver's validation.
"""

from __future__ import annotations

import random
import time
from collections import Counter

import packets as P
from udpnest import ParseError, fold, gro_hint_for, unfold
from udpnest.fold import F_CSUM_ZEROED, F_LEN_ZEROED, F_UDP_CSUM, F_V6, find_levels
from udpnest.wire import csum, options
from udpnest.wire.eth import parse_eth
from udpnest.wire.geneve import build_geneve, build_option, parse_geneve, parse_options
from udpnest.wire.ipv4 import parse_ipv4
from udpnest.wire.ipv6 import parse_ipv6
from udpnest.wire.tcp import parse_tcp
from udpnest.wire.udp import parse_udp
from udpnest.wire.vxlan import parse_vxlan

STATS: Counter = Counter()


class Unexpected(AssertionError):
    pass


def call(name: str, fn, *a, **kw):
    """Run one target: ParseError is fine (returns None), anything else is a finding."""
    try:
        return fn(*a, **kw)
    except ParseError:
        STATS[name + ":reject"] += 1
        return None
    except Exception as e:  # noqa: BLE001 - the point is to catch everything else
        raise Unexpected(f"{name} raised {type(e).__name__}: {e}") from e


# --- the targets -------------------------------------------------------------------------------------------
def run_parsers(x: bytes, rng: random.Random) -> None:
    offs = (0, 14, 18, 34, 42, rng.randrange(max(1, len(x))))
    for off in offs:
        call("parse_eth", parse_eth, x, off)
        call("parse_ipv4", parse_ipv4, x, off, verify_csum=True)
        call("parse_ipv4", parse_ipv4, x, off, check_len=False)
        call("parse_ipv6", parse_ipv6, x, off)
        call("parse_ipv6", parse_ipv6, x, off, check_len=False)
        call("parse_udp", parse_udp, x, off)
        call("parse_udp", parse_udp, x, off, check_len=False)
        call("parse_tcp", parse_tcp, x, off)
        call("parse_vxlan", parse_vxlan, x, off)
        call("parse_vxlan", parse_vxlan, x, off, gpe=True)
        g = call("parse_geneve", parse_geneve, x, off)
        if g is not None:
            call("parse_options", parse_options, x, off, g)
    call("parse_echo", options.parse_echo, x[:20])
    call("parse_echo", options.parse_echo, x[4:24])
    for start in (0, 4, 12, rng.randrange(max(1, len(x)))):
        h = call("parse_gro_hint", options.parse_gro_hint, x[start : start + 4])
        if h is not None:
            call("validate_gro_hint", options.validate_gro_hint, x, h)
            call("validate_gro_hint", options.validate_gro_hint, x[start + 4 :], h)
    for accept in (True, False):
        pkt = call("parse_packet", options.parse_packet, x, accept_gro_hint=accept)
        if pkt is not None and pkt.gro_hint is not None:
            call("validate_gro_hint", options.validate_gro_hint, x[pkt.hdr.hdr_len :], pkt.gro_hint)


def check_unfold(x: bytes) -> None:
    pkt = call("parse_packet", options.parse_packet, x)
    for mode in ("compute", "partial"):
        u = call("unfold", unfold, x, udp_csum=mode)
        if u is None:
            continue
        STATS["unfold:ok"] += 1
        assert pkt is not None  # unfold parses the same packet
        if u.levels == 0:
            assert u.headers == b"" and bytes(u.inner) == x[pkt.hdr.hdr_len :]
            continue
        assert u.levels == len(pkt.folds)
        assert bytes(u.inner) == x[pkt.hdr.hdr_len :] and u.frame == u.headers + x[pkt.hdr.hdr_len :]
        flags = [f[1] for f in pkt.folds]
        if all(f & F_LEN_ZEROED and f & F_CSUM_ZEROED for f in flags):
            check_restored(u.frame, pkt.folds, partial=mode == "partial", partial_off=u.partial_udp_offset)
            STATS["unfold:checked"] += 1
        else:
            raise AssertionError("unfold accepted a carrier without LEN_ZEROED|CSUM_ZEROED")


def check_restored(frame: bytes, folds, *, partial: bool, partial_off) -> None:
    """Walk the restored nested headers with the strict parsers: lengths and checksums must match."""
    n = len(frame)
    pos, has_l2 = 0, True
    for i, data in enumerate(folds):
        flags, l2, l3, tun = data[1], data[2], data[3], data[4]
        assert (l2 != 0) == has_l2
        if l2:
            assert parse_eth(frame, pos).hdr_len == l2
        ip = pos + l2
        if flags & F_V6:
            h6 = parse_ipv6(frame, ip)
            assert h6.hdr_len == l3 and h6.payload_len == n - ip - 40 and h6.proto == 17
            src, dst = h6.src, h6.dst
        else:
            h4 = parse_ipv4(frame, ip, verify_csum=True)
            assert h4.hdr_len == l3 and h4.total_len == n - ip and h4.proto == 17
            src, dst = h4.src, h4.dst
        u = ip + l3
        ud = parse_udp(frame, u)
        assert ud.length == n - u
        if flags & F_UDP_CSUM:
            if partial and i == 0:
                assert partial_off == u
                assert ud.csum == csum.pseudo_sum(src, dst, 17, n - u)
            else:
                assert ud.csum != 0
                assert csum.ones_sum(frame[u:], csum.pseudo_sum(src, dst, 17, n - u)) == 0xFFFF
        else:
            assert ud.csum == 0
        # what follows this level's tunnel header
        encap = data[0] & 7
        if encap == 1:
            has_l2 = True
        elif encap == 2:
            has_l2 = parse_vxlan(frame, u + 8, gpe=True).next_proto == 3
        else:
            g = parse_geneve(frame, u + 8)
            assert g.hdr_len == tun
            has_l2 = g.proto == 0x6558
        pos = u + 8 + tun


def check_fold(x: bytes) -> None:
    levels = call("find_levels", find_levels, x)
    assert levels is not None, "find_levels raised ParseError"
    call("find_levels", find_levels, x, gso=True)
    for gso in (False, True):
        fo = fold(x, gso=gso)  # any exception propagates: fold must not raise
        assert fo.levels <= 3
        if not gso:
            used = fit = 0
            for lv in levels:
                if used + lv.option_size > 252:
                    break
                used += lv.option_size
                fit += 1
            assert fo.levels == fit
        u = unfold(fo.payload)  # must accept whatever fold produced
        assert u.levels == fo.levels
        if not gso:
            assert len(u.frame) == len(x)
            diff = [i for i in range(len(x)) if u.frame[i] != x[i]] if u.frame != x else []
            allowed = set()
            for lv in levels[: fo.levels]:
                if not lv.v6:
                    ip = lv.off + lv.l2_len
                    allowed.update((ip + 10, ip + 11))
                allowed.update((lv.udp_off + 6, lv.udp_off + 7))
            assert set(diff) <= allowed, (diff, allowed)
            STATS["fold:roundtrip"] += 1
            if diff:
                STATS["fold:roundtrip-fixed-csum"] += 1
    h = gro_hint_for(x)
    h_gso = gro_hint_for(x, gso=True)
    for hint in (h, h_gso):
        if hint is None:
            continue
        STATS["gro_hint:some"] += 1
        assert options.parse_gro_hint(options.build_gro_hint(hint)[4:]) == hint
        try:
            options.validate_gro_hint(x, hint)
        except ParseError:
            # the only reason the receiver may refuse a hint we emit: the nested IPv4 header checksum
            nh = hint.nested_nh_offset
            assert not hint.nested_is_v6 and csum.ones_sum(x[nh : nh + 20]) != 0xFFFF
            STATS["gro_hint:bad-nested-csum"] += 1


# --- corpora and mutators ---------------------------------------------------------------------------------
def seed_frames(rng: random.Random, n: int) -> list[bytes]:
    return [P.random_frame(rng, max_payload=rng.choice((0, 10, 60)))[2] for _ in range(n)]


def folded_payloads(rng: random.Random, frames: list[bytes]) -> list[bytes]:
    out = []
    for f in frames:
        extra = b""
        r = rng.random()
        if r < 0.2:
            extra = options.build_echo(options.Echo(rng.randrange(1 << 64), 5, 3, 252, 7), reply=rng.random() < 0.5)
        elif r < 0.35:
            h = gro_hint_for(f)
            extra = options.build_gro_hint(h) if h else build_option(0x0100, 1, bytes((0, 14, 34, 50)))
        elif r < 0.5:
            extra = build_option(rng.randrange(0x10000), rng.randrange(0x80), rng.randbytes(4 * rng.randrange(4)))
        fo = fold(f, options=extra, rco=rng.random() < 0.2, max_levels=rng.choice((3, 3, 3, 1, 2)))
        out.append(fo.payload)
    return out


def plain_geneve(rng: random.Random, frames: list[bytes]) -> list[bytes]:
    out = []
    for f in frames:
        tlvs = b""
        while rng.random() < 0.5 and len(tlvs) < 200:
            tlvs += build_option(rng.choice((0x0100, 0xFF4E, rng.randrange(0x10000))), rng.randrange(256),
                                 rng.randbytes(4 * rng.randrange(min(31, (248 - len(tlvs)) // 4) + 1)))
        if len(tlvs) > 252:
            tlvs = b""
        out.append(build_geneve(rng.randrange(1 << 24), rng.choice((0x6558, 0x0800, 0x86DD)), tlvs) + f)
    return out


def option_offsets(x: bytes) -> list[int]:
    """Offsets of the option TLVs of a well-formed Geneve header (to aim mutations at length bytes)."""
    try:
        return [o.offset for o in parse_options(x, 0, parse_geneve(x))]
    except ParseError:
        return []


def mutate(x: bytes, rng: random.Random, geneve: bool) -> bytes:
    b = bytearray(x)
    if not b:
        return rng.randbytes(rng.randrange(12))
    k = rng.randrange(8)
    if k == 0 and b:  # bit flips
        for _ in range(rng.choice((1, 1, 2, 3, 8))):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif k == 1 and b:  # random bytes
        for _ in range(rng.randrange(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif k == 2 and geneve:  # Geneve opt_len / option lengths forced to 0 or max
        offs = option_offsets(x)
        if rng.random() < 0.4 or not offs:
            b[0] = (b[0] & 0xC0) | rng.choice((0, 0x3F))
        else:
            o = rng.choice(offs)
            b[o + 3] = (b[o + 3] & 0xE0) | rng.choice((0, 0x1F))
    elif k == 3 and geneve:  # fold metadata: l2/l3/tunnel lengths, flags, encap forced
        offs = option_offsets(x)
        if offs:
            o = rng.choice(offs) + 4
            if o + 6 <= len(b):
                j = rng.choice((0, 1, 2, 3, 4, 5))
                b[o + j] = rng.choice((0, 0xFF, rng.randrange(256), b[o + j] ^ (1 << rng.randrange(8))))
    elif k == 4:  # IP / UDP length and checksum fields (at plausible offsets) forced to 0 or 0xFFFF
        base = rng.choice((0, 8 + 4 * (b[0] & 0x3F))) if geneve and b else 0
        pos = base + rng.choice((16, 18, 20, 24, 38, 40, 42, 44, 58, 60, 62, 64, 18 + 4, 6 + 14 + 2, 6 + 14 + 10,
                                 6 + 34 + 4, 6 + 34 + 6, 6 + 20 + 4, 6 + 54 + 4, 6 + 14 + 4, 14 + 4, 14 + 2))
        if pos + 2 <= len(b):
            b[pos : pos + 2] = rng.choice((b"\0\0", b"\xff\xff", rng.randbytes(2)))
    elif k == 5 and geneve and b:  # insert a random option TLV (and fix opt_len)
        hl = 8 + 4 * (b[0] & 0x3F)
        tlv = build_option(rng.choice((0xFF4E, 0x0100, rng.randrange(0x10000))), rng.randrange(256),
                           rng.randbytes(4 * rng.randrange(8)))
        if hl + len(tlv) <= 260 and hl <= len(b):
            at = rng.choice([8] + [8 + o for o in option_offsets(x)][1:] + [hl])
            at = min(at, hl)
            b[at:at] = tlv
            b[0] = (b[0] & 0xC0) | ((hl + len(tlv) - 8) // 4)
    elif k == 6:  # cut or extend
        if rng.random() < 0.5:
            del b[rng.randrange(len(b) + 1) :]
        else:
            b += rng.randbytes(rng.randrange(1, 9))
    else:  # splice a block of random bytes
        if b:
            i = rng.randrange(len(b))
            b[i : i + rng.randrange(1, 9)] = rng.randbytes(rng.randrange(0, 9))
    return bytes(b)


def fuzz_one(x: bytes, rng: random.Random, *, geneve: bool) -> None:
    STATS["inputs"] += 1
    run_parsers(x, rng)
    if geneve:
        check_unfold(x)
        if rng.random() < 0.15:
            check_fold(x)
    else:
        check_fold(x)
        if rng.random() < 0.15:
            check_unfold(x)


def _report(label: str, t0: float, n0: int) -> None:
    print(f"\n[fuzz] {label}: {STATS['inputs'] - n0} inputs in {time.perf_counter() - t0:.1f}s; "
          f"totals {dict(sorted(STATS.items()))}")


# --- the tests -------------------------------------------------------------------------------------------
def test_fuzz_truncations_at_every_length():
    t0, n0 = time.perf_counter(), STATS["inputs"]
    rng = random.Random(1)
    frames = seed_frames(rng, 120)
    for corpus, geneve in ((folded_payloads(rng, frames), True), (plain_geneve(rng, frames[:40]), True),
                           (frames, False)):
        for x in corpus:
            for n in range(len(x)):
                fuzz_one(x[:n], rng, geneve=geneve)
            fuzz_one(x, rng, geneve=geneve)
    _report("truncations", t0, n0)
    assert STATS["inputs"] - n0 >= 30_000


def test_fuzz_mutated_folded_payloads():
    t0, n0 = time.perf_counter(), STATS["inputs"]
    rng = random.Random(2)
    corpus = folded_payloads(rng, seed_frames(rng, 300))
    for _ in range(90_000):
        x = rng.choice(corpus)
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            x = mutate(x, rng, True)
        fuzz_one(x, rng, geneve=True)
    _report("folded", t0, n0)
    assert STATS["unfold:checked"] > 1000


def test_fuzz_mutated_plain_geneve():
    t0, n0 = time.perf_counter(), STATS["inputs"]
    rng = random.Random(3)
    corpus = plain_geneve(rng, seed_frames(rng, 200))
    for _ in range(40_000):
        x = rng.choice(corpus)
        for _ in range(rng.choice((1, 1, 2))):
            x = mutate(x, rng, True)
        fuzz_one(x, rng, geneve=True)
    _report("plain geneve", t0, n0)


def test_fuzz_mutated_raw_frames():
    t0, n0 = time.perf_counter(), STATS["inputs"]
    rng = random.Random(4)
    corpus = seed_frames(rng, 300)
    for _ in range(45_000):
        x = rng.choice(corpus)
        for _ in range(rng.choice((1, 1, 2))):
            x = mutate(x, rng, False)
        fuzz_one(x, rng, geneve=False)
    # pure random bytes too
    for _ in range(5_000):
        fuzz_one(rng.randbytes(rng.randrange(0, 300)), rng, geneve=rng.random() < 0.5)
    _report("raw frames", t0, n0)
    assert STATS["fold:roundtrip"] > 10_000
    print(f"[fuzz] total inputs so far: {STATS['inputs']}")

