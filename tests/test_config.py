"""config: build_config / parse_peer / load_toml; every error names the setting at fault."""

from __future__ import annotations

import dataclasses

import pytest

from udpnest.config import ConfigError, EndpointConfig, Peer, build_config, load_toml, parse_peer
from udpnest.fold import DEFAULT_PORTS, Encap

BASE = {"id": 42, "local": "192.0.2.1", "remote": ["192.0.2.2", "192.0.2.3:7000"]}
BASE6 = {"id": 42, "local": "2001:db8::1", "remote": ["[2001:db8::2]:7000", "2001:db8::3", "[2001:db8::4]"]}


def cfg(**kw) -> EndpointConfig:
    return build_config({**BASE, **kw})


def err(values: dict) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        build_config(values)
    return e.value


# --- happy paths ---------------------------------------------------------------------------------------
def test_defaults():
    c = cfg()
    assert c.id == 42 and c.local == "192.0.2.1"
    assert c.remote == (Peer("192.0.2.2", 6081), Peer("192.0.2.3", 7000))
    assert c.dstport == 6081 and c.nested == "off" and c.udpcsum is True and c.df == "unset"
    assert c.fallback == "plain" and c.ttl == 64 and c.tos == 0 and c.tap == "udpnest0"
    assert dict(c.nested_ports) == dict(DEFAULT_PORTS)
    assert not c.family_v6
    assert c.max_datagram == 1500 - 20 - 8
    assert c.control_path == "/run/udpnest/udpnest0.sock"


def test_nice_default_value_and_off():
    assert cfg().nice == -10
    assert build_config({**BASE, "nice": "-5"}).nice == -5
    assert build_config({**BASE, "nice": 19}).nice == 19
    assert build_config({**BASE, "nice": "off"}).nice is None


def test_ipv6():
    c = build_config(BASE6)
    assert c.family_v6
    assert c.remote == (Peer("2001:db8::2", 7000), Peer("2001:db8::3", 6081), Peer("2001:db8::4", 6081))
    assert c.max_datagram == 1500 - 40 - 8
    assert str(c.remote[0]) == "[2001:db8::2]:7000" and c.remote[0].sockaddr == ("2001:db8::2", 7000)
    assert str(cfg().remote[1]) == "192.0.2.3:7000"
    assert build_config({**BASE6, "underlay_mtu": 9000}).max_datagram == 9000 - 48


def test_dstport_is_the_default_peer_port():
    c = cfg(dstport=6090)
    assert c.dstport == 6090
    assert c.remote == (Peer("192.0.2.2", 6090), Peer("192.0.2.3", 7000))


def test_addresses_normalised():
    c = build_config({"id": 1, "local": "2001:DB8:0::1", "remote": "[2001:0db8::0002]:1"})
    assert c.local == "2001:db8::1" and c.remote == (Peer("2001:db8::2", 1),)


def test_cli_style_keys_and_none():
    c = build_config({**BASE, "tap-mtu": 9000, "probe-interval": "0.5", "tx_sockets": None, "verify-csum": "off",
                      "udpcsum": "no", "nested": "fold", "fallback": "hint", "df": "set", "id": "0x10"})
    assert c.tap_mtu == 9000 and c.probe_interval == 0.5 and c.tx_sockets == 8
    assert c.verify_csum is False and c.udpcsum is False and c.nested == "fold" and c.fallback == "hint"
    assert c.df == "set" and c.id == 16


