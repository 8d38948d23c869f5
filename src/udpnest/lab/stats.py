"""Pure statistics and parsing for the lab benchmark: no I/O, no clock, unit tested on recorded data.

Definitions used in the bench output:

* ``gbps``: median over repetitions of the receiver-side goodput, ``end.sum_received.bits_per_second / 1e9``.
* ``cpu_s_per_gb``: median over repetitions of ``cpu seconds / (bytes received / 1e9)`` where cpu seconds =
  iperf3 client + server CPU (``end.cpu_utilization_percent.host_total``/``remote_total``, which iperf3 computes
  as user+system time of its process over wall time, in percent of one CPU) times the test duration, plus the
  user+system time of the udpnest endpoint processes (``/proc/<pid>/stat``) over the same interval.  Kernel
  work done in softirq on behalf of a process is charged to it; work in ksoftirqd is not.
* ``cpu_s_per_gb_system``: same with the whole machine's busy time from ``/proc/stat`` (all CPUs, everything
  that runs, including the bench itself); an upper bound that also catches ksoftirqd.
* ``endpoint_user_s_per_gb`` / ``endpoint_kernel_s_per_gb``: the udpnest endpoints' share of ``cpu_s_per_gb``
  split into user time (udpnest's own work: Python and the C core) and system time (the kernel's on their
  behalf: TAP and socket syscalls and the stacks that run inside them), median over repetitions; None for
  the kernel modes, which start no endpoint.  The user part is what a faster udpnest can still remove.
* ``rtt_p50_us``/``rtt_p99_us``: percentiles of all request/response round trips of the small flow that runs
  beside the bulk flow, pooled over repetitions.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

GB = 1e9
REFERENCE_MODE = "kernel-vxlan-in-vxlan"


class IperfError(RuntimeError):
    """iperf3 reported an error (its JSON has an ``error`` key) or the JSON lacks the end summary."""


@dataclass(frozen=True)
class IperfResult:
    bytes_received: int
    seconds: float
    bits_per_second: float
    host_cpu_pct: float
    remote_cpu_pct: float
    retransmits: int | None

    @property
    def gbps(self) -> float:
        return self.bits_per_second / 1e9

    @property
    def cpu_seconds(self) -> float:
        """CPU seconds of the iperf3 client and server together."""
        return (self.host_cpu_pct + self.remote_cpu_pct) / 100.0 * self.seconds


def parse_iperf3(obj: Mapping) -> IperfResult:
    """Extract the numbers the bench needs from ``iperf3 -c ... --json`` output (TCP, one stream)."""
    if obj.get("error"):
        raise IperfError(str(obj["error"]))
    try:
        end = obj["end"]
        recv = end["sum_received"]
        cpu = end["cpu_utilization_percent"]
        sent = end.get("sum_sent", {})
        return IperfResult(
            bytes_received=int(recv["bytes"]),
            seconds=float(recv["seconds"]),
            bits_per_second=float(recv["bits_per_second"]),
            host_cpu_pct=float(cpu["host_total"]),
            remote_cpu_pct=float(cpu["remote_total"]),
            retransmits=int(sent["retransmits"]) if "retransmits" in sent else None,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise IperfError(f"incomplete iperf3 JSON: missing {e}") from e


def median(xs: Iterable[float]) -> float:
    """:func:`statistics.median` (raises ``statistics.StatisticsError``, a ValueError, for no values)."""
    v = list(xs)
    if not v:
        raise statistics.StatisticsError("median of no values")
    return statistics.median(v)


def percentile(xs: Iterable[float], p: float) -> float:
    """:func:`numpy.percentile` with its default ``linear`` method (interpolation between closest ranks)."""
    v = list(xs)
    if not v:
        raise ValueError("percentile of no values")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} out of range")
    return float(np.percentile(np.asarray(v, dtype=float), p))


def cpu_s_per_gb(cpu_seconds: float, bytes_moved: int) -> float:
    if bytes_moved <= 0:
        raise ValueError("no bytes moved")
    return cpu_seconds / (bytes_moved / GB)


def parse_proc_pid_stat(text: str, *, children: bool = False) -> tuple[int, ...]:
    """(utime, stime) in clock ticks from ``/proc/<pid>/stat``; the comm field may contain spaces and ')'.
    With ``children``: (utime, stime, cutime, cstime), the last two being the reaped children's."""
    rest = text[text.rindex(")") + 2:].split()
    # rest[0] is field 3 (state); utime, stime, cutime, cstime are fields 14 to 17.
    return tuple(int(x) for x in rest[11:15 if children else 13])


def parse_proc_pid_ppid(text: str) -> int:
    """The parent PID (field 4) from ``/proc/<pid>/stat``."""
    return int(text[text.rindex(")") + 2:].split()[1])


def parse_proc_stat_cpu(text: str) -> tuple[int, int]:
    """(busy, total) ticks of the aggregate ``cpu`` line of ``/proc/stat``; idle, iowait and steal are not busy."""
    for line in text.splitlines():
        if line.startswith("cpu "):
            vals = [int(x) for x in line.split()[1:]]
            user, nice, system, idle, iowait, irq, softirq, steal = (vals + [0] * 8)[:8]
            # guest/guest_nice (fields 9, 10) are already included in user/nice.
            busy = user + nice + system + irq + softirq
            return busy, busy + idle + iowait + steal
    raise ValueError("no aggregate cpu line in /proc/stat")


