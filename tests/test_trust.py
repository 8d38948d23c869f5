"""Issue 9: what arrives is not trusted.  Endpoint-level echo handling without syscalls (fakes from
test_endpoint), the RX process's bounded state and IPC, the FDB under two threads."""

from __future__ import annotations

import pytest

from test_endpoint import PEER, FakeRx, FakeSock, FakeTap
from udpnest.config import build_config
from udpnest.endpoint import Endpoint
from udpnest.wire.errors import Reason
from udpnest.wire.geneve import build_geneve
from udpnest.wire.options import CAP_FOLD, Echo, build_echo, parse_packet

PEER2 = "198.51.100.3"


def endpoint(nested: str = "fold", remote=(PEER,), clock=None, **kw) -> Endpoint:
    cfg = build_config({"id": 7, "local": "198.51.100.1", "remote": list(remote), "nested": nested,
                        "nested_ports": ["6082:vxlan"], **kw})
    ep = Endpoint(cfg, clock=clock or (lambda: 100.0))
    ep.tx = [FakeSock()]
    ep.rx = FakeRx()
    ep.tap = FakeTap()
    return ep


def echo_packet(*, reply: bool, nonce: int = 1234, caps: int = CAP_FOLD) -> bytes:
    return build_geneve(7, 0x6558, build_echo(Echo(nonce, 5, 3, 252, caps), reply=reply), oam=True)


def replies_sent(ep) -> list[bytes]:
    return [d for d, _ in ep.rx.sock.sent if parse_packet(d).echo_reply is not None]


@pytest.mark.parametrize("nested", ["hint", "fold"])
def test_requests_rate_limited_in_every_mode(nested):
    """Main: hint mode answered every request (15,000 requests in 3 s -> 15,004 replies)."""
    ep = endpoint(nested)
    req = echo_packet(reply=False)
    for _ in range(20):
        ep._on_echo(parse_packet(req), PEER, len(req))
    assert len(replies_sent(ep)) == 5
    assert all(len(r) <= len(req) for r in replies_sent(ep))
    assert ep.ctl_stats.drops == {Reason.RATE_LIMITED.value: 15}


def test_nested_off_never_answers():
    ep = endpoint("off")
    req = echo_packet(reply=False)
    ep._on_echo(parse_packet(req), PEER, len(req))
    assert replies_sent(ep) == []
    assert ep.ctl_stats.drops == {Reason.UNKNOWN_CRITICAL_OPTION.value: 1}


def test_reply_never_larger_than_the_request():
    ep = endpoint("fold")
    req = echo_packet(reply=False)
    ep._on_echo(parse_packet(req), PEER, len(req) - 1)
    assert replies_sent(ep) == []
    assert ep.ctl_stats.c["echo_replies_too_large"] == 1


def test_global_reply_limit_across_peers():
    peers = [f"198.51.100.{i}" for i in range(10, 40)]
    ep = endpoint("hint", remote=peers, echo_reply_global_rate=20.0, echo_reply_global_burst=10.0)
    req = echo_packet(reply=False)
    for p in peers:
        for _ in range(3):
            ep._on_echo(parse_packet(req), p, len(req))
    assert len(replies_sent(ep)) == 10
    assert ep.ctl_stats.drops == {Reason.RATE_LIMITED.value: 80}


def test_forged_request_never_makes_a_legacy_peer_fold():
    """Issue 9's blackhole: one forged request/s with CAP_FOLD kept main folding towards a legacy peer."""
    t = [100.0]
    ep = endpoint("fold", clock=lambda: t[0], probe_interval=1.0)
    peer = ep.prober.peers[PEER]
    for i in range(60):
        t[0] = 100.0 + i
        ep._send_probes()  # probes go out; the legacy peer never answers them
        req = echo_packet(reply=False, nonce=i)
        ep._on_echo(parse_packet(req), PEER, len(req))
        assert ep.peer_mode(PEER, t[0]) == "plain", i
    assert peer.counters["replies_ok"] == 0 and peer.counters["echo_received"] == 60


