"""A numba twin of :meth:`hwmodels.stepcost.StepCostModel.step_time_s`.

The compiled serving loop (``simulator.compiled``) costs every step inside a numba kernel, so
it needs the step latency as a jitted function over flat data. :func:`pack_step_cost` lays
the cost model's precomputed coefficients out in one float64 array and :func:`step_time_s`
repeats ``step_time_s``'s float operations in the same order (IEEE ``+ - * /``, ``ceil`` and
``pow`` are the same operations compiled as interpreted; numba does not contract or
reassociate without ``fastmath``). :func:`checked_pack` only returns a pack after it matched
the Python method bit for bit on probe steps (prefill-only, decode-only and mixed); anything
else (an op timer, a mismatch) returns ``None`` and the caller keeps to Python.

Pack layout (float64)::

    [0:P_HEADER]     scalars (P_* indices)
    [P_HEADER:]      per layer kind: n_layers, n_gemms, then 9 floats per GEMM
                     (routed, s_tok, s_c0, s_dq, s_m0, s_mw, s_mt, copies, active)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
from numba import njit

P_LAUNCH = 0
P_TILE = 1
P_KVL = 2
P_QO = 3
P_BW = 4
P_BH = 5
P_FH = 6
P_PEAK = 7
P_EW_CONST = 8
P_EW_PER_BYTE = 9
P_EW_BYTES = 10
P_AR_CONST = 11
P_AR_PER_TOKEN = 12
P_FPP_PREFILL = 13
P_FPP_DECODE = 14
P_WINDOW = 15
P_H_TOK = 16
P_H_C0 = 17
P_H_DQ = 18
P_H_M0 = 19
P_H_MT = 20
P_PP_MINUS_1 = 21
P_P2P_CONST = 22
P_P2P_PER_TOKEN = 23
P_OVERHEAD = 24
P_NUM_KINDS = 25
P_HEADER = 26
_GEMM_FIELDS = 9


def pack_step_cost(cost: Any) -> npt.NDArray[np.float64]:
    """The coefficients :func:`step_time_s` reads, from a roofline ``StepCostModel``."""
    c = cost
    h = c._head
    head = [0.0] * P_HEADER
    head[P_LAUNCH] = c._launch_s
    head[P_TILE] = c._tile
    head[P_KVL] = c._kv_layer_gpu
    head[P_QO] = c._attn_qo_bytes
    head[P_BW] = c._hbm_eff_bw
    head[P_BH] = c._bytes_half_s
    head[P_FH] = c._attn_flops_half_s
    head[P_PEAK] = c._attn_peak
    head[P_EW_CONST] = c._ew_const_s
    head[P_EW_PER_BYTE] = c._ew_s_per_byte
    head[P_EW_BYTES] = c._ew_bytes
    head[P_AR_CONST] = c._ar_const_s
    head[P_AR_PER_TOKEN] = c._ar_s_per_token
    head[P_FPP_PREFILL] = c._attn_fpp_prefill
    head[P_FPP_DECODE] = c._attn_fpp_decode
    head[P_WINDOW] = c._window or 0.0
    head[P_H_TOK] = h.s_per_padded_token
    head[P_H_C0] = h.s_compute_const
    head[P_H_DQ] = h.s_dequant_per_tile
    head[P_H_M0] = h.s_mem_const
    head[P_H_MT] = h.s_mem_per_token
    head[P_PP_MINUS_1] = c.pp - 1
    head[P_P2P_CONST] = c._p2p_const_s
    head[P_P2P_PER_TOKEN] = c._p2p_s_per_token
    head[P_OVERHEAD] = c.step_overhead_s
    head[P_NUM_KINDS] = len(c._fast_kinds)
    body: list[float] = []
    for n_layers, coefs in c._fast_kinds:
        body += [float(n_layers), float(len(coefs))]
        for g in coefs:
            body += [float(x) for x in g]
    return np.asarray(head + body, dtype=np.float64)


@njit(cache=True)
def _padded(m: float, tiles: float, tile: float) -> float:
    return tiles * tile if m > tile else math.ceil(m / 16.0) * 16.0


@njit(cache=True)
def step_time_s(cf, pf, pairs, kv_tokens, num_prefill_seqs, ndec, ctx):
    """One step's latency in seconds: ``StepCostModel.step_time_s`` over the pack ``cf``."""
    T = pf + ndec
    if T <= 0.0:
        return cf[P_OVERHEAD]
    window = cf[P_WINDOW]
    if window != 0.0:
        pairs = min(pairs, pf * window)
        ctx = min(ctx, ndec * window)
    launch = cf[P_LAUNCH]
    tile = cf[P_TILE]
    tiles = float(math.ceil(T / tile))
    mp = _padded(T, tiles, tile)
    kvl = cf[P_KVL]
    qo = cf[P_QO]
    bw = cf[P_BW]
    bh = cf[P_BH]
    fh = cf[P_FH]
    peak = cf[P_PEAK]
    layer_common = cf[P_EW_CONST] + cf[P_EW_PER_BYTE] * cf[P_EW_BYTES] * T
    layer_common += 2.0 * (cf[P_AR_CONST] + cf[P_AR_PER_TOKEN] * T)
    if pf > 0.0:
        tc = cf[P_FPP_PREFILL] * pairs / peak + fh
        tm = (kvl * (kv_tokens + pf) + qo * pf) / bw + bh
        layer_common += launch + (tc if tc > tm else tm)
    if ndec > 0.0:
        tc = cf[P_FPP_DECODE] * ctx / peak + fh
        tm = (kvl * (ctx + ndec) + qo * ndec) / bw + bh
        layer_common += launch + (tc if tc > tm else tm)
    total = 0.0
    pos = P_HEADER
    for _ in range(int(cf[P_NUM_KINDS])):
        n_layers = cf[pos]
        n_gemms = int(cf[pos + 1])
        pos += 2
        layer = layer_common
        for _g in range(n_gemms):
            routed = cf[pos]
            s_tok = cf[pos + 1]
            s_c0 = cf[pos + 2]
            s_dq = cf[pos + 3]
            s_m0 = cf[pos + 4]
            s_mw = cf[pos + 5]
            s_mt = cf[pos + 6]
            e = cf[pos + 7]
            k = cf[pos + 8]
            pos += _GEMM_FIELDS
            if routed != 0.0:
                touched = e * (1.0 - (1.0 - k / e) ** T)
                m_e = T * k / touched
                t_e = float(math.ceil(m_e / tile))
                mp_e = _padded(m_e, t_e, tile)
                tc = touched * (s_tok * mp_e + s_c0 + s_dq * t_e)
                tm = touched * s_mw + bh + s_mt * T * k
            else:
                tc = s_tok * mp + s_c0 + s_dq * tiles
                tm = s_m0 + s_mt * T
            layer += launch + (tc if tc > tm else tm)
        total += n_layers * layer
    rows = num_prefill_seqs + ndec
    if rows > 0.0:
        h_tiles = float(math.ceil(rows / tile))
        h_mp = _padded(rows, h_tiles, tile)
        tc = cf[P_H_TOK] * h_mp + cf[P_H_C0] + cf[P_H_DQ] * h_tiles
        tm = cf[P_H_M0] + cf[P_H_MT] * rows
        total += launch + (tc if tc > tm else tm)
    total += cf[P_PP_MINUS_1] * (cf[P_P2P_CONST] + cf[P_P2P_PER_TOKEN] * T)
    return total + cf[P_OVERHEAD]


