"""Fixtures of the privileged dataplane tests: one 4-namespace lab per module and address family.

Each lab gets a unique prefix (``unp-xxxxx``) and is always torn down (``topology.down`` kills every process
left in its namespaces, then removes them), also when building it or a test fails.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import nestlab  # noqa: E402


@dataclass
class Lab:
    spec: object  # udpnest.lab.topology.LabSpec
    tmp: Path


def _make_lab(request, tmp_path_factory, family: int) -> Lab:
    from udpnest.lab import topology
    from udpnest.lab.topology import LabSpec

    spec = LabSpec(prefix=nestlab.new_prefix(), underlay_family=family, nested_family=family, underlay="offload")
    request.addfinalizer(lambda: topology.down(spec.prefix))
    topology.up(spec)
    return Lab(spec, tmp_path_factory.mktemp(spec.prefix))


@pytest.fixture(scope="module", params=[4, 6], ids=["v4", "v6"])
def lab(request, tmp_path_factory) -> Lab:
    """IPv4 underlay + IPv4 nested, or IPv6 + IPv6; underlay "offload" unless a test switches it."""
    return _make_lab(request, tmp_path_factory, request.param)


@pytest.fixture(scope="module")
def lab_v4(request, tmp_path_factory) -> Lab:
    return _make_lab(request, tmp_path_factory, 4)


class Endpoints:
    """Endpoint processes started by one test; all stopped at teardown."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.started: list[nestlab.Endpoint] = []

    def pair(self, nested_a: str, nested_b: str | None = None, extra: tuple[str, ...] = ()
             ) -> list[nestlab.Endpoint]:
        eps = nestlab.start_pair(self.lab.spec, self.lab.tmp, nested_a, nested_b, extra)
        self.started += eps
        return eps

    def one(self, side: str, nested: str, extra: tuple[str, ...] = ()) -> nestlab.Endpoint:
        ep = nestlab.start_endpoint(self.lab.spec, side, self.lab.tmp, nested, extra)
        self.started.append(ep)
        return ep

    def stop(self) -> None:
        nestlab.stop_all(self.started)


@pytest.fixture
def endpoints(request):
    """``endpoints(lab)`` -> an :class:`Endpoints` for that lab, stopped at teardown."""
    made: list[Endpoints] = []

    def make(lab: Lab) -> Endpoints:
        e = Endpoints(lab)
        made.append(e)
        return e

    yield make
    for e in made:
        e.stop()
