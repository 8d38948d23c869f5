"""Issue 9's robustness campaign against running endpoints: floods, junk, forged echoes, loss, restarts.

Non-slow (a few minutes on an idle 2-core machine):
* a non-peer floods >= 60 kpps of junk during a TCP transfer: dropped in the kernel (socket filter), counted
  as ``rx.socket_drops``, throughput >= 0.7x of the same transfer without the flood;
* >= 10^5 junk / truncated / mutated / forged datagrams from the peer's address during a transfer: sha256
  equal, every datagram counted under a reason, RSS bounded;
* forged echo requests (the blackhole attack), forged echo replies and echo floods from a non-peer: no reply
  to the non-peer, no mode change, everything counted.
Slow: 1 % random underlay loss (nftables ``numgen random``) during a fold transfer; kill -9 and restart of
an endpoint mid-transfer (with the default TAP MAC), and a restart as a legacy peer.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import nestlab
import pytest

from udpnest.lab import bench, topology
from udpnest.wire.geneve import build_geneve
from udpnest.wire.options import CAP_FOLD, Echo, build_echo

pytestmark = pytest.mark.root

FLOODER = Path(__file__).with_name("flooder.py")
INTERVAL = 0.5
PROBE = ("--probe-interval", str(INTERVAL))
LEGACY = ("unknown_critical_option",)


# ---------------------------------------------------------------------------------------------------------
# helpers


def stranger(spec) -> tuple[str, int]:
    return ("198.51.100.9", 24) if spec.underlay_family == 4 else ("2001:db8:100::9", 64)


def add_address(ns: str, address: str, prefixlen: int) -> None:
    from pyroute2 import IPRoute

    with IPRoute(netns=ns) as ip:
        topology._add_addr(ip, topology._index(ip, topology.IF_UNDERLAY), address, prefixlen)


def write_payloads(tmp: Path, pkts: list[bytes]) -> Path:
    path = tmp / f"payloads-{uuid.uuid4().hex[:6]}.bin"
    path.write_bytes(b"".join(len(p).to_bytes(2, "big") + p for p in pkts))
    return path


class Flood:
    """flooder.py in a namespace: ``pps`` datagrams/s for ``seconds`` or ``count`` datagrams."""

    def __init__(self, ns: str, src: str, dst: str, port: int, pkts: list[bytes], tmp: Path, *, pps: float,
                 seconds: float | None = None, count: int | None = None, nice: int = 0) -> None:
        self.path = write_payloads(tmp, pkts)
        dur = f"count:{count}" if count is not None else str(seconds)
        argv = [sys.executable, str(FLOODER), src, dst, str(port), str(pps), dur, str(self.path)]
        if nice:
            argv = ["nice", "-n", str(nice), *argv]
        self.proc = subprocess.Popen(
            bench.ns_argv(ns, argv),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)

    def result(self, timeout: float = 120.0) -> dict:
        out, err = self.proc.communicate(timeout=timeout)
        os.unlink(self.path)
        assert self.proc.returncode == 0, err
        return json.loads(out.strip().splitlines()[-1])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def rss_kb(pid: int) -> int:
    """VmRSS of ``pid`` and its children (the RX process)."""
    total = 0
    pids = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids += [int(x) for x in f.read().split()]
    except OSError:
        pass
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def counted(st: dict) -> int:
    """Every place a datagram from outside can end up without reaching the TAP."""
    rx, ctl = st["rx"], st["control"]
    return (sum(st["drops"].values()) + rx.get("socket_drops", 0) + rx.get("echo_forward_limited", 0)
            + rx.get("ipc_dropped", 0) + sum(v for k, v in ctl.items() if k.startswith("echo_reply_")
                                              and k != "echo_reply_accepted"))


def echo_pkt(*, reply: bool, nonce: int, caps: int = CAP_FOLD) -> bytes:
    return build_geneve(7, 0x6558, build_echo(Echo(nonce, 0, 3, 252, caps), reply=reply), oam=True)


def transfer_seconds(spec, total: int, port: int) -> float:
    with nestlab.TcpTransfer(spec, total, port=port, timeout=180) as t:
        sent, got = t.wait()
    assert got["sha256"] == sent["sha256"] and got["bytes"] == sent["bytes"] == total
    return got["seconds"]


# ---------------------------------------------------------------------------------------------------------
# non-peer flood: dropped in the kernel


@pytest.mark.parametrize("rate", [60_000])
def test_non_peer_flood_is_dropped_in_the_kernel(lab, endpoints, rate):
    """A host that is not a peer (no spoofing) floods B's Geneve port during a transfer to B.  Main: the
    junk filled the socket buffer first (309 -> 73 Mbit/s at 60 kpps, drops invisible in status)."""
    spec = lab.spec
    a, b = endpoints(lab).pair("off")
    src, plen = stranger(spec)
    add_address(spec.ns("ha"), src, plen)
    total = 128 * nestlab.MIB
    rng = random.Random(9)
    junk = [rng.randbytes(rng.choice([40, 200, 600, 1200])) for _ in range(64)]
    ratios: list[float] = []
    rates: list[int] = []
    for attempt in range(3):  # the machine is shared: retries of the pair of measurements
        base = transfer_seconds(spec, total, 5401 + 2 * attempt)
        before = b.settled_status()
        # niced: on a 2-core machine the flooder (and the softirq work its packets cause) would otherwise take
        # CPU time from the dataplane, which is not what this test is about (the socket queue is)
        flood = Flood(spec.ns("ha"), src, b.plan.underlay_local, topology.GENEVE_PORT, junk, lab.tmp, pps=rate,
                      seconds=120, nice=8)
        try:
            time.sleep(0.5)
            flooded = transfer_seconds(spec, total, 5402 + 2 * attempt)
        finally:
            flood.proc.terminate()
        res = flood.result()
        after = b.settled_status()
        rates.append(round(res["sent"] / res["seconds"]))
        kdrops = after["rx"].get("socket_drops", 0) - before["rx"].get("socket_drops", 0)
        assert kdrops >= 0.95 * res["sent"], (kdrops, res)
        assert after["drops"].get("no_peer", 0) == before["drops"].get("no_peer", 0), after["drops"]
        assert after["underlay"]["source_filter"] is True
        if rates[-1] < 0.9 * rate:
            continue  # the shared machine did not let the flooder reach the rate: this attempt says nothing
        ratios.append(base / flooded)
        if ratios[-1] >= 0.7:
            break
    assert ratios, f"the flooder never reached {rate} pps (got {rates}): machine too busy"
    assert max(ratios) >= 0.7, f"throughput with the flood / without: {ratios} (flood pps {rates})"
    assert a.running() and b.running()


# ---------------------------------------------------------------------------------------------------------
# junk, mutated and forged datagrams from the peer's address


def _valid_plain(rng: random.Random) -> bytes:
    """A plain Geneve packet carrying an Ethernet/IPv4/TCP frame (to be mutated)."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    inner = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="192.0.2.1", dst="192.0.2.2")
                  / TCP(sport=1, dport=2, seq=rng.getrandbits(32)) / rng.randbytes(rng.choice([0, 64, 900])))
    return build_geneve(7, 0x6558, b"") + inner


