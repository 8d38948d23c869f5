"""fdb.Fdb: learning, flooding, ageing, eviction (time passed in)."""

from __future__ import annotations

import pytest

from udpnest.fdb import Fdb


def mac(i: int) -> bytes:
    return bytes([0x02, 0, 0, 0, i >> 8, i & 0xFF])


BCAST = b"\xff" * 6
MCAST4 = bytes.fromhex("01005e000001")
MCAST6 = bytes.fromhex("333300000001")
GROUP_BIT = bytes.fromhex("030000000001")  # unicast-looking but the I/G bit set


def test_learn_and_lookup():
    f = Fdb()
    assert f.lookup(mac(1), 0.0) is None
    f.learn(mac(1), "p1", 0.0)
    f.learn(mac(2), ("10.0.0.2", 6081), 0.0)
    assert f.lookup(mac(1), 1.0) == "p1"
    assert f.lookup(mac(2), 1.0) == ("10.0.0.2", 6081)
    assert f.lookup(mac(3), 1.0) is None
    assert len(f) == 2
    assert f.stats() == {"entries": 2, "learned": 2, "moved": 0, "evicted": 0, "expired": 0}


@pytest.mark.parametrize("group", [BCAST, MCAST4, MCAST6, GROUP_BIT])
def test_group_addresses_never_learned_always_flood(group):
    f = Fdb()
    f.learn(group, "p1", 0.0)
    assert len(f) == 0 and f.learned == 0
    assert f.lookup(group, 0.0) is None
    f._t[group] = ("p1", 0.0)  # even if one got in, a group address is flooded
    assert f.lookup(group, 0.0) is None


def test_ageing():
    f = Fdb(ageing=300.0)
    f.learn(mac(1), "p1", 0.0)
    assert f.lookup(mac(1), 300.0) == "p1"  # exactly at the limit: still there
    assert f.lookup(mac(1), 300.5) is None
    assert len(f) == 0 and f.expired == 1
    assert f.lookup(mac(1), 301.0) is None
    assert f.expired == 1


def test_refresh_restarts_ageing():
    f = Fdb(ageing=10.0)
    f.learn(mac(1), "p1", 0.0)
    f.learn(mac(1), "p1", 8.0)
    assert f.lookup(mac(1), 17.0) == "p1"
    assert f.lookup(mac(1), 18.5) is None
    assert f.learned == 1 and f.moved == 0


def test_lookup_does_not_refresh():
    f = Fdb(ageing=10.0)
    f.learn(mac(1), "p1", 0.0)
    assert f.lookup(mac(1), 9.0) == "p1"
    assert f.lookup(mac(1), 10.5) is None


def test_max_entries_evicts_least_recently_learned():
    f = Fdb(max_entries=3)
    f.learn(mac(1), "a", 0.0)
    f.learn(mac(2), "a", 1.0)
    f.learn(mac(3), "a", 2.0)
    f.learn(mac(1), "a", 3.0)  # refreshed: now the most recent
    f.learn(mac(4), "b", 4.0)  # evicts mac(2)
    assert f.lookup(mac(2), 5.0) is None
    assert [f.lookup(mac(i), 5.0) for i in (1, 3, 4)] == ["a", "a", "b"]
    f.learn(mac(5), "b", 6.0)  # evicts mac(3)
    assert f.lookup(mac(3), 7.0) is None
    assert len(f) == 3
    assert f.evicted == 2 and f.learned == 5
    # a refresh of an existing entry never evicts
    f.learn(mac(5), "c", 8.0)
    assert len(f) == 3 and f.evicted == 2


def test_eviction_many():
    f = Fdb(max_entries=100)
    for i in range(1000):
        f.learn(mac(i), i % 7, float(i))
    assert len(f) == 100
    assert f.evicted == 900
    assert all(f.lookup(mac(i), 1000.0) is None for i in range(900))
    assert all(f.lookup(mac(i), 1000.0) == i % 7 for i in range(900, 1000))


def test_moved():
    f = Fdb()
    f.learn(mac(1), "p1", 0.0)
    f.learn(mac(1), "p1", 1.0)
    assert f.moved == 0
    f.learn(mac(1), "p2", 2.0)
    assert f.moved == 1 and f.learned == 1
    assert f.lookup(mac(1), 3.0) == "p2"
    f.learn(mac(1), "p1", 4.0)
    assert f.moved == 2 and len(f) == 1


def test_forget_peer():
    f = Fdb()
    for i in range(10):
        f.learn(mac(i), "p1" if i % 2 else "p2", 0.0)
    f.forget_peer("p1")
    assert len(f) == 5
    assert all(f.lookup(mac(i), 1.0) is None for i in range(1, 10, 2))
    assert all(f.lookup(mac(i), 1.0) == "p2" for i in range(0, 10, 2))
    f.forget_peer("nobody")
    assert len(f) == 5
    f.forget_peer("p2")
    assert len(f) == 0


@pytest.mark.parametrize(("max_entries", "ageing"), [(0, 1.0), (-1, 1.0), (1, 0.0), (1, -5.0)])
def test_bad_arguments(max_entries, ageing):
    with pytest.raises(ValueError):
        Fdb(max_entries=max_entries, ageing=ageing)


def test_learn_lookup_expiry_from_two_threads():
    """Issue 9.6: the main thread learns while the TX thread looks up and expires.  Without the lock an
    expiry in lookup() raced an eviction in learn() (KeyError, which stopped the endpoint)."""
    import sys
    import threading
    import time
    from collections import OrderedDict

    class YieldingDict(OrderedDict):
        """Gives the GIL away inside every read: a thread switch where a race would hurt."""

        def get(self, key, default=None):
            r = super().get(key, default)
            time.sleep(0.00005)
            return r

    fdb = Fdb(max_entries=4, ageing=1.0)
    fdb._t = YieldingDict()
    macs = [bytes([2, 0, 0, 0, i >> 8, i & 0xFF]) for i in range(6)]
    errors: list[BaseException] = []
    stop = threading.Event()
    clock = [0.0]

    def learner():
        try:
            i = 0
            while not stop.is_set():
                fdb.learn(macs[i % 6], i % 3, clock[0])
                clock[0] += 0.3  # every entry is soon expired: lookups delete while learn evicts
                i += 1
        except BaseException as e:  # noqa: BLE001 - the test reports any of them
            errors.append(e)

    def looker():
        try:
            i = 0
            while not stop.is_set():
                fdb.lookup(macs[i % 6], clock[0])
                i += 1
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=f) for f in (learner, learner, looker, looker)]
        for t in threads:
            t.start()
        stop.wait(1.0)
        stop.set()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert errors == []
    assert len(fdb) <= 4
    st = fdb.stats()
    assert st["expired"] > 0 and st["evicted"] > 0
