"""The cBPF non-peer filter: the program (interpreted) and the kernel running it (loopback, no root)."""

from __future__ import annotations

import socket

import pytest

from udpnest.io.bpf import BPF_MAXINSNS, FilterTooLarge, attach, build_filter, run_filter


@pytest.mark.parametrize(("src", "ok"), [
    ("192.0.2.2", True), ("192.0.2.3", True), ("192.0.2.4", False), ("198.51.100.77", True),
    ("198.51.101.1", False), ("203.0.113.9", False), ("0.0.0.0", False), ("255.255.255.255", False),
])
def test_ipv4_program(src, ok):
    prog = build_filter(False, ["192.0.2.2", "192.0.2.3"], ["198.51.100.0/24"])
    assert run_filter(prog, src) is ok


@pytest.mark.parametrize(("src", "ok"), [
    ("2001:db8::2", True), ("2001:db8::3", False), ("2001:db8:1::3", False), ("2001:db8:ff00::1", True),
    ("2001:db8:ffff:ffff::1", True), ("2001:db9::2", False), ("::", False), ("::1", False),
])
def test_ipv6_program(src, ok):
    prog = build_filter(True, ["2001:db8::2"], ["2001:db8:ff00::/40"])
    assert run_filter(prog, src) is ok


def test_empty_allows_nothing_and_zero_prefix_everything():
    assert not run_filter(build_filter(False), "192.0.2.1")
    assert run_filter(build_filter(False, networks=["0.0.0.0/0"]), "192.0.2.1")


def test_many_peers_and_the_limit():
    peers = [f"10.{i >> 8 & 255}.{i & 255}.1" for i in range(1300)]
    prog = build_filter(False, peers)
    assert len(prog) <= BPF_MAXINSNS
    assert run_filter(prog, peers[-1]) and run_filter(prog, peers[0]) and not run_filter(prog, "10.0.0.2")
    with pytest.raises(FilterTooLarge):
        build_filter(False, [f"10.{i >> 8 & 255}.{i & 255}.2" for i in range(1400)])
    with pytest.raises(ValueError):
        build_filter(False, ["2001:db8::1"])


def _pair(fam, host, allowed):
    rx = socket.socket(fam, socket.SOCK_DGRAM)
    rx.bind((host, 0))
    rx.settimeout(0.2)
    attach(rx, build_filter(fam == socket.AF_INET6, allowed))
    return rx


@pytest.mark.parametrize(("fam", "host", "src_ok", "src_bad"), [
    (socket.AF_INET, "127.0.0.1", "127.0.0.2", "127.0.0.3"),
])
def test_kernel_drops_non_peers(fam, host, src_ok, src_bad):
    rx = _pair(fam, host, [src_ok])
    port = rx.getsockname()[1]
    with rx, socket.socket(fam, socket.SOCK_DGRAM) as good, socket.socket(fam, socket.SOCK_DGRAM) as bad:
        good.bind((src_ok, 0))
        bad.bind((src_bad, 0))
        for i in range(20):
            bad.sendto(b"junk%d" % i, (host, port))
        good.sendto(b"hello", (host, port))
        data, addr = rx.recvfrom(100)
        assert (data, addr[0]) == (b"hello", src_ok)  # the 20 junk datagrams never reached the queue
        with pytest.raises(TimeoutError):
            rx.recvfrom(100)


def test_kernel_filter_ipv6_loopback():
    try:
        rx = _pair(socket.AF_INET6, "::1", ["2001:db8::1"])
    except OSError as e:
        pytest.skip(f"no IPv6 loopback: {e}")
    with rx, socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as tx:
        tx.sendto(b"x", rx.getsockname()[:2])
        with pytest.raises(TimeoutError):
            rx.recvfrom(100)
        attach(rx, build_filter(True, ["::1"]))
        tx.sendto(b"y", rx.getsockname()[:2])
        assert rx.recvfrom(100)[0] == b"y"


def test_udpsocket_counts_kernel_drops():
    """Filter refusals reach sk_drops, which SO_RXQ_OVFL reports with the next accepted datagram."""
    from udpnest.io.udp import UdpSocket

    with UdpSocket("127.0.0.1", 0, gro=False) as rx, socket.socket() as _:
        assert rx.restrict_sources(["127.0.0.2"])
        port = rx.local_address[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as bad, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as good:
            bad.bind(("127.0.0.3", 0))
            good.bind(("127.0.0.2", 0))
            for _ in range(50):
                bad.sendto(b"junk", ("127.0.0.1", port))
            good.sendto(b"ok", ("127.0.0.1", port))
            rx.wait_readable(1.0)
            buf = bytearray(65536)
            n, _, addr = rx.recv_into(buf)
            assert bytes(buf[:n]) == b"ok" and addr[0] == "127.0.0.2"
            assert rx.socket_drops == 50
