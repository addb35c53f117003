"""Capacity planning: the maximum sustainable rate of a configuration, and a planner that
ranks candidate configurations by cost for a target rate.

**Maximum sustainable rate.** A configuration *sustains* a rate when a run of the scenario's
seeded request stream, replayed at that mean rate, meets the SLOs (a percentile of TTFT, of
TPOT, and/or a goodput fraction). The stream is the same at every rate, only scaled in time:
a Poisson or Gamma process draws ``exponential(1) / rate`` gaps from the same named stream,
and a trace is rescaled with ``target_rate_per_s``. Latency is taken to grow with the rate
(it does on a time-scaled stream unless the scheduler is pathological). The search doubles or
halves a starting rate until it brackets the limit, then bisects geometrically until
``upper / rate <= 1 + rel_tol``; the answer ``rate`` passed, ``upper`` failed, so the true
limit of this stream lies in ``[rate, rate * (1 + rel_tol)]``. A finite stream reaches a
steady state only if it is long enough: use a few hundred requests or more.

**Binding constraint.** Read from the run at ``upper`` (the first failing rate) and the
engine's own breakdowns, in this order:

1. no rate down to ``min_rate_per_s`` meets the SLOs: the SLO itself (``TTFT SLO``,
   ``TPOT SLO``, ``goodput SLO``): the target is tighter than this configuration's unloaded
   latency;
2. the KV cache ran full: preemptions at ``upper``, or less than 10 % of the KV capacity
   free on (time) average, or a mean running batch of at least 60 % of the number of whole
   requests (prompt + output tokens) that fit in the KV capacity, when that number is below
   ``max_num_seqs``: ``KV capacity``;
3. otherwise the largest share of step time at ``upper``: ``compute``,
   ``weight bandwidth`` (weight reads), ``KV bandwidth`` (KV reads), ``communication``
   or ``host overhead``.

``limiting_slo`` says which SLO broke first above the limit (the largest ratio of measured
to target).

**Planner.** ``servesim plan PLAN.yaml`` evaluates each candidate (GPU x TP x quantization x
KV manager x scheduler settings ...) as one replica, finds its max rate, and derives the
replicas, GPUs, $/hour and $ per million output tokens for the target rate. See
``docs/sweeps-and-planning.md`` for the file format.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, ValidationError, model_validator

from servesim.hwmodels.safeio import clip as _clip
from servesim.hwmodels.safeio import safe_component as _safe_component
from servesim.hwmodels.safeio import short as _short
from servesim.simulator.errors import CapacityError, ScenarioError, SimulatorError
from servesim.simulator.sweep import (
    ExecutorKind,
    Point,
    apply_params,
    execute_points,
    expand_points,
    read_yaml_mapping,
    set_dotted,
    summary_row,
    sweep_from_dict,
)

__all__ = [
    "PlanResult",
    "PlanSpec",
    "RateResult",
    "SloTarget",
    "load_plan",
    "max_sustainable_rate",
    "plan_capacity",
    "plan_from_dict",
    "with_rate",
]

Percentile = Literal["p99", "p95", "p90", "median", "mean"]

# A time-averaged free KV fraction below this at the failing rate counts as "KV full".
KV_FULL_FREE_FRAC = 0.10
# The KV cache limits the batch when the running batch reaches this share of the number of
# whole requests (prompt + output) that fit in it (and that number is below max_num_seqs).
KV_BATCH_FRAC = 0.6

_SHARE_LABELS = {
    "step_time_compute_frac": "compute",
    "step_time_weight_read_frac": "weight bandwidth",
    "step_time_kv_read_frac": "KV bandwidth",
    "step_time_comm_frac": "communication",
    "step_time_overhead_frac": "host overhead",
}
_SLO_LABELS = {"ttft": "TTFT SLO", "tpot": "TPOT SLO", "goodput": "goodput SLO"}


# ---------------------------------------------------------------------------- SLOs


@dataclass(frozen=True, slots=True, kw_only=True)
class SloTarget:
    """What "sustainable" means.

    Attributes:
        ttft_ms: TTFT target (ms) at ``percentile``.
        tpot_ms: TPOT target (ms) at ``percentile``.
        goodput_frac: least fraction of requests meeting every target of the scenario's
            ``slo:`` block (the engine's ``goodput_frac``).
        percentile: which statistic of TTFT/TPOT is compared: p99 (default), p95, p90,
            median, mean.
    """

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    goodput_frac: float | None = None
    percentile: Percentile = "p99"

    def __post_init__(self) -> None:
        if self.ttft_ms is None and self.tpot_ms is None and self.goodput_frac is None:
            raise ScenarioError("give at least one SLO: ttft_ms, tpot_ms or goodput_frac")
        for name in ("ttft_ms", "tpot_ms"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ScenarioError(f"SLO {name} must be > 0, got {value}")
        if self.goodput_frac is not None and not 0 < self.goodput_frac <= 1:
            raise ScenarioError(f"SLO goodput_frac must be in (0, 1], got {self.goodput_frac}")
        if self.percentile not in ("p99", "p95", "p90", "median", "mean"):
            raise ScenarioError(
                f"SLO percentile {self.percentile!r}: use p99, p95, p90, median or mean"
            )

    def metric(self, what: Literal["ttft", "tpot"]) -> str:
        """Summary key compared with the target, e.g. ``p99_ttft_ms``."""
        return f"{self.percentile}_{what}_ms"

    def ratios(self, summary: Mapping[str, Any]) -> dict[str, float]:
        """Measured / target per SLO (> 1 violates; for goodput, target / measured)."""
        out: dict[str, float] = {}
        for what, target in (("ttft", self.ttft_ms), ("tpot", self.tpot_ms)):
            if target is not None:
                value = _num(summary.get(self.metric(what)))
                # NaN: no such latency (e.g. no request produced a second token): no violation.
                out[what] = 0.0 if math.isnan(value) else value / target
        if self.goodput_frac is not None:
            value = _num(summary.get("goodput_frac"))
            out["goodput"] = math.inf if not value > 0 else self.goodput_frac / value
        return out

    def violated(self, summary: Mapping[str, Any]) -> list[str]:
        """SLOs the run misses, worst first (``ttft``, ``tpot``, ``goodput``)."""
        if not _num(summary.get("completed")) > 0:
            return ["goodput"] if self.goodput_frac is not None else ["ttft"]
        ratios = self.ratios(summary)
        bad = [k for k, r in ratios.items() if r > 1.0]
        return sorted(bad, key=lambda k: -ratios[k])


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


# ---------------------------------------------------------------------------- rate scaling


def with_rate(data: Mapping[str, Any], rate_per_s: float) -> dict[str, Any]:
    """The scenario mapping with its workload replayed at mean rate ``rate_per_s``.

    Poisson, Gamma, constant and diurnal arrivals get ``rate_per_s``; on/off and piecewise
    processes are scaled so that their *mean* rate is ``rate_per_s``; a timestamped trace
    gets ``trace.target_rate_per_s`` (its ``time_scale`` is dropped). In every case the
    random draws are the same, only scaled in time.

    Raises:
        ScenarioError: closed-loop or offline arrivals, which have no rate to scale.
    """
    if not rate_per_s > 0:
        raise ScenarioError(f"rate must be > 0, got {rate_per_s}")
    workload = dict(data.get("workload") or {})
    arrivals = workload.get("arrivals")
    if isinstance(arrivals, Mapping):
        arrivals = dict(arrivals)
        process = arrivals.get("process")
        if process in ("poisson", "gamma", "constant", "diurnal"):
            arrivals["rate_per_s"] = float(rate_per_s)
        elif process == "onoff":
            duty = arrivals["on_s"] / (arrivals["on_s"] + arrivals["off_s"])
            arrivals["rate_per_s"] = float(rate_per_s) / duty
        elif process == "piecewise":
            rates, durations = arrivals["rates_per_s"], arrivals["durations_s"]
            mean = sum(r * d for r, d in zip(rates, durations, strict=True)) / sum(durations)
            arrivals["rates_per_s"] = [float(r) * rate_per_s / mean for r in rates]
        else:
            raise ScenarioError(
                f"workload.arrivals.process {process!r} has no arrival rate to scale; "
                f"use poisson, gamma, constant, diurnal, onoff, piecewise or a trace"
            )
        workload["arrivals"] = arrivals
    elif isinstance(workload.get("trace"), Mapping):
        trace = {k: v for k, v in workload["trace"].items() if k != "time_scale"}
        trace["target_rate_per_s"] = float(rate_per_s)
        workload["trace"] = trace
    else:
        raise ScenarioError("the workload has neither arrivals: nor trace:; no rate to scale")
    return {**dict(data), "workload": workload}


def current_rate(data: Mapping[str, Any]) -> float | None:
    """The scenario's own mean arrival rate, when it states one."""
    workload = data.get("workload") or {}
    arrivals = workload.get("arrivals") or {}
    if arrivals.get("rate_per_s"):
        return float(arrivals["rate_per_s"])
    trace = workload.get("trace") or {}
    if trace.get("target_rate_per_s"):
        return float(trace["target_rate_per_s"])
    return None


# ---------------------------------------------------------------------------- one run


def _scenario_data(scenario: Any, variant: str | None) -> dict[str, Any]:
    """A plain mapping of one configuration (paths absolute), variant resolved."""
    from servesim.simulator.scenario import ScenarioCfg, resolve_variants, scenario_from_dict

    if isinstance(scenario, ScenarioCfg):
        cfg = scenario
    elif isinstance(scenario, str | Path):
        from servesim.simulator.scenario import load_scenario

        cfg = load_scenario(scenario)
    else:
        cfg = scenario_from_dict(dict(scenario))
    runs = resolve_variants(cfg)
    if variant is not None:
        named = dict(runs)
        if variant not in named:
            raise ScenarioError(f"no variant {variant!r}; the scenario has {sorted(named)}")
        cfg = named[variant]
    elif len(runs) > 1:
        raise ScenarioError(
            f"the scenario has {len(runs)} variants ({', '.join(n for n, _ in runs)}); "
            f"pass variant= to pick one"
        )
    else:
        cfg = runs[0][1]
    data = cfg.model_dump(mode="json")
    data["variants"] = []
    return set_dotted(data, "engine.progress", False)


def _simulate(data: Mapping[str, Any]) -> dict[str, Any]:
    """Run one configuration mapping; the summary of its (single) variant."""
    from servesim.simulator.build import run_scenario
    from servesim.simulator.scenario import scenario_from_dict

    results = run_scenario(scenario_from_dict(dict(data)))
    return dict(results.variants[0].summary)


# ---------------------------------------------------------------------------- bisection


@dataclass(slots=True, kw_only=True)
class RateResult:
    """Outcome of :func:`max_sustainable_rate`.

    Attributes:
        rate_per_s: highest probed rate that met the SLOs (0 when none did).
        upper_rate_per_s: lowest probed rate that failed (inf when none did).
        rel_tol: the relative tolerance the search stopped at.
        status: ``ok``; ``unattainable`` (not even ``min_rate_per_s`` meets the SLOs);
            ``above_max`` (``max_rate_per_s`` still meets them).
        slo: the targets.
        probes: one row per probe: ``rate_per_s``, ``passed``, ``violated`` and the flat
            summary metrics, in probe order.
        summary: the engine summary at ``rate_per_s`` (empty when none passed).
        summary_above: the engine summary at ``upper_rate_per_s`` (empty when none failed).
        limiting_slo: the SLO that broke first above the limit (``ttft``/``tpot``/
            ``goodput``), or None.
        binding_constraint: see the module docstring.
        binding_reason: the numbers behind ``binding_constraint``.
    """

    rate_per_s: float
    upper_rate_per_s: float
    rel_tol: float
    status: Literal["ok", "unattainable", "above_max"]
    slo: SloTarget
    probes: pd.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)
    summary_above: dict[str, Any] = field(default_factory=dict)
    limiting_slo: str | None = None
    binding_constraint: str = ""
    binding_reason: str = ""
    band: Any = None  # validation.bands.Band of rate_per_s, when asked for (bands=True)
    band_grade: str = ""

    def __repr__(self) -> str:
        return (
            f"RateResult(rate_per_s={self.rate_per_s:.4g}, upper_rate_per_s="
            f"{self.upper_rate_per_s:.4g}, status={self.status!r}, limiting_slo="
            f"{self.limiting_slo!r}, binding_constraint={self.binding_constraint!r}, "
            f"probes={len(self.probes)})"
        )


