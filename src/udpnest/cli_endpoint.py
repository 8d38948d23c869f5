"""``udpnest up`` and ``udpnest status``."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from .config import NESTED_MODES, ConfigError, build_config, load_toml


def register(sub) -> None:
    up = sub.add_parser("up", help="run one endpoint in the foreground (SIGINT/SIGTERM stop it)",
                        description="Run a udpnest Geneve endpoint. Flags override the --config TOML file; "
                        "names follow 'ip link add ... type geneve' where one exists.")
    up.add_argument("--config", help="TOML file with the same settings (underscores or dashes)")
    up.add_argument("--id", type=str, help="VNI (0..16777215)")
    up.add_argument("--remote", action="append", help="peer ADDR[:PORT] or [V6ADDR]:PORT; repeat for several")
    up.add_argument("--local", help="underlay address to bind")
    up.add_argument("--dstport", help="Geneve UDP port (default 6081)")
    up.add_argument("--ttl", help="outer TTL / hop limit (default 64)")
    up.add_argument("--tos", help="outer TOS / traffic class (default 0)")
    up.add_argument("--df", choices=("unset", "set"), help="outer IPv4 DF bit (default unset)")
    up.add_argument("--udpcsum", dest="udpcsum", action="store_const", const=True,
                    help="outer UDP checksum on (default; UDP GRO merges nothing without it)")
    up.add_argument("--noudpcsum", dest="udpcsum", action="store_const", const=False)
    up.add_argument("--nested", choices=NESTED_MODES, help="nested-tunnel handling (default off)")
    up.add_argument("--fallback", choices=("plain", "hint"), help="mode towards peers that do not fold")
    up.add_argument("--nested-port", dest="nested_ports", action="append", metavar="PORT:TYPE",
                    help="extra nested tunnel port, TYPE vxlan|vxlan-gpe|geneve (defaults: 4789,8472 vxlan, "
                    "4790 vxlan-gpe, 6081 geneve)")
    up.add_argument("--max-levels", dest="max_levels", help="nested levels to fold at most (1..3, default 3)")
    up.add_argument("--opt-class", dest="opt_class", help="Geneve option class of udpnest's options (0xFF4E)")
    up.add_argument("--tap", help="TAP device name (default udpnest0)")
    up.add_argument("--tap-netns", dest="tap_netns", help="network namespace to create the TAP in")
    up.add_argument("--tap-mtu", dest="tap_mtu", help="TAP MTU (default 1500)")
    up.add_argument("--tap-address", dest="tap_addresses", action="append", metavar="ADDR/PREFIX")
    up.add_argument("--tap-mac", dest="tap_mac")
    up.add_argument("--underlay-netns", dest="underlay_netns", help="network namespace of the UDP sockets")
    up.add_argument("--tx-path", dest="tx_path", choices=("socket", "kernel"),
                    help="socket: segment in udpnest, send with UDP_SEGMENT (default, no host changes); kernel: "
                    "hand super-packets to the kernel's UDP-tunnel GSO through a TAP (sets forwarding sysctls "
                    "in the underlay namespace, restored at stop; see docs/operations.md)")
    up.add_argument("--engine", choices=("native", "python"),
                    help="who does the per-packet work: native (the compiled core, default when built) or "
                    "python (the reference engine); asking for native when it is not built is an error")
    up.add_argument("--tx-tap", dest="tx_tap", help="name of the kernel TX path's TAP (default TAP-tx)")
    up.add_argument("--underlay-mtu", dest="underlay_mtu", help="path MTU towards peers (default 1500)")
    up.add_argument("--probe-interval", dest="probe_interval", help="seconds between echo probes (default 1)")
    up.add_argument("--probe-window", dest="probe_window", help="validity window in intervals (default 3)")
    up.add_argument("--dataplane", choices=("userspace", "kernel"),
                    help="userspace (default): udpnest carries the tunnel; kernel: create a Linux >= 7.0 geneve "
                    "device with the GRO hint and GSO partial instead (docs/operations.md)")
    up.add_argument("--nice", help="nice value of the TX thread and RX process (-20..19, default -10; "
                                   "'off' leaves them as started)")
    up.add_argument("--control", help="unix socket for 'udpnest status' (default /run/udpnest/TAP.sock)")
    up.add_argument("--metrics", metavar="ADDR:PORT",
                    help="serve Prometheus metrics on http://ADDR:PORT/metrics (off by default; e.g. 127.0.0.1:9108)")
    up.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    up.set_defaults(func=cmd_up)

    st = sub.add_parser("status", help="show counters of a running endpoint")
    st.add_argument("--tap", default="udpnest0", help="endpoint's TAP name (finds its control socket)")
    st.add_argument("--control", help="control socket path")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)


_NOT_CONFIG = {"config", "log_level", "func", "command"}


def load_config(args: argparse.Namespace):
    """The TOML file (read again on every call: SIGHUP reloads it), then the command-line flags over it."""
    values = load_toml(args.config) if args.config else {}
    values = {k.replace("-", "_"): v for k, v in values.items()}
    values.update({k: v for k, v in vars(args).items() if k not in _NOT_CONFIG and v is not None})
    return build_config(values)


def cmd_up(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    try:
        cfg = load_config(args)
    except ConfigError as e:
        print(f"udpnest: {e}", file=sys.stderr)
        return 2
    if cfg.dataplane == "kernel":
        from .kernelmode import run

        return run(cfg)
    from .endpoint import Endpoint
    from .engine import EngineError

    try:
        ep = Endpoint(cfg)
    except EngineError as e:
        print(f"udpnest: {e}", file=sys.stderr)
        return 2
    try:
        ep.open()
    except OSError as e:
        print(f"udpnest: cannot start: {e}", file=sys.stderr)
        return 1
    from .service import Service  # SIGTERM/SIGHUP, systemd readiness, --metrics

    try:
        return Service(ep, lambda: load_config(args)).run()
    except OSError as e:
        print(f"udpnest: cannot start: {e}", file=sys.stderr)
        return 1


def cmd_status(args: argparse.Namespace) -> int:
    from .endpoint import query_status

    path = args.control or f"/run/udpnest/{args.tap}.sock"
    try:
        st = query_status(path)
    except OSError as e:
        print(f"udpnest: no endpoint answers on {path}: {e.strerror or e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(st, indent=2, sort_keys=True))
        return 0
    print(format_status(st))
    return 0


def format_status(st: dict) -> str:
    lines = [f"pid {st['pid']}  up {st['uptime_s']:.0f}s  engine {st.get('engine', '?')}  "
             f"nested {st['config']['nested']}  "
             f"tap {st['tap']['name']} offloads {','.join(st['tap']['offloads'])}"]
    if st["tap"]["refused"]:
        lines.append(f"  TAP refused offloads: {','.join(st['tap']['refused'])}")
    u = st["underlay"]
    lines.append(f"underlay: UDP GSO {'on' if u['gso'] else 'OFF'}, GRO {'on' if u['gro'] else 'OFF'}")
    for d in ("tx", "rx"):
        c = st[d]
        lines.append(f"{d}: " + "  ".join(f"{k} {v}" for k, v in sorted(c.items())))
        h = st[f"{d}_segments_hist"]
        lines.append("  segments/super-packet: " + "  ".join(f"{k}:{v}" for k, v in h.items()))
    lines.append("peers:")
    for p, s in st["peers"].items():
        lines.append(f"  {p}: " + "  ".join(f"{k} {v}" for k, v in s.items()))
    if st["drops"]:
        lines.append("drops: " + "  ".join(f"{k} {v}" for k, v in sorted(st["drops"].items())))
    else:
        lines.append("drops: none")
    return "\n".join(lines)
