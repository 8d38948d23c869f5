"""The Linux >= 7.0 GRO hint against the real kernel, both ways.

* udpnest ``--nested hint`` -> kernel geneve with ``gro-hint``: Linux's geneve GRO merges a hinted train only
  when the nested headers of its segments are byte-identical (``geneve_hdr_match()``), as its own GSO partial
  sends them.  The kernel device's RX packets per MB show whether it merged: kernel-to-kernel gives ~30
  (tests/interop/test_kernelmode_guest.py), one per wire datagram is ~750.
* kernel geneve with ``gro-hint`` + ``tx-gso-partial`` -> udpnest: the kernel's GSO-partial trains carry a fixed
  nested IPv4 ID without DF; udpnest must still coalesce them (RX super-packets) and deliver intact data.
"""

from __future__ import annotations

import pytest
from guestlab import MB, MERGED_PER_MB, per_mb

NBYTES = 2 * MB


def _hint_to_kernel(lab) -> None:
    lab.kernel_geneve(hint=True, gso_partial=True)
    lab.kernel_vxlan()
    lab.udpnest_up("hint")
    lab.workload_vxlan()
    before = lab.kernel_stats()
    sent, got = lab.transfer("W", NBYTES)
    after = lab.kernel_stats()
    assert got["sha256"] == sent["sha256"] and got["bytes"] == NBYTES
    assert after["rx_errors"] == before["rx_errors"], (before, after)
    rate = per_mb(after["rx_packets"] - before["rx_packets"], NBYTES)
    st = lab.udpnest_status()
    print(f"udpnest hint -> kernel gro-hint: {rate:.1f} RX packets/MB on the kernel geneve; tx {st['tx']}")
    assert st["tx"].get("mode_hint", 0) > 0, st["tx"]
    assert rate < MERGED_PER_MB, f"kernel did not merge udpnest's hinted trains: {rate:.1f} packets/MB"


def _kernel_to_udpnest(lab) -> None:
    lab.kernel_geneve(hint=True, gso_partial=True)
    lab.kernel_vxlan()
    lab.udpnest_up("hint")
    lab.workload_vxlan()
    before = lab.udpnest_status()["rx"]
    sent, got = lab.transfer("K", NBYTES)
    assert got["sha256"] == sent["sha256"] and got["bytes"] == NBYTES
    rx = lab.udpnest_status()["rx"]
    d = {k: rx.get(k, 0) - before.get(k, 0) for k in ("datagrams", "tap_writes", "super_packets", "kind_hint")}
    print(f"kernel gro-hint + gso-partial -> udpnest: rx {d}")
    assert d["kind_hint"] > 0, d
    # UDP GRO under TCG hands over short bursts (often 2 datagrams); unmerged: tap_writes == datagrams
    assert d["super_packets"] > 0 and d["tap_writes"] < 0.9 * d["datagrams"], \
        f"udpnest did not coalesce the kernel's GSO-partial trains: {d}"


HINT_TX_PENDING = pytest.mark.xfail(
    strict=False, reason="open (issue 10 item 3): with the nested IPv4 ID fixed across a train, Linux 7.2 merges "
    "udpnest's hint trains only partly: 418 RX packets/MB (1091 before the fix, ~35-55 kernel-to-kernel); what "
    "still differs per segment is not yet found")


@HINT_TX_PENDING
def test_hint_to_kernel_ipv4_wire(lab_factory):
    _hint_to_kernel(lab_factory(4, "wire"))


def test_kernel_gso_partial_to_udpnest_ipv4_wire(lab_factory):
    _kernel_to_udpnest(lab_factory(4, "wire"))


@HINT_TX_PENDING
@pytest.mark.slow
def test_hint_to_kernel_ipv6_wire(lab_factory):
    _hint_to_kernel(lab_factory(6, "wire"))


@pytest.mark.slow
@pytest.mark.parametrize("family,underlay", [(6, "wire"), (4, "offload"), (6, "offload")])
def test_kernel_gso_partial_to_udpnest_matrix(lab_factory, family, underlay):
    _kernel_to_udpnest(lab_factory(family, underlay))