def max_sustainable_rate(
    scenario: Any,
    *,
    slo: SloTarget,
    rel_tol: float = 0.05,
    initial_rate_per_s: float | None = None,
    min_rate_per_s: float = 0.01,
    max_rate_per_s: float = 1.0e5,
    max_probes: int = 60,
    variant: str | None = None,
) -> RateResult:
    """Find the highest arrival rate a configuration sustains under ``slo``.

    Args:
        scenario: path, mapping or :class:`~simulator.scenario.ScenarioCfg`.
        slo: the targets.
        rel_tol: stop when ``upper / rate <= 1 + rel_tol`` (> 0).
        initial_rate_per_s: first probe (default: the scenario's own rate, else 1/s).
        min_rate_per_s: below this, the SLOs are declared unattainable.
        max_rate_per_s: above this, the search stops (status ``above_max``).
        max_probes: safety cap on the number of simulations.
        variant: the variant to use when the scenario has several.

    Returns:
        A :class:`RateResult`.

    Raises:
        ScenarioError: no rate to scale, bad arguments; CapacityError: the model never fits.
    """
    if not rel_tol > 0:
        raise ScenarioError(f"rel_tol must be > 0, got {rel_tol}")
    if not 0 < min_rate_per_s < max_rate_per_s:
        raise ScenarioError(
            f"need 0 < min_rate_per_s < max_rate_per_s, got {min_rate_per_s}, {max_rate_per_s}"
        )
    data = _scenario_data(scenario, variant)
    rate = initial_rate_per_s or current_rate(data) or 1.0
    rate = min(max(rate, min_rate_per_s), max_rate_per_s)
    probes: list[dict[str, Any]] = []
    summaries: dict[float, dict[str, Any]] = {}

    def probe(r: float) -> bool:
        if len(probes) >= max_probes:
            raise SimulatorError(
                f"max_sustainable_rate: {max_probes} probes without converging "
                f"(last rate {r:.4g}/s); raise max_probes or rel_tol"
            )
        summary = _simulate(with_rate(data, r))
        bad = slo.violated(summary)
        summaries[r] = summary
        probes.append({"rate_per_s": r, "passed": not bad, "violated": ",".join(bad),
                       **summary_row(summary)})
        return not bad

    lo, hi = 0.0, math.inf
    if probe(rate):
        lo = rate
        while hi == math.inf and lo < max_rate_per_s:
            r = min(lo * 2.0, max_rate_per_s)
            if probe(r):
                lo = r
            else:
                hi = r
    else:
        hi = rate
        while lo == 0.0 and hi > min_rate_per_s:
            r = max(hi / 2.0, min_rate_per_s)
            if probe(r):
                lo = r
            else:
                hi = r
    if lo > 0 and hi < math.inf:
        while hi / lo > 1.0 + rel_tol:
            mid = math.sqrt(lo * hi)
            if probe(mid):
                lo = mid
            else:
                hi = mid
    status: Literal["ok", "unattainable", "above_max"] = (
        "unattainable" if lo == 0.0 else "above_max" if hi == math.inf else "ok"
    )
    result = RateResult(
        rate_per_s=lo,
        upper_rate_per_s=hi,
        rel_tol=rel_tol,
        status=status,
        slo=slo,
        probes=pd.DataFrame(probes),
        summary=summaries.get(lo, {}),
        summary_above=summaries.get(hi, {}),
    )
    result.limiting_slo = (slo.violated(result.summary_above) or [None])[0]
    result.binding_constraint, result.binding_reason = binding_constraint(result)
    return result


