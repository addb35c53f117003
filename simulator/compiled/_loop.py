"""The replica kernel family: every scheduler (static, Orca, vLLM, Sarathi-Serve, SGLang) on
every KV manager (paged with or without vLLM v1's prefix caching, radix, contiguous), with
recompute or swap preemption, fan-out groups and dependent requests, in numba.

One call, :func:`advance`, runs a replica's steps up to a time: it commits the step in
flight if it ends before ``until_s``, plans the next step at once (as the reference replica
does when its step's timeout fires), and stops at the first step that would still be running
at ``until_s``; then it queues the arriving request, if any (:func:`advance_many`: a batch of
arrivals; :func:`advance_stepwise`: one SimPy step event at a time, for dependent requests).
It is the reference replica (``simulator.reference``, ``engine.loop: reference``) operation
for operation - the same plans, admissions, preemptions, prefix-cache calls through the same
KV kernels (:mod:`simulator.memory.kernels`), the same step costs (the packed form of
``StepCostModel``, or its memo) - so request and step frames are identical bit for bit
(``tests/engine/test_reference.py``, also with numba's JIT off). Runs of decode-only steps
of an unchanged batch (most steps of a serving hour) are advanced by :func:`_decode_stretch`,
step by step and identically, without the general path's calls (``_commit``'s decode part
and step row are shared with it: :func:`_commit_decodes`, :func:`_write_row`).

State is flat arrays (STYLE section 6):

* ``ri`` int64: header ``H_*``, then per replica the running list, the free-slot stack, the
  per-slot context / generated / target / owner arrays, the planned step (prefill chunks,
  decode slots), two scratch arrays and the ITL histogram (offsets from ``S``, the slots).
* ``rf`` float64: ``F_*`` scalars, then the per-slot time of the last token.
* ``wq`` int64: the waiting queue, a ring (the facade grows it).
* ``rq`` int64 ``[R_NUM, N]`` / ``rqf`` float64 ``[Q_NUM, N]``: per request (workload column),
  shared by the replicas of a run.
* ``kva``: the KV manager's arena (paged, radix or contiguous); ``pk`` int64: every
  request's page keys (its prefix identity; rows ``R_KLO`` / ``R_KN`` of ``rq`` point into
  it; :mod:`simulator.compiled._prefix`); ``cf``: the step-cost pack (``hwmodels.stepkernel``).
  For a model without a packed form ``cf`` is empty and ``mt`` is the step-cost memo the
  facade fills (:mod:`simulator.compiled._cost`; ``advance`` returns :data:`NEED_COST` for
  a shape not in it).
* after ``rf``'s per-slot times and the host link's bandwidth: the planned step's cost
  (``_cost.COST_WORDS``: its time and split by bound, copied into the step row as it commits).
* ``sf`` / ``si`` / ``sq`` / ``ss``: the current chunk of step rows (float64, int32, int64
  columns; ``ss`` float32: the split by bound, scaled to the duration as the steps frame holds it).

Also run here, identical to the reference replica (``simulator.reference``,
``tests/engine/test_reference.py``): the ``static`` scheduler (:func:`_plan_static`), the
contiguous KV manager (every KV call goes through :mod:`simulator.compiled._mem`, which
dispatches to the paged or contiguous kernels) and swap preemption (:func:`_swap_out`,
:func:`_swap_in`; a host pool per replica, a FIFO ring of swapped requests).
"""

from __future__ import annotations

from servesim.simulator.compiled import _cost, _mem, _prefix
from servesim.simulator.compiled._mem import (
    F_KVB,
    F_SWAP_CAP,
    F_SWAP_USED,
    F_SWAPB,
    H_NSWAP,
    H_PADSEQ,
    H_SWAP,
    H_SWHEAD,
    K_SWQ,
    R_SWAPN,
    R_SWAPTOK,
    kv_admit,
    kv_grow,
    kv_release,
)
from servesim.simulator.jit import borrowed, njit
from servesim.simulator.memory.kernels import _blocks
from servesim.simulator.results import _ITL_BINS_PER_DECADE, _ITL_LO_S, _ITL_NUM_BINS, itl_bin
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
# 11-13 prefix caching / radix, 14-15 swap (``_mem.R_SWAPTOK``, ``R_SWAPN``), 16-17 fan-out.
# No spare rows: at a million requests each row is 8 MB of the run's peak (issue 12: <= 1 GB);
# a feature that needs one adds it here.
R_KLO = 11  # where the request's page keys start in ``pk``
R_KN = 12  # page keys its prefix identity describes (0: none)
R_LPM = 13  # sglang: its cached prefix tokens when the queue was ordered (scratch)
R_FANOUT = 16  # sequences of the group (parallel samples n or beam width; >= 1)
R_NSLOTS = 17  # sequences (slots) it holds now: the chain R_SLOT -> K_NEXT -> ... -> -1
R_NUM = 18
# Rows of ``rqf``.
Q_FIRST_SCHED = 0
Q_FIRST_TOKEN = 1
Q_FINISH = 2
Q_ARRIVAL = 3  # when the request was routed (``ReqState.arrival_s``; sglang's starvation guard)
Q_LASTTOK = 4  # when it last emitted a token, kept while preempted (``ReqState.last_token_s``)
Q_NUM = 5

# Phases (as simulator.request).
WAITING = 0
PREFILL = 1
DECODE = 2
SWAPPED = 3
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
H_SHARING = 40  # 1: a fan-out group computes its prompt once and forks (``kv_sharing``)
H_LOGFIN = 41  # 1: finishes are listed in K_FIN for the facade (dependent requests)
H_NFIN = 42  # requests listed in K_FIN since the facade last read them
H_COSTWAIT = 44  # 1: the planned step waits for its cost (NEED_COST), the plan stands
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
POLICY_STATIC = 4  # request-level batches (FasterTransformer); see _plan_static
POLICIES = {"vllm": POLICY_VLLM, "sarathi": POLICY_SARATHI, "orca": POLICY_ORCA, "sglang": POLICY_SGLANG,
            "static": POLICY_STATIC}
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
F_VNOW = 16  # stepwise: the SimPy time of the step end (event) being processed
F_STARVE = 8  # sglang: starvation_limit_s
F_HEADER = 24
# Step-row columns.
SF_T, SF_D, SF_A = 0, 1, 2
SF_SWAP = 3  # swap transfer time in the step (its share of comm_s in the split by bound)
SF_NUM = 4
# ``ss`` (float32): the split by bound (the steps frame's compute_s .. overhead_s), recorded as
# each step commits (``_cost.scale_split``, swap time added to communication).
SS_COMP, SS_WEIGHT, SS_KV, SS_COMM, SS_OVER = 0, 1, 2, 3, 4
SS_NUM = 5
# (Paged KV has no reserved or externally fragmented slots: those columns are zero; cached
# slots are pages held only by the prefix cache.)
SI_RUN, SI_NPF, SI_PT, SI_DT, SI_Q, SI_PRE, SI_TOK, SI_INT, SI_FREE, SI_SAMP = range(10)
SI_RES, SI_EXT, SI_CACHED = 10, 11, 12  # reserved / externally fragmented / cached slots
SI_DSEQ = 13  # decoding sequences costed (static batching: with its padding)
SI_NUM = 14
SQ_KV, SQ_CTX, SQ_PQ, SQ_HIT = 0, 1, 2, 3  # SQ_HIT: prefix-hit tokens
SQ_NUM = 4

