"""Cycle-level kernel model: SMs, SRAM tiles, L2, HBM queues and waves (numba).

Public API::

    simulate_gemm(gpu, m=, n=, k=, compute_type=, weight_bits=)         -> KernelResult
    simulate_prefill_attention(gpu, batch=, query_tokens=, ...)          -> KernelResult
    simulate_decode_attention(gpu, batch=, context_tokens=, block_size=) -> KernelResult
    CycleCostModel(gpu).gemm_time_s(...) / .decode_attention_time_s(...) (cached, JSON)
    paged_attention_decode(...)  (numpy functional twin of the block-table walk)

See ``docs/cycle-model.md`` for what is modelled and what is not.
"""

from __future__ import annotations

from servesim.hwmodels.cyclesim.cache import CycleCostModel
from servesim.hwmodels.cyclesim.kernels import (
    KernelResult,
    simulate_decode_attention,
    simulate_gemm,
    simulate_prefill_attention,
)
from servesim.hwmodels.cyclesim.paged_attention import (
    dense_attention_decode,
    paged_attention_decode,
)
from servesim.hwmodels.cyclesim.params import machine_for

__all__ = [
    "CycleCostModel",
    "KernelResult",
    "dense_attention_decode",
    "machine_for",
    "paged_attention_decode",
    "simulate_decode_attention",
    "simulate_gemm",
    "simulate_prefill_attention",
]
