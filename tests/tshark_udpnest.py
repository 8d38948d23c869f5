"""Run tshark with contrib/wireshark/udpnest.lua and read back fields, expert info and the unfolded frames.

Shared by tests/test_wireshark.py (pcaps built with udpnest's fold()) and tests/privileged/test_operations.py
(pcaps captured from real fold/echo traffic).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

LUA = Path(__file__).resolve().parents[1] / "contrib" / "wireshark" / "udpnest.lua"
TSHARK = shutil.which("tshark")
ERROR_SEVERITY = 0x00800000  # PI_ERROR
MALFORMED_GROUP = 0x07000000  # PI_MALFORMED


def tshark(pcap, *args: str) -> str:
    res = subprocess.run([TSHARK, "-n", "-X", f"lua_script:{LUA}", "-r", str(pcap), *args], capture_output=True,
                         text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr
    assert "Lua Error" not in res.stdout and "Lua Error" not in res.stderr, res.stdout + res.stderr
    return res.stdout


def fields(pcap, names: list[str], *extra: str) -> list[dict[str, list[str]]]:
    """One dict per frame: field -> every occurrence (strings as tshark prints them)."""
    argv = ["-T", "fields", "-E", "occurrence=a", "-E", "aggregator=|", "-E", "separator=\t"]
    for n in ("frame.number", *names):
        argv += ["-e", n]
    out = []
    for line in tshark(pcap, *argv, *extra).splitlines():
        cols = line.split("\t")
        out.append({n: (c.split("|") if c else []) for n, c in zip(("frame.number", *names), cols, strict=True)})
    return out


def experts(pcap) -> list[list[tuple[int, int, str]]]:
    """Per frame: (group, severity, message) of every expert info."""
    rows = fields(pcap, ["_ws.expert.group", "_ws.expert.severity", "_ws.expert.message", "_ws.malformed"])
    out = []
    for r in rows:
        groups = [int(g, 0) for g in r["_ws.expert.group"]]
        sev = [int(s, 0) for s in r["_ws.expert.severity"]]
        msgs = r["_ws.expert.message"]
        msgs += [""] * (len(groups) - len(msgs))
        items = list(zip(groups, sev, msgs, strict=False))
        if r["_ws.malformed"]:
            items.append((MALFORMED_GROUP, ERROR_SEVERITY, "_ws.malformed"))
        out.append(items)
    return out


def unfolded_frames(pcap) -> dict[int, bytes]:
    """Frame number -> bytes of the "Unfolded frame" data source (tshark -x prints one block per frame,
    blocks separated by an empty line, each data source after a "NAME (N bytes):" line)."""
    out: dict[int, bytes] = {}
    blocks = [b for b in tshark(pcap, "-x").split("\n\n") if b.strip()]
    for i, block in enumerate(blocks, 1):
        cur: bytearray | None = None
        for line in block.splitlines():
            if line.startswith("Unfolded frame ("):
                cur = bytearray()
            elif re.match(r"^\S.* \(\d+ bytes\):$", line):
                cur = None
            elif cur is not None:
                m = re.match(r"^[0-9a-f]{4,}  ((?:[0-9a-f]{2} )*[0-9a-f]{2})", line)
                if m:
                    cur += bytes.fromhex(m.group(1).replace(" ", ""))
        if cur is not None:
            out[i] = bytes(cur)
    return out
