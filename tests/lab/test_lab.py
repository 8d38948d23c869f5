"""The lab for real: namespaces, offload settings, the bench end to end and the udpnest hook (root)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from udpnest.lab import bench, topology
from udpnest.lab.topology import LabSpec

pytestmark = pytest.mark.root

@pytest.fixture
def prefix():
    p = f"unl-t{uuid.uuid4().hex[:6]}"
    yield p
    topology.down(p)
    assert not topology.lab_namespaces(p)


def root_links() -> set[str]:
    from pyroute2 import IPRoute

    with IPRoute() as ip:
        return {link.get("ifname") for link in ip.get_links()}


def pingpong_ok(spec: LabSpec) -> bool:
    """A few request/responses between the workloads over the nested VXLAN (server started for the check)."""
    env = bench._pythonpath_env()
    srv = subprocess.Popen(bench.ns_argv(spec.ns("wb"), [sys.executable, "-m", "udpnest.lab.pingpong", "server",
                                                          "--bind", spec.inner_address("b"), "--port", "7070"]),
                           stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert srv.stdout.readline().strip() == "ready"
        out = subprocess.run(bench.ns_argv(spec.ns("wa"), [
            sys.executable, "-m", "udpnest.lab.pingpong", "client", "--connect", spec.inner_address("b"),
            "--port", "7070", "--duration", "0.2"]), capture_output=True, text=True, env=env, timeout=20)
        return len(json.loads(out.stdout)["rtt_us"]) > 10
    finally:
        srv.kill()
        srv.wait()


@pytest.mark.parametrize("uf,nf", [(4, 4), (6, 6), (6, 4)])
def test_up_is_idempotent_and_down_leaves_nothing(prefix, uf, nf):
    before = root_links()
    spec = LabSpec(prefix=prefix, underlay_family=uf, nested_family=nf)
    assert topology.up(spec) is True
    assert topology.up(spec) is False  # identical lab: nothing to do
    sts = {s.name: s for s in topology.status(prefix)}
    assert set(sts) == set(spec.namespaces)
    for mode in topology.KERNEL_MODES:
        spec = topology.set_mode(spec, mode)
        assert pingpong_ok(spec), mode
    # A straggler process inside a lab namespace must not keep it alive.
    sleeper = subprocess.Popen(bench.ns_argv(spec.ns("wb"), ["sleep", "300"]))
    deadline = time.monotonic() + 5
    while sleeper.pid not in topology.ns_pids(spec.namespaces).get(spec.ns("wb"), []):
        assert time.monotonic() < deadline, "sleeper never entered the namespace"
        time.sleep(0.02)
    removed = topology.down(prefix)
    assert sorted(removed) == sorted(spec.namespaces)
    assert sleeper.wait(5) != 0
    assert not topology.lab_namespaces(prefix)
    assert root_links() == before


def test_up_switches_mode_and_underlay_in_place(prefix):
    spec = LabSpec(prefix=prefix)
    topology.up(spec)
    feats = topology.ethtool_features(spec.ns("hb"), topology.IF_UNDERLAY)
    assert feats["tx-checksumming"] == "on" and feats["rx-udp-gro-forwarding"] == "off"
    wire = LabSpec(prefix=prefix, underlay="wire", mode="kernel-vxlan-in-vxlan")
    assert topology.up(wire) is True
    for role in ("ha", "hb"):
        feats = topology.ethtool_features(wire.ns(role), topology.IF_UNDERLAY)
        assert feats["tx-checksumming"] == "off"
        assert feats["tcp-segmentation-offload"] == "off"
        assert feats["tx-udp_tnl-segmentation"] == "off"
        assert feats["generic-receive-offload"] == "on"
        assert feats["rx-udp-gro-forwarding"] == "on"
    routes = next(s for s in topology.status(prefix) if s.name == wire.ns("ha")).routes
    assert "192.0.2.16/28 via 192.0.2.34 dev ovx0" in routes
    assert pingpong_ok(wire)


def test_wire_underlay_frames_fit_the_mtu(prefix):
    """In wire mode the sender's veth segments: every frame sent on the underlay is <= 1500 + 14 bytes.

    Only outbound frames are checked: received ones are captured after GRO, which wire mode turns on.
    """
    spec = LabSpec(prefix=prefix, underlay="wire", mode="kernel-vxlan-in-vxlan")
    topology.up(spec)
    cap = subprocess.Popen(bench.ns_argv(spec.ns("ha"), ["tshark", "-l", "-i", "ul0", "-f", "outbound", "-a",
                                                         "duration:20", "-T", "fields", "-e", "frame.len"]),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    srv = subprocess.Popen(bench.ns_argv(spec.ns("wb"), ["iperf3", "-s", "-1", "-B", spec.inner_address("b")]),
                           stdout=subprocess.DEVNULL)
    try:
        while "Capturing on" not in (line := cap.stderr.readline()):
            assert line, "tshark did not start capturing"
        subprocess.run(bench.ns_argv(spec.ns("wa"), ["iperf3", "-c", spec.inner_address("b"), "-t", "1"]),
                       check=True, capture_output=True, timeout=30)
        time.sleep(0.3)
        cap.send_signal(signal.SIGINT)
        out, _ = cap.communicate(timeout=30)
    finally:
        srv.kill()
        cap.kill()
    lens = [int(x) for x in out.split()]
    assert len(lens) > 1000
    assert max(lens) <= topology.UNDERLAY_MTU + 14


def test_bench_quick_json_end_to_end(prefix, tmp_path, capsys):
    from udpnest.cli import main

    rc = main(["bench", "--quick", "--json", "--prefix", prefix, "--out", str(tmp_path)])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res["modes"]) == set(bench.MODES) and not res["skipped"]
    for mode, by_ul in res["modes"].items():
        assert set(by_ul) == {"offload", "wire"}, mode
        for ul, s in by_ul.items():
            assert s["underlay"] == ul
            for key in ("gbps", "cpu_s_per_gb", "cpu_s_per_gb_system", "rtt_p50_us", "rtt_p99_us",
                        "ratio_vs_kernel_vxlan_in_vxlan"):
                assert s[key] > 0, (mode, ul, key)
    assert res["modes"]["kernel-vxlan-in-vxlan"]["offload"]["ratio_vs_kernel_vxlan_in_vxlan"] == 1.0
    assert Path(res["plot"]).stat().st_size > 10_000
    assert json.loads(Path(res["json"]).read_text())["modes"] == res["modes"]
    assert not topology.lab_namespaces(prefix)  # the bench built the lab, so it removed it
    for mode in bench.UDPNEST_MODES:  # the endpoints' CPU was charged to their runs
        assert all(r["endpoint_cpu_s"] > 0 for r in res["runs"] if r["mode"] == mode)
    left = subprocess.run(["pgrep", "-f", f"udpnest.cli up .*{prefix}"], capture_output=True, text=True)
    assert left.stdout == "", left.stdout


def test_udpnest_mode_is_skipped_without_dataplane(monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "udpnest_unavailable", lambda: "not written yet")
    res = bench.run(bench.BenchConfig(modes=("udpnest-fold",), out_dir=tmp_path), stream=sys.stderr)
    assert res["skipped"] == {"udpnest-fold": "not written yet"} and res["modes"] == {}
