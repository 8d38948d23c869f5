"""TCP bulk flow with sha256 on both ends; run inside the guest's namespaces (``flows.py send|recv``)."""

import hashlib
import json
import random
import socket
import sys
import time


def recv(addr: str, port: int, timeout: float) -> None:
    ls = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((addr, port))
    ls.listen(1)
    ls.settimeout(timeout)
    c, _ = ls.accept()
    c.settimeout(timeout)
    h, total, buf = hashlib.sha256(), 0, bytearray(1 << 20)
    mv = memoryview(buf)
    while n := c.recv_into(buf):
        h.update(mv[:n])
        total += n
    c.close()
    print(json.dumps({"bytes": total, "sha256": h.hexdigest()}), flush=True)


def send(addr: str, port: int, total: int, seed: int = 4242) -> None:
    rng = random.Random(seed)
    pool = memoryview(rng.randbytes((4 << 20) + (1 << 20)))
    deadline = time.monotonic() + 60
    while True:
        try:
            s = socket.create_connection((addr, port), timeout=10)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    s.settimeout(300)
    h, sent, t0 = hashlib.sha256(), 0, time.monotonic()
    while sent < total:
        n = min(1 << 20, total - sent)
        off = rng.randrange(4 << 20)
        h.update(pool[off:off + n])
        s.sendall(pool[off:off + n])
        sent += n
    s.shutdown(socket.SHUT_WR)
    s.recv(1)
    print(json.dumps({"bytes": sent, "sha256": h.hexdigest(), "seconds": time.monotonic() - t0}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "recv":
        recv(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    else:
        send(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
