"""What one forward step of a batch costs: :class:`StepCostModel`.

The serving engine calls :meth:`StepCostModel.cost` once per simulated step (or once per
stretch of steps, with arrays) from batch *aggregates*, so evaluation is O(1) per step with no
per-request loop. The model (details and sources in ``docs/step-cost.md``):

* Every GEMM of every layer: the calibrated roofline of :mod:`hwmodels.roofline`
  (``launch + max(compute, memory)`` with size-dependent efficiency) at M = tokens this step;
  weights are read once per step under the quantization scheme, at the scheme's tensor-core
  peak; weight-only schemes add dequantisation work on the fp32 path.
* MoE: the routed experts' weights are read only for experts some token picks; with T tokens
  choosing top-k of E, the expected number touched is ``E (1 - (1 - k/E)^T)``.
* Attention: prefill is FlashAttention-style compute over ``prefill_attn_pairs`` (query, key)
  pairs plus one read of the chunks' KV; decode reads every decoding sequence's KV once
  (``decode_ctx_tokens x`` KV bytes per token per layer, at the KV dtype; MLA reads the latent).
  Over an 8/4-bit cache the decode kernel reaches the stack's ``kv_quant_decode_eff`` of the
  16-bit kernel's bandwidth (dequantization in the kernel); stacks whose decode attention runs
  on CUDA cores (``decode_attn_tensor_cores: false``) price its FLOPs at
  ``roofline.CUDA_CORE_ATTN_EFF_FRAC`` of the FP32 peak (GQA decode turns compute-bound).
* Elementwise kernels (``norm``: add+RMSNorm, RoPE, activation) are memory-bound.
* Tensor parallel: GEMMs and heads are sharded; two all-reduces per layer, each the GPU's
  measured all-reduce time at that message size and TP size (interpolated; past the measured
  sizes, and where none are listed, ``latency + 2 (n-1)/n x bytes / bus bandwidth``).
* Expert parallel (``expert_parallel`` = ep): the routed experts are laid across the stage's
  TP group, ``(experts + redundant) / ep`` whole experts per GPU, each split ``tp / ep`` ways.
  The slowest GPU sets the step: its routed GEMMs run on the *expected maximum* load over the
  ep ranks instead of the mean (:func:`expert_max_load_sigma`). With attention data parallel
  (``attention_data_parallel`` = dp, needs ep = tp) each rank runs ``1/dp`` of the batch through
  attention, dense GEMMs and the LM head, and every MoE layer adds a dispatch and a combine
  all-to-all (``latency + T k h bytes / bandwidth``, DeepEP's figures per GPU in
  ``hwmodels/data/achievable.yaml``).
* Pipeline parallel: layers split into ``pp`` contiguous stages. The *latency* of a step is the
  sum of the stage times plus ``pp - 1`` activation transfers (a batch traverses every stage);
  with ``pp`` micro-batches in flight a new step can start every ``bottleneck_stage_s`` (the
  slowest stage), so throughput is limited by that stage and the bubble is
  ``1 - sum(stage) / (pp x max(stage))``.
* A fixed per-step host overhead (scheduling, input preparation, launch, sampling
  bookkeeping), :data:`DEFAULT_STEP_OVERHEAD_S`.

``_evaluate`` is the readable reference: it is written once against a tiny backend
(``max``/``ceil``/``where``) so it runs on Python floats and on numpy arrays (:meth:`cost`), and
it also yields the split by bound, per-stage times and per-operator :meth:`breakdown`. Every
fast caller uses the *packed form* instead (:meth:`StepCostModel.packed` +
:func:`hwmodels.stepkernel.packed_step_time_s`, numba), which sums the same operator times in
the same order: the tests pin the two bit for bit on every bundled model shape.
"""

from __future__ import annotations

import functools
import math
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from servesim.hwmodels import stepkernel as sk
from servesim.hwmodels.achievable import efficiency_for
from servesim.hwmodels.errors import CapacityError, ConfigError
from servesim.hwmodels.gpus import GpuSpec, get_gpu
from servesim.hwmodels.models import ModelSpec, get_model
from servesim.hwmodels.ops import (
    ACT_BYTES,
    OP_ORDER,
    GemmOp,
    OpCost,
    attn_flops_per_pair,
    check_expert_parallel,
    check_tp,
    elementwise_bytes_per_token_per_layer,
    elementwise_kernels_per_layer,
    kv_bytes_per_token_per_layer_per_gpu,
    layer_gemms,
    lm_head_gemm,
)
from servesim.hwmodels.quant import (
    KvDtype,
    QuantScheme,
    check_kv_dtype_supported,
    get_kv_dtype,
    get_scheme,
    weight_bytes_per_gpu,
)
from servesim.hwmodels.roofline import (
    ATTN_COMPUTE_EFF_MAX_FRAC,
    ATTN_FLOPS_HALF,
    CUDA_CORE_ATTN_EFF_FRAC,
    ELEMENTWISE_LAUNCH_S,
    ELEMENTWISE_MEM_EFF_FRAC,
    SMALL_TILE_M_TOKENS,
    GemmParams,
    OpTimer,
    gemm_params_for,
)
from servesim.hwmodels.stacks import StackProfile, get_stack
from servesim.hwmodels.stepkernel import packed_step_time_s
from servesim.hwmodels.units import GiB

#: Fixed host-side cost of one engine step (scheduling, building input tensors, launching the
#: captured graph, detokenisation bookkeeping). Vidur profiles these CPU overheads of vLLM per
#: iteration (schedule, prepare inputs, sampler, process outputs) at roughly 1-3 ms in total
#: (Agrawal et al., "Vidur", MLSys 2024, sec. 4.3), and the vLLM v0.6.0 performance blog
#: (Sept 2024) reports that before its async output processing the CPU side took a large share
#: of each Llama-3-8B decode iteration on H100. 1.5 ms is a mid value for a modern engine.
DEFAULT_STEP_OVERHEAD_S = 1.5e-3

#: Fixed latency of one tensor-parallel all-reduce: NCCL/vLLM custom all-reduce of small
#: messages within an NVLink node takes ~5-20 us (nccl-tests all_reduce_perf, 8x A100/H100).
ALLREDUCE_LATENCY_S = 8e-6
#: Latency of one pipeline-stage activation send (NCCL send/recv, small message).
P2P_LATENCY_S = 10e-6
#: Host-link bandwidth assumed when a GPU lists no scale-up link and no PCIe figure (PCIe 4 x16).
_FALLBACK_LINK_BW_BYTES_PER_S = 32e9
#: vLLM's default ``max_num_seqs``: rows of logits materialised in the largest step.
_DEFAULT_MAX_SAMPLING_ROWS = 256
#: GEMMs of a layer's attention half under two-batch overlap (the rest is its MLP half).
_ATTENTION_SIDE_OPS = frozenset({"qkv_proj", "o_proj"})
#: SMs DeepEP's normal (prefill) dispatch/combine kernels hold while they run: the V1 example
#: sets ``Buffer.set_num_sms(24)`` (DeepEP docs/legacy.md, "Example use in model training or
#: inference prefilling"; the V2 README: "SM usage reduced from 24 to 4 - 6"). Compute
#: overlapped with them runs on the GPU's other SMs (two-batch overlap).
DEEPEP_NORMAL_NUM_SMS = 24
#: Share of a DeepEP low-latency (decode) kernel's time during which it holds the SMs, so that
#: two-batch overlap cannot hide it; the rest is RDMA in flight "without any SM occupation"
#: behind the receive hook (DeepEP docs/legacy.md). LMSYS large-scale-EP blog (2025-05-05,
#: "Detail Breakdown"): unit tests of DeepEP's dispatch show "0.06 ms occupying SMs"; DeepEP's
#: own table gives 173 us for the whole low-latency dispatch at 128 tokens per rank, EP64
#: (H800) -> 0.06 / 0.173 = 0.35, taken for the combine too (no figure of its own).
DEEPEP_LL_SM_ACTIVE_FRAC = 0.35


@dataclass(frozen=True, slots=True)
class StepCostArrays:
    """Time of one or many steps and its split by bound (seconds; arrays or floats).

    ``compute_s + weight_read_s + kv_read_s + comm_s + overhead_s == time_s``.

    Attributes:
        time_s: step latency (all pipeline stages plus the host overhead).
        compute_s: operators whose compute side dominates (GEMMs, prefill attention).
        weight_read_s: memory-bound non-attention operators: weight streaming, plus the
            activation traffic of elementwise kernels.
        kv_read_s: memory-bound attention (KV-cache reads).
        comm_s: tensor-parallel all-reduces and pipeline activation transfers.
        overhead_s: the fixed per-step host overhead.
        bottleneck_stage_s: slowest pipeline stage (== time_s - overhead_s when pp = 1): the
            interval between step starts when ``pp`` micro-batches are in flight.
    """

    time_s: Any
    compute_s: Any
    weight_read_s: Any
    kv_read_s: Any
    comm_s: Any
    overhead_s: Any
    bottleneck_stage_s: Any


# ---------------------------------------------------------------------- backends
class _ScalarBackend:
    """Python-float primitives (fast for one step)."""

    mx = staticmethod(max)
    mn = staticmethod(min)
    ceil = staticmethod(math.ceil)
    sqrt = staticmethod(math.sqrt)

    @staticmethod
    def pos(x: float) -> float:
        return 1.0 if x > 0 else 0.0

    @staticmethod
    def where(cond: bool, a: float, b: float) -> float:
        return a if cond else b