# Return codes of :func:`advance`.
DONE_OK = 0
ROWS_FULL = 1
ERR_GROW = -1  # a grow or admit misuse (the Python engine would raise ValueError)
ERR_EMPTY = -2  # an empty plan with running requests
NEED_COST = 2  # the planned step's shape is not in the cost memo: the facade costs it, then resumes
ERR_FORK = -17  # no free slot (or region) to fork a group's sequence into

# ITL histogram: the recorder's bins.
ITL_LO_S = _ITL_LO_S
ITL_BINS_PER_DECADE = _ITL_BINS_PER_DECADE
ITL_NUM_BINS = _ITL_NUM_BINS



# Per-slot regions of ``ri`` after the header, in units of ``S`` words: running list,
# free-slot stack, context / generated / target tokens and owner per slot, the planned
# step's prefill chunks (3 words each), its decode slots, two scratch arrays, then the ITL
# histogram.
# Reserved regions: 13-15 prefix caching / radix, 16-18 swap and contiguous, 19-21 fan-out
# and dependents, 22-23 spare.
K_RUN, K_FREE, K_CTX, K_GEN, K_TGT, K_OWNER, K_CHUNK, K_DEC, K_IDS, K_TOT, K_ITL = 0, 1, 2, 3, 4, 5, 6, 9, 10, 11, 24
# Fan-out: a request's sequences are a chain of slots (``ReqState.slots`` in order): R_SLOT
# is the first, K_NEXT the next of each (-1: the last). K_FIN lists the requests finished
# since the facade last looked (H_LOGFIN), in the reference's order of ``_finish`` calls.
K_NEXT, K_FIN = 19, 20
K_APCOK = 13  # APC: leading pages of the slot whose own blocks are their trie nodes


def itl_offset(slots: int) -> int:
    """Where the ITL histogram starts in ``ri``."""
    return H_HEADER + K_ITL * slots


def ri_words(slots: int) -> int:
    return itl_offset(slots) + ITL_NUM_BINS


def cost_offset(slots: int) -> int:
    """Where the planned step's cost (``_cost.COST_WORDS`` floats) starts in ``rf``: after
    the per-slot last-token times and the host link's bandwidth."""
    return F_HEADER + slots + _mem.RF_TAIL


def rf_words(slots: int) -> int:
    """Words of ``rf``: the scalars, the per-slot last-token times, the tail, the step cost."""
    return cost_offset(slots) + _cost.COST_WORDS


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
    page = _mem.page_tokens(ri, kva)
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
    """Drop the request's KV and give its slots back, first sequence first
    (``ReferenceReplica._release``); a prefix-caching manager caches the first sequence's
    full computed pages."""
    s = ri[H_S]
    o_free = H_HEADER + K_FREE * s
    o_owner = H_HEADER + K_OWNER * s
    o_next = H_HEADER + K_NEXT * s
    slot = rq[R_SLOT, req]
    first = True
    while slot >= 0:
        n = _held_pages(ri, rq, kva, req, slot, ri[H_HEADER + K_CTX * s + slot]) if first else 0
        if n > 0:
            kv_release(ri, kva, slot, _keys(rq, pk, req, n), n, now_s)
        else:
            kv_release(ri, kva, slot, pk[:0], 0, now_s)
        first = False
        ri[o_owner + slot] = -1
        ri[o_free + ri[H_FREE_TOP]] = slot
        ri[H_FREE_TOP] += 1
        nxt = ri[o_next + slot]
        ri[o_next + slot] = -1
        slot = nxt
    rq[R_SLOT, req] = -1
    rq[R_NSLOTS, req] = 0


@njit(cache=True)
def _group_slots(ri, rq, req, o_out, tokens, o_tot):
    """Write the request's slots (in order) from ``ri[o_out]``, and ``tokens`` for each from
    ``ri[o_tot]`` (``o_tot < 0``: none); returns how many."""
    o_next = H_HEADER + K_NEXT * ri[H_S]
    n = 0
    slot = rq[R_SLOT, req]
    while slot >= 0:
        ri[o_out + n] = slot
        if o_tot >= 0:
            ri[o_tot + n] = tokens
        n += 1
        slot = ri[o_next + slot]
    return n


@njit(cache=True)
def _take_slots(ri, rq, kva, pk, req, n, nkeys, prompt_tokens, now_s):
    """Register ``n`` sequences of ``req`` with the KV manager, all or none
    (``ReferenceReplica.admit`` / ``swap_in``): slots come off the free stack in pop order,
    the first looks up its ``nkeys`` page keys. Returns (sequences taken, pages the first
    found cached); (0, 0) when there is no room (nothing changed)."""
    s = ri[H_S]
    o_free = H_HEADER + K_FREE * s
    o_next = H_HEADER + K_NEXT * s
    if ri[H_FREE_TOP] < n:
        return 0, 0
    top0 = ri[H_FREE_TOP]
    final = rq[R_PROMPT, req] + rq[R_OUTPUT, req]
    hit_pages = 0
    for i in range(n):
        slot = ri[o_free + top0 - 1 - i]
        if i == 0 and nkeys > 0:
            m = kv_admit(ri, kva, slot, _keys(rq, pk, req, nkeys), nkeys, prompt_tokens, final, now_s)
        else:
            m = kv_admit(ri, kva, slot, pk[:0], 0, prompt_tokens, final, now_s)
        if m < 0:
            # Undo, newest first. The slots were only read off the free stack (taken below,
            # once all are in), so it is as the reference's pops and pushes leave it.
            for j in range(i - 1, -1, -1):
                kv_release(ri, kva, ri[o_free + top0 - 1 - j], pk[:0], 0, now_s)
            return 0, 0
        if i == 0:
            hit_pages = m
    ri[H_FREE_TOP] = top0 - n
    rq[R_SLOT, req] = ri[o_free + top0 - 1]
    for i in range(n):
        slot = ri[o_free + top0 - 1 - i]
        ri[o_next + slot] = ri[o_free + top0 - 2 - i] if i + 1 < n else -1
    rq[R_NSLOTS, req] = n
    return n, hit_pages


@njit(cache=True)
def _bind_group(ri, rq, req, ctx):
    """Every sequence of ``req`` starts from ``ctx`` computed tokens (``_bind``)."""
    s = ri[H_S]
    o_next = H_HEADER + K_NEXT * s
    slot = rq[R_SLOT, req]
    while slot >= 0:
        ri[H_HEADER + K_CTX * s + slot] = ctx
        ri[H_HEADER + K_APCOK * s + slot] = 0
        ri[H_HEADER + K_TGT * s + slot] = rq[R_OUTPUT, req]
        ri[H_HEADER + K_GEN * s + slot] = rq[R_GEN, req]
        ri[H_HEADER + K_OWNER * s + slot] = req
        slot = ri[o_next + slot]


