"""Kernel facades: GEMM, FlashAttention-style prefill, paged decode attention.

Each facade validates its shape, builds the kernel's *work* as flat arrays (CTAs -> iterations ->
loads, see :mod:`hwmodels.cyclesim._engine`), picks the launch configuration (tile, stages,
split), runs the numba event loop and wraps the numbers in a frozen :class:`KernelResult`.
Python decides, numba computes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from servesim.hwmodels.cyclesim import _engine
from servesim.hwmodels.cyclesim.params import (
    DEQUANT_INSTR_PER_WEIGHT,
    HBM_LATENCY_CYCLES,
    L2_LATENCY_CYCLES,
    OPERAND_BYTES,
    SECTOR_BYTES,
    SFU_OPS_PER_CYCLE_PER_SM,
    Machine,
    TileConfig,
    machine_for,
)
from servesim.hwmodels.errors import ConfigError
from servesim.hwmodels.gpus import GpuSpec, get_gpu

#: Bytes of fp16 scale + fp16 zero point per quantization group and output column (AWQ/GPTQ).
_SCALE_ZERO_BYTES_PER_GROUP = 4
#: Accumulator and output element sizes.
_ACC_BYTES = 4
_OUT_BYTES = 2
#: Registers per thread besides the accumulators (fragments, addresses, predicates), 4 B each.
_BASE_REGS_PER_THREAD = 40

#: Per paged-KV block, SM cycles of the block-table walk that a contiguous cache does not pay:
#: the dependent block-number load, the 64-bit address computation and the per-block
#: bookkeeping of the token loop (masking, thread-group reduction set-up) in vLLM's
#: paged_attention_v1 kernel (csrc/attention/attention_kernels.cu). An instruction-count
#: estimate (~64 warp instructions issued on one scheduler), not fitted: the project holds no
#: paged-attention kernel timings.
PAGED_BLOCK_OVERHEAD_CYCLES = 64.0
#: Tokens per decode-attention iteration (one SRAM stage of K and V), as FlashInfer/FlashDecoding
#: tile the KV sequence (vLLM: 4 warps x one block each).
DECODE_TILE_TOKENS = 64
#: FlashAttention-2 forward tiles for head_dim <= 128 on sm80 (csrc/flash_attn/src/
#: flash_fwd_launch_template.h: kBlockM=128, kBlockN=64, 4 warps) and FlashAttention-3 on sm90
#: (hopper/: 128 x 128, 2 consumer warpgroups + 1 producer).
_PREFILL_TILES = {80: (128, 64, 128, 2), 90: (128, 128, 384, 2)}


@dataclass(frozen=True, slots=True, kw_only=True)
class KernelResult:
    """The outcome of one simulated kernel launch.

    Attributes:
        kernel: ``gemm``, ``attention-prefill`` or ``attention-decode``.
        gpu: catalogue name of the GPU.
        shape: the problem as given (ints/strings).
        config: the launch the model chose (tile, stages, split, CTAs per SM, ...).
        total_cycles: SM cycles from launch to the last CTA's end (incl. any combine pass).
        time_s: ``total_cycles / clock_hz``.
        flops: useful FLOPs of the operator (no padding).
        hbm_bytes: bytes moved to/from HBM (loads that missed L2 + stores).
        l2_hit_bytes: load bytes served by L2.
        achieved_hbm_bw_bytes_per_s, achieved_flops_per_s: the two rates over ``time_s``.
        num_ctas, ctas_per_sm, num_waves: grid, residency, ``ceil(num_ctas / (sms*ctas_per_sm))``.
        occupancy_frac: resident threads per SM over the SM's maximum (theoretical occupancy).
        hbm_util_frac: busy fraction of the HBM queue.
        pipe_util_frac: busy fraction of the SMs' compute pipes (mean over SMs).
        bound: ``compute``, ``memory``, ``latency`` (neither resource above 60 % busy) or
            ``launch`` (launch overhead is more than half the time).
        cta_sm: int64[num_ctas], SM each CTA ran on (the per-SM activity trace).
        cta_start_cycles, cta_end_cycles: float64[num_ctas], each CTA's start and end.
    """

    kernel: str
    gpu: str
    shape: Mapping[str, Any]
    config: Mapping[str, Any]
    total_cycles: float
    time_s: float
    flops: float
    hbm_bytes: float
    l2_hit_bytes: float
    achieved_hbm_bw_bytes_per_s: float
    achieved_flops_per_s: float
    num_ctas: int
    ctas_per_sm: int
    num_waves: int
    occupancy_frac: float
    hbm_util_frac: float
    pipe_util_frac: float
    bound: str
    cta_sm: npt.NDArray[np.int64] = field(repr=False)
    cta_start_cycles: npt.NDArray[np.float64] = field(repr=False)
    cta_end_cycles: npt.NDArray[np.float64] = field(repr=False)

    def to_dict(self, *, with_trace: bool = False) -> dict[str, Any]:
        """JSON-ready dict (the ``servesim kernel --json`` contract); trace arrays optional."""
        out: dict[str, Any] = {
            "kernel": self.kernel,
            "gpu": self.gpu,
            "shape": dict(self.shape),
            "config": dict(self.config),
            "total_cycles": self.total_cycles,
            "time_s": self.time_s,
            "flops": self.flops,
            "hbm_bytes": self.hbm_bytes,
            "l2_hit_bytes": self.l2_hit_bytes,
            "achieved_hbm_bw_bytes_per_s": self.achieved_hbm_bw_bytes_per_s,
            "achieved_flops_per_s": self.achieved_flops_per_s,
            "num_ctas": self.num_ctas,
            "ctas_per_sm": self.ctas_per_sm,
            "num_waves": self.num_waves,
            "occupancy_frac": self.occupancy_frac,
            "hbm_util_frac": self.hbm_util_frac,
            "pipe_util_frac": self.pipe_util_frac,
            "bound": self.bound,
        }
        if with_trace:
            out["trace"] = {
                "cta_sm": self.cta_sm.tolist(),
                "cta_start_cycles": self.cta_start_cycles.tolist(),
                "cta_end_cycles": self.cta_end_cycles.tolist(),
            }
        return out


class Work(NamedTuple):
    """A kernel's work as flat arrays (layout in :mod:`hwmodels.cyclesim._engine`)."""

    cta_iter_ptr: npt.NDArray[np.int64]
    iter_load_ptr: npt.NDArray[np.int64]
    load_key: npt.NDArray[np.int64]
    load_bytes: npt.NDArray[np.float64]
    load_phase: npt.NDArray[np.int8]
    iter_compute_cycles: npt.NDArray[np.float64]
    cta_store_bytes: npt.NDArray[np.float64]
    num_keys: int


