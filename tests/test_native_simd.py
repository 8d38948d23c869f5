"""The native core's SIMD helpers (csrc/udpnest.h) against plain loops written here.

``un_sum``, the one's complement sum (SSE2 bulk over little-endian words, folded and byte-swapped, then a
big-endian tail), against a plain RFC 1071 loop.

Every checksum udpnest writes or verifies in C goes through it, so it is checked where a vectorised sum
goes wrong: every length around the 64-byte bulk threshold and the 32-byte SIMD stride, odd lengths, odd
start addresses, sums that are non-zero multiples of 0xFFFF (0xFFFF, not 0, is the one's complement
result), all-zero buffers (0), and sums large enough to carry out of every lane.

``un_masked_differs``, the coalescing header compare on a keep mask (16 bytes at a time), through
``_native.rx_same``: a difference at every position of every 16-byte block and of the tail, masked or not.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from udpnest import engine
from udpnest.wire import csum

pytestmark = pytest.mark.skipif(not engine.native_available(), reason="native core not built")


def rfc1071(buf: bytes, start: int = 0) -> int:
    """Big-endian 16-bit words, an odd byte padded with zero, end-around carry after every add."""
    s = start
    if len(buf) & 1:
        buf = buf + b"\0"
    for i in range(0, len(buf), 2):
        s += buf[i] << 8 | buf[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def native_sum(buf, start: int = 0) -> int:
    from udpnest import _native

    return _native.ones_sum(buf, start)


@pytest.mark.parametrize("n", list(range(0, 200)) + [255, 256, 257, 1447, 1448, 1449, 9000, 65535, 65536])
def test_every_length_near_the_strides(n):
    data = os.urandom(n)
    assert native_sum(data) == rfc1071(data) == csum.ones_sum(data)


@pytest.mark.parametrize("shift", range(1, 16))
def test_unaligned_start_addresses(shift):
    base = os.urandom(4096 + 16)
    for n in (63, 64, 65, 100, 1449, 4096):
        view = memoryview(base)[shift : shift + n]
        assert native_sum(view) == rfc1071(bytes(view)), (shift, n)


@pytest.mark.parametrize("n", [2, 64, 66, 130, 1448, 65534])
def test_nonzero_multiple_of_ffff_gives_ffff_not_zero(n):
    ff = b"\xff" * n
    assert native_sum(ff) == 0xFFFF
    # 0x0001 + 0xFFFE words: every pair sums to 0xFFFF
    pairs = b"\x00\x01\xff\xfe" * (n // 4) + (b"\xff\xff" if n % 4 else b"")
    assert native_sum(pairs) == rfc1071(pairs) == 0xFFFF


@pytest.mark.parametrize("n", [0, 1, 64, 65, 1448, 65536])
def test_all_zero_is_zero(n):
    assert native_sum(bytes(n)) == 0
    assert native_sum(bytes(n), 0x1234) == 0x1234


def test_lane_carries_on_the_largest_buffers():
    # 0xFFFFFFFF words in every lane: the 64-bit lanes must not lose a carry on a 256 KB buffer
    data = b"\xff\xff\xff\xfe" * 65536
    assert native_sum(data) == rfc1071(data)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(min_size=0, max_size=3000), shift=st.integers(0, 7), start=st.integers(0, 0xFFFFFFFF))
def test_random_buffers_offsets_and_start_values(data, shift, start):
    buf = bytes(shift) + data
    view = memoryview(buf)[shift:]
    assert native_sum(view, start) == rfc1071(data, start)


@pytest.mark.parametrize("n", [1, 15, 16, 17, 31, 32, 33, 100, 142])
def test_masked_compare_sees_every_position(n):
    from udpnest import _native

    ref = os.urandom(n)
    keep = bytes([1]) * n
    assert _native.rx_same(ref, ref, keep, ())
    for j in range(n):
        other = bytearray(ref)
        other[j] ^= 0x01 << (j % 8)
        assert not _native.rx_same(bytes(other), ref, keep, ()), j
        masked = bytearray(keep)
        masked[j] = 0
        assert _native.rx_same(bytes(other), ref, bytes(masked), ()), j
        # any non-zero keep byte keeps the position (the masks are built as 0/1, but need not be)
        masked[j] = 0x80
        assert not _native.rx_same(bytes(other), ref, bytes(masked), ()), j


@settings(max_examples=200, deadline=None)
@given(ref=st.binary(min_size=0, max_size=300), data=st.data())
def test_masked_compare_random(ref, data):
    from udpnest import _native

    n = len(ref)
    buf = data.draw(st.binary(min_size=n, max_size=n))
    keep = data.draw(st.binary(min_size=n, max_size=n))
    expect = all(not keep[j] or buf[j] == ref[j] for j in range(n))
    assert _native.rx_same(buf, ref, keep, ()) == expect
