"""udpnest dataplane in the lab (issue 3): integrity per nested mode and family, fold counters, the plain
mode's wire format, junk on the Geneve port.

Workload A -> workload B over the workload's nested VXLAN, carried by two udpnest endpoints (kernel TX path).
"""

from __future__ import annotations

import json
import random
import shutil
import struct
import subprocess
import time
from collections import Counter

import nestlab
import pytest

from udpnest import engine as udpnest_engine
from udpnest.lab import bench, topology

pytestmark = pytest.mark.root

ALLOWED_DROPS = {"tap_write"}  # the peer may send before a freshly started endpoint's TAP is up


def _check_integrity(spec, nested: str) -> None:
    if shutil.which("ping"):
        for size in (56, 1200):
            res = nestlab.ping(spec, size=size)
            assert res.returncode == 0, f"ping -s {size} over the nested VXLAN failed ({nested}): {res.stdout}"
    sent, got = nestlab.udp_flow(spec)
    assert len(got) == len(sent), f"{nested}: {len(got)} of {len(sent)} inner UDP datagrams arrived"
    assert got == sent, f"{nested}: inner UDP datagrams differ in content or order"


# the native engine (the default when built) in every mode; the Python reference engine in a representative one
@pytest.mark.parametrize(("nested", "engine"), [("off", "native"), ("hint", "native"), ("fold", "native"),
                                                ("hint", "python")])
def test_gib_transfer_sha256(lab, endpoints, nested, engine):
    """1 GiB TCP wa -> wb with equal sha256, ping and an inner UDP flow, for plain / hint / fold."""
    if engine == "native" and not udpnest_engine.native_available():
        pytest.skip(f"native core not built: {udpnest_engine.NATIVE_ERROR}")
    spec = lab.spec
    eps = endpoints(lab).pair(nested, extra=("--engine", engine))
    a, b = eps
    if nested == "fold":
        nestlab.wait_modes(eps, "fold", timeout=5)
    _check_integrity(spec, nested)

    sent, got = nestlab.tcp_transfer(spec, nestlab.GIB)
    assert got["bytes"] == sent["bytes"] == nestlab.GIB
    assert got["sha256"] == sent["sha256"]

    sa, sb = a.settled_status(), b.settled_status()
    assert sa["engine"] == sb["engine"] == engine
    for name, st in (("a", sa), ("b", sb)):
        assert set(st["drops"]) <= ALLOWED_DROPS, f"endpoint {name} dropped legitimate traffic: {st['drops']}"
    kind = {"off": "plain", "hint": "hint", "fold": "fold"}[nested]
    rx = sb["rx"]
    # frames that are not nested VXLAN (ARP, ND) travel as plain Geneve in every mode
    assert rx.get(f"kind_{kind}", 0) >= 0.99 * rx["tap_writes"], rx
    for other in {"hint", "fold"} - {kind}:
        assert rx.get(f"kind_{other}", 0) == 0, f"B received {other} frames in {nested} mode: {rx}"
    assert sa["tx"].get(f"mode_{kind}", 0) > 0, sa["tx"]
    assert rx["tap_bytes"] >= nestlab.GIB, json.dumps([sa["tx"], rx])
    if engine == "native":  # the sender's RX process takes the returning ACKs in C (udpnest.rxbatch)
        assert sa["rx"].get("rx_batch_fast", 0) > 0, sa["rx"]

    if nested == "fold":
        # Issue 3: super-packets reach the workload and the sender hands many datagrams to each send.
        mean_frame = rx["tap_bytes"] / rx["tap_writes"]
        assert mean_frame >= 16384, f"mean TAP frame at the receiver is {mean_frame:.0f} bytes"
        tx = sa["tx"]
        # endpoint._send counts a kernel-TX-path write in kernel_writes AND in sendmsg_calls (calls=1), so
        # sendmsg_calls is the number of sends of any kind; datagrams on that path is what the kernel cuts.
        assert tx.get("kernel_writes", 0) > 0, f"kernel TX path not used: {tx}"
        assert tx["kernel_writes"] <= tx["sendmsg_calls"]
        per_send = tx["datagrams"] / tx["sendmsg_calls"]
        assert per_send >= 10, f"{per_send:.1f} datagrams per send ({tx})"
        # the receiver's view of the same transfer agrees with the sender's datagram count
        assert rx["datagrams"] >= 0.99 * tx["datagrams"] * (tx.get("mode_fold", 0) / tx["frames"])


