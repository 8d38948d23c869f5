"""contrib/wireshark/udpnest.lua under tshark, and ``udpnest decode``, on pcaps built with udpnest's own fold().

Every field of the FOLD and echo options (docs/wire-format.md) must come out as sent; the unfolded frame the
dissector rebuilds must be byte-identical to the frame udpnest folded (lengths and checksums restored) and be
dissected as the Ethernet / IP / UDP / VXLAN it is; valid packets carry no malformed / error expert info and
each kind of malformed option is flagged.  Real captured traffic: tests/privileged/test_operations.py.
"""

from __future__ import annotations

import struct

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import wrpcap

import tshark_udpnest as ts
from packets import Inner, IPSpec, Tunnel, frame
from udpnest import cli, fold
from udpnest.decode import describe
from udpnest.fold import gro_hint_for
from udpnest.wire.geneve import build_geneve
from udpnest.wire.options import CAP_FOLD, CAP_HINT, Echo, build_echo, build_gro_hint

pytestmark = pytest.mark.skipif(ts.TSHARK is None, reason="tshark not installed")

PAYLOAD = bytes(range(256)) * 2
V4 = Tunnel(ip=IPSpec(ident=77, tos=0x10, src="192.0.2.1", dst="192.0.2.2"), vni=4242, udp_csum=True)
V6 = Tunnel(ip=IPSpec(v6=True, flow=0x12345, src="2001:db8::1", dst="2001:db8::2"), vni=99, udp_csum=True)
V4_NOCSUM = Tunnel(ip=IPSpec(ident=5, src="192.0.2.5", dst="192.0.2.6"), vni=1, udp_csum=False)
INNER = Inner(ip=IPSpec(src="203.0.113.1", dst="203.0.113.2"), payload=PAYLOAD)
INNER6 = Inner(ip=IPSpec(v6=True, src="2001:db8:ff::1", dst="2001:db8:ff::2"), payload=PAYLOAD)
REQ = Echo(0x0123456789ABCDEF, 1_700_000_000_123_456_789, 3, 252, CAP_FOLD | CAP_HINT)
REP = Echo(0xFEDCBA9876543210, 42, 2, 128, CAP_FOLD)


def outer(payload: bytes, sport: int = 40001) -> Ether:
    return (Ether(src="02:00:00:00:00:aa", dst="02:00:00:00:00:bb") / IP(src="198.51.100.1", dst="198.51.100.2")
            / UDP(sport=sport, dport=6081) / Raw(payload))


def echo_packet(e: Echo, reply: bool) -> bytes:
    return build_geneve(7, 0x6558, build_echo(e, reply=reply), oam=True)


VALID = {  # name -> (frame that was folded or None, Geneve payload)
    "v4": [V4],
    "v6": [V6],
    "v4-in-v4": [V4, V4_NOCSUM],
    "v4-no-udp-csum": [V4_NOCSUM],
}


@pytest.fixture(scope="module")
def valid_pcap(tmp_path_factory):
    """Folded frames of several shapes, an echo request and reply, a hint-mode packet: all valid."""
    frames, pkts = {}, []
    for i, (name, levels) in enumerate(VALID.items()):
        inner = INNER6 if name == "v6" else INNER
        f = frame(levels, inner)
        fo = fold(f, vni=1000 + i)
        assert fo.levels == len(levels), name
        frames[len(pkts) + 1] = (name, f, levels, 1000 + i)
        pkts.append(outer(fo.payload))
    pkts.append(outer(echo_packet(REQ, reply=False)))
    pkts.append(outer(echo_packet(REP, reply=True)))
    hinted = frame([V4], INNER)
    h = gro_hint_for(hinted)
    assert h is not None
    pkts.append(outer(build_geneve(5, 0x6558, build_gro_hint(h)) + hinted))
    path = tmp_path_factory.mktemp("ws") / "valid.pcap"
    wrpcap(str(path), pkts)
    return path, frames, h


FOLD_FIELDS = ["udpnest.fold.version", "udpnest.fold.enc", "udpnest.fold.flags", "udpnest.fold.flags.v6",
               "udpnest.fold.flags.udp_csum", "udpnest.fold.flags.len_zeroed", "udpnest.fold.flags.csum_zeroed",
               "udpnest.fold.flags.rco", "udpnest.fold.l2_len", "udpnest.fold.l3_len", "udpnest.fold.tun_len",
               "udpnest.fold.reserved", "udpnest.fold.levels", "udpnest.geneve.vni", "udpnest.option.class",
               "udpnest.option.type", "vxlan.vni", "tcp.srcport", "ip.checksum.status", "udp.checksum.status"]
ECHO_FIELDS = ["udpnest.echo.nonce", "udpnest.echo.timestamp", "udpnest.echo.cap_version",
               "udpnest.echo.max_levels", "udpnest.echo.max_opt_words", "udpnest.echo.cap_flags",
               "udpnest.echo.cap_flags.fold", "udpnest.echo.cap_flags.hint", "udpnest.echo.reply",
               "udpnest.geneve.oam"]
