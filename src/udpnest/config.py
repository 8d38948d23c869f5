"""Endpoint configuration: TOML file and/or command-line flags -> one frozen, validated EndpointConfig.

Flag names follow ``ip link add NAME type geneve ...`` where a word exists there (``id``, ``remote``,
``local``, ``dstport``, ``ttl``, ``tos``, ``df``, ``udpcsum``/``noudpcsum``).  Every validation error
names the setting at fault: ``config: remote[1]: '203.0.113.9:99999' port out of range 1..65535``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import math
import tomllib
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from .engine import ENGINES
from .fold import DEFAULT_PORTS, Encap
from .wire.options import DEFAULT_OPT_CLASS

NESTED_MODES = ("off", "hint", "fold")
NETDEV_OPT_CLASS = 0x0100  # Linux's GENEVE_OPT_NETDEV_CLASS (GRO hint); not usable for udpnest's options
DF_MODES = ("unset", "set")
FALLBACK_MODES = ("plain", "hint")
TX_PATHS = ("socket", "kernel")
DATAPLANES = ("userspace", "kernel")


class ConfigError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"config: {field}: {message}")


@dataclasses.dataclass(frozen=True)
class Peer:
    address: str  # normalised IP address text
    port: int

    @property
    def sockaddr(self) -> tuple:
        return (self.address, self.port)

    def __str__(self) -> str:
        return f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"


@dataclasses.dataclass(frozen=True)
class EndpointConfig:
    id: int  # VNI
    local: str
    remote: tuple[Peer, ...]
    dstport: int = 6081
    ttl: int = 64
    tos: int = 0
    df: str = "unset"
    udpcsum: bool = True
    nested: str = "off"
    fallback: str = "plain"  # mode towards a peer that did not answer the echo probe (nested fold only)
    nested_ports: Mapping[int, Encap] = dataclasses.field(default_factory=lambda: MappingProxyType(dict(DEFAULT_PORTS)))
    max_levels: int = 3
    opt_class: int = DEFAULT_OPT_CLASS
    tap: str = "udpnest0"
    tap_netns: str | None = None
    tap_mtu: int = 1500
    tap_addresses: tuple[str, ...] = ()
    tap_mac: str | None = None
    underlay_netns: str | None = None
    underlay_mtu: int = 1500
    tx_sockets: int = 8
    rx_queues: int = 4  # underlay receive sockets (SO_REUSEPORT group) served round robin: flow queueing on RX
    tx_path: str = "socket"  # "kernel": hand whole super-packets to the kernel's UDP-tunnel GSO via a TAP
    tx_tap: str | None = None  # name of that TAP (default: <tap>-tx)
    fdb_max: int = 4096
    fdb_ageing: float = 300.0
    probe_interval: float = 1.0
    probe_window: int = 3
    probe_budget: float = 100.0  # probes per second, all peers together
    probe_backoff_max: float = 60.0  # longest probe period towards a peer known to be legacy (seconds)
    echo_reply_rate: float = 10.0  # echo replies per second per peer (token bucket)
    echo_reply_burst: float = 5.0
    echo_reply_global_rate: float = 100.0  # echo replies per second, all peers together
    echo_reply_global_burst: float = 50.0
    learned_max: int = 65536  # learned source MACs the RX process remembers (LRU; evictions counted)
    ipc_queue: int = 4 << 20  # bytes of RX process -> main process messages in flight (drops counted)
    allow: tuple[str, ...] = ()  # extra source networks accepted as peers (CIDR), e.g. 198.51.100.0/24
    verify_csum: bool = True
    rx_process: bool = True  # run the RX loop in a forked process (no GIL shared with TX)
    control: str | None = None  # unix socket path; default /run/udpnest/<tap>.sock
    engine: str | None = None  # "native" | "python" (udpnest.engine); None: native when it is built
    # queue bounds (latency under load): TAP queue in frames, socket buffers from the rate and a delay
    tap_txqueuelen: int = 256
    tap_queues: int = 4  # TAP queues (IFF_MULTI_QUEUE, one flow per queue, served round robin); 1: one queue
    underlay_rate_mbit: int = 10000
    queue_ms: float = 2.0
    # CPU priority of the TX thread and the RX process (io/sched.py): below the workloads' 0, so the
    # dataplane is not queued behind the traffic it carries; None leaves the threads as they start
    nice: int | None = -10
    metrics: str | None = None  # ADDR:PORT of the Prometheus exporter (metrics.py); off by default
    dataplane: str = "userspace"  # "kernel": a Linux >= 7.0 geneve device with the GRO hint (kernelmode.py)

    @property
    def family_v6(self) -> bool:
        return ":" in self.local

    @property
    def effective_tap_mac(self) -> str:
        """``tap_mac``, or one derived from (TAP name, VNI, local address): the same after every restart, so
        the far workload's neighbour entry stays right (a random MAC cost a 75 s outage, issue 9.5).
        Locally administered, unicast."""
        if self.tap_mac is not None:
            return self.tap_mac
        return derive_mac(self.tap, self.id, self.local)

    @property
    def tx_tap_name(self) -> str:
        return self.tx_tap or (self.tap[:12] + "-tx")

    @property
    def control_path(self) -> str:
        return self.control or f"/run/udpnest/{self.tap}.sock"

    @property
    def socket_buffer(self) -> int:
        """SO_SNDBUF/SO_RCVBUF of the underlay sockets: ``queue_ms`` at ``underlay_rate_mbit`` (bytes),
        at least 256 KiB (a few super-packets), at most 8 MiB."""
        return max(256 << 10, min(8 << 20, int(self.underlay_rate_mbit * self.queue_ms * 125)))

    @property
    def max_datagram(self) -> int:
        """Largest UDP payload that fits the underlay MTU without IP fragmentation."""
        return self.underlay_mtu - (40 if self.family_v6 else 20) - 8


def derive_mac(tap: str, vni: int, local: str) -> str:
    h = bytearray(hashlib.sha256(f"udpnest-tap|{tap}|{vni}|{local}".encode()).digest()[:6])
    h[0] = (h[0] & 0xFC) | 0x02  # locally administered, unicast
    return ":".join(f"{b:02x}" for b in h)


_FIELDS = {f.name: f for f in dataclasses.fields(EndpointConfig)}
_ENCAP_NAMES = {"vxlan": Encap.VXLAN, "vxlan-gpe": Encap.VXLAN_GPE, "gpe": Encap.VXLAN_GPE, "geneve": Encap.GENEVE}


def _int(field: str, v: Any, lo: int, hi: int) -> int:
    if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
        raise ConfigError(field, f"expected an integer, got {v!r}")
    try:
        if isinstance(v, str):
            s = v.strip()
            i = int(s, 16) if s.lower().startswith("0x") else int(s, 10)
        elif isinstance(v, (int, float)):
            i = int(v)
        else:
            raise TypeError
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(field, f"expected an integer, got {v!r}") from None
    if not lo <= i <= hi:
        raise ConfigError(field, f"{i} out of range {lo}..{hi}")
    return i


def _float(field: str, v: Any, lo: float, hi: float = float("inf")) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise ConfigError(field, f"expected a number, got {v!r}")
    try:
        f = float(v)
    except ValueError:
        raise ConfigError(field, f"expected a number, got {v!r}") from None
    if not math.isfinite(f):
        raise ConfigError(field, f"{v!r} is not a finite number")
    if f < lo:
        raise ConfigError(field, f"{f} is below the minimum {lo}")
    if f > hi:
        raise ConfigError(field, f"{f} is above the maximum {hi:g}")
    return f


def _str(field: str, v: Any) -> str:
    if not isinstance(v, str):
        raise ConfigError(field, f"expected a string, got {v!r}")
    if not v or "\0" in v:
        raise ConfigError(field, f"{v!r}: empty or contains NUL")
    return v


def _list(field: str, v: Any, what: str) -> list:
    """A string or a list of strings (TOML array or repeated flag)."""
    if isinstance(v, str):
        return [v]
    if not isinstance(v, (list, tuple)):
        raise ConfigError(field, f"expected {what} or a list of them, got {v!r}")
    for i, e in enumerate(v):
        if not isinstance(e, str):
            raise ConfigError(f"{field}[{i}]", f"expected {what}, got {e!r}")
    return list(v)


def _ip(field: str, v: Any, *, unicast: bool = False) -> str:
    if not isinstance(v, str):
        raise ConfigError(field, f"expected an IP address, got {v!r}")
    try:
        a = ipaddress.ip_address(v.strip())
    except ValueError:
        raise ConfigError(field, f"{v!r} is not an IP address") from None
    if unicast and (a.is_unspecified or a.is_multicast or (a.version == 4 and a == ipaddress.IPv4Address(
            "255.255.255.255"))):
        raise ConfigError(field, f"{a} is not a unicast address (a tunnel endpoint needs one)")
    return str(a)


def parse_peer(field: str, text: str, default_port: int) -> Peer:
    """``addr``, ``addr:port``, ``[v6addr]`` or ``[v6addr]:port``."""
    if not isinstance(text, str):
        raise ConfigError(field, f"expected ADDR[:PORT], got {text!r}")
    s = text.strip()
    port = default_port
    if s.startswith("["):
        addr, sep, rest = s[1:].partition("]")
        if not sep:
            raise ConfigError(field, f"{text!r}: missing ']'")
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(field, f"{text!r}: expected ':port' after ']'")
            port = _int(field, rest[1:], 1, 65535)
    elif s.count(":") == 1:
        addr, _, p = s.partition(":")
        port = _int(field, p, 1, 65535)
    else:
        addr = s
    return Peer(_ip(field, addr, unicast=True), port)


def parse_mac(field: str, v: Any) -> str:
    """``aa:bb:cc:dd:ee:ff`` (or with ``-``), unicast only; returned lower-case with colons."""
    if not isinstance(v, str):
        raise ConfigError(field, f"expected a MAC address, got {v!r}")
    parts = v.strip().replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p) for p in parts):
        raise ConfigError(field, f"{v!r} is not a MAC address (six hex bytes, e.g. 02:00:5e:00:53:01)")
    b = bytes(int(p, 16) for p in parts)
    if b[0] & 1:
        raise ConfigError(field, f"{v} is a group (multicast/broadcast) address; a TAP needs a unicast MAC")
    if b == bytes(6):
        raise ConfigError(field, "00:00:00:00:00:00 is not a usable MAC address")
    return ":".join(f"{x:02x}" for x in b)


def _bool(field: str, v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("on", "yes", "true", "1", "off", "no", "false", "0"):
        return v.lower() in ("on", "yes", "true", "1")
    raise ConfigError(field, f"expected true/false, got {v!r}")


def _ifname(field: str, v: Any) -> str:
    s = _str(field, v)
    if len(s.encode()) > 15:
        raise ConfigError(field, f"{s!r}: interface names are at most 15 bytes")
    if "/" in s or any(c.isspace() for c in s) or s in (".", ".."):
        raise ConfigError(field, f"{s!r}: not a valid interface name (no '/', no spaces)")
    return s


def build_config(values: Mapping[str, Any]) -> EndpointConfig:
    """Validate a flat mapping (TOML keys or CLI flags, ``-`` or ``_``) into an EndpointConfig."""
    if not isinstance(values, Mapping):
        raise ConfigError("config", f"expected a table of settings, got {type(values).__name__}")
    raw = {str(k).replace("-", "_"): v for k, v in values.items() if v is not None}
    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        raise ConfigError(unknown[0], f"unknown setting (known: {', '.join(sorted(_FIELDS))})")
    for req in ("id", "local", "remote"):
        if req not in raw:
            raise ConfigError(req, "required")
    out: dict[str, Any] = {}
    out["id"] = _int("id", raw["id"], 0, (1 << 24) - 1)
    out["local"] = _ip("local", raw["local"], unicast=True)
    dstport = out["dstport"] = _int("dstport", raw.get("dstport", 6081), 1, 65535)
    remotes = _list("remote", raw["remote"], "ADDR[:PORT]")
    if not remotes:
        raise ConfigError("remote", "at least one peer is required")
    peers = tuple(parse_peer(f"remote[{i}]", r, dstport) for i, r in enumerate(remotes))
    v6 = ":" in out["local"]
    for i, p in enumerate(peers):
        if (":" in p.address) != v6:
            raise ConfigError(f"remote[{i}]", f"{p} is not the same address family as local {out['local']}")
        if p.address == out["local"] and p.port == dstport:
            raise ConfigError(f"remote[{i}]", f"{p} is this endpoint itself")
    if len(set(peers)) != len(peers):
        raise ConfigError("remote", "a peer is listed twice")
    out["remote"] = peers
    for name, lo, hi in (("ttl", 1, 255), ("tos", 0, 255), ("max_levels", 1, 3), ("opt_class", 0, 0xFFFF),
                         ("tap_mtu", 1280 if v6 else 68, 65521), ("underlay_mtu", 1280 if v6 else 576, 65535),
                         ("tx_sockets", 1, 64), ("fdb_max", 1, 1 << 20), ("probe_window", 1, 100),
                         ("rx_queues", 1, 64),
                         ("tap_txqueuelen", 1, 1 << 20), ("underlay_rate_mbit", 1, 10_000_000),
                         ("learned_max", 16, 1 << 24), ("ipc_queue", 64 << 10, 1 << 30), ("tap_queues", 1, 16)):
        if name in raw:
            out[name] = _int(name, raw[name], lo, hi)
    if "nice" in raw:
        out["nice"] = None if raw["nice"] in ("off", "none") else _int("nice", raw["nice"], -20, 19)
    if out.get("opt_class") == NETDEV_OPT_CLASS:
        raise ConfigError("opt_class", f"0x{NETDEV_OPT_CLASS:04x} is the Linux netdev class (GRO hint); "
                                       "choose another class")
    # tap_mtu's lower bound depends on the TAP's addresses: IPv6 needs 1280 (RFC 8200 section 5)
    if "tap_mtu" in raw and not v6:
        out["tap_mtu"] = _int("tap_mtu", raw["tap_mtu"], 68, 65521)
    for name, allowed in (("df", DF_MODES), ("nested", NESTED_MODES), ("fallback", FALLBACK_MODES),
                          ("tx_path", TX_PATHS), ("engine", ENGINES), ("dataplane", DATAPLANES)):
        if name in raw:
            if raw[name] not in allowed:
                raise ConfigError(name, f"{raw[name]!r} is not one of {', '.join(allowed)}")
            out[name] = raw[name]
    for name in ("udpcsum", "verify_csum", "rx_process"):
        if name in raw:
            out[name] = _bool(name, raw[name])
    for name, lo, hi in (("fdb_ageing", 1.0, 1e7), ("probe_interval", 0.01, 3600.0), ("probe_budget", 0.1, 1e6),
                         ("probe_backoff_max", 0.0, 86400.0), ("echo_reply_rate", 0.0, 1e6),
                         ("echo_reply_burst", 1.0, 1e6), ("echo_reply_global_rate", 0.0, 1e6),
                         ("echo_reply_global_burst", 1.0, 1e6), ("queue_ms", 0.01, 60_000.0)):
        if name in raw:
            out[name] = _float(name, raw[name], lo, hi)
    for name in ("tap_netns", "underlay_netns", "control"):
        if name in raw:
            out[name] = _str(name, raw[name])
    for name in ("tap", "tx_tap"):
        if name in raw:
            out[name] = _ifname(name, raw[name])
    if "tap_mac" in raw:
        out["tap_mac"] = parse_mac("tap_mac", raw["tap_mac"])
    if "tap_addresses" in raw:
        addrs = _list("tap_addresses", raw["tap_addresses"], "ADDRESS/PREFIX")
        mtu = out.get("tap_mtu", 1500)
        for i, a in enumerate(addrs):
            try:
                ifa = ipaddress.ip_interface(a.strip())
            except ValueError:
                raise ConfigError(f"tap_addresses[{i}]", f"{a!r} is not ADDRESS/PREFIX") from None
            if ifa.version == 6 and mtu < 1280:
                raise ConfigError("tap_mtu", f"{mtu} is below 1280, the IPv6 minimum, and tap_addresses[{i}] "
                                             f"is {a}")
        out["tap_addresses"] = tuple(a.strip() for a in addrs)
    if "allow" in raw:
        nets = []
        for i, a in enumerate(_list("allow", raw["allow"], "a network (CIDR)")):
            try:
                net = ipaddress.ip_network(a.strip(), strict=False)
            except ValueError:
                raise ConfigError(f"allow[{i}]", f"{a!r} is not a network (e.g. 198.51.100.0/24)") from None
            if (net.version == 6) != v6:
                raise ConfigError(f"allow[{i}]", f"{net} is not the same address family as local {out['local']}")
            nets.append(str(net))
        out["allow"] = tuple(nets)
    if "metrics" in raw:  # ADDR:PORT, [V6ADDR]:PORT; the port is required
        m = str(raw["metrics"]).strip()
        if not m.rpartition(":")[2].isdigit() or not (m.count(":") == 1 or m.startswith("[")):
            raise ConfigError("metrics", f"{m!r} is not ADDR:PORT (e.g. 127.0.0.1:9108 or [::1]:9108)")
        out["metrics"] = str(parse_peer("metrics", m, 0))
    ports = dict(DEFAULT_PORTS)
    if "nested_ports" in raw:
        spec = raw["nested_ports"]
        if isinstance(spec, str):
            spec = [spec]
        if isinstance(spec, Mapping):
            items = list(spec.items())
        elif isinstance(spec, (list, tuple)):
            items = []
            for i, entry in enumerate(spec):
                if not isinstance(entry, str) or entry.count(":") != 1:
                    raise ConfigError(f"nested_ports[{i}]", f"{entry!r} is not PORT:TYPE (e.g. '6082:vxlan')")
                items.append(tuple(entry.split(":")))
        else:
            raise ConfigError("nested_ports", f"expected PORT:TYPE strings (e.g. ['6082:vxlan']), got {spec!r}")
        for i, (p, kind) in enumerate(items):
            port = _int(f"nested_ports[{i}]", p, 1, 65535)
            if str(kind).lower() not in _ENCAP_NAMES:
                raise ConfigError(f"nested_ports[{i}]", f"{kind!r} is not one of {', '.join(_ENCAP_NAMES)}")
            encap = _ENCAP_NAMES[str(kind).lower()]
            if port == dstport and encap is not Encap.GENEVE:
                raise ConfigError(f"nested_ports[{i}]", f"{port} is this endpoint's Geneve port (dstport); "
                                                        f"it cannot be {kind}")
            ports[port] = encap
    out["nested_ports"] = MappingProxyType(ports)
    return EndpointConfig(**out)


def load_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError("config", f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("config", f"{path}: {e}") from None