def test_toml_file(tmp_path):
    p = tmp_path / "ep.toml"
    p.write_text(
        'id = 1000\nlocal = "10.0.0.1"\nremote = ["10.0.0.2", "10.0.0.3:6082"]\n'
        'nested = "fold"\nudpcsum = false\ntap = "nest0"\ntap_addresses = ["10.9.0.1/24", "fd00::1/64"]\n'
        'probe_budget = 50\nfdb_ageing = 60.5\nnested_ports = ["6090:vxlan", "4791:gpe"]\n'
    )
    c = build_config(load_toml(str(p)))
    assert c.id == 1000 and c.nested == "fold" and c.udpcsum is False and c.tap == "nest0"
    assert c.remote == (Peer("10.0.0.2", 6081), Peer("10.0.0.3", 6082))
    assert c.tap_addresses == ("10.9.0.1/24", "fd00::1/64")
    assert c.probe_budget == 50.0 and c.fdb_ageing == 60.5
    assert c.nested_ports[6090] is Encap.VXLAN and c.nested_ports[4791] is Encap.VXLAN_GPE
    assert c.nested_ports[4789] is Encap.VXLAN  # defaults kept
    assert c.control_path == "/run/udpnest/nest0.sock"


def test_toml_nested_ports_table(tmp_path):
    p = tmp_path / "ep.toml"
    p.write_text('id = 1\nlocal = "10.0.0.1"\nremote = "10.0.0.2"\n[nested_ports]\n"6082" = "geneve"\n'
                 '"4789" = "vxlan-gpe"\n')
    c = build_config(load_toml(str(p)))
    assert c.nested_ports[6082] is Encap.GENEVE and c.nested_ports[4789] is Encap.VXLAN_GPE


@pytest.mark.parametrize(("spec", "port", "encap"), [
    (["6082:vxlan"], 6082, Encap.VXLAN),
    (["6082:VXLAN"], 6082, Encap.VXLAN),
    (["1:geneve"], 1, Encap.GENEVE),
    (["65535:vxlan-gpe"], 65535, Encap.VXLAN_GPE),
    ({"8000": "gpe"}, 8000, Encap.VXLAN_GPE),
])
def test_nested_ports_ok(spec, port, encap):
    assert cfg(nested_ports=spec).nested_ports[port] is encap


def test_frozen():
    c = cfg()
    with pytest.raises(AttributeError):
        c.id = 5  # type: ignore[misc]