def _mutate(rng: random.Random, p: bytes) -> bytes:
    b = bytearray(p)
    op = rng.randrange(3)
    if op == 0:
        return bytes(b[: rng.randrange(0, len(b))])  # truncated
    if op == 1:
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(0, min(len(b), 60))  # headers
            b[i] ^= 1 << rng.randrange(8)
        return bytes(b)
    return bytes(b) + rng.randbytes(rng.randint(1, 20))  # padded


def junk_set(max_dg: int, seed: int = 99) -> tuple[list[bytes], Counter]:
    """Datagrams that the receive path must drop (each predicted reason) plus forged echo replies."""
    from test_dataplane import _crafted_peer_junk, _predicted_reasons

    rng = random.Random(seed)
    pkts = [p for p, _ in _crafted_peer_junk()]
    pkts += [rng.randbytes(rng.choice([1, 7, 8, 9, 16, 60, 200, 900, 1400])) for _ in range(200)]
    pkts += [_mutate(rng, _valid_plain(rng)) for _ in range(300)]
    # keep only what today's receive path drops (a mutation that still makes a valid frame is not junk)
    kept = [p for p in pkts if sum(_predicted_reasons([p], max_dg).values()) == 1]
    kept += [echo_pkt(reply=True, nonce=rng.getrandbits(64)) for _ in range(20)]  # forged replies
    return kept, _predicted_reasons(kept[:-20], max_dg)


