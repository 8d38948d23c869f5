"""The TX burst's Python half: the policy snapshot the native burst (csrc/txburst.c) forwards with.

The native burst reads frames from the TAP and sends the steady state (a known unicast peer, the build for
its mode) without a Python round trip per frame; everything else it hands back to ``Endpoint._tx_frame``
(docs/architecture.md, "The TX burst").  Policy stays here, in Python: which destination MAC is behind which
peer (the FDB) and each peer's mode (the prober), frozen into a snapshot:

* ``macs``: destination MAC -> peer index, only entries valid for the snapshot's whole lifetime;
* ``peers``: per peer its socket address and mode (``Endpoint.peer_mode``);
* ``deadline``: the earliest FDB expiry among the entries and the ``valid_until`` of every peer folded to,
  at most :data:`MAX_AGE` ahead; the native burst hands back every frame once the deadline has passed.

The snapshot is rebuilt when it can have changed: the FDB's ``version`` (an entry learned, moved, expired,
evicted or forgotten), ``peers.MODE_VERSION`` (any peer state change: a reply, an expiry, a fallback), a
reload (a new config, peer table, prober, planner or socket list), the generation word
(:mod:`udpnest.generation`, bumped after each of those) or when the deadline has passed.

The linger: one native call covers every TAP wakeup within :data:`LINGER_NS` of its start (the Python per
wakeup, poll, clocks, the snapshot check, the counters, is paid once per window, not once per ACK).  When
the TAP is empty C flushes the pending batch, then waits in ``ppoll`` (GIL released) for more; it returns
EMPTY once the window is over with the TAP empty, and early at the snapshot's deadline, when the endpoint's
stop flag is set, at :data:`MAX_FRAMES`, for a hand-back, and when the generation word moved (before a read:
the frame stays queued and Python rebuilds; after a read: that frame is handed back).  So a change another
thread makes (the main loop's learning or probing, a reload) is honoured for every frame read after its
bump, lingering or not; without the word (``gen=None``) a snapshot would be at most one call (the linger
window, :data:`MAX_FRAMES` frames) stale.  A snapshot is never used past an FDB expiry or a fold validity.

A multi-queue TAP (``tap_queues`` > 1): the native call gets all queue fds, :data:`QUEUE_FRAMES` and a
round-robin state buffer; it serves the queues with the rule of ``Endpoint._tx_loop_queues`` (docs/
architecture.md, "A multi-queue TAP").
"""

from __future__ import annotations

import os
import time

from . import engine as _engine
from .generation import WORD as GENERATION
from .peers import MODE_VERSION, PeerState
from .wire.errors import Reason

#: seconds a snapshot is used at most (a safety net: every change is versioned)
MAX_AGE = 1.0
#: frames one native call handles at most before Python looks at the snapshot again
MAX_FRAMES = 128
#: nanoseconds one native call goes on waiting for more frames once the TAP is empty, from its start
#: (0: return at the first empty TAP, one call per wakeup)
LINGER_NS = 2_000_000
#: a multi-queue TAP (``tap_queues``): frames read from one queue per turn at most (K) before the readiness of
#: all queues is refreshed with one poll(0) and the next ready queue after it is served (csrc/txburst.c and
#: Endpoint._tx_loop_queues, the same rule)
QUEUE_FRAMES = 4
#: an FDB entry is used natively only up to this long before it expires (Python decides at the edge)
MARGIN = 1e-6
MODE_INT = {"plain": 0, "hint": 1, "fold": 2}
#: the order of the counts the native burst returns (csrc/txburst.c)
COUNT_KEYS = ("frames", "bytes", "datagrams", "super_packets", "sendmsg_calls", "mode_plain", "mode_hint",
              "mode_fold")
#: counts[HIST:HIST + 7] the segments histogram, then the time waited in ppoll and the waits that found frames
HIST, WAIT_NS, WAKEUPS = 11, 18, 19
ENV = "UDPNEST_TX_BURST"


def wanted(ep) -> bool:
    """The burst runs with the native engine on the socket TX path, unless ``UDPNEST_TX_BURST=0``."""
    if os.environ.get(ENV, "1").strip().lower() in ("0", "off", "no", "false"):
        return False
    planner = ep.planner
    return (ep.engine == "native" and planner.engine == "native" and not planner.kernel_tx
            and _engine._native is not None and hasattr(_engine._native, "tx_burst") and bool(ep.tx))


