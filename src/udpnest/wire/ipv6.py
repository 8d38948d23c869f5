"""IPv6 header (RFC 8200) and the extension headers in front of the transport.

::

    0       4               12                              31
    |ver| traffic class |          flow label               |
    |       payload length      | next header | hop limit   |
    |              source address (16)                      |
    |           destination address (16)                    |

Extension headers skipped to reach the transport: hop-by-hop (0), routing (43), destination options
(60): ``(len + 1) * 8`` bytes; fragment (44): 8 bytes; AH (51): ``(len + 2) * 4`` bytes.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from .errors import ParseError, Reason

IPV6_HLEN = 40
NH_HOPOPTS = 0
NH_ROUTING = 43
NH_FRAGMENT = 44
NH_AH = 51
NH_DSTOPTS = 60
NH_NONE = 59
_EXT_8 = frozenset((NH_HOPOPTS, NH_ROUTING, NH_DSTOPTS))
_EXT = _EXT_8 | {NH_FRAGMENT, NH_AH}
MAX_EXT_HEADERS = 8  # bound the walk: more than this is treated as malformed

_IPV6 = struct.Struct("!IHBB16s16s")
PAYLOAD_LEN_OFF = 4


class IPv6(NamedTuple):
    tc: int
    flow: int
    payload_len: int
    next_header: int  # the first next-header value (what the fixed header says)
    hop_limit: int
    src: bytes
    dst: bytes
    proto: int  # the transport protocol after the extension headers
    hdr_len: int  # 40 + extension headers
    fragment: bool


def parse_ipv6(buf, off: int = 0, *, check_len: bool = True) -> IPv6:
    n = len(buf)
    if off + IPV6_HLEN > n:
        raise ParseError(Reason.TRUNCATED_IPV6, f"ipv6 header: {n - off} bytes, need {IPV6_HLEN}")
    vtcfl, plen, nh, hop, src, dst = _IPV6.unpack_from(buf, off)
    if vtcfl >> 28 != 6:
        raise ParseError(Reason.BAD_IPV6_VERSION, f"ipv6 version {vtcfl >> 28}")
    if check_len and off + IPV6_HLEN + plen > n:
        raise ParseError(Reason.BAD_IPV6_LENGTH, f"ipv6 payload length {plen}, {n - off - IPV6_HLEN} left")
    proto = nh
    pos = off + IPV6_HLEN
    frag = False
    walked = 0
    while proto in _EXT:
        if walked == MAX_EXT_HEADERS:
            raise ParseError(Reason.BAD_IPV6_EXTENSION, f"more than {MAX_EXT_HEADERS} ipv6 extension headers")
        if pos + 8 > n:
            raise ParseError(Reason.TRUNCATED_IPV6, f"ipv6 extension header {proto} truncated")
        nxt, ln = buf[pos], buf[pos + 1]
        if proto == NH_FRAGMENT:
            size = 8
            frag = True
        elif proto == NH_AH:
            size = (ln + 2) * 4
        else:
            size = (ln + 1) * 8
        if pos + size > n:
            raise ParseError(Reason.TRUNCATED_IPV6, f"ipv6 extension header {proto} truncated")
        pos += size
        proto = nxt
        walked += 1
    hlen = pos - off
    if check_len and hlen - IPV6_HLEN > plen:
        raise ParseError(Reason.BAD_IPV6_LENGTH, f"ipv6 extension headers ({hlen - 40} B) exceed payload {plen}")
    return IPv6((vtcfl >> 20) & 0xFF, vtcfl & 0xFFFFF, plen, nh, hop, src, dst, proto, hlen, frag)


def build_ipv6(
    src: bytes, dst: bytes, next_header: int, payload_len: int, *, tc: int = 0, flow: int = 0, hop_limit: int = 64
) -> bytes:
    return _IPV6.pack((6 << 28) | (tc << 20) | flow, payload_len, next_header, hop_limit, src, dst)
