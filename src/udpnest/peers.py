"""Per-peer probing: fold only towards peers that answered an echo (sans-IO, time passed in).

Theory of operation.  A folded packet carries a critical option, so a peer that does not understand
it must drop the packet (RFC 8926 section 3.5): folding blindly would blackhole legacy peers.  With
``nested fold`` configured, every peer starts UNKNOWN and is probed: a Geneve OAM packet with a
critical ECHO_REQUEST option and no payload.  A complying peer answers with ECHO_REPLY echoing the
nonce; a legacy peer drops the request.  Everything that changes a peer's state is in this file:

    state      event      next        rule
    UNKNOWN    START      PROBING     nested fold enabled: first probe after a random jitter
    PROBING    REPLY      CAPABLE     reply with an outstanding nonce, in time, peer advertises CAP_FOLD
    PROBING    ECHO       CAPABLE     the peer probes us and advertises CAP_FOLD
    PROBING    EXPIRE     FALLBACK    a probe went unanswered until the next one was due
    CAPABLE    REPLY      CAPABLE     validity extended to now + window * interval
    CAPABLE    ECHO       CAPABLE
    CAPABLE    EXPIRE     FALLBACK    validity ran out, ``misses`` probes in a row went unanswered, or
                                      a reply without CAP_FOLD
    FALLBACK   REPLY      CAPABLE
    FALLBACK   ECHO       CAPABLE
    FALLBACK   EXPIRE     FALLBACK

Any other pair raises :class:`LocalProtocolError` (our own bug, not the peer's).  What the peer sends
wrong (unknown nonce, late reply) is returned as a :class:`ReplyResult` and counted; it never changes
the state.  A reply without CAP_FOLD is an answer too: that peer cannot unfold, so it goes to FALLBACK
at once (EXPIRE).  The mode is decided per super-packet at send time with :meth:`Peer.mode`.

Timing: probes every ``interval`` seconds per peer (+-10 % jitter), spread so that all peers together
send at most ``budget`` probes per second (1000 peers at 100/s are each probed every 10 s).  A peer is
CAPABLE until ``window * interval`` after its last good reply; a probe counts as missed when it is still
unanswered at the next probe time, and ``misses`` (default 1) missed probes in a row mean FALLBACK, so
a peer that turns legacy stops receiving folded packets within two probe intervals.
"""

from __future__ import annotations

import enum
import heapq
import random
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field

from .wire.options import CAP_FOLD, Echo


class PeerState(enum.Enum):
    UNKNOWN = "unknown"
    PROBING = "probing"
    CAPABLE = "capable"
    FALLBACK = "fallback"


class Event(enum.Enum):
    START = "start"
    REPLY = "reply"
    ECHO = "echo"
    EXPIRE = "expire"


S, E = PeerState, Event
TRANSITIONS: dict[tuple[PeerState, Event], PeerState] = {
    (S.UNKNOWN, E.START): S.PROBING,
    (S.PROBING, E.REPLY): S.CAPABLE,
    (S.PROBING, E.ECHO): S.CAPABLE,
    (S.PROBING, E.EXPIRE): S.FALLBACK,
    (S.CAPABLE, E.REPLY): S.CAPABLE,
    (S.CAPABLE, E.ECHO): S.CAPABLE,
    (S.CAPABLE, E.EXPIRE): S.FALLBACK,
    (S.FALLBACK, E.REPLY): S.CAPABLE,
    (S.FALLBACK, E.ECHO): S.CAPABLE,
    (S.FALLBACK, E.EXPIRE): S.FALLBACK,
}


class LocalProtocolError(RuntimeError):
    """An event that the state machine does not allow in the current state: a bug in udpnest."""


class ReplyResult(enum.Enum):
    ACCEPTED = "accepted"
    UNKNOWN_NONCE = "unknown_nonce"  # never sent, already answered, or forged
    LATE = "late"  # answered after the validity window
    NOT_CAPABLE = "not_capable"  # the peer answers but does not advertise CAP_FOLD


MAX_OUTSTANDING = 8