# ---------------------------------------------------------------------------------------------------------
# plain mode on the wire


def _start_tshark(ns: str, filt: str, pcap, log):
    with open(log, "w") as f:
        proc = subprocess.Popen(bench.ns_argv(ns, ["tshark", "-n", "-q", "-i", topology.IF_UNDERLAY, "-f", filt,
                                                   "-B", "64", "-a", "duration:6", "-F", "pcap", "-w", str(pcap)]),
                                stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while "Capturing on" not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"tshark did not start: {log.read_text(errors='replace')}")
        time.sleep(0.05)
    time.sleep(2.0)  # "Capturing on" comes a little before packets are really captured
    return proc


def _csum_ok(layer) -> bool:
    """Check ``layer``'s checksum on its wire bytes, independently of udpnest's own checksum code.

    An IPv4 header: scapy recomputes it (its checksum covers the header only).  A TCP or UDP layer: the one's
    complement sum over the pseudo-header and the segment, as cut from the IP header's length, must be 0xFFFF.
    (scapy's own recomputation leaves out an inner frame's Ethernet padding, a short ARP inside Geneve, yet
    keeps the wire length field: a correct checksum then looks wrong.)"""
    if layer.name == "IP":
        c = layer.copy()
        del c.chksum
        return type(layer)(bytes(c)).chksum == layer.chksum
    ip = layer.underlayer
    raw = bytes(ip)  # the IP packet as captured, trailing padding included
    if ip.version == 4:
        seg, src, dst = raw[ip.ihl * 4:ip.len], raw[12:16], raw[16:20]
    else:  # no extension headers are expected on these packets
        seg, src, dst = raw[40:40 + ip.plen], raw[8:24], raw[24:40]
    data = src + dst + struct.pack("!IxxxB", len(seg), ip.proto if ip.version == 4 else ip.nh) + seg
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


@pytest.mark.skipif(not shutil.which("tshark"), reason="tshark not installed")
def test_plain_mode_wire_format(lab, endpoints):
    """Every datagram host A sends in plain mode is Geneve / Eth / IP / UDP 6082 / VXLAN / Eth / IP / TCP with
    valid checksums, on a "wire" underlay where the sending kernel really computes them."""
    from scapy.all import ARP, IP, TCP, UDP, VXLAN, Ether, IPv6, rdpcap
    from scapy.contrib.geneve import GENEVE

    def _control(eth) -> bool:  # ARP, ND, RS, MLD of the hosts' TAPs or of the workloads
        return ARP in eth or (IPv6 in eth and eth[IPv6].nh in (0, 58))  # 0: hop-by-hop (MLD), 58: ICMPv6

    spec = lab.spec
    topology.set_underlay(spec, "wire")
    tshark = None
    try:
        endpoints(lab).pair("off")
        assert nestlab.ping(spec).returncode == 0  # neighbours resolved before the capture
        pcap, log = lab.tmp / f"plain-{spec.prefix}.pcap", lab.tmp / f"tshark-{spec.prefix}.log"
        ula = topology.udpnest_plans(spec)["a"].underlay_local
        tshark = _start_tshark(spec.ns("ha"), f"outbound and udp port {topology.GENEVE_PORT} and src host {ula}",
                               pcap, log)
        sent, got = nestlab.tcp_transfer(spec, 4 * nestlab.MIB, port=5303)
        assert got["sha256"] == sent["sha256"]
        tshark.wait(15)
        pkts = rdpcap(str(pcap))
    finally:
        if tshark is not None and tshark.poll() is None:
            tshark.kill()
            tshark.wait()
        topology.set_underlay(spec, "offload")

    IPn = IP if spec.nested_family == 4 else IPv6
    IPu = IP if spec.underlay_family == 4 else IPv6
    tcp_segments = payload = flags = 0
    bad: list[str] = []
    other = Counter()
    for i, p in enumerate(pkts):
        if len(p) > topology.UNDERLAY_MTU + 14:
            bad.append(f"#{i}: {len(p)} bytes on a wire underlay")
        if IPu not in p or UDP not in p or GENEVE not in p or p[UDP].dport != topology.GENEVE_PORT:
            bad.append(f"#{i}: not Geneve: {p.summary()}")
            continue
        outer_udp = p[UDP]
        if outer_udp.chksum and not _csum_ok(outer_udp):
            bad.append(f"#{i}: outer UDP checksum {outer_udp.chksum:#06x}: {bytes(p).hex()}")
        if spec.underlay_family == 4 and not _csum_ok(p[IP]):
            bad.append(f"#{i}: outer IPv4 checksum")
        g = p[GENEVE]
        if g.version != 0 or g.proto != 0x6558 or g.optionlen != 0 or g.critical:
            bad.append(f"#{i}: Geneve header {g.version=} {g.proto=:#x} {g.optionlen=} {g.critical=}")
            continue
        eth = Ether(bytes(g.payload))
        if _control(eth):
            other["host control"] += 1
            continue
        if IPn not in eth or UDP not in eth or eth[UDP].dport != topology.NESTED_PORT:
            bad.append(f"#{i}: no nested IPv{spec.nested_family}/UDP {topology.NESTED_PORT}: {eth.summary()}")
            continue
        nested_ip, nested_udp = eth[IPn], eth[UDP]
        if spec.nested_family == 4 and not _csum_ok(nested_ip):
            bad.append(f"#{i}: nested IPv4 checksum")
        if nested_udp.chksum and not _csum_ok(nested_udp):
            bad.append(f"#{i}: nested UDP checksum")
        vx = VXLAN(bytes(nested_udp.payload))
        if vx.vni != topology.NESTED_VNI:
            bad.append(f"#{i}: VNI {vx.vni}")
        inner = vx[Ether]
        if _control(inner):
            other["nested control"] += 1
            continue
        if IPn not in inner or TCP not in inner:
            bad.append(f"#{i}: nested VXLAN does not carry IP/TCP: {inner.summary()}")
            continue
        if spec.nested_family == 4 and not _csum_ok(inner[IP]):
            bad.append(f"#{i}: inner IPv4 checksum")
        if not _csum_ok(inner[TCP]):
            bad.append(f"#{i}: inner TCP checksum (seq {inner[TCP].seq})")
        tcp_segments += 1
        payload += len(inner[TCP].payload)
        flags |= int(inner[TCP].flags)
    assert not bad, f"{len(bad)} of {len(pkts)} captured datagrams are wrong: {bad[:10]}"
    assert sum(other.values()) <= 10, other
    # the capture itself may miss the very first packets (it becomes effective a little after tshark says
    # "Capturing on"), so coverage is checked loosely; validity above is checked for every captured packet
    assert tcp_segments >= 0.9 * 4 * nestlab.MIB // 1500
    assert payload >= 0.9 * 4 * nestlab.MIB
    assert flags & 0x01, "the capture lacks the FIN of the transfer"


