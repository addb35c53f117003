"""Scenario files: the pydantic models of a scenario YAML, and :func:`load_scenario`.

A scenario says which hardware serves which model with which KV-cache manager, scheduler and
router, what traffic arrives (``workload:``, see :mod:`workloads.config`), the latency
targets, and optionally ``variants:`` that change some of those settings and run on the
identical request stream. Every model forbids unknown keys and is frozen; keys carry their
unit (``memory_reserve_gib``, ``block_size_tokens``, ``ttft_ms``).

Loading happens in stages, each with its own error messages (all :class:`ScenarioError`)::

    YAML text --parse (line/column on syntax errors, duplicate keys refused)--> dict
      --resolve relative paths against the scenario's directory-->
      --apply the file's ``quick:`` overrides (only with quick=True)-->
      --apply ``--set path=value`` overrides and ``--seed``-->
      --pydantic (dotted path, closest valid key, allowed range)--> ScenarioCfg
      --resolve_variants (deep-merge each variant, re-validate)-->
      --catalogue checks (GPU / model / quantization / KV dtype names, trace files exist)

Impossible configurations (the weights do not fit, with the memory breakdown) are found by
:mod:`simulator.build`, which knows the memory budget.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
import types
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    ValidationError,
    field_validator,
    model_validator,
)

from servesim.hwmodels.safeio import clip, load_yaml, read_text, short
from servesim.simulator.errors import ScenarioError, SimulatorError
from servesim.workloads.config import WorkloadCfg

__all__ = [
    "EngineCfg",
    "HardwareCfg",
    "KvCacheCfg",
    "ModelCfg",
    "RouterCfg",
    "ScenarioCfg",
    "SchedulerCfg",
    "SloCfg",
    "VariantCfg",
    "apply_overrides",
    "load_scenario",
    "resolve_variants",
    "scenario_from_dict",
]

# Names that become directory names (scenario) or figure labels and file stems (variants).
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}\Z")  # \Z: no trailing newline


class _Cfg(BaseModel):
    # allow_inf_nan=False: .inf / NaN never reach a field meant to be finite (#15).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# ---------------------------------------------------------------------------- sections


class HardwareCfg(_Cfg):
    """One group of identical replicas: ``replicas`` model instances, each on
    ``tensor_parallel x pipeline_parallel`` GPUs of one kind."""

    gpu: str = Field(
        "h100-sxm",
        description="GPU catalogue name (`servesim list gpus`) or the path of a GPU YAML file "
        "(relative paths resolve against the scenario file).",
    )
    # Bounds (docs/inputs.md): each replica is simulated, so replicas size an allocation.
    tensor_parallel: int = Field(1, gt=0, le=1024, description="GPUs per pipeline stage (TP).")
    pipeline_parallel: int = Field(1, gt=0, le=1024, description="Pipeline stages per replica.")
    replicas: int = Field(1, gt=0, le=4096, description="Model instances in this group.")
    # Expert parallelism (docs/step-cost.md "Expert parallelism"): MoE models only. Checked
    # with the model when the cost model is built (hwmodels.ops.check_expert_parallel: EP and
    # attention DP divide tensor_parallel, EP divides experts + redundant, DP needs EP == TP),
    # not by a validator here: an after-validator would rename HardwareCfg's union branch in
    # every hardware error message.
    expert_parallel: int = Field(
        1,
        ge=1,
        le=1024,
        description="GPUs of a stage the routed experts are spread over (1: every GPU holds a "
        "1/tensor_parallel slice of every expert). Must divide tensor_parallel and the experts "
        "(+ redundant_experts). vLLM --enable-expert-parallel (EP = TP), SGLang --ep-size.",
    )
    attention_data_parallel: int = Field(
        1,
        ge=1,
        le=1024,
        description="Attention data-parallel ranks per stage (1: tensor-parallel attention); "
        "each runs 1/n of the replica's requests, and every MoE layer adds a dispatch and a "
        "combine all-to-all (DeepEP). Needs expert_parallel == tensor_parallel. SGLang "
        "--enable-dp-attention --dp-size.",
    )
    redundant_experts: int = Field(
        0,
        ge=0,
        le=4096,
        description="Extra expert replicas (DeepSeek EPLB; SGLang --ep-num-redundant-experts), "
        "so that expert_parallel can divide experts + redundant (e.g. 256 + 32 = 288 over 72 GPUs).",
    )
    gpu_memory_utilization: float = Field(
        0.9,
        gt=0.0,
        le=1.0,
        description="Fraction of each GPU's HBM the engine may use (vLLM's "
        "--gpu-memory-utilization), for weights, activations, reserve and KV cache.",
    )
    memory_reserve_gib: Annotated[float, Field(ge=0, le=1e6)] | None = Field(
        None,
        description="GiB per GPU held back for CUDA graphs, NCCL buffers and allocator slack; "
        "null = the engine's default.",
    )
    swap_space_gib: float = Field(
        4.0, ge=0, le=1e6, description="Host memory per GPU for swapped-out KV blocks (vLLM's --swap-space)."
    )


class ModelCfg(_Cfg):
    """The model and its numeric formats. Give exactly one of ``name`` and ``config``."""

    name: str | None = Field(
        "llama-3.1-8b", description="Bundled model name (`servesim list models`)."
    )
    config: str | None = Field(
        None,
        description="Path of a Hugging Face config.json (instead of name; relative paths "
        "resolve against the scenario file).",
    )
    quantization: str = Field(
        "fp16",
        description="Weight/activation scheme: fp16, bf16, fp8, w8a8-int8, w8a16, w4a16, "
        "w4a8, w4a8-kv4, nvfp4.",
    )
    group_size: Annotated[int, Field(ge=1, le=1 << 20)] | None = Field(
        None, description="Quantization group size (weight-only 4-bit schemes); null = scheme's."
    )
    kv_cache_dtype: str = Field(
        "auto",
        description="KV-cache element format: auto (the scheme's default), fp16, bf16, fp8, "
        "int8 or int4 (vLLM's --kv-cache-dtype).",
    )
    max_model_len_tokens: Annotated[int, Field(ge=1, le=100_000_000)] | None = Field(
        None,
        description="Longest sequence (prompt + output) served; longer requests are rejected. "
        "null = the model's context window (vLLM's --max-model-len).",
    )

    @model_validator(mode="before")
    @classmethod
    def _config_replaces_default_name(cls, data: Any) -> Any:
        # NOTE: ``name`` has a default, so ``model: {config: x.json}`` would otherwise carry
        # both; a config given without an explicit name means "not the default model".
        if isinstance(data, dict) and data.get("config") is not None and "name" not in data:
            data = {**data, "name": None}
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelCfg:
        if (self.name is None) == (self.config is None):
            raise ValueError(
                "give exactly one of model.name (a bundled model) and model.config "
                "(a config.json path)"
            )
        return self


class KvCacheCfg(_Cfg):
    """The KV-cache manager."""

    manager: Literal["contiguous", "paged", "radix"] = Field(
        "paged",
        description="contiguous: one reserved slab per request (Orca/FasterTransformer); "
        "paged: fixed-size blocks (vLLM PagedAttention); radix: paged plus a radix-tree "
        "prefix cache (SGLang RadixAttention).",
    )
    block_size_tokens: int = Field(
        16, ge=1, le=256, description="Tokens per KV block (vLLM's --block-size)."
    )
    reservation: Literal["max", "pow2", "oracle"] = Field(
        "max",
        description="contiguous only: reserve max_model_len (max), the next power of two of "
        "the prompt + expected output (pow2), or exactly prompt + output (oracle).",
    )
    placement: Literal["first_fit", "best_fit"] = Field(
        "first_fit", description="contiguous only: where a slab goes in the free space."
    )
    watermark_frac: float = Field(
        0.01,
        ge=0.0,
        le=0.5,
        description="Fraction of blocks kept free when admitting prefills (vLLM's watermark).",
    )
    prefix_caching: bool | None = Field(
        None,
        description="paged: vLLM v1's automatic prefix caching (full blocks cached by their "
        "chained identity, shared while running, freed ones kept in an LRU queue and evicted "
        "block by block). null = on for the vllm and sarathi schedulers (as vLLM v1), off "
        "otherwise. radix always caches; contiguous cannot.",
    )

    @model_validator(mode="after")
    def _prefix_caching_fits_manager(self) -> KvCacheCfg:
        if self.prefix_caching is True and self.manager == "contiguous":
            raise ValueError(
                "kv_cache.prefix_caching: true needs kv_cache.manager 'paged' (or 'radix', "
                "which always caches prefixes); got manager 'contiguous'"
            )
        if self.prefix_caching is False and self.manager == "radix":
            raise ValueError(
                "kv_cache.prefix_caching: false is not valid with kv_cache.manager 'radix' "
                "(a radix cache always caches prefixes); use manager 'paged' for no prefix "
                "cache, or leave prefix_caching null"
            )
        return self


class SchedulerCfg(_Cfg):
    """The iteration-level scheduler of each replica."""

    policy: Literal["static", "orca", "vllm", "sarathi", "sglang"] = Field(
        "vllm",
        description="static: request-level batches; orca: continuous batching, contiguous "
        "KV; vllm: continuous batching on paged KV, prefill first; sarathi: chunked prefill, "
        "decodes first; sglang: radix cache with longest-prefix-first.",
    )
    max_num_seqs: int = Field(
        256, gt=0, le=1_000_000, description="Most sequences running in one step."
    )
    max_num_batched_tokens: int = Field(
        8192, gt=0, le=100_000_000, description="Most tokens (prefill + decode) processed in one step."
    )
    chunk_size_tokens: int = Field(
        512, gt=0, le=100_000_000, description="sarathi: token budget per step (prefill chunks fill what decodes leave)."
    )
    preemption: Literal["recompute", "swap"] = Field(
        "recompute",
        description="When KV blocks run out: drop the latest request's KV and recompute it "
        "later, or swap its blocks to host memory over PCIe.",
    )
    kv_sharing: bool = Field(
        True,
        description="Parallel samples (n > 1) and beams share the prompt's KV through the "
        "manager's fork (false: each sample holds its own copy).",
    )
    starvation_limit_s: float = Field(
        5.0, gt=0, le=1e10,
        description="sglang: a request that waited this long is scheduled ahead of "
        "cache-aware order.",
    )


class RouterCfg(_Cfg):
    """How requests are spread over replicas."""

    policy: Literal["round_robin", "least_outstanding", "least_kv_load", "prefix_affinity"] = (
        Field(
            "round_robin",
            description="round_robin; least_outstanding (fewest unfinished requests); "
            "least_kv_load (most free KV); prefix_affinity (where the longest prefix is cached).",
        )
    )


class EngineCfg(_Cfg):
    """How the simulation itself runs."""

    cost_model: Literal["roofline", "cycle"] = Field(
        "roofline",
        description="Step-cost model: calibrated roofline (fast) or the cycle-level kernel "
        "model (slower, finer).",
    )
    step_overhead_s: Annotated[float, Field(ge=0, le=1e3)] | None = Field(
        None, description="Host overhead per step in seconds; null = the stack profile's "
        "(engine.stack / engine.profile)."
    )
    stack: str | None = Field(
        None,
        description="Serving-stack profile shipped with servesim (`vllm`, `sglang`, `trtllm`, "
        "`compiled`, `generic`): per-step host overhead as a function of the batch, CUDA-graph "
        "padding, per-request overheads (API server, tokenization, detokenization) and kernel-"
        "family efficiencies (docs/step-cost.md). null = `generic` (the original model). "
        "Exclusive with engine.profile.",
    )
    profile: str | None = Field(
        None,
        description="Path of a stack-profile YAML file (a copy of a shipped profile, edited, or "
        "the output of `servesim calibrate`); relative paths resolve against the scenario file. "
        "Exclusive with engine.stack.",
    )
    two_batch_overlap: bool | None = Field(
        None,
        description="Run every step as two overlapped micro-batches, each one's MoE dispatch and "
        "combine beside the other's compute (SGLang --enable-two-batch-overlap; needs "
        "hardware.expert_parallel > 1 with attention_data_parallel > 1). null = the stack "
        "profile's (off in every shipped profile). docs/step-cost.md, 'Two-batch overlap'.",
    )
    fast_forward: bool = Field(
        True,
        description="No effect; accepted so that older scenarios still load (it was a knob of the "
        "removed second Python engine, whose results never depended on it).",
    )
    loop: Literal["auto", "compiled", "python", "reference"] = Field(
        "auto",
        description="Which replica loop runs: 'compiled' (the numba kernel family; every "
        "configuration), 'reference' (the plain step-at-a-time Python replica the compiled loop "
        "is tested against, bit for bit; slowest), 'python' (alias of 'reference', kept for "
        "older scenarios), or 'auto' (= compiled). Both loops give identical results.",
    )
    max_sim_time_s: Annotated[float, Field(gt=0, le=1e10)] | None = Field(
        None, description="Stop the simulation at this simulated time; null = run to the end."
    )
    progress: bool = Field(True, description="Show a progress bar over simulated time.")

    @model_validator(mode="after")
    def _stack_or_profile(self) -> EngineCfg:
        if self.stack is not None and self.profile is not None:
            raise ValueError(
                f"engine.stack ({self.stack!r}) and engine.profile ({self.profile!r}) are exclusive: "
                "a profile file already names its stack; give one of them"
            )
        if self.stack is not None:
            from servesim.hwmodels.errors import ConfigError
            from servesim.hwmodels.stacks import get_stack

            try:
                get_stack(self.stack)
            except ConfigError as exc:
                raise ValueError(f"engine.stack: {exc}") from None
        return self


class SloCfg(_Cfg):
    """Latency targets; a request meets the SLO when it meets every target given. They
    define ``request_goodput``."""

    ttft_ms: PositiveFloat | None = Field(None, description="Time to first token target.")
    tpot_ms: PositiveFloat | None = Field(None, description="Time per output token target.")
    e2el_ms: PositiveFloat | None = Field(None, description="End-to-end latency target.")


PartialSection = dict[str, Any]


class VariantCfg(_Cfg):
    """One configuration to compare: partial sections deep-merged onto the base scenario.
    Mappings merge key by key; lists (e.g. a list of hardware groups) replace."""

    name: str = Field(description="Label in tables and figures (letters, digits, . _ + -).")
    hardware: PartialSection | list[PartialSection] | None = Field(
        None, description="Changes to hardware (a list replaces the base's groups)."
    )
    model: PartialSection | None = Field(None, description="Changes to model.")
    kv_cache: PartialSection | None = Field(None, description="Changes to kv_cache.")
    scheduler: PartialSection | None = Field(None, description="Changes to scheduler.")
    router: PartialSection | None = Field(None, description="Changes to router.")
    engine: PartialSection | None = Field(None, description="Changes to engine.")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not _SAFE_NAME.match(value):
            raise ValueError(
                f"variant name {value!r} must start with a letter or digit and contain only "
                "letters, digits, '.', '_', '+' and '-'"
            )
        return value


_SECTIONS = ("hardware", "model", "kv_cache", "scheduler", "router", "engine")


class ScenarioCfg(_Cfg):
    """A scenario: hardware, model, KV cache, scheduler, router, workload, SLOs, variants."""

    name: str = Field(
        description="Scenario name; the output directory is <out>/<name> (letters, digits, "
        ". _ + -)."
    )
    description: str = Field("", description="What the scenario shows (copied into the report).")
    seed: int = Field(0, ge=0, le=(1 << 63) - 1, description="Seed of every random stream.")
    hardware: HardwareCfg | Annotated[list[HardwareCfg], Field(min_length=1)] = Field(
        HardwareCfg(),
        description="One replica group, or a list of groups (a heterogeneous cluster).",
    )
    model: ModelCfg = Field(ModelCfg(), description="Model and numeric formats.")
    kv_cache: KvCacheCfg = Field(KvCacheCfg(), description="KV-cache manager.")
    scheduler: SchedulerCfg = Field(SchedulerCfg(), description="Per-replica scheduler.")
    router: RouterCfg = Field(RouterCfg(), description="Request router over replicas.")
    engine: EngineCfg = Field(EngineCfg(), description="Simulation engine settings.")
    workload: WorkloadCfg = Field(
        description="What arrives: a trace or a synthetic generator (see docs/scenarios.md)."
    )
    slo: SloCfg = Field(SloCfg(), description="Latency targets for goodput.")
    variants: list[VariantCfg] = Field(
        [], description="Configurations compared on the identical request stream."
    )
    quick: dict[str, Any] = Field(
        {},
        description="Overrides {dotted.path: value} applied by `servesim run --quick` (a "
        "seconds-long form of the scenario, e.g. fewer requests or a shipped trace excerpt).",
    )

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not _SAFE_NAME.match(value):
            raise ValueError(
                f"scenario name {value!r} must start with a letter or digit and contain only "
                "letters, digits, '.', '_', '+' and '-' (it names the output directory)"
            )
        return value

    @field_validator("variants")
    @classmethod
    def _unique_variants(cls, value: list[VariantCfg]) -> list[VariantCfg]:
        seen: set[str] = set()
        for v in value:
            if v.name in seen:
                raise ValueError(f"variant names must be unique; {v.name!r} appears twice")
            seen.add(v.name)
        return value

    @property
    def hardware_groups(self) -> list[HardwareCfg]:
        """``hardware`` as a list of replica groups (one element for a single group)."""
        return list(self.hardware) if isinstance(self.hardware, list) else [self.hardware]


# ---------------------------------------------------------------------------- loading


def load_scenario(
    path: str | Path,
    overrides: Sequence[str] = (),
    seed: int | None = None,
    *,
    quick: bool = False,
) -> ScenarioCfg:
    """Read, override and validate a scenario file.

    Args:
        path: the scenario YAML.
        overrides: ``dotted.path=value`` strings (``--set``); values are parsed as YAML, so
            ``4`` is an int, ``true`` a bool and ``[1, 2]`` a list; list indices are allowed
            (``variants.0.name=x``). Relative paths given here resolve against the current
            directory.
        seed: replaces the scenario's seed (``--seed``).
        quick: apply the file's ``quick:`` overrides first (``--quick``).

    Returns:
        The validated scenario; every variant has been validated too.

    Raises:
        ScenarioError: the file is missing or malformed, an override is bad, a name is not
            in the catalogue, or a trace file does not exist.
    """
    path = Path(path)
    text = read_text(path, "scenario file", error=ScenarioError)
    data = _parse_yaml(text, str(path))
    return scenario_from_dict(
        data, base_dir=path.parent, overrides=overrides, seed=seed, quick=quick, source=str(path)
    )


def scenario_from_dict(
    data: dict[str, Any],
    base_dir: Path | None = None,
    overrides: Sequence[str] = (),
    seed: int | None = None,
    *,
    quick: bool = False,
    source: str = "scenario",
) -> ScenarioCfg:
    """Validate a scenario given as a dict (the parsed YAML); see :func:`load_scenario`.

    Args:
        data: the scenario mapping (not modified).
        base_dir: directory relative paths in ``data`` resolve against (default: the
            current directory).
        overrides: ``dotted.path=value`` strings, applied after ``quick``.
        seed: replaces ``data["seed"]``.
        quick: apply ``data["quick"]`` overrides.
        source: where the data came from, for error messages.

    Returns:
        The validated scenario.

    Raises:
        ScenarioError: see :func:`load_scenario`.
    """
    if not isinstance(data, dict):
        raise ScenarioError(
            f"{source}: a scenario must be a mapping of keys (name:, hardware:, model:, "
            f"workload:, ...), got {_type_name(data)}"
        )
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    data = _resolve_paths(copy.deepcopy(data), base)
    if quick:
        quick_overrides = data.get("quick") or {}
        if not isinstance(quick_overrides, dict):
            raise ScenarioError(
                f"{source}: quick must be a mapping of {{dotted.path: value}}, "
                f"got {_type_name(quick_overrides)}"
            )
        for key, value in quick_overrides.items():
            _set_path(data, str(key), value, origin=f"quick: {key}")
        data = _resolve_paths(data, base)
    data = apply_overrides(data, overrides)
    if seed is not None:
        data["seed"] = seed
    cfg = _validate(ScenarioCfg, data, source)
    runs = resolve_variants(cfg, source=source)
    for label, run_cfg in runs:
        where = f"{source}: variant {label!r}" if cfg.variants else source
        _check_catalogue(run_cfg, where)
    _check_files(cfg, source, has_quick=bool(cfg.quick) and not quick)
    return cfg


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``dotted.path=value`` overrides to a scenario mapping (a modified copy).

    Relative paths in the values resolve against the current directory.

    Raises:
        ScenarioError: an override without ``=``, a value that is not valid YAML, or a path
            that runs through a value that is neither a mapping nor a list.
    """
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ScenarioError(
                f"--set {item!r}: expected PATH=VALUE, e.g. --set scheduler.max_num_seqs=128"
            )
        key, raw = item.split("=", 1)
        origin = f"--set {short(item)}"
        value = (load_yaml(raw, f"{origin}: the value is not valid YAML", error=ScenarioError)
                 if raw.strip() else None)
        _set_path(data, key.strip(), value, origin=origin)
    return _resolve_paths(data, Path.cwd())


