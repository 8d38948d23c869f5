"""io/sched.py: the dataplane threads' nice value is set per thread and read back from /proc."""

from __future__ import annotations

import os
import threading

import pytest

from udpnest.io.sched import set_thread_nice, thread_nice


def _in_thread(fn):
    out = {}

    def run():
        out["tid"] = threading.get_native_id()
        out["result"] = fn()
        out["seen"] = thread_nice(os.getpid(), out["tid"])
        out["main"] = thread_nice(os.getpid())

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return out


def test_raises_only_the_calling_thread():
    main_before = os.getpriority(os.PRIO_PROCESS, 0)
    want = min(19, main_before + 3)  # raising the value needs no privilege
    out = _in_thread(lambda: set_thread_nice(want))
    assert out["result"] == (want, None)
    assert out["seen"] == want
    assert out["main"] == main_before == os.getpriority(os.PRIO_PROCESS, 0)


def test_none_leaves_it():
    base = os.getpriority(os.PRIO_PROCESS, 0)
    out = _in_thread(lambda: set_thread_nice(None))
    assert out["result"] == (base, None) and out["seen"] == base


@pytest.mark.skipif(os.geteuid() != 0, reason="lowering a nice value needs CAP_SYS_NICE")
def test_lowers_with_privilege():
    out = _in_thread(lambda: set_thread_nice(-10))
    assert out["result"] == (-10, None) and out["seen"] == -10


def test_refused_is_reported_not_raised(monkeypatch):
    def refuse(*_):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "setpriority", refuse)
    value, err = set_thread_nice(-10)
    assert value == os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert "setpriority(-10)" in err and "not permitted" in err


def test_thread_nice_of_a_gone_process_is_none():
    assert thread_nice(2**22 + 12345) is None
