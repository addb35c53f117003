"""``servesim compare`` and ``servesim calibrate --from`` on the shipped sample files.

The samples are servesim's own replay of each load with planted stack parameters plus 3 %
noise (tests/data/bench/_make_samples.py), so the right answers are known: compare with the
defaults must show the gap, compare with the planted parameters must close it, and the fit
must find parameters near the planted ones and predict the held-out runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from servesim.hwmodels.stacks import load_profile_file
from servesim.simulator.cli import app
from servesim.simulator.validation.fit import split_runs
from servesim.simulator.validation.readers import read_results
from servesim.simulator.validation.stack import StackParams, gpu_sidecar, write_profile

BENCH = Path(__file__).resolve().parents[1] / "data" / "bench"
SCENARIO = BENCH / "h100-llama8b.yaml"
SAMPLES = ["vllm-detailed-rate4.json", "vllm-concurrency8.json", "sglang-random.jsonl",
           "profile_export_genai_perf.json", "profile_export_aiperf.json"]
PLANTED = StackParams(step_overhead_s=0.004, per_request_overhead_s=0.030,
                      compute_eff_scale=0.85, bandwidth_eff_scale=0.9)


def invoke(*args: Any) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("name", SAMPLES)
def test_compare_json_on_every_sample(name: str) -> None:
    result = invoke("compare", BENCH / name, "--scenario", SCENARIO, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    runs = read_results(BENCH / name)
    assert len(doc["runs"]) == len(runs)
    for run, got in zip(runs, doc["runs"], strict=True):
        metrics = {m["metric"]: m for m in got["metrics"]}
        # every metric the file records and the replay produces is compared, with its error
        assert {"mean_ttft_ms", "mean_tpot_ms", "output_throughput"} <= set(metrics)
        for key, row in metrics.items():
            assert row["measured"] == pytest.approx(run.metrics[key])
            assert row["error_frac"] == pytest.approx((row["simulated"] - row["measured"]) / row["measured"])
        # defaults miss the planted 30 ms per-request overhead: TTFT comes out short
        assert metrics["mean_ttft_ms"]["error_frac"] < -0.15


def _scenario_data() -> dict[str, Any]:
    from servesim.simulator.scenario import load_scenario

    return load_scenario(SCENARIO).model_dump(mode="json")


def test_planted_profile_is_a_stack_profile_and_a_gpu_file(tmp_path: Path) -> None:
    profile = tmp_path / "planted.yaml"
    written = write_profile(profile, PLANTED, scenario=_scenario_data(), fit_report={})
    assert written == [profile, gpu_sidecar(profile)]
    prof = load_profile_file(profile)  # the stack-profile layout: engine.profile accepts it
    assert prof.step_overhead_s == pytest.approx(0.004)
    assert prof.request_overhead_s == pytest.approx(0.030)  # generic's 0 + the planted 30 ms
    gpu = yaml.safe_load(gpu_sidecar(profile).read_text())
    assert gpu["name"] == "h100-sxm"
    assert gpu["hbm_bw_bytes_per_s"] == pytest.approx(3.35e12 * 0.9)
    # usable in a scenario as written
    import servesim as ss

    res = ss.run(SCENARIO, overrides={"engine.profile": str(profile), "hardware.gpu": str(gpu_sidecar(profile))})
    assert res.variants[0].summary["completed"] == 10


def test_compare_with_planted_profile_closes_the_gap(tmp_path: Path) -> None:
    profile = tmp_path / "planted.yaml"
    write_profile(profile, PLANTED, scenario=_scenario_data(), fit_report={})
    result = invoke("compare", BENCH / "vllm-detailed-rate4.json", "--scenario", SCENARIO,
                    "--profile", profile, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["profile"] == str(profile)
    assert doc["runs"][0]["median_abs_error_frac"] < 0.05
    default = json.loads(invoke("compare", BENCH / "vllm-detailed-rate4.json", "--scenario",
                                SCENARIO, "--json").output)
    assert default["runs"][0]["median_abs_error_frac"] > 0.2


def test_compare_table_names_the_run_and_metrics() -> None:
    result = invoke("compare", BENCH / "sglang-random.jsonl", "-s", SCENARIO, "--max-requests", "20")
    assert result.exit_code == 0, result.output
    assert "sglang-random.jsonl#1" in result.output
    assert "mean TTFT" in result.output and "median |error|" in result.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["compare", BENCH / "nope.json", "--scenario", SCENARIO], "no such file"),
        (["compare", SCENARIO, "--scenario", SCENARIO], "not JSON"),
        (["compare", BENCH / "vllm-concurrency8.json", "--scenario", BENCH / "missing.yaml"], "missing.yaml"),
        (["compare", BENCH / "vllm-concurrency8.json", "--scenario", SCENARIO, "--format", "tgi"], "unknown format"),
        (["calibrate", "--from", BENCH / "vllm-concurrency8.json"], "--scenario"),
        (["calibrate", "--from", BENCH / "vllm-concurrency8.json", "--scenario", SCENARIO], "--out"),
        (["calibrate", "--scenario", SCENARIO], "go with --from"),
    ],
)
def test_user_errors_are_one_line_exit_2(args: list[Any], needle: str) -> None:
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert "Traceback" not in result.output


def test_profile_with_unknown_key_is_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "step_overhead": 0.001}))
    result = invoke("compare", BENCH / "vllm-concurrency8.json", "-s", SCENARIO, "--profile", bad)
    assert result.exit_code == 2
    assert "step_overhead" in result.output and "Traceback" not in result.output


def test_split_is_deterministic_every_third_held_out() -> None:
    runs = [r for name in SAMPLES for r in read_results(BENCH / name)]
    fitted, held = split_runs(runs)
    assert [r.label for r in held] == ["sglang-random.jsonl", "vllm-detailed-rate4.json"]
    assert len(fitted) == 4
    assert split_runs(list(reversed(runs))) == (fitted, held)


def test_calibrate_recovers_planted_parameters_and_predicts_held_out(tmp_path: Path) -> None:
    out = tmp_path / "profile.yaml"
    result = invoke("calibrate", "--from", *[BENCH / n for n in SAMPLES], "--scenario", SCENARIO,
                    "--out", out, "--max-evals", "45", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    fit = doc["fit"]
    assert fit["held_out_runs"] == ["sglang-random.jsonl", "vllm-detailed-rate4.json"]
    # the held-out runs are predicted within a few per cent (3 % noise was planted) ...
    assert fit["held_out_median_abs_error_frac"] < 0.06
    # ... and far better than with the defaults
    assert fit["held_out_median_abs_error_frac_before_fit"] > 0.2
    params = StackParams.from_dict(doc["stack_fit"])
    assert params.per_request_overhead_s == pytest.approx(PLANTED.per_request_overhead_s, abs=0.006)
    assert params.compute_eff_scale == pytest.approx(PLANTED.compute_eff_scale, abs=0.08)
    assert params.bandwidth_eff_scale == pytest.approx(PLANTED.bandwidth_eff_scale, abs=0.1)
    assert params.step_overhead_s == pytest.approx(PLANTED.step_overhead_s, abs=0.0015)
    prof = load_profile_file(out)
    assert prof.step_overhead_s == pytest.approx(params.step_overhead_s)
    assert doc["files"] == [str(out), str(gpu_sidecar(out))]
    # the profile is usable: compare --profile reads it back
    again = invoke("compare", BENCH / "vllm-detailed-rate4.json", "-s", SCENARIO, "--profile", out, "--json")
    assert json.loads(again.output)["runs"][0]["median_abs_error_frac"] < 0.06


def test_calibrate_without_from_is_the_gemm_table() -> None:
    result = invoke("calibrate", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert {"bounds", "rows"} <= set(doc)
