"""Helpers for the privileged dataplane tests: endpoint processes, TCP/UDP flows between the workloads, junk.

Everything runs in the lab's namespaces as subprocesses (``ip netns exec``); nothing here touches src/.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
import uuid
from pathlib import Path

from udpnest import endpoint
from udpnest.lab import bench, topology
from udpnest.lab.topology import EndpointPlan, LabSpec

GIB = 1 << 30
MIB = 1 << 20


def new_prefix(tag: str = "unp") -> str:
    return f"{tag}-{uuid.uuid4().hex[:5]}"


# ---------------------------------------------------------------------------------------------------------
# udpnest endpoints


class Endpoint:
    """One udpnest endpoint process in a lab host namespace."""

    def __init__(self, plan: EndpointPlan, argv: list[str], log: Path) -> None:
        self.plan = plan
        self.argv = argv
        self.log = log
        with open(log, "a") as f:
            f.write(f"--- start {' '.join(argv)}\n")
            f.flush()
            self.proc = subprocess.Popen(bench.ns_argv(plan.netns, argv), stdout=f, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=bench._pythonpath_env())

    @property
    def control(self) -> str:
        return endpoint.lab_control_path(self.plan)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait_up(self, timeout: float = 15.0) -> None:
        """TAP exists (then plugged into the host namespace) and the control socket answers."""
        deadline = time.monotonic() + timeout
        while not topology.link_exists(self.plan.netns, self.plan.tap_ifname):
            self._check(deadline, "no TAP")
            time.sleep(0.02)
        topology.plug_udpnest(self.plan)
        while True:
            try:
                endpoint.query_status(self.control)
                return
            except OSError:
                self._check(deadline, "no control socket")
                time.sleep(0.02)

    def _check(self, deadline: float, what: str) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"endpoint in {self.plan.netns} exited with {self.proc.returncode}: {self.log_text()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"endpoint in {self.plan.netns}: {what}: {self.log_text()}")

    def status(self) -> dict:
        return endpoint.query_status(self.control)

    def settled_status(self, quiet: float = 0.6, timeout: float = 10.0, ignore_drops: tuple[str, ...] = ()) -> dict:
        """Status once the RX counters stopped changing for ``quiet`` seconds: the RX loop may run in a forked
        process that reports its counters to the main process only every 0.25 s.  ``ignore_drops``: reasons
        that keep counting meanwhile (a legacy peer drops every echo probe as an unknown critical option)."""
        deadline = time.monotonic() + timeout
        last, since = None, time.monotonic()
        while True:
            st = self.status()
            # echo probes change reads/bytes every interval; data and drops settle
            rx = {k: v for k, v in st["rx"].items() if k not in ("reads", "bytes")
                  and not k.startswith(("time_", "coalesce_"))}  # coalesce_*: an outcome per read, echoes too
            drops = {k: v for k, v in st["drops"].items() if k not in ignore_drops}
            key = json.dumps([rx, drops], sort_keys=True)
            if key != last:
                last, since = key, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return st
            if time.monotonic() > deadline:
                raise TimeoutError(f"RX counters of {self.plan.netns} still changing after {timeout}s")
            time.sleep(0.05)

    def peer(self) -> dict:
        (p,) = self.status()["peers"].values()
        return p

    def wait_tap_gone(self, timeout: float = 10.0) -> float:
        t0 = time.monotonic()
        while topology.link_exists(self.plan.netns, self.plan.tap_ifname):
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"TAP {self.plan.tap_ifname} in {self.plan.netns} still there after {timeout}s")
            time.sleep(0.02)
        return time.monotonic() - t0

    def stop(self, sig_kill: bool = False) -> None:
        if self.proc.poll() is None:
            if sig_kill:
                self.proc.kill()
            else:
                self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_endpoint(spec: LabSpec, side: str, tmp: Path, nested: str, extra: tuple[str, ...] = (),
                   tx_path: str = "kernel") -> Endpoint:
    plan = topology.udpnest_plans(spec)[side]
    argv = list(endpoint.lab_argv(plan, nested=nested, tx_path=tx_path)) + list(extra)
    return Endpoint(plan, argv, tmp / f"endpoint-{spec.prefix}-{side}.log")


def start_pair(spec: LabSpec, tmp: Path, nested_a: str, nested_b: str | None = None,
               extra: tuple[str, ...] = ()) -> list[Endpoint]:
    """Start both endpoints, wait until both are up, route the hosts into the TAPs."""
    eps = [start_endpoint(spec, "a", tmp, nested_a, extra),
           start_endpoint(spec, "b", tmp, nested_b or nested_a, extra)]
    try:
        for ep in eps:
            ep.wait_up()
        topology.set_mode(spec, "udpnest")
    except BaseException:
        stop_all(eps)
        raise
    return eps


def stop_all(eps) -> None:
    for ep in eps:
        ep.stop()


def wait_modes(eps, mode: str, timeout: float) -> float:
    """Seconds until every endpoint reports ``mode`` towards its peer; raises on timeout."""
    t0 = time.monotonic()
    while True:
        modes = []
        for ep in eps:
            try:
                modes.append(ep.peer()["mode"])
            except OSError:
                modes.append(None)
        if all(m == mode for m in modes):
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"peers not in mode {mode} after {timeout}s: {modes}")
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------------------------
# Flows between the workloads (scripts run with ``python3 -c`` inside wa / wb)

_TCP_RECEIVER = r"""
import hashlib, json, socket, sys, time
addr, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
ls = socket.socket(fam, socket.SOCK_STREAM)
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((addr, port))
ls.listen(1)
ls.settimeout(timeout)
print("ready", flush=True)
c, peer = ls.accept()
c.settimeout(timeout)
h = hashlib.sha256()
buf = bytearray(1 << 20)
mv = memoryview(buf)
total = 0
t0 = time.monotonic()
while True:
    n = c.recv_into(buf)
    if not n:
        break
    h.update(mv[:n])
    total += n
