"""Step costs inside the compiled loop: the packed roofline form, or a memo the facade fills.

A step is costed from its six cost-model inputs (``StepCostModel.cost``'s arguments: prefill
tokens, attention pairs, prefill KV tokens, sampled prefill sequences, decoding sequences,
decode context tokens) into seven floats, :data:`hwmodels.stepkernel.COST_FIELDS`' order:
the time, the split by bound (compute, weight read, KV read, communication, overhead) and the
bottleneck stage.

* A roofline model has a packed form ``cf``: :func:`hwmodels.stepkernel.packed_step_cost`
  costs the step in the kernel (its time is ``packed_step_time_s`` bit for bit).
* A model without one (the cycle model, whose operator times come from a simulator; or any
  object with ``step_time_s`` and ``cost``) passes an empty ``cf``: the step's cost is looked
  up in a memo ``mt``. On a miss the kernel stops with ``NEED_COST`` and the shape in its
  header; the facade (``CompiledReplica``) costs it with the model's own reference path,
  :func:`memo_put` stores it, and it resumes. The memo keys on the exact inputs, so the model must be
  a pure function of them (the cycle model's op-timer caches are). The facade fills the time
  at once and the split by bound (NaN until then) in batches; :func:`patch_split` then fills
  the step rows that were written before.

Memo table ``mt``: float64 ``[cap, MEMO_FIELDS]``, ``cap`` a power of two, open addressing with
linear probing; row = the 6 inputs (``M_KEY``; ``-1`` in the first marks an empty row), then the
7 cost fields (``M_COST``). The facade keeps it at most half full (it grows or clears it: the
values are recomputed identically, so results never depend on its size).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from servesim.hwmodels.stepkernel import packed_step_cost
from servesim.simulator.jit import njit

M_KEY = 0  # 6 inputs: prefill tokens, attention pairs, KV tokens, sampled, decoding, context
M_COST = 6  # 7 cost fields (COST_FIELDS' order)
MEMO_FIELDS = 13
EMPTY = -1.0
#: Floats a step's cost takes (``COST_FIELDS``), plus a spare word.
COST_WORDS = 8


def new_table(cap: int) -> npt.NDArray[np.float64]:
    """An empty memo of ``cap`` rows (a power of two)."""
    mt = np.zeros((cap, MEMO_FIELDS), dtype=np.float64)
    mt[:, M_KEY] = EMPTY
    return mt


@njit(cache=True)
def _mix(h, x):
    # A multiplicative mix kept under 2**28, so no step can overflow int64 (nor differ with
    # the JIT off, where these are Python ints).
    return ((h ^ int(x)) * 0x9E3779B) & 0xFFFFFFF


@njit(cache=True)
def _home(mt, p, kv, samp, ndec, ctx):
    h = _mix(_mix(_mix(_mix(_mix(0, p), kv), samp), ndec), ctx)
    return h & (mt.shape[0] - 1)


@njit(cache=True)
def memo_find(mt, p, pairs, kv, samp, ndec, ctx):
    """Row of ``mt`` holding this step shape, or -1."""
    cap = mt.shape[0]
    if cap == 0:
        return -1
    i = _home(mt, p, kv, samp, ndec, ctx)
    while mt[i, M_KEY] != EMPTY:
        if (mt[i, M_KEY] == p and mt[i, M_KEY + 1] == pairs and mt[i, M_KEY + 2] == kv
                and mt[i, M_KEY + 3] == samp and mt[i, M_KEY + 4] == ndec and mt[i, M_KEY + 5] == ctx):
            return i
        i += 1
        if i == cap:
            i = 0
    return -1


@njit(cache=True)
def memo_put(mt, p, pairs, kv, samp, ndec, ctx, cost):
    """Store ``cost`` (7 floats) for a step shape not yet in ``mt`` (which has a free row)."""
    cap = mt.shape[0]
    i = _home(mt, p, kv, samp, ndec, ctx)
    while mt[i, M_KEY] != EMPTY:
        i += 1
        if i == cap:
            i = 0
    mt[i, M_KEY] = p
    mt[i, M_KEY + 1] = pairs
    mt[i, M_KEY + 2] = kv
    mt[i, M_KEY + 3] = samp
    mt[i, M_KEY + 4] = ndec
    mt[i, M_KEY + 5] = ctx
    for j in range(7):
        mt[i, M_COST + j] = cost[j]


@njit(cache=True)
def rehash(old, mt):
    """Move every entry of ``old`` into the (larger, empty) memo ``mt``."""
    for i in range(old.shape[0]):
        if old[i, M_KEY] != EMPTY:
            memo_put(mt, old[i, M_KEY], old[i, M_KEY + 1], old[i, M_KEY + 2], old[i, M_KEY + 3],
                     old[i, M_KEY + 4], old[i, M_KEY + 5], old[i, M_COST : M_COST + 7])


@njit(cache=True, inline="always")  # per step: a call would reference-count its four arrays
def step_cost(cf, mt, p, pairs, kv, samp, ndec, ctx, out):
    """Cost one step into ``out[0:7]``; False when the memo lacks it (the facade must cost it)."""
    if cf.shape[0] > 0:
        packed_step_cost(cf, p, pairs, kv, samp, ndec, ctx, out)
        return True
    i = memo_find(mt, p, pairs, kv, samp, ndec, ctx)
    if i < 0:
        return False
    for j in range(7):
        out[j] = mt[i, M_COST + j]
    return True


@njit(cache=True, inline="always")
def scale_split(parts, o, swap_s, duration_s, ss, row):
    """The split by bound as the steps frame holds it, into ``ss[0:5, row]`` (float32): the
    five parts ``parts[o:o + 5]`` with ``swap_s`` added to communication, scaled to the step's
    duration (``Recorder._scale_split``: the same float64 operations, left-to-right total)."""
    p0 = parts[o]
    p1 = parts[o + 1]
    p2 = parts[o + 2]
    p3 = parts[o + 3] + swap_s
    p4 = parts[o + 4]
    total = p0 + p1
    total += p2
    total += p3
    total += p4
    if total == 0.0:
        total = 1.0
    f = duration_s / total
    ss[0, row] = np.float32(p0 * f)
    ss[1, row] = np.float32(p1 * f)
    ss[2, row] = np.float32(p2 * f)
    ss[3, row] = np.float32(p3 * f)
    ss[4, row] = np.float32(p4 * f)


@njit(cache=True)
def memo_set_split(mt, keys, split):
    """Set the split by bound (``split[i]``: 5 floats) of the shapes ``keys[i]`` (in ``mt``)."""
    for r in range(keys.shape[0]):
        i = memo_find(mt, keys[r, 0], keys[r, 1], keys[r, 2], keys[r, 3], keys[r, 4], keys[r, 5])
        for j in range(5):
            mt[i, M_COST + 1 + j] = split[r, j]


@njit(cache=True)
def patch_split(sf, si, sq, ss, mt, SF_D, SF_A, SF_SWAP, SI_PT, SI_SAMP, SI_DSEQ, SQ_KV, SQ_CTX):
    """Step rows whose split by bound was pending (NaN) take it from the memo, keyed by the
    row's own cost inputs (the step-row columns of :mod:`simulator.compiled._loop`, passed in:
    that module imports this one; ``SI_DSEQ`` counts static batching's padding sequences, as
    the cost does), scaled as :func:`scale_split` (swap time in communication)."""
    for row in range(ss.shape[1]):
        if not np.isnan(ss[0, row]):
            continue
        i = memo_find(mt, float(si[SI_PT, row]), sf[SF_A, row], float(sq[SQ_KV, row]), float(si[SI_SAMP, row]),
                      float(si[SI_DSEQ, row]), float(sq[SQ_CTX, row]))
        scale_split(mt[i], M_COST + 1, sf[SF_SWAP, row], sf[SF_D, row], ss, row)
