"""``servesim run/check/schema`` end to end with a stand-in engine.

The engine is replaced by a stand-in ``run_scenario`` (STYLE section 10) so these tests pin
the CLI's own contract: the exact ScenarioCfg it passes, the files it writes, exit codes,
``--json``, ``--set``, ``--seed``, ``--quick``, partial results. The real engine runs the
gallery in ``test_run_gallery.py``.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

import servesim.simulator.build
from servesim.simulator.cli import app
from servesim.simulator.errors import CapacityError
from servesim.simulator.results import Results, VariantResult
from servesim.simulator.scenario import ScenarioCfg, load_scenario, resolve_variants

SCENARIO: dict[str, Any] = {
    "name": "cli-small",
    "seed": 4,
    "hardware": {"gpu": "h100-sxm"},
    "model": {"name": "llama-3.1-8b", "max_model_len_tokens": 4096},
    "workload": {
        "num_requests": 20,
        "arrivals": {"process": "poisson", "rate_per_s": 5.0},
        "lengths": {
            "prompt": {"dist": "fixed", "tokens": 64},
            "output": {"dist": "fixed", "tokens": 8},
        },
    },
    "slo": {"ttft_ms": 500},
    "variants": [{"name": "paged"}, {"name": "radix", "kv_cache": {"manager": "radix"}}],
    "quick": {"workload.num_requests": 5},
}


class StandIn:
    """Records the ScenarioCfg it is given and returns tiny results; can fail on a variant."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[ScenarioCfg] = []
        self.fail_on = fail_on

    def __call__(self, cfg: ScenarioCfg, *, on_variant_done: Any = None) -> Results:
        self.calls.append(cfg)
        results = Results(scenario_name=cfg.name, seed=cfg.seed, description=cfg.description)
        for i, (name, _) in enumerate(resolve_variants(cfg)):
            if name == self.fail_on:
                raise CapacityError(f"variant {name}: weights do not fit (stand-in)")
            vr = VariantResult(
                name=name,
                summary={"completed": 10 + i, "request_throughput": 2.5, "median_ttft_ms": 12.0,
                         "p99_ttft_ms": 40.0, "kv_free_frac": 0.25, "num_rejected": 0},
                requests=pd.DataFrame({"request_id": [0, 1], "ttft_ms": [10.0, 14.0]}),
                steps=pd.DataFrame({"t_s": [0.0, 0.1], "num_running": [1, 2]}),
            )
            results.variants.append(vr)
            if on_variant_done is not None:
                on_variant_done(vr)
        return results


@pytest.fixture
def scenario_path(tmp_path: Path) -> Path:
    path = tmp_path / "cli-small.yaml"
    path.write_text(yaml.safe_dump(SCENARIO, sort_keys=False))
    return path


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> StandIn:
    stand_in = StandIn()
    monkeypatch.setattr(servesim.simulator.build, "run_scenario", stand_in)
    return stand_in