secs = time.monotonic() - t0
c.close()
print(json.dumps({"bytes": total, "sha256": h.hexdigest(), "seconds": secs}), flush=True)
"""

_TCP_SENDER = r"""
import hashlib, json, random, socket, sys, time
import select
addr, port, total, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
# total 0: send until standard input closes (TcpTransfer.stop), however fast the path is
rng = random.Random(seed)
CH = 1 << 20
POOL = 8 << 20
pool = memoryview(rng.randbytes(POOL + CH))
h = hashlib.sha256()
deadline = time.monotonic() + 10
while True:
    try:
        s = socket.create_connection((addr, port), timeout=5)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.1)
s.settimeout(120)
sent = 0
t0 = time.monotonic()
while sent < total if total else not select.select([sys.stdin], [], [], 0)[0]:
    n = min(CH, total - sent) if total else CH
    off = rng.randrange(POOL)
    chunk = pool[off:off + n]
    h.update(chunk)
    s.sendall(chunk)
    sent += n
s.shutdown(socket.SHUT_WR)
s.recv(1)  # the receiver closes after EOF: everything was delivered
secs = time.monotonic() - t0
print(json.dumps({"bytes": sent, "sha256": h.hexdigest(), "seconds": secs}), flush=True)
"""


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    r, _, _ = select.select([proc.stdout], [], [], timeout)
    if not r:
        raise TimeoutError(f"{proc.args[-4:]} printed nothing in {timeout}s")
    return proc.stdout.readline()


class TcpTransfer:
    """``total`` bytes from workload A to workload B over the nested VXLAN, sha256 on both ends.

    ``total=None`` sends until :meth:`stop` (or :meth:`wait`, which stops first): a test that must do something
    *during* a transfer then does not depend on how fast the path is (CI once finished 1 GiB before a
    4-second junk flood did)."""

    def __init__(self, spec: LabSpec, total: int | None, port: int = 5301, seed: int = 4242,
                 timeout: float = 120.0):
        self.spec, self.total, self.port, self.seed, self.timeout = spec, total, port, seed, timeout
        self.receiver: subprocess.Popen | None = None
        self.sender: subprocess.Popen | None = None

    def start(self) -> TcpTransfer:
        addr = self.spec.inner_address("b")
        self.receiver = subprocess.Popen(
            bench.ns_argv(self.spec.ns("wb"), [sys.executable, "-c", _TCP_RECEIVER, addr, str(self.port),
                                               str(self.timeout)]),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        line = _read_line(self.receiver, 10)
        if line.strip() != "ready":
            raise RuntimeError(f"receiver: {line!r} {self.receiver.stderr.read() if self.receiver.poll() else ''}")
        self.sender = subprocess.Popen(
            bench.ns_argv(self.spec.ns("wa"), [sys.executable, "-c", _TCP_SENDER, addr, str(self.port),
                                               str(self.total or 0), str(self.seed)]),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL if self.total else subprocess.PIPE, text=True)
        self.t0 = time.monotonic()
        return self

    def running(self) -> bool:
        return self.sender is not None and self.sender.poll() is None

    def stop(self) -> None:
        """End an open-ended transfer: the sender finishes its chunk, shuts down and reports."""
        if self.sender is not None and self.sender.stdin is not None and not self.sender.stdin.closed:
            self.sender.stdin.close()
            self.sender.stdin = None  # communicate() would flush the closed pipe

    def wait(self) -> tuple[dict, dict]:
        """(sender result, receiver result); raises with both processes' stderr on failure."""
        self.stop()
        try:
            s_out, s_err = self.sender.communicate(timeout=self.timeout)
            r_out, r_err = self.receiver.communicate(timeout=15)
        except subprocess.TimeoutExpired as e:
            self.kill()
            raise AssertionError(f"transfer of {self.total} bytes did not finish in {self.timeout}s") from e
        self.seconds = time.monotonic() - self.t0
        if self.sender.returncode or self.receiver.returncode:
            raise AssertionError(f"transfer failed: sender rc={self.sender.returncode} {s_err.strip()[-2000:]}; "
                                 f"receiver rc={self.receiver.returncode} {r_err.strip()[-2000:]}")
        return json.loads(s_out.strip().splitlines()[-1]), json.loads(r_out.strip().splitlines()[-1])

    def kill(self) -> None:
        for p in (self.sender, self.receiver):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()

    def __enter__(self) -> TcpTransfer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()


