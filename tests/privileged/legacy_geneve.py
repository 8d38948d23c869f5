"""A minimal legacy Geneve endpoint written with scapy, as a peer that knows nothing of udpnest's options.

``python3 legacy_geneve.py TAP LOCAL REMOTE PORT VNI STATS_JSON`` (run inside a host namespace): creates the TAP
(no vnet header, no offloads: the kernel hands it MTU-sized frames), relays frames TAP -> Geneve/UDP -> REMOTE
and Geneve from REMOTE -> TAP, and, as RFC 8926 section 3.5 requires, drops every packet that carries a critical
option it does not understand - it understands none.  Counters go to STATS_JSON on SIGTERM.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import socket
import struct
import sys

from scapy.contrib.geneve import GENEVE
from scapy.packet import Raw

TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000


def main() -> int:
    tap_name, local, remote, port, vni, stats_path = sys.argv[1:7]
    port, vni = int(port), int(vni)
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", tap_name.encode(), IFF_TAP | IFF_NO_PI))
    fam = socket.AF_INET6 if ":" in local else socket.AF_INET
    sk = socket.socket(fam, socket.SOCK_DGRAM)
    sk.bind((local, port))
    stats = {"to_peer": 0, "to_tap": 0, "critical_dropped": 0, "other_dropped": 0}
    running = True

    def stop(*_):
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    print("ready", flush=True)
    while running:
        try:
            r, _, _ = select.select([fd, sk], [], [], 0.2)
        except InterruptedError:
            continue
        if fd in r:
            frame = os.read(fd, 65536)
            sk.sendto(bytes(GENEVE(vni=vni, proto=0x6558) / Raw(frame)), (remote, port))
            stats["to_peer"] += 1
        if sk in r:
            data, addr = sk.recvfrom(65536)
            g = GENEVE(data)
            if g.critical or any(opt.type & 0x80 for opt in g.options):
                stats["critical_dropped"] += 1  # RFC 8926 3.5: an unknown critical option
                continue
            if g.proto != 0x6558:
                stats["other_dropped"] += 1
                continue
            os.write(fd, bytes(g.payload))
            stats["to_tap"] += 1
    with open(stats_path, "w") as f:
        json.dump(stats, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
