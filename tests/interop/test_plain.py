"""Plain udpnest <-> the kernel's own geneve driver (RFC 8926 on both ends), both directions."""

from __future__ import annotations

import pytest
from guestlab import INNER, MB, per_mb

NBYTES = 2 * MB
ERRORS = ("rx_errors", "rx_frame_errors", "rx_length_errors", "rx_crc_errors")


def _plain_case(lab) -> None:
    lab.kernel_geneve()
    lab.kernel_vxlan()
    lab.udpnest_up("off")
    lab.workload_vxlan()
    lab.ping("W", INNER[1], size=56)
    lab.ping("K", INNER[0], size=1300)
    for port, src in ((5301, "W"), (5302, "K")):
        before = lab.kernel_stats()
        sent, got = lab.transfer(src, NBYTES, port=port)
        after = lab.kernel_stats()
        assert got["bytes"] == sent["bytes"] == NBYTES
        assert got["sha256"] == sent["sha256"], src
        for k in ERRORS:
            assert after[k] == before[k], (src, k, before, after)
        print(f"plain {src}->: kernel geneve rx {per_mb(after['rx_packets'] - before['rx_packets'], NBYTES):.1f}"
              " packets/MB")
    st = lab.udpnest_status()
    assert not {k: v for k, v in st["drops"].items() if v}, st["drops"]


def test_plain_ipv4_wire(lab_factory):
    _plain_case(lab_factory(4, "wire"))


def test_plain_ipv6_offload(lab_factory):
    _plain_case(lab_factory(6, "offload"))


@pytest.mark.slow
@pytest.mark.parametrize("family,underlay", [(4, "offload"), (6, "wire")])
def test_plain_matrix(lab_factory, family, underlay):
    _plain_case(lab_factory(family, underlay))
