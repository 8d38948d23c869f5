"""The TX planner: one TAP frame + one peer mode -> what to send (pure: no sockets, no clock, no FDB).

The endpoint's TX loop is wiring around this: it reads a frame from the TAP, asks the FDB and the
prober for the destination and its mode (policy, Python), and hands the frame and the mode here.  A
plan is one of::

    ("gso", segments)     all datagrams in one buffer for one sendmsg(UDP_SEGMENT=segments.row_len)
    ("one", [parts])      a single datagram, the concatenation of the parts (ACKs, small frames)
    ("kernel", (prefix, inner, layout, vnet, mss))
                          one frame for the kernel's UDP-tunnel GSO (--tx-path kernel, udpnest.outer)

The per-byte work behind a plan (segmentation, every length, ID and checksum, finishing a partial
checksum, validating the vnet header) is done by the engine chosen at start-up: the native core
(``udpnest._native``, csrc/tx.c) or the Python reference (udpnest.gso, numpy).  Both give the same bytes
and raise the same :class:`~udpnest.wire.errors.ParseError` reasons (tests/test_engine_diff_tx.py).
"""

from __future__ import annotations

from collections.abc import Mapping

from . import engine as _engine
from .fold import DEFAULT_PORTS, fold, gro_hint_for
from .gso import Layout, segment_size, segment_tcp, tcp_layout
from .wire import csum
from .wire.errors import ParseError, Reason
from .wire.geneve import build_geneve
from .wire.options import DEFAULT_OPT_CLASS, build_gro_hint
from .wire.vnet import GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, VNET_HDR_LEN, VnetHdr

ETH_P_TEB = 0x6558
#: largest Geneve payload the kernel TX path takes: the outer IPv6/UDP lengths (IPv4 total length) must
#: fit 16 bits; a larger super-packet is cut by udpnest itself (a "gso" plan) instead
KERNEL_MAX_PAYLOAD = 65535 - 48
MODES = ("plain", "hint", "fold")


