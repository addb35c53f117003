"""The shipped validation cases (``servesim validate``): published end-to-end measurements
from the allowed sources, each a small scenario plus one measured metric.

The table is data (``simulator/validation/data/cases.yaml``, shipped as package data); this
module validates it, turns each case into a scenario and runs it. No case carries a tuned
parameter: every case runs with the simulator's defaults, the stack's profile where the
scenario schema has ``engine.stack``, and, when given, one :class:`~.stack.StackParams`
applied to all cases alike (a ``--profile``, or a band draw).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from servesim.simulator.errors import ScenarioError
from servesim.simulator.validation.stack import StackParams

if TYPE_CHECKING:
    import pandas as pd

    from servesim.simulator.validation.bands import Band

__all__ = ["Case", "case_band", "case_scenario", "load_cases", "run_case", "run_cases"]

_METRIC_UNITS = {
    "output_throughput": "tok/s", "request_throughput": "req/s", "total_token_throughput": "tok/s",
    "mean_ttft_ms": "ms", "median_ttft_ms": "ms", "mean_tpot_ms": "ms", "median_tpot_ms": "ms",
    "mean_e2el_ms": "ms", "median_e2el_ms": "ms", "mean_itl_ms": "ms", "median_itl_ms": "ms",
    # steady-state phase throughput of a disaggregated deployment (load kinds *_step)
    "output_throughput_per_node": "tok/s/node", "input_throughput_per_node": "tok/s/node",
}
_LOAD_KEYS = {
    "static": {"kind", "batch", "prompt_tokens", "output_tokens", "rounds"},
    "poisson": {"kind", "rate_per_s", "num_requests", "prompt_tokens", "output_tokens", "range_ratio"},
    "concurrency": {"kind", "clients", "num_requests", "prompt_tokens", "output_tokens", "range_ratio"},
    # One phase of a prefill/decode-disaggregated deployment at a steady batch, as such posts
    # measure it per node (no scheduler: the scenario has no PD disaggregation): a decode step
    # of `batch_per_gpu` sequences per attention rank at `context_tokens`, or a prefill step of
    # `tokens_per_gpu` tokens per rank in prompts of `prompt_tokens`; `node_gpus` per node.
    "decode_step": {"kind", "batch_per_gpu", "context_tokens", "node_gpus"},
    "prefill_step": {"kind", "tokens_per_gpu", "prompt_tokens", "node_gpus"},
}
#: Metric each step kind yields.
_STEP_METRIC = {"decode_step": "output_throughput_per_node", "prefill_step": "input_throughput_per_node"}
#: Load fields every case of the kind must give (``rounds`` and ``range_ratio`` are optional).
_LOAD_REQUIRED = {
    "static": ("batch", "prompt_tokens", "output_tokens"),
    "poisson": ("rate_per_s", "num_requests", "prompt_tokens", "output_tokens"),
    "concurrency": ("clients", "num_requests", "prompt_tokens", "output_tokens"),
    "decode_step": ("batch_per_gpu", "context_tokens", "node_gpus"),
    "prefill_step": ("tokens_per_gpu", "prompt_tokens", "node_gpus"),
}
#: Serving engine measured -> the stack profile it runs under (``engine.stack``), where the
#: engine has no profile of its own. NOTE: TurboMind (LMDeploy) is a C++ engine with no Python
#: host loop and persistent batching, the case the ``compiled`` profile describes.
STACK_PROFILE = {"turbomind": "compiled", "lmdeploy": "compiled", "tensorrt-llm": "trtllm",
                 # NOTE: TensorRT-LLM's static-batch benchmark (NVIDIA's H200 posts): engines run
                 # from a benchmark binary, no serving front end, as compiled.yaml describes.
                 "tensorrt-llm-static": "compiled",
                 # NOTE: the same benchmark on TensorRT-LLM v0.5/v0.6 (the H200 launch post names
                 # v0.5.0): generation attention in the CUDA-core masked-MHA kernels; v0.7a's
                 # tensor-core GQA kernels (its Dec 2023 post) are what `compiled` describes.
                 "tensorrt-llm-0.5-static": "trtllm-0.5",
                 # NOTE: the engine behind Splitwise's profiling data is not named in the data;
                 # servesim's default step-cost model, host time unknown in the bands.
                 "splitwise-profiler": "generic"}

_CASE_KEYS = {"id", "source", "url", "where", "config", "stack", "scenario", "load", "metric",
              "reference", "notes"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Case:
    """One published measurement.

    Attributes:
        id: unique name.
        source, url, where: citation (document, address, table/figure and row).
        stack: the serving engine measured (``turbomind``, ``vllm``, ...).
        scenario: scenario sections (hardware, model, scheduler, kv_cache, engine).
        load: the load (see ``data/cases.yaml``).
        metric: summary metric compared.
        reference: the published value.
    """

    id: str
    source: str
    url: str
    where: str
    stack: str
    scenario: Mapping[str, Any]
    load: Mapping[str, Any]
    metric: str
    reference: float
    notes: str = ""

    @property
    def unit(self) -> str:
        return _METRIC_UNITS[self.metric]


def _default_table() -> str:
    return resources.files("servesim.simulator.validation").joinpath("data/cases.yaml").read_text()


def load_cases(path: str | Path | None = None) -> list[Case]:
    """Read and check a case table (default: the shipped one).

    Raises:
        ScenarioError: a malformed table (names the case and the field).
    """
    import yaml

    where = str(path) if path is not None else "simulator/validation/data/cases.yaml"
    try:
        text = Path(path).read_text() if path is not None else _default_table()
        raw = yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as exc:
        raise ScenarioError(f"{where}: cannot read the case table: {exc}") from None
    if not isinstance(raw, Mapping) or not isinstance(raw.get("cases"), list):
        raise ScenarioError(f"{where}: expected a mapping with a 'cases:' list")
    out: list[Case] = []
    seen: set[str] = set()
    for i, item in enumerate(raw["cases"]):
        name = item.get("id", f"#{i + 1}") if isinstance(item, Mapping) else f"#{i + 1}"
        ctx = f"{where}: case {name}"
        if not isinstance(item, Mapping):
            raise ScenarioError(f"{ctx}: expected a mapping")
        unknown = sorted(set(item) - _CASE_KEYS)
        if unknown:
            raise ScenarioError(f"{ctx}: unknown key(s) {unknown}; valid: {sorted(_CASE_KEYS)}")
        for key in ("id", "source", "url", "where", "stack", "scenario", "load", "metric", "reference"):
            if key not in item:
                raise ScenarioError(f"{ctx}: field {key!r} is missing")
        if name in seen:
            raise ScenarioError(f"{ctx}: duplicate id")
        seen.add(name)
        if item["metric"] not in _METRIC_UNITS:
            raise ScenarioError(f"{ctx}: metric {item['metric']!r}; valid: {sorted(_METRIC_UNITS)}")
        ref = item["reference"]
        if isinstance(ref, bool) or not isinstance(ref, int | float) or not ref > 0:
            raise ScenarioError(f"{ctx}: reference {ref!r} must be a number > 0")
        load = item["load"]
        kind = load.get("kind") if isinstance(load, Mapping) else None
        if kind not in _LOAD_KEYS:
            raise ScenarioError(f"{ctx}: load.kind {kind!r}; valid: {sorted(_LOAD_KEYS)}")
        bad = sorted(set(load) - _LOAD_KEYS[kind])
        if bad:
            raise ScenarioError(f"{ctx}: load key(s) {bad} not valid for kind {kind}; valid: {sorted(_LOAD_KEYS[kind])}")
        _check_load(ctx, kind, load)
        if kind in _STEP_METRIC and item["metric"] != _STEP_METRIC[kind]:
            raise ScenarioError(f"{ctx}: metric {item['metric']!r} for load kind {kind}; valid: {_STEP_METRIC[kind]}")
        if kind not in _STEP_METRIC and item["metric"] in _STEP_METRIC.values():
            raise ScenarioError(f"{ctx}: metric {item['metric']!r} needs load kind "
                                f"{' or '.join(k for k, v in _STEP_METRIC.items() if v == item['metric'])}")
        if not isinstance(item["scenario"], Mapping):
            raise ScenarioError(f"{ctx}: scenario must be a mapping of scenario sections")
        out.append(Case(id=str(name), source=str(item["source"]), url=str(item["url"]),
                        where=str(item["where"]), stack=str(item["stack"]),
                        scenario=item["scenario"], load=load, metric=str(item["metric"]),
                        reference=float(ref), notes=str(item.get("notes", ""))))
    return out


def _check_load(ctx: str, kind: str, load: Mapping[str, Any]) -> None:
    """Required load fields present, counts whole and >= 1, rate > 0, range_ratio in [0, 1)."""
    for key in _LOAD_REQUIRED[kind]:
        if key not in load:
            raise ScenarioError(f"{ctx}: load.{key} is missing (load kind {kind} needs {list(_LOAD_REQUIRED[kind])})")
    for key in ("batch", "clients", "num_requests", "prompt_tokens", "output_tokens", "rounds",
                "batch_per_gpu", "context_tokens", "node_gpus", "tokens_per_gpu"):
        if key in load:
            v = load[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ScenarioError(f"{ctx}: load.{key} {v!r} must be a whole number >= 1")
    if "rate_per_s" in load:
        v = load["rate_per_s"]
        if isinstance(v, bool) or not isinstance(v, int | float) or not (math.isfinite(v) and v > 0):
            raise ScenarioError(f"{ctx}: load.rate_per_s {v!r} must be a finite number > 0")
    if "range_ratio" in load:
        v = load["range_ratio"]
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < 1:
            raise ScenarioError(f"{ctx}: load.range_ratio {v!r} must be a number in [0, 1)")


def _length(tokens: int, range_ratio: float) -> dict[str, Any]:
    """Fixed ``tokens``, or uniform in [tokens (1 - r), tokens (1 + r)] (``vllm bench serve
    --random-range-ratio r``, the random dataset's length spread)."""
    if range_ratio <= 0:
        return {"dist": "fixed", "tokens": tokens}
    return {"dist": "uniform", "min_tokens": max(1, math.floor(tokens * (1 - range_ratio))),
            "max_tokens": max(1, math.ceil(tokens * (1 + range_ratio)))}


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def case_scenario(case: Case, *, quick: bool = False, seed: int = 0,
                  profile: str | Path | None = None) -> dict[str, Any]:
    """The case as a scenario mapping (validated later by ``scenario_from_dict``); under the
    stack-profile file ``profile`` instead of the case's stack when one is given."""
    from servesim.simulator.scenario import EngineCfg

    load = case.load
    batch = int(load.get("batch", load.get("clients", 1)))
    step_kind = load["kind"] in _STEP_METRIC
    base: dict[str, Any] = {
        "name": case.id,
        "seed": seed,
        "hardware": {"tensor_parallel": 1, "replicas": 1, "gpu_memory_utilization": 0.9},
        "model": {"quantization": "fp16", "kv_cache_dtype": "auto"},
        "kv_cache": {"manager": "paged", "block_size_tokens": 16},
        "scheduler": {"policy": "vllm", "max_num_seqs": max(256, batch),
                      "max_num_batched_tokens": 8192},
        "engine": {"progress": False},
    }
    if "stack" in EngineCfg.model_fields:  # the stack-profile mechanism, when present
        base["engine"]["stack"] = STACK_PROFILE.get(case.stack, case.stack)
    data = _merge(base, case.scenario)
    if step_kind:  # one step, no workload to simulate; a token stand-in keeps the schema whole
        data["workload"] = {"name": "step", "num_requests": 1,
                            "arrivals": {"process": "closed_loop", "num_clients": 1},
                            "lengths": {"prompt": {"dist": "fixed", "tokens": 1},
                                        "output": {"dist": "fixed", "tokens": 1}}}
        if profile is not None:
            from servesim.simulator.validation.stack import with_profile

            data = with_profile(data, profile)
        return data
    ratio = float(load.get("range_ratio", 0.0))
    lengths = {"prompt": _length(int(load["prompt_tokens"]), ratio),
               "output": _length(int(load["output_tokens"]), ratio)}
    if load["kind"] == "static":
        rounds = 1 if quick else int(load.get("rounds", 2))
        data["workload"] = {"name": "static-batch", "num_requests": batch * rounds,
                            "arrivals": {"process": "closed_loop", "num_clients": batch},
                            "lengths": lengths}
    elif load["kind"] == "concurrency":
        n = int(load["num_requests"])
        data["workload"] = {"name": "concurrency",
                            "num_requests": min(n, max(batch, 100)) if quick else n,
                            "arrivals": {"process": "closed_loop", "num_clients": batch},
                            "lengths": lengths}
    else:
        n = int(load["num_requests"])
        data["workload"] = {"name": "poisson", "num_requests": min(n, 100) if quick else n,
                            "arrivals": {"process": "poisson", "rate_per_s": float(load["rate_per_s"])},
                            "lengths": lengths}
    if profile is not None:
        from servesim.simulator.validation.stack import with_profile

        data = with_profile(data, profile)
    return data


def run_case(case: Case, params: StackParams | None = None, *, quick: bool = False,
             seed: int = 0, profile: str | Path | None = None) -> float:
    """The simulated value of the case's metric."""
    from servesim.simulator.build import run_scenario
    from servesim.simulator.scenario import scenario_from_dict
    from servesim.simulator.validation.replay import simulated_metrics
    from servesim.simulator.validation.stack import apply_params, temp_workdir

    params = params or StackParams()
    with temp_workdir() as tmp:
        data = case_scenario(case, quick=quick, seed=seed, profile=profile)
        if params.per_request_overhead_s > 0 and data["workload"]["arrivals"]["process"] == "closed_loop":
            data["workload"]["arrivals"]["think_time_s"] = params.per_request_overhead_s
        data = apply_params(data, params, Path(tmp))
        if case.load["kind"] in _STEP_METRIC:
            return _run_step_case(case, data)
        try:
            res = run_scenario(scenario_from_dict(data, source=f"case {case.id}")).variants[0]
        except ScenarioError as exc:
            raise ScenarioError(f"case {case.id}: {exc}") from None
    metrics = simulated_metrics(res.requests, res.summary, params.per_request_overhead_s)
    value = metrics.get(case.metric, res.summary.get(case.metric))
    return float(value) if value is not None else math.nan


def _run_step_case(case: Case, data: Mapping[str, Any]) -> float:
    """Per-node throughput of one steady decode or prefill step (load kinds ``*_step``): the
    step cost of the scenario's deployment (stack profile, band draws and all), every attention
    rank carrying the stated per-GPU batch."""
    from servesim.hwmodels.errors import ConfigError
    from servesim.hwmodels.gpus import get_gpu
    from servesim.hwmodels.models import get_model
    from servesim.hwmodels.quant import get_kv_dtype, get_scheme
    from servesim.simulator.build import _make_cost_model
    from servesim.simulator.scenario import scenario_from_dict

    try:
        cfg = scenario_from_dict(dict(data), source=f"case {case.id}")
        hw = cfg.hardware_groups[0]
        scheme = get_scheme(cfg.model.quantization)
        kv = get_kv_dtype(scheme.default_kv_dtype if cfg.model.kv_cache_dtype == "auto" else cfg.model.kv_cache_dtype)
        cost = _make_cost_model(cfg, get_gpu(hw.gpu), get_model(cfg.model.config or cfg.model.name), scheme, kv, hw)
    except (ScenarioError, ConfigError) as exc:
        raise ScenarioError(f"case {case.id}: {exc}") from None
    load = case.load
    ranks = hw.attention_data_parallel  # each attention rank runs the per-GPU batch
    per_gpu_group = hw.tensor_parallel * hw.pipeline_parallel / float(load["node_gpus"])  # nodes
    if load["kind"] == "decode_step":
        n = int(load["batch_per_gpu"]) * ranks
        step = cost.step_time_s(num_decode_seqs=n, decode_ctx_tokens=n * int(load["context_tokens"]))
        return n / step / per_gpu_group
    prompt = int(load["prompt_tokens"])
    n = int(load["tokens_per_gpu"]) // prompt * ranks
    tokens = n * prompt
    step = cost.step_time_s(prefill_tokens=tokens, prefill_attn_pairs=n * prompt * (prompt + 1) / 2,
                            prefill_kv_tokens=tokens, num_prefill_seqs=n)
    return tokens / step / per_gpu_group


def case_band(case: Case, params: StackParams | None = None, *, quick: bool = False,
              seed: int = 0, profile: str | Path | None = None) -> Band:
    """The prediction band of the case's metric (:mod:`.bands`)."""
    from servesim.simulator.validation.bands import band_factors, propagate
    from servesim.simulator.validation.stack import scenario_stack

    base = params or StackParams()
    hw = case.scenario.get("hardware") or {}
    multi = int(hw.get("tensor_parallel", 1)) * int(hw.get("pipeline_parallel", 1)) > 1
    data = case_scenario(case, profile=profile)
    stack = scenario_stack(data)
    engine = data.get("engine") or {}
    tbo = engine.get("two_batch_overlap")
    factors, _ = band_factors(str(hw.get("gpu")), base, has_profile=profile is not None, seed=seed,
                              vary_seed=case.load["kind"] not in ("static", *_STEP_METRIC), multi_gpu=multi, stack=stack,
                              stack_borrowed=profile is None and case.stack in STACK_PROFILE,
                              alltoall=int(hw.get("expert_parallel", 1)) > 1
                              and int(hw.get("attention_data_parallel", 1)) > 1,
                              two_batch_overlap=bool(stack.two_batch_overlap if tbo is None else tbo))
    memo: dict[tuple[StackParams, int], dict[str, float]] = {}

    def evaluate(p: StackParams, s: int) -> dict[str, float]:
        if (p, s) not in memo:
            memo[(p, s)] = {case.metric: run_case(case, p, quick=quick, seed=s, profile=profile)}
        return memo[(p, s)]

    return propagate(evaluate, base, factors, seed=seed)[case.metric]


def run_cases(cases: Sequence[Case], params: StackParams | None = None, *, quick: bool = False,
              seed: int = 0, bands: bool = False,
              profile: str | Path | None = None) -> pd.DataFrame:
    """Run every case; one row each: ``id``, ``source``, ``where``, ``stack``, ``metric``,
    ``unit``, ``reference``, ``predicted``, ``error_frac`` ((predicted - reference) /
    reference); with ``bands``, also ``low``, ``high``, ``covered`` and ``dominant``."""
    import pandas as pd

    rows = []
    for case in cases:
        row: dict[str, Any] = {"id": case.id, "source": case.source, "where": case.where,
                               "stack": case.stack, "metric": case.metric, "unit": case.unit,
                               "reference": case.reference}
        if bands:
            band = case_band(case, params, quick=quick, seed=seed, profile=profile)
            pred = band.mid
            row.update({"low": band.low, "high": band.high, "covered": band.covers(case.reference),
                        "dominant": band.dominant})
        else:
            pred = run_case(case, params, quick=quick, seed=seed, profile=profile)
        row["predicted"] = pred
        row["error_frac"] = (pred - case.reference) / case.reference
        rows.append(row)
    return pd.DataFrame(rows)