@njit(cache=True)
def _grow_group(ri, rq, kva, req, total):
    """Room for ``total`` tokens in each of ``req``'s sequences (all or nothing)."""
    s = ri[H_S]
    o_ids = H_HEADER + K_IDS * s
    o_tot = H_HEADER + K_TOT * s
    m = _group_slots(ri, rq, req, o_ids, total, o_tot)
    return kv_grow(ri, kva, ri[o_ids : o_ids + m], ri[o_tot : o_tot + m])


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
def _preempt(ri, rf, wq, rq, rqf, kva, pk, req, now_s):
    """Preemption (``ReferenceReplica.preempt``): a decoding request is swapped out when
    swap is on and host memory allows (:func:`_swap_out`), otherwise recomputed."""
    s = ri[H_S]
    o_run = H_HEADER + K_RUN * s
    o_gen = H_HEADER + K_GEN * s
    slot = rq[R_SLOT, req]
    if slot >= 0:
        rq[R_GEN, req] = ri[o_gen + slot]
    if rq[R_PHASE, req] == DECODE:  # (a recompute's prefill emitted nothing since)
        rqf[Q_LASTTOK, req] = rf[F_HEADER + slot]
    rq[R_NPRE, req] += 1
    _remove_running(ri, o_run, req)
    # Groups sharing their prompt's blocks are recomputed (shared blocks are not swapped).
    if (ri[H_SWAP] == 1 and rq[R_PHASE, req] == DECODE and not (ri[H_SHARING] == 1 and rq[R_FANOUT, req] > 1)
            and _swap_out(ri, rf, rq, kva, pk, req, now_s)):
        return
    if slot >= 0:
        _release(ri, rq, kva, pk, req, now_s)
    rq[R_PHASE, req] = WAITING
    g = rq[R_GEN, req]
    rq[R_TARGET, req] = rq[R_PROMPT, req] + (g - 1 if g > 1 else 0)
    rq[R_COMPUTED, req] = 0
    _push_front(ri, wq, req)


@njit(cache=True)
def _decode_with_preemption(ri, rf, wq, rq, rqf, kva, pk, now_s):
    """Every decoding sequence gets one more slot; the latest-arrived request is preempted
    while that does not fit (``Scheduler._decode_with_preemption``)."""
    s = ri[H_S]
    o_run = H_HEADER + K_RUN * s
    o_ctx = H_HEADER + K_CTX * s
    o_dec = H_HEADER + K_DEC * s
    o_tot = H_HEADER + K_TOT * s
    o_next = H_HEADER + K_NEXT * s
    while True:
        n = 0
        for i in range(ri[H_NRUN]):
            req = ri[o_run + i]
            if rq[R_PHASE, req] == DECODE:
                slot = rq[R_SLOT, req]
                while slot >= 0:  # every sequence of the group, in order
                    ri[o_dec + n] = slot
                    ri[o_tot + n] = ri[o_ctx + slot] + 1
                    n += 1
                    slot = ri[o_next + slot]
        if n == 0:
            ri[H_NDEC] = 0
            return DONE_OK
        status = kv_grow(ri, kva, ri[o_dec : o_dec + n], ri[o_tot : o_tot + n])
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
        _preempt(ri, rf, wq, rq, rqf, kva, pk, victim, now_s)
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
        status = _grow_group(ri, rq, kva, req, comp + new)
        if status < 0:
            return ERR_GROW, budget
        if status != _blocks.OK:
            continue
        if ri[H_APC] == 1:  # vLLM v1 caches a chunk's pages when it schedules it
            _cache_computed(ri, rq, kva, pk, req, rq[R_SLOT, req], comp + new, now_s)
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
def _admit_request(ri, rq, rqf, kva, pk, req, page, now_s):
    """Admit ``req`` (``ReferenceReplica.admit``): its sequences (one when a fan-out group
    shares its prompt, which forks the others when the prompt is in; else every one), the
    first looking up the prompt's pages in a prefix cache. Returns the prompt tokens found
    cached, or -1 when there is no room (nothing changed)."""
    target = rq[R_TARGET, req]
    fan = rq[R_FANOUT, req]
    n = 1 if (ri[H_SHARING] == 1 and fan > 1) else fan
    taken, m = _take_slots(ri, rq, kva, pk, req, n, _admit_pages(ri, rq, req, target, page), target, now_s)
    if taken == 0:
        return -1
    hit = m * page
    ri[H_PQ] += taken * target  # each sequence's admission is a prefix query
    ri[H_HIT] += hit
    rq[R_COMPUTED, req] = hit
    if rq[R_NPRE, req] == 0 and rq[R_FTD, req] == 0:
        rq[R_CACHED, req] = hit
        rqf[Q_FIRST_SCHED, req] = now_s
    _bind_group(ri, rq, req, hit)
    rq[R_PHASE, req] = PREFILL
    return hit


@njit(cache=True)
def _seat_and_grow(ri, wq, rq, kva, pk, req, pos, total, now_s):
    """The admitted ``req`` leaves queue position ``pos`` for the running list and its
    sequences grow to ``total`` tokens (``grow_prefill``; vLLM v1 caches the chunk's pages
    then); when that does not fit, the admission is undone (``Replica.abort_admission``: back
    to the queue's head). Returns DONE_OK, 1 (undone) or ERR_GROW."""
    _wq_remove(ri, wq, pos)
    ri[H_HEADER + K_RUN * ri[H_S] + ri[H_NRUN]] = req
    ri[H_NRUN] += 1
    status = _grow_group(ri, rq, kva, req, total)
    if status < 0:
        return ERR_GROW
    if status != _blocks.OK:
        _release(ri, rq, kva, pk, req, now_s)
        rq[R_PHASE, req] = WAITING
        rq[R_COMPUTED, req] = 0
        ri[H_NRUN] -= 1
        _push_front(ri, wq, req)
        return 1
    if ri[H_APC] == 1:
        _cache_computed(ri, rq, kva, pk, req, rq[R_SLOT, req], total, now_s)
    return DONE_OK


@njit(cache=True)
def _admit_waiting(ri, rf, wq, rq, rqf, kva, pk, budget, chunked):
    """Admit queued requests while seats, token budget and memory allow
    (``Scheduler._admit_waiting`` and ``Replica.admit``): FCFS, or SGLang's cache-aware
    order; admission stops at the first request that does not fit (no overtaking)."""
    s = ri[H_S]
    o_run = H_HEADER + K_RUN * s
    o_chunk = H_HEADER + K_CHUNK * s
    now_s = rf[F_T]
    page = _mem.page_tokens(ri, kva)
    max_tokens = ri[H_MAX_TOKENS]
    if ri[H_NWAIT] == 0:
        return DONE_OK
    # Seats: a fan-out group counts as all of its sequences, forked or not yet.
    seats = ri[H_MAX_SEQS]
    for i in range(ri[H_NRUN]):
        seats -= rq[R_FANOUT, ri[o_run + i]]
    if ri[H_POLICY] == POLICY_SGLANG:
        _lpm_order(ri, wq, rq, kva, pk)
    else:
        ri[H_LPM] = 0
    while ri[H_NWAIT] > 0:
        pos = _lpm_pick(ri, rf, wq, rq, rqf) if ri[H_LPM] == 1 else 0
        req = _wq_at(ri, wq, pos)
        if budget <= 0 or seats < rq[R_FANOUT, req]:
            break
        target = rq[R_TARGET, req]
        # Whole prompts unless one exceeds the whole budget and is the step's first; what
        # the prefix cache holds need not be computed.
        if not chunked:
            need = target - _match_tokens(ri, rq, kva, pk, req)
            if need > budget and (ri[H_NPF] > 0 or budget < max_tokens):
                break
        hit = _admit_request(ri, rq, rqf, kva, pk, req, page, now_s)
        if hit < 0:
            break
        new = target - hit
        if new > budget:
            new = budget
        status = _seat_and_grow(ri, wq, rq, kva, pk, req, pos, hit + new, now_s)
        if status < 0:
            return ERR_GROW
        if status != DONE_OK:
            break
        _add_chunk(ri, o_chunk, req, new, hit)
        budget -= new
        seats -= rq[R_FANOUT, req]
    return DONE_OK


