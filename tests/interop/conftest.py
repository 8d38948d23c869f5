"""The interop harness: one QEMU guest (real Debian Linux 7.x) per pytest session, booted on first use.

Every test here is marked ``interop``.  They skip, with the cause, only when the guest cannot be had (not
root, QEMU / busybox-static not installed, the pinned kernel package gone from Debian); a guest that boots
but misbehaves fails the tests.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from udpnest.lab import qemu

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from guestlab import Lab  # noqa: E402


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/interop/" in str(item.fspath):
            item.add_marker(pytest.mark.interop)


@pytest.fixture(scope="session")
def guest(tmp_path_factory):
    why = qemu.unavailable()
    if why:
        pytest.skip(f"interop harness unavailable: {why}")
    try:
        g = qemu.Guest(tmp_path_factory.mktemp("qemu")).start()
    except qemu.Unavailable as e:
        pytest.skip(f"interop harness unavailable: {e}")
    yield g
    g.stop()


@pytest.fixture
def lab_factory(guest):
    labs: list[Lab] = []

    def make(family: int = 4, underlay: str = "wire") -> Lab:
        lab = Lab(guest, family, underlay).setup()
        labs.append(lab)
        return lab

    yield make
    for lab in labs:
        lab.teardown()
