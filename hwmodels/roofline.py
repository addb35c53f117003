"""Operator -> seconds: a roofline whose efficiencies depend on the operator's size.

A GEMM ``y[M, N] = x[M, K] @ W[K, N]`` takes (one kernel, fp16 weights for the fit)::

    t = launch_s + max(t_compute, t_memory)

    t_compute = 2 * Mp * N * K / (peak * eff_c),   Mp = ceil(M / tile_m) * tile_m
    eff_c     = compute_eff_max * Mp / (Mp + m_half) * NK / (NK + nk_half)
    t_memory  = (bytes + bytes_half) / (hbm_bw * mem_eff_max)
    bytes     = weight_bytes(N, K) + act_bytes * (M * K + M * N)

Why each parameter exists (all fitted per GPU on the Llama-2-7B kernel timings, see
:mod:`hwmodels.calibration` and ``docs/step-cost.md``):

* ``launch_s`` - the fixed latency of a kernel (prologue, epilogue, tail of the last wave):
  a few microseconds, visible as the floor of the smallest measured GEMMs.
* ``tile_m`` - tile quantisation along M: cuBLAS computes whole 128-row tiles, so the measured
  time steps at M = 129, 257, 385, ... (fixed at 128, not fitted). Below one tile kernels use
  16-row MMA fragments, so M pads to a multiple of 16 there.
* ``compute_eff_max`` - the tensor-core fraction a large, well-shaped GEMM reaches (~0.75).
* ``m_half`` / ``nk_half`` - where compute efficiency reaches half its maximum along the token
  dimension (few tiles in M) and along the weight size (few tiles in N x K to fill the SMs:
  small tensor-parallel shards run below peak).
* ``mem_eff_max`` / ``bytes_half`` - the achievable fraction of peak DRAM bandwidth for a large
  weight stream, and the extra bytes-equivalent a small transfer pays to ramp up.

Because ``eff_c`` is a product of two hyperbolae, ``t_compute = 2 (Mp + m_half)
(NK + nk_half) / (peak * compute_eff_max)`` is *linear* in Mp and ``t_memory`` is linear in M:
the step-cost model precomputes the coefficients and evaluates each GEMM in a handful of
floating-point operations.

Weight-only schemes (W4A16, W8A16) add the dequantisation work to the compute side: each M
tile re-unpacks the weights it streams (Marlin-style kernels), ``dequant_ops_per_weight x N x K
x ceil(M / tile_m)`` operations on the fp32 (CUDA-core) path. The fitted small-M compute floor
(``m_half``) is a per-weight pipeline latency of kernels streaming 16-bit weights; a kernel
streaming ``b``-bit weights pays ``b / 16`` of it (step-cost model), which reproduces Marlin's
near-ideal ~3.9x batch-1 speedup of 4-bit over fp16 (Frantar et al., "MARLIN", 2024).

Every GPU uses the size-dependence of one of the two fitted profiles (its ``size_profile`` in
``hwmodels/data/achievable.yaml``; borrowed for all but A100/H100) with its *own* asymptotic
efficiencies: :func:`gemm_params_for` scales the fit's ``compute_eff_max`` and ``mem_eff_max``
by the GPU's measured (or derived, or explicitly borrowed) achievable fractions relative to the
calibration GPU's (:mod:`hwmodels.achievable`). The efficiencies are fractions of each GPU's
own datasheet peaks.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from importlib import resources
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from servesim.hwmodels.errors import ConfigError
from servesim.hwmodels.gpus import GpuSpec

ArrayLike = float | npt.NDArray[np.float64]

#: Rows of one cuBLAS/CUTLASS output tile: the measured times step at multiples of 128 tokens.
TILE_M_TOKENS = 128
#: Below one tile, kernels pick narrow tiles (one 16-row MMA fragment): M pads to 16.
SMALL_TILE_M_TOKENS = 16

#: Elementwise kernels (RMSNorm, RoPE, SiLU-and-mul, residual add) reach about half of peak
#: DRAM bandwidth: the Vidur timings in hwmodels/data/calibration show H100 RMSNorm at ~1.0 TB/s
#: and SiLU-and-mul at ~1.9 TB/s for 4096 tokens (of 3.35 TB/s).
ELEMENTWISE_MEM_EFF_FRAC = 0.5
#: Minimum duration of an elementwise kernel: 3-4 us for a 1-token RMSNorm/RoPE in the same files.
ELEMENTWISE_LAUNCH_S = 3e-6

#: FlashAttention forward reaches 50-73 % of A100 fp16 peak at long sequences (FA2, Dao 2023,
#: Fig. 4) and 60-75 % of H100 peak with FA3 (Shah et al. 2024); short chunks run lower.
ATTN_COMPUTE_EFF_MAX_FRAC = 0.65
#: Decode attention on CUDA cores (no tensor cores: vLLM <= 0.3 PagedAttention, TensorRT-LLM
#: <= 0.6 masked MHA) reaches ~12 % of the GPU's FP32 peak, counting 2 FLOPs per multiply-add of
#: QK^T and PV. FlashInfer blog "Accelerating Self-Attentions for LLM Serving with FlashInfer"
#: (2024-02-02), Fig. 9: batch GQA decode, Llama-70B at TP 2 (32 query / 4 KV heads, head dim
#: 128, fp16), batch 64, H100: FlashInfer's tensor-core decode is "3x faster than vLLM
#: PageAttention" (v0.2.6, CUDA cores), and FlashInfer's decode runs near full bandwidth
#: (Fig. 5, "close to 100 %"; taken as 0.9 x 3.35 TB/s). vLLM's kernel thus moved ~1.0 TB/s
#: of KV at 8 FLOP/byte (2 x 32 x 256 FLOPs per 2 x 4 x 128 x 2 bytes): ~8.0 TFLOP/s = 0.12 of
#: H100's 67 TFLOP/s FP32 (the same post's table). Softmax, warp reductions and shared-memory
#: traffic cost more than the multiply-adds on CUDA cores, hence the low fraction.
CUDA_CORE_ATTN_EFF_FRAC = 0.12
#: FLOPs at which prefill attention reaches half its maximum efficiency: one 128 x 128 tile
#: of 32 heads x head_dim 128 (2 GEMMs) - below that the SMs are not filled.
ATTN_FLOPS_HALF = 4.0 * 128 * 128 * 128 * 32


@dataclass(frozen=True, slots=True, kw_only=True)
class GemmParams:
    """Fitted size-dependent efficiency of one GPU's GEMMs (see module docstring).

    Attributes:
        launch_s: fixed kernel latency in seconds.
        compute_eff_max_frac: asymptotic fraction of the tensor-core peak.
        m_half_tokens: padded M at which the M factor of compute efficiency is one half.
        nk_half_elems: N x K at which the weight-size factor is one half.
        mem_eff_max_frac: asymptotic fraction of peak HBM bandwidth.
        bytes_half: ramp-up bytes-equivalent of a transfer.
        tile_m_tokens: output-tile rows (tile quantisation along M).
        source: how the values were obtained.
    """

    launch_s: float
    compute_eff_max_frac: float
    m_half_tokens: float
    nk_half_elems: float
    mem_eff_max_frac: float
    bytes_half: float
    tile_m_tokens: int = TILE_M_TOKENS
    source: str = ""

    def __post_init__(self) -> None:
        for name in ("compute_eff_max_frac", "mem_eff_max_frac"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ConfigError(f"GemmParams.{name} must be in (0, 1], got {value!r}")
        for name in ("launch_s", "m_half_tokens", "nk_half_elems", "bytes_half"):
            if getattr(self, name) < 0:
                raise ConfigError(f"GemmParams.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.tile_m_tokens < 1:
            raise ConfigError(f"GemmParams.tile_m_tokens must be >= 1, got {self.tile_m_tokens}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_CALIBRATION_FILE = "data/roofline_calibration.json"


@functools.cache
def load_gemm_params() -> Mapping[str, GemmParams]:
    """Fitted parameters by profile name (``a100``, ``h100``) from the bundled JSON."""
    text = resources.files("servesim.hwmodels").joinpath(_CALIBRATION_FILE).read_text()
    raw = json.loads(text)
    return {
        name: GemmParams(**{k: v for k, v in entry.items() if k in GemmParams.__slots__})
        for name, entry in raw["profiles"].items()
    }


def profile_for(gpu: GpuSpec) -> str:
    """Which calibrated size-dependence (``a100`` or ``h100``) ``gpu`` uses.

    Catalogue GPUs: the ``size_profile`` of their entry in ``hwmodels/data/achievable.yaml``
    (stated per GPU, with its confidence). A user GPU file without achievable figures falls back
    to the architecture (Hopper and newer ``h100``, older NVIDIA ``a100``, others ``h100``), and
    its efficiencies are then the calibration GPU's, graded ``borrowed``
    (:func:`hwmodels.achievable.efficiency_for`).
    """
    from servesim.hwmodels.achievable import achievable_names, get_achievable

    if gpu.name in achievable_names():
        return get_achievable(gpu).size_profile
    arch = gpu.arch.lower()
    name = gpu.name.lower()
    if name.startswith("a100") or any(a in arch for a in ("ampere", "ada", "turing", "volta")):
        return "a100"
    return "h100"


def gemm_params_for(gpu: GpuSpec) -> GemmParams:
    """The GEMM efficiency parameters used for ``gpu``: the fitted size-dependence of its
    profile, with the asymptotic compute and memory efficiencies scaled to the GPU's own
    achievable figures (``frac(gpu) / frac(calibration GPU)``; exactly the fit on A100-80GB and
    H100 SXM)."""
    from servesim.hwmodels.achievable import efficiency_for

    base = load_gemm_params()[profile_for(gpu)]
    eff = efficiency_for(gpu)
    c_scale, m_scale = eff.compute("fp16"), eff.mem_scale
    if c_scale == 1.0 and m_scale == 1.0:
        return base
    return replace(
        base,
        compute_eff_max_frac=min(base.compute_eff_max_frac * c_scale, 1.0),
        mem_eff_max_frac=min(base.mem_eff_max_frac * m_scale, 1.0),
        source=f"{base.source}; efficiencies scaled to {gpu.name}'s achievable figures "
               f"(x{c_scale:.3f} compute, x{m_scale:.3f} memory; hwmodels/data/achievable.yaml, "
               f"{eff.achievable.confidence if eff.achievable else 'borrowed'})",
    )


def _ceil_tiles(m: ArrayLike, tile: int) -> ArrayLike:
    if isinstance(m, np.ndarray):
        return np.ceil(m / tile)
    return float(math.ceil(m / tile))


def padded_m(m: ArrayLike, tile: int) -> ArrayLike:
    """M as the kernel computes it: whole ``tile``-row tiles above one tile, 16-row MMA
    fragments below (cuBLAS/Marlin pick narrow tiles for small M)."""
    if isinstance(m, np.ndarray):
        return np.where(m > tile, np.ceil(m / tile) * tile, np.ceil(m / SMALL_TILE_M_TOKENS) * SMALL_TILE_M_TOKENS)
    if m > tile:
        return float(math.ceil(m / tile) * tile)
    return float(math.ceil(m / SMALL_TILE_M_TOKENS) * SMALL_TILE_M_TOKENS)


def gemm_time_parts_s(
    params: GemmParams,
    *,
    m: ArrayLike,
    n: int,
    k: int,
    peak_flops_per_s: float,
    hbm_bw_bytes_per_s: float,
    weight_bytes: float,
    act_bytes_per_elem: float = 2.0,
    dequant_ops: float = 0.0,
    fp32_flops_per_s: float = 1.0,
) -> tuple[ArrayLike, ArrayLike]:
    """Compute and memory sides (seconds, launch latency excluded) of one GEMM of M tokens.

    Args:
        m: tokens (GEMM M); scalar or array. M = 0 gives zero on both sides.
        n, k: output and input features (after tensor-parallel sharding); scalars, or arrays
            shaped like ``m``.
        weight_bytes: bytes of the ``K x N`` weight as stored (quantized, scales included).
        act_bytes_per_elem: bytes of one activation element read or written.
        dequant_ops: CUDA-core operations per weight per M tile (weight-only schemes).
        fp32_flops_per_s: the fp32 (non-tensor) peak the dequantisation runs on.

    Returns:
        ``(t_compute_s, t_memory_s)``.
    """
    tiles = _ceil_tiles(m, params.tile_m_tokens)
    mp = padded_m(m, params.tile_m_tokens)
    nk = n * k * 1.0
    active = (m > 0) * 1.0 if isinstance(m, np.ndarray) else float(m > 0)
    t_c = 2.0 * (mp + params.m_half_tokens) * (nk + params.nk_half_elems) / (
        peak_flops_per_s * params.compute_eff_max_frac
    )
    t_c = t_c * active + dequant_ops * nk * tiles / fp32_flops_per_s
    moved = weight_bytes + act_bytes_per_elem * m * (n + k)
    t_m = (moved + params.bytes_half) / (hbm_bw_bytes_per_s * params.mem_eff_max_frac) * active
    return t_c, t_m


def gemm_time_s(params: GemmParams, **kwargs: Any) -> ArrayLike:
    """Total time of one GEMM kernel: launch + max(compute, memory); 0 for M = 0."""
    t_c, t_m = gemm_time_parts_s(params, **kwargs)
    m = kwargs["m"]
    if isinstance(m, np.ndarray):
        return (params.launch_s + np.maximum(t_c, t_m)) * (m > 0)
    return (params.launch_s + max(t_c, t_m)) if m > 0 else 0.0


@runtime_checkable
class OpTimer(Protocol):
    """What the step-cost model asks an operator timer (roofline by default, cycle model later).

    All arguments may be numpy arrays (one entry per step) or scalars; times are seconds.
    ``weight_bits`` is the stored width of a weight (16, 8, 4); ``compute_type`` the
    tensor-core path (``fp16``, ``fp8``, ``int8``, ...).
    """

    def gemm_time_s(self, m: Any, n: int, k: int, compute_type: str, weight_bits: int) -> Any:
        """One GEMM ``[m, k] x [k, n]`` kernel."""
        ...

    def decode_attention_time_s(
        self, batch: Any, context_tokens: Any, num_heads: int, num_kv_heads: int, head_dim: int,
        kv_bytes_per_elem: float, block_size: int,
    ) -> Any:
        """One layer's decode attention for ``batch`` sequences of mean ``context_tokens``."""
        ...

    def prefill_attention_time_s(
        self, batch: Any, query_tokens: Any, num_heads: int, num_kv_heads: int, head_dim: int,
        context_tokens: Any = None, kv_bytes_per_elem: float = 2,
    ) -> Any:
        """One layer's causal prefill attention: ``batch`` chunks of ``query_tokens`` new tokens
        each, attending ``context_tokens`` keys (cached prefix + the chunk) each."""
        ...