@dataclass
class RunSample:
    """One iperf3 run of one mode on one underlay setting."""

    mode: str
    underlay: str
    rep: int
    gbps: float
    bytes_received: int
    seconds: float
    iperf_cpu_s: float
    endpoint_cpu_s: float
    system_cpu_s: float
    retransmits: int | None
    rtt_us: list[float] = field(default_factory=list, repr=False)
    endpoint_user_s: float = 0.0  # the user-time part of endpoint_cpu_s

    @property
    def endpoint_user_s_per_gb(self) -> float | None:
        return cpu_s_per_gb(self.endpoint_user_s, self.bytes_received) if self.endpoint_cpu_s else None

    @property
    def endpoint_kernel_s_per_gb(self) -> float | None:
        if not self.endpoint_cpu_s:
            return None
        return cpu_s_per_gb(self.endpoint_cpu_s - self.endpoint_user_s, self.bytes_received)

    @property
    def cpu_s_per_gb(self) -> float:
        return cpu_s_per_gb(self.iperf_cpu_s + self.endpoint_cpu_s, self.bytes_received)

    @property
    def cpu_s_per_gb_system(self) -> float:
        return cpu_s_per_gb(self.system_cpu_s, self.bytes_received)

    def to_json(self, with_rtt: bool = False) -> dict:
        d = asdict(self)
        if not with_rtt:
            d.pop("rtt_us")
            d["rtt_samples"] = len(self.rtt_us)
        d["cpu_s_per_gb"] = self.cpu_s_per_gb
        d["cpu_s_per_gb_system"] = self.cpu_s_per_gb_system
        d["endpoint_user_s_per_gb"] = self.endpoint_user_s_per_gb
        d["endpoint_kernel_s_per_gb"] = self.endpoint_kernel_s_per_gb
        return d


def summarize(samples: Sequence[RunSample]) -> dict[str, dict[str, dict]]:
    """``{mode: {underlay: summary}}`` in first-seen order; see the module docstring for each number."""
    groups: dict[str, dict[str, list[RunSample]]] = {}
    for s in samples:
        groups.setdefault(s.mode, {}).setdefault(s.underlay, []).append(s)
    out: dict[str, dict[str, dict]] = {}
    for mode, by_ul in groups.items():
        for ul, runs in by_ul.items():
            rtts = [x for r in runs for x in r.rtt_us]
            retr = [r.retransmits for r in runs if r.retransmits is not None]
            out.setdefault(mode, {})[ul] = {
                "underlay": ul,
                "runs": len(runs),
                "gbps": median(r.gbps for r in runs),
                "gbps_runs": [r.gbps for r in runs],
                "cpu_s_per_gb": median(r.cpu_s_per_gb for r in runs),
                "cpu_s_per_gb_system": median(r.cpu_s_per_gb_system for r in runs),
                "endpoint_user_s_per_gb": _median_or_none(r.endpoint_user_s_per_gb for r in runs),
                "endpoint_kernel_s_per_gb": _median_or_none(r.endpoint_kernel_s_per_gb for r in runs),
                "rtt_p50_us": percentile(rtts, 50) if rtts else None,
                "rtt_p99_us": percentile(rtts, 99) if rtts else None,
                "rtt_samples": len(rtts),
                "retransmits": median(retr) if retr else None,
            }
    add_ratios(out)
    return out


def _median_or_none(xs: Iterable[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return median(vals) if vals else None


def add_ratios(summary: dict[str, dict[str, dict]], reference: str = REFERENCE_MODE) -> None:
    """Set ``ratio_vs_<reference>`` = gbps / gbps of ``reference`` on the same underlay (None if absent)."""
    key = "ratio_vs_" + reference.replace("-", "_")
    ref = summary.get(reference, {})
    for by_ul in summary.values():
        for ul, s in by_ul.items():
            base = ref.get(ul, {}).get("gbps")
            s[key] = s["gbps"] / base if base else None


def _rows(summary: Mapping[str, Mapping[str, Mapping]], reference: str) -> list[tuple[str, ...]]:
    key = "ratio_vs_" + reference.replace("-", "_")

    def f(x, fmt):
        return "-" if x is None else format(x, fmt)

    rows = [("mode", "underlay", "Gbit/s", f"x {reference}", "CPU s/GB", "endpoint user/kernel s/GB",
             "sys CPU s/GB", "RTT p50 us", "RTT p99 us", "runs")]
    for mode, by_ul in summary.items():
        for ul, s in by_ul.items():
            user, kern = s.get("endpoint_user_s_per_gb"), s.get("endpoint_kernel_s_per_gb")
            split = "-" if user is None or kern is None else f"{user:.2f} / {kern:.2f}"
            rows.append((mode, ul, f(s["gbps"], ".2f"), f(s.get(key), ".2f"), f(s["cpu_s_per_gb"], ".3f"), split,
                         f(s["cpu_s_per_gb_system"], ".3f"), f(s["rtt_p50_us"], ".0f"), f(s["rtt_p99_us"], ".0f"),
                         str(s["runs"])))
    return rows


def format_table(summary: Mapping[str, Mapping[str, Mapping]], reference: str = REFERENCE_MODE) -> str:
    """Plain-text table, one row per (mode, underlay)."""
    rows = _rows(summary, reference)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, r in enumerate(rows):
        cells = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_markdown(summary: Mapping[str, Mapping[str, Mapping]], reference: str = REFERENCE_MODE) -> str:
    """The same table as GitHub markdown."""
    rows = _rows(summary, reference)
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join("---" for _ in rows[0]) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(out)
