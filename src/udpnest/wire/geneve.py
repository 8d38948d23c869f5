"""Geneve header and option TLVs (RFC 8926).

::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |Ver|  Opt Len  |O|C|    Rsvd.  |          Protocol Type        |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |        Virtual Network Identifier (VNI)       |    Reserved   |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                    Variable-Length Options                    |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

    Option TLV:
    |          Option Class         |      Type     |R|R|R| Length  |
    |              Variable-Length Option Data (Length * 4)         |

Opt Len and option Length count 4-byte words: all options together are at most 63 * 4 = 252 bytes,
one option carries at most 31 * 4 = 124 bytes of data.  The top bit of Type is the critical bit: a
receiver that does not understand a critical option must drop the packet.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from .errors import ParseError, Reason

GENEVE_PORT = 6081
GENEVE_HLEN = 8
GENEVE_VER = 0
OPT_HLEN = 4
MAX_OPTS_LEN = 63 * 4  # 252
MAX_OPT_DATA = 31 * 4  # 124
TYPE_CRITICAL = 0x80
FLAG_OAM = 0x80
FLAG_CRITICAL = 0x40

_HDR = struct.Struct("!BBHI")
_OPT = struct.Struct("!HBB")


class Geneve(NamedTuple):
    version: int
    opt_len: int  # bytes of options (Opt Len * 4)
    oam: bool
    critical: bool
    proto: int
    vni: int
    hdr_len: int  # 8 + opt_len


class GeneveOption(NamedTuple):
    cls: int
    type: int  # including the critical bit
    data: bytes
    offset: int  # of the TLV, relative to the start of the Geneve header

    @property
    def critical(self) -> bool:
        return bool(self.type & TYPE_CRITICAL)


def parse_geneve(buf, off: int = 0) -> Geneve:
    """Parse the fixed header at ``off`` and check that the options fit in ``buf``."""
    n = len(buf)
    if off + GENEVE_HLEN > n:
        raise ParseError(Reason.TRUNCATED_GENEVE, f"geneve header: {n - off} bytes, need {GENEVE_HLEN}")
    b0, b1, proto, vni_rsv = _HDR.unpack_from(buf, off)
    ver = b0 >> 6
    if ver != GENEVE_VER:
        raise ParseError(Reason.BAD_GENEVE_VERSION, f"geneve version {ver}")
    opt_len = (b0 & 0x3F) * 4
    if off + GENEVE_HLEN + opt_len > n:
        raise ParseError(Reason.TRUNCATED_GENEVE, f"geneve opt_len {opt_len} bytes, {n - off - 8} left")
    return Geneve(ver, opt_len, bool(b1 & FLAG_OAM), bool(b1 & FLAG_CRITICAL), proto, vni_rsv >> 8,
                  GENEVE_HLEN + opt_len)


def parse_options(buf, off: int, hdr: Geneve) -> list[GeneveOption]:
    """Split the option area of the Geneve header at ``off`` into TLVs; every TLV must fit exactly."""
    opts: list[GeneveOption] = []
    pos = off + GENEVE_HLEN
    end = pos + hdr.opt_len
    while pos < end:
        if pos + OPT_HLEN > end:
            raise ParseError(Reason.BAD_GENEVE_OPTLEN, f"option header at {pos - off} crosses opt_len")
        cls, typ, ln = _OPT.unpack_from(buf, pos)
        dlen = (ln & 0x1F) * 4
        if pos + OPT_HLEN + dlen > end:
            raise ParseError(Reason.BAD_GENEVE_OPTLEN,
                             f"option 0x{cls:04x}/0x{typ:02x} length {dlen} crosses opt_len")
        opts.append(GeneveOption(cls, typ, bytes(buf[pos + OPT_HLEN : pos + OPT_HLEN + dlen]), pos - off))
        pos += OPT_HLEN + dlen
    return opts


def build_option(cls: int, typ: int, data: bytes) -> bytes:
    """One option TLV; ``data`` must be a multiple of 4 bytes, at most 124."""
    if len(data) % 4 or len(data) > MAX_OPT_DATA:
        raise ValueError(f"geneve option data must be a multiple of 4, at most {MAX_OPT_DATA} (got {len(data)})")
    return _OPT.pack(cls, typ, len(data) // 4) + data


def build_geneve(vni: int, proto: int, options: bytes = b"", *, oam: bool = False,
                 critical: bool | None = None) -> bytes:
    """Geneve header + the already built option TLVs.

    ``critical`` defaults to whether any option in ``options`` has the critical bit (RFC 8926 3.4:
    the C bit must be set when a critical option is present).
    """
    if len(options) % 4 or len(options) > MAX_OPTS_LEN:
        raise ValueError(f"geneve options must be a multiple of 4, at most {MAX_OPTS_LEN} (got {len(options)})")
    if critical is None:
        critical = _has_critical(options)
    b1 = (FLAG_OAM if oam else 0) | (FLAG_CRITICAL if critical else 0)
    return _HDR.pack(len(options) // 4, b1, proto, vni << 8) + options


def _has_critical(options: bytes) -> bool:
    pos = 0
    while pos + OPT_HLEN <= len(options):
        if options[pos + 2] & TYPE_CRITICAL:
            return True
        pos += OPT_HLEN + (options[pos + 3] & 0x1F) * 4
    return False
