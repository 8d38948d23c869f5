"""udpnest ``--nested fold`` towards a stock kernel geneve (which knows none of udpnest's options).

A legacy receiver must drop packets with unknown critical options (RFC 8926 3.5); Linux counts them as
``rx_frame_errors`` (+``rx_errors``) of the geneve device.  So udpnest must send plain until the echo probe
proves the peer can unfold, record the fallback, and never send it a folded (C-bit) data packet: after the
first probe interval the kernel's drop counters (Linux 7.2 counts an unknown critical option in ``rx_dropped``,
older kernels in ``rx_frame_errors``) may grow by at most the echo probes udpnest sent, and those back off
towards a peer known to be legacy.  Also: no runt datagrams in fallback (plain datagrams per
MB as the MSS gives, not one extra 4-byte datagram per super-packet), and a kernel peer restarted in the
middle of a transfer.
"""

from __future__ import annotations

import time

import pytest
from guestlab import INNER, MB, per_mb

NBYTES = 2 * MB
# TCP MSS 1350 over the workload VXLAN: ~741 datagrams per MB plus ACK-free headroom; runts made it ~1140
PLAIN_PER_MB = 900


def _drops(k: dict) -> int:
    return k["rx_dropped"] + k["rx_frame_errors"]


def _probes(st: dict) -> int:
    return st["control"].get("echo_requests_sent", 0)


def _fold_to_stock(lab, restart: bool = False) -> None:
    lab.kernel_geneve()
    lab.kernel_vxlan()
    lab.count_cbit()
    k0 = lab.kernel_stats()
    lab.udpnest_up("fold", "--probe-interval", "1")
    lab.workload_vxlan()
    lab.ping("W", INNER[1], size=56, count=3)  # plain from the first packet: this answers
    deadline = time.monotonic() + 60  # the first probe's timeout (slow under TCG on a loaded host)
    while True:
        c1 = lab.cbit_packets()  # read before udpnest's probe count: a probe sent in between only adds there
        st0 = lab.udpnest_status()
        (peer,) = st0["peers"].values()
        if peer["state"] == "fallback" or time.monotonic() > deadline:
            break
        time.sleep(1)
    k1 = lab.kernel_stats()
    assert peer["state"] == "fallback" and peer["mode"] == "plain", peer
    assert c1 <= _probes(st0), (c1, st0["control"], k0, k1)

    def restart_kernel_peer():
        time.sleep(3)
        lab.sh("ip -n K link del gk")
        lab.kernel_geneve()

    kb = lab.kernel_stats()
    sent, got = lab.transfer("W", NBYTES, port=5301, during=restart_kernel_peer if restart else None)
    assert got["sha256"] == sent["sha256"] and got["bytes"] == NBYTES
    ka = lab.kernel_stats()
    if not restart:
        rate = per_mb(ka["rx_packets"] - kb["rx_packets"], NBYTES)
        print(f"fold -> stock kernel (fallback plain): {rate:.1f} RX packets/MB on the kernel geneve")
        assert rate < PLAIN_PER_MB, f"fallback sends runt datagrams? {rate:.1f} packets/MB"
        sent, got = lab.transfer("K", NBYTES, port=5302)
        assert got["sha256"] == sent["sha256"] and got["bytes"] == NBYTES
    c2 = lab.cbit_packets()
    st1, k2 = lab.udpnest_status(), lab.kernel_stats()
    (peer,) = st1["peers"].values()
    assert peer["mode"] == "plain", peer
    drops = _drops(k2) - (0 if restart else _drops(k1))
    probes = _probes(st1)
    # cumulative since before udpnest started (the counter is read before the status): race-free
    print(f"probes sent {probes}, C-bit packets at the kernel {c2} ({c1} before the transfer), kernel drops "
          f"+{drops} in the transfer (rx_dropped {k2['rx_dropped']}, rx_frame_errors {k2['rx_frame_errors']}), "
          f"peer {peer}")
    assert c2 <= probes, f"folded (C-bit) data reached the legacy kernel: {c2} C-bit packets, {probes} probes"
    assert st1["tx"].get("mode_fold", 0) == 0, st1["tx"]
    assert peer["probe_period_s"] > 1.0, f"no probing backoff towards a legacy peer: {peer}"


def test_fold_to_stock_kernel_ipv4_wire(lab_factory):
    _fold_to_stock(lab_factory(4, "wire"))


def test_kernel_peer_restarted_mid_transfer(lab_factory):
    _fold_to_stock(lab_factory(4, "wire"), restart=True)


@pytest.mark.slow
@pytest.mark.parametrize("family,underlay", [(6, "wire"), (4, "offload"), (6, "offload")])
def test_fold_to_stock_kernel_matrix(lab_factory, family, underlay):
    _fold_to_stock(lab_factory(family, underlay))


@pytest.mark.slow
def test_kernel_peer_restarted_mid_transfer_ipv6(lab_factory):
    _fold_to_stock(lab_factory(6, "wire"), restart=True)
