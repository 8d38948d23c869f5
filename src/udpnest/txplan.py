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
