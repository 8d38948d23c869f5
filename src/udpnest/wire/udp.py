"""UDP header (RFC 768): source port, destination port, length, checksum (8 bytes)."""

from __future__ import annotations

import struct
from typing import NamedTuple

from .errors import ParseError, Reason

UDP_HLEN = 8
LEN_OFF = 4
CSUM_OFF = 6
_UDP = struct.Struct("!HHHH")


class UDP(NamedTuple):
    sport: int
    dport: int
    length: int
    csum: int


def parse_udp(buf, off: int = 0, *, check_len: bool = True) -> UDP:
    n = len(buf)
    if off + UDP_HLEN > n:
        raise ParseError(Reason.TRUNCATED_UDP, f"udp header: {n - off} bytes, need {UDP_HLEN}")
    h = UDP._make(_UDP.unpack_from(buf, off))
    if check_len and (h.length < UDP_HLEN or off + h.length > n):
        raise ParseError(Reason.BAD_UDP_LENGTH, f"udp length {h.length} ({n - off} bytes left)")
    return h


def build_udp(sport: int, dport: int, payload_len: int, csum: int = 0) -> bytes:
    return _UDP.pack(sport, dport, UDP_HLEN + payload_len, csum)
