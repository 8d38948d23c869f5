"""Netlink for the kernel dataplane: a geneve device with the Linux >= 7.0 GRO hint, and ethtool features.

* ``IFLA_GENEVE_GRO_HINT`` is attribute 16 of the geneve link data, an NLA_FLAG the kernel accepts only at
  creation.  pyroute2 0.9's geneve attribute map stops at 14 (``IFLA_GENEVE_INNER_PROTO_INHERIT``), and
  iproute2 has no keyword for it, so :class:`geneve_data` extends pyroute2's map with 15
  (``IFLA_GENEVE_PORT_RANGE``) and 16 and is registered as the ``geneve`` link kind.
* ethtool features (``tx-gso-partial`` etc.) are set with the ethtool generic-netlink family
  (``ETHTOOL_MSG_FEATURES_SET`` with a named-bit bitset): pyroute2 only has the ioctl for them.  The message
  is small enough to build here with ``struct``.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Mapping

from pyroute2.netlink import nla
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ifinfmsg.plugins.geneve import geneve as _pyroute2_geneve

IFLA_GENEVE_PORT_RANGE = 15
IFLA_GENEVE_GRO_HINT = 16

# features the kernel dataplane turns on on its geneve device: GSO partial keeps the nested headers of every
# segment byte-identical (fixed nested IPv4 ID), which is what the receiver's GRO hint path merges
GSO_PARTIAL_FEATURES = ("tx-gso-partial", "tx-udp_tnl-segmentation", "tx-udp_tnl-csum-segmentation")


class geneve_data(_pyroute2_geneve):
    nla_map = (*_pyroute2_geneve.nla_map,
               ("IFLA_GENEVE_PORT_RANGE", "port_range"),
               ("IFLA_GENEVE_GRO_HINT", "flag"))

    class port_range(nla):
        fields = (("low", ">H"), ("high", ">H"))


def register() -> None:
    """Make pyroute2 encode/decode geneve link data with the GRO hint attribute (idempotent)."""
    ifinfmsg.ifinfo.register_link_kind(module={"geneve": geneve_data})


def geneve_attrs(vni: int, remote: str, port: int = 6081, gro_hint: bool = True, udp_csum: bool = True,
                 ttl: int = 64, tos: int = 0, df: str = "unset") -> dict:
    """The IFLA_INFO_DATA of a geneve device towards one ``remote`` (pyroute2 keyword form)."""
    data: dict = {"geneve_id": vni, "geneve_port": port, "geneve_ttl": ttl, "geneve_tos": tos,
                  "geneve_df": df}
    if ":" in remote:
        data["geneve_remote6"] = remote
        data["geneve_udp_zero_csum6_tx"] = 0 if udp_csum else 1
        data["geneve_udp_zero_csum6_rx"] = 0
    else:
        data["geneve_remote"] = remote
        data["geneve_udp_csum"] = 1 if udp_csum else 0
    if gro_hint:
        data["geneve_gro_hint"] = True
    return data


def create_geneve(ifname: str, vni: int, remote: str, *, port: int = 6081, gro_hint: bool = True,
                  udp_csum: bool = True, ttl: int = 64, tos: int = 0, df: str = "unset",
                  mtu: int | None = None) -> int:
    """Create the device in the current namespace; returns its ifindex.  NetlinkError on refusal."""
    from pyroute2 import IPRoute

    register()
    data = geneve_attrs(vni, remote, port, gro_hint, udp_csum, ttl, tos, df)
    with IPRoute() as ipr:
        kw = {"mtu": mtu} if mtu else {}
        ipr.link("add", ifname=ifname, kind="geneve", **data, **kw)
        (idx,) = ipr.link_lookup(ifname=ifname)
        return idx


def geneve_info(ifname: str) -> dict:
    """The device's geneve link data as {attribute name: value} (GRO hint included)."""
    from pyroute2 import IPRoute

    register()
    with IPRoute() as ipr:
        (link,) = ipr.get_links(ifname=ifname)
    info = link.get_attr("IFLA_LINKINFO")
    data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
    if data is None or isinstance(data, str):
        return {}
    return {name: value for name, value in data["attrs"]}


