"""The sans-IO RX driver (rxdriver.RxDriver) and the endpoint's RX loop as a thin caller of it."""

from __future__ import annotations

import pytest

from test_endpoint import PEER, endpoint
from test_gro import frame_of, read_of
from test_gro_merge import reads, super_packet
from test_gso import VNI, Case, cut
from udpnest.rxdriver import RxDriver
from udpnest.rxpipe import receive
from udpnest.wire.errors import Reason
from udpnest.wire.geneve import build_geneve
from udpnest.wire.options import Echo, build_echo

ENGINES = ["python"]
try:
    from udpnest.engine import native_available

    if native_available():
        ENGINES.append("native")
except ImportError:  # pragma: no cover
    pass


def driver(engine: str, vni=VNI, **kw) -> RxDriver:
    return RxDriver(peers={PEER}, vni=vni, engine=engine, **kw)


@pytest.mark.parametrize("engine", ENGINES)
def test_two_reads_held_merged_and_written_once(engine):
    first, second, row = reads(super_packet(), 30)
    d = driver(engine, vni=0)
    out = d.read(first, len(first), row, PEER)
    assert not out.writes and d.holding
    out = d.read(second, len(second), row, PEER)
    assert not d.holding and len(out.writes) == 1
    whole = first + second
    exp = receive(whole, len(whole), row).writes[0]
    w, key = out.writes[0]
    assert key == PEER and w.vnet == exp.vnet and frame_of(w) == frame_of(exp)
    assert d.counts["merged_reads"] == 1 and d.counts["coalesce_coalesced"] == 2 and d.counts["reads"] == 2
    # one super-packet made of two reads: the reads-per-super-packet histogram
    assert d.counts["reads_per_super_packet_2"] == 1 and d.counts["reads_per_super_packet_1"] == 0


@pytest.mark.parametrize("engine", ENGINES)
def test_held_run_flushed_when_nothing_waits(engine):
    first, _, row = reads(super_packet(), 30)
    d = driver(engine, vni=0)
    assert not d.read(first, len(first), row, PEER).writes
    [(w, key)] = d.flush()
    assert key == PEER and w.segments == 30 and not d.holding and d.flush() == []


@pytest.mark.parametrize("engine", ENGINES)
def test_held_run_written_before_a_read_from_another_peer(engine):
    first, second, row = reads(super_packet(), 30)
    d = RxDriver(peers={PEER, "198.51.100.9"}, vni=0, engine=engine)
    d.read(first, len(first), row, PEER)
    out = d.read(second, len(second), row, "198.51.100.9")
    assert [(w.segments, k) for w, k in out.writes] == [(30, PEER), (11, "198.51.100.9")]
    assert d.counts["merged_reads"] == 0
    assert d.counts["reads_per_super_packet_1"] == 2 and d.counts["reads_per_super_packet_2"] == 0


@pytest.mark.parametrize("engine", ENGINES)
def test_non_peer_counted_per_datagram(engine):
    case = Case(nest="vx4", payload_len=5001)
    _, _, segs = cut(case, "plain", 1000)
    buf, n, g = read_of(segs.datagrams())
    d = driver(engine)
    out = d.read(buf, n, g, "203.0.113.66")
    assert not out.writes and d.drops == {Reason.NO_PEER.value: 6}


@pytest.mark.parametrize("engine", ENGINES)
def test_wrong_vni_and_outcomes_counted(engine):
    case = Case(nest="vx4", payload_len=5001)
    _, _, segs = cut(case, "plain", 1000)
    buf, n, g = read_of(segs.datagrams())
    d = driver(engine, vni=VNI + 1)
    assert not d.read(buf, n, g, PEER).writes
    assert d.drops == {Reason.WRONG_VNI.value: 6} and d.counts["coalesce_parse"] == 1
    d = driver(engine)
    out = d.read(buf, n, g, PEER)
    assert [w.segments for w, _ in out.writes] == [6] and d.counts["coalesce_coalesced"] == 1


@pytest.mark.parametrize("engine", ENGINES)
def test_echo_goes_to_control(engine):
    dg = build_geneve(VNI, 0x6558, build_echo(Echo(1, 2, 3, 4, 1), reply=False), oam=True)
    out = driver(engine).read(dg, len(dg), 0, PEER)
    assert not out.writes and len(out.control) == 1 and out.control[0][1] == PEER


# --- the endpoint's loop --------------------------------------------------------------------------------
class ScriptedRx:
    """recv_into from a list of (bytes, gso, addr); None (nothing waiting) for a nowait call when the next
    entry is the marker "idle"; then stops the endpoint."""

    def __init__(self, ep, script) -> None:
        self.ep, self.script = ep, list(script)
        self.nowaits = 0

    def recv_into(self, buf, *, nowait=False):
        if nowait:
            self.nowaits += 1
        if not self.script:
            self.ep.stop_event.set()
            return 0, 0, ("0.0.0.0", 0)
        item = self.script[0]
        if item == "idle":
            self.script.pop(0)
            return None
        data, gso, addr = self.script.pop(0)
        buf[: len(data)] = data
        return len(data), gso, addr


def test_endpoint_rx_loop_writes_what_the_driver_returns(monkeypatch):
    # the per-read path with scripted reads: the native fast path (udpnest.rxbatch) receives from the real
    # socket itself, bypassing recv_into (tests/test_rx_batch.py compares the two on real sockets)
    monkeypatch.setenv("UDPNEST_RX_BATCH", "0")
    ep = endpoint("fold", id=0, rx_process=False)
    first, second, row = reads(super_packet(), 30)
    other_first, _, _ = reads(super_packet(seq=900000), 30)
    ep.rx = ScriptedRx(ep, [(first, row, (PEER, 6081)), (second, row, (PEER, 6081)),
                            (other_first, row, (PEER, 6081)), "idle", (b"junk", 0, ("203.0.113.9", 6081))])
    ep._rx_loop()
    assert [len(f) for f in ep.tap.frames] == [24 + len(super_packet()), 24 + 30 * 1000 + 116]
    st = ep.rx_stats
    assert st.c["merged_reads"] == 1 and st.c["tap_writes"] == 2 and st.c["datagrams"] == 71
    assert st.drops == {Reason.NO_PEER.value: 1}
    assert ep.rx.nowaits >= 2
