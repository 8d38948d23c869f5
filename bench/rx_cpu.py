"""Lab measurement: CPU seconds per GB of the RECEIVING endpoint (its whole process tree, and its forked RX
process alone) while iperf3 sends wa -> wb through two udpnest endpoints, IPv4 over IPv4.

With ``--side tx``: the SENDING endpoint instead: its whole tree, its TX thread (the busiest thread of the
main process, /proc/PID/task), and its forked RX process (which receives the returning TCP ACKs).
``--profile DIR`` additionally runs ``py-spy record`` (speedscope JSON) on the measured endpoint's main
process (tx) or RX process (rx) during the run.

Not a test; needs root (network namespaces, like tests/privileged).  CPU seconds per GB are far less
sensitive to other load on the machine than Gbit/s, so this is the figure to compare RX changes by.

    sudo .venv/bin/python bench/rx_cpu.py [--src DIR] [--engine native|python] [--seconds 5] \
        [--reps 2] [--side rx|tx] [--profile DIR] MODE:UNDERLAY ...
        # MODE:UNDERLAY e.g. fold:offload fold:wire off:offload off:wire

``--src``: the ``src`` directory of the checkout to measure (default: this one), so that two commits can be
compared in one run (each needs its built ``_native`` extension).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def _task_cpu(pid: int) -> dict[int, tuple[float, float]]:
    """(user + system, user) seconds of every thread of ``pid``."""
    from udpnest.lab import stats

    out = {}
    for t in Path(f"/proc/{pid}/task").iterdir():
        try:
            u, s = stats.parse_proc_pid_stat((t / "stat").read_text())
        except (FileNotFoundError, ValueError):
            continue
        out[int(t.name)] = ((u + s) / 100, u / 100)
    return out


def measure(nested: str, underlay: str, engine: str, seconds: float, side: str = "rx",
            profile: str | None = None, native: bool = False, rate: str | None = None) -> dict:
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
            b = eps[1 if side == "rx" else 0].proc.pid
            tree = bench._proc_tree([b])
            kids = [p for p in tree if p != b]
            spies = []
            for target in ([b, *kids] if side == "tx" else kids[:1]) if profile else []:
                part = "main" if target == b else "rxproc"
                out = Path(profile) / f"{side}-{part}-{nested}-{underlay}-{engine}-{int(time.time())}.json"
                spies.append(subprocess.Popen([shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"),
                                               "record", "-p", str(target), "-d", f"{seconds:g}", "-r", "200",
                                               "-f", "speedscope", "-o", str(out),
                                               *(["--native"] if native else [])], stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL))
            t0 = _task_cpu(b)
            s0 = eps[0].status()["tx"]
            c0 = {p: (cpu(p), cpu(p, True)) for p in tree}
            r = subprocess.run(bench.ns_argv(spec.ns("wa"), ["iperf3", "-c", spec.inner_address("b"), "-t",
                                                             f"{seconds:g}", "-J", *(["-b", rate] if rate else [])]),
                               capture_output=True, text=True)
            c1 = {p: (cpu(p), cpu(p, True)) for p in tree}
            t1 = _task_cpu(b)
            s1 = eps[0].status()["tx"]
            for spy in spies:
                spy.wait(timeout=seconds + 30)
        finally:
            srv.kill()
        end = json.loads(r.stdout)["end"]["sum_received"]
        gb = end["bytes"] / 1e9
        busy = [(t1[t][0] - t0.get(t, (0.0, 0.0))[0], t1[t][1] - t0.get(t, (0.0, 0.0))[1]) for t in t1 if t != b]
        return {"mode": nested, "underlay": underlay, "engine": engine, "gbit_s": end["bits_per_second"] / 1e9,
                "gb": gb, "endpoint_s_per_gb": sum(c1[p][0] - c0[p][0] for p in tree) / gb,
                "rx_process_s_per_gb": sum(c1[p][0] - c0[p][0] for p in kids) / gb,
                "rx_process_user_s_per_gb": sum(c1[p][1] - c0[p][1] for p in kids) / gb,
                "side": side, "main_process_s_per_gb": (c1[b][0] - c0[b][0]) / gb,
                "busiest_thread_s_per_gb": max(busy, default=(0.0, 0.0))[0] / gb,
                "busiest_thread_user_s_per_gb": max(busy, default=(0.0, 0.0))[1] / gb,
                "sender_tx_frames_per_gb": (s1.get("frames", 0) - s0.get("frames", 0)) / gb}
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
    ap.add_argument("--side", default="rx", choices=("rx", "tx"), help="the receiving or the sending endpoint")
    ap.add_argument("--profile", help="directory for py-spy speedscope profiles of the measured process")
    ap.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    ap.add_argument("--rate", help="iperf3 -b (e.g. 1G): the same offered rate for both checkouts, so that CPU per GB "
                                   "does not depend on how much the other load let through")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    sys.path[:0] = [args.src, str(HERE / "tests" / "privileged")]
    for _ in range(args.reps):
        for case in args.cases:
            nested, underlay = case.split(":")
            m = measure(nested, underlay, args.engine, args.seconds, args.side, args.profile, args.native, args.rate)
            if args.json:
                print(json.dumps(m), flush=True)
            elif args.side == "tx":
                print(f"{nested:5} {underlay:7} {args.engine:6} {m['gbit_s']:5.2f} Gbit/s  sending endpoint "
                      f"{m['endpoint_s_per_gb']:5.2f} s/GB, its TX thread {m['busiest_thread_s_per_gb']:5.2f} "
                      f"(user {m['busiest_thread_user_s_per_gb']:5.2f}), "
                      f"main process {m['main_process_s_per_gb']:5.2f}, RX process (ACKs) "
                      f"{m['rx_process_s_per_gb']:5.2f} s/GB (user {m['rx_process_user_s_per_gb']:5.2f}); "
                      f"{m['sender_tx_frames_per_gb']:.0f} TAP frames/GB", flush=True)
            else:
                print(f"{nested:5} {underlay:7} {args.engine:6} {m['gbit_s']:5.2f} Gbit/s  receiving endpoint "
                      f"{m['endpoint_s_per_gb']:5.2f} s/GB, its RX process {m['rx_process_s_per_gb']:5.2f} s/GB "
                      f"(user {m['rx_process_user_s_per_gb']:5.2f})", flush=True)


if __name__ == "__main__":
    main()
