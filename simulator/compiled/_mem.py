"""The compiled loop's KV-manager calls: paged (block pool, radix and APC prefix caches included)
or contiguous (reservations).

The replica loop (:mod:`simulator.compiled._loop`) admits, grows and releases sequences
through these three functions and reads the step row's memory split from
:func:`memory_split`; each dispatches on the header word ``H_KV`` to the manager's own
kernels (:mod:`simulator.memory.kernels._blocks`, :mod:`~simulator.memory.kernels._contiguous`),
so the loop stays one kernel family whatever the manager. The Python twins are the
managers' facades (``PagedKVCache``, ``ContiguousKVCache``): the same arguments, the same
order of kernel calls, the same "no room" verdicts.

Header words and request rows of the mem feature (swap preemption, contiguous KV, static
batching) are declared here, in the ranges ``_loop`` reserves for them.
"""

from __future__ import annotations

from servesim.simulator.jit import njit
from servesim.simulator.memory.kernels import _blocks, _contiguous

# ``ri`` header words (the range 32-39 of ``_loop``).
H_KV = 32  # KV_PAGED or KV_CONTIGUOUS
H_RESV = 33  # contiguous reservation policy (RES_*)
H_MAXLEN = 34  # contiguous: max_seq_len (the ``max`` reservation)
H_SWAP = 35  # 1: preemption by swap (when host memory allows), 0: recompute
H_NSWAP = 36  # requests swapped out (a FIFO ring in the per-slot region K_SWQ)
H_SWHEAD = 37  # its head
H_PADSEQ = 38  # static batching: finished members computed as padding in the planned step
# Request rows of ``rq`` (14-15; ``_loop.R_NUM`` counts them).
R_SWAPTOK = 14  # context tokens swapped out (what swap-in restores)
R_SWAPN = 15  # its sequences (a fan-out group swaps all of them)
# ``rf`` scalars (12-15).
F_SWAP_CAP = 12  # host memory for swapped KV, bytes per GPU
F_SWAP_USED = 13
F_SWAPB = 14  # bytes swapped (in and out) while planning the step
F_KVB = 15  # KV bytes per token per GPU
# The host link's bandwidth (bytes/s, one direction) sits after the per-slot floats:
# ``rf[F_HEADER + S]`` (see :func:`rf_words`).
RF_TAIL = 1
# Per-slot region of ``ri`` (16): the swapped ring. A swapped request came out of the
# running list, and nothing is admitted while any is swapped, so running + swapped never
# exceeds the slots: the ring never overflows.
K_SWQ = 16

KV_PAGED = 0
KV_CONTIGUOUS = 1
KV_KINDS = {"paged": KV_PAGED, "radix": KV_PAGED, "contiguous": KV_CONTIGUOUS}  # radix: paged blocks + a tree
RES_MAX = 0
RES_POW2 = 1
RES_ORACLE = 2
RESERVATIONS = {"max": RES_MAX, "pow2": RES_POW2, "oracle": RES_ORACLE}

# Status codes shared by both managers' grow kernels.
assert _blocks.OK == _contiguous.OK == 0 and _blocks.NO_SPACE == _contiguous.NO_SPACE == 1
OK = 0



@njit(cache=True)
def reservation_slots(policy, max_len, prompt_tokens, final_tokens):
    """``ContiguousKVCache.reservation_slots``: the region a request reserves."""
    if policy == RES_MAX:
        return max_len
    if policy == RES_POW2:
        x = final_tokens - 1 if final_tokens > 1 else 0
        bits = 0
        while x > 0:  # int.bit_length
            bits += 1
            x >>= 1
        r = 1 << bits
        return r if r < max_len else max_len
    return final_tokens


@njit(cache=True)
def page_tokens(ri, kva):
    """Tokens per KV page (contiguous regions are token-granular: 1)."""
    if ri[H_KV] == KV_CONTIGUOUS:
        return 1
    return kva[_blocks.C_PAGE]


@njit(cache=True)
def kv_admit(ri, kva, slot, keys, nkeys, prompt_tokens, final_tokens, now_s):
    """Register ``slot`` (``KVCacheManager.admit``), looking up its first ``nkeys`` page
    keys in a prefix cache (radix, paged APC): the pages found cached, or -1 when there is
    no room (nothing changed). Contiguous regions cache no prefixes (``nkeys`` is 0)."""
    if ri[H_KV] == KV_CONTIGUOUS:
        size = reservation_slots(ri[H_RESV], ri[H_MAXLEN], prompt_tokens, final_tokens)
        if size < prompt_tokens:
            return -1
        if _contiguous.reserve(kva, slot, size, 0, final_tokens) < 0:
            return -1
        return 0
    return _blocks.admit(kva, slot, keys, nkeys, prompt_tokens, now_s)


@njit(cache=True)
def kv_grow(ri, kva, ids, totals):
    """All-or-nothing growth: OK, NO_SPACE (1), or a negative misuse code."""
    if ri[H_KV] == KV_CONTIGUOUS:
        return _contiguous.grow(kva, ids, totals)
    return _blocks.grow(kva, ids, totals)


@njit(cache=True)
def kv_release(ri, kva, slot, keys, nkeys, now_s):
    """Free ``slot``; a prefix cache keeps its first ``nkeys`` full pages."""
    if ri[H_KV] == KV_CONTIGUOUS:
        _contiguous.release(kva, slot)
    else:
        _blocks.release(kva, slot, keys, nkeys, now_s)


@njit(cache=True)
def memory_split(ri, kva, pending_slots):
    """(token, reserved, internal, external, cached, free) slots as the manager's ``stats``
    gives them with ``min_pending_slots=pending_slots``: paged has no reservation and no
    external fragmentation, and pages held only by its prefix cache are cached slots;
    contiguous counts free extents smaller than the pending reservation as external
    fragmentation and caches nothing."""
    if ri[H_KV] == KV_CONTIGUOUS:
        ext = 0
        if pending_slots > 1:
            ext = _contiguous.external_slots(kva, pending_slots)
        free = kva[_contiguous.C_FREE]
        return (kva[_contiguous.C_TOKENS], kva[_contiguous.C_RESERVED], kva[_contiguous.C_INTERNAL], ext, 0,
                free - ext)
    page = kva[_blocks.C_PAGE]
    tokens = kva[_blocks.C_TOKENS]
    free_b = kva[_blocks.C_FREE_TOP]
    cached_b = kva[_blocks.C_CACHED]
    used_b = kva[_blocks.C_NB] - free_b - cached_b
    return tokens, 0, used_b * page - tokens, 0, cached_b * page, free_b * page