# ------------------------------------------------------------------ swap and static batching
@njit(cache=True)
def _swap_out(ri, rf, rq, kva, pk, req, now_s):
    """Swap a decoding request's KV to host memory if it fits there (the swap branch of
    ``ReferenceReplica.preempt``; the caller already took it off the running list).

    Returns False (nothing done: the caller recomputes it) when the host pool is full.
    """
    s = ri[H_S]
    o_ctx = H_HEADER + K_CTX * s
    o_next = H_HEADER + K_NEXT * s
    first = rq[R_SLOT, req]
    total = 0
    slot = first
    while slot >= 0:
        total += ri[o_ctx + slot]
        slot = ri[o_next + slot]
    swap_bytes = total * rf[F_KVB]
    if not rf[F_SWAP_USED] + swap_bytes <= rf[F_SWAP_CAP]:
        return False
    rq[R_SWAPTOK, req] = ri[o_ctx + first]
    rq[R_SWAPN, req] = rq[R_NSLOTS, req]
    _release(ri, rq, kva, pk, req, now_s)
    rf[F_SWAP_USED] += swap_bytes
    rq[R_PHASE, req] = SWAPPED
    o_swq = H_HEADER + K_SWQ * s
    pos = ri[H_SWHEAD] + ri[H_NSWAP]
    if pos >= s:
        pos -= s
    ri[o_swq + pos] = req
    ri[H_NSWAP] += 1
    rf[F_SWAPB] += swap_bytes
    return True


@njit(cache=True)
def _unwind_slots(ri, rq, kva, pk, req, now_s):
    """Undo :func:`_take_slots` after a failed grow: free the sequences newest first and
    push their slots back, as the reference's ``reversed(taken)`` loop does."""
    s = ri[H_S]
    o_free = H_HEADER + K_FREE * s
    o_next = H_HEADER + K_NEXT * s
    n = _group_slots(ri, rq, req, H_HEADER + K_IDS * s, 0, -1)
    for j in range(n - 1, -1, -1):
        slot = ri[H_HEADER + K_IDS * s + j]
        kv_release(ri, kva, slot, pk[:0], 0, now_s)
        ri[o_next + slot] = -1
        ri[o_free + ri[H_FREE_TOP]] = slot
        ri[H_FREE_TOP] += 1
    rq[R_SLOT, req] = -1
    rq[R_NSLOTS, req] = 0


@njit(cache=True)
def _swap_in(ri, rf, rq, rqf, kva, pk, now_s):
    """Bring swapped requests back, oldest first, while a slot and KV room allow
    (``Scheduler._swap_in`` and ``ReferenceReplica.swap_in``: admit for the swapped tokens,
    then grow to them; restoring KV is no prefix lookup). Returns 0 when none is left
    swapped, 1 when some still are, or a negative error code."""
    s = ri[H_S]
    o_swq = H_HEADER + K_SWQ * s
    while ri[H_NSWAP] > 0:
        req = ri[o_swq + ri[H_SWHEAD]]
        tokens = rq[R_SWAPTOK, req]
        n = rq[R_SWAPN, req]
        taken, _ = _take_slots(ri, rq, kva, pk, req, n, 0, tokens, now_s)
        if taken == 0:
            return 1
        status = _grow_group(ri, rq, kva, req, tokens)
        if status < 0:
            return ERR_GROW
        if status != _blocks.OK:
            _unwind_slots(ri, rq, kva, pk, req, now_s)
            return 1
        _bind_group(ri, rq, req, tokens)
        slot = rq[R_SLOT, req]
        while slot >= 0:  # its next token's gap spans the swap
            rf[F_HEADER + slot] = rqf[Q_LASTTOK, req]
            slot = ri[H_HEADER + K_NEXT * s + slot]
        moved = tokens * n * rf[F_KVB]
        rf[F_SWAP_USED] -= moved
        h = ri[H_SWHEAD] + 1
        ri[H_SWHEAD] = 0 if h == s else h
        ri[H_NSWAP] -= 1
        rq[R_PHASE, req] = DECODE
        ri[H_HEADER + K_RUN * s + ri[H_NRUN]] = req
        ri[H_NRUN] += 1
        rf[F_SWAPB] += moved
    return 0


@njit(cache=True)
def _end_static_batch(ri, rq, rqf, kva, pk, end_s):
    """Static batching: when every member of the batch is done, all of them return, in
    arrival order (``ReferenceReplica._end_static_batch_if_done``)."""
    n = ri[H_NRUN]
    if n == 0:
        return
    o_run = H_HEADER + K_RUN * ri[H_S]
    for i in range(n):
        if rq[R_PHASE, ri[o_run + i]] != DONE:
            return
    for _ in range(n):
        j = 0
        for i in range(1, ri[H_NRUN]):
            if rq[R_ORDER, ri[o_run + i]] < rq[R_ORDER, ri[o_run + j]]:
                j = i
        req = ri[o_run + j]
        _release(ri, rq, kva, pk, req, end_s)
        rqf[Q_FINISH, req] = end_s
        _remove_running(ri, o_run, req)
        _log_finish(ri, req)


@njit(cache=True)
def _plan_static(ri, rf, wq, rq, rqf, kva, pk):
    """Request-level batching (``StaticScheduler.schedule``; FasterTransformer): an idle
    replica forms a batch from the queue, FCFS under ``max_num_seqs`` (whole prompts, no
    token budget); a running batch decodes its live members, finished ones stay as padding
    (costed in :func:`_start_step`). Preemption is by recompute; a batch whose generating
    members were all preempted ends, and the next one forms at once."""
    now_s = rf[F_T]
    if ri[H_NRUN] > 0:
        status = _decode_with_preemption(ri, rf, wq, rq, rqf, kva, pk, now_s)
        if status < 0 or ri[H_NDEC] > 0 or ri[H_NPRE] == 0:
            return status
        _end_static_batch(ri, rq, rqf, kva, pk, now_s)
        if ri[H_NRUN] > 0:
            return DONE_OK  # (cannot happen: the empty plan is reported by the caller)
    s = ri[H_S]
    o_chunk = H_HEADER + K_CHUNK * s
    page = _mem.page_tokens(ri, kva)
    seats = ri[H_MAX_SEQS]
    while ri[H_NWAIT] > 0:
        req = wq[ri[H_WHEAD]]
        if seats < rq[R_FANOUT, req]:
            break
        target = rq[R_TARGET, req]
        hit = _admit_request(ri, rq, rqf, kva, pk, req, page, now_s)
        if hit < 0:
            break
        status = _seat_and_grow(ri, wq, rq, kva, pk, req, 0, target, now_s)
        if status < 0:
            return ERR_GROW
        if status != DONE_OK:
            break
        _add_chunk(ri, o_chunk, req, target - hit, hit)
        seats -= rq[R_FANOUT, req]
    return DONE_OK


