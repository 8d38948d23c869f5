"""Where the machine's CPU cycles go during one bench run, by process role and by code: perf, not py-spy.

Runs ``udpnest bench`` for one mode and underlay, and while iperf3 runs records every CPU with
``perf record -a``; then splits the samples by process (the sending endpoint's main process = its TX thread,
its forked RX process = the returning ACKs, the receiving endpoint's RX process = the data, its main
process = the ACKs it sends, iperf3, the rest) and by code (the Python interpreter, udpnest's C core, libc,
the kernel).  py-spy attributes a sample to the Python line that is current, so time a runnable process
spends waiting for a CPU inside a syscall looks like syscall time; perf counts cycles actually spent.

Not a test; needs root and ``perf`` (Debian ``linux-perf``).  Run on an otherwise idle machine::

    .venv/bin/python bench/perf_split.py [--mode udpnest-fold] [--underlay offload] [--seconds 5]

The sending endpoint is the one whose ``--local`` is the lab's host A address (iperf3 sends A -> B).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
CODE = (("python interpreter", re.compile(r"libpython|^python")), ("udpnest C core", re.compile(r"_native")),
        ("kernel", re.compile(r"\[kernel")), ("libc", re.compile(r"libc\.so")))


def _cmdline(pid: str) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _ppid(pid: str) -> str:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return text[text.rindex(")") + 2:].split()[1]


def _tasks(pid: str) -> list[str]:
    try:
        return os.listdir(f"/proc/{pid}/task")
    except OSError:
        return [pid]


def endpoint_roles() -> dict[str, str]:
    """thread id -> role for the running udpnest endpoints (main process and forked RX process); perf's
    ``pid`` sort key is the thread id."""
    roles = {}
    pids = [p for p in os.listdir("/proc") if p.isdigit()]
    mains = {}
    for p in pids:
        argv = _cmdline(p)
        if "udpnest.cli" in argv and "up" in argv and "--local" in argv:
            local = argv[argv.index("--local") + 1]
            side = "sending" if local.endswith((".1", "::1")) else "receiving"
            mains[p] = side
            for t in _tasks(p):
                roles[t] = f"{side} endpoint, main process (TX thread)"
    for p in pids:
        if _ppid(p) in mains:
            for t in _tasks(p):
                roles[t] = f"{mains[_ppid(p)]} endpoint, RX process"
    return roles


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", default="udpnest-fold")
    ap.add_argument("--underlay", default="offload", choices=("offload", "wire"))
    ap.add_argument("--seconds", type=float, default=5.0, help="perf record time (inside the iperf3 run)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="udpnest-perf-"))
    duration = args.seconds + 6
    bench = subprocess.Popen([sys.executable, "-m", "udpnest.cli", "bench", "--modes", args.mode, "--underlays",
                              args.underlay, "--reps", "1", "--duration", str(duration), "--no-plot", "--out",
                              str(tmp)], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(HERE / "src")})
    running = threading.Event()
    lines: list[str] = []

    def watch() -> None:
        for line in bench.stderr:
            lines.append(line)
            if "running" in line:
                running.set()

    threading.Thread(target=watch, daemon=True).start()
    if not running.wait(120):
        bench.kill()
        sys.stderr.write("".join(lines))
        return 1
    time.sleep(2)
    roles = endpoint_roles()
    data = tmp / "perf.data"
    subprocess.run(["perf", "record", "-a", "-q", "-o", str(data), "--", "sleep", str(args.seconds)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out, _ = bench.communicate(timeout=duration + 60)
    report = subprocess.run(["perf", "report", "-i", str(data), "--sort", "pid,dso", "--stdio"],
                            capture_output=True, text=True, check=True).stdout
    table: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in report.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\d+):(\S+)\s+(.*\S)", line)
        if not m:
            continue
        pct, pid, comm, dso = float(m[1]), m[2], m[3], m[4]
        role = roles.get(pid) or ("iperf3" if comm == "iperf3" else "idle" if pid == "0" else "other")
        code = next((name for name, rx in CODE if rx.search(dso)), "other")
        table[role][code] += pct
    cols = [name for name, _ in CODE] + ["other"]
    print(f"{args.mode} / {args.underlay}: % of all CPU cycles of the machine ({os.cpu_count()} CPUs, "
          f"{args.seconds:g} s)")
    print(f"bench: {out.strip().splitlines()[2] if len(out.strip().splitlines()) > 2 else out.strip()}")
    print("| process | " + " | ".join(cols) + " | total |")
    print("|---" * (len(cols) + 2) + "|")
    order = sorted(table, key=lambda r: (r in ("iperf3", "other", "idle"), r))
    total = collections.Counter()
    for role in order:
        row = table[role]
        total.update(row)
        print(f"| {role} | " + " | ".join(f"{row[c]:.1f}" for c in cols) + f" | {sum(row.values()):.1f} |")
    print("| all | " + " | ".join(f"{total[c]:.1f}" for c in cols) + f" | {sum(total.values()):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
