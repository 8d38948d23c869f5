"""Shared fixtures.  Root-only tests are marked ``root`` and skipped unless running as root."""

from __future__ import annotations

import os
import uuid

import pytest


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def netns_factory():
    """Create uniquely named network namespaces; every one is removed at teardown, even on failure."""
    from pyroute2 import netns

    made: list[str] = []

    def make(prefix: str = "un") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        netns.create(name)
        made.append(name)
        return name

    yield make
    for name in made:
        try:
            netns.remove(name)
        except OSError:
            pass