@njit(cache=True)
def _plan(ri, rf, wq, rq, rqf, kva, pk):
    """The plan of the step at ``rf[F_T]``: ``VllmScheduler.schedule`` (prefill-first),
    ``SglangScheduler.schedule`` (prefill-first, chunked, cache-aware order),
    ``Scheduler._decode_then_prefill`` (Sarathi-Serve chunks, Orca whole prompts) or
    ``StaticScheduler.schedule``; swapped requests come back first."""
    now_s = rf[F_T]
    ri[H_NPF] = 0
    ri[H_NDEC] = 0
    ri[H_NPRE] = 0
    rf[F_SWAPB] = 0.0
    if ri[H_POLICY] == POLICY_STATIC:
        return _plan_static(ri, rf, wq, rq, rqf, kva, pk)
    if ri[H_POLICY] == POLICY_SARATHI or ri[H_POLICY] == POLICY_ORCA:
        status = _swap_in(ri, rf, rq, rqf, kva, pk, now_s)
        if status < 0:
            return status
        status = _decode_with_preemption(ri, rf, wq, rq, rqf, kva, pk, now_s)
        if status < 0:
            return status
        status, budget = _continue_prefills(ri, rq, kva, pk, ri[H_BUDGET] - ri[H_NDEC], now_s)
        if status < 0:
            return status
        if ri[H_NSWAP] > 0:
            return DONE_OK  # nothing is admitted while requests are swapped out
        return _admit_waiting(ri, rf, wq, rq, rqf, kva, pk, budget, ri[H_POLICY] == POLICY_SARATHI)
    # vLLM and SGLang: prefills first (SGLang chunks them and orders the queue by cached
    # prefix); with nothing to admit or continue, both plans are the decode step.
    o_run = H_HEADER + K_RUN * ri[H_S]
    pending = False
    for i in range(ri[H_NRUN]):
        if rq[R_PHASE, ri[o_run + i]] == PREFILL:
            pending = True
            break
    if ri[H_NWAIT] == 0 and not pending and ri[H_NSWAP] == 0:
        return _decode_with_preemption(ri, rf, wq, rq, rqf, kva, pk, now_s)
    status = _swap_in(ri, rf, rq, rqf, kva, pk, now_s)
    if status < 0:
        return status
    if status == 0:
        status, budget = _continue_prefills(ri, rq, kva, pk, ri[H_MAX_TOKENS], now_s)
        if status < 0:
            return status
        status = _admit_waiting(ri, rf, wq, rq, rqf, kva, pk, budget, ri[H_POLICY] == POLICY_SGLANG)
        if status < 0:
            return status
    if ri[H_NPF] > 0:
        return DONE_OK
    return _decode_with_preemption(ri, rf, wq, rq, rqf, kva, pk, now_s)


#: The ITL histogram bin of a gap: the recorder's one definition (``results.itl_bin``), compiled.
_itl_bin = njit(cache=True)(itl_bin)


@njit(cache=True)
def _finish(ri, rq, rqf, kva, pk, req, end_s):
    if ri[H_POLICY] == POLICY_STATIC:  # stays in the batch (as padding) until the batch ends
        rq[R_PHASE, req] = DONE
        return
    _release(ri, rq, kva, pk, req, end_s)
    rq[R_PHASE, req] = DONE
    _remove_running(ri, H_HEADER + K_RUN * ri[H_S], req)
    rqf[Q_FINISH, req] = end_s
    _log_finish(ri, req)


@njit(cache=True)
def _log_finish(ri, req):
    """For the facade: the cluster's ``on_finish`` (dependents), in the reference's order."""
    if ri[H_LOGFIN] == 1 and ri[H_NFIN] < ri[H_S]:
        ri[H_HEADER + K_FIN * ri[H_S] + ri[H_NFIN]] = req
        ri[H_NFIN] += 1


@njit(cache=True)
def _fork_group(ri, rq, kva, req, g):
    """A sharing group's prompt is in: fork its other sequences from the first
    (``ReferenceReplica._commit_prefill``; only block managers share, so ``H_SHARING`` is
    off on contiguous KV); returns ERR_FORK if slots ran out (the reference raises)."""
    s = ri[H_S]
    o_free = H_HEADER + K_FREE * s
    o_next = H_HEADER + K_NEXT * s
    o_ctx = H_HEADER + K_CTX * s
    parent = rq[R_SLOT, req]
    last = parent
    for _ in range(rq[R_FANOUT, req] - 1):
        if ri[H_FREE_TOP] < 1:
            return ERR_FORK
        ri[H_FREE_TOP] -= 1
        child = ri[o_free + ri[H_FREE_TOP]]
        _blocks.fork(kva, parent, child)
        ri[o_next + last] = child
        ri[o_next + child] = -1
        last = child
        ri[o_ctx + child] = ri[o_ctx + parent]
        ri[H_HEADER + K_APCOK * s + child] = 0
        ri[H_HEADER + K_GEN * s + child] = g
        ri[H_HEADER + K_TGT * s + child] = rq[R_OUTPUT, req]
        ri[H_HEADER + K_OWNER * s + child] = req
    rq[R_NSLOTS, req] = rq[R_FANOUT, req]
    return DONE_OK


@njit(cache=True, inline="always")
def _commit_decodes(ri, rf, rq, kva, pk, end_s, caches, page):
    """The planned step's decode tokens are in (``_commit``'s decode part): inter-token
    gaps, context, generated tokens; the requests whose sequences reached their target
    are listed in ``K_IDS`` (in arrival order) for the caller to finish. Returns how many."""
    s = ri[H_S]
    o_ctx = H_HEADER + K_CTX * s
    o_gen = H_HEADER + K_GEN * s
    o_tgt = H_HEADER + K_TGT * s
    o_owner = H_HEADER + K_OWNER * s
    o_dec = H_HEADER + K_DEC * s
    o_ids = H_HEADER + K_IDS * s
    o_itl = H_HEADER + K_ITL * s
    o_last = F_HEADER
    ndec = ri[H_NDEC]
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
        if (caches and ri[o_ctx + slot] % page == 0 and ri[o_owner + slot] >= 0
                and rq[R_SLOT, ri[o_owner + slot]] == slot):
            # This token filled a page of a group's first sequence: cache it (the
            # reference does so after every sequence's context grew and before any
            # token count does; neither is read).
            _cache_computed(ri, rq, kva, pk, ri[o_owner + slot], slot, ri[o_ctx + slot], end_s)
        g = ri[o_gen + slot] + 1
        ri[o_gen + slot] = g
        rf[o_last + slot] = end_s
        if g >= ri[o_tgt + slot]:
            req = ri[o_owner + slot]
            listed = False  # a group's sequences finish together: list it once
            for k in range(nfin):
                if ri[o_ids + k] == req:
                    listed = True
                    break
            if req >= 0 and rq[R_PHASE, req] == DECODE and not listed:
                # Finishing requests, in arrival order (insertion sort; few at a time).
                pos = nfin
                while pos > 0 and rq[R_ORDER, ri[o_ids + pos - 1]] > rq[R_ORDER, req]:
                    ri[o_ids + pos] = ri[o_ids + pos - 1]
                    pos -= 1
                ri[o_ids + pos] = req
                nfin += 1
    ri[H_ITL_N] += ndec
    return nfin