# ---------------------------------------------------------------------------------------------------------
# ethtool features over generic netlink

_NLMSG_ERROR = 2
_NLM_F_REQUEST, _NLM_F_ACK = 1, 4
_GENL_ID_CTRL, _CTRL_CMD_GETFAMILY = 0x10, 3
_CTRL_ATTR_FAMILY_ID, _CTRL_ATTR_FAMILY_NAME = 1, 2
_NLA_F_NESTED = 0x8000
_ETHTOOL_MSG_FEATURES_GET, _ETHTOOL_MSG_FEATURES_SET = 11, 12
_ETHTOOL_A_HEADER_DEV_NAME = 2
_ETHTOOL_A_FEATURES_HEADER, _ETHTOOL_A_FEATURES_HW, _ETHTOOL_A_FEATURES_WANTED = 1, 2, 3
_ETHTOOL_A_FEATURES_ACTIVE = 4
_ETHTOOL_A_BITSET_NOMASK, _ETHTOOL_A_BITSET_BITS = 1, 3
_ETHTOOL_A_BITSET_BITS_BIT = 1
_ETHTOOL_A_BITSET_BIT_NAME, _ETHTOOL_A_BITSET_BIT_VALUE = 2, 3


class FeatureError(OSError):
    pass


def _attr(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + b"\x00" * (-n % 4)


def _attrs(data: bytes) -> list[tuple[int, bytes]]:
    out, i = [], 0
    while i + 4 <= len(data):
        n, kind = struct.unpack_from("=HH", data, i)
        if n < 4:
            break
        out.append((kind & 0x3FFF, data[i + 4:i + n]))
        i += (n + 3) & ~3
    return out


class _Genl:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 16)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def request(self, family: int, cmd: int, payload: bytes, ack: bool = False) -> list[bytes]:
        self.seq += 1
        flags = _NLM_F_REQUEST | (_NLM_F_ACK if ack else 0)
        body = struct.pack("=BBH", cmd, 1, 0) + payload
        self.sock.send(struct.pack("=IHHII", 16 + len(body), family, flags, self.seq, os.getpid()) + body)
        replies = []
        while True:
            data = self.sock.recv(1 << 16)
            i = 0
            while i + 16 <= len(data):
                n, kind, _f, seq, _pid = struct.unpack_from("=IHHII", data, i)
                msg = data[i + 16:i + n]
                i += (n + 3) & ~3
                if seq != self.seq:
                    continue
                if kind == _NLMSG_ERROR:
                    (err,) = struct.unpack_from("=i", msg)
                    if err:
                        raise FeatureError(-err, os.strerror(-err))
                    return replies
                replies.append(msg[4:])  # skip the genl header
                if not ack:
                    return replies

    def family(self, name: str) -> int:
        (msg,) = self.request(_GENL_ID_CTRL, _CTRL_CMD_GETFAMILY,
                              _attr(_CTRL_ATTR_FAMILY_NAME, name.encode() + b"\x00"))
        for kind, val in _attrs(msg):
            if kind == _CTRL_ATTR_FAMILY_ID:
                return struct.unpack("=H", val)[0]
        raise FeatureError(2, f"no generic netlink family {name!r}")


def _header(ifname: str) -> bytes:
    return _attr(_ETHTOOL_A_FEATURES_HEADER | _NLA_F_NESTED,
                 _attr(_ETHTOOL_A_HEADER_DEV_NAME, ifname.encode() + b"\x00"))


