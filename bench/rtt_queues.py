"""RTT beside the bulk flow against the endpoint's queue settings, side by side in one bench run.

Runs ``udpnest.lab.bench`` with the kernel's VXLAN-in-VXLAN, fold mode as shipped, and fold mode with extra
endpoint settings (each variant a TOML snippet handed to both endpoints with ``--config``), and samples the
receiving host's Geneve socket receive queue (``ss -uan``) every 0.2 s while it runs.  Not a test; needs
root, iperf3; run on an otherwise idle machine::

    .venv/bin/python bench/rtt_queues.py --underlays offload \\
        --variant q0.25='queue_ms = 0.25' --variant q0.5='queue_ms = 0.5' --variant t16='tap_txqueuelen = 16'

Prints one line per mode (Gbit/s, RTT p50/p99, retransmits, CPU s/GB) and the receive queue's quantiles.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from udpnest.lab import bench, topology


def sample_queue(ns: str, port: int, stop: threading.Event, out: list[int]) -> None:
    """Recv-Q of the UDP socket bound to ``port`` in ``ns``, every 0.2 s until ``stop``."""
    while not stop.wait(0.2):
        r = subprocess.run(["ip", "netns", "exec", ns, "ss", "-uanH"], capture_output=True, text=True)
        for line in r.stdout.splitlines():
            f = line.split()
            if len(f) >= 4 and f[3].endswith(f":{port}"):
                out.append(int(f[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--underlays", default="offload", help="comma-separated: offload,wire")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=TOML",
                    help="an endpoint configuration to compare (TOML text)")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--duration", type=float, default=6.0)
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
    cfg = bench.BenchConfig(modes=tuple(modes), underlays=tuple(args.underlays.split(",")), reps=args.reps,
                            duration=args.duration, out_dir=tmp / "out", plot=False)
    stop, queue = threading.Event(), []
    ns = f"{topology.DEFAULT_PREFIX}-hb"
    t = threading.Thread(target=sample_queue, args=(ns, topology.GENEVE_PORT, stop, queue), daemon=True)
    t.start()
    try:
        res = bench.run(cfg, sys.stderr)
    finally:
        stop.set()
        t.join()
    for m, per in res["modes"].items():
        for u, s in per.items():
            print(f"{m:28s} {u:8s} {s['gbps']:6.2f} Gbit/s  RTT p50 {s['rtt_p50_us']:7.0f} "
                  f"p99 {s['rtt_p99_us']:7.0f} us  retransmits {s['retransmits']}  CPU {s['cpu_s_per_gb']:.2f} s/GB")
    busy = [q for q in queue if q]
    if busy:
        qs = statistics.quantiles(busy, n=10)
        print(f"receiving Geneve socket Recv-Q while non-empty ({len(busy)} of {len(queue)} samples, all runs): "
              f"p10 {qs[0]} p50 {statistics.median(busy)} p90 {qs[-1]} max {max(busy)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
