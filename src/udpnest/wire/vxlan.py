"""VXLAN (RFC 7348) and VXLAN-GPE (draft-ietf-nvo3-vxlan-gpe) headers, 8 bytes each.

::

    VXLAN:      |R R R R I R R R|      reserved (24)      |
                |             VNI (24)          | rsv (8) |
    VXLAN-GPE:  |R R Ver I P B O|   reserved (16) | next  |
                |             VNI (24)          | rsv (8) |

VXLAN requires the I flag (0x08).  GPE requires the P flag (0x04); next protocol 1 IPv4, 2 IPv6,
3 Ethernet, 4 NSH.  Only what the nested headers continue with matters to udpnest.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from .errors import ParseError, Reason

VXLAN_HLEN = 8
VXLAN_FLAG_I = 0x08
GPE_FLAG_P = 0x04
GPE_NP_IPV4, GPE_NP_IPV6, GPE_NP_ETHERNET, GPE_NP_NSH = 1, 2, 3, 4
_VX = struct.Struct("!BHBI")


class Vxlan(NamedTuple):
    flags: int
    next_proto: int  # GPE only (0 for plain VXLAN)
    vni: int


def parse_vxlan(buf, off: int = 0, *, gpe: bool = False) -> Vxlan:
    n = len(buf)
    if off + VXLAN_HLEN > n:
        raise ParseError(Reason.TRUNCATED_VXLAN, f"vxlan header: {n - off} bytes, need {VXLAN_HLEN}")
    flags, _rsv, np_, vni_rsv = _VX.unpack_from(buf, off)
    if not flags & VXLAN_FLAG_I:
        raise ParseError(Reason.BAD_VXLAN_FLAGS, f"vxlan flags 0x{flags:02x}: I flag not set")
    if gpe:
        if not flags & GPE_FLAG_P:
            raise ParseError(Reason.BAD_VXLAN_FLAGS, f"vxlan-gpe flags 0x{flags:02x}: P flag not set")
        return Vxlan(flags, np_, vni_rsv >> 8)
    return Vxlan(flags, 0, vni_rsv >> 8)


def build_vxlan(vni: int) -> bytes:
    return _VX.pack(VXLAN_FLAG_I, 0, 0, vni << 8)


def build_vxlan_gpe(vni: int, next_proto: int = GPE_NP_ETHERNET) -> bytes:
    return _VX.pack(VXLAN_FLAG_I | GPE_FLAG_P, 0, next_proto, vni << 8)
