"""Ethernet II header, optionally with one 802.1Q tag.

::

    0               6              12      14        (+4 with an 802.1Q tag: TPID 0x8100, TCI)
    | dst MAC (6)   | src MAC (6)  | type  |
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from .errors import ParseError, Reason

ETH_HLEN = 14
VLAN_HLEN = 4
ETH_P_IPV4 = 0x0800
ETH_P_ARP = 0x0806
ETH_P_8021Q = 0x8100
ETH_P_IPV6 = 0x86DD
ETH_P_TEB = 0x6558  # transparent Ethernet bridging: Geneve/GRE carrying Ethernet

_ETH = struct.Struct("!6s6sH")
_TAG = struct.Struct("!HH")


class Eth(NamedTuple):
    dst: bytes
    src: bytes
    ethertype: int
    vlan_tci: int | None
    hdr_len: int


def parse_eth(buf, off: int = 0) -> Eth:
    """Parse the Ethernet header at ``off``; one 802.1Q tag is skipped and its TCI returned."""
    n = len(buf)
    if off + ETH_HLEN > n:
        raise ParseError(Reason.TRUNCATED_ETH, f"ethernet header: {n - off} bytes, need {ETH_HLEN}")
    dst, src, etype = _ETH.unpack_from(buf, off)
    if etype == ETH_P_8021Q:
        if off + ETH_HLEN + VLAN_HLEN > n:
            raise ParseError(Reason.TRUNCATED_ETH, "802.1Q tag truncated")
        tci, etype = _TAG.unpack_from(buf, off + ETH_HLEN)
        return Eth(dst, src, etype, tci, ETH_HLEN + VLAN_HLEN)
    return Eth(dst, src, etype, None, ETH_HLEN)


def build_eth(dst: bytes, src: bytes, ethertype: int, vlan_tci: int | None = None) -> bytes:
    if vlan_tci is None:
        return _ETH.pack(dst, src, ethertype)
    return _ETH.pack(dst, src, ETH_P_8021Q) + _TAG.pack(vlan_tci, ethertype)
