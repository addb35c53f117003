"""The house's numba helpers (``simulator/jit.py``): widened constants and borrowed views."""

from __future__ import annotations

import numpy as np

from servesim.simulator.jit import borrowed, njit


@njit(cache=False)
def _fill_through(a, b, value):
    # A callee receiving borrowed views, writing through one and a slice of the other.
    a[0] = value
    b[1:3] = value + 1
    return a.sum() + b.sum()


@njit(cache=False)
def _entry(a, b, value):
    a, b = borrowed(a), borrowed(b)
    total = 0.0
    for k in range(3):  # views pass through calls and loops like the arrays they alias
        total += _fill_through(a, b, value + k)
    return total


def test_borrowed_views_alias_their_arrays():
    a = np.zeros(4)
    b = np.zeros(5, dtype=np.float64)
    total = _entry(a, b, 1.0)
    # The last call wrote 3.0 into a[0] and 4.0 into b[1:3]; every call's sum is returned.
    assert a.tolist() == [3.0, 0.0, 0.0, 0.0]
    assert b.tolist() == [0.0, 4.0, 4.0, 0.0, 0.0]
    assert total == (1.0 + 2 * 2.0) + (2.0 + 2 * 3.0) + (3.0 + 2 * 4.0)


def test_borrowed_is_the_identity_in_python():
    a = np.arange(3)
    assert borrowed(a) is a


@njit(cache=False)
def _index(a, i):
    return a[i]


@njit(cache=False)
def _calls_with_constants(a):
    return _index(a, 0) + _index(a, 1) + _index(a, 2)


def test_constants_share_one_specialization():
    a = np.arange(5)
    assert _calls_with_constants(a) == 3
    # One compiled copy of the callee for all three literal indices (jit.py's docstring);
    # with NUMBA_DISABLE_JIT=1 the callee is a plain function.
    assert len(getattr(_index, "signatures", [None])) == 1