def resolve_variants(
    cfg: ScenarioCfg, *, source: str = "scenario"
) -> list[tuple[str, ScenarioCfg]]:
    """The configurations a scenario runs: the base alone, or one per variant.

    Each variant's partial sections are deep-merged onto the base (mappings key by key,
    lists replace) and validated as a whole scenario with ``variants`` emptied; the
    workload, seed, SLOs and name stay the base's, so every variant sees the identical
    request stream.

    Returns:
        ``[(label, cfg)]``: ``[(cfg.name, cfg)]`` without variants, else one per variant,
        labelled by the variant name.

    Raises:
        ScenarioError: a merged variant is invalid (the message names ``variants.<i>``).
    """
    if not cfg.variants:
        return [(cfg.name or "base", cfg)]
    base = cfg.model_dump(mode="python", exclude={"variants", "workload"})
    base = {k: (v.model_dump(mode="python") if isinstance(v, BaseModel) else v)
            for k, v in base.items()}
    out: list[tuple[str, ScenarioCfg]] = []
    for i, variant in enumerate(cfg.variants):
        merged = copy.deepcopy(base)
        for section in _SECTIONS:
            change = getattr(variant, section)
            if change is None:
                continue
            merged[section] = _merge_section(section, merged[section], change)
        merged["variants"] = []
        # The same WorkloadCfg object: variants never diverge in what arrives.
        merged["workload"] = cfg.workload
        run_cfg = _validate(
            ScenarioCfg, merged, f"{source}: variant {variant.name!r}", prefix=("variants", i)
        )
        out.append((variant.name, run_cfg))
    return out


