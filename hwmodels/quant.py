"""Quantization schemes: what each does to bytes moved and to the GEMMs' compute type.

The memory-bandwidth side lives here as frozen specs (:class:`QuantScheme`, :class:`KvDtype`);
the precision side (affine quantization, SmoothQuant migration, error metrics) lives in
:mod:`hwmodels.quantmath`.

Bytes per weight include the scale (and zero-point) overhead of the scheme's granularity:
AWQ/GPTQ W4A16 at group size 128 stores per group an fp16 scale and a 4-bit zero point packed
into int32 (AWQ ``qzeros``; GPTQ likewise), so ``4 + (16 + 4) / 128 = 4.156`` bits per weight.
NVFP4 stores an FP8 E4M3 scale per 16 FP4 values (NVIDIA, "Introducing NVFP4", 2025):
``4 + 8 / 16 = 4.5`` bits. Per-channel schemes (FP8, SmoothQuant INT8) have one fp32/fp16
scale per output channel: negligible, but counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from servesim.hwmodels.errors import ConfigError, unknown_name

#: Bits of each storage dtype.
DTYPE_BITS: Mapping[str, int] = MappingProxyType(
    {"fp32": 32, "fp16": 16, "bf16": 16, "fp8": 8, "int8": 8, "int4": 4, "fp4": 4}
)


@dataclass(frozen=True, slots=True, kw_only=True)
class QuantScheme:
    """Weight / activation precision of the model's GEMMs.

    Attributes:
        name: catalogue name (``fp16``, ``w4a16``, ...).
        weight_dtype: storage dtype of weights.
        act_dtype: dtype of activations entering the GEMM.
        compute_type: tensor-core path the GEMM runs on (the GPU peak it uses).
        group_size: weights per scale group (0 = per output channel).
        scale_bits: bits of each group's scale.
        zero_bits: bits of each group's zero point (0 = symmetric).
        weight_only: True if weights are dequantized to ``act_dtype`` inside the GEMM (W4A16,
            W8A16): extra CUDA-core work per weight element loaded (``dequant_ops_per_weight``).
        dequant_ops_per_weight: integer/FP ops to unpack, convert, scale (and shift) one
            weight (Marlin/AWQ kernels: unpack via LOP3 + convert + FMA, ~4 ops; Frantar et
            al., "MARLIN", 2024).
        default_kv_dtype: the KV dtype the scheme implies unless overridden (QServe W4A8KV4).
        description: one line for listings.
    """

    name: str
    weight_dtype: str
    act_dtype: str
    compute_type: str
    group_size: int = 0
    scale_bits: int = 0
    zero_bits: int = 0
    weight_only: bool = False
    dequant_ops_per_weight: float = 0.0
    default_kv_dtype: str = "fp16"
    description: str = ""

    def __post_init__(self) -> None:
        for f in ("weight_dtype", "act_dtype", "compute_type"):
            if getattr(self, f) not in DTYPE_BITS:
                raise ConfigError(f"quant scheme {self.name}: {f} {getattr(self, f)!r} not in {list(DTYPE_BITS)}")
        if self.group_size < 0:
            raise ConfigError(f"quant scheme {self.name}: group_size must be >= 0, got {self.group_size}")

    @property
    def weight_bits(self) -> int:
        return DTYPE_BITS[self.weight_dtype]

    @property
    def act_bytes(self) -> float:
        return DTYPE_BITS[self.act_dtype] / 8

    def bits_per_weight(self, in_features: int = 4096) -> float:
        """Average stored bits per weight, scales and zero points included.

        ``in_features`` matters only for per-channel schemes (one scale per output channel).
        """
        overhead = self.scale_bits + self.zero_bits
        if self.group_size:
            return self.weight_bits + overhead / self.group_size
        return self.weight_bits + overhead / max(in_features, 1)

    def bytes_per_weight(self, in_features: int = 4096) -> float:
        return self.bits_per_weight(in_features) / 8

    def weight_bytes(self, in_features: int, out_features: int) -> float:
        """Stored bytes of one ``in x out`` weight matrix."""
        return in_features * out_features * self.bytes_per_weight(in_features)

    def check_supported(self, gpu: Any) -> None:
        """Raise :class:`ConfigError` if ``gpu`` (a GpuSpec) has no tensor-core path for it."""
        if not gpu.supports(self.compute_type):
            raise ConfigError(
                f"quantization {self.name!r} runs its GEMMs on {self.compute_type} tensor cores, "
                f"which GPU {gpu.name} does not have; it supports {', '.join(gpu.peak_flops_per_s)}. "
                f"Schemes this GPU can run: {', '.join(supported_schemes(gpu))}"
            )

    def with_group_size(self, group_size: int) -> QuantScheme:
        """A copy with another group size (weight-only 4-bit schemes)."""
        if group_size <= 0:
            raise ConfigError(f"group_size must be > 0, got {group_size}")
        from dataclasses import replace

        return replace(self, group_size=group_size)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "weight_dtype": self.weight_dtype,
            "act_dtype": self.act_dtype,
            "compute_type": self.compute_type,
            "group_size": self.group_size,
            "bits_per_weight": self.bits_per_weight(),
            "weight_only": self.weight_only,
            "default_kv_dtype": self.default_kv_dtype,
            "description": self.description,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class KvDtype:
    """KV-cache element format.

    Attributes:
        bits: bits per K or V element.
        scale_bytes_per_group: scale (+ zero point) bytes per head vector of K or V per token
            (vLLM int8/int4 KV and KIVI-style quantization scale per token and head; FP8 E4M3
            uses one per-tensor scale, i.e. ~0 per token).
    """

    name: str
    bits: int
    scale_bytes_per_group: float = 0.0
    description: str = ""

    @property
    def bytes_per_elem(self) -> float:
        return self.bits / 8


SCHEMES: Mapping[str, QuantScheme] = MappingProxyType(
    {
        s.name: s
        for s in (
            QuantScheme(name="fp16", weight_dtype="fp16", act_dtype="fp16", compute_type="fp16",
                        description="FP16 weights and activations (baseline)"),
            QuantScheme(name="bf16", weight_dtype="bf16", act_dtype="bf16", compute_type="bf16",
                        description="BF16 weights and activations"),
            QuantScheme(name="fp8", weight_dtype="fp8", act_dtype="fp8", compute_type="fp8", scale_bits=32,
                        description="W8A8 FP8 E4M3, per-channel weight scales (Hopper, Ada, MI300, Blackwell)"),
            QuantScheme(name="w8a8-int8", weight_dtype="int8", act_dtype="int8", compute_type="int8", scale_bits=16,
                        description="W8A8 INT8, SmoothQuant-style per-channel weights, per-token activations"),
            QuantScheme(name="w8a16", weight_dtype="int8", act_dtype="fp16", compute_type="fp16", scale_bits=16,
                        weight_only=True, dequant_ops_per_weight=3.0,
                        description="INT8 weight-only, dequantized to FP16 in the GEMM"),
            QuantScheme(name="w4a16", weight_dtype="int4", act_dtype="fp16", compute_type="fp16", group_size=128,
                        scale_bits=16, zero_bits=4, weight_only=True, dequant_ops_per_weight=4.0,
                        description="AWQ/GPTQ 4-bit weight-only, group 128, fp16 scale + 4-bit zero per group"),
            QuantScheme(name="w4a8", weight_dtype="int4", act_dtype="int8", compute_type="int8", group_size=128,
                        scale_bits=8, zero_bits=4, weight_only=False, dequant_ops_per_weight=2.0,
                        description="QServe-style W4A8 (4-bit weights, INT8 GEMM), group 128"),
            QuantScheme(name="w4a8-kv4", weight_dtype="int4", act_dtype="int8", compute_type="int8", group_size=128,
                        scale_bits=8, zero_bits=4, weight_only=False, dequant_ops_per_weight=2.0,
                        default_kv_dtype="int4", description="QServe W4A8KV4: W4A8 plus 4-bit KV cache"),
            QuantScheme(name="nvfp4", weight_dtype="fp4", act_dtype="fp4", compute_type="fp4", group_size=16,
                        scale_bits=8, description="NVFP4 (Blackwell): FP4 E2M1 with an FP8 scale per 16 values"),
        )
    }
)

KV_DTYPES: Mapping[str, KvDtype] = MappingProxyType(
    {
        k.name: k
        for k in (
            KvDtype(name="fp16", bits=16, description="FP16 KV cache"),
            KvDtype(name="bf16", bits=16, description="BF16 KV cache"),
            KvDtype(name="fp8", bits=8, description="FP8 E4M3 KV cache, per-tensor scale"),
            KvDtype(name="int8", bits=8, scale_bytes_per_group=2.0,
                    description="INT8 KV, fp16 scale per token and head"),
            KvDtype(name="int4", bits=4, scale_bytes_per_group=4.0,
                    description="INT4 KV, fp16 scale + fp16 zero per token and head (KIVI/QServe-style)"),
        )
    }
)


def get_scheme(name: str | QuantScheme) -> QuantScheme:
    """A quantization scheme by exact (case-insensitive) name."""
    if isinstance(name, QuantScheme):
        return name
    key = str(name).lower()
    if key in SCHEMES:
        return SCHEMES[key]
    raise unknown_name("quantization scheme", str(name), SCHEMES)


def get_kv_dtype(name: str | KvDtype) -> KvDtype:
    """A KV-cache dtype by exact (case-insensitive) name."""
    if isinstance(name, KvDtype):
        return name
    key = str(name).lower()
    if key in KV_DTYPES:
        return KV_DTYPES[key]
    raise unknown_name("KV-cache dtype", str(name), KV_DTYPES)


def supported_schemes(gpu: Any) -> list[str]:
    """Names of the schemes whose GEMM compute type ``gpu`` supports."""
    return [n for n, s in SCHEMES.items() if gpu.supports(s.compute_type)]


def check_kv_dtype_supported(kv: KvDtype, gpu: Any) -> None:
    """FP8 KV needs FP8 conversion hardware (Hopper/Ada/MI300/Blackwell); int KV runs anywhere."""
    if kv.name == "fp8" and not gpu.supports("fp8"):
        raise ConfigError(
            f"kv_cache_dtype 'fp8' needs FP8 support, which GPU {gpu.name} lacks; use fp16, int8 or int4"
        )


def kv_bytes_per_token(model: Any, kv: KvDtype | str) -> float:
    """KV-cache bytes one token occupies across all layers, scales included."""
    kv = get_kv_dtype(kv)
    per_layer = model.kv_elems_per_token_per_layer * kv.bytes_per_elem
    per_layer += model.kv_scale_groups_per_token_per_layer * kv.scale_bytes_per_group
    return model.num_layers * per_layer


def weight_bytes(model: Any, scheme: QuantScheme | str) -> float:
    """Bytes of all the model's weights under ``scheme``.

    GEMM weights take the scheme's bytes per weight; embeddings, norms and (for sub-8-bit
    schemes) the LM head stay in 16 bits, as AWQ/GPTQ/NVFP4 checkpoints keep them.
    """
    scheme = get_scheme(scheme)
    total = 0.0
    gemm_params = 0
    for moe_layer, count in ((False, model.num_dense_layers), (True, model.num_moe_layers)):
        if count == 0:
            continue
        for lin in model.attention_linears() + model.mlp_linears(moe_layer=moe_layer):
            total += count * lin.num_copies * scheme.weight_bytes(lin.in_features, lin.out_features)
            total += count * lin.num_copies * (lin.out_features * 2 if lin.has_bias else 0)
            gemm_params += count * lin.num_params
    rest = model.num_params - gemm_params
    head = model.vocab_size * model.hidden_size if not model.tie_word_embeddings else 0
    head_bytes = head * (scheme.bytes_per_weight(model.hidden_size) if scheme.weight_bits >= 8 else 2.0)
    return total + (rest - head) * 2.0 + head_bytes


def routed_expert_bytes(model: Any, scheme: QuantScheme | str) -> float:
    """Bytes of all routed experts of all MoE layers under ``scheme`` (0 for dense models)."""
    scheme = get_scheme(scheme)
    total = 0.0
    if not getattr(model, "num_moe_layers", 0):
        return total
    for lin in model.mlp_linears(moe_layer=True):
        if lin.name == "moe" and lin.num_copies > 1 and lin.active_copies < lin.num_copies:
            total += model.num_moe_layers * lin.num_copies * scheme.weight_bytes(lin.in_features, lin.out_features)
    return total


def weight_bytes_per_gpu(model: Any, scheme: QuantScheme | str, tensor_parallel: int, pipeline_parallel: int = 1,
                         *, expert_parallel: int = 1, attention_data_parallel: int = 1,
                         redundant_experts: int = 0) -> float:
    """Weights one GPU holds after TP x PP sharding (replicated parts counted once per GPU).

    Under expert parallelism each GPU of a stage holds ``(experts + redundant) / ep`` routed
    experts split ``tp / ep`` ways: the routed bytes per GPU are ``routed x (experts +
    redundant) / experts / (tp x pp)``; with attention data parallelism the rest (attention,
    dense MLPs, shared experts, embeddings) is sharded over ``tp / attention_data_parallel``
    GPUs only (replicated on every DP rank, as SGLang's DP attention and DP dense FFN do).
    """
    total = weight_bytes(model, scheme)
    tp, pp = tensor_parallel, pipeline_parallel
    if expert_parallel == 1 and attention_data_parallel == 1 and redundant_experts == 0:
        return total / (tp * pp)
    routed = routed_expert_bytes(model, scheme)
    slots_frac = (model.num_experts + redundant_experts) / model.num_experts
    return (total - routed) / (tp // attention_data_parallel * pp) + routed * slots_frac / (tp * pp)


def scheme_names() -> list[str]:
    return list(SCHEMES)


def kv_dtype_names() -> list[str]:
    return list(KV_DTYPES)



__all__ = [
    "DTYPE_BITS",
    "KV_DTYPES",
    "SCHEMES",
    "KvDtype",
    "QuantScheme",
    "check_kv_dtype_supported",
    "get_kv_dtype",
    "get_scheme",
    "kv_bytes_per_token",
    "kv_dtype_names",
    "routed_expert_bytes",
    "scheme_names",
    "supported_schemes",
    "weight_bytes",
    "weight_bytes_per_gpu",
]
