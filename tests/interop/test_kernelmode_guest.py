"""``udpnest up --dataplane kernel`` on both ends of the guest lab: the kernel's own double-tunnel path.

The kernel geneve devices get the GRO hint and GSO partial from udpnest's netlink; the workload's VXLAN rides
on them.  The receiving device's RX packets per MB show the merge (~30 on Linux 7.2; one per wire datagram
would be ~750), and ``udpnest status`` reads the same counters through the control socket.
"""

from __future__ import annotations

import pytest
from guestlab import INNER, MB, MERGED_PER_MB, PY, per_mb

NBYTES = 2 * MB


def _both_ends(lab) -> None:
    ctl_u = lab.kernelmode_up("U")
    lab.kernelmode_up("K")
    lab.kernel_vxlan()
    lab.workload_vxlan()
    lab.ping("W", INNER[1], size=1300)
    st = lab.udpnest_status(ctl_u)
    assert st["dataplane"] == "kernel" and st["kernel"]["gro_hint"], st
    assert {"tx-gso-partial", "tx-udp_tnl-segmentation"} <= set(st["kernel"]["features"]), st["kernel"]
    for port, src, dev, ns in ((5301, "W", "gk", "K"), (5302, "K", "wl0", "W")):
        before = lab.kernel_stats(dev, ns)
        sent, got = lab.transfer(src, NBYTES, port=port)
        after = lab.kernel_stats(dev, ns)
        assert got["sha256"] == sent["sha256"] and got["bytes"] == NBYTES
        assert after["rx_errors"] == before["rx_errors"]
        rate = per_mb(after["rx_packets"] - before["rx_packets"], NBYTES)
        print(f"kernel mode both ends, {src}->: {rate:.1f} RX packets/MB on {dev}")
        assert rate < MERGED_PER_MB, f"{dev} did not merge: {rate:.1f} packets/MB"
    st = lab.udpnest_status(ctl_u)
    assert st["rx"]["tap_writes"] > 0 and st["device"]["rx_packets"] == st["rx"]["tap_writes"]


def test_kernelmode_both_ends_ipv4_wire(lab_factory):
    _both_ends(lab_factory(4, "wire"))


@pytest.mark.slow
def test_kernelmode_both_ends_ipv6_wire(lab_factory):
    _both_ends(lab_factory(6, "wire"))


def test_kernelmode_refuses_fold_in_guest(lab_factory):
    """On Linux 7.x too, fold is refused with the reason (the kernel does not speak it)."""
    lab = lab_factory(4, "wire")
    r = lab.ns("U", f"{PY} -m udpnest.cli up --dataplane kernel --id 42 --local {lab.local} --remote "
               f"{lab.remote} --nested fold --tap kf0", check=False)
    assert r.rc == 1 and "fold needs the userspace dataplane" in r.err, r

