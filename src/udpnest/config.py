"""Endpoint configuration: TOML file and/or command-line flags -> one frozen, validated EndpointConfig.

Flag names follow ``ip link add NAME type geneve ...`` where a word exists there (``id``, ``remote``,
``local``, ``dstport``, ``ttl``, ``tos``, ``df``, ``udpcsum``/``noudpcsum``).  Every validation error
names the setting at fault: ``config: remote[1]: '203.0.113.9:99999' port out of range 1..65535``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import tomllib
from collections.abc import Mapping
from typing import Any

from .fold import DEFAULT_PORTS, Encap
from .wire.options import DEFAULT_OPT_CLASS

NESTED_MODES = ("off", "hint", "fold")
DF_MODES = ("unset", "set")
FALLBACK_MODES = ("plain", "hint")
TX_PATHS = ("socket", "kernel")


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
    nested_ports: Mapping[int, Encap] = dataclasses.field(default_factory=lambda: dict(DEFAULT_PORTS))
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
    tx_path: str = "socket"  # "kernel": hand whole super-packets to the kernel's UDP-tunnel GSO via a TAP
    tx_tap: str | None = None  # name of that TAP (default: <tap>-tx)
    fdb_max: int = 4096
    fdb_ageing: float = 300.0
    probe_interval: float = 1.0
    probe_window: int = 3
    probe_budget: float = 100.0  # probes per second, all peers together
    verify_csum: bool = True
    rx_process: bool = True  # run the RX loop in a forked process (no GIL shared with TX)
    control: str | None = None  # unix socket path; default /run/udpnest/<tap>.sock
    metrics: str | None = None  # ADDR:PORT of the Prometheus exporter (metrics.py); off by default

    @property
    def family_v6(self) -> bool:
        return ":" in self.local

    @property
    def tx_tap_name(self) -> str:
        return self.tx_tap or (self.tap[:12] + "-tx")

    @property
    def control_path(self) -> str:
        return self.control or f"/run/udpnest/{self.tap}.sock"

    @property
    def max_datagram(self) -> int:
        """Largest UDP payload that fits the underlay MTU without IP fragmentation."""
        return self.underlay_mtu - (40 if self.family_v6 else 20) - 8


_FIELDS = {f.name: f for f in dataclasses.fields(EndpointConfig)}
_ENCAP_NAMES = {"vxlan": Encap.VXLAN, "vxlan-gpe": Encap.VXLAN_GPE, "gpe": Encap.VXLAN_GPE, "geneve": Encap.GENEVE}


def _int(field: str, v: Any, lo: int, hi: int) -> int:
    if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
        raise ConfigError(field, f"expected an integer, got {v!r}")
    try:
        if isinstance(v, str):
            s = v.strip()
            i = int(s, 16) if s.lower().startswith("0x") else int(s, 10)
        else:
            i = int(v)
    except (TypeError, ValueError):
        raise ConfigError(field, f"expected an integer, got {v!r}") from None
    if not lo <= i <= hi:
        raise ConfigError(field, f"{i} out of range {lo}..{hi}")
    return i


def _ip(field: str, v: Any) -> str:
    try:
        return str(ipaddress.ip_address(str(v)))
    except ValueError:
        raise ConfigError(field, f"{v!r} is not an IP address") from None


def parse_peer(field: str, text: str, default_port: int) -> Peer:
    """``addr``, ``addr:port``, ``[v6addr]`` or ``[v6addr]:port``."""
    s = str(text).strip()
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
    return Peer(_ip(field, addr), port)


def _bool(field: str, v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("on", "yes", "true", "1", "off", "no", "false", "0"):
        return v.lower() in ("on", "yes", "true", "1")
    raise ConfigError(field, f"expected true/false, got {v!r}")


def build_config(values: Mapping[str, Any]) -> EndpointConfig:
    """Validate a flat mapping (TOML keys or CLI flags, ``-`` or ``_``) into an EndpointConfig."""
    raw = {k.replace("-", "_"): v for k, v in values.items() if v is not None}
    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        raise ConfigError(unknown[0], f"unknown setting (known: {', '.join(sorted(_FIELDS))})")
    for req in ("id", "local", "remote"):
        if req not in raw:
            raise ConfigError(req, "required")
    out: dict[str, Any] = {}
    out["id"] = _int("id", raw["id"], 0, (1 << 24) - 1)
    out["local"] = _ip("local", raw["local"])
    dstport = out["dstport"] = _int("dstport", raw.get("dstport", 6081), 1, 65535)
    remotes = raw["remote"]
    if isinstance(remotes, str):
        remotes = [remotes]
    if not remotes:
        raise ConfigError("remote", "at least one peer is required")
    peers = tuple(parse_peer(f"remote[{i}]", r, dstport) for i, r in enumerate(remotes))
    v6 = ":" in out["local"]
    for i, p in enumerate(peers):
        if (":" in p.address) != v6:
            raise ConfigError(f"remote[{i}]", f"{p} is not the same address family as local {out['local']}")
    if len(set(peers)) != len(peers):
        raise ConfigError("remote", "a peer is listed twice")
    out["remote"] = peers
    for name, lo, hi in (("ttl", 1, 255), ("tos", 0, 255), ("max_levels", 1, 3), ("opt_class", 0, 0xFFFF),
                         ("tap_mtu", 68, 65521), ("underlay_mtu", 1280 if v6 else 576, 65535),
                         ("tx_sockets", 1, 64), ("fdb_max", 1, 1 << 20), ("probe_window", 1, 100)):
        if name in raw:
            out[name] = _int(name, raw[name], lo, hi)
    for name, allowed in (("df", DF_MODES), ("nested", NESTED_MODES), ("fallback", FALLBACK_MODES),
                          ("tx_path", TX_PATHS)):
        if name in raw:
            if raw[name] not in allowed:
                raise ConfigError(name, f"{raw[name]!r} is not one of {', '.join(allowed)}")
            out[name] = raw[name]
    for name in ("udpcsum", "verify_csum", "rx_process"):
        if name in raw:
            out[name] = _bool(name, raw[name])
    for name, lo in (("fdb_ageing", 1.0), ("probe_interval", 0.01), ("probe_budget", 0.1)):
        if name in raw:
            try:
                f = float(raw[name])
            except (TypeError, ValueError):
                raise ConfigError(name, f"expected a number, got {raw[name]!r}") from None
            if not f >= lo:
                raise ConfigError(name, f"{f} is below the minimum {lo}")
            out[name] = f
    for name in ("tap", "tap_netns", "underlay_netns", "tap_mac", "control", "tx_tap"):
        if name in raw:
            out[name] = str(raw[name])
    for name in ("tap", "tx_tap"):
        if len(out.get(name, "").encode()) > 15:
            raise ConfigError(name, "interface names are at most 15 bytes")
    if "tap_addresses" in raw:
        addrs = raw["tap_addresses"]
        addrs = [addrs] if isinstance(addrs, str) else list(addrs)
        for i, a in enumerate(addrs):
            try:
                ipaddress.ip_interface(a)
            except ValueError:
                raise ConfigError(f"tap_addresses[{i}]", f"{a!r} is not ADDRESS/PREFIX") from None
        out["tap_addresses"] = tuple(addrs)
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
        else:
            items = []
            for i, entry in enumerate(spec):
                if not isinstance(entry, str) or entry.count(":") != 1:
                    raise ConfigError(f"nested_ports[{i}]", f"{entry!r} is not PORT:TYPE (e.g. '6082:vxlan')")
                items.append(tuple(entry.split(":")))
        for i, (p, kind) in enumerate(items):
            port = _int(f"nested_ports[{i}]", p, 1, 65535)
            if str(kind).lower() not in _ENCAP_NAMES:
                raise ConfigError(f"nested_ports[{i}]", f"{kind!r} is not one of {', '.join(_ENCAP_NAMES)}")
            ports[port] = _ENCAP_NAMES[str(kind).lower()]
    out["nested_ports"] = ports
    return EndpointConfig(**out)


def load_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError("config", f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("config", f"{path}: {e}") from None
