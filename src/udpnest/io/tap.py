"""TAP device with virtio-net headers and UDP-tunnel GSO, opened directly on ``/dev/net/tun``.

The device is opened ``IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`` with a 24-byte vnet header
(``TUNSETVNETHDRSZ``), so every frame read or written starts with a
:class:`udpnest.wire.vnet.VnetHdr` (``struct virtio_net_hdr_v1_hash_tunnel``).  Offloads are negotiated with
``TUNSETOFFLOAD``: the requested mask is tried first and, while the kernel answers EINVAL, the newest
features are dropped one group at a time (:data:`FALLBACK_STEPS`).  The result is kept in
``Tap.offloads`` (accepted) and ``Tap.refused`` (requested but refused) for logging and ``status``.

With ``queues=N > 1`` the device is opened ``IFF_MULTI_QUEUE`` with N queue fds (``Tap.fds``; ``Tap.fd`` is
queue 0), and the steering program of :mod:`udpnest.io.steering` is set so that each flow's frames come out
of one queue (``Tap.steering``: "ebpf", or "automq" with ``Tap.steering_error`` when the kernel refused it).
In tun.c the vnet header size, the TUN_F_* offloads, the IFF_* flags and the steering program are per
DEVICE (set once, on queue 0; every TUNSETIFF that attaches a queue must repeat the same flags, they
overwrite the device's); each queue has its own ring of ``txqueuelen`` frames.  ``queues=1`` is the
single-queue TAP exactly as before (no IFF_MULTI_QUEUE).

The TAP is not persistent: closing the fd removes the device.  With ``netns=`` the device is created
inside that (named) network namespace: the calling thread enters it for the open and the ioctls and goes
back; the fd stays valid and the device stays in the namespace.

Constants are defined here (not taken from ``/usr/include/linux/if_tun.h``, which may predate the
6.2 USO and 6.17 UDP-tunnel flags); values from ``include/uapi/linux/if_tun.h``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import socket
import struct
from collections.abc import Iterable, Iterator

from ..wire.vnet import VNET_HDR_LEN

# ioctls (_IOW('T', nr, int/unsigned int))
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
TUNGETVNETHDRSZ = 0x800454D7

# TUNSETIFF flags
IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_NAPI = 0x0010
IFF_MULTI_QUEUE = 0x0100
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000

# TUNSETOFFLOAD bits
TUN_F_CSUM = 0x001
TUN_F_TSO4 = 0x002
TUN_F_TSO6 = 0x004
TUN_F_TSO_ECN = 0x008
TUN_F_UFO = 0x010
TUN_F_USO4 = 0x020
TUN_F_USO6 = 0x040
TUN_F_UDP_TUNNEL_GSO = 0x080
TUN_F_UDP_TUNNEL_GSO_CSUM = 0x100

OFFLOAD_NAMES = {
    TUN_F_CSUM: "csum",
    TUN_F_TSO4: "tso4",
    TUN_F_TSO6: "tso6",
    TUN_F_TSO_ECN: "tso_ecn",
    TUN_F_UFO: "ufo",
    TUN_F_USO4: "uso4",
    TUN_F_USO6: "uso6",
    TUN_F_UDP_TUNNEL_GSO: "udp_tunnel_gso",
    TUN_F_UDP_TUNNEL_GSO_CSUM: "udp_tunnel_gso_csum",
}

DEFAULT_OFFLOADS = (
    TUN_F_CSUM
    | TUN_F_TSO4
    | TUN_F_TSO6
    | TUN_F_TSO_ECN
    | TUN_F_USO4
    | TUN_F_USO6
    | TUN_F_UDP_TUNNEL_GSO
    | TUN_F_UDP_TUNNEL_GSO_CSUM
)

KNOWN_OFFLOADS = sum(OFFLOAD_NAMES)

#: Bits dropped, in this order, while TUNSETOFFLOAD fails with EINVAL (unknown bits, then the newest
#: kernel features first).
FALLBACK_STEPS = (
    0xFFFFFFFF & ~KNOWN_OFFLOADS,
    TUN_F_UDP_TUNNEL_GSO_CSUM,
    TUN_F_UDP_TUNNEL_GSO,
    TUN_F_USO4 | TUN_F_USO6,
    TUN_F_TSO_ECN,
    TUN_F_UFO,
    TUN_F_TSO4 | TUN_F_TSO6,
    TUN_F_CSUM,
)

#: A read buffer this large never truncates a frame (vnet header + 64 KiB GSO frame + headers).
READ_BUF_SIZE = VNET_HDR_LEN + 65536 + 512

_IFREQ = struct.Struct("16sH22x")  # struct ifreq: ifr_name, ifr_flags, union padding (40 bytes)


def offload_names(mask: int) -> list[str]:
    """Human-readable names of the TUN_F_* bits in ``mask`` (unknown bits as hex)."""
    out = [name for bit, name in OFFLOAD_NAMES.items() if mask & bit]
    rest = mask & ~KNOWN_OFFLOADS
    if rest:
        out.append(hex(rest))
    return out


@contextlib.contextmanager
def in_netns(name: str | None) -> Iterator[None]:
    """Run the body with the calling thread inside the named netns (``/run/netns/<name>``), then go back.

    ``None`` is a no-op.  Sockets and TUN fds created inside keep their namespace afterwards.  The
    namespace must exist (it is never created here).
    """
    if name is None:
        yield
        return
    from pyroute2 import netns as _netns

    saved = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _netns.setns(name, flags=0)
        try:
            yield
        finally:
            _netns.setns(saved, flags=0)
    finally:
        os.close(saved)


def set_offloads(fd: int, wanted: int) -> tuple[int, int]:
    """TUNSETOFFLOAD with fallback; returns ``(accepted, refused)`` where ``refused = wanted & ~accepted``."""
    mask = wanted
    steps = iter(FALLBACK_STEPS)
    while True:
        try:
            fcntl.ioctl(fd, TUNSETOFFLOAD, mask)
            return mask, wanted & ~mask
        except OSError as e:
            if e.errno != errno.EINVAL or mask == 0:
                raise
        for step in steps:
            if mask & step:
                mask &= ~step
                break
        else:
            mask = 0


#: most queues a TAP may have here (tun allows 256; the TX loop's ready mask is 64 bits)
MAX_QUEUES = 64


class Tap:
    """A non-blocking TAP fd carrying 24-byte vnet headers (or N queue fds, ``queues=N``).

    Attributes: ``name``, ``ifindex``, ``netns``, ``fd`` (queue 0), ``fds`` (every queue, ``fds[0] == fd``),
    ``steering`` (None with one queue, "ebpf" or "automq"), ``steering_error``, ``vnet_hdr_sz``, ``offloads``
    (accepted TUN_F_* mask), ``requested`` and ``refused`` (requested bits the kernel would not take).
    """

    def __init__(
        self,
        name: str = "udpn%d",
        *,
        netns: str | None = None,
        offloads: int = DEFAULT_OFFLOADS,
        mtu: int | None = None,
        addresses: Iterable[str] = (),
        mac: str | None = None,
        up: bool = False,
        queues: int = 1,
    ) -> None:
        if len(name.encode()) >= 16:
            raise ValueError(f"interface name {name!r} longer than 15 bytes")
        if not 1 <= queues <= MAX_QUEUES:
            raise ValueError(f"queues {queues} not in 1..{MAX_QUEUES}")
        self.netns = netns
        self.requested = offloads
        self.vnet_hdr_sz = VNET_HDR_LEN
        self.fd = -1
        self.fds: list[int] = []
        self.steering: str | None = None
        self.steering_error: str | None = None
        flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | (IFF_MULTI_QUEUE if queues > 1 else 0)
        with in_netns(netns):
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            more: list[int] = []
            try:
                ifr = bytearray(_IFREQ.pack(name.encode(), flags))
                fcntl.ioctl(fd, TUNSETIFF, ifr)
                self.name = bytes(ifr[:16]).split(b"\0", 1)[0].decode()
                fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
                got = struct.unpack("i", fcntl.ioctl(fd, TUNGETVNETHDRSZ, bytes(4)))[0]
                if got != VNET_HDR_LEN:
                    raise OSError(errno.EINVAL, f"TUNSETVNETHDRSZ: kernel kept {got}, wanted {VNET_HDR_LEN}")
                self.offloads, self.refused = set_offloads(fd, offloads)
                self.ifindex = socket.if_nametoindex(self.name)
                if queues > 1:
                    # the same flags again (tun_set_iff overwrites the device's flags with each attach)
                    for _ in range(queues - 1):
                        q = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
                        more.append(q)
                        fcntl.ioctl(q, TUNSETIFF, bytearray(_IFREQ.pack(self.name.encode(), flags)))
                    self._steer(fd)
            except BaseException:
                for q in [fd, *more]:
                    os.close(q)
                raise
        self.fd = fd
        self.fds = [fd, *more]
        addresses = list(addresses)
        if mtu is not None or addresses or mac is not None or up:
            try:
                self.configure(mtu=mtu, addresses=addresses, mac=mac, up=up)
            except BaseException:
                self.close()
                raise

    def _steer(self, fd: int) -> None:
        """Set the steering program (udpnest.io.steering); without it tun's automq decides (logged by the
        endpoint: flows written on queue 0, which is every flow udpnest receives, then stay on queue 0)."""
        from . import steering

        try:
            steering.attach(fd)
            self.steering = "ebpf"
        except OSError as e:
            self.steering, self.steering_error = "automq", str(e)

    # -- configuration -----------------------------------------------------------------------------------

    def configure(
        self,
        *,
        mtu: int | None = None,
        addresses: Iterable[str] = (),
        mac: str | None = None,
        up: bool = False,
    ) -> None:
        """Set MTU / MAC, add ``"addr/prefixlen"`` addresses and optionally bring the link up (netlink)."""
        from pyroute2 import IPRoute

        kw = {"netns": self.netns} if self.netns is not None else {}
        with IPRoute(**kw) as ipr:
            attrs: dict = {}
            if mtu is not None:
                attrs["mtu"] = mtu
            if mac is not None:
                attrs["address"] = mac
            if attrs:
                ipr.link("set", index=self.ifindex, **attrs)
            for a in addresses:
                addr, _, plen = a.partition("/")
                if not plen:
                    plen = "128" if ":" in addr else "32"
                ipr.addr("add", index=self.ifindex, address=addr, prefixlen=int(plen))
            if up:
                ipr.link("set", index=self.ifindex, state="up")

    def current_addresses(self) -> list[str]:
        """The TAP's IP addresses now (``addr/prefix``), [] if the link is gone or was moved elsewhere."""
        from pyroute2 import IPRoute

        kw = {"netns": self.netns} if self.netns is not None else {}
        try:
            with IPRoute(**kw) as ipr:
                return [f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=self.ifindex)]
        except Exception:  # noqa: BLE001 - pyroute2 raises its own types; an announcement is best effort
            return []

    # -- data path ---------------------------------------------------------------------------------------

    def fileno(self) -> int:
        """Queue 0's fd: every write (the RX path's frames) goes there.  With the steering program tun does
        not record which queue a flow was written on (tun_get_user updates its flow table only without a
        program), so the queue written to does not move any flow; and tun has no per-queue state on the
        write path that one fd would contend on (no IFF_NAPI here).  Under the automq fallback it does pin
        the written flows to queue 0 (see :meth:`_steer`)."""
        return self.fd

    def readers(self) -> list:
        """One :meth:`reader` per queue (``fds`` order)."""
        return [io.FileIO(fd, "rb", closefd=False).readinto for fd in self.fds]

    def read_into(self, buf) -> int:
        """Read one frame (vnet header + Ethernet frame) into ``buf``; 0 if none is pending.

        ``buf`` should hold :data:`READ_BUF_SIZE` bytes; a shorter buffer silently truncates GSO frames.
        """
        try:
            return os.readv(self.fd, [buf])
        except BlockingIOError:
            return 0

    def reader(self):
        """A callable ``readinto(buf)`` for the TX loop: the frame's length, or ``None`` when none is pending.

        ``io.FileIO.readinto`` on the (non-blocking) fd: an empty queue returns ``None`` instead of raising
        BlockingIOError (cheaper per burst: every burst of reads ends on an empty queue).  The fd is not
        owned by it (``closefd=False``): :meth:`close` still closes it.
        """
        return io.FileIO(self.fd, "rb", closefd=False).readinto

    def read(self, size: int = READ_BUF_SIZE) -> bytes | None:
        """One frame as bytes, or ``None`` if none is pending."""
        try:
            return os.read(self.fd, size)
        except BlockingIOError:
            return None

    def write(self, frame) -> int:
        """Write one frame that starts with its 24-byte vnet header; returns bytes written."""
        return os.write(self.fd, frame)

    def writev(self, parts) -> int:
        """Write one frame given as several buffers (e.g. ``[vnet_hdr, headers, payload]``)."""
        return os.writev(self.fd, parts)

    # -- lifetime ----------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close every queue fd; the (non-persistent) device disappears with the last one."""
        if self.fd >= 0:
            fds, self.fds, self.fd = getattr(self, "fds", None) or [self.fd], [], -1
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def __enter__(self) -> Tap:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __repr__(self) -> str:
        where = f" netns={self.netns}" if self.netns else ""
        queues = len(getattr(self, "fds", ())) or 1
        return (
            f"<Tap {getattr(self, 'name', '?')}{where} fd={self.fd} queues={queues}"
            f" offloads=0x{getattr(self, 'offloads', 0):x} refused=0x{getattr(self, 'refused', 0):x}>"
        )
