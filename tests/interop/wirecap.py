"""Capture Geneve datagrams on an underlay device in the guest, and compare hinted trains (test helper).

In the guest (stdlib only, ``python -I -S wirecap.py capture DEV OUT SECONDS``): an AF_PACKET reader that
keeps the first ``SNAP`` bytes of every outgoing UDP/6081 frame on DEV (taps see each datagram after the
kernel's software GSO, before the peer's GRO).  On the host: :func:`load` reads such a file back, and
:func:`describe` / :func:`nested_diffs` say what a Linux geneve receiver with ``gro-hint`` compares: the
Geneve header with its options and, when the GRO hint option is present, the nested headers up to its
``hdr_len`` (``geneve_hdr_match()`` memcmp's them across the datagrams it merges).

The capture file stays in the guest's overlay; ``python -I -S wirecap.py report FILE START COUNT`` (one line per
frame: size, gap, outer IP ID/DF/UDP checksum, which nested header bytes changed) runs there too.  Under TCG keep
COUNT to a few hundred (~1 min); the agent's answers are not meant for megabytes of output.  How it was used for
issue 10 (kernel-to-kernel vs udpnest hint trains): docs/wire-format.md, "What a hint train looks like".
"""

from __future__ import annotations

import signal
import socket
import struct
import sys
import time

SNAP = 256
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
_REC = struct.Struct("!BIQ")  # pkttype, wire length, kernel receive timestamp (ns)
SO_TIMESTAMPNS = 35


def capture(dev: str, out: str, seconds: float) -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # closes (flushes) the file on kill
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
    s.bind((dev, 0))
    s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    s.settimeout(0.5)
    end = time.monotonic() + seconds
    n = 0
    buf = bytearray(SNAP)
    with open(out, "wb") as f:
        print("ready", flush=True)
        while time.monotonic() < end:
            try:
                length, anc, _, addr = s.recvmsg_into([buf], 64, socket.MSG_TRUNC)
            except TimeoutError:
                continue
            except OSError:
                continue
            data = bytes(buf[: min(length, SNAP)])
            if addr[2] != PACKET_OUTGOING or not _is_geneve(data):
                continue
            ts = 0
            for lvl, typ, val in anc:
                if lvl == socket.SOL_SOCKET and typ == SO_TIMESTAMPNS and len(val) >= 16:
                    sec, nsec = struct.unpack("@qq", val[:16])
                    ts = sec * 10**9 + nsec
            f.write(_REC.pack(addr[2], length, ts) + data[:SNAP].ljust(SNAP, b"\0"))
            n += 1
    print(f"captured {n}", flush=True)


def _l4(frame: bytes) -> tuple[int, int, int] | None:
    """(ip offset, udp offset, ip version) of an Ethernet frame carrying UDP, or None."""
    if len(frame) < 14:
        return None
    et = int.from_bytes(frame[12:14], "big")
    if et == 0x0800 and len(frame) >= 34 and frame[23] == 17:
        return 14, 14 + (frame[14] & 0xF) * 4, 4
    if et == 0x86DD and len(frame) >= 62 and frame[20] == 17:
        return 14, 54, 6
    return None


def _is_geneve(frame: bytes) -> bool:
    r = _l4(frame)
    return r is not None and len(frame) >= r[1] + 16 and frame[r[1] + 2 : r[1] + 4] == b"\x17\xc1"


# ------------------------------------------------------------------ host side


def load(data: bytes) -> list[tuple[int, bytes, int]]:
    """(wire length, first SNAP bytes, timestamp ns) per captured frame."""
    step = _REC.size + SNAP
    out = []
    for i in range(0, len(data) - step + 1, step):
        _, length, ts = _REC.unpack_from(data, i)
        out.append((length, data[i + _REC.size : i + step], ts))
    return out