HINT_FIELDS = ["udpnest.gro_hint.inner_proto_id", "udpnest.gro_hint.nested_is_v6",
               "udpnest.gro_hint.nested_nh_offset", "udpnest.gro_hint.nested_tp_offset",
               "udpnest.gro_hint.nested_hdr_len", "geneve.vni"]
CHECKSUMS = ("-o", "ip.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE")


def test_fold_fields_equal_what_was_sent(valid_pcap):
    path, frames, _ = valid_pcap
    rows = ts.fields(path, FOLD_FIELDS, *CHECKSUMS)
    for n, (name, _f, levels, vni) in frames.items():
        r = rows[n - 1]
        k = len(levels)
        assert r["udpnest.fold.levels"] == [str(k)], name
        assert r["udpnest.geneve.vni"] == [str(vni)], name
        assert r["udpnest.option.class"] == ["0xff4e"] * k and r["udpnest.option.type"] == ["0x81"] * k
        assert r["udpnest.fold.version"] == ["0"] * k
        assert r["udpnest.fold.enc"] == ["1"] * k  # VXLAN
        v6 = [lv.ip.v6 for lv in levels]
        csum = [lv.udp_csum for lv in levels]
        assert r["udpnest.fold.flags"] == [hex(0x30 | 0x80 * a | 0x40 * b) for a, b in zip(v6, csum, strict=True)]
        assert r["udpnest.fold.flags.v6"] == [str(int(a)) for a in v6]
        assert r["udpnest.fold.flags.udp_csum"] == [str(int(b)) for b in csum]
        assert r["udpnest.fold.flags.len_zeroed"] == ["1"] * k and r["udpnest.fold.flags.csum_zeroed"] == ["1"] * k
        assert r["udpnest.fold.flags.rco"] == ["0"] * k
        assert r["udpnest.fold.l2_len"] == ["14"] * k
        assert r["udpnest.fold.l3_len"] == [str(40 if a else 20) for a in v6]
        assert r["udpnest.fold.tun_len"] == ["8"] * k and r["udpnest.fold.reserved"] == ["0x00"] * k
        # the unfolded frame is dissected as what it is: every VXLAN level, the inner TCP
        assert r["vxlan.vni"] == [str(lv.vni) for lv in levels], name
        assert r["tcp.srcport"] == ["40000"]
        # restored checksums verify (1 = good): outer UDP, nested IPv4 headers, nested UDP that had one
        assert r["ip.checksum.status"] and set(r["ip.checksum.status"]) == {"1"}, (name, r["ip.checksum.status"])
        # UDP: 1 good, 3 not present (a nested level without a checksum); never 0 (bad) or 2 (unverified)
        assert set(r["udp.checksum.status"]) <= {"1", "3"}, (name, r["udp.checksum.status"])
        assert r["udp.checksum.status"].count("3") == sum(not lv.udp_csum for lv in levels), name


def test_unfolded_frame_is_byte_identical(valid_pcap):
    path, frames, _ = valid_pcap
    got = ts.unfolded_frames(path)
    assert set(got) == set(frames)
    for n, (name, f, _levels, _vni) in frames.items():
        assert got[n] == f, name


