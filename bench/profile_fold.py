"""Where the time goes in fold mode: one iperf3 run through the lab with per-thread CPU and stage timers.

Not a test.  Needs root.  Builds its own lab (prefix ``unprof``), starts the two endpoints (kernel TX path),
runs iperf3 for ``--duration`` seconds and prints, per endpoint: CPU seconds (user/system) of the TX thread,
the RX process and the main thread, per super-packet; the endpoint's own stage timers (TX: per frame read
from the TAP; RX: receive() and TAP write per read); and the whole machine's CPU split.

    sudo PYTHONPATH=src python3 bench/profile_fold.py --underlay wire --duration 8
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

from udpnest.endpoint import lab_control_path, query_status
from udpnest.lab import bench, topology

TICK = os.sysconf("SC_CLK_TCK")


def task_times(pid: int) -> dict[str, tuple[float, float]]:
    """{thread name or 'rx-process': (user s, system s)} for a process and its children."""
    out: dict[str, tuple[float, float]] = {}
    pids = [pid] + [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True,
                                                    text=True).stdout.split()]
    for p in pids:
        for t in Path(f"/proc/{p}/task").iterdir():
            f = (t / "stat").read_text().rsplit(")", 1)[1].split()
            name = (t / "comm").read_text().strip()
            key = "rx-process" if p != pid else ("main" if t.name == str(pid) else name)
            u, s = int(f[11]) / TICK, int(f[12]) / TICK
            pu, ps = out.get(key, (0.0, 0.0))
            out[key] = (pu + u, ps + s)
    return out


def machine_busy() -> tuple[float, float, float]:
    """(user, system incl. irq/softirq, idle) seconds from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return (f[0] + f[1]) / TICK, (f[2] + f[5] + f[6]) / TICK, (f[3] + f[4]) / TICK


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--underlay", choices=("offload", "wire"), default="wire")
    ap.add_argument("--duration", type=float, default=8.0)
    a = ap.parse_args()
    spec = topology.LabSpec(prefix="unprof", underlay=a.underlay)
    topology.down("unprof")
    topology.up(spec)
    procs = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            procs = bench._start_endpoints(spec, Path(tmp), "fold")
            spec = topology.set_mode(spec, "udpnest")
            srv = subprocess.Popen(bench.ns_argv(spec.ns("wb"), ["iperf3", "-s", "-1", "-B", spec.inner_address("b")]),
                                   stdout=subprocess.DEVNULL)
            time.sleep(0.5)
            t0 = {p.pid: task_times(p.pid) for p in procs}
            m0 = machine_busy()
            res = subprocess.run(bench.ns_argv(spec.ns("wa"), ["iperf3", "-c", spec.inner_address("b"), "-t",
                                                               f"{a.duration:g}", "-f", "g"]),
                                 capture_output=True, text=True)
            m1 = machine_busy()
            t1 = {p.pid: task_times(p.pid) for p in procs}
            srv.wait(10)
            print(next(ln for ln in res.stdout.splitlines() if "receiver" in ln).strip())
            plans = topology.udpnest_plans(spec)
            for (side, plan), p in zip(plans.items(), procs, strict=True):
                st = query_status(lab_control_path(plan))
                n = max(1, st["tx"].get("super_packets", 0) if side == "a" else st["rx"].get("tap_writes", 0))
                what = "TAP super-packet sent" if side == "a" else "TAP write"
                print(f"endpoint {side} ({'sender' if side == 'a' else 'receiver'}): {n} x {what}")
                for k in sorted(t1[p.pid]):
                    u = t1[p.pid][k][0] - t0[p.pid].get(k, (0, 0))[0]
                    s = t1[p.pid][k][1] - t0[p.pid].get(k, (0, 0))[1]
                    print(f"  {k:<12} user {u:6.2f} s  sys {s:6.2f} s  = {1e6 * (u + s) / n:7.1f} us per {what}")
                tx, rx = st["tx"], st["rx"]
                if tx.get("frames"):
                    print(f"  TX stage: {tx['time_frame_ns'] / tx['frames'] / 1000:.1f} us per TAP frame "
                          f"({tx['frames']} frames, {tx.get('super_packets', 0)} super-packets)")
                if rx.get("reads"):
                    print(f"  RX stage: receive() {rx['time_process_ns'] / rx['reads'] / 1000:.1f} us, TAP write "
                          f"{rx['time_tap_ns'] / rx['reads'] / 1000:.1f} us per read ({rx['reads']} reads, "
                          f"{rx.get('merged_reads', 0)} merged)")
            u, s, idle = (m1[i] - m0[i] for i in range(3))
            tot = u + s + idle
            print(f"machine: user {100 * u / tot:.0f}%  system+irq {100 * s / tot:.0f}%  idle {100 * idle / tot:.0f}%")
    finally:
        bench._stop(procs)
        topology.down("unprof")


if __name__ == "__main__":
    main()
