"""``udpnest lab up|down|status``, ``udpnest bench`` and ``udpnest demo`` (all need root)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from udpnest.lab import bench, stats, topology
from udpnest.lab.bench import MODES
from udpnest.lab.topology import DEFAULT_PREFIX, KERNEL_MODES, UNDERLAYS, LabSpec

DEMO_PREFIX = f"{DEFAULT_PREFIX}-demo"


def _families(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ipv6", action="store_true", help="IPv6 for both the underlay and the nested tunnel")
    p.add_argument("--underlay-family", type=int, choices=(4, 6), help="family of the outer tunnel (overrides --ipv6)")
    p.add_argument("--nested-family", type=int, choices=(4, 6),
                   help="family of the workload VXLAN and of the benchmark traffic (overrides --ipv6)")
    p.add_argument("--prefix", default=DEFAULT_PREFIX,
                   help=f"namespace name prefix (default {DEFAULT_PREFIX}; namespaces are PREFIX-wa/ha/hb/wb)")


def _fam(args: argparse.Namespace) -> tuple[int, int]:
    base = 6 if args.ipv6 else 4
    return args.underlay_family or base, args.nested_family or base


def register(subparsers) -> None:
    lab = subparsers.add_parser("lab", help="build, remove or show the 4-namespace lab",
                                description=topology.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    lab.add_argument("action", choices=("up", "down", "status"))
    _families(lab)
    lab.add_argument("--underlay", choices=UNDERLAYS, default="offload", help="underlay veth offloads (up)")
    lab.add_argument("--mode", choices=KERNEL_MODES, default="kernel-vxlan",
                     help="carrier between the hosts (up; the udpnest mode is set up by `udpnest bench`)")
    lab.add_argument("--json", action="store_true", help="status as JSON, including the udpnest endpoint plans")
    lab.set_defaults(func=cmd_lab)

    b = subparsers.add_parser("bench", help="iperf3 throughput, CPU/GB and RTT of the lab modes",
                              description=bench.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _bench_args(b)
    b.add_argument("--quick", action="store_true", help="one short round (3 s per mode and underlay)")
    b.add_argument("--json", action="store_true", help="print the result JSON instead of the table")
    b.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), metavar="MODE",
                   help=f"modes to run (default all: {' '.join(MODES)})")
    b.add_argument("--underlays", nargs="+", choices=UNDERLAYS, default=list(UNDERLAYS), metavar="UNDERLAY",
                   help="underlay settings to run (default: offload wire)")
    b.add_argument("--reps", type=int, default=3, help="repetitions per mode and underlay (default 3, >= 1)")
    b.add_argument("--duration", type=float, default=10.0, help="seconds per iperf3 run (default 10)")
    b.add_argument("--pid", type=int, action="append", default=[], dest="pids",
                   help="also charge this process's CPU time to every run (repeatable)")
    b.add_argument("--keep", action="store_true", help="leave the lab up if the bench built it")
    b.set_defaults(func=cmd_bench)

    d = subparsers.add_parser("demo", help="build the lab, run a short bench of every available mode, tear down")
    _bench_args(d)
    d.set_defaults(func=cmd_demo, prefix=DEMO_PREFIX)


def _bench_args(p: argparse.ArgumentParser) -> None:
    _families(p)
    p.add_argument("--out", type=Path, default=Path("out"), help="directory for the JSON and PNG (default out/)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")


def _need_root() -> int | None:
    if os.geteuid() != 0:
        print("udpnest: this command creates network namespaces and needs root", file=sys.stderr)
        return 2
    return None


def cmd_lab(args: argparse.Namespace) -> int:
    if (rc := _need_root()) is not None:
        return rc
    if args.action == "down":
        names = topology.down(args.prefix)
        print(f"removed {len(names)} namespace(s)" + (f": {' '.join(names)}" if names else ""))
        return 0
    uf, nf = _fam(args)
    if args.action == "up":
        spec = LabSpec(prefix=args.prefix, underlay_family=uf, nested_family=nf, underlay=args.underlay,
                       mode=args.mode)
        changed = topology.up(spec)
        print(("lab up: " if changed else "lab already up: ") + spec.alias())
        return 0
    sts = topology.status(args.prefix)
    if args.json:
        spec = LabSpec(prefix=args.prefix, underlay_family=uf, nested_family=nf)
        print(json.dumps({"namespaces": [asdict(s) for s in sts],
                          "udpnest_plans": {k: asdict(v) for k, v in topology.udpnest_plans(spec).items()}},
                         indent=2))
        return 0
    if not sts:
        print(f"no lab namespaces with prefix {args.prefix}-")
        return 0
    for s in sts:
        print(f"{s.name}" + (f"  processes: {' '.join(map(str, s.pids))}" if s.pids else ""))
        for link in s.links:
            if link["ifname"] == "lo":
                continue
            alias = f"  [{link['alias']}]" if link["alias"] else ""
            print(f"  {link['ifname']:<8} {link['kind']:<6} mtu {link['mtu']:<5} {link['state']:<8} "
                  f"{' '.join(link['addresses'])}{alias}")
        for r in s.routes:
            if " via " in r or " dev unt0" in r:
                print(f"  route {r}")
    return 0


def _run_bench(cfg: bench.BenchConfig, as_json: bool) -> int:
    try:
        result = bench.run(cfg)
    except (RuntimeError, TimeoutError, OSError, ValueError) as e:
        print(f"udpnest bench: {e}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(result, indent=2))
        return 0
    if result["modes"]:
        print(stats.format_table(result["modes"]))
    for m, why in result["skipped"].items():
        print(f"skipped {m}: {why}")
    if result.get("plot"):
        print(f"plot: {result['plot']}")
    if result.get("json"):
        print(f"json: {result['json']}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if (rc := _need_root()) is not None:
        return rc
    if args.reps < 1 or args.duration <= 0:
        print("udpnest bench: --reps must be >= 1 and --duration > 0", file=sys.stderr)
        return 2
    uf, nf = _fam(args)
    cfg = bench.BenchConfig(modes=tuple(dict.fromkeys(args.modes)), underlays=tuple(dict.fromkeys(args.underlays)),
                            reps=args.reps, duration=args.duration, underlay_family=uf, nested_family=nf,
                            prefix=args.prefix, out_dir=args.out, pids=tuple(args.pids), keep=args.keep,
                            plot=not args.no_plot)
    if args.quick:
        cfg = bench.quick(cfg)
    return _run_bench(cfg, args.json)


def cmd_demo(args: argparse.Namespace) -> int:
    if (rc := _need_root()) is not None:
        return rc
    uf, nf = _fam(args)
    if topology.lab_namespaces(args.prefix):
        topology.down(args.prefix)  # the demo owns its prefix
    cfg = bench.BenchConfig(reps=1, duration=4.0, underlay_family=uf, nested_family=nf, prefix=args.prefix,
                            out_dir=args.out, plot=not args.no_plot)
    print(f"udpnest demo: 4-namespace lab ({args.prefix}-*), every mode x underlay for {cfg.duration:g}s",
          file=sys.stderr)
    rc = _run_bench(cfg, as_json=False)
    if rc == 0:
        print(DEMO_GUIDE)
    return rc


DEMO_GUIDE = """
How to read it (table above; the PNG named by "plot:" shows the same numbers as bars):
  - left panel / "Gbit/s": TCP throughput between the two workloads through their nested VXLAN, median.
    "kernel-vxlan-in-vxlan" is the baseline (the workload's VXLAN inside the host's kernel VXLAN); the
    "x kernel-vxlan-in-vxlan" column is each mode's throughput divided by it.  "kernel-vxlan" (one tunnel
    level only) is the ceiling for this machine.
  - udpnest-plain / -hint carry the nested headers in the payload; udpnest-fold moves them into a Geneve option
    so the underlay sees one UDP level and GSO/GRO work.  udpnest-fold against udpnest-plain is what folding
    gains; against kernel-vxlan-in-vxlan, how far this userspace endpoint is from the kernel's double tunnel.
  - right panel / "CPU s/GB": CPU seconds spent per GB moved (docs/performance.md says what is counted):
    lower is better.  "endpoint user/kernel s/GB": the udpnest endpoints' part of it, split into their own
    work (user: Python and the C core) and the kernel's in their syscalls.
  - "offload" vs "wire" underlay: veth with GSO/GRO on, or off as on a NIC without tunnel offloads.
  - RTT p50/p99: request/response latency of small messages (a userspace hop adds to it).
Where the numbers come from and how they were measured: docs/performance.md."""
