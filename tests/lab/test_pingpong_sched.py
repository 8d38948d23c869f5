"""The run-queue accounting behind ``bench/rtt_queues.py --sched``: the ping-pong client's own schedstat
over its round trips, the process groups, and the per-round-trip attribution of each run."""

from __future__ import annotations

import importlib.util
import threading
import time
from pathlib import Path

from udpnest.lab.pingpong import SchedStat

BENCH = Path(__file__).resolve().parents[2] / "bench" / "rtt_queues.py"


def rtt_queues():
    spec = importlib.util.spec_from_file_location("rtt_queues", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_schedstat_counts_only_the_marked_intervals():
    s = SchedStat()
    try:
        burn(0.05)  # outside any interval: not counted
        s.start()
        burn(0.1)
        s.stop()
        time.sleep(0.05)
        s.start()
        burn(0.05)
        s.stop()
    finally:
        s.close()
    assert 0.14e9 <= s.run_ns <= 0.3e9, s.run_ns
    assert s.wait_ns >= 0


def test_schedstat_is_per_thread():
    s = SchedStat()
    t = threading.Thread(target=burn, args=(0.2,))
    try:
        s.start()
        t.start()
        t.join()  # another thread burns while this one sleeps in join
        s.stop()
    finally:
        s.close()
    assert s.run_ns < 0.1e9, s.run_ns


def test_sched_group_classifies_the_bench_processes():
    m = rtt_queues()
    assert m.sched_group(["/usr/bin/python3", "-m", "udpnest.lab.pingpong", "client", "--connect", "x"]) == "client"
    assert m.sched_group(["python3", "-m", "udpnest.lab.pingpong", "server", "--bind", "x"]) == "server"
    assert m.sched_group(["iperf3", "-s", "-B", "203.0.113.2"]) == "iperf3"
    assert m.sched_group(["/usr/bin/iperf3", "-c", "203.0.113.2"]) == "iperf3"
    assert m.sched_group(["python3", "-m", "udpnest.cli", "up", "--id", "7"]) == "udpnest"
    assert m.sched_group(["python3", "-m", "udpnest.cli", "status"]) is None
    assert m.sched_group(["ip", "netns", "exec", "x", "sleep", "1"]) is None
    assert m.sched_group([""]) is None


def test_print_sched_attributes_runs_in_order(capsys):
    m = rtt_queues()
    runs = [{"mode": "kernel-vxlan-in-vxlan", "underlay": "offload"}, {"mode": "udpnest-fold", "underlay": "offload"},
            {"mode": "udpnest-fold", "underlay": "offload"}]

    def window(server_wait_ns, ud_run_ns):
        return {"client": [0, 0], "server": [0, server_wait_ns], "iperf3": [1_000_000_000, 500_000_000],
                "udpnest": [ud_run_ns, 0], "seconds": 2.0}

    windows = [window(1_000_000, 0), window(30_000_000, 2_000_000_000), window(10_000_000, 1_000_000_000)]
    client = [{"round_trips": 1000, "rtt_sum_us": 80_000, "run_ns": 5, "wait_ns": 25_000_000},
              {"round_trips": 100, "rtt_sum_us": 50_000, "run_ns": 5, "wait_ns": 20_000_000},
              {"round_trips": 100, "rtt_sum_us": 70_000, "run_ns": 5, "wait_ns": 40_000_000}]
    m.print_sched(runs, windows, client)
    lines = capsys.readouterr().out.splitlines()
    kernel = next(x for x in lines if x.startswith("kernel-vxlan-in-vxlan"))
    fold = next(x for x in lines if x.startswith("udpnest-fold"))
    assert "mean RTT    80 us" in kernel
    assert "client wait    25 us/RTT" in kernel and "server wait     1 us/RTT" in kernel
    assert "udpnest" not in kernel.split("us/RTT")[-1]  # no endpoint CPU in the kernel's runs
    assert "iperf3 run  500 wait  250 ms/s" in kernel
    # means over the two fold runs: client (200 + 400) / 2, server (300 + 100) / 2, endpoints (1000 + 500) / 2
    assert "mean RTT   600 us" in fold and "client wait   300 us/RTT" in fold and "server wait   200 us/RTT" in fold
    assert "udpnest run  750 wait    0 ms/s" in fold


def test_print_sched_refuses_mismatched_windows(capsys):
    m = rtt_queues()
    m.print_sched([{"mode": "a", "underlay": "offload"}], [], [])
    assert "not attributed" in capsys.readouterr().out