class TxPlanner:
    """Plans for one endpoint's configuration; ``engine`` is "python" or "native" (see udpnest.engine)."""

    def __init__(self, *, vni: int = 0, opt_class: int = DEFAULT_OPT_CLASS, ports: Mapping = DEFAULT_PORTS,
                 max_levels: int = 3, max_datagram: int = 1472, kernel_tx: bool = False,
                 engine: str = "python") -> None:
        if engine not in _engine.ENGINES:
            raise ValueError(f"engine must be one of {_engine.ENGINES} (got {engine!r})")
        self.vni, self.opt_class, self.ports = vni, opt_class, ports
        self.max_levels, self.max_datagram, self.kernel_tx = max_levels, max_datagram, kernel_tx
        self.engine = engine
        native = engine == "native"
        self._vnet = _engine.native_vnet if native else VnetHdr.unpack
        self._segment = _engine.native_segment if native else segment_tcp
        self._finish = _engine.native_finish_csum if native else finish_csum
        self._fold_gso = _engine._native.fold_gso if native else None
        self._fold_one = _engine._native.fold_one if native else None
        self._plain_gso = _engine._native.plain_gso if native else None
        self._hint_prefix = _engine._native.hint_prefix if native else None
        self._plain = build_geneve(vni, ETH_P_TEB)  # the same for every frame sent as it is
        self._ports = tuple((int(p), int(e)) for p, e in ports.items())
        #: native fast path use: "native_fast" plans built by one native call, "native_deferred" super-packets
        #: the core left to the reference (rare shapes: USO, IPv6 extension headers, levels that do not fold)
        self.counters: dict[str, int] = {"native_fast": 0, "native_deferred": 0} if native else {}

    def parse(self, data) -> tuple[VnetHdr, memoryview]:
        """The vnet header and the Ethernet frame of one TAP read; raises ParseError."""
        vh = self._vnet(data)
        frame = memoryview(data)[VNET_HDR_LEN:]
        if len(frame) < 14:
            raise ParseError(Reason.TRUNCATED_ETH, f"frame of {len(frame)} bytes")
        return vh, frame

    def plan(self, data, mode: str):
        """parse + build in one call (tests, the differential suite)."""
        vh, frame = self.parse(data)
        return self.build(frame, vh, mode)

    def build(self, frame, vh: VnetHdr, mode: str):
        """The plan for ``frame`` towards a peer in ``mode``; raises ParseError."""
        if vh.is_gso:
            return self._build_gso(frame, vh, mode)
        if vh.needs_csum:
            frame = self._finish(frame, vh.csum_start, vh.csum_offset)
        if mode == "fold":
            if self._fold_one is not None:
                r = self._fold_one(frame, self.vni, self.opt_class, self._ports, self.max_levels)
                if r is not None:
                    self.counters["native_fast"] += 1
                    return "one", [r[0], memoryview(frame)[r[1] :]]
                self.counters["native_deferred"] += 1
            fo = fold(frame, vni=self.vni, opt_class=self.opt_class, ports=self.ports, max_levels=self.max_levels)
            return "one", [fo.header, fo.inner]
        return "one", [self.plain_prefix(frame, mode, gso=False), frame]

    def _build_gso(self, frame, vh: VnetHdr, mode: str):
        if vh.base_type not in (GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4):
            raise ParseError(Reason.BAD_VNET, f"gso type 0x{vh.gso_type:02x} not supported on TX")
        uso = vh.base_type == GSO_UDP_L4
        if self._fold_gso is not None and mode == "fold" and vh.is_tunnel and self.kernel_tx and not uso:
            # the kernel TX path: fold + layout + segment size in one native call, the kernel cuts
            r = self._fold_gso(frame, self.vni, self.opt_class, self._ports, self.max_levels, self.max_datagram,
                               vh.gso_size, True)
            if r is not None and len(r[0]) + len(frame) - r[1] <= KERNEL_MAX_PAYLOAD:
                prefix, off, lay, mss = r
                self.counters["native_fast"] += 1
                return "kernel", (prefix, memoryview(frame)[off:], Layout(*lay), vh, mss)
            self.counters["native_deferred"] += 1
        elif self._fold_gso is not None and mode == "fold" and vh.is_tunnel and not self.kernel_tx:
            # the steady state in one native call: fold, layout, segment size, segmentation
            r = None if uso else self._fold_gso(frame, self.vni, self.opt_class, self._ports, self.max_levels,
                                                self.max_datagram, vh.gso_size)
            if r is not None:
                self.counters["native_fast"] += 1
                return "gso", _engine.NativeSegments(*r)
            self.counters["native_deferred"] += 1
        elif (self._plain_gso is not None and not uso and (mode != "fold" or not vh.is_tunnel)
              and (vh.is_tunnel or not self.kernel_tx)):
            # sent as it is (plain, hint, or fold of a frame with nothing to fold): layout + segmentation in C
            prefix = self.plain_prefix(frame, mode, gso=True)
            flags = _engine._native.SEG_FIX_IP_IDS | (_engine._native.SEG_FIXED_NESTED_IDS if mode == "hint" else 0)
            r = self._plain_gso(prefix, frame, vh.outer_th_offset if vh.is_tunnel else 0, self.max_datagram,
                                vh.gso_size, flags)
            if r is not None:
                self.counters["native_fast"] += 1
                return "gso", _engine.NativeSegments(*r)
            self.counters["native_deferred"] += 1
        udp_offs = (vh.outer_th_offset,) if vh.is_tunnel else ()
        seg_frame = frame
        prefix = None
        if mode == "fold" and vh.is_tunnel:
            fo = fold(frame, vni=self.vni, opt_class=self.opt_class, ports=self.ports, max_levels=self.max_levels,
                      gso=True)
            if fo.levels:
                prefix, seg_frame, layout = fo.header, fo.inner, tcp_layout(fo.inner, inner_udp=uso)
        elif not vh.is_tunnel and self.kernel_tx:
            prefix, layout = self.plain_prefix(frame, "plain", gso=True), tcp_layout(frame, inner_udp=uso)
        if (prefix is not None and self.kernel_tx and prefix[2:4] == b"\x65\x58"
                and len(prefix) + len(seg_frame) <= KERNEL_MAX_PAYLOAD):
            # nothing tunnelled is left inside: the kernel's UDP-tunnel GSO can cut it (outer.py)
            return "kernel", (prefix, seg_frame, layout, vh, self.segment_size(vh, prefix, layout, seg_frame))
        if prefix is None:
            prefix = self.plain_prefix(frame, mode, gso=True)
            layout = tcp_layout(frame, udp_offs, inner_udp=uso)
        mss = self.segment_size(vh, prefix, layout, seg_frame)
        # hint: GSO-partial-shaped trains (nested headers byte-identical across segments) for Linux's GRO
        return "gso", self._segment(prefix, seg_frame, layout, mss, fixed_nested_ids=mode == "hint")

    def segment_size(self, vh: VnetHdr, prefix: bytes, layout, seg_frame) -> int:
        """TCP: :func:`udpnest.gso.segment_size` for the underlay MTU (no runt tail).  UDP (USO): the
        application's datagram size, always: its boundaries are the messages."""
        if layout.l4_proto == 17:
            return vh.gso_size
        mss = segment_size(self.max_datagram, len(prefix) + layout.hdr_len, vh.gso_size,
                           len(seg_frame) - layout.hdr_len)
        if mss < 64:
            raise ParseError(Reason.FOLD_TOO_LARGE, f"headers leave {mss} bytes per datagram")
        return mss

    def plain_prefix(self, frame, mode: str, *, gso: bool) -> bytes:
        """The Geneve header for a frame sent as it is: with the Linux GRO hint option in hint mode."""
        if mode != "hint":
            return self._plain
        if self._hint_prefix is not None:
            r = self._hint_prefix(frame, self.vni, self._ports, gso)
            if r is not None:
                return r
        h = gro_hint_for(frame, ports=self.ports, gso=gso)
        return self._plain if h is None else build_geneve(self.vni, ETH_P_TEB, build_gro_hint(h))


