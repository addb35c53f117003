"""Replay a measured benchmark run in the simulator and compare, metric by metric.

The load of a :class:`~.readers.BenchResult` becomes the scenario's workload:

* lengths: per request when the file has them (a length-only trace, in request order),
  else the recorded means (fixed, or normal with the recorded standard deviation);
* arrivals: ``max_concurrency`` -> closed-loop clients (``vllm bench serve
  --max-concurrency``, GenAI-Perf/AIPerf ``--concurrency``); a finite rate -> Poisson, or
  Gamma with CV 1/sqrt(burstiness) (vLLM's and SGLang's generator); an infinite rate with no
  cap -> everything at t = 0 (``offline``);
* request count: as sent.

Everything else (model, GPU, parallelism, quantization, scheduler, KV cache) comes from the
user's scenario. The stack parameters of :mod:`.stack` are applied on top.

The simulated metrics are computed from the per-request table the same way the tools compute
theirs (TPOT = (E2E - TTFT) / (output - 1) over requests with more than one output token;
percentiles with numpy's linear interpolation), after adding the per-request overhead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from servesim.simulator.validation.readers import METRICS, BenchResult
from servesim.simulator.validation.stack import (
    StackParams,
    apply_params,
    request_overhead_total_s,
    temp_workdir,
    with_profile,
)

if TYPE_CHECKING:
    import pandas as pd

    from servesim.simulator.scenario import ScenarioCfg

#: No stack adjustment (the step-cost defaults).
DEFAULT_PARAMS = StackParams()

__all__ = ["DEFAULT_PARAMS", "Comparison", "compare_result", "replay_data", "simulate_result", "simulated_metrics"]


def replay_data(result: BenchResult, scenario: ScenarioCfg | Mapping[str, Any], workdir: Path,
                *, max_requests: int | None = None, seed: int | None = None) -> dict[str, Any]:
    """The scenario mapping whose workload is ``result``'s load.

    Args:
        result: the measured run.
        scenario: the deployment (a validated scenario or its mapping); one configuration.
        workdir: where the per-request length file is written.
        max_requests: replay at most this many requests (quick runs).
        seed: replaces the scenario's seed (workload draws).
    """
    data = _plain(scenario)
    n = result.num_requests if max_requests is None else min(result.num_requests, max_requests)
    workload: dict[str, Any] = {"name": f"replay:{result.label}"}
    if result.input_lens is not None and result.output_lens is not None:
        k = min(n, len(result.input_lens))
        csv = workdir / f"lengths-{result.index}.csv"
        rows = [f"{p},{max(o, 1)}" for p, o in zip(result.input_lens[:k], result.output_lens[:k], strict=True)]
        csv.write_text("num_prefill_tokens,num_decode_tokens\n" + "\n".join(rows) + "\n")
        workload["trace"] = {"path": str(csv), "format": "lengths"}
        workload["num_requests"] = k
    else:
        workload["lengths"] = {
            "prompt": _length(result.mean_input_tokens, result.input_std_tokens),
            "output": _length(result.mean_output_tokens, result.output_std_tokens),
        }
        workload["num_requests"] = n
    workload["arrivals"] = _arrivals(result)
    data["workload"] = workload
    data["variants"] = []
    data["engine"] = {**dict(data.get("engine") or {}), "progress": False}
    if seed is not None:
        data["seed"] = int(seed)
    return data


def _plain(scenario: ScenarioCfg | Mapping[str, Any]) -> dict[str, Any]:
    from servesim.simulator.scenario import ScenarioCfg

    if isinstance(scenario, ScenarioCfg):
        data = scenario.model_dump(mode="json")
    else:
        data = dict(scenario)
    data.pop("quick", None)
    return data


def _length(mean: float, std: float) -> dict[str, Any]:
    tokens = max(1, round(mean))
    if not std or math.isnan(std) or std < 0.5:
        return {"dist": "fixed", "tokens": tokens}
    return {"dist": "normal", "mean_tokens": float(mean), "std_tokens": float(std)}


def _arrivals(result: BenchResult, think_time_s: float = 0.0) -> dict[str, Any]:
    if result.max_concurrency is not None:
        return {"process": "closed_loop", "num_clients": int(result.max_concurrency),
                "think_time_s": think_time_s}
    if math.isinf(result.request_rate_per_s):
        return {"process": "offline"}
    if result.burstiness == 1.0:
        return {"process": "poisson", "rate_per_s": result.request_rate_per_s}
    return {"process": "gamma", "rate_per_s": result.request_rate_per_s,
            "cv": 1.0 / math.sqrt(result.burstiness)}


def simulate_result(result: BenchResult, scenario: ScenarioCfg | Mapping[str, Any],
                    params: StackParams = DEFAULT_PARAMS, *, max_requests: int | None = None,
                    seed: int | None = None, profile: str | Path | None = None) -> dict[str, float]:
    """Replay ``result``'s load on ``scenario`` with ``params``; the simulated metrics.

    ``profile``: a stack-profile file (``servesim calibrate --from``) the scenario runs under
    (``engine.profile``, with its GPU file when it has one).

    Raises:
        ScenarioError / CapacityError: the scenario is invalid or the model does not fit.
    """
    from servesim.simulator.build import run_scenario
    from servesim.simulator.scenario import scenario_from_dict

    with temp_workdir() as tmp:
        workdir = Path(tmp)
        data = replay_data(result, scenario, workdir, max_requests=max_requests, seed=seed)
        if profile is not None:
            data = with_profile(data, profile)
        if result.max_concurrency is not None:
            # A closed-loop client sends its next request only after the last response, so
            # the time a request spends outside the engine loop is also the gap between them.
            gap = params.per_request_overhead_s + request_overhead_total_s(data, result.mean_input_tokens)
            if gap > 0:
                data["workload"]["arrivals"] = _arrivals(result, gap)
        data = apply_params(data, params, workdir)
        results = run_scenario(scenario_from_dict(data))
        variant = results.variants[0]
        return simulated_metrics(variant.requests, variant.summary, params.per_request_overhead_s)


def simulated_metrics(requests: pd.DataFrame, summary: Mapping[str, Any],
                      per_request_overhead_s: float = 0.0) -> dict[str, float]:
    """The compared metrics from a run's request table, with the per-request overhead added.

    Args:
        requests: the run's per-request table (``ttft_ms``, ``e2el_ms``, ``output_tokens``,
            ``status``).
        summary: the run's summary (ITL statistics and the duration come from it).
        per_request_overhead_s: added to every request's TTFT and E2E latency.
    """
    import numpy as np

    done = requests[requests["status"] == "completed"] if "status" in requests else requests
    add_ms = 1000.0 * per_request_overhead_s
    ttft = done["ttft_ms"].to_numpy(dtype=float) + add_ms
    e2el = done["e2el_ms"].to_numpy(dtype=float) + add_ms
    out_tok = done["output_tokens"].to_numpy(dtype=float)
    multi = out_tok > 1
    tpot = (e2el[multi] - ttft[multi]) / (out_tok[multi] - 1)
    m: dict[str, float] = {}
    for name, values in (("ttft", ttft), ("tpot", tpot), ("e2el", e2el)):
        values = values[np.isfinite(values)]
        if len(values):
            m[f"mean_{name}_ms"] = float(values.mean())
            m[f"median_{name}_ms"] = float(np.median(values))
            m[f"p99_{name}_ms"] = float(np.percentile(values, 99))
    for key in ("mean_itl_ms", "median_itl_ms", "p99_itl_ms"):
        if key in summary and summary[key] is not None and math.isfinite(float(summary[key])):
            m[key] = float(summary[key])
    # The client's clock runs from the first send to the last response: the engine's span
    # plus the overhead of the last request.
    duration = float(summary.get("duration") or 0.0) + per_request_overhead_s
    if duration > 0 and len(done):
        m["request_throughput"] = len(done) / duration
        m["output_throughput"] = float(out_tok.sum()) / duration
        m["total_token_throughput"] = float(out_tok.sum() + done["prompt_tokens"].sum()) / duration
    return m


@dataclass(frozen=True, slots=True)
class Comparison:
    """Measured vs simulated for one run.

    Attributes:
        result: the measured run.
        simulated: the simulated metrics.
        rows: one per metric present in both: ``metric``, ``label``, ``unit``,
            ``measured``, ``simulated``, ``error_frac`` ((sim - meas) / meas).
    """

    result: BenchResult
    simulated: Mapping[str, float]
    rows: tuple[Mapping[str, Any], ...]

    @property
    def median_abs_error_frac(self) -> float:
        errs = sorted(abs(r["error_frac"]) for r in self.rows)
        if not errs:
            return math.nan
        mid = len(errs) // 2
        return errs[mid] if len(errs) % 2 else 0.5 * (errs[mid - 1] + errs[mid])

    def to_dict(self) -> dict[str, Any]:
        r = self.result
        return {
            "file": str(r.path), "record": r.index, "tool": r.tool, "model_id": r.model_id,
            "load": {"num_requests": r.num_requests,
                     "request_rate_per_s": None if math.isinf(r.request_rate_per_s) else r.request_rate_per_s,
                     "burstiness": r.burstiness, "max_concurrency": r.max_concurrency,
                     "per_request_lengths": r.input_lens is not None,
                     "mean_input_tokens": r.mean_input_tokens,
                     "mean_output_tokens": r.mean_output_tokens},
            "metrics": [dict(row) for row in self.rows],
            "median_abs_error_frac": self.median_abs_error_frac,
        }


def compare_rows(measured: Mapping[str, float], simulated: Mapping[str, float],
                 metrics: Sequence[str] | None = None) -> tuple[dict[str, Any], ...]:
    """One row per metric measured and simulated (in :data:`METRICS` order)."""
    rows = []
    for key in metrics or METRICS:
        if key not in measured or key not in simulated:
            continue
        meas, sim = float(measured[key]), float(simulated[key])
        if not (math.isfinite(meas) and math.isfinite(sim)) or meas <= 0:
            continue
        label, unit = METRICS[key]
        rows.append({"metric": key, "label": label, "unit": unit, "measured": meas,
                     "simulated": sim, "error_frac": (sim - meas) / meas})
    return tuple(rows)


def compare_result(result: BenchResult, scenario: ScenarioCfg | Mapping[str, Any],
                   params: StackParams = DEFAULT_PARAMS, *, max_requests: int | None = None,
                   metrics: Sequence[str] | None = None,
                   profile: str | Path | None = None) -> Comparison:
    """Replay and compare one measured run."""
    sim = simulate_result(result, scenario, params, max_requests=max_requests, profile=profile)
    return Comparison(result=result, simulated=sim, rows=compare_rows(result.metrics, sim, metrics))
