"""The Geneve options udpnest understands, and the one-pass option parser for received packets.

udpnest's own options (class configurable, default :data:`DEFAULT_OPT_CLASS` from the experimental
range 0xFF00-0xFFFF; see docs/wire-format.md for the byte diagrams and the rationale):

* ``FOLD`` (type 0x81, critical): one nested tunnel level (its L2/L3/UDP/tunnel headers, verbatim,
  length and checksum fields zeroed) plus 6 bytes of metadata.  One option per folded level,
  outermost level first.
* ``ECHO_REQUEST`` (0x82, critical) / ``ECHO_REPLY`` (0x83, critical): nonce, timestamp and
  capabilities, used to find out whether a peer understands ``FOLD`` before folding towards it.

Linux's GRO hint (class 0x0100, type 1, 8 bytes, Linux >= 7.0 ``drivers/net/geneve.c``) is parsed
and built byte-compatibly.  Received options are parsed once, bounds-checked, into a
:class:`GenevePacket`; nothing downstream re-reads the option area (Linux CVE-2026-72407/72408 came
from parsing a received hint twice, inconsistently, and from honouring it when not enabled).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from .csum import ones_sum
from .errors import ParseError, Reason
from .geneve import GENEVE_HLEN, TYPE_CRITICAL, Geneve, build_option, parse_geneve, parse_options

DEFAULT_OPT_CLASS = 0xFF4E  # experimental/local use (RFC 8926 / IANA "Geneve Option Class")
TYPE_FOLD = TYPE_CRITICAL | 0x01
TYPE_ECHO_REQUEST = TYPE_CRITICAL | 0x02
TYPE_ECHO_REPLY = TYPE_CRITICAL | 0x03

# --- echo request / reply -------------------------------------------------------------------------
#  0                   1                   2                   3
# |                         nonce (64 bits)                       |
# |                                                               |
# |                 timestamp (64 bits, sender's ns)              |
# |                                                               |
# |  cap version  |  max levels   | max opt words |   cap flags   |
ECHO_DATA_LEN = 20
ECHO_CAP_VERSION = 0
CAP_FOLD = 0x01
CAP_HINT = 0x02
CAP_RCO = 0x04
_ECHO = struct.Struct("!QQBBBB")


class Echo(NamedTuple):
    nonce: int
    timestamp: int
    max_levels: int
    max_option_bytes: int
    cap_flags: int
    cap_version: int = ECHO_CAP_VERSION


def build_echo(echo: Echo, *, reply: bool, opt_class: int = DEFAULT_OPT_CLASS) -> bytes:
    """The echo request (or reply) option TLV."""
    if echo.max_option_bytes % 4 or not 0 <= echo.max_option_bytes <= 252:
        raise ValueError(f"max_option_bytes must be a multiple of 4 in 0..252 (got {echo.max_option_bytes})")
    data = _ECHO.pack(echo.nonce, echo.timestamp, echo.cap_version, echo.max_levels,
                      echo.max_option_bytes // 4, echo.cap_flags)
    return build_option(opt_class, TYPE_ECHO_REPLY if reply else TYPE_ECHO_REQUEST, data)


def parse_echo(data: bytes) -> Echo:
    if len(data) != ECHO_DATA_LEN:
        raise ParseError(Reason.BAD_ECHO, f"echo option data is {len(data)} bytes, expected {ECHO_DATA_LEN}")
    nonce, ts, ver, levels, words, flags = _ECHO.unpack(data)
    if ver != ECHO_CAP_VERSION:
        raise ParseError(Reason.BAD_ECHO, f"echo capability version {ver}")
    if words > 63:
        raise ParseError(Reason.BAD_ECHO, f"echo max option words {words} > 63")
    return Echo(nonce, ts, levels, words * 4, flags, ver)


# --- Linux GRO hint ----------------------------------------------------------------------------------
# | Option Class = 0x0100 | Type = 0x01 |R|R|R| Len = 1 |
# | id:2 v6:1 rsvd:5 (LE bitfield) | nested_nh_offset | nested_tp_offset | nested_hdr_len |
GRO_HINT_CLASS = 0x0100
GRO_HINT_TYPE = 0x01
GRO_HINT_DATA_LEN = 4
GRO_HINT_SIZE = 8
# inner_proto_id -> ethertype of what follows the nested headers (Linux proto_id_map)
GRO_HINT_PROTO = (0x6558, 0x86DD, 0x0800)
IPV4_HLEN, IPV6_HLEN, UDP_HLEN = 20, 40, 8


class GroHint(NamedTuple):
    inner_proto_id: int  # 0 Ethernet (TEB), 1 IPv6, 2 IPv4
    nested_is_v6: bool
    nested_nh_offset: int  # offsets count from the end of the Geneve header
    nested_tp_offset: int
    nested_hdr_len: int  # up to the innermost MAC (or IP) header

    @property
    def inner_proto(self) -> int:
        return GRO_HINT_PROTO[self.inner_proto_id]


def build_gro_hint(h: GroHint) -> bytes:
    """The 8-byte option.  Byte 4 is the C bitfield ``inner_proto_id:2, nested_is_v6:1`` as laid out by
    GCC on little-endian hosts: ``id | v6 << 2``."""
    for name in ("nested_nh_offset", "nested_tp_offset", "nested_hdr_len"):
        if not 0 <= getattr(h, name) <= 255:
            raise ValueError(f"gro hint {name} must fit in a byte (got {getattr(h, name)})")
    if not 0 <= h.inner_proto_id < len(GRO_HINT_PROTO):
        raise ValueError(f"gro hint inner_proto_id must be 0..2 (got {h.inner_proto_id})")
    data = bytes((h.inner_proto_id | (int(h.nested_is_v6) << 2), h.nested_nh_offset, h.nested_tp_offset,
                  h.nested_hdr_len))
    return build_option(GRO_HINT_CLASS, GRO_HINT_TYPE, data)


def parse_gro_hint(data: bytes) -> GroHint:
    """Decode and sanitise a hint the way ``geneve_opt_gro_hint_off()`` does (Linux 7.0)."""
    if len(data) != GRO_HINT_DATA_LEN:
        raise ParseError(Reason.BAD_GRO_HINT, f"gro hint data is {len(data)} bytes, expected 4")
    b4, nh, tp, hlen = data
    h = GroHint(b4 & 0x3, bool(b4 & 0x4), nh, tp, hlen)
    if tp + UDP_HLEN > hlen:
        raise ParseError(Reason.BAD_GRO_HINT, f"gro hint nested_tp_offset {tp} + 8 > nested_hdr_len {hlen}")
    if nh + (IPV6_HLEN if h.nested_is_v6 else IPV4_HLEN) > tp:
        raise ParseError(Reason.BAD_GRO_HINT, f"gro hint nested_nh_offset {nh} leaves no room for IP before {tp}")
    if h.inner_proto_id >= len(GRO_HINT_PROTO):
        raise ParseError(Reason.BAD_GRO_HINT, f"gro hint inner_proto_id {h.inner_proto_id}")
    return h


def validate_gro_hint(nested, h: GroHint) -> None:
    """Check the nested headers at the start of ``nested`` (the Geneve payload) against the hint, as
    ``geneve_opt_gro_hint_validate()`` does, plus the bounds check the kernel gets from pskb_may_pull.
    """
    if h.nested_hdr_len > len(nested):
        raise ParseError(Reason.BAD_GRO_HINT, f"gro hint nested_hdr_len {h.nested_hdr_len} > payload {len(nested)}")
    nh = h.nested_nh_offset
    if h.nested_is_v6:
        if nested[nh + 6] == 17:
            return
        off = nh + IPV6_HLEN
        while off + 2 <= h.nested_tp_offset:
            ln = (nested[off + 1] + 1) * 8
            if off + ln > h.nested_tp_offset:
                break
            if nested[off] == 17:
                return
            off += ln
        raise ParseError(Reason.BAD_GRO_HINT, "gro hint: nested IPv6 does not lead to UDP")
    ip = bytes(nested[nh : nh + IPV4_HLEN])
    frag = int.from_bytes(ip[6:8], "big")
    if ip[0] != 0x45 or frag & 0x3FFF or ip[9] != 17 or ones_sum(ip) != 0xFFFF:
        raise ParseError(Reason.BAD_GRO_HINT, "gro hint: nested IPv4 is not 0x45/UDP/unfragmented/valid csum")


# --- one-pass parse of a received Geneve payload -----------------------------------------------------
class GenevePacket(NamedTuple):
    hdr: Geneve
    folds: tuple[bytes, ...]  # FOLD option data, outermost level first
    gro_hint: GroHint | None
    echo_request: Echo | None
    echo_reply: Echo | None


def parse_packet(payload, *, opt_class: int = DEFAULT_OPT_CLASS, accept_gro_hint: bool = True) -> GenevePacket:
    """Parse the Geneve header and every option once.

    Raises :class:`ParseError` for a malformed header or option, for a malformed known option, and
    (RFC 8926 section 3.5) ``UNKNOWN_CRITICAL_OPTION`` for a critical option udpnest does not know.
    ``accept_gro_hint=False`` ignores a received hint entirely (it is non-critical), as Linux must when
    the socket has hints off.
    """
    hdr = parse_geneve(payload, 0)
    folds: list[bytes] = []
    hint = req = rep = None
    for opt in parse_options(payload, 0, hdr):
        if opt.cls == opt_class:
            if opt.type == TYPE_FOLD:
                folds.append(opt.data)
                continue
            if opt.type == TYPE_ECHO_REQUEST or opt.type == TYPE_ECHO_REPLY:
                if (req if opt.type == TYPE_ECHO_REQUEST else rep) is not None:
                    raise ParseError(Reason.BAD_ECHO, "more than one echo option of a kind")
                e = parse_echo(opt.data)
                if opt.type == TYPE_ECHO_REQUEST:
                    req = e
                else:
                    rep = e
                continue
        elif opt.cls == GRO_HINT_CLASS and opt.type == GRO_HINT_TYPE and accept_gro_hint:
            if hint is not None:
                raise ParseError(Reason.BAD_GRO_HINT, "more than one gro hint")
            hint = parse_gro_hint(opt.data)
            continue
        if opt.critical:
            raise ParseError(Reason.UNKNOWN_CRITICAL_OPTION,
                             f"critical option class 0x{opt.cls:04x} type 0x{opt.type:02x}")
    return GenevePacket(hdr, tuple(folds), hint, req, rep)


__all__ = [
    "DEFAULT_OPT_CLASS", "TYPE_FOLD", "TYPE_ECHO_REQUEST", "TYPE_ECHO_REPLY", "Echo", "build_echo",
    "parse_echo", "GroHint", "build_gro_hint", "parse_gro_hint", "validate_gro_hint", "GenevePacket",
    "parse_packet", "GENEVE_HLEN", "CAP_FOLD", "CAP_HINT", "CAP_RCO",
]
