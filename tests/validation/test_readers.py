"""Readers of benchmark result files: every shipped sample in its real format, format
detection from content, the load each records, and one clear error per malformed file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from servesim.simulator.validation.readers import BenchFileError, detect_format, read_results

BENCH = Path(__file__).resolve().parents[1] / "data" / "bench"


def test_vllm_detailed_file_gives_per_request_lengths_and_poisson_rate() -> None:
    (run,) = read_results(BENCH / "vllm-detailed-rate4.json")
    raw = json.loads((BENCH / "vllm-detailed-rate4.json").read_text())
    assert run.tool == "vllm"
    assert run.request_rate_per_s == 4.0 and run.max_concurrency is None and run.burstiness == 1.0
    assert run.input_lens == tuple(raw["input_lens"]) and run.output_lens == tuple(raw["output_lens"])
    assert run.num_requests == raw["num_prompts"] == 48
    assert run.metrics["mean_ttft_ms"] == raw["mean_ttft_ms"]
    assert run.metrics["p99_tpot_ms"] == raw["p99_tpot_ms"]
    assert run.model_id == "meta-llama/Llama-3.1-8B-Instruct"


def test_vllm_summary_file_gives_mean_lengths_and_concurrency() -> None:
    (run,) = read_results(BENCH / "vllm-concurrency8.json")
    raw = json.loads((BENCH / "vllm-concurrency8.json").read_text())
    assert raw["request_rate"] == "inf"
    assert math.isinf(run.request_rate_per_s) and run.max_concurrency == 8
    assert run.input_lens is None
    assert run.mean_input_tokens == pytest.approx(raw["total_input_tokens"] / raw["completed"])
    assert run.mean_output_tokens == pytest.approx(raw["total_output_tokens"] / raw["completed"])


def test_sglang_jsonl_gives_one_run_per_line_with_e2e_renamed() -> None:
    runs = read_results(BENCH / "sglang-random.jsonl")
    lines = [json.loads(x) for x in (BENCH / "sglang-random.jsonl").read_text().splitlines()]
    assert [r.tool for r in runs] == ["sglang", "sglang"]
    assert [r.request_rate_per_s for r in runs] == [2.0, 8.0]
    assert [r.label for r in runs] == ["sglang-random.jsonl", "sglang-random.jsonl#1"]
    assert runs[1].metrics["mean_e2el_ms"] == lines[1]["mean_e2e_latency_ms"]
    assert runs[1].metrics["total_token_throughput"] == lines[1]["total_throughput"]
    assert runs[0].num_requests == lines[0]["completed"]


def test_genai_perf_export_reads_statistics_and_flat_input_config() -> None:
    (run,) = read_results(BENCH / "profile_export_genai_perf.json")
    raw = json.loads((BENCH / "profile_export_genai_perf.json").read_text())
    assert run.tool == "genai-perf"
    assert run.max_concurrency == raw["input_config"]["concurrency"] == 4
    assert run.num_requests == raw["input_config"]["request_count"]
    assert run.metrics["median_ttft_ms"] == raw["time_to_first_token"]["p50"]
    # GenAI-Perf's per-request inter_token_latency is (latency - TTFT) / (OSL - 1): TPOT
    assert run.metrics["mean_tpot_ms"] == raw["inter_token_latency"]["avg"]
    assert run.mean_input_tokens == raw["input_sequence_length"]["avg"]


def test_aiperf_export_reads_nested_loadgen_and_seconds() -> None:
    (run,) = read_results(BENCH / "profile_export_aiperf.json")
    raw = json.loads((BENCH / "profile_export_aiperf.json").read_text())
    assert run.tool == "aiperf"
    assert run.max_concurrency == raw["input_config"]["loadgen"]["concurrency"] == 16
    assert run.num_requests == int(raw["request_count"]["avg"])
    assert run.duration_s == pytest.approx(raw["benchmark_duration"]["avg"])
    assert run.metrics["p99_e2el_ms"] == raw["request_latency"]["p99"]


def test_format_detection_ignores_the_file_name(tmp_path: Path) -> None:
    for name, tool in (("vllm-detailed-rate4.json", "vllm"), ("sglang-random.jsonl", "sglang"),
                       ("profile_export_genai_perf.json", "genai-perf"),
                       ("profile_export_aiperf.json", "aiperf")):
        copy = tmp_path / "result.txt"
        copy.write_text((BENCH / name).read_text())
        assert detect_format(copy) == tool


def test_vllm_append_result_file_holds_several_runs(tmp_path: Path) -> None:
    one = (BENCH / "vllm-concurrency8.json").read_text()
    path = tmp_path / "appended.json"
    path.write_text(one + "\n" + one)  # what --append-result writes
    assert len(read_results(path)) == 2


def test_unit_conversion_of_seconds_statistics(tmp_path: Path) -> None:
    raw = json.loads((BENCH / "profile_export_genai_perf.json").read_text())
    raw["time_to_first_token"] = {k: (v / 1000 if isinstance(v, float) else v)
                                  for k, v in raw["time_to_first_token"].items()}
    raw["time_to_first_token"]["unit"] = "s"
    path = tmp_path / "p.json"
    path.write_text(json.dumps(raw))
    (run,) = read_results(path)
    (ref,) = read_results(BENCH / "profile_export_genai_perf.json")
    assert run.metrics["mean_ttft_ms"] == pytest.approx(ref.metrics["mean_ttft_ms"])


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("", "empty file"),
        ("[1, 2]", "expected a JSON object"),
        ('{"a": 1}', "not a result file"),
        ('{"mean_ttft_ms": 1, "num_prompts": 3, "completed": "x", "request_rate": 1}', "'completed'"),
        ('{"mean_ttft_ms": 1, "num_prompts": 3, "completed": 3, "request_rate": -2, '
         '"total_input_tokens": 3, "total_output_tokens": 3}', "request_rate"),
        ('{"mean_ttft_ms": 1, "num_prompts": 3, "completed": 3, "request_rate": 1}', "total_input_tokens"),
        ('{"mean_e2e_latency_ms": 1, "completed": 2, "request_rate": "trace"}', "trace"),
        ("{not json\n", "line 1: not JSON"),
    ],
)
def test_malformed_files_are_one_clear_error(tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(BenchFileError, match=r"bad\.json") as info:
        read_results(path)
    assert needle in str(info.value)


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(BenchFileError, match="no such file"):
        read_results(tmp_path / "nope.json")