class Launch(NamedTuple):
    """Machine-side scalars of one launch (the engine's remaining arguments)."""

    num_sms: int
    ctas_per_sm: int
    num_stages: int
    hbm_bytes_per_cycle: float
    hbm_latency_cycles: float
    l2_bytes_per_cycle: float
    l2_latency_cycles: float
    l2_capacity_bytes: float
    launch_cycles: float
    cta_launch_cycles: float
    epilogue_cycles: float


class RawRun(NamedTuple):
    """What the engine returns, before it becomes a :class:`KernelResult`."""

    total_cycles: float
    cta_sm: npt.NDArray[np.int64]
    cta_start: npt.NDArray[np.float64]
    cta_end: npt.NDArray[np.float64]
    stats: npt.NDArray[np.float64]


def run_work(work: Work, launch: Launch) -> RawRun:
    """Run the numba event loop on ``work`` (the function the reference twin mirrors)."""
    num_ctas = work.cta_iter_ptr.shape[0] - 1
    cta_sm = np.empty(num_ctas, dtype=np.int64)
    cta_start = np.empty(num_ctas, dtype=np.float64)
    cta_end = np.empty(num_ctas, dtype=np.float64)
    stats = np.zeros(_engine.NUM_STATS, dtype=np.float64)
    total = _engine.simulate(
        work.cta_iter_ptr, work.iter_load_ptr, work.load_key, work.load_bytes, work.load_phase,
        work.iter_compute_cycles, work.cta_store_bytes, work.num_keys, launch.num_sms,
        launch.ctas_per_sm, launch.num_stages, launch.hbm_bytes_per_cycle,
        launch.hbm_latency_cycles, launch.l2_bytes_per_cycle, launch.l2_latency_cycles,
        launch.l2_capacity_bytes, launch.launch_cycles, launch.cta_launch_cycles,
        launch.epilogue_cycles, cta_sm, cta_start, cta_end, stats,
    )
    return RawRun(float(total), cta_sm, cta_start, cta_end, stats)


# ----------------------------------------------------------------------------- helpers
def _machine(gpu: str | GpuSpec | Machine) -> Machine:
    if isinstance(gpu, Machine):
        return gpu
    return machine_for(get_gpu(gpu))


def _positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int | np.integer) or value <= 0:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _positive_bytes(name: str, value: float) -> None:
    if not isinstance(value, int | float | np.integer | np.floating) or not value > 0:
        raise ConfigError(f"{name} must be > 0, got {value!r}")


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# Grid limits (docs/inputs.md): a launch is sized before its per-iteration arrays (~100
# bytes per tile iteration) are built; 2e7 iterations is ~2 GB.
MAX_KERNEL_CTAS = 10_000_000
MAX_KERNEL_ITERS = 20_000_000


def _check_grid(kernel: str, num_ctas: int, num_iters: int, shape: str) -> None:
    """Refuse a launch whose estimated grid exceeds the limits, before allocating it."""
    if num_ctas > MAX_KERNEL_CTAS or num_iters > MAX_KERNEL_ITERS:
        raise ConfigError(
            f"{kernel} {shape}: about {num_ctas:,} CTAs and {num_iters:,} tile iterations "
            f"(~{num_iters * 100 / 2**30:.3g} GiB to simulate); the limits are "
            f"{MAX_KERNEL_CTAS:,} CTAs and {MAX_KERNEL_ITERS:,} iterations (docs/inputs.md)"
        )


def _residency(m: Machine, *, smem_bytes: float, num_threads: int, reg_bytes: int) -> int:
    """Resident CTAs per SM allowed by shared memory, registers, threads and the CTA limit."""
    return int(min(
        m.smem_bytes_per_sm // max(math.ceil(smem_bytes), 1),
        m.regfile_bytes_per_sm // max(reg_bytes, 1),
        m.max_threads_per_sm // num_threads,
        m.max_ctas_per_sm,
    ))


