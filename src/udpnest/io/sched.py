"""CPU priority of the dataplane threads (the ``nice`` setting).

udpnest's TX thread and RX process sit between the workloads and the network, like the kernel's softirq
does for its own tunnels.  When the workloads saturate the CPUs, a dataplane thread at the same priority
waits for a CPU behind them while its queues (the TAP ring, the UDP socket) fill, and every packet of every
flow, the latency-sensitive ones too, waits with them.  A lower nice value gives the dataplane threads the
larger share of CPU time the scheduler grants (nice -10 weighs ~9x nice 0) and earlier wake-ups; they use it
only while there are packets to move (they sleep in ``poll``/``recvmsg`` otherwise).

On Linux the nice value belongs to a thread (``setpriority(PRIO_PROCESS, tid)``), so only the dataplane
threads are changed: the main thread (control socket, probes) and anything else in the process keep
theirs.  Lowering it needs ``CAP_SYS_NICE`` (root has it); without it the thread keeps its value and the
caller logs why.
"""

from __future__ import annotations

import os
import threading

NICE_MIN, NICE_MAX = -20, 19


def set_thread_nice(nice: int | None) -> tuple[int, str | None]:
    """Set the calling thread's nice value; returns ``(value now in effect, error text or None)``.

    ``None`` leaves the thread as it is.
    """
    tid = threading.get_native_id()
    if nice is not None:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        except OSError as e:
            return os.getpriority(os.PRIO_PROCESS, tid), f"setpriority({nice}): {e.strerror or e}"
    return os.getpriority(os.PRIO_PROCESS, tid), None


def thread_nice(pid: int, tid: int | None = None) -> int | None:
    """The nice value of thread ``tid`` of process ``pid`` (its main thread if ``tid`` is None), from
    ``/proc/<pid>/task/<tid>/stat`` (field 19); None if it is gone."""
    path = f"/proc/{pid}/task/{tid if tid is not None else pid}/stat"
    try:
        with open(path, "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # the command name (field 2) may contain spaces and parentheses: split after its closing one
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        return int(fields[16])  # field 19 of the whole line: the 17th after "pid (comm)"
    except (IndexError, ValueError):
        return None
