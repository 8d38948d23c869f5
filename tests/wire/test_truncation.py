"""Every parser, cut at every length below its header length, raises the right TRUNCATED_* reason;
and the other per-field rejections of the wire parsers."""

from __future__ import annotations

import pytest

import packets  # noqa: F401  (makes udpnest importable from a plain checkout)
from udpnest.wire import options
from udpnest.wire.errors import ParseError, Reason
from udpnest.wire.eth import build_eth, parse_eth
from udpnest.wire.geneve import build_geneve, build_option, parse_geneve, parse_options
from udpnest.wire.ipv4 import build_ipv4, parse_ipv4
from udpnest.wire.ipv6 import MAX_EXT_HEADERS, build_ipv6, parse_ipv6
from udpnest.wire.tcp import build_tcp, parse_tcp
from udpnest.wire.udp import build_udp, parse_udp
from udpnest.wire.vxlan import build_vxlan, build_vxlan_gpe, parse_vxlan

MAC1, MAC2 = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")


def reason_of(fn, *a, **kw) -> Reason:
    with pytest.raises(ParseError) as e:
        fn(*a, **kw)
    return e.value.reason


@pytest.mark.parametrize("lead", [0, 3])
def test_eth_truncation(lead):
    pre = b"\xaa" * lead
    plain = build_eth(MAC1, MAC2, 0x0800)
    tagged = build_eth(MAC1, MAC2, 0x86DD, 0x2005)
    for n in range(len(plain)):
        assert reason_of(parse_eth, pre + plain[:n], lead) is Reason.TRUNCATED_ETH
    for n in range(len(tagged)):
        assert reason_of(parse_eth, pre + tagged[:n], lead) is Reason.TRUNCATED_ETH
    assert parse_eth(pre + plain, lead) == (MAC1, MAC2, 0x0800, None, 14)
    assert parse_eth(pre + tagged, lead) == (MAC1, MAC2, 0x86DD, 0x2005, 18)


def test_ipv4_truncation_and_fields():
    hdr = build_ipv4(bytes(4), bytes(4), 17, 0, options=b"\x01" * 12)
    for n in range(len(hdr)):
        for cl in (True, False):
            assert reason_of(parse_ipv4, hdr[:n], check_len=cl) is Reason.TRUNCATED_IPV4, n
    plain = build_ipv4(bytes(4), bytes(4), 17, 10)
    assert reason_of(parse_ipv4, plain + bytes(9)) is Reason.BAD_IPV4_LENGTH  # total length beyond buffer
    assert parse_ipv4(plain + bytes(9), check_len=False).total_len == 30
    assert parse_ipv4(plain + bytes(10)).total_len == 30
    short_total = bytearray(plain)
    short_total[2:4] = (19).to_bytes(2, "big")
    assert reason_of(parse_ipv4, bytes(short_total) + bytes(10)) is Reason.BAD_IPV4_LENGTH
    for ver in (0, 5, 6, 15):
        b = bytearray(plain)
        b[0] = ver << 4 | 5
        assert reason_of(parse_ipv4, bytes(b) + bytes(10)) is Reason.BAD_IPV4_VERSION
    for ihl in range(5):
        b = bytearray(plain)
        b[0] = 0x40 | ihl
        assert reason_of(parse_ipv4, bytes(b) + bytes(10)) is Reason.BAD_IPV4_IHL


def test_ipv6_truncation_and_fields():
    ext = bytes([60, 0]) + bytes(6) + bytes([17, 1]) + bytes(14)  # hop-by-hop 8 B, dest options 16 B
    raw = build_ipv6(bytes(16), bytes(16), 0, len(ext) + 8) + ext + build_udp(1, 2, 0)
    assert parse_ipv6(raw).hdr_len == 64 and parse_ipv6(raw).proto == 17
    for n in range(40):
        assert reason_of(parse_ipv6, raw[:n]) is Reason.TRUNCATED_IPV6
        assert reason_of(parse_ipv6, raw[:n], check_len=False) is Reason.TRUNCATED_IPV6
    for n in range(40, 64):
        # the payload length check comes first; without it, the extension header walk finds the cut
        assert reason_of(parse_ipv6, raw[:n]) is Reason.BAD_IPV6_LENGTH
        assert reason_of(parse_ipv6, raw[:n], check_len=False) is Reason.TRUNCATED_IPV6, n
    b = bytearray(raw)
    b[0] = 0x40
    assert reason_of(parse_ipv6, bytes(b)) is Reason.BAD_IPV6_VERSION
    b = bytearray(raw)
    b[4:6] = (10).to_bytes(2, "big")  # payload length smaller than the extension headers
    assert reason_of(parse_ipv6, bytes(b)) is Reason.BAD_IPV6_LENGTH
    assert parse_ipv6(bytes(b), check_len=False).hdr_len == 64


