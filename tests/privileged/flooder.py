"""A small line-rate UDP sender for the robustness tests: ``sendmmsg(2)`` through ctypes (Python's socket
has no sendmmsg), up to 1024 datagrams per syscall, paced to a target rate.

    python flooder.py SRC DST PORT PPS SECONDS|COUNT:N PAYLOADS_FILE

PAYLOADS_FILE holds length-prefixed (u16 big-endian) datagrams, sent round-robin.  Prints one JSON line:
``{"sent": N, "seconds": S, "errors": E}`` (also when stopped early with SIGTERM).  Runs inside a lab
namespace (``ip netns exec``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import signal
import socket
import sys
import time

BATCH = 1024


class iovec(ctypes.Structure):  # noqa: N801 - the C name
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class msghdr(ctypes.Structure):  # noqa: N801
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.POINTER(iovec)), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class mmsghdr(ctypes.Structure):  # noqa: N801
    _fields_ = [("msg_hdr", msghdr), ("msg_len", ctypes.c_uint)]


def load(path: str) -> list[bytes]:
    data = open(path, "rb").read()
    out, i = [], 0
    while i < len(data):
        n = int.from_bytes(data[i:i + 2], "big")
        out.append(data[i + 2:i + 2 + n])
        i += 2 + n
    return out


def main(argv: list[str]) -> None:
    src, dst, port, pps, dur, path = argv[1], argv[2], int(argv[3]), float(argv[4]), argv[5], argv[6]
    count = int(dur.split(":")[1]) if dur.startswith("count:") else None
    seconds = float("inf") if count is not None else float(dur)
    payloads = load(path)
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    s.bind((src, 0))
    s.connect((dst, port))  # connected: no msg_name needed
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    # a ring of BATCH messages (slot i carries payload i % len(payloads)); each call continues where the
    # previous one stopped, so a slow rate still cycles through all payloads
    bufs = [ctypes.create_string_buffer(p, len(p)) for p in payloads]
    iovs = (iovec * BATCH)()
    msgs = (mmsghdr * BATCH)()
    for i in range(BATCH):
        b = bufs[i % len(bufs)]
        iovs[i].iov_base = ctypes.cast(b, ctypes.c_void_p)
        iovs[i].iov_len = len(payloads[i % len(payloads)])
        msgs[i].msg_hdr.msg_iov = ctypes.pointer(iovs[i])
        msgs[i].msg_hdr.msg_iovlen = 1
    sent = errors = pos = 0
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))  # stop early, still report
    t0 = time.monotonic()
    while not stop:
        now = time.monotonic()
        if now - t0 >= seconds or (count is not None and sent >= count):
            break
        due = int((now - t0) * pps) + 1 - sent if pps > 0 else BATCH
        if due <= 0:
            time.sleep(min(0.002, (sent - (now - t0) * pps) / pps))
            continue
        n = min(BATCH - pos, due, count - sent if count is not None else BATCH)
        r = libc.sendmmsg(s.fileno(), ctypes.byref(msgs, pos * ctypes.sizeof(mmsghdr)), n, 0)
        if r < 0:
            errors += 1
            time.sleep(0.0005)  # ENOBUFS / ECONNREFUSED (ICMP from a previous datagram): go on
            continue
        sent += r
        pos = (pos + r) % BATCH
    print(json.dumps({"sent": sent, "seconds": time.monotonic() - t0, "errors": errors}), flush=True)


if __name__ == "__main__":
    main(sys.argv)