def scenario_json_schema() -> dict[str, Any]:
    """The JSON Schema of a scenario file (for editors; ``servesim schema``)."""
    schema = ScenarioCfg.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "servesim scenario"
    return schema


# ---------------------------------------------------------------------------- YAML


def _parse_yaml(text: str, source: str) -> dict[str, Any]:
    # Hardened SafeLoader: duplicate keys, depth, alias expansion, non-finite numbers.
    data = load_yaml(text, source, error=ScenarioError)
    if data is None:
        raise ScenarioError(f"{source}: the scenario file is empty")
    if not isinstance(data, dict):
        raise ScenarioError(
            f"{source}: a scenario must be a mapping of keys (name:, hardware:, model:, "
            f"workload:, ...), got {_type_name(data)}"
        )
    return data


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


# ---------------------------------------------------------------------------- overrides


def _set_path(data: dict[str, Any], dotted: str, value: Any, *, origin: str) -> None:
    """Set ``data[a][b][0][c] = value`` for ``dotted == "a.b.0.c"``; missing mappings on the
    way are created (validation later reports keys that do not exist)."""
    parts = dotted.split(".")
    if not dotted or any(p == "" for p in parts):
        raise ScenarioError(f"{origin}: {dotted!r} is not a dotted path like kv_cache.manager")
    node: Any = data
    walked: list[str] = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not re.fullmatch(r"-?\d+", part):
                raise ScenarioError(
                    f"{origin}: {'.'.join(walked)} is a list; index it with a number "
                    f"(e.g. {'.'.join([*walked, '0'])}), not {part!r}"
                )
            index = int(part)
            if not -len(node) <= index < len(node):
                raise ScenarioError(
                    f"{origin}: index {index} is out of range: {'.'.join(walked)} has "
                    f"{len(node)} element(s)"
                )
            if last:
                node[index] = value
            else:
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            raise ScenarioError(
                f"{origin}: cannot set {dotted!r}: {'.'.join(walked)} is {_type_name(node)} "
                f"({node!r}), not a mapping or a list"
            )
        walked.append(part)


