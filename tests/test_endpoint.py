"""Endpoint logic without syscalls: TX building per mode, and the drop reasons only the endpoint produces.

The endpoint's sockets and TAP are replaced by small fakes; nothing here needs root.
"""

from __future__ import annotations

import errno

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from udpnest.config import build_config
from udpnest.endpoint import Endpoint
from udpnest.gro import Kind as GroKind
from udpnest.gro import TapWrite, receive
from udpnest.wire.errors import Reason
from udpnest.wire.options import CAP_FOLD, Echo, parse_packet
from udpnest.wire.vnet import ZERO_VNET_HDR, VnetHdr

PEER = "198.51.100.2"


class FakeSock:
    def __init__(self, fail: int | None = None) -> None:
        self.sent: list[tuple[bytes, tuple]] = []
        self.fail = fail
        self.gso_disabled = False
        self.gso_eio_errors = 0

    def send_parts(self, parts, addr):
        if self.fail:
            raise OSError(self.fail, "fake")
        self.sent.append((b"".join(bytes(p) for p in parts), addr))
        return 1

    def send_segments(self, buf, seg, addr):
        if self.fail:
            raise OSError(self.fail, "fake")
        data = bytes(buf)
        for i in range(0, len(data), seg):
            self.sent.append((data[i : i + seg], addr))
        return 1

    def sendto(self, data, addr):
        self.sent.append((bytes(data), addr))


class FakeRx:
    def __init__(self) -> None:
        self.sock = FakeSock()
        self.sources: list[str] = []  # what the kernel source filter lets in (restrict_sources)
        self.filter_error = None
        self.socket_drops = 0

    def restrict_sources(self, addresses, networks=()) -> bool:
        self.sources = sorted(addresses)
        return True


class FakeTap:
    def __init__(self, fail: int | None = None) -> None:
        self.frames: list[bytes] = []
        self.fail = fail

    def writev(self, parts):
        if self.fail:
            raise OSError(self.fail, "fake")
        data = b"".join(bytes(p) for p in parts)
        self.frames.append(data)
        return len(data)


def endpoint(nested: str = "fold", **kw) -> Endpoint:
    cfg = build_config({"id": 7, "local": "198.51.100.1", "remote": [PEER], "nested": nested,
                        "nested_ports": ["6082:vxlan"], **kw})
    ep = Endpoint(cfg, clock=lambda: 100.0)
    ep.tx = [FakeSock()]
    ep.rx = FakeRx()
    ep.tap = FakeTap()
    return ep


def ack_frame() -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                 / IP(src="192.0.2.1", dst="192.0.2.18") / UDP(sport=5555, dport=6082) / VXLAN(vni=100)
                 / Ether(src="02:00:00:00:00:03", dst="02:00:00:00:00:04")
                 / IP(src="203.0.113.2", dst="203.0.113.1") / TCP(sport=5201, dport=40000, flags="A"))


@pytest.mark.parametrize("mode,levels", [("fold", 1), ("plain", 0), ("hint", 0)])
def test_tx_frame_per_mode_and_back(mode, levels):
    """A frame read from the TAP leaves as one Geneve datagram of the peer's mode, and the RX side turns it
    back into the same frame (checksums valid: the ACK's partial checksum was finished on TX)."""
    ep = endpoint("fold" if mode == "fold" else mode if mode == "hint" else "off")
    if ep.prober is not None:
        ep.prober.peers[PEER].state = ep.prober.peers[PEER].state.__class__.CAPABLE
        ep.prober.peers[PEER].valid_until = 1e9
    frame = ack_frame()
    ep._tx_frame(memoryview(ZERO_VNET_HDR + frame))
    [(dgram, addr)] = ep.tx[0].sent
    assert addr == (PEER, 6081)
    pkt = parse_packet(dgram)
    assert len(pkt.folds) == levels
    assert (pkt.gro_hint is not None) == (mode == "hint")
    res = receive(dgram, len(dgram), 0, ports=ep.cfg.nested_ports)
    assert [b"".join(bytes(p) for p in w.parts) for w in res.writes] == [frame]
    assert ep.tx_stats.c[f"mode_{mode}"] == 1 and not ep.tx_stats.drops


