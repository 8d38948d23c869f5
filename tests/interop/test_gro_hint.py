"""The Linux >= 7.0 GRO hint against the real kernel, both ways.

* udpnest ``--nested hint`` -> kernel geneve with ``gro-hint``: Linux's geneve GRO merges a hinted train only
  when the nested headers of its segments are byte-identical (``geneve_hdr_match()``), as its own GSO partial
  sends them.  The kernel device's RX packets per MB show whether it merged: kernel-to-kernel gives ~30
  (tests/interop/test_kernelmode_guest.py), one per wire datagram is ~750.  The kernel flushes at every
  nested header change, i.e. at least once per train (per TCP TSO burst: each has its own nested IPv4 ID),
  so the figure also depends on the workload's burst size, which TCP sizes from its pacing rate and minimum
  RTT (``tcp_tso_autosize``, ``tcp_tso_rtt_log``): through udpnest under TCG the RTT is milliseconds and
  the bursts 2-3 segments (~390 packets/MB with every train merged whole; a kernel sender paced to the same
  rate over the kernel path's short RTT still got ~9-segment trains, 86 packets/MB).  The workload therefore
  sends bursts like a fast flow (``tcp_min_tso_segs``), and the test also checks per train: kernel RX
  packets <= 1.5 per udpnest super-packet (unmerged: one per datagram).
* kernel geneve with ``gro-hint`` + ``tx-gso-partial`` -> udpnest: the kernel's GSO-partial trains carry a fixed
  nested IPv4 ID without DF; udpnest must still coalesce them (RX super-packets) and deliver intact data.
  With the underlay veth's offloads on ("offload"), the tunnel-GSO skb crosses the veth whole and the
  receiving kernel segments it for udpnest's UDP_GRO socket, so udpnest reads one datagram at a time: it
  holds and merges those single-datagram reads (rxdriver.py) into the same super-packets.
"""

from __future__ import annotations

import pytest
from guestlab import MB, MERGED_PER_MB, per_mb

NBYTES = 2 * MB
MIN_TSO_SEGS = 40  # the workload TCP's TSO bursts (default 2: rate-sized, tiny under TCG)


def _hint_to_kernel(lab) -> None:
    lab.kernel_geneve(hint=True, gso_partial=True)
    lab.kernel_vxlan()
    lab.udpnest_up("hint")
    lab.workload_vxlan()
    lab.ns("W", f"sysctl -qw net.ipv4.tcp_min_tso_segs={MIN_TSO_SEGS}")
    before, tx0 = lab.kernel_stats(), lab.udpnest_status()["tx"]
    sent, got = lab.transfer("W", NBYTES)
    after, tx = lab.kernel_stats(), lab.udpnest_status()["tx"]
    assert got["sha256"] == sent["sha256"] and got["bytes"] == NBYTES
    assert after["rx_errors"] == before["rx_errors"], (before, after)
    rx = after["rx_packets"] - before["rx_packets"]
    rate = per_mb(rx, NBYTES)
    trains, dgrams = (tx.get(k, 0) - tx0.get(k, 0) for k in ("super_packets", "datagrams"))
    print(f"udpnest hint -> kernel gro-hint: {rate:.1f} RX packets/MB on the kernel geneve; {rx} RX packets "
          f"for {trains} trains of {dgrams} datagrams; tx {tx}")
    assert tx.get("mode_hint", 0) > 0, tx
    assert trains > 0 and rx <= 1.5 * trains + 10, f"kernel did not merge udpnest's hinted trains: {rx} > {trains}"
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
    d = {k: rx.get(k, 0) - before.get(k, 0) for k in ("datagrams", "tap_writes", "super_packets", "kind_hint",
                                                       "reads", "merged_reads", "coalesce_single_merged",
                                                       "coalesce_coalesced")}
    print(f"kernel gro-hint + gso-partial -> udpnest: rx {d}")
    assert d["kind_hint"] > 0, d
    # UDP GRO under TCG hands over short bursts (often 2 datagrams); unmerged: tap_writes == datagrams
    assert d["super_packets"] > 0 and d["tap_writes"] < 0.9 * d["datagrams"], \
        f"udpnest did not coalesce the kernel's GSO-partial trains: {d}"


def test_hint_to_kernel_ipv4_wire(lab_factory):
    _hint_to_kernel(lab_factory(4, "wire"))


def test_kernel_gso_partial_to_udpnest_ipv4_wire(lab_factory):
    _kernel_to_udpnest(lab_factory(4, "wire"))


@pytest.mark.slow
def test_hint_to_kernel_ipv6_wire(lab_factory):
    _hint_to_kernel(lab_factory(6, "wire"))


@pytest.mark.slow
@pytest.mark.parametrize("family,underlay", [(6, "wire"), (4, "offload"), (6, "offload")])
def test_kernel_gso_partial_to_udpnest_matrix(lab_factory, family, underlay):
    _kernel_to_udpnest(lab_factory(family, underlay))
