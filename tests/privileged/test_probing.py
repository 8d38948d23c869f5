"""Echo probing between real endpoints (issue 4): fold only towards peers that answer, fall back otherwise."""

from __future__ import annotations

import json
import time

import nestlab
import pytest

from udpnest.lab import topology

pytestmark = pytest.mark.root

INTERVAL = 0.5
PROBE = ("--probe-interval", str(INTERVAL))
STARTUP_SLACK = 0.5  # status polling, scheduling on 2 busy cores
LEGACY = ("unknown_critical_option",)  # what a nested-off endpoint makes of our echo probes


def test_both_fold_within_two_intervals(lab, endpoints):
    eps = endpoints(lab).pair("fold", extra=PROBE)  # returns once both endpoints are up
    elapsed = nestlab.wait_modes(eps, "fold", timeout=10)
    assert elapsed <= 2 * INTERVAL + STARTUP_SLACK, f"both peers folding only after {elapsed:.2f}s"
    for ep in eps:
        p = ep.peer()
        assert p["state"] == "capable", p
    # at least one side got an answer to its own probe (the other may have learnt it from the peer's echo)
    assert any(ep.peer()["replies_ok"] >= 1 for ep in eps)
    # A probe sent before the peer was up goes unanswered: that counts as a miss and may flip the side once
    # to fallback until the early probe that the peer's own echo request triggers is answered
    # (peers.Prober.on_request; a request alone never changes the state).  After two intervals that is over.
    time.sleep(2 * INTERVAL)
    fallbacks = [ep.peer()["fallbacks"] for ep in eps]
    time.sleep(3 * INTERVAL)
    for ep, fb in zip(eps, fallbacks, strict=True):  # and it stays that way
        p = ep.peer()
        assert p["mode"] == "fold" and p["fallbacks"] == fb, p
        assert p["replies_ok"] >= 2 and p["rtt_us"] is not None, p


def test_fold_towards_legacy_peer_falls_back(lab_v4, endpoints):
    """udpnest (fold) <-> udpnest (nested off, a legacy endpoint): A never folds, traffic flows."""
    lab = lab_v4
    a, b = endpoints(lab).pair("fold", "off", extra=PROBE)
    time.sleep(3 * INTERVAL)
    p = a.peer()
    assert p["mode"] == "plain" and p["state"] == "fallback", p
    assert p["probes_sent"] >= 2 and p["replies_ok"] == 0, p
    # B treated the echo requests as what they are to a legacy endpoint: unknown critical options
    drops_b = b.settled_status(ignore_drops=LEGACY)["drops"]
    assert drops_b.get("unknown_critical_option", 0) >= 1, drops_b

    sent, got = nestlab.tcp_transfer(lab.spec, 256 * nestlab.MIB, port=5311)
    assert got["sha256"] == sent["sha256"] and got["bytes"] == sent["bytes"]
    assert nestlab.ping(lab.spec).returncode == 0
    sa, sb = a.settled_status(), b.settled_status(ignore_drops=LEGACY)
    assert sa["tx"].get("mode_fold", 0) == 0, sa["tx"]
    assert sa["tx"].get("mode_plain", 0) > 0, sa["tx"]
    assert sb["rx"].get("kind_fold", 0) == 0, sb["rx"]
    assert set(sb["drops"]) <= {"unknown_critical_option", "tap_write"}, sb["drops"]
    assert a.peer()["mode"] == "plain"


def _tap_mac(ns: str, ifname: str) -> str:
    from pyroute2 import IPRoute

    with IPRoute(netns=ns) as ip:
        return ip.get_links(topology._index(ip, ifname))[0].get("address")


