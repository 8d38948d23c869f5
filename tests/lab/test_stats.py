"""Pure bench statistics, checked on iperf3 JSON recorded on the lab machine (tests/lab/data)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from udpnest.lab import stats

DATA = Path(__file__).resolve().parent / "data"


def load(name: str) -> dict:
    return json.loads((DATA / name).read_text())


def test_parse_iperf3_recorded_wire_run():
    r = stats.parse_iperf3(load("iperf3-kernel-vxlan-wire.json"))
    assert r.bytes_received == 2125856768
    assert r.seconds == pytest.approx(2.000786)
    assert r.gbps == pytest.approx(8.50008654, rel=1e-8)
    assert r.host_cpu_pct == pytest.approx(27.279750122559836)
    assert r.remote_cpu_pct == pytest.approx(63.348825400125655)
    assert r.retransmits == 50
    # (27.28 % + 63.35 %) of one CPU for 2.000786 s
    assert r.cpu_seconds == pytest.approx(0.90628575522685491 * 2.000786)
    assert stats.cpu_s_per_gb(r.cpu_seconds, r.bytes_received) == pytest.approx(1.813284 / 2.125856768, rel=1e-5)


def test_parse_iperf3_recorded_double_encap_run():
    r = stats.parse_iperf3(load("iperf3-vxlan-in-vxlan-offload.json"))
    assert r.bytes_received == 1466695680
    assert r.gbps == pytest.approx(5.865354506, rel=1e-8)
    assert r.retransmits == 166
    assert r.host_cpu_pct > 90  # the client's CPU carried both encapsulations


def test_parse_iperf3_error_is_reported():
    with pytest.raises(stats.IperfError, match="Connection refused"):
        stats.parse_iperf3(load("iperf3-error-refused.json"))


def test_parse_iperf3_truncated_json():
    obj = load("iperf3-kernel-vxlan-wire.json")
    del obj["end"]["cpu_utilization_percent"]
    with pytest.raises(stats.IperfError, match="cpu_utilization_percent"):
        stats.parse_iperf3(obj)


def test_median_and_percentile():
    assert stats.median([3, 1, 2]) == 2
    assert stats.median([4, 1, 2, 3]) == 2.5
    assert stats.percentile([10, 20, 30, 40, 50], 50) == 30
    assert stats.percentile([10, 20, 30, 40, 50], 99) == pytest.approx(49.6)
    assert stats.percentile([7], 99) == 7
    with pytest.raises(ValueError):
        stats.median([])
    with pytest.raises(ValueError):
        stats.percentile([1], 101)


@given(st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=50), st.floats(0, 100))
def test_percentile_matches_numpy(xs, p):
    assert stats.percentile(xs, p) == pytest.approx(float(np.percentile(xs, p)), rel=1e-9, abs=1e-6)


def test_parse_proc_pid_stat_with_odd_comm():
    # comm "(a) b" contains a space and a ')'; utime=1234, stime=567 are fields 14 and 15.
    text = "4242 ((a) b) S 1 4242 4242 0 -1 4194560 100 0 0 0 1234 567 0 0 20 0 3 0 7000 1000 50 0\n"
    assert stats.parse_proc_pid_stat(text) == (1234, 567)
    assert stats.parse_proc_pid_stat(text, children=True) == (1234, 567, 0, 0)
    assert stats.parse_proc_pid_ppid(text) == 1


def test_parse_proc_stat_cpu():
    text = "cpu  8433 0 4007 137011 428 0 3460 10 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\nintr 1\n"
    busy, total = stats.parse_proc_stat_cpu(text)
    assert busy == 8433 + 4007 + 3460
    assert total == busy + 137011 + 428 + 10


def sample(mode, underlay, rep, gbps, cpu_s=1.0, endpoint_cpu_s=0.0, rtt=(100.0,), endpoint_user_s=0.0):
    nbytes = int(gbps * 1e9 / 8 * 10)
    return stats.RunSample(mode=mode, underlay=underlay, rep=rep, gbps=gbps, bytes_received=nbytes, seconds=10.0,
                           iperf_cpu_s=cpu_s, endpoint_cpu_s=endpoint_cpu_s, system_cpu_s=2 * cpu_s,
                           retransmits=rep, rtt_us=list(rtt), endpoint_user_s=endpoint_user_s)


def test_summarize_medians_ratios_and_cpu_per_gb():
    runs = [
        sample("kernel-vxlan", "offload", 0, 16.0, rtt=[10, 20]),
        sample("kernel-vxlan", "offload", 1, 14.0, rtt=[30]),
        sample("kernel-vxlan", "offload", 2, 15.0, rtt=[40]),
        sample("kernel-vxlan-in-vxlan", "offload", 0, 4.0),
        sample("kernel-vxlan-in-vxlan", "offload", 1, 3.0),
        sample("kernel-vxlan-in-vxlan", "offload", 2, 3.5),
        sample("udpnest", "wire", 0, 10.0, cpu_s=1.0, endpoint_cpu_s=2.5, endpoint_user_s=1.0),
    ]
    s = stats.summarize(runs)
    kv = s["kernel-vxlan"]["offload"]
    assert kv["gbps"] == 15.0
    assert kv["gbps_runs"] == [16.0, 14.0, 15.0]
    assert kv["ratio_vs_kernel_vxlan_in_vxlan"] == pytest.approx(15.0 / 3.5)
    assert kv["rtt_p50_us"] == 25.0  # pooled over runs: 10 20 30 40
    assert kv["retransmits"] == 1
    assert kv["underlay"] == "offload"
    # 1 CPU second per run over 15 Gbit/s * 10 s = 18.75 GB
    assert kv["cpu_s_per_gb"] == pytest.approx(1 / 18.75, rel=1e-6)
    assert kv["cpu_s_per_gb_system"] == pytest.approx(2 / 18.75, rel=1e-6)
    assert s["kernel-vxlan-in-vxlan"]["offload"]["ratio_vs_kernel_vxlan_in_vxlan"] == 1.0
    un = s["udpnest"]["wire"]
    assert un["ratio_vs_kernel_vxlan_in_vxlan"] is None  # no reference on the wire underlay
    assert un["cpu_s_per_gb"] == pytest.approx(3.5 / 12.5, rel=1e-6)  # endpoint CPU is charged
    # the endpoints' share split into user (udpnest's own work) and kernel time; none for kernel modes
    assert un["endpoint_user_s_per_gb"] == pytest.approx(1.0 / 12.5, rel=1e-6)
    assert un["endpoint_kernel_s_per_gb"] == pytest.approx(1.5 / 12.5, rel=1e-6)
    assert kv["endpoint_user_s_per_gb"] is None and kv["endpoint_kernel_s_per_gb"] is None
    row = next(line for line in stats.format_markdown(s).splitlines() if line.startswith("| udpnest |"))
    assert "| 0.08 / 0.12 |" in row, row


def test_tables_list_every_mode_and_underlay():
    runs = [sample("kernel-vxlan", u, 0, g) for u, g in (("offload", 16.0), ("wire", 7.0))]
    runs.append(sample("kernel-vxlan-in-vxlan", "offload", 0, 4.0, rtt=[]))
    s = stats.summarize(runs)
    text = stats.format_table(s)
    lines = text.splitlines()
    assert len(lines) == 2 + 3
    assert "16.00" in lines[2] and "4.00" in lines[2]  # 16 Gbit/s, 4x the reference
    assert lines[4].split()[-3:-1] == ["-", "-"]  # no RTT samples
    assert lines[2].split()[5] == "-"  # no endpoint in a kernel mode: no user/kernel split
    md = stats.format_markdown(s)
    assert md.splitlines()[0].startswith("| mode | underlay | Gbit/s")
    assert len(md.splitlines()) == 2 + 3


def test_cpu_s_per_gb_rejects_zero_bytes():
    with pytest.raises(ValueError):
        stats.cpu_s_per_gb(1.0, 0)