# ---------------------------------------------------------------------------------------------------------
# junk on the Geneve port


def _geneve(opt_words: int = 0, flags: int = 0, proto: int = 0x6558, vni: int = 7, ver: int = 0) -> bytes:
    return struct.pack("!BBHI", ver << 6 | opt_words, flags, proto, vni << 8)


def _crafted_peer_junk() -> list[tuple[bytes, str | None]]:
    """(datagram, drop reason it must be counted under, or None: any parse reason)."""
    eth_ip4 = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x08\x00"
    return [
        (b"", "truncated_geneve"),
        (b"\x00\x00\x65", "truncated_geneve"),
        (_geneve(ver=1) + eth_ip4 + bytes(40), "bad_geneve_version"),
        (_geneve(ver=3, opt_words=63), "bad_geneve_version"),
        (_geneve(opt_words=5) + bytes(4), "truncated_geneve"),
        (_geneve(opt_words=2, flags=0x40) + struct.pack("!HBB", 0x1234, 0x80, 1) + bytes(4) + eth_ip4 + bytes(40),
         "unknown_critical_option"),
        (_geneve() + b"\x02\x00\x00\x00\x00", "truncated_eth"),
        (_geneve() + eth_ip4 + b"\x45\x00\x00", "truncated_ipv4"),
        # echo request option with 4 instead of 20 data bytes
        (_geneve(opt_words=2, flags=0xC0) + struct.pack("!HBB", 0xFF4E, 0x82, 1) + bytes(4), "bad_echo"),
        # OAM packet without echo options
        (_geneve(flags=0x80) + eth_ip4 + bytes(40), "oam"),
        # FOLD option with garbage: some bad_fold_* / truncation reason
        (_geneve(opt_words=4, flags=0x40) + struct.pack("!HBB", 0xFF4E, 0x81, 3) + bytes([0xFF] * 12) + eth_ip4,
         None),
        (_geneve(opt_words=2, flags=0x40) + struct.pack("!HBB", 0xFF4E, 0x81, 1) + bytes([0x00, 0x30, 0, 0]),
         None),
    ]


