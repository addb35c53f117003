"""The operators of one forward step, as shapes and byte counts per GPU.

One decoder layer runs, per GPU of a ``tp``-way tensor-parallel group::

    norm -> qkv_proj -> attention -> o_proj -> allreduce -> norm -> gate_up_proj -> act
         -> down_proj -> allreduce                         (MoE layers: router + experts = moe)

and the step ends with ``lm_head`` on the rows that sample a token. This module turns a
:class:`~hwmodels.models.ModelSpec` and a :class:`~hwmodels.quant.QuantScheme` into the
sharded GEMM shapes (:class:`GemmOp`) and per-token byte constants the step-cost model needs;
:mod:`hwmodels.stepcost` turns them into seconds.

Sharding (Megatron-LM, as vLLM implements it): a ``col`` Linear splits N across the group,
``row`` splits K (and is followed by an all-reduce), ``none`` is replicated. Attention heads
split across the group; KV heads too until there are fewer KV heads than GPUs (then each GPU
keeps one, replicated). MLA's compressed latent is replicated: every GPU reads all of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from servesim.hwmodels.errors import ConfigError
from servesim.hwmodels.models import Linear, ModelSpec
from servesim.hwmodels.quant import KvDtype, QuantScheme

#: Operator names in report order. ``up_proj`` replaces ``gate_up_proj`` for non-gated MLPs.
OP_ORDER: tuple[str, ...] = (
    "qkv_proj", "attention", "o_proj", "gate_up_proj", "up_proj", "down_proj", "moe", "act_quant", "norm",
    "lm_head", "allreduce", "alltoall", "pipeline_p2p", "overhead",
)
#: Bounds an operator can be reported with.
BOUNDS: tuple[str, ...] = ("compute", "memory", "communication", "overhead")

#: Activations between kernels are fp16/bf16 regardless of the GEMM's input precision (FP8 and
#: INT8 schemes quantize activations inside the GEMM's prologue or a fused norm).
ACT_BYTES = 2.0


@dataclass(frozen=True, slots=True)
class OpCost:
    """One operator of a step (summed over the layers it appears in).

    Attributes:
        op: operator name (see :data:`OP_ORDER`), or ``total``.
        time_s: seconds.
        flops: floating-point (or integer) operations.
        bytes: HBM bytes moved (weights, KV, activations) or, for communication, bytes sent
            per GPU.
        bound: ``compute``, ``memory``, ``communication`` or ``overhead``.
    """

    op: str
    time_s: float
    flops: float
    bytes: float
    bound: str

    def to_dict(self) -> dict[str, float | str]:
        return {"op": self.op, "time_s": self.time_s, "flops": self.flops, "bytes": self.bytes, "bound": self.bound}


@dataclass(frozen=True, slots=True, kw_only=True)
class GemmOp:
    """One weight matrix of a layer after tensor-parallel sharding.

    Attributes:
        op: operator group (``qkv_proj``, ``moe``, ...).
        n, k: GEMM N and K per GPU.
        weight_bytes: stored bytes of one copy per GPU (quantized, scales included).
        num_copies: copies per GPU (routed experts: ``num_experts``; 1 otherwise).
        active_copies: copies each token passes through (routed experts: top-k).
        is_routed: True for routed experts (weights read only for experts some token picks).
        quantized: True if the scheme applies (False: the lm_head of a sub-8-bit scheme).
    """

    op: str
    n: int
    k: int
    weight_bytes: float
    num_copies: int = 1
    active_copies: int = 1
    is_routed: bool = False
    quantized: bool = True


def _shard(lin: Linear, tp: int, model: ModelSpec) -> tuple[int, int]:
    n, k = lin.out_features, lin.in_features
    if lin.tp_split == "col":
        if n % tp and n >= tp:
            # vLLM pads uneven shards; the ceiling is what the largest GPU computes.
            return -(-n // tp), k
        return max(n // tp, 1), k
    if lin.tp_split == "row":
        return n, max(-(-k // tp), 1)
    return n, k


def layer_gemms(model: ModelSpec, scheme: QuantScheme, tp: int, *, moe_layer: bool,
                moe_tp: int | None = None) -> list[GemmOp]:
    """The sharded GEMMs of one layer (dense or MoE).

    ``moe_tp``: the tensor-parallel degree of each routed expert (``tp / expert_parallel``
    under expert parallelism: SGLang's MoE TP = tp_size / ep_size); None = ``tp``.
    """
    out = []
    for lin in model.attention_linears() + model.mlp_linears(moe_layer=moe_layer):
        routed = lin.name == "moe" and lin.num_copies > 1 and lin.active_copies < lin.num_copies
        n, k = _shard(lin, moe_tp if (routed and moe_tp is not None) else tp, model)
        wb = scheme.weight_bytes(k, n) + (n * ACT_BYTES if lin.has_bias else 0.0)
        out.append(
            GemmOp(
                op=lin.name, n=n, k=k, weight_bytes=wb,
                num_copies=lin.num_copies, active_copies=lin.active_copies, is_routed=routed,
            )
        )
    return out


def lm_head_gemm(model: ModelSpec, scheme: QuantScheme, tp: int) -> GemmOp:
    """The LM head, vocab-parallel across TP; 16-bit for sub-8-bit schemes (AWQ/GPTQ keep it)."""
    lin = model.lm_head()
    n, k = _shard(lin, tp, model)
    quantized = scheme.weight_bits >= 8
    wb = scheme.weight_bytes(k, n) if quantized else 2.0 * n * k
    return GemmOp(op="lm_head", n=n, k=k, weight_bytes=wb, quantized=quantized)


def kv_shard_divisor(model: ModelSpec, tp: int) -> int:
    """How many ways a layer's KV cache is split across the TP group (MLA: not at all)."""
    if model.is_mla:
        return 1
    return min(tp, model.num_kv_heads)


def kv_bytes_per_token_per_layer_per_gpu(model: ModelSpec, kv: KvDtype, tp: int) -> float:
    """KV bytes one token occupies in one layer on one GPU (scales included)."""
    per_layer = model.kv_elems_per_token_per_layer * kv.bytes_per_elem
    per_layer += model.kv_scale_groups_per_token_per_layer * kv.scale_bytes_per_group
    return per_layer / kv_shard_divisor(model, tp)


def attn_flops_per_pair(model: ModelSpec, tp: int, *, decode: bool) -> float:
    """FLOPs of one (query, key) pair in one layer on one GPU (QK^T and PV, 2 per MAC).

    MLA decode runs on the latent with the up-projections absorbed (DeepSeek-V2, sec. 2.1.3):
    the score and value products are over ``kv_lora_rank (+ rope)`` dims per head.
    """
    heads = model.num_heads / tp
    if model.is_mla and decode:
        return 2.0 * heads * (2 * model.kv_lora_rank + model.qk_rope_head_dim)
    return 2.0 * heads * (model.attn_qk_dim + model.attn_v_dim)


def elementwise_bytes_per_token_per_layer(model: ModelSpec, tp: int) -> float:
    """HBM bytes of a layer's elementwise kernels per token.

    Two fused add+RMSNorm (read residual and input, write both: 4h each), RoPE on Q and K
    (read + write), and the MLP activation (SiLU-and-mul reads 2I, writes I; plain GELU reads
    and writes I), at fp16.
    """
    h = model.hidden_size
    inter = (model.moe_intermediate_size or model.intermediate_size) if model.is_moe else model.intermediate_size
    act = (3 if model.gated_mlp else 2) * inter / tp
    rope = 2 * (model.num_heads + model.num_kv_heads) * model.attn_qk_dim / tp
    return ACT_BYTES * (2 * 4 * h + rope + act)


def elementwise_kernels_per_layer() -> int:
    """Elementwise kernels per layer: 2 fused add+norms, RoPE, activation."""
    return 4


def check_tp(model: ModelSpec, tp: int, pp: int) -> None:
    """Reject parallel degrees the model cannot be split into."""
    if tp < 1 or pp < 1:
        raise ConfigError(f"tensor_parallel and pipeline_parallel must be >= 1, got tp={tp}, pp={pp}")
    if model.num_heads % tp:
        raise ConfigError(
            f"tensor_parallel={tp} must divide the {model.num_heads} attention heads of {model.name}; "
            f"valid: {', '.join(str(d) for d in range(1, model.num_heads + 1) if model.num_heads % d == 0 and d <= 64)}"
        )
    if pp > model.num_layers:
        raise ConfigError(f"pipeline_parallel={pp} exceeds the {model.num_layers} layers of {model.name}")


def check_expert_parallel(model: ModelSpec, tp: int, ep: int, adp: int, redundant: int) -> None:
    """Reject expert-parallel layouts the model and the TP group cannot take.

    Expert parallelism lays the routed experts across the ``tp`` GPUs of a pipeline stage
    (each GPU holds ``(experts + redundant) / ep`` whole experts, each split ``tp / ep`` ways),
    as SGLang's ``--ep-size`` (<= ``--tp-size``) and vLLM's ``--enable-expert-parallel`` do;
    attention data parallelism runs attention on ``adp`` independent groups of requests
    (SGLang's ``--enable-dp-attention --dp-size``), which needs the experts spread over the
    whole group (``ep == tp``) for the DeepEP all-to-all.
    """
    for name, value, low in (("expert_parallel", ep, 1), ("attention_data_parallel", adp, 1),
                             ("redundant_experts", redundant, 0)):
        if value < low:
            raise ConfigError(f"{name} must be >= {low}, got {value}")
    if ep == 1 and adp == 1 and redundant == 0:
        return
    if not model.is_moe:
        raise ConfigError(
            f"expert_parallel={ep}, attention_data_parallel={adp}, redundant_experts={redundant}: "
            f"{model.name} is a dense model (no routed experts); valid: 1, 1, 0 (use tensor_parallel or replicas)"
        )
    divisors = [d for d in range(1, tp + 1) if tp % d == 0]
    if tp % ep:
        raise ConfigError(
            f"expert_parallel={ep} must divide tensor_parallel={tp} (experts are laid across the GPUs of a "
            f"stage); valid: {', '.join(map(str, divisors))}"
        )
    if tp % adp:
        raise ConfigError(
            f"attention_data_parallel={adp} must divide tensor_parallel={tp}; valid: {', '.join(map(str, divisors))}"
        )
    if adp > 1 and ep != tp:
        raise ConfigError(
            f"attention_data_parallel={adp} needs expert_parallel == tensor_parallel ({tp}): the DeepEP "
            f"all-to-all spreads the experts over the whole group; got expert_parallel={ep}"
        )
    if adp > 1 and model.num_heads % (tp // adp):
        raise ConfigError(
            f"tensor_parallel / attention_data_parallel = {tp // adp} GPUs share each attention group and must "
            f"divide the {model.num_heads} heads of {model.name}; valid attention_data_parallel: "
            f"{', '.join(str(d) for d in divisors if model.num_heads % (tp // d) == 0)}"
        )
    if redundant and ep == 1:
        raise ConfigError(f"redundant_experts={redundant} needs expert_parallel > 1")
    slots = model.num_experts + redundant
    if slots % ep:
        ok = [d for d in divisors if slots % d == 0]
        raise ConfigError(
            f"expert_parallel={ep} must divide the {model.num_experts} routed experts of {model.name} plus "
            f"redundant_experts={redundant} (= {slots}); valid expert_parallel for tensor_parallel={tp}: "
            f"{', '.join(map(str, ok))}, or redundant experts that make the total divisible (SGLang "
            f"--ep-num-redundant-experts, e.g. redundant_experts={(-model.num_experts) % ep})"
        )


__all__ = [
    "ACT_BYTES",
    "BOUNDS",
    "OP_ORDER",
    "GemmOp",
    "OpCost",
    "attn_flops_per_pair",
    "check_expert_parallel",
    "check_tp",
    "elementwise_bytes_per_token_per_layer",
    "elementwise_kernels_per_layer",
    "kv_bytes_per_token_per_layer_per_gpu",
    "kv_shard_divisor",
    "layer_gemms",
    "lm_head_gemm",
]
