"""A multi-queue TAP (``tap_queues = 4``) with real TAPs, fold mode, the socket TX path (the native burst
serving 4 queues round robin): a 64 MiB transfer arrives intact (sha256), nothing legitimate is dropped, the
TAPs have 4 queues with the eBPF steering program."""

from __future__ import annotations

import nestlab
import pytest

from udpnest import engine as udpnest_engine

pytestmark = pytest.mark.root

ALLOWED_DROPS = {"tap_write"}  # the peer may send before a freshly started endpoint's TAP is up
SIZE = 64 << 20


def test_transfer_through_a_four_queue_tap(lab, endpoints, tmp_path):
    if not udpnest_engine.native_available():
        pytest.skip(f"native core not built: {udpnest_engine.NATIVE_ERROR}")
    conf = tmp_path / "queues.toml"
    conf.write_text("tap_queues = 4\n")
    eps = endpoints(lab).pair("fold", extra=("--engine", "native", "--tx-path", "socket", "--config", str(conf)))
    a, b = eps
    nestlab.wait_modes(eps, "fold", timeout=5)
    sent, got = nestlab.tcp_transfer(lab.spec, SIZE)
    assert got["bytes"] == sent["bytes"] == SIZE and got["sha256"] == sent["sha256"]
    for name, st in (("a", a.settled_status()), ("b", b.settled_status())):
        assert st["tap"]["queues"] == 4 and st["tap"]["steering"] == "ebpf", st["tap"]
        assert set(st["drops"]) <= ALLOWED_DROPS, f"endpoint {name} dropped legitimate traffic: {st['drops']}"
        tx = st["tx"]
        assert tx["tx_burst_calls"] > 0 and tx["tx_burst_fast"] >= 0.9 * tx["frames"], tx
        assert tx["mode_fold"] > 0, tx