def ipv6_with_ext_chain(k: int) -> bytes:
    ext = b"".join(bytes([60 if i < k - 1 else 17, 0]) + bytes(6) for i in range(k))
    return build_ipv6(bytes(16), bytes(16), 60 if k else 17, len(ext) + 8) + ext + build_udp(1, 2, 0)


def test_ipv6_extension_chain_limit():
    for k in range(MAX_EXT_HEADERS):
        got = parse_ipv6(ipv6_with_ext_chain(k))
        assert got.proto == 17 and got.hdr_len == 40 + 8 * k
    for k in (MAX_EXT_HEADERS + 1, MAX_EXT_HEADERS + 5):
        assert reason_of(parse_ipv6, ipv6_with_ext_chain(k)) is Reason.BAD_IPV6_EXTENSION


def test_ipv6_exactly_max_extension_headers_accepted():
    got = parse_ipv6(ipv6_with_ext_chain(MAX_EXT_HEADERS))
    assert got.proto == 17 and got.hdr_len == 40 + 8 * MAX_EXT_HEADERS


def test_udp_truncation_and_length():
    raw = build_udp(1, 2, 4) + bytes(4)
    for n in range(8):
        assert reason_of(parse_udp, raw[:n]) is Reason.TRUNCATED_UDP
        assert reason_of(parse_udp, raw[:n], check_len=False) is Reason.TRUNCATED_UDP
    assert reason_of(parse_udp, raw[:11]) is Reason.BAD_UDP_LENGTH
    assert parse_udp(raw[:11], check_len=False).length == 12
    for ln in range(8):
        assert reason_of(parse_udp, build_udp(1, 2, 0)[:4] + ln.to_bytes(2, "big") + b"\0\0") is Reason.BAD_UDP_LENGTH


def test_tcp_truncation_and_offset():
    raw = build_tcp(1, 2, 3, 4, 0x18, options=b"\x01" * 20)
    for n in range(len(raw)):
        assert reason_of(parse_tcp, raw[:n]) is Reason.TRUNCATED_TCP
    assert parse_tcp(raw).hdr_len == 40
    for doff in range(5):
        b = bytearray(raw)
        b[12] = doff << 4
        assert reason_of(parse_tcp, bytes(b)) is Reason.BAD_TCP_OFFSET


def test_vxlan_truncation():
    for raw, gpe in ((build_vxlan(7), False), (build_vxlan_gpe(7, 1), True)):
        for n in range(8):
            assert reason_of(parse_vxlan, raw[:n], gpe=gpe) is Reason.TRUNCATED_VXLAN
            assert reason_of(parse_vxlan, b"\0" * 2 + raw[:n], 2, gpe=gpe) is Reason.TRUNCATED_VXLAN


def test_geneve_truncation_and_fields():
    opts = build_option(0x0101, 1, bytes(8)) + build_option(0x0102, 0x80, b"")
    raw = build_geneve(9, 0x6558, opts)
    assert parse_geneve(raw).hdr_len == 8 + 16
    for n in range(len(raw)):
        assert reason_of(parse_geneve, raw[:n]) is Reason.TRUNCATED_GENEVE
        assert reason_of(options.parse_packet, raw[:n]) is Reason.TRUNCATED_GENEVE
    for ver in (1, 2, 3):
        b = bytearray(raw)
        b[0] |= ver << 6
        assert reason_of(parse_geneve, bytes(b)) is Reason.BAD_GENEVE_VERSION
    # an option TLV whose length crosses the header's opt_len
    for cut_words in (2, 3):  # opt_len 8 or 4 bytes: inside the first (12-byte) TLV
        b = bytearray(raw)
        b[0] = (16 - 4 * cut_words) // 4
        hdr = parse_geneve(bytes(b))
        assert reason_of(parse_options, bytes(b), 0, hdr) is Reason.BAD_GENEVE_OPTLEN
    # an option header that crosses opt_len cannot happen with word-granular lengths, but a TLV length can
    b = bytearray(build_geneve(9, 0x6558, build_option(1, 1, bytes(4))))
    b[11] = 2
    assert reason_of(parse_options, bytes(b), 0, parse_geneve(bytes(b))) is Reason.BAD_GENEVE_OPTLEN


def test_option_data_lengths():
    echo = options.build_echo(options.Echo(1, 2, 3, 4, 5), reply=False)[4:]
    for n in list(range(len(echo))) + [24, 28]:
        assert reason_of(options.parse_echo, (echo + bytes(8))[:n]) is Reason.BAD_ECHO
    hint = options.build_gro_hint(options.GroHint(0, False, 14, 34, 50))[4:]
    for n in (0, 1, 2, 3, 5, 8):
        assert reason_of(options.parse_gro_hint, (hint + bytes(4))[:n]) is Reason.BAD_GRO_HINT