class TxBurst:
    """The snapshot (rebuilt when needed) and the counters of one endpoint's TX burst."""

    def __init__(self, ep) -> None:
        self.ep = ep
        self._key: tuple | None = None
        self._deadline = float("-inf")
        self._snap: tuple | None = None
        self._conf: tuple | None = None
        self.rebuilds = 0

    def _identity(self):
        ep = self.ep
        gen = GENERATION[0]  # first: a change after this read makes the word differ from the snapshot's
        return (ep.fdb.version, MODE_VERSION[0], ep.cfg, ep.peers, ep.prober, ep.planner, ep.tx, ep.fdb, gen)

    def snapshot(self, now: float) -> tuple[tuple, tuple]:
        """(snap, conf) for ``tx_burst``: the last one while nothing changed, else a new one (per TAP wakeup:
        a few attribute reads, no call)."""
        k = self._key
        ep = self.ep
        fdb = ep.fdb
        if (k is not None and now < self._deadline and fdb.version == k[0] and MODE_VERSION[0] == k[1]
                and ep.cfg is k[2] and ep.peers is k[3] and ep.prober is k[4] and ep.planner is k[5]
                and ep.tx is k[6] and fdb is k[7] and GENERATION[0] == k[8]):
            return self._snap, self._conf
        return self.rebuild(now)

    def rebuild(self, now: float) -> tuple[tuple, tuple]:
        ep = self.ep
        key = self._identity()  # versions first: a change while we read shows up as a new version next time
        _, _, cfg, peers, prober, planner, tx, fdb, gen = key
        deadline = now + MAX_AGE
        index: dict = {}
        plist: list[tuple] = []
        macs: dict[bytes, int] = {}
        ageing = fdb.ageing
        for mac, peer_key, t in fdb.entries():
            expires = t + ageing - MARGIN
            if not now < expires or mac[0] & 1:
                continue  # expired (Python's lookup expires it) or a group address (flooded)
            peer = peers.get(peer_key)
            if peer is None:
                continue
            i = index.get(peer_key)
            if i is None:
                mode = ep.peer_mode(peer_key, now)
                if mode == "fold" and prober is not None:
                    p = prober.peers.get(peer_key)
                    if p is not None and p.state is PeerState.CAPABLE:
                        if not now < p.valid_until:
                            continue  # valid up to exactly now: Python decides
                        deadline = min(deadline, p.valid_until)
                i = index[peer_key] = len(plist)
                plist.append((peer.sockaddr, MODE_INT[mode]))
            deadline = min(deadline, expires)
            macs[bytes(mac)] = i
        # the native side compares with CLOCK_MONOTONIC: only when the endpoint's clock is that clock
        native_deadline = deadline if ep.clock is time.monotonic else 0.0
        self._snap = (macs, tuple(plist), native_deadline, MAX_FRAMES, gen)
        self._conf = (planner.vni, planner.opt_class, planner._ports, planner.max_levels, planner.max_datagram,
                      bytes(planner._plain), tuple(tx))
        self._key, self._deadline = key, deadline
        self.rebuilds += 1
        return self._snap, self._conf

    def account(self, counts: tuple) -> None:
        """Add one native call's counter deltas (tx_burst's counts) to the endpoint's TX counters."""
        ep = self.ep
        st = ep.tx_stats
        c = st.c
        c["tx_burst_calls"] += 1
        if counts[10]:
            c["sendmmsg_calls"] += counts[10]
        if counts[9]:
            st.drop(Reason.SEND_ERROR, counts[9])
        if counts[WAKEUPS]:
            c["tx_burst_wakeups"] += counts[WAKEUPS]
        frames = counts[0]
        if not frames:
            if counts[4]:
                c["sendmsg_calls"] += counts[4]
            return
        for k, v in zip(COUNT_KEYS, counts, strict=False):
            if v:
                c[k] += v
        c["tx_burst_fast"] += frames
        if counts[8]:
            ep.planner.counters["native_fast"] += counts[8]
        hist = st.hist
        for i, v in enumerate(counts[HIST:WAIT_NS]):
            if v:
                hist[i] += v
