"""The 4-namespace lab: workload A | host A | underlay veth | host B | workload B.

Layout (``P`` is the prefix, ``unl`` by default; every namespace is named ``P-<role>`` so that ``down`` finds
leftovers of a crashed run)::

    P-wa                P-ha                            P-hb                P-wb
    nvx0 (VXLAN 6082)                                                       nvx0 (VXLAN 6082)
    to-host ---veth--- to-wl   ul0 ====underlay veth==== ul0   to-wl ---veth--- to-host
                               ovx0 (VXLAN 4789) ....... ovx0
                               [unt0: udpnest TAP]       [unt0: udpnest TAP]

The workload side never changes between modes: each workload has a *nested* kernel VXLAN ``nvx0`` (VNI 100,
dstport 6082, endpoints = the workloads' access addresses) and the benchmark traffic runs between the ``nvx0``
addresses.  Only the way host A gets the nested VXLAN packets to host B differs, by one route per family in
each host namespace (switched with :func:`set_mode`):

``kernel-vxlan``
    Single-level baseline: the hosts plainly route the nested VXLAN packets over the underlay veth.  This is the
    fair "one UDP encapsulation on the wire" reference: same workload VXLAN, same MTUs, same number of namespaces
    and forwarding hops as the other modes, just no second tunnel.  (On the underlay the packets have the
    *nested* family; the underlay family setting only applies to the outer tunnel of the other modes.)
``kernel-vxlan-in-vxlan``
    The hosts route the nested VXLAN packets into a second kernel VXLAN ``ovx0`` (VNI 200, dstport 4789) between
    the hosts' underlay addresses: double UDP encapsulation on the wire.
``udpnest``
    The hosts route the nested VXLAN packets into a TAP ``unt0`` owned by a udpnest endpoint process in the host
    namespace; see :func:`udpnest_plans` and :func:`plug_udpnest` for the contract.

MTUs are equal in every mode so the inner TCP MSS is the same: underlay 1500, access links and ``ovx0``
``1500 - VXLAN overhead(underlay family)``, ``nvx0`` ``access MTU - VXLAN overhead(nested family)``.
Both address families are configured everywhere; ``underlay_family`` picks the addresses of the outer tunnel
(``ovx0`` / the udpnest endpoints), ``nested_family`` those of the workload VXLAN and of the benchmark traffic.

Underlay settings (:func:`set_underlay`), applied to *both* ends of the underlay veth since each end sends
(data one way, ACKs the other) and receives:

``offload``  veth defaults: TSO/UDP-tunnel GSO on, checksums left partial, super-packets cross whole.
``wire``     ``tso off tx-udp_tnl-segmentation off tx-udp_tnl-csum-segmentation off tx off`` plus
             ``gro on rx-udp-gro-forwarding on``: every frame on the underlay is <= MTU with valid checksums,
             the receiver may merge them again with GRO, like a real NIC.

Only documentation prefixes are used (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32).
Everything is done with pyroute2: netlink, and its ethtool module (SIOCETHTOOL, sockets opened inside the
namespace) for the offloads: no ``ethtool`` program and no text parsing.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

DEFAULT_PREFIX = "unl"
ROLES = ("wa", "ha", "hb", "wb")
MODES = ("kernel-vxlan", "kernel-vxlan-in-vxlan", "udpnest")
KERNEL_MODES = MODES[:2]
UNDERLAYS = ("offload", "wire")
FAMILIES = (4, 6)

UNDERLAY_MTU = 1500
#: IP + UDP + VXLAN + inner Ethernet, by the family of the outer IP header.
VXLAN_OVERHEAD = {4: 20 + 8 + 8 + 14, 6: 40 + 8 + 8 + 14}
NESTED_VNI = 100
NESTED_PORT = 6082
OUTER_VNI = 200
OUTER_PORT = 4789
GENEVE_PORT = 6081

IF_ACCESS_WL = "to-host"  # workload side of the access veth
IF_ACCESS_HOST = "to-wl"  # host side of the access veth
IF_UNDERLAY = "ul0"
IF_NESTED = "nvx0"
IF_OUTER = "ovx0"
IF_TAP = "unt0"
#: Written into the alias of host A's ``ul0``; ``up`` is a no-op when it matches.
ALIAS_TAG = "udpnest-lab"

# Offload settings of the underlay veth (both ends).
ETHTOOL_WIRE = (
    "tso", "off", "tx-udp_tnl-segmentation", "off", "tx-udp_tnl-csum-segmentation", "off", "tx", "off",
    "gro", "on", "rx-udp-gro-forwarding", "on",
)
ETHTOOL_OFFLOAD = (  # the veth defaults
    "tx", "on", "tso", "on", "tx-udp_tnl-segmentation", "on", "tx-udp_tnl-csum-segmentation", "on",
    "gro", "off", "rx-udp-gro-forwarding", "off",
)

# Addresses: (side A host part, side B host part) inside one prefix per family.
_NETS = {
    # name: {family: (network, address A, address B)}
    "access_a": {4: ("192.0.2.0/28", "192.0.2.1", "192.0.2.2"), 6: ("2001:db8:a::/64", "2001:db8:a::1",
                                                                     "2001:db8:a::2")},
    "access_b": {4: ("192.0.2.16/28", "192.0.2.17", "192.0.2.18"), 6: ("2001:db8:b::/64", "2001:db8:b::1",
                                                                       "2001:db8:b::2")},
    "outer": {4: ("192.0.2.32/28", "192.0.2.33", "192.0.2.34"), 6: ("2001:db8:c::/64", "2001:db8:c::1",
                                                                    "2001:db8:c::2")},
    "tap": {4: ("192.0.2.48/28", "192.0.2.49", "192.0.2.50"), 6: ("2001:db8:d::/64", "2001:db8:d::1",
                                                                  "2001:db8:d::2")},
    "underlay": {4: ("198.51.100.0/24", "198.51.100.1", "198.51.100.2"), 6: ("2001:db8:100::/64",
                                                                             "2001:db8:100::1",
                                                                             "2001:db8:100::2")},
    "inner": {4: ("203.0.113.0/24", "203.0.113.1", "203.0.113.2"), 6: ("2001:db8:ff::/64", "2001:db8:ff::1",
                                                                       "2001:db8:ff::2")},
}


def _net(name: str, family: int) -> tuple[str, str, str, int]:
    """(network, address of side A, address of side B, prefix length)."""
    network, a, b = _NETS[name][family]
    return network, a, b, ipaddress.ip_network(network).prefixlen


@dataclass(frozen=True)
class LabSpec:
    """What to build.  ``mode`` and ``underlay`` can be changed on a running lab (set_mode / set_underlay)."""

    prefix: str = DEFAULT_PREFIX
    underlay_family: int = 4
    nested_family: int = 4
    underlay: str = "offload"
    mode: str = "kernel-vxlan"

    def __post_init__(self) -> None:
        if self.underlay_family not in FAMILIES or self.nested_family not in FAMILIES:
            raise ValueError(f"families must be 4 or 6, got {self.underlay_family}/{self.nested_family}")
        if self.underlay not in UNDERLAYS:
            raise ValueError(f"underlay must be one of {UNDERLAYS}, got {self.underlay!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not self.prefix or "/" in self.prefix or len(self.prefix) > 20:
            raise ValueError(f"bad namespace prefix {self.prefix!r}")

    def ns(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    @property
    def namespaces(self) -> tuple[str, ...]:
        return tuple(self.ns(r) for r in ROLES)

    @property
    def outer_mtu(self) -> int:
        return UNDERLAY_MTU - VXLAN_OVERHEAD[self.underlay_family]

    @property
    def access_mtu(self) -> int:
        return self.outer_mtu

    @property
    def nested_mtu(self) -> int:
        """The workload VXLAN's MTU: small enough that a full-sized nested packet still fits one underlay
        datagram when udpnest folds it (outer IP/UDP + Geneve + a FOLD option carrying the nested
        Ethernet/IP/UDP/VXLAN headers + the inner Ethernet header), so every mode has the same MSS."""
        nested_ip = 20 if self.nested_family == 4 else 40
        fold_option = 4 + ((6 + 14 + nested_ip + 8 + 8 + 3) & ~3)
        outer_ip = 20 if self.underlay_family == 4 else 40
        folded = UNDERLAY_MTU - outer_ip - 8 - 8 - fold_option - 14
        return min(self.access_mtu - VXLAN_OVERHEAD[self.nested_family], folded)

    def inner_address(self, side: str) -> str:
        """Address of workload ``side`` ("a"/"b") inside the nested VXLAN: what benchmarks connect to."""
        _, a, b, _ = _net("inner", self.nested_family)
        return a if side == "a" else b

    def alias(self) -> str:
        return (f"{ALIAS_TAG} uf={self.underlay_family} nf={self.nested_family} underlay={self.underlay} "
                f"mode={self.mode}")


# ---------------------------------------------------------------------------------------------------------
# Pure description


@dataclass(frozen=True)
class Veth:
    ns: str
    ifname: str
    peer_ns: str
    peer_ifname: str
    mtu: int


@dataclass(frozen=True)
class Vxlan:
    ns: str
    ifname: str
    vni: int
    port: int
    local: str
    remote: str
    link: str
    mtu: int


@dataclass(frozen=True)
class Addr:
    ns: str
    ifname: str
    address: str
    prefixlen: int


@dataclass(frozen=True)
class Route:
    ns: str
    dst: str  # network in CIDR notation
    ifname: str
    gateway: str | None = None


@dataclass(frozen=True)
class Plan:
    namespaces: tuple[str, ...]
    sysctls: tuple[tuple[str, str, str], ...]  # (ns, key under /proc/sys, value)
    veths: tuple[Veth, ...]
    vxlans: tuple[Vxlan, ...]
    addrs: tuple[Addr, ...]
    routes: tuple[Route, ...]  # mode independent
    mode_routes: dict[str, tuple[Route, ...]] = field(default_factory=dict)

    def all_addresses(self) -> Iterable[str]:
        for a in self.addrs:
            yield a.address
        for v in self.vxlans:
            yield v.local
            yield v.remote
        for r in (*self.routes, *(r for rs in self.mode_routes.values() for r in rs)):
            yield r.dst.split("/")[0]
            if r.gateway:
                yield r.gateway


def plan(spec: LabSpec) -> Plan:
    """Everything ``up`` creates, as data (no I/O)."""
    wa, ha, hb, wb = spec.namespaces
    nf, uf = spec.nested_family, spec.underlay_family
    sysctls: list[tuple[str, str, str]] = []
    for ns in spec.namespaces:
        sysctls += [
            (ns, "net/ipv6/conf/all/accept_dad", "0"),
            (ns, "net/ipv6/conf/default/accept_dad", "0"),
            (ns, "net/ipv4/conf/all/rp_filter", "0"),
            (ns, "net/ipv4/conf/default/rp_filter", "0"),
        ]
    for ns in (ha, hb):
        sysctls += [(ns, "net/ipv4/ip_forward", "1"), (ns, "net/ipv6/conf/all/forwarding", "1")]
    veths = (
        Veth(ha, IF_ACCESS_HOST, wa, IF_ACCESS_WL, spec.access_mtu),
        Veth(ha, IF_UNDERLAY, hb, IF_UNDERLAY, UNDERLAY_MTU),
        Veth(hb, IF_ACCESS_HOST, wb, IF_ACCESS_WL, spec.access_mtu),
    )
    addrs: list[Addr] = []
    routes: list[Route] = []
    mode_routes: dict[str, list[Route]] = {m: [] for m in MODES}
    for fam in FAMILIES:
        acc_a, wa_addr, ha_addr, acc_a_len = _net("access_a", fam)
        acc_b, wb_addr, hb_addr, acc_b_len = _net("access_b", fam)
        _, ul_a, ul_b, ul_len = _net("underlay", fam)
        _, ov_a, ov_b, ov_len = _net("outer", fam)
        _, in_a, in_b, in_len = _net("inner", fam)
        _, tap_a, tap_b, _ = _net("tap", fam)
        addrs += [
            Addr(wa, IF_ACCESS_WL, wa_addr, acc_a_len), Addr(ha, IF_ACCESS_HOST, ha_addr, acc_a_len),
            Addr(wb, IF_ACCESS_WL, wb_addr, acc_b_len), Addr(hb, IF_ACCESS_HOST, hb_addr, acc_b_len),
            Addr(ha, IF_UNDERLAY, ul_a, ul_len), Addr(hb, IF_UNDERLAY, ul_b, ul_len),
            Addr(ha, IF_OUTER, ov_a, ov_len), Addr(hb, IF_OUTER, ov_b, ov_len),
            Addr(wa, IF_NESTED, in_a, in_len), Addr(wb, IF_NESTED, in_b, in_len),
        ]
        routes += [
            Route(wa, acc_b, IF_ACCESS_WL, ha_addr),
            Route(wb, acc_a, IF_ACCESS_WL, hb_addr),
        ]
        mode_routes["kernel-vxlan"] += [Route(ha, acc_b, IF_UNDERLAY, ul_b), Route(hb, acc_a, IF_UNDERLAY, ul_a)]
        mode_routes["kernel-vxlan-in-vxlan"] += [Route(ha, acc_b, IF_OUTER, ov_b), Route(hb, acc_a, IF_OUTER, ov_a)]
        # the TAPs are one Ethernet segment through the endpoints: route via the far TAP's address
        mode_routes["udpnest"] += [Route(ha, acc_b, IF_TAP, tap_b), Route(hb, acc_a, IF_TAP, tap_a)]
    nwa, nwb = _net("access_a", nf)[1], _net("access_b", nf)[1]
    _, oua, oub, _ = _net("underlay", uf)
    vxlans = (
        Vxlan(wa, IF_NESTED, NESTED_VNI, NESTED_PORT, nwa, nwb, IF_ACCESS_WL, spec.nested_mtu),
        Vxlan(wb, IF_NESTED, NESTED_VNI, NESTED_PORT, nwb, nwa, IF_ACCESS_WL, spec.nested_mtu),
        Vxlan(ha, IF_OUTER, OUTER_VNI, OUTER_PORT, oua, oub, IF_UNDERLAY, spec.outer_mtu),
        Vxlan(hb, IF_OUTER, OUTER_VNI, OUTER_PORT, oub, oua, IF_UNDERLAY, spec.outer_mtu),
    )
    return Plan(
        namespaces=spec.namespaces,
        sysctls=tuple(sysctls),
        veths=veths,
        vxlans=vxlans,
        addrs=tuple(addrs),
        routes=tuple(routes),
        mode_routes={m: tuple(rs) for m, rs in mode_routes.items()},
    )


# ---------------------------------------------------------------------------------------------------------
# The udpnest endpoint hook


@dataclass(frozen=True)
class EndpointPlan:
    """What one udpnest endpoint needs to know to serve the lab (one per host namespace).

    The endpoint process runs in ``netns``.  It creates the TAP ``tap_ifname`` there itself (IFF_TAP|IFF_NO_PI|
    IFF_VNET_HDR and whatever TUNSETOFFLOAD it wants) and sends/receives Geneve on ``underlay_local`` <->
    ``underlay_remote`` port ``geneve_port``.  Once the TAP exists, :func:`plug_udpnest` configures it: MTU
    ``tap_mtu``, up, addresses ``tap_addresses``, and routes to the far workload's access networks via the
    TAP.  The two TAPs form one Ethernet segment through the endpoints (Geneve carries Ethernet): ARP and
    neighbour discovery cross it like any other frame, so frames read from a TAP are addressed to the far
    TAP's MAC and written unchanged on the far side.  Frames carry the nested VXLAN packets
    (``nested_family``, UDP dport ``nested_port``, VNI ``nested_vni``), possibly as GSO super-packets.
    Until the TAP is up, writes may fail with EIO (the peer may already send): an endpoint drops those.

    ``wire_headroom`` is what is left of the 1500-byte underlay by a full-sized nested packet carried as
    plain Geneve (outer IP + UDP + Geneve + inner Ethernet around ``tap_mtu``); folding adds the FOLD
    option instead of the nested headers, which :attr:`LabSpec.nested_mtu` leaves room for.
    """

    side: str  # "a" or "b"
    netns: str
    tap_ifname: str
    tap_mtu: int
    tap_addresses: tuple[str, ...]  # CIDR, both families
    underlay_family: int
    underlay_ifname: str
    underlay_local: str
    underlay_remote: str
    geneve_port: int
    nested_family: int
    nested_port: int
    nested_vni: int
    routed_networks: tuple[str, ...]  # far workload access networks routed into the TAP
    wire_headroom: int


def udpnest_plans(spec: LabSpec) -> dict[str, EndpointPlan]:
    """The two endpoint plans, keyed "a" (host A) and "b" (host B).  Pure."""
    uf = spec.underlay_family
    _, ul_a, ul_b, _ = _net("underlay", uf)
    out = {}
    for side, role, local, remote, far in (("a", "ha", ul_a, ul_b, "access_b"), ("b", "hb", ul_b, ul_a, "access_a")):
        taps = []
        for fam in FAMILIES:
            _, ta, tb, tl = _net("tap", fam)
            taps.append(f"{ta if side == 'a' else tb}/{tl}")
        outer_ip = 20 if uf == 4 else 40
        wire = spec.access_mtu + 14 + outer_ip + 8 + 8
        out[side] = EndpointPlan(
            side=side,
            netns=spec.ns(role),
            tap_ifname=IF_TAP,
            tap_mtu=spec.access_mtu,
            tap_addresses=tuple(taps),
            underlay_family=uf,
            underlay_ifname=IF_UNDERLAY,
            underlay_local=local,
            underlay_remote=remote,
            geneve_port=GENEVE_PORT,
            nested_family=spec.nested_family,
            nested_port=NESTED_PORT,
            nested_vni=NESTED_VNI,
            routed_networks=tuple(_net(far, fam)[0] for fam in FAMILIES),
            wire_headroom=UNDERLAY_MTU - wire,
        )
    return out


def plug_udpnest(plan_: EndpointPlan, tap_ifname: str | None = None, timeout: float = 10.0) -> int:
    """Wire an endpoint's TAP into its host namespace; returns the TAP's ifindex.

    Call after the endpoint created ``tap_ifname`` (default ``plan_.tap_ifname``) in ``plan_.netns``; waits up
    to ``timeout`` seconds for it to appear.  Sets MTU, up and the TAP addresses.  The routes into the
    TAP are installed by ``set_mode(spec, "udpnest")``.  Idempotent.
    """
    from pyroute2 import IPRoute

    name = tap_ifname or plan_.tap_ifname
    with IPRoute(netns=plan_.netns) as ip:
        deadline = time.monotonic() + timeout
        while not (idx := ip.link_lookup(ifname=name)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"TAP {name} did not appear in {plan_.netns}")
            time.sleep(0.05)
        index = idx[0]
        ip.link("set", index=index, mtu=plan_.tap_mtu)
        ip.link("set", index=index, state="up")
        for cidr in plan_.tap_addresses:
            address, prefixlen = cidr.split("/")
            _add_addr(ip, index, address, int(prefixlen))
    return index


# ---------------------------------------------------------------------------------------------------------
# Builder (root)


def _add_addr(ip, index: int, address: str, prefixlen: int) -> None:
    from pyroute2 import NetlinkError

    IFA_F_NODAD = 0x02
    try:
        ip.addr("add", index=index, address=address, prefixlen=prefixlen, flags=IFA_F_NODAD)
    except NetlinkError as e:
        if e.code != 17:  # EEXIST
            raise


def _write_sysctls(sysctls: Iterable[tuple[str, str, str]]) -> None:
    from pyroute2 import netns

    by_ns: dict[str, list[tuple[str, str]]] = {}
    for ns, key, value in sysctls:
        by_ns.setdefault(ns, []).append((key, value))
    for ns, items in by_ns.items():
        netns.pushns(ns)  # /proc/sys/net follows the calling thread's network namespace
        try:
            for key, value in items:
                with open(f"/proc/sys/{key}", "w") as f:
                    f.write(value)
        finally:
            netns.popns()


def _index(ip, ifname: str) -> int:
    idx = ip.link_lookup(ifname=ifname)
    if not idx:
        raise LookupError(f"no link {ifname}")
    return idx[0]


def link_exists(ns: str, ifname: str) -> bool:
    from pyroute2 import IPRoute

    with IPRoute(netns=ns) as ip:
        return bool(ip.link_lookup(ifname=ifname))


def _existing_alias(spec: LabSpec) -> str | None:
    from pyroute2 import IPRoute, netns

    if spec.ns("ha") not in netns.listnetns():
        return None
    with IPRoute(netns=spec.ns("ha")) as ip:
        idx = ip.link_lookup(ifname=IF_UNDERLAY)
        if not idx:
            return None
        return ip.get_links(idx[0])[0].get("ifalias")


def up(spec: LabSpec) -> bool:
    """Build the lab; returns False if an identical lab is already up.  A different/partial lab is rebuilt."""
    alias = _existing_alias(spec)
    complete = all(n in _listnetns() for n in spec.namespaces)
    if alias == spec.alias() and complete:
        return False
    if complete and alias is not None and alias.startswith(ALIAS_TAG) and _same_topology(alias, spec):
        # Same addresses and links; only mode and/or underlay setting differ.
        set_underlay(spec, spec.underlay)
        set_mode(spec, spec.mode)
        return True
    down(spec.prefix)
    try:
        _build(spec)
    except BaseException:
        down(spec.prefix)
        raise
    return True


def _same_topology(alias: str, spec: LabSpec) -> bool:
    return f"uf={spec.underlay_family} nf={spec.nested_family} " in alias


def _listnetns() -> list[str]:
    from pyroute2 import netns

    return list(netns.listnetns())


def _build(spec: LabSpec) -> None:
    from pyroute2 import IPRoute, netns

    p = plan(spec)
    for ns in p.namespaces:
        netns.create(ns)
    _write_sysctls(p.sysctls)
    for v in p.veths:
        with IPRoute(netns=v.ns) as ip:
            peer_fd = os.open(f"/run/netns/{v.peer_ns}", os.O_RDONLY)
            try:
                ip.link("add", ifname=v.ifname, kind="veth", mtu=v.mtu,
                        peer={"ifname": v.peer_ifname, "net_ns_fd": peer_fd, "mtu": v.mtu})
            finally:
                os.close(peer_fd)
    for ns in p.namespaces:
        with IPRoute(netns=ns) as ip:
            for link in ip.get_links():
                if link.get("ifname") != "lo":
                    ip.link("set", index=link["index"], state="up")
            ip.link("set", index=_index(ip, "lo"), state="up")
    for x in p.vxlans:
        fam = ipaddress.ip_address(x.local).version
        kw = {"vxlan_local": x.local, "vxlan_group": x.remote} if fam == 4 else {
            "vxlan_local6": x.local, "vxlan_group6": x.remote}
        with IPRoute(netns=x.ns) as ip:
            ip.link("add", ifname=x.ifname, kind="vxlan", vxlan_id=x.vni, vxlan_port=x.port,
                    vxlan_link=_index(ip, x.link), vxlan_learning=0, vxlan_udp_csum=1, mtu=x.mtu, **kw)
            ip.link("set", index=_index(ip, x.ifname), state="up")
    for a in p.addrs:
        with IPRoute(netns=a.ns) as ip:
            _add_addr(ip, _index(ip, a.ifname), a.address, a.prefixlen)
    for r in p.routes:
        _route(r)
    with IPRoute(netns=spec.ns("ha")) as ip:
        ip.link("set", index=_index(ip, IF_UNDERLAY), ifalias=spec.alias())
    set_underlay(spec, spec.underlay)
    set_mode(spec, spec.mode)


def _route(r: Route, command: str = "replace") -> None:
    from pyroute2 import IPRoute

    net = ipaddress.ip_network(r.dst)
    with IPRoute(netns=r.ns) as ip:
        kw: dict = {"dst": str(net.network_address), "dst_len": net.prefixlen, "oif": _index(ip, r.ifname)}
        if r.gateway:
            kw["gateway"] = r.gateway
        kw["family"] = 2 if net.version == 4 else 10
        ip.route(command, **kw)


def set_mode(spec: LabSpec, mode: str) -> LabSpec:
    """Point the hosts' routes to the far workload at the carrier of ``mode``.

    For ``udpnest`` the TAPs must already be plugged (see :func:`plug_udpnest`).
    """
    new = replace(spec, mode=mode)
    for r in plan(new).mode_routes[mode]:
        _route(r)
    _set_alias(new)
    return new


def set_underlay(spec: LabSpec, underlay: str) -> LabSpec:
    """Apply ``offload`` or ``wire`` to both ends of the underlay veth (see the module docstring)."""
    new = replace(spec, underlay=underlay)
    args = ETHTOOL_WIRE if underlay == "wire" else ETHTOOL_OFFLOAD
    for role in ("ha", "hb"):
        ethtool_k(spec.ns(role), IF_UNDERLAY, args)
    _set_alias(new)
    return new


# ``ethtool -K`` names that stand for several kernel features: the ethtool program's own aliases, with its
# glob patterns (ethtool 6.1, off_flag_def), so that features newer than the table follow their group as they
# do with the program (kernel 6.18's tx-tcp-accecn-segmentation belongs to "tso").  Every other name is a
# kernel feature name; ``ethtool -k`` shows both.
ETHTOOL_ALIASES = {
    "rx": "rx-checksum",
    "tx": "tx-checksum-*",
    "sg": "tx-scatter-gather*",
    "tso": "tx-tcp*-segmentation",
    "gso": "tx-generic-segmentation",
    "gro": "rx-gro",
    "lro": "rx-lro",
}
# the summary lines ``ethtool -k`` prints for the aliases
ETHTOOL_SUMMARY = {"rx-checksumming": "rx", "tx-checksumming": "tx", "scatter-gather": "sg",
                   "tcp-segmentation-offload": "tso", "generic-segmentation-offload": "gso",
                   "generic-receive-offload": "gro", "large-receive-offload": "lro"}


def _members(name: str, features) -> list[str]:
    import fnmatch

    return [f for f in features if fnmatch.fnmatchcase(f, ETHTOOL_ALIASES.get(name, name))]


def _ethtool(ns: str):
    """pyroute2's Ethtool with its sockets opened inside ``ns`` (the SIOCETHTOOL ioctl acts on the network
    namespace of the socket it is issued on; pyroute2's Ethtool has no netns argument, so the sockets are
    created while this thread is switched into ``ns``)."""
    from pyroute2.ethtool import Ethtool
    from pyroute2.netns import popns, pushns

    pushns(ns)
    try:
        return Ethtool()
    finally:
        popns()


def ethtool_k(ns: str, ifname: str, args: Iterable[str]) -> None:
    """``ethtool -K IFNAME NAME on|off ...`` in ``ns``, through pyroute2 (SIOCETHTOOL ETHTOOL_SFEATURES).

    ``NAME`` is a kernel feature (``tx-udp_tnl-segmentation``, ``rx-udp-gro-forwarding``, ...) or one of the
    ethtool program's aliases (:data:`ETHTOOL_ALIASES`: ``tx``, ``tso``, ``gso``, ``gro``, ...).  As with
    ethtool, the kernel may turn dependent features off by itself (no ``tx`` checksum: no TSO).  Raises
    RuntimeError naming the feature that the device does not have or cannot change.
    """
    args = list(args)
    if len(args) % 2 or any(v not in ("on", "off") for v in args[1::2]):
        raise ValueError(f"ethtool -K arguments must be NAME on|off pairs, got {args}")
    with _ethtool(ns) as eth:
        feats = eth.get_features(ifname)
        for name, value in zip(args[::2], args[1::2], strict=True):
            present = [m for m in _members(name, feats.features) if feats.features[m].available]
            if not present:
                raise RuntimeError(f"ethtool -K {ifname} {name} {value} in {ns}: the device has no changeable "
                                   f"feature {ETHTOOL_ALIASES.get(name, name)}")
            for m in present:
                feats.features[m].enable = value == "on"
        eth.set_features(ifname, feats)


def ethtool_features(ns: str, ifname: str) -> dict[str, str]:
    """``ethtool -k`` as {feature: "on"/"off"}: every kernel feature, plus ethtool's summary lines
    (``tx-checksumming``, ``tcp-segmentation-offload``, ...: on when any of their features is on)."""
    with _ethtool(ns) as eth:
        feats = eth.get_features(ifname).features
    out = {name: "on" if f.enable else "off" for name, f in feats.items()}
    for summary, alias in ETHTOOL_SUMMARY.items():
        members = _members(alias, feats)
        if members:
            out[summary] = "on" if any(feats[m].enable for m in members) else "off"
    return out


def _set_alias(spec: LabSpec) -> None:
    from pyroute2 import IPRoute

    with IPRoute(netns=spec.ns("ha")) as ip:
        ip.link("set", index=_index(ip, IF_UNDERLAY), ifalias=spec.alias())


def lab_namespaces(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Existing namespaces that belong to a lab with ``prefix`` (any role, including partial labs)."""
    return sorted(n for n in _listnetns() if n.startswith(f"{prefix}-"))