def binding_constraint(result: RateResult) -> tuple[str, str]:
    """Name what limits the rate (see the module docstring) and give the numbers."""
    if result.status == "above_max":
        return "none in range", f"the SLOs still hold at {result.rate_per_s:.4g}/s"
    above = result.summary_above
    if result.status == "unattainable":
        label = _SLO_LABELS.get(result.limiting_slo or "", "SLO")
        ratios = result.slo.ratios(above)
        return label, (
            f"misses the target even at {result.upper_rate_per_s:.4g}/s "
            f"(measured/target: {', '.join(f'{k} {v:.2f}' for k, v in ratios.items())})"
        )
    preemptions = _num(above.get("num_preemptions"))
    free = _num(above.get("kv_free_frac"))
    capacity_tokens = _num(above.get("kv_capacity_tokens"))
    # Concurrency the KV cache allows when every request holds its whole prompt + output.
    tokens_per_request = _num(above.get("total_token_throughput")) / _num(
        above.get("request_throughput"))
    kv_batch_limit = capacity_tokens / tokens_per_request
    max_num_seqs = _num((above.get("config") or {}).get("max_num_seqs", math.inf))
    batch = _num(above.get("mean_batch_size"))
    kv_limits_batch = kv_batch_limit < max_num_seqs and batch >= KV_BATCH_FRAC * kv_batch_limit
    if preemptions > 0 or free < KV_FULL_FREE_FRAC or kv_limits_batch:
        return "KV capacity", (
            f"at {result.upper_rate_per_s:.4g}/s: {preemptions:.0f} preemptions, "
            f"{free:.0%} of {capacity_tokens:.0f} KV tokens free on average, mean batch "
            f"{batch:.1f} vs {kv_batch_limit:.1f} requests of {tokens_per_request:.0f} tokens "
            f"that fit"
        )
    shares = {k: _num(above.get(k)) for k in _SHARE_LABELS}
    shares = {k: v for k, v in shares.items() if not math.isnan(v)}
    if not shares:
        return "unknown", "the engine reported no step-time breakdown"
    top = max(shares, key=lambda k: shares[k])
    return _SHARE_LABELS[top], (
        f"at {result.upper_rate_per_s:.4g}/s step time is "
        + ", ".join(f"{_SHARE_LABELS[k]} {v:.0%}" for k, v in sorted(
            shares.items(), key=lambda kv: -kv[1]))
    )


