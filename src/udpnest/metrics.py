"""Prometheus metrics: ``udpnest up --metrics ADDR:PORT``.

A custom :class:`StatusCollector` turns one ``Endpoint.status()`` dict into metric families at scrape time, so
the dataplane pays nothing per packet: every counter it already keeps (and every drop reason, zero-filled so
alerts can be written before the first drop) becomes a Prometheus metric when someone scrapes.

The translation (:meth:`StatusCollector.families`) is pure: it takes a status dict and yields metric families;
the HTTP side is ``prometheus_client``'s own server.  The collector reads the status through the endpoint's
control socket (:func:`udpnest.endpoint.query_status`), so the scrape is answered by the endpoint's main loop
like ``udpnest status`` and never races the dataplane threads.

Names follow the Prometheus conventions: ``udpnest_`` prefix, ``_total`` for counters, base units (bytes,
seconds), labels for what varies (``reason``, ``direction``, ``peer``, ``mode``).  docs/operations.md lists them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.registry import CollectorRegistry

from .peers import PeerState
from .rxdriver import READS_HIST_MAX, READS_HIST_PREFIX
from .wire.errors import Reason

log = logging.getLogger("udpnest")

DIRECTIONS = ("tx", "rx")
DROP_SOURCES = ("tx", "rx", "control")
PEER_MODES = ("plain", "hint", "fold")
PEER_STATES = tuple(s.value for s in PeerState) + ("static",)

# status counter key -> (metric suffix, help); everything else becomes udpnest_<dir>_<key>_total
_TX_COUNTERS = {
    "frames": ("frames", "Frames read from the TAP"),
    "bytes": ("bytes", "Bytes of frames read from the TAP (Ethernet header on)"),
    "datagrams": ("datagrams", "Underlay datagrams sent (after segmentation)"),
    "super_packets": ("super_packets", "Super-packets (GSO frames) sent as several datagrams"),
    "sendmsg_calls": ("sendmsg_calls", "sendmsg calls on the underlay sockets"),
    "kernel_writes": ("kernel_writes", "Super-packets handed to the kernel's UDP-tunnel GSO (--tx-path kernel)"),
    "flooded": ("flooded", "Frames flooded to every peer (unknown or group destination)"),
}
_RX_COUNTERS = {
    "reads": ("reads", "recvmsg calls that returned data on the underlay socket"),
    "bytes": ("bytes", "UDP payload bytes read from the underlay socket"),
    "datagrams": ("datagrams", "Underlay datagrams delivered to the TAP"),
    "super_packets": ("super_packets", "TAP writes carrying more than one datagram (coalesced super-packets)"),
    "tap_writes": ("tap_writes", "writev calls on the TAP"),
    "tap_bytes": ("tap_bytes", "Frame bytes written to the TAP"),
    "merged_reads": ("merged_reads", "Reads merged into the previous read's super-packet"),
}
_KNOWN = {"tx": _TX_COUNTERS, "rx": _RX_COUNTERS}
_NAME_OK = re.compile(r"[^a-zA-Z0-9_]")


def _hist_upper(label: str) -> float:
    """Status histogram label ("1", "2-3", "64+") -> Prometheus ``le`` bound."""
    if label.endswith("+"):
        return float("inf")
    return float(label.rpartition("-")[2])


def _num(v) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int | float):
        return float(v)
    return None


class StatusCollector:
    """``prometheus_client`` collector over a status source (a callable returning ``Endpoint.status()``)."""

    def __init__(self, status: Callable[[], Mapping], version: str | None = None) -> None:
        self.status = status
        if version is None:
            from . import __version__ as version
        self.version = version

    def describe(self) -> Iterable:
        return []  # unchecked collector: the metric set depends on the status

    def collect(self) -> Iterable:
        up = GaugeMetricFamily("udpnest_up", "1 when the endpoint answered the scrape's status query")
        try:
            st = self.status()
        except OSError as e:
            log.warning("metrics: endpoint status unavailable: %s", e)
            up.add_metric([], 0)
            yield up
            yield from self._build_info()
            return
        up.add_metric([], 1)
        yield up
        yield from self.families(st)

    def _build_info(self) -> Iterable:
        bi = InfoMetricFamily("udpnest_build", "udpnest version")
        bi.add_metric([], {"version": self.version})
        yield bi

    def families(self, st: Mapping) -> Iterable:
        """Pure: one status dict -> metric families."""
        yield from self._build_info()
        eng = InfoMetricFamily("udpnest_engine", "Packet engine in use")
        eng.add_metric([], {"engine": str(st.get("engine", "python"))})
        yield eng
        cfg = st.get("config", {})
        ci = InfoMetricFamily("udpnest_config", "Configuration of the running endpoint")
        ci.add_metric([], {k: str(cfg[k]) for k in ("id", "local", "dstport", "nested", "fallback") if k in cfg})
        yield ci
        g = GaugeMetricFamily("udpnest_uptime_seconds", "Seconds since the endpoint started")
        g.add_metric([], float(st.get("uptime_s", 0)))
        yield g
        if "underlay_mtu" in cfg:
            g = GaugeMetricFamily("udpnest_underlay_mtu_bytes", "Configured underlay path MTU")
            g.add_metric([], cfg["underlay_mtu"])
            yield g

        yield from self._drops(st)
        for d in DIRECTIONS:
            yield from self._direction(d, st.get(d, {}))
            yield from self._histogram(d, st.get(f"{d}_segments_hist", {}), st.get(d, {}).get("datagrams", 0))
        yield from self._reads_histogram(st.get("rx", {}))
        yield from self._control(st.get("control", {}))
        yield from self._peers(st.get("peers", {}))
        yield from self._fdb(st.get("fdb", {}))
        yield from self._tap_underlay(st)

    def _drops(self, st: Mapping) -> Iterable:
        by_dir = st.get("drops_by_direction")
        if by_dir is None:  # an older status without the split: everything is counted as RX
            by_dir = {"rx": st.get("drops", {})}
        for src in DROP_SOURCES:
            drops = by_dir.get(src, {})
            what = {"tx": "frames from the TAP dropped before sending", "rx": "received datagrams dropped",
                    "control": "echo packets dropped or refused"}[src]
            f = CounterMetricFamily(f"udpnest_{src}_drops", f"Packets dropped by reason: {what}",
                                    labels=["reason"])
            for r in Reason:  # every reason, 0 when not hit: alerts can be written before the first drop
                f.add_metric([r.value], drops.get(r.value, 0))
            for reason, n in sorted(drops.items()):  # a reason this version does not know (never hidden)
                if reason not in Reason._value2member_map_:
                    f.add_metric([reason], n)
            yield f

    def _reads_histogram(self, c: Mapping) -> Iterable:
        """RX: how many UDP_GRO reads each coalesced super-packet was made of (merged reads; rxdriver.py)."""
        h = HistogramMetricFamily("udpnest_rx_reads_per_super_packet",
                                  "RX: UDP_GRO reads merged into each coalesced super-packet (TAP write)")
        acc, total, buckets = 0, 0, []
        for k in range(1, READS_HIST_MAX + 1):
            n = c.get(f"{READS_HIST_PREFIX}{k}", 0)
            acc += n
            total += k * n
            buckets.append((str(float(k)) if k < READS_HIST_MAX else "+Inf", acc))
        h.add_metric([], buckets, sum_value=total)  # the sum counts 3+ as 3: a lower bound
        yield h

    def _direction(self, d: str, c: Mapping) -> Iterable:
        known = _KNOWN[d]
        for key, (suffix, helptext) in known.items():
            f = CounterMetricFamily(f"udpnest_{d}_{suffix}", helptext)
            f.add_metric([], c.get(key, 0))
            yield f
        by_mode = CounterMetricFamily("udpnest_tx_frames_by_mode", "TX frames sent per peer mode",
                                      labels=["mode"]) if d == "tx" else None
        by_kind = CounterMetricFamily("udpnest_rx_tap_writes_by_kind", "RX TAP writes by kind of super-packet",
                                      labels=["kind"]) if d == "rx" else None
        timing = CounterMetricFamily(f"udpnest_{d}_busy_seconds", f"{d.upper()} time spent per stage",
                                     labels=["stage"])
        for m in PEER_MODES if d == "tx" else ():
            by_mode.add_metric([m], c.get(f"mode_{m}", 0))
        for key, v in sorted(c.items()):
            if key in known or _num(v) is None or key.startswith(READS_HIST_PREFIX):
                continue
            if key.startswith("time_") and key.endswith("_ns"):
                timing.add_metric([key[5:-3]], v / 1e9)
            elif d == "tx" and key.startswith("mode_"):
                if key[5:] not in PEER_MODES:
                    by_mode.add_metric([key[5:]], v)
            elif d == "rx" and key.startswith("kind_"):
                by_kind.add_metric([key[5:]], v)
            else:  # a counter this module does not name yet: exported under its status key, never hidden
                f = CounterMetricFamily(f"udpnest_{d}_{_NAME_OK.sub('_', key)}", f"{d.upper()} counter {key}")
                f.add_metric([], v)
                yield f
        yield from (f for f in (by_mode, by_kind) if f is not None)
        yield timing

    def _histogram(self, d: str, hist: Mapping, total: int) -> Iterable:
        h = HistogramMetricFamily(f"udpnest_{d}_segments_per_super_packet",
                                  f"{d.upper()}: datagrams per super-packet ({'sent' if d == 'tx' else 'TAP write'})")
        if not hist:
            return
        acc, buckets = 0, []
        for label, n in hist.items():
            acc += n
            buckets.append((str(_hist_upper(label)) if not label.endswith("+") else "+Inf", acc))
        if buckets[-1][0] != "+Inf":
            buckets.append(("+Inf", acc))
        # every send (TX) / TAP write (RX) adds its datagrams both to one bucket and to the "datagrams"
        # counter: that counter is the histogram's exact sum
        h.add_metric([], buckets, sum_value=total)
        yield h

    def _control(self, c: Mapping) -> Iterable:
        f = CounterMetricFamily("udpnest_echo_packets", "Echo probe packets by event", labels=["event"])
        for k in ("echo_requests_sent", "echo_requests_received", "echo_replies_sent", "echo_replies_received"):
            f.add_metric([k.removeprefix("echo_")], c.get(k, 0))
        res = CounterMetricFamily("udpnest_echo_replies_by_result", "Echo replies received, by how they were "
                                  "taken", labels=["result"])
        for k, v in sorted(c.items()):
            if k.startswith("echo_reply_"):
                res.add_metric([k.removeprefix("echo_reply_")], v)
        yield f
        yield res

    def _peers(self, peers: Mapping) -> Iterable:
        mode = GaugeMetricFamily("udpnest_peer_mode", "1 for the mode udpnest currently uses towards the peer",
                                 labels=["peer", "mode"])
        state = GaugeMetricFamily("udpnest_peer_state", "1 for the peer's probe state", labels=["peer", "state"])
        rtt = GaugeMetricFamily("udpnest_peer_rtt_seconds", "Last echo round-trip time", labels=["peer"])
        age = GaugeMetricFamily("udpnest_peer_last_reply_age_seconds", "Seconds since the last valid echo reply",
                                labels=["peer"])
        counters: dict[str, CounterMetricFamily] = {}
        for peer, p in sorted(peers.items()):
            for m in PEER_MODES:
                mode.add_metric([peer, m], 1 if p.get("mode") == m else 0)
            for s in PEER_STATES:
                state.add_metric([peer, s], 1 if p.get("state") == s else 0)
            if p.get("rtt_us") is not None:
                rtt.add_metric([peer], p["rtt_us"] / 1e6)
            if p.get("last_reply_age_s") is not None:
                age.add_metric([peer], p["last_reply_age_s"])
            for k, v in p.items():
                if k in ("mode", "state", "rtt_us", "last_reply_age_s") or _num(v) is None:
                    continue
                name = f"udpnest_peer_{_NAME_OK.sub('_', k)}"
                if name not in counters:
                    counters[name] = CounterMetricFamily(name, f"Per-peer probe counter {k}", labels=["peer"])
                counters[name].add_metric([peer], v)
        yield mode
        yield state
        yield rtt
        yield age
        yield from counters.values()

    def _fdb(self, fdb: Mapping) -> Iterable:
        g = GaugeMetricFamily("udpnest_fdb_entries", "Forwarding table entries")
        g.add_metric([], fdb.get("entries", 0))
        yield g
        for k in ("learned", "moved", "evicted", "expired"):
            f = CounterMetricFamily(f"udpnest_fdb_{k}", f"Forwarding table entries {k}")
            f.add_metric([], fdb.get(k, 0))
            yield f

    def _tap_underlay(self, st: Mapping) -> Iterable:
        tap = st.get("tap", {})
        off = GaugeMetricFamily("udpnest_tap_offload", "1 for each TAP offload in use", labels=["tap", "offload"])
        for o in tap.get("offloads", []):
            off.add_metric([str(tap.get("name")), o], 1)
        yield off
        u = st.get("underlay", {})
        g = GaugeMetricFamily("udpnest_underlay_offload", "1 when the underlay socket feature works "
                              "(gso, gro, source_filter: the kernel drops non-peers)", labels=["offload"])
        for k in ("gso", "gro"):
            g.add_metric([k], 1 if u.get(k) else 0)
        for k, v in sorted(u.items()):  # flags a later status adds (e.g. source_filter)
            if isinstance(v, bool) and k not in ("gso", "gro"):
                g.add_metric([k], 1 if v else 0)
        yield g
        f = CounterMetricFamily("udpnest_underlay_gso_eio_errors", "UDP_SEGMENT sends refused with EIO")
        f.add_metric([], u.get("gso_eio_errors", 0))
        yield f
        if "rx_queues" in u:
            g = GaugeMetricFamily("udpnest_underlay_rx_queues", "Underlay receive sockets (rx_queues, SO_REUSEPORT)")
            g.add_metric([], u["rx_queues"])
            yield g
            f = CounterMetricFamily("udpnest_underlay_rx_queue_reads", "Reads per underlay receive socket",
                                    labels=["queue"])
            for i, v in enumerate(u.get("rx_queue_reads") or ()):
                f.add_metric([str(i)], v)
            yield f


def registry_for(status: Callable[[], Mapping]) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(StatusCollector(status))
    return reg


def parse_listen(text: str) -> tuple[str, int]:
    """``ADDR:PORT`` or ``[V6ADDR]:PORT`` (validated by :func:`udpnest.config.build_config`) -> (addr, port)."""
    from .config import build_config

    p = build_config({"id": 0, "local": "127.0.0.1", "remote": "127.0.0.2", "metrics": text}).metrics
    host, _, port = p.rpartition(":")
    return host.strip("[]"), int(port)


def serve(listen: str, status: Callable[[], Mapping]):
    """Start the HTTP exporter on ``listen`` in a daemon thread; returns the server (``.shutdown()``)."""
    from prometheus_client import start_http_server

    addr, port = parse_listen(listen)
    server, _thread = start_http_server(port, addr=addr, registry=registry_for(status))
    log.info("metrics on http://%s/metrics", f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}")
    return server
