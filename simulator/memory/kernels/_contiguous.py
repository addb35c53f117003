"""Contiguous-reservation kernels: one region per request in a linear slot space.

State lives in one flat ``int64`` *arena* per manager; the fields of :class:`ContigState` are
views into it, and kernels take only the arena (one dispatcher argument instead of a tuple of
arrays; see ``_blocks``). Layout::

    header        counters[:HEADER]: n_ext, running category sums (C_* below), config
    free extents  ext_start[:n_ext[0]], ext_len[...]  sorted by start, coalesced
    seqs          seq_start[s], seq_res[s] (reserved slots), seq_tokens[s] (held),
                  seq_final[s] (true final length), seq_live[s]

    0                                                        capacity
    |== seq 3 ==|...free...|====== seq 0 ======|..free..|== seq 1 ==|

Running sums (O(1) ``stats``): ``C_TOKENS`` = held tokens, ``C_RESERVED`` = reserved up to
the true final length and not yet written, ``C_INTERNAL`` = reservation beyond the final
length, ``C_FREE`` = all free slots. Only external fragmentation (free extents smaller than
the smallest pending request) needs a scan of the extents.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from servesim.simulator.jit import njit

OK = 0
NO_SPACE = 1
BAD_SEQ = -3  # grow: a seq id out of range or not live
BAD_SHAPE = -4  # grow: seq_ids and new_totals differ in length

# header slots: counters[...]
C_N_EXT = 0  # free extents (n_ext[0])
C_TOKENS = 1
C_RESERVED = 2
C_INTERNAL = 3
C_FREE = 4
C_S = 5  # seq ids (config)
C_BEST_FIT = 6  # 1 = best fit, 0 = first fit (config)
HEADER = 8


class ContigState(NamedTuple):
    """Views into a contiguous manager's arena (see the module docstring)."""

    counters: np.ndarray  # int64[HEADER]
    ext_start: np.ndarray  # int64[S + 2]
    ext_len: np.ndarray  # int64[S + 2]
    n_ext: np.ndarray  # int64[1]
    seq_start: np.ndarray  # int64[S]
    seq_res: np.ndarray  # int64[S]
    seq_tokens: np.ndarray  # int64[S]
    seq_final: np.ndarray  # int64[S]
    seq_live: np.ndarray  # int8[S]


# field offsets: the seq arrays follow the two extent arrays (int64[S + 2] each)
@njit(cache=True)
def _ext_start(arena):
    return arena[HEADER : HEADER + arena[C_S] + 2]


@njit(cache=True)
def _ext_len(arena):
    o = HEADER + arena[C_S] + 2
    return arena[o : o + arena[C_S] + 2]


@njit(cache=True)
def _seq_field(arena, k):
    """int64[S] seq field ``k``: 0 start, 1 res, 2 tokens, 3 final."""
    s = arena[C_S]
    o = HEADER + 2 * (s + 2) + k * s
    return arena[o : o + s]


