"""RTT beside the bulk flow against the endpoint's settings, side by side in one bench run.

Runs ``udpnest.lab.bench`` with the kernel's VXLAN-in-VXLAN, fold mode as shipped, and fold mode with extra
endpoint settings (each variant a TOML snippet handed to both endpoints with ``--config``), and samples the
receiving host's Geneve socket receive queues (``ss -uan``) every 0.2 s while it runs.  Not a test; needs
root, iperf3 (and dumpcap for ``--hops``); run on an otherwise idle machine::

    .venv/bin/python bench/rtt_queues.py --underlays offload,wire --reps 3 \\
        --variant q1='rx_queues = 1\\ntap_queues = 1' --variant q1n0='rx_queues = 1\\ntap_queues = 1\\nnice = 0'
    .venv/bin/python bench/rtt_queues.py --rate 3G          # the bulk flow held to 3 Gbit/s (iperf3 -b)
    .venv/bin/python bench/rtt_queues.py --pingpong-nice -10 # the ping-pong's processes at nice -10
    .venv/bin/python bench/rtt_queues.py --hops --reps 1    # + one-way delays TAP A -> TAP B and back
    .venv/bin/python bench/rtt_queues.py --sched            # + time each process group waited for a CPU

Prints one line per mode (Gbit/s, RTT p50/p99, retransmits, CPU s/GB), the receive queue's quantiles and,
with ``--hops``, per udpnest mode the ping-pong's one-way delays between the two endpoints' TAPs (dumpcap on
each TAP, frames matched by the inner TCP sequence number): the request direction (the bulk flow's) is TAP
ring A + TX A + underlay + Geneve socket B + RX B, the reply direction the same the other way; what the RTT
has beyond their sum is the workloads' side (the ping-pong processes, their kernel stacks, their VXLAN).
With ``--sched``, per mode, the time the ping-pong's client and server waited runnable for a CPU per round
trip, and per second of the run the CPU time and the run-queue wait of the iperf3 pair and of the udpnest
endpoints (all their threads and the forked RX processes): ``/proc/<pid>/task/<tid>/schedstat`` (run ns,
run-queue wait ns, timeslices), sampled every 0.1 s, deltas over each run (the ping-pong client's lifetime).
"""

from __future__ import annotations

import argparse
import json
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from udpnest.lab import bench, topology

# ping-pong frames on a TAP: Ethernet/IPv4/UDP/VXLAN/Ethernet/IPv4/TCP(+timestamps)/64 bytes = 180 bytes
HOP_FILTER = "greater 170 and less 200"
INNER_TCP = 14 + 20 + 8 + 8 + 14 + 20  # offset of the inner TCP header in a TAP frame


def sample_queue(ns: str, port: int, stop: threading.Event, out: list[int]) -> None:
    """Recv-Q of the UDP sockets bound to ``port`` in ``ns``, every 0.2 s until ``stop``."""
    while not stop.wait(0.2):
        r = subprocess.run(["ip", "netns", "exec", ns, "ss", "-uanH"], capture_output=True, text=True)
        for line in r.stdout.splitlines():
            f = line.split()
            if len(f) >= 4 and f[3].endswith(f":{port}"):
                out.append(int(f[1]))


def read_pcap(path: Path) -> dict[tuple[str, bytes], float]:
    """Ping-pong frames of a pcap (dumpcap -P): (direction, inner TCP sequence) -> first time seen."""
    out: dict[tuple[str, bytes], float] = {}
    data = path.read_bytes() if path.exists() else b""
    off = 24
    while off + 16 <= len(data):
        sec, usec, incl, _ = struct.unpack_from("<IIII", data, off)
        frame = data[off + 16 : off + 16 + incl]
        off += 16 + incl
        if len(frame) < INNER_TCP + 8 or frame[INNER_TCP - 22 : INNER_TCP - 20] != b"\x08\x00":
            continue
        sport, dport = struct.unpack_from("!HH", frame, INNER_TCP)
        if bench.PINGPONG_PORT not in (sport, dport):
            continue
        key = ("request" if dport == bench.PINGPONG_PORT else "reply", frame[INNER_TCP + 4 : INNER_TCP + 8])
        out.setdefault(key, sec + usec / 1e6)
    return out


SCHED_GROUPS = ("client", "server", "iperf3", "udpnest")


def sched_group(cmdline: list[str]) -> str | None:
    """Which process group of the bench a command line belongs to (None: not one of them)."""
    if "udpnest.lab.pingpong" in cmdline:
        return "client" if "client" in cmdline else "server"
    if cmdline and cmdline[0].endswith("iperf3"):
        return "iperf3"
    if "udpnest.cli" in cmdline and "up" in cmdline:
        return "udpnest"
    return None


