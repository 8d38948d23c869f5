"""The bench charges a udpnest endpoint's whole process tree: its forked RX process burns CPU too."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

from udpnest.lab import bench

# A parent that forks a child burning ~0.6 s of CPU while the parent itself sleeps (as the endpoint's main
# process idles while its forked RX process works), then a second child that burns and exits (reaped).
PROGRAM = r"""
import os, sys, time
def burn(s):
    end = time.process_time() + s
    while time.process_time() < end:
        pass
print("ready", flush=True)
sys.stdin.readline()
pid = os.fork()
if pid == 0:
    burn(0.6)
    print("child-done", flush=True)
    time.sleep(30)
    os._exit(0)
pid2 = os.fork()
if pid2 == 0:
    burn(0.3)
    os._exit(0)
os.waitpid(pid2, 0)
sys.stdin.readline()
"""


def test_cpu_of_a_forked_child_is_charged():
    p = subprocess.Popen([sys.executable, "-c", PROGRAM], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        before = bench._proc_cpu_seconds([p.pid])
        p.stdin.write("go\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "child-done"
        time.sleep(0.1)  # let the second (reaped) child finish too
        after = bench._proc_cpu_seconds([p.pid])
        # the parent alone burnt almost nothing: nearly all of the ~0.9 s is the children's
        tick = 0.05
        assert after - before >= 0.9 - 3 * tick, (before, after)
        with open(f"/proc/{p.pid}/stat") as f:
            own = sum(bench.stats.parse_proc_pid_stat(f.read())) / os.sysconf("SC_CLK_TCK")
        assert own < 0.3, own
    finally:
        _kill_tree(p)


def test_proc_tree_finds_grandchildren():
    p = subprocess.Popen([sys.executable, "-c",
                          "import subprocess, sys; subprocess.run([sys.executable, '-c', "
                          "'import time; print(1, flush=True); time.sleep(30)'])"],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "1"
        tree = bench._proc_tree([p.pid])
        assert tree[0] == p.pid and len(tree) == 2
    finally:
        _kill_tree(p)


def _kill_tree(p: subprocess.Popen) -> None:
    for pid in bench._proc_tree([p.pid])[::-1]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    p.wait()


# A child that first burns ~0.5 s of user time (no syscalls), then ~0.4 s of system time (a syscall loop).
SPLIT_PROGRAM = r"""
import os, sys, time
print("ready", flush=True)
sys.stdin.readline()
pid = os.fork()
if pid == 0:
    t0 = os.times()
    while os.times().user - t0.user < 0.5:
        sum(range(20000))
    print("user-done", flush=True)
    sys.stdin.readline()
    t1 = os.times()
    while os.times().system - t1.system < 0.4:
        for _ in range(2000):
            os.stat("/")
    print("system-done", flush=True)
    time.sleep(30)
    os._exit(0)
time.sleep(30)
"""


def test_cpu_split_into_user_and_kernel():
    p = subprocess.Popen([sys.executable, "-c", SPLIT_PROGRAM], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    tick = 0.05
    try:
        assert p.stdout.readline().strip() == "ready"
        u0, s0 = bench._proc_cpu_split([p.pid])
        p.stdin.write("go\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "user-done"
        u1, s1 = bench._proc_cpu_split([p.pid])
        assert u1 - u0 >= 0.5 - 2 * tick, (u0, u1)
        assert s1 - s0 <= 0.15, (s0, s1)  # a pure Python loop: next to no kernel time
        p.stdin.write("go\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "system-done"
        u2, s2 = bench._proc_cpu_split([p.pid])
        assert s2 - s1 >= 0.4 - 2 * tick, (s1, s2)
        assert bench._proc_cpu_seconds([p.pid]) == pytest.approx(u2 + s2, abs=3 * tick)
    finally:
        _kill_tree(p)
