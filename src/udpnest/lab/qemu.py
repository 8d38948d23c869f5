"""Boot a real Debian Linux 7.x kernel in QEMU (TCG) to run udpnest against the kernel's own geneve/vxlan.

The guest is tiny: the pinned Debian ``cloud-amd64`` kernel (fetched by ``scripts/qemu-kernel.sh`` into
``/var/cache/udpnest/kernel``), an initramfs of busybox-static plus the few modules it needs (geneve, vxlan,
veth, tun, overlay), and the **host's root file system** shared read-only through virtiofs (QEMU's
``virtiofsd`` + ``vhost-user-fs-pci`` on a memfd memory backend), with a tmpfs overlay on top.  So the guest
runs the host's Python, this checkout and its venv unchanged.

A small agent (``python -m udpnest.lab.qemu agent``) in the guest reads JSON requests line by line from a
virtio-serial port and answers each with the command's exit status and output: :class:`Guest` is the
host-side handle (``guest.sh("ip -br link")``).

Nothing here is on udpnest's data path; it is lab tooling like ``topology.py``.
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
KERNEL_SCRIPT = REPO / "scripts" / "qemu-kernel.sh"
QEMU = "qemu-system-x86_64"
VIRTIOFSD = "/usr/lib/qemu/virtiofsd"
BUSYBOX = "/bin/busybox"
MODULES = ("geneve", "vxlan", "veth", "tun", "overlay", "nf_tables")
PORT_NAME = "udpnest.ctl"


class Unavailable(RuntimeError):
    """The harness cannot run here; the message says why (the tests skip with it)."""


# ---------------------------------------------------------------------------------------------------------
# kernel + initramfs


def kernel_dir() -> Path:
    """The extracted kernel; fetched on first use.  Raises :class:`Unavailable` with the fetch's reason."""
    out = Path(subprocess.run(["bash", str(KERNEL_SCRIPT), "--print"], capture_output=True, text=True,
                              check=True).stdout.strip())
    if not (out / "vmlinuz").exists():
        r = subprocess.run(["bash", str(KERNEL_SCRIPT)], capture_output=True, text=True)
        if r.returncode != 0 or not (out / "vmlinuz").exists():
            raise Unavailable(f"kernel package unavailable: {(r.stderr or r.stdout).strip()}")
    return out


def _module_files(moddir: Path) -> dict[str, Path]:
    return {p.name.split(".ko")[0].replace("-", "_"): p for p in moddir.rglob("*.ko*")}


def _modinfo_depends(data: bytes) -> list[str]:
    m = re.search(rb"depends=([^\x00]*)\x00", data)
    return [d.decode() for d in m.group(1).split(b",") if d] if m else []


def module_load_order(moddir: Path, wanted=MODULES) -> list[tuple[str, bytes]]:
    """(name, decompressed .ko) for ``wanted`` and their dependencies, dependencies first."""
    files = _module_files(moddir)
    order: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in seen:
            return
        seen.add(name)
        path = files.get(name)
        if path is None:
            return  # built in
        data = lzma.open(path).read() if path.suffix == ".xz" else path.read_bytes()
        for dep in _modinfo_depends(data):
            visit(dep)
        order.append((name, data))

    for w in wanted:
        visit(w)
    return order


INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod /lib/modules/$m.ko || echo "insmod $m failed"; done
mkdir -p /lower /rw /newroot
mount -t virtiofs hostroot /lower -o ro || { echo "UDPNEST-GUEST-FAIL virtiofs"; poweroff -f; }
mount -t tmpfs -o size=512m tmpfs /rw; mkdir -p /rw/u /rw/w
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/u,workdir=/rw/w /newroot || {
    echo "UDPNEST-GUEST-FAIL overlay"; poweroff -f; }