def test_echo_and_hint_fields(valid_pcap):
    path, frames, h = valid_pcap
    rows = ts.fields(path, ECHO_FIELDS + HINT_FIELDS)
    req, rep, hint = rows[len(frames)], rows[len(frames) + 1], rows[len(frames) + 2]
    for r, e, reply in ((req, REQ, False), (rep, REP, True)):
        assert r["udpnest.echo.nonce"] == [f"0x{e.nonce:016x}"]
        assert r["udpnest.echo.timestamp"] == [str(e.timestamp)]
        assert r["udpnest.echo.cap_version"] == ["0"]
        assert r["udpnest.echo.max_levels"] == [str(e.max_levels)]
        assert r["udpnest.echo.max_opt_words"] == [str(e.max_option_bytes // 4)]
        assert r["udpnest.echo.cap_flags"] == [f"0x{e.cap_flags:02x}"]
        assert r["udpnest.echo.cap_flags.fold"] == ["1"]
        assert r["udpnest.echo.cap_flags.hint"] == [str(int(bool(e.cap_flags & CAP_HINT)))]
        assert r["udpnest.echo.reply"] == [str(int(reply))] and r["udpnest.geneve.oam"] == ["1"]
    assert hint["udpnest.gro_hint.inner_proto_id"] == [str(h.inner_proto_id)]
    assert hint["udpnest.gro_hint.nested_is_v6"] == ["0"]
    assert hint["udpnest.gro_hint.nested_nh_offset"] == [str(h.nested_nh_offset)]
    assert hint["udpnest.gro_hint.nested_tp_offset"] == [str(h.nested_tp_offset)]
    assert hint["udpnest.gro_hint.nested_hdr_len"] == [str(h.nested_hdr_len)]
    assert hint["geneve.vni"] == ["0x000005"]  # hint mode: the built-in Geneve dissector stays in charge


def test_valid_packets_have_no_malformed_or_error_expert_info(valid_pcap):
    path, _, _ = valid_pcap
    for n, items in enumerate(ts.experts(path), 1):
        bad = [i for i in items if i[0] == ts.MALFORMED_GROUP or i[1] >= ts.ERROR_SEVERITY]
        assert not bad, (n, bad)


def _fold_v4() -> bytearray:
    return bytearray(fold(frame([V4], INNER), vni=9).payload)


# offsets in a one-level IPv4 fold payload: Geneve header 8, option header 4, then the FOLD data
D = 12


def _set(buf: bytearray, off: int, val: int) -> bytearray:
    buf[off] = val
    return buf


MALFORMED = {
    "version 1": (lambda: _set(_fold_v4(), D, 0x41), "Malformed FOLD option: version 1"),
    "reserved bits": (lambda: _set(_fold_v4(), D, 0x09), "Malformed FOLD option: reserved bits set"),
    "reserved flag": (lambda: _set(_fold_v4(), D + 1, 0x71), "Malformed FOLD option: reserved bits set"),
    "reserved byte": (lambda: _set(_fold_v4(), D + 5, 1), "Malformed FOLD option: reserved bits set"),
    "unknown enc": (lambda: _set(_fold_v4(), D, 0x05), "Malformed FOLD option: unknown nested tunnel type 5"),
    "L and C missing": (lambda: _set(_fold_v4(), D + 1, 0x40), "requires both L and C flags"),
    "L2 length": (lambda: _set(_fold_v4(), D + 2, 13), "Malformed FOLD option: L2 length 13"),
    "L3 length": (lambda: _set(_fold_v4(), D + 3, 24), "do not fill the option"),
    "length not zeroed": (lambda: _set(_fold_v4(), D + 6 + 14 + 3, 0x80), "total length / checksum not zeroed"),
    "not UDP": (lambda: _set(_fold_v4(), D + 6 + 14 + 9, 6), "carried IPv4 header is not UDP"),
    "VXLAN I flag": (lambda: _set(_fold_v4(), D + 6 + 14 + 20 + 8, 0), "VXLAN header (I flag)"),
    "wrong protocol": (lambda: _set(_fold_v4(), 3, 0x00), "Geneve protocol is 0x6500"),
    "option crosses opt len": (lambda: _set(_fold_v4(), 0, 0x02), "an option crosses Opt Len"),
    "echo 16 bytes": (lambda: bytearray(build_geneve(7, 0x6558, struct.pack("!HBB", 0xFF4E, 0x82, 4) + bytes(16),
                                                     oam=True)), "Malformed echo option: 16 bytes of data"),
    "echo cap version": (lambda: _set(bytearray(echo_packet(REQ, reply=False)), 8 + 4 + 16, 1),
                         "Malformed echo option: capability version 1"),
}


@pytest.fixture(scope="module")
def malformed_pcap(tmp_path_factory):
    path = tmp_path_factory.mktemp("ws") / "malformed.pcap"
    wrpcap(str(path), [outer(bytes(make())) for make, _ in MALFORMED.values()])
    return path


def test_malformed_options_are_flagged(malformed_pcap):
    items = ts.experts(malformed_pcap)
    assert len(items) == len(MALFORMED)
    for (name, (_, text)), got in zip(MALFORMED.items(), items, strict=True):
        msgs = [m for g, s, m in got if g == ts.MALFORMED_GROUP and s == ts.ERROR_SEVERITY]
        assert any(text in m for m in msgs), (name, got)


def test_decode_prints_restored_frames(valid_pcap, malformed_pcap, capsys):
    path, frames, _ = valid_pcap
    assert cli.main(["decode", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    firsts = [ln for ln in out if ln.startswith("#")]
    assert len(firsts) == len(frames) + 3
    assert "FOLD x1" in firsts[0] and "VXLAN" in out[1] and "TCP 203.0.113.1:40000 > 203.0.113.2:5001" in out[1]
    assert f"echo-request nonce 0x{REQ.nonce:016x} timestamp {REQ.timestamp} caps fold,hint" in firsts[len(frames)]
    assert "echo-reply" in firsts[len(frames) + 1] and "gro-hint" in firsts[len(frames) + 2]
    assert out[-1] == "packets: echo-reply 1, echo-request 1, fold 4, hint 1"
    assert cli.main(["decode", str(malformed_pcap)]) == 0
    out = capsys.readouterr().out
    assert "malformed: bad_fold_version" in out and "malformed: bad_echo" in out


def test_describe_restores_exactly():
    f = frame([V4, V4_NOCSUM], INNER)
    kind, lines = describe(fold(f, vni=3).payload, verbose=True)
    assert kind == "fold" and "FOLD x2" in lines[0]
    assert any("vni       = 0x1092" in ln for ln in lines) and any("vni       = 0x1" in ln for ln in lines)
    assert describe(b"junk")[0] == "malformed"