def test_tx_finishes_a_partial_checksum():
    ep = endpoint("off")
    frame = bytearray(ack_frame())
    tcp = 14 + 20 + 8 + 8 + 14 + 20
    good = bytes(frame[tcp + 16 : tcp + 18])
    frame[tcp + 16 : tcp + 18] = b"\x12\x34"  # garbage where the kernel would leave the pseudo-header sum
    vh = VnetHdr(flags=1, csum_start=tcp, csum_offset=16)
    from udpnest.wire import csum

    src, dst = bytes(frame[14 + 50 + 12 : 14 + 50 + 16]), bytes(frame[14 + 50 + 16 : 14 + 50 + 20])
    frame[tcp + 16 : tcp + 18] = csum.partial_csum(src, dst, 6, len(frame) - tcp).to_bytes(2, "big")
    ep._tx_frame(memoryview(vh.pack() + bytes(frame)))
    [(dgram, _)] = ep.tx[0].sent
    assert dgram[8 + tcp + 16 : 8 + tcp + 18] == good


def test_send_error_is_counted():
    ep = endpoint("off")
    ep.tx = [FakeSock(fail=errno.ENOBUFS)]
    ep._tx_frame(memoryview(ZERO_VNET_HDR + ack_frame()))
    assert ep.tx_stats.drops == {Reason.SEND_ERROR.value: 1}


def test_bad_vnet_header_is_counted():
    ep = endpoint("off")
    bad = VnetHdr(gso_type=0x21, gso_size=0).pack()  # tunnel GSO without a size: the kernel would refuse it
    ep._tx_frame(memoryview(bad + ack_frame()))
    assert ep.tx_stats.drops == {Reason.BAD_VNET.value: 1} and not ep.tx[0].sent


def test_truncated_frame_is_counted():
    ep = endpoint("off")
    ep._tx_frame(memoryview(ZERO_VNET_HDR + b"\x02" * 10))
    assert ep.tx_stats.drops == {Reason.TRUNCATED_ETH.value: 1}


def test_tap_write_error_is_counted_per_datagram():
    ep = endpoint("off")
    ep.tap = FakeTap(fail=errno.EIO)
    ep._tap_write(TapWrite(ZERO_VNET_HDR, (b"\x02" * 60,), GroKind.PLAIN, 3), PEER)
    assert ep.rx_stats.drops == {Reason.TAP_WRITE.value: 3}
    assert ep.rx_stats.c["tap_writes"] == 0


def test_tap_write_learns_the_source_mac():
    ep = endpoint("off")
    frame = ack_frame()
    ep._tap_write(TapWrite(ZERO_VNET_HDR, (frame,), GroKind.PLAIN, 1), PEER)
    assert ep.tap.frames == [ZERO_VNET_HDR + frame]
    assert ep.fdb.lookup(frame[6:12], 100.0) == PEER


def test_unsolicited_echo_reply_is_counted():
    ep = endpoint("hint")  # not probing: no prober
    pkt = parse_packet(_echo_packet(reply=True))
    ep._on_echo(pkt, PEER)
    assert ep.ctl_stats.drops == {Reason.UNSOLICITED_REPLY.value: 1}


def test_echo_requests_beyond_the_rate_are_counted_and_not_answered():
    ep = endpoint("fold")
    pkt = parse_packet(_echo_packet(reply=False))
    for _ in range(20):  # same instant: the bucket holds 5
        ep._on_echo(pkt, PEER)
    replies = [d for d, _ in ep.rx.sock.sent]
    assert len(replies) == 5
    assert all(parse_packet(r).echo_reply is not None for r in replies)
    assert all(len(r) <= len(_echo_packet(reply=False)) for r in replies)  # never larger than the request
    assert ep.ctl_stats.drops == {Reason.RATE_LIMITED.value: 15}


def test_legacy_endpoint_drops_fold_as_unknown_critical_option():
    """nested off: udpnest's option class is unknown, so a folded packet is dropped (RFC 8926 3.5)."""
    ep = endpoint("off")
    ep_fold = endpoint("fold")
    ep_fold.prober.peers[PEER].state = ep_fold.prober.peers[PEER].state.__class__.CAPABLE
    ep_fold.prober.peers[PEER].valid_until = 1e9
    ep_fold._tx_frame(memoryview(ZERO_VNET_HDR + ack_frame()))
    [(dgram, _)] = ep_fold.tx[0].sent
    res = receive(dgram, len(dgram), 0, opt_class=ep.rx_class, ports=ep.cfg.nested_ports)
    assert res.drops == [(Reason.UNKNOWN_CRITICAL_OPTION, 1)] and not res.writes


def _echo_packet(*, reply: bool) -> bytes:
    from udpnest.wire.geneve import build_geneve
    from udpnest.wire.options import build_echo

    return build_geneve(7, 0x6558, build_echo(Echo(1234, 5, 3, 252, CAP_FOLD), reply=reply), oam=True)