# ---------------------------------------------------------------------------- plan spec


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _SloFile(_Cfg):
    ttft_ms: PositiveFloat | None = None
    tpot_ms: PositiveFloat | None = None
    goodput_frac: float | None = Field(None, gt=0.0, le=1.0)
    percentile: Percentile = "p99"


# NOTE(#15): rates bounded so that a bisection between them ends in a few dozen probes
# (1e-300 or .inf would never converge or overflow); see docs/inputs.md.
_RATE = {"ge": 1e-6, "le": 1e7, "allow_inf_nan": False}


class _SearchFile(_Cfg):
    rel_tol: float = Field(0.05, ge=1e-4, le=1.0, description="Relative tolerance of the max rate.")
    initial_rate_per_s: float | None = Field(None, **_RATE, description="First probe.")
    min_rate_per_s: float = Field(0.01, **_RATE, description="Below: SLO unattainable.")
    max_rate_per_s: float = Field(1.0e4, **_RATE, description="Search ceiling per replica.")


class _ReportFile(_Cfg):
    top_k: int = Field(3, ge=0, le=1000, description="Candidates with latency-vs-rate curves.")
    curve_fracs: list[Annotated[float, Field(gt=0, le=100, allow_inf_nan=False)]] = Field(
        [0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25],
        max_length=100,
        description="Curve rates as fractions of max.",
    )


