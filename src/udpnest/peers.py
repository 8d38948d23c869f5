"""Per-peer probing: fold only towards peers that answered an echo (sans-IO, time passed in).

Theory of operation.  A folded packet carries a critical option, so a peer that does not understand
it must drop the packet (RFC 8926 section 3.5): folding blindly would blackhole legacy peers.  With
``nested fold`` configured, every peer starts UNKNOWN and is probed: a Geneve OAM packet with a
critical ECHO_REQUEST option and no payload.  A complying peer answers with ECHO_REPLY echoing the
nonce; a legacy peer drops the request.  Everything that changes a peer's state is in this file:

    state      event      next        rule
    UNKNOWN    START      PROBING     nested fold enabled: first probe after a random jitter
    PROBING    REPLY      CAPABLE     reply with an outstanding nonce of ours, within its lifetime,
                                      advertising CAP_FOLD
    PROBING    EXPIRE     FALLBACK    ``misses`` probes in a row unanswered after their timeout
    CAPABLE    REPLY      CAPABLE     validity extended to now + window * interval
    CAPABLE    EXPIRE     FALLBACK    validity ran out, ``misses`` probes in a row went unanswered, or
                                      a reply without CAP_FOLD
    FALLBACK   REPLY      CAPABLE
    FALLBACK   EXPIRE     FALLBACK

Only a REPLY proves capability.  An echo *request* received from the peer never changes the state, the
validity or the missed-probe count (anybody who can spoof the peer's address can send one, so it proves
nothing; issue 9): it earns a reply (rate-limited by :class:`ReplyLimiter`) and, towards a peer we are
not folding to, at most an early probe of our own (:meth:`Prober.on_request`), whose reply then decides.

Any other pair raises :class:`LocalProtocolError` (our own bug, not the peer's).  What the peer sends
wrong (unknown nonce, late reply) is returned as a :class:`ReplyResult` and counted; it never changes
the state.  A reply without CAP_FOLD is an answer too: that peer cannot unfold, so it goes to FALLBACK
at once (EXPIRE).  The mode is decided per super-packet at send time with :meth:`Peer.mode`.

Timing.  Probes every ``interval`` seconds per peer (+-10 % jitter), spread so that all peers together
send at most ``budget`` probes per second (1000 peers at 100/s are each probed every 10 s).

* Up to :data:`MAX_OUTSTANDING` probes per peer are outstanding at once; a reply to ANY of them within
  its lifetime (``window * interval``, or longer for a slow peer: :meth:`Peer.lifetime`) is accepted, so
  a loaded peer whose replies arrive after the next probe went out does not flap.  It also settles the
  older outstanding probes.
* A probe is *missed* when it is still unanswered after :meth:`Peer.timeout` =
  ``max(MISS_FRACTION * interval, RTT_K * srtt + 4 * rttvar)`` (srtt/rttvar: RFC 6298 estimators of
  the measured RTT), i.e. at the next probe for a fast peer and later for a slow one.  ``misses``
  (default 1) missed probes in a row mean FALLBACK, so a peer that turns legacy stops receiving folded
  packets within two probe intervals.
* Backoff: once a peer in FALLBACK has missed :data:`BACKOFF_AFTER` probes in a row it is known legacy
  (a kernel geneve drops each probe and counts it in ``rx_dropped``); its probe period then doubles with
  every further unanswered probe up to ``backoff_max`` seconds.  Any accepted reply resets it, and an
  echo request with CAP_FOLD from the peer (it restarted as a folding endpoint) brings the next probe
  forward, at most once per ``interval``.
"""

from __future__ import annotations

import enum
import heapq
import random
import secrets
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from .generation import bump as _bump_generation
from .wire.options import CAP_FOLD, Echo


class PeerState(enum.Enum):
    UNKNOWN = "unknown"
    PROBING = "probing"
    CAPABLE = "capable"
    FALLBACK = "fallback"


class Event(enum.Enum):
    START = "start"
    REPLY = "reply"
    EXPIRE = "expire"


S, E = PeerState, Event
TRANSITIONS: dict[tuple[PeerState, Event], PeerState] = {
    (S.UNKNOWN, E.START): S.PROBING,
    (S.PROBING, E.REPLY): S.CAPABLE,
    (S.PROBING, E.EXPIRE): S.FALLBACK,
    (S.CAPABLE, E.REPLY): S.CAPABLE,
    (S.CAPABLE, E.EXPIRE): S.FALLBACK,
    (S.FALLBACK, E.REPLY): S.CAPABLE,
    (S.FALLBACK, E.EXPIRE): S.FALLBACK,
}


