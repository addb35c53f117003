"""The packed step cost: one float64 array + one numba function, for every fast caller.

:class:`hwmodels.stepcost.StepCostModel` keeps the readable reference (``_evaluate``, which
also splits the time by bound and per operator). Everything that costs steps in a loop (the
Python engine's per-step call, its decode stretches, the compiled replica loop) evaluates the
*packed form* instead: :meth:`StepCostModel.packed` lays the precomputed coefficients out in
one float64 array ``cf`` and :func:`packed_step_time_s` evaluates a step from it. The function
is ``numba.njit``-compiled, so it is called the same way from Python and from other numba
kernels. It performs the reference's float operations in the reference's order (IEEE
``+ - * /``, ``ceil`` and ``pow`` compile to the same operations as interpreted Python; numba
neither contracts nor reassociates without ``fastmath``), and ``tests/hwmodels/
test_stepkernel.py`` pins the two bit for bit on every bundled model shape under TP and PP. A
mismatch is a failing test: there is no runtime probe and no silent fallback.

Pack layout (float64)::

    [0:P_HEADER]          scalars (P_* indices below)
    [P_HEADER:+n_graph]   CUDA-graph capture sizes in tokens, ascending (n_graph = cf[P_NUM_GRAPH])
    then n_ar x 3 floats: the all-reduce law's segments (x tokens, y seconds, s seconds/token),
                          x ascending from 0 (n_ar = cf[P_AR_NPTS])
    then per pipeline stage: its layer count of each kind (n_stages x n_kinds floats)
    then per layer kind:  n_layers, n_gemms, ll_s, ll_s_per_token, normal_s, normal_s_per_token
                          (all-to-all of DeepEP's low-latency / normal kernels, dispatch +
                          combine), ll_dispatch_s, ll_dispatch_s_per_token, normal_dispatch_s,
                          normal_dispatch_s_per_token (the dispatch alone; KIND_FIELDS), then
                          GEMM_FIELDS floats per GEMM (routed, s_tok, s_c0, s_dq, s_m0, s_mw,
                          s_mt, copies, active, ep, slots, sigma, kmax, mlp_side); for routed experts
                          under expert parallelism ``copies`` is the slots one rank holds,
                          ``slots`` all slots (experts + redundant), ``sigma`` the max-load
                          coefficient (hwmodels.stepcost.expert_max_load_sigma), ``kmax`` the
                          most rows one token can put on one rank

One step, with ``T = prefill + decode tokens`` and ``Tg`` = T padded up to the next CUDA-graph
capture size when the step runs as a graph (the stack profile decides which steps do)::

    (attention data parallel, dp = cf[P_DP] > 1: every input is first cut to one rank's share,
     ceil(pf / dp) prefill and ceil(ndec / dp) decode tokens with their pairs and context)
    layer   = ew(Tg) + 2 allreduce(Tg) + prefill_attn + decode_attn + sum_g gemm_g(Tg)
              + a2a(Tg)   dispatch + combine (MoE layers under attention DP): normal_s +
                          normal_s_per_token Tg with prefill, ll_s + ll_s_per_token Tg without
    routed gemm under EP: rows on the busiest rank min(Tm k / ep + sigma sqrt(Tm), Tm kmax),
              Tm = Tg dp (the tokens of every rank of the group)
    allreduce(T) = y_i + (T - x_i) s_i on the last segment with x_i <= T (piecewise linear in
              the message size: measured all-reduce times, hwmodels/data/achievable.yaml)
    time    = sum_kind n_layers x layer + lm_head(sampled rows) + (pp-1) p2p(Tg)
              + host_overhead + host_overhead_per_seq x (sampled rows)

    two-batch overlap (cf[P_TBO] = 1, a rank's step of >= 2 tokens; packed_tbo_step): the
    layers run on one micro-batch of ceil(x / 2) tokens, x = attention side (elementwise,
    all-reduces, attention, GEMMs with mlp_side 0), m = MLP side, d / k = its dispatch /
    combine, and one layer = slot(x, d) + slot(m, d) + slot(m, k) + slot(x, k) with
    slot(c, q) = phi q + max((1 - phi) q, c + s (1 - phi) q) (phi, s of the kernel family)
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from numba import njit

P_LAUNCH = 0
P_TILE = 1
P_KVL = 2
P_QO = 3
P_BH = 4
P_PF_PEAK = 5
P_PF_FH = 6
P_PF_BW = 7
P_DEC_PEAK = 8
P_DEC_FH = 9
P_DEC_BW = 10
P_EW_CONST = 11
P_EW_PER_BYTE = 12
P_EW_BYTES = 13
P_AR_NPTS = 14
P_FPP_PREFILL = 15
P_FPP_DECODE = 16
P_WINDOW = 17
P_H_TOK = 18
P_H_C0 = 19
P_H_DQ = 20
P_H_M0 = 21
P_H_MT = 22
P_PP_MINUS_1 = 23
P_P2P_CONST = 24
P_P2P_PER_TOKEN = 25
P_OVERHEAD = 26
P_OVERHEAD_PER_SEQ = 27
#: 0: no CUDA graphs; 1: decode-only steps run as graphs; 2: every step up to the largest size.
P_GRAPH_MODE = 28
P_NUM_GRAPH = 29
P_NUM_KINDS = 30
P_NUM_STAGES = 31
#: Version stamp of this module's code, stored in every pack. numba's on-disk cache keys a
#: kernel on its *own* source file only, so a kernel elsewhere (the compiled replica loop) that
#: inlined an older ``packed_step_time_s`` survives a change of this module and would misread
#: a new pack; every evaluation compares the stamp compiled into it with the pack's and raises.
P_LAYOUT = 32
#: Attention data-parallel ranks per TP group (1: off). Each rank runs ``1/dp`` of the
#: replica's batch (its own requests) through attention, the dense GEMMs and the LM head;
#: routed experts see the whole group's tokens (expert parallelism, all-to-all).
P_DP = 33
#: Two-batch overlap (1: on): the overlap parameters of DeepEP's low-latency (decode-only
#: steps) and normal kernels: phi = share of a kernel's time it holds every SM (cannot overlap),
#: s = share of the SMs it holds while in flight (slows the overlapped compute).
P_TBO = 34
P_TBO_LL_PHI = 35
P_TBO_LL_S = 36
P_TBO_NM_PHI = 37
P_TBO_NM_S = 38
P_HEADER = 39


def _source_stamp() -> float:
    try:
        return float(zlib.crc32(Path(__file__).read_bytes()) & 0xFFFFFF)
    except OSError:  # no source file (frozen install): a fixed stamp
        return 1.0


LAYOUT_VERSION = _source_stamp()
_STALE = ("step-cost pack from a newer hwmodels.stepkernel than the compiled caller: a stale numba "
          "cache; delete the __pycache__/*.nbi and *.nbc files (or NUMBA_CACHE_DIR) and rerun")
GEMM_FIELDS = 14
#: Floats before a layer kind's GEMMs: n_layers, n_gemms, then one layer's all-to-all seconds
#: (constant, per token) of DeepEP's low-latency kernels (decode-only steps) and of its normal
#: kernels (steps with prefill), then the same for the dispatch alone (two-batch overlap).
KIND_FIELDS = 10
#: Fields :func:`packed_step_cost` writes, in order (``StepCostArrays``' fields).
COST_FIELDS = ("time_s", "compute_s", "weight_read_s", "kv_read_s", "comm_s", "overhead_s", "bottleneck_stage_s")


@njit(cache=True, inline="always")
def _padded(m: float, tiles: float, tile: float) -> float:
    return tiles * tile if m > tile else math.ceil(m / 16.0) * 16.0


@njit(cache=True, inline="always")
def _gemm_s(cf, pos, Tg, Tm, mp, tiles, tile, bh):
    """(compute, memory) seconds of the GEMM packed at ``cf[pos:pos + GEMM_FIELDS]``: one
    formula for every caller, so a new term is written once. A routed (MoE) GEMM touches
    ``e (1 - (1 - k/e)^T)`` experts, each with its share of the ``T k`` routed rows; under
    expert parallelism (``ep > 1``) the busiest rank's ``e`` slots (of ``slots``) and its
    expected maximum load ``min(Tm k / ep + sigma sqrt(Tm), Tm kmax)`` rows, ``Tm`` the tokens
    of the whole EP group."""
    routed = cf[pos]
    s_tok = cf[pos + 1]
    s_c0 = cf[pos + 2]
    s_dq = cf[pos + 3]
    s_m0 = cf[pos + 4]
    s_mw = cf[pos + 5]
    s_mt = cf[pos + 6]
    e = cf[pos + 7]
    k = cf[pos + 8]
    if routed != 0.0:
        ep = cf[pos + 9]
        if ep == 1.0:
            touched = e * (1.0 - (1.0 - k / e) ** Tg)
            m_e = Tg * k / touched
            t_e = float(math.ceil(m_e / tile))
            mp_e = _padded(m_e, t_e, tile)
            return touched * (s_tok * mp_e + s_c0 + s_dq * t_e), touched * s_mw + bh + s_mt * Tg * k
        touched = e * (1.0 - (1.0 - k / cf[pos + 10]) ** Tm)
        rows = Tm * k / ep + cf[pos + 11] * math.sqrt(Tm)
        cap = Tm * cf[pos + 12]
        if rows > cap:
            rows = cap
        m_e = rows / touched
        t_e = float(math.ceil(m_e / tile))
        mp_e = _padded(m_e, t_e, tile)
        return touched * (s_tok * mp_e + s_c0 + s_dq * t_e), touched * s_mw + bh + s_mt * rows
    return s_tok * mp + s_c0 + s_dq * tiles, s_m0 + s_mt * Tg


@njit(cache=True, inline="always")
def local_share(cf, pf, pairs, kv_tokens, num_prefill_seqs, ndec, ctx):
    """One attention-data-parallel rank's share of a step's inputs (``cf[P_DP]`` ranks): the
    replica's requests spread evenly, so the busiest rank holds ``ceil(x / dp)`` prefill
    tokens, sampled prefill rows and decode sequences, with the same mean attention pairs and
    context per token as the whole batch. With ``dp == 1`` the inputs, unchanged."""
    dp = cf[P_DP]
    if dp == 1.0:
        return pf, pairs, kv_tokens, num_prefill_seqs, ndec, ctx
    if pf > 0.0:
        pf_l = float(math.ceil(pf / dp))
        pairs = pairs * (pf_l / pf)
        kv_tokens = kv_tokens * (pf_l / pf)
        pf = pf_l
    num_prefill_seqs = float(math.ceil(num_prefill_seqs / dp))
    if ndec > 0.0:
        nd_l = float(math.ceil(ndec / dp))
        ctx = ctx * (nd_l / ndec)
        ndec = nd_l
    return pf, pairs, kv_tokens, num_prefill_seqs, ndec, ctx


@njit(cache=True, inline="always")
def graph_tokens(cf, T, pf):
    """Tokens a step computes on: ``T`` padded up to the next CUDA-graph capture size, when
    the step runs as a captured graph (``P_GRAPH_MODE``) and ``T`` is within the largest."""
    mode = cf[P_GRAPH_MODE]
    n = int(cf[P_NUM_GRAPH])
    if mode == 0.0 or n == 0 or (mode == 1.0 and pf > 0.0):
        return T
    lo = P_HEADER
    hi = P_HEADER + n
    if T > cf[hi - 1]:
        return T
    while lo < hi:  # first capture size >= T
        mid = (lo + hi) // 2
        if cf[mid] < T:
            lo = mid + 1
        else:
            hi = mid
    return cf[lo]


@njit(cache=True, inline="always")
def allreduce_s(cf, T):
    """One all-reduce of ``T`` tokens: the last segment with ``x_i <= T`` (``x_0 = 0``)."""
    base = P_HEADER + int(cf[P_NUM_GRAPH])
    i = int(cf[P_AR_NPTS]) - 1
    while i > 0 and cf[base + 3 * i] > T:
        i -= 1
    p = base + 3 * i
    return cf[p + 1] + (T - cf[p]) * cf[p + 2]


@njit(cache=True)
def tbo_half(pf, pairs, kv_tokens, ndec, ctx):
    """One micro-batch of two-batch overlap: ``ceil(x / 2)`` of a rank's prefill tokens and
    decode sequences, with the attention pairs, prefill KV and context scaled alike (the
    busier of the two halves)."""
    if pf > 0.0:
        pf_h = float(math.ceil(pf / 2.0))
        pairs = pairs * (pf_h / pf)
        kv_tokens = kv_tokens * (pf_h / pf)
        pf = pf_h
    if ndec > 0.0:
        nd_h = float(math.ceil(ndec / 2.0))
        ctx = ctx * (nd_h / ndec)
        ndec = nd_h
    return pf, pairs, kv_tokens, ndec, ctx


@njit(cache=True)
def tbo_slot(c, q, phi, s):
    """One stage of two-batch overlap: compute ``c`` of one micro-batch beside the other's
    communication kernel of ``q`` seconds, which holds every SM for ``phi q`` (not hidden)
    and a share ``s`` of them while in flight (slowing the compute beside it)."""
    rest = (1.0 - phi) * q
    busy = c + s * rest
    return phi * q + (rest if rest > busy else busy)


@njit(cache=True, inline="always")
def _layer_prologue(cf, pf, pairs, kv_tokens, ndec, ctx):
    """What every layer of a step shares, for :func:`packed_step_cost` and
    :func:`packed_tbo_step` (one rank's, or one micro-batch's, tokens): the padded GEMM rows,
    the elementwise and all-reduce seconds, both attentions split by bound (``common`` their
    sum, ``a_comp`` / ``a_kv`` the compute- / KV-bound part), the kind and stage counts and the
    pack positions of the stage table and the first kind. One copy of the reference's float
    operations in its order, so both callers stay bit for bit."""
    T = pf + ndec
    Tg = graph_tokens(cf, T, pf)
    Tm = Tg * cf[P_DP]
    window = cf[P_WINDOW]
    if window != 0.0:
        pairs = min(pairs, pf * window)
        ctx = min(ctx, ndec * window)
    launch = cf[P_LAUNCH]
    tile = cf[P_TILE]
    tiles = float(math.ceil(Tg / tile))
    mp = _padded(Tg, tiles, tile)
    kvl = cf[P_KVL]
    qo = cf[P_QO]
    bh = cf[P_BH]
    t_ew = cf[P_EW_CONST] + cf[P_EW_PER_BYTE] * cf[P_EW_BYTES] * Tg
    t_ar = 2.0 * allreduce_s(cf, Tg)
    att_p = 0.0
    c_p = 0.0
    if pf > 0.0:
        tc = cf[P_FPP_PREFILL] * pairs / cf[P_PF_PEAK] + cf[P_PF_FH]
        tm = (kvl * (kv_tokens + pf) + qo * pf) / cf[P_PF_BW] + bh
        att_p = launch + (tc if tc > tm else tm)
        c_p = 1.0 if tc >= tm else 0.0
    att_d = 0.0
    c_d = 0.0
    if ndec > 0.0:
        tc = cf[P_FPP_DECODE] * ctx / cf[P_DEC_PEAK] + cf[P_DEC_FH]
        tm = (kvl * (ctx + ndec) + qo * ndec) / cf[P_DEC_BW] + bh
        att_d = launch + (tc if tc > tm else tm)
        c_d = 1.0 if tc >= tm else 0.0
    common = t_ew + t_ar + att_p + att_d
    a_comp = att_p * c_p + att_d * c_d
    a_kv = att_p + att_d - a_comp
    n_kinds = int(cf[P_NUM_KINDS])
    n_stages = int(cf[P_NUM_STAGES])
    stage_pos = P_HEADER + int(cf[P_NUM_GRAPH]) + 3 * int(cf[P_AR_NPTS])
    pos = stage_pos + n_stages * n_kinds
    return (Tg, Tm, launch, tile, tiles, mp, bh, t_ew, t_ar, common, a_comp, a_kv, n_kinds, n_stages, stage_pos,
            pos)


@njit(cache=True, inline="always")
def _step_epilogue(cf, rows, Tg, launch, tile, total, comp, mem, kv, comm, layer_t, n_stages, n_kinds, stage_pos,
                   out):
    """Ends :func:`packed_step_cost` and :func:`packed_tbo_step` alike: the LM head on the
    sampled ``rows``, the pipeline sends of ``Tg`` tokens, the host overhead and the busiest
    stage (``layer_t``: one layer's seconds per kind, read only with pipelining), written to
    ``out`` (:data:`COST_FIELDS`)."""
    t_h = 0.0
    head_c = 0.0
    if rows > 0.0:
        h_tiles = float(math.ceil(rows / tile))
        h_mp = _padded(rows, h_tiles, tile)
        tc = cf[P_H_TOK] * h_mp + cf[P_H_C0] + cf[P_H_DQ] * h_tiles
        tm = cf[P_H_M0] + cf[P_H_MT] * rows
        t_h = launch + (tc if tc > tm else tm)
        head_c = t_h * (1.0 if tc >= tm else 0.0)
    total = total + t_h
    p2p = cf[P_P2P_CONST] + cf[P_P2P_PER_TOKEN] * Tg
    total = total + cf[P_PP_MINUS_1] * p2p
    over = cf[P_OVERHEAD] + cf[P_OVERHEAD_PER_SEQ] * rows
    comp = comp + head_c
    mem = mem + (t_h - head_c)
    comm = comm + cf[P_PP_MINUS_1] * p2p
    if n_stages == 1:
        worst = total
    else:
        worst = 0.0
        for st in range(n_stages):
            stage = 0.0
            for kd in range(n_kinds):
                stage = stage + cf[stage_pos + st * n_kinds + kd] * layer_t[kd]
            if st == n_stages - 1:
                stage = stage + t_h
            if st > 0:
                stage = stage + p2p
            worst = worst if worst >= stage else stage
    out[0] = total + over
    out[1] = comp
    out[2] = mem
    out[3] = kv
    out[4] = comm
    out[5] = over
    out[6] = worst


@njit(cache=True)
def packed_tbo_step(cf, pf, pairs, kv_tokens, num_prefill_seqs, ndec, ctx, out):
    """A step under two-batch overlap (one rank's share already taken, ``pf + ndec >= 2``):
    :func:`packed_step_cost`'s seven fields into ``out``. Every layer runs on a micro-batch of
    half the tokens (:func:`tbo_half`) as four overlapped stages (attention beside the other
    micro-batch's dispatch and combine, the MLP beside them too, :func:`tbo_slot`); the LM head,
    pipeline sends and host overhead on the whole step. The split by bound counts both
    micro-batches' kernels and the communication left exposed."""
    T_full = pf + ndec
    Tg_full = graph_tokens(cf, T_full, pf)
    rows = num_prefill_seqs + ndec
    pf, pairs, kv_tokens, ndec, ctx = tbo_half(pf, pairs, kv_tokens, ndec, ctx)
    (Tg, Tm, launch, tile, tiles, mp, bh, t_ew, t_ar, common, a_comp, a_kv, n_kinds, n_stages, stage_pos,
     pos) = _layer_prologue(cf, pf, pairs, kv_tokens, ndec, ctx)
    if pf > 0.0:
        phi = cf[P_TBO_NM_PHI]
        sms = cf[P_TBO_NM_S]
    else:
        phi = cf[P_TBO_LL_PHI]
        sms = cf[P_TBO_LL_S]
    layer_t = np.zeros(n_kinds) if n_stages > 1 else cf[:0]  # as packed_step_cost
    total = 0.0
    comp = 0.0
    mem = 0.0
    kv = 0.0
    comm = 0.0
    for kd in range(n_kinds):
        count = cf[pos]
        n_gemms = int(cf[pos + 1])
        if pf > 0.0:
            q = cf[pos + 4] + cf[pos + 5] * Tg
            qd = cf[pos + 8] + cf[pos + 9] * Tg
        else:
            q = cf[pos + 2] + cf[pos + 3] * Tg
            qd = cf[pos + 6] + cf[pos + 7] * Tg
        qk = q - qd
        pos += KIND_FIELDS
        x = common
        m = 0.0
        l_comp = a_comp
        l_mem = t_ew
        for _g in range(n_gemms):
            tc, tm = _gemm_s(cf, pos, Tg, Tm, mp, tiles, tile, bh)
            side = cf[pos + 13]
            pos += GEMM_FIELDS
            t = launch + (tc if tc > tm else tm)
            if side == 0.0:
                x = x + t
            else:
                m = m + t
            t_c = t * (1.0 if tc >= tm else 0.0)
            l_comp = l_comp + t_c
            l_mem = l_mem + (t - t_c)
        layer = tbo_slot(x, qd, phi, sms) + tbo_slot(m, qd, phi, sms) + tbo_slot(m, qk, phi, sms) + tbo_slot(
            x, qk, phi, sms)
        work = 2.0 * (x + m)
        if n_stages > 1:
            layer_t[kd] = layer
        total = total + count * layer
        comp = comp + count * (2.0 * l_comp)
        mem = mem + count * (2.0 * l_mem)
        kv = kv + count * (2.0 * a_kv)
        comm = comm + count * (2.0 * t_ar)
        comm = comm + count * (layer - work)
    _step_epilogue(cf, rows, Tg_full, launch, tile, total, comp, mem, kv, comm, layer_t, n_stages, n_kinds, stage_pos, out)


@njit(cache=True)
def packed_step_time_s(cf, pf, pairs, kv_tokens, num_prefill_seqs, ndec, ctx):
    """One step's latency in seconds from the pack ``cf`` (arguments as ``StepCostModel.cost``:
    prefill tokens, attention pairs, prefill KV tokens, sampled prefill sequences, decoding
    sequences, decode context tokens)."""
    if cf[P_LAYOUT] != LAYOUT_VERSION:
        raise ValueError(_STALE)
    T = pf + ndec
    if T <= 0.0:
        return cf[P_OVERHEAD]
    pf, pairs, kv_tokens, num_prefill_seqs, ndec, ctx = local_share(cf, pf, pairs, kv_tokens, num_prefill_seqs,
                                                                    ndec, ctx)
    T = pf + ndec
    if cf[P_TBO] != 0.0 and T >= 2.0:  # two-batch overlap: its own path
        tbo = np.empty(7)
        packed_tbo_step(cf, pf, pairs, kv_tokens, num_prefill_seqs, ndec, ctx, tbo)
        return tbo[0]
    Tg = graph_tokens(cf, T, pf)
    Tm = Tg * cf[P_DP]
    window = cf[P_WINDOW]
    if window != 0.0:
        pairs = min(pairs, pf * window)
        ctx = min(ctx, ndec * window)
    launch = cf[P_LAUNCH]
    tile = cf[P_TILE]
    tiles = float(math.ceil(Tg / tile))
    mp = _padded(Tg, tiles, tile)
    kvl = cf[P_KVL]
    qo = cf[P_QO]
    bh = cf[P_BH]
    layer_common = cf[P_EW_CONST] + cf[P_EW_PER_BYTE] * cf[P_EW_BYTES] * Tg
    layer_common += 2.0 * allreduce_s(cf, Tg)
    if pf > 0.0:
        tc = cf[P_FPP_PREFILL] * pairs / cf[P_PF_PEAK] + cf[P_PF_FH]
        tm = (kvl * (kv_tokens + pf) + qo * pf) / cf[P_PF_BW] + bh
        layer_common += launch + (tc if tc > tm else tm)
    if ndec > 0.0:
        tc = cf[P_FPP_DECODE] * ctx / cf[P_DEC_PEAK] + cf[P_DEC_FH]
        tm = (kvl * (ctx + ndec) + qo * ndec) / cf[P_DEC_BW] + bh
        layer_common += launch + (tc if tc > tm else tm)
    total = 0.0
    pos = P_HEADER + int(cf[P_NUM_GRAPH]) + 3 * int(cf[P_AR_NPTS]) + int(cf[P_NUM_STAGES]) * int(cf[P_NUM_KINDS])
    for _ in range(int(cf[P_NUM_KINDS])):
        n_layers = cf[pos]
        n_gemms = int(cf[pos + 1])
        if pf > 0.0:
            a2a = cf[pos + 4] + cf[pos + 5] * Tg
        else:
            a2a = cf[pos + 2] + cf[pos + 3] * Tg
        pos += KIND_FIELDS
        layer = layer_common
        for _g in range(n_gemms):
            tc, tm = _gemm_s(cf, pos, Tg, Tm, mp, tiles, tile, bh)
            pos += GEMM_FIELDS
            layer += launch + (tc if tc > tm else tm)
        layer += a2a
        total += n_layers * layer
    rows = num_prefill_seqs + ndec
    if rows > 0.0:
        h_tiles = float(math.ceil(rows / tile))
        h_mp = _padded(rows, h_tiles, tile)
        tc = cf[P_H_TOK] * h_mp + cf[P_H_C0] + cf[P_H_DQ] * h_tiles
        tm = cf[P_H_M0] + cf[P_H_MT] * rows
        total += launch + (tc if tc > tm else tm)
    total += cf[P_PP_MINUS_1] * (cf[P_P2P_CONST] + cf[P_P2P_PER_TOKEN] * Tg)
    return total + (cf[P_OVERHEAD] + cf[P_OVERHEAD_PER_SEQ] * rows)


@njit(cache=True)
def packed_step_cost(cf, pf, pairs, kv_tokens, num_prefill_seqs, ndec, ctx, out):
    """One step's time *and* its split by bound into ``out[0:7]`` (:data:`COST_FIELDS`):
    ``StepCostModel.cost(...)``'s fields on scalars, bit for bit (``out[0]`` is
    :func:`packed_step_time_s`). For a kernel that records each step's split as it runs."""
    if cf[P_LAYOUT] != LAYOUT_VERSION:
        raise ValueError(_STALE)
    T = pf + ndec
    if T <= 0.0:
        for i in range(7):
            out[i] = 0.0
        out[0] = cf[P_OVERHEAD]
        out[5] = cf[P_OVERHEAD]
        return
    pf, pairs, kv_tokens, num_prefill_seqs, ndec, ctx = local_share(cf, pf, pairs, kv_tokens, num_prefill_seqs,
                                                                    ndec, ctx)
    T = pf + ndec
    if cf[P_TBO] != 0.0 and T >= 2.0:  # two-batch overlap: its own path
        packed_tbo_step(cf, pf, pairs, kv_tokens, num_prefill_seqs, ndec, ctx, out)
        return
    (Tg, Tm, launch, tile, tiles, mp, bh, t_ew, t_ar, common, a_comp, a_kv, n_kinds, n_stages, stage_pos,
     pos) = _layer_prologue(cf, pf, pairs, kv_tokens, ndec, ctx)
    # Each sum over kinds accumulates in kind order as the reference's loops do; the layer
    # times are kept only for the per-stage sums (allocated only with pipelining: an
    # allocation, even an empty one, costs as much as the rest of a decode step's cost;
    # otherwise an empty view of the pack, which allocates nothing).
    layer_t = np.zeros(n_kinds) if n_stages > 1 else cf[:0]
    total = 0.0
    comp = 0.0
    mem = 0.0
    kv = 0.0
    comm = 0.0
    for kd in range(n_kinds):
        count = cf[pos]
        n_gemms = int(cf[pos + 1])
        if pf > 0.0:
            a2a = cf[pos + 4] + cf[pos + 5] * Tg
        else:
            a2a = cf[pos + 2] + cf[pos + 3] * Tg
        pos += KIND_FIELDS
        layer = common
        l_comp = a_comp
        l_mem = t_ew
        for _g in range(n_gemms):
            tc, tm = _gemm_s(cf, pos, Tg, Tm, mp, tiles, tile, bh)
            pos += GEMM_FIELDS
            t = launch + (tc if tc > tm else tm)
            layer = layer + t
            t_c = t * (1.0 if tc >= tm else 0.0)
            l_comp = l_comp + t_c
            l_mem = l_mem + (t - t_c)
        layer = layer + a2a
        if n_stages > 1:
            layer_t[kd] = layer
        total = total + count * layer
        comp = comp + count * l_comp
        mem = mem + count * l_mem
        kv = kv + count * a_kv
        comm = comm + count * t_ar
        comm = comm + count * a2a
    rows = num_prefill_seqs + ndec
    _step_epilogue(cf, rows, Tg, launch, tile, total, comp, mem, kv, comm, layer_t, n_stages, n_kinds, stage_pos, out)


@njit(cache=True)
def packed_steps_cost(cf, pf, pairs, kv_tokens, num_prefill_seqs, ndec, ctx, out):
    """:func:`packed_step_cost` for many steps (1-d float64 inputs; ``out`` shaped (n, 7))."""
    for i in range(pf.shape[0]):
        packed_step_cost(cf, pf[i], pairs[i], kv_tokens[i], num_prefill_seqs[i], ndec[i], ctx[i], out[i])


@njit(cache=True)
def packed_decode_times_s(cf, num_decode_seqs, ctx_tokens):
    """Decode-only step times for one batch size over many context sizes (int64 array):
    ``packed_step_time_s`` element by element (the engine's decode stretches)."""
    out = np.empty(ctx_tokens.shape[0], np.float64)
    b = float(num_decode_seqs)
    for i in range(ctx_tokens.shape[0]):
        out[i] = packed_step_time_s(cf, 0.0, 0.0, 0.0, 0.0, b, float(ctx_tokens[i]))
    return out


def kernel_pack(cost: Any) -> npt.NDArray[np.float64] | None:
    """The pack the compiled replica loop runs on, or None when ``cost`` has an op timer (the
    cycle model: its operator times are not a closed form, so steps are costed in Python)."""
    if getattr(cost, "op_timer", None) is not None:
        return None
    return cost.packed()


__all__ = [
    "COST_FIELDS",
    "GEMM_FIELDS",
    "KIND_FIELDS",
    "LAYOUT_VERSION",
    "P_HEADER",
    "allreduce_s",
    "graph_tokens",
    "kernel_pack",
    "local_share",
    "packed_decode_times_s",
    "packed_step_cost",
    "packed_step_time_s",
    "packed_steps_cost",
    "packed_tbo_step",
    "tbo_half",
    "tbo_slot",
]
