"""Model specs read from Hugging Face ``config.json`` files.

A :class:`ModelSpec` covers dense multi-head and grouped-query attention (Llama, Mistral,
Qwen, OPT), mixture-of-experts (Mixtral, DeepSeek: total vs active parameters) and multi-head
latent attention (DeepSeek-V2/V3: a compressed KV of ``kv_lora_rank + qk_rope_head_dim`` per
token and layer). Everything the cost models need derives from the config: parameter counts,
the GEMM shapes of one layer (:meth:`ModelSpec.linear_layers`), KV-cache bytes per token and
FLOPs per token.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from servesim.hwmodels.errors import ConfigError, unknown_name


@dataclass(frozen=True, slots=True, kw_only=True)
class Linear:
    """One weight matrix of a layer: ``y[T, out] = x[T, in] @ W[in, out]``.

    Attributes:
        name: operator group it belongs to (``qkv_proj``, ``o_proj``, ``gate_up_proj``,
            ``up_proj``, ``down_proj``, ``moe``, ``lm_head``).
        in_features / out_features: GEMM K and N.
        num_copies: identical matrices per layer (routed experts: ``n_routed_experts``).
        active_copies: copies each token passes through (routed experts: ``experts_per_tok``).
        has_bias: adds ``out_features`` bias parameters per copy.
        tp_split: how tensor parallelism shards it: ``"col"`` (output dim) or ``"row"`` (input
            dim, followed by an all-reduce) or ``"none"``.
    """

    name: str
    in_features: int
    out_features: int
    num_copies: int = 1
    active_copies: int = 1
    has_bias: bool = False
    tp_split: str = "col"

    @property
    def params_per_copy(self) -> int:
        return self.in_features * self.out_features + (self.out_features if self.has_bias else 0)

    @property
    def num_params(self) -> int:
        return self.num_copies * self.params_per_copy

    @property
    def num_active_params(self) -> int:
        return self.active_copies * self.params_per_copy


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSpec:
    """A transformer decoder, as far as serving cost is concerned. Frozen.

    Attributes mirror Hugging Face config names with units/counts made explicit. MoE fields
    are zero for dense models; MLA fields are zero for standard attention.
    """

    name: str
    model_type: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_seq_len_tokens: int
    tie_word_embeddings: bool = False
    gated_mlp: bool = True  # SwiGLU (gate+up+down) vs plain 2-matrix MLP (OPT)
    attn_bias: bool = False  # OPT (all projections) / Qwen2 (qkv only)
    qkv_bias_only: bool = False
    mlp_bias: bool = False
    norm_has_bias: bool = False  # LayerNorm (OPT) vs RMSNorm
    learned_pos_embeddings: int = 0  # OPT: max_position_embeddings + 2 offset rows
    sliding_window_tokens: int = 0  # Mistral: attention looks back at most this far
    # mixture of experts
    num_experts: int = 0
    experts_per_tok: int = 0
    num_shared_experts: int = 0
    moe_intermediate_size: int = 0
    first_k_dense_layers: int = 0
    # multi-head latent attention (DeepSeek-V2/V3)
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    source: str = ""

    def __post_init__(self) -> None:
        for name in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim",
                     "vocab_size", "max_seq_len_tokens"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model {self.name}: {name} must be > 0, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"model {self.name}: num_attention_heads ({self.num_heads}) must be a multiple "
                f"of num_key_value_heads ({self.num_kv_heads})"
            )
        if self.num_experts and not (0 < self.experts_per_tok <= self.num_experts):
            raise ConfigError(
                f"model {self.name}: num_experts_per_tok must be in 1..{self.num_experts}, "
                f"got {self.experts_per_tok}"
            )

    # ------------------------------------------------------------------ structure
    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def num_moe_layers(self) -> int:
        return self.num_layers - self.first_k_dense_layers if self.is_moe else 0

    @property
    def num_dense_layers(self) -> int:
        return self.num_layers - self.num_moe_layers

    def attention_linears(self) -> list[Linear]:
        """The attention projections of one layer."""
        h = self.hidden_size
        if self.is_mla:
            qk_dim = self.qk_nope_head_dim + self.qk_rope_head_dim
            layers = []
            if self.q_lora_rank:
                layers += [
                    Linear(name="qkv_proj", in_features=h, out_features=self.q_lora_rank, tp_split="none"),
                    Linear(name="qkv_proj", in_features=self.q_lora_rank, out_features=self.num_heads * qk_dim),
                ]
            else:
                layers.append(Linear(name="qkv_proj", in_features=h, out_features=self.num_heads * qk_dim))
            layers += [
                # kv_a_proj_with_mqa: the compressed latent plus the shared rope key (replicated).
                Linear(name="qkv_proj", in_features=h, out_features=self.kv_lora_rank + self.qk_rope_head_dim,
                       tp_split="none"),
                Linear(name="qkv_proj", in_features=self.kv_lora_rank,
                       out_features=self.num_heads * (self.qk_nope_head_dim + self.v_head_dim)),
                Linear(name="o_proj", in_features=self.num_heads * self.v_head_dim, out_features=h, tp_split="row"),
            ]
            return layers
        q_out = self.num_heads * self.head_dim
        kv_out = 2 * self.num_kv_heads * self.head_dim
        return [
            Linear(name="qkv_proj", in_features=h, out_features=q_out + kv_out, has_bias=self.attn_bias),
            Linear(name="o_proj", in_features=q_out, out_features=h,
                   has_bias=self.attn_bias and not self.qkv_bias_only, tp_split="row"),
        ]

    def mlp_linears(self, *, moe_layer: bool) -> list[Linear]:
        """The MLP (or MoE block) of one layer."""
        h = self.hidden_size
        if moe_layer:
            inter = self.moe_intermediate_size or self.intermediate_size
            layers = [
                # Router: replicated, tiny.
                Linear(name="moe", in_features=h, out_features=self.num_experts, tp_split="none"),
                Linear(name="moe", in_features=h, out_features=2 * inter,
                       num_copies=self.num_experts, active_copies=self.experts_per_tok),
                Linear(name="moe", in_features=inter, out_features=h,
                       num_copies=self.num_experts, active_copies=self.experts_per_tok, tp_split="row"),
            ]
            if self.num_shared_experts:
                s = self.num_shared_experts
                layers += [
                    Linear(name="moe", in_features=h, out_features=2 * inter, num_copies=s, active_copies=s),
                    Linear(name="moe", in_features=inter, out_features=h, num_copies=s, active_copies=s,
                           tp_split="row"),
                ]
            return layers
        inter = self.intermediate_size
        if self.gated_mlp:
            return [
                Linear(name="gate_up_proj", in_features=h, out_features=2 * inter, has_bias=self.mlp_bias),
                Linear(name="down_proj", in_features=inter, out_features=h, has_bias=self.mlp_bias, tp_split="row"),
            ]
        return [
            Linear(name="up_proj", in_features=h, out_features=inter, has_bias=self.mlp_bias),
            Linear(name="down_proj", in_features=inter, out_features=h, has_bias=self.mlp_bias, tp_split="row"),
        ]

    def lm_head(self) -> Linear:
        return Linear(name="lm_head", in_features=self.hidden_size, out_features=self.vocab_size)

    # ------------------------------------------------------------------ parameter counts
    def _norm_params_per_layer(self) -> int:
        per_norm = self.hidden_size * (2 if self.norm_has_bias else 1)
        extra = 0
        if self.is_mla:
            extra = (self.q_lora_rank if self.q_lora_rank else 0) + self.kv_lora_rank
        return 2 * per_norm + extra

    def _embedding_params(self) -> int:
        emb = self.vocab_size * self.hidden_size + self.learned_pos_embeddings * self.hidden_size
        head = 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size
        final_norm = self.hidden_size * (2 if self.norm_has_bias else 1)
        return emb + head + final_norm

    def _layer_params(self, *, moe_layer: bool, active: bool) -> int:
        linears = self.attention_linears() + self.mlp_linears(moe_layer=moe_layer)
        total = sum(lin.num_active_params if active else lin.num_params for lin in linears)
        return total + self._norm_params_per_layer()

    @property
    def num_params(self) -> int:
        """Total parameters (all experts), embeddings and LM head included."""
        return (
            self.num_dense_layers * self._layer_params(moe_layer=False, active=False)
            + self.num_moe_layers * self._layer_params(moe_layer=True, active=False)
            + self._embedding_params()
        )

    @property
    def num_active_params(self) -> int:
        """Parameters a token passes through (``experts_per_tok`` routed experts per MoE layer)."""
        return (
            self.num_dense_layers * self._layer_params(moe_layer=False, active=True)
            + self.num_moe_layers * self._layer_params(moe_layer=True, active=True)
            + self._embedding_params()
        )

    # ------------------------------------------------------------------ KV cache
    @property
    def kv_elems_per_token_per_layer(self) -> int:
        """K and V elements cached per token per layer (MLA: latent + rope key, no separate V)."""
        if self.is_mla:
            return self.kv_lora_rank + self.qk_rope_head_dim
        return 2 * self.num_kv_heads * self.head_dim

    @property
    def kv_elems_per_token(self) -> int:
        return self.num_layers * self.kv_elems_per_token_per_layer

    @property
    def kv_scale_groups_per_token_per_layer(self) -> int:
        """Scale groups of a quantized KV cache per token and layer (one per head of K and V)."""
        return 1 if self.is_mla else 2 * self.num_kv_heads

    # ------------------------------------------------------------------ FLOPs
    @property
    def attn_qk_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim if self.is_mla else self.head_dim

    @property
    def attn_v_dim(self) -> int:
        return self.v_head_dim if self.is_mla else self.head_dim

    def attention_flops_per_token(self, context_tokens: float) -> float:
        """FLOPs of ``softmax(QK^T)V`` for one query token attending ``context_tokens`` keys."""
        ctx = min(context_tokens, self.sliding_window_tokens) if self.sliding_window_tokens else context_tokens
        return 2.0 * self.num_layers * self.num_heads * (self.attn_qk_dim + self.attn_v_dim) * ctx

    @property
    def linear_flops_per_token(self) -> float:
        """GEMM FLOPs per token (2 per active weight; embeddings are a lookup, not a GEMM)."""
        emb_lookup = self.vocab_size * self.hidden_size + self.learned_pos_embeddings * self.hidden_size
        norms = self.num_layers * self._norm_params_per_layer() + self.hidden_size * (2 if self.norm_has_bias else 1)
        head = self.vocab_size * self.hidden_size
        return 2.0 * (self.num_active_params - emb_lookup - norms - (0 if self.tie_word_embeddings else head)) + 2.0 * head

    def prefill_flops(self, prompt_tokens: int, cached_tokens: int = 0) -> float:
        """FLOPs to prefill ``prompt_tokens - cached_tokens`` new tokens after a cached prefix.

        Causal attention: new token ``j`` attends ``cached_tokens + j + 1`` keys.
        """
        new = prompt_tokens - cached_tokens
        mean_ctx = cached_tokens + (new + 1) / 2.0
        return new * (self.linear_flops_per_token + self.attention_flops_per_token(mean_ctx))

    def decode_flops(self, context_tokens: int) -> float:
        """FLOPs of one decode token at ``context_tokens`` of context."""
        return self.linear_flops_per_token + self.attention_flops_per_token(context_tokens + 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model_type": self.model_type,
            "num_params": self.num_params,
            "num_active_params": self.num_active_params,
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "num_heads": self.num_heads,
            "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.intermediate_size,
            "vocab_size": self.vocab_size,
            "max_seq_len_tokens": self.max_seq_len_tokens,
            "is_moe": self.is_moe,
            "num_experts": self.num_experts,
            "experts_per_tok": self.experts_per_tok,
            "is_mla": self.is_mla,
            "kv_lora_rank": self.kv_lora_rank,
            "kv_elems_per_token": self.kv_elems_per_token,
            "sliding_window_tokens": self.sliding_window_tokens,
            "source": self.source,
        }


def _req(cfg: dict[str, Any], key: str, where: str) -> Any:
    if key not in cfg:
        raise ConfigError(f"{where}: config.json lacks required field {key!r}")
    value = cfg[key]
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{where}: config field {key!r} must be a positive integer, got {value!r}")
    return value


def _opt(cfg: dict[str, Any], where: str, *keys: str, default: int = 0) -> int:
    """First present, non-null of ``keys`` as a non-negative integer, else ``default``.

    ``null``/``0`` fall through to the next key (HF configs write ``"head_dim": null``).
    """
    for key in keys:
        value = cfg.get(key)
        if value is None or value == 0:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value) or value < 0:
            raise ConfigError(
                f"{where}: config field {key!r} must be a non-negative integer, got {value!r}"
            )
        return int(value)
    return default


def model_from_hf_config(cfg: dict[str, Any], *, name: str, source: str = "") -> ModelSpec:
    """Build a :class:`ModelSpec` from the fields of a Hugging Face ``config.json``.

    Supports llama/mistral/mixtral/qwen2/opt/deepseek_v2/deepseek_v3 and any config using the
    same field names (``num_hidden_layers``, ``hidden_size``, ``num_attention_heads``, ...).
    """
    if not isinstance(cfg, dict):
        raise ConfigError(f"{name}: config.json must hold a JSON object")
    model_type = str(cfg.get("model_type", "unknown"))
    if "text_config" in cfg and "num_hidden_layers" not in cfg:
        cfg = {**cfg["text_config"], "model_type": model_type}
    layers = _req(cfg, "num_hidden_layers", name)
    hidden = _req(cfg, "hidden_size", name)
    heads = _req(cfg, "num_attention_heads", name)
    kv_heads = _opt(cfg, name, "num_key_value_heads", default=heads)
    head_dim = _opt(cfg, name, "head_dim", default=hidden // heads)
    vocab = _req(cfg, "vocab_size", name)
    max_len = _opt(cfg, name, "max_position_embeddings", "max_seq_len", default=4096)
    is_opt = model_type == "opt"
    inter = _opt(cfg, name, "ffn_dim" if is_opt else "intermediate_size", default=4 * hidden)
    num_experts = _opt(cfg, name, "num_local_experts", "n_routed_experts", "num_experts")
    source = source or str(cfg.get("_source", ""))
    return ModelSpec(
        name=name,
        model_type=model_type,
        num_layers=layers,
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=inter,
        vocab_size=vocab,
        max_seq_len_tokens=max_len,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        gated_mlp=not is_opt,
        attn_bias=bool(cfg.get("enable_bias", False)) if is_opt else bool(cfg.get("qkv_bias", model_type == "qwen2")),
        qkv_bias_only=not is_opt,
        mlp_bias=bool(cfg.get("enable_bias", False)) if is_opt else False,
        norm_has_bias=is_opt,
        learned_pos_embeddings=(max_len + 2) if is_opt else 0,
        sliding_window_tokens=_opt(cfg, name, "sliding_window"),
        num_experts=num_experts,
        experts_per_tok=_opt(cfg, name, "num_experts_per_tok") if num_experts else 0,
        num_shared_experts=_opt(cfg, name, "n_shared_experts"),
        moe_intermediate_size=_opt(cfg, name, "moe_intermediate_size"),
        first_k_dense_layers=_opt(cfg, name, "first_k_dense_replace"),
        q_lora_rank=_opt(cfg, name, "q_lora_rank"),
        kv_lora_rank=_opt(cfg, name, "kv_lora_rank"),
        qk_nope_head_dim=_opt(cfg, name, "qk_nope_head_dim"),
        qk_rope_head_dim=_opt(cfg, name, "qk_rope_head_dim"),
        v_head_dim=_opt(cfg, name, "v_head_dim"),
        source=source,
    )


def load_model_config(path: str | Path) -> ModelSpec:
    """Read a user's Hugging Face ``config.json`` (a file, or a directory holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    from servesim.hwmodels.safeio import load_json, read_text

    cfg = load_json(read_text(path, "model config"), f"model config {path}")
    if not isinstance(cfg, dict):
        raise ConfigError(f"model config {path}: expected a JSON object, got {type(cfg).__name__}")
    name = path.parent.name if path.name == "config.json" else path.stem
    return model_from_hf_config(cfg, name=name, source=str(path))