class LocalProtocolError(RuntimeError):
    """An event that the state machine does not allow in the current state: a bug in udpnest."""


class ReplyResult(enum.Enum):
    ACCEPTED = "accepted"
    UNKNOWN_NONCE = "unknown_nonce"  # never sent, already answered, or forged
    LATE = "late"  # answered after the probe's lifetime
    NOT_CAPABLE = "not_capable"  # the peer answers but does not advertise CAP_FOLD


#: probes per peer awaiting a reply (older ones are forgotten: a reply to them is an unknown nonce)
MAX_OUTSTANDING = 8
#: a probe is missed after max(MISS_FRACTION * interval, RTT_K * srtt + 4 * rttvar)
MISS_FRACTION = 0.8
RTT_K = 4.0
#: consecutive missed probes after which a FALLBACK peer is probed with exponential backoff
BACKOFF_AFTER = 3
BACKOFF_MAX = 60.0
#: bumped by every peer state change (each reply, expiry, fallback: every change of a peer's mode or of its
#: ``valid_until`` goes through ``Peer._go``); the TX burst rebuilds its snapshot when it moved (txburst.py)
MODE_VERSION = [0]


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
    missed: int = 0  # consecutive probes unanswered past their timeout
    last_reply: float | None = None
    rtt: float | None = None  # last sample
    srtt: float | None = None
    rttvar: float = 0.0
    backoff_max: float = BACKOFF_MAX
    _counted: set = field(default_factory=set)  # outstanding nonces already counted as missed
    on_reset: Callable[[], None] | None = None  # called when an answer ends a backoff (the Prober reschedules)
    counters: dict = field(default_factory=lambda: dict.fromkeys(
        ("probes_sent", "replies_ok", "replies_unknown_nonce", "replies_late", "replies_not_capable",
         "echo_received", "replies_sent", "replies_rate_limited", "fallbacks", "probes_missed"), 0))

    def _go(self, event: Event) -> None:
        nxt = TRANSITIONS.get((self.state, event))
        if nxt is None:
            raise LocalProtocolError(f"peer {self.key}: event {event.value} not allowed in state {self.state.value}")
        if nxt is PeerState.FALLBACK and self.state is not PeerState.FALLBACK:
            self.counters["fallbacks"] += 1
        self.state = nxt
        MODE_VERSION[0] += 1  # the TX burst's snapshot (udpnest.txburst) is rebuilt
        _bump_generation()  # and a lingering native burst returns to look (generation.py)

    def mode(self, now: float) -> str:
        """'fold' while the peer is known to understand it, else the configured fallback."""
        if self.state is PeerState.CAPABLE and now <= self.valid_until:
            return "fold"
        return self.fallback

    # -- timing derived from the measured RTT ------------------------------------------------------------

    def timeout(self) -> float:
        """Age at which an unanswered probe counts as missed."""
        t = MISS_FRACTION * self.interval
        if self.srtt is not None:
            t = max(t, RTT_K * self.srtt + 4 * self.rttvar)
        return t

    def lifetime(self) -> float:
        """Age up to which a reply to a probe is accepted (and validity after a good reply)."""
        return max(self.window * self.interval, 2 * self.timeout())

    def period(self) -> float:
        """Time to the next probe: the interval, or the backoff towards a peer known to be legacy."""
        if self.state is PeerState.FALLBACK and self.missed >= BACKOFF_AFTER:
            factor = 2.0 ** min(self.missed - BACKOFF_AFTER + 1, 30)
            return max(self.interval, min(self.backoff_max, self.interval * factor))
        return self.interval

    def _count_misses(self, now: float) -> None:
        timeout = self.timeout()
        for nonce, sent in self.outstanding.items():
            if nonce not in self._counted and now - sent >= timeout:
                self._counted.add(nonce)
                self.missed += 1
                self.counters["probes_missed"] += 1
        if self.missed >= self.misses_allowed and self.state in (PeerState.PROBING, PeerState.CAPABLE):
            self._go(Event.EXPIRE)
        # forget probes past their lifetime (a reply to them is LATE or unknown)
        life = self.lifetime()
        while self.outstanding:
            nonce, sent = next(iter(self.outstanding.items()))
            if now - sent <= life:
                break
            del self.outstanding[nonce]
            self._counted.discard(nonce)

    # -- events ------------------------------------------------------------------------------------------

    def on_probe_sent(self, nonce: int, now: float) -> None:
        """Call when a probe goes out: older probes unanswered past their timeout count as missed."""
        self._count_misses(now)
        self.outstanding[nonce] = now
        while len(self.outstanding) > MAX_OUTSTANDING:
            old, _ = self.outstanding.popitem(last=False)
            self._counted.discard(old)
        self.counters["probes_sent"] += 1

    def on_reply(self, echo: Echo, now: float) -> ReplyResult:
        sent = self.outstanding.get(echo.nonce)
        if sent is None:
            self.counters["replies_unknown_nonce"] += 1
            return ReplyResult.UNKNOWN_NONCE
        if now - sent > self.lifetime():
            del self.outstanding[echo.nonce]
            self._counted.discard(echo.nonce)
            self.counters["replies_late"] += 1
            return ReplyResult.LATE
        if not echo.cap_flags & CAP_FOLD:
            # the peer is alive but says it cannot unfold (e.g. restarted with folding off): stop now
            del self.outstanding[echo.nonce]
            self._counted.discard(echo.nonce)
            self.counters["replies_not_capable"] += 1
            if self.state is not PeerState.UNKNOWN:
                self.valid_until = 0.0
                self._go(Event.EXPIRE)
            return ReplyResult.NOT_CAPABLE
        # this reply also settles every older probe (replies can be reordered or lost)
        for n in list(self.outstanding):
            del self.outstanding[n]
            self._counted.discard(n)
            if n == echo.nonce:
                break
        self._rtt_sample(now - sent)
        self.last_reply = now
        backed_off = self.period() > self.interval
        self.missed = 0
        self.valid_until = max(self.valid_until, now + self.lifetime())
        self.counters["replies_ok"] += 1
        self._go(Event.REPLY)
        if backed_off and self.on_reset is not None:
            self.on_reset()
        return ReplyResult.ACCEPTED

    def _rtt_sample(self, r: float) -> None:
        """RFC 6298 section 2: srtt and rttvar with alpha 1/8, beta 1/4."""
        self.rtt = r
        if self.srtt is None:
            self.srtt, self.rttvar = r, r / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - r)
            self.srtt = 0.875 * self.srtt + 0.125 * r

    def on_request(self, echo: Echo, now: float) -> bool:
        """The peer probed us.  Counted; never changes the state (a request proves nothing: anybody
        can forge one with the peer's source address).  True if an early probe of ours is worth it:
        the peer advertises CAP_FOLD and we are not folding towards it."""
        self.counters["echo_received"] += 1
        return bool(echo.cap_flags & CAP_FOLD) and self.state in (PeerState.PROBING, PeerState.FALLBACK)

    def tick(self, now: float) -> None:
        self._count_misses(now)
        if self.state is PeerState.CAPABLE and now > self.valid_until:
            self._go(Event.EXPIRE)

    def status(self, now: float) -> dict:
        return {
            "state": self.state.value,
            "mode": self.mode(now),
            "last_reply_age_s": None if self.last_reply is None else round(now - self.last_reply, 3),
            "rtt_us": None if self.rtt is None else round(self.rtt * 1e6, 1),
            "srtt_us": None if self.srtt is None else round(self.srtt * 1e6, 1),
            "probe_period_s": round(self.period(), 3),
            "outstanding": len(self.outstanding),
            **self.counters,
        }


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up (time passed in)."""

    __slots__ = ("rate", "burst", "tokens", "t")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst, self.tokens, self.t = rate, burst, burst, now

    def peek(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.t) * self.rate)
        self.t = now
        return self.tokens >= 1

    def take(self) -> None:
        self.tokens -= 1


class ReplyLimiter:
    """Echo replies: per configured peer AND for all peers together (token buckets).

    Only keys in ``keys`` (the configured peers) ever get a reply, so the state is bounded by the
    configuration; a request from anybody else is refused without creating state.
    """

    def __init__(self, keys, *, rate: float = 10.0, burst: float = 5.0, global_rate: float = 100.0,
                 global_burst: float = 50.0, now: float = 0.0) -> None:
        self._per = {k: TokenBucket(rate, burst, now) for k in keys}
        self._all = TokenBucket(global_rate, global_burst, now)
        self.limited_peer = 0
        self.limited_global = 0
        self.not_peer = 0

    def keep(self, old: ReplyLimiter) -> None:
        """Take over ``old``'s buckets (a reload): peers that stay keep what they used of their budget."""
        for k in self._per.keys() & old._per.keys():
            self._per[k] = old._per[k]
        self._all = old._all

    def allow(self, key: Hashable, now: float) -> bool:
        b = self._per.get(key)
        if b is None:
            self.not_peer += 1
            return False
        if not b.peek(now):
            self.limited_peer += 1
            return False
        if not self._all.peek(now):
            self.limited_global += 1
            return False
        b.take()
        self._all.take()
        return True


