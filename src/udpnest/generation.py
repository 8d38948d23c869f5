"""The TX burst's generation word: one machine word the native burst (csrc/txburst.c) reads while it lingers.

``WORD[0]`` gets a new value (never seen before in this process) after every change a TX burst snapshot
(udpnest.txburst) depends on: an FDB entry learned, moved, expired, evicted or forgotten (``Fdb.version``),
any peer state change (``peers.MODE_VERSION``, ``Peer._go``) and a reload (``service.apply_reload`` and
``finish_reload``).  A snapshot records the value it was built under (read before anything else); the C side
compares before each TAP read and after it, and returns (or hands the frame back) on a difference, so a
change bumped before a frame was read is honoured for that frame even in the middle of a lingering call.

``bump`` is called after the change is complete.  Values come from an ``itertools.count`` (atomic under the
GIL), so two threads bumping at once can reorder the stores but never write a value a snapshot already
recorded: every bump after a snapshot read makes the word differ from it.
"""

from __future__ import annotations

import array
import itertools

#: the shared word (a buffer the C side reads: 8 bytes, native byte order)
WORD = array.array("q", [0])
_next = itertools.count(1).__next__


def bump() -> None:
    """Tell a lingering TX burst that its snapshot may be stale (after the change is in place)."""
    WORD[0] = _next()