@functools.cache
def _bundled() -> dict[str, ModelSpec]:
    folder = resources.files("servesim.hwmodels").joinpath("data/models")
    out = {}
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".json"):
            stem = entry.name[: -len(".json")]
            out[stem] = model_from_hf_config(json.loads(entry.read_text()), name=stem)
    return out


def model_names() -> list[str]:
    """Names of the bundled models."""
    return list(_bundled())


#: Hugging Face model ids (as spelled on the Hub; looked up case-insensitively) -> bundled model. A
#: fine-tune (Instruct, chat) has its base model's architecture, so both ids map to one config.
#: Only ids whose config.json matches the bundled one in every field the simulator reads are
#: listed (Mistral-7B v0.3 is not: its vocabulary is 32768). docs/hardware-and-models.md
#: prints this table; a test checks that each target is bundled.
HF_MODEL_IDS: dict[str, str] = {
    "meta-llama/Llama-2-7b-hf": "llama-2-7b",
    "meta-llama/Llama-2-7b-chat-hf": "llama-2-7b",
    "meta-llama/Llama-2-13b-hf": "llama-2-13b",
    "meta-llama/Llama-2-13b-chat-hf": "llama-2-13b",
    "meta-llama/Llama-2-70b-hf": "llama-2-70b",
    "meta-llama/Llama-2-70b-chat-hf": "llama-2-70b",
    "meta-llama/Llama-3.1-8B": "llama-3.1-8b",
    "meta-llama/Llama-3.1-8B-Instruct": "llama-3.1-8b",
    "meta-llama/Meta-Llama-3.1-8B": "llama-3.1-8b",
    "meta-llama/Meta-Llama-3.1-8B-Instruct": "llama-3.1-8b",
    "meta-llama/Llama-3.1-70B": "llama-3.1-70b",
    "meta-llama/Llama-3.1-70B-Instruct": "llama-3.1-70b",
    "meta-llama/Meta-Llama-3.1-70B": "llama-3.1-70b",
    "meta-llama/Meta-Llama-3.1-70B-Instruct": "llama-3.1-70b",
    "meta-llama/Llama-3.1-405B": "llama-3.1-405b",
    "meta-llama/Llama-3.1-405B-Instruct": "llama-3.1-405b",
    "meta-llama/Meta-Llama-3.1-405B": "llama-3.1-405b",
    "meta-llama/Meta-Llama-3.1-405B-Instruct": "llama-3.1-405b",
    "mistralai/Mistral-7B-v0.1": "mistral-7b",
    "mistralai/Mistral-7B-Instruct-v0.1": "mistral-7b",
    "mistralai/Mixtral-8x7B-v0.1": "mixtral-8x7b",
    "mistralai/Mixtral-8x7B-Instruct-v0.1": "mixtral-8x7b",
    "Qwen/Qwen2.5-7B": "qwen2.5-7b",
    "Qwen/Qwen2.5-7B-Instruct": "qwen2.5-7b",
    "Qwen/Qwen2.5-72B": "qwen2.5-72b",
    "Qwen/Qwen2.5-72B-Instruct": "qwen2.5-72b",
    "deepseek-ai/DeepSeek-V2": "deepseek-v2",
    "deepseek-ai/DeepSeek-V2-Chat": "deepseek-v2",
    "deepseek-ai/DeepSeek-V3": "deepseek-v3",
    "deepseek-ai/DeepSeek-V3-Base": "deepseek-v3",
    "facebook/opt-13b": "opt-13b",
    "facebook/opt-66b": "opt-66b",
}


def get_model(name_or_path: str | Path | ModelSpec) -> ModelSpec:
    """A bundled model by exact (case-insensitive) name or Hugging Face id, or a ``config.json`` path.

    Hugging Face ids resolve through :data:`HF_MODEL_IDS` (``meta-llama/Llama-3.1-8B-Instruct``
    -> ``llama-3.1-8b``), unless a file or folder of that name exists.
    """
    if isinstance(name_or_path, ModelSpec):
        return name_or_path
    text = str(name_or_path)
    bundled = _bundled()
    if text.lower() in bundled:
        return bundled[text.lower()]
    hf_ids = {k.lower(): v for k, v in HF_MODEL_IDS.items()}
    if text.lower() in hf_ids and not Path(text).exists():
        return bundled[hf_ids[text.lower()]]
    if text.endswith(".json") or Path(text).exists():
        return load_model_config(text)
    raise unknown_name("model", text, bundled)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << math.ceil(math.log2(n))