class RooflineTimer:
    """The calibrated roofline as an :class:`OpTimer` (fp16 activations, dense weights).

    :class:`hwmodels.stepcost.StepCostModel` inlines exactly these formulas when no timer is
    given; this class exists so other timers can be compared against it op by op.
    """

    def __init__(self, gpu: GpuSpec, params: GemmParams | None = None) -> None:
        self.gpu = gpu
        self.params = params or gemm_params_for(gpu)

    def gemm_time_s(self, m: Any, n: int, k: int, compute_type: str, weight_bits: int) -> Any:
        act = 1.0 if compute_type in ("fp8", "int8") else 0.5 if compute_type in ("fp4", "int4") else 2.0
        return gemm_time_s(
            self.params, m=m, n=n, k=k, peak_flops_per_s=self.gpu.peak(compute_type),
            hbm_bw_bytes_per_s=self.gpu.hbm_bw_bytes_per_s, weight_bytes=n * k * weight_bits / 8,
            act_bytes_per_elem=act,
        )

    def decode_attention_time_s(
        self, batch: Any, context_tokens: Any, num_heads: int, num_kv_heads: int, head_dim: int,
        kv_bytes_per_elem: float, block_size: int = 16,
    ) -> Any:
        kv_bytes = batch * context_tokens * 2 * num_kv_heads * head_dim * kv_bytes_per_elem
        flops = batch * context_tokens * 4.0 * num_heads * head_dim
        return attention_time_s(
            self.gpu, self.params, flops=flops, moved_bytes=kv_bytes, active=batch,
            flops_half=ATTN_FLOPS_HALF,
        )

    def prefill_attention_time_s(
        self, batch: Any, query_tokens: Any, num_heads: int, num_kv_heads: int, head_dim: int,
        context_tokens: Any = None, kv_bytes_per_elem: float = 2,
    ) -> Any:
        ctx = query_tokens if context_tokens is None else context_tokens
        pairs = batch * query_tokens * (ctx - query_tokens + (query_tokens + 1) / 2)
        flops = pairs * 4.0 * num_heads * head_dim
        moved = (batch * ctx * 2 * num_kv_heads * head_dim * kv_bytes_per_elem
                 + batch * query_tokens * 4 * num_heads * head_dim)
        return attention_time_s(
            self.gpu, self.params, flops=flops, moved_bytes=moved, active=batch * query_tokens,
            flops_half=ATTN_FLOPS_HALF,
        )


