"""Prometheus metrics (issue 11): the collector turns Endpoint.status() into metric families at scrape time.

Sans-IO: an endpoint with fake sockets (tests/test_endpoint.py) gives a real status dict; the exposition text is
parsed back with prometheus_client's own parser.  The HTTP exporter is scraped once over loopback.  The root
test (tests/privileged/test_operations.py) scrapes a running endpoint in the lab.
"""

from __future__ import annotations

import socket
import urllib.request

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from test_endpoint import PEER, FakeSock, ack_frame
from test_endpoint import endpoint as _endpoint
from udpnest import __version__
from udpnest.config import ConfigError, build_config
from udpnest.metrics import StatusCollector, parse_listen, registry_for, serve
from udpnest.wire.errors import Reason
from udpnest.wire.vnet import ZERO_VNET_HDR


def endpoint(nested: str, **kw):
    """tests/test_endpoint.py's endpoint with fakes complete enough for status()."""
    ep = _endpoint(nested, **kw)
    ep.tap.name, ep.tap.offloads, ep.tap.refused = "wl0", 0, 0
    ep.rx.gro_supported = True
    return ep


def scrape(status) -> dict[str, dict[tuple, float]]:
    """{sample name: {sorted label items: value}} from the text exposition of ``status``."""
    text = generate_latest(registry_for(lambda: status)).decode()
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_every_drop_reason_is_exported_as_zero_before_any_drop():
    m = scrape(endpoint("fold").status())
    for src in ("rx", "tx", "control"):
        fam = m[f"udpnest_{src}_drops_total"]
        assert {dict(k)["reason"] for k in fam} == {r.value for r in Reason}
        assert set(fam.values()) == {0.0}


def test_a_drop_moves_its_reason_counter_only():
    ep = endpoint("off")
    before = scrape(ep.status())
    ep._tx_frame(memoryview(ZERO_VNET_HDR + b"\x02" * 10))  # truncated Ethernet: a TX drop
    ep._tx_frame(memoryview(ZERO_VNET_HDR + b"\x02" * 10))
    after = scrape(ep.status())
    key = (("reason", "truncated_eth"),)
    assert before["udpnest_tx_drops_total"][key] == 0
    assert after["udpnest_tx_drops_total"][key] == 2
    changed = {k for k, v in after["udpnest_tx_drops_total"].items() if v != before["udpnest_tx_drops_total"][k]}
    assert changed == {key}
    assert after["udpnest_rx_drops_total"] == before["udpnest_rx_drops_total"]


def test_counters_move_with_traffic():
    ep = endpoint("off")
    frame = ack_frame()
    for _ in range(3):
        ep._tx_frame(memoryview(ZERO_VNET_HDR + frame))
    m = scrape(ep.status())
    assert m["udpnest_tx_frames_total"][()] == 3
    assert m["udpnest_tx_bytes_total"][()] == 3 * len(frame)
    assert m["udpnest_tx_datagrams_total"][()] == 3
    assert m["udpnest_tx_frames_by_mode_total"][(("mode", "plain"),)] == 3
    assert m["udpnest_tx_frames_by_mode_total"][(("mode", "fold"),)] == 0
    # single datagrams land in the le=1 bucket of the segments histogram
    h = m["udpnest_tx_segments_per_super_packet_bucket"]
    assert h[(("le", "1.0"),)] == 3 and h[(("le", "+Inf"),)] == 3
    assert m["udpnest_tx_segments_per_super_packet_count"][()] == 3


def test_histogram_buckets_are_cumulative():
    st = endpoint("off").status()
    st["rx_segments_hist"] = {"1": 5, "2-3": 1, "4-7": 0, "8-15": 0, "16-31": 2, "32-63": 0, "64+": 4}
    h = scrape(st)["udpnest_rx_segments_per_super_packet_bucket"]
    assert [h[(("le", le),)] for le in ("1.0", "3.0", "7.0", "15.0", "31.0", "63.0", "+Inf")] == [5, 6, 6, 6, 8, 8, 12]