def finish_csum(frame, csum_start: int, csum_offset: int) -> bytearray:
    """Complete a CHECKSUM_PARTIAL frame: the field holds the pseudo-header sum; add the data, invert."""
    f = bytearray(frame)
    cs, co = csum_start, csum_offset
    if cs + co + 2 > len(f):
        raise ParseError(Reason.BAD_VNET, f"csum_start {cs} + csum_offset {co} beyond the frame ({len(f)})")
    c = csum.checksum(f[cs:])
    if c == 0 and co == 6:
        c = 0xFFFF  # UDP
    f[cs + co : cs + co + 2] = c.to_bytes(2, "big")
    return f


# --- hint trains: join consecutive super-packets of one TCP flow ------------------------------------------
#: a joined super-packet stays within what the receiver's GRO may build (Linux: GRO_LEGACY_MAX_SIZE for the
#: decapsulated aggregate, geneve_post_decap_hint) and within one UDP_SEGMENT send
JOIN_MAX_FRAME = 65535 - 64
JOIN_MAX_SEGMENTS = 64
_TCP_END = 0x01 | 0x08  # FIN | PSH: the receiver's GRO closes the aggregate after them
_TCP_KEEP = 0x01 | 0x08 | 0x80  # FIN | PSH | CWR: set on the first or last segment only (gso.segment_tcp)


def join_key(data) -> tuple | None:
    """What must be equal for two TAP reads to join (:func:`join_frames`): None when ``data`` is not a TCP
    super-packet that may have a successor joined to it (not GSO, USO, a short last segment)."""
    try:
        vh = VnetHdr.unpack(data)
    except ParseError:
        return None
    if not vh.is_gso or vh.base_type not in (GSO_TCPV4, GSO_TCPV6) or vh.gso_size <= 0:
        return None
    frame = memoryview(data)[VNET_HDR_LEN:]
    try:
        lay = tcp_layout(frame, (vh.outer_th_offset,) if vh.is_tunnel else ())
    except ParseError:
        return None
    return vh, lay


def _masked_headers(frame, lay: Layout) -> bytearray:
    """The headers with every per-segment or per-super-packet field zeroed: IP lengths, IDs and header
    checksums, UDP lengths and checksums, TCP sequence number, FIN/PSH/CWR and checksum."""
    h = bytearray(frame[: lay.hdr_len])
    for o in lay.ip4:
        h[o + 2 : o + 6] = b"\0\0\0\0"
        h[o + 10 : o + 12] = b"\0\0"
    for o in lay.ip6:
        h[o + 4 : o + 6] = b"\0\0"
    for o, _ in lay.udp:
        h[o + 4 : o + 8] = b"\0\0\0\0"
    t = lay.tcp
    h[t + 4 : t + 8] = b"\0\0\0\0"
    h[t + 13] &= ~_TCP_KEEP & 0xFF
    h[t + 16 : t + 18] = b"\0\0"
    return h


