"""A multi-queue TAP (``tap_queues = 4``) with real TAPs, fold mode: on the socket TX path (the native burst
serving 4 queues round robin) and on the kernel TX path (the per-frame loop, Endpoint._tx_loop_queues), a
64 MiB transfer arrives intact (sha256), an inner UDP flow arrives complete and in order, nothing legitimate
is dropped, the TAPs have 4 queues with the eBPF steering program."""

from __future__ import annotations

import nestlab
import pytest

from udpnest import engine as udpnest_engine

pytestmark = pytest.mark.root

ALLOWED_DROPS = {"tap_write"}  # the peer may send before a freshly started endpoint's TAP is up
SIZE = 64 << 20


@pytest.mark.parametrize("tx_path", ["socket", "kernel"])
def test_transfer_through_a_four_queue_tap(lab, endpoints, tmp_path, tx_path):
    if not udpnest_engine.native_available():
        pytest.skip(f"native core not built: {udpnest_engine.NATIVE_ERROR}")
    conf = tmp_path / "queues.toml"
    conf.write_text("tap_queues = 4\n")
    eps = endpoints(lab).pair("fold", extra=("--engine", "native", "--tx-path", tx_path, "--config", str(conf)))
    a, b = eps
    nestlab.wait_modes(eps, "fold", timeout=5)
    sent_u, got_u = nestlab.udp_flow(lab.spec)
    assert got_u == sent_u, f"{len(got_u)} of {len(sent_u)} inner UDP datagrams, in order: {got_u == sent_u}"
    sent, got = nestlab.tcp_transfer(lab.spec, SIZE)
    assert got["bytes"] == sent["bytes"] == SIZE and got["sha256"] == sent["sha256"]
    for name, st in (("a", a.settled_status()), ("b", b.settled_status())):
        assert st["tap"]["queues"] == 4 and st["tap"]["steering"] == "ebpf", st["tap"]
        assert set(st["drops"]) <= ALLOWED_DROPS, f"endpoint {name} dropped legitimate traffic: {st['drops']}"
        tx = st["tx"]
        if tx_path == "kernel":
            assert tx["frames"] > 0 and not tx.get("tx_burst_calls"), tx
            continue
        assert tx["tx_burst_calls"] > 0 and tx["tx_burst_fast"] >= 0.9 * tx["frames"], tx
        assert tx["mode_fold"] > 0, tx
