"""``udpnest decode FILE.pcap``: print each Geneve packet of a capture with its folds restored.

The capture is read with scapy (an optional extra: ``pip install 'udpnest[decode]'``); every UDP datagram to or
from a Geneve port is parsed with udpnest's own parser (:func:`udpnest.wire.options.parse_packet`) and, when
it carries FOLD options, unfolded with :func:`udpnest.fold.unfold`, exactly as the receiving endpoint would.
One line per packet, then the restored frame as scapy sees it (``-v``: every field).  A packet udpnest would
drop is printed with the drop reason (the counter name of ``udpnest status``).

The per-packet work is pure (:func:`describe`): it takes the UDP payload and returns lines.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Iterable, Iterator

from .fold import unfold
from .wire.errors import ParseError
from .wire.options import DEFAULT_OPT_CLASS, GRO_HINT_PROTO, parse_packet


def describe(payload: bytes, *, opt_class: int = DEFAULT_OPT_CLASS, verbose: bool = False) -> tuple[str, list[str]]:
    """(kind, lines) for one Geneve UDP payload.  kind: fold, echo-request, echo-reply, hint, plain, malformed."""
    try:
        pkt = parse_packet(payload, opt_class=opt_class)
    except ParseError as e:
        return "malformed", [f"malformed: {e.reason.value}: {e.detail}"]
    h = pkt.hdr
    head = f"Geneve vni {h.vni} proto 0x{h.proto:04x}" + (" O" if h.oam else "") + (" C" if h.critical else "")
    lines = []
    kind = "plain"
    for name, e in (("echo-request", pkt.echo_request), ("echo-reply", pkt.echo_reply)):
        if e is not None:
            kind = name
            caps = ",".join(n for bit, n in ((1, "fold"), (2, "hint"), (4, "rco")) if e.cap_flags & bit) or "none"
            lines.append(f"{head} {name} nonce 0x{e.nonce:016x} timestamp {e.timestamp} caps {caps} "
                         f"max_levels {e.max_levels} max_option_bytes {e.max_option_bytes}")
    if pkt.gro_hint is not None:
        g = pkt.gro_hint
        kind = "hint"
        lines.append(f"{head} gro-hint inner 0x{GRO_HINT_PROTO[g.inner_proto_id]:04x} nested "
                     f"{'IPv6' if g.nested_is_v6 else 'IPv4'} nh {g.nested_nh_offset} tp {g.nested_tp_offset} "
                     f"hdr_len {g.nested_hdr_len}")
    if kind.startswith("echo"):
        return kind, lines
    try:
        u = unfold(payload, opt_class=opt_class, packet=pkt)
    except ParseError as e:
        return "malformed", [f"{head}: malformed: {e.reason.value}: {e.detail}"]
    if u.levels:
        kind = "fold"
        lines.insert(0, f"{head} FOLD x{u.levels} ({len(payload)} bytes -> frame of {len(u.frame)} bytes)")
    elif not lines:
        lines.append(f"{head} plain ({len(u.frame)} bytes)")
    lines.extend("  " + ln for ln in _show(u.frame, verbose))
    return kind, lines


def _show(frame: bytes, verbose: bool) -> list[str]:
    import scapy.layers.inet6  # noqa: F401 - registers IPv6 and the protocols above it
    import scapy.layers.vxlan  # noqa: F401 - VXLAN on its standard ports
    from scapy.layers.l2 import Ether

    p = Ether(frame)
    if verbose:
        return p.show(dump=True).rstrip("\n").splitlines()
    return [p.summary()]


def decode_pcap(path: str, *, ports: Iterable[int] = (6081,), opt_class: int = DEFAULT_OPT_CLASS,
                verbose: bool = False, vxlan_ports: Iterable[int] = ()) -> Iterator[tuple[str, list[str]]]:
    """(kind, lines) for every Geneve datagram of the capture, with the packet number and addresses."""
    from scapy.layers.inet import UDP
    from scapy.utils import PcapReader

    ports = set(ports)
    if vxlan_ports:
        from scapy.layers.vxlan import VXLAN
        from scapy.packet import bind_layers

        for vp in vxlan_ports:
            bind_layers(UDP, VXLAN, dport=vp)
    with PcapReader(path) as r:
        for i, p in enumerate(r, 1):
            if UDP not in p:
                continue
            udp = p[UDP]
            if udp.dport not in ports and udp.sport not in ports:
                continue
            ip = udp.underlayer
            kind, lines = describe(bytes(udp.payload), opt_class=opt_class, verbose=verbose)
            src, dst = getattr(ip, "src", "?"), getattr(ip, "dst", "?")
            lines[0] = f"#{i} {src}:{udp.sport} > {dst}:{udp.dport} " + lines[0]
            yield kind, lines


def register(sub) -> None:
    p = sub.add_parser("decode", help="print the Geneve packets of a pcap with folds restored (needs scapy)")
    p.add_argument("pcap")
    p.add_argument("--port", type=int, action="append", help="Geneve UDP port (default 6081; repeatable)")
    p.add_argument("--opt-class", default=f"0x{DEFAULT_OPT_CLASS:04X}", help="udpnest option class")
    p.add_argument("--vxlan-port", type=int, action="append", default=[],
                   help="extra UDP port of the workload's VXLAN (4789, 4790, 8472 are known)")
    p.add_argument("-v", "--verbose", action="store_true", help="every field of the restored frame")
    p.set_defaults(func=cmd_decode)


def cmd_decode(args: argparse.Namespace) -> int:
    try:
        import scapy  # noqa: F401
    except ModuleNotFoundError:
        print("udpnest decode needs scapy: pip install 'udpnest[decode]'", file=sys.stderr)
        return 2
    counts: Counter[str] = Counter()
    try:
        for kind, lines in decode_pcap(args.pcap, ports=args.port or (6081,), opt_class=int(args.opt_class, 0),
                                       verbose=args.verbose, vxlan_ports=args.vxlan_port):
            counts[kind] += 1
            print("\n".join(lines))
    except Exception as e:  # noqa: BLE001 - OSError, or scapy's Scapy_Exception for a file that is not a pcap
        print(f"udpnest decode: {args.pcap}: {e}", file=sys.stderr)
        return 1
    print("packets: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"))
    return 0