class _PlanFile(_Cfg):
    name: str | None = None
    base: str | dict[str, Any] = Field(description="Scenario path or mapping.")
    target_rate_per_s: float = Field(**_RATE, description="Peak load to serve (requests/s).")
    slo: _SloFile
    prices: str | dict[str, Annotated[float, Field(gt=0, lt=1e9, allow_inf_nan=False)]] = Field(
        description="Price table path, or {gpu: usd_per_gpu_hour}."
    )
    candidates: dict[str, Any] = Field(
        description="A sweep body over dotted paths: {grid: ...} | {zip: ...} | {points: [...]}"
    )
    search: _SearchFile = _SearchFile()
    report: _ReportFile = _ReportFile()

    @model_validator(mode="after")
    def _check(self) -> _PlanFile:
        if self.slo.ttft_ms is None and self.slo.tpot_ms is None and self.slo.goodput_frac is None:
            raise ValueError("slo: give at least one of ttft_ms, tpot_ms, goodput_frac")
        kinds = set(self.candidates) & {"grid", "zip", "points", "random"}
        if len(kinds) != 1 or set(self.candidates) - kinds:
            raise ValueError(
                "candidates: give exactly one of grid:, zip:, points: (or random:), got "
                f"{sorted(self.candidates)}"
            )
        return self


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanSpec:
    """A validated plan.

    Attributes:
        name: label.
        base: the base scenario mapping (model, workload, scheduler defaults...).
        base_dir: directory the base's relative paths resolve against.
        target_rate_per_s: load to serve.
        slo: the targets.
        usd_per_gpu_hour: price per GPU name.
        price_note: provenance of the prices (shown in the report).
        candidates: the points to evaluate (dotted path -> value each).
        rel_tol, initial_rate_per_s, min_rate_per_s, max_rate_per_s: the search.
        top_k, curve_fracs: latency-vs-rate curves in the report.
    """

    name: str
    base: Mapping[str, Any]
    base_dir: Path | None
    target_rate_per_s: float
    slo: SloTarget
    usd_per_gpu_hour: Mapping[str, float]
    price_note: str
    candidates: tuple[Point, ...]
    rel_tol: float = 0.05
    initial_rate_per_s: float | None = None
    min_rate_per_s: float = 0.01
    max_rate_per_s: float = 1.0e4
    top_k: int = 3
    curve_fracs: tuple[float, ...] = (0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25)


def load_plan(path: str | Path) -> PlanSpec:
    """Read and validate a plan YAML (see :func:`plan_from_dict`)."""
    path = Path(path)
    return plan_from_dict(read_yaml_mapping(path, "plan"), base_dir=path.parent, where=str(path))


def plan_from_dict(
    data: Mapping[str, Any], base_dir: str | Path | None = None, *, where: str = "plan"
) -> PlanSpec:
    """Validate a plan mapping.

    Raises:
        ScenarioError: malformed plan, unreadable price table, a candidate GPU without a
            price.
    """
    try:
        cfg = _PlanFile.model_validate(dict(data))
    except ValidationError as exc:
        msgs = "; ".join(
            _clip(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}") for e in exc.errors()
        )
        raise ScenarioError(f"{where}: {msgs}") from None
    base_dir = Path(base_dir) if base_dir is not None else None
    sweep = sweep_from_dict({"base": cfg.base, **cfg.candidates}, base_dir=base_dir, where=where)
    slo = SloTarget(**cfg.slo.model_dump())
    base = dict(sweep.base)
    # The scenario's own slo: block defines goodput; align it with the plan's targets.
    for key in ("ttft_ms", "tpot_ms"):
        if getattr(slo, key) is not None:
            base = set_dotted(base, f"slo.{key}", getattr(slo, key))
    prices, note = _load_prices(cfg.prices, base_dir, where)
    sweep = sweep_from_dict({"base": base, **cfg.candidates}, base_dir=sweep.base_dir, where=where)
    points = tuple(expand_points(sweep))
    missing = sorted({_gpu_of(apply_params(base, p.params)) for p in points} - set(prices))
    if missing:
        raise ScenarioError(
            f"{where}: no price for GPU(s) {', '.join(missing)}; add them to the price table "
            f"(known: {', '.join(sorted(prices))})"
        )
    return PlanSpec(
        name=_safe_component(cfg.name or "plan", "plan name", error=ScenarioError),
        base=base,
        base_dir=sweep.base_dir,
        target_rate_per_s=cfg.target_rate_per_s,
        slo=slo,
        usd_per_gpu_hour=prices,
        price_note=note,
        candidates=points,
        rel_tol=cfg.search.rel_tol,
        initial_rate_per_s=cfg.search.initial_rate_per_s,
        min_rate_per_s=cfg.search.min_rate_per_s,
        max_rate_per_s=cfg.search.max_rate_per_s,
        top_k=cfg.report.top_k,
        curve_fracs=tuple(cfg.report.curve_fracs),
    )


