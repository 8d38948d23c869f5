"""Operating udpnest like a daemon (issue 11), against real endpoints in the lab.

* Metrics: scrape ``--metrics`` of a running endpoint, parse with prometheus_client's parser, provoke drops
  (junk datagrams, a datagram from an unknown address) and see exactly those reason counters move; counters
  move with traffic.
* Service: ``READY=1`` on a fake ``$NOTIFY_SOCKET``; SIGHUP with a TCP transfer running adds a peer (sha256
  equal, TAP ifindex unchanged, the new peer answered after the reload and not before); SIGTERM stops it
  cleanly (``STOPPING=1``, TAP gone).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nestlab
import pytest
from prometheus_client.parser import text_string_to_metric_families

from udpnest.lab import bench, topology

pytestmark = pytest.mark.root

METRICS = "127.0.0.1:9108"
NEW_PEER = "198.51.100.3"  # a second address on host B's underlay interface: the peer added by the reload
# the default TX path (socket): these tests are about operating the endpoint, not about the kernel TX path
# (which also changes sysctls; test_dataplane covers it)
PROBE = ("--probe-interval", "0.5", "--tx-path", "socket")


def scrape(ns: str, listen: str = METRICS) -> dict[str, dict[tuple, float]]:
    code = f"import urllib.request; print(urllib.request.urlopen('http://{listen}/metrics', timeout=5).read().decode())"
    res = subprocess.run(bench.ns_argv(ns, [sys.executable, "-c", code]), capture_output=True, text=True,
                         timeout=30, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(res.stdout):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def drops(m, src, reason) -> float:
    return m[f"udpnest_{src}_drops_total"][(("reason", reason),)]


class Notify:
    """A fake systemd notify socket (a pathname socket: reachable from every network namespace)."""

    def __init__(self, path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        os.chmod(self.path, 0o666)

    def expect(self, prefix: bytes, timeout: float = 15.0) -> bytes:
        """The next message starting with ``prefix`` (others, e.g. STATUS updates, are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                msg = self.sock.recv(4096)
            except TimeoutError:
                raise AssertionError(f"no {prefix!r} on NOTIFY_SOCKET within {timeout}s") from None
            if msg.startswith(prefix):
                return msg

    def close(self) -> None:
        self.sock.close()


def start_a(lab, extra=(), env=None, config=None) -> nestlab.Endpoint:
    """Endpoint A like nestlab.start_endpoint, with an environment (NOTIFY_SOCKET) and a --config file."""
    spec = lab.spec
    plan = topology.udpnest_plans(spec)["a"]
    from udpnest import endpoint

    argv = endpoint.lab_argv(plan, nested="fold")
    if config is not None:  # peers and nested mode come from the file (so that SIGHUP can change them)
        for flag in ("--remote", "--nested"):
            i = argv.index(flag)
            del argv[i:i + 2]
        argv += ["--config", str(config)]
    argv += list(extra)
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:  # nestlab.Endpoint takes the environment from bench._pythonpath_env(), i.e. os.environ
        return nestlab.Endpoint(plan, argv, lab.tmp / f"endpoint-{spec.prefix}-a.log")
    finally:
        os.environ.clear()
        os.environ.update(saved)


def up_pair(lab, endpoints, a: nestlab.Endpoint) -> nestlab.Endpoint:
    eps = endpoints(lab)
    eps.started.append(a)
    b = eps.one("b", "fold", extra=PROBE)
    for ep in (a, b):
        ep.wait_up()
    topology.set_mode(lab.spec, "udpnest")
    nestlab.wait_modes([a, b], "fold", timeout=10)
    return b


def test_dataplane_threads_get_the_nice_setting(lab_v4, endpoints):
    """``--nice`` reaches the TX thread and the RX process and nothing else; the default is -10."""
    from udpnest.io.sched import thread_nice

    lab = lab_v4
    a = start_a(lab, extra=(*PROBE, "--nice", "-7"))
    b = up_pair(lab, endpoints, a)
    sa, sb = a.status(), b.status()
    assert sa["nice"] == {"setting": -7, "tx": -7, "rx": -7}
    assert sb["nice"] == {"setting": -10, "tx": -10, "rx": -10}
    for st in (sa, sb):  # the main thread (control socket, probes) keeps the nice it was started with
        assert thread_nice(st["pid"]) == os.getpriority(os.PRIO_PROCESS, 0)
    sent, got = nestlab.tcp_transfer(lab.spec, 4 * nestlab.MIB, port=5330)  # still forwards
    assert got["sha256"] == sent["sha256"]


def test_metrics_scrape_counts_drops_and_traffic(lab_v4, endpoints):
    lab = lab_v4
    a = start_a(lab, extra=(*PROBE, "--metrics", METRICS))
    b = up_pair(lab, endpoints, a)
    plan_a = a.plan
    m0 = scrape(plan_a.netns)
    assert m0["udpnest_up"][()] == 1
    assert m0["udpnest_build_info"]
    assert m0["udpnest_peer_mode"][(("mode", "fold"), ("peer", f"{plan_a.underlay_remote}:6081"))] == 1
    assert drops(m0, "rx", "truncated_geneve") == 0 and drops(m0, "rx", "no_peer") == 0

    # junk from the peer's address: 5 truncated Geneve headers, 3 with version 1 (bad_geneve_version)
    junk = [b"junk"] * 5 + [bytes([0x40, 0, 0x65, 0x58, 0, 0, 7, 0])] * 3
    nestlab.send_junk(b.plan.netns, b.plan.underlay_local, plan_a.underlay_local, plan_a.geneve_port, junk, lab.tmp)
    sent, got = nestlab.tcp_transfer(lab.spec, 32 * nestlab.MIB, port=5331)
    assert got["sha256"] == sent["sha256"]
    deadline = time.monotonic() + 10  # the RX process reports its counters to the main process periodically
    while True:
        m1 = scrape(plan_a.netns)
        if drops(m1, "rx", "truncated_geneve") >= 5 and drops(m1, "rx", "bad_geneve_version") >= 3:
            break
        assert time.monotonic() < deadline, m1["udpnest_rx_drops_total"]
        time.sleep(0.2)
    assert drops(m1, "rx", "truncated_geneve") == 5
    assert drops(m1, "rx", "bad_geneve_version") == 3
    moved = {k for k, v in m1["udpnest_rx_drops_total"].items() if v != m0["udpnest_rx_drops_total"][k]}
    assert moved <= {(("reason", "truncated_geneve"),), (("reason", "bad_geneve_version"),),
                     (("reason", "tap_write"),)}, moved
    for name in ("udpnest_tx_bytes_total", "udpnest_tx_datagrams_total", "udpnest_rx_bytes_total",
                 "udpnest_rx_reads_total"):
        assert m1[name][()] > m0[name][()], name
    # 32 MiB from A's workload: at least that many bytes left A's TAP side... on B: RX super-packets merged
    assert m1["udpnest_tx_frames_by_mode_total"][(("mode", "fold"),)] > 0
    assert m1["udpnest_tx_segments_per_super_packet_count"][()] > m0["udpnest_tx_segments_per_super_packet_count"][()]
    assert m1["udpnest_tx_segments_per_super_packet_sum"][()] == m1["udpnest_tx_datagrams_total"][()]


_NEW_PEER = r"""
import json, socket, sys, time
from udpnest.wire.geneve import build_geneve
from udpnest.wire.options import CAP_FOLD, Echo, build_echo, parse_packet
src, dst, port, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, port))
nonce = 0x5eed0000 + int(time.time()) % 1000
s.sendto(build_geneve(7, 0x6558, build_echo(Echo(nonce, 1, 3, 252, CAP_FOLD), reply=False), oam=True), (dst, port))
deadline = time.monotonic() + seconds
out = {"reply": False, "requests": 0}
while time.monotonic() < deadline:
    s.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        d = s.recv(2048)
    except TimeoutError:
        break
    p = parse_packet(d)
    if p.echo_request is not None:
        out["requests"] += 1  # the endpoint probes us: it knows us as a peer
    if p.echo_reply is not None and p.echo_reply.nonce == nonce:
        out["reply"] = True
print(json.dumps(out), flush=True)
"""


def new_peer_echo(lab, seconds: float) -> dict:
    """From NEW_PEER:6081 on host B: one echo request to A, then listen ``seconds``."""
    plans = topology.udpnest_plans(lab.spec)
    res = subprocess.run(
        bench.ns_argv(plans["b"].netns, [sys.executable, "-c", _NEW_PEER, NEW_PEER, plans["a"].underlay_local,
                                         str(plans["a"].geneve_port), str(seconds)]),
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, env=bench._pythonpath_env())
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _ifindex(ns: str, ifname: str) -> int:
    from pyroute2 import IPRoute

    with IPRoute(netns=ns) as ip:
        return topology._index(ip, ifname)


def _write_config(path, remotes, nested: str = "fold") -> None:
    path.write_text("remote = [" + ", ".join(f'"{r}"' for r in remotes) + f']\nnested = "{nested}"\n')


def _reload(a, notify: Notify, n: int) -> None:
    """SIGHUP; wait for RELOADING/READY and for the RX process to have applied reload number ``n``."""
    a.proc.send_signal(signal.SIGHUP)
    notify.expect(b"RELOADING=1")
    ready = notify.expect(b"READY=1")
    assert b"refused" not in ready, ready
    deadline = time.monotonic() + 10
    while a.status()["rx"].get("reloads_applied", 0) < n:  # the RX process has the new configuration
        assert time.monotonic() < deadline, a.status()
        time.sleep(0.05)


def test_ready_reload_under_traffic_and_clean_stop(lab_v4, endpoints):
    lab = lab_v4
    spec = lab.spec
    plans = topology.udpnest_plans(spec)
    from pyroute2 import IPRoute

    with IPRoute(netns=plans["b"].netns) as ip:  # the new peer's address, on host B's underlay
        idx = topology._index(ip, plans["b"].underlay_ifname)
        topology._add_addr(ip, idx, NEW_PEER, 24)
    notify = Notify(lab.tmp / "notify.sock")
    conf = lab.tmp / "a.toml"
    _write_config(conf, [plans["b"].underlay_local])
    try:
        a = start_a(lab, extra=PROBE, env={"NOTIFY_SOCKET": notify.path}, config=conf)
        ready = notify.expect(b"READY=1")
        assert b"MAINPID=" in ready
        up_pair(lab, endpoints, a)
        tap_index = _ifindex(a.plan.netns, a.plan.tap_ifname)

        before = new_peer_echo(lab, 1.0)  # not a peer yet: dropped, no reply, no probes
        assert before == {"reply": False, "requests": 0}, before
        st = a.status()  # dropped by the kernel source filter (io/bpf.py), or without one counted as no_peer
        assert st["underlay"].get("source_filter") or st["drops"].get("no_peer", 0) >= 1, st

        with nestlab.TcpTransfer(spec, None, port=5332) as t:
            time.sleep(0.5)
            assert t.running()
            # 1. a new peer
            _write_config(conf, [plans["b"].underlay_local, NEW_PEER])
            _reload(a, notify, 1)
            hint_before = a.status()["tx"].get("mode_hint", 0)
            # 2. nested mode fold -> hint, still during the transfer
            _write_config(conf, [plans["b"].underlay_local, NEW_PEER], nested="hint")
            _reload(a, notify, 2)
            during = t.running()
            time.sleep(0.3)
            hint_during = a.status()["tx"].get("mode_hint", 0)
            # 3. back to fold: probing starts again; folding resumes with the first echo reply
            _write_config(conf, [plans["b"].underlay_local, NEW_PEER])
            _reload(a, notify, 3)
            after = new_peer_echo(lab, 1.5)
            sent, got = t.wait()
        assert during, "the transfer had finished before the reloads"
        assert hint_during > hint_before == 0, (hint_before, hint_during)  # A sent in hint mode after reload 2
        assert got["sha256"] == sent["sha256"] and got["bytes"] == sent["bytes"] > 0
        assert after["reply"], after  # the new peer is reachable: the RX process and the prober know it
        assert after["requests"] >= 1, after  # and A probes it
        assert _ifindex(a.plan.netns, a.plan.tap_ifname) == tap_index  # the TAP was not re-created
        st = a.status()
        assert st["control"]["reloads"] == 3 and not st["control"].get("reload_errors")
        assert st["peers"][f"{plans['b'].underlay_local}:6081"]["mode"] == "fold"  # folding again
        assert set(st["peers"]) == {f"{plans['b'].underlay_local}:6081", f"{NEW_PEER}:6081"}

        # clean stop
        a.proc.send_signal(signal.SIGTERM)
        notify.expect(b"STOPPING=1")
        assert a.proc.wait(10) == 0
        a.wait_tap_gone()
        assert not os.path.exists(a.control)
    finally:
        notify.close()
        with IPRoute(netns=plans["b"].netns) as ip:
            ip.addr("del", index=topology._index(ip, plans["b"].underlay_ifname), address=NEW_PEER, prefixlen=24)


# ---------------------------------------------------------------------------------------------------------
# the Wireshark dissector and `udpnest decode` on captured fold / echo traffic

def _capture(ns: str, filt: str, pcap, log, seconds: int = 6) -> subprocess.Popen:
    with open(log, "w") as f:
        proc = subprocess.Popen(bench.ns_argv(ns, ["tshark", "-n", "-q", "-i", topology.IF_UNDERLAY, "-f", filt,
                                                   "-B", "64", "-a", f"duration:{seconds}", "-F", "pcap", "-w",
                                                   str(pcap)]),
                                stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while "Capturing on" not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"tshark did not start: {log.read_text(errors='replace')}")
        time.sleep(0.05)
    time.sleep(1.5)  # "Capturing on" comes a little before packets are really captured
    return proc


@pytest.mark.skipif(not shutil.which("tshark"), reason="tshark not installed")
def test_dissector_and_decode_on_captured_traffic(lab_v4, endpoints):
    """Fold and echo traffic between two real endpoints, captured on a "wire" underlay (datagrams as on a
    real wire), read by the Lua dissector: its fields and unfolded frames equal what udpnest's own parser
    makes of the same datagrams, no malformed or error expert info; ``udpnest decode`` agrees."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from scapy.layers.inet import UDP
    from scapy.utils import rdpcap

    import tshark_udpnest as ts
    from udpnest.fold import unfold
    from udpnest.wire.options import parse_packet

    lab = lab_v4
    spec = lab.spec
    topology.set_underlay(spec, "wire")
    cap = None
    try:
        a, b = endpoints(lab).pair("fold", extra=PROBE)
        nestlab.wait_modes([a, b], "fold", timeout=10)
        assert nestlab.ping(spec).returncode == 0
        pcap, log = lab.tmp / f"fold-{spec.prefix}.pcap", lab.tmp / f"tshark-fold-{spec.prefix}.log"
        cap = _capture(spec.ns("ha"), f"udp port {topology.GENEVE_PORT}", pcap, log, seconds=5)
        sent, got = nestlab.tcp_transfer(spec, 2 * nestlab.MIB, port=5333)
        assert got["sha256"] == sent["sha256"]
        cap.wait(20)
    finally:
        if cap is not None and cap.poll() is None:
            cap.kill()
            cap.wait()
        topology.set_underlay(spec, "offload")

    pkts = rdpcap(str(pcap))
    payloads = [bytes(p[UDP].payload) for p in pkts]
    parsed = [parse_packet(pl) for pl in payloads]
    folds = {i + 1 for i, p in enumerate(parsed) if p.folds}
    echoes = {i + 1: p for i, p in enumerate(parsed) if p.echo_request or p.echo_reply}
    assert len(folds) >= 1000, len(folds)  # 2 MiB of TCP, folded
    assert sum(1 for p in echoes.values() if p.echo_request) >= 4, "echo requests (both directions)"
    assert sum(1 for p in echoes.values() if p.echo_reply) >= 4, "echo replies"

    decode_as = ("-d", f"udp.port=={topology.NESTED_PORT},vxlan")
    rows = ts.fields(pcap, ["udpnest.fold.levels", "udpnest.fold.enc", "udpnest.fold.l2_len", "udpnest.fold.l3_len",
                            "udpnest.fold.tun_len", "udpnest.fold.flags.len_zeroed", "udpnest.fold.flags.csum_zeroed",
                            "udpnest.geneve.vni", "vxlan.vni", "udpnest.echo.nonce", "udpnest.echo.cap_flags.fold",
                            "udpnest.echo.reply"], *decode_as)
    assert len(rows) == len(pkts)
    for n in folds:
        r = rows[n - 1]
        assert r["udpnest.fold.levels"] == ["1"], (n, r)
        assert (r["udpnest.fold.enc"], r["udpnest.fold.l2_len"], r["udpnest.fold.l3_len"], r["udpnest.fold.tun_len"]) \
            == (["1"], ["14"], ["20"], ["8"]), (n, r)
        assert r["udpnest.fold.flags.len_zeroed"] == ["1"] and r["udpnest.fold.flags.csum_zeroed"] == ["1"]
        assert r["udpnest.geneve.vni"] == [str(parsed[n - 1].hdr.vni)] == ["7"]
        assert r["vxlan.vni"] == [str(topology.NESTED_VNI)], (n, r)
    for n, p in echoes.items():
        e = p.echo_request or p.echo_reply
        r = rows[n - 1]
        assert r["udpnest.echo.nonce"] == [f"0x{e.nonce:016x}"], (n, r)
        assert r["udpnest.echo.cap_flags.fold"] == ["1"]
        assert r["udpnest.echo.reply"] == [str(int(p.echo_reply is not None))]
    # the frames the dissector rebuilds are exactly udpnest's unfold()
    unfolded = ts.unfolded_frames(pcap)
    assert set(unfolded) == folds
    for n in folds:
        assert unfolded[n] == unfold(payloads[n - 1]).frame, n
    bad = [(n, i) for n, items in enumerate(ts.experts(pcap), 1) for i in items
           if i[0] == ts.MALFORMED_GROUP or i[1] >= ts.ERROR_SEVERITY]
    assert not bad, bad[:5]

    out = subprocess.run([sys.executable, "-m", "udpnest.cli", "decode", "--vxlan-port", str(topology.NESTED_PORT),
                          str(pcap)], capture_output=True, text=True, timeout=300, env=bench._pythonpath_env())
    assert out.returncode == 0, out.stderr
    last = out.stdout.splitlines()[-1]
    assert f"fold {len(folds)}" in last and "malformed" not in last, last
    assert f"VXLAN / Ether / IP / TCP {spec.inner_address('a')}" in out.stdout
