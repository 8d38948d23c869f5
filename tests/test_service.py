"""Service layer (issue 11): systemd readiness over $NOTIFY_SOCKET, and reload of a running endpoint.

Sans-IO: the endpoint has fake sockets (tests/test_endpoint.py); the root test with a transfer running is
tests/privileged/test_operations.py.
"""

from __future__ import annotations

import os
import socket

import pytest

from test_endpoint import PEER, ack_frame, endpoint
from udpnest.config import ConfigError, build_config
from udpnest.peers import PeerState
from udpnest.service import GRACE, Service, finish_reload, sd_notify
from udpnest.wire.options import parse_packet
from udpnest.wire.vnet import ZERO_VNET_HDR

NEW = "198.51.100.3"
BROADCAST = bytes.fromhex("ffffffffffff") + ack_frame()[6:]


def cfg(remote=(PEER,), nested="fold", **kw):
    return build_config({"id": 7, "local": "198.51.100.1", "remote": list(remote), "nested": nested,
                         "nested_ports": ["6082:vxlan"], **kw})


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def ep_with_clock(nested="fold"):
    ep = endpoint(nested)
    ep.clock = Clock()
    return ep


def capable(ep, key=PEER):
    p = ep.prober.peers[key]
    p.state, p.valid_until = PeerState.CAPABLE, 1e9


def flood(ep) -> list[tuple]:
    ep.tx[0].sent.clear()
    ep._tx_frame(memoryview(ZERO_VNET_HDR + BROADCAST))
    return [addr for _, addr in ep.tx[0].sent]


@pytest.fixture
def notify_socket(tmp_path):
    path = str(tmp_path / "notify")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(2)
    yield path, s
    s.close()


def test_sd_notify_sends_ready_to_the_socket(notify_socket):
    path, s = notify_socket
    assert sd_notify("READY=1\nSTATUS=up", env={"NOTIFY_SOCKET": path})
    assert s.recv(4096) == b"READY=1\nSTATUS=up"


def test_sd_notify_abstract_socket_and_absent_socket():
    name = f"udpnest-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        s.settimeout(2)
        assert sd_notify("READY=1", env={"NOTIFY_SOCKET": "@" + name})
        assert s.recv(100) == b"READY=1"
    assert sd_notify("READY=1", env={}) is False


def test_service_reload_notifies_reloading_then_ready(notify_socket):
    path, s = notify_socket
    ep = ep_with_clock()
    svc = Service(ep, lambda: cfg((PEER, NEW)), env={"NOTIFY_SOCKET": path})
    svc.reload_requested.set()  # what SIGHUP does
    svc.tick()  # what the main loop does next
    assert s.recv(100) == b"RELOADING=1"
    assert s.recv(4096).startswith(b"READY=1\nSTATUS=nested fold, 2 peer(s)")
    assert ep.ctl_stats.c["reloads"] == 1


def test_refused_reload_keeps_the_running_configuration(notify_socket):
    path, s = notify_socket
    ep = ep_with_clock()
    old = ep.cfg
    svc = Service(ep, lambda: cfg((PEER, NEW), tap="other0"), env={"NOTIFY_SOCKET": path})
    assert svc.reload() is False
    assert ep.cfg is old and set(ep.peers) == {PEER}
    assert ep.ctl_stats.c["reload_errors"] == 1
    assert s.recv(100) == b"RELOADING=1"
    assert b"reload refused: config: tap: cannot change on reload" in s.recv(4096)
    with pytest.raises(ConfigError) as e:
        ep.reload(cfg(local="198.51.100.9"))
    assert e.value.field == "local"


def test_reload_adds_a_peer_and_keeps_the_capable_one_folding():
    ep = ep_with_clock()
    capable(ep)
    assert flood(ep) == [(PEER, 6081)]
    assert ep.reload(cfg((PEER, NEW))) == ["remote"]
    assert sorted(flood(ep)) == [(PEER, 6081), (NEW, 6081)]
    assert ep.peer_mode(PEER, ep.clock()) == "fold"  # probe state carried over: no fallback during reload
    assert ep.prober.peers[NEW].state is PeerState.PROBING
    assert ep.peer_mode(NEW, ep.clock()) == "plain"
    assert ep.rx_stats.c["reloads_applied"] == 1  # thread RX: applied at once
    assert ep.rx.sources == sorted([PEER, NEW, "198.51.100.1"])  # the kernel filter lets the new peer in