def _load_prices(
    prices: str | Mapping[str, float], base_dir: Path | None, where: str
) -> tuple[dict[str, float], str]:
    """Price table: ``{gpu: usd}`` inline, or a YAML file with ``usd_per_gpu_hour:``."""
    if isinstance(prices, Mapping):
        return {str(k): float(v) for k, v in prices.items()}, "prices given in the plan"
    path = Path(prices).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    from servesim.hwmodels.safeio import load_yaml, read_text

    raw = load_yaml(read_text(path, f"{where}: price table", error=ScenarioError), str(path),
                    error=ScenarioError)
    table = raw.get("usd_per_gpu_hour") if isinstance(raw, dict) else None
    if not isinstance(table, dict) or not table:
        raise ScenarioError(f"{path}: expected a mapping usd_per_gpu_hour: {{gpu: price}}")
    bad = {k: v for k, v in table.items()
           if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < 1e9}
    if bad:
        raise ScenarioError(f"{path}: prices must be finite numbers in (0, 1e9) USD per GPU "
                            f"hour, got {_short(bad, 200)}")
    note = str(raw.get("note", f"prices from {path.name}"))
    return {str(k): float(v) for k, v in table.items()}, note


def _gpu_of(data: Mapping[str, Any]) -> str:
    hardware = data.get("hardware") or {}
    if isinstance(hardware, list):
        raise ScenarioError("plan candidates are single replicas: hardware must be one group")
    return str(hardware.get("gpu", "h100-sxm"))


# ---------------------------------------------------------------------------- plan tasks


@dataclass(frozen=True, slots=True, kw_only=True)
class _PlanTask:
    point: Point
    base: Mapping[str, Any]
    base_dir: str | None
    slo: SloTarget
    rel_tol: float
    initial_rate_per_s: float | None
    min_rate_per_s: float
    max_rate_per_s: float
    rate_per_s: float | None = None  # curve tasks: the one rate to run


def _candidate_data(task: _PlanTask) -> dict[str, Any]:
    from servesim.simulator.scenario import scenario_from_dict

    data = apply_params(task.base, task.point.params)
    _gpu_of(data)
    data = set_dotted(data, "hardware.replicas", 1)
    cfg = scenario_from_dict(data, base_dir=None if task.base_dir is None else Path(task.base_dir))
    return _scenario_data(cfg, None)


def _plan_candidate(task: _PlanTask) -> list[dict[str, Any]]:
    """Worker: the max rate of one candidate replica, as one row (probes as JSON)."""
    ids = {"point_index": task.point.index, "point_id": task.point.point_id,
           **task.point.params, "variant": None}
    try:
        data = _candidate_data(task)
        rr = max_sustainable_rate(
            data,
            slo=task.slo,
            rel_tol=task.rel_tol,
            initial_rate_per_s=task.initial_rate_per_s,
            min_rate_per_s=task.min_rate_per_s,
            max_rate_per_s=task.max_rate_per_s,
        )
    except (CapacityError, ScenarioError, SimulatorError) as exc:
        # Cannot fit (weights exceed HBM), or not supported (fp8 on a GPU without fp8).
        return [{**ids, "status": "infeasible", "error": f"{type(exc).__name__}: {exc}"}]
    hw = data["hardware"]
    at = {f"at_max_{k}": v for k, v in summary_row(rr.summary or rr.summary_above).items()}
    return [{
        **ids,
        "status": "ok" if rr.status != "unattainable" else "unattainable",
        "error": None,
        "gpu": hw["gpu"],
        "tensor_parallel": hw["tensor_parallel"],
        "pipeline_parallel": hw["pipeline_parallel"],
        "model": data["model"]["name"] or data["model"]["config"],
        "quantization": data["model"]["quantization"],
        "kv_manager": data["kv_cache"]["manager"],
        "scheduler": data["scheduler"]["policy"],
        "max_rate_per_replica": rr.rate_per_s,
        "upper_rate_per_s": rr.upper_rate_per_s,
        "search_status": rr.status,
        "limiting_slo": rr.limiting_slo,
        "binding_constraint": rr.binding_constraint,
        "binding_reason": rr.binding_reason,
        "num_probes": len(rr.probes),
        **at,
        "probes_json": rr.probes.to_json(orient="records"),
    }]


def _plan_curve(task: _PlanTask) -> list[dict[str, Any]]:
    """Worker: one point of a latency-vs-rate curve."""
    assert task.rate_per_s is not None
    summary = _simulate(with_rate(_candidate_data(task), task.rate_per_s))
    return [{"point_index": task.point.index, "point_id": task.point.point_id,
             "variant": None, "status": "ok", "error": None, "rate_per_s": task.rate_per_s,
             "violated": ",".join(task.slo.violated(summary)), **summary_row(summary)}]


# ---------------------------------------------------------------------------- planning


@dataclass(slots=True, kw_only=True)
class PlanResult:
    """Outcome of :func:`plan_capacity`.

    Attributes:
        spec: the plan.
        table: one row per candidate, ranked (``rank`` 1 = cheapest feasible): the
            candidate's parameters, ``max_rate_per_replica``, ``replicas``, ``num_gpus``,
            ``usd_per_hour``, ``usd_per_million_output_tokens``, throughput per GPU and per
            user, memory headroom, ``limiting_slo``, ``binding_constraint``; infeasible
            candidates last with the reason in ``error``.
        probes: every bisection probe of every candidate (``point_index``, ``rate_per_s``,
            ``passed``, metrics).
        curves: latency-vs-rate points of the top candidates.
    """

    spec: PlanSpec
    table: pd.DataFrame
    probes: pd.DataFrame
    curves: pd.DataFrame
    bands: pd.DataFrame | None = None  # validation.bands.plan_bands, when asked for

    def write(self, out: str | Path) -> Path:
        """Write ``plan.csv``, ``plan.parquet``, ``probes.parquet``, ``curves.parquet``,
        the figures, ``report.md`` and ``report.html`` into ``out``; return ``out``."""
        return _write_plan(self, Path(out))


