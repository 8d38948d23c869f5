"""virtio_net_hdr_v1_hash_tunnel (24 bytes): layout, round trip, validation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from udpnest.wire import vnet
from udpnest.wire.errors import ParseError, Reason
from udpnest.wire.vnet import VNET_HDR_LEN, VnetHdr

U16 = st.integers(0, 0xFFFF)
U8 = st.integers(0, 0xFF)

# Ethernet/IPv4/UDP/Geneve(8)/Ethernet/IPv4/TCP: the super-packet of measured-recipes.md section 3.
OUTER_TH = 14 + 20  # 34
INNER_NH = OUTER_TH + 8 + 8 + 14  # 64
INNER_TH = INNER_NH + 20  # 84
KNOWN = bytes.fromhex(
    "09"  # flags NEEDS_CSUM | UDP_TUNNEL_CSUM
    "21"  # gso_type TCPV4 | UDP_TUNNEL_IPV4
    "6800"  # hdr_len 104 (end of inner TCP header)
    "a805"  # gso_size 1448
    "5400"  # csum_start 84
    "1000"  # csum_offset 16
    "0000"  # num_buffers
    "0000"
    "0000"
    "0000"
    "0000"  # hash lo/hi, hash_report, padding
    "2200"  # outer_th_offset 34
    "4000"  # inner_nh_offset 64
)


def test_size_and_constants():
    assert VNET_HDR_LEN == 24 == len(VnetHdr().pack())
    assert vnet.ZERO_VNET_HDR == bytes(24)
    assert (vnet.F_NEEDS_CSUM, vnet.F_DATA_VALID, vnet.F_UDP_TUNNEL_CSUM) == (1, 2, 8)
    assert (vnet.GSO_NONE, vnet.GSO_TCPV4, vnet.GSO_UDP, vnet.GSO_TCPV6, vnet.GSO_UDP_L4) == (0, 1, 3, 4, 5)
    assert (vnet.GSO_UDP_TUNNEL_IPV4, vnet.GSO_UDP_TUNNEL_IPV6, vnet.GSO_ECN) == (0x20, 0x40, 0x80)


def test_known_vector_unpack():
    h = VnetHdr.unpack(KNOWN)
    assert h.flags == vnet.F_NEEDS_CSUM | vnet.F_UDP_TUNNEL_CSUM
    assert h.gso_type == 0x21 and h.base_type == vnet.GSO_TCPV4
    assert h.is_gso and h.is_tunnel and not h.outer_is_ipv6 and h.needs_csum
    assert (h.hdr_len, h.gso_size, h.csum_start, h.csum_offset) == (104, 1448, INNER_TH, 16)
    assert (h.outer_th_offset, h.inner_nh_offset) == (OUTER_TH, INNER_NH)
    assert h.hash_value == 0


def test_known_vector_build():
    h = vnet.tunnel_gso_hdr(
        inner_type=vnet.GSO_TCPV4,
        outer_ipv6=False,
        gso_size=1448,
        hdr_len=INNER_TH + 20,
        outer_th_offset=OUTER_TH,
        inner_nh_offset=INNER_NH,
        inner_th_offset=INNER_TH,
    )
    assert h.pack() == KNOWN


def test_field_offsets_little_endian():
    # every field gets a distinct value: check where its bytes land
    h = VnetHdr(*range(0x11, 0x11 + 13))
    b = h.pack()
    assert b[0] == 0x11 and b[1] == 0x12
    for i, val in enumerate(range(0x13, 0x11 + 13)):
        assert b[2 + 2 * i : 4 + 2 * i] == val.to_bytes(2, "little")
    h2 = VnetHdr(hash_value_lo=0x5678, hash_value_hi=0x1234)
    assert h2.hash_value == 0x12345678
    assert h2.pack()[12:16] == bytes.fromhex("78563412")


def test_zero_header_is_valid_plain_frame():
    h = VnetHdr.unpack(bytes(24) + b"frame")
    assert h == VnetHdr() and not h.is_gso and not h.is_tunnel and h.base_type == vnet.GSO_NONE


def test_unpack_at_offset_and_pack_into():
    buf = bytearray(30)
    VnetHdr.unpack(KNOWN).pack_into(buf, 3)
    assert bytes(buf[3:27]) == KNOWN
    assert VnetHdr.unpack(buf, 3).pack() == KNOWN


def test_kernel_style_headers_accepted():
    # what tun emits for a CHECKSUM_PARTIAL UDP datagram and a USO / TSO frame
    VnetHdr(flags=1, csum_start=34, csum_offset=6).check()
    VnetHdr(flags=1, gso_type=vnet.GSO_UDP_L4, gso_size=1400, csum_start=34, csum_offset=6).check()
    VnetHdr(flags=1, gso_type=vnet.GSO_TCPV6 | vnet.GSO_ECN, gso_size=1440, csum_start=54, csum_offset=16).check()
    VnetHdr(flags=vnet.F_DATA_VALID).check()
    # IPv6 outer, USO inner, outer csum not requested
    vnet.tunnel_gso_hdr(
        inner_type=vnet.GSO_UDP_L4,
        outer_ipv6=True,
        gso_size=1200,
        hdr_len=14 + 40 + 8 + 8 + 14 + 40 + 8,
        outer_th_offset=54,
        inner_nh_offset=54 + 8 + 8 + 14,
        inner_th_offset=54 + 8 + 8 + 14 + 40,
        outer_csum=False,
    ).check()


@pytest.mark.parametrize("n", [0, 1, 12, 23])
def test_truncated(n):
    with pytest.raises(ParseError) as ei:
        VnetHdr.unpack(KNOWN[:n])
    assert ei.value.reason is Reason.TRUNCATED_VNET


def test_truncated_at_offset():
    with pytest.raises(ParseError) as ei:
        VnetHdr.unpack(KNOWN, 1)
    assert ei.value.reason is Reason.TRUNCATED_VNET


_GOOD = VnetHdr.unpack(KNOWN)

BAD = {
    "both tunnel bits": _GOOD._replace(gso_type=0x61),
    "data_valid with tunnel gso": _GOOD._replace(flags=_GOOD.flags | vnet.F_DATA_VALID),
    "tunnel without needs_csum": _GOOD._replace(flags=vnet.F_UDP_TUNNEL_CSUM),
    "unknown base type 2": VnetHdr(gso_type=2, gso_size=100),
    "unknown base type 6": VnetHdr(gso_type=6, gso_size=100),
    "unknown base type 0x10": VnetHdr(gso_type=0x10, gso_size=100),
    "ecn without gso type": VnetHdr(gso_type=vnet.GSO_ECN, gso_size=100),
    "tunnel without gso type": _GOOD._replace(gso_type=vnet.GSO_UDP_TUNNEL_IPV4),
    "ufo in tunnel": _GOOD._replace(gso_type=vnet.GSO_UDP | vnet.GSO_UDP_TUNNEL_IPV4),
    "gso_size 0": _GOOD._replace(gso_size=0),
    "uso without needs_csum": VnetHdr(gso_type=vnet.GSO_UDP_L4, gso_size=1400, csum_start=34, csum_offset=6),
    "uso with ecn": VnetHdr(flags=1, gso_type=0x85, gso_size=1400, csum_start=34, csum_offset=6),
    "uso csum_offset": VnetHdr(flags=1, gso_type=vnet.GSO_UDP_L4, gso_size=1400, csum_start=34, csum_offset=16),
    "tso csum_offset": VnetHdr(flags=1, gso_type=vnet.GSO_TCPV4, gso_size=1400, csum_start=34, csum_offset=6),
    "outer_th too small": _GOOD._replace(outer_th_offset=33),
    "outer_th too small v6": _GOOD._replace(gso_type=vnet.GSO_TCPV4 | vnet.GSO_UDP_TUNNEL_IPV6),
    "inner_nh before outer udp end": _GOOD._replace(inner_nh_offset=OUTER_TH + 7),
    "inner_th inside inner ip": _GOOD._replace(csum_start=INNER_NH + 19),
    "inner v6 too short": _GOOD._replace(gso_type=vnet.GSO_TCPV6 | vnet.GSO_UDP_TUNNEL_IPV4),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_vnet(name):
    raw = BAD[name].pack()
    with pytest.raises(ParseError) as ei:
        VnetHdr.unpack(raw)
    assert ei.value.reason is Reason.BAD_VNET
    # check=False parses anything of the right size
    assert VnetHdr.unpack(raw, check=False).pack() == raw


FIELDS = st.tuples(U8, U8, *([U16] * 11))


@given(FIELDS)
def test_round_trip_any_fields(fields):
    h = VnetHdr(*fields)
    raw = h.pack()
    assert len(raw) == 24
    assert VnetHdr.unpack(raw, check=False) == h


@given(st.binary(min_size=0, max_size=40))
def test_unpack_never_raises_anything_else(raw):
    try:
        h = VnetHdr.unpack(raw)
    except ParseError as e:
        assert e.reason in (Reason.TRUNCATED_VNET, Reason.BAD_VNET)
        return
    assert h.pack() == raw[:24]


@given(
    inner=st.sampled_from([vnet.GSO_TCPV4, vnet.GSO_TCPV6, vnet.GSO_UDP_L4]),
    outer_v6=st.booleans(),
    outer_csum=st.booleans(),
    ecn=st.booleans(),
    gso_size=st.integers(1, 0xFFFF),
    opt=st.integers(0, 200),
)
def test_round_trip_valid_tunnel(inner, outer_v6, outer_csum, ecn, gso_size, opt):
    ecn = ecn and inner != vnet.GSO_UDP_L4
    outer_th = 14 + (40 if outer_v6 else 20)
    inner_nh = outer_th + 8 + 8 + opt + 14
    inner_th = inner_nh + (40 if inner == vnet.GSO_TCPV6 else 20)
    h = vnet.tunnel_gso_hdr(
        inner_type=inner,
        outer_ipv6=outer_v6,
        gso_size=gso_size,
        hdr_len=inner_th + 20,
        outer_th_offset=outer_th,
        inner_nh_offset=inner_nh,
        inner_th_offset=inner_th,
        outer_csum=outer_csum,
        ecn=ecn,
    )
    back = VnetHdr.unpack(h.pack())
    assert back == h
    assert back.is_tunnel and back.is_gso and back.base_type == inner and back.outer_is_ipv6 == outer_v6