def test_reads_per_super_packet_histogram():
    st = endpoint("off").status()
    st["rx"].update(reads_per_super_packet_1=7, reads_per_super_packet_2=3, reads_per_super_packet_3=1, merged_reads=5)
    m = scrape(st)
    h = m["udpnest_rx_reads_per_super_packet_bucket"]
    assert [h[(("le", le),)] for le in ("1.0", "2.0", "+Inf")] == [7, 10, 11]
    assert m["udpnest_rx_reads_per_super_packet_count"][()] == 11
    assert m["udpnest_rx_reads_per_super_packet_sum"][()] == 7 + 6 + 3
    assert not any(k.startswith("udpnest_rx_reads_per_super_packet_1") for k in m)  # not also a loose counter


def test_peer_state_and_mode_and_build_and_engine():
    ep = endpoint("fold")
    m = scrape(ep.status())
    peer = f"{PEER}:6081"
    modes = {dict(k)["mode"]: v for k, v in m["udpnest_peer_mode"].items() if dict(k)["peer"] == peer}
    assert modes == {"plain": 1, "hint": 0, "fold": 0}  # probing: the fallback until the peer answers
    states = {dict(k)["state"]: v for k, v in m["udpnest_peer_state"].items()}
    assert states["probing"] == 1 and states["capable"] == 0
    assert m["udpnest_peer_probes_sent_total"][(("peer", peer),)] == 0
    assert m["udpnest_build_info"] == {(("version", __version__),): 1}
    st = ep.status()
    assert m["udpnest_engine_info"] == {(("engine", st["engine"]),): 1}
    st["engine"] = "python" if st["engine"] == "native" else "native"
    assert scrape(st)["udpnest_engine_info"] == {(("engine", st["engine"]),): 1}
    del st["engine"]
    assert scrape(st)["udpnest_engine_info"] == {(("engine", "python"),): 1}  # an older status: python
    assert m["udpnest_up"][()] == 1


def test_unknown_status_counters_are_not_hidden():
    st = endpoint("off").status()
    st["rx"]["some_new_counter"] = 9
    st["drops_by_direction"]["rx"]["a_future_reason"] = 2
    m = scrape(st)
    assert m["udpnest_rx_some_new_counter_total"][()] == 9
    assert m["udpnest_rx_drops_total"][(("reason", "a_future_reason"),)] == 2


def test_endpoint_down_is_up_zero():
    def fail():
        raise ConnectionRefusedError(111, "refused")

    text = generate_latest(registry_for(fail)).decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert fams["udpnest_up"].samples[0].value == 0
    assert "udpnest_build_info" in fams


def test_listen_address_parsing():
    assert parse_listen("127.0.0.1:9108") == ("127.0.0.1", 9108)
    assert parse_listen("[::1]:9108") == ("::1", 9108)
    for bad in ("127.0.0.1", "localhost:9108", "::1:9108", "127.0.0.1:99999"):
        with pytest.raises(ConfigError) as e:
            build_config({"id": 1, "local": "192.0.2.1", "remote": "192.0.2.2", "metrics": bad})
        assert e.value.field == "metrics"


def test_http_exporter_serves_the_status():
    ep = endpoint("off")
    ep.tx = [FakeSock()]
    with socket.socket() as s:  # a free port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = serve(f"127.0.0.1:{port}", ep.status)
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        server.shutdown()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"udpnest_rx_drops", "udpnest_tx_bytes", "udpnest_peer_mode", "udpnest_build_info"} <= names


def test_collector_has_no_fixed_description():
    assert list(StatusCollector(dict).describe()) == []


def test_metrics_flag_and_toml_key(tmp_path):
    from udpnest.cli import build_parser
    from udpnest.cli_endpoint import load_config

    base = ["up", "--id", "1", "--local", "192.0.2.1", "--remote", "192.0.2.2"]
    assert load_config(build_parser().parse_args(base)).metrics is None  # off by default
    assert load_config(build_parser().parse_args([*base, "--metrics", "127.0.0.1:9108"])).metrics == "127.0.0.1:9108"
    conf = tmp_path / "e.toml"
    conf.write_text('id = 1\nlocal = "192.0.2.1"\nremote = ["192.0.2.2"]\nmetrics = "[::1]:9108"\n')
    assert load_config(build_parser().parse_args(["up", "--config", str(conf)])).metrics == "[::1]:9108"