def sched_snapshot() -> dict[int, tuple[str, int, int]]:
    """tid -> (group, run ns, run-queue wait ns) for every thread of the bench's processes."""
    out: dict[int, tuple[str, int, int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            group = sched_group((proc / "cmdline").read_bytes().decode(errors="replace").split("\0"))
            if group is None:
                continue
            for task in (proc / "task").iterdir():
                run, wait, _ = (task / "schedstat").read_text().split()
                out[int(task.name)] = (group, int(run), int(wait))
        except (OSError, ValueError):
            continue  # the process or thread ended while being read
    return out


def sample_sched(stop: threading.Event, windows: list[dict]) -> None:
    """One window per ping-pong client lifetime (= one bench run): per group, run and wait ns summed over
    the threads seen at the window's first and last sample (threads seen later count from first sight).
    The client's own figures replace its sampled ones in :func:`print_sched`; here it marks the window."""
    first: dict[int, tuple[str, int, int]] = {}
    last: dict[int, tuple[str, int, int]] = {}
    t0 = 0.0
    while not stop.wait(0.1):
        snap = sched_snapshot()
        client = any(g == "client" for g, _, _ in snap.values())
        if client:
            if not first:
                t0 = time.monotonic()
            for tid, v in snap.items():
                first.setdefault(tid, v)
            last.update(snap)
        elif first:
            w = {g: [0, 0] for g in SCHED_GROUPS}
            for tid, (g, run, wait) in last.items():
                w[g][0] += run - first[tid][1]
                w[g][1] += wait - first[tid][2]
            w["seconds"] = time.monotonic() - t0
            windows.append(w)
            first, last = {}, {}


def quantiles(xs: list[float]) -> str:
    if not xs:
        return "no samples"
    xs = sorted(xs)
    q = lambda p: xs[min(len(xs) - 1, int(p * len(xs)))]  # noqa: E731
    return f"n {len(xs)}  p50 {q(0.5):.0f}  p90 {q(0.9):.0f}  p99 {q(0.99):.0f} us"


def print_sched(runs: list[dict], windows: list[dict], client: list[dict]) -> None:
    """Per mode and underlay (means over its runs): the ping-pong's run-queue wait per round trip (the
    client's inside its timed round trips, from its own ``--sched-out``; the server's over the whole run,
    it wakes for nothing else), and CPU / run-queue wait per second of iperf3 and of the endpoints."""
    if not (len(windows) == len(runs) == len(client)):
        print(f"sched: {len(windows)} sampling windows and {len(client)} client records for {len(runs)} runs, "
              "not attributed")
        return
    per: dict[tuple[str, str], list[tuple[dict, int]]] = {}
    for r, w, c in zip(runs, windows, client, strict=True):
        w["client"] = [c["run_ns"], c["wait_ns"]]
        w["rtt_sum_us"] = c["rtt_sum_us"]
        per.setdefault((r["mode"], r["underlay"]), []).append((w, max(1, c["round_trips"])))

    def mean(ws, f):
        return statistics.mean(f(w, n) for w, n in ws)

    print("run-queue wait: ping-pong client and server us per round trip (beside the mean RTT); iperf3 pair and "
          "udpnest endpoints (all threads) CPU and wait ms per s")
    for (mode, underlay), ws in per.items():
        rtt = mean(ws, lambda w, n: w["rtt_sum_us"] / n)
        cw = mean(ws, lambda w, n: w["client"][1] / n / 1e3)
        sw = mean(ws, lambda w, n: w["server"][1] / n / 1e3)
        parts = [f"mean RTT {rtt:5.0f} us", f"client wait {cw:5.0f} us/RTT", f"server wait {sw:5.0f} us/RTT"]
        for g in ("iperf3", "udpnest"):
            run = mean(ws, lambda w, n, g=g: w[g][0] / w["seconds"] / 1e6)
            wait = mean(ws, lambda w, n, g=g: w[g][1] / w["seconds"] / 1e6)
            if run or wait:
                parts.append(f"{g} run {run:4.0f} wait {wait:4.0f} ms/s")
        print(f"{mode:28s} {underlay:8s} " + "  ".join(parts))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--underlays", default="offload", help="comma-separated: offload,wire")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=TOML",
                    help="an endpoint configuration to compare (TOML text, \\n between lines)")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--duration", type=float, default=6.0)
    ap.add_argument("--rate", help="hold the bulk flow to this rate (iperf3 -b, e.g. 3G); default free-running")
    ap.add_argument("--pingpong-nice", type=int, help="run the ping-pong's client and server at this nice value")
    ap.add_argument("--hops", action="store_true", help="capture on both TAPs: one-way delays per direction")
    ap.add_argument("--sched", action="store_true",
                    help="run-queue wait of the ping-pong per round trip, of iperf3 and the endpoints per second")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="udpnest-rtt-"))
    modes = ["kernel-vxlan-in-vxlan", "udpnest-fold"]
    for v in args.variant:
        name, _, toml = v.partition("=")
        path = tmp / f"{name}.toml"
        path.write_text(toml.replace("\\n", "\n") + "\n")
        mode = f"udpnest-fold-{name}"
        bench.UDPNEST_MODES[mode] = ("fold", None, ("--config", str(path)))
        modes.append(mode)
    bench.MODES = tuple(bench.MODES) + tuple(m for m in modes if m not in bench.MODES)

    ns_argv = bench.ns_argv

    def argv_with_options(ns: str, argv):
        argv = list(argv)
        if args.rate and argv[:1] == ["iperf3"] and "-c" in argv:
            argv += ["-b", args.rate]
        if args.sched and "udpnest.lab.pingpong" in argv and "client" in argv:
            argv += ["--sched-out", str(tmp / "client-sched.jsonl")]
        if args.pingpong_nice is not None and "udpnest.lab.pingpong" in argv:
            argv = ["nice", "-n", str(args.pingpong_nice)] + argv
        return ns_argv(ns, argv)

    bench.ns_argv = argv_with_options
    captures: list[tuple[str, str, int, Path, Path]] = []
    if args.hops:
        run_one = bench.run_one

        def run_one_captured(spec, cfg, rep, endpoint_pids, env):
            if spec.mode != "udpnest":
                return run_one(spec, cfg, rep, endpoint_pids, env)
            files, procs = [], []
            for side in ("a", "b"):
                f = tmp / f"tap-{side}-{len(captures)}.pcap"
                files.append(f)
                procs.append(subprocess.Popen(
                    ["ip", "netns", "exec", spec.ns(f"h{side}"), "dumpcap", "-q", "-P", "-i", topology.IF_TAP,
                     "-f", HOP_FILTER, "-s", "200", "-w", str(f)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(1.0)  # dumpcap attached
            try:
                s = run_one(spec, cfg, rep, endpoint_pids, env)
            finally:
                for p in procs:
                    p.terminate()
                    p.wait()
            captures.append((s.mode, spec.underlay, rep, files[0], files[1]))
            return s

        bench.run_one = run_one_captured
    cfg = bench.BenchConfig(modes=tuple(modes), underlays=tuple(args.underlays.split(",")), reps=args.reps,
                            duration=args.duration, out_dir=tmp / "out", plot=False)
    stop, queue = threading.Event(), []
    ns = f"{topology.DEFAULT_PREFIX}-hb"
    t = threading.Thread(target=sample_queue, args=(ns, topology.GENEVE_PORT, stop, queue), daemon=True)
    t.start()
    windows: list[dict] = []
    ts = threading.Thread(target=sample_sched, args=(stop, windows), daemon=True)
    if args.sched:
        ts.start()
    try:
        res = bench.run(cfg, sys.stderr)
    finally:
        stop.set()
        t.join()
        if args.sched:
            ts.join()
    for m, per in res["modes"].items():
        for u, s in per.items():
            print(f"{m:28s} {u:8s} {s['gbps']:6.2f} Gbit/s  RTT p50 {s['rtt_p50_us']:7.0f} "
                  f"p99 {s['rtt_p99_us']:7.0f} us  retransmits {s['retransmits']}  CPU {s['cpu_s_per_gb']:.2f} s/GB")
    busy = [q for q in queue if q]
    if busy:
        qs = statistics.quantiles(busy, n=10)
        print(f"receiving Geneve sockets' Recv-Q while non-empty ({len(busy)} of {len(queue)} samples, all runs): "
              f"p10 {qs[0]} p50 {statistics.median(busy)} p90 {qs[-1]} max {max(busy)} bytes")
    # run_one's sample carries the lab's mode ("udpnest"); bench.run renames it afterwards, in run order
    names = [r["mode"] for r in res["runs"] if r["mode"].startswith("udpnest")]
    hops: dict[tuple[str, str], dict[str, list[float]]] = {}
    for name, (_, underlay, _, fa, fb) in zip(names, captures, strict=False):
        a, b = read_pcap(fa), read_pcap(fb)
        d = hops.setdefault((name, underlay), {"request": [], "reply": []})
        d["request"] += [(b[k] - a[k]) * 1e6 for k in a if k[0] == "request" and k in b]
        d["reply"] += [(a[k] - b[k]) * 1e6 for k in b if k[0] == "reply" and k in a]
    if args.sched:
        path = tmp / "client-sched.jsonl"
        client = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
        print_sched(res["runs"], windows, client)
    for (name, underlay), d in hops.items():
        print(f"{name:28s} {underlay:8s} request TAP A -> TAP B: {quantiles(d['request'])}")
        print(f"{name:28s} {underlay:8s} reply   TAP B -> TAP A: {quantiles(d['reply'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