@pytest.fixture
def reports_calls(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Replace reports.report with a recorder (the real one is exercised by the gallery)."""
    calls: list[Path] = []
    fake = types.ModuleType("servesim.reports.report")

    def build_report(run_dir: Path) -> dict[str, Path]:
        calls.append(Path(run_dir))
        (Path(run_dir) / "report.md").write_text("# report\n")
        return {"md": Path(run_dir) / "report.md"}

    fake.build_report = build_report  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "servesim.reports.report", fake)
    return calls


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def test_run_writes_the_run_directory(scenario_path, tmp_path, engine, reports_calls):
    out = tmp_path / "out"
    result = invoke("run", scenario_path, "--out", out)
    assert result.exit_code == 0, result.output
    run_dir = out / "cli-small"
    for name in ("scenario.resolved.yaml", "summary.json", "requests.parquet", "steps.parquet",
                 "report.md"):
        assert (run_dir / name).is_file(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert list(summary["variants"]) == ["paged", "radix"]
    assert summary["scenario"]["seed"] == 4
    assert reports_calls == [run_dir]
    # The table names each variant and the headline metrics; the output dir is printed.
    for text in ("paged", "radix", "TTFT p50 / p99", "12.0 / 40.0", "25.0%", str(run_dir)):
        assert text in result.output, text


def test_run_passes_exactly_the_loaded_scenario(scenario_path, tmp_path, engine, reports_calls):
    result = invoke("run", scenario_path, "--out", tmp_path / "out", "--no-report")
    assert result.exit_code == 0, result.output
    assert engine.calls == [load_scenario(scenario_path)]
    assert reports_calls == []


def test_resolved_yaml_has_every_default_and_reloads(scenario_path, tmp_path, engine):
    invoke("run", scenario_path, "--out", tmp_path / "out", "--no-report")
    resolved = tmp_path / "out" / "cli-small" / "scenario.resolved.yaml"
    data = yaml.safe_load(resolved.read_text())
    assert data["scheduler"]["max_num_batched_tokens"] == 8192
    assert data["kv_cache"]["watermark_frac"] == 0.01
    assert data["engine"]["cost_model"] == "roofline"
    assert data["hardware"]["swap_space_gib"] == 4.0
    assert load_scenario(resolved) == load_scenario(scenario_path)


def test_set_and_seed_apply(scenario_path, tmp_path, engine):
    result = invoke("run", scenario_path, "--out", tmp_path / "out", "--no-report",
                    "--set", "scheduler.max_num_seqs=32", "--set", "variants.1.name=radix-cache",
                    "-s", "hardware.replicas=2", "--seed", "9")
    assert result.exit_code == 0, result.output
    (cfg,) = engine.calls
    assert cfg.scheduler.max_num_seqs == 32
    assert cfg.hardware.replicas == 2
    assert cfg.seed == 9
    assert [v.name for v in cfg.variants] == ["paged", "radix-cache"]
    summary = json.loads((tmp_path / "out" / "cli-small" / "summary.json").read_text())
    assert summary["scenario"]["seed"] == 9
    resolved = yaml.safe_load(
        (tmp_path / "out" / "cli-small" / "scenario.resolved.yaml").read_text()
    )
    assert resolved["seed"] == 9
    assert resolved["scheduler"]["max_num_seqs"] == 32


def test_quick_and_full(scenario_path, tmp_path, engine):
    assert invoke("run", scenario_path, "-o", tmp_path / "a", "--no-report",
                  "--quick").exit_code == 0
    assert invoke("run", scenario_path, "-o", tmp_path / "b", "--no-report",
                  "--full").exit_code == 0
    quick, full = engine.calls
    assert quick.workload.num_requests == 5
    assert full.workload.num_requests == 20


def test_json_prints_only_the_summary(scenario_path, tmp_path, engine, reports_calls):
    result = invoke("run", scenario_path, "--out", tmp_path / "out", "--json")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    on_disk = json.loads((tmp_path / "out" / "cli-small" / "summary.json").read_text())
    assert printed == on_disk
    assert printed["variants"]["radix"]["completed"] == 11
    # No progress bar on a machine-readable run.
    assert engine.calls[0].engine.progress is False
    assert reports_calls  # the report is still built


def test_a_failing_variant_keeps_the_finished_ones(scenario_path, tmp_path, monkeypatch):
    engine = StandIn(fail_on="radix")
    monkeypatch.setattr(servesim.simulator.build, "run_scenario", engine)
    result = invoke("run", scenario_path, "--out", tmp_path / "out", "--no-report")
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "weights do not fit" in result.stderr
    assert "paged" in result.stderr  # names the variants kept
    run_dir = tmp_path / "out" / "cli-small"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert list(summary["variants"]) == ["paged"]
    assert (run_dir / "requests.parquet").is_file()


def test_a_failing_first_variant_writes_no_results(scenario_path, tmp_path, monkeypatch):
    monkeypatch.setattr(servesim.simulator.build, "run_scenario", StandIn(fail_on="paged"))
    result = invoke("run", scenario_path, "--out", tmp_path / "out", "--no-report")
    assert result.exit_code == 2
    assert "weights do not fit" in result.output
    run_dir = tmp_path / "out" / "cli-small"
    assert (run_dir / "scenario.resolved.yaml").is_file()
    assert not (run_dir / "summary.json").exists()


def test_a_rerun_does_not_mix_old_results(scenario_path, tmp_path, monkeypatch):
    monkeypatch.setattr(servesim.simulator.build, "run_scenario", StandIn())
    assert invoke("run", scenario_path, "-o", tmp_path, "--no-report").exit_code == 0
    monkeypatch.setattr(servesim.simulator.build, "run_scenario", StandIn(fail_on="paged"))
    assert invoke("run", scenario_path, "-o", tmp_path, "--no-report").exit_code == 2
    assert not (tmp_path / "cli-small" / "summary.json").exists()


def test_check_prints_the_resolved_variants(scenario_path):
    result = invoke("check", scenario_path, "--set", "kv_cache.block_size_tokens=32")
    assert result.exit_code == 0, result.output
    for text in ("cli-small", "2 variant(s)", "paged", "radix", "block 32", "OK",
                 "quick form available"):
        assert text in result.output, text


def test_check_yaml_dumps_each_variant(scenario_path):
    result = invoke("check", scenario_path, "--yaml", "--quick")
    assert result.exit_code == 0, result.output
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert [d["kv_cache"]["manager"] for d in docs] == ["paged", "radix"]
    assert all(d["workload"]["num_requests"] == 5 for d in docs)


def test_schema_is_json_schema():
    result = invoke("schema")
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema["title"] == "servesim scenario"
    assert {"hardware", "model", "kv_cache", "scheduler", "workload", "variants",
            "quick"} <= set(schema["properties"])


def test_help_lists_the_commands():
    result = invoke("--help")
    for name in ("run", "check", "schema"):
        assert name in result.output
