"""Lab measurement: CPU seconds per GB of the RECEIVING endpoint (its whole process tree, and its forked RX
process alone) while iperf3 sends wa -> wb through two udpnest endpoints, IPv4 over IPv4.

Not a test; needs root (network namespaces, like tests/privileged).  CPU seconds per GB are far less
sensitive to other load on the machine than Gbit/s, so this is the figure to compare RX changes by.

    sudo .venv/bin/python bench/rx_cpu.py [--src DIR] [--engine native|python] [--seconds 5] \
        [--reps 2] MODE:UNDERLAY ...         # e.g. fold:offload fold:wire off:offload off:wire

``--src``: the ``src`` directory of the checkout to measure (default: this one), so that two commits can be
compared in one run (each needs its built ``_native`` extension).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def measure(nested: str, underlay: str, engine: str, seconds: float) -> dict:
    import nestlab

    from udpnest.lab import bench, stats, topology
    from udpnest.lab.topology import LabSpec

    spec = LabSpec(prefix=nestlab.new_prefix("rxcpu"), underlay_family=4, nested_family=4, underlay=underlay)
    topology.up(spec)
    eps: list = []

    def cpu(pid: int, user_only: bool = False) -> float:
        try:
            u, s, _, _ = stats.parse_proc_pid_stat(Path(f"/proc/{pid}/stat").read_text(), children=True)
        except FileNotFoundError:
            return 0.0
        return (u if user_only else u + s) / 100

    try:
        eps = nestlab.start_pair(spec, Path("/tmp"), nested, extra=("--engine", engine))
        if nested == "fold":
            nestlab.wait_modes(eps, "fold", timeout=5)
        srv = subprocess.Popen(bench.ns_argv(spec.ns("wb"), ["iperf3", "-s", "-1", "-B", spec.inner_address("b")]),
                               stdout=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            b = eps[1].proc.pid
            tree = bench._proc_tree([b])
            kids = [p for p in tree if p != b]
            c0 = {p: (cpu(p), cpu(p, True)) for p in tree}
            r = subprocess.run(bench.ns_argv(spec.ns("wa"), ["iperf3", "-c", spec.inner_address("b"), "-t",
                                                             f"{seconds:g}", "-J"]), capture_output=True, text=True)
            c1 = {p: (cpu(p), cpu(p, True)) for p in tree}
        finally:
            srv.kill()
        end = json.loads(r.stdout)["end"]["sum_received"]
        gb = end["bytes"] / 1e9
        return {"mode": nested, "underlay": underlay, "engine": engine, "gbit_s": end["bits_per_second"] / 1e9,
                "gb": gb, "endpoint_s_per_gb": sum(c1[p][0] - c0[p][0] for p in tree) / gb,
                "rx_process_s_per_gb": sum(c1[p][0] - c0[p][0] for p in kids) / gb,
                "rx_process_user_s_per_gb": sum(c1[p][1] - c0[p][1] for p in kids) / gb}
    finally:
        nestlab.stop_all(eps)
        topology.down(spec.prefix)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cases", nargs="+", help="MODE:UNDERLAY, MODE one of off/hint/fold, UNDERLAY offload/wire")
    ap.add_argument("--src", default=str(HERE / "src"))
    ap.add_argument("--engine", default="native", choices=("native", "python"))
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    sys.path[:0] = [args.src, str(HERE / "tests" / "privileged")]
    for _ in range(args.reps):
        for case in args.cases:
            nested, underlay = case.split(":")
            m = measure(nested, underlay, args.engine, args.seconds)
            if args.json:
                print(json.dumps(m), flush=True)
            else:
                print(f"{nested:5} {underlay:7} {args.engine:6} {m['gbit_s']:5.2f} Gbit/s  receiving endpoint "
                      f"{m['endpoint_s_per_gb']:5.2f} s/GB, its RX process {m['rx_process_s_per_gb']:5.2f} s/GB "
                      f"(user {m['rx_process_user_s_per_gb']:5.2f})", flush=True)


if __name__ == "__main__":
    main()
