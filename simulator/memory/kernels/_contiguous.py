"""Contiguous-reservation kernels: one region per request in a linear slot space.

Layout (flat arrays in :class:`ContigState`)::

    free extents  ext_start[:n_ext[0]], ext_len[...]  sorted by start, coalesced
    seqs          seq_start[s], seq_res[s] (reserved slots), seq_tokens[s] (held),
                  seq_final[s] (true final length), seq_live[s]

    0                                                        capacity
    |== seq 3 ==|...free...|====== seq 0 ======|..free..|== seq 1 ==|
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

OK = 0
NO_SPACE = 1


class ContigState(NamedTuple):
    """All mutable state of a contiguous manager (see the module docstring)."""

    ext_start: np.ndarray  # int64[S + 2]
    ext_len: np.ndarray  # int64[S + 2]
    n_ext: np.ndarray  # int64[1]
    seq_start: np.ndarray  # int64[S]
    seq_res: np.ndarray  # int64[S]
    seq_tokens: np.ndarray  # int64[S]
    seq_final: np.ndarray  # int64[S]
    seq_live: np.ndarray  # int8[S]


def make_state(capacity_slots: int, max_seqs: int) -> ContigState:
    """Empty state: one free extent covering the whole space."""
    ext_start = np.zeros(max_seqs + 2, dtype=np.int64)
    ext_len = np.zeros(max_seqs + 2, dtype=np.int64)
    ext_len[0] = capacity_slots
    return ContigState(
        ext_start=ext_start,
        ext_len=ext_len,
        n_ext=np.array([1], dtype=np.int64),
        seq_start=np.full(max_seqs, -1, dtype=np.int64),
        seq_res=np.zeros(max_seqs, dtype=np.int64),
        seq_tokens=np.zeros(max_seqs, dtype=np.int64),
        seq_final=np.zeros(max_seqs, dtype=np.int64),
        seq_live=np.zeros(max_seqs, dtype=np.int8),
    )


@njit(cache=True)
def reserve(st, s, size, best_fit, tokens, final):
    """Place a region of ``size`` slots for seq ``s``.

    First fit takes the lowest-address extent that is large enough; best fit the smallest
    such extent (lowest address on ties). The region starts at the extent's start.

    Returns:
        The region's start slot, or -1 (no extent large enough; nothing changed).
    """
    n = st.n_ext[0]
    e = -1
    for i in range(n):
        if st.ext_len[i] >= size:
            if not best_fit:
                e = i
                break
            if e == -1 or st.ext_len[i] < st.ext_len[e]:
                e = i
    if e == -1:
        return -1
    start = st.ext_start[e]
    st.ext_start[e] += size
    st.ext_len[e] -= size
    if st.ext_len[e] == 0:
        for i in range(e, n - 1):
            st.ext_start[i] = st.ext_start[i + 1]
            st.ext_len[i] = st.ext_len[i + 1]
        st.n_ext[0] = n - 1
    st.seq_start[s] = start
    st.seq_res[s] = size
    st.seq_tokens[s] = tokens
    st.seq_final[s] = final
    st.seq_live[s] = 1
    return start


@njit(cache=True)
def release(st, s):
    """Return seq ``s``'s region to the free extents, coalescing with its neighbours."""
    start = st.seq_start[s]
    size = st.seq_res[s]
    n = st.n_ext[0]
    p = 0
    while p < n and st.ext_start[p] < start:
        p += 1
    merge_prev = p > 0 and st.ext_start[p - 1] + st.ext_len[p - 1] == start
    merge_next = p < n and start + size == st.ext_start[p]
    if merge_prev and merge_next:
        st.ext_len[p - 1] += size + st.ext_len[p]
        for i in range(p, n - 1):
            st.ext_start[i] = st.ext_start[i + 1]
            st.ext_len[i] = st.ext_len[i + 1]
        st.n_ext[0] = n - 1
    elif merge_prev:
        st.ext_len[p - 1] += size
    elif merge_next:
        st.ext_start[p] = start
        st.ext_len[p] += size
    else:
        for i in range(n, p, -1):
            st.ext_start[i] = st.ext_start[i - 1]
            st.ext_len[i] = st.ext_len[i - 1]
        st.ext_start[p] = start
        st.ext_len[p] = size
        st.n_ext[0] = n + 1
    st.seq_start[s] = -1
    st.seq_res[s] = 0
    st.seq_tokens[s] = 0
    st.seq_final[s] = 0
    st.seq_live[s] = 0


@njit(cache=True)
def grow(st, seq_ids, new_totals):
    """All-or-nothing: every new total must fit its reservation; grows never shrink."""
    for t in range(seq_ids.shape[0]):
        if new_totals[t] > st.seq_res[seq_ids[t]]:
            return NO_SPACE
    for t in range(seq_ids.shape[0]):
        s = seq_ids[t]
        if new_totals[t] > st.seq_tokens[s]:
            st.seq_tokens[s] = new_totals[t]
    return OK


@njit(cache=True)
def slot_stats(st, min_pending_slots, out):
    """Categories into ``out`` int64[5]: tokens, reserved, internal, external, free."""
    tokens = 0
    reserved = 0
    internal = 0
    for s in range(st.seq_live.shape[0]):
        if st.seq_live[s] == 0:
            continue
        res = st.seq_res[s]
        tok = st.seq_tokens[s]
        useful = min(st.seq_final[s], res)
        fut = useful - tok if useful > tok else 0
        tokens += tok
        reserved += fut
        internal += res - tok - fut
    external = 0
    free = 0
    for i in range(st.n_ext[0]):
        if st.ext_len[i] < min_pending_slots:
            external += st.ext_len[i]
        else:
            free += st.ext_len[i]
    out[0] = tokens
    out[1] = reserved
    out[2] = internal
    out[3] = external
    out[4] = free


OP_ADMIT = 0
OP_GROW = 1
OP_FREE = 2
SKIPPED = -2


@njit(cache=True)
def run_trace(st, ops, best_fit, results):
    """Run an operation trace in one call (benchmarks; same row format as ``_blocks``).

    Rows ``(op, seq, arg, final_or_size, _)``: OP_ADMIT reserves ``ops[i, 3]`` slots for a
    prompt of ``arg`` tokens (and holds the prompt); OP_GROW adds ``arg`` tokens, capped at
    the reservation; OP_FREE releases. ``results``: start slot or -1 / status / 0 / SKIPPED.
    """
    one_seq = np.zeros(1, dtype=np.int64)
    one_total = np.zeros(1, dtype=np.int64)
    for i in range(ops.shape[0]):
        op = ops[i, 0]
        s = ops[i, 1]
        if op == OP_ADMIT:
            if st.seq_live[s] == 1:
                results[i] = SKIPPED
                continue
            results[i] = reserve(st, s, ops[i, 3], best_fit, ops[i, 2], ops[i, 3])
        elif st.seq_live[s] == 0:
            results[i] = SKIPPED
        elif op == OP_GROW:
            one_seq[0] = s
            one_total[0] = min(st.seq_tokens[s] + ops[i, 2], st.seq_res[s])
            results[i] = grow(st, one_seq, one_total)
        else:
            release(st, s)
            results[i] = 0
