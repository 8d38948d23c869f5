"""TCP header (RFC 9293).

::

    |  source port  |  destination port  |
    |            sequence number         |
    |         acknowledgment number      |
    |off|rsv| flags |       window       |
    |   checksum    |   urgent pointer   |
    |          options (off*4 - 20)      |
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from .errors import ParseError, Reason

TCP_HLEN = 20
CSUM_OFF = 16
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80
_TCP = struct.Struct("!HHIIBBHHH")


class TCP(NamedTuple):
    sport: int
    dport: int
    seq: int
    ack: int
    hdr_len: int
    flags: int
    window: int
    csum: int
    urg: int


def parse_tcp(buf, off: int = 0) -> TCP:
    n = len(buf)
    if off + TCP_HLEN > n:
        raise ParseError(Reason.TRUNCATED_TCP, f"tcp header: {n - off} bytes, need {TCP_HLEN}")
    sport, dport, seq, ack, doff, flags, win, c, urg = _TCP.unpack_from(buf, off)
    hlen = (doff >> 4) * 4
    if hlen < TCP_HLEN:
        raise ParseError(Reason.BAD_TCP_OFFSET, f"tcp data offset {doff >> 4} < 5")
    if off + hlen > n:
        raise ParseError(Reason.TRUNCATED_TCP, f"tcp options: data offset says {hlen} bytes, {n - off} left")
    return TCP(sport, dport, seq, ack, hlen, flags, win, c, urg)


def build_tcp(
    sport: int, dport: int, seq: int, ack: int, flags: int, *, window: int = 65535, csum: int = 0,
    urg: int = 0, options: bytes = b"",
) -> bytes:
    if len(options) % 4 or len(options) > 40:
        raise ValueError(f"tcp options must be a multiple of 4 bytes, at most 40 (got {len(options)})")
    doff = (TCP_HLEN + len(options)) // 4
    return _TCP.pack(sport, dport, seq, ack, doff << 4, flags, window, csum, urg) + options