class _VectorBackend:
    """numpy primitives (one entry per step)."""

    mx = staticmethod(np.maximum)
    mn = staticmethod(np.minimum)
    ceil = staticmethod(np.ceil)
    sqrt = staticmethod(np.sqrt)

    @staticmethod
    def pos(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return (x > 0) * 1.0

    @staticmethod
    def where(cond: Any, a: Any, b: Any) -> Any:
        return np.where(cond, a, b)


@dataclass(frozen=True, slots=True)
class _GemmCoef:
    """Precomputed roofline coefficients of one sharded GEMM (see hwmodels.roofline)."""

    op: str
    n: int
    k: int
    compute_type: str
    weight_bits: int
    s_per_padded_token: float  # 2 (N K + nk_half) / (peak * eff_max)
    s_compute_const: float  # s_per_padded_token * m_half
    s_dequant_per_tile: float  # dequant ops x N x K / fp32 peak
    s_mem_const: float  # (weight bytes + bytes_half) / (bw * mem_eff)
    s_mem_const_weights: float  # weight bytes / (bw * mem_eff) (routed: per expert)
    s_mem_per_token: float  # act bytes (N + K) / (bw * mem_eff)
    flops_per_token: float
    weight_bytes: float
    act_bytes_per_token: float
    num_copies: int  # routed under EP: the expert slots one GPU holds
    active_copies: int
    is_routed: bool
    # Expert parallelism (routed GEMMs): EP size (1.0: off), all expert slots, the max-load
    # coefficient (expert_max_load_sigma) and the most rows one token puts on one GPU.
    ep: float = 1.0
    slots: float = 0.0
    sigma: float = 0.0
    kmax: float = 0.0
    # Two-batch overlap: the kernel runs in the MLP half of a layer (False: attention half).
    mlp_side: bool = False


@functools.lru_cache(maxsize=64)
def expected_max_std_normal(n: int) -> float:
    """``E[max of n independent standard normals]`` (0 for n = 1; 0.5642 for 2, 1.4236 for 8,
    2.0697 for 32), by Simpson's rule on ``x n phi(x) Phi(x)^(n-1)`` over [-12, 12]
    (deterministic; the integrand is below 1e-30 outside)."""
    if n <= 1:
        return 0.0
    steps = 4800
    h = 24.0 / steps
    acc = 0.0
    for i in range(steps + 1):
        x = -12.0 + i * h
        f = x * n * math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi) * (0.5 * math.erfc(-x / math.sqrt(2.0))) ** (n - 1)
        acc += f * (1.0 if i in (0, steps) else 4.0 if i % 2 else 2.0)
    return acc * h / 3.0


def expert_max_load_sigma(num_slots: int, slots_per_rank: int, top_k: int, ep: int) -> float:
    """Coefficient ``s`` of the expected maximum expert load over ``ep`` ranks:
    ``E[max rows] ~= T k / ep + s sqrt(T)`` for ``T`` tokens each routed to ``top_k`` distinct
    of ``num_slots`` expert slots uniformly at random (balls into bins; no RNG).

    One token puts ``X ~ Hypergeometric(num_slots, slots_per_rank, top_k)`` rows on a rank:
    mean ``k / ep``, variance ``v = k p (1 - p) (S - k) / (S - 1)`` with ``p = slots_per_rank / S``.
    Over ``T`` independent tokens a rank's load is ~ normal with variance ``T v``; the ``ep``
    loads sum to ``T k`` (correlation ``-1 / (ep - 1)``), so they are ``sqrt(T v / (1 - 1/ep))
    (Z_r - mean Z)`` for independent standard normals ``Z`` and the expected maximum is
    ``T k / ep + sqrt(T v) c_ep / sqrt(1 - 1/ep)``, ``c_ep`` = :func:`expected_max_std_normal`.
    For ep = 2 this is exact for normals: ``sqrt(2 / pi) sigma``. The caller caps it at
    ``T min(k, slots_per_rank)``. Uniform routing is what DeepSeek's EPLB aims at (the LMSYS
    blog's "simulated perfect EPLB": random expert selection); real routing skew adds to it.
    """
    if ep <= 1:
        return 0.0
    p = slots_per_rank / num_slots
    v = top_k * p * (1.0 - p) * (num_slots - top_k) / (num_slots - 1)
    return math.sqrt(v) * expected_max_std_normal(ep) / math.sqrt(1.0 - 1.0 / ep)


def expected_distinct_groups(num_slots: int, num_groups: int, top_k: int) -> float:
    """Expected number of distinct groups (GPUs or nodes) among a token's ``top_k`` distinct
    expert slots, the ``num_slots`` split evenly over ``num_groups``, chosen uniformly:
    ``G (1 - C(S - S/G, k) / C(S, k))`` (a group is missed when all k picks fall outside it)."""
    per = num_slots / num_groups
    miss = 1.0
    for i in range(top_k):
        miss *= max(num_slots - per - i, 0.0) / (num_slots - i)
    return num_groups * (1.0 - miss)