def test_junk_flood_from_the_peer_during_a_transfer(lab_v4, endpoints):
    lab = lab_v4
    spec = lab.spec
    a, b = endpoints(lab).pair("fold", extra=PROBE)
    nestlab.wait_modes([a, b], "fold", timeout=5)
    max_dg = 1500 - 20 - 8
    pkts, _ = junk_set(max_dg)
    count = 100_000
    before = b.settled_status()
    rss0 = rss_kb(before["pid"])
    with nestlab.TcpTransfer(spec, None, port=5410, timeout=240) as t:
        time.sleep(0.3)
        flood = Flood(spec.ns("ha"), b.plan.underlay_remote, b.plan.underlay_local, topology.GENEVE_PORT, pkts,
                      lab.tmp, pps=25_000, count=count)
        res = flood.result(timeout=120)
        still_running = t.running()
        sent, got = t.wait()
    assert got["sha256"] == sent["sha256"] and got["bytes"] == sent["bytes"]
    assert res["sent"] == count
    assert still_running, "the transfer ended before the flood did"
    assert a.running() and b.running(), b.log_text()[-3000:]
    after = b.settled_status(ignore_drops=())
    n = counted(after) - counted(before)
    assert n >= count, f"{n} of {count} junk datagrams counted: {after['drops']} {after['rx']}"
    assert n <= count + 100, f"legitimate traffic dropped too: {after['drops']}"
    assert rss_kb(after["pid"]) - rss0 < 64 * 1024, "RSS grew by more than 64 MB"
    assert b.peer()["mode"] == "fold" and a.peer()["mode"] == "fold"
    assert nestlab.ping(spec).returncode == 0


# ---------------------------------------------------------------------------------------------------------
# echo abuse


def _sampler(ep, seconds: float) -> list[str]:
    modes = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        modes.append(ep.peer()["mode"])
        time.sleep(0.05)
    return modes


def test_echo_abuse(lab_v4, endpoints):
    """A folds, B is legacy.  Forged CAP_FOLD requests with B's address (main: kept A folding, a blackhole),
    forged replies with B's address, and an echo flood from a non-peer: A stays plain, answers only B's
    address (and only at the reply rate), never the non-peer, and counts everything."""
    lab = lab_v4
    spec = lab.spec
    a, b = endpoints(lab).pair("fold", "off", extra=PROBE)
    time.sleep(3 * INTERVAL)
    assert a.peer()["mode"] == "plain"
    src, plen = stranger(spec)
    add_address(spec.ns("hb"), src, plen)
    rng = random.Random(5)
    before = a.settled_status(ignore_drops=LEGACY)
    # forged requests and replies from B's address, 20/s for 4 s, while we watch A's mode
    forged = [echo_pkt(reply=False, nonce=rng.getrandbits(64)) for _ in range(10)] + \
             [echo_pkt(reply=True, nonce=rng.getrandbits(64)) for _ in range(10)]
    flood = Flood(spec.ns("hb"), a.plan.underlay_remote, a.plan.underlay_local, topology.GENEVE_PORT, forged,
                  lab.tmp, pps=20, seconds=4)
    modes = _sampler(a, 4.0)
    res = flood.result()
    assert set(modes) == {"plain"}, Counter(modes)
    assert nestlab.ping(spec, count=3).returncode == 0
    # an echo-request flood from a non-peer: dropped in the kernel, never reaches the prober, never answered
    # (replies only ever go to a configured peer's address and port)
    reqs = [echo_pkt(reply=False, nonce=rng.getrandbits(64)) for _ in range(16)]
    flood2 = Flood(spec.ns("hb"), src, a.plan.underlay_local, topology.GENEVE_PORT, reqs, lab.tmp, pps=20_000,
                   count=20_000)
    res2 = flood2.result()
    after = a.settled_status(ignore_drops=LEGACY)
    p = a.peer()
    assert p["mode"] == "plain" and p["replies_ok"] == 0, p
    d_req = after["control"].get("echo_requests_received", 0) - before["control"].get("echo_requests_received", 0)
    assert d_req <= res["sent"], "requests from the non-peer reached the prober"
    d_kernel = after["rx"].get("socket_drops", 0) - before["rx"].get("socket_drops", 0)
    assert d_kernel >= res2["sent"], (d_kernel, res2)
    d_unknown = (after["control"].get("echo_reply_unknown_nonce", 0)
                 - before["control"].get("echo_reply_unknown_nonce", 0))
    assert d_unknown >= 0.8 * res["sent"] / 2, after["control"]
    replies = after["control"].get("echo_replies_sent", 0) - before["control"].get("echo_replies_sent", 0)
    assert replies <= d_req <= res["sent"] / 2 + 1  # only B's address was ever answered


# ---------------------------------------------------------------------------------------------------------
# 1 % random underlay loss (nftables numgen random)


def _nft(ns: str, script: str) -> str:
    res = subprocess.run(bench.ns_argv(ns, ["nft", "-f", "-"]), input=script, text=True, capture_output=True,
                         timeout=20)
    assert res.returncode == 0, res.stderr
    return res.stdout


def _nft_counter(ns: str) -> int:
    res = subprocess.run(bench.ns_argv(ns, ["nft", "-j", "list", "table", "inet", "udpnest_loss"]),
                         text=True, capture_output=True, timeout=20)
    for item in json.loads(res.stdout)["nftables"]:
        rule = item.get("rule")
        if rule:
            for e in rule["expr"]:
                if "counter" in e:
                    return e["counter"]["packets"]
    return 0