def test_reload_removes_a_peer_after_the_grace_period():
    ep = ep_with_clock()
    ep.reload(cfg((PEER, NEW)))
    finish_reload(ep, force=True)
    mac = bytes.fromhex("020000000009")
    ep.fdb.learn(mac, NEW, ep.clock())
    ep.reload(cfg((PEER,)))
    # phase 1: a frame the TX thread already routed to NEW still finds it; the FDB forgot NEW's MACs
    assert NEW in ep.peers and NEW in ep.peer_bytes and NEW in ep.prober.peers
    assert ep.fdb.lookup(mac, ep.clock()) is None
    assert not finish_reload(ep)  # not yet
    ep.clock.t += GRACE
    assert finish_reload(ep)
    assert set(ep.peers) == {PEER} and set(ep.peer_bytes) == {PEER} and set(ep.prober.peers) == {PEER}
    assert ep.rx.sources == sorted([PEER, "198.51.100.1"])  # and shuts the removed one out
    assert flood(ep) == [(PEER, 6081)]
    assert ep.peer_mode(NEW, ep.clock()) == "plain"  # a stale key never raises


def test_reload_nested_mode_off_to_fold_and_back():
    ep = ep_with_clock("off")
    assert ep.prober is None and ep.rx_class is None
    frame = memoryview(ZERO_VNET_HDR + ack_frame())
    ep.reload(cfg(nested="fold"))
    assert ep.prober is not None and ep.rx_class == ep.cfg.opt_class
    capable(ep)
    ep.tx[0].sent.clear()
    ep._tx_frame(frame)
    assert len(parse_packet(ep.tx[0].sent[0][0]).folds) == 1
    ep.reload(cfg(nested="hint"))
    assert ep.prober is None and ep.peer_mode(PEER, ep.clock()) == "hint"
    ep.tx[0].sent.clear()
    ep._tx_frame(frame)
    pkt = parse_packet(ep.tx[0].sent[0][0])
    assert not pkt.folds and pkt.gro_hint is not None


def test_reload_without_changes_does_nothing():
    ep = ep_with_clock()
    assert ep.reload(cfg()) == []
    assert ep.ctl_stats.c["reloads"] == 0


def test_reload_of_nested_ports_reaches_the_tx_planner():
    """The workload moves its VXLAN to another port: after the reload udpnest folds it (before: plain payload)."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import Ether
    from scapy.layers.vxlan import VXLAN

    frame = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                  / IP(src="192.0.2.1", dst="192.0.2.18") / UDP(sport=5555, dport=6090) / VXLAN(vni=100)
                  / Ether(src="02:00:00:00:00:03", dst="02:00:00:00:00:04")
                  / IP(src="203.0.113.2", dst="203.0.113.1") / TCP(sport=5201, dport=40000, flags="A"))
    ep = ep_with_clock()
    capable(ep)

    def folds() -> int:
        ep.tx[0].sent.clear()
        ep._tx_frame(memoryview(ZERO_VNET_HDR + frame))
        return len(parse_packet(ep.tx[0].sent[0][0]).folds)

    assert folds() == 0  # 6090 is not a known nested tunnel port
    assert ep.reload(cfg(nested_ports=["6082:vxlan", "6090:vxlan"])) == ["nested_ports"]
    assert folds() == 1


def test_the_rx_process_gets_the_new_configuration_over_its_channel():
    """What the parent sends (a pickled config: its read-only nested_ports mapping included) is what the RX
    child applies: its peer set, option class handling and nested ports."""
    import types

    from udpnest.service import read_message, reload_message, rx_child_messages

    new = cfg((PEER, NEW), nested="hint", nested_ports=["6090:vxlan"])
    assert isinstance(new.nested_ports, types.MappingProxyType)
    kind, back = read_message(reload_message(new))
    assert kind == "reload" and back == new and isinstance(back.nested_ports, types.MappingProxyType)

    parent, child = ep_with_clock(), ep_with_clock()
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        parent.rx_pid, parent.rx_chan = 12345, a  # as after _fork_rx
        child.rx_child, child.rx_chan = True, b
        assert parent.reload(new) == ["remote", "nested", "nested_ports"]
        assert parent.rx.sock.sent[-1] == (b"", ("198.51.100.1", 6081))  # the wake-up datagram
        rx_child_messages(child)
        assert child.cfg == new and set(child.peers) == {PEER, NEW}
        assert child.rx_class == new.opt_class and child.rx_stats.c["reloads_applied"] == 1
        assert 6090 in child.cfg.nested_ports
        parent.rx_pid = None