class StepCostModel:
    """Time of one forward step of a batch on one model replica (``tp x pp`` GPUs).

    Args:
        gpu: GPU spec or catalogue name.
        model: model spec or name.
        scheme: quantization scheme (or name).
        kv_dtype: KV-cache dtype (or name); ``None`` = the scheme's default.
        tensor_parallel: GPUs per stage sharing each layer.
        pipeline_parallel: pipeline stages (contiguous layer ranges).
        expert_parallel: GPUs of a stage the routed experts are spread over (1: every GPU
            holds a ``1/tp`` slice of every expert); must divide ``tensor_parallel`` and the
            expert slots. MoE models only.
        attention_data_parallel: independent attention ranks per stage (1: tensor-parallel
            attention); needs ``expert_parallel == tensor_parallel``. Each rank runs ``1/dp``
            of the batch; MoE layers add a dispatch and a combine all-to-all.
        redundant_experts: extra expert replicas (EPLB), so that ``ep`` can divide
            ``experts + redundant``.
        step_overhead_s: fixed host overhead per step; None = the stack profile's.
        stack: serving-stack profile (:class:`~hwmodels.stacks.StackProfile` or a shipped
            name; None = :data:`~hwmodels.stacks.DEFAULT_STACK`): per-sequence host overhead,
            CUDA-graph padding, kernel-family efficiencies (and per-request overheads, which the
            results add outside the step).
        op_timer: optional :class:`~hwmodels.roofline.OpTimer` (e.g. the cycle model) that
            replaces the roofline's GEMM and attention times; bounds are still classified by
            the roofline's compute-vs-memory comparison.
        gemm_params: override the calibrated efficiency parameters (absolute: the GPU's
            achievable-figure scaling of GEMMs, attention and elementwise kernels is then off).

    Raises:
        ConfigError: the GPU cannot run the scheme or KV dtype, or the parallel degrees don't
            fit the model.
        CapacityError: the weights do not fit in HBM even across ``tp x pp`` GPUs.
    """

    def __init__(
        self,
        *,
        gpu: GpuSpec | str,
        model: ModelSpec | str,
        scheme: QuantScheme | str = "fp16",
        kv_dtype: KvDtype | str | None = None,
        tensor_parallel: int = 1,
        pipeline_parallel: int = 1,
        expert_parallel: int = 1,
        attention_data_parallel: int = 1,
        redundant_experts: int = 0,
        step_overhead_s: float | None = None,
        stack: StackProfile | str | None = None,
        op_timer: OpTimer | None = None,
        gemm_params: GemmParams | None = None,
    ) -> None:
        self.gpu = get_gpu(gpu)
        self.model = get_model(model)
        self.scheme = get_scheme(scheme)
        self.kv_dtype = get_kv_dtype(kv_dtype if kv_dtype is not None else self.scheme.default_kv_dtype)
        self.tp = int(tensor_parallel)
        self.pp = int(pipeline_parallel)
        self.ep = int(expert_parallel)
        self.adp = int(attention_data_parallel)
        self.redundant_experts = int(redundant_experts)
        self.stack = get_stack(stack)
        if step_overhead_s is None:
            step_overhead_s = self.stack.step_overhead_s
        if step_overhead_s < 0:
            raise ConfigError(f"step_overhead_s must be >= 0, got {step_overhead_s}")
        self.step_overhead_s = float(step_overhead_s)
        self.step_overhead_s_per_seq = self.stack.step_overhead_s_per_seq
        self.op_timer = op_timer
        self.scheme.check_supported(self.gpu)
        check_kv_dtype_supported(self.kv_dtype, self.gpu)
        check_expert_parallel(self.model, self.tp, self.ep, self.adp, self.redundant_experts)
        #: Two-batch overlap (stack profile / engine.two_batch_overlap): SGLang runs it with
        #: the DeepEP all-to-all, so it needs expert parallelism with attention data parallelism.
        self.tbo = bool(self.stack.two_batch_overlap)
        if self.tbo and not (self.ep > 1 and self.adp > 1):
            raise ConfigError(
                f"two_batch_overlap needs expert_parallel > 1 with attention_data_parallel > 1 (the MoE "
                f"all-to-all it overlaps), got expert_parallel={self.ep}, attention_data_parallel={self.adp}"
            )
        #: GPUs sharing one attention (and dense-GEMM, LM-head) computation.
        self.tp_attn = self.tp // self.adp
        check_tp(self.model, self.tp_attn, self.pp)
        if op_timer is not None and (self.ep > 1 or self.adp > 1):
            raise ConfigError("the cycle model (op_timer) does not model expert parallelism; "
                              "use the roofline cost model with expert_parallel / attention_data_parallel")
        self.params = gemm_params or gemm_params_for(self.gpu)
        #: The GPU's achievable figures as scales relative to its calibration GPU.
        self.efficiency = efficiency_for(self.gpu)
        # With explicit GEMM parameters the caller's efficiencies are absolute.
        self._gpu_compute_scale = 1.0 if gemm_params else self.efficiency.compute("fp16")
        self._gpu_mem_scale = 1.0 if gemm_params else self.efficiency.mem_scale
        self._check_weights_fit()
        self._precompute()

    # ------------------------------------------------------------------ setup
    @property
    def weight_bytes_per_gpu(self) -> float:
        """Weights one GPU holds (total under the scheme / (tp x pp); under expert / attention
        data parallelism see :func:`hwmodels.quant.weight_bytes_per_gpu`)."""
        return weight_bytes_per_gpu(self.model, self.scheme, self.tp, self.pp, expert_parallel=self.ep,
                                    attention_data_parallel=self.adp, redundant_experts=self.redundant_experts)

    def _check_weights_fit(self) -> None:
        total = weight_bytes_per_gpu(self.model, self.scheme, 1, 1)
        per_gpu = self.weight_bytes_per_gpu
        if per_gpu > self.gpu.hbm_bytes:
            need = math.ceil(total / self.gpu.hbm_bytes)
            raise CapacityError(
                f"{self.model.name} weights do not fit: {total / GiB:.1f} GiB under {self.scheme.name} "
                f"/ (tp={self.tp} x pp={self.pp}{self._ep_label()}) = {per_gpu / GiB:.1f} GiB per GPU, but {self.gpu.name} "
                f"has {self.gpu.hbm_bytes / GiB:.1f} GiB of HBM (before any KV cache or activations). "
                f"Use at least {need} GPUs (tp x pp), a smaller scheme (e.g. fp8, w4a16) or a larger GPU."
            )

    def _ep_label(self) -> str:
        if self.ep == 1 and self.adp == 1:
            return ""
        return (f", expert_parallel={self.ep}, attention_data_parallel={self.adp}, "
                f"redundant_experts={self.redundant_experts}")

    def _link_bw(self) -> float:
        bw = self.gpu.scaleup_bw_bytes_per_s_per_direction or self.gpu.pcie_bw_bytes_per_s_per_direction
        return bw or _FALLBACK_LINK_BW_BYTES_PER_S

    def _coef(self, g: GemmOp) -> _GemmCoef:
        p, gpu, sch, st = self.params, self.gpu, self.scheme, self.stack
        compute_type = sch.compute_type if g.quantized else "fp16" if gpu.supports("fp16") else "bf16"
        peak = gpu.peak(compute_type)
        # Efficiency multipliers (exactly 1.0 for fp16 dense GEMMs under the generic stack):
        # the GPU's measured fraction for this compute type relative to fp16's, the stack's
        # kernel-family factors (FP8, routed-expert grouped GEMMs), and for weight-only
        # schemes the bandwidth their dequantizing kernels reach.
        base_ct = "fp16" if gpu.supports("fp16") else "bf16"
        c_mult = self.efficiency.compute(compute_type) / self.efficiency.compute(base_ct)
        m_mult = 1.0
        if compute_type == "fp8":
            c_mult = c_mult * st.fp8_gemm_eff
        if g.is_routed:
            c_mult = c_mult * st.moe_gemm_eff
            m_mult = m_mult * st.moe_gemm_eff
        wo = g.quantized and sch.weight_only
        if wo:
            family = "w4a16" if sch.weight_bits <= 4 else "w8a16"
            m_mult = m_mult * self.efficiency.weight_only_bw_frac[family] * st.weight_only_eff
        bw = gpu.hbm_bw_bytes_per_s * p.mem_eff_max_frac * m_mult
        nk = float(g.n) * float(g.k)
        s_tok = 2.0 * (nk + p.nk_half_elems) / (peak * p.compute_eff_max_frac * c_mult)
        dq = 0.0
        if wo and sch.dequant_ops_per_weight:
            fp32 = gpu.peak_flops_per_s.get("fp32") or gpu.peak_fp16_flops_per_s / 16
            dq = sch.dequant_ops_per_weight * nk / fp32
        act_in = sch.act_bytes if g.quantized else ACT_BYTES
        act_bytes_tok = act_in * g.k + ACT_BYTES * g.n
        return _GemmCoef(
            op=g.op, n=g.n, k=g.k, compute_type=compute_type,
            weight_bits=sch.weight_bits if g.quantized else 16,
            s_per_padded_token=s_tok, s_dequant_per_tile=dq,
            # The fitted small-M floor scales with the bits streamed per weight (roofline docs).
            s_compute_const=s_tok * p.m_half_tokens * min(sch.weight_bits if g.quantized else 16, 16) / 16,
            s_mem_const=(g.weight_bytes + p.bytes_half) / bw, s_mem_const_weights=g.weight_bytes / bw,
            s_mem_per_token=act_bytes_tok / bw, flops_per_token=2.0 * nk, weight_bytes=g.weight_bytes,
            act_bytes_per_token=act_bytes_tok, num_copies=g.num_copies, active_copies=g.active_copies,
            is_routed=g.is_routed, mlp_side=g.op not in _ATTENTION_SIDE_OPS,
        )

    def _act_quant_coefs(self, ops: list[GemmOp]) -> list[_GemmCoef]:
        """Activation-quantization kernels of W8A8/FP8 schemes when the stack runs them
        separately: one memory-bound elementwise kernel per quantized GEMM, reading the fp16
        input (K per token, x experts per token for routed GEMMs) and writing it at the
        scheme's activation width. Written as a GEMM row with no compute side so the reference
        and the packed form treat it like every other kernel (``launch + memory``)."""
        sch = self.scheme
        if not self.stack.separate_act_quant or sch.weight_only or sch.act_bytes >= ACT_BYTES:
            return []
        bw = self.gpu.hbm_bw_bytes_per_s * ELEMENTWISE_MEM_EFF_FRAC * self._gpu_mem_scale
        out = []
        for g in ops:
            if not g.quantized:
                continue
            per_token = (ACT_BYTES + sch.act_bytes) * g.k * (g.active_copies if g.is_routed else 1)
            out.append(_GemmCoef(
                op="act_quant", n=0, k=g.k, compute_type=sch.compute_type, weight_bits=0,
                s_per_padded_token=0.0, s_compute_const=0.0, s_dequant_per_tile=0.0,
                s_mem_const=0.0, s_mem_const_weights=0.0, s_mem_per_token=per_token / bw,
                flops_per_token=0.0, weight_bytes=0.0, act_bytes_per_token=per_token,
                num_copies=1, active_copies=1, is_routed=False, mlp_side=g.op not in _ATTENTION_SIDE_OPS,
            ))
        return out

    def _expert_parallel_coef(self, c: _GemmCoef) -> _GemmCoef:
        """A routed GEMM's coefficients under expert parallelism: the busiest GPU's slots and
        the max-load terms (see :func:`expert_max_load_sigma`)."""
        m = self.model
        slots = m.num_experts + self.redundant_experts
        per_rank = slots // self.ep
        k = m.experts_per_tok
        return replace(c, num_copies=per_rank, ep=float(self.ep), slots=float(slots),
                       sigma=expert_max_load_sigma(slots, per_rank, k, self.ep), kmax=float(min(k, per_rank)))

    def _alltoall_coef(self) -> tuple[float, ...]:
        """One MoE layer's dispatch + combine all-to-all as ``(ll_s, ll_s_per_token, normal_s,
        normal_s_per_token)`` per local token, then the same four for the dispatch alone (two-batch
        overlap pairs dispatch and combine with different compute): DeepEP's two kernel families with the GPU's
        figures (achievable.yaml ``alltoall``), FP8 (+ 1/32 scales) dispatch when the scheme's
        activations are 8-bit, BF16 combine.

        * low latency (decode-only steps, CUDA graphs): ``T k h`` bytes per rank;
        * normal (steps with prefill): ``T D h`` bytes, ``D`` the expected number of distinct
          destination GPUs (EP within one NVLink domain) or nodes (beyond) of a token's ``k``
          experts (:func:`expected_distinct_groups`): the kernels send a token once per GPU /
          node and forward it inside.

        Without figures for the GPU: its link at face value and the all-reduce latency, both
        families on ``T k h`` bytes.
        """
        m = self.model
        if self.adp <= 1 or self.ep <= 1:
            return (0.0,) * 8
        k, h = m.experts_per_tok, float(m.hidden_size)
        b_d = 1.0 + 4.0 / 128.0 if self.scheme.act_bytes < ACT_BYTES else ACT_BYTES
        ach = self.efficiency.achievable
        fig = ach.alltoall_for(self.ep) if ach is not None else None
        if fig is None:
            per_tok = k * h * (b_d + ACT_BYTES) / self._link_bw()
            per_tok_d = k * h * b_d / self._link_bw()
            return (2.0 * ALLREDUCE_LATENCY_S, per_tok, 2.0 * ALLREDUCE_LATENCY_S, per_tok,
                    ALLREDUCE_LATENCY_S, per_tok_d, ALLREDUCE_LATENCY_S, per_tok_d)
        lat = fig.dispatch_latency_s + fig.combine_latency_s
        ll = k * h * b_d / fig.dispatch_bw_bytes_per_s + k * h * ACT_BYTES / fig.combine_bw_bytes_per_s
        slots = m.num_experts + self.redundant_experts
        groups = self.ep if self.ep <= fig.node_gpus else max(self.ep // fig.node_gpus, 1)
        dest = expected_distinct_groups(slots, groups, k)
        normal = dest * h * b_d / fig.normal_dispatch_bw_bytes_per_s + dest * h * ACT_BYTES / fig.normal_combine_bw_bytes_per_s
        lat_d = fig.dispatch_latency_s
        return (lat, ll, lat, normal, lat_d, k * h * b_d / fig.dispatch_bw_bytes_per_s, lat_d,
                dest * h * b_d / fig.normal_dispatch_bw_bytes_per_s)

    def _precompute(self) -> None:
        m, tp = self.model, self.tp_attn
        # Layer kinds present: (total layer count, GEMM coefficients); dense first, then MoE.
        # Under expert parallelism each routed expert is split tp / ep ways (whole experts at
        # ep = tp); everything else over the attention group (tp / attention_data_parallel).
        self._kinds: list[tuple[float, list[_GemmCoef]]] = []
        #: Per kind: one layer's all-to-all (:meth:`_alltoall_coef`); MoE layers under
        #: attention data parallelism only.
        self._kind_a2a: list[tuple[float, ...]] = []
        kind_is_moe: list[bool] = []
        for moe_layer in (False, True):
            count = m.num_moe_layers if moe_layer else m.num_dense_layers
            if count:
                ops = layer_gemms(m, self.scheme, tp, moe_layer=moe_layer, moe_tp=self.tp // self.ep)
                gemms = [self._coef(g) for g in ops] + self._act_quant_coefs(ops)
                if self.ep > 1:
                    gemms = [self._expert_parallel_coef(c) if c.is_routed else c for c in gemms]
                self._kinds.append((float(count), gemms))
                # Two-batch overlap hides alltoall_overlap_frac of it (stack profile; folded
                # into the coefficients, so the packed form carries it unchanged).
                keep = 1.0 - self.stack.alltoall_overlap_frac
                self._kind_a2a.append(tuple(keep * x for x in self._alltoall_coef()) if moe_layer
                                      else (0.0,) * 8)
                kind_is_moe.append(moe_layer)
        self._head = self._coef(lm_head_gemm(m, self.scheme, tp))
        # Contiguous stages; earlier stages take the remainder layers (as vLLM's
        # get_pp_indices does by default). Layer i is MoE iff i >= first_k_dense_layers.
        base, extra = divmod(m.num_layers, self.pp)
        self._stage_counts: list[tuple[float, ...]] = []
        start = 0
        for s in range(self.pp):
            size = base + (1 if s < extra else 0)
            layers = range(start, start + size)
            n_moe = sum(1 for i in layers if m.is_moe and i >= m.first_k_dense_layers)
            by_kind = {False: float(size - n_moe), True: float(n_moe)}
            self._stage_counts.append(tuple(by_kind[k] for k in kind_is_moe))
            start += size
        p = self.params
        self._launch_s = p.launch_s
        self._tile = float(p.tile_m_tokens)
        self._hbm_eff_bw = self.gpu.hbm_bw_bytes_per_s * p.mem_eff_max_frac
        self._bytes_half_s = p.bytes_half / self._hbm_eff_bw
        # Attention: FlashAttention-class efficiency scaled to the GPU's own compute figure,
        # times the stack's attention kernel factors (MLA models: the MLA factor on top).
        st = self.stack
        attn_peak = self.gpu.peak_fp16_flops_per_s * ATTN_COMPUTE_EFF_MAX_FRAC * self._gpu_compute_scale
        mla = st.mla_attn_eff if m.is_mla else 1.0
        self._pf_peak = attn_peak * (st.prefill_attn_eff * mla)
        self._pf_fh = ATTN_FLOPS_HALF / self._pf_peak
        self._pf_bw = self._hbm_eff_bw * (st.prefill_attn_eff * mla)
        # Decode attention on CUDA cores (st.decode_attn_tensor_cores false): the compute side
        # at CUDA_CORE_ATTN_EFF_FRAC of the FP32 peak (GQA decode turns compute-bound).
        dec_peak = attn_peak
        if not st.decode_attn_tensor_cores:
            # No FP32 figure listed: A100/H100 datasheets put the fp16 tensor-core peak at
            # 15-16x the FP32 CUDA-core peak (312/19.5, 989/67).
            fp32 = self.gpu.peak_flops_per_s.get("fp32", self.gpu.peak_fp16_flops_per_s / 16.0)
            dec_peak = fp32 * CUDA_CORE_ATTN_EFF_FRAC * self._gpu_compute_scale
        self._dec_peak = dec_peak * (st.decode_attn_eff * mla)
        self._dec_fh = ATTN_FLOPS_HALF / self._dec_peak
        # A quantized KV cache (< 16 bits) halves (quarters) the bytes, but decode attention
        # over it reaches only kv_quant_decode_eff of the 16-bit kernel's bandwidth
        # (dequantization inside the kernel). Folded into the coefficient, so the packed form
        # (P_DEC_BW) carries it unchanged.
        kvq = st.kv_quant_decode_eff if self.kv_dtype.bytes_per_elem < ACT_BYTES else 1.0
        self._dec_bw = self._hbm_eff_bw * (st.decode_attn_eff * mla * kvq)
        self._kv_layer_gpu = kv_bytes_per_token_per_layer_per_gpu(m, self.kv_dtype, tp)
        self._attn_fpp_prefill = attn_flops_per_pair(m, tp, decode=False)
        self._attn_fpp_decode = attn_flops_per_pair(m, tp, decode=True)
        # Q read and O written per query token per GPU, fp16.
        self._attn_qo_bytes = ACT_BYTES * (m.num_heads / tp) * (m.attn_qk_dim + m.attn_v_dim)
        self._window = float(m.sliding_window_tokens)
        self._ew_bytes = elementwise_bytes_per_token_per_layer(m, tp)
        self._ew_const_s = elementwise_kernels_per_layer() * ELEMENTWISE_LAUNCH_S
        self._ew_s_per_byte = 1.0 / (self.gpu.hbm_bw_bytes_per_s * ELEMENTWISE_MEM_EFF_FRAC * self._gpu_mem_scale)
        link = self._link_bw()
        hidden_bytes = ACT_BYTES * m.hidden_size
        ach = self.efficiency.achievable
        # One all-reduce of T tokens: piecewise linear in T, ``y_i + (T - x_i) s_i`` on the
        # segment with the largest ``x_i <= T`` (x_0 = 0). Without measured sizes it is one
        # segment, latency + ring bus bytes at the bus bandwidth (nccl-tests conventions).
        ar_x: list[float] = [0.0]
        ar_y: list[float] = [0.0]
        if tp > 1 and ach is not None:  # tp here: the attention group (tp_attn)
            # Measured (or derived) all-reduce law of this GPU at this TP size: latency, the
            # measured times at a few message sizes (interpolated), and past the largest the
            # ring's bus bytes at the achievable large-message bus bandwidth.
            ar = ach.allreduce_for(tp)
            ar_y[0] = ar.latency_s
            for b, t in ar.curve:
                ar_x.append(b / hidden_bytes)
                ar_y.append(t)
            last_per_token = 2.0 * (tp - 1) / tp * hidden_bytes / ar.bus_bw_bytes_per_s
        elif tp > 1:  # a user GPU without achievable figures: the link at face value (borrowed)
            ar_y[0] = ALLREDUCE_LATENCY_S
            last_per_token = 2.0 * (tp - 1) / tp * hidden_bytes / link
        else:
            last_per_token = 0.0
        ar_s = [(ar_y[i + 1] - ar_y[i]) / (ar_x[i + 1] - ar_x[i]) for i in range(len(ar_x) - 1)]
        ar_s.append(last_per_token)
        self._ar_x, self._ar_y, self._ar_s = tuple(ar_x), tuple(ar_y), tuple(ar_s)
        self._ar_xv, self._ar_yv, self._ar_sv = (np.asarray(v, dtype=np.float64) for v in (ar_x, ar_y, ar_s))
        self._ar_bytes_per_token = 2.0 * (tp - 1) / tp * hidden_bytes if tp > 1 else 0.0
        b_d = 1.0 + 4.0 / 128.0 if self.scheme.act_bytes < ACT_BYTES else ACT_BYTES
        # Bytes each rank token sends + receives back per MoE layer (breakdown only): k copies
        # (low-latency kernels) or one per distinct destination (normal kernels, _alltoall_coef).
        self._a2a_bytes_per_token = float(m.experts_per_tok * m.hidden_size) * (b_d + ACT_BYTES)
        self._a2a_dest = float(m.experts_per_tok)
        if m.is_moe and self.ep > 1:
            ach = self.efficiency.achievable
            fig = ach.alltoall_for(self.ep) if ach is not None else None
            if fig is not None:
                groups = self.ep if self.ep <= fig.node_gpus else max(self.ep // fig.node_gpus, 1)
                self._a2a_dest = expected_distinct_groups(m.num_experts + self.redundant_experts, groups,
                                                          m.experts_per_tok)
        # Two-batch overlap, per DeepEP kernel family: (share of the kernel's time it holds every
        # SM, share of the SMs it holds in flight). Low latency: the receive hook frees the SMs
        # while RDMA is in flight; normal: a fixed SM set for the whole kernel.
        sms = float(self.gpu.num_sms or 132)  # no SM count published: H100 SXM's 132
        self._tbo_ll = (DEEPEP_LL_SM_ACTIVE_FRAC, 0.0)
        self._tbo_nm = (0.0, min(DEEPEP_NORMAL_NUM_SMS / sms, 1.0))
        self._p2p_const_s = P2P_LATENCY_S
        self._p2p_s_per_token = hidden_bytes / link
        self._graph_mode = self.stack.graph_mode_code
        self._graph_sizes: tuple[float, ...] = tuple(float(x) for x in self.stack.cuda_graph_sizes)
        if self.op_timer is not None:
            self._precompute_timer()
            self._pack = None
        else:
            self._pack = self._build_pack()

    def _build_pack(self) -> npt.NDArray[np.float64]:
        """The packed form's coefficients (layout in :mod:`hwmodels.stepkernel`)."""
        h = self._head
        head = [0.0] * sk.P_HEADER
        head[sk.P_LAUNCH] = self._launch_s
        head[sk.P_TILE] = self._tile
        head[sk.P_KVL] = self._kv_layer_gpu
        head[sk.P_QO] = self._attn_qo_bytes
        head[sk.P_BH] = self._bytes_half_s
        head[sk.P_PF_PEAK] = self._pf_peak
        head[sk.P_PF_FH] = self._pf_fh
        head[sk.P_PF_BW] = self._pf_bw
        head[sk.P_DEC_PEAK] = self._dec_peak
        head[sk.P_DEC_FH] = self._dec_fh
        head[sk.P_DEC_BW] = self._dec_bw
        head[sk.P_EW_CONST] = self._ew_const_s
        head[sk.P_EW_PER_BYTE] = self._ew_s_per_byte
        head[sk.P_EW_BYTES] = self._ew_bytes
        head[sk.P_AR_NPTS] = float(len(self._ar_x))
        head[sk.P_FPP_PREFILL] = self._attn_fpp_prefill
        head[sk.P_FPP_DECODE] = self._attn_fpp_decode
        head[sk.P_WINDOW] = self._window or 0.0
        head[sk.P_H_TOK] = h.s_per_padded_token
        head[sk.P_H_C0] = h.s_compute_const
        head[sk.P_H_DQ] = h.s_dequant_per_tile
        head[sk.P_H_M0] = h.s_mem_const
        head[sk.P_H_MT] = h.s_mem_per_token
        head[sk.P_PP_MINUS_1] = float(self.pp - 1)
        head[sk.P_P2P_CONST] = self._p2p_const_s
        head[sk.P_P2P_PER_TOKEN] = self._p2p_s_per_token
        head[sk.P_OVERHEAD] = self.step_overhead_s
        head[sk.P_OVERHEAD_PER_SEQ] = self.step_overhead_s_per_seq
        head[sk.P_GRAPH_MODE] = float(self._graph_mode)
        head[sk.P_NUM_GRAPH] = float(len(self._graph_sizes))
        head[sk.P_NUM_KINDS] = float(len(self._kinds))
        head[sk.P_NUM_STAGES] = float(self.pp)
        head[sk.P_LAYOUT] = sk.LAYOUT_VERSION
        head[sk.P_DP] = float(self.adp)
        head[sk.P_TBO] = 1.0 if self.tbo else 0.0
        head[sk.P_TBO_LL_PHI], head[sk.P_TBO_LL_S] = self._tbo_ll
        head[sk.P_TBO_NM_PHI], head[sk.P_TBO_NM_S] = self._tbo_nm
        body: list[float] = list(self._graph_sizes)
        for x, y, sl in zip(self._ar_x, self._ar_y, self._ar_s, strict=True):
            body += [x, y, sl]
        for counts in self._stage_counts:
            body += [float(c) for c in counts]
        for (n_layers, gemms), a2a in zip(self._kinds, self._kind_a2a, strict=True):
            body += [n_layers, float(len(gemms)), *a2a]
            for c in gemms:
                body += [1.0 if c.is_routed else 0.0, c.s_per_padded_token, c.s_compute_const,
                         c.s_dequant_per_tile, c.s_mem_const, c.s_mem_const_weights, c.s_mem_per_token,
                         float(c.num_copies), float(c.active_copies), c.ep, c.slots, c.sigma, c.kmax,
                         1.0 if c.mlp_side else 0.0]
        return np.asarray(head + body, dtype=np.float64)


    def _attn_geometry(self) -> tuple[int, int, int, float]:
        """(heads, kv heads, head dim, KV bytes per element) per GPU, as the op timer takes them."""
        m = self.model
        kvh = max(m.num_kv_heads // min(self.tp, m.num_kv_heads), 1)
        kvb = self.kv_dtype.bytes_per_elem
        kvb = int(kvb) if float(kvb).is_integer() else kvb  # int4 KV: 0.5 bytes
        return m.num_heads // self.tp, kvh, m.attn_qk_dim, kvb

    def _precompute_timer(self) -> None:
        """Batch-independent parts of the op-timer fast path and its exact-key memos.

        A step's time with an op timer is ``tok[T] + L (t_p + t_d) + head[rows] + overhead``:
        everything that depends on the token count ``T`` only (every GEMM, elementwise
        kernels, all-reduces, pipeline transfers) is one memo entry per ``T``, the lm_head one
        per sampled-row count, and attention one per exact timer argument tuple. The memos hold
        what the timer returned (the timer must be a pure function of its arguments, as the
        cycle model's cache is), so a repeated input gives the same float every call.
        """
        self._timer_kinds = [
            (n_layers, tuple(
                (c.is_routed, c.n, c.k, c.compute_type, c.weight_bits, float(c.num_copies), float(c.active_copies),
                 c.s_mem_per_token if c.op == "act_quant" else -1.0)
                for c in gemms
            ))
            for n_layers, gemms in self._kinds
        ]
        self._timer_layers = sum(n for n, _ in self._timer_kinds)
        self._timer_geom = self._attn_geometry()
        self._memo_tok: dict[float, float] = {}
        self._memo_rows: dict[float, float] = {}
        self._memo_dec: dict[tuple[int, int], float] = {}
        self._memo_pre: dict[tuple[int, int, int], float] = {}
        self._memo_gemm: dict[tuple[int, int, str, int], dict[int, float]] = {}  # vector path

    def _timer_tok_s(self, T: float) -> float:
        """Seconds of the parts that depend only on the token count ``T > 0`` (op timer)."""
        gemm = self.op_timer.gemm_time_s  # type: ignore[union-attr]
        ceil = math.ceil
        total = 0.0
        layer_common = self._ew_const_s + self._ew_s_per_byte * self._ew_bytes * T
        layer_common += 2.0 * self._allreduce_s(_ScalarBackend, T)
        mm = max(int(T), 1)
        for n_layers, gemms in self._timer_kinds:
            layer = layer_common
            for routed, n, k, ct, wb, e, ka, quant_s_per_token in gemms:
                if quant_s_per_token >= 0.0:  # activation quantization: an elementwise kernel
                    layer += self._launch_s + quant_s_per_token * T
                elif routed:
                    touched = e * (1.0 - (1.0 - ka / e) ** T)
                    m_e = T * ka / max(touched, 1e-9)
                    layer += touched * float(gemm(max(int(ceil(m_e)), 1), n, k, ct, wb))
                else:
                    layer += float(gemm(mm, n, k, ct, wb))
            total += n_layers * layer
        return total + (self.pp - 1) * (self._p2p_const_s + self._p2p_s_per_token * T)

    def _timer_step_time_s(self, pf: float, kvt: float, nsamp: float, ndec: float, ctx: float) -> float:
        """The op-timer fast path of :meth:`step_time_s` (a few dict lookups on a memo hit)."""
        T = pf + ndec
        if T <= 0:
            return self.step_overhead_s
        # GEMMs, elementwise kernels and all-reduces run on the CUDA-graph-padded token count.
        Tg = self._graph_tokens(_ScalarBackend, T, pf)
        total = self._memo_tok.get(Tg)
        if total is None:
            total = self._timer_tok_s(Tg)
            _memo_put(self._memo_tok, Tg, total)
        attn = 0.0
        if pf > 0:
            chunks = nsamp if nsamp > 1.0 else 1.0
            key = (max(int(chunks), 1), max(math.ceil(pf / chunks), 1), max(math.ceil(kvt / chunks), 1))
            t = self._memo_pre.get(key)
            if t is None:
                heads, kvh, hd, kvb = self._timer_geom
                t = float(self.op_timer.prefill_attention_time_s(  # type: ignore[union-attr]
                    key[0], key[1], heads, kvh, hd, key[2], kvb))
                _memo_put(self._memo_pre, key, t)
            attn = t
        if ndec > 0:
            if self._window:
                ctx = min(ctx, ndec * self._window)
            dkey = (max(int(ndec), 1), max(math.ceil(ctx / (ndec if ndec > 1.0 else 1.0)), 1))
            t = self._memo_dec.get(dkey)
            if t is None:
                heads, kvh, hd, kvb = self._timer_geom
                t = float(self.op_timer.decode_attention_time_s(  # type: ignore[union-attr]
                    dkey[0], dkey[1], heads, kvh, hd, kvb, 16))
                _memo_put(self._memo_dec, dkey, t)
            attn += t
        total += self._timer_layers * attn
        rows = nsamp + ndec
        if rows > 0:
            h = self._memo_rows.get(rows)
            if h is None:
                c = self._head
                h = float(self.op_timer.gemm_time_s(  # type: ignore[union-attr]
                    max(int(rows), 1), c.n, c.k, c.compute_type, c.weight_bits))
                _memo_put(self._memo_rows, rows, h)
            total += h
        return total + (self.step_overhead_s + self.step_overhead_s_per_seq * rows)

    # ------------------------------------------------------------------ evaluation
    def _padded(self, B: Any, m: Any) -> Any:
        """GEMM M as computed: whole tiles above one tile, 16-row fragments below."""
        small = SMALL_TILE_M_TOKENS
        return B.where(m > self._tile, B.ceil(m / self._tile) * self._tile, B.ceil(m / small) * small)

    def _local_share(self, B: Any, pf: Any, pairs: Any, kvt: Any, nsamp: Any, ndec: Any,
                     ctx: Any) -> tuple[Any, ...]:
        """One attention-data-parallel rank's share of a step's inputs: ``ceil(x / dp)``
        prefill tokens, sampled rows and decode sequences, the pairs, prefill KV and context
        scaled with them (:func:`hwmodels.stepkernel.local_share`, the same operations)."""
        dp = float(self.adp)
        if B is _ScalarBackend:
            if pf > 0.0:
                pf_l = float(math.ceil(pf / dp))
                pairs = pairs * (pf_l / pf)
                kvt = kvt * (pf_l / pf)
                pf = pf_l
            nsamp = float(math.ceil(nsamp / dp))
            if ndec > 0.0:
                nd_l = float(math.ceil(ndec / dp))
                ctx = ctx * (nd_l / ndec)
                ndec = nd_l
            return pf, pairs, kvt, nsamp, ndec, ctx
        pf_l = np.ceil(pf / dp)
        r_p = pf_l / np.where(pf > 0, pf, 1.0)
        pairs = np.where(pf > 0, pairs * r_p, pairs)
        kvt = np.where(pf > 0, kvt * r_p, kvt)
        nd_l = np.ceil(ndec / dp)
        ctx = np.where(ndec > 0, ctx * (nd_l / np.where(ndec > 0, ndec, 1.0)), ctx)
        return pf_l, pairs, kvt, np.ceil(nsamp / dp), nd_l, ctx

    def _graph_tokens(self, B: Any, T: Any, pf: Any) -> Any:
        """Tokens the step computes on: ``T`` padded up to the next CUDA-graph capture size
        when the step runs as a captured graph (see :class:`~hwmodels.stacks.StackProfile`)."""
        sizes = self._graph_sizes
        if not self._graph_mode or not sizes:
            return T
        if B is _ScalarBackend:
            if (self._graph_mode == 1 and pf > 0) or T > sizes[-1]:
                return T
            return sizes[bisect_left(sizes, T)]
        arr = np.asarray(sizes, dtype=np.float64)
        idx = np.minimum(np.searchsorted(arr, T, side="left"), len(arr) - 1)
        use = T <= arr[-1]
        if self._graph_mode == 1:
            use = use & (pf <= 0)
        return np.where(use, arr[idx], T)

    def _allreduce_s(self, B: Any, T: Any) -> Any:
        """One tensor-parallel all-reduce of ``T`` tokens' hidden states (piecewise linear in
        the message size; see ``_precompute``). The packed form scans the same segments."""
        if B is _ScalarBackend:
            i = bisect_right(self._ar_x, T) - 1 if T > 0 else 0
            return self._ar_y[i] + (T - self._ar_x[i]) * self._ar_s[i]
        idx = np.maximum(np.searchsorted(self._ar_xv, T, side="right") - 1, 0)
        return self._ar_yv[idx] + (T - self._ar_xv[idx]) * self._ar_sv[idx]

    def _gemm(self, B: Any, c: _GemmCoef, m: Any, m_moe: Any = None) -> tuple[Any, Any, Any, Any, Any]:
        """(time, compute side, memory side, FLOPs, bytes) of one GEMM kernel for ``m`` tokens
        (``m_moe``: the tokens of the whole expert-parallel group, for routed GEMMs under EP;
        their time is the busiest GPU's)."""
        if c.is_routed and c.ep != 1.0:
            e, k = float(c.num_copies), float(c.active_copies)
            touched = e * (1.0 - (1.0 - k / c.slots) ** m_moe)
            rows = B.mn(m_moe * k / c.ep + c.sigma * B.sqrt(m_moe), m_moe * c.kmax)
            per_expert_m = rows / B.mx(touched, 1e-9)
            tiles = B.ceil(per_expert_m / self._tile)
            mp = self._padded(B, per_expert_m)
            tc = touched * (c.s_per_padded_token * mp + c.s_compute_const + c.s_dequant_per_tile * tiles)
            tm = touched * c.s_mem_const_weights + self._bytes_half_s + c.s_mem_per_token * rows
            flops = c.flops_per_token * rows
            nbytes = touched * c.weight_bytes + c.act_bytes_per_token * rows
        elif c.is_routed:
            e, k = float(c.num_copies), float(c.active_copies)
            touched = e * (1.0 - (1.0 - k / e) ** m)
            per_expert_m = m * k / B.mx(touched, 1e-9)
            tiles = B.ceil(per_expert_m / self._tile)
            mp = self._padded(B, per_expert_m)
            tc = touched * (c.s_per_padded_token * mp + c.s_compute_const + c.s_dequant_per_tile * tiles)
            tm = touched * c.s_mem_const_weights + self._bytes_half_s + c.s_mem_per_token * m * k
            flops = c.flops_per_token * m * k
            nbytes = touched * c.weight_bytes + c.act_bytes_per_token * m * k
        else:
            tiles = B.ceil(m / self._tile)
            tc = c.s_per_padded_token * self._padded(B, m) + c.s_compute_const + c.s_dequant_per_tile * tiles
            tm = c.s_mem_const + c.s_mem_per_token * m
            flops = c.flops_per_token * m
            nbytes = c.weight_bytes + c.act_bytes_per_token * m
        if self.op_timer is not None and c.op != "act_quant":
            gemm = self.op_timer.gemm_time_s
            memo = self._memo_gemm.setdefault((c.n, c.k, c.compute_type, c.weight_bits), {})
            if c.is_routed:
                t = touched * _call_timer(B, lambda mm: gemm(mm, c.n, c.k, c.compute_type, c.weight_bits),
                                          B.ceil(per_expert_m), memo=memo)
            else:
                t = _call_timer(B, lambda mm: gemm(mm, c.n, c.k, c.compute_type, c.weight_bits), m, memo=memo)
            t = t * B.pos(m)
        else:
            t = (self._launch_s + B.mx(tc, tm)) * B.pos(m)
        return t, tc, tm, flops, nbytes * B.pos(m)

    def _attention(self, B: Any, pf: Any, pairs: Any, kvt: Any, ndec: Any, ctx: Any,
                   nsamp_chunks: Any) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        """One layer's prefill and decode attention: ``(time, compute side, memory side, FLOPs,
        bytes)`` of each (FlashAttention-style prefill; decode reads every sequence's KV)."""
        if self._window:
            pairs = B.mn(pairs, pf * self._window)
            ctx = B.mn(ctx, ndec * self._window)
        kvl = self._kv_layer_gpu
        fl_p = self._attn_fpp_prefill * pairs
        by_p = kvl * (kvt + pf) + self._attn_qo_bytes * pf
        tc_p = fl_p / self._pf_peak + self._pf_fh
        tm_p = by_p / self._pf_bw + self._bytes_half_s
        fl_d = self._attn_fpp_decode * ctx
        by_d = kvl * (ctx + ndec) + self._attn_qo_bytes * ndec
        tc_d = fl_d / self._dec_peak + self._dec_fh
        tm_d = by_d / self._dec_bw + self._bytes_half_s
        if self.op_timer is not None:
            heads, kvh, hd, kvb = self._attn_geometry()
            # Aggregates only: chunks are taken as equal (mean new and context tokens).
            chunks = B.mx(nsamp_chunks, 1.0)
            t_p = _call_timer(
                B, lambda b, q, c: self.op_timer.prefill_attention_time_s(b, q, heads, kvh, hd, c, kvb),
                chunks, B.ceil(pf / chunks), B.ceil(kvt / chunks), memo=self._memo_pre,
            ) * B.pos(pf)
            t_d = _call_timer(
                B, lambda b, c: self.op_timer.decode_attention_time_s(b, c, heads, kvh, hd, kvb, 16),
                ndec, B.ceil(ctx / B.mx(ndec, 1.0)), memo=self._memo_dec,
            ) * B.pos(ndec)
        else:
            t_p = (self._launch_s + B.mx(tc_p, tm_p)) * B.pos(pf)
            t_d = (self._launch_s + B.mx(tc_d, tm_d)) * B.pos(ndec)
        return (t_p, tc_p, tm_p, fl_p, by_p * B.pos(pf)), (t_d, tc_d, tm_d, fl_d, by_d * B.pos(ndec))

    def _evaluate(self, B: Any, pf: Any, pairs: Any, kvt: Any, nsamp: Any, ndec: Any, ctx: Any,
                  rec: dict | None = None, stage_out: list | None = None, plain: bool = False) -> StepCostArrays:
        """The readable reference: every operator of one step, in the packed form's order.

        ``time_s`` is summed exactly as :func:`hwmodels.stepkernel.packed_step_time_s` sums it
        (one layer of each kind = elementwise + all-reduces + attention + GEMMs; times the
        layer count; + lm_head + pipeline transfers + host overhead), so the two agree bit for
        bit on scalars. The split by bound, the per-stage times and the per-operator record
        (``rec``, for :meth:`breakdown`) are side sums over the same operator times.
        """
        T = pf + ndec
        if B is _ScalarBackend and T <= 0:
            if rec is not None:
                _record(rec, "overhead", self.step_overhead_s, 0.0, 0.0, "overhead")
            if stage_out is not None:
                stage_out.extend([0.0] * self.pp)
            z = 0.0
            return StepCostArrays(self.step_overhead_s, z, z, z, z, self.step_overhead_s, z)
        raw = (pf, pairs, kvt, nsamp, ndec, ctx)
        if self.adp > 1:  # one attention-data-parallel rank's share (stepkernel.local_share)
            pf, pairs, kvt, nsamp, ndec, ctx = self._local_share(B, pf, pairs, kvt, nsamp, ndec, ctx)
            T = pf + ndec
        if self.tbo and not plain:  # two-batch overlap on a rank's step of >= 2 tokens
            if B is _ScalarBackend:
                if T >= 2.0:
                    return self._evaluate_tbo(B, pf, pairs, kvt, nsamp, ndec, ctx, rec, stage_out)
            else:
                one = self._evaluate(B, *raw, plain=True)
                two = self._evaluate_tbo(B, pf, pairs, kvt, nsamp, ndec, ctx)
                use = T >= 2.0
                return StepCostArrays(*(np.where(use, getattr(two, f), getattr(one, f))
                                        for f in StepCostArrays.__slots__))
        Tg = self._graph_tokens(B, T, pf)
        Tm = Tg * float(self.adp)  # tokens of the whole EP group (routed experts)
        on = B.pos(T)
        # ---- the parts every layer shares: elementwise kernels, all-reduces, attention
        t_ew = (self._ew_const_s + self._ew_s_per_byte * self._ew_bytes * Tg) * on
        t_ar = 2.0 * self._allreduce_s(B, Tg) * on
        att_p, att_d = self._attention(B, pf, pairs, kvt, ndec, ctx, nsamp)
        common = t_ew + t_ar + att_p[0] + att_d[0]
        # Split by bound: an operator's time goes to its dominant side (bool x float).
        a_comp = att_p[0] * (att_p[1] >= att_p[2]) + att_d[0] * (att_d[1] >= att_d[2])
        a_kv = att_p[0] + att_d[0] - a_comp
        # ---- one layer of each kind (dense, MoE): shared parts + its GEMMs
        layers: list[tuple[Any, Any, Any]] = []  # (time, compute side, memory side) per kind
        a2as: list[Any] = []  # one layer's all-to-all time per kind
        for (n_layers, gemms), (ll_c, ll_t, nm_c, nm_t, *_) in zip(self._kinds, self._kind_a2a, strict=True):
            layer, comp, mem = common, a_comp, t_ew
            for c in gemms:
                t, tc, tm, flops, nbytes = self._gemm(B, c, Tg, Tm)
                layer = layer + t
                is_c = tc >= tm
                t_c = t * is_c
                comp = comp + t_c
                mem = mem + (t - t_c)
                if rec is not None:
                    _record(rec, c.op, n_layers * t, n_layers * flops, n_layers * nbytes,
                            "compute" if is_c else "memory")
            # Steps with prefill run DeepEP's normal kernels, decode-only steps the low-latency ones.
            a2a = B.where(pf > 0, nm_c + nm_t * Tg, ll_c + ll_t * Tg) * on
            layer = layer + a2a
            a2as.append(a2a)
            layers.append((layer, comp, mem))
            if rec is not None and (ll_c or ll_t):
                per_tok = self._a2a_bytes_per_token * (self._a2a_dest / self.model.experts_per_tok if pf > 0 else 1.0)
                _record(rec, "alltoall", n_layers * a2a, 0.0, n_layers * per_tok * Tg, "communication")
            if rec is not None:
                _record(rec, "attention", n_layers * (att_p[0] + att_d[0]), n_layers * (att_p[3] + att_d[3]),
                        n_layers * (att_p[4] + att_d[4]), "compute" if a_comp >= a_kv else "memory")
                _record(rec, "norm", n_layers * t_ew, n_layers * 8.0 * self.model.hidden_size * Tg,
                        n_layers * self._ew_bytes * Tg, "memory")
                if self.tp_attn > 1:
                    _record(rec, "allreduce", n_layers * t_ar, 0.0,
                            n_layers * 2.0 * self._ar_bytes_per_token * Tg, "communication")
        # ---- the step: layers, lm_head on the sampled rows, pipeline transfers, host overhead
        total: Any = 0.0
        for (n_layers, _), (layer, _, _) in zip(self._kinds, layers, strict=True):
            total = total + n_layers * layer
        rows = nsamp + ndec
        t_h, h_c, h_m, h_fl, h_by = self._gemm(B, self._head, rows)
        total = total + t_h
        t_p2p_one = (self._p2p_const_s + self._p2p_s_per_token * Tg) * on
        total = total + (self.pp - 1) * t_p2p_one
        over = self.step_overhead_s + self.step_overhead_s_per_seq * rows
        time = total + over
        if B is not _ScalarBackend:
            time = np.where(T > 0, time, self.step_overhead_s)
            over = np.where(T > 0, over, self.step_overhead_s)
        if rec is not None:
            _record(rec, "lm_head", t_h, h_fl, h_by, "compute" if h_c >= h_m else "memory")
            if self.pp > 1:
                _record(rec, "pipeline_p2p", (self.pp - 1) * t_p2p_one, 0.0,
                        (self.pp - 1) * ACT_BYTES * self.model.hidden_size * Tg, "communication")
            _record(rec, "overhead", over, 0.0, 0.0, "overhead")
        # ---- split by bound and per pipeline stage (side sums of the same operator times)
        parts = [(layer, l_comp, l_mem, a_kv, t_ar, a2a) for (layer, l_comp, l_mem), a2a in zip(layers, a2as, strict=True)]
        return self._split_and_stages(B, T, parts, t_h, h_c, h_m, t_p2p_one, total, time, over, stage_out)

    def _split_and_stages(self, B: Any, T: Any, layers: list[tuple[Any, ...]], t_h: Any, h_c: Any, h_m: Any,
                          t_p2p_one: Any, total: Any, time: Any, over: Any,
                          stage_out: list[Any] | None) -> StepCostArrays:
        """The step's split by bound and its busiest pipeline stage, as side sums of the operator
        times already in ``total`` (both evaluations; the packed forms' ``_step_epilogue``).
        ``layers``: per layer kind, (layer time, compute, weight read, KV read, all-reduce,
        all-to-all), summed in this order over the kinds."""
        head_c = t_h * (h_c >= h_m)
        comp = mem = kv = comm = 0.0
        for (n_layers, _), (_, l_comp, l_mem, l_kv, l_ar, l_a2a) in zip(self._kinds, layers, strict=True):
            comp = comp + n_layers * l_comp
            mem = mem + n_layers * l_mem
            kv = kv + n_layers * l_kv
            comm = comm + n_layers * l_ar
            comm = comm + n_layers * l_a2a
        comp = comp + head_c
        mem = mem + (t_h - head_c)
        comm = comm + (self.pp - 1) * t_p2p_one
        worst: Any = 0.0
        last = self.pp - 1
        if self.pp == 1 and stage_out is None:  # one stage: the whole step but the overhead
            worst = total
        for s, counts in enumerate(self._stage_counts if (self.pp > 1 or stage_out is not None) else ()):
            stage: Any = 0.0
            for n_s, lay in zip(counts, layers, strict=True):
                stage = stage + n_s * lay[0]
            if s == last:
                stage = stage + t_h
            if s > 0:
                stage = stage + t_p2p_one
            worst = B.mx(worst, stage)
            if stage_out is not None:
                stage_out.append(stage)
        if B is not _ScalarBackend:  # every field an array, also where a part is a constant
            comp, mem, kv, comm, over, worst = (
                x if isinstance(x, np.ndarray) and x.shape == T.shape else x + 0.0 * T
                for x in (comp, mem, kv, comm, over, worst)
            )
        return StepCostArrays(
            time_s=time, compute_s=comp, weight_read_s=mem, kv_read_s=kv, comm_s=comm,
            overhead_s=over, bottleneck_stage_s=worst,
        )

    # ------------------------------------------------------------------ two-batch overlap
    @staticmethod
    def _tbo_half(B: Any, pf: Any, pairs: Any, kvt: Any, ndec: Any, ctx: Any) -> tuple[Any, ...]:
        """One micro-batch: ``ceil(x / 2)`` prefill tokens and decode sequences, pairs, prefill
        KV and context scaled with them (:func:`hwmodels.stepkernel.tbo_half`, same operations)."""
        if B is _ScalarBackend:
            if pf > 0.0:
                pf_h = float(math.ceil(pf / 2.0))
                pairs = pairs * (pf_h / pf)
                kvt = kvt * (pf_h / pf)
                pf = pf_h
            if ndec > 0.0:
                nd_h = float(math.ceil(ndec / 2.0))
                ctx = ctx * (nd_h / ndec)
                ndec = nd_h
            return pf, pairs, kvt, ndec, ctx
        pf_h = np.ceil(pf / 2.0)
        r_p = pf_h / np.where(pf > 0, pf, 1.0)
        pairs = np.where(pf > 0, pairs * r_p, pairs)
        kvt = np.where(pf > 0, kvt * r_p, kvt)
        nd_h = np.ceil(ndec / 2.0)
        ctx = np.where(ndec > 0, ctx * (nd_h / np.where(ndec > 0, ndec, 1.0)), ctx)
        return pf_h, pairs, kvt, nd_h, ctx

    @staticmethod
    def _tbo_slot(B: Any, c: Any, q: Any, phi: Any, s: Any) -> Any:
        """One overlapped stage (:func:`hwmodels.stepkernel.tbo_slot`): compute ``c`` beside a
        communication kernel of ``q`` seconds that holds every SM for ``phi q`` and a share
        ``s`` of them while in flight."""
        rest = (1.0 - phi) * q
        busy = c + s * rest
        return phi * q + B.mx(rest, busy)

    def _evaluate_tbo(self, B: Any, pf: Any, pairs: Any, kvt: Any, nsamp: Any, ndec: Any, ctx: Any,
                      rec: dict | None = None, stage_out: list | None = None) -> StepCostArrays:
        """A step under two-batch overlap (SGLang ``--enable-two-batch-overlap``; inputs: one
        rank's share, ``pf + ndec >= 2``), in :func:`hwmodels.stepkernel.packed_tbo_step`'s
        order. The step runs as two micro-batches of half the tokens (every layer's kernels
        twice, at half the size: weights are read twice); per layer, the four stages of
        DeepEP's overlap figure (docs/legacy.md) put each micro-batch's attention half and MLP
        half beside the other's dispatch and combine: ``slot(x, d) + slot(m, d) + slot(m, k) +
        slot(x, k)``. The LM head, pipeline sends and host overhead run on the whole step."""
        T_full = pf + ndec
        Tg_full = self._graph_tokens(B, T_full, pf)
        rows = nsamp + ndec
        pf, pairs, kvt, ndec, ctx = self._tbo_half(B, pf, pairs, kvt, ndec, ctx)
        T = pf + ndec
        Tg = self._graph_tokens(B, T, pf)
        Tm = Tg * float(self.adp)
        on = B.pos(T)
        t_ew = (self._ew_const_s + self._ew_s_per_byte * self._ew_bytes * Tg) * on
        t_ar = 2.0 * self._allreduce_s(B, Tg) * on
        att_p, att_d = self._attention(B, pf, pairs, kvt, ndec, ctx, nsamp)
        common = t_ew + t_ar + att_p[0] + att_d[0]
        a_comp = att_p[0] * (att_p[1] >= att_p[2]) + att_d[0] * (att_d[1] >= att_d[2])
        a_kv = att_p[0] + att_d[0] - a_comp
        # Steps with prefill run DeepEP's normal kernels, decode-only steps the low-latency ones.
        phi = B.where(pf > 0, self._tbo_nm[0], self._tbo_ll[0])
        sms = B.where(pf > 0, self._tbo_nm[1], self._tbo_ll[1])
        layers: list[tuple[Any, ...]] = []  # (layer, compute, memory, kv, all-reduce, exposed a2a)
        for (n_layers, gemms), (ll_c, ll_t, nm_c, nm_t, lld_c, lld_t, nmd_c, nmd_t) in zip(
                self._kinds, self._kind_a2a, strict=True):
            q = B.where(pf > 0, nm_c + nm_t * Tg, ll_c + ll_t * Tg) * on
            qd = B.where(pf > 0, nmd_c + nmd_t * Tg, lld_c + lld_t * Tg) * on
            qk = q - qd
            x, mlp, comp, mem = common, 0.0, a_comp, t_ew
            for c in gemms:
                t, tc, tm, flops, nbytes = self._gemm(B, c, Tg, Tm)
                if c.mlp_side:
                    mlp = mlp + t
                else:
                    x = x + t
                is_c = tc >= tm
                t_c = t * is_c
                comp = comp + t_c
                mem = mem + (t - t_c)
                if rec is not None:
                    _record(rec, c.op, n_layers * 2.0 * t, n_layers * 2.0 * flops, n_layers * 2.0 * nbytes,
                            "compute" if is_c else "memory")
            layer = (self._tbo_slot(B, x, qd, phi, sms) + self._tbo_slot(B, mlp, qd, phi, sms)
                     + self._tbo_slot(B, mlp, qk, phi, sms) + self._tbo_slot(B, x, qk, phi, sms))
            work = 2.0 * (x + mlp)
            layers.append((layer, 2.0 * comp, 2.0 * mem, 2.0 * a_kv, 2.0 * t_ar, layer - work))
            if rec is not None:
                if ll_c or ll_t:
                    _record(rec, "alltoall", n_layers * (layer - work), 0.0,
                            n_layers * 2.0 * self._a2a_bytes_per_token
                            * (self._a2a_dest / self.model.experts_per_tok if pf > 0 else 1.0) * Tg,
                            "communication")
                _record(rec, "attention", n_layers * 2.0 * (att_p[0] + att_d[0]),
                        n_layers * 2.0 * (att_p[3] + att_d[3]), n_layers * 2.0 * (att_p[4] + att_d[4]),
                        "compute" if a_comp >= a_kv else "memory")
                _record(rec, "norm", n_layers * 2.0 * t_ew, n_layers * 2.0 * 8.0 * self.model.hidden_size * Tg,
                        n_layers * 2.0 * self._ew_bytes * Tg, "memory")
                if self.tp_attn > 1:
                    _record(rec, "allreduce", n_layers * 2.0 * t_ar, 0.0,
                            n_layers * 4.0 * self._ar_bytes_per_token * Tg, "communication")
        total: Any = 0.0
        for (n_layers, _), lay in zip(self._kinds, layers, strict=True):
            total = total + n_layers * lay[0]
        t_h, h_c, h_m, h_fl, h_by = self._gemm(B, self._head, rows)
        total = total + t_h
        t_p2p_one = (self._p2p_const_s + self._p2p_s_per_token * Tg_full) * B.pos(T_full)
        total = total + (self.pp - 1) * t_p2p_one
        over = self.step_overhead_s + self.step_overhead_s_per_seq * rows
        time = total + over
        if rec is not None:
            _record(rec, "lm_head", t_h, h_fl, h_by, "compute" if h_c >= h_m else "memory")
            if self.pp > 1:
                _record(rec, "pipeline_p2p", (self.pp - 1) * t_p2p_one, 0.0,
                        (self.pp - 1) * ACT_BYTES * self.model.hidden_size * Tg_full, "communication")
            _record(rec, "overhead", over, 0.0, 0.0, "overhead")
        return self._split_and_stages(B, T, layers, t_h, h_c, h_m, t_p2p_one, total, time, over, stage_out)

    # ------------------------------------------------------------------ public API
    def cost(
        self,
        *,
        prefill_tokens: Any = 0,
        prefill_attn_pairs: Any = 0,
        prefill_kv_tokens: Any = 0,
        num_prefill_seqs: Any = 0,
        num_decode_seqs: Any = 0,
        decode_ctx_tokens: Any = 0,
    ) -> StepCostArrays:
        """Cost of one step (scalars) or many steps (equal-length arrays), vectorised.

        Args:
            prefill_tokens: new prompt tokens computed this step (sum over chunks).
            prefill_attn_pairs: sum over chunks of ``new_c * (cached_c + (new_c + 1) / 2)``.
            prefill_kv_tokens: sum over chunks of ``cached_c + new_c`` (KV read/written).
            num_prefill_seqs: chunks that finish their prompt this step (they sample a token).
            num_decode_seqs: decoding sequences (one token each).
            decode_ctx_tokens: sum of the decoding sequences' context lengths.

        Returns:
            :class:`StepCostArrays` of floats (all scalar inputs) or float64 arrays.
        """
        args = (prefill_tokens, prefill_attn_pairs, prefill_kv_tokens, num_prefill_seqs,
                num_decode_seqs, decode_ctx_tokens)
        if any(isinstance(a, np.ndarray) for a in args):
            arrs = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in args))
            if any((a < 0).any() for a in arrs):
                raise ConfigError("step-cost inputs must be >= 0")
            return self._evaluate(_VectorBackend, *arrs)
        vals = [float(a) for a in args]
        if min(vals) < 0:
            raise ConfigError(f"step-cost inputs must be >= 0, got {vals}")
        return self._evaluate(_ScalarBackend, *vals)

    def packed(self) -> npt.NDArray[np.float64]:
        """The packed form (a fresh copy): one float64 array that
        :func:`hwmodels.stepkernel.packed_step_time_s` evaluates, from Python or numba.

        Raises:
            ConfigError: the model has an op timer (its times are not a closed form).
        """
        if self._pack is None:
            raise ConfigError("a step-cost model with an op timer has no packed form")
        return self._pack.copy()

    def step_time_s(
        self,
        *,
        prefill_tokens: float = 0,
        prefill_attn_pairs: float = 0,
        prefill_kv_tokens: float = 0,
        num_prefill_seqs: float = 0,
        num_decode_seqs: float = 0,
        decode_ctx_tokens: float = 0,
    ) -> float:
        """One step's latency in seconds, fast: the packed form (no split by bound).

        Equal bit for bit to ``cost(...).time_s`` on scalars (pinned by the tests). With an op
        timer, the timer's per-operator times are memoised on their exact arguments (see
        :meth:`_precompute_timer`), so a step is a few dict lookups.
        """
        pf = float(prefill_tokens)
        ndec = float(num_decode_seqs)
        if self.op_timer is not None:
            vals = (pf, float(prefill_kv_tokens), float(num_prefill_seqs), ndec, float(decode_ctx_tokens))
            if min(vals) < 0 or prefill_attn_pairs < 0:
                raise ConfigError(f"step-cost inputs must be >= 0, got {vals}")
            return self._timer_step_time_s(*vals)
        return packed_step_time_s(self._pack, pf, float(prefill_attn_pairs), float(prefill_kv_tokens),
                                  float(num_prefill_seqs), ndec, float(decode_ctx_tokens))

    def breakdown(self, **step: float) -> list[OpCost]:
        """Per-operator cost of one step (summed over layers and stages), then ``total``.

        Takes the same keyword arguments as :meth:`cost`, as scalars.
        """
        rec: dict[str, list] = {}
        vals = {k: float(v) for k, v in step.items()}
        res = self._evaluate(
            _ScalarBackend, vals.get("prefill_tokens", 0.0), vals.get("prefill_attn_pairs", 0.0),
            vals.get("prefill_kv_tokens", 0.0), vals.get("num_prefill_seqs", 0.0),
            vals.get("num_decode_seqs", 0.0), vals.get("decode_ctx_tokens", 0.0), rec,
        )
        unknown = set(step) - {"prefill_tokens", "prefill_attn_pairs", "prefill_kv_tokens",
                               "num_prefill_seqs", "num_decode_seqs", "decode_ctx_tokens"}
        if unknown:
            raise ConfigError(f"unknown step arguments: {sorted(unknown)}")
        ops = []
        for name in OP_ORDER:
            if name not in rec:
                continue
            t, fl, by, bounds = rec[name]
            ops.append(OpCost(name, t, fl, by, max(bounds, key=bounds.get)))
        by_bound = {"compute": res.compute_s, "memory": res.weight_read_s + res.kv_read_s,
                    "communication": res.comm_s, "overhead": res.overhead_s}
        ops.append(OpCost("total", res.time_s, sum(o.flops for o in ops), sum(o.bytes for o in ops),
                          max(by_bound, key=by_bound.get)))
        return ops

    def stage_times_s(self, **step: float) -> list[float]:
        """Per pipeline stage time of one step (layers, lm_head on the last stage, incoming
        activation transfer; host overhead excluded). Scalar arguments as for :meth:`cost`."""
        stages: list[float] = []
        vals = {k: float(v) for k, v in step.items()}
        self._evaluate(
            _ScalarBackend, vals.get("prefill_tokens", 0.0), vals.get("prefill_attn_pairs", 0.0),
            vals.get("prefill_kv_tokens", 0.0), vals.get("num_prefill_seqs", 0.0),
            vals.get("num_decode_seqs", 0.0), vals.get("decode_ctx_tokens", 0.0), None, stages,
        )
        return stages

    def pipeline_bubble_frac(self, **step: float) -> float:
        """``1 - sum(stage) / (pp x max(stage))``: idle share of the GPUs with pp micro-batches."""
        st = self.stage_times_s(**step)
        return 0.0 if max(st) <= 0 else 1.0 - sum(st) / (len(st) * max(st))

    def activation_workspace_bytes(self, max_num_batched_tokens: int) -> int:
        """Peak activation memory per GPU of the largest step the scheduler allows.

        The live tensors at the widest point of a layer for ``T`` tokens (fp16): residual,
        normed input and attention output (3 h), the fused QKV output, the gate/up output and
        the activation output (3 I / tp for gated MLPs); plus fp32 logits and probabilities for
        up to 256 sampling rows (vLLM's default ``max_num_seqs``). This is what vLLM's profiling
        run measures as peak activation memory; it excludes CUDA graphs and NCCL buffers.
        """
        if max_num_batched_tokens < 0:
            raise ConfigError(f"max_num_batched_tokens must be >= 0, got {max_num_batched_tokens}")
        m, tp, t = self.model, self.tp, int(max_num_batched_tokens)
        inter = (m.moe_intermediate_size or m.intermediate_size) if m.is_moe else m.intermediate_size
        if m.is_moe:
            inter = inter * m.experts_per_tok + inter * m.num_shared_experts
        qkv = (m.num_heads + 2 * m.num_kv_heads) * m.attn_qk_dim / tp
        per_token = ACT_BYTES * (3 * m.hidden_size + qkv + (3 if m.gated_mlp else 2) * inter / tp)
        rows = min(t, _DEFAULT_MAX_SAMPLING_ROWS)
        logits = rows * (m.vocab_size / tp + m.vocab_size) * 4 * 2
        return math.ceil(t * per_token + logits)


def _record(rec: dict, op: str, t: float, flops: float, nbytes: float, bound: str) -> None:
    entry = rec.setdefault(op, [0.0, 0.0, 0.0, {}])
    entry[0] += float(t)
    entry[1] += float(flops)
    entry[2] += float(nbytes)
    entry[3][bound] = entry[3].get(bound, 0.0) + float(t)


#: Entries an op-timer memo of :class:`StepCostModel` holds before it is cleared (values are
#: recomputed identically after a clear, so results never depend on it).
_MEMO_MAX_ENTRIES = 1 << 18


def _memo_put(memo: dict, key: Any, value: float) -> None:
    if len(memo) >= _MEMO_MAX_ENTRIES:
        memo.clear()
    memo[key] = value


def _call_timer(B: Any, fn: Callable[..., float], *args: Any, memo: dict | None = None) -> Any:
    """Evaluate a scalar operator timer on scalars, or once per distinct row of arrays.

    Arguments are clamped to >= 1 (entries with no work are zeroed by the caller). With
    arrays, rows are keyed by their integer arguments (one int, or a tuple of ints: the keys
    of :meth:`StepCostModel.step_time_s`'s memos) and looked up in ``memo`` first.
    """
    if B is _ScalarBackend:
        return float(fn(*(max(int(a), 1) for a in args)))
    shape = np.shape(args[0])
    cols = [np.maximum(np.broadcast_to(np.asarray(a, dtype=np.float64), shape).astype(np.int64), 1).ravel().tolist()
            for a in args]
    keys = cols[0] if len(cols) == 1 else list(zip(*cols, strict=True))
    if memo is None:
        memo = {}
    elif len(memo) >= _MEMO_MAX_ENTRIES:
        memo.clear()
    for key in dict.fromkeys(keys):
        if key not in memo:
            memo[key] = float(fn(key) if len(cols) == 1 else fn(*key))
    return np.fromiter(map(memo.__getitem__, keys), dtype=np.float64, count=len(keys)).reshape(shape)


def prefill_chunk_aggregates(chunks: list[tuple[int, int]]) -> dict[str, float]:
    """Aggregates of prefill chunks ``(cached_tokens, new_tokens)`` for :meth:`StepCostModel.cost`.

    A helper for callers and tests; the engine keeps these sums incrementally.
    """
    tokens = pairs = kv = 0.0
    for cached, new in chunks:
        tokens += new
        pairs += new * (cached + (new + 1) / 2.0)
        kv += cached + new
    return {"prefill_tokens": tokens, "prefill_attn_pairs": pairs, "prefill_kv_tokens": kv}



__all__ = [
    "ALLREDUCE_LATENCY_S",
    "DEFAULT_STEP_OVERHEAD_S",
    "P2P_LATENCY_S",
    "OpCost",
    "StepCostArrays",
    "StepCostModel",
    "expected_distinct_groups",
    "expected_max_std_normal",
    "expert_max_load_sigma",
    "prefill_chunk_aggregates",
]
