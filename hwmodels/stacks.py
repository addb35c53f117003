"""Serving-stack profiles: what a serving system adds to, or takes from, the GPU's kernels.

The same GPU and model run at different speeds under vLLM, SGLang or TensorRT-LLM: their host
work per engine step differs (CUDA graphs or not, an overlapped scheduler or not), so does the
work per request outside the forward pass (HTTP server, tokenization, detokenization), and so
do their kernels (MoE grouped GEMMs, MLA attention, paged decode attention, weight-only
dequantization, FP8 GEMMs). A :class:`StackProfile` holds these as a handful of named numbers;
``hwmodels/data/stacks/<name>.yaml`` ships one per stack, each default with its source, and a
user copies one, edits it and points ``engine.profile`` at it (``servesim calibrate`` fits the
parameters in :data:`FITTABLE_PARAMETERS` to the user's own measurements).

How each field enters the model (``docs/step-cost.md`` has the table):

* step time ``+= step_overhead_s + step_overhead_s_per_seq x sampled sequences`` (host work);
* with CUDA graphs, a step's GEMMs, elementwise kernels and all-reduces compute on the token
  count padded up to the next ``cuda_graph_sizes`` entry (``cuda_graphs: decode`` - decode-only
  steps; ``all`` - every step up to the largest size; ``none``);
* TTFT and E2EL ``+= request_overhead_s + request_overhead_s_per_prompt_token x prompt tokens
  + response_overhead_s`` (work outside the engine loop, applied per request in the results);
* ``separate_act_quant``: with W8A8/FP8 schemes, one memory-bound kernel per quantized GEMM
  reads the fp16 activations and writes the 8-bit ones (its cost grows with the tokens, so it
  acts as an efficiency of FP8 prefill, not a fixed cost);
* kernel-family efficiencies divide the time of their kernels (``fp8_gemm_eff``: FP8 GEMMs;
  ``weight_only_eff``: W4A16/W8A16 GEMMs; ``moe_gemm_eff``: routed-expert grouped GEMMs;
  ``prefill_attn_eff`` / ``decode_attn_eff``: attention; ``mla_attn_eff``: MLA attention, on top
  of the decode/prefill factor). They are fractions of what the GPU's best measured kernels
  reach (:mod:`hwmodels.achievable`), so 1.0 means "as good as the best published kernel";
* ``kv_quant_decode_eff``: decode attention over a quantized (8- or 4-bit) KV cache reaches this
  fraction of the bandwidth the same kernel reaches over a 16-bit cache (dequantization in the
  attention kernel): the KV bytes halve, the KV-read time falls to ``0.5 / kv_quant_decode_eff``;
* ``two_batch_overlap``: SGLang's ``--enable-two-batch-overlap`` (DeepSeek's dual micro-batch
  overlap): every step of a deployment with a MoE all-to-all runs as two micro-batches whose
  compute hides the other's dispatch and combine (``docs/step-cost.md``, "Two-batch overlap");
* ``decode_attn_tensor_cores``: false for engines whose decode attention runs on CUDA cores
  (TensorRT-LLM <= 0.6 masked MHA, vLLM <= 0.3 PagedAttention): its compute side is priced at
  :data:`~hwmodels.roofline.CUDA_CORE_ATTN_EFF_FRAC` of the GPU's FP32 peak, which makes
  grouped-query (GQA) decode compute-bound.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from servesim.hwmodels.errors import ConfigError, unknown_name

#: CUDA-graph modes: which steps run as captured graphs (padded to a capture size).
CUDA_GRAPH_MODES: tuple[str, ...] = ("none", "decode", "all")

#: Kernel-family efficiency fields (fractions in (0, 1.5]; > 1 = faster than the GPU's figure).
EFFICIENCY_FIELDS: tuple[str, ...] = (
    "fp8_gemm_eff", "weight_only_eff", "moe_gemm_eff", "prefill_attn_eff", "decode_attn_eff", "mla_attn_eff",
    "kv_quant_decode_eff",
)
#: Non-negative time fields, seconds.
TIME_FIELDS: tuple[str, ...] = (
    "step_overhead_s", "step_overhead_s_per_seq", "request_overhead_s",
    "request_overhead_s_per_prompt_token", "response_overhead_s",
)
#: The parameters ``servesim calibrate`` may fit to a user's measurements (the rest - CUDA-graph
#: sizes and mode - are facts of the stack's configuration, read from its documentation).
FITTABLE_PARAMETERS: tuple[str, ...] = TIME_FIELDS + EFFICIENCY_FIELDS
#: The profile a scenario uses when it names none: the pre-#13 model (a constant 1.5 ms step
#: overhead, no per-request work, no kernel-family factors), so existing results are unchanged.
DEFAULT_STACK = "generic"

_STACK_DIR = "data/stacks"


@dataclass(frozen=True, slots=True, kw_only=True)
class StackProfile:
    """One serving stack's overheads and kernel efficiencies (see module docstring).

    Attributes:
        name: profile name (``vllm``, ``sglang``, ...).
        description: one line: which versions and settings the defaults describe.
        step_overhead_s: host time per engine step independent of the batch.
        step_overhead_s_per_seq: host time per sequence sampled in the step.
        cuda_graphs: ``none``, ``decode`` or ``all`` (see :data:`CUDA_GRAPH_MODES`).
        cuda_graph_sizes: captured token counts, ascending (empty with ``none``).
        request_overhead_s: per request, arrival to the engine queue (HTTP, admission).
        request_overhead_s_per_prompt_token: tokenization per prompt token.
        response_overhead_s: per request, first token to the client (detokenize, stream).
        fp8_gemm_eff, weight_only_eff, moe_gemm_eff, prefill_attn_eff, decode_attn_eff,
            mla_attn_eff: kernel-family efficiency factors.
        kv_quant_decode_eff: bandwidth fraction of decode attention over an 8/4-bit KV cache
            relative to the same kernel over a 16-bit one.
        decode_attn_tensor_cores: false: decode attention computes on CUDA cores.
        alltoall_overlap_frac: share of the MoE all-to-all hidden outright (a user's or a
            fit's statement; 0 in the shipped profiles; the bands vary it).
        two_batch_overlap: steps run as two overlapped micro-batches (SGLang
            ``--enable-two-batch-overlap``); needs an all-to-all (expert parallelism with
            attention data parallelism). Off in every shipped profile (opt-in in SGLang);
            ``engine.two_batch_overlap`` sets it per scenario.
        separate_act_quant: W8A8/FP8 activations are quantized by separate elementwise
            kernels before each quantized GEMM (vLLM, SGLang) rather than fused into the
            preceding norm/activation kernel (TensorRT-LLM).
        sources: per field, where its default comes from.
    """

    name: str
    description: str = ""
    step_overhead_s: float
    step_overhead_s_per_seq: float = 0.0
    cuda_graphs: str = "none"
    cuda_graph_sizes: tuple[int, ...] = ()
    request_overhead_s: float = 0.0
    request_overhead_s_per_prompt_token: float = 0.0
    response_overhead_s: float = 0.0
    fp8_gemm_eff: float = 1.0
    weight_only_eff: float = 1.0
    moe_gemm_eff: float = 1.0
    prefill_attn_eff: float = 1.0
    decode_attn_eff: float = 1.0
    mla_attn_eff: float = 1.0
    kv_quant_decode_eff: float = 1.0
    decode_attn_tensor_cores: bool = True
    alltoall_overlap_frac: float = 0.0
    two_batch_overlap: bool = False
    separate_act_quant: bool = False
    sources: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"stack profile {self.name!r}"
        for f in TIME_FIELDS:
            v = getattr(self, f)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not (0 <= v < 10.0):
                raise ConfigError(f"{where}: {f} must be a number of seconds in [0, 10), got {v!r}")
            object.__setattr__(self, f, float(v))
        for f in EFFICIENCY_FIELDS:
            v = getattr(self, f)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not (0 < v <= 1.5):
                raise ConfigError(f"{where}: {f} must be an efficiency in (0, 1.5], got {v!r}")
            object.__setattr__(self, f, float(v))
        a2a = self.alltoall_overlap_frac
        if not isinstance(a2a, (int, float)) or isinstance(a2a, bool) or not (0 <= a2a <= 1):
            raise ConfigError(f"{where}: alltoall_overlap_frac must be a fraction in [0, 1], got {a2a!r}")
        object.__setattr__(self, "alltoall_overlap_frac", float(a2a))
        for f in ("separate_act_quant", "decode_attn_tensor_cores", "two_batch_overlap"):
            if not isinstance(getattr(self, f), bool):
                raise ConfigError(f"{where}: {f} must be true or false, got {getattr(self, f)!r}")
        if self.cuda_graphs not in CUDA_GRAPH_MODES:
            raise ConfigError(f"{where}: cuda_graphs must be one of {', '.join(CUDA_GRAPH_MODES)}, "
                              f"got {self.cuda_graphs!r}")
        sizes = tuple(self.cuda_graph_sizes)
        if any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in sizes):
            raise ConfigError(f"{where}: cuda_graph_sizes must be positive integers, got {sizes!r}")
        if list(sizes) != sorted(set(sizes)):
            raise ConfigError(f"{where}: cuda_graph_sizes must be strictly ascending, got {sizes!r}")
        if (self.cuda_graphs == "none") != (not sizes):
            raise ConfigError(f"{where}: cuda_graph_sizes must be given exactly when cuda_graphs is not 'none'")
        object.__setattr__(self, "cuda_graph_sizes", sizes)
        object.__setattr__(self, "sources", MappingProxyType(dict(self.sources)))

    # ------------------------------------------------------------------ derived
    @property
    def graph_mode_code(self) -> int:
        """0/1/2 for none/decode/all (the packed step cost's encoding)."""
        return CUDA_GRAPH_MODES.index(self.cuda_graphs)

    def request_overhead_total_s(self, prompt_tokens: Any) -> Any:
        """Per-request time outside the engine loop added to TTFT and E2EL (scalar or array)."""
        return (self.request_overhead_s + self.request_overhead_s_per_prompt_token * prompt_tokens
                + self.response_overhead_s)

    def fittable(self) -> dict[str, float]:
        """The fittable parameters and their values."""
        return {f: getattr(self, f) for f in FITTABLE_PARAMETERS}

    def replace(self, **changes: Any) -> StackProfile:
        """A copy with ``changes`` (validated); e.g. the result of a calibration."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"unknown stack-profile fields: {sorted(unknown)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain data in the YAML file's layout (round-trips through :func:`profile_from_dict`)."""
        out: dict[str, Any] = {"name": self.name, "description": self.description}
        for f in dataclasses.fields(self):
            if f.name in ("name", "description", "sources"):
                continue
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        out["sources"] = dict(self.sources)
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, width=100)


_FIELDS = frozenset(f.name for f in dataclasses.fields(StackProfile))


def profile_from_dict(raw: Any, where: str) -> StackProfile:
    """Build a profile from the YAML layout; unknown keys and wrong types are errors."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: a stack profile is a mapping of fields, got {type(raw).__name__}")
    unknown = set(raw) - _FIELDS
    if unknown:
        raise ConfigError(f"{where}: unknown stack-profile fields {sorted(unknown)}; valid: {sorted(_FIELDS)}")
    if "name" not in raw or not isinstance(raw["name"], str) or not raw["name"]:
        raise ConfigError(f"{where}: 'name' (a non-empty string) is required")
    if "step_overhead_s" not in raw:
        raise ConfigError(f"{where}: 'step_overhead_s' is required")
    kw = dict(raw)
    if "cuda_graph_sizes" in kw:
        if not isinstance(kw["cuda_graph_sizes"], list):
            raise ConfigError(f"{where}: cuda_graph_sizes must be a list of integers")
        kw["cuda_graph_sizes"] = tuple(kw["cuda_graph_sizes"])
    if "sources" in kw and not isinstance(kw["sources"], Mapping):
        raise ConfigError(f"{where}: sources must map field names to citations")
    try:
        return StackProfile(**kw)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def load_profile_file(path: str | Path) -> StackProfile:
    """Read a user's stack-profile YAML file (the shipped files' layout)."""
    from servesim.hwmodels.safeio import load_yaml, read_text

    path = Path(path)
    return profile_from_dict(load_yaml(read_text(path, "stack profile"), f"stack profile {path}"),
                             f"stack profile {path}")


@functools.cache
def _bundled() -> Mapping[str, StackProfile]:
    out: dict[str, StackProfile] = {}
    for entry in sorted(resources.files("servesim.hwmodels").joinpath(_STACK_DIR).iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            prof = profile_from_dict(yaml.safe_load(entry.read_text()), f"{_STACK_DIR}/{entry.name}")
            if prof.name != entry.name[: -len(".yaml")]:
                raise ConfigError(f"{_STACK_DIR}/{entry.name}: name {prof.name!r} must match the file name")
            out[prof.name] = prof
    return MappingProxyType(out)


def stack_names() -> list[str]:
    """Names of the shipped stack profiles."""
    return sorted(_bundled())


def get_stack(stack: StackProfile | str | None = None) -> StackProfile:
    """A shipped profile by name (``None``: :data:`DEFAULT_STACK`), or a given profile."""
    if isinstance(stack, StackProfile):
        return stack
    name = DEFAULT_STACK if stack is None else str(stack).lower()
    table = _bundled()
    if name not in table:
        raise unknown_name("serving stack", str(stack), list(table))
    return table[name]


__all__ = [
    "CUDA_GRAPH_MODES",
    "DEFAULT_STACK",
    "EFFICIENCY_FIELDS",
    "FITTABLE_PARAMETERS",
    "TIME_FIELDS",
    "StackProfile",
    "get_stack",
    "load_profile_file",
    "profile_from_dict",
    "stack_names",
]
