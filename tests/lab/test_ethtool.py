"""lab/topology.py's offload settings go through pyroute2's ethtool module (issue 11): they must agree with what
the ethtool program reads back, inside a network namespace, for every feature the lab uses (root)."""

from __future__ import annotations

import shutil
import subprocess
import uuid

import pytest

from udpnest.lab import topology

pytestmark = [pytest.mark.root, pytest.mark.skipif(not shutil.which("ethtool"), reason="ethtool not installed")]


@pytest.fixture
def veth_ns():
    from pyroute2 import IPRoute, netns

    ns = f"unl-e{uuid.uuid4().hex[:6]}"
    netns.create(ns)
    try:
        with IPRoute(netns=ns) as ip:
            ip.link("add", ifname="ev0", kind="veth", peer={"ifname": "ev1"})
        yield ns
    finally:
        netns.remove(ns)


def ethtool_cli(ns: str, ifname: str) -> dict[str, str]:
    """``ethtool -k`` parsed (only to cross-check the library; the lab itself no longer runs ethtool)."""
    out = subprocess.run(["ip", "netns", "exec", ns, "ethtool", "-k", ifname], capture_output=True, text=True,
                         check=True).stdout
    feats = {}
    for line in out.splitlines()[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            feats[k.strip()] = v.split()[0]
    return feats


LAB_FEATURES = ("tx-checksumming", "tcp-segmentation-offload", "generic-receive-offload", "tx-tcp-segmentation",
                "tx-tcp6-segmentation", "tx-udp_tnl-segmentation", "tx-udp_tnl-csum-segmentation",
                "tx-checksum-ip-generic", "rx-gro", "rx-udp-gro-forwarding", "tx-udp-segmentation")


@pytest.mark.parametrize("setting", ["wire", "offload"])
def test_pyroute2_ethtool_agrees_with_the_ethtool_program(veth_ns, setting):
    if setting == "offload":  # from wire back to the defaults, as set_underlay does
        topology.ethtool_k(veth_ns, "ev0", topology.ETHTOOL_WIRE)
    args = topology.ETHTOOL_WIRE if setting == "wire" else topology.ETHTOOL_OFFLOAD
    topology.ethtool_k(veth_ns, "ev0", args)
    ours, cli = topology.ethtool_features(veth_ns, "ev0"), ethtool_cli(veth_ns, "ev0")
    rx_cli = {k.replace("generic-receive-offload", "rx-gro"): v for k, v in cli.items()}
    for name in LAB_FEATURES:
        assert ours[name] == cli.get(name, rx_cli.get(name)), name
    # and every other feature both know (kernel 6.18's tx-tcp-accecn-segmentation follows "tso" as with ethtool)
    common = set(ours) & set(cli)
    assert len(common) >= 40
    assert {k: ours[k] for k in common} == {k: cli[k] for k in common}
    for name, value in zip(args[::2], args[1::2], strict=True):
        summary = {"tx": "tx-checksumming", "tso": "tcp-segmentation-offload", "gro": "generic-receive-offload"}
        assert cli[summary.get(name, name)] == value, (name, cli)
    # the other end and the root namespace are untouched
    assert ethtool_cli(veth_ns, "ev1")["tx-checksumming"] == "on"


@pytest.fixture
def twin_ns(veth_ns):
    """A second namespace with the same veth pair: the ethtool program's side of the comparison."""
    from pyroute2 import IPRoute, netns

    ns = veth_ns + "c"
    netns.create(ns)
    try:
        with IPRoute(netns=ns) as ip:
            ip.link("add", ifname="ev0", kind="veth", peer={"ifname": "ev1"})
        yield ns
    finally:
        netns.remove(ns)


def test_same_device_state_as_ethtool_K(veth_ns, twin_ns):
    """Setting offload -> wire -> offload through pyroute2 leaves the device exactly as ``ethtool -K`` does
    (all of ``ethtool -k``, "[requested on]" / "[fixed]" annotations included)."""
    for args in (topology.ETHTOOL_OFFLOAD, topology.ETHTOOL_WIRE, topology.ETHTOOL_OFFLOAD):
        topology.ethtool_k(veth_ns, "ev0", args)
        subprocess.run(["ip", "netns", "exec", twin_ns, "ethtool", "-K", "ev0", *args], check=True,
                       capture_output=True)
        ours, theirs = (subprocess.run(["ip", "netns", "exec", ns, "ethtool", "-k", "ev0"], capture_output=True,
                                       text=True, check=True).stdout.splitlines()[1:] for ns in (veth_ns, twin_ns))
        assert ours == theirs, args


def test_unknown_feature_is_refused_by_name(veth_ns):
    with pytest.raises(RuntimeError, match="no-such-feature"):
        topology.ethtool_k(veth_ns, "ev0", ("no-such-feature", "off"))
    with pytest.raises(ValueError):
        topology.ethtool_k(veth_ns, "ev0", ("tso", "maybe"))
