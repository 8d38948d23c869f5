"""System-facing pieces: TAP, UDP sockets, netlink, BPF, scheduling.  The only package that makes syscalls."""


def next_ready(ready, cur: int, n: int) -> int | None:
    """Round robin over ``n`` queues (the TAP's, the RX sockets'): the next index in ``ready`` after ``cur``,
    ``cur`` itself last; None when none is ready.  csrc/udpnest.h ``un_next_ready`` is the same rule."""
    for k in range(1, n + 1):
        i = (cur + k) % n
        if i in ready:
            return i
    return None