def _probe_steps() -> list[tuple[float, float, float, float, float, float]]:
    """Step inputs a pack is checked on: decode-only, prefill-only and mixed, small to huge."""
    steps: list[tuple[float, float, float, float, float, float]] = []
    for b in (1, 2, 3, 7, 16, 33, 64, 128, 255, 256, 1000):
        for per_seq in (1, 17, 128, 1000, 4096, 32768, 131072):
            steps.append((0.0, 0.0, 0.0, 0.0, float(b), float(b * per_seq + b // 2)))
    for n in (1, 2, 15, 16, 17, 100, 512, 2048, 8192, 16384):
        for ctx in (0, 100, 4000):
            for seqs in (1, 3):
                steps.append((float(n), n * (ctx + (n + 1) / 2.0), float(ctx + n), float(seqs), 0.0, 0.0))
    for n, b in ((1, 1), (500, 31), (8000, 200)):
        steps.append((float(n), n * (n + 1) / 2.0, float(n), 1.0, float(b), float(b * 777)))
    steps.append((0.0, 0.0, 0.0, 0.0, 0.0, 0.0))
    return steps


def checked_pack(cost: Any) -> npt.NDArray[np.float64] | None:
    """A pack of ``cost`` that reproduces ``cost.step_time_s`` bit for bit on the probe
    steps, or None (an op timer, a model shape the pack does not cover, any mismatch)."""
    if getattr(cost, "op_timer", None) is not None:
        return None
    try:
        cf = pack_step_cost(cost)
    except (AttributeError, TypeError, ValueError):
        return None
    for pf, pairs, kvt, nps, ndec, ctx in _probe_steps():
        want = cost.step_time_s(prefill_tokens=pf, prefill_attn_pairs=pairs, prefill_kv_tokens=kvt,
                                num_prefill_seqs=nps, num_decode_seqs=ndec, decode_ctx_tokens=ctx)
        if step_time_s(cf, pf, pairs, kvt, nps, ndec, ctx) != want:
            return None
    return cf


__all__ = ["checked_pack", "pack_step_cost", "step_time_s"]
