"""RX queues (``rx_queues = 4``) with real TAPs and the lab's offload underlay, fold mode: a bulk transfer arrives
intact (sha256) while pings cross the same tunnel, every endpoint runs 4 receive sockets, nothing legitimate is
dropped.  IPv4 only and 64 MiB: the loopback tests (tests/test_rx_queues.py) cover the scheduling itself."""

from __future__ import annotations

import nestlab
import pytest

pytestmark = pytest.mark.root

ALLOWED_DROPS = {"tap_write"}  # the peer may send before a freshly started endpoint's TAP is up
SIZE = 64 << 20


def test_transfer_with_four_rx_queues(lab_v4, endpoints):
    conf = lab_v4.tmp / "rx_queues.toml"
    conf.write_text("rx_queues = 4\n")
    eps = endpoints(lab_v4).pair("fold", extra=("--config", str(conf)))
    nestlab.wait_modes(eps, "fold", timeout=5)
    with nestlab.TcpTransfer(lab_v4.spec, SIZE) as t:
        p = nestlab.ping(lab_v4.spec, count=3)  # a sparse flow beside the bulk one
        sent, got = t.wait()
    assert p.returncode == 0, p.stdout + p.stderr
    assert got["bytes"] == sent["bytes"] == SIZE and got["sha256"] == sent["sha256"]
    for name, ep in zip("ab", eps, strict=True):
        st = ep.settled_status()
        assert set(st["drops"]) <= ALLOWED_DROPS, f"endpoint {name} dropped legitimate traffic: {st['drops']}"
        u = st["underlay"]
        assert u["rx_queues"] == 4 and u["source_filter"], u
        reads = u["rx_queue_reads"]
        print(name, "reads per RX queue", reads, "socket_drops", st["rx"].get("socket_drops"))
        assert len(reads) == 4 and sum(reads) >= st["rx"]["reads"] > 0, (reads, st["rx"]["reads"])
