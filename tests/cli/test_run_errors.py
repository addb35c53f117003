"""Malformed scenarios: exit status 2, one clear message naming the field, no traceback.

Each case goes through ``servesim run`` (the loader fails before the engine starts); a
sample also goes through ``servesim check`` and through the installed console script.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from servesim.simulator.cli import app

REPO = Path(__file__).resolve().parents[2]

BASE: dict[str, Any] = {
    "name": "bad",
    "hardware": {"gpu": "h100-sxm"},
    "model": {"name": "llama-3.1-8b", "max_model_len_tokens": 4096},
    "workload": {
        "num_requests": 10,
        "arrivals": {"process": "poisson", "rate_per_s": 5.0},
        "lengths": {
            "prompt": {"dist": "fixed", "tokens": 64},
            "output": {"dist": "fixed", "tokens": 8},
        },
    },
    "variants": [{"name": "a"}, {"name": "b", "kv_cache": {"manager": "radix"}}],
}


def _set(path: str, value: Any):
    def edit(d: dict[str, Any]) -> None:
        node: Any = d
        parts = path.split(".")
        for p in parts[:-1]:
            node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
        if isinstance(node, list):
            node[int(parts[-1])] = value
        else:
            node[parts[-1]] = value

    return edit


def _drop(path: str):
    def edit(d: dict[str, Any]) -> None:
        node: Any = d
        parts = path.split(".")
        for p in parts[:-1]:
            node = node[p]
        del node[parts[-1]]

    return edit


# (id, edit of BASE or raw YAML text, extra CLI args, substrings the message must contain)
CASES: list[tuple[str, Any, list[str], list[str]]] = [
    # YAML syntax
    ("yaml-unclosed-flow", "name: x\nhardware: {gpu: h100-sxm\nmodel: {}\n", [],
     ["YAML syntax error", "line 3"]),
    ("yaml-bad-indent", "name: x\nhardware:\n  gpu: h100-sxm\n tensor_parallel: 2\n", [],
     ["YAML syntax error", "line 4", "column"]),
    ("yaml-duplicate-key", "name: x\nname: y\n", [], ["duplicate key 'name'", "line 2"]),
    ("yaml-tab", "name: x\n\tseed: 1\n", [], ["YAML syntax error", "line 2"]),
    ("yaml-top-level-list", "- name: x\n", [], ["must be a mapping"]),
    ("yaml-empty", "", [], ["empty"]),
    # unknown keys
    ("unknown-top-key", _set("hardwre", {"gpu": "h100-sxm"}), [], ["hardwre", "'hardware'"]),
    ("unknown-hardware-key", _set("hardware.tensor_paralel", 2), [],
     ["hardware.tensor_paralel", "'tensor_parallel'"]),
    ("unknown-kv-key", _set("kv_cache.block_size", 32), [],
     ["kv_cache.block_size", "'block_size_tokens'"]),
    ("unknown-workload-key", _set("workload.num_request", 3), [],
     ["workload.num_request", "'num_requests'"]),
    ("unknown-arrivals-key", _set("workload.arrivals.rate", 3), [],
     ["workload.arrivals.rate", "'rate_per_s'"]),
    ("unknown-slo-key", _set("slo.ttft", 3), [], ["slo.ttft", "'ttft_ms'"]),
    ("unknown-variant-key", _set("variants.0.kv_cache", {"block_size": 8}), [],
     ["variants.0.kv_cache.block_size", "'block_size_tokens'"]),
    ("variant-unknown-section", _set("variants.1.workload", {"num_requests": 3}), [],
     ["variants.1.workload", "unknown key"]),
    # wrong types
    ("type-max-num-seqs", _set("scheduler.max_num_seqs", "lots"), [],
     ["scheduler.max_num_seqs", "integer", "'lots'"]),
    ("type-replicas-list", _set("hardware.replicas", [1]), [], ["hardware.replicas", "integer"]),
    ("type-section-scalar", _set("scheduler", 5), [], ["scheduler", "mapping"]),
    ("type-fast-forward", _set("engine.fast_forward", "maybe"), [],
     ["engine.fast_forward", "boolean"]),
    ("type-hardware-scalar", _set("hardware", "h100-sxm"), [], ["hardware", "mapping"]),
    # out of range
    ("range-block-size", _set("kv_cache.block_size_tokens", 1000), [],
     ["kv_cache.block_size_tokens", "1000", "<= 256"]),
    ("range-gpu-util", _set("hardware.gpu_memory_utilization", 1.5), [],
     ["hardware.gpu_memory_utilization", "1.5", "<= 1.0"]),
    ("range-tp-zero", _set("hardware.tensor_parallel", 0), [],
     ["hardware.tensor_parallel", "0 < value"]),
    ("range-seed", _set("seed", -1), [], ["seed", "0 <= value"]),
    ("range-watermark", _set("kv_cache.watermark_frac", 0.9), [],
     ["kv_cache.watermark_frac", "<= 0.5"]),
    ("range-slo", _set("slo.ttft_ms", 0), [], ["slo.ttft_ms", "0 < value"]),
    ("range-rate", _set("workload.arrivals.rate_per_s", -2), [],
     ["workload.arrivals.rate_per_s", "-2"]),
    ("range-variant", _set("variants.1.scheduler", {"max_num_seqs": 0}), [],
     ["variants.1.scheduler.max_num_seqs", "0 < value"]),
    # bad choices
    ("choice-manager", _set("kv_cache.manager", "pagd"), [],
     ["kv_cache.manager", "'pagd'", "Did you mean 'paged'"]),
    ("choice-policy", _set("scheduler.policy", "fifo"), [],
     ["scheduler.policy", "static, orca, vllm, sarathi, sglang"]),
    ("choice-router", _set("router.policy", "random"), [], ["router.policy", "round_robin"]),
    ("choice-variant-policy", _set("variants.1.scheduler", {"policy": "sglng"}), [],
     ["variants.1.scheduler.policy", "Did you mean 'sglang'"]),
    ("choice-arrival-process", _set("workload.arrivals.process", "poison"), [],
     ["workload.arrivals.process", "Did you mean 'poisson'"]),
    ("missing-arrival-process", _drop("workload.arrivals.process"), [],
     ["workload.arrivals.process", "missing"]),
    # catalogue names
    ("unknown-gpu", _set("hardware.gpu", "h1000"), [], ["hardware.gpu", "unknown GPU 'h1000'",
                                                        "h100-sxm"]),
    ("unknown-gpu-in-group", _set("hardware", [{"gpu": "h100-sxm"}, {"gpu": "b300x"}]), [],
     ["hardware.1.gpu", "unknown GPU"]),
    ("missing-gpu-file", _set("hardware.gpu", "my-gpu.yaml"), [], ["hardware.gpu", "my-gpu.yaml"]),
    ("unknown-model", _set("model.name", "llama-3-8b"), [],
     ["model.name", "unknown model 'llama-3-8b'", "llama-3.1-8b"]),
    ("unknown-quant", _set("model.quantization", "int3"), [],
     ["model.quantization", "unknown quantization scheme 'int3'", "w4a16"]),
    ("unknown-kv-dtype", _set("model.kv_cache_dtype", "fp4"), [],
     ["model.kv_cache_dtype", "unknown KV-cache dtype", "int8"]),
    ("quant-unsupported-on-gpu", _set("hardware.gpu", "a100-sxm4-80gb"), ["--set",
     "model.quantization=fp8"], ["model.quantization", "a100-sxm4-80gb"]),
    ("kv-dtype-unsupported-on-gpu", _set("hardware.gpu", "a100-sxm4-40gb"), ["--set",
     "model.kv_cache_dtype=fp8"], ["model.kv_cache_dtype", "a100-sxm4-40gb"]),
    ("variant-unknown-gpu", _set("variants.1.hardware", {"gpu": "h2000"}), [],
     ["variant 'b'", "hardware.gpu", "unknown GPU 'h2000'"]),
    ("group-size-not-groupwise", _set("model.group_size", 64), [], ["model.group_size", "fp16"]),
    ("model-name-and-config", _set("model.config", "x.json"), [],
     ["model", "exactly one of model.name"]),
    ("model-config-missing", _set("model", {"config": "nope/config.json"}), [],
     ["model.config", "does not exist"]),
    # files
    ("trace-missing", _set("workload", {"trace": {"path": "no/such/trace.csv"}}), [],
     ["workload.trace.path", "no/such/trace.csv", "does not exist"]),
    ("empirical-lengths-missing", _set("workload.lengths.prompt",
     {"dist": "empirical", "path": "lens.csv"}), [], ["workload.lengths.prompt.path", "lens.csv"]),
    # required and structural
    ("missing-workload", _drop("workload"), [], ["workload", "missing"]),
    ("missing-name", _drop("name"), [], ["name", "missing"]),
    ("name-with-slash", _set("name", "a/b"), [], ["name", "'a/b'"]),
    ("workload-incomplete", _drop("workload.lengths"), [], ["workload", "lengths"]),
    ("variant-names-duplicate", _set("variants.1.name", "a"), [], ["variants", "'a' appears twice"]),
    ("variant-name-unsafe", _set("variants.0.name", "x y"), [], ["variants.0.name", "'x y'"]),
    ("variants-not-list", _set("variants", {"name": "a"}), [], ["variants", "list"]),
    # bad --set and --seed
    ("set-without-equals", None, ["--set", "scheduler.max_num_seqs"],
     ["--set", "PATH=VALUE"]),
    ("set-empty-path", None, ["--set", "=3"], ["--set", "dotted path"]),
    ("set-through-scalar", _set("seed", 1), ["--set", "seed.value=2"], ["seed", "not a mapping"]),
    ("set-index-out-of-range", None, ["--set", "variants.5.name=x"],
     ["variants", "out of range"]),
    ("set-list-needs-index", None, ["--set", "variants.first.name=x"],
     ["variants", "index it with a number"]),
    ("set-bad-yaml-value", None, ["--set", "hardware.replicas=[1,"], ["--set", "not valid YAML"]),
    ("set-unknown-key", None, ["--set", "scheduler.max_num_seq=8"],
     ["scheduler.max_num_seq", "'max_num_seqs'"]),
    ("set-bad-value", None, ["--set", "kv_cache.block_size_tokens=0"],
     ["kv_cache.block_size_tokens", "1 <= value <= 256"]),
    ("seed-negative", None, ["--seed", "-1"], ["--seed"]),
    ("quick-not-mapping", _set("quick", ["workload.num_requests=3"]), ["--quick"], ["quick"]),
    ("quick-bad-path", _set("quick", {"workload.num_requests.x": 3}), ["--quick"],
     ["quick: workload.num_requests.x", "not a mapping"]),
]


def _scenario_file(tmp_path: Path, edit: Any) -> Path:
    path = tmp_path / "bad.yaml"
    if isinstance(edit, str):
        path.write_text(edit)
        return path
    data = copy.deepcopy(BASE)
    if edit is not None:
        edit(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_the_table_is_big_enough():
    assert len(CASES) >= 30
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(("edit", "args", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_run_rejects_malformed_scenarios(tmp_path, edit, args, expected):
    path = _scenario_file(tmp_path, edit)
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "out"), *args])
    output = result.output
    assert result.exit_code == 2, output
    assert "Traceback" not in output
    assert result.exception is None or isinstance(result.exception, SystemExit), output
    for text in expected:
        assert text in output, f"{text!r} not in:\n{output}"
    # Nothing was run, so no results were written.
    assert not list((tmp_path / "out").glob("*/summary.json"))


@pytest.mark.parametrize("case", ["unknown-kv-key", "range-block-size", "unknown-gpu",
                                  "trace-missing", "yaml-duplicate-key"])
def test_check_rejects_malformed_scenarios(tmp_path, case):
    _, edit, args, expected = next(c for c in CASES if c[0] == case)
    path = _scenario_file(tmp_path, edit)
    result = CliRunner().invoke(app, ["check", str(path), *args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for text in expected:
        assert text in result.output


def test_missing_scenario_file(tmp_path):
    result = CliRunner().invoke(app, ["run", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "nope.yaml" in result.output and "does not exist" in result.output


def test_console_script_exits_2_without_traceback(tmp_path):
    path = _scenario_file(tmp_path, _set("kv_cache.manager", "pagd"))
    proc = subprocess.run(
        [sys.executable, "-c", "from simulator.cli import main; main()", "run", str(path),
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "COLUMNS": "200"},
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "kv_cache.manager" in proc.stderr
    assert proc.stdout == ""


def test_trace_missing_suggests_the_quick_form(tmp_path):
    data = copy.deepcopy(BASE)
    data["workload"] = {"trace": {"path": "../../shared/none.csv"}}
    data["quick"] = {"workload.trace.path": "excerpt.csv"}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["check", str(path)])
    assert result.exit_code == 2
    assert "--quick" in result.output