def attention_time_s(
    gpu: GpuSpec, params: GemmParams, *, flops: Any, moved_bytes: Any, active: Any, flops_half: float
) -> Any:
    """Attention kernel: launch + max(FLOPs at a saturating FlashAttention efficiency, bytes).

    ``active`` (tokens or sequences) zeroes the time where there is no attention work.
    """
    peak = gpu.peak_fp16_flops_per_s * ATTN_COMPUTE_EFF_MAX_FRAC
    t_c = (flops + flops_half) / peak
    t_m = (moved_bytes + params.bytes_half) / (gpu.hbm_bw_bytes_per_s * params.mem_eff_max_frac)
    if isinstance(active, np.ndarray) or isinstance(t_c, np.ndarray):
        return (params.launch_s + np.maximum(t_c, t_m)) * (np.asarray(active) > 0)
    return params.launch_s + max(t_c, t_m) if active > 0 else 0.0


__all__ = [
    "ATTN_COMPUTE_EFF_MAX_FRAC",
    "ATTN_FLOPS_HALF",
    "CUDA_CORE_ATTN_EFF_FRAC",
    "ELEMENTWISE_LAUNCH_S",
    "ELEMENTWISE_MEM_EFF_FRAC",
    "SMALL_TILE_M_TOKENS",
    "TILE_M_TOKENS",
    "GemmParams",
    "OpTimer",
    "RooflineTimer",
    "attention_time_s",
    "gemm_params_for",
    "gemm_time_parts_s",
    "gemm_time_s",
    "load_gemm_params",
    "padded_m",
    "profile_for",
]