@njit(cache=True)
def _seq_live(arena):
    s = arena[C_S]
    o = HEADER + 2 * (s + 2) + 4 * s
    return arena[o : o + (s + 7) // 8].view(np.int8)[:s]


def _views(arena: np.ndarray) -> ContigState:
    """The :class:`ContigState` views of ``arena`` (numpy; the kernels slice the same way)."""
    s = int(arena[C_S])
    o = HEADER + 2 * (s + 2)
    seq = [arena[o + k * s : o + (k + 1) * s] for k in range(4)]
    o += 4 * s
    return ContigState(
        arena[:HEADER],
        arena[HEADER : HEADER + s + 2],
        arena[HEADER + s + 2 : HEADER + 2 * (s + 2)],
        arena[C_N_EXT : C_N_EXT + 1],
        *seq,
        arena[o : o + (s + 7) // 8].view(np.int8)[:s],
    )


def make_state(
    capacity_slots: int, max_seqs: int, *, best_fit: bool
) -> tuple[np.ndarray, ContigState]:
    """Empty state: one free extent covering the whole space.

    Returns:
        ``(arena, views)``: the int64 arena kernels take, and its :class:`ContigState`.
    """
    words = HEADER + 2 * (max_seqs + 2) + 4 * max_seqs + (max_seqs + 7) // 8  # as _views
    arena = np.zeros(words, dtype=np.int64)
    arena[C_S] = max_seqs
    arena[C_BEST_FIT] = int(best_fit)
    st = _views(arena)
    st.ext_len[0] = capacity_slots
    st.n_ext[0] = 1
    st.counters[C_FREE] = capacity_slots
    st.seq_start[:] = -1
    return arena, st


@njit(cache=True)
def _account(counters, res, tok, final, sign):
    """Add (``sign`` 1) or remove (-1) one live seq's share of the category sums."""
    useful = min(final, res)
    fut = useful - tok if useful > tok else 0
    counters[C_TOKENS] += sign * tok
    counters[C_RESERVED] += sign * fut
    counters[C_INTERNAL] += sign * (res - tok - fut)


@njit(cache=True)
def _reserve(arena, s, size, best_fit, tokens, final):
    n_ext = arena[C_N_EXT : C_N_EXT + 1]
    ext_len = _ext_len(arena)
    ext_start = _ext_start(arena)
    seq_start = _seq_field(arena, 0)
    seq_res = _seq_field(arena, 1)
    seq_tokens = _seq_field(arena, 2)
    seq_final = _seq_field(arena, 3)
    seq_live = _seq_live(arena)
    counters = arena[:HEADER]
    n = n_ext[0]
    e = -1
    for i in range(n):
        if ext_len[i] >= size:
            if not best_fit:
                e = i
                break
            if e == -1 or ext_len[i] < ext_len[e]:
                e = i
    if e == -1:
        return -1
    start = ext_start[e]
    ext_start[e] += size
    ext_len[e] -= size
    if ext_len[e] == 0:
        for i in range(e, n - 1):
            ext_start[i] = ext_start[i + 1]
            ext_len[i] = ext_len[i + 1]
        n_ext[0] = n - 1
    seq_start[s] = start
    seq_res[s] = size
    seq_tokens[s] = tokens
    seq_final[s] = final
    seq_live[s] = 1
    counters[C_FREE] -= size
    _account(counters, size, tokens, final, 1)
    return start


@njit(cache=True)
def reserve(arena, s, size, tokens, final):
    """Place a region of ``size`` slots for seq ``s``.

    First fit takes the lowest-address extent that is large enough; best fit the smallest
    such extent (lowest address on ties). The region starts at the extent's start.

    Returns:
        The region's start slot, or -1 (no extent large enough; nothing changed).
    """
    return _reserve(arena, s, size, arena[C_BEST_FIT] == 1, tokens, final)


@njit(cache=True)
def _release(arena, s):
    seq_start = _seq_field(arena, 0)
    seq_res = _seq_field(arena, 1)
    counters = arena[:HEADER]
    seq_tokens = _seq_field(arena, 2)
    seq_final = _seq_field(arena, 3)
    n_ext = arena[C_N_EXT : C_N_EXT + 1]
    ext_start = _ext_start(arena)
    ext_len = _ext_len(arena)
    seq_live = _seq_live(arena)
    start = seq_start[s]
    size = seq_res[s]
    _account(counters, size, seq_tokens[s], seq_final[s], -1)
    counters[C_FREE] += size
    n = n_ext[0]
    p = 0
    while p < n and ext_start[p] < start:
        p += 1
    merge_prev = p > 0 and ext_start[p - 1] + ext_len[p - 1] == start
    merge_next = p < n and start + size == ext_start[p]
    if merge_prev and merge_next:
        ext_len[p - 1] += size + ext_len[p]
        for i in range(p, n - 1):
            ext_start[i] = ext_start[i + 1]
            ext_len[i] = ext_len[i + 1]
        n_ext[0] = n - 1
    elif merge_prev:
        ext_len[p - 1] += size
    elif merge_next:
        ext_start[p] = start
        ext_len[p] += size
    else:
        for i in range(n, p, -1):
            ext_start[i] = ext_start[i - 1]
            ext_len[i] = ext_len[i - 1]
        ext_start[p] = start
        ext_len[p] = size
        n_ext[0] = n + 1
    seq_start[s] = -1
    seq_res[s] = 0
    seq_tokens[s] = 0
    seq_final[s] = 0
    seq_live[s] = 0


@njit(cache=True)
def release(arena, s):
    """Return seq ``s``'s region to the free extents, coalescing with its neighbours."""
    _release(arena, s)


@njit(cache=True)
def _grow(arena, seq_ids, new_totals):
    seq_live = _seq_live(arena)
    seq_res = _seq_field(arena, 1)
    seq_tokens = _seq_field(arena, 2)
    seq_final = _seq_field(arena, 3)
    counters = arena[:HEADER]
    k = seq_ids.shape[0]
    if new_totals.shape[0] != k:
        return BAD_SHAPE
    num_seqs = seq_live.shape[0]
    status = OK
    for t in range(k):
        s = seq_ids[t]
        if s < 0 or s >= num_seqs or seq_live[s] == 0:
            return BAD_SEQ
        if new_totals[t] > seq_res[s]:
            status = NO_SPACE
    if status != OK:
        return status
    for t in range(k):
        s = seq_ids[t]
        new = new_totals[t]
        if new > seq_tokens[s]:
            _account(counters, seq_res[s], seq_tokens[s], seq_final[s], -1)
            seq_tokens[s] = new
            _account(counters, seq_res[s], new, seq_final[s], 1)
    return OK


@njit(cache=True)
def grow(arena, seq_ids, new_totals):
    """All-or-nothing: every new total must fit its reservation; grows never shrink.

    Returns:
        OK, NO_SPACE (nothing changed), or BAD_SHAPE / BAD_SEQ (misuse; nothing changed).
    """
    return _grow(arena, seq_ids, new_totals)


@njit(cache=True)
def external_slots(arena, min_pending_slots):
    """Free slots in extents smaller than ``min_pending_slots`` (external fragmentation)."""
    n_ext = arena[C_N_EXT : C_N_EXT + 1]
    ext_len = _ext_len(arena)
    external = 0
    for i in range(n_ext[0]):
        if ext_len[i] < min_pending_slots:
            external += ext_len[i]
    return external


@njit(cache=True)
def recount_slots(arena, min_pending_slots, out):
    """Categories by scanning (invariant checks) into ``out`` int64[5]: tokens, reserved,
    internal, external, free."""
    seq_live = _seq_live(arena)
    seq_res = _seq_field(arena, 1)
    seq_tokens = _seq_field(arena, 2)
    seq_final = _seq_field(arena, 3)
    n_ext = arena[C_N_EXT : C_N_EXT + 1]
    ext_len = _ext_len(arena)
    tokens = 0
    reserved = 0
    internal = 0
    for s in range(seq_live.shape[0]):
        if seq_live[s] == 0:
            continue
        res = seq_res[s]
        tok = seq_tokens[s]
        useful = min(seq_final[s], res)
        fut = useful - tok if useful > tok else 0
        tokens += tok
        reserved += fut
        internal += res - tok - fut
    external = 0
    free = 0
    for i in range(n_ext[0]):
        if ext_len[i] < min_pending_slots:
            external += ext_len[i]
        else:
            free += ext_len[i]
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
def run_trace(arena, ops, results):
    """Run an operation trace in one call (benchmarks; same row format as ``_blocks``).

    Rows ``(op, seq, arg, final_or_size, _)``: OP_ADMIT reserves ``ops[i, 3]`` slots for a
    prompt of ``arg`` tokens (and holds the prompt); OP_GROW adds ``arg`` tokens, capped at
    the reservation; OP_FREE releases. ``results``: start slot or -1 / status / 0 / SKIPPED.
    Placement (first or best fit) comes from the arena's header.
    """
    seq_live = _seq_live(arena)
    seq_tokens = _seq_field(arena, 2)
    seq_res = _seq_field(arena, 1)
    seq_final = _seq_field(arena, 3)
    counters = arena[:HEADER]
    best_fit = arena[C_BEST_FIT] == 1
    for i in range(ops.shape[0]):
        op = ops[i, 0]
        s = ops[i, 1]
        if op == OP_ADMIT:
            if seq_live[s] == 1:
                results[i] = SKIPPED
                continue
            results[i] = _reserve(arena, s, ops[i, 3], best_fit, ops[i, 2], ops[i, 3])
        elif seq_live[s] == 0:
            results[i] = SKIPPED
        elif op == OP_GROW:
            # NOTE(speed): grow of one seq spelled out (a call costs ~100 ns of refcounting)
            res = seq_res[s]
            tok = seq_tokens[s]
            new = min(tok + ops[i, 2], res)
            if new > tok:
                useful = min(seq_final[s], res)
                fut_old = useful - tok if useful > tok else 0
                fut_new = useful - new if useful > new else 0
                counters[C_TOKENS] += new - tok
                counters[C_RESERVED] += fut_new - fut_old
                counters[C_INTERNAL] += (tok + fut_old) - (new + fut_new)
                seq_tokens[s] = new
            results[i] = OK
        else:
            _release(arena, s)
            results[i] = 0
