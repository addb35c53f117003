"""The replica loop of the vLLM, Sarathi-Serve, Orca and SGLang schedulers on paged or radix
KV (with prefix caching), in numba.

One call, :func:`advance`, runs a replica's steps up to a time: it commits the step in
flight if it ends before ``until_s``, plans the next step at once (as the Python replica
does when its step's timeout fires), and stops at the first step that would still be
running at ``until_s``; then it queues the arriving request, if any. This is the Python
engine's stepping mode (``simulator.engine.Replica`` with ``fast_forward=False`` and the
``vllm`` / ``sarathi`` / ``orca`` schedulers) operation for operation: the same plans, FCFS
admission under ``max_num_seqs`` / ``max_num_batched_tokens``, watermark admission and all-or-nothing
growth through the same block-pool kernels (:mod:`simulator.memory.kernels._blocks`), the
same recompute preemption of the latest-arrived request, the same step costs (the numba
twin of ``step_time_s``), so request times and step rows are identical bit for bit
(``tests/engine/test_compiled.py``).

State is flat arrays (STYLE section 6):

* ``ri`` int64: header ``H_*``, then per replica the running list, the free-slot stack, the
  per-slot context / generated / target / owner arrays, the planned step (prefill chunks,
  decode slots), two scratch arrays and the ITL histogram (offsets from ``S``, the slots).
* ``rf`` float64: ``F_*`` scalars, then the per-slot time of the last token.
* ``wq`` int64: the waiting queue, a ring (the facade grows it).
* ``rq`` int64 ``[R_NUM, N]`` / ``rqf`` float64 ``[Q_NUM, N]``: per request (workload column),
  shared by the replicas of a run.
* ``kva``: the paged / radix manager's arena; ``pk`` int64: every request's page keys (its
  prefix identity, rows ``R_KLO`` / ``R_KN`` of ``rq`` point into it; ``_prefix``);
  ``cf``: the step-cost pack (``hwmodels.stepkernel``).
* ``sf`` / ``si`` / ``sq``: the current chunk of step rows (float64, int32, int64 columns).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from servesim.hwmodels.stepkernel import packed_step_time_s as step_time_s
from servesim.simulator.compiled import _prefix
from servesim.simulator.memory.kernels import _blocks
from servesim.simulator.results import _ITL_BINS_PER_DECADE, _ITL_LO_S, _ITL_NUM_BINS
from servesim.simulator.scheduling.sglang import LPM_MAX_QUEUE as _SGLANG_LPM_MAX_QUEUE

# Request fields, rows of ``rq``.
R_PROMPT = 0
R_OUTPUT = 1
R_TARGET = 2  # prefill target: the prompt, or prompt + generated - 1 after a recompute
R_COMPUTED = 3
R_GEN = 4
R_PHASE = 5
R_NPRE = 6
R_FTD = 7  # first token done
R_ORDER = 8
R_SLOT = 9  # -1 while holding no KV
R_CACHED = 10
# Reserved request rows (one range per feature, so parallel work merges cleanly):
# 11-13 prefix caching / radix, 14-16 swap and contiguous, 17-20 fan-out and dependents.
R_KLO = 11  # where the request's page keys start in ``pk``
R_KN = 12  # page keys its prefix identity describes (0: none)
R_LPM = 13  # sglang: its cached prefix tokens when the queue was ordered (scratch)
R_NUM = 24
# Rows of ``rqf``.
Q_FIRST_SCHED = 0
Q_FIRST_TOKEN = 1
Q_FINISH = 2
# Reserved: 3 prefix caching / radix, 4 swap and contiguous, 5-6 fan-out and dependents.
Q_ARRIVAL = 3  # when the request was routed (``ReqState.arrival_s``; sglang's starvation guard)
Q_NUM = 8

# Phases (as simulator.request).
WAITING = 0
PREFILL = 1
DECODE = 2
DONE = 4

# ``ri`` header.
H_S = 0  # slots (sequence ids of the KV manager)
H_MAX_SEQS = 1
H_MAX_TOKENS = 2
H_NWAIT = 3
H_WHEAD = 4
H_NRUN = 5
H_FREE_TOP = 6
H_INFLIGHT = 7
H_IDLE = 8
H_NPF = 9  # prefill chunks of the planned step
H_NDEC = 10  # decoding sequences of the planned step
H_NPRE = 11  # preemptions while planning it
H_P = 12  # its prefill tokens
H_K = 13  # its prefill KV tokens
H_SAMP = 14  # its sampling rows from prefills
H_CTXSUM = 15  # its decode context tokens
H_ROW = 16  # rows used in the current chunk
H_ROWCAP = 17
H_PQ = 18  # cumulative prompt tokens looked up at admission (prefix query)
H_ITL_N = 19
H_LASTBIN = 20
H_NSTEPS = 21
H_POLICY = 22  # POLICY_*
H_BUDGET = 23  # decode-then-prefill policies: token budget per step
# Reserved header words, one range per feature: 24-31 prefix caching / radix / sglang,
# 32-39 swap and contiguous / static, 40-47 fan-out, dependents and the cycle cost,
# 48-63 spare.
H_CACHES = 24  # 1: the manager caches prefixes (radix; paged with prefix caching)
H_APC = 25  # 1: it caches a chunk's pages when the chunk is scheduled (vLLM v1 APC)
H_HIT = 26  # cumulative prefix-hit tokens at admission
H_LPM = 27  # sglang: the queue is ordered by cached prefix in this admission pass
H_HEADER = 64
# Scheduling policies the kernel runs (``simulator.scheduling``).
POLICY_VLLM = 0
POLICY_SARATHI = 1  # decodes first, then prompt chunks under chunk_size_tokens
POLICY_ORCA = 2  # decodes first, then whole prompts under max_num_batched_tokens
POLICY_SGLANG = 3  # prefill-first, chunked, queue by longest cached prefix (``sglang.py``)
POLICIES = {"vllm": POLICY_VLLM, "sarathi": POLICY_SARATHI, "orca": POLICY_ORCA, "sglang": POLICY_SGLANG}
#: SGLang orders by cached prefix only for queues of 2..LPM_MAX_QUEUE (``sglang.py``).
LPM_MAX_QUEUE = _SGLANG_LPM_MAX_QUEUE
# ``rf`` scalars.
F_T = 0  # when the next step is planned (the replica's clock)
F_ECUR = 1  # end of the step in flight
F_D = 2  # its duration
F_A = 3  # its attention pairs
F_ITL_SUM = 4
F_ITL_SQ = 5
F_LASTGAP = 6
# Reserved: 8-11 prefix caching / radix, 12-15 swap and contiguous, 16-19 fan-out,
# dependents and the cycle cost, 20-23 spare.
F_STARVE = 8  # sglang: starvation_limit_s
F_HEADER = 24
# Step-row columns.
SF_T, SF_D, SF_A = 0, 1, 2
SF_NUM = 3
# (Paged KV has no reserved or externally fragmented slots: those columns are zero; cached
# slots are pages held only by the prefix cache.)
SI_RUN, SI_NPF, SI_PT, SI_DT, SI_Q, SI_PRE, SI_TOK, SI_INT, SI_FREE, SI_SAMP = range(10)
SI_RES, SI_EXT, SI_CACHED = 10, 11, 12  # reserved / externally fragmented / cached slots
SI_NUM = 13
SQ_KV, SQ_CTX, SQ_PQ, SQ_HIT = 0, 1, 2, 3  # SQ_HIT: prefix-hit tokens
SQ_NUM = 4

# Return codes of :func:`advance`.
DONE_OK = 0
ROWS_FULL = 1
ERR_GROW = -1  # a grow or admit misuse (the Python engine would raise ValueError)
ERR_EMPTY = -2  # an empty plan with running requests

# ITL histogram: the recorder's bins.
ITL_LO_S = _ITL_LO_S
ITL_BINS_PER_DECADE = _ITL_BINS_PER_DECADE
ITL_NUM_BINS = _ITL_NUM_BINS

_NO_KEYS = np.zeros(0, dtype=np.int64)


# Per-slot regions of ``ri`` after the header, in units of ``S`` words: running list,
# free-slot stack, context / generated / target tokens and owner per slot, the planned
# step's prefill chunks (3 words each), its decode slots, two scratch arrays, then the ITL
# histogram.
# Reserved regions: 13-15 prefix caching / radix, 16-18 swap and contiguous, 19-21 fan-out
# and dependents, 22-23 spare.
K_RUN, K_FREE, K_CTX, K_GEN, K_TGT, K_OWNER, K_CHUNK, K_DEC, K_IDS, K_TOT, K_ITL = 0, 1, 2, 3, 4, 5, 6, 9, 10, 11, 24
K_APCOK = 13  # APC: leading pages of the slot whose own blocks are their trie nodes


def itl_offset(slots: int) -> int:
    """Where the ITL histogram starts in ``ri``."""
    return H_HEADER + K_ITL * slots


def ri_words(slots: int) -> int:
    return itl_offset(slots) + ITL_NUM_BINS


# ---------------------------------------------------------------- prefix identity (radix, APC)
# A request's page keys are ``pk[rq[R_KLO]:][:rq[R_KN]]`` (``_prefix.page_keys_csr``); a
# manager that caches no prefixes sees none (``H_CACHES`` 0), as ``_page_keys`` returns none.


@njit(cache=True)
def _keys(rq, pk, req, n):
    lo = rq[R_KLO, req]
    return pk[lo : lo + n]


@njit(cache=True)
def _admit_pages(ri, rq, req, ntok, page):
    """Keys ``admit`` / ``match_prefix`` look up for an ``ntok``-token prompt: its full
    pages, capped so that at least one token is computed (``PagedKVCache._cap_pages``)."""
    if ri[H_CACHES] == 0:
        return 0
    n = ntok // page
    if rq[R_KN, req] < n:
        n = rq[R_KN, req]
    cap = (ntok - 1 if ntok > 1 else 0) // page
    return n if n < cap else cap


@njit(cache=True)
def _match_tokens(ri, rq, kva, pk, req):
    """Prompt tokens of ``req`` cached here now (``Replica.match_prefix_tokens``)."""
    page = kva[_blocks.C_PAGE]
    n = _admit_pages(ri, rq, req, rq[R_PROMPT, req], page)
    if n == 0:
        return 0
    return _blocks.match_len(kva, _keys(rq, pk, req, n), n) * page


@njit(cache=True)
def _held_pages(ri, rq, kva, req, slot, total):
    """Keys ``free`` / ``cache_computed`` pass for ``total`` computed tokens."""
    if ri[H_CACHES] == 0 or rq[R_KN, req] == 0:
        return 0
    return _prefix.held_pages(kva, slot, total, rq[R_KN, req])


@njit(cache=True)
def _cache_computed(ri, rq, kva, pk, req, slot, total, now_s):
    """The first ``total`` tokens of ``slot`` are computed: cache its full pages now
    (``ReferenceReplica._cache_computed``; radix and APC).

    NOTE(speed): with APC, a page whose trie node is a block the slot holds stays so while
    the slot lives (held blocks are never in the free queue, so neither they nor their
    ancestors, held too, are evicted), so re-inserting those pages walks the trie and
    changes nothing; ``K_APCOK`` counts them and insertion resumes after them (decode
    fills a page every ``P`` tokens, and past the prompt's identity there is nothing new).
    """
    n = _held_pages(ri, rq, kva, req, slot, total)
    if n <= 0:
        return
    if ri[H_APC] == 1:
        o_ok = H_HEADER + K_APCOK * ri[H_S] + slot
        ri[o_ok] = _prefix.apc_cache(kva, slot, _keys(rq, pk, req, n), n, ri[o_ok])
        return
    # Radix: a request passes the same keys on every call, so the insert resumes below
    # its locked prefix.
    _blocks.cache_blocks_resumed(kva, slot, _keys(rq, pk, req, n), n, now_s)


@njit(cache=True)
def _remove_running(ri, o_run, req):
    n = ri[H_NRUN]
    j = 0
    while ri[o_run + j] != req:
        j += 1
    for i in range(j, n - 1):
        ri[o_run + i] = ri[o_run + i + 1]
    ri[H_NRUN] = n - 1


@njit(cache=True)
def _release(ri, rq, kva, pk, req, now_s):
    """Drop the request's KV and give its slot back (``Replica._release_slots``); a
    prefix-caching manager caches its full computed pages."""
    s = ri[H_S]
    o_free = H_HEADER + K_FREE * s
    o_owner = H_HEADER + K_OWNER * s
    slot = rq[R_SLOT, req]
    n = _held_pages(ri, rq, kva, req, slot, ri[H_HEADER + K_CTX * s + slot])
    if n > 0:
        _blocks.release(kva, slot, _keys(rq, pk, req, n), n, now_s)
    else:
        _blocks.release(kva, slot, _NO_KEYS, 0, now_s)
    ri[o_owner + slot] = -1
    ri[o_free + ri[H_FREE_TOP]] = slot
    ri[H_FREE_TOP] += 1
    rq[R_SLOT, req] = -1


@njit(cache=True)
def _push_front(ri, wq, req):
    cap = wq.shape[0]
    h = ri[H_WHEAD] - 1
    if h < 0:
        h += cap
    wq[h] = req
    ri[H_WHEAD] = h
    ri[H_NWAIT] += 1


@njit(cache=True)
def _pop_front(ri, wq):
    cap = wq.shape[0]
    h = ri[H_WHEAD]
    req = wq[h]
    h += 1
    if h == cap:
        h = 0
    ri[H_WHEAD] = h
    ri[H_NWAIT] -= 1
    return req


@njit(cache=True)
def _push_back(ri, wq, req):
    cap = wq.shape[0]
    pos = ri[H_WHEAD] + ri[H_NWAIT]
    if pos >= cap:
        pos -= cap
    wq[pos] = req
    ri[H_NWAIT] += 1


@njit(cache=True)
def _preempt(ri, wq, rq, kva, pk, req, now_s):
    """Recompute preemption (``Replica.preempt`` with mode ``recompute``)."""
    s = ri[H_S]
    o_run = H_HEADER + K_RUN * s
    o_gen = H_HEADER + K_GEN * s
    slot = rq[R_SLOT, req]
    if slot >= 0:
        rq[R_GEN, req] = ri[o_gen + slot]
    rq[R_NPRE, req] += 1
    _remove_running(ri, o_run, req)
    if slot >= 0:
        _release(ri, rq, kva, pk, req, now_s)
    rq[R_PHASE, req] = WAITING
    g = rq[R_GEN, req]
    rq[R_TARGET, req] = rq[R_PROMPT, req] + (g - 1 if g > 1 else 0)
    rq[R_COMPUTED, req] = 0
    _push_front(ri, wq, req)


@njit(cache=True)
def _decode_with_preemption(ri, wq, rq, kva, pk, now_s):
    """Every decoding sequence gets one more slot; the latest-arrived request is preempted
    while that does not fit (``Scheduler._decode_with_preemption``)."""
    s = ri[H_S]
    o_run = H_HEADER + K_RUN * s
    o_ctx = H_HEADER + K_CTX * s
    o_dec = H_HEADER + K_DEC * s
    o_tot = H_HEADER + K_TOT * s
    while True:
        n = 0
        for i in range(ri[H_NRUN]):
            req = ri[o_run + i]
            if rq[R_PHASE, req] == DECODE:
                slot = rq[R_SLOT, req]
                ri[o_dec + n] = slot
                ri[o_tot + n] = ri[o_ctx + slot] + 1
                n += 1
        if n == 0:
            ri[H_NDEC] = 0
            return DONE_OK
        status = _blocks.grow(kva, ri[o_dec : o_dec + n], ri[o_tot : o_tot + n])
        if status < 0:
            return ERR_GROW
        if status == _blocks.OK:
            ri[H_NDEC] = n
            return DONE_OK
        victim = -1
        best = -1
        for i in range(ri[H_NRUN]):
            req = ri[o_run + i]
            ph = rq[R_PHASE, req]
            if (ph == DECODE or ph == PREFILL) and rq[R_ORDER, req] > best:
                best = rq[R_ORDER, req]
                victim = req
        if victim < 0:
            ri[H_NDEC] = 0
            return DONE_OK
        _preempt(ri, wq, rq, kva, pk, victim, now_s)
        ri[H_NPRE] += 1


@njit(cache=True)
def _add_chunk(ri, o_chunk, req, new, ctx):
    j = ri[H_NPF]
    ri[o_chunk + 3 * j] = req
    ri[o_chunk + 3 * j + 1] = new
    ri[o_chunk + 3 * j + 2] = ctx
    ri[H_NPF] = j + 1


@njit(cache=True)
def _continue_prefills(ri, rq, kva, pk, budget, now_s):
    """Next chunks of admitted, partly computed prompts, FCFS (``_continue_prefills``).

    Returns (status, budget left)."""
    s = ri[H_S]
    o_run = H_HEADER + K_RUN * s
    o_chunk = H_HEADER + K_CHUNK * s
    o_ids = H_HEADER + K_IDS * s
    o_tot = H_HEADER + K_TOT * s
    for i in range(ri[H_NRUN]):
        if budget <= 0:
            break
        req = ri[o_run + i]
        if rq[R_PHASE, req] != PREFILL:
            continue
        comp = rq[R_COMPUTED, req]
        new = rq[R_TARGET, req] - comp
        if new > budget:
            new = budget
        if new <= 0:
            continue
        ri[o_ids] = rq[R_SLOT, req]
        ri[o_tot] = comp + new
        status = _blocks.grow(kva, ri[o_ids : o_ids + 1], ri[o_tot : o_tot + 1])
        if status < 0:
            return ERR_GROW, budget
        if status != _blocks.OK:
            continue
        if ri[H_APC] == 1:  # vLLM v1 caches a chunk's pages when it schedules it
            _cache_computed(ri, rq, kva, pk, req, ri[o_ids], comp + new, now_s)
        _add_chunk(ri, o_chunk, req, new, comp)
        budget -= new
    return DONE_OK, budget


@njit(cache=True)
def _wq_at(ri, wq, pos):
    """The ``pos``-th queued request (0: the head)."""
    i = ri[H_WHEAD] + pos
    cap = wq.shape[0]
    return wq[i - cap if i >= cap else i]


@njit(cache=True)
def _wq_remove(ri, wq, pos):
    """Take the ``pos``-th queued request out of the queue, keeping the others' order."""
    cap = wq.shape[0]
    h = ri[H_WHEAD]
    for i in range(pos, 0, -1):
        a = h + i
        b = a - 1
        wq[a - cap if a >= cap else a] = wq[b - cap if b >= cap else b]
    _pop_front(ri, wq)


@njit(cache=True)
def _lpm_order(ri, wq, rq, kva, pk):
    """SGLang's cache-aware order (``SglangScheduler._order``): note each queued request's
    cached prefix now, when the queue holds 2..LPM_MAX_QUEUE requests (else FCFS)."""
    n = ri[H_NWAIT]
    if n > LPM_MAX_QUEUE or n <= 1:
        ri[H_LPM] = 0
        return
    ri[H_LPM] = 1
    for i in range(n):
        req = _wq_at(ri, wq, i)
        rq[R_LPM, req] = _match_tokens(ri, rq, kva, pk, req)


@njit(cache=True)
def _lpm_pick(ri, rf, wq, rq, rqf):
    """Position of the next request in SGLang's order: the first starving one (waited longer
    than ``starvation_limit_s``) in queue order, else the longest cached prefix, then the
    earliest arrival. Admitted requests leave the queue, so the next pick is the next in
    the order the scheduler sorted once."""
    now_s = rf[F_T]
    limit_s = rf[F_STARVE]
    best = -1
    best_req = -1
    for i in range(ri[H_NWAIT]):
        req = _wq_at(ri, wq, i)
        if now_s - rqf[Q_ARRIVAL, req] > limit_s:
            return i
        if best < 0 or rq[R_LPM, req] > rq[R_LPM, best_req] or (
            rq[R_LPM, req] == rq[R_LPM, best_req] and rq[R_ORDER, req] < rq[R_ORDER, best_req]
        ):
            best = i
            best_req = req
    return best


@njit(cache=True)
def _admit_waiting(ri, rf, wq, rq, rqf, kva, pk, budget, chunked):
    """Admit queued requests while seats, token budget and memory allow
    (``Scheduler._admit_waiting`` and ``Replica.admit``): FCFS, or SGLang's cache-aware
    order; admission stops at the first request that does not fit (no overtaking)."""
    s = ri[H_S]
    o_run = H_HEADER + K_RUN * s
    o_free = H_HEADER + K_FREE * s
    o_ctx = H_HEADER + K_CTX * s
    o_gen = H_HEADER + K_GEN * s
    o_tgt = H_HEADER + K_TGT * s
    o_owner = H_HEADER + K_OWNER * s
    o_chunk = H_HEADER + K_CHUNK * s
    o_ids = H_HEADER + K_IDS * s
    o_tot = H_HEADER + K_TOT * s
    now_s = rf[F_T]
    page = kva[_blocks.C_PAGE]
    max_tokens = ri[H_MAX_TOKENS]
    seats = ri[H_MAX_SEQS] - ri[H_NRUN]
    if ri[H_POLICY] == POLICY_SGLANG:
        _lpm_order(ri, wq, rq, kva, pk)
    else:
        ri[H_LPM] = 0
    while ri[H_NWAIT] > 0:
        pos = _lpm_pick(ri, rf, wq, rq, rqf) if ri[H_LPM] == 1 else 0
        req = _wq_at(ri, wq, pos)
        if budget <= 0 or seats < 1:
            break
        target = rq[R_TARGET, req]
        # Whole prompts unless one exceeds the whole budget and is the step's first; what
        # the prefix cache holds need not be computed.
        if not chunked:
            need = target - _match_tokens(ri, rq, kva, pk, req)
            if need > budget and (ri[H_NPF] > 0 or budget < max_tokens):
                break
        if ri[H_FREE_TOP] < 1:
            break
        ri[H_FREE_TOP] -= 1
        slot = ri[o_free + ri[H_FREE_TOP]]
        n = _admit_pages(ri, rq, req, target, page)
        if n > 0:
            m = _blocks.admit(kva, slot, _keys(rq, pk, req, n), n, target, now_s)
        else:
            m = _blocks.admit(kva, slot, _NO_KEYS, 0, target, now_s)
        if m < 0:
            ri[H_FREE_TOP] += 1
            break
        hit = m * page
        ri[H_PQ] += target
        ri[H_HIT] += hit
        rq[R_SLOT, req] = slot
        rq[R_COMPUTED, req] = hit
        if rq[R_NPRE, req] == 0 and rq[R_FTD, req] == 0:
            rq[R_CACHED, req] = hit
            rqf[Q_FIRST_SCHED, req] = now_s
        ri[o_ctx + slot] = hit
        ri[H_HEADER + K_APCOK * s + slot] = 0
        ri[o_tgt + slot] = rq[R_OUTPUT, req]
        ri[o_gen + slot] = rq[R_GEN, req]
        ri[o_owner + slot] = req
        rq[R_PHASE, req] = PREFILL
        _wq_remove(ri, wq, pos)
        ri[o_run + ri[H_NRUN]] = req
        ri[H_NRUN] += 1
        new = target - hit
        if new > budget:
            new = budget
        ri[o_ids] = slot
        ri[o_tot] = hit + new
        status = _blocks.grow(kva, ri[o_ids : o_ids + 1], ri[o_tot : o_tot + 1])
        if status < 0:
            return ERR_GROW
        if status != _blocks.OK:
            # Abort the admission (``Replica.abort_admission``).
            _release(ri, rq, kva, pk, req, now_s)
            rq[R_PHASE, req] = WAITING
            rq[R_COMPUTED, req] = 0
            ri[H_NRUN] -= 1
            _push_front(ri, wq, req)
            break
        if ri[H_APC] == 1:
            _cache_computed(ri, rq, kva, pk, req, slot, hit + new, now_s)
        _add_chunk(ri, o_chunk, req, new, hit)
        budget -= new
        seats -= 1
    return DONE_OK


@njit(cache=True)
def _plan(ri, rf, wq, rq, rqf, kva, pk):
    """The plan of the step at ``rf[F_T]``: ``VllmScheduler.schedule`` (prefill-first),
    ``SglangScheduler.schedule`` (prefill-first, chunked, cache-aware order), or
    ``Scheduler._decode_then_prefill`` (Sarathi-Serve chunks, Orca whole prompts)."""
    now_s = rf[F_T]
    ri[H_NPF] = 0
    ri[H_NDEC] = 0
    ri[H_NPRE] = 0
    if ri[H_POLICY] == POLICY_SARATHI or ri[H_POLICY] == POLICY_ORCA:
        status = _decode_with_preemption(ri, wq, rq, kva, pk, now_s)
        if status < 0:
            return status
        status, budget = _continue_prefills(ri, rq, kva, pk, ri[H_BUDGET] - ri[H_NDEC], now_s)
        if status < 0:
            return status
        return _admit_waiting(ri, rf, wq, rq, rqf, kva, pk, budget, ri[H_POLICY] == POLICY_SARATHI)
    # vLLM and SGLang: prefills first (SGLang chunks them and orders the queue by cached
    # prefix); with nothing to admit or continue, both plans are the decode step.
    o_run = H_HEADER + K_RUN * ri[H_S]
    pending = False
    for i in range(ri[H_NRUN]):
        if rq[R_PHASE, ri[o_run + i]] == PREFILL:
            pending = True
            break
    if ri[H_NWAIT] == 0 and not pending:
        return _decode_with_preemption(ri, wq, rq, kva, pk, now_s)
    status, budget = _continue_prefills(ri, rq, kva, pk, ri[H_MAX_TOKENS], now_s)
    if status < 0:
        return status
    status = _admit_waiting(ri, rf, wq, rq, rqf, kva, pk, budget, ri[H_POLICY] == POLICY_SGLANG)
    if status < 0:
        return status
    if ri[H_NPF] > 0:
        return DONE_OK
    return _decode_with_preemption(ri, wq, rq, kva, pk, now_s)


@njit(cache=True)
def _itl_bin(gap):
    v = gap if gap > ITL_LO_S else ITL_LO_S
    idx = math.floor(math.log10(v / ITL_LO_S) * ITL_BINS_PER_DECADE) + 1  # an int in numba
    if idx < 0:
        return 0
    if idx > ITL_NUM_BINS - 1:
        return ITL_NUM_BINS - 1
    return idx


@njit(cache=True)
def _finish(ri, rq, rqf, kva, pk, req, end_s):
    _release(ri, rq, kva, pk, req, end_s)
    rq[R_PHASE, req] = DONE
    _remove_running(ri, H_HEADER + K_RUN * ri[H_S], req)
    rqf[Q_FINISH, req] = end_s


@njit(cache=True)
def _commit(ri, rf, rq, rqf, kva, pk, sf, si, sq):
    """End the step in flight: tokens, first tokens, finishes, then its step row."""
    s = ri[H_S]
    o_ctx = H_HEADER + K_CTX * s
    o_gen = H_HEADER + K_GEN * s
    o_tgt = H_HEADER + K_TGT * s
    o_owner = H_HEADER + K_OWNER * s
    o_chunk = H_HEADER + K_CHUNK * s
    o_dec = H_HEADER + K_DEC * s
    o_ids = H_HEADER + K_IDS * s
    o_itl = H_HEADER + K_ITL * s
    o_last = F_HEADER
    end_s = rf[F_ECUR]
    page = kva[_blocks.C_PAGE]
    npf = ri[H_NPF]
    for c in range(npf):
        req = ri[o_chunk + 3 * c]
        comp = rq[R_COMPUTED, req] + ri[o_chunk + 3 * c + 1]
        rq[R_COMPUTED, req] = comp
        slot = rq[R_SLOT, req]
        ri[o_ctx + slot] = comp
        if ri[H_CACHES] == 1:
            _cache_computed(ri, rq, kva, pk, req, slot, comp, end_s)
        if comp < rq[R_TARGET, req]:
            continue
        g = rq[R_GEN, req] + 1
        rq[R_GEN, req] = g
        if rq[R_FTD, req] == 0:
            rq[R_FTD, req] = 1
            rqf[Q_FIRST_TOKEN, req] = end_s
        ri[o_gen + slot] = g
        rf[o_last + slot] = end_s
        rq[R_PHASE, req] = DECODE
        if g >= rq[R_OUTPUT, req]:
            _finish(ri, rq, rqf, kva, pk, req, end_s)
    ndec = ri[H_NDEC]
    if ndec > 0:
        nfin = 0
        for j in range(ndec):
            slot = ri[o_dec + j]
            gap = end_s - rf[o_last + slot]
            if gap != rf[F_LASTGAP]:
                rf[F_LASTGAP] = gap
                ri[H_LASTBIN] = _itl_bin(gap)
            ri[o_itl + ri[H_LASTBIN]] += 1
            rf[F_ITL_SUM] += gap
            rf[F_ITL_SQ] += gap * gap
            ri[o_ctx + slot] += 1
            if ri[H_CACHES] == 1 and ri[o_ctx + slot] % page == 0 and ri[o_owner + slot] >= 0:
                # This token filled a page: cache it (the reference does so after every
                # sequence's context grew and before any token count does; neither is read).
                _cache_computed(ri, rq, kva, pk, ri[o_owner + slot], slot, ri[o_ctx + slot], end_s)
            g = ri[o_gen + slot] + 1
            ri[o_gen + slot] = g
            rf[o_last + slot] = end_s
            if g >= ri[o_tgt + slot]:
                req = ri[o_owner + slot]
                if req >= 0 and rq[R_PHASE, req] == DECODE:
                    # Finishing requests, in arrival order (insertion sort; few at a time).
                    pos = nfin
                    while pos > 0 and rq[R_ORDER, ri[o_ids + pos - 1]] > rq[R_ORDER, req]:
                        ri[o_ids + pos] = ri[o_ids + pos - 1]
                        pos -= 1
                    ri[o_ids + pos] = req
                    nfin += 1
        ri[H_ITL_N] += ndec
        for j in range(nfin):
            req = ri[o_ids + j]
            rq[R_GEN, req] = ri[o_gen + rq[R_SLOT, req]]
            _finish(ri, rq, rqf, kva, pk, req, end_s)
    running = ndec
    for c in range(npf):
        if rq[R_SLOT, ri[o_chunk + 3 * c]] >= 0:
            running += 1
    # The step row, with the memory split after the step (paged: no reservation, no
    # external fragmentation; pages held only by the prefix cache are cached slots;
    # ``PagedKVCache.stats``).
    row = ri[H_ROW]
    sf[SF_T, row] = rf[F_T]
    sf[SF_D, row] = rf[F_D]
    sf[SF_A, row] = rf[F_A]
    tokens = kva[_blocks.C_TOKENS]
    free_b = kva[_blocks.C_FREE_TOP]
    cached_b = kva[_blocks.C_CACHED]
    used_b = kva[_blocks.C_NB] - free_b - cached_b
    si[SI_RUN, row] = running
    si[SI_NPF, row] = npf
    si[SI_PT, row] = ri[H_P]
    si[SI_DT, row] = ndec
    si[SI_Q, row] = ri[H_NWAIT]
    si[SI_PRE, row] = ri[H_NPRE]
    si[SI_TOK, row] = tokens
    si[SI_INT, row] = used_b * page - tokens
    si[SI_FREE, row] = free_b * page
    si[SI_CACHED, row] = cached_b * page
    si[SI_SAMP, row] = ri[H_SAMP]
    sq[SQ_KV, row] = ri[H_K]
    sq[SQ_CTX, row] = ri[H_CTXSUM]
    sq[SQ_PQ, row] = ri[H_PQ]
    sq[SQ_HIT, row] = ri[H_HIT]
    ri[H_ROW] = row + 1
    ri[H_NSTEPS] += 1
    rf[F_T] = end_s
    ri[H_INFLIGHT] = 0


@njit(cache=True)
def _start_step(ri, rf, rq, cf):
    """Cost the planned step (``Replica._step_inputs`` and ``_run_step``) and put it in flight."""
    s = ri[H_S]
    o_ctx = H_HEADER + K_CTX * s
    o_chunk = H_HEADER + K_CHUNK * s
    o_dec = H_HEADER + K_DEC * s
    p = 0
    pairs = 0.0
    kv = 0
    samp = 0
    for c in range(ri[H_NPF]):
        req = ri[o_chunk + 3 * c]
        new = ri[o_chunk + 3 * c + 1]
        ctx = ri[o_chunk + 3 * c + 2]
        p += new
        pairs += new * (ctx + (new + 1) / 2.0)
        kv += ctx + new
        if ctx + new >= rq[R_TARGET, req]:
            samp += 1
    ndec = ri[H_NDEC]
    ctx_sum = 0
    for j in range(ndec):
        ctx_sum += ri[o_ctx + ri[o_dec + j]]
    ri[H_P] = p
    ri[H_K] = kv
    ri[H_SAMP] = samp
    ri[H_CTXSUM] = ctx_sum
    rf[F_A] = pairs
    if ri[H_NPF] > 0 or p > 0:
        d = step_time_s(cf, float(p), pairs, float(kv), float(samp), float(ndec), float(ctx_sum))
    else:
        d = step_time_s(cf, 0.0, 0.0, 0.0, 0.0, float(ndec), float(ctx_sum))
    d = d + 0.0  # no swap time (recompute preemption)
    rf[F_D] = d
    rf[F_ECUR] = rf[F_T] + d
    ri[H_INFLIGHT] = 1


@njit(cache=True)
def advance(ri, rf, wq, rq, rqf, kva, pk, cf, sf, si, sq, until_s, new_req):
    """Run the replica up to ``until_s``, then queue ``new_req`` (``-1``: none) arriving then.

    Commits every step ending before ``until_s`` and plans the next one as each ends;
    returns :data:`ROWS_FULL` (nothing else done; call again with a fresh row chunk) when
    the step rows are full, :data:`DONE_OK`, or a negative error code.
    """
    while True:
        if ri[H_INFLIGHT] == 1:
            if rf[F_ECUR] < until_s:
                if ri[H_ROW] >= ri[H_ROWCAP]:
                    return ROWS_FULL
                _commit(ri, rf, rq, rqf, kva, pk, sf, si, sq)
                continue
            break
        if ri[H_IDLE] == 1 or rf[F_T] >= until_s:
            break
        if ri[H_NWAIT] == 0 and ri[H_NRUN] == 0:
            ri[H_IDLE] = 1
            break
        status = _plan(ri, rf, wq, rq, rqf, kva, pk)
        if status < 0:
            return status
        if ri[H_NPF] == 0 and ri[H_NDEC] == 0:
            if ri[H_NRUN] > 0:
                return ERR_EMPTY
            # Queued requests that cannot be admitted into an empty replica: wait for a change.
            ri[H_IDLE] = 1
            break
        _start_step(ri, rf, rq, cf)
    if new_req >= 0:
        _push_back(ri, wq, new_req)
        if ri[H_IDLE] == 1:
            ri[H_IDLE] = 0
            if until_s > rf[F_T]:
                rf[F_T] = until_s
    return DONE_OK


@njit(cache=True)
def kv_tokens_held(ri, rq):
    """Context tokens of the running requests (the least-KV-load router's numerator)."""
    s = ri[H_S]
    o_run = H_HEADER + K_RUN * s
    o_ctx = H_HEADER + K_CTX * s
    total = 0
    for i in range(ri[H_NRUN]):
        slot = rq[R_SLOT, ri[o_run + i]]
        if slot >= 0:
            total += ri[o_ctx + slot]
    return total