def test_peer_turns_legacy_mid_transfer(lab_v4, endpoints):
    """B restarts with folding off during a 1 GiB transfer: A falls back to plain, the transfer completes."""
    lab = lab_v4
    spec = lab.spec
    eps = endpoints(lab)
    a, b = eps.pair("fold", extra=PROBE)
    nestlab.wait_modes([a, b], "fold", timeout=5)
    # same TAP MAC after the restart, or host A's neighbour entry for B's TAP would point into the void
    mac_b = _tap_mac(b.plan.netns, b.plan.tap_ifname)

    with nestlab.TcpTransfer(spec, None, port=5312, timeout=180) as t:
        deadline = time.monotonic() + 60
        while a.status()["tx"].get("mode_fold", 0) < 2000:  # ~100 MB folded
            assert t.running() and time.monotonic() < deadline, "transfer not progressing"
            time.sleep(0.05)
        folded_before = a.status()["tx"]["mode_fold"]
        b.stop(sig_kill=True)  # a crash: its RX process notices the orphaning by itself
        t_kill = time.monotonic()
        b.wait_tap_gone(timeout=5)
        b2 = eps.one("b", "off", extra=PROBE + ("--tap-mac", mac_b))
        b2.wait_up()
        topology.set_mode(spec, "udpnest")  # the routes into B's TAP went away with the old TAP
        outage = time.monotonic() - t_kill
        nestlab.wait_modes([a], "plain", timeout=2 * INTERVAL + STARTUP_SLACK)
        assert t.running(), "transfer ended during the outage"
        sent, got = t.wait()
    assert got["sha256"] == sent["sha256"] and got["bytes"] == sent["bytes"] > 0
    assert outage < 5, f"B was away for {outage:.1f}s"

    sa = a.settled_status()
    p = next(iter(sa["peers"].values()))
    assert p["mode"] == "plain" and p["state"] == "fallback" and p["fallbacks"] >= 1, p
    assert sa["tx"].get("mode_plain", 0) > 0
    # after the fallback A stopped folding: the restarted B received no folded frame it could use
    sb = b2.settled_status(ignore_drops=LEGACY)
    assert sb["rx"].get("kind_fold", 0) == 0 and sb["rx"].get("kind_plain", 0) > 0, sb["rx"]
    assert folded_before > 0
    assert a.running() and b2.running()


def test_fold_towards_a_scapy_legacy_geneve_peer(lab_v4, endpoints, tmp_path):
    """udpnest (fold) <-> a scapy Geneve endpoint that drops critical options as RFC 8926 requires: the echo
    probes are dropped unanswered, udpnest stays in fallback, and traffic flows as plain Geneve."""
    import subprocess
    import sys
    from pathlib import Path

    from udpnest.lab import bench

    lab = lab_v4
    plan_b = topology.udpnest_plans(lab.spec)["b"]
    stats_path = tmp_path / "legacy.json"
    script = Path(__file__).with_name("legacy_geneve.py")
    legacy = subprocess.Popen(
        bench.ns_argv(plan_b.netns, [sys.executable, str(script), plan_b.tap_ifname, plan_b.underlay_local,
                                     plan_b.underlay_remote, str(plan_b.geneve_port), "7", str(stats_path)]),
        stdout=subprocess.PIPE, text=True, env=bench._pythonpath_env())
    try:
        assert legacy.stdout.readline().strip() == "ready"
        topology.plug_udpnest(plan_b)
        a = endpoints(lab).one("a", "fold", extra=PROBE)
        a.wait_up()
        topology.set_mode(lab.spec, "udpnest")
        time.sleep(4 * INTERVAL)
        p = a.peer()
        assert p["mode"] == "plain" and p["state"] == "fallback", p
        assert p["probes_sent"] >= 3 and p["replies_ok"] == 0, p
        sent, got = nestlab.tcp_transfer(lab.spec, 4 * nestlab.MIB, port=5313)
        assert got["sha256"] == sent["sha256"] and got["bytes"] == sent["bytes"] == 4 * nestlab.MIB
        assert a.settled_status()["tx"].get("mode_fold", 0) == 0
    finally:
        legacy.terminate()
        legacy.wait(10)
    stats = json.loads(stats_path.read_text())
    assert stats["critical_dropped"] >= p["probes_sent"], stats  # every probe hit a legacy wall
    assert stats["to_tap"] > 1000 and stats["to_peer"] > 100, stats