def _merge_section(section: str, base: Any, change: Any) -> Any:
    """Deep-merge a variant's partial section onto the base's (lists replace)."""
    if isinstance(change, list) or not isinstance(base, dict):
        return copy.deepcopy(change)
    if section == "model":
        # A variant naming a model by config.json drops the base's name, and vice versa.
        base = dict(base)
        if change.get("config") is not None and "name" not in change:
            base["name"] = None
        if change.get("name") is not None and "config" not in change:
            base["config"] = None
    return _deep_merge(base, change)


def _deep_merge(base: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# ---------------------------------------------------------------------------- paths


def _resolve(value: Any, base: Path) -> Any:
    if not isinstance(value, str | os.PathLike) or str(value) == "":
        return value
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def _looks_like_gpu_file(value: Any) -> bool:
    return isinstance(value, str) and (value.endswith((".yaml", ".yml")) or "/" in value)


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make the file paths of a raw scenario mapping absolute, in place (absolute paths
    stay as they are, so resolving twice is harmless)."""

    def hardware(section: Any) -> None:
        groups = section if isinstance(section, list) else [section]
        for g in groups:
            if isinstance(g, dict) and _looks_like_gpu_file(g.get("gpu")):
                g["gpu"] = _resolve(g["gpu"], base)

    def model(section: Any) -> None:
        if isinstance(section, dict) and section.get("config") is not None:
            section["config"] = _resolve(section["config"], base)

    variants = data.get("variants")
    variants = variants if isinstance(variants, list) else []  # a non-list fails validation
    for holder in [data, *[v for v in variants if isinstance(v, dict)]]:
        if "hardware" in holder:
            hardware(holder["hardware"])
        if "model" in holder:
            model(holder["model"])
        engine = holder.get("engine")
        if isinstance(engine, dict) and engine.get("profile") is not None:
            engine["profile"] = _resolve(engine["profile"], base)
    workload = data.get("workload")
    if isinstance(workload, dict):
        trace = workload.get("trace")
        if isinstance(trace, dict) and trace.get("path") is not None:
            trace["path"] = _resolve(trace["path"], base)
        lengths = workload.get("lengths")
        if isinstance(lengths, dict):
            for key in ("prompt", "output"):
                dist = lengths.get(key)
                if isinstance(dist, dict) and dist.get("path") is not None:
                    dist["path"] = _resolve(dist["path"], base)
    return data


# ---------------------------------------------------------------------------- checks


def _check_catalogue(cfg: ScenarioCfg, where: str) -> None:
    """Names must exist in the catalogues and fit together (scheme on GPU, KV dtype)."""
    from servesim.hwmodels.gpus import get_gpu
    from servesim.hwmodels.models import get_model
    from servesim.hwmodels.quant import check_kv_dtype_supported, get_kv_dtype, get_scheme

    def fail(field: str, exc: Exception) -> ScenarioError:
        return ScenarioError(f"{where}: {field}: {exc}")

    gpus = []
    for i, group in enumerate(cfg.hardware_groups):
        field = f"hardware.{i}.gpu" if isinstance(cfg.hardware, list) else "hardware.gpu"
        try:
            gpus.append((field, get_gpu(group.gpu)))
        except SimulatorError as exc:
            raise fail(field, exc) from None
    try:
        if cfg.model.config is not None:
            get_model(cfg.model.config)
        else:
            get_model(str(cfg.model.name))
    except SimulatorError as exc:
        raise fail("model.config" if cfg.model.config else "model.name", exc) from None
    try:
        scheme = get_scheme(cfg.model.quantization)
    except SimulatorError as exc:
        raise fail("model.quantization", exc) from None
    if cfg.model.group_size is not None and not scheme.weight_only and not scheme.group_size:
        raise ScenarioError(
            f"{where}: model.group_size: quantization {scheme.name!r} is not group-wise; "
            f"group_size applies to weight-only schemes such as w4a16"
        )
    kv = None
    if cfg.model.kv_cache_dtype != "auto":
        try:
            kv = get_kv_dtype(cfg.model.kv_cache_dtype)
        except SimulatorError as exc:
            raise fail("model.kv_cache_dtype", exc) from None
    for field, gpu in gpus:
        try:
            scheme.check_supported(gpu)
        except SimulatorError as exc:
            raise ScenarioError(f"{where}: model.quantization (on {field}): {exc}") from None
        if kv is not None:
            try:
                check_kv_dtype_supported(kv, gpu)
            except SimulatorError as exc:
                raise ScenarioError(
                    f"{where}: model.kv_cache_dtype (on {field}): {exc}"
                ) from None


def _check_files(cfg: ScenarioCfg, source: str, *, has_quick: bool) -> None:
    """Trace files must exist when the scenario is loaded, not minutes into a run."""
    hint = (
        " This scenario has a quick form that uses a shipped excerpt: add --quick."
        if has_quick
        else ""
    )
    wl = cfg.workload
    files: list[tuple[str, Path]] = []
    if wl.trace is not None:
        files.append(("workload.trace.path", Path(wl.trace.path)))
    if wl.lengths is not None:
        for key in ("prompt", "output"):
            dist = getattr(wl.lengths, key)
            if dist is not None and getattr(dist, "dist", None) == "empirical":
                files.append((f"workload.lengths.{key}.path", Path(dist.path)))
    for field, path in files:
        if not path.is_file():
            what = "is a directory, not a file" if path.is_dir() else "does not exist"
            raise ScenarioError(f"{source}: {field}: trace file {str(path)!r} {what}.{hint}")


# ---------------------------------------------------------------------------- errors


def _validate(
    model: type[BaseModel], data: dict[str, Any], source: str, prefix: tuple[Any, ...] = ()
) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = _format_errors(model, data, exc, prefix)
        noun = "error" if len(lines) == 1 else "errors"
        body = "\n".join(f"  - {line}" for line in lines)
        raise ScenarioError(f"{source}: {len(lines)} {noun} in the scenario:\n{body}") from None


def _format_errors(
    model: type[BaseModel], data: Any, exc: ValidationError, prefix: tuple[Any, ...]
) -> list[str]:
    """One line per distinct problem: ``dotted.path: what is wrong (what is allowed)``."""
    by_path: dict[str, list[str]] = {}
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        path, container, here, keep = _walk(model, data, loc)
        if not keep:
            continue
        message = _describe(err, path, container, here)
        if err["type"] == "union_tag_invalid":
            path = [*path, str(err["ctx"]["discriminator"]).strip("'")]
        elif err["type"] == "union_tag_not_found":
            path = [*path, str(err["ctx"]["discriminator"]).strip("'")]
        dotted = ".".join(str(p) for p in (*prefix, *path)) or "(top level)"
        msgs = by_path.setdefault(dotted, [])
        if message not in msgs:
            msgs.append(message)
    if not by_path:  # every error came from a union branch we filtered: show them raw
        return [clip(str(exc), 2000)]
    # Values are echoed inside the messages: cut each line (a 10 MB value is not echoed whole).
    return [clip(f"{path}: {' or '.join(msgs)}") for path, msgs in by_path.items()]


def _walk(
    model: type[BaseModel], data: Any, loc: tuple[Any, ...]
) -> tuple[list[Any], list[Any], list[Any], bool]:
    """Follow a pydantic error location through the input and the type annotations.

    Returns the location without union-branch tags (what the user wrote), the candidate
    types of the mapping holding the error's last key (for "valid keys" and "allowed
    range" hints), the candidate types at the error itself, and whether
    the error belongs to the union branch that matches the input's shape (a list input gets
    the list branch's errors, a mapping the model branch's).
    """
    path: list[Any] = []
    node: Any = data
    cands: list[Any] = [model]
    parent: list[Any] = [model]
    for item in loc:
        if isinstance(node, dict) and item in node:
            parent = cands
            cands = _field_types(cands, item)
            node = node[item]
            path.append(item)
        elif isinstance(node, list) and isinstance(item, int):
            parent = cands
            cands = _item_types(cands)
            node = node[item] if -len(node) <= item < len(node) else None
            path.append(item)
        elif isinstance(item, str) and (
            item.startswith("list[") or _is_model_name(cands, item)
        ):
            # A branch of a plain union (``HardwareCfg | list[HardwareCfg]``).
            is_list_branch = item.startswith("list[")
            if isinstance(node, list) and not is_list_branch:
                return path, parent, cands, False
            if isinstance(node, dict) and is_list_branch:
                return path, parent, cands, False
            cands = _select_branch(cands, item)
        elif isinstance(item, str) and _is_tag(cands, item):
            cands = _select_tag(cands, item)
        else:
            # A key the input lacks (missing field) or an unknown key under a model.
            parent = cands
            cands = _field_types(cands, item)
            node = None
            path.append(item)
    return path, parent, cands, True


def _leaves(tp: Any) -> list[Any]:
    """Flatten Annotated/Optional/Union into their member types."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _leaves(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        out: list[Any] = []
        for arg in typing.get_args(tp):
            out.extend(_leaves(arg))
        return out
    return [tp]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _field_types(cands: list[Any], key: Any) -> list[Any]:
    out: list[Any] = []
    for tp in cands:
        if _is_model(tp) and key in tp.model_fields:
            out.extend(_leaves(tp.model_fields[key].annotation))
    return out


