"""Bounded state of the RX process and its channel to the main process (issue 9.3, 9.6).

Everything here can be driven by what arrives from the network, so everything is bounded and every
refusal is counted:

* :class:`LearnedMacs`: the inner source MACs the RX process has already reported to the main process's
  FDB (so that it reports only changes and refreshes).  An LRU of at most ``learned_max`` entries; an
  attacker sending frames with 700,000 random source MACs evicts old entries (``learned_evicted``)
  instead of growing the process (main: 35 MB -> 220 MB, never shrinking).
* :class:`Channel`: the RX process -> main process datagram socketpair.  The RX end never blocks: a full
  queue (``ipc_queue`` bytes of socket buffer) drops the message and counts it (``ipc_dropped``), so a
  slow main process can never stall the dataplane.  Lost "learn" messages are repeated at the next
  refresh; a lost "stats" message only makes ``udpnest status`` show the previous snapshot.

Sans-IO except :class:`Channel`, which wraps an already created socket.
"""

from __future__ import annotations

import pickle
import socket
from collections import OrderedDict
from collections.abc import Hashable


class LearnedMacs:
    """LRU of ``mac -> (peer key, time reported)``; :meth:`report` says whether to tell the main process."""

    def __init__(self, max_entries: int, refresh: float) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.max_entries = max_entries
        self.refresh = refresh
        self._t: OrderedDict[bytes, tuple[Hashable, float]] = OrderedDict()
        self.evicted = 0

    def report(self, mac: bytes, key: Hashable, now: float) -> bool:
        """True if ``mac`` behind ``key`` is news for the main process (new, moved, or due a refresh)."""
        old = self._t.get(mac)
        if old is not None and old[0] == key and now - old[1] <= self.refresh:
            self._t.move_to_end(mac)
            return False
        if old is None and len(self._t) >= self.max_entries:
            self._t.popitem(last=False)
            self.evicted += 1
        self._t[mac] = (key, now)
        self._t.move_to_end(mac)
        return True

    def forget(self, mac: bytes) -> None:
        """The report about ``mac`` was lost: report it again next time."""
        self._t.pop(mac, None)

    def __len__(self) -> int:
        return len(self._t)


class Channel:
    """Non-blocking sender end of the RX -> main datagram socketpair; drops are counted, never waited for."""

    def __init__(self, sock: socket.socket, queue_bytes: int) -> None:
        self.sock = sock
        for opt in (socket.SO_SNDBUF,):
            try:
                sock.setsockopt(socket.SOL_SOCKET, 32, queue_bytes)  # SO_SNDBUFFORCE (root)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, opt, queue_bytes)
        sock.setblocking(False)
        self.sent = 0
        self.dropped = 0
        self.errors = 0

    def send(self, msg) -> bool:
        try:
            self.sock.send(pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL))
        except (BlockingIOError, InterruptedError):
            self.dropped += 1
            return False
        except OSError:
            self.errors += 1
            self.dropped += 1
            return False
        self.sent += 1
        return True
