"""``servesim calibrate --from``: fit the serving-stack parameters to a user's measurements.

The runs of the given files are sorted by (file, record) and split deterministically: every
third run (the 3rd, 6th, ...) is held out (with two runs, the second); the rest are fitted.
The fit minimises the mean squared log error ``log(simulated / measured)^2`` over the fitted
runs and :data:`FIT_METRICS`, over the four :class:`~.stack.StackParams` within
:data:`BOUNDS`, with a deterministic pattern search (Hooke-Jeeves: coordinate steps,
halved when no step improves; no randomness, so the same files give the same profile).
The held-out runs are then replayed with the fitted parameters and reported separately:
that is the number to trust.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from servesim.simulator.errors import ScenarioError
from servesim.simulator.validation.readers import BenchResult
from servesim.simulator.validation.replay import Comparison, compare_rows, simulate_result
from servesim.simulator.validation.stack import StackParams

if TYPE_CHECKING:
    from servesim.simulator.scenario import ScenarioCfg

__all__ = ["BOUNDS", "FIT_METRICS", "FitResult", "fit_stack", "split_runs"]

#: Metrics the fit matches (those every tool records).
FIT_METRICS = ("output_throughput", "mean_ttft_ms", "median_ttft_ms", "mean_tpot_ms",
               "median_tpot_ms", "mean_e2el_ms")

#: Search box per parameter: (low, high, first step).
BOUNDS: Mapping[str, tuple[float, float, float]] = {
    "step_overhead_s": (0.0, 0.020, 0.001),
    "per_request_overhead_s": (0.0, 0.500, 0.010),
    "compute_eff_scale": (0.3, 1.5, 0.08),
    "bandwidth_eff_scale": (0.3, 1.5, 0.08),
}
_NAMES = tuple(BOUNDS)


@dataclass(frozen=True, slots=True)
class FitResult:
    """Outcome of :func:`fit_stack`.

    Attributes:
        params: the fitted parameters.
        start: where the search started (the defaults).
        fitted: comparisons of the fitted runs, with ``params``.
        held_out: comparisons of the held-out runs, with ``params``.
        held_out_before: the held-out runs with ``start`` (what the fit bought).
        loss: the final fit loss; evaluations: simulations run per fitted run.
    """

    params: StackParams
    start: StackParams
    fitted: tuple[Comparison, ...]
    held_out: tuple[Comparison, ...]
    held_out_before: tuple[Comparison, ...] = ()
    loss: float = math.nan
    evaluations: int = 0
    notes: tuple[str, ...] = field(default=())

    @staticmethod
    def _median_abs(comps: Sequence[Comparison]) -> float:
        errs = sorted(abs(r["error_frac"]) for c in comps for r in c.rows)
        if not errs:
            return math.nan
        mid = len(errs) // 2
        return errs[mid] if len(errs) % 2 else 0.5 * (errs[mid - 1] + errs[mid])

    @property
    def fit_median_abs_error_frac(self) -> float:
        return self._median_abs(self.fitted)

    @property
    def held_out_median_abs_error_frac(self) -> float:
        return self._median_abs(self.held_out)

    @property
    def held_out_before_median_abs_error_frac(self) -> float:
        return self._median_abs(self.held_out_before)

    def report(self) -> dict[str, Any]:
        """The ``fit:`` block of the profile file (plain types)."""
        def r4(x: float) -> float | None:
            return None if math.isnan(x) else round(x, 4)

        return {
            "fitted_runs": [c.result.label for c in self.fitted],
            "held_out_runs": [c.result.label for c in self.held_out],
            "metrics": list(FIT_METRICS),
            "fit_median_abs_error_frac": r4(self.fit_median_abs_error_frac),
            "held_out_median_abs_error_frac": r4(self.held_out_median_abs_error_frac),
            "held_out_median_abs_error_frac_before_fit": r4(self.held_out_before_median_abs_error_frac),
            "loss": r4(self.loss),
            "evaluations": self.evaluations,
            "notes": list(self.notes),
        }


def split_runs(runs: Sequence[BenchResult]) -> tuple[list[BenchResult], list[BenchResult]]:
    """(fitted, held out): sorted by (file, record); every third held out."""
    ordered = sorted(runs, key=lambda r: (str(r.path), r.index))
    if len(ordered) == 1:
        return ordered, []
    if len(ordered) == 2:
        return ordered[:1], ordered[1:]
    held = [r for i, r in enumerate(ordered) if i % 3 == 2]
    return [r for i, r in enumerate(ordered) if i % 3 != 2], held


def fit_stack(runs: Sequence[BenchResult], scenario: ScenarioCfg | Mapping[str, Any], *,
              start: StackParams | None = None, max_requests: int | None = None,
              max_evals: int = 120, progress: Callable[[str], None] | None = None) -> FitResult:
    """Fit the stack parameters to ``runs`` replayed on ``scenario``.

    Args:
        runs: the measured runs (from one or more files).
        scenario: the deployment they were measured on.
        start: starting point (default: the scenario's stack's step overhead, no extra
            per-request overhead, efficiency scales 1).
        max_requests: replay at most this many requests per run (speed).
        max_evals: cap on loss evaluations.
        progress: called with a line of text after each improvement.

    Raises:
        ScenarioError: no runs, or none with a metric the fit uses.
    """
    if not runs:
        raise ScenarioError("calibrate: no benchmark runs given (--from FILE ...)")
    from servesim.hwmodels.stepcost import DEFAULT_STEP_OVERHEAD_S

    fit_runs, held = split_runs(runs)
    usable = [r for r in fit_runs if any(k in r.metrics for k in FIT_METRICS)]
    if not usable:
        raise ScenarioError(
            f"calibrate: none of the fitted runs records any of {', '.join(FIT_METRICS)}"
        )
    if start is None:
        from servesim.simulator.validation.stack import scenario_stack

        data = scenario.model_dump(mode="json") if hasattr(scenario, "model_dump") else dict(scenario)
        stack_step = scenario_stack(data).step_overhead_s
        start = StackParams(step_overhead_s=stack_step if stack_step is not None else DEFAULT_STEP_OVERHEAD_S)
    notes: list[str] = []
    if not held:
        notes.append("one run only: nothing held out; the fit is not checked")

    def params_of(x: Sequence[float]) -> StackParams:
        return start.replace(**dict(zip(_NAMES, x, strict=True)))

    cache: dict[tuple[float, ...], float] = {}

    def loss(x: Sequence[float]) -> float:
        key = tuple(round(v, 7) for v in x)
        if key in cache:
            return cache[key]
        p = params_of(x)
        total, count = 0.0, 0
        for r in usable:
            sim = simulate_result(r, scenario, p, max_requests=max_requests)
            for k in FIT_METRICS:
                if k in r.metrics and k in sim and r.metrics[k] > 0 and sim[k] > 0:
                    total += math.log(sim[k] / r.metrics[k]) ** 2
                    count += 1
        cache[key] = total / count if count else math.inf
        return cache[key]

    x0 = [start.step_overhead_s if start.step_overhead_s is not None else DEFAULT_STEP_OVERHEAD_S,
          start.per_request_overhead_s, start.compute_eff_scale, start.bandwidth_eff_scale]
    x, best = _pattern_search(loss, x0, max_evals=max_evals, progress=progress, params_of=params_of)
    params = params_of(x)
    fitted = tuple(_compare(r, scenario, params, max_requests) for r in fit_runs)
    held_out = tuple(_compare(r, scenario, params, max_requests) for r in held)
    before = tuple(_compare(r, scenario, start, max_requests) for r in held)
    at_bound = [n for n, v in zip(_NAMES, x, strict=True)
                if math.isclose(v, BOUNDS[n][0]) or math.isclose(v, BOUNDS[n][1])]
    if at_bound:
        notes.append(f"at the edge of the search box: {', '.join(at_bound)} (the stack or the "
                     f"scenario may differ from what was measured)")
    return FitResult(params=params, start=start, fitted=fitted, held_out=held_out,
                     held_out_before=before, loss=best, evaluations=len(cache), notes=tuple(notes))


def _compare(r: BenchResult, scenario: Any, p: StackParams, max_requests: int | None) -> Comparison:
    sim = simulate_result(r, scenario, p, max_requests=max_requests)
    return Comparison(result=r, simulated=sim, rows=compare_rows(r.metrics, sim))


def _pattern_search(loss: Callable[[Sequence[float]], float], x0: Sequence[float], *,
                    max_evals: int, progress: Callable[[str], None] | None,
                    params_of: Callable[[Sequence[float]], StackParams]) -> tuple[list[float], float]:
    """Hooke-Jeeves coordinate search inside :data:`BOUNDS` (deterministic)."""
    lows = [BOUNDS[n][0] for n in _NAMES]
    highs = [BOUNDS[n][1] for n in _NAMES]
    steps = [BOUNDS[n][2] for n in _NAMES]
    x = [min(max(v, lo), hi) for v, lo, hi in zip(x0, lows, highs, strict=True)]
    best = loss(x)
    evals = 1
    min_steps = [s / 64 for s in steps]
    while evals < max_evals and any(s > m for s, m in zip(steps, min_steps, strict=True)):
        improved = False
        for i in range(len(x)):
            if steps[i] <= min_steps[i]:
                continue
            for sign in (1.0, -1.0):
                cand = list(x)
                cand[i] = min(max(x[i] + sign * steps[i], lows[i]), highs[i])
                if cand[i] == x[i]:
                    continue
                value = loss(cand)
                evals += 1
                if value < best - 1e-12:
                    x, best, improved = cand, value, True
                    if progress is not None:
                        p = params_of(x)
                        progress(f"  loss {best:.5f}: step {1e3 * (p.step_overhead_s or 0):.2f} ms, "
                                 f"per-request {1e3 * p.per_request_overhead_s:.1f} ms, "
                                 f"compute x{p.compute_eff_scale:.3f}, bandwidth x{p.bandwidth_eff_scale:.3f}")
                    break
                if evals >= max_evals:
                    break
        if not improved:
            steps = [s / 2 for s in steps]
    return x, best