def _bitset_names(data: bytes) -> dict[str, bool]:
    """Named bits of a compact-or-verbose bitset reply; ethtool replies verbose (names) unless asked not to."""
    out: dict[str, bool] = {}
    attrs = _attrs(data)
    # a bitset without a mask ("list" form, how ACTIVE comes) lists exactly the bits that are set
    nomask = any(kind == _ETHTOOL_A_BITSET_NOMASK for kind, _ in attrs)
    for kind, val in attrs:
        if kind != _ETHTOOL_A_BITSET_BITS:
            continue
        for bkind, bit in _attrs(val):
            if bkind != _ETHTOOL_A_BITSET_BITS_BIT:
                continue
            name, on = None, nomask
            for k, v in _attrs(bit):
                if k == _ETHTOOL_A_BITSET_BIT_NAME:
                    name = v.rstrip(b"\x00").decode()
                elif k == _ETHTOOL_A_BITSET_BIT_VALUE:
                    on = True
            if name:
                out[name] = on
    return out


def get_features(ifname: str) -> dict[str, bool]:
    """Active features of ``ifname`` (``ethtool -k``), by name."""
    g = _Genl()
    try:
        fam = g.family("ethtool")
        (msg,) = g.request(fam, _ETHTOOL_MSG_FEATURES_GET, _header(ifname))
    finally:
        g.close()
    active = {}
    for kind, val in _attrs(msg):
        if kind == _ETHTOOL_A_FEATURES_ACTIVE:
            active = _bitset_names(val)
    return active


def set_features(ifname: str, wanted: Mapping[str, bool]) -> dict[str, bool]:
    """``ethtool -K ifname name on|off ...`` through netlink; returns the features that did not end up as
    wanted (the kernel may refuse some silently, as ethtool reports "Could not change")."""
    bits = b"".join(
        _attr(_ETHTOOL_A_BITSET_BITS_BIT | _NLA_F_NESTED,
              _attr(_ETHTOOL_A_BITSET_BIT_NAME, name.encode() + b"\x00")
              + (_attr(_ETHTOOL_A_BITSET_BIT_VALUE, b"") if on else b""))
        for name, on in wanted.items())
    payload = _header(ifname) + _attr(_ETHTOOL_A_FEATURES_WANTED | _NLA_F_NESTED,
                                      _attr(_ETHTOOL_A_BITSET_BITS | _NLA_F_NESTED, bits))
    g = _Genl()
    try:
        fam = g.family("ethtool")
        g.request(fam, _ETHTOOL_MSG_FEATURES_SET, payload, ack=True)
    finally:
        g.close()
    active = get_features(ifname)
    return {name: active.get(name, False) for name, on in wanted.items() if active.get(name, False) != on}


def main(argv: list[str] | None = None) -> int:
    """Lab helper: ``python -m udpnest.io.netlink geneve NAME VNI REMOTE [--no-hint] [--gso-partial]``."""
    import argparse
    import json

    ap = argparse.ArgumentParser(prog="udpnest.io.netlink")
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("geneve")
    g.add_argument("name")
    g.add_argument("vni", type=int)
    g.add_argument("remote")
    g.add_argument("--port", type=int, default=6081)
    g.add_argument("--no-hint", action="store_true")
    g.add_argument("--gso-partial", action="store_true")
    g.add_argument("--mtu", type=int)
    f = sub.add_parser("features")
    f.add_argument("name")
    f.add_argument("settings", nargs="*", help="FEATURE on|off ...")
    a = ap.parse_args(argv)
    if a.cmd == "geneve":
        create_geneve(a.name, a.vni, a.remote, port=a.port, gro_hint=not a.no_hint, mtu=a.mtu)
        if a.gso_partial:
            refused = set_features(a.name, dict.fromkeys(GSO_PARTIAL_FEATURES, True))
            if refused:
                print(f"refused: {sorted(refused)}")
                return 1
        print(json.dumps({k: v for k, v in geneve_info(a.name).items() if not isinstance(v, bytes)}))
        return 0
    if a.settings:
        it = iter(a.settings)
        refused = set_features(a.name, {k: v == "on" for k, v in zip(it, it, strict=True)})
        if refused:
            print(f"refused: {sorted(refused)}")
            return 1
    print(json.dumps(get_features(a.name), sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