def describe(length: int, frame: bytes) -> dict:
    """The fields a merging receiver looks at, for one captured frame."""
    ip, udp, ver = _l4(frame)
    g = udp + 8
    optlen = (frame[g] & 0x3F) * 4
    payload = g + 8 + optlen
    d = {"len": length, "ver": ver, "udp_csum": frame[udp + 6 : udp + 8].hex(), "udp_len":
         int.from_bytes(frame[udp + 4 : udp + 6], "big"), "geneve": frame[g : payload].hex(), "hint": None}
    if ver == 4:
        d.update(ip_id=int.from_bytes(frame[ip + 4 : ip + 6], "big"), df=bool(frame[ip + 6] & 0x40),
                 tos=frame[ip + 1], ttl=frame[ip + 8])
    else:
        d.update(tc_flow=frame[ip : ip + 4].hex(), hop=frame[ip + 7])
    o = g + 8
    while o < payload:
        cls, typ, ln = int.from_bytes(frame[o : o + 2], "big"), frame[o + 2], (frame[o + 3] & 0x1F) * 4
        if cls == 0x0100 and typ == 1 and ln == 4:
            d["hint"] = frame[o + 4 : o + 8].hex()
            d["hdr_len"] = frame[o + 7]
        o += 4 + ln
    hl = d.get("hdr_len") or 50
    d["nested"] = frame[payload : payload + hl]
    d["payload_at"] = payload
    return d


def nested_diffs(a: bytes, b: bytes) -> list[int]:
    """Offsets (from the start of the Geneve payload) where two nested header blocks differ."""
    return [i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y] + \
        list(range(min(len(a), len(b)), max(len(a), len(b))))


def report(frames, limit: int = 400) -> str:
    """Per frame: size, gap to the previous frame, outer IP ID / DF / UDP checksum, and which nested header
    bytes differ from the previous frame (full nested bytes printed when they change)."""
    lines = []
    prev = None
    for length, fr, ts in frames[:limit]:
        d = describe(length, fr)
        gap = (ts - prev["ts"]) // 1000 if prev else 0
        diff = nested_diffs(prev["nested"], d["nested"]) if prev else None
        show = prev is None or diff or d["geneve"] != prev["geneve"]
        lines.append(f"len {d['len']:5d} +{gap:6d}us id {d.get('ip_id', '-')} df {d.get('df', '-')} "
                     f"ucsum {d['udp_csum']} diff@{diff}" + (f" geneve={d['geneve']} nested={d['nested'].hex()}"
                                                              if show else ""))
        d["ts"] = ts
        prev = d
    return "\n".join(lines)


def inner_tcp(d: dict, frame: bytes) -> tuple[int, int, int, bytes] | None:
    """(seq, flags, inner IPv4 ID, TCP options) of the innermost TCP header after the hinted nested headers
    (Ethernet + IPv4 inner frames only), or None."""
    o = d["payload_at"] + d.get("hdr_len", 50)
    if frame[o + 12 : o + 14] != b"\x08\x00":
        return None
    ip = o + 14
    if frame[ip + 9] != 6:
        return None
    t = ip + (frame[ip] & 0xF) * 4
    doff = (frame[t + 12] >> 4) * 4
    return (int.from_bytes(frame[t + 4 : t + 8], "big"), frame[t + 13], int.from_bytes(frame[ip + 4 : ip + 6], "big"),
            frame[t + 20 : t + doff])


def trains(frames) -> str:
    """One line per train (a run of datagrams whose nested headers are identical to the first's): its
    datagram count and sizes, first TCP seq, flags, TCP options, and the gap before it."""
    lines, run, prev_ts = [], [], 0
    def close():
        if run:
            d0, t0, ts0 = run[0]
            sizes = sorted({d["len"] for d, _, _ in run})
            opts = {t[3] for _, t, _ in run if t}
            lines.append(f"+{(ts0 - prev_ts) // 1000 if prev_ts else 0:7d}us n={len(run):2d} sizes={sizes} "
                         f"seq={t0[0] if t0 else '-'} flags={[hex(t[1]) for _, t, _ in run if t]} "
                         f"opts={[o.hex() for o in opts]}")
    for length, fr, ts in frames:
        d = describe(length, fr)
        t = inner_tcp(d, fr)
        if not run or d["nested"] != run[0][0]["nested"] or d["geneve"] != run[0][0]["geneve"]:
            close()
            prev_ts = run[-1][2] if run else prev_ts
            run = []
        run.append((d, t, ts))
    close()
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1] == "capture":
        capture(sys.argv[2], sys.argv[3], float(sys.argv[4]))
    elif sys.argv[1] == "report":
        with open(sys.argv[2], "rb") as f:
            frames = load(f.read())
        print(f"{len(frames)} frames")
        print(report(frames[int(sys.argv[3]) : int(sys.argv[3]) + int(sys.argv[4])]))
    elif sys.argv[1] == "trains":
        with open(sys.argv[2], "rb") as f:
            print(trains(load(f.read())[int(sys.argv[3]) : int(sys.argv[3]) + int(sys.argv[4])]))
