"""The front door: gallery names, Hugging Face ids, the flag-only form, timelines, provenance.

Runs the real engine on tiny workloads (tens of requests), in process through ``CliRunner``
(the console script's own contract is in ``test_cli_contract.py``).
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from servesim.simulator.cli import app
from servesim.simulator.cli.run import bench_result_text, bench_scenario
from servesim.simulator.errors import ScenarioError
from servesim.simulator.gallery import gallery_entries, gallery_root, resolve_path
from servesim.simulator.provenance import scenario_digest

ROOT = Path(__file__).resolve().parents[2]

SMALL: dict[str, Any] = {
    "name": "front-door",
    "seed": 3,
    "hardware": {"gpu": "h100-sxm", "replicas": 2},
    "model": {"name": "llama-3.1-8b", "max_model_len_tokens": 4096},
    "router": {"policy": "round_robin"},
    "workload": {
        "num_requests": 24,
        "arrivals": {"process": "poisson", "rate_per_s": 20.0},
        "lengths": {"prompt": {"dist": "fixed", "tokens": 200},
                    "output": {"dist": "fixed", "tokens": 12}},
    },
    "variants": [{"name": "paged"}, {"name": "radix", "kv_cache": {"manager": "radix"},
                                     "scheduler": {"policy": "sglang"}}],
}


def invoke(*args: Any):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def small(tmp_path: Path) -> Path:
    path = tmp_path / "front-door.yaml"
    path.write_text(yaml.safe_dump(SMALL, sort_keys=False))
    return path


# ---------------------------------------------------------------------------- gallery


def test_gallery_lists_each_bundled_file_on_one_line():
    res = invoke("gallery")
    assert res.exit_code == 0, res.output
    names = sorted(p.stem for p in (ROOT / "scenarios").glob("*.yaml"))
    names += sorted(p.stem for p in (ROOT / "examples").glob("*.yaml"))
    lines = res.output.splitlines()
    for name in names:
        hits = [ln for ln in lines if ln.split() and ln.split()[0] == name]
        assert len(hits) == 1, name
        assert len(hits[0].split(maxsplit=1)) == 2, f"{name} has no summary"
    rows = json.loads(invoke("gallery", "--json").output)
    assert [r["name"] for r in rows] == names
    assert all(Path(r["path"]).is_file() and r["summary"] for r in rows)


def test_a_bare_name_resolves_to_the_gallery_unless_a_file_is_here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_path("quickstart") == gallery_root() / "scenarios" / "quickstart.yaml"
    assert resolve_path("quickstart.yaml") == gallery_root() / "scenarios" / "quickstart.yaml"
    assert resolve_path("plan", ("examples",)) == gallery_root() / "examples" / "plan.yaml"
    assert resolve_path("no-such-thing") == Path("no-such-thing")
    assert resolve_path("sub/quickstart") == Path("sub/quickstart")  # a path is a path
    (tmp_path / "quickstart.yaml").write_text("name: mine\n")
    assert resolve_path("quickstart.yaml") == Path("quickstart.yaml")
    assert {e.name for e in gallery_entries()} >= {"quickstart", "plan"}


def test_check_and_run_take_a_gallery_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = invoke("check", "quickstart", "--quick")
    assert res.exit_code == 0, res.output
    assert "150 synthetic requests" in res.output
    res = invoke("check", "no-such-scenario")
    assert res.exit_code == 2
    assert "quickstart" in res.output  # lists the gallery


def test_trace_scenarios_quick_form_reads_the_shipped_excerpt(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = invoke("check", "gpu-comparison", "--quick")
    assert res.exit_code == 0, res.output
    assert "azure2023_conv_300.csv" in res.output


# ---------------------------------------------------------------------------- model ids


def test_hugging_face_ids_resolve_case_insensitively():
    from servesim.hwmodels.models import HF_MODEL_IDS, get_model, model_names

    assert get_model("meta-llama/Llama-3.1-8B-Instruct").name == "llama-3.1-8b"
    assert get_model("META-LLAMA/llama-3.1-8b-instruct").name == "llama-3.1-8b"
    assert get_model("Qwen/Qwen2.5-72B-Instruct").name == "qwen2.5-72b"
    assert set(HF_MODEL_IDS.values()) <= set(model_names())
    assert all("/" in k for k in HF_MODEL_IDS)
    assert len({k.lower() for k in HF_MODEL_IDS}) == len(HF_MODEL_IDS)
    doc = (ROOT / "docs" / "hardware-and-models.md").read_text()
    table = {m.group(1): m.group(2) for m in
             re.finditer(r"^\| `([^`]+/[^`]+)` \| `([^`]+)` \|", doc, re.M)}
    assert table == HF_MODEL_IDS, "docs/hardware-and-models.md's id table is out of date"


# ---------------------------------------------------------------------------- flag-only form


def _flags(**kw: Any) -> dict[str, Any]:
    base = dict.fromkeys(("model", "gpu", "request_rate", "num_prompts", "random_input_len",
                          "random_output_len", "random_range_ratio", "burstiness",
                          "tensor_parallel_size", "max_concurrency"))
    return {**base, **kw}


def test_flag_only_form_maps_like_vllm_bench_serve():
    s = bench_scenario(**_flags(model="meta-llama/Llama-3.1-8B-Instruct", gpu="h100",
                                request_rate=10.0, num_prompts=600, random_input_len=1000,
                                random_output_len=200, tensor_parallel_size=2))
    assert s["model"] == {"name": "meta-llama/Llama-3.1-8B-Instruct"}
    assert s["hardware"] == {"gpu": "h100", "tensor_parallel": 2}
    wl = s["workload"]
    assert wl["num_requests"] == 600
    assert wl["arrivals"] == {"process": "poisson", "rate_per_s": 10.0}
    assert wl["lengths"]["prompt"] == {"dist": "fixed", "tokens": 1000}
    assert wl["lengths"]["output"] == {"dist": "fixed", "tokens": 200}
    # vllm's defaults: rate inf (all at once), 1000 prompts, 1024 in, 128 out
    d = bench_scenario(**_flags(model="llama-3.1-8b", gpu="h100-sxm"))["workload"]
    assert d["arrivals"] == {"process": "offline"} and d["num_requests"] == 1000
    assert d["lengths"]["prompt"]["tokens"] == 1024 and d["lengths"]["output"]["tokens"] == 128
    c = bench_scenario(**_flags(model="llama-3.1-8b", gpu="h100", max_concurrency=8))
    assert c["workload"]["arrivals"] == {"process": "closed_loop", "num_clients": 8}
    g = bench_scenario(**_flags(model="llama-3.1-8b", gpu="h100", request_rate=4.0,
                                burstiness=4.0, random_range_ratio=0.5, random_input_len=100))
    assert g["workload"]["arrivals"] == {"process": "gamma", "rate_per_s": 4.0, "cv": 0.5}
    assert g["workload"]["lengths"]["prompt"] == {"dist": "uniform", "min_tokens": 50,
                                                  "max_tokens": 150}
    with pytest.raises(ScenarioError, match="--gpu"):
        bench_scenario(**_flags(model="llama-3.1-8b"))
    with pytest.raises(ScenarioError, match="not modelled"):
        bench_scenario(**_flags(model="llama-3.1-8b", gpu="h100", request_rate=2.0,
                                max_concurrency=4))
    with pytest.raises(ScenarioError, match=r"\[0, 1\)"):
        bench_scenario(**_flags(model="llama-3.1-8b", gpu="h100", random_range_ratio=1.0))


def test_flag_only_run_prints_vllms_result_block(tmp_path):
    res = invoke("run", "--model", "meta-llama/Llama-3.1-8B-Instruct", "--gpu", "h100",
                 "--request-rate", "10", "--num-prompts", "30", "--random-input-len", "300",
                 "--random-output-len", "20", "--out", tmp_path, "--no-report")
    assert res.exit_code == 0, res.output
    for label in ("Serving Benchmark Result", "Successful requests:", "Request throughput (req/s):",
                  "Output token throughput (tok/s):", "Mean TTFT (ms):", "Median TPOT (ms):",
                  "P99 ITL (ms):"):
        assert label in res.output
    run_dir = tmp_path / "bench-llama-3.1-8b-instruct-h100"
    summary = json.loads((run_dir / "summary.json").read_text())
    (variant,) = summary["variants"].values()
    assert variant["completed"] == 30
    assert variant["total_input_tokens"] == 30 * 300
    assert re.search(r"^Successful requests: +30$", res.output, re.M)
    for key in ("request_throughput", "output_throughput", "mean_ttft_ms", "median_tpot_ms",
                "p99_itl_ms"):
        assert key in variant
    res = invoke("run", "quickstart", "--model", "llama-3.1-8b")
    assert res.exit_code == 2 and "not both" in res.output


def test_result_block_layout():
    text = bench_result_text({"completed": 5, "duration": 2.0, "mean_ttft_ms": 1.5})
    lines = text.splitlines()
    assert lines[0] == "=" * 12 + " Serving Benchmark Result " + "=" * 12
    assert lines[1] == "Successful requests:" + " " * 21 + "5"
    assert "Mean TTFT (ms):                          1.50" in text
    assert lines[-1] == "=" * 50


# ---------------------------------------------------------------------------- timeline


def _check_trace(doc: dict[str, Any], steps: pd.DataFrame, requests: pd.DataFrame) -> None:
    events = doc["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in events
             if e["ph"] == "M" and e["name"] == "process_name"}
    want = {f"{v} / replica {r}" for v, r in
            steps[["variant", "replica_id"]].drop_duplicates().itertuples(index=False)}
    assert set(names.values()) == want  # one process per variant and replica
    for e in events:
        assert e["ph"] in {"M", "X", "C", "b", "e", "n"}
        assert isinstance(e["pid"], int) and e["pid"] in names
        if e["ph"] != "M":
            assert isinstance(e["ts"], int | float) and math.isfinite(e["ts"]) and e["ts"] >= 0
    xs = [e for e in events if e["ph"] == "X"]
    assert len(xs) == len(steps)
    assert all(e["dur"] >= 0 and e["name"] in {"prefill", "decode", "mixed"} for e in xs)
    per_pid = defaultdict(list)
    for e in xs:
        per_pid[e["pid"]].append(e)
    for pid, evs in per_pid.items():  # steps of one replica never overlap
        evs.sort(key=lambda e: e["ts"])
        for a, b in itertools.pairwise(evs):
            assert a["ts"] + a["dur"] <= b["ts"] + 2e-3, pid  # us, rounded to ns
    stacks: dict[str, list[str]] = defaultdict(list)
    for e in events:  # async request slices nest properly, per id
        if e["ph"] == "b":
            stacks[e["id"]].append(e["name"])
        elif e["ph"] == "e":
            assert stacks[e["id"]] and stacks[e["id"]].pop() == e["name"], e
    assert all(not s for s in stacks.values())
    done = requests[requests["status"] == "completed"]
    outer = [e for e in events if e["ph"] == "b" and e["name"].startswith("request ")]
    assert len(outer) == len(done)
    assert any(e["ph"] == "C" and e["name"] == "batch" for e in events)


def test_run_timeline_and_export_timeline_agree(small, tmp_path):
    out = tmp_path / "out"
    res = invoke("run", small, "--out", out, "--timeline", "--no-report")
    assert res.exit_code == 0, res.output
    run_dir = out / "front-door"
    path = run_dir / "timeline.json"
    text = path.read_text()
    doc = json.loads(text)  # strict JSON: no NaN
    assert "NaN" not in text and "Infinity" not in text
    _check_trace(doc, pd.read_parquet(run_dir / "steps.parquet"),
                 pd.read_parquet(run_dir / "requests.parquet"))
    assert doc["otherData"]["variants"] == ["paged", "radix"]
    res = invoke("export-timeline", run_dir, "--out", tmp_path / "again.json")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "again.json").read_text() == text  # deterministic


# ---------------------------------------------------------------------------- provenance


def test_summary_carries_version_and_digest_and_stays_byte_identical(small, tmp_path):
    from servesim import __version__

    texts = []
    for i in range(2):
        res = invoke("run", small, "--out", tmp_path / f"o{i}", "--no-report")
        assert res.exit_code == 0, res.output
        texts.append((tmp_path / f"o{i}" / "front-door" / "summary.json").read_text())
    assert texts[0] == texts[1]
    summary = json.loads(texts[0])
    assert next(iter(summary)) == "servesim"
    assert summary["servesim"]["version"] == __version__
    resolved = yaml.safe_load((tmp_path / "o0" / "front-door" / "scenario.resolved.yaml").read_text())
    assert summary["servesim"]["scenario_sha256"] == scenario_digest(resolved)
    run = json.loads((tmp_path / "o0" / "front-door" / "run.json").read_text())
    assert run["command"][:2] == ["servesim", "run"] and str(small) in run["command"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", run["started_at"])
    assert run["libraries"]["numpy"] and run["libraries"]["numba"]
    assert run["scenario_sha256"] == summary["servesim"]["scenario_sha256"]
    assert run["status"] == "ok"
    res = invoke("run", small, "--out", tmp_path / "o2", "--no-report", "--seed", "4")
    other = json.loads((tmp_path / "o2" / "front-door" / "summary.json").read_text())
    assert other["servesim"]["scenario_sha256"] != summary["servesim"]["scenario_sha256"]
