"""The lab's pure description and the CLI wiring (no root needed)."""

from __future__ import annotations

import ipaddress

import pytest

from udpnest.lab import topology
from udpnest.lab.topology import LabSpec

DOC_NETS = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24",
                                              "2001:db8::/32")]


def in_doc_ranges(addr: str) -> bool:
    a = ipaddress.ip_address(addr)
    return any(a.version == n.version and a in n for n in DOC_NETS)


@pytest.mark.parametrize("uf,nf", [(4, 4), (6, 6), (4, 6), (6, 4)])
def test_plan_uses_only_documentation_addresses(uf, nf):
    spec = LabSpec(underlay_family=uf, nested_family=nf)
    p = topology.plan(spec)
    addrs = list(p.all_addresses())
    assert addrs and all(in_doc_ranges(a) for a in addrs), [a for a in addrs if not in_doc_ranges(a)]
    for ep in topology.udpnest_plans(spec).values():
        for a in (ep.underlay_local, ep.underlay_remote, *(c.split("/")[0] for c in ep.tap_addresses),
                  *(c.split("/")[0] for c in ep.routed_networks)):
            assert in_doc_ranges(a)


@pytest.mark.parametrize("uf,nf,outer,nested", [(4, 4, 1450, 1390), (6, 6, 1430, 1350), (6, 4, 1430, 1370),
                                                (4, 6, 1450, 1370)])
def test_mtus_leave_room_for_two_vxlan_levels_and_folding(uf, nf, outer, nested):
    spec = LabSpec(underlay_family=uf, nested_family=nf)
    assert (spec.outer_mtu, spec.access_mtu, spec.nested_mtu) == (outer, outer, nested)
    p = topology.plan(spec)
    assert {v.ifname: v.mtu for v in p.vxlans} == {"nvx0": nested, "ovx0": outer}
    assert {v.ifname: v.mtu for v in p.veths} == {"to-wl": outer, "ul0": 1500}


def test_every_namespace_has_the_prefix_and_modes_only_change_host_routes():
    spec = LabSpec(prefix="unl-x")
    p = topology.plan(spec)
    assert p.namespaces == ("unl-x-wa", "unl-x-ha", "unl-x-hb", "unl-x-wb")
    for mode, routes in p.mode_routes.items():
        assert {r.ns for r in routes} == {"unl-x-ha", "unl-x-hb"}, mode
        assert len(routes) == 4  # two hosts x two families
    vx = {(v.ns, v.ifname): v for v in p.vxlans}
    assert vx["unl-x-wa", "nvx0"].port == 6082 and vx["unl-x-ha", "ovx0"].port == 4789


def test_vxlan_endpoints_follow_the_selected_families():
    p = topology.plan(LabSpec(underlay_family=6, nested_family=4))
    vx = {(v.ns.rsplit("-", 1)[1], v.ifname): v for v in p.vxlans}
    assert ipaddress.ip_address(vx["wa", "nvx0"].local).version == 4
    assert ipaddress.ip_address(vx["ha", "ovx0"].remote).version == 6


@pytest.mark.parametrize("uf,nf", [(4, 4), (6, 6), (4, 6), (6, 4)])
def test_udpnest_plans_fit_the_underlay(uf, nf):
    plans = topology.udpnest_plans(LabSpec(underlay_family=uf, nested_family=nf))
    a, b = plans["a"], plans["b"]
    assert (a.netns, b.netns) == ("unl-ha", "unl-hb")
    assert (a.underlay_local, a.underlay_remote) == (b.underlay_remote, b.underlay_local)
    assert a.nested_port == 6082 and a.geneve_port == 6081
    assert a.wire_headroom >= 0


def test_spec_validation():
    with pytest.raises(ValueError):
        LabSpec(underlay_family=5)
    with pytest.raises(ValueError):
        LabSpec(mode="geneve")
    with pytest.raises(ValueError):
        LabSpec(prefix="")


def test_cli_registers_lab_bench_demo():
    from udpnest.cli import build_parser

    p = build_parser()
    a = p.parse_args(["lab", "up", "--ipv6", "--underlay", "wire"])
    assert a.action == "up" and a.ipv6 and a.underlay == "wire" and callable(a.func)
    a = p.parse_args(["bench", "--quick", "--json", "--modes", "kernel-vxlan", "kernel-vxlan-in-vxlan"])
    assert a.quick and a.json and a.modes == ["kernel-vxlan", "kernel-vxlan-in-vxlan"]
    a = p.parse_args(["demo"])
    assert a.prefix == "unl-demo" and callable(a.func)


@pytest.mark.parametrize("uf,nf", [(4, 4), (6, 6), (6, 4), (4, 6)])
def test_full_sized_nested_packet_fits_the_underlay_when_folded(uf, nf):
    """A nested packet of nvx0's MTU, carried by the TAP and folded by udpnest, fits one 1500-byte datagram."""
    from udpnest import fold
    from udpnest.wire.eth import build_eth
    from udpnest.wire.ipv4 import build_ipv4
    from udpnest.wire.ipv6 import build_ipv6
    from udpnest.wire.udp import build_udp
    from udpnest.wire.vxlan import build_vxlan

    spec = LabSpec(underlay_family=uf, nested_family=nf)
    inner = build_eth(b"\x02" * 6, b"\x02" * 6, 0x0800) + bytes(spec.nested_mtu)
    vx = build_vxlan(100) + inner
    udp = build_udp(40000, topology.NESTED_PORT, len(vx)) + vx
    if nf == 4:
        ip = build_ipv4(bytes(4), bytes(4), 17, len(udp)) + udp
        frame = build_eth(b"\x02" * 6, b"\x02" * 6, 0x0800) + ip
    else:
        ip = build_ipv6(bytes(16), bytes(16), 17, len(udp)) + udp
        frame = build_eth(b"\x02" * 6, b"\x02" * 6, 0x86DD) + ip
    assert len(ip) <= spec.access_mtu  # the TAP (access MTU) carries it
    folded = fold(frame, ports={topology.NESTED_PORT: __import__("udpnest").Encap.VXLAN})
    assert folded.levels == 1
    outer_ip = 20 if uf == 4 else 40
    assert outer_ip + 8 + len(folded.payload) == topology.UNDERLAY_MTU
