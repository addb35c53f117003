"""The public Python API, for notebooks and scripts.

Four functions, each taking what a notebook has at hand (a path, a dict, a validated
scenario) and returning pandas-friendly objects::

    import servesim as ss

    res = ss.run("scenarios/quickstart.yaml", overrides={"workload.arrivals.rate_per_s": 8})
    res.variants[0].summary["p99_ttft_ms"]; res.variants[0].requests   # DataFrames

    df = ss.sweep("examples/sweep-rate-gpu.yaml", executor="local")    # one row per point
    rr = ss.max_sustainable_rate("scenarios/quickstart.yaml", ttft_ms=500, tpot_ms=50)
    plan = ss.plan_capacity("examples/plan.yaml"); plan.table          # ranked candidates

Everything here is a thin front over :mod:`simulator.sweep` and :mod:`simulator.capacity`;
the CLI (``servesim sweep`` / ``servesim plan``) calls the same functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from servesim.simulator.capacity import PlanResult, PlanSpec, RateResult
    from servesim.simulator.scenario import ScenarioCfg
    from servesim.simulator.sweep import ExecutorKind, SweepSpec

__all__ = ["bands", "load", "max_sustainable_rate", "plan_capacity", "run", "sweep"]


def load(
    scenario: str | Path | Mapping[str, Any] | ScenarioCfg,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    seed: int | None = None,
) -> ScenarioCfg:
    """Validate a scenario given as a path, a mapping or a :class:`ScenarioCfg`.

    Args:
        scenario: a YAML path, the scenario as a mapping (relative paths resolve against the
            current directory), or an already validated scenario.
        overrides: ``["dotted.path=value", ...]`` (values parsed as YAML, as ``--set``
            does) or a mapping ``{"dotted.path": value}`` (values used as they are).
        seed: replaces the scenario's seed.

    Raises:
        ScenarioError: the scenario or an override is invalid.
    """
    from servesim.simulator.scenario import ScenarioCfg, load_scenario, scenario_from_dict

    strings = _override_strings(overrides)
    if isinstance(scenario, ScenarioCfg):
        if not strings and seed is None:
            return scenario
        return scenario_from_dict(scenario.model_dump(mode="json"), overrides=strings, seed=seed)
    if isinstance(scenario, str | Path):
        return load_scenario(scenario, overrides=strings, seed=seed)
    return scenario_from_dict(dict(scenario), overrides=strings, seed=seed)


def run(
    scenario: str | Path | Mapping[str, Any] | ScenarioCfg,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    seed: int | None = None,
    *,
    progress: bool = False,
) -> Any:
    """Run one scenario (all its variants, on the identical request stream).

    Args:
        scenario: path, mapping or :class:`ScenarioCfg` (see :func:`load`).
        overrides: dotted-path overrides (see :func:`load`).
        seed: replaces the scenario's seed.
        progress: show the engine's progress bar over simulated time.

    Returns:
        :class:`simulator.results.Results`: ``.variants[i].summary`` (dict of
        ``vllm bench serve`` metrics plus the simulator's), ``.requests`` and ``.steps``
        (DataFrames), and ``.write(dir)``.

    Raises:
        ScenarioError: invalid scenario; CapacityError: the model cannot fit.
    """
    from servesim.simulator.build import run_scenario

    cfg = load(scenario, overrides, seed)
    if cfg.engine.progress != progress:
        cfg = cfg.model_copy(update={"engine": cfg.engine.model_copy(update={"progress": progress})})
    return run_scenario(cfg)


def sweep(
    spec_or_path: str | Path | Mapping[str, Any] | SweepSpec,
    executor: ExecutorKind | Executor = "local",
    workers: int | None = None,
    scheduler_address: str | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    *,
    progress: bool = True,
) -> pd.DataFrame:
    """Run a parameter sweep; one row per point x variant.

    Args:
        spec_or_path: a sweep YAML path, its content as a mapping, or a :class:`SweepSpec`
            (``base`` + one of ``grid``/``zip``/``random``/``points``).
        executor: ``local`` (process pool, default), ``serial``, ``dask``, or any
            :class:`concurrent.futures.Executor`.
        workers: worker processes (default: one per core).
        scheduler_address: a Dask scheduler (``executor="dask"``); without it a
            ``LocalCluster`` runs for the sweep.
        out: directory for ``results.parquet`` (written as each point finishes).
        resume: skip points already stored in ``out`` with status ``ok``.
        progress: show a progress bar.

    Returns:
        ``point_index``, ``point_id``, the swept dotted paths, ``variant``, ``status``,
        ``error``, then every scalar summary metric; sorted by point index. Identical for
        every executor and worker count.
    """
    from servesim.simulator.sweep import run_sweep

    return run_sweep(
        spec_or_path,
        executor=executor,
        workers=workers,
        scheduler_address=scheduler_address,
        out=out,
        resume=resume,
        progress=progress,
    )


def max_sustainable_rate(
    scenario: str | Path | Mapping[str, Any] | ScenarioCfg,
    *,
    ttft_ms: float | None = None,
    tpot_ms: float | None = None,
    goodput_frac: float | None = None,
    percentile: str = "p99",
    rel_tol: float = 0.05,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    bands: bool = False,
    profile: str | Path | None = None,
    **kwargs: Any,
) -> RateResult:
    """Highest arrival rate whose run meets the SLOs, by bisection on the scaled stream.

    The same seeded request stream is replayed faster or slower (the arrival process's
    ``rate_per_s``, or a trace's ``target_rate_per_s``); the rate is bracketed by doubling
    or halving, then bisected geometrically until ``upper / rate <= 1 + rel_tol``.

    Args:
        scenario: path, mapping or :class:`ScenarioCfg` (one configuration: no variants,
            or pass ``variant=`` to pick one).
        ttft_ms: TTFT target at ``percentile`` (ms).
        tpot_ms: TPOT target at ``percentile`` (ms).
        goodput_frac: least fraction of requests that meet every target of the scenario's
            ``slo:`` block.
        percentile: ``p99`` (default), ``p95``, ``p90``, ``median`` or ``mean``.
        rel_tol: relative tolerance of the answer (0.05: the true limit lies within 5 %
            above the returned rate).
        overrides: dotted-path overrides applied first.
        bands: also compute the rate's prediction band (``result.band``: low / mid / high and
            the dominant assumption; :mod:`simulator.validation.bands`). Re-runs the
            bisection once per assumption end (about 11 times).
        profile: a stack-fit profile (``servesim calibrate --from``) for the bands.
        **kwargs: see :func:`simulator.capacity.max_sustainable_rate` (bounds, initial rate,
            variant, executor for the probes).

    Returns:
        :class:`simulator.capacity.RateResult` with ``rate_per_s``, ``upper_rate_per_s``,
        the probes as a DataFrame, the SLO that failed first above the limit and the binding
        constraint.
    """
    from servesim.simulator.capacity import SloTarget
    from servesim.simulator.capacity import max_sustainable_rate as _msr

    cfg = load(scenario, overrides)
    slo = SloTarget(ttft_ms=ttft_ms, tpot_ms=tpot_ms, goodput_frac=goodput_frac,
                    percentile=percentile)
    result = _msr(cfg, slo=slo, rel_tol=rel_tol, **kwargs)
    if bands:
        from servesim.simulator.validation.bands import rate_band

        search = {k: v for k, v in kwargs.items() if k in ("min_rate_per_s", "max_rate_per_s", "variant")}
        result.band, result.band_grade = rate_band(cfg, slo, profile=_profile(profile),
                                                   rel_tol=rel_tol, **search)
    return result


def plan_capacity(
    plan: str | Path | Mapping[str, Any] | PlanSpec,
    *,
    executor: ExecutorKind | Executor = "local",
    workers: int | None = None,
    scheduler_address: str | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    bands: bool = False,
    profile: str | Path | None = None,
) -> PlanResult:
    """Plan capacity: for each candidate configuration, the max rate per replica, the
    replicas, GPUs and dollars needed for the target rate, and what binds.

    Args:
        plan: a plan YAML path, its content as a mapping, or a :class:`PlanSpec`.
        executor, workers, scheduler_address: as for :func:`sweep` (candidates run in
            parallel; each candidate's bisection is sequential).
        out: when given, write the plan table, probes and the report (Markdown + HTML with
            figures) there.
        progress: show a progress bar.
        bands: also give the top candidates' max rate and GPU count as ranges
            (``result.bands``: low / mid / high, and the assumption that dominates the width).
        profile: a stack-fit profile (``servesim calibrate --from``) for the bands.

    Returns:
        :class:`simulator.capacity.PlanResult` (``.table`` ranked, ``.probes``,
        ``.curves``, ``.bands``, ``.write(dir)``).
    """
    from servesim.simulator.capacity import plan_capacity as _plan

    result = _plan(plan, executor=executor, workers=workers,
                   scheduler_address=scheduler_address, progress=progress)
    if bands:
        from servesim.simulator.validation.bands import plan_bands

        result.bands = plan_bands(result, profile=_profile(profile))
    if out is not None:
        result.write(out)
    return result


def bands(
    scenario: str | Path | Mapping[str, Any] | ScenarioCfg,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    *,
    profile: str | Path | None = None,
    metrics: Sequence[str] | None = None,
    variant: str | None = None,
) -> pd.DataFrame:
    """Prediction bands of a run's summary metrics.

    Each assumption (GPU compute and bandwidth efficiency, host overhead per step,
    per-request overhead, TP link bandwidth, workload draw) is pushed through the simulation
    to both ends of its range; see :mod:`simulator.validation.bands`.

    Args:
        scenario: path, mapping or :class:`ScenarioCfg` (one configuration, or ``variant``).
        overrides: dotted-path overrides (see :func:`load`).
        profile: a stack-profile file (e.g. from ``servesim calibrate --from``) to run under;
            its values are the nominal ones and the overhead ranges narrow.
        metrics: summary keys (default: throughputs, mean/p99 TTFT and TPOT, mean E2E).
        variant: the variant to band when the scenario has several.

    Returns:
        One row per metric: ``metric``, ``low``, ``mid``, ``high``, ``dominant`` (the
        assumption that makes the band widest), ``grade`` (the GPU's efficiency uncertainty).
    """
    import pandas as pd

    from servesim.simulator.validation.bands import RUN_METRICS, run_bands

    cfg = load(scenario, overrides)
    found, grade = run_bands(cfg, profile=_profile(profile), metrics=tuple(metrics or RUN_METRICS),
                             variant=variant)
    return pd.DataFrame([{"metric": k, "low": b.low, "mid": b.mid, "high": b.high,
                          "dominant": b.dominant, "grade": grade} for k, b in found.items()])


def _profile(profile: str | Path | None) -> Path | None:
    """The checked stack-profile file, or None."""
    from servesim.simulator.validation.stack import check_profile

    return None if profile is None else check_profile(profile)


def _override_strings(overrides: Sequence[str] | Mapping[str, Any]) -> list[str]:
    """``--set``-style strings; a mapping's values are written as JSON (valid YAML, so
    they parse back to exactly the same value, floats included)."""
    import json

    if isinstance(overrides, Mapping):
        return [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
    if isinstance(overrides, str):
        return [overrides]
    return list(overrides)
