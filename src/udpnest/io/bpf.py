"""A classic-BPF socket filter that drops datagrams from non-peers in the kernel (issue 9.1).

``SO_ATTACH_FILTER`` on the underlay RX socket: the kernel runs the program in ``udp_queue_rcv_one_skb``
before the datagram is queued, so junk from a host that is not a peer never takes receive-buffer space,
never wakes the RX process and never costs a ``recvmsg``.  A refused datagram is counted by the kernel
in the socket's ``sk_drops`` (with receive-buffer overflows), which udpnest reads with ``SO_RXQ_OVFL``
and shows as ``rx.socket_drops``.

For a UDP socket the filter sees the skb with ``data`` at the UDP header; the IP source address is
read relative to the network header with the ``SKF_NET_OFF`` negative offset (``ld [SKF_NET_OFF + 12]``
for IPv4, four words from ``SKF_NET_OFF + 8`` for IPv6).  The program accepts a source equal to one of
``addresses`` or inside one of ``networks`` and drops everything else (``ret #0``).  Every match jumps
to the accept instruction with a ``ja`` (32-bit offset), so the 8-bit conditional offsets never
overflow; the size limit is the kernel's ``BPF_MAXINSNS`` (4096): about 1350 IPv4 or 450 IPv6 peers (beyond
that udpnest logs it and relies on the userspace check alone).

The builder is pure (:func:`build_filter` returns the instructions); :func:`attach` makes the syscall.
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
import struct
from collections.abc import Iterable

SO_ATTACH_FILTER = 26
SO_DETACH_FILTER = 27
SO_LOCK_FILTER = 44
SKF_NET_OFF = -0x100000
BPF_MAXINSNS = 4096

# opcodes (linux/bpf_common.h)
LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
ALU_AND_K = 0x54  # BPF_ALU | BPF_AND | BPF_K
JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
JA = 0x05  # BPF_JMP | BPF_JA
RET_K = 0x06  # BPF_RET | BPF_K

ACCEPT = 0xFFFFFFFF
DROP = 0

Insn = tuple[int, int, int, int]  # code, jt, jf, k


class FilterTooLarge(ValueError):
    pass


def _words(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> list[tuple[int, int, int]]:
    """(word index, mask, value) per 32-bit word of the address that the prefix constrains."""
    addr = int(net.network_address)
    mask = int(net.netmask)
    n = net.max_prefixlen // 32
    out = []
    for i in range(n):
        shift = 32 * (n - 1 - i)
        m = (mask >> shift) & 0xFFFFFFFF
        if m:
            out.append((i, m, (addr >> shift) & 0xFFFFFFFF))
    return out


def build_filter(v6: bool, addresses: Iterable[str] = (), networks: Iterable[str] = ()) -> list[Insn]:
    """The cBPF program: accept sources in ``addresses`` or ``networks`` (all of one family), drop the rest."""
    nets = [ipaddress.ip_network(a) for a in addresses] + [ipaddress.ip_network(n, strict=False) for n in networks]
    for n in nets:
        if (n.version == 6) != v6:
            raise ValueError(f"{n}: not IPv{6 if v6 else 4}")
    base = SKF_NET_OFF + (8 if v6 else 12)
    blocks: list[list[Insn]] = []
    for net in dict.fromkeys(nets):  # de-duplicated, order kept
        words = _words(net)
        if not words:  # /0: everything
            blocks.append([])
            continue
        blk: list[Insn] = []
        for idx, m, val in words:
            blk.append((LD_W_ABS, 0, 0, (base + 4 * idx) & 0xFFFFFFFF))
            if m != 0xFFFFFFFF:
                blk.append((ALU_AND_K, 0, 0, m))
            blk.append((JEQ_K, 0, 0xFF, val))  # jf patched below: to the next block
        blk.append((JA, 0, 0, 0xFFFFFFFF))  # k patched below: to accept
        blocks.append(blk)
    prog: list[Insn] = []
    for blk in blocks:
        start = len(prog)
        end = start + len(blk)  # first instruction of the next block
        for j, (code, jt, jf, k) in enumerate(blk):
            if code == JEQ_K:
                jf = end - (start + j) - 1
                if jf > 255:
                    raise FilterTooLarge("block too long")
            prog.append((code, jt, jf, k))
        if not blk:
            prog.append((JA, 0, 0, 0xFFFFFFFF))
    prog.append((RET_K, 0, 0, DROP))
    accept = len(prog)
    prog.append((RET_K, 0, 0, ACCEPT))
    prog = [(c, jt, jf, accept - i - 1) if c == JA else (c, jt, jf, k) for i, (c, jt, jf, k) in enumerate(prog)]
    if len(prog) > BPF_MAXINSNS:
        raise FilterTooLarge(f"{len(prog)} instructions > {BPF_MAXINSNS}: too many peers for the socket filter")
    return prog


def run_filter(prog: list[Insn], src: str) -> bool:
    """Interpret ``prog`` for a datagram from ``src`` (tests; only the opcodes build_filter emits)."""
    a = ipaddress.ip_address(src)
    hdr = bytearray(40 if a.version == 6 else 20)
    if a.version == 6:
        hdr[8:24] = a.packed
    else:
        hdr[12:16] = a.packed
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = prog[pc]
        pc += 1
        if code == LD_W_ABS:
            off = k - (SKF_NET_OFF & 0xFFFFFFFF)
            acc = int.from_bytes(hdr[off : off + 4], "big")
        elif code == ALU_AND_K:
            acc &= k
        elif code == JEQ_K:
            pc += jt if acc == k else jf
        elif code == JA:
            pc += k
        elif code == RET_K:
            return k != 0
        else:
            raise ValueError(f"opcode 0x{code:x}")


def pack(prog: list[Insn]) -> bytes:
    return b"".join(struct.pack("=HBBI", *i) for i in prog)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def attach(sock: socket.socket, prog: list[Insn]) -> None:
    """SO_ATTACH_FILTER (replaces any previous filter atomically)."""
    raw = pack(prog)
    buf = ctypes.create_string_buffer(raw, len(raw))
    fprog = _SockFprog(len(prog), ctypes.cast(buf, ctypes.c_void_p))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))
    del buf  # the kernel copied the program
