"""Kernel mode's refusal on kernels that cannot run it (pure), and on this host (root, no geneve module)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from udpnest.config import build_config
from udpnest.kernelmode import USERSPACE_HINT, parse_release, unsupported_reason


def _cfg(**kw):
    base = {"id": 42, "local": "198.51.100.1", "remote": ["198.51.100.2"], "nested": "hint", "dataplane": "kernel"}
    base.update(kw)
    return build_config(base)


def test_parse_release():
    assert parse_release("7.2.13+deb14-cloud-amd64") == (7, 2)
    assert parse_release("6.18.0") == (6, 18)
    assert parse_release("garbage") is None


def test_old_kernel_refuses_hint_and_points_to_userspace():
    why = unsupported_reason("6.18.0-1-amd64", _cfg())
    assert "older than 7.0" in why and "IFLA_GENEVE_GRO_HINT" in why and USERSPACE_HINT in why


def test_new_kernel_accepts_hint_and_plain():
    assert unsupported_reason("7.0.4+deb13-cloud-amd64", _cfg()) is None
    assert unsupported_reason("6.1.0", _cfg(nested="off")) is None  # plain geneve: any kernel with the module


def test_fold_and_several_remotes_refused():
    assert "fold needs the userspace dataplane" in unsupported_reason("7.2.0", _cfg(nested="fold"))
    assert "one remote" in unsupported_reason("7.2.0", _cfg(remote=["198.51.100.2", "198.51.100.3"]))


def test_dataplane_setting_validated():
    from udpnest.config import ConfigError

    with pytest.raises(ConfigError, match="dataplane"):
        _cfg(dataplane="gpu")
    assert build_config({"id": 1, "local": "198.51.100.1", "remote": ["198.51.100.2"]}).dataplane == "userspace"


def _geneve_module_missing() -> bool:
    import glob

    rel = os.uname().release
    return not os.path.exists("/sys/module/geneve") and not glob.glob(f"/lib/modules/{rel}/**/geneve.ko*",
                                                                        recursive=True)


@pytest.mark.root
@pytest.mark.parametrize("nested,expect", [("hint", None), ("off", "no geneve driver")])
def test_up_on_this_host_says_why(netns_factory, nested, expect):
    """`udpnest up --dataplane kernel` on this host: a clear reason and the userspace suggestion, exit 1."""
    release = os.uname().release
    if expect is None:
        if parse_release(release) >= (7, 0):
            pytest.skip(f"host kernel {release} is >= 7.0 (the interop harness covers kernel mode)")
        expect = "older than 7.0"
    elif not _geneve_module_missing():
        pytest.skip(f"host kernel {release} has a geneve module (tests/interop covers kernel mode)")
    ns = netns_factory("unk")
    r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "udpnest.cli", "up", "--dataplane", "kernel",
                        "--id", "42", "--local", "198.51.100.1", "--remote", "198.51.100.2", "--nested", nested,
                        "--tap", f"k{uuid.uuid4().hex[:6]}", "--control", f"/run/udpnest/{ns}.sock"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r
    assert expect in r.stderr and "--dataplane userspace" in r.stderr, r.stderr
    links = subprocess.run(["ip", "-n", ns, "-br", "link"], capture_output=True, text=True).stdout
    assert links.split()[0] == "lo" and len(links.splitlines()) == 1, links  # nothing left behind
