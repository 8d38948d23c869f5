"""The native TX burst (csrc/txburst.c) with real TAPs: a transfer on the socket TX path (the path the burst
serves; the other lab tests use the kernel TX path) arrives intact, the burst does the steady state, nothing
legitimate is dropped.  IPv4 and IPv6 labs, fold and hint."""

from __future__ import annotations

import nestlab
import pytest

from udpnest import engine as udpnest_engine

pytestmark = pytest.mark.root

ALLOWED_DROPS = {"tap_write"}  # the peer may send before a freshly started endpoint's TAP is up
SIZE = 256 << 20


@pytest.mark.parametrize("nested", ["fold", "hint"])
def test_transfer_on_the_socket_path_through_the_tx_burst(lab, endpoints, nested):
    if not udpnest_engine.native_available():
        pytest.skip(f"native core not built: {udpnest_engine.NATIVE_ERROR}")
    eps = endpoints(lab).pair(nested, extra=("--engine", "native", "--tx-path", "socket"))
    a, b = eps
    if nested == "fold":
        nestlab.wait_modes(eps, "fold", timeout=5)
    sent, got = nestlab.tcp_transfer(lab.spec, SIZE)
    assert got["bytes"] == sent["bytes"] == SIZE and got["sha256"] == sent["sha256"]
    for name, st in (("a", a.settled_status()), ("b", b.settled_status())):
        assert set(st["drops"]) <= ALLOWED_DROPS, f"endpoint {name} dropped legitimate traffic: {st['drops']}"
        tx = st["tx"]
        assert not tx.get("kernel_writes"), tx
        # the data (a) and the ACKs (b) went through the C burst, not one Python round trip per frame
        keys = ("frames", "tx_burst_fast", "tx_burst_calls", "tx_burst_wakeups", "datagrams", "sendmsg_calls",
                "sendmmsg_calls")
        print(name, nested, {k: tx.get(k) for k in keys})  # pytest -s: how much took the C path
        assert tx["tx_burst_calls"] > 0 and tx["tx_burst_fast"] >= 0.9 * tx["frames"], tx
        assert tx[f"mode_{nested}"] > 0, tx
