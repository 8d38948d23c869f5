"""TxPlanner and the TX wiring's settings: engine choice, queue bounds (no syscalls)."""

from __future__ import annotations

import pytest

from udpnest import engine
from udpnest.config import ConfigError, build_config
from udpnest.txplan import TxPlanner

BASE = {"id": 7, "local": "198.51.100.1", "remote": ["198.51.100.2"]}


def test_engine_setting_is_validated():
    assert build_config(BASE).engine is None
    assert build_config({**BASE, "engine": "python"}).engine == "python"
    with pytest.raises(ConfigError, match="engine"):
        build_config({**BASE, "engine": "rust"})
    with pytest.raises(ValueError):
        TxPlanner(engine="rust")


def test_engine_check():
    assert engine.check("python") == "python"
    assert engine.check(None) == engine.default_engine()
    with pytest.raises(engine.EngineError, match="not one of"):
        engine.check("fast")


def test_socket_buffers_follow_the_rate():
    assert build_config(BASE).socket_buffer == 10000 * 2 * 125  # 10 Gbit/s x 2 ms = 2.5 MB
    assert build_config({**BASE, "underlay_rate_mbit": 100}).socket_buffer == 256 << 10  # floor
    assert build_config({**BASE, "underlay_rate_mbit": 100000, "queue_ms": 10}).socket_buffer == 8 << 20  # cap
    assert build_config({**BASE, "tap_txqueuelen": 64}).tap_txqueuelen == 64
    with pytest.raises(ConfigError, match="tap_txqueuelen"):
        build_config({**BASE, "tap_txqueuelen": 0})
    with pytest.raises(ConfigError, match="queue_ms"):
        build_config({**BASE, "queue_ms": 0})
