"""Plain udpnest <-> the kernel's own geneve driver (RFC 8926 on both ends)."""

from __future__ import annotations

import pytest
from guestlab import MB, per_mb

NBYTES = 8 * MB
ERRORS = ("rx_errors", "rx_frame_errors", "rx_length_errors", "rx_crc_errors")


def _plain_case(lab, src: str) -> None:
    lab.kernel_geneve()
    lab.kernel_vxlan()
    lab.udpnest_up("off")
    lab.workload_vxlan()
    lab.ping("W", "203.0.113.2", size=56)
    lab.ping("K", "203.0.113.1", size=1300)
    before = lab.kernel_stats()
    sent, got = lab.transfer(src, NBYTES)
    after = lab.kernel_stats()
    assert got["bytes"] == sent["bytes"] == NBYTES
    assert got["sha256"] == sent["sha256"]
    for k in ERRORS:
        assert after[k] == before[k], (k, before, after)
    st = lab.udpnest_status()
    assert not {k: v for k, v in st["drops"].items() if v}, st["drops"]
    rx_kernel = after["rx_packets"] - before["rx_packets"]
    print(f"plain {src}->: kernel geneve rx {per_mb(rx_kernel, NBYTES):.1f} packets/MB")


@pytest.mark.parametrize("src", ["W", "K"])
def test_plain_ipv4_wire(lab_factory, src):
    _plain_case(lab_factory(4, "wire"), src)


@pytest.mark.parametrize("src", ["W", "K"])
def test_plain_ipv6_offload(lab_factory, src):
    _plain_case(lab_factory(6, "offload"), src)


@pytest.mark.slow
@pytest.mark.parametrize("family,underlay", [(4, "offload"), (6, "wire")])
@pytest.mark.parametrize("src", ["W", "K"])
def test_plain_matrix(lab_factory, family, underlay, src):
    _plain_case(lab_factory(family, underlay), src)
