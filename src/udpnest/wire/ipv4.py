"""IPv4 header (RFC 791), options allowed.

::

    0       4       8              16      19               31
    |ver|IHL|  TOS  |        total length                   |
    |        identification        |flags|  fragment offset |
    |  TTL  | proto |        header checksum                |
    |                    source address                     |
    |                 destination address                   |
    |              options (IHL*4 - 20 bytes)               |
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from . import csum
from .errors import ParseError, Reason

IPV4_HLEN = 20
IPV4_MAX_HLEN = 60
IP_DF = 0x4000
IP_MF = 0x2000
IP_OFFMASK = 0x1FFF
PROTO_TCP = 6
PROTO_UDP = 17

_IPV4 = struct.Struct("!BBHHHBBH4s4s")
TOTAL_LEN_OFF = 2
CSUM_OFF = 10


class IPv4(NamedTuple):
    hdr_len: int
    tos: int
    total_len: int
    ident: int
    frag: int  # flags (DF/MF) and fragment offset, as on the wire
    ttl: int
    proto: int
    csum: int
    src: bytes
    dst: bytes

    @property
    def is_fragment(self) -> bool:
        return bool(self.frag & (IP_MF | IP_OFFMASK))


def parse_ipv4(buf, off: int = 0, *, verify_csum: bool = False, check_len: bool = True) -> IPv4:
    """Parse the IPv4 header at ``off``.

    ``check_len``: the total length must cover the header and fit in the buffer (turn off for headers
    whose length field was zeroed on purpose, e.g. inside the fold option).
    """
    n = len(buf)
    if off + IPV4_HLEN > n:
        raise ParseError(Reason.TRUNCATED_IPV4, f"ipv4 header: {n - off} bytes, need {IPV4_HLEN}")
    vihl, tos, total, ident, frag, ttl, proto, c, src, dst = _IPV4.unpack_from(buf, off)
    if vihl >> 4 != 4:
        raise ParseError(Reason.BAD_IPV4_VERSION, f"ipv4 version {vihl >> 4}")
    hlen = (vihl & 0xF) * 4
    if hlen < IPV4_HLEN:
        raise ParseError(Reason.BAD_IPV4_IHL, f"ipv4 IHL {vihl & 0xF} < 5")
    if off + hlen > n:
        raise ParseError(Reason.TRUNCATED_IPV4, f"ipv4 options: IHL says {hlen} bytes, {n - off} left")
    if check_len and (total < hlen or off + total > n):
        raise ParseError(Reason.BAD_IPV4_LENGTH, f"ipv4 total length {total} (header {hlen}, {n - off} left)")
    if verify_csum and csum.ones_sum(bytes(buf[off : off + hlen])) != 0xFFFF:
        raise ParseError(Reason.BAD_IPV4_CHECKSUM, f"ipv4 header checksum 0x{c:04x}")
    return IPv4(hlen, tos, total, ident, frag, ttl, proto, c, src, dst)


def build_ipv4(
    src: bytes,
    dst: bytes,
    proto: int,
    payload_len: int,
    *,
    tos: int = 0,
    ident: int = 0,
    frag: int = IP_DF,
    ttl: int = 64,
    options: bytes = b"",
) -> bytes:
    """An IPv4 header with total length and header checksum filled in."""
    if len(options) % 4 or len(options) > IPV4_MAX_HLEN - IPV4_HLEN:
        raise ValueError(f"ipv4 options must be a multiple of 4 bytes, at most 40 (got {len(options)})")
    hlen = IPV4_HLEN + len(options)
    hdr = _IPV4.pack(0x40 | hlen // 4, tos, hlen + payload_len, ident, frag, ttl, proto, 0, src, dst) + options
    return set_ipv4_csum(hdr)


def set_ipv4_csum(hdr) -> bytes:
    """Return the header bytes with a freshly computed checksum."""
    h = bytearray(hdr)
    h[CSUM_OFF : CSUM_OFF + 2] = b"\x00\x00"
    h[CSUM_OFF : CSUM_OFF + 2] = csum.checksum(h).to_bytes(2, "big")
    return bytes(h)