def join_frames(first, second, key: tuple) -> bytearray | None:
    """``first`` (a TAP read: vnet header + frame) with ``second``'s TCP payload appended, as one super-packet
    the planner cuts into one longer train; None when they may not join.

    Joinable: the same vnet header and layout, the same headers but for the fields every segment gets
    anew anyway (:func:`_masked_headers`: so the same addresses, ports, ACK, window and TCP options, TCP
    timestamps included, which the receiver's TCP GRO requires equal), ``second``'s sequence number right
    after ``first``'s payload, ``first`` a whole number of segments without FIN or PSH, no CWR on
    ``second``, and the result within :data:`JOIN_MAX_FRAME` bytes and :data:`JOIN_MAX_SEGMENTS` segments.
    The innermost IPv4 ID of ``second`` must continue ``first``'s (+1 per segment) unless DF is set.
    """
    vh, lay = key
    try:
        vh2 = VnetHdr.unpack(second)
    except ParseError:
        return None
    if vh2 != vh:
        return None
    f1, f2 = memoryview(first)[VNET_HDR_LEN:], memoryview(second)[VNET_HDR_LEN:]
    H, t = lay.hdr_len, lay.tcp
    if len(f2) <= H:
        return None
    n1 = len(f1) - H
    n2 = len(f2) - H
    if n1 <= 0 or n1 % vh.gso_size or len(f1) + n2 > JOIN_MAX_FRAME:
        return None
    if -(-(n1 + n2) // vh.gso_size) > JOIN_MAX_SEGMENTS:
        return None
    if f1[t + 13] & _TCP_END or f2[t + 13] & 0x80:
        return None
    try:
        lay2 = tcp_layout(f2, (vh.outer_th_offset,) if vh.is_tunnel else ())
    except ParseError:
        return None
    if lay2 != lay or _masked_headers(f1, lay) != _masked_headers(f2, lay):
        return None
    seq1 = int.from_bytes(f1[t + 4 : t + 8], "big")
    if int.from_bytes(f2[t + 4 : t + 8], "big") != (seq1 + n1) & 0xFFFFFFFF:
        return None
    if not lay.tcp_ip_v6:
        o = lay.tcp_ip
        if not f1[o + 6] & 0x40:  # no DF: the IDs of the segments are real, keep them continuous
            id1, id2 = int.from_bytes(f1[o + 4 : o + 6], "big"), int.from_bytes(f2[o + 4 : o + 6], "big")
            if id2 != (id1 + n1 // vh.gso_size) & 0xFFFF:
                return None
    out = bytearray(first)
    out += f2[H:]
    out[VNET_HDR_LEN + t + 13] |= f2[t + 13] & _TCP_END
    return out


class TrainJoiner:
    """Joins the TCP super-packets of one TAP read burst into longer hint trains (:func:`join_frames`).

    Why: a Linux geneve receiver with the GRO hint merges a train only within one NAPI poll and flushes
    when the nested headers change (each super-packet's nested IPv4 ID differs).  The kernel's own sender
    emits one train per TCP TSO burst, which grows with the flow's rate; a TCP flow through a slower
    udpnest gets small TSO bursts (2-3 segments: ``tcp_tso_autosize``) queued back to back in the TAP.
    Joining what a read burst holds restores kernel-sized trains.

    ``push`` takes each TAP read (a view; copied when held) and returns the reads to send now, in order;
    ``flush`` at the end of the burst returns the held one.  Frames that cannot join pass through.
    """

    def __init__(self) -> None:
        self.held: bytearray | None = None
        self.key: tuple | None = None
        self.joined = 0  # reads appended to a held one

    def push(self, data) -> list:
        if self.held is not None:
            j = join_frames(self.held, data, self.key)
            if j is not None:
                self.held = j
                self.joined += 1
                return []
        out = self.flush()
        key = join_key(data)
        if key is None:
            out.append(data)
        else:
            self.held, self.key = bytearray(data), key
        return out

    def flush(self) -> list:
        if self.held is None:
            return []
        held, self.held, self.key = self.held, None, None
        return [held]