@njit(cache=True, inline="always")
def _write_row(ri, rf, wq, rq, kva, sf, si, sq, ss, running, npf, ndec):
    """The committed step's row (``_commit``'s tail)."""
    s = ri[H_S]
    # The step row, with the memory split after the step (the manager's ``stats``; the
    # queue head's reservation counts as pending: ``ReferenceReplica._mem_stats``; pages
    # held only by a prefix cache are cached slots).
    row = ri[H_ROW]
    sf[SF_T, row] = rf[F_T]
    sf[SF_D, row] = rf[F_D]
    sf[SF_A, row] = rf[F_A]
    sf[SF_SWAP, row] = rf[F_SWAPB] / rf[F_HEADER + s] if rf[F_SWAPB] else 0.0
    # The split by bound: the planned step's cost parts, swap time in communication.
    _cost.scale_split(rf, F_HEADER + s + _mem.RF_TAIL + 1, sf[SF_SWAP, row], rf[F_D], ss, row)
    pending = 0
    if ri[H_NWAIT] > 0 and ri[_mem.H_KV] == _mem.KV_CONTIGUOUS:
        head = wq[ri[H_WHEAD]]
        pending = _mem.reservation_slots(ri[_mem.H_RESV], ri[_mem.H_MAXLEN], rq[R_TARGET, head],
                                         rq[R_PROMPT, head] + rq[R_OUTPUT, head])
    tokens, reserved, internal, external, cached, free = _mem.memory_split(ri, kva, pending)
    si[SI_RUN, row] = running
    si[SI_NPF, row] = npf
    si[SI_PT, row] = ri[H_P]
    si[SI_DT, row] = ndec
    si[SI_DSEQ, row] = ndec + ri[H_PADSEQ]
    si[SI_Q, row] = ri[H_NWAIT] + ri[H_NSWAP]
    si[SI_PRE, row] = ri[H_NPRE]
    si[SI_TOK, row] = tokens
    si[SI_RES, row] = reserved
    si[SI_INT, row] = internal
    si[SI_EXT, row] = external
    si[SI_FREE, row] = free
    si[SI_CACHED, row] = cached
    si[SI_SAMP, row] = ri[H_SAMP]
    sq[SQ_KV, row] = ri[H_K]
    sq[SQ_CTX, row] = ri[H_CTXSUM]
    sq[SQ_PQ, row] = ri[H_PQ]
    sq[SQ_HIT, row] = ri[H_HIT]
    ri[H_ROW] = row + 1
    ri[H_NSTEPS] += 1


@njit(cache=True)
def _commit(ri, rf, wq, rq, rqf, kva, pk, sf, si, sq, ss):
    """End the step in flight: tokens, first tokens, finishes, then its step row."""
    s = ri[H_S]
    o_ctx = H_HEADER + K_CTX * s
    o_gen = H_HEADER + K_GEN * s
    o_chunk = H_HEADER + K_CHUNK * s
    o_ids = H_HEADER + K_IDS * s
    o_next = H_HEADER + K_NEXT * s
    o_last = F_HEADER
    end_s = rf[F_ECUR]
    caches = ri[H_CACHES] == 1
    page = _mem.page_tokens(ri, kva) if caches else 1
    npf = ri[H_NPF]
    for c in range(npf):
        req = ri[o_chunk + 3 * c]
        comp = rq[R_COMPUTED, req] + ri[o_chunk + 3 * c + 1]
        rq[R_COMPUTED, req] = comp
        slot = rq[R_SLOT, req]
        while slot >= 0:
            ri[o_ctx + slot] = comp
            slot = ri[o_next + slot]
        if caches:
            _cache_computed(ri, rq, kva, pk, req, rq[R_SLOT, req], comp, end_s)
        if comp < rq[R_TARGET, req]:
            continue
        g = rq[R_GEN, req] + 1
        rq[R_GEN, req] = g
        recomputed = rq[R_FTD, req] == 1
        if not recomputed:
            rq[R_FTD, req] = 1
            rqf[Q_FIRST_TOKEN, req] = end_s
        if ri[H_SHARING] == 1 and rq[R_FANOUT, req] > 1 and rq[R_NSLOTS, req] == 1:
            if _fork_group(ri, rq, kva, req, g) < 0:
                return ERR_FORK
        slot = rq[R_SLOT, req]
        while slot >= 0:
            if recomputed:  # a recompute's prefill emits each sequence's next token
                gap = end_s - rqf[Q_LASTTOK, req]
                ri[H_HEADER + K_ITL * s + _itl_bin(gap)] += 1
                rf[F_ITL_SUM] += gap
                rf[F_ITL_SQ] += gap * gap
                ri[H_ITL_N] += 1
            ri[o_gen + slot] = g
            rf[o_last + slot] = end_s
            slot = ri[o_next + slot]
        rq[R_PHASE, req] = DECODE
        if g >= rq[R_OUTPUT, req]:
            _finish(ri, rq, rqf, kva, pk, req, end_s)
    ndec = ri[H_NDEC]
    if ndec > 0:
        nfin = _commit_decodes(ri, rf, rq, kva, pk, end_s, caches, page)
        for j in range(nfin):
            req = ri[o_ids + j]
            rq[R_GEN, req] = ri[o_gen + rq[R_SLOT, req]]
            _finish(ri, rq, rqf, kva, pk, req, end_s)
    running = ndec
    for c in range(npf):
        running += rq[R_NSLOTS, ri[o_chunk + 3 * c]]
    _write_row(ri, rf, wq, rq, kva, sf, si, sq, ss, running, npf, ndec)
    rf[F_T] = end_s
    ri[H_INFLIGHT] = 0
    if ri[H_POLICY] == POLICY_STATIC:
        _end_static_batch(ri, rq, rqf, kva, pk, end_s)
    return DONE_OK


@njit(cache=True)
def _static_padding(ri, rq):
    """Static batching's padding (``StaticScheduler.schedule``): a batch's prompts are
    computed padded to its longest, and finished members keep being computed in its decode
    steps. Returns (prefill tokens, sequences, context tokens) of padding."""
    s = ri[H_S]
    npf = ri[H_NPF]
    if npf > 0:
        o_chunk = H_HEADER + K_CHUNK * s
        longest = 0
        for c in range(npf):
            t = rq[R_TARGET, ri[o_chunk + 3 * c]]
            if t > longest:
                longest = t
        pad = 0
        for c in range(npf):
            pad += longest - rq[R_TARGET, ri[o_chunk + 3 * c]]
        return pad, 0, 0
    o_run = H_HEADER + K_RUN * s
    o_ctx = H_HEADER + K_CTX * s
    o_next = H_HEADER + K_NEXT * s
    seqs = 0
    ctx = 0
    for i in range(ri[H_NRUN]):
        req = ri[o_run + i]
        if rq[R_PHASE, req] == DONE:
            slot = rq[R_SLOT, req]
            while slot >= 0:
                seqs += 1
                ctx += ri[o_ctx + slot]
                slot = ri[o_next + slot]
    return 0, seqs, ctx


