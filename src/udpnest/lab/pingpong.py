"""A tiny TCP request/response flow for latency under load; run inside lab namespaces with ``ip netns exec``.

``python3 -m udpnest.lab.pingpong server --bind ADDR --port P``
    Echoes fixed-size messages, one connection after the other; prints ``ready`` once listening.
``python3 -m udpnest.lab.pingpong client --connect ADDR --port P --duration S``
    Sends a ``--size``-byte request, waits for the full echo, sleeps ``--interval-ms``, repeats for
    ``--duration`` seconds; prints ``{"rtt_us": [...]}`` (one value per request) on stdout.
    ``--sched-out FILE`` appends one JSON line to FILE: the client's own CPU time and run-queue wait
    (``/proc/thread-self/schedstat``) summed over the timed part of every round trip, their count and the
    sum of their RTTs.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def serve(bind: str, port: int, size: int) -> None:
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((bind, port))
        srv.listen(4)
        print("ready", flush=True)
        while True:
            conn, _ = srv.accept()
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                while (msg := _recv_exact(conn, size)) is not None:
                    conn.sendall(msg)


class SchedStat:
    """The calling thread's ``/proc/thread-self/schedstat``: CPU ns and run-queue wait ns, summed over the
    intervals between each ``start`` and ``stop``."""

    def __init__(self) -> None:
        self._fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        self.run_ns = self.wait_ns = 0
        self._start = (0, 0)

    def read(self) -> tuple[int, int]:
        run, wait, _ = os.pread(self._fd, 128, 0).split()
        return int(run), int(wait)

    def start(self) -> None:
        self._start = self.read()

    def stop(self) -> None:
        run, wait = self.read()
        self.run_ns += run - self._start[0]
        self.wait_ns += wait - self._start[1]

    def close(self) -> None:
        os.close(self._fd)


def run_client(connect: str, port: int, duration: float, interval_ms: float, size: int,
               connect_timeout: float = 5.0, sched: SchedStat | None = None) -> list[float]:
    family = socket.AF_INET6 if ":" in connect else socket.AF_INET
    deadline = time.monotonic() + connect_timeout
    while True:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(2.0)
        try:
            sock.connect((connect, port))
            break
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    rtts: list[float] = []
    payload = b"p" * size
    with sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        end = time.monotonic() + duration
        while time.monotonic() < end:
            if sched:
                sched.start()
            t0 = time.perf_counter_ns()
            sock.sendall(payload)
            if _recv_exact(sock, size) is None:
                break
            rtts.append((time.perf_counter_ns() - t0) / 1000.0)
            if sched:
                sched.stop()
            if interval_ms > 0:
                time.sleep(interval_ms / 1000.0)
    return rtts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m udpnest.lab.pingpong", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="role", required=True)
    s = sub.add_parser("server")
    s.add_argument("--bind", required=True)
    s.add_argument("--port", type=int, default=7007)
    s.add_argument("--size", type=int, default=64)
    c = sub.add_parser("client")
    c.add_argument("--connect", required=True)
    c.add_argument("--port", type=int, default=7007)
    c.add_argument("--size", type=int, default=64)
    c.add_argument("--duration", type=float, default=5.0)
    c.add_argument("--interval-ms", type=float, default=1.0)
    c.add_argument("--sched-out", help="append the client's CPU and run-queue wait inside the round trips")
    a = p.parse_args(argv)
    if a.role == "server":
        try:
            serve(a.bind, a.port, a.size)
        except KeyboardInterrupt:
            pass
        return 0
    sched = SchedStat() if a.sched_out else None
    rtts = run_client(a.connect, a.port, a.duration, a.interval_ms, a.size, sched=sched)
    if sched:
        sched.close()
        with open(a.sched_out, "a") as f:
            json.dump({"round_trips": len(rtts), "rtt_sum_us": round(sum(rtts), 1), "run_ns": sched.run_ns,
                       "wait_ns": sched.wait_ns}, f)
            f.write("\n")
    json.dump({"rtt_us": [round(x, 1) for x in rtts]}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
