"""Which engine does the per-packet work: the native core (``udpnest._native``, csrc/) or pure Python.

The pure-Python modules (:mod:`udpnest.rxpipe`, :mod:`udpnest.gso`, :mod:`udpnest.fold`) are the reference:
the native core must produce the same bytes and the same drop reasons (tests/test_engine_diff.py).  The
choice is made once, at start-up (``udpnest up --engine native|python``; default: native when built), and
shown in the log and in ``udpnest status``.  Asking for ``native`` when it is not built is an error, not
a silent fallback.
"""

from __future__ import annotations

import os

try:
    from . import _native
except ImportError as e:  # not built: no compiler at install time, or UDPNEST_PUREPYTHON=1
    _native = None
    NATIVE_ERROR: str | None = str(e)
else:
    NATIVE_ERROR = None

from .wire.vnet import VnetHdr  # noqa: E402 - after the optional import above

ENGINES = ("native", "python")


class EngineError(RuntimeError):
    """The requested engine cannot be used (the message says why and what to do)."""


def native_available() -> bool:
    return _native is not None and not os.environ.get("UDPNEST_PUREPYTHON")


def default_engine() -> str:
    return "native" if native_available() else "python"


def check(name: str | None) -> str:
    """The engine to use for ``name`` (None: the default); raises :class:`EngineError` if unusable."""
    if name is None:
        return default_engine()
    if name not in ENGINES:
        raise EngineError(f"engine: {name!r} is not one of {', '.join(ENGINES)}")
    if name == "native" and not native_available():
        why = NATIVE_ERROR or "UDPNEST_PUREPYTHON is set"
        raise EngineError(f"engine: native core not available ({why}); reinstall with a C compiler "
                          "(scripts/install-deps.sh) or use --engine python")
    return name


# -- the native core's TX entry points, with the Python engine's types and exceptions -----------------------

def _reject(e: Exception):
    from .wire.errors import ParseError, Reason

    reason, detail = e.args
    return ParseError(Reason(reason), detail)


class NativeSegments:
    """What :func:`udpnest.gso.segment_tcp` returns (``buffer``, ``row_len``, ``count``), from the native core:
    ``buffer`` is exactly what one ``sendmsg(UDP_SEGMENT=row_len)`` sends."""

    __slots__ = ("data", "row_len", "count", "last_len", "mss")

    def __init__(self, data: bytearray, row_len: int, count: int, last_len: int, mss: int) -> None:
        self.data, self.row_len, self.count, self.last_len, self.mss = data, row_len, count, last_len, mss

    @property
    def buffer(self) -> memoryview:
        return memoryview(self.data)

    def datagrams(self) -> list[bytes]:
        d, w = bytes(self.data), self.row_len
        return [d[i : i + w] for i in range(0, len(d), w)]


def native_segment(prefix: bytes, frame, layout, mss: int, *, fix_ip_ids: bool = True,
                   fixed_nested_ids: bool = False) -> NativeSegments:
    """:func:`udpnest.gso.segment_tcp` in C (same bytes; raises ParseError with the same reasons)."""
    flags = (_native.SEG_FIX_IP_IDS if fix_ip_ids else 0) | (_native.SEG_FIXED_NESTED_IDS if fixed_nested_ids else 0)
    try:
        data, row_len, count, last_len = _native.segment(prefix, frame, tuple(layout), mss, flags)
    except _native.Reject as e:
        raise _reject(e) from None
    return NativeSegments(data, row_len, count, last_len, mss)


def native_vnet(data, _make=VnetHdr._make):
    """:meth:`udpnest.wire.vnet.VnetHdr.unpack` in C."""
    try:
        return _make(_native.vnet_check(data))
    except _native.Reject as e:
        raise _reject(e) from None


def native_finish_csum(frame, csum_start: int, csum_offset: int) -> bytearray:
    try:
        return _native.finish_csum(frame, csum_start, csum_offset)
    except _native.Reject as e:
        raise _reject(e) from None