@njit(cache=True)
def _start_step(ri, rf, rq, cf, mt):
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
            samp += rq[R_FANOUT, req]  # a completed prompt samples each sequence's token
    ndec = ri[H_NDEC]
    ctx_sum = 0
    for j in range(ndec):
        ctx_sum += ri[o_ctx + ri[o_dec + j]]
    ri[H_PADSEQ] = 0
    if ri[H_POLICY] == POLICY_STATIC:
        pad_p, pad_seqs, pad_ctx = _static_padding(ri, rq)
        p += pad_p
        ri[H_PADSEQ] = pad_seqs
        ndec += pad_seqs
        ctx_sum += pad_ctx
    ri[H_P] = p
    ri[H_K] = kv
    ri[H_SAMP] = samp
    ri[H_CTXSUM] = ctx_sum
    rf[F_A] = pairs
    # (A decode-only step has p = pairs = kv = samp = 0: the reference's decode-only call.)
    o_cost = F_HEADER + s + _mem.RF_TAIL
    if not _cost.step_cost(cf, mt, float(p), pairs, float(kv), float(samp), float(ndec), float(ctx_sum),
                           rf[o_cost : o_cost + _cost.COST_WORDS]):
        ri[H_COSTWAIT] = 1
        return NEED_COST
    ri[H_COSTWAIT] = 0
    swap_s = rf[F_SWAPB] / rf[F_HEADER + s] if rf[F_SWAPB] else 0.0
    d = rf[o_cost] + swap_s
    rf[F_D] = d
    rf[F_ECUR] = rf[F_T] + d
    ri[H_INFLIGHT] = 1
    return DONE_OK


@njit(cache=True)
def _decode_stretch(ri, rf, wq, rq, kva, pk, cf, mt, sf, si, sq, ss, until_s):
    """Commit the decode-only step in flight and run the following decode steps of the same
    batch, one at a time, while each ends before ``until_s``: exactly what :func:`advance`'s
    loop does for them (:func:`_commit`, :func:`_plan`, :func:`_start_step`), in one call.

    NOTE(speed): most steps of a serving hour decode the same batch; this is their loop
    without the general path's calls, scans and reference counting (a numba call counts
    references to each array it passes, which cost as much as a decode step's work).
    It applies while nothing but decoding can happen: nothing queued (static batching: a
    running batch plans no admission) or swapped out, no prompt left to compute (static: the
    batch's finished members stay as padding, costed by :func:`_start_step`), a packed cost
    (no memo to miss), and no sequence reaching its target (that commit finishes requests, and
    may end a static batch: the general path does it). The plan is then
    ``_decode_with_preemption``'s over an unchanged running list, so the batch (``K_DEC``)
    stands; the first grow that does not fit changed nothing and returns
    to the general path, which plans the step again (preempting). Returns the steps
    committed (0: not applicable; the step in flight is untouched).
    """
    ndec = ri[H_NDEC]
    static = ri[H_POLICY] == POLICY_STATIC
    if ri[H_NPF] != 0 or ndec == 0 or ri[H_NSWAP] != 0 or cf.shape[0] == 0 or (ri[H_NWAIT] != 0 and not static):
        return 0
    s = ri[H_S]
    o_run = H_HEADER + K_RUN * s
    for i in range(ri[H_NRUN]):
        ph = rq[R_PHASE, ri[o_run + i]]
        if ph != DECODE and not (static and ph == DONE):
            return 0
    o_ctx = H_HEADER + K_CTX * s
    o_dec = H_HEADER + K_DEC * s
    o_tot = H_HEADER + K_TOT * s
    o_gen = H_HEADER + K_GEN * s
    o_tgt = H_HEADER + K_TGT * s
    # Commits before one that reaches a target (every sequence gains a token per step).
    left = ri[o_tgt + ri[o_dec]] - ri[o_gen + ri[o_dec]] - 1
    for j in range(1, ndec):
        slot = ri[o_dec + j]
        k = ri[o_tgt + slot] - ri[o_gen + slot] - 1
        if k < left:
            left = k
    caches = ri[H_CACHES] == 1
    page = _mem.page_tokens(ri, kva) if caches else 1
    # _start_step of a decode step of this batch, inline (static batching costs its padding
    # there): every sequence gains a token a step, so the context sum gains ``ndec``.
    ctx_sum = ri[H_CTXSUM]
    o_cost = F_HEADER + s + _mem.RF_TAIL
    cost = rf[o_cost : o_cost + _cost.COST_WORDS]
    steps = 0
    while left > 0 and rf[F_ECUR] < until_s and ri[H_ROW] < ri[H_ROWCAP]:
        end_s = rf[F_ECUR]
        _commit_decodes(ri, rf, rq, kva, pk, end_s, caches, page)  # finishes none
        _write_row(ri, rf, wq, rq, kva, sf, si, sq, ss, ndec, 0, ndec)
        rf[F_T] = end_s
        ri[H_INFLIGHT] = 0
        steps += 1
        left -= 1
        # _plan: nothing queued, swapped or left to prefill: the decode step of the batch.
        ri[H_NDEC] = 0
        ri[H_NPRE] = 0
        rf[F_SWAPB] = 0.0
        for j in range(ndec):
            ri[o_tot + j] = ri[o_ctx + ri[o_dec + j]] + 1
        if kv_grow(ri, kva, ri[o_dec : o_dec + ndec], ri[o_tot : o_tot + ndec]) != _blocks.OK:
            break  # nothing changed: the general path plans this step (preempts, or reports misuse)
        ri[H_NDEC] = ndec
        if static:
            _start_step(ri, rf, rq, cf, mt)
            continue
        ctx_sum += ndec
        ri[H_P] = 0
        ri[H_K] = 0
        ri[H_SAMP] = 0
        ri[H_CTXSUM] = ctx_sum
        ri[H_PADSEQ] = 0
        rf[F_A] = 0.0
        _cost.packed_step_cost(cf, 0.0, 0.0, 0.0, 0.0, float(ndec), float(ctx_sum), cost)
        d = cost[0]
        rf[F_D] = d
        rf[F_ECUR] = rf[F_T] + d
        ri[H_INFLIGHT] = 1
    return steps


@njit(cache=True)
def advance(ri, rf, wq, rq, rqf, kva, pk, cf, mt, sf, si, sq, ss, until_s, new_req):
    """Run the replica up to ``until_s``, then queue ``new_req`` (``-1``: none) arriving then.

    Commits every step ending before ``until_s`` and plans the next one as each ends;
    returns :data:`ROWS_FULL` (nothing else done; call again with a fresh row chunk) when
    the step rows are full, :data:`NEED_COST` (call again once the memo ``mt`` has the
    planned step's cost) when it is not in the memo, :data:`DONE_OK`, or a negative error code.
    """
    return _advance(borrowed(ri), borrowed(rf), borrowed(wq), borrowed(rq), borrowed(rqf),
                    borrowed(kva), borrowed(pk), borrowed(cf), borrowed(mt), borrowed(sf),
                    borrowed(si), borrowed(sq), borrowed(ss), until_s, new_req)


