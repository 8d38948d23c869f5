"""The README's library example runs as written (docs that match the code)."""

from __future__ import annotations

import re
from pathlib import Path

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_library_example_runs():
    text = README.read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    frame = bytes(
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        / IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=40000, dport=4789) / VXLAN(vni=7)
        / Ether(src="02:00:00:00:00:03", dst="02:00:00:00:00:04")
        / IP(src="203.0.113.1", dst="203.0.113.2") / TCP(sport=1, dport=2) / (b"x" * 100)
    )
    ns = {"frame": frame}
    exec(compile(block, str(README), "exec"), ns)  # noqa: S102 - our own README
    assert ns["restored"].frame == frame
    assert ns["folded"].levels == 1


def test_readme_starts_with_the_two_commands():
    lines = [ln for ln in README.read_text().splitlines() if ln.strip()]
    assert lines[1] == "```"
    assert lines[2].startswith("make demo") and lines[3].startswith("make test")
    assert "as root" in lines[2] and "as root" in lines[3]


def test_install_script_installs_what_a_fresh_debian_lacks_and_the_readme_says_so():
    """A fresh Debian 12 needs python3-venv for the venv, gcc/python3-dev for the C engine, tshark for the
    capture tests: the script installs them and the README names them."""
    script = (README.parent / "scripts" / "install-deps.sh").read_text()
    pkgs = set(re.findall(r'^\s+"([a-z0-9.+-]+)(?:=[^"]*)?"', script, re.M))
    core = {"python3-venv", "python3-dev", "gcc", "iperf3", "iproute2", "tshark"}
    assert core <= pkgs
    text = README.read_text()
    assert all(p in text for p in core)
    assert "scripts/install-deps.sh" in text