def _launch(m: Machine, *, ctas_per_sm: int, num_stages: int, epilogue_cycles: float = 0.0) -> Launch:
    return Launch(
        num_sms=m.num_sms,
        ctas_per_sm=ctas_per_sm,
        num_stages=num_stages,
        hbm_bytes_per_cycle=m.hbm_bytes_per_cycle,
        hbm_latency_cycles=HBM_LATENCY_CYCLES,
        l2_bytes_per_cycle=m.l2_bytes_per_cycle,
        l2_latency_cycles=L2_LATENCY_CYCLES,
        l2_capacity_bytes=m.l2_capacity_bytes,
        launch_cycles=m.launch_cycles,
        cta_launch_cycles=m.fitted.cta_prologue_cycles,
        epilogue_cycles=epilogue_cycles,
    )


def _bound(total: float, launch_cycles: float, hbm_util: float, pipe_util: float) -> str:
    if launch_cycles > 0.5 * total:
        return "launch"
    if max(hbm_util, pipe_util) < 0.6:
        return "latency"
    return "compute" if pipe_util >= hbm_util else "memory"


def _result(
    *,
    kernel: str,
    m: Machine,
    shape: dict[str, Any],
    config: dict[str, Any],
    raw: RawRun,
    flops: float,
    num_threads: int,
    ctas_per_sm: int,
    extra_cycles: float = 0.0,
    extra_hbm_bytes: float = 0.0,
) -> KernelResult:
    total = raw.total_cycles + extra_cycles
    time_s = total / m.clock_hz
    num_ctas = raw.cta_sm.shape[0]
    hbm_bytes = raw.stats[_engine.ST_HBM_BYTES] + raw.stats[_engine.ST_STORE_BYTES] + extra_hbm_bytes
    hbm_util = raw.stats[_engine.ST_HBM_BUSY_CYCLES] / total if total > 0 else 0.0
    pipe_util = raw.stats[_engine.ST_PIPE_BUSY_CYCLES] / (m.num_sms * total) if total > 0 else 0.0
    for arr in (raw.cta_sm, raw.cta_start, raw.cta_end):
        arr.flags.writeable = False
    return KernelResult(
        kernel=kernel,
        gpu=m.gpu.name,
        shape=MappingProxyType(shape),
        config=MappingProxyType(config),
        total_cycles=total,
        time_s=time_s,
        flops=flops,
        hbm_bytes=float(hbm_bytes),
        l2_hit_bytes=float(raw.stats[_engine.ST_L2_HIT_BYTES]),
        achieved_hbm_bw_bytes_per_s=float(hbm_bytes / time_s) if time_s > 0 else 0.0,
        achieved_flops_per_s=flops / time_s if time_s > 0 else 0.0,
        num_ctas=num_ctas,
        ctas_per_sm=ctas_per_sm,
        num_waves=_cdiv(num_ctas, m.num_sms * ctas_per_sm),
        occupancy_frac=min(1.0, ctas_per_sm * num_threads / m.max_threads_per_sm),
        hbm_util_frac=float(hbm_util),
        pipe_util_frac=float(pipe_util),
        bound=_bound(total, m.launch_cycles, hbm_util, pipe_util),
        cta_sm=raw.cta_sm,
        cta_start_cycles=raw.cta_start,
        cta_end_cycles=raw.cta_end,
    )


# ----------------------------------------------------------------------------- GEMM
@dataclass(frozen=True, slots=True, kw_only=True)
class GemmConfig:
    """A concrete GEMM launch: tile, pipeline depth, split-K and residency."""

    tile: TileConfig
    num_stages: int
    split_k: int
    ctas_per_sm: int


def _gemm_operands(m: Machine, compute_type: str, weight_bits: int) -> tuple[float, float, str]:
    """(activation bytes/elem, weight bytes/elem, tensor-core type) for a GEMM."""
    if compute_type not in OPERAND_BYTES:
        raise ConfigError(
            f"unknown GEMM compute type {compute_type!r}; valid: {', '.join(OPERAND_BYTES)}"
        )
    m.gpu.peak(compute_type)  # raises if the GPU lacks this tensor-core path
    a_bytes = float(OPERAND_BYTES[compute_type])
    if weight_bits not in (4, 8, 16):
        raise ConfigError(f"weight_bits must be 4, 8 or 16, got {weight_bits!r}")
    if OPERAND_BYTES[compute_type] == 1:
        if weight_bits == 4:
            raise ConfigError("4-bit weights are modelled with fp16/bf16 activations only (w4a16)")
        return a_bytes, 1.0, compute_type
    return a_bytes, weight_bits / 8.0 if weight_bits < 16 else a_bytes, compute_type


