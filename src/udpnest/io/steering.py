"""The multi-queue TAP's steering program: an eBPF socket filter that picks a TX queue per flow (issue 8.7).

A TAP opened with ``IFF_MULTI_QUEUE`` and N queue fds puts each frame the kernel transmits into one queue.
tun.c's ``tun_select_queue`` runs the program set with ``TUNSETSTEERINGEBPF`` (when there is one) on the
skb, with ``data`` at the Ethernet header, and takes ``(u16)return value % numqueues``.  Without one it
falls back to ``tun_automq_select_queue``: the symmetric flow hash, but a flow userspace has WRITTEN on a
queue is sent to that queue (its flow table entry).  udpnest writes every frame it receives on queue 0, so
every flow with traffic both ways would end up on queue 0: hence the program.

The brief's first idea, ``return bpf_get_hash_recalc(skb)``, is refused by the verifier (a socket filter
may not call that helper), and ``skb->hash`` is often 0 for forwarded frames or changes when TCP rethinks
its ``sk_txhash``.  So the program hashes the frame itself, with the legacy packet loads (``LD_ABS`` /
``LD_IND``, which end the program with 0 when out of bounds):

* IPv4: protocol, source and destination addresses, and for TCP/UDP of a first fragment the port word;
* IPv6: next header, both addresses, and for TCP/UDP (no extension header) the port word;
* anything else (ARP, ...): 0 (queue 0).

Mixing: ``h = (h ^ word) * 0x9E3779B1`` per word, then ``h ^ (h >> 16)`` (tun keeps the low 16 bits).  The
same flow always lands in the same queue, in order; two flows share a queue with probability 1/N.

:func:`program` builds the instructions (pure; :func:`run` interprets them for the tests), :func:`load`
makes the ``bpf(BPF_PROG_LOAD)`` syscall, :func:`attach` the ``TUNSETSTEERINGEBPF`` ioctl.  tun takes its
own reference on the program, so the program fd is closed right after the ioctl.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct

TUNSETSTEERINGEBPF = 0x800454E0  # _IOR('T', 224, int)
BPF_PROG_LOAD = 5
BPF_PROG_TYPE_SOCKET_FILTER = 1
_NR_BPF = {"x86_64": 321, "aarch64": 280}.get(os.uname().machine, 321)
GOLDEN = 0x9E3779B1

Insn = tuple[int, int, int, int, int]  # code, dst, src, off, imm

# opcodes (linux/bpf.h, bpf_common.h)
MOV64_X, MOV32_X, MOV32_K = 0xBF, 0xBC, 0xB4
LDB_ABS, LDH_ABS, LDW_ABS, LDW_IND = 0x30, 0x28, 0x20, 0x40
XOR32_X, MUL32_K, AND32_K, LSH32_K, RSH32_K = 0xAC, 0x24, 0x54, 0x64, 0x74
JEQ_K, JNE_K, JSET_K, JA, EXIT = 0x15, 0x55, 0x45, 0x05, 0x95


def _signed(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def program() -> list[Insn]:
    """The steering program (registers: r6 the skb, r7 the hash, r8 the IPv4 header length, r9 the protocol)."""
    prog: list = []
    labels: dict[str, int] = {}

    def emit(code, dst=0, src=0, off=0, imm=0):
        prog.append([code, dst, src, off, imm])

    def jump(code, dst, imm, label):
        prog.append([code, dst, 0, label, imm])

    def mix():  # r7 = (r7 ^ r0) * GOLDEN
        emit(XOR32_X, 7, 0)
        emit(MUL32_K, 7, imm=_signed(GOLDEN))

    emit(MOV64_X, 6, 1)
    emit(MOV32_K, 7, imm=0)
    emit(LDH_ABS, imm=12)
    jump(JEQ_K, 0, 0x0800, "v4")
    jump(JEQ_K, 0, 0x86DD, "v6")
    jump(JA, 0, 0, "done")
    labels["v4"] = len(prog)
    emit(LDB_ABS, imm=23)
    emit(MOV32_X, 9, 0)
    mix()
    for off in (26, 30):
        emit(LDW_ABS, imm=off)
        mix()
    jump(JEQ_K, 9, 6, "v4ports")
    jump(JNE_K, 9, 17, "done")
    labels["v4ports"] = len(prog)
    emit(LDH_ABS, imm=20)
    jump(JSET_K, 0, 0x1FFF, "done")  # a later fragment: no ports
    emit(LDB_ABS, imm=14)
    emit(AND32_K, 0, imm=0x0F)
    emit(LSH32_K, 0, imm=2)
    emit(MOV32_X, 8, 0)
    emit(LDW_IND, 0, 8, imm=14)
    mix()
    jump(JA, 0, 0, "done")
    labels["v6"] = len(prog)
    emit(LDB_ABS, imm=20)
    emit(MOV32_X, 9, 0)
    mix()
    for off in range(22, 54, 4):
        emit(LDW_ABS, imm=off)
        mix()
    jump(JEQ_K, 9, 6, "v6ports")
    jump(JNE_K, 9, 17, "done")
    labels["v6ports"] = len(prog)
    emit(LDW_ABS, imm=54)
    mix()
    labels["done"] = len(prog)
    emit(MOV32_X, 0, 7)
    emit(RSH32_K, 0, imm=16)
    emit(XOR32_X, 0, 7)
    emit(EXIT)
    out: list[Insn] = []
    for i, (code, dst, src, off, imm) in enumerate(prog):
        if isinstance(off, str):
            off = labels[off] - i - 1
        out.append((code, dst, src, off, imm))
    return out


def pack(prog: list[Insn]) -> bytes:
    """``struct bpf_insn`` array (code, dst:4 | src:4 << 4, off, imm), little-endian host."""
    return b"".join(struct.pack("<BBhi", c, d | s << 4, o, i) for c, d, s, o, i in prog)


def run(prog: list[Insn], frame: bytes) -> int:
    """Interpret the program on an Ethernet frame (the subset it uses; for tests): its return value."""
    r = [0] * 11
    pc = 0
    m32 = 0xFFFFFFFF

    def load(off: int, size: int) -> int | None:
        if off < 0 or off + size > len(frame):
            return None
        return int.from_bytes(frame[off:off + size], "big")

    while True:
        code, dst, src, off, imm = prog[pc]
        pc += 1
        if code in (LDB_ABS, LDH_ABS, LDW_ABS, LDW_IND):
            size = {LDB_ABS: 1, LDH_ABS: 2, LDW_ABS: 4, LDW_IND: 4}[code]
            v = load(imm + (r[src] if code == LDW_IND else 0), size)
            if v is None:
                return 0
            r[0] = v
        elif code == MOV64_X:
            r[dst] = r[src]
        elif code == MOV32_X:
            r[dst] = r[src] & m32
        elif code == MOV32_K:
            r[dst] = imm & m32
        elif code == XOR32_X:
            r[dst] = (r[dst] ^ r[src]) & m32
        elif code == MUL32_K:
            r[dst] = (r[dst] * (imm & m32)) & m32
        elif code == AND32_K:
            r[dst] = r[dst] & imm & m32
        elif code == LSH32_K:
            r[dst] = (r[dst] << imm) & m32
        elif code == RSH32_K:
            r[dst] = (r[dst] & m32) >> imm
        elif code == JEQ_K:
            pc += off if r[dst] == imm & m32 else 0
        elif code == JNE_K:
            pc += off if r[dst] != imm & m32 else 0
        elif code == JSET_K:
            pc += off if r[dst] & imm else 0
        elif code == JA:
            pc += off
        elif code == EXIT:
            return r[0] & m32
        else:  # pragma: no cover - the program uses only the above
            raise ValueError(f"opcode 0x{code:02x}")


def queue_of(frame: bytes, queues: int) -> int:
    """The queue tun picks for ``frame`` with the program: ``(u16)ret % queues``."""
    return (run(program(), frame) & 0xFFFF) % queues


class _Attr(ctypes.Structure):  # the BPF_PROG_LOAD part of union bpf_attr (the rest zero)
    _fields_ = [("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32), ("insns", ctypes.c_uint64),
                ("license", ctypes.c_uint64), ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32),
                ("log_buf", ctypes.c_uint64), ("kern_version", ctypes.c_uint32), ("prog_flags", ctypes.c_uint32),
                ("_rest", ctypes.c_char * 96)]


def load(prog: list[Insn] | None = None) -> int:
    """Load the program (``BPF_PROG_TYPE_SOCKET_FILTER``); its fd.  OSError (with the verifier's log in the
    message when it refused) otherwise."""
    prog = program() if prog is None else prog
    raw = pack(prog)
    code = ctypes.create_string_buffer(raw, len(raw))
    lic = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(8192)
    attr = _Attr(BPF_PROG_TYPE_SOCKET_FILTER, len(prog), ctypes.addressof(code), ctypes.addressof(lic), 1,
                 len(log), ctypes.addressof(log))
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(_NR_BPF, BPF_PROG_LOAD, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        e = ctypes.get_errno()
        msg = log.value.decode(errors="replace").strip().splitlines()
        raise OSError(e, f"bpf(BPF_PROG_LOAD): {os.strerror(e)}" + (f": {msg[-1]}" if msg else ""))
    os.set_inheritable(fd, False)
    return fd


def attach(tap_fd: int) -> None:
    """Load the program and set it as the TAP's steering program (per device: any queue fd will do).  tun
    holds its own reference, so the program fd is closed here."""
    pfd = load()
    try:
        fcntl.ioctl(tap_fd, TUNSETSTEERINGEBPF, struct.pack("i", pfd))
    finally:
        os.close(pfd)
