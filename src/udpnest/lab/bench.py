"""Throughput / CPU / latency benchmark of the lab modes (root).

For every repetition, underlay setting and mode (order rotated each repetition so drift and warm-up do not
favour one mode) the bench points the hosts' routes at the mode's carrier, then runs one iperf3 TCP transfer
from workload A to workload B over the nested VXLAN, with a small TCP ping-pong (``lab.pingpong``) beside it.
The iperf3 and ping-pong servers in workload B live for the whole bench; the bench starts and stops them.

Result JSON (also written to ``<out>/bench-<stamp>.json``)::

    {"schema": 1,
     "machine": {...}, "config": {...},
     "modes": {"<mode>": {"<underlay>": {"underlay": "offload"|"wire", "gbps": median Gbit/s,
                                         "gbps_runs": [...], "ratio_vs_kernel_vxlan_in_vxlan": ...,
                                         "cpu_s_per_gb": ..., "cpu_s_per_gb_system": ...,
                                         "endpoint_user_s_per_gb": ..., "endpoint_kernel_s_per_gb": ...,
                                         "rtt_p50_us": ..., "rtt_p99_us": ..., "rtt_samples": n,
                                         "retransmits": median, "runs": n}}},
     "skipped": {"<mode>": "reason"}, "runs": [one record per iperf3 run], "plot": "<png path>"}

i.e. ``modes[mode][underlay]``: both underlay settings side by side under each mode.  The numbers are defined
in :mod:`udpnest.lab.stats`.

Modes: ``kernel-vxlan`` and ``kernel-vxlan-in-vxlan`` (kernel only), and ``udpnest-plain``, ``udpnest-hint``,
``udpnest-fold``: a pair of udpnest endpoints (``udpnest.endpoint.lab_argv(plan, nested=...)``) started in the
host namespaces for that run and stopped after it, in the configuration a user gets by default (the socket TX
path); ``udpnest-fold-ktx`` is fold mode with ``--tx-path kernel`` (the kernel's UDP-tunnel GSO cuts the
super-packets; it changes forwarding sysctls in the host namespace); ``udpnest-fold-py`` is fold mode on the
pure-Python engine (``--engine python``), the reference the native core replaced.  The bench waits for the TAPs, calls
:func:`topology.plug_udpnest`, waits until fold mode is really folding (the echo probe answered), and charges
the CPU time of the endpoints' whole process trees (the forked RX process included) to the run.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TextIO

from udpnest.lab import stats, topology
from udpnest.lab.topology import DEFAULT_PREFIX, KERNEL_MODES, UNDERLAYS, LabSpec

ENDPOINT_MODULE = "udpnest.endpoint"
#: bench mode -> the endpoints' (``--nested``, ``--tx-path``, extra arguments); None: the endpoint's default
UDPNEST_MODES = {"udpnest-plain": ("off", None, ()), "udpnest-hint": ("hint", None, ()),
                 "udpnest-fold": ("fold", None, ()), "udpnest-fold-ktx": ("fold", "kernel", ()),
                 "udpnest-fold-py": ("fold", None, ("--engine", "python"))}
MODES = KERNEL_MODES + tuple(UDPNEST_MODES)
IPERF_PORT = 5201
PINGPONG_PORT = 7007


@dataclass
class BenchConfig:
    modes: tuple[str, ...] = MODES
    underlays: tuple[str, ...] = UNDERLAYS
    reps: int = 3
    duration: float = 10.0
    underlay_family: int = 4
    nested_family: int = 4
    prefix: str = DEFAULT_PREFIX
    out_dir: Path = Path("out")
    pids: tuple[int, ...] = ()  # extra processes (e.g. an externally started endpoint) charged to every run
    keep: bool = False  # leave a lab the bench created up at the end
    plot: bool = True
    settle: float = 0.3  # seconds between switching the route/offloads and starting a run


def quick(cfg: BenchConfig) -> BenchConfig:
    """One short round: a few seconds per mode and underlay."""
    return replace(cfg, reps=1, duration=3.0)


def udpnest_unavailable() -> str | None:
    """None if the udpnest dataplane can be benchmarked, else why not."""
    try:
        mod = importlib.import_module(ENDPOINT_MODULE)
    except ModuleNotFoundError as e:
        if e.name in (ENDPOINT_MODULE, "udpnest"):
            return f"{ENDPOINT_MODULE} is not importable yet (dataplane not written)"
        return f"{ENDPOINT_MODULE} failed to import: {e}"
    except ImportError as e:
        return f"{ENDPOINT_MODULE} failed to import: {e}"
    if not callable(getattr(mod, "lab_argv", None)):
        return f"{ENDPOINT_MODULE} has no lab_argv(plan) -> list[str]"
    return None


def _pythonpath_env() -> dict[str, str]:
    """Environment for ``python3 -m udpnest...`` in a namespace: this checkout's package on the path."""
    src = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def ns_argv(ns: str, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def _wait_for_text(path: Path, text: str, proc: subprocess.Popen, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}: {path.read_text(errors='replace')}")
        time.sleep(0.05)
    raise TimeoutError(f"{proc.args} did not print {text!r} within {timeout}s")


def _stop(procs: Sequence[subprocess.Popen], timeout: float = 3.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _proc_tree(pids: Sequence[int]) -> list[int]:
    """``pids`` and all their live descendants (an endpoint forks its RX process)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = stats.parse_proc_pid_ppid(f.read())
        except (FileNotFoundError, ProcessLookupError):
            continue
        children.setdefault(ppid, []).append(int(name))
    out, todo = [], list(pids)
    while todo:
        pid = todo.pop()
        if pid in out:
            continue
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def _proc_cpu_split(pids: Sequence[int]) -> tuple[float, float]:
    """(user, system) CPU seconds of the process trees under ``pids``: every live descendant, plus the
    children that already exited and were reaped (``cutime``/``cstime`` of their parents).  For an endpoint,
    user time is udpnest's own work (Python and the C core) and system time the kernel's on its behalf (the
    TAP and socket syscalls, the workload's and the underlay's stacks that run in them)."""
    tick = os.sysconf("SC_CLK_TCK")
    user = system = 0
    for pid in _proc_tree(pids):
        try:
            with open(f"/proc/{pid}/stat") as f:
                u, s, cu, cs = stats.parse_proc_pid_stat(f.read(), children=True)
        except (FileNotFoundError, ProcessLookupError):
            continue
        user += u + cu
        system += s + cs
    return user / tick, system / tick


def _proc_cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds of the process trees under ``pids`` (:func:`_proc_cpu_split`)."""
    return sum(_proc_cpu_split(pids))


def _system_busy_seconds() -> float:
    with open("/proc/stat") as f:
        busy, _ = stats.parse_proc_stat_cpu(f.read())
    return busy / os.sysconf("SC_CLK_TCK")


def machine_info() -> dict:
    info: dict = {"kernel": platform.release(), "cpus": os.cpu_count(), "python": platform.python_version()}
    try:
        info["loadavg_at_start"] = os.getloadavg()[0]
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            info["mem_total_kb"] = int(f.readline().split()[1])
    except OSError:
        pass
    try:
        out = subprocess.run(["iperf3", "--version"], capture_output=True, text=True).stdout
        info["iperf3"] = out.splitlines()[0].strip() if out else None
    except OSError:
        info["iperf3"] = None
    try:
        import pyroute2

        info["pyroute2"] = getattr(pyroute2, "__version__", None)
    except ImportError:
        pass
    return info


class Progress:
    """One status line on stderr, rewritten in place on a terminal."""

    def __init__(self, stream: TextIO | None = None, total: int = 0):
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.total = total
        self.done = 0

    def say(self, text: str) -> None:
        line = f"[{self.done}/{self.total}] {text}"
        if self.tty:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


@dataclass
class _Servers:
    procs: list[subprocess.Popen] = field(default_factory=list)
    endpoints: list[subprocess.Popen] = field(default_factory=list)


def _start_servers(spec: LabSpec, tmp: Path, env: dict[str, str]) -> list[subprocess.Popen]:
    addr = spec.inner_address("b")
    procs = []
    out = tmp / "iperf3-server.log"
    with open(out, "w") as f:
        p = subprocess.Popen(ns_argv(spec.ns("wb"), ["iperf3", "-s", "-B", addr, "-p", str(IPERF_PORT),
                                                     "--forceflush"]),
                             stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    procs.append(p)
    _wait_for_text(out, "Server listening", p)
    out = tmp / "pingpong-server.log"
    with open(out, "w") as f:
        p = subprocess.Popen(ns_argv(spec.ns("wb"), [sys.executable, "-m", "udpnest.lab.pingpong", "server",
                                                     "--bind", addr, "--port", str(PINGPONG_PORT)]),
                             stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    procs.append(p)
    _wait_for_text(out, "ready", p)
    return procs


def _start_endpoints(spec: LabSpec, tmp: Path, nested: str = "fold", timeout: float = 10.0,
                     tx_path: str | None = None, extra: Sequence[str] = ()) -> list[subprocess.Popen]:
    mod = importlib.import_module(ENDPOINT_MODULE)
    procs = []
    plans = topology.udpnest_plans(spec)
    try:
        for side, plan in plans.items():
            with open(tmp / f"endpoint-{side}.log", "a") as log:
                argv = list(mod.lab_argv(plan, nested=nested, tx_path=tx_path, extra=tuple(extra)))
                procs.append(subprocess.Popen(ns_argv(plan.netns, argv),
                                              stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                              env=_pythonpath_env()))
        for (side, plan), proc in zip(plans.items(), procs, strict=True):
            deadline = time.monotonic() + timeout
            while not topology.link_exists(plan.netns, plan.tap_ifname):
                log = (tmp / f"endpoint-{side}.log").read_text(errors="replace")
                if proc.poll() is not None:
                    raise RuntimeError(f"udpnest endpoint {side} exited with {proc.returncode}: {log}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"udpnest endpoint {side} created no TAP {plan.tap_ifname} in {timeout}s: "
                                       f"{log}")
                time.sleep(0.05)
            topology.plug_udpnest(plan)
        if nested == "fold":
            _wait_folding(mod, plans.values(), timeout)
    except BaseException:
        _stop(procs)
        raise
    return procs


def _wait_folding(mod, plans, timeout: float) -> None:
    """Wait until both endpoints fold towards each other (their echo probes were answered)."""
    deadline = time.monotonic() + timeout
    for plan in plans:
        while True:
            try:
                st = mod.query_status(mod.lab_control_path(plan))
                if all(p["mode"] == "fold" for p in st["peers"].values()):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"udpnest endpoint in {plan.netns} is not folding after {timeout}s")
            time.sleep(0.1)


def run_one(spec: LabSpec, cfg: BenchConfig, rep: int, endpoint_pids: Sequence[int],
            env: dict[str, str]) -> stats.RunSample:
    """One iperf3 run with the ping-pong beside it, on the lab as currently configured."""
    server = spec.inner_address("b")
    wa = spec.ns("wa")
    pp = subprocess.Popen(
        ns_argv(wa, [sys.executable, "-m", "udpnest.lab.pingpong", "client", "--connect", server,
                     "--port", str(PINGPONG_PORT), "--duration", str(cfg.duration)]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env)
    try:
        pids = list(endpoint_pids) + list(cfg.pids)
        ep0, sys0 = _proc_cpu_split(pids), _system_busy_seconds()
        res = subprocess.run(
            ns_argv(wa, ["iperf3", "-c", server, "-p", str(IPERF_PORT), "-t", f"{cfg.duration:g}", "--json",
                         "--connect-timeout", "5000"]),
            capture_output=True, text=True, timeout=cfg.duration + 30, stdin=subprocess.DEVNULL)
        ep1, sys1 = _proc_cpu_split(pids), _system_busy_seconds()
        try:
            obj = json.loads(res.stdout)
        except json.JSONDecodeError as e:
            raise stats.IperfError(f"iperf3 exit {res.returncode}: {res.stderr.strip() or res.stdout[:200]}") from e
        ip = stats.parse_iperf3(obj)
        out, err = pp.communicate(timeout=cfg.duration + 15)
    finally:
        _stop([pp])
    try:
        rtts = json.loads(out)["rtt_us"]
    except (json.JSONDecodeError, KeyError):
        sys.stderr.write(f"\nping-pong failed: {err.strip()}\n")
        rtts = []
    return stats.RunSample(mode=spec.mode, underlay=spec.underlay, rep=rep, gbps=ip.gbps,
                           bytes_received=ip.bytes_received, seconds=ip.seconds, iperf_cpu_s=ip.cpu_seconds,
                           endpoint_cpu_s=sum(ep1) - sum(ep0), endpoint_user_s=ep1[0] - ep0[0],
                           system_cpu_s=sys1 - sys0, retransmits=ip.retransmits,
                           rtt_us=rtts)


def _rotate(xs: Sequence[str], n: int) -> list[str]:
    if not xs:
        return []
    n %= len(xs)
    return list(xs[n:]) + list(xs[:n])


def run(cfg: BenchConfig, stream: TextIO | None = None) -> dict:
    """Run the bench, write JSON (and PNG) to ``cfg.out_dir``, return the result dict."""
    skipped: dict[str, str] = {}
    modes = []
    for m in cfg.modes:
        if m not in MODES:
            raise ValueError(f"unknown mode {m!r}; known: {', '.join(MODES)}")
        if m in UDPNEST_MODES and (why := udpnest_unavailable()):
            skipped[m] = why
            continue
        modes.append(m)
    for u in cfg.underlays:
        if u not in UNDERLAYS:
            raise ValueError(f"unknown underlay {u!r}; known: {', '.join(UNDERLAYS)}")
    progress = Progress(stream, total=len(modes) * len(cfg.underlays) * cfg.reps)
    for m, why in skipped.items():
        progress.stream.write(f"skipping mode {m}: {why}\n")
    result: dict = {"schema": 1, "machine": machine_info(), "config": {
        "modes": modes, "underlays": list(cfg.underlays), "reps": cfg.reps, "duration_s": cfg.duration,
        "underlay_family": cfg.underlay_family, "nested_family": cfg.nested_family,
    }, "modes": {}, "skipped": skipped, "runs": []}
    if not modes:
        return result
    spec = LabSpec(prefix=cfg.prefix, underlay_family=cfg.underlay_family, nested_family=cfg.nested_family,
                   underlay=cfg.underlays[0], mode=next((m for m in modes if m in KERNEL_MODES), "kernel-vxlan"))
    result["config"].update(mtu_underlay=topology.UNDERLAY_MTU, mtu_access=spec.access_mtu,
                            mtu_nested_vxlan=spec.nested_mtu)
    created = not set(spec.namespaces) & set(topology.lab_namespaces(cfg.prefix))
    env = _pythonpath_env()
    samples: list[stats.RunSample] = []
    servers: list[subprocess.Popen] = []
    endpoints: list[subprocess.Popen] = []
    try:
        progress.say("building lab")
        topology.up(spec)
        with tempfile.TemporaryDirectory(prefix="udpnest-bench-") as tmpdir:
            tmp = Path(tmpdir)
            servers = _start_servers(spec, tmp, env)
            for rep in range(cfg.reps):
                for ul in _rotate(cfg.underlays, rep):
                    spec = topology.set_underlay(spec, ul)
                    for mode in _rotate(modes, rep):
                        if mode in UDPNEST_MODES:
                            progress.say(f"rep {rep + 1}/{cfg.reps} {mode}/{ul}: starting udpnest endpoints")
                            nested, tx_path, extra = UDPNEST_MODES[mode]
                            endpoints = _start_endpoints(spec, tmp, nested, tx_path=tx_path, extra=extra)
                        spec = topology.set_mode(spec, "udpnest" if mode in UDPNEST_MODES else mode)
                        time.sleep(cfg.settle)
                        progress.say(f"rep {rep + 1}/{cfg.reps} {mode}/{ul}: running {cfg.duration:g}s")
                        try:
                            s = run_one(spec, cfg, rep, [p.pid for p in endpoints], env)
                        finally:
                            _stop(endpoints)
                            endpoints = []
                        s = replace(s, mode=mode)
                        samples.append(s)
                        progress.done += 1
                        progress.say(f"rep {rep + 1}/{cfg.reps} {mode}/{ul}: {s.gbps:.2f} Gbit/s, "
                                     f"{s.cpu_s_per_gb:.3f} CPU s/GB")
    finally:
        _stop(servers + endpoints)
        if created and not cfg.keep:
            topology.down(cfg.prefix)
        progress.close()
    summary = stats.summarize(samples)
    result["modes"] = {m: {u: summary[m][u] for u in cfg.underlays if u in summary.get(m, {})}
                       for m in modes if m in summary}
    result["runs"] = [s.to_json() for s in samples]
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if cfg.plot:
        result["plot"] = str(plot(result, cfg.out_dir / f"bench-{stamp}.png"))
    path = cfg.out_dir / f"bench-{stamp}.json"
    result["json"] = str(path)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def plot(result: dict, path: Path) -> Path:
    """Grouped bars: Gbit/s and CPU s/GB per mode, one bar per underlay setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = result["modes"]
    modes = list(summary)
    underlays = [u for u in UNDERLAYS if any(u in summary[m] for m in modes)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.8 / max(1, len(underlays))
    for ax, key, label in ((axes[0], "gbps", "throughput, Gbit/s (median)"),
                           (axes[1], "cpu_s_per_gb", "CPU seconds per GB (median)")):
        for i, ul in enumerate(underlays):
            xs = [j + (i - (len(underlays) - 1) / 2) * width for j in range(len(modes))]
            ys = [summary[m].get(ul, {}).get(key) or 0.0 for m in modes]
            bars = ax.bar(xs, ys, width, label=f"underlay {ul}")
            ax.bar_label(bars, fmt="%.2f", fontsize=8)
        ax.set_xticks(range(len(modes)), modes, fontsize=8)
        ax.set_title(label, fontsize=10)
        ax.legend(fontsize=8)
    cfg = result.get("config", {})
    fig.suptitle(f"udpnest lab: {cfg.get('reps')}x{cfg.get('duration_s')}s, underlay IPv{cfg.get('underlay_family')}"
                 f", nested IPv{cfg.get('nested_family')}, kernel {result['machine'].get('kernel')}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