def tcp_transfer(spec: LabSpec, total: int, **kw) -> tuple[dict, dict]:
    with TcpTransfer(spec, total, **kw) as t:
        return t.wait()


_UDP_RECEIVER = r"""
import hashlib, json, socket, sys
addr, port, n, idle = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind((addr, port))
print("ready", flush=True)
got = []
s.settimeout(10)
try:
    while len(got) < n:
        d = s.recv(65536)
        got.append([len(d), hashlib.sha256(d).hexdigest()])
        s.settimeout(idle)
except TimeoutError:
    pass
print(json.dumps(got), flush=True)
"""

_UDP_SENDER = r"""
import hashlib, json, random, socket, sys, time
addr, port, sizes, seed = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
out = []
for i, size in enumerate(sizes):
    d = (i.to_bytes(4, "big") + rng.randbytes(size))[:size]
    s.sendto(d, (addr, port))
    out.append([len(d), hashlib.sha256(d).hexdigest()])
    time.sleep(0.001)
print(json.dumps(out), flush=True)
"""

UDP_SIZES = [1, 4, 17, 64, 100, 255, 512, 777, 1000, 1024, 1100, 1199, 1200]


def udp_flow(spec: LabSpec, count: int = 200, port: int = 5302, seed: int = 7) -> tuple[list, list]:
    """Send ``count`` datagrams of various sizes (<= 1200) wa -> wb; (sent, received) as [len, sha256] lists."""
    sizes = [UDP_SIZES[i % len(UDP_SIZES)] for i in range(count)]
    addr = spec.inner_address("b")
    recv = subprocess.Popen(
        bench.ns_argv(spec.ns("wb"), [sys.executable, "-c", _UDP_RECEIVER, addr, str(port), str(count), "2"]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        line = _read_line(recv, 10)
        assert line.strip() == "ready", line
        snd = subprocess.run(
            bench.ns_argv(spec.ns("wa"), [sys.executable, "-c", _UDP_SENDER, addr, str(port), json.dumps(sizes),
                                          str(seed)]),
            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        assert snd.returncode == 0, snd.stderr
        out, err = recv.communicate(timeout=20)
        assert recv.returncode == 0, err
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()
    return json.loads(snd.stdout), json.loads(out)


def ping(spec: LabSpec, size: int = 56, count: int = 3) -> subprocess.CompletedProcess:
    return subprocess.run(
        bench.ns_argv(spec.ns("wa"), ["ping", "-n", "-c", str(count), "-i", "0.2", "-W", "2", "-s", str(size),
                                      spec.inner_address("b")]),
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)


# ---------------------------------------------------------------------------------------------------------
# Junk datagrams from a host namespace

_JUNK_SENDER = r"""
import socket, sys, time
src, dst, port, path, gap = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
data = open(path, "rb").read()
pkts, i = [], 0
while i < len(data):
    n = int.from_bytes(data[i:i + 2], "big")
    pkts.append(data[i + 2:i + 2 + n])
    i += 2 + n
fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.bind((src, 0))
for p in pkts:
    s.sendto(p, (dst, port))
    time.sleep(gap)
print(len(pkts), flush=True)
"""


def send_junk(ns: str, src: str, dst: str, port: int, pkts: list[bytes], tmp: Path, gap: float = 0.001) -> int:
    path = tmp / f"junk-{uuid.uuid4().hex[:6]}.bin"
    path.write_bytes(b"".join(len(p).to_bytes(2, "big") + p for p in pkts))
    res = subprocess.run(bench.ns_argv(ns, [sys.executable, "-c", _JUNK_SENDER, src, dst, str(port), str(path),
                                            str(gap)]),
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr
    os.unlink(path)
    return int(res.stdout.strip())