def ns_pids(names: Iterable[str]) -> dict[str, list[int]]:
    """Processes whose network namespace is one of ``names``."""
    from pyroute2 import netns

    wanted = set(names)
    return {k: v for k, v in netns.ns_pids().items() if k in wanted}


def down(prefix: str = DEFAULT_PREFIX, timeout: float = 5.0) -> list[str]:
    """Kill every process inside the lab's namespaces, then remove them.  Safe after a crash; returns names."""
    from pyroute2 import netns

    names = lab_namespaces(prefix)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [p for ps in ns_pids(names).values() for p in ps]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(ns_pids(names).values()):
            time.sleep(0.05)
    for n in names:
        try:
            netns.remove(n)
        except OSError:
            pass
    return names


@dataclass
class NsStatus:
    name: str
    links: list[dict] = field(default_factory=list)  # {"ifname", "kind", "mtu", "state", "addresses", "alias"}
    routes: list[str] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)


def status(prefix: str = DEFAULT_PREFIX) -> list[NsStatus]:
    from pyroute2 import IPRoute

    names = lab_namespaces(prefix)
    pids = ns_pids(names)
    out = []
    for n in names:
        st = NsStatus(n, pids=sorted(pids.get(n, [])))
        with IPRoute(netns=n) as ip:
            addrs: dict[int, list[str]] = {}
            for a in ip.get_addr():
                if a.get("scope") == 0:  # global only
                    addrs.setdefault(a["index"], []).append(f"{a.get('address')}/{a['prefixlen']}")
            names_by_index = {}
            for link in ip.get_links():
                names_by_index[link["index"]] = link.get("ifname")
                st.links.append({
                    "ifname": link.get("ifname"),
                    "kind": link.get(("linkinfo", "kind")) or "",
                    "mtu": link.get("mtu"),
                    "state": link.get("operstate"),
                    "addresses": addrs.get(link["index"], []),
                    "alias": link.get("ifalias") or "",
                })
            for fam in (2, 10):
                for r in ip.get_routes(family=fam, table=254):
                    dst = r.get("dst")
                    if not dst:
                        continue
                    gw = r.get("gateway")
                    dev = names_by_index.get(r.get("oif"), "?")
                    st.routes.append(f"{dst}/{r['dst_len']}" + (f" via {gw}" if gw else "") + f" dev {dev}")
        out.append(st)
    return out