def _predicted_reasons(pkts: list[bytes], max_datagram: int) -> Counter:
    """What the endpoint's (pure) receive path says about each random datagram."""
    from udpnest.config import build_config
    from udpnest.rxpipe import receive

    ports = build_config({"id": 7, "local": "192.0.2.1", "remote": ["192.0.2.2"],
                          "nested_ports": ["6082:vxlan"]}).nested_ports
    out = Counter()
    for p in pkts:
        res = receive(bytearray(p), len(p), 0, ports=ports, max_datagram=max_datagram, vni=7)  # the lab VNI
        for reason, n in res.drops:
            out[reason.value] += n
    return out


def _add_address(ns: str, address: str, prefixlen: int) -> None:
    from pyroute2 import IPRoute

    with IPRoute(netns=ns) as ip:
        topology._add_addr(ip, topology._index(ip, topology.IF_UNDERLAY), address, prefixlen)


def test_junk_on_geneve_port(lab, endpoints):
    """Junk from the peer's address and from a non-peer address during a transfer: counted, harmless."""
    spec = lab.spec
    a, b = endpoints(lab).pair("fold")
    nestlab.wait_modes([a, b], "fold", timeout=5)
    plan_a = a.plan
    dst = plan_a.underlay_local
    peer_src = plan_a.underlay_remote
    stranger = "198.51.100.3" if spec.underlay_family == 4 else "2001:db8:100::3"
    _add_address(spec.ns("hb"), stranger, 24 if spec.underlay_family == 4 else 64)

    rng = random.Random(1234)
    crafted = _crafted_peer_junk()
    random_junk = [rng.randbytes(rng.choice([1, 7, 8, 9, 16, 60, 200, 900, 1400]) if i % 10 else 3000)
                   for i in range(300)]
    peer_pkts = [p for p, _ in crafted] * 10 + random_junk
    stranger_pkts = random_junk[:100] + [p for p, _ in crafted] * 5
    max_dg = 1500 - (20 if spec.underlay_family == 4 else 40) - 8
    predicted = _predicted_reasons(random_junk, max_dg)
    for _, reason in crafted:
        if reason is not None:
            predicted[reason] += 10
    n_parse_drops = 10 * len(crafted) + sum(_predicted_reasons(random_junk, max_dg).values())

    st0 = a.settled_status()
    before, kernel_before = st0["drops"], st0["rx"].get("socket_drops", 0)
    with nestlab.TcpTransfer(spec, None, port=5304) as t:
        time.sleep(0.3)
        assert t.running(), "transfer ended before the junk was sent"
        n_peer = nestlab.send_junk(spec.ns("hb"), peer_src, dst, topology.GENEVE_PORT, peer_pkts, lab.tmp,
                                   gap=0.0002)
        n_stranger = nestlab.send_junk(spec.ns("hb"), stranger, dst, topology.GENEVE_PORT, stranger_pkts, lab.tmp,
                                       gap=0.0002)
        junk_done_while_running = t.running()
        sent, got = t.wait()
    assert got["sha256"] == sent["sha256"] and got["bytes"] == sent["bytes"]
    assert junk_done_while_running, "the junk was not all sent while the transfer ran"
    assert a.running(), f"endpoint A died: {a.log_text()[-3000:]}"
    assert b.running()

    st1 = a.settled_status()
    after = st1["drops"]
    delta = Counter(after)
    delta.subtract(before)
    # the non-peer's datagrams never reach userspace: the kernel's socket filter drops them (issue 9.1)
    assert n_stranger == len(stranger_pkts)
    assert delta["no_peer"] == 0, delta
    assert st1["rx"].get("socket_drops", 0) - kernel_before >= n_stranger, st1["rx"]
    parse = sum(v for k, v in delta.items() if k not in ("no_peer", "tap_write"))
    assert parse >= n_parse_drops, f"{parse} parse drops for {n_peer} junk datagrams ({n_parse_drops} expected)"
    missing = {k: (delta[k], v) for k, v in predicted.items() if delta[k] < v}
    assert not missing, f"drop counters below the prediction (got, expected): {missing}; all: {dict(delta)}"
    # still folding and still answering
    assert a.peer()["mode"] == "fold"
    assert nestlab.ping(spec).returncode == 0
