"""Which engine does the per-packet work: the native core (``udpnest._native``, csrc/) or pure Python.

The pure-Python modules (:mod:`udpnest.gro`, :mod:`udpnest.gso`, :mod:`udpnest.fold`) are the reference:
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
