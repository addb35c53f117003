"""Exactly rounded sums: the same bytes from any process, alignment and executor.

``numpy.sum`` (pairwise, SIMD-unrolled) and ``numpy.dot`` (BLAS) round differently
depending on the array's memory alignment and the BLAS kernel chosen, so a reduction on a
result path could differ in the last digits between a serial run and a Dask worker (#15).
:func:`fsum` returns the correctly rounded sum of the values, as :func:`math.fsum` does: a
function of the multiset of values alone (independent of order and alignment).

The kernel is Shewchuk's adaptive-precision summation ("Adaptive Precision Floating-Point
Arithmetic and Fast Robust Geometric Predicates", 1997; the algorithm behind
``math.fsum``): a short list of non-overlapping partials holds the exact running sum. The
final rounding of the partials is done by :func:`math.fsum` itself, which handles the
half-way cases. The slow twin is :func:`math.fsum`, and the tests compare the two.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from numba import njit

__all__ = ["fdot", "fmean", "fstd", "fsum"]

# Non-overlapping partials of finite doubles: at most ~(2098 / 53) + 1 of them.
_MAX_PARTIALS = 64


@njit(cache=True)
def _partials(x: npt.NDArray[np.float64], out: npt.NDArray[np.float64]) -> int:
    """Exact sum of ``x`` as ``out[:n]`` non-overlapping partials; returns ``n``.

    Args:
        x: float64[m], finite values.
        out: float64[_MAX_PARTIALS], work space.
    """
    n = 0
    for k in range(x.shape[0]):
        v = x[k]
        i = 0
        for j in range(n):
            # Knuth's TwoSum: hi + lo == v + y exactly, whatever their magnitudes
            # (Shewchuk's Grow-Expansion; no branch on which is larger).
            y = out[j]
            hi = v + y
            bv = hi - v
            lo = (v - (hi - bv)) + (y - bv)
            if lo != 0.0:
                out[i] = lo
                i += 1
            v = hi
        out[i] = v
        n = i + 1
    return n


def fsum(values: npt.ArrayLike) -> float:
    """Correctly rounded sum of ``values`` (float64), like :func:`math.fsum`, in numba."""
    x = np.ascontiguousarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        return 0.0
    if not np.isfinite(x).all():
        return float(np.sum(x))  # inf or nan: the order cannot change which
    out = np.empty(_MAX_PARTIALS, dtype=np.float64)
    n = _partials(x, out)
    return math.fsum(out[:n].tolist())


def fdot(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """``sum(a * b)`` with each product rounded once and the sum correctly rounded."""
    return fsum(np.multiply(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)))


def fmean(values: npt.ArrayLike) -> float:
    """Mean from the correctly rounded sum (NaN for no values)."""
    x = np.asarray(values, dtype=np.float64)
    return fsum(x) / x.size if x.size else float("nan")


def fstd(values: npt.ArrayLike) -> float:
    """Population standard deviation (``numpy.std``'s ddof=0) from correctly rounded sums."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return float("nan")
    mean = fsum(x) / x.size
    d = x - mean
    return math.sqrt(fsum(d * d) / x.size)
