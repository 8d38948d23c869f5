"""The one exception packet code raises, and the reason codes that become drop counters.

Every parser and ``unfold`` in :mod:`udpnest` raises :class:`ParseError` (and nothing else) on any input.
``ParseError.reason`` is a :class:`Reason`; the dataplane keeps one drop counter per reason, so every
member here is documented in ``docs/wire-format.md`` (section "Drop reasons").
"""

from __future__ import annotations

import enum


class Reason(enum.Enum):
    """Why a packet was rejected. The value is the counter name shown by ``udpnest status``."""

    # truncation: the buffer ends inside a header
    TRUNCATED_ETH = "truncated_eth"
    TRUNCATED_IPV4 = "truncated_ipv4"
    TRUNCATED_IPV6 = "truncated_ipv6"
    TRUNCATED_UDP = "truncated_udp"
    TRUNCATED_TCP = "truncated_tcp"
    TRUNCATED_VXLAN = "truncated_vxlan"
    TRUNCATED_GENEVE = "truncated_geneve"
    TRUNCATED_VNET = "truncated_vnet"
    # header fields that are impossible or unsupported
    BAD_ETHERTYPE = "bad_ethertype"
    BAD_IPV4_VERSION = "bad_ipv4_version"
    BAD_IPV4_IHL = "bad_ipv4_ihl"
    BAD_IPV4_LENGTH = "bad_ipv4_length"
    BAD_IPV4_CHECKSUM = "bad_ipv4_checksum"
    BAD_IPV6_VERSION = "bad_ipv6_version"
    BAD_IPV6_LENGTH = "bad_ipv6_length"
    BAD_IPV6_EXTENSION = "bad_ipv6_extension"
    BAD_UDP_LENGTH = "bad_udp_length"
    BAD_TCP_OFFSET = "bad_tcp_offset"
    BAD_VXLAN_FLAGS = "bad_vxlan_flags"
    BAD_GENEVE_VERSION = "bad_geneve_version"
    BAD_GENEVE_OPTLEN = "bad_geneve_optlen"
    BAD_VNET = "bad_vnet"
    # Geneve options
    UNKNOWN_CRITICAL_OPTION = "unknown_critical_option"
    BAD_GRO_HINT = "bad_gro_hint"
    BAD_ECHO = "bad_echo"
    # the nested-headers carrier (fold option)
    BAD_FOLD_VERSION = "bad_fold_version"
    BAD_FOLD_LENGTHS = "bad_fold_lengths"
    BAD_FOLD_ENCAP = "bad_fold_encap"
    BAD_FOLD_HEADERS = "bad_fold_headers"
    BAD_FOLD_ORDER = "bad_fold_order"
    FOLD_TOO_LARGE = "fold_too_large"
    # dataplane
    OAM = "oam"  # an OAM packet udpnest has no use for (echo packets are handled, not dropped)
    NO_PEER = "no_peer"  # a datagram from an address that is not a configured peer
    TAP_WRITE = "tap_write"  # the TAP refused a frame (errno in the log)
    SEND_ERROR = "send_error"  # the underlay socket refused a datagram
    RATE_LIMITED = "rate_limited"  # an echo request beyond the per-peer reply rate
    UNSOLICITED_REPLY = "unsolicited_reply"  # an echo reply while we are not probing
    WRONG_VNI = "wrong_vni"  # a Geneve VNI other than the configured one (the kernel demultiplexes by VNI)
    BAD_GENEVE_PROTOCOL = "bad_geneve_protocol"  # Geneve protocol other than Ethernet (0x6558) without FOLD
    # things the transform cannot carry
    FRAGMENT = "fragment"
    NOT_NESTED = "not_nested"


class ParseError(ValueError):
    """A packet (or a part of one) is malformed or cannot be handled.

    ``reason`` is the :class:`Reason` (one drop counter each); ``detail`` names the field at fault.
    """

    __slots__ = ("reason", "detail")

    def __init__(self, reason: Reason, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)


def need(buf_len: int, off: int, n: int, reason: Reason, what: str) -> None:
    """Raise ``ParseError(reason)`` unless ``n`` bytes are available at ``off``."""
    if off < 0 or off + n > buf_len:
        raise ParseError(reason, f"{what}: need {n} bytes at offset {off}, buffer has {buf_len}")
