"""Prediction bands: low / mid / high for any simulated number, and which assumption
dominates the width.

**What varies.** Five assumptions, each over a stated range:

==================  ===============================================================  ========
factor              range                                                            source
==================  ===============================================================  ========
GPU compute         peak FLOP/s x (1 -/+ u), u from the GEMM calibration's held-out  residual
efficiency          median |error| (x 2.44: the 90 % two-sided half-width of a
                    normal with that median absolute deviation), x the GPU's grade
GPU bandwidth       HBM bandwidth x (1 -/+ u), same u                                residual
efficiency
host overhead       step_overhead_s in [0, 2 x the stack's] (a shipped stack);      issue #13
per step            x (1 -/+ 0.3) with a fitted ``--profile``                          mech. 6
per-request         + [0, 30 ms] outside the engine loop (a shipped stack); + [0, 0.3  issue #13
overhead            x the profile's own] with a fitted profile                         mech. 5
TP communication    scale-up link bandwidth x [0.4, 1] (only with TP or PP > 1):     nccl-tests
                    all-reduce bus bandwidth reaches ~75-80 % of NVLink for large     mech. 7
                    messages and far less for the small ones of decode steps
workload draw       two other workload seeds                                         sampling
==================  ===============================================================  ========

u combines the GEMM calibration's held-out residual with the confidence grade of the GPU's
achievable figures (:func:`efficiency_uncertainty`): a GPU whose figures are borrowed gets a
wider band. For a measured engine that has no stack profile of its own (it runs under a
related stack's), the host-overhead range is the unprofiled one.

**Propagation.** Every factor is pushed through the simulation one at a time, to its low and
its high end with the others at their nominal values (deterministic: no random draws; the
seed factor uses seeds ``seed + 1`` and ``seed + 2``). For a metric with nominal value m and
factor i giving values v, the downward and upward log-deviations are
d_i- = max(0, ln(m / min v)) and d_i+ = max(0, ln(max v / m)); the band is
``[m exp(-sum d_i-), m exp(+sum d_i+)]``.

NOTE(combination): the deviations are added linearly, i.e. the factors are taken to move
together (a stack with heavier host code tends to have less tuned kernels too; a GPU whose
GEMMs fall short usually falls short on bandwidth as well). Adding them in quadrature
(independent factors, ``combine="quadrature"``) gives bands ~1.6x narrower that covered only
13 of the 26 shipped cases; linear stacking covers the share stated in docs/validation.md.
The factor with the largest d_i- + d_i+ *dominates the width*.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from servesim.simulator.validation.stack import StackParams

__all__ = ["Band", "Factor", "band_factors", "efficiency_uncertainty", "propagate"]

#: Half-width of the 90 % interval of a normal, in median absolute deviations: 1.645 x 1.4826.
_MAD_TO_90 = 1.645 * 1.4826
_PER_REQUEST_MAX_S = 0.030
_PROFILE_REL = 0.3


@dataclass(frozen=True, slots=True)
class Factor:
    """One assumption and its two ends."""

    name: str
    label: str
    low: StackParams
    high: StackParams
    seeds: tuple[int, ...] = ()  # the workload-seed factor varies seeds, not params


@dataclass(frozen=True, slots=True)
class Band:
    """low / mid / high of one metric, and what makes it wide.

    Attributes:
        low, mid, high: the band (mid = the nominal run).
        dominant: label of the factor contributing most to the width.
        contributions: factor label -> (down, up) log-deviation.
    """

    low: float
    mid: float
    high: float
    dominant: str
    contributions: Mapping[str, tuple[float, float]]

    def covers(self, value: float) -> bool:
        return self.low <= value <= self.high

    def to_dict(self) -> dict[str, Any]:
        return {"low": self.low, "mid": self.mid, "high": self.high, "dominant": self.dominant,
                "contributions": {k: {"down": d, "up": u} for k, (d, u) in self.contributions.items()}}


def efficiency_uncertainty(gpu: str) -> tuple[float, str]:
    """Relative uncertainty u of the GPU's achievable compute and bandwidth, and the grade.

    u combines, in quadrature, (a) the roofline GEMM calibration's held-out residual
    (median |error| x 2.44, the 90 % half-width) of the size profile the GPU uses, and (b) the
    band half-width its achievable figures' confidence grade implies
    (:data:`hwmodels.achievable.BAND_FRAC_BY_CONFIDENCE`: measured 5 %, derived 10 %,
    borrowed 20 %), times 1.645 for 90 %. Where the achievable table has no entry (a user
    GPU file), the figures count as borrowed.

    Returns:
        (u, grade text), e.g. (0.12, "residual 10.7 %, figures measured").
    """
    from servesim.hwmodels.gpus import get_gpu
    from servesim.hwmodels.roofline import profile_for

    spec = get_gpu(gpu)
    profile = profile_for(spec)
    table = _error_table()
    held = table[(table["role"] == "held-out") & table["gpu"].str.startswith(profile)]
    med = float(held["median_abs_err_frac"].max()) if len(held) else float(table["median_abs_err_frac"].max())
    resid = _MAD_TO_90 * med
    try:
        from servesim.hwmodels.achievable import BAND_FRAC_BY_CONFIDENCE, efficiency_for

        grade = str(efficiency_for(spec).confidence)
        frac = BAND_FRAC_BY_CONFIDENCE.get(grade, BAND_FRAC_BY_CONFIDENCE["borrowed"])
    except ImportError:  # the achievable-figures mechanism is absent
        grade, frac = "borrowed", 0.20
    u = math.sqrt(resid**2 + (1.645 * frac) ** 2)
    return u, f"residual {100 * resid:.1f}% ({profile} kernels), figures {grade}"


_TABLE: list[Any] = []


def _error_table() -> Any:
    if not _TABLE:
        from servesim.hwmodels import calibration

        _TABLE.append(calibration.error_table())
    return _TABLE[0]


#: Range of the achieved fraction of the scale-up link bandwidth (TP/PP all-reduce, p2p).
COMM_EFF_RANGE = (0.4, 1.0)


def band_factors(gpu: str, base: StackParams, *, has_profile: bool, seed: int = 0,
                 vary_seed: bool = True, multi_gpu: bool = False,
                 stack: Any = None, stack_borrowed: bool = False,
                 alltoall: bool = False, two_batch_overlap: bool = False) -> tuple[list[Factor], str]:
    """The factors for a run on ``gpu`` around ``base``; and the GPU grade text.

    Args:
        stack: the scenario's :class:`~hwmodels.stacks.StackProfile` (nominal host and
            per-request times); None = the default stack.
        has_profile: the stack is a fitted profile (narrower overhead ranges).
        stack_borrowed: the measured engine has no profile of its own and runs under another
            stack's (a case's ``stack`` mapped in ``cases.STACK_PROFILE``): its host time is as
            unknown as without any profile, [0, 2 x the default step overhead].
        alltoall: the deployment has a MoE all-to-all (expert parallelism with attention data
            parallelism): the band spans from the nominal to all of it hidden.
        two_batch_overlap: the deployment runs two-batch overlap, which the step cost models
            from kernel figures (docs/step-cost.md) but whose contention under overlap no
            microbenchmark pins: the low end is the same deployment without the overlap.
    """
    from servesim.hwmodels.stacks import get_stack
    from servesim.hwmodels.stepcost import DEFAULT_STEP_OVERHEAD_S

    stack = stack if stack is not None else get_stack(None)
    u, grade = efficiency_uncertainty(gpu)
    u = min(u, 0.6)
    step = base.step_overhead_s
    if step is None:
        step = stack.step_overhead_s if stack.step_overhead_s is not None else DEFAULT_STEP_OVERHEAD_S
    req = base.per_request_overhead_s
    if has_profile:
        step_lo, step_hi = step * (1 - _PROFILE_REL), step * (1 + _PROFILE_REL)
        own = float(stack.request_overhead_s + stack.response_overhead_s)
        req_lo, req_hi = req, req + _PROFILE_REL * own
    else:
        step_lo, step_hi = 0.0, 2.0 * (max(step, DEFAULT_STEP_OVERHEAD_S) if stack_borrowed else step)
        req_lo, req_hi = req, req + _PER_REQUEST_MAX_S
    factors = [
        Factor("compute", "GPU compute efficiency",
               base.replace(compute_eff_scale=base.compute_eff_scale * (1 - u)),
               base.replace(compute_eff_scale=base.compute_eff_scale * (1 + u))),
        Factor("bandwidth", "GPU memory-bandwidth efficiency",
               base.replace(bandwidth_eff_scale=base.bandwidth_eff_scale * (1 - u)),
               base.replace(bandwidth_eff_scale=base.bandwidth_eff_scale * (1 + u))),
        Factor("step_overhead", "host overhead per step",
               base.replace(step_overhead_s=step_lo), base.replace(step_overhead_s=step_hi)),
        Factor("per_request", "per-request overhead",
               base.replace(per_request_overhead_s=req_lo), base.replace(per_request_overhead_s=req_hi)),
    ]
    if multi_gpu:
        lo, hi = COMM_EFF_RANGE
        factors.append(Factor("comm", "TP communication",
                              base.replace(comm_eff_scale=base.comm_eff_scale * lo),
                              base.replace(comm_eff_scale=base.comm_eff_scale * hi)))
    if alltoall:
        factors.append(Factor("alltoall_overlap", "all-to-all overlap (two-batch overlap)",
                              base.replace(two_batch_overlap=False) if two_batch_overlap else base,
                              base.replace(alltoall_overlap_frac=1.0)))
    if vary_seed:
        factors.append(Factor("workload_seed", "workload draw", base, base, seeds=(seed + 1, seed + 2)))
    return factors, f"u = {100 * u:.1f}% ({grade})"


def propagate(evaluate: Callable[[StackParams, int], Mapping[str, float]], base: StackParams,
              factors: Sequence[Factor], *, seed: int = 0,
              combine: str = "linear") -> dict[str, Band]:
    """Bands of every metric ``evaluate`` returns (see the module docstring).

    Args:
        evaluate: ``(params, seed) -> {metric: value}``, one simulation.
        base: the nominal parameters.
        factors: from :func:`band_factors`.
        seed: the nominal seed.
        combine: ``linear`` (default, see the NOTE above) or ``quadrature``.
    """
    if combine not in ("linear", "quadrature"):
        raise ValueError(f"combine must be 'linear' or 'quadrature', got {combine!r}")
    mid = dict(evaluate(base, seed))
    runs: dict[str, list[Mapping[str, float]]] = {}
    for f in factors:
        if f.seeds:
            runs[f.label] = [evaluate(base, s) for s in f.seeds]
        else:
            runs[f.label] = [evaluate(f.low, seed), evaluate(f.high, seed)]
    out: dict[str, Band] = {}
    for metric, m in mid.items():
        if not (isinstance(m, int | float) and math.isfinite(m) and m > 0):
            continue
        contrib: dict[str, tuple[float, float]] = {}
        for label, values in runs.items():
            vs = [float(v[metric]) for v in values
                  if metric in v and math.isfinite(float(v[metric])) and float(v[metric]) > 0]
            if not vs:
                contrib[label] = (0.0, 0.0)
                continue
            contrib[label] = (max(0.0, math.log(m / min(vs))), max(0.0, math.log(max(vs) / m)))
        if combine == "linear":
            down = sum(d for d, _ in contrib.values())
            up = sum(u for _, u in contrib.values())
        else:
            down = math.sqrt(sum(d * d for d, _ in contrib.values()))
            up = math.sqrt(sum(u * u for _, u in contrib.values()))
        dominant = max(contrib, key=lambda k: contrib[k][0] + contrib[k][1]) if contrib else ""
        out[metric] = Band(low=m * math.exp(-down), mid=float(m), high=m * math.exp(up),
                           dominant=dominant, contributions=contrib)
    return out


# ---------------------------------------------------------------------------- run and planner

#: Summary metrics banded by default for a run.
RUN_METRICS = ("request_throughput", "output_throughput", "mean_ttft_ms", "p99_ttft_ms",
               "mean_tpot_ms", "p99_tpot_ms", "mean_e2el_ms")


def _one_config(scenario: Any, variant: str | None = None) -> dict[str, Any]:
    """A plain mapping of one configuration (variant resolved, no progress bar)."""
    from servesim.simulator.capacity import _scenario_data

    return _scenario_data(scenario, variant)


def _hardware(data: Mapping[str, Any]) -> tuple[str, bool]:
    hw = data.get("hardware") or {}
    group = hw[0] if isinstance(hw, list) else hw
    multi = int(group.get("tensor_parallel", 1)) * int(group.get("pipeline_parallel", 1)) > 1
    return str(group.get("gpu")), multi


def run_bands(scenario: Any, *, profile: Any = None,
              metrics: Sequence[str] = RUN_METRICS, variant: str | None = None,
              seed: int | None = None) -> tuple[dict[str, Band], str]:
    """Bands of a run's summary metrics; and the GPU grade text.

    Args:
        scenario: path, mapping or validated scenario (one configuration, or ``variant``).
        profile: a fitted stack-profile file to run under (narrower overhead ranges).
        metrics: summary keys to band.
        variant: the variant to use when the scenario has several.
        seed: the nominal seed (default: the scenario's).
    """
    from pathlib import Path

    from servesim.simulator.build import run_scenario
    from servesim.simulator.scenario import scenario_from_dict
    from servesim.simulator.validation.replay import simulated_metrics
    from servesim.simulator.validation.stack import (
        apply_params,
        scenario_stack,
        temp_workdir,
        with_profile,
    )

    data = _one_config(scenario, variant)
    if profile is not None:
        data = with_profile(data, profile)
    seed = int(data.get("seed", 0)) if seed is None else seed
    base = StackParams()
    gpu, multi = _hardware(data)
    factors, grade = band_factors(gpu, base, has_profile=profile is not None, seed=seed,
                                  multi_gpu=multi, stack=scenario_stack(data))
    memo: dict[tuple[StackParams, int], dict[str, float]] = {}

    def evaluate(p: StackParams, s: int) -> dict[str, float]:
        if (p, s) not in memo:
            with temp_workdir() as tmp:
                d = apply_params({**data, "seed": s}, p, Path(tmp))
                res = run_scenario(scenario_from_dict(d)).variants[0]
            m = simulated_metrics(res.requests, res.summary, p.per_request_overhead_s)
            memo[(p, s)] = {k: float(m.get(k, res.summary.get(k, math.nan))) for k in metrics}
        return memo[(p, s)]

    return propagate(evaluate, base, factors, seed=seed), grade


def rate_band(scenario: Any, slo: Any, *, profile: Any = None, variant: str | None = None,
              rel_tol: float = 0.05, **search: Any) -> tuple[Band, str]:
    """Band of the maximum sustainable rate under ``slo`` (a
    :class:`~simulator.capacity.SloTarget`); and the GPU grade text.

    Each factor end re-runs the whole bisection. The per-request overhead is constant per
    request, so it shifts every TTFT and E2E percentile by itself: it is applied by lowering
    the TTFT target by that much.
    """
    from dataclasses import replace
    from pathlib import Path

    from servesim.simulator.capacity import max_sustainable_rate
    from servesim.simulator.validation.stack import (
        apply_params,
        scenario_stack,
        temp_workdir,
        with_profile,
    )

    data = _one_config(scenario, variant)
    if profile is not None:
        data = with_profile(data, profile)
    seed = int(data.get("seed", 0))
    base = StackParams()
    gpu, multi = _hardware(data)
    factors, grade = band_factors(gpu, base, has_profile=profile is not None, seed=seed,
                                  multi_gpu=multi, stack=scenario_stack(data))
    floor = float(search.get("min_rate_per_s", 0.01))

    def evaluate(p: StackParams, s: int) -> dict[str, float]:
        target = slo
        if slo.ttft_ms is not None and p.per_request_overhead_s > 0:
            left = slo.ttft_ms - 1000.0 * p.per_request_overhead_s
            if left <= 0:
                return {"max_rate_per_s": floor}
            target = replace(slo, ttft_ms=left)
        with temp_workdir() as tmp:
            d = apply_params({**data, "seed": s}, p, Path(tmp))
            r = max_sustainable_rate(d, slo=target, rel_tol=rel_tol, **search)
        return {"max_rate_per_s": max(r.rate_per_s, floor)}

    bands = propagate(evaluate, base, factors, seed=seed)
    return bands["max_rate_per_s"], grade


def plan_bands(result: Any, *, profile: Any = None, top_k: int | None = None) -> Any:
    """Ranges of the planner's answer: per ranked candidate (the ``top_k`` cheapest, default
    the plan's ``report.top_k``), the max rate per replica low / mid / high, the replicas and
    GPUs needed for the target as a range (fewest from the high rate, most from the low), and
    the assumption that dominates the width.

    Returns:
        DataFrame: ``rank``, ``label``, ``max_rate_low``, ``max_rate_mid``, ``max_rate_high``,
        ``gpus_low``, ``gpus_mid``, ``gpus_high``, ``replicas_low``, ``replicas_high``,
        ``dominant``, ``grade``.
    """
    import pandas as pd

    from servesim.simulator.scenario import scenario_from_dict
    from servesim.simulator.sweep import apply_params as apply_point

    spec = result.spec
    table = result.table[result.table["rank"].notna()].sort_values("rank")
    table = table.head(spec.top_k if top_k is None else top_k)
    search = {"min_rate_per_s": spec.min_rate_per_s, "max_rate_per_s": spec.max_rate_per_s}
    rows = []
    for row in table.to_dict(orient="records"):
        point = spec.candidates[int(row["point_index"])]
        cfg = scenario_from_dict(apply_point(spec.base, point.params), base_dir=spec.base_dir)
        band, grade = rate_band(cfg, spec.slo, profile=profile, rel_tol=spec.rel_tol, **search)
        per_replica = int(row.get("gpus_per_replica", 1))
        target = spec.target_rate_per_s

        def replicas(rate: float, target: float = target) -> int:
            return math.ceil(target / rate * (1 - 1e-12))

        rows.append({
            "rank": int(row["rank"]), "label": row.get("label"),
            "max_rate_low": band.low, "max_rate_mid": band.mid, "max_rate_high": band.high,
            "replicas_low": replicas(band.high), "replicas_high": replicas(band.low),
            "gpus_low": replicas(band.high) * per_replica, "gpus_mid": replicas(band.mid) * per_replica,
            "gpus_high": replicas(band.low) * per_replica,
            "dominant": band.dominant, "grade": grade,
        })
    return pd.DataFrame(rows)
