"""TAP (vnet header, offload probe) and underlay UDP socket (UDP_SEGMENT / UDP_GRO).

Root tests build their own namespaces (``netns_factory``) and use documentation addresses only.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import subprocess
import sys
import time

import pytest

from udpnest.io import tap as tapmod
from udpnest.io import udp as udpmod
from udpnest.io.tap import Tap
from udpnest.io.udp import UdpSocket
from udpnest.wire import vnet
from udpnest.wire.vnet import VNET_HDR_LEN, VnetHdr

IFA_F_NODAD = 0x02

# -------------------------------------------------------------------------------------------------------
# helpers (no sockets)


def test_segment_cmsg_bytes():
    level, typ, data = udpmod.segment_cmsg(1400)
    assert (level, typ) == (17, 103) == (udpmod.SOL_UDP, udpmod.UDP_SEGMENT)
    assert data == (1400).to_bytes(2, sys.byteorder) == struct.pack("=H", 1400)
    assert len(udpmod.segment_cmsg(0xFFFF)[2]) == 2


def test_parse_gro_cmsg():
    four = (1462).to_bytes(4, sys.byteorder)
    assert udpmod.parse_gro_cmsg([(17, 104, four)]) == 1462
    assert udpmod.parse_gro_cmsg([(17, 104, (1400).to_bytes(2, sys.byteorder))]) == 1400
    assert udpmod.parse_gro_cmsg([]) == 0
    # other cmsgs are skipped: IP_TOS, then the UDP_GRO one
    assert udpmod.parse_gro_cmsg([(socket.IPPROTO_IP, socket.IP_TOS, b"\x00"), (17, 104, four)]) == 1462
    assert udpmod.parse_gro_cmsg([(17, 103, four)]) == 0


def test_cmsg_wire_layout():
    # struct cmsghdr {size_t len; int level; int type;} + payload, as the kernel sees it
    hdr = struct.Struct("@Nii")
    assert socket.CMSG_LEN(2) == hdr.size + 2
    level, typ, data = udpmod.segment_cmsg(1400)
    raw = hdr.pack(socket.CMSG_LEN(len(data)), level, typ) + data
    assert raw[hdr.size :] == struct.pack("=H", 1400)
    assert hdr.unpack_from(raw) == (hdr.size + 2, 17, 103)


def test_iter_segments():
    buf = bytes(range(10)) * 10
    segs = [bytes(s) for s in udpmod.iter_segments(buf, 95, 20)]
    assert [len(s) for s in segs] == [20, 20, 20, 20, 15]
    assert b"".join(segs) == buf[:95]
    assert [bytes(s) for s in udpmod.iter_segments(buf, 7, 0)] == [buf[:7]]


def test_offload_names():
    assert tapmod.offload_names(0x181) == ["csum", "udp_tunnel_gso", "udp_tunnel_gso_csum"]
    assert tapmod.offload_names(0x1000) == ["0x1000"]


def _fake_kernel(monkeypatch, supported: int):
    calls = []

    def ioctl(fd, req, arg):
        assert req == tapmod.TUNSETOFFLOAD
        calls.append(arg)
        if arg & ~supported:
            raise OSError(errno.EINVAL, "Invalid argument")
        return 0

    monkeypatch.setattr(tapmod.fcntl, "ioctl", ioctl)
    return calls


def test_offload_fallback_pre_617(monkeypatch):
    # a 6.2..6.16 kernel: no UDP tunnel bits
    calls = _fake_kernel(monkeypatch, 0x7F)
    acc, ref = tapmod.set_offloads(-1, tapmod.DEFAULT_OFFLOADS)
    assert (acc, ref) == (0x6F, 0x180)
    assert calls == [0x1EF, 0x0EF, 0x06F]


def test_offload_fallback_old_kernel(monkeypatch):
    _fake_kernel(monkeypatch, 0x1F)  # < 6.2: no USO
    assert tapmod.set_offloads(-1, tapmod.DEFAULT_OFFLOADS) == (0x0F, 0x1E0)
    _fake_kernel(monkeypatch, 0x07)  # no TSO_ECN either
    assert tapmod.set_offloads(-1, tapmod.DEFAULT_OFFLOADS | 0x1000) == (0x07, 0x11E8)
    _fake_kernel(monkeypatch, 0)
    assert tapmod.set_offloads(-1, tapmod.DEFAULT_OFFLOADS) == (0, tapmod.DEFAULT_OFFLOADS)


def test_offload_other_errors_propagate(monkeypatch):
    def ioctl(fd, req, arg):
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(tapmod.fcntl, "ioctl", ioctl)
    with pytest.raises(OSError) as ei:
        tapmod.set_offloads(-1, 0x7)
    assert ei.value.errno == errno.EBADF


class _FakeSock:
    """Records sendmsg calls; UDP_SEGMENT fails with EIO like a device with ``tx off``."""

    def __init__(self, eio: bool):
        self.eio = eio
        self.calls: list[tuple[list[bytes], list]] = []

    def sendmsg(self, bufs, anc=(), flags=0, addr=None):
        if anc and self.eio:
            raise OSError(errno.EIO, "Input/output error")
        self.calls.append(([bytes(b) for b in bufs], list(anc)))
        return sum(len(b) for b in bufs)


def _fake_udp(eio: bool, v6: bool = False) -> UdpSocket:
    s = UdpSocket.__new__(UdpSocket)
    s.sock = _FakeSock(eio)
    s.send_timeout = 1.0
    s.max_payload = udpmod.MAX_PAYLOAD_V6 if v6 else udpmod.MAX_PAYLOAD_V4
    s.gso_supported, s.gso_disabled, s.gso_eio_errors = True, False, 0
    return s


def test_send_segments_splits_into_calls():
    s = _fake_udp(eio=False)
    data = bytes(range(256)) * 400  # 102400 bytes
    assert s.send_segments(data, 1000, ("192.0.2.1", 9)) == 2  # 64 segments, then 38.4
    (b1, a1), (b2, a2) = s.sock.calls
    assert len(b1[0]) == 64000 and len(b2[0]) == 38400
    assert a1 == a2 == [udpmod.segment_cmsg(1000)]
    assert b1[0] + b2[0] == data
    # 1400-byte segments: max payload (65507) limits a call to 46 segments
    s = _fake_udp(eio=False)
    assert s.send_segments(bytes(100 * 1400), 1400, None) == 3
    assert [len(c[0][0]) for c in s.sock.calls] == [46 * 1400, 46 * 1400, 8 * 1400]
    # a single datagram goes without the cmsg
    s = _fake_udp(eio=False)
    s.send_segments(b"x" * 500, 1400)
    assert s.sock.calls == [([b"x" * 500], [])]


def test_send_segments_eio_fallback():
    s = _fake_udp(eio=True)
    data = bytes(range(250)) * 20  # 5000 bytes
    assert s.send_segments(data, 1400, ("192.0.2.1", 9)) == 4
    assert s.gso_disabled and s.gso_eio_errors == 1
    assert [c[0][0] for c in s.sock.calls] == [data[0:1400], data[1400:2800], data[2800:4200], data[4200:]]
    assert all(c[1] == [] for c in s.sock.calls)
    s.send_segments(data, 1400)  # no more GSO attempts
    assert s.gso_eio_errors == 1


def test_send_datagrams_groups_runs():
    s = _fake_udp(eio=False)
    dgs = [b"a" * 100] * 3 + [b"b" * 60] + [b"c" * 100] * 2 + [b"d" * 200] + [b""]
    assert s.send_datagrams(dgs) == 4
    c = s.sock.calls
    assert c[0] == ([b"a" * 100] * 3 + [b"b" * 60], [udpmod.segment_cmsg(100)])
    assert c[1] == ([b"c" * 100] * 2, [udpmod.segment_cmsg(100)])
    assert c[2] == ([b"d" * 200], [])
    assert c[3] == ([b""], [])
    s = _fake_udp(eio=True)
    assert s.send_datagrams([b"a" * 10] * 70) == 70 and s.gso_disabled
    s = _fake_udp(eio=False)
    assert s.send_datagrams([b"a" * 10] * 130) == 3  # 64 + 64 + 2


# -------------------------------------------------------------------------------------------------------
# root: TAP


def _ns_exec(ns: str, *cmd: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], check=True, capture_output=True, text=True).stdout


def _read_frames(t: Tap, want, timeout: float = 3.0) -> bytes:
    """Read TAP frames until ``want(frame)`` is true; other frames (IPv6 ND, MLD...) are skipped."""
    deadline = time.monotonic() + timeout
    buf = bytearray(tapmod.READ_BUF_SIZE)
    while time.monotonic() < deadline:
        select.select([t], [], [], 0.1)
        n = t.read_into(buf)
        if n and want(bytes(buf[:n])):
            return bytes(buf[:n])
    raise AssertionError("expected frame not read from the TAP")


@pytest.mark.root
def test_tap_opens_with_tunnel_offloads(netns_factory):
    ns = netns_factory("tap")
    t = Tap("unt%d", netns=ns)
    try:
        assert t.name.startswith("unt") and t.ifindex > 0 and t.vnet_hdr_sz == 24
        assert t.offloads & tapmod.TUN_F_UDP_TUNNEL_GSO
        assert t.offloads & tapmod.TUN_F_UDP_TUNNEL_GSO_CSUM
        assert t.offloads == tapmod.DEFAULT_OFFLOADS and t.refused == 0
        assert os.get_blocking(t.fd) is False
        feats = _ns_exec(ns, "ethtool", "-k", t.name)
        assert "tx-udp_tnl-segmentation: on" in feats and "tx-udp_tnl-csum-segmentation: on" in feats
        assert "tx-udp-segmentation: on" in feats
        details = _ns_exec(ns, "ip", "-d", "link", "show", t.name)
        assert "vnet_hdr on" in details and "persist off" in details
        assert t.read() is None and t.read_into(bytearray(100)) == 0
    finally:
        t.close()
    links = _ns_exec(ns, "ip", "-o", "link")
    assert t.name not in links  # non-persistent: gone with the fd


@pytest.mark.root
def test_tap_unknown_offload_bit_refused(netns_factory):
    ns = netns_factory("tap")
    with Tap(netns=ns, offloads=tapmod.DEFAULT_OFFLOADS | 0x8000) as t:
        assert t.offloads == tapmod.DEFAULT_OFFLOADS and t.refused == 0x8000


@pytest.mark.root
def test_tap_frames_both_ways(netns_factory):
    from pyroute2 import IPRoute
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    ns = netns_factory("tap")
    tap_mac, peer_mac = "02:00:00:00:00:01", "02:00:00:00:00:02"
    with Tap("unt%d", netns=ns, mtu=1500, mac=tap_mac, addresses=["192.0.2.1/24"], up=True) as t:
        with IPRoute(netns=ns) as ipr:
            ipr.neigh("add", dst="192.0.2.2", lladdr=peer_mac, ifindex=t.ifindex, state=0x80)  # PERMANENT
        sock = UdpSocket("192.0.2.1", 5000, netns=ns)
        try:
            # kernel <- TAP: zero vnet header + a complete frame with valid checksums
            frame = bytes(
                Ether(dst=tap_mac, src=peer_mac)
                / IP(src="192.0.2.2", dst="192.0.2.1")
                / UDP(sport=5001, dport=5000)
                / b"hello from the wire"
            )
            assert t.write(vnet.ZERO_VNET_HDR + frame) == 24 + len(frame)
            assert sock.wait_readable(3)
            buf = bytearray(udpmod.RECV_BUF_SIZE)
            n, gso, peer = sock.recv_into(buf)
            assert bytes(buf[:n]) == b"hello from the wire" and gso == 0 and peer == ("192.0.2.2", 5001)

            # kernel -> TAP: plain datagram, CHECKSUM_PARTIAL since the TAP has TUN_F_CSUM
            sock.send_segments(b"hello from the kernel", 1400, ("192.0.2.2", 5001))

            def is_ours(raw: bytes) -> bool:
                return raw[24 + 12 : 24 + 14] == b"\x08\x00" and raw.endswith(b"hello from the kernel")

            raw = _read_frames(t, is_ours)
            h = VnetHdr.unpack(raw)
            assert h.gso_type == vnet.GSO_NONE and h.flags == vnet.F_NEEDS_CSUM
            assert (h.csum_start, h.csum_offset) == (14 + 20, 6)
            pkt = Ether(raw[VNET_HDR_LEN:])
            assert pkt[Ether].dst == peer_mac and pkt[IP].src == "192.0.2.1" and pkt[UDP].dport == 5001

            # kernel -> TAP: UDP_SEGMENT super-datagram stays whole (USO on the TAP)
            payload = b"".join(bytes([i]) * 1000 for i in range(10))
            assert sock.send_segments(payload, 1000, ("192.0.2.2", 5002)) == 1
            raw = _read_frames(t, lambda r: r[24 + 12 : 24 + 14] == b"\x08\x00" and r[24 + 36 : 24 + 38] == b"\x13\x8a")
            h = VnetHdr.unpack(raw)
            assert h.gso_type == vnet.GSO_UDP_L4 and h.gso_size == 1000 and h.needs_csum
            assert (h.csum_start, h.csum_offset) == (34, 6)
            assert raw[VNET_HDR_LEN + 42 :] == payload
        finally:
            sock.close()


# -------------------------------------------------------------------------------------------------------
# root: UDP GSO/GRO over a veth between two namespaces

SEG = 1400
NSEG = 45


def _veth(netns_factory, v6: bool):
    from pyroute2 import IPRoute

    a, b = netns_factory("ua"), netns_factory("ub")
    addrs = ("2001:db8::1", "2001:db8::2") if v6 else ("192.0.2.1", "192.0.2.2")
    plen = 64 if v6 else 24
    with IPRoute(netns=a) as ipr:
        ipr.link("add", ifname="va", kind="veth", peer="vb")
        ipr.link("set", index=ipr.link_lookup(ifname="vb")[0], net_ns_fd=b)
    for ns, dev, addr in ((a, "va", addrs[0]), (b, "vb", addrs[1])):
        with IPRoute(netns=ns) as ipr:
            idx = ipr.link_lookup(ifname=dev)[0]
            ipr.addr("add", index=idx, address=addr, prefixlen=plen, flags=IFA_F_NODAD)
            ipr.link("set", index=idx, state="up")
    return a, b, addrs


def _pattern() -> bytes:
    return b"".join(i.to_bytes(4, "big") + bytes([i]) * (SEG - 4) for i in range(NSEG))


def _receive_all(rx: UdpSocket, total: int, timeout: float = 5.0):
    got, sizes = bytearray(), []
    bufs = [bytearray(udpmod.RECV_BUF_SIZE) for _ in range(8)]
    deadline = time.monotonic() + timeout
    while len(got) < total and time.monotonic() < deadline:
        if not rx.wait_readable(0.2):
            continue
        for buf, (n, gso, _peer) in zip(bufs, rx.recv_batch(bufs), strict=False):
            got += buf[:n]
            sizes.append((n, gso))
    return bytes(got), sizes


def _ethtool(ns: str, dev: str, *feats: str) -> None:
    _ns_exec(ns, "ethtool", "-K", dev, *feats)


@pytest.mark.root
@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_udp_gso_gro_veth(netns_factory, v6):
    a, b, (src, dst) = _veth(netns_factory, v6)
    with UdpSocket(src, 0, netns=a, blocking=True) as tx, UdpSocket(dst, 7000, netns=b) as rx:
        assert tx.gso_supported and rx.gro_supported and not tx.gso_disabled
        data = _pattern()
        assert tx.send_segments(data, SEG, (dst, 7000)) == 1  # one sendmsg for all 45 segments
        got, sizes = _receive_all(rx, len(data))
        assert len(got) == NSEG * SEG and got == data
        assert not tx.gso_disabled and rx.truncated == 0
        # veth with default offloads hands the GSO packet over whole
        merged = [(n, g) for n, g in sizes if n > SEG]
        assert merged and all(g == SEG for _, g in merged)
        assert sizes == [(NSEG * SEG, SEG)]


def _udp_csum_errors(ns: str) -> int:
    lines = [ln.split() for ln in _ns_exec(ns, "cat", "/proc/net/snmp").splitlines() if ln.startswith("Udp:")]
    return int(lines[1][lines[0].index("InCsumErrors")])


@pytest.mark.root
@pytest.mark.parametrize(
    "tx_feats",
    [("tso", "off", "tx-udp-segmentation", "off", "tx", "off"), ("tx-udp-segmentation", "off")],
    ids=["tx-off", "tx-csum-on"],
)
def test_udp_wire_mode_veth(netns_factory, tx_feats):
    """Sender veth cannot segment (and, with ``tx off``, cannot checksum): the datagrams cross one by one
    with real checksums; the receiving veth's GRO merges them again for the UDP_GRO socket."""
    a, b, (src, dst) = _veth(netns_factory, False)
    _ethtool(a, "va", *tx_feats)
    _ethtool(b, "vb", "gro", "on", "rx-udp-gro-forwarding", "on")
    with UdpSocket(src, 0, netns=a, blocking=True) as tx, UdpSocket(dst, 7000, netns=b) as rx:
        data = _pattern()
        for _burst in range(2):
            calls = tx.send_segments(data, SEG, (dst, 7000))
            got, sizes = _receive_all(rx, len(data))
            assert got == data  # every byte, in order
            # Kernels before software checksumming for UDP GSO answer EIO without tx csum offload
            # (then: per-datagram sends); 6.18 segments and checksums in software and keeps GSO.
            if tx.gso_disabled:
                assert calls == NSEG and tx.gso_eio_errors == 1
            else:
                assert calls == 1 and tx.gso_eio_errors == 0
            assert all(g in (0, SEG) for _, g in sizes)
            assert all(n == SEG for n, g in sizes if g == 0)
            assert any(g == SEG and n > SEG for n, g in sizes)  # GRO merged on the receiving veth
        assert _udp_csum_errors(b) == 0 and rx.truncated == 0
