"""Sweeps, the rate search and the planner on the real engine (small scenarios).

The planner check is worked out by hand from the memory budget: Llama-3.1-8B in fp16 on an
H100 whose ``gpu_memory_utilization`` leaves room for exactly 1500 KV tokens, serving
requests of 1000 prompt + 50 output tokens. A second prompt never fits beside a running
request (2 x 1000 > 1500), so the replica serves one request at a time and its max rate
under a TTFT target is set by the service time of one request: KV capacity binds.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

import servesim as ss
from servesim.simulator.capacity import SloTarget, max_sustainable_rate, plan_capacity, with_rate
from servesim.simulator.errors import ScenarioError
from servesim.simulator.sweep import read_results, run_sweep

ROOT = Path(__file__).resolve().parents[2]
GiB = 1 << 30


def _grid(tiny: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "grid",
        "base": tiny,
        "grid": {
            "kv_cache.manager": ["paged", "radix"],
            "workload.arrivals.rate_per_s": [2.0, 8.0, 32.0],
        },
    }


# ---------------------------------------------------------------------------- run


def test_run_accepts_a_path_a_mapping_and_a_config(tiny: dict[str, Any]) -> None:
    a = ss.run(tiny, overrides={"workload.num_requests": 20})
    b = ss.run(ss.load(tiny, overrides=["workload.num_requests=20"]))
    assert a.variants[0].summary["completed"] == 20
    assert a.variants[0].summary == b.variants[0].summary
    assert {"ttft_ms", "arrival_s"} <= set(a.variants[0].requests.columns)
    c = ss.run(ROOT / "scenarios" / "quickstart.yaml", overrides={"workload.num_requests": 10})
    assert c.variants[0].summary["completed"] == 10


def test_rate_scaling_replays_the_same_stream_faster(tiny: dict[str, Any]) -> None:
    slow = ss.run(with_rate(tiny, 2.0)).variants[0].requests.sort_values("request_id")
    fast = ss.run(with_rate(tiny, 8.0)).variants[0].requests.sort_values("request_id")
    assert list(slow["prompt_tokens"]) == list(fast["prompt_tokens"])
    pd.testing.assert_series_equal(
        (slow["arrival_s"] / 4.0).reset_index(drop=True),
        fast["arrival_s"].reset_index(drop=True),
        check_names=False,
        rtol=1e-12,
    )


# ---------------------------------------------------------------------------- sweeps


def test_sweep_rows_identical_serial_local_and_in_process_dask(tiny: dict[str, Any]) -> None:
    distributed = pytest.importorskip("distributed")
    spec = _grid(tiny)
    serial = run_sweep(spec, executor="serial", progress=False)
    assert len(serial) == 6 and (serial["status"] == "ok").all()
    assert list(serial.columns[:6]) == [
        "point_index", "point_id", "kv_cache.manager", "workload.arrivals.rate_per_s",
        "variant", "status",
    ]
    assert {"p99_ttft_ms", "mean_batch_size", "mem_kv_capacity_tokens", "slo_ttft_ms"} <= set(
        serial.columns
    )
    # Latency grows with load on the same stream.
    paged = serial[serial["kv_cache.manager"] == "paged"]
    assert paged["mean_ttft_ms"].is_monotonic_increasing
    for workers in (1, 2):
        got = run_sweep(spec, executor="local", workers=workers, progress=False)
        pd.testing.assert_frame_equal(got, serial)
    with distributed.LocalCluster(n_workers=2, processes=False, dashboard_address=None) as cluster:
        got = run_sweep(spec, executor="dask", scheduler_address=cluster.scheduler_address,
                        progress=False)
    pd.testing.assert_frame_equal(got, serial)


def test_sweep_rows_identical_on_dask_worker_processes(tiny: dict[str, Any]) -> None:
    pytest.importorskip("distributed")
    spec = _grid(tiny)
    spec["grid"]["workload.arrivals.rate_per_s"] = [2.0, 32.0]
    serial = run_sweep(spec, executor="serial", progress=False)
    # No address: a LocalCluster(n_workers=2, processes=True) is started for the sweep.
    got = run_sweep(spec, executor="dask", workers=2, progress=False)
    pd.testing.assert_frame_equal(got, serial)


def test_failing_points_are_recorded_and_the_rest_run(tiny: dict[str, Any], tmp_path: Path) -> None:
    spec = {
        "base": tiny,
        "points": [
            {"model.name": "llama-3.1-8b"},
            {"model.name": "llama-3.1-70b"},  # 141 GB of fp16 weights on one 80 GB GPU
            {"model.quantization": "fp8", "hardware.gpu": "a100-sxm4-80gb"},  # no fp8 on A100
        ],
    }
    df = run_sweep(spec, executor="serial", out=tmp_path, progress=False)
    assert list(df["status"]) == ["ok", "error", "error"]
    assert "CapacityError" in df.loc[1, "error"] and "not fit" in df.loc[1, "error"]
    assert "fp8" in df.loc[2, "error"]
    pd.testing.assert_frame_equal(read_results(tmp_path), df, check_dtype=False)


def test_a_typo_in_a_dotted_path_fails_before_running(tiny: dict[str, Any]) -> None:
    with pytest.raises(ScenarioError, match="no point is a valid scenario"):
        run_sweep({"base": tiny, "grid": {"scheduler.max_num_seq": [8, 16]}}, progress=False)


def test_resume_with_the_engine_gives_the_fresh_rows(tiny: dict[str, Any], tmp_path: Path) -> None:
    spec = _grid(tiny)
    part = {**spec, "grid": {**spec["grid"], "kv_cache.manager": ["paged"]}}
    run_sweep(part, executor="serial", out=tmp_path, progress=False)
    resumed = run_sweep(spec, executor="serial", out=tmp_path, resume=True, progress=False)
    fresh = run_sweep(spec, executor="serial", progress=False)
    pd.testing.assert_frame_equal(resumed, fresh, check_dtype=False)


def test_cli_sweep_writes_results_and_resumes(tiny: dict[str, Any], tmp_path: Path) -> None:
    import yaml

    from servesim.simulator.cli import app

    (tmp_path / "base.yaml").write_text(yaml.safe_dump(tiny))
    (tmp_path / "sw.yaml").write_text(yaml.safe_dump(
        {"base": "base.yaml", "zip": {"seed": [0, 1], "workload.arrivals.rate_per_s": [2, 4]}}
    ))
    runner = CliRunner()
    args = ["sweep", str(tmp_path / "sw.yaml"), "--executor", "serial", "--out",
            str(tmp_path / "out"), "--no-progress"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "2 points (0 failed)" in res.output
    assert len(read_results(tmp_path / "out")) == 2
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "--resume" in res.output
    res = runner.invoke(app, [*args, "--resume"])
    assert res.exit_code == 0, res.output


# ---------------------------------------------------------------------------- rate search


def test_max_sustainable_rate_brackets_the_limit(tiny: dict[str, Any]) -> None:
    rr = ss.max_sustainable_rate(tiny, ttft_ms=300, tpot_ms=40, rel_tol=0.1)
    assert rr.status == "ok"
    assert rr.upper_rate_per_s / rr.rate_per_s <= 1.1
    probes = rr.probes
    assert probes.loc[probes["rate_per_s"] == rr.rate_per_s, "passed"].all()
    assert not probes.loc[probes["rate_per_s"] == rr.upper_rate_per_s, "passed"].any()
    # Every passing probe is below every failing one (latency grows with rate here).
    assert probes[probes["passed"]]["rate_per_s"].max() < probes[~probes["passed"]][
        "rate_per_s"].min()
    assert rr.limiting_slo in ("ttft", "tpot")
    assert rr.binding_constraint in ("KV capacity", "compute", "weight bandwidth",
                                     "KV bandwidth", "communication", "host overhead")


def test_an_slo_below_the_unloaded_latency_is_unattainable(tiny: dict[str, Any]) -> None:
    rr = max_sustainable_rate(tiny, slo=SloTarget(tpot_ms=0.01), min_rate_per_s=0.5)
    assert rr.status == "unattainable" and rr.rate_per_s == 0.0
    assert rr.binding_constraint == "TPOT SLO"


# ---------------------------------------------------------------------------- planner


# Llama-3.1-8B (config.json): 32 layers, hidden 4096, 32 heads, 8 KV heads of 128, MLP
# 14336, vocabulary 128256, untied embeddings. fp16 = 2 bytes per weight.
_PARAMS = (
    2 * 128256 * 4096  # embedding + LM head
    + 32 * (
        4096 * 4096 * 2  # q and o projections
        + 4096 * 1024 * 2  # k and v projections (8 heads x 128)
        + 3 * 4096 * 14336  # gate, up, down
        + 2 * 4096  # two RMSNorm weights
    )
    + 4096  # final norm
)
WEIGHT_BYTES = 2 * _PARAMS  # 16.06 GB
KV_BYTES_PER_TOKEN = 32 * 8 * 128 * 2 * 2  # layers x KV heads x dim x (K, V) x 2 bytes
H100_HBM_BYTES = 80 * GiB
RESERVE_BYTES = 1 * GiB  # the engine's default for a one-GPU replica
KV_TOKENS = 1500


def _kv_bound_scenario(activation_bytes: float) -> dict[str, Any]:
    """One request at a time: room for 1500 KV tokens, requests of 1000 + 50 tokens."""
    util = (WEIGHT_BYTES + activation_bytes + RESERVE_BYTES
            + (KV_TOKENS + 0.5) * KV_BYTES_PER_TOKEN) / H100_HBM_BYTES
    return {
        "name": "kv-bound",
        "hardware": {"gpu": "h100-sxm", "gpu_memory_utilization": util},
        "model": {"name": "llama-3.1-8b", "quantization": "fp16", "kv_cache_dtype": "fp16",
                  "max_model_len_tokens": 1100},
        "kv_cache": {"manager": "paged", "block_size_tokens": 16},
        "scheduler": {"policy": "vllm", "max_num_batched_tokens": 2048},
        "engine": {"progress": False},
        "workload": {
            "num_requests": 40,
            "arrivals": {"process": "constant", "rate_per_s": 0.1},
            "lengths": {"prompt": {"dist": "fixed", "tokens": 1000},
                        "output": {"dist": "fixed", "tokens": 50}},
        },
    }


def test_planner_matches_the_hand_worked_kv_bound_case(tmp_path: Path) -> None:
    probe = ss.run(_kv_bound_scenario(0.0) | {"hardware": {"gpu": "h100-sxm"}},
                   overrides={"workload.num_requests": 1})
    budget = probe.variants[0].summary["memory_budget"]
    assert budget["weight_bytes"] == pytest.approx(WEIGHT_BYTES, rel=1e-9)
    assert budget["kv_bytes_per_token"] == KV_BYTES_PER_TOKEN
    assert budget["reserve_bytes"] == RESERVE_BYTES
    scenario = _kv_bound_scenario(budget["activation_bytes"])

    # Unloaded: arrivals 10 s apart, every request alone; S = its end-to-end latency.
    alone = ss.run(scenario).variants[0]
    assert alone.summary["memory_budget"]["kv_capacity_tokens"] == KV_TOKENS
    ttft0_ms, s_ms = alone.summary["mean_ttft_ms"], alone.summary["mean_e2el_ms"]
    assert alone.summary["std_ttft_ms"] == pytest.approx(0.0, abs=1e-6)
    # Above 1/S, request k waits k (S - 1/r) more; the p99 of 40 TTFTs (numpy's linear
    # interpolation: index 0.99 x 39 = 38.61) crosses 1.5 x TTFT0 at
    #     r_max = 1 / (S - 0.5 TTFT0 / 38.61).
    r_max = 1.0 / ((s_ms - 0.5 * ttft0_ms / 38.61) / 1000.0)
    tol = 0.02
    rr = ss.max_sustainable_rate(scenario, ttft_ms=1.5 * ttft0_ms, rel_tol=tol)
    assert r_max / (1 + tol) * (1 - 1e-6) <= rr.rate_per_s <= r_max * (1 + 1e-6)
    assert rr.binding_constraint == "KV capacity" and rr.limiting_slo == "ttft"
    assert rr.summary["mean_batch_size"] == pytest.approx(1.0, abs=1e-6)

    # The planner: replicas = ceil(target / max rate); GPUs, dollars follow.
    target = 10.0
    plan = {
        "name": "kv-bound-plan",
        "base": scenario,
        "target_rate_per_s": target,
        "slo": {"ttft_ms": 1.5 * ttft0_ms},
        "prices": {"h100-sxm": 3.0},
        "candidates": {"points": [
            {"model.name": "llama-3.1-8b"},
            {"model.name": "llama-3.1-70b", "model.max_model_len_tokens": 1100},
        ]},
        "search": {"rel_tol": tol},
        "report": {"top_k": 1, "curve_fracs": [0.5, 1.0, 1.5]},
    }
    result = plan_capacity(plan, executor="serial", progress=False)
    table = result.table
    best, bad = table.iloc[0], table.iloc[1]
    assert best["rank"] == 1 and best["max_rate_per_replica"] == pytest.approx(rr.rate_per_s)
    replicas = math.ceil(target / rr.rate_per_s)
    assert best["replicas"] == replicas and best["num_gpus"] == replicas
    assert best["usd_per_hour"] == pytest.approx(3.0 * replicas)
    # $ per million output tokens: 50 output tokens per request at 10 requests/s.
    assert best["usd_per_million_output_tokens"] == pytest.approx(
        3.0 * replicas / (target * 50 * 3600) * 1e6
    )
    assert best["binding_constraint"] == "KV capacity"
    assert best["at_max_mem_kv_capacity_tokens"] == KV_TOKENS
    assert bad["status"] == "infeasible" and pd.isna(bad["rank"])
    assert "not fit" in bad["error"]
    out = result.write(tmp_path / "plan")
    md = (out / "report.md").read_text()
    assert "KV capacity" in md and "infeasible" in md
    assert (out / "report.html").read_text().count('<div class="plot" data-spec=') >= 2
    assert {"pareto.png", "ttft_vs_rate.png", "plan.csv"} <= {p.name for p in out.iterdir()}
    assert len(result.curves) == 3


def test_cli_plan_writes_the_report(tiny: dict[str, Any], tmp_path: Path) -> None:
    import yaml

    from servesim.simulator.cli import app

    plan = {
        "base": copy.deepcopy(tiny) | {"workload": tiny["workload"] | {"num_requests": 40}},
        "target_rate_per_s": 20,
        "slo": {"ttft_ms": 400, "tpot_ms": 40},
        "prices": str(ROOT / "examples" / "prices.yaml"),
        "candidates": {"grid": {"hardware.gpu": ["h100-sxm", "a100-sxm4-80gb"]}},
        "search": {"rel_tol": 0.2},
        "report": {"top_k": 1, "curve_fracs": [1.0]},
    }
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
    res = CliRunner().invoke(app, ["plan", str(tmp_path / "plan.yaml"), "--out",
                                   str(tmp_path / "out"), "--executor", "serial",
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    md = (tmp_path / "out" / "report.md").read_text()
    assert "Ranked candidates" in md and "illustrative" in md.lower()
    table = pd.read_csv(tmp_path / "out" / "plan.csv")
    assert list(table["rank"]) == [1, 2]
    assert table["usd_per_hour"].is_monotonic_increasing