@pytest.mark.parametrize("size_mib", [256, pytest.param(1024, marks=pytest.mark.slow)])
def test_one_percent_underlay_loss_fold(lab_v4, endpoints, size_mib):
    if shutil.which("nft") is None:
        pytest.skip("nft not installed (scripts/install-deps.sh installs nftables)")
    lab = lab_v4
    spec = lab.spec
    a, b = endpoints(lab).pair("fold", extra=PROBE)
    nestlab.wait_modes([a, b], "fold", timeout=5)
    rules = (f"table inet udpnest_loss {{\n chain pre {{\n  type filter hook prerouting priority -300; policy accept;\n"
             f"  udp dport {topology.GENEVE_PORT} numgen random mod 100 < 1 counter drop\n }}\n}}\n")
    for ns in (spec.ns("ha"), spec.ns("hb")):
        _nft(ns, rules)
    try:
        total = size_mib * nestlab.MIB
        with nestlab.TcpTransfer(spec, total, port=5420, timeout=600) as t:
            sent, got = t.wait()
        lost = _nft_counter(spec.ns("hb")) + _nft_counter(spec.ns("ha"))
    finally:
        for ns in (spec.ns("ha"), spec.ns("hb")):
            _nft(ns, "delete table inet udpnest_loss\n")
    assert got["sha256"] == sent["sha256"] and got["bytes"] == sent["bytes"] == total
    assert lost > 0, "nftables dropped nothing"
    sb = b.settled_status()
    assert sb["rx"].get("kind_fold", 0) > 0, sb["rx"]
    # echo requests queued behind a stalled main loop (busy machine) may meet an empty reply bucket
    assert set(sb["drops"]) <= {"tap_write", "rate_limited"}, sb["drops"]
    # probes are lost too: a peer may flap to plain for a moment, but it comes back
    nestlab.wait_modes([a, b], "fold", timeout=5)


# ---------------------------------------------------------------------------------------------------------
# kill -9 and restart mid-transfer (default TAP MAC), and restart as a legacy peer


def _tap_mac(ns: str, ifname: str) -> str:
    from pyroute2 import IPRoute

    with IPRoute(netns=ns) as ip:
        return ip.get_links(topology._index(ip, ifname))[0].get("address")


@pytest.mark.parametrize("restart_as", ["fold", "off"])
def test_kill9_and_restart_mid_transfer(lab_v4, endpoints, restart_as):
    """B is killed with SIGKILL during a fold transfer and restarted with the same flags (no --tap-mac: the
    derived default MAC is the same) or as a legacy peer.  Main: a random TAP MAC cost 72-75 s of outage."""
    lab = lab_v4
    spec = lab.spec
    eps = endpoints(lab)
    a, b = eps.pair("fold", extra=PROBE)
    nestlab.wait_modes([a, b], "fold", timeout=5)
    mac_b = _tap_mac(b.plan.netns, b.plan.tap_ifname)
    with nestlab.TcpTransfer(spec, None, port=5430 + (restart_as == "off"), timeout=240) as t:
        deadline = time.monotonic() + 60
        while a.status()["tx"].get("mode_fold", 0) < 2000:
            assert t.running() and time.monotonic() < deadline, "transfer not progressing"
            time.sleep(0.05)
        b.stop(sig_kill=True)
        t_kill = time.monotonic()
        b.wait_tap_gone(timeout=5)
        b2 = eps.one("b", restart_as, extra=PROBE)
        b2.wait_up()
        topology.set_mode(spec, "udpnest")  # the routes into B's TAP went away with the old TAP
        outage = time.monotonic() - t_kill
        assert _tap_mac(b2.plan.netns, b2.plan.tap_ifname) == mac_b, "the default TAP MAC changed"
        if restart_as == "off":
            t_up = time.monotonic()
            nestlab.wait_modes([a], "plain", timeout=10)
            assert time.monotonic() - t_up <= 2 * INTERVAL + 0.5, "fallback took longer than 2 probe intervals"
        else:
            nestlab.wait_modes([a, b2], "fold", timeout=10)
        assert t.running(), "transfer ended during the outage"
        sent, got = t.wait()
    assert got["sha256"] == sent["sha256"] and got["bytes"] == sent["bytes"] > 0
    # the restart itself (interpreter, native core, TAP, lab routes) takes seconds on a busy machine; a new TAP
    # MAC cost 72-75 s on top until the far workload's neighbour entry failed
    assert outage < 15, f"B was away for {outage:.1f}s"
    assert a.running() and b2.running()
