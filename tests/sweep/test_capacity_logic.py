"""The rate search and the planner's arithmetic, with the engine replaced by a formula.

``_simulate`` is swapped for an M/M/1-like stand-in whose latency is known in closed form,
so the bisection's tolerance, bracketing, edge statuses, binding-constraint rules and the
planner's replicas / GPUs / dollars can be checked exactly. The real engine runs through the
same code in ``test_engine_sweeps.py``.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from servesim.simulator import capacity
from servesim.simulator.capacity import SloTarget, max_sustainable_rate, plan_capacity, with_rate
from servesim.simulator.errors import CapacityError, ScenarioError

#: Service capacity of one replica per GPU name (requests/s).
MU = {"h100-sxm": 10.0, "a100-sxm4-80gb": 4.0}


def fake_simulate(data: dict[str, Any]) -> dict[str, Any]:
    """p99 TTFT = 100 ms / (1 - rho); TPOT = 20 ms + 2 ms per req/s; 250 output tokens."""
    if data["model"]["name"] == "llama-3.1-70b":
        raise CapacityError("llama-3.1-70b (fp16) does not fit on h100-sxm: weights 131 GiB")
    rate = data["workload"]["arrivals"]["rate_per_s"]
    mu = MU[data["hardware"]["gpu"]] * data["hardware"]["tensor_parallel"]
    rho = rate / mu
    ttft = 100.0 / (1.0 - rho) if rho < 1 else math.inf
    return {
        "completed": 100, "request_throughput": rate, "output_throughput": 250.0 * rate,
        "total_token_throughput": 1250.0 * rate, "p99_ttft_ms": ttft, "mean_tpot_ms": 20 + 2 * rate,
        "p99_tpot_ms": 20.0 + 2.0 * rate, "goodput_frac": max(0.0, 1.0 - rho),
        "num_preemptions": 3 if rho > 0.9 else 0, "kv_free_frac": 0.5, "kv_capacity_tokens": 1e5,
        "mean_batch_size": 8.0, "step_time_compute_frac": 0.3,
        "step_time_weight_read_frac": 0.6, "step_time_kv_read_frac": 0.1,
        "config": {"max_num_seqs": 256},
        "memory_budget": {"weight_bytes": 16e9, "usable_bytes": 77e9, "kv_capacity_tokens": 1e5},
    }


@pytest.fixture(autouse=True)
def _fake_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capacity, "_simulate", fake_simulate)


def test_bisection_lands_within_the_tolerance_below_the_limit(tiny: dict[str, Any]) -> None:
    # 100 / (1 - r / 10) <= 200  <=>  r <= 5.
    for tol in (0.1, 0.01):
        rr = max_sustainable_rate(tiny, slo=SloTarget(ttft_ms=200.0), rel_tol=tol)
        assert rr.status == "ok"
        assert 5.0 / (1 + tol) <= rr.rate_per_s <= 5.0 < rr.upper_rate_per_s
        assert rr.upper_rate_per_s / rr.rate_per_s <= 1 + tol
        assert rr.limiting_slo == "ttft"


def test_the_search_brackets_from_above_and_below(tiny: dict[str, Any]) -> None:
    low = max_sustainable_rate(tiny, slo=SloTarget(ttft_ms=200.0), initial_rate_per_s=0.05)
    high = max_sustainable_rate(tiny, slo=SloTarget(ttft_ms=200.0), initial_rate_per_s=500)
    for rr in (low, high):
        assert 5.0 / 1.05 <= rr.rate_per_s <= 5.0
    assert list(high.probes["rate_per_s"][:3]) == [500.0, 250.0, 125.0]


def test_the_tightest_slo_binds_and_goodput_counts(tiny: dict[str, Any]) -> None:
    # TPOT 20 + 2 r <= 28 <=> r <= 4, tighter than TTFT's 5.
    rr = max_sustainable_rate(tiny, slo=SloTarget(ttft_ms=200.0, tpot_ms=28.0), rel_tol=0.01)
    assert 4.0 / 1.01 <= rr.rate_per_s <= 4.0 and rr.limiting_slo == "tpot"
    # goodput 1 - r / 10 >= 0.7 <=> r <= 3.
    rr = max_sustainable_rate(tiny, slo=SloTarget(goodput_frac=0.7), rel_tol=0.01)
    assert 3.0 / 1.01 <= rr.rate_per_s <= 3.0 and rr.limiting_slo == "goodput"


def test_unattainable_and_above_max(tiny: dict[str, Any]) -> None:
    rr = max_sustainable_rate(tiny, slo=SloTarget(tpot_ms=10.0), min_rate_per_s=0.1)
    assert rr.status == "unattainable" and rr.rate_per_s == 0.0
    assert rr.binding_constraint == "TPOT SLO"
    rr = max_sustainable_rate(tiny, slo=SloTarget(ttft_ms=1e9), max_rate_per_s=8.0)
    assert rr.status == "above_max" and rr.rate_per_s == 8.0 and rr.upper_rate_per_s == math.inf


def test_binding_constraint_rules(tiny: dict[str, Any]) -> None:
    # Failing near rho = 1 with preemptions -> KV capacity.
    rr = max_sustainable_rate(tiny, slo=SloTarget(ttft_ms=2000.0), rel_tol=0.01)
    assert rr.binding_constraint == "KV capacity" and "3 preemptions" in rr.binding_reason
    # Failing at low rho, no preemptions: the largest step-time share (weight reads).
    rr = max_sustainable_rate(tiny, slo=SloTarget(ttft_ms=150.0), rel_tol=0.01)
    assert rr.binding_constraint == "weight bandwidth"
    assert rr.binding_reason.endswith("weight bandwidth 60%, compute 30%, KV bandwidth 10%")


def test_with_rate_scales_each_process_to_the_mean_rate() -> None:
    def arr(a: dict[str, Any]) -> dict[str, Any]:
        return with_rate({"workload": {"arrivals": a}}, 6.0)["workload"]["arrivals"]

    assert arr({"process": "gamma", "rate_per_s": 1, "cv": 2})["rate_per_s"] == 6.0
    assert arr({"process": "onoff", "rate_per_s": 1, "on_s": 1, "off_s": 2})["rate_per_s"] == 18.0
    assert arr({"process": "piecewise", "rates_per_s": [1, 3], "durations_s": [1, 1]})[
        "rates_per_s"] == [3.0, 9.0]
    trace = with_rate({"workload": {"trace": {"path": "t.csv", "time_scale": 2}}}, 6.0)
    assert trace["workload"]["trace"] == {"path": "t.csv", "target_rate_per_s": 6.0}
    with pytest.raises(ScenarioError, match="no arrival rate to scale"):
        arr({"process": "closed_loop", "num_clients": 4})


def test_planner_arithmetic_and_ranking(tiny: dict[str, Any], tmp_path: Any) -> None:
    plan = {
        "name": "p",
        "base": tiny,
        "target_rate_per_s": 12.0,
        "slo": {"ttft_ms": 200.0},
        "prices": {"h100-sxm": 3.0, "a100-sxm4-80gb": 1.0},
        "candidates": {"points": [
            {"hardware.gpu": "h100-sxm"},                      # 5 req/s -> 3 replicas, $9
            {"hardware.gpu": "a100-sxm4-80gb"},                # 2 req/s -> 6 replicas, $6
            {"hardware.gpu": "h100-sxm", "hardware.tensor_parallel": 2},  # 10 -> 2 x 2 GPUs, $12
            {"model.name": "llama-3.1-70b"},                   # does not fit
        ]},
        "search": {"rel_tol": 0.001},
        "report": {"top_k": 2, "curve_fracs": [0.5, 1.0]},
    }
    result = plan_capacity(plan, executor="serial", progress=False)
    t = result.table
    assert list(t["point_index"]) == [1, 0, 2, 3]
    assert list(t["rank"][:3]) == [1, 2, 3] and math.isnan(t["rank"][3])
    assert list(t["replicas"][:3]) == [6, 3, 2]
    assert list(t["num_gpus"][:3]) == [6, 3, 4]
    assert list(t["usd_per_hour"][:3]) == [6.0, 9.0, 12.0]
    # 12 req/s x 250 output tokens = 3000 tokens/s = 10.8 M tokens/hour.
    assert t["usd_per_million_output_tokens"][0] == pytest.approx(6.0 / 10.8)
    assert t.loc[3, "status"] == "infeasible" and "does not fit" in t.loc[3, "error"]
    assert set(result.curves["point_index"]) == {0, 1} and len(result.curves) == 4
    out = result.write(tmp_path)
    assert "infeasible" in (out / "report.md").read_text()


def test_a_gpu_without_a_price_stops_the_plan(tiny: dict[str, Any]) -> None:
    with pytest.raises(ScenarioError, match="no price for GPU"):
        plan_capacity({"base": tiny, "target_rate_per_s": 1, "slo": {"ttft_ms": 1},
                       "prices": {"h100-sxm": 1.0},
                       "candidates": {"grid": {"hardware.gpu": ["h100-sxm", "l4"]}}},
                      executor="serial", progress=False)