mount -t proc proc /newroot/proc; mount -t sysfs sys /newroot/sys; mount -t devtmpfs dev /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm; mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs tmpfs /newroot/dev/shm; mount -t tmpfs tmpfs /newroot/run
# /tmp stays the overlay's (writes land in its tmpfs upper): a checkout under the host's /tmp must stay visible
mount -t bpf bpf /newroot/sys/fs/bpf 2>/dev/null
port=""
for d in /sys/class/virtio-ports/*; do [ "$(cat $d/name)" = "@PORT@" ] && port=/dev/$(basename $d); done
ip link set lo up
echo "UDPNEST-GUEST-UP $(uname -r) port=$port"
cd /newroot@REPO@
chroot /newroot env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root PYTHONPATH=@REPO@/src \
    @PY@ -m udpnest.lab.qemu agent "$port"
echo "UDPNEST-GUEST-AGENT-EXIT $?"
poweroff -f
"""


def _cpio_newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive of (path, mode, data); directories have mode 0o40755 and no data."""
    out = io.BytesIO()
    for ino, (path, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], start=1):
        name = path.encode() + b"\x00"
        hdr = "070701" + "".join(f"{v:08x}" for v in (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0,
                                                       len(name), 0))
        out.write(hdr.encode() + name)
        out.write(b"\x00" * (-(110 + len(name)) % 4))
        out.write(data)
        out.write(b"\x00" * (-len(data) % 4))
    return out.getvalue()


def build_initramfs(kdir: Path, dest: Path, python: str) -> Path:
    """The initramfs (cached by content: kernel, busybox, init script)."""
    order = module_load_order(kdir / "modules")
    init = INIT.replace("@PORT@", PORT_NAME).replace("@REPO@", str(REPO)).replace("@PY@", python)
    busybox = Path(BUSYBOX).read_bytes()
    key = hashlib.sha256(init.encode() + busybox + b"".join(d for _, d in order)).hexdigest()[:16]
    path = dest / f"initramfs-{key}.cpio"
    if path.exists():
        return path
    d = 0o40755
    entries = [(p, d, b"") for p in ("bin", "sbin", "proc", "sys", "dev", "lib", "lib/modules", "usr",
                                      "usr/bin", "usr/sbin", "tmp", "lower", "rw", "newroot")]
    entries += [("bin/busybox", 0o100755, busybox), ("init", 0o100755, init.encode()),
                ("modules.order", 0o100644, "\n".join(n for n, _ in order).encode() + b"\n")]
    entries += [(f"lib/modules/{n}.ko", 0o100644, data) for n, data in order]
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(_cpio_newc(entries))
    tmp.rename(path)
    return path


# ---------------------------------------------------------------------------------------------------------
# the guest


def unavailable() -> str | None:
    """Why the harness cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (virtiofsd shares the host root with the guest)"
    for tool in (QEMU,):
        if shutil.which(tool) is None:
            return f"{tool} not installed (scripts/install-deps.sh installs qemu-system-x86)"
    for path in (VIRTIOFSD, BUSYBOX):
        if not os.path.exists(path):
            return f"{path} missing (scripts/install-deps.sh installs qemu-system-x86 and busybox-static)"
    return None


@dataclass
class Result:
    rc: int
    out: str
    err: str

    def check(self, what: str = "") -> Result:
        if self.rc != 0:
            raise RuntimeError(f"guest command failed ({self.rc}) {what}: {self.out[-2000:]}{self.err[-2000:]}")
        return self


@dataclass
class Guest:
    """A booted guest.  ``sh`` runs a shell command in it (as root, in the overlay of the host root)."""

    workdir: Path
    smp: int = 2
    mem_mb: int = 2048
    boot_timeout: float = 180.0
    procs: list[subprocess.Popen] = field(default_factory=list)
    kernel_release: str = ""

    def start(self) -> Guest:
        why = unavailable()
        if why:
            raise Unavailable(why)
        kdir = kernel_dir()
        self.workdir.mkdir(parents=True, exist_ok=True)
        cache = kdir.parent / "initramfs"
        cache.mkdir(exist_ok=True)
        initrd = build_initramfs(kdir, cache, sys.executable)
        vsock = self.workdir / "virtiofs.sock"
        csock = self.workdir / "ctl.sock"
        self.console = self.workdir / "console.log"
        for p in (vsock, csock):
            p.unlink(missing_ok=True)
        self.procs.append(subprocess.Popen(
            [VIRTIOFSD, f"--socket-path={vsock}", "-o", "source=/", "-o", "cache=auto", "-o", "no_posix_lock",
             "-o", "sandbox=chroot", "--thread-pool-size=4"],
            stdout=open(self.workdir / "virtiofsd.log", "w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        deadline = time.monotonic() + 10
        while not vsock.exists():
            if time.monotonic() > deadline or self.procs[0].poll() is not None:
                self.stop()
                raise RuntimeError(f"virtiofsd did not start: {(self.workdir / 'virtiofsd.log').read_text()}")
            time.sleep(0.05)
        mem = f"{self.mem_mb}M"
        argv = [QEMU, "-accel", "tcg,thread=multi", "-cpu", "max", "-smp", str(self.smp), "-m", mem,
                "-object", f"memory-backend-memfd,id=mem,size={mem},share=on", "-numa", "node,memdev=mem",
                "-kernel", str(kdir / "vmlinuz"), "-initrd", str(initrd),
                "-append", "console=ttyS0 quiet panic=-1 rdinit=/init net.ifnames=0",
                "-nographic", "-no-reboot", "-nodefaults", "-serial", f"file:{self.console}",
                "-chardev", f"socket,id=vfs,path={vsock}",
                "-device", "vhost-user-fs-pci,chardev=vfs,tag=hostroot",
                "-chardev", f"socket,id=ctl,path={csock},server=on,wait=off",
                "-device", "virtio-serial-pci", "-device", f"virtserialport,chardev=ctl,name={PORT_NAME}"]
        self.procs.append(subprocess.Popen(argv, stdout=open(self.workdir / "qemu.log", "w"),
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        deadline = time.monotonic() + self.boot_timeout
        while not csock.exists():
            self._alive(deadline)
            time.sleep(0.05)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(csock))
        self._buf = b""
        while True:  # the agent answers once it runs; earlier requests are lost or answered late
            self._alive(deadline)
            try:
                r = self.sh("uname -r", timeout=5)
            except TimeoutError:
                continue
            self.kernel_release = r.out.strip()
            return self

    def _alive(self, deadline: float) -> None:
        for p in self.procs:
            if p.poll() is not None:
                log = self.console_text()
                self.stop()
                raise RuntimeError(f"{p.args[0]} exited with {p.returncode}; console: {log[-3000:]}")
        if time.monotonic() > deadline:
            log = self.console_text()
            self.stop()
            raise TimeoutError(f"guest not up within {self.boot_timeout}s; console: {log[-3000:]}")

    def console_text(self) -> str:
        try:
            return self.console.read_text(errors="replace")
        except OSError:
            return ""

    _seq = 0

    def sh(self, cmd: str, timeout: float = 120.0, check: bool = False) -> Result:
        """Run ``sh -c cmd`` in the guest; background processes must redirect their output."""
        self._seq += 1
        seq = self._seq
        self.sock.sendall(json.dumps({"id": seq, "sh": cmd, "timeout": timeout}).encode() + b"\n")
        deadline = time.monotonic() + timeout + 30
        while True:
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                    raise TimeoutError(f"guest did not answer {cmd!r} in {timeout + 30}s")
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    raise RuntimeError(f"guest closed the control port; console: {self.console_text()[-3000:]}")
                self._buf += chunk
            line, self._buf = self._buf.split(b"\n", 1)
            msg = json.loads(line)
            if msg.get("id") == seq:
                r = Result(msg["rc"], msg["out"], msg["err"])
                return r.check(cmd) if check else r

    def py(self, code: str, *args: str, timeout: float = 120.0, check: bool = True) -> Result:
        """Run Python code in the guest (this checkout on the path), with ``args`` as sys.argv[1:]."""
        quoted = " ".join("'" + a.replace("'", "'\\''") + "'" for a in args)
        path = f"/tmp/py-{self._seq + 1}.py"
        self.put(path, code.encode())
        return self.sh(f"{sys.executable} {path} {quoted}", timeout=timeout, check=check)

    def put(self, path: str, data: bytes) -> None:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size = len(data)
            info.mode = 0o755
            tf.addfile(info, io.BytesIO(data))
        import base64
        self.sh(f"echo {base64.b64encode(buf.getvalue()).decode()} | base64 -d | tar -x -C /", check=True)

    def stop(self) -> None:
        try:
            if getattr(self, "sock", None) is not None:
                try:
                    self.sock.sendall(b'{"id": 0, "poweroff": true}\n')
                except OSError:
                    pass
                self.sock.close()
                self.sock = None
        finally:
            for p in reversed(self.procs):
                if p.poll() is None:
                    try:
                        p.wait(3)
                    except subprocess.TimeoutExpired:
                        p.terminate()
                        try:
                            p.wait(5)
                        except subprocess.TimeoutExpired:
                            p.kill()
                            p.wait()
            self.procs.clear()


def boot(workdir: Path | None = None, **kw) -> Guest:
    return Guest(Path(workdir or tempfile.mkdtemp(prefix="udpnest-qemu-")), **kw).start()


# ---------------------------------------------------------------------------------------------------------
# the agent (runs inside the guest)


def agent(port: str) -> None:
    fd = os.open(port, os.O_RDWR)
    rf = os.fdopen(fd, "rb", buffering=0)
    wf = os.fdopen(os.dup(fd), "wb", buffering=0)
    buf = b""
    while True:
        chunk = rf.read(65536)
        if not chunk:
            time.sleep(0.05)  # host not connected yet
            continue
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            try:
                req = json.loads(line)
            except ValueError:
                continue
            if req.get("poweroff"):
                os.sync()
                subprocess.run(["sh", "-c", "echo o > /proc/sysrq-trigger"])
                return
            try:
                p = subprocess.run(["sh", "-c", req["sh"]], capture_output=True, timeout=req.get("timeout", 120),
                                   stdin=subprocess.DEVNULL)
                rc, out, err = p.returncode, p.stdout, p.stderr
            except subprocess.TimeoutExpired as e:
                rc, out, err = -999, e.stdout or b"", (e.stderr or b"") + b"\n(timed out in the guest)"
            wf.write(json.dumps({"id": req["id"], "rc": rc, "out": out.decode(errors="replace"),
                                 "err": err.decode(errors="replace")}).encode() + b"\n")


if __name__ == "__main__":
    if sys.argv[1:2] == ["agent"]:
        agent(sys.argv[2])
    elif sys.argv[1:2] == ["shell"]:
        g = boot()
        try:
            for line in sys.stdin:
                r = g.sh(line)
                print(r.out, r.err, f"[rc={r.rc}]", sep="")
        finally:
            g.stop()
