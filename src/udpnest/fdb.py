"""Learning forwarding table: inner source MAC -> peer, as a VXLAN device keeps it (sans-IO).

Entries are learned from frames received from a peer, expire after ``ageing`` seconds without being
refreshed, and the table holds at most ``max_entries`` (the least recently learned entry is evicted).
Broadcast, multicast and unknown destinations are flooded to every peer.  Time is passed in (``now``).

Thread safety: the endpoint's main thread learns (from the RX process's reports) while the TX thread looks
up (and expires); with ``rx_process = false`` the RX thread learns.  Every method takes one lock, so an
expiry inside ``lookup`` can never race an eviction in ``learn`` (issue 9.6: the KeyError stopped the
endpoint).  The lock is held for a dictionary operation or two; ``forget_peer`` and ``stats`` are rare.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

from .generation import bump as _bump_generation


class Fdb:
    def __init__(self, max_entries: int = 4096, ageing: float = 300.0) -> None:
        if max_entries < 1 or ageing <= 0:
            raise ValueError("max_entries must be >= 1 and ageing > 0")
        self.max_entries = max_entries
        self.ageing = ageing
        self._t: OrderedDict[bytes, tuple[Hashable, float]] = OrderedDict()
        self.learned = 0
        self.moved = 0
        self.evicted = 0
        self.expired = 0
        #: bumped when an entry appears, moves to another peer or goes (the TX burst's snapshot, txburst.py);
        #: a refresh of an entry that stays does not bump it (its expiry only gets later)
        self.version = 0
        self._lock = threading.Lock()

    def learn(self, mac: bytes, peer: Hashable, now: float) -> None:
        """Record that ``mac`` lives behind ``peer`` (group/multicast source MACs are ignored)."""
        if mac[0] & 1:
            return
        with self._lock:
            v = self.version
            self._learn(mac, peer, now)
            if self.version != v:
                _bump_generation()  # after the change: a lingering TX burst rebuilds (generation.py)

    def _learn(self, mac: bytes, peer: Hashable, now: float) -> None:
        old = self._t.get(mac)
        if old is not None:
            if old[0] != peer:
                self.moved += 1
                self.version += 1
            self._t.move_to_end(mac)
        else:
            self.learned += 1
            self.version += 1
            if len(self._t) >= self.max_entries:
                self._t.popitem(last=False)
                self.evicted += 1
        self._t[mac] = (peer, now)

    def lookup(self, mac: bytes, now: float) -> Hashable | None:
        """The peer for unicast ``mac``, or None (flood) for group addresses and unknown/expired entries."""
        if mac[0] & 1:
            return None
        with self._lock:
            e = self._t.get(mac)
            if e is None:
                return None
            if now - e[1] > self.ageing:
                del self._t[mac]
                self.expired += 1
                self.version += 1
                _bump_generation()
                return None
            return e[0]

    def forget_peer(self, peer: Hashable) -> None:
        with self._lock:
            v = self.version
            for mac in [m for m, (p, _) in self._t.items() if p == peer]:
                del self._t[mac]
                self.version += 1
            if self.version != v:
                _bump_generation()

    def __len__(self) -> int:
        return len(self._t)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"entries": len(self._t), "learned": self.learned, "moved": self.moved, "evicted": self.evicted,
                    "expired": self.expired}

    def entries(self) -> list[tuple[bytes, Hashable, float]]:
        """(mac, peer, last learned) of every entry, expired ones included (the TX burst's snapshot)."""
        with self._lock:
            return [(m, p, t) for m, (p, t) in self._t.items()]