def _item_types(cands: list[Any]) -> list[Any]:
    out: list[Any] = []
    for tp in cands:
        if typing.get_origin(tp) in (list, tuple):
            args = typing.get_args(tp)
            if args:
                out.extend(_leaves(args[0]))
    return out


def _is_model_name(cands: list[Any], item: str) -> bool:
    return any(_is_model(tp) and tp.__name__ == item for tp in cands)


def _select_branch(cands: list[Any], item: str) -> list[Any]:
    if item.startswith("list["):
        return [tp for tp in cands if typing.get_origin(tp) is list] or cands
    return [tp for tp in cands if _is_model(tp) and tp.__name__ == item] or cands


def _tag_values(tp: Any) -> list[str]:
    """Literal values of a model's discriminator-like fields (process, dist, kind)."""
    values: list[str] = []
    if _is_model(tp):
        for f in tp.model_fields.values():
            if typing.get_origin(f.annotation) is Literal and f.is_required():
                values.extend(str(a) for a in typing.get_args(f.annotation))
    return values


def _is_tag(cands: list[Any], item: str) -> bool:
    return sum(item in _tag_values(tp) for tp in cands) >= 1 and len(cands) > 1


def _select_tag(cands: list[Any], item: str) -> list[Any]:
    return [tp for tp in cands if item in _tag_values(tp)] or cands