# --- errors name the field ---------------------------------------------------------------------------
@pytest.mark.parametrize(("values", "field", "words"), [
    ({**BASE, "remote": ["192.0.2.2", "203.0.113.9:99999"]}, "remote[1]", "out of range"),
    ({**BASE, "remote": ["192.0.2.2:0"]}, "remote[0]", "out of range"),
    ({**BASE, "remote": ["192.0.2.2:http"]}, "remote[0]", "integer"),
    ({**BASE, "remote": ["192.0.2.2", "2001:db8::2"]}, "remote[1]", "address family"),
    ({**BASE6, "remote": ["[2001:db8::2]", "192.0.2.9"]}, "remote[1]", "address family"),
    ({**BASE, "remote": ["not-an-ip"]}, "remote[0]", "not an IP address"),
    ({**BASE, "remote": ["[2001:db8::2"]}, "remote[0]", "']'"),
    ({**BASE6, "remote": ["[2001:db8::2]7000"]}, "remote[0]", "':port'"),
    ({**BASE6, "remote": ["[2001:db8::2]:70000"]}, "remote[0]", "out of range"),
    ({**BASE, "remote": []}, "remote", "at least one"),
    ({**BASE, "remote": ["192.0.2.2", "192.0.2.2:6081"]}, "remote", "twice"),
    ({**BASE, "bogus": 1}, "bogus", "unknown setting"),
    ({**BASE, "nested-mode": "fold"}, "nested_mode", "unknown setting"),
    ({"local": "192.0.2.1", "remote": ["192.0.2.2"]}, "id", "required"),
    ({"id": 1, "remote": ["192.0.2.2"]}, "local", "required"),
    ({"id": 1, "local": "192.0.2.1"}, "remote", "required"),
    ({**BASE, "id": 1 << 24}, "id", "out of range"),
    ({**BASE, "id": -1}, "id", "out of range"),
    ({**BASE, "id": True}, "id", "integer"),
    ({**BASE, "id": "forty"}, "id", "integer"),
    ({**BASE, "local": "192.0.2.300"}, "local", "not an IP address"),
    ({**BASE, "dstport": 0}, "dstport", "out of range"),
    ({**BASE, "ttl": 0}, "ttl", "out of range"),
    ({**BASE, "tos": 256}, "tos", "out of range"),
    ({**BASE, "max_levels": 4}, "max_levels", "out of range"),
    ({**BASE, "opt_class": 0x10000}, "opt_class", "out of range"),
    ({**BASE, "tap_mtu": 67}, "tap_mtu", "out of range"),
    ({**BASE, "underlay_mtu": 575}, "underlay_mtu", "out of range"),
    ({**BASE6, "underlay_mtu": 1279}, "underlay_mtu", "out of range"),
    ({**BASE, "tx_sockets": 65}, "tx_sockets", "out of range"),
    ({**BASE, "fdb_max": 0}, "fdb_max", "out of range"),
    ({**BASE, "probe_window": 101}, "probe_window", "out of range"),
    ({**BASE, "nested": "folded"}, "nested", "not one of"),
    ({**BASE, "df": "inherit"}, "df", "not one of"),
    ({**BASE, "fallback": "fold"}, "fallback", "not one of"),
    ({**BASE, "udpcsum": "maybe"}, "udpcsum", "true/false"),
    ({**BASE, "verify_csum": 2}, "verify_csum", "true/false"),
    ({**BASE, "probe_interval": "fast"}, "probe_interval", "number"),
    ({**BASE, "probe_interval": 0.001}, "probe_interval", "minimum"),
    ({**BASE, "probe_budget": float("nan")}, "probe_budget", "finite"),
    ({**BASE, "fdb_ageing": 0.5}, "fdb_ageing", "minimum"),
    ({**BASE, "tap": "a-very-long-name"}, "tap", "15 bytes"),
    ({**BASE, "tap": "nääme-toolong1"}, "tap", "15 bytes"),
    ({**BASE, "tap_addresses": ["10.0.0.1/24", "10.0.0.1/33"]}, "tap_addresses[1]", "ADDRESS/PREFIX"),
    ({**BASE, "tap_addresses": "bogus"}, "tap_addresses[0]", "ADDRESS/PREFIX"),
    ({**BASE, "nested_ports": ["6082:vxlan", "6083:gre"]}, "nested_ports[1]", "not one of"),
    ({**BASE, "nested_ports": ["70000:vxlan"]}, "nested_ports[0]", "out of range"),
    ({**BASE, "nested_ports": ["x:vxlan"]}, "nested_ports[0]", "integer"),
    ({**BASE, "nested_ports": {"0": "vxlan"}}, "nested_ports[0]", "out of range"),
    # issue 9.7: each of these was a traceback or silently accepted on main
    ({**BASE, "remote": 5}, "remote", "ADDR[:PORT]"),
    ({**BASE, "remote": [5]}, "remote[0]", "ADDR[:PORT]"),
    ({**BASE, "nested_ports": 5}, "nested_ports", "PORT:TYPE"),
    ({**BASE, "tap_addresses": 5}, "tap_addresses", "ADDRESS/PREFIX"),
    ({**BASE, "tap_mac": "zz:zz"}, "tap_mac", "not a MAC address"),
    ({**BASE, "tap_mac": "02:00:00:00:00"}, "tap_mac", "not a MAC address"),
    ({**BASE, "tap_mac": 5}, "tap_mac", "MAC address"),
    ({**BASE, "tap_mac": "01:00:5e:00:00:01"}, "tap_mac", "multicast"),
    ({**BASE, "tap_mac": "ff:ff:ff:ff:ff:ff"}, "tap_mac", "multicast"),
    ({**BASE, "tap_mac": "00:00:00:00:00:00"}, "tap_mac", "not a usable"),
    ({**BASE, "tap_mtu": 68, "tap_addresses": ["2001:db8::1/64"]}, "tap_mtu", "IPv6 minimum"),
    ({**BASE6, "tap_mtu": 1279}, "tap_mtu", "out of range"),
    ({**BASE, "local": "0.0.0.0"}, "local", "unicast"),
    ({**BASE6, "local": "::"}, "local", "unicast"),
    ({**BASE, "local": "224.0.0.1"}, "local", "unicast"),
    ({**BASE, "local": 5}, "local", "IP address"),
    ({**BASE, "remote": ["0.0.0.0"]}, "remote[0]", "unicast"),
    ({**BASE, "remote": ["255.255.255.255"]}, "remote[0]", "unicast"),
    ({**BASE, "remote": ["192.0.2.1"]}, "remote[0]", "itself"),
    ({**BASE, "probe_interval": float("inf")}, "probe_interval", "finite"),
    ({**BASE, "probe_interval": "inf"}, "probe_interval", "finite"),
    ({**BASE, "probe_budget": float("inf")}, "probe_budget", "finite"),
    ({**BASE, "fdb_ageing": float("inf")}, "fdb_ageing", "finite"),
    ({**BASE, "probe_interval": [1]}, "probe_interval", "number"),
    ({**BASE, "probe_backoff_max": -1}, "probe_backoff_max", "minimum"),
    ({**BASE, "echo_reply_rate": float("inf")}, "echo_reply_rate", "finite"),
    ({**BASE, "echo_reply_burst": 0.5}, "echo_reply_burst", "minimum"),
    ({**BASE, "echo_reply_global_rate": -1}, "echo_reply_global_rate", "minimum"),
    ({**BASE, "learned_max": 0}, "learned_max", "out of range"),
    ({**BASE, "ipc_queue": 10}, "ipc_queue", "out of range"),
    ({**BASE, "allow": ["198.51.100.0/33"]}, "allow[0]", "not a network"),
    ({**BASE, "allow": 5}, "allow", "network"),
    ({**BASE, "allow": ["2001:db8::/32"]}, "allow[0]", "address family"),
    ({**BASE, "nested_ports": ["6081:vxlan"]}, "nested_ports[0]", "Geneve port"),
    ({**BASE, "dstport": 7000, "nested_ports": ["7000:gpe"]}, "nested_ports[0]", "Geneve port"),
    ({**BASE, "opt_class": 0x0100}, "opt_class", "netdev"),
    ({**BASE, "tap": ""}, "tap", "empty"),
    ({**BASE, "tap": "a/b"}, "tap", "not a valid interface name"),
    ({**BASE, "tap": 5}, "tap", "string"),
    ({**BASE, "tx_tap": "x" * 16}, "tx_tap", "15 bytes"),
    ({**BASE, "tap_netns": 5}, "tap_netns", "string"),
    ({**BASE, "id": float("inf")}, "id", "integer"),
    ({**BASE, "dstport": 65536}, "dstport", "out of range"),
    ({**BASE, "remote": ["192.0.2.2:0"]}, "remote[0]", "out of range"),
    ({**BASE, "ttl": [1]}, "ttl", "integer"),
    ({**BASE, "nice": 20}, "nice", "out of range"),
    ({**BASE, "nice": -21}, "nice", "out of range"),
    ({**BASE, "nice": "high"}, "nice", "integer"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_errors(values, field, words):
    e = err(values)
    assert e.field == field
    assert str(e).startswith(f"config: {field}: ")
    assert words in str(e)


def test_tap_name_limit_exact():
    assert cfg(tap="a" * 15).tap == "a" * 15


@pytest.mark.parametrize("spec", [["6082"], [6082], ["6082:vxlan:x"]], ids=["no-colon", "int-entry", "two-colons"])
def test_nested_ports_malformed_entry_names_field(spec):
    with pytest.raises(ConfigError) as e:
        cfg(nested_ports=spec)
    assert e.value.field == "nested_ports[0]"


def test_nested_ports_bare_string_is_one_entry():
    assert cfg(nested_ports="6082:vxlan").nested_ports[6082] is Encap.VXLAN


# --- parse_peer ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "want"), [
    ("192.0.2.5", Peer("192.0.2.5", 6081)),
    (" 192.0.2.5:1 ", Peer("192.0.2.5", 1)),
    ("192.0.2.5:65535", Peer("192.0.2.5", 65535)),
    ("2001:db8::5", Peer("2001:db8::5", 6081)),
    ("[2001:db8::5]", Peer("2001:db8::5", 6081)),
    ("[2001:db8::5]:9", Peer("2001:db8::5", 9)),
    ("[::ffff:192.0.2.5]:9", Peer("::ffff:c000:205", 9)),
])
def test_parse_peer(text, want):
    assert parse_peer("remote[3]", text, 6081) == want


@pytest.mark.parametrize("text", ["192.0.2.5:", "[2001:db8::5]:", "[]", "[192.0.2.5:80", "host.example:80", ""])
def test_parse_peer_errors(text):
    with pytest.raises(ConfigError) as e:
        parse_peer("remote[3]", text, 6081)
    assert e.value.field == "remote[3]"


# --- load_toml -----------------------------------------------------------------------------------------
def test_load_toml_errors(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_toml(str(tmp_path / "missing.toml"))
    assert e.value.field == "config" and "cannot read" in str(e.value)
    bad = tmp_path / "bad.toml"
    bad.write_text("id = = 3\n")
    with pytest.raises(ConfigError) as e:
        load_toml(str(bad))
    assert e.value.field == "config" and str(bad) in str(e.value)


def test_toml_errors_name_field(tmp_path):
    p = tmp_path / "ep.toml"
    p.write_text('id = 1\nlocal = "10.0.0.1"\nremote = ["10.0.0.2", "[2001:db8::1]:5"]\n')
    e = err(load_toml(str(p)))
    assert e.field == "remote[1]"
    p.write_text('id = 1\nlocal = "10.0.0.1"\nremote = ["10.0.0.2"]\ntap_name = "x"\n')
    assert err(load_toml(str(p))).field == "tap_name"


# --- issue 9.7: immutable, normalised, new bounds --------------------------------------------------------
def test_config_is_immutable():
    c = cfg(remote=["192.0.2.2", "192.0.2.3"], tap_addresses=["10.0.0.1/24"], nested_ports=["6082:vxlan"],
            allow=["198.51.100.0/24"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.id = 5
    with pytest.raises(TypeError):
        c.nested_ports[6090] = Encap.VXLAN
    assert isinstance(c.remote, tuple) and isinstance(c.tap_addresses, tuple) and isinstance(c.allow, tuple)
    d = EndpointConfig(id=1, local="192.0.2.1", remote=())
    with pytest.raises(TypeError):
        d.nested_ports[1] = Encap.VXLAN


def test_mac_normalised_and_bounds_defaults():
    c = cfg(tap_mac="02-AB-cd-00-00-01", allow="198.51.100.7/24")
    assert c.tap_mac == "02:ab:cd:00:00:01"
    assert c.allow == ("198.51.100.0/24",)
    d = cfg()
    assert d.learned_max == 65536 and d.ipc_queue == 4 << 20 and d.probe_backoff_max == 60.0
    assert (d.echo_reply_rate, d.echo_reply_burst, d.echo_reply_global_rate) == (10.0, 5.0, 100.0)


def test_cli_flag_strings_validated():
    c = cfg(probe_interval="0.5", echo_reply_rate="3", learned_max="1000")
    assert (c.probe_interval, c.echo_reply_rate, c.learned_max) == (0.5, 3.0, 1000)


def test_default_tap_mac_is_stable_local_unicast():
    a, b = cfg(), cfg()
    assert a.tap_mac is None and a.effective_tap_mac == b.effective_tap_mac
    first = int(a.effective_tap_mac[:2], 16)
    assert first & 0x02 and not first & 0x01
    assert cfg(tap="other0").effective_tap_mac != a.effective_tap_mac
    assert cfg(id=43).effective_tap_mac != a.effective_tap_mac
    assert cfg(tap_mac="02:00:00:00:00:09").effective_tap_mac == "02:00:00:00:00:09"