def test_forged_and_replayed_replies_change_nothing():
    t = [100.0]
    ep = endpoint("fold", clock=lambda: t[0], probe_interval=1.0)
    peer = ep.prober.peers[PEER]
    t[0] = ep.prober.next_deadline()
    ep._send_probes()
    sent = [parse_packet(d).echo_request for d, _ in ep.rx.sock.sent]
    assert len(sent) == 1
    for nonce in (0, 1, sent[0].nonce ^ 1, (1 << 64) - 1):
        ep._on_echo(parse_packet(echo_packet(reply=True, nonce=nonce)), PEER)
    assert ep.peer_mode(PEER, t[0]) == "plain"
    assert ep.ctl_stats.c["echo_reply_unknown_nonce"] == 4
    # the genuine reply, then a replay of it
    ep._on_echo(parse_packet(echo_packet(reply=True, nonce=sent[0].nonce)), PEER)
    assert ep.peer_mode(PEER, t[0]) == "fold"
    ep._on_echo(parse_packet(echo_packet(reply=True, nonce=sent[0].nonce)), PEER)
    assert ep.ctl_stats.c["echo_reply_unknown_nonce"] == 5 and peer.counters["replies_ok"] == 1


# --- bounded RX-process state and IPC (issue 9.3, 9.6) --------------------------------------------------
def test_learned_macs_bounded_lru():
    from udpnest.rxguard import LearnedMacs

    lm = LearnedMacs(1000, refresh=75.0)
    for i in range(700_000 // 100):  # 7,000 random-looking sources (the issue used 700,000)
        assert lm.report(i.to_bytes(6, "big"), "p", 1.0)
    assert len(lm) == 1000 and lm.evicted == 6000
    mac = (6999).to_bytes(6, "big")
    assert not lm.report(mac, "p", 2.0)  # known, fresh: no report
    assert lm.report(mac, "q", 2.0)  # moved
    assert lm.report(mac, "q", 80.0)  # refresh due
    lm.forget(mac)
    assert lm.report(mac, "q", 80.1)


def test_rx_process_learned_macs_bounded_and_reported(monkeypatch):
    """The RX child's learned-MAC table (main: a dict that never forgot) stays at learned_max."""
    from udpnest.gro import Kind as GroKind
    from udpnest.gro import TapWrite
    from udpnest.wire.vnet import ZERO_VNET_HDR

    ep = endpoint("off", learned_max=100)
    ep.rx_child = True
    sent = []

    class FakeChan:
        def send(self, msg):
            sent.append(msg)
            return len(sent) % 10 != 0  # every tenth message is dropped: the queue was full

    ep._chan = FakeChan()
    for i in range(1000):
        frame = bytes(6) + bytes([2, 0, 0, 0, i >> 8, i & 0xFF]) + b"\x08\x00" + bytes(40)
        ep._tap_write(TapWrite(ZERO_VNET_HDR, (frame,), GroKind.PLAIN, 1), PEER)
    assert len(ep._learned) <= 100
    assert ep.rx_stats.c["learned_evicted"] >= 800  # (a dropped report is forgotten, to be sent again)
    assert ep.rx_stats.c["ipc_dropped"] == 100
    assert len(sent) == 1000


def test_channel_never_blocks_and_counts_drops():
    import socket

    from udpnest.rxguard import Channel

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        ch = Channel(a, 64 << 10)
        results = [ch.send(("learn", bytes(6), "x" * 1000)) for _ in range(10_000)]  # nobody reads b
        assert results[0] and not all(results)
        assert ch.dropped == results.count(False) and ch.sent == results.count(True)
        assert ch.sent < 10_000


def test_announce_floods_garp_and_na_to_every_peer():
    ep = endpoint("off", remote=(PEER, "198.51.100.3"))
    ep.tap.current_addresses = lambda: ["192.0.2.49/28", "2001:db8:d::1/64"]
    ep._announce()
    sent = ep.tx[0].sent
    assert {addr[0] for _, addr in sent} == {PEER, "198.51.100.3"} and len(sent) == 4
    mac = bytes(int(x, 16) for x in ep.cfg.effective_tap_mac.split(":"))
    assert all(d[8 + 6 : 8 + 12] == mac for d, _ in sent)  # Geneve header (8) + Ethernet source
    assert ep.ctl_stats.c["announcements_sent"] == 2
