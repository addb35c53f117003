"""``servesim validate`` (the shipped published cases) and the prediction bands
(``--bands`` on validate, run summaries and the planner)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from servesim.simulator.cli import app
from servesim.simulator.validation.bands import band_factors, propagate
from servesim.simulator.validation.cases import case_band, load_cases, run_case, run_cases
from servesim.simulator.validation.stack import StackParams

BENCH = Path(__file__).resolve().parents[1] / "data" / "bench"
# ../shared/validation-sources.md: the only sources end-to-end cases may come from.
ALLOWED_SOURCES = ("Vidur", "Sarathi-Serve", "DistServe", "Splitwise", "Orca", "Llumnix",
                   "Mooncake", "NanoFlow", "FlashInfer", "DeepSpeed-FastGen", "LMDeploy documentation",
                   "Hugging Face TGI", "vLLM project blog", "DeepSeek", "LMSYS blog", "EAGLE",
                   "Medusa", "NVIDIA technical blog")


def invoke(*args: Any) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def test_case_table_has_at_least_25_cited_cases_from_allowed_sources() -> None:
    cases = load_cases()
    assert len(cases) >= 25
    assert len({c.id for c in cases}) == len(cases)
    for c in cases:
        assert c.source.startswith(ALLOWED_SOURCES), c.source
        assert c.url.startswith("https://") and c.where and c.reference > 0
        assert c.scenario["hardware"]["gpu"] and c.scenario["model"]["name"]


def test_validate_quick_json_reports_every_case_median_and_worst() -> None:
    result = invoke("validate", "--quick", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    rows = doc["cases"]
    assert doc["num_cases"] == len(rows) == len(load_cases())
    errs = [abs(r["error_frac"]) for r in rows]
    for r in rows:
        assert math.isfinite(r["predicted"]) and r["predicted"] > 0
        assert r["error_frac"] == pytest.approx((r["predicted"] - r["reference"]) / r["reference"])
    errs_sorted = sorted(errs)
    n = len(errs_sorted)
    median = errs_sorted[n // 2] if n % 2 else 0.5 * (errs_sorted[n // 2 - 1] + errs_sorted[n // 2])
    assert doc["median_abs_error_frac"] == pytest.approx(median)
    assert abs(doc["worst"]["error_frac"]) == pytest.approx(max(errs))
    assert doc["within_10pct"] == sum(e <= 0.10 for e in errs)
    # what docs/validation.md states for this table, with the simulator's defaults
    assert doc["median_abs_error_frac"] < 0.15


def test_validate_is_deterministic() -> None:
    cases = load_cases()[:3]
    assert run_cases(cases, quick=True).equals(run_cases(cases, quick=True))


def test_validate_table_output_and_errors(tmp_path: Path) -> None:
    first = load_cases()[0].id
    result = invoke("validate", "--quick", "--only", first)
    assert result.exit_code == 0, result.output
    assert first in result.output and "median |error|" in result.output
    bad = invoke("validate", "--only", "no-such-case")
    assert bad.exit_code == 2 and "unknown case id" in bad.output
    table = tmp_path / "cases.yaml"
    table.write_text(yaml.safe_dump({"cases": [{"id": "x", "metric": "speed"}]}))
    bad = invoke("validate", "--cases", table)
    assert bad.exit_code == 2 and "field 'source' is missing" in bad.output


def test_table_spans_sources_gpus_and_load_kinds() -> None:
    """Issue #13 section 4: not one engine on one GPU; H100/H200, FP8, a vLLM front end under a
    concurrency load, and at least three sources besides the LMDeploy documentation."""
    cases = load_cases()
    families = {c.source.split(",")[0].split(" (")[0] for c in cases}
    assert len(families - {"LMDeploy documentation"}) >= 3, families
    gpus = {c.scenario["hardware"]["gpu"] for c in cases}
    assert {"h100-sxm", "h200", "a100-sxm4-80gb"} <= gpus
    assert any(c.scenario["model"].get("quantization") == "fp8" for c in cases)
    assert any(c.scenario["model"].get("kv_cache_dtype") == "fp8" for c in cases)
    assert any(c.load["kind"] == "concurrency" and c.stack == "vllm" for c in cases)
    for c in cases:  # every non-LMDeploy case says where its number stands
        assert c.where and (c.source.startswith("LMDeploy") or c.notes or "splitwise" in c.url)


def _table(tmp_path: Path, load: dict[str, Any], metric: str = "output_throughput") -> Path:
    table = tmp_path / "cases.yaml"
    table.write_text(yaml.safe_dump({"cases": [{
        "id": "x", "source": "vLLM project blog", "url": "https://example.org", "where": "t",
        "stack": "vllm", "scenario": {"hardware": {"gpu": "h100-sxm"}, "model": {"name": "llama-3.1-8b"}},
        "load": load, "metric": metric, "reference": 1.0}]}))
    return table


def test_concurrency_load_runs_closed_loop_clients_with_vllm_range_ratio(tmp_path: Path) -> None:
    from servesim.simulator.validation.cases import case_scenario

    load = {"kind": "concurrency", "clients": 8, "num_requests": 40, "prompt_tokens": 1000,
            "output_tokens": 100, "range_ratio": 0.15}
    (case,) = load_cases(_table(tmp_path, load, "median_itl_ms"))
    wl = case_scenario(case)["workload"]
    assert wl["arrivals"] == {"process": "closed_loop", "num_clients": 8}
    assert wl["num_requests"] == 40
    # vllm bench serve --random-range-ratio 0.15: uniform in [L (1 - r), L (1 + r)]
    assert wl["lengths"]["prompt"] == {"dist": "uniform", "min_tokens": 850, "max_tokens": 1150}
    assert wl["lengths"]["output"] == {"dist": "uniform", "min_tokens": 85, "max_tokens": 115}
    assert case_scenario(case, quick=True)["workload"]["num_requests"] == 40
    value = run_case(case, quick=True)
    assert math.isfinite(value) and value > 0  # median ITL comes from the run summary
    fixed = dict(load, range_ratio=0)
    (case0,) = load_cases(_table(tmp_path, fixed))
    assert case_scenario(case0)["workload"]["lengths"]["prompt"] == {"dist": "fixed", "tokens": 1000}


@pytest.mark.parametrize(("load", "message"), [
    ({"kind": "concurrency", "num_requests": 4, "prompt_tokens": 8, "output_tokens": 8},
     "load.clients is missing"),
    ({"kind": "concurrency", "clients": 0, "num_requests": 4, "prompt_tokens": 8, "output_tokens": 8},
     "load.clients 0 must be a whole number >= 1"),
    ({"kind": "poisson", "rate_per_s": -1, "num_requests": 4, "prompt_tokens": 8, "output_tokens": 8},
     "load.rate_per_s -1 must be a finite number > 0"),
    ({"kind": "concurrency", "clients": 2, "num_requests": 4, "prompt_tokens": 8, "output_tokens": 8,
      "range_ratio": 1.5}, "load.range_ratio 1.5 must be a number in [0, 1)"),
    ({"kind": "static", "batch": 2, "prompt_tokens": 8, "output_tokens": 8, "range_ratio": 0.1},
     "not valid for kind static"),
])
def test_bad_case_loads_are_one_line_errors(tmp_path: Path, load: dict[str, Any], message: str) -> None:
    bad = invoke("validate", "--cases", _table(tmp_path, load))
    assert bad.exit_code == 2 and message in bad.output, bad.output
    assert "Traceback" not in bad.output


def _case(case_id: str) -> Any:
    return next(c for c in load_cases() if c.id == case_id)


def test_band_brackets_the_nominal_prediction_and_names_the_widest_assumption() -> None:
    case = _case("lmdeploy-llama2-7b-b1-p1-o128")
    band = case_band(case, quick=True)
    assert band.mid == pytest.approx(run_case(case, quick=True))
    assert band.low < band.mid < band.high
    assert band.dominant == max(band.contributions, key=lambda k: sum(band.contributions[k]))
    # batch-1 decode of a 7B model: weight reads and the per-step host time set the speed;
    # the per-request overhead does not touch a throughput that is measured in steps
    assert band.dominant in ("host overhead per step", "GPU memory-bandwidth efficiency")
    assert case_band(case, quick=True) == band  # deterministic


def test_multi_gpu_band_varies_the_tp_link() -> None:
    case = _case("lmdeploy-llama2-70b-tp4-b64-p1-o128")
    band = case_band(case, quick=True)
    assert "TP communication" in band.contributions
    single = case_band(_case("lmdeploy-llama2-7b-b64-p1-o128"), quick=True)
    assert "TP communication" not in single.contributions


def test_fitted_profile_narrows_the_overhead_ranges() -> None:
    from servesim.hwmodels.stacks import get_stack

    vllm = get_stack("vllm")
    wide, _ = band_factors("h100-sxm", StackParams(), has_profile=False, stack=vllm)
    narrow, _ = band_factors("h100-sxm", StackParams(), has_profile=True, stack=vllm)
    w = {f.name: f for f in wide}
    n = {f.name: f for f in narrow}
    step = vllm.step_overhead_s
    assert (w["step_overhead"].low.step_overhead_s, w["step_overhead"].high.step_overhead_s) == (0.0, 2 * step)
    assert n["step_overhead"].low.step_overhead_s == pytest.approx(0.7 * step)
    assert w["per_request"].high.per_request_overhead_s == pytest.approx(0.030)
    own = vllm.request_overhead_s + vllm.response_overhead_s
    assert n["per_request"].high.per_request_overhead_s == pytest.approx(0.3 * own)


def test_borrowed_gpu_efficiency_gets_a_wider_band() -> None:
    measured, grade_m = band_factors("a100-sxm4-80gb", StackParams(), has_profile=False)
    borrowed, grade_b = band_factors("mi300x", StackParams(), has_profile=False)
    assert "figures derived" in grade_b and "figures measured" in grade_m
    assert borrowed[0].high.compute_eff_scale > measured[0].high.compute_eff_scale


def test_linear_combination_is_wider_than_quadrature() -> None:
    def evaluate(p: StackParams, seed: int) -> dict[str, float]:
        return {"x": 100.0 * p.compute_eff_scale * p.bandwidth_eff_scale}

    factors, _ = band_factors("a100-sxm4-80gb", StackParams(), has_profile=False, vary_seed=False)
    lin = propagate(evaluate, StackParams(), factors)["x"]
    quad = propagate(evaluate, StackParams(), factors, combine="quadrature")["x"]
    assert lin.low < quad.low < 100.0 < quad.high < lin.high
    assert lin.high == pytest.approx(100.0 * (1 + factors[0].high.compute_eff_scale - 1) ** 2)


def test_bands_cover_at_least_80_percent_of_the_shipped_validation() -> None:
    """Share of published cases whose reference lies inside the band (issue #13: >= 80 %).

    The misses (docs/validation.md): LMDeploy's TP-4 Llama-2-70B runs at batch 64 (25-39 %
    fast), 4-bit AWQ decode on the RTX 4090 (40 % slow), and Splitwise's TP-8 Llama-2-70B decode
    probes (52-60 % fast: a ~20-30 ms per-step cost of the profiled engine that no stack
    profile has). 44 of 52 covered (the 4 LMSYS EP cases through the all-to-all overlap factor).
    """
    df = run_cases(load_cases(), quick=True, bands=True)
    assert (df["low"] <= df["predicted"]).all() and (df["predicted"] <= df["high"]).all()
    assert df["covered"].mean() >= 0.80


def test_api_bands_and_rate_band() -> None:
    import servesim as ss

    df = ss.bands(BENCH / "h100-llama8b.yaml", metrics=["mean_ttft_ms", "output_throughput"])
    assert list(df["metric"]) == ["mean_ttft_ms", "output_throughput"]
    assert (df["low"] <= df["mid"]).all() and (df["mid"] <= df["high"]).all()
    r = ss.max_sustainable_rate(BENCH / "h100-llama8b.yaml", ttft_ms=200, tpot_ms=40, rel_tol=0.2,
                                overrides={"workload.num_requests": 40}, bands=True)
    assert r.band.low <= r.rate_per_s == r.band.mid <= r.band.high
    assert r.band.dominant in r.band.contributions


def test_run_bands_cli_writes_bands_json(tmp_path: Path) -> None:
    result = invoke("run", BENCH / "h100-llama8b.yaml", "--out", tmp_path, "--no-report", "--bands")
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "h100-llama8b" / "bands.json").read_text())
    m = doc["h100-llama8b"]["metrics"]["mean_tpot_ms"]
    assert m["low"] <= m["mid"] <= m["high"]
    assert "prediction bands" in result.output


def test_plan_bands_cli_gives_gpu_count_as_a_range(tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({
        "name": "tiny", "base": str(BENCH / "h100-llama8b.yaml"), "target_rate_per_s": 20,
        "slo": {"ttft_ms": 300, "tpot_ms": 40, "percentile": "p99"},
        "prices": {"h100-sxm": 3.0}, "candidates": {"points": [{"hardware.gpu": "h100-sxm"}]},
        "search": {"rel_tol": 0.2}, "report": {"top_k": 1, "curve_fracs": [1.0]},
    }))
    result = invoke("plan", plan, "--out", tmp_path / "out", "--no-progress", "--bands")
    assert result.exit_code == 0, result.output
    import pandas as pd

    bands = pd.read_csv(tmp_path / "out" / "bands.csv")
    row = bands.iloc[0]
    assert row["gpus_low"] <= row["gpus_mid"] <= row["gpus_high"]
    assert row["max_rate_low"] <= row["max_rate_mid"] <= row["max_rate_high"]
    assert isinstance(row["dominant"], str) and row["dominant"]


def test_step_loads_price_one_phase_per_node() -> None:
    """Load kinds decode_step / prefill_step (the LMSYS PD + large-scale EP cases): the per-node
    throughput of one steady step of the deployment, every attention rank at the per-GPU batch."""
    from servesim.hwmodels.stacks import get_stack
    from servesim.hwmodels.stepcost import StepCostModel

    dec = _case("lmsys-ep72-h100-deepseek-v3-decode-b256-ctx2000")
    assert dec.scenario["engine"] == {"two_batch_overlap": True}  # the deployment runs SGLang's TBO
    m = StepCostModel(gpu="h100-sxm", model="deepseek-v3", scheme="fp8",
                      stack=get_stack("sglang").replace(two_batch_overlap=True), tensor_parallel=72,
                      expert_parallel=72, attention_data_parallel=72, redundant_experts=32)
    n = 256 * 72
    step = m.step_time_s(num_decode_seqs=n, decode_ctx_tokens=n * 2000)
    assert run_case(dec) == pytest.approx(n / step / 9.0, rel=1e-12)
    assert 0.9 <= run_case(dec) / dec.reference <= 1.05
    # the engine flag reaches the cost model: off, the plain step (-20 %)
    assert 0.75 <= run_case(dec, StackParams(two_batch_overlap=False)) / dec.reference <= 0.85
    pre = _case("lmsys-ep32-h100-deepseek-v3-prefill-p4096")
    assert 1.05 <= run_case(pre) / pre.reference <= 1.2  # routing skew (default placement) not modelled


@pytest.mark.parametrize(("load", "metric", "message"), [
    ({"kind": "decode_step", "batch_per_gpu": 8, "node_gpus": 8}, "output_throughput_per_node",
     "load.context_tokens is missing"),
    ({"kind": "decode_step", "batch_per_gpu": 8, "context_tokens": 100, "node_gpus": 8}, "output_throughput",
     "metric 'output_throughput' for load kind decode_step"),
    ({"kind": "static", "batch": 2, "prompt_tokens": 8, "output_tokens": 8}, "input_throughput_per_node",
     "needs load kind prefill_step"),
    ({"kind": "prefill_step", "tokens_per_gpu": 0, "prompt_tokens": 8, "node_gpus": 8}, "input_throughput_per_node",
     "load.tokens_per_gpu 0 must be a whole number >= 1"),
])
def test_bad_step_loads_are_one_line_errors(tmp_path: Path, load: dict[str, Any], metric: str, message: str) -> None:
    bad = invoke("validate", "--cases", _table(tmp_path, load, metric))
    assert bad.exit_code == 2 and message in bad.output, bad.output
    assert "Traceback" not in bad.output


def test_alltoall_deployments_get_an_overlap_factor() -> None:
    """EP + DP attention cases: the band spans the nominal (or, under two-batch overlap, the
    same deployment without it) to the whole all-to-all hidden; other cases have no such factor."""
    factors, _ = band_factors("h100-sxm", StackParams(), has_profile=False, multi_gpu=True, alltoall=True)
    (f,) = [f for f in factors if f.name == "alltoall_overlap"]
    assert f.low == StackParams() and f.high.alltoall_overlap_frac == 1.0
    tbo, _ = band_factors("h100-sxm", StackParams(), has_profile=False, multi_gpu=True, alltoall=True,
                          two_batch_overlap=True)
    (f,) = [f for f in tbo if f.name == "alltoall_overlap"]
    assert f.low == StackParams(two_batch_overlap=False) and f.high.alltoall_overlap_frac == 1.0
    plain, _ = band_factors("h100-sxm", StackParams(), has_profile=False, multi_gpu=True)
    assert all(f.name != "alltoall_overlap" for f in plain)
    case = _case("lmsys-ep72-h100-deepseek-v3-decode-b256-ctx2000")
    band = case_band(case)
    assert band.dominant == "all-to-all overlap (two-batch overlap)"
    assert band.low <= run_case(case, StackParams(two_batch_overlap=False)) and band.high > 1.3 * band.mid
    with pytest.raises(Exception, match="alltoall_overlap_frac"):
        StackParams(alltoall_overlap_frac=2.0)
