"""Machine parameters of the cycle model: what comes from the GPU spec, what is cited, what is fitted.

Three kinds of numbers feed :mod:`hwmodels.cyclesim._engine`:

* from :class:`~hwmodels.gpus.GpuSpec` (datasheets): SM count, clock, HBM bandwidth, dense
  tensor-core peaks, L2 size, usable shared memory and register file per SM;
* cited architectural constants (this file, each with its source): residency limits, L2
  bandwidth and latencies, SFU rate, CUTLASS tile shapes;
* four fitted efficiencies (``FITTED``), chosen by hand on the Llama-2-7B kernel timings and
  checked on the held-out Llama-2-70B timings (``servesim kernel calibrate``): the sustained
  fraction of HBM bandwidth, the sustained fraction of the tensor-core peak, the launch/ramp
  overhead and the per-CTA prologue.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from servesim.hwmodels.errors import ConfigError
from servesim.hwmodels.gpus import GpuSpec

#: Bytes per element of the operands, per compute type of the GEMM.
OPERAND_BYTES: Mapping[str, int] = MappingProxyType(
    {"fp32": 4, "tf32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1}
)


@dataclass(frozen=True, slots=True, kw_only=True)
class TileConfig:
    """One GEMM threadblock configuration (a CUTLASS ``GemmShape`` + stage count).

    Attributes:
        block_m, block_n, block_k: CTA tile (rows of A/C, columns of B/C, K depth per stage).
        num_threads: threads per CTA.
        max_stages: SRAM pipeline depth the kernel is built with (capped by shared memory).
    """

    block_m: int
    block_n: int
    block_k: int
    num_threads: int
    max_stages: int


# NOTE(cyclesim): the candidate tiles are the ones CUTLASS ships as defaults / profiler kernels
# for tensor-op GEMM; cuBLAS picks among similar shapes by heuristic. The cycle model simulates
# each candidate (and split-K variants for small grids) and keeps the fastest, i.e. it assumes
# a well-tuned heuristic.
#   sm80: cutlass/include/cutlass/gemm/device/default_gemm_configuration.h
#         (OpClassTensorOp, Sm80, half: ThreadblockShape 128x256x64, WarpShape 64x64x64,
#         kStages 3) and the 128x128x32/64x64x64 multistage kernels of cutlass/test/unit/gemm/
#         device/gemm_f16n_f16t_f32t_tensor_op_f32_sm80.cu.
#   sm90: CUTLASS 3 KernelTmaWarpSpecializedCooperative/Pingpong examples (examples/48_hopper_
#         warp_specialized_gemm: TileShape 128x128x64 and 128x256x64; StageCountAutoCarveout
#         fills the shared memory, 4-7 stages).
#   small batch (both): a 16-row tile as in Marlin's w4a16 kernel (IST-DASLab/marlin, Frantar et
#         al. arXiv:2408.11743: 16 x 256 CTA tiles, 4-stage cp.async pipeline) and cuBLAS's
#         small-M GEMV-like kernels, so that m <= 16 does not pay for a 64-row MMA tile.
_TILE_SMALL_M = TileConfig(block_m=16, block_n=256, block_k=64, num_threads=256, max_stages=4)
_TILES_SM80: tuple[TileConfig, ...] = (
    TileConfig(block_m=128, block_n=256, block_k=64, num_threads=256, max_stages=3),
    TileConfig(block_m=128, block_n=128, block_k=64, num_threads=256, max_stages=4),
    TileConfig(block_m=64, block_n=128, block_k=64, num_threads=128, max_stages=4),
    TileConfig(block_m=64, block_n=64, block_k=64, num_threads=128, max_stages=5),
    _TILE_SMALL_M,
)
_TILES_SM90: tuple[TileConfig, ...] = (
    TileConfig(block_m=128, block_n=256, block_k=64, num_threads=384, max_stages=4),
    TileConfig(block_m=128, block_n=128, block_k=64, num_threads=384, max_stages=6),
    TileConfig(block_m=64, block_n=128, block_k=64, num_threads=256, max_stages=7),
    TileConfig(block_m=64, block_n=64, block_k=64, num_threads=128, max_stages=8),
    _TILE_SMALL_M,
)

#: Residency limits per compute capability: (max threads per SM, max resident CTAs per SM).
#: NVIDIA CUDA C++ Programming Guide, "Features and Technical Specifications" table:
#: cc 7.0 2048/32, cc 8.0 2048/32, cc 8.6 1536/16, cc 8.9 1536/24, cc 9.0 2048/32,
#: cc 10.0 2048/32. Non-NVIDIA parts (no sm_ number) use the cc 8.0 figures.
_RESIDENCY: Mapping[int, tuple[int, int]] = MappingProxyType(
    {70: (2048, 32), 80: (2048, 32), 86: (1536, 16), 89: (1536, 24), 90: (2048, 32),
     100: (2048, 32)}
)

#: L2 -> SM bandwidth in bytes per SM clock for the whole chip. A100 whitepaper: "5120 Bytes/clk"
#: L2 read bandwidth (vs 2048 for V100); the H100 (PCIe) microbenchmark figure of 8986 GB/s at
#: 1755 MHz (PMC10448217, Table 3) is the same 5120 B/clk, used for every part here.
L2_BYTES_PER_CYCLE = 5120.0

#: Load-to-use latencies in SM cycles. Luo et al., "Benchmarking and Dissecting the Nvidia Hopper
#: GPU Architecture" (arXiv:2402.13499), memory-latency microbenchmarks: L2 hit ~200-260 cycles,
#: global memory (HBM) ~470-480 cycles on A100/H100; PMC10448217 Table 3 uses 200/400.
L2_LATENCY_CYCLES = 220.0
HBM_LATENCY_CYCLES = 480.0

#: Special-function (exp2) results per SM per clock: CUDA C++ Programming Guide, "Arithmetic
#: Instructions" throughput table, 16 for cc 7.x, 8.x and 9.0 (the FlashAttention-3 paper's
#: "3.9 TFLOPS of exponential vs 989 TFLOPS of matmul" on H100 is the same figure).
SFU_OPS_PER_CYCLE_PER_SM = 16.0

#: Effective fraction of the L2 that keeps operand tiles for reuse. A100 and H100 split L2 into
#: two partitions, each caching for the GPCs attached to it, so data used by SMs on both sides
#: is held twice (A100 whitepaper, "L2 cache"; Chips and Cheese, "Nvidia's H100: Funny L2").
L2_USABLE_FRAC = 0.5

#: Instructions per dequantized 4-bit weight (unpack shift/mask via lop3, int->half convert via
#: the magic-number trick, one hfma2 for scale and zero point, halved by half2 packing) issued at
#: the fp32 lane rate: Kim et al. / Frantar et al., Marlin (arXiv:2408.11743) and AWQ kernels.
DEQUANT_INSTR_PER_WEIGHT = 2.0

#: Granularity of a DRAM access: the 32-byte L2 sector (CUDA C++ Best Practices Guide,
#: "Coalesced Access to Global Memory").
SECTOR_BYTES = 32


@dataclass(frozen=True, slots=True, kw_only=True)
class FittedParams:
    """The few fitted parameters (see ``docs/cycle-model.md`` for the fit).

    Attributes:
        hbm_efficiency_frac: sustained fraction of the datasheet HBM bandwidth (refresh, bank
            and page turnarounds); STREAM-like copies reach 0.85-0.92 on A100/H100.
        tensor_efficiency_frac: sustained fraction of the dense tensor-core peak in a GEMM
            main loop (clock drop under power capping, issue and barrier slots).
        launch_overhead_s: from kernel start to the first CTA loads (grid launch, ramp).
        cta_prologue_cycles: per CTA: block scheduling, index math, prologue/epilogue setup.
        iteration_overhead_cycles: per main-loop iteration: barrier, pointer/predicate update.
    """

    hbm_efficiency_frac: float
    tensor_efficiency_frac: float
    launch_overhead_s: float
    cta_prologue_cycles: float
    iteration_overhead_cycles: float


#: Fitted on the Llama-2-7B timings (A100-SXM4-80GB and H100-SXM), held out on Llama-2-70B, by
#: a grid search of (hbm_efficiency_frac x launch_overhead_s) on the memory-bound points
#: (1..64 tokens) - A100: eff {0.80, 0.85, 0.90} x {2, 3, 4} us -> median |err| 0.044-0.19,
#: H100: eff {0.85, 0.90, 0.95} x {2, 3, 4} us -> 0.058-0.16 - and a check of the
#: tensor-core fraction on the compute-bound points (>= 1024 tokens). The other two are set,
#: not fitted: ~400 cycles of CTA set-up and ~32 cycles of barrier + pointer update per
#: main-loop iteration (CUTLASS multistage main loop: one __syncthreads + cp.async.wait_group).
FITTED: Mapping[int, FittedParams] = MappingProxyType(
    {
        80: FittedParams(
            hbm_efficiency_frac=0.80,
            tensor_efficiency_frac=0.80,
            launch_overhead_s=3.5e-6,
            cta_prologue_cycles=400.0,
            iteration_overhead_cycles=32.0,
        ),
        90: FittedParams(
            hbm_efficiency_frac=0.88,
            tensor_efficiency_frac=0.80,
            launch_overhead_s=3.5e-6,
            cta_prologue_cycles=400.0,
            iteration_overhead_cycles=32.0,
        ),
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Machine:
    """Everything the engine needs about one GPU, in per-cycle units.

    Attributes:
        gpu: the spec it was derived from.
        cc: compute capability as an integer (80, 90, ...; 0 = not NVIDIA).
        num_sms, clock_hz: from the spec.
        smem_bytes_per_sm, regfile_bytes_per_sm, l2_bytes: from the spec.
        max_threads_per_sm, max_ctas_per_sm: residency limits (cited).
        hbm_bytes_per_cycle: sustained HBM bandwidth per SM clock (whole chip).
        l2_bytes_per_cycle: L2 bandwidth per SM clock (whole chip).
        fp32_flops_per_cycle_per_sm: CUDA-core FMA rate (x2) per SM.
        fitted: the fitted efficiencies.
        tiles: candidate GEMM tiles.
    """

    gpu: GpuSpec
    cc: int
    num_sms: int
    clock_hz: float
    smem_bytes_per_sm: int
    regfile_bytes_per_sm: int
    l2_bytes: int
    max_threads_per_sm: int
    max_ctas_per_sm: int
    hbm_bytes_per_cycle: float
    l2_bytes_per_cycle: float
    fp32_flops_per_cycle_per_sm: float
    fitted: FittedParams
    tiles: tuple[TileConfig, ...]

    @property
    def launch_cycles(self) -> float:
        """Launch overhead in cycles."""
        return self.fitted.launch_overhead_s * self.clock_hz

    @property
    def l2_capacity_bytes(self) -> float:
        """L2 bytes effectively available for operand reuse."""
        return self.l2_bytes * L2_USABLE_FRAC

    def tensor_flops_per_cycle_per_sm(self, compute_type: str) -> float:
        """Sustained tensor-core FLOP per cycle per SM for ``compute_type``."""
        peak = self.gpu.peak(compute_type)
        return peak * self.fitted.tensor_efficiency_frac / self.num_sms / self.clock_hz


def _compute_capability(arch: str) -> int:
    match = re.search(r"sm_(\d+)", arch)
    return int(match.group(1)) if match else 0


def machine_for(gpu: GpuSpec, *, fitted: FittedParams | None = None) -> Machine:
    """Derive the cycle model's machine from a GPU spec.

    Args:
        gpu: the GPU.
        fitted: override the fitted parameters (for fitting and sensitivity studies).

    Raises:
        ConfigError: a field the cycle model needs is missing for this GPU.
    """
    needed = {
        "num_sms": gpu.num_sms,
        "clock_hz": gpu.clock_hz,
        "l2_bytes": gpu.l2_bytes,
        "smem_max_bytes_per_sm": gpu.smem_max_bytes_per_sm,
        "regfile_bytes_per_sm": gpu.regfile_bytes_per_sm,
    }
    missing = [k for k, v in needed.items() if v is None]
    if missing:
        raise ConfigError(
            f"the cycle model needs {', '.join(missing)} for GPU {gpu.name}, which its "
            "catalogue entry does not give; use the roofline cost model or add the fields in a "
            "GPU YAML file"
        )
    cc = _compute_capability(gpu.arch)
    max_threads, max_ctas = _RESIDENCY.get(cc, (2048, 32))
    if fitted is None:
        fitted = FITTED[90] if cc >= 90 else FITTED[80]
    tiles = _TILES_SM90 if cc >= 90 else _TILES_SM80
    fp32_peak = gpu.peak_flops_per_s.get("fp32", gpu.peak_fp16_flops_per_s / 16)
    return Machine(
        gpu=gpu,
        cc=cc,
        num_sms=int(gpu.num_sms),  # type: ignore[arg-type]
        clock_hz=float(gpu.clock_hz),  # type: ignore[arg-type]
        smem_bytes_per_sm=int(gpu.smem_max_bytes_per_sm),  # type: ignore[arg-type]
        regfile_bytes_per_sm=int(gpu.regfile_bytes_per_sm),  # type: ignore[arg-type]
        l2_bytes=int(gpu.l2_bytes),  # type: ignore[arg-type]
        max_threads_per_sm=max_threads,
        max_ctas_per_sm=max_ctas,
        hbm_bytes_per_cycle=gpu.hbm_bw_bytes_per_s * fitted.hbm_efficiency_frac / gpu.clock_hz,  # type: ignore[operator]
        l2_bytes_per_cycle=L2_BYTES_PER_CYCLE,
        fp32_flops_per_cycle_per_sm=fp32_peak / gpu.num_sms / gpu.clock_hz,  # type: ignore[operator]
        fitted=fitted,
        tiles=tiles,
    )
