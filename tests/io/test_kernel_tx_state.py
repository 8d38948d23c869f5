"""Kernel TX path sysctls survive a crash (issue 9.5): originals come from the state file, not from what a
killed run left behind.  The sysctls are simulated (a dict); no root needed."""

from __future__ import annotations

import json

import pytest

from udpnest.io import kernel_tx


@pytest.fixture
def sysctls(monkeypatch):
    table = {"net.ipv4.ip_forward": "0", "net.ipv4.conf.all.rp_filter": "2",
             "net.ipv4.conf.tx0.rp_filter": "2", "net.ipv4.conf.tx0.accept_local": "0"}
    monkeypatch.setattr(kernel_tx, "read_sysctl", lambda k, ns: table[k])
    monkeypatch.setattr(kernel_tx, "write_sysctl", lambda k, v, ns: table.__setitem__(k, v))
    return table


def test_clean_run_restores_and_removes_state(sysctls, tmp_path):
    path = kernel_tx.state_path("tx0", "ns1", str(tmp_path))
    saved = kernel_tx.apply_sysctls(kernel_tx.wanted_sysctls("tx0", False), "tx0", "ns1", path)
    assert sysctls["net.ipv4.ip_forward"] == "1" and sysctls["net.ipv4.conf.all.rp_filter"] == "0"
    assert json.loads(open(path).read()) == {"net.ipv4.ip_forward": "0", "net.ipv4.conf.all.rp_filter": "2"}
    kernel_tx.restore_sysctls(saved, "ns1", path)
    assert sysctls["net.ipv4.ip_forward"] == "0" and sysctls["net.ipv4.conf.all.rp_filter"] == "2"
    assert not (tmp_path / path).exists()


def test_restart_after_kill_restores_the_true_originals(sysctls, tmp_path):
    """Main: the run after a kill -9 recorded ip_forward=1 as the original and left it on at its clean stop."""
    path = kernel_tx.state_path("tx0", None, str(tmp_path))
    kernel_tx.apply_sysctls(kernel_tx.wanted_sysctls("tx0", False), "tx0", None, path)  # killed: no restore
    assert sysctls["net.ipv4.ip_forward"] == "1"
    saved = kernel_tx.apply_sysctls(kernel_tx.wanted_sysctls("tx0", False), "tx0", None, path)  # restart
    kernel_tx.restore_sysctls(saved, None, path)  # clean stop
    assert sysctls["net.ipv4.ip_forward"] == "0" and sysctls["net.ipv4.conf.all.rp_filter"] == "2"


def test_corrupt_state_file_is_ignored(sysctls, tmp_path):
    path = kernel_tx.state_path("tx0", None, str(tmp_path))
    open(path, "w").write("{not json")
    saved = kernel_tx.apply_sysctls(kernel_tx.wanted_sysctls("tx0", False), "tx0", None, path)
    assert dict(saved)["net.ipv4.ip_forward"] == "0"
