"""The multi-queue TAP (``tap_queues``): per-flow queues through the steering program (io/steering.py).

Root tests build their own namespaces (``netns_factory``) and use documentation addresses only.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import time

import pytest

from udpnest.io import steering
from udpnest.io.tap import Tap, in_netns
from udpnest.wire.vnet import VNET_HDR_LEN

IFA_F_NODAD = 0x02


def _udp4(sport: int, dport: int = 9000, src: str = "192.0.2.1", dst: str = "192.0.2.2", payload=b"x") -> bytes:
    eth = bytes(6) + bytes(6) + b"\x08\x00"
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 1, 0, 64, 17, 0, socket.inet_aton(src),
                     socket.inet_aton(dst))
    return eth + ip + struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def test_program_is_per_flow_and_spreads():
    # pure: the interpreter of the program (the same instructions the kernel runs)
    a = steering.run(steering.program(), _udp4(1000, payload=b"one"))
    b = steering.run(steering.program(), _udp4(1000, payload=b"a longer payload"))
    assert a == b != 0  # the payload does not matter, the 5-tuple does
    qs = {steering.queue_of(_udp4(p), 4) for p in range(1000, 1064)}
    assert qs == {0, 1, 2, 3}
    # a later fragment has no ports: hashed on the addresses only, the same for every source port
    frag = bytearray(_udp4(1000))
    frag[20:22] = struct.pack("!H", 0x0010)
    frag2 = bytearray(_udp4(2000))
    frag2[20:22] = struct.pack("!H", 0x0010)
    assert steering.run(steering.program(), bytes(frag)) == steering.run(steering.program(), bytes(frag2))
    assert steering.run(steering.program(), bytes(14)) == 0  # not IP: queue 0
    assert steering.run(steering.program(), b"\x00" * 12 + b"\x08\x00" + b"\x45") == 0  # truncated: 0


def _neigh(ns: str, addr: str, dev: str) -> None:
    subprocess.run(["ip", "-n", ns, "neigh", "replace", addr, "lladdr", "02:00:00:00:00:02", "dev", dev,
                    "nud", "permanent"], check=True)


def _drain(tap: Tap, want: int, timeout: float = 5.0) -> list[tuple[int, bytes]]:
    """(queue index, frame) for every frame read from every queue until ``want`` UDP frames came."""
    got: list[tuple[int, bytes]] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end and sum(1 for _, f in got if _is_udp(f)) < want:
        for i, fd in enumerate(tap.fds):
            while True:
                try:
                    got.append((i, os.read(fd, 70000)))
                except BlockingIOError:
                    break
        time.sleep(0.01)
    return got


def _is_udp(f: bytes) -> bool:
    e = f[VNET_HDR_LEN:]
    et = e[12:14]
    return (et == b"\x08\x00" and e[23] == 17) or (et == b"\x86\xdd" and e[20] == 17)


@pytest.mark.root
@pytest.mark.parametrize("v6", [False, True])
def test_multiqueue_tap_flows_stay_in_one_queue(netns_factory, v6):
    ns = netns_factory("untq")
    nq = 4
    addr = "2001:db8::1/64" if v6 else "192.0.2.1/24"
    tap = Tap("untq0", netns=ns, queues=nq)
    try:
        assert len(tap.fds) == nq and tap.fds[0] == tap.fd == tap.fileno()
        assert tap.steering == "ebpf", tap.steering_error
        if v6:
            from pyroute2 import IPRoute

            with IPRoute(netns=ns) as ipr:
                ipr.addr("add", index=tap.ifindex, address="2001:db8::1", prefixlen=64, flags=IFA_F_NODAD)
            tap.configure(mtu=1500, up=True)
        else:
            tap.configure(mtu=1500, addresses=[addr], up=True)
        peer = "2001:db8::2" if v6 else "192.0.2.2"
        _neigh(ns, peer, tap.name)
        fam = socket.AF_INET6 if v6 else socket.AF_INET
        flows, per = 24, 6
        with in_netns(ns):
            socks = [socket.socket(fam, socket.SOCK_DGRAM) for _ in range(flows)]
        try:
            for s in socks:
                s.bind(("::" if v6 else "0.0.0.0", 0))
            for k in range(per):
                for i, s in enumerate(socks):
                    s.sendto(struct.pack("!II", i, k), (peer, 9000))
            got = _drain(tap, flows * per)
        finally:
            for s in socks:
                s.close()
        ports = {s_i: None for s_i in range(flows)}
        seen: dict[int, list[int]] = {}
        queue_of: dict[int, set[int]] = {}
        for q, f in got:
            if not _is_udp(f):
                continue
            e = f[VNET_HDR_LEN:]
            l4 = 54 if v6 else 34
            payload = e[l4 + 8:]
            i, k = struct.unpack("!II", payload[:8])
            seen.setdefault(i, []).append(k)
            queue_of.setdefault(i, set()).add(q)
            # the kernel's choice is the program's: the interpreter predicts the queue
            assert steering.queue_of(e, nq) == q
            ports[i] = e[l4:l4 + 2]
        assert sorted(seen) == list(range(flows))
        for i, ks in seen.items():
            assert ks == list(range(per)), f"flow {i} out of order or incomplete: {ks}"
            assert len(queue_of[i]) == 1, f"flow {i} came out of queues {queue_of[i]}"
        used = set().union(*queue_of.values())
        assert len(used) > 1
    finally:
        tap.close()
    assert tap.fds == [] and tap.fd == -1


@pytest.mark.root
def test_multiqueue_tap_settings_per_device(netns_factory):
    ns = netns_factory("untq")
    with Tap("untq1", netns=ns, queues=3) as tap:
        import fcntl

        from udpnest.io import tap as tapmod

        for fd in tap.fds:  # the vnet header size is the device's: every queue sees 24
            got = struct.unpack("i", fcntl.ioctl(fd, tapmod.TUNGETVNETHDRSZ, bytes(4)))[0]
            assert got == VNET_HDR_LEN
        out = subprocess.run(["ip", "-n", ns, "-d", "link", "show", tap.name], capture_output=True, text=True,
                             check=True).stdout
        assert "multi_queue" in out
    with Tap("untq2", netns=ns) as one:  # queues=1: the single-queue TAP of before
        assert one.fds == [one.fd] and one.steering is None
        out = subprocess.run(["ip", "-n", ns, "-d", "link", "show", one.name], capture_output=True, text=True,
                             check=True).stdout
        assert "multi_queue" not in out


def test_queues_validated():
    with pytest.raises(ValueError, match="queues"):
        Tap("untq3", queues=0)


@pytest.mark.root
def test_a_refused_steering_program_falls_back_to_automq(netns_factory, monkeypatch):
    ns = netns_factory("untq")

    def refuse(fd):
        raise OSError(1, "bpf(BPF_PROG_LOAD): Operation not permitted")

    monkeypatch.setattr(steering, "attach", refuse)
    with Tap("untq4", netns=ns, queues=2) as tap:
        assert len(tap.fds) == 2
        assert tap.steering == "automq" and "BPF_PROG_LOAD" in tap.steering_error


def test_tap_queues_needs_a_restart():
    from udpnest.config import ConfigError, build_config
    from udpnest.service import reload_changes

    base = {"id": 1, "local": "192.0.2.1", "remote": ["192.0.2.2"]}
    old = build_config(base)
    assert old.tap_queues == 4
    with pytest.raises(ConfigError, match="tap_queues"):
        reload_changes(old, build_config({**base, "tap_queues": 1}))
    for bad in (0, 17, "x"):
        with pytest.raises(ConfigError, match="tap_queues"):
            build_config({**base, "tap_queues": bad})
