"""virtio-net header with the UDP-tunnel extension (``struct virtio_net_hdr_v1_hash_tunnel``, 24 bytes).

Every frame read from or written to a TAP opened with ``IFF_VNET_HDR`` and ``TUNSETVNETHDRSZ 24`` starts
with this header.  All multi-byte fields are little-endian (virtio 1.0), the struct is 2-byte aligned
and has no holes::

     0       1       2               4               6               8
    +-------+-------+---------------+---------------+---------------+
    | flags |gso_typ|    hdr_len    |   gso_size    |  csum_start   |
    +-------+-------+---------------+---------------+---------------+
     8               10              12              14              16
    +---------------+---------------+---------------+---------------+
    |  csum_offset  |  num_buffers  | hash_value_lo | hash_value_hi |
    +---------------+---------------+---------------+---------------+
     16              18              20              22              24
    +---------------+---------------+---------------+---------------+
    |  hash_report  |    padding    |outer_th_offset|inner_nh_offset|
    +---------------+---------------+---------------+---------------+

Source of truth: ``include/uapi/linux/virtio_net.h`` (``VIRTIO_NET_HDR_F_*``, ``VIRTIO_NET_HDR_GSO_*``,
``struct virtio_net_hdr_v1_hash_tunnel``; tunnel parts merged for Linux 6.17) and the kernel's checks in
``include/linux/virtio_net.h`` (``virtio_net_hdr_tnl_to_skb``, ``virtio_net_handle_csum_offload``).

``gso_type`` = base type (NONE/TCPV4/UDP/TCPV6/UDP_L4) | ECN | UDP_TUNNEL_IPV4 or UDP_TUNNEL_IPV6 (the
*outer* IP version).  Offsets (``csum_start``, ``outer_th_offset``, ``inner_nh_offset``) count from the
first byte of the frame after this header (the Ethernet header on a TAP).  ``csum_start`` is the inner
transport header for tunnel GSO.  The hash fields are unused by tun (always zero).

:meth:`VnetHdr.unpack` rejects what the kernel itself would refuse with EINVAL (see :meth:`VnetHdr.check`);
:meth:`VnetHdr.pack` packs whatever it is given, so tests can build bad headers.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from .errors import ParseError, Reason

VNET_HDR_LEN = 24
ZERO_VNET_HDR = bytes(VNET_HDR_LEN)

# flags
F_NEEDS_CSUM = 0x01  # VIRTIO_NET_HDR_F_NEEDS_CSUM: use csum_start/csum_offset (CHECKSUM_PARTIAL)
F_DATA_VALID = 0x02  # VIRTIO_NET_HDR_F_DATA_VALID: checksum already verified
F_RSC_INFO = 0x04  # VIRTIO_NET_HDR_F_RSC_INFO: device-to-driver only, not used by tun
F_UDP_TUNNEL_CSUM = 0x08  # VIRTIO_NET_HDR_F_UDP_TUNNEL_CSUM: outer UDP csum must be computed

# gso_type
GSO_NONE = 0x00
GSO_TCPV4 = 0x01
GSO_UDP = 0x03  # UFO (legacy; never allowed inside a UDP tunnel)
GSO_TCPV6 = 0x04
GSO_UDP_L4 = 0x05  # USO
GSO_UDP_TUNNEL_IPV4 = 0x20
GSO_UDP_TUNNEL_IPV6 = 0x40
GSO_UDP_TUNNEL = GSO_UDP_TUNNEL_IPV4 | GSO_UDP_TUNNEL_IPV6
GSO_ECN = 0x80

BASE_TYPES = frozenset({GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_UDP_L4})
TUNNEL_BASE_TYPES = frozenset({GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4})

ETH_HLEN = 14
_IPV4_MIN, _IPV6_MIN, _UDP_HLEN = 20, 40, 8

_VNET = struct.Struct("<BBHHHHHHHHHHH")
assert _VNET.size == VNET_HDR_LEN


class VnetHdr(NamedTuple):
    """One ``virtio_net_hdr_v1_hash_tunnel``.  All fields default to 0 (= "plain frame, checksum done")."""

    flags: int = 0
    gso_type: int = GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0
    num_buffers: int = 0
    hash_value_lo: int = 0
    hash_value_hi: int = 0
    hash_report: int = 0
    padding: int = 0
    outer_th_offset: int = 0
    inner_nh_offset: int = 0

    @classmethod
    def unpack(cls, buf, off: int = 0, *, check: bool = True) -> VnetHdr:
        """Parse the 24 bytes at ``off``; raise ``ParseError`` (TRUNCATED_VNET / BAD_VNET)."""
        n = len(buf)
        if off < 0 or off + VNET_HDR_LEN > n:
            raise ParseError(Reason.TRUNCATED_VNET, f"vnet header: {n - off} bytes, need {VNET_HDR_LEN}")
        h = cls._make(_VNET.unpack_from(buf, off))
        if check:
            h.check()
        return h

    def pack(self) -> bytes:
        """The 24 wire bytes (no validation)."""
        return _VNET.pack(*self)

    def pack_into(self, buf, off: int = 0) -> None:
        _VNET.pack_into(buf, off, *self)

    # -- helpers -------------------------------------------------------------------------------------

    @property
    def base_type(self) -> int:
        """``gso_type`` without the ECN and tunnel bits: GSO_NONE/TCPV4/UDP/TCPV6/UDP_L4 (or junk)."""
        return self.gso_type & ~(GSO_ECN | GSO_UDP_TUNNEL) & 0xFF

    @property
    def is_gso(self) -> bool:
        return self.gso_type != GSO_NONE

    @property
    def is_tunnel(self) -> bool:
        """A UDP-tunnel GSO packet (either outer IP version bit set)."""
        return bool(self.gso_type & GSO_UDP_TUNNEL)

    @property
    def outer_is_ipv6(self) -> bool:
        return bool(self.gso_type & GSO_UDP_TUNNEL_IPV6)

    @property
    def needs_csum(self) -> bool:
        return bool(self.flags & F_NEEDS_CSUM)

    @property
    def hash_value(self) -> int:
        return self.hash_value_lo | (self.hash_value_hi << 16)

    def check(self) -> None:
        """Raise ``ParseError(BAD_VNET)`` for headers the kernel rejects (``virtio_net_hdr_tnl_to_skb``)."""
        gt, fl = self.gso_type, self.flags
        tnl = gt & GSO_UDP_TUNNEL
        base = self.base_type
        if tnl == GSO_UDP_TUNNEL:
            raise ParseError(Reason.BAD_VNET, f"gso_type 0x{gt:02x}: both UDP_TUNNEL_IPV4 and _IPV6")
        if base not in BASE_TYPES:
            raise ParseError(Reason.BAD_VNET, f"gso_type 0x{gt:02x}: unknown base type 0x{base:02x}")
        if gt != GSO_NONE and base == GSO_NONE:
            raise ParseError(Reason.BAD_VNET, f"gso_type 0x{gt:02x}: ECN/tunnel bits without a GSO type")
        if gt != GSO_NONE and self.gso_size == 0:
            raise ParseError(Reason.BAD_VNET, f"gso_type 0x{gt:02x} with gso_size 0")
        if base == GSO_UDP_L4:
            if gt & GSO_ECN:
                raise ParseError(Reason.BAD_VNET, f"gso_type 0x{gt:02x}: ECN with UDP_L4")
            if not fl & F_NEEDS_CSUM:
                raise ParseError(Reason.BAD_VNET, f"flags 0x{fl:02x}: UDP_L4 GSO without NEEDS_CSUM")
            if self.csum_offset != 6:
                raise ParseError(Reason.BAD_VNET, f"UDP_L4 GSO with csum_offset {self.csum_offset} (not 6)")
        elif base in (GSO_TCPV4, GSO_TCPV6) and fl & F_NEEDS_CSUM and self.csum_offset != 16:
            raise ParseError(Reason.BAD_VNET, f"TCP GSO with csum_offset {self.csum_offset} (not 16)")
        if not tnl:
            return
        if base not in TUNNEL_BASE_TYPES:
            raise ParseError(Reason.BAD_VNET, f"gso_type 0x{gt:02x}: UFO inside a UDP tunnel")
        if fl & F_DATA_VALID:
            raise ParseError(Reason.BAD_VNET, f"flags 0x{fl:02x}: DATA_VALID with UDP tunnel GSO")
        if not fl & F_NEEDS_CSUM:
            raise ParseError(Reason.BAD_VNET, f"flags 0x{fl:02x}: UDP tunnel GSO without NEEDS_CSUM")
        outer_min = ETH_HLEN + (_IPV6_MIN if tnl == GSO_UDP_TUNNEL_IPV6 else _IPV4_MIN)
        inner_min = _IPV6_MIN if base == GSO_TCPV6 else _IPV4_MIN
        if (
            self.outer_th_offset < outer_min
            or self.inner_nh_offset < self.outer_th_offset + _UDP_HLEN
            or self.csum_start < self.inner_nh_offset + inner_min
        ):
            raise ParseError(
                Reason.BAD_VNET,
                f"tunnel offsets outer_th={self.outer_th_offset} inner_nh={self.inner_nh_offset} "
                f"csum_start={self.csum_start} out of order",
            )


def tunnel_gso_hdr(
    *,
    inner_type: int,
    outer_ipv6: bool,
    gso_size: int,
    hdr_len: int,
    outer_th_offset: int,
    inner_nh_offset: int,
    inner_th_offset: int,
    outer_csum: bool = True,
    ecn: bool = False,
) -> VnetHdr:
    """A header asking the kernel to segment a UDP-tunnel super-packet (inner TCP or UDP).

    The inner L4 checksum field must hold the inner pseudo-header sum (NEEDS_CSUM); with ``outer_csum``
    the outer UDP checksum field must hold the outer pseudo-header sum (UDP_TUNNEL_CSUM).
    """
    gt = inner_type | (GSO_UDP_TUNNEL_IPV6 if outer_ipv6 else GSO_UDP_TUNNEL_IPV4) | (GSO_ECN if ecn else 0)
    return VnetHdr(
        flags=F_NEEDS_CSUM | (F_UDP_TUNNEL_CSUM if outer_csum else 0),
        gso_type=gt,
        hdr_len=hdr_len,
        gso_size=gso_size,
        csum_start=inner_th_offset,
        csum_offset=6 if inner_type == GSO_UDP_L4 else 16,
        outer_th_offset=outer_th_offset,
        inner_nh_offset=inner_nh_offset,
    )