class Prober:
    """All peers' probe schedule, bounded by a global probe budget (probes per second)."""

    def __init__(self, keys, *, interval: float = 1.0, window: int = 3, budget: float = 100.0,
                 misses: int = 1, fallback: str = "plain", now: float = 0.0, rng: random.Random | None = None,
                 reply_rate: float = 10.0, reply_burst: float = 5.0, reply_global_rate: float = 100.0,
                 reply_global_burst: float = 50.0, backoff_max: float = BACKOFF_MAX,
                 nonce: Callable[[], int] | None = None) -> None:
        self.rng = rng or random.Random()
        self.nonce = nonce or (lambda: secrets.randbits(64))
        keys = list(keys)
        self.spacing = 1.0 / budget
        self.period = max(interval, len(keys) * self.spacing)  # per-peer period once the budget is shared
        # backoff_max <= the period switches the backoff off
        self.peers = {k: Peer(k, self.period, window, misses, fallback, backoff_max=max(backoff_max, self.period))
                      for k in keys}
        n = len(self.peers)
        self._heap: list[tuple[float, int, Hashable]] = []
        self._due_at: dict[Hashable, float] = {}  # the live heap entry per peer (others are stale)
        self._early: dict[Hashable, float] = {}  # last early probe per peer
        self._last_sent_to: dict[Hashable, float] = {}
        for i, k in enumerate(self.peers):
            self.peers[k]._go(Event.START)
            self.peers[k].on_reset = lambda k=k: self._reset(k)
            t = now + self.rng.uniform(0, self.period)
            self._due_at[k] = t
            heapq.heappush(self._heap, (t, i, k))
        self._seq = n
        self._last_sent = float("-inf")
        self.replies = ReplyLimiter(keys, rate=reply_rate, burst=reply_burst, global_rate=reply_global_rate,
                                    global_burst=reply_global_burst, now=now)

    def _reset(self, k: Hashable) -> None:
        """A backed-off peer answered: its next probe comes at the normal interval again."""
        t = self._last_sent_to.get(k, float("-inf")) + self.period
        if self._due_at[k] > t:
            self._schedule(k, t)

    def _drop_stale(self) -> None:
        while self._heap and self._due_at.get(self._heap[0][2]) != self._heap[0][0]:
            heapq.heappop(self._heap)

    def _schedule(self, k: Hashable, t: float) -> None:
        self._due_at[k] = t
        heapq.heappush(self._heap, (t, self._seq, k))
        self._seq += 1

    def next_deadline(self) -> float | None:
        self._drop_stale()
        return max(self._heap[0][0], self._last_sent + self.spacing) if self._heap else None

    def due(self, now: float) -> list[Hashable]:
        """Peers to probe now: at most one per ``1 / budget`` seconds, all peers together."""
        out = []
        for p in self.peers.values():
            p.tick(now)
        self._drop_stale()
        if self._heap and self._heap[0][0] <= now and now >= self._last_sent + self.spacing:
            _, _, k = heapq.heappop(self._heap)
            out.append(k)
            self._last_sent = self._last_sent_to[k] = now
            period = self.peers[k].period()
            jitter = self.rng.uniform(-0.1, 0.1) * period
            self._schedule(k, now + period + jitter)
        return out

    def on_request(self, key: Hashable, echo: Echo, now: float) -> None:
        """An echo request from a configured peer: counted; may bring our next probe forward."""
        p = self.peers[key]
        if p.on_request(echo, now) and now - self._early.get(key, float("-inf")) >= self.period:
            if self._due_at[key] > now:
                self._early[key] = now
                self._schedule(key, now)

    def make_echo(self, key: Hashable, now: float, *, caps: int, max_levels: int, max_option_bytes: int) -> Echo:
        nonce = self.nonce()
        self.peers[key].on_probe_sent(nonce, now)
        return Echo(nonce, int(now * 1e9) & 0xFFFFFFFFFFFFFFFF, max_levels, max_option_bytes, caps)

    def may_reply(self, key: Hashable, now: float) -> bool:
        """Echo reply allowed?  Per peer and global token buckets (a forged-source flood cannot make us a
        reflector); counted on the peer."""
        ok = self.replies.allow(key, now)
        if key in self.peers:
            self.peers[key].counters["replies_sent" if ok else "replies_rate_limited"] += 1
        return ok