def _valid_keys(cands: list[Any]) -> list[str]:
    keys: list[str] = []
    for tp in cands:
        if _is_model(tp):
            keys.extend(k for k in tp.model_fields if k not in keys)
    return keys


def _constraint_text(cands_parent: list[Any], key: Any) -> str:
    """``"allowed: 1 <= value <= 256"`` from a field's ge/gt/le/lt metadata."""
    for tp in cands_parent:
        if not (_is_model(tp) and key in tp.model_fields):
            continue
        lo = hi = None
        for meta in _constraints(tp.model_fields[key]):
            for attr, sym in (("ge", "<="), ("gt", "<")):
                if getattr(meta, attr, None) is not None:
                    lo = f"{getattr(meta, attr)} {sym} "
            for attr, sym in (("le", "<="), ("lt", "<")):
                if getattr(meta, attr, None) is not None:
                    hi = f" {sym} {getattr(meta, attr)}"
        if lo or hi:
            return f"allowed: {lo or ''}value{hi or ''}"
    return ""


def _constraints(field: Any) -> list[Any]:
    metas = list(field.metadata)
    # PositiveInt & co. carry their bound inside the annotation, not the FieldInfo.
    for tp in [field.annotation]:
        for leaf in _leaves_annotated(tp):
            metas.extend(leaf)
    return metas