def plan_capacity(
    plan: PlanSpec | str | Path | Mapping[str, Any],
    *,
    executor: ExecutorKind | Executor = "local",
    workers: int | None = None,
    scheduler_address: str | None = None,
    progress: bool = True,
) -> PlanResult:
    """Evaluate every candidate of a plan and rank them by cost for the target rate.

    Per candidate (one replica): the max sustainable rate (:func:`max_sustainable_rate`),
    ``replicas = ceil(target / max_rate)``, ``num_gpus = replicas x TP x PP``,
    ``usd_per_hour = num_gpus x price``, and ``usd_per_million_output_tokens`` at the
    target load (``target x output tokens per request``). A candidate that cannot hold the
    model (:class:`CapacityError`) is listed as ``infeasible`` with the reason.
    """
    if not isinstance(plan, PlanSpec):
        plan = load_plan(plan) if isinstance(plan, str | Path) else plan_from_dict(plan)
    base_dir = None if plan.base_dir is None else str(plan.base_dir)
    common = {"base": plan.base, "base_dir": base_dir, "slo": plan.slo, "rel_tol": plan.rel_tol,
              "initial_rate_per_s": plan.initial_rate_per_s,
              "min_rate_per_s": plan.min_rate_per_s, "max_rate_per_s": plan.max_rate_per_s}
    tasks = [_PlanTask(point=p, **common) for p in plan.candidates]
    param_names = list(dict.fromkeys(k for p in plan.candidates for k in p.params))
    run_opts = {"executor": executor, "workers": workers, "scheduler_address": scheduler_address,
                "progress": progress, "param_names": param_names}
    raw = execute_points(tasks, _plan_candidate, description=f"{plan.name}: candidates",
                         **run_opts)
    table, probes = _rank(plan, raw, param_names)
    top = table[table["rank"].notna()].head(plan.top_k)
    curve_tasks = [
        _PlanTask(point=plan.candidates[int(row.point_index)], rate_per_s=row.max_rate_per_replica * f,
                  **common)
        for row in top.itertuples()
        for f in plan.curve_fracs
        if row.max_rate_per_replica > 0
    ]
    curves = pd.DataFrame()
    if curve_tasks:
        curves = execute_points(curve_tasks, _plan_curve, description=f"{plan.name}: curves",
                                **run_opts)
        curves = curves[curves["status"] == "ok"].merge(
            table[["point_index", "label"]], on="point_index", how="left"
        ).sort_values(["point_index", "rate_per_s"], kind="stable").reset_index(drop=True)
    return PlanResult(spec=plan, table=table, probes=probes, curves=curves)


def _label(row: Mapping[str, Any], *, with_model: bool) -> str:
    parts = [str(row.get("model"))] if with_model else []
    parts.append(str(row.get("gpu")))
    for key, short in (("tensor_parallel", "tp"), ("pipeline_parallel", "pp")):
        degree = int(_num(row.get(key, 1)))
        if degree != 1:
            parts.append(f"{short}{degree}")
    parts += [str(row.get("quantization")), str(row.get("kv_manager"))]
    return " ".join(parts)