@njit(cache=True)
def _advance(ri, rf, wq, rq, rqf, kva, pk, cf, mt, sf, si, sq, ss, until_s, new_req):
    """:func:`advance` on borrowed views (:func:`~servesim.simulator.jit.borrowed`)."""
    while True:
        if ri[H_INFLIGHT] == 1:
            if rf[F_ECUR] < until_s:
                if ri[H_ROW] >= ri[H_ROWCAP]:
                    return ROWS_FULL
                if (ri[H_NPF] == 0 and ri[H_NSWAP] == 0
                        and _decode_stretch(ri, rf, wq, rq, kva, pk, cf, mt, sf, si, sq, ss, until_s) > 0):
                    continue
                status = _commit(ri, rf, wq, rq, rqf, kva, pk, sf, si, sq, ss)
                if status < 0:
                    return status
                continue
            break
        if ri[H_COSTWAIT] == 1:  # resumed after NEED_COST: the plan stands, cost it now
            if _start_step(ri, rf, rq, cf, mt) == NEED_COST:
                return NEED_COST
            continue
        if ri[H_IDLE] == 1 or rf[F_T] >= until_s:
            break
        if ri[H_NWAIT] == 0 and ri[H_NRUN] == 0 and ri[H_NSWAP] == 0:
            ri[H_IDLE] = 1
            break
        status = _plan(ri, rf, wq, rq, rqf, kva, pk)
        if status < 0:
            return status
        if ri[H_NPF] == 0 and ri[H_NDEC] == 0:
            if ri[H_NRUN] > 0 or ri[H_NSWAP] > 0:
                return ERR_EMPTY
            # Queued requests that cannot be admitted into an empty replica: wait for a change.
            ri[H_IDLE] = 1
            break
        if _start_step(ri, rf, rq, cf, mt) == NEED_COST:
            return NEED_COST
    if new_req >= 0:
        _push_back(ri, wq, new_req)
        if ri[H_IDLE] == 1:
            ri[H_IDLE] = 0
            if until_s > rf[F_T]:
                rf[F_T] = until_s
    return DONE_OK


@njit(cache=True)
def advance_many(ri, rf, wq, rq, rqf, kva, pk, cf, mt, sf, si, sq, ss, times_s, reqs, pos):
    """:func:`advance` to each ``times_s[k]`` and queue ``reqs[k]``, for ``k`` from ``pos`` on:
    a replica's arrivals in one call when nothing else can happen between them (a router
    that reads no replica state). Returns ``(status, k)``: :data:`DONE_OK` with ``k`` the
    length, or the first other status with ``k`` the arrival not yet queued (call again
    from there once the facade has handled it)."""
    ri, rf, wq, rq, rqf = borrowed(ri), borrowed(rf), borrowed(wq), borrowed(rq), borrowed(rqf)
    kva, pk, cf, mt = borrowed(kva), borrowed(pk), borrowed(cf), borrowed(mt)
    sf, si, sq, ss = borrowed(sf), borrowed(si), borrowed(sq), borrowed(ss)
    n = reqs.shape[0]
    while pos < n:
        status = _advance(ri, rf, wq, rq, rqf, kva, pk, cf, mt, sf, si, sq, ss, times_s[pos], reqs[pos])
        if status != DONE_OK:
            return status, pos
        pos += 1
    return DONE_OK, pos


@njit(cache=True)
def advance_stepwise(ri, rf, wq, rq, rqf, kva, pk, cf, mt, sf, si, sq, ss, peek_s):
    """Stepwise (dependent requests): process this replica's SimPy event at ``rf[F_VNOW]``
    - commit the step ending then (or, woken from idle, nothing) and plan the next - and go
    on with the following step ends while each would be SimPy's next event anyway.

    The reference replica's step timeout fires at ``now + max(end - now, 0)`` (SimPy's
    clock, ``now`` the event that planned it); while that is before ``peek_s`` (the earliest
    other scheduled event) nothing else can happen in between, so it is processed here with
    ``rf[F_VNOW]`` as the clock. Stops after an event that finished requests (the facade
    reports them at ``rf[F_VNOW]``: recorder, dependents' releases), when idle, or when the
    next step end is not the next event. Returns :data:`ROWS_FULL` (call again with a fresh
    row chunk), :data:`NEED_COST` (call again once the memo has the planned step's cost),
    :data:`DONE_OK` or a negative error code.
    """
    ri, rf, wq, rq, rqf = borrowed(ri), borrowed(rf), borrowed(wq), borrowed(rq), borrowed(rqf)
    kva, pk, cf, mt = borrowed(kva), borrowed(pk), borrowed(cf), borrowed(mt)
    sf, si, sq, ss = borrowed(sf), borrowed(si), borrowed(sq), borrowed(ss)
    vnow = rf[F_VNOW]
    while True:
        if ri[H_COSTWAIT] == 0:
            if ri[H_INFLIGHT] == 1:
                if ri[H_ROW] >= ri[H_ROWCAP]:
                    return ROWS_FULL
                status = _commit(ri, rf, wq, rq, rqf, kva, pk, sf, si, sq, ss)
                if status < 0:
                    return status
            if ri[H_NWAIT] == 0 and ri[H_NRUN] == 0 and ri[H_NSWAP] == 0:
                ri[H_IDLE] = 1
                return DONE_OK
            status = _plan(ri, rf, wq, rq, rqf, kva, pk)
            if status < 0:
                return status
            if ri[H_NPF] == 0 and ri[H_NDEC] == 0:
                if ri[H_NRUN] > 0 or ri[H_NSWAP] > 0:
                    return ERR_EMPTY
                ri[H_IDLE] = 1  # queued requests that cannot be admitted into an empty replica
                return DONE_OK
        # (resumed after NEED_COST: the plan stands, cost it now)
        if _start_step(ri, rf, rq, cf, mt) == NEED_COST:
            return NEED_COST
        if ri[H_NFIN] > 0:
            return DONE_OK
        d = rf[F_ECUR] - vnow
        t_event = vnow + (d if d > 0.0 else 0.0)  # SimPy's schedule(): now + delay
        if not t_event < peek_s:
            return DONE_OK
        vnow = t_event
        rf[F_VNOW] = vnow


@njit(cache=True)
def kv_tokens_held(ri, rq):
    """Context tokens of the running requests (the least-KV-load router's numerator)."""
    s = ri[H_S]
    o_run = H_HEADER + K_RUN * s
    o_ctx = H_HEADER + K_CTX * s
    o_next = H_HEADER + K_NEXT * s
    total = 0
    for i in range(ri[H_NRUN]):
        slot = rq[R_SLOT, ri[o_run + i]]
        while slot >= 0:
            total += ri[o_ctx + slot]
            slot = ri[o_next + slot]
    return total