def _leaves_annotated(tp: Any) -> list[list[Any]]:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        args = typing.get_args(tp)
        return [list(args[1:]), *_leaves_annotated(args[0])]
    if origin in (typing.Union, types.UnionType):
        out: list[list[Any]] = []
        for arg in typing.get_args(tp):
            out.extend(_leaves_annotated(arg))
        return out
    return []


_RANGE_TYPES = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def _describe(err: Any, path: list[Any], container: list[Any], here: list[Any]) -> str:
    kind = err["type"]
    msg = str(err["msg"])
    value = err.get("input")
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        key = str(path[-1]) if path else "?"
        valid = _valid_keys(container)
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return f"unknown key {key!r}.{hint} Valid keys here: {', '.join(valid)}"
    if kind == "missing":
        return "required field is missing"
    if kind in _RANGE_TYPES:
        allowed = _constraint_text(container, path[-1] if path else None)
        return f"{msg.lower().replace('input', 'value')}, got {value!r}" + (
            f" ({allowed})" if allowed else ""
        )
    if kind == "literal_error":
        options = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        close = difflib.get_close_matches(str(value), options, n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return f"{value!r} is not one of {', '.join(options)}.{hint}"
    if kind == "union_tag_invalid":
        options = re.findall(r"'([^']*)'", str(ctx.get("expected_tags", "")))
        tag = ctx.get("tag")
        close = difflib.get_close_matches(str(tag), options, n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return f"{tag!r} is not one of {', '.join(options)}.{hint}"
    if kind == "union_tag_not_found":
        options = [t for tp in here for t in _tag_values(tp)]
        return f"required field is missing (it selects the kind: one of {', '.join(options)})"
    if kind in ("value_error", "assertion_error"):
        return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping of keys, got {_type_name(value)} ({value!r})"
    if kind == "list_type":
        return f"expected a list, got {_type_name(value)} ({value!r})"
    shown = repr(value) if not isinstance(value, dict | list) else _type_name(value)
    return f"{msg.rstrip('.')}, got {shown}"