@dataclass
class Peer:
    key: Hashable
    interval: float
    window: int
    misses_allowed: int = 1
    fallback: str = "plain"
    state: PeerState = PeerState.UNKNOWN
    valid_until: float = 0.0
    outstanding: OrderedDict = field(default_factory=OrderedDict)  # nonce -> send time
    missed: int = 0
    last_reply: float | None = None
    rtt: float | None = None
    counters: dict = field(default_factory=lambda: dict.fromkeys(
        ("probes_sent", "replies_ok", "replies_unknown_nonce", "replies_late", "replies_not_capable",
         "echo_received", "replies_sent", "replies_rate_limited", "fallbacks"), 0))

    def _go(self, event: Event) -> None:
        nxt = TRANSITIONS.get((self.state, event))
        if nxt is None:
            raise LocalProtocolError(f"peer {self.key}: event {event.value} not allowed in state {self.state.value}")
        if nxt is PeerState.FALLBACK and self.state is not PeerState.FALLBACK:
            self.counters["fallbacks"] += 1
        self.state = nxt

    def mode(self, now: float) -> str:
        """'fold' while the peer is known to understand it, else the configured fallback."""
        if self.state is PeerState.CAPABLE and now <= self.valid_until:
            return "fold"
        return self.fallback

    def on_probe_sent(self, nonce: int, now: float) -> None:
        """Call when a probe goes out: an older probe still unanswered counts as missed."""
        if self.outstanding:
            self.missed += 1
            if self.missed >= self.misses_allowed and self.state is not PeerState.UNKNOWN:
                self._go(Event.EXPIRE)
        self.outstanding[nonce] = now
        while len(self.outstanding) > MAX_OUTSTANDING:
            self.outstanding.popitem(last=False)
        self.counters["probes_sent"] += 1

    def on_reply(self, echo: Echo, now: float) -> ReplyResult:
        sent = self.outstanding.get(echo.nonce)
        if sent is None:
            self.counters["replies_unknown_nonce"] += 1
            return ReplyResult.UNKNOWN_NONCE
        if now - sent > self.window * self.interval:
            del self.outstanding[echo.nonce]
            self.counters["replies_late"] += 1
            return ReplyResult.LATE
        if not echo.cap_flags & CAP_FOLD:
            # the peer is alive but says it cannot unfold (e.g. restarted with folding off): stop now
            del self.outstanding[echo.nonce]
            self.counters["replies_not_capable"] += 1
            if self.state is not PeerState.UNKNOWN:
                self.valid_until = 0.0
                self._go(Event.EXPIRE)
            return ReplyResult.NOT_CAPABLE
        # this reply also settles every older probe (replies can be reordered or lost)
        for n in list(self.outstanding):
            del self.outstanding[n]
            if n == echo.nonce:
                break
        self.rtt = now - sent
        self.last_reply = now
        self.missed = 0
        self.valid_until = now + self.window * self.interval
        self.counters["replies_ok"] += 1
        self._go(Event.REPLY)
        return ReplyResult.ACCEPTED

    def on_echo(self, echo: Echo, now: float) -> bool:
        """The peer probed us: if it advertises CAP_FOLD it understands folded packets."""
        self.counters["echo_received"] += 1
        if not echo.cap_flags & CAP_FOLD or self.state is PeerState.UNKNOWN:
            return False
        # the peer is up and understands FOLD: probes it missed while it was not (yet) running are moot
        self.outstanding.clear()
        self.missed = 0
        self.valid_until = max(self.valid_until, now + self.window * self.interval)
        self._go(Event.ECHO)
        return True

    def tick(self, now: float) -> None:
        if self.state is PeerState.CAPABLE and now > self.valid_until:
            self._go(Event.EXPIRE)

    def status(self, now: float) -> dict:
        return {
            "state": self.state.value,
            "mode": self.mode(now),
            "last_reply_age_s": None if self.last_reply is None else round(now - self.last_reply, 3),
            "rtt_us": None if self.rtt is None else round(self.rtt * 1e6, 1),
            **self.counters,
        }


class Prober:
    """All peers' probe schedule, bounded by a global probe budget (probes per second)."""

    def __init__(self, keys, *, interval: float = 1.0, window: int = 3, budget: float = 100.0,
                 misses: int = 1, fallback: str = "plain", now: float = 0.0, rng: random.Random | None = None,
                 reply_rate: float = 10.0, reply_burst: float = 5.0) -> None:
        self.rng = rng or random.Random()
        keys = list(keys)
        self.spacing = 1.0 / budget
        self.period = max(interval, len(keys) * self.spacing)  # per-peer period once the budget is shared
        self.peers = {k: Peer(k, self.period, window, misses, fallback) for k in keys}
        n = len(self.peers)
        self._heap: list[tuple[float, int, Hashable]] = []
        for i, k in enumerate(self.peers):
            self.peers[k]._go(Event.START)
            heapq.heappush(self._heap, (now + self.rng.uniform(0, self.period), i, k))
        self._seq = n
        self._last_sent = float("-inf")
        self.reply_rate, self.reply_burst = reply_rate, reply_burst
        self._buckets: dict[Hashable, tuple[float, float]] = {}

    def next_deadline(self) -> float | None:
        return max(self._heap[0][0], self._last_sent + self.spacing) if self._heap else None

    def due(self, now: float) -> list[Hashable]:
        """Peers to probe now: at most one per ``1 / budget`` seconds, all peers together."""
        out = []
        if self._heap and self._heap[0][0] <= now and now >= self._last_sent + self.spacing:
            _, _, k = heapq.heappop(self._heap)
            out.append(k)
            self._last_sent = now
            jitter = self.rng.uniform(-0.1, 0.1) * self.period
            heapq.heappush(self._heap, (now + self.period + jitter, self._seq, k))
            self._seq += 1
        for p in self.peers.values():
            p.tick(now)
        return out

    def make_echo(self, key: Hashable, now: float, *, caps: int, max_levels: int, max_option_bytes: int) -> Echo:
        nonce = self.rng.getrandbits(64)
        self.peers[key].on_probe_sent(nonce, now)
        return Echo(nonce, int(now * 1e9) & 0xFFFFFFFFFFFFFFFF, max_levels, max_option_bytes, caps)

    def may_reply(self, key: Hashable, now: float) -> bool:
        """Token bucket per peer for echo replies (a forged-source flood cannot make us a reflector)."""
        tokens, t = self._buckets.get(key, (self.reply_burst, now))
        tokens = min(self.reply_burst, tokens + (now - t) * self.reply_rate)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            self.peers[key].counters["replies_rate_limited"] += 1
            return False
        self._buckets[key] = (tokens - 1, now)
        self.peers[key].counters["replies_sent"] += 1
        return True