def gemm_work(
    mach: Machine,
    *,
    m: int,
    n: int,
    k: int,
    compute_type: str,
    weight_bits: int,
    group_size: int,
    tile: TileConfig,
    split_k: int,
) -> Work:
    """Work of ``C[m,n] = A[m,k] @ W[k,n]`` tiled by ``tile``, K split ``split_k`` ways.

    CTA order is M-tile fastest (CUTLASS's identity swizzle on ``blockIdx.x``), so the CTAs of
    one wave share weight columns and reuse A rows through L2.
    """
    a_bytes, w_bytes, ct = _gemm_operands(mach, compute_type, weight_bits)
    bm, bn, bk = tile.block_m, tile.block_n, tile.block_k
    tm, tn, kb = _cdiv(m, bm), _cdiv(n, bn), _cdiv(k, bk)
    kb_split = _cdiv(kb, split_k)
    num_ctas = tm * tn * split_k
    _check_grid("gemm", num_ctas, tm * tn * kb, f"m={m} n={n} k={k}")
    cta = np.arange(num_ctas, dtype=np.int64)
    m_idx = cta % tm
    n_idx = (cta // tm) % tn
    s_idx = cta // (tm * tn)
    k0 = s_idx * kb_split
    kiters = np.clip(kb - k0, 0, kb_split)
    cta_iter_ptr = np.zeros(num_ctas + 1, dtype=np.int64)
    np.cumsum(kiters, out=cta_iter_ptr[1:])
    num_iters = int(cta_iter_ptr[-1])
    iter_cta = np.repeat(cta, kiters)
    kk = k0[iter_cta] + (np.arange(num_iters, dtype=np.int64) - cta_iter_ptr[iter_cta])
    rows = np.minimum(bm, m - m_idx[iter_cta] * bm).astype(np.float64)  # (iters,)
    cols = np.minimum(bn, n - n_idx[iter_cta] * bn).astype(np.float64)
    depth = np.minimum(bk, k - kk * bk).astype(np.float64)
    load_key = np.empty((num_iters, 2), dtype=np.int64)
    load_key[:, 0] = m_idx[iter_cta] * kb + kk  # A tile (m, kk)
    load_key[:, 1] = tm * kb + n_idx[iter_cta] * kb + kk  # W tile (n, kk)
    load_bytes = np.empty((num_iters, 2), dtype=np.float64)
    load_bytes[:, 0] = rows * depth * a_bytes
    w_tile_bytes = depth * cols * w_bytes
    if weight_bits < 16 and OPERAND_BYTES[ct] > 1:
        w_tile_bytes += np.ceil(depth / group_size) * cols * _SCALE_ZERO_BYTES_PER_GROUP
    load_bytes[:, 1] = w_tile_bytes
    # Tensor cores compute the whole (padded) tile; partial K tiles still issue full MMAs.
    rate = mach.tensor_flops_per_cycle_per_sm(ct)
    compute = np.full(num_iters, 2.0 * bm * bn * bk / rate + mach.fitted.iteration_overhead_cycles)
    if weight_bits < 16 and OPERAND_BYTES[ct] > 1:
        fma_lanes = mach.fp32_flops_per_cycle_per_sm / 2.0
        compute += bk * bn * DEQUANT_INSTR_PER_WEIGHT / fma_lanes
    store_rows = np.minimum(bm, m - m_idx * bm).astype(np.float64)
    store_cols = np.minimum(bn, n - n_idx * bn).astype(np.float64)
    if split_k > 1:
        # Serial split-K (CUTLASS "kSerial"): fp32 partials through a workspace, read back.
        store = store_rows * store_cols * _ACC_BYTES * 2.0
    else:
        store = store_rows * store_cols * _OUT_BYTES
    return Work(
        cta_iter_ptr=cta_iter_ptr,
        iter_load_ptr=np.arange(0, 2 * num_iters + 1, 2, dtype=np.int64),
        load_key=load_key.reshape(-1),
        load_bytes=load_bytes.reshape(-1),
        load_phase=np.zeros(2 * num_iters, dtype=np.int8),
        iter_compute_cycles=compute,
        cta_store_bytes=store,
        num_keys=tm * kb + tn * kb,
    )


def gemm_configs(
    mach: Machine,
    *,
    m: int,
    n: int,
    k: int,
    compute_type: str,
    weight_bits: int,
    group_size: int,
    double_buffering: bool = True,
) -> list[GemmConfig]:
    """Candidate launches: each CUTLASS tile that fits, with split-K for grids below one wave."""
    a_bytes, w_bytes, _ = _gemm_operands(mach, compute_type, weight_bits)
    out: list[GemmConfig] = []
    for tile in mach.tiles:
        stage_bytes = int(
            tile.block_m * tile.block_k * a_bytes
            + tile.block_k * tile.block_n * w_bytes
            + (tile.block_n * _SCALE_ZERO_BYTES_PER_GROUP if weight_bits < 16 else 0)
        )
        stages = min(tile.max_stages, mach.smem_bytes_per_sm // stage_bytes)
        if not double_buffering:
            stages = min(stages, 1)
        if stages < 1:
            continue
        reg_bytes = tile.block_m * tile.block_n * _ACC_BYTES + tile.num_threads * _BASE_REGS_PER_THREAD * 4
        per_sm = _residency(
            mach, smem_bytes=stages * stage_bytes, num_threads=tile.num_threads, reg_bytes=reg_bytes
        )
        if per_sm < 1:
            continue
        grid = _cdiv(m, tile.block_m) * _cdiv(n, tile.block_n)
        kb = _cdiv(k, tile.block_k)
        for split in (1, 2, 4, 8, 16):
            if split > 1 and (grid * split // 2 >= mach.num_sms or kb // split < 4):
                break
            out.append(GemmConfig(tile=tile, num_stages=stages, split_k=split, ctas_per_sm=per_sm))
    if not out:
        raise ConfigError(
            f"no GEMM tile fits the shared memory of {mach.gpu.name} "
            f"({mach.smem_bytes_per_sm} B per SM)"
        )
    return out


def _gemm_lower_bound_cycles(
    mach: Machine, m: int, n: int, k: int, compute_type: str, weight_bits: int, cfg: GemmConfig
) -> float:
    """A bound the engine cannot beat: launch + max(pipe work per SM, L2 traffic, HBM traffic)."""
    a_bytes, w_bytes, ct = _gemm_operands(mach, compute_type, weight_bits)
    t = cfg.tile
    tm, tn, kb = _cdiv(m, t.block_m), _cdiv(n, t.block_n), _cdiv(k, t.block_k)
    per_iter = 2.0 * t.block_m * t.block_n * t.block_k / mach.tensor_flops_per_cycle_per_sm(ct)
    pipe = tm * tn * kb * per_iter / mach.num_sms
    l2_bytes = m * k * a_bytes * tn + k * n * w_bytes * tm
    hbm_bytes = m * k * a_bytes + k * n * w_bytes
    return mach.launch_cycles + max(
        pipe, l2_bytes / mach.l2_bytes_per_cycle, hbm_bytes / mach.hbm_bytes_per_cycle
    )


def simulate_gemm(
    gpu: str | GpuSpec | Machine,
    *,
    m: int,
    n: int,
    k: int,
    compute_type: str = "fp16",
    weight_bits: int = 16,
    group_size: int = 128,
    double_buffering: bool = True,
    config: GemmConfig | None = None,
) -> KernelResult:
    """Simulate ``C[m,n] = A[m,k] @ W[k,n]`` (``m`` = tokens, ``W`` = weights).

    Args:
        gpu: catalogue name, spec or derived machine.
        m, n, k: problem size.
        compute_type: tensor-core type: fp16, bf16, fp8, int8 (fp32/tf32 also accepted).
        weight_bits: 16 (same as activations), 8 or 4 (weight-only, dequantized per tile to
            the activation type; 8 with fp8/int8 means W8A8).
        group_size: quantization group along K for weight-only schemes.
        double_buffering: False limits the pipeline to one stage (no load/compute overlap).
        config: force one launch configuration instead of the fastest candidate.

    Returns:
        The fastest candidate's result (a tuned library's heuristic).

    Raises:
        ConfigError: bad shape, compute type the GPU lacks, or missing GPU fields.
    """
    _positive(m=m, n=n, k=k, group_size=group_size)
    mach = _machine(gpu)
    candidates = (
        [config]
        if config is not None
        else gemm_configs(
            mach, m=m, n=n, k=k, compute_type=compute_type, weight_bits=weight_bits,
            group_size=group_size, double_buffering=double_buffering,
        )
    )
    # Simulate candidates from the lowest lower bound up and skip any whose bound cannot beat
    # the best so far (exact pruning: the bound is one the engine can never go below).
    candidates = sorted(
        candidates,
        key=lambda c: _gemm_lower_bound_cycles(mach, m, n, k, compute_type, weight_bits, c),
    )
    best: tuple[float, GemmConfig, RawRun] | None = None
    for cfg in candidates:
        bound = _gemm_lower_bound_cycles(mach, m, n, k, compute_type, weight_bits, cfg)
        if best is not None and bound >= best[0]:
            continue
        work = gemm_work(
            mach, m=m, n=n, k=k, compute_type=compute_type, weight_bits=weight_bits,
            group_size=group_size, tile=cfg.tile, split_k=cfg.split_k,
        )
        raw = run_work(work, _launch(mach, ctas_per_sm=cfg.ctas_per_sm, num_stages=cfg.num_stages))
        if best is None or raw.total_cycles < best[0]:
            best = (raw.total_cycles, cfg, raw)
    assert best is not None
    _, cfg, raw = best
    return _result(
        kernel="gemm",
        m=mach,
        shape={"m": m, "n": n, "k": k, "compute_type": compute_type, "weight_bits": weight_bits,
               "group_size": group_size},
        config={"block_m": cfg.tile.block_m, "block_n": cfg.tile.block_n,
                "block_k": cfg.tile.block_k, "num_threads": cfg.tile.num_threads,
                "num_stages": cfg.num_stages, "split_k": cfg.split_k,
                "double_buffering": cfg.num_stages > 1},
        raw=raw,
        flops=2.0 * m * n * k,
        num_threads=cfg.tile.num_threads,
        ctas_per_sm=cfg.ctas_per_sm,
    )


# ----------------------------------------------------------------------------- prefill
def simulate_prefill_attention(
    gpu: str | GpuSpec | Machine,
    *,
    batch: int,
    query_tokens: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    context_tokens: int | None = None,
    causal: bool = True,
    kv_bytes_per_elem: float = 2,
    compute_type: str = "fp16",
    double_buffering: bool = True,
) -> KernelResult:
    """Simulate FlashAttention-style prefill: Q tiles against K/V tiles with online softmax.

    Args:
        batch: sequences (all of the same length here).
        query_tokens: new tokens per sequence.
        num_heads, num_kv_heads, head_dim: attention geometry (GQA when kv < q heads).
        context_tokens: keys per sequence (>= query_tokens; default = query_tokens, i.e. no
            cached prefix).
        causal: causal mask (only K/V tiles at or before the diagonal are visited).
        kv_bytes_per_elem: K/V element size.
        compute_type: tensor-core type of the two GEMMs.
        double_buffering: False = one K/V stage.

    Raises:
        ConfigError: bad shape or GPU fields missing.
    """
    context_tokens = query_tokens if context_tokens is None else context_tokens
    _positive(batch=batch, query_tokens=query_tokens, num_heads=num_heads,
              num_kv_heads=num_kv_heads, head_dim=head_dim, context_tokens=context_tokens)
    _positive_bytes("kv_bytes_per_elem", kv_bytes_per_elem)
    if num_heads % num_kv_heads:
        raise ConfigError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
    if context_tokens < query_tokens:
        raise ConfigError(f"context_tokens ({context_tokens}) must be >= query_tokens ({query_tokens})")
    mach = _machine(gpu)
    bm, bn, threads, max_stages = _PREFILL_TILES[90 if mach.cc >= 90 else 80]
    stages = max_stages if double_buffering else 1
    tm = _cdiv(query_tokens, bm)
    num_ctas = batch * num_heads * tm
    _check_grid("attention-prefill", num_ctas, num_ctas * _cdiv(context_tokens, bn),
                f"batch={batch} query_tokens={query_tokens} context_tokens={context_tokens} "
                f"num_heads={num_heads}")
    group = num_heads // num_kv_heads
    cta = np.arange(num_ctas, dtype=np.int64)
    mq = cta % tm  # q tile fastest (FA2 grid: blockIdx.x = m_block)
    h = (cta // tm) % num_heads
    b = cta // (tm * num_heads)
    offset = context_tokens - query_tokens
    if causal:
        last_key = np.minimum(context_tokens, offset + (mq + 1) * bm)
    else:
        last_key = np.full(num_ctas, context_tokens, dtype=np.int64)
    kiters = -(-last_key // bn)
    cta_iter_ptr = np.zeros(num_ctas + 1, dtype=np.int64)
    np.cumsum(kiters, out=cta_iter_ptr[1:])
    num_iters = int(cta_iter_ptr[-1])
    iter_cta = np.repeat(cta, kiters)
    j = np.arange(num_iters, dtype=np.int64) - cta_iter_ptr[iter_cta]
    kv_tiles = _cdiv(context_tokens, bn)
    kv_group = b[iter_cta] * num_kv_heads + h[iter_cta] // group
    keys_k = kv_group * kv_tiles * 2 + j * 2
    tok = np.minimum(bn, context_tokens - j * bn).astype(np.float64)
    rows = np.minimum(bm, query_tokens - mq * bm).astype(np.float64)
    # Loads: iteration j fetches K_j and V_j; the first iteration also fetches the Q tile.
    is_first = j == 0
    nloads = 2 + is_first.astype(np.int64)
    iter_load_ptr = np.zeros(num_iters + 1, dtype=np.int64)
    np.cumsum(nloads, out=iter_load_ptr[1:])
    total_loads = int(iter_load_ptr[-1])
    load_key = np.full(total_loads, -1, dtype=np.int64)
    load_bytes = np.empty(total_loads, dtype=np.float64)
    base = iter_load_ptr[:-1] + is_first
    load_key[base] = keys_k
    load_key[base + 1] = keys_k + 1
    load_bytes[base] = tok * head_dim * kv_bytes_per_elem
    load_bytes[base + 1] = tok * head_dim * kv_bytes_per_elem
    first_pos = iter_load_ptr[:-1][is_first]
    load_bytes[first_pos] = rows[iter_cta[is_first]] * head_dim * 2.0
    rate = mach.tensor_flops_per_cycle_per_sm(compute_type)
    compute = np.full(
        num_iters,
        4.0 * bm * bn * head_dim / rate + bm * bn / SFU_OPS_PER_CYCLE_PER_SM
        + mach.fitted.iteration_overhead_cycles,
    )
    stage_bytes = 2 * bn * head_dim * kv_bytes_per_elem
    smem = bm * head_dim * 2 + stages * stage_bytes
    reg_bytes = bm * head_dim * _ACC_BYTES + bm * bn * _ACC_BYTES + threads * _BASE_REGS_PER_THREAD * 4
    per_sm = _residency(mach, smem_bytes=smem, num_threads=threads, reg_bytes=reg_bytes)
    if per_sm < 1:
        raise ConfigError(f"head_dim {head_dim} attention tiles do not fit one SM of {mach.gpu.name}")
    work = Work(
        cta_iter_ptr=cta_iter_ptr,
        iter_load_ptr=iter_load_ptr,
        load_key=load_key,
        load_bytes=load_bytes,
        load_phase=np.zeros(total_loads, dtype=np.int8),
        iter_compute_cycles=compute,
        cta_store_bytes=rows * head_dim * _OUT_BYTES,
        num_keys=batch * num_kv_heads * kv_tiles * 2,
    )
    raw = run_work(work, _launch(mach, ctas_per_sm=per_sm, num_stages=stages))
    # Useful FLOPs: 4 * d per (query, key) pair that the mask keeps.
    if causal:
        pairs = query_tokens * offset + query_tokens * (query_tokens + 1) / 2
    else:
        pairs = query_tokens * context_tokens
    return _result(
        kernel="attention-prefill",
        m=mach,
        shape={"batch": batch, "query_tokens": query_tokens, "context_tokens": context_tokens,
               "num_heads": num_heads, "num_kv_heads": num_kv_heads, "head_dim": head_dim,
               "causal": causal, "kv_bytes_per_elem": kv_bytes_per_elem},
        config={"block_m": bm, "block_n": bn, "num_threads": threads, "num_stages": stages},
        raw=raw,
        flops=4.0 * head_dim * pairs * batch * num_heads,
        num_threads=threads,
        ctas_per_sm=per_sm,
    )


# ----------------------------------------------------------------------------- decode
def num_splits_heuristic(num_tiles: int, num_sms: int, num_n_blocks: int, max_splits: int = 128) -> int:
    """FlashAttention-2's split-KV choice (csrc/flash_attn/flash_api.cpp num_splits_heuristic).

    Picks the smallest split count whose wave efficiency ``n_waves / ceil(n_waves)`` is within
    85 % of the best, and no split when the grid already fills 80 % of the SMs.
    """
    if num_tiles >= 0.8 * num_sms:
        return 1
    max_splits = min(max_splits, num_sms, num_n_blocks)

    def eligible(s: int) -> bool:
        return s == 1 or _cdiv(num_n_blocks, s) != _cdiv(num_n_blocks, s - 1)

    eff = []
    for s in range(1, max_splits + 1):
        if eligible(s):
            waves = num_tiles * s / num_sms
            eff.append(waves / math.ceil(waves))
        else:
            eff.append(0.0)
    best = max(eff) if eff else 1.0
    for s in range(1, max_splits + 1):
        if eligible(s) and eff[s - 1] >= 0.85 * best:
            return s
    return 1


def simulate_decode_attention(
    gpu: str | GpuSpec | Machine,
    *,
    batch: int,
    context_tokens: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    kv_bytes_per_elem: float = 2,
    block_size: int | None = 16,
    num_splits: int | None = None,
    double_buffering: bool = True,
) -> KernelResult:
    """Simulate one decode step of attention over a (paged) KV cache.

    One CTA per (sequence, KV head, split) processes the ``num_heads / num_kv_heads`` query heads
    of its group (FlashDecoding/FlashInfer style). Each iteration covers
    ``DECODE_TILE_TOKENS`` keys. With paging, every KV block of ``block_size`` tokens is a separate
    gather whose address comes from the block table: the table entries are loaded first (a
    dependent L2 access), then the K and V rows of each block (phase-1 loads, each rounded up to
    32-byte sectors), and each block costs ``PAGED_BLOCK_OVERHEAD_CYCLES`` of SM work; whole
    blocks are read, so the last block's padding is paid for (as vLLM's kernel does).

    Args:
        batch: sequences in the decode batch (one query token each).
        context_tokens: keys per sequence.
        num_heads, num_kv_heads, head_dim: attention geometry.
        kv_bytes_per_elem: KV-cache element size (2 fp16, 1 fp8/int8).
        block_size: paged-KV block size in tokens; None = contiguous KV.
        num_splits: KV splits per sequence (flash-decoding); None = FlashAttention-2 heuristic.
        double_buffering: False = one K/V stage.

    Raises:
        ConfigError: bad shape or GPU fields missing.
    """
    _positive(batch=batch, context_tokens=context_tokens, num_heads=num_heads,
              num_kv_heads=num_kv_heads, head_dim=head_dim)
    _positive_bytes("kv_bytes_per_elem", kv_bytes_per_elem)
    if block_size is not None:
        _positive(block_size=block_size)
    if num_splits is not None:
        _positive(num_splits=num_splits)
    if num_heads % num_kv_heads:
        raise ConfigError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
    mach = _machine(gpu)
    group = num_heads // num_kv_heads
    tile = DECODE_TILE_TOKENS
    paged = block_size is not None
    bs = block_size if block_size is not None else tile
    kv_tokens = _cdiv(context_tokens, bs) * bs if paged else context_tokens
    if num_splits is None:
        n_blocks_fa = _cdiv(context_tokens, 128 if head_dim <= 128 else 64)
        num_splits = num_splits_heuristic(batch * num_kv_heads, mach.num_sms, n_blocks_fa)
    # Each split covers a whole number of tiles (and of blocks when blocks exceed a tile).
    unit = max(tile, bs) if paged else tile
    per_split = _cdiv(_cdiv(kv_tokens, unit), num_splits) * unit
    num_splits = _cdiv(kv_tokens, per_split)
    num_ctas = batch * num_kv_heads * num_splits
    _check_grid("attention-decode", num_ctas,
                batch * num_kv_heads * (_cdiv(kv_tokens, tile) + num_splits),
                f"batch={batch} context_tokens={context_tokens} num_kv_heads={num_kv_heads}")
    cta = np.arange(num_ctas, dtype=np.int64)
    sp = cta % num_splits
    t0 = sp * per_split
    t1 = np.minimum(kv_tokens, t0 + per_split)
    kiters = -(-(t1 - t0) // tile)
    cta_iter_ptr = np.zeros(num_ctas + 1, dtype=np.int64)
    np.cumsum(kiters, out=cta_iter_ptr[1:])
    num_iters = int(cta_iter_ptr[-1])
    iter_cta = np.repeat(cta, kiters)
    j = np.arange(num_iters, dtype=np.int64) - cta_iter_ptr[iter_cta]
    a = t0[iter_cta] + j * tile  # first token of the iteration
    bnd = np.minimum(a + tile, t1[iter_cta])
    tok = (bnd - a).astype(np.float64)
    is_first = j == 0
    if paged:
        first_blk = a // bs
        last_blk = (bnd - 1) // bs
        nblk = (last_blk - first_blk + 1).astype(np.float64)
        # A table lookup is needed when the iteration starts a new block.
        needs_table = (a % bs == 0) | is_first
        table_entries = np.where(needs_table, nblk, 0.0)
        row_bytes = np.minimum(tok, float(bs)) * head_dim * kv_bytes_per_elem
        gather_bytes = np.ceil(row_bytes / SECTOR_BYTES) * SECTOR_BYTES * nblk
        overhead = table_entries * PAGED_BLOCK_OVERHEAD_CYCLES
    else:
        nblk = np.ones(num_iters)
        gather_bytes = tok * head_dim * kv_bytes_per_elem
        overhead = np.zeros(num_iters)
        needs_table = np.zeros(num_iters, dtype=bool)
        table_entries = np.zeros(num_iters)
    # Loads per iteration: [Q (first only)] [table (paged, when needed)] K V.
    nq = is_first.astype(np.int64)
    nt = needs_table.astype(np.int64)
    iter_load_ptr = np.zeros(num_iters + 1, dtype=np.int64)
    np.cumsum(nq + nt + 2, out=iter_load_ptr[1:])
    total_loads = int(iter_load_ptr[-1])
    load_key = np.full(total_loads, -1, dtype=np.int64)
    load_bytes = np.empty(total_loads, dtype=np.float64)
    load_phase = np.zeros(total_loads, dtype=np.int8)
    starts = iter_load_ptr[:-1]
    load_bytes[starts[is_first]] = group * head_dim * 2.0
    tpos = (starts + nq)[needs_table]
    # NOTE(cyclesim): the block table (4 B per block) is copied in by the host right before the
    # launch and re-read by every KV head of a sequence: it is modelled as L2-resident.
    load_key[tpos] = _engine.KEY_L2_RESIDENT
    load_bytes[tpos] = np.ceil(table_entries[needs_table] * 4 / SECTOR_BYTES) * SECTOR_BYTES
    kpos = starts + nq + nt
    load_bytes[kpos] = gather_bytes
    load_bytes[kpos + 1] = gather_bytes
    if paged:
        load_phase[tpos] = _engine.PHASE_LOOKUP
        load_phase[kpos] = _engine.PHASE_DEPENDENT
        load_phase[kpos + 1] = _engine.PHASE_DEPENDENT
    # CUDA-core math: q.k and p.v (4 d FLOPs per query head per key) + one exp per score.
    compute = (
        4.0 * group * tile * head_dim / mach.fp32_flops_per_cycle_per_sm
        + group * tile / SFU_OPS_PER_CYCLE_PER_SM
        + mach.fitted.iteration_overhead_cycles
        + overhead
    )
    threads = 128
    stages = 2 if double_buffering else 1
    smem = stages * 2 * tile * head_dim * kv_bytes_per_elem + group * head_dim * 2
    reg_bytes = threads * (_BASE_REGS_PER_THREAD + 32) * 4
    per_sm = _residency(mach, smem_bytes=smem, num_threads=threads, reg_bytes=reg_bytes)
    if per_sm < 1:
        raise ConfigError(f"decode tiles for head_dim {head_dim} do not fit one SM of {mach.gpu.name}")
    out_bytes = group * head_dim * (_ACC_BYTES + 4 if num_splits > 1 else _OUT_BYTES)
    work = Work(
        cta_iter_ptr=cta_iter_ptr,
        iter_load_ptr=iter_load_ptr,
        load_key=load_key,
        load_bytes=load_bytes,
        load_phase=load_phase,
        iter_compute_cycles=compute,
        cta_store_bytes=np.full(num_ctas, float(out_bytes)),
        num_keys=1,
    )
    raw = run_work(work, _launch(mach, ctas_per_sm=per_sm, num_stages=stages))
    extra_cycles = 0.0
    extra_bytes = 0.0
    if num_splits > 1:
        # Combine kernel (flash-decoding's second pass): read the fp32 partials and LSEs, write
        # the output; a separate launch, costed as launch + streaming time + one HBM latency.
        extra_bytes = batch * num_heads * head_dim * (num_splits * (_ACC_BYTES + 4) + _OUT_BYTES)
        extra_cycles = mach.launch_cycles + extra_bytes / mach.hbm_bytes_per_cycle + HBM_LATENCY_CYCLES
    return _result(
        kernel="attention-decode",
        m=mach,
        shape={"batch": batch, "context_tokens": context_tokens, "num_heads": num_heads,
               "num_kv_heads": num_kv_heads, "head_dim": head_dim,
               "kv_bytes_per_elem": kv_bytes_per_elem, "block_size": block_size},
        config={"tile_tokens": tile, "num_splits": num_splits, "num_threads": threads,
                "num_stages": stages, "paged": paged},
        raw=raw,
        flops=4.0 * head_dim * context_tokens * batch * num_heads,
        num_threads=threads,
        ctas_per_sm=per_sm,
        extra_cycles=extra_cycles,
        extra_hbm_bytes=extra_bytes,
    )