def _rank(
    plan: PlanSpec, raw: pd.DataFrame, param_names: Sequence[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Derive replicas, GPUs and cost per candidate; rank; split out the probes."""
    rows, probe_frames = [], []
    for rec in raw.to_dict(orient="records"):
        rec = {k: v for k, v in rec.items() if not _is_missing(v) or k in param_names}
        probes_json = rec.pop("probes_json", None)
        if probes_json:
            pf = pd.read_json(_StringIO(probes_json), orient="records")
            pf.insert(0, "point_index", rec["point_index"])
            probe_frames.append(pf)
        if rec.get("status") in ("infeasible", "error") and "gpu" not in rec:
            point = plan.candidates[int(rec["point_index"])]
            data = apply_params(plan.base, point.params)
            hw = data.get("hardware") or {}
            rec.setdefault("gpu", hw.get("gpu", "h100-sxm"))
            rec.setdefault("tensor_parallel", hw.get("tensor_parallel", 1))
            rec.setdefault("pipeline_parallel", hw.get("pipeline_parallel", 1))
            rec.setdefault("quantization", (data.get("model") or {}).get("quantization", "fp16"))
            rec.setdefault("kv_manager", (data.get("kv_cache") or {}).get("manager", "paged"))
            rec.setdefault("model", (data.get("model") or {}).get("name")
                           or (data.get("model") or {}).get("config"))
        gpus_per_replica = int(rec.get("tensor_parallel", 1)) * int(rec.get("pipeline_parallel", 1))
        rec["gpus_per_replica"] = gpus_per_replica
        price = plan.usd_per_gpu_hour.get(str(rec.get("gpu")), math.nan)
        rec["usd_per_gpu_hour"] = price
        max_rate = _num(rec.get("max_rate_per_replica"))
        if rec.get("status") == "ok" and max_rate > 0:
            replicas = math.ceil(plan.target_rate_per_s / max_rate * (1 - 1e-12))
            out_per_req = _num(rec.get("at_max_output_throughput")) / _num(
                rec.get("at_max_request_throughput"))
            out_tok_per_s = plan.target_rate_per_s * out_per_req
            rec.update(
                replicas=replicas,
                num_gpus=replicas * gpus_per_replica,
                usd_per_hour=replicas * gpus_per_replica * price,
                output_tokens_per_s_at_target=out_tok_per_s,
                usd_per_million_output_tokens=(
                    replicas * gpus_per_replica * price / (out_tok_per_s * 3600.0) * 1e6
                ),
                utilization_at_target=plan.target_rate_per_s / (replicas * max_rate),
                output_tokens_per_s_per_gpu=_num(rec.get("at_max_output_throughput"))
                / gpus_per_replica,
                output_tokens_per_s_per_user=1000.0 / _num(rec.get("at_max_mean_tpot_ms")),
                kv_free_frac_at_max=_num(rec.get("at_max_kv_free_frac")),
                weight_frac_of_usable=_num(rec.get("at_max_mem_weight_bytes"))
                / _num(rec.get("at_max_mem_usable_bytes")),
            )
        rows.append(rec)
    with_model = len({r.get("model") for r in rows}) > 1
    for rec in rows:
        rec["label"] = _label(rec, with_model=with_model)
    table = pd.DataFrame(rows)
    feasible = (table["status"] == "ok") & (table.get("max_rate_per_replica", 0) > 0)
    table["_feasible"] = ~feasible
    # Ties on cost go to the candidate with the most headroom (highest max rate).
    table["_neg_rate"] = -table.get("max_rate_per_replica", pd.Series(0.0, index=table.index))
    sort_cols = ["_feasible"] + [c for c in ("usd_per_hour", "usd_per_million_output_tokens",
                                             "num_gpus") if c in table] + ["_neg_rate",
                                                                          "point_index"]
    table = table.sort_values(sort_cols, kind="stable", na_position="last").reset_index(drop=True)
    table = table.drop(columns="_neg_rate")
    ranks = [float(i + 1) if not infeasible else math.nan
             for i, infeasible in enumerate(table["_feasible"])]
    table["rank"] = ranks
    table = table.drop(columns="_feasible")
    first = ["rank", "label", "status", *param_names, "max_rate_per_replica", "replicas",
             "num_gpus", "usd_per_hour", "usd_per_million_output_tokens",
             "output_tokens_per_s_per_gpu", "output_tokens_per_s_per_user",
             "kv_free_frac_at_max", "weight_frac_of_usable", "limiting_slo",
             "binding_constraint", "binding_reason", "error"]
    first = [c for c in first if c in table.columns]
    table = table[first + [c for c in table.columns if c not in first]]
    probes = pd.concat(probe_frames, ignore_index=True) if probe_frames else pd.DataFrame()
    return table, probes


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _StringIO(text: str) -> Any:
    import io

    return io.StringIO(text)


# ---------------------------------------------------------------------------- report


def _write_plan(result: PlanResult, out: Path) -> Path:
    from servesim.hwmodels.safeio import prepare_out_dir, write_bytes_in, write_text_in

    # Confined writes (#15): every file lands inside `out`, atomically, never via a symlink.
    out = prepare_out_dir(out, error=ScenarioError)
    for child in out.iterdir():  # figures are saved by path: never through a link
        if child.is_symlink():
            child.unlink()
    spec, table = result.spec, result.table
    write_bytes_in(out, "plan.csv", lambda p: table.to_csv(p, index=False))
    write_bytes_in(out, "plan.parquet", lambda p: table.to_parquet(p, index=False))
    if not result.probes.empty:
        write_bytes_in(out, "probes.parquet", lambda p: result.probes.to_parquet(p, index=False))
    if not result.curves.empty:
        write_bytes_in(out, "curves.parquet", lambda p: result.curves.to_parquet(p, index=False))
    plan = {
        "name": spec.name, "target_rate_per_s": spec.target_rate_per_s,
        "slo": {"ttft_ms": spec.slo.ttft_ms, "tpot_ms": spec.slo.tpot_ms,
                "goodput_frac": spec.slo.goodput_frac, "percentile": spec.slo.percentile},
        "usd_per_gpu_hour": dict(spec.usd_per_gpu_hour), "price_note": spec.price_note,
        "rel_tol": spec.rel_tol,
    }
    # The report (figures, report.md, report.html) is servesim.reports' job: one template
    # engine and stylesheet for run and plan reports.
    from servesim.reports.plan_report import build_plan_report

    texts = build_plan_report(out, table=table, curves=result.curves, plan=plan)
    for name, text in texts.items():
        write_text_in(out, name, text)
    write_text_in(out, "plan.json", json.dumps(plan, indent=2) + "\n")
    return out
