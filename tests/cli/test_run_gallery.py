"""Every gallery scenario's quick form runs through ``servesim run`` with the real engine,
and its report builds; plus determinism and ``--json`` on the real engine.

Quick forms need nothing outside the repository (synthetic workloads or the trace excerpts
in ``tests/data/traces``). Scenarios whose quick form takes more than ~20 s are marked slow.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from servesim.simulator.cli import app

REPO = Path(__file__).resolve().parents[2]
GALLERY = sorted((REPO / "scenarios").glob("*.yaml"))
SLOW: set[str] = set()  # stems of gallery files whose quick form takes > 20 s


def _params() -> list[object]:
    return [
        pytest.param(p, id=p.stem, marks=[pytest.mark.slow] if p.stem in SLOW else [])
        for p in GALLERY
    ]


@pytest.mark.parametrize("path", _params())
def test_gallery_quick_form_runs_and_reports(path, tmp_path):
    result = CliRunner().invoke(app, ["run", str(path), "--quick", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    run_dir = tmp_path / path.stem
    summary = json.loads((run_dir / "summary.json").read_text())
    names = list(summary["variants"])
    assert names, summary
    for name, s in summary["variants"].items():
        assert s["completed"] + s["num_rejected"] > 0, name
        assert s["completed"] > 0, (name, s)
    requests = pd.read_parquet(run_dir / "requests.parquet")
    steps = pd.read_parquet(run_dir / "steps.parquet")
    assert set(requests["variant"]) == set(names)
    assert set(steps["variant"]) == set(names)
    assert (run_dir / "scenario.resolved.yaml").is_file()
    assert (run_dir / "report.md").is_file()
    assert (run_dir / "report.html").is_file()
    assert list(run_dir.rglob("*.png")), "the report has no figures"


def test_quickstart_json_is_deterministic(tmp_path):
    path = REPO / "scenarios" / "quickstart.yaml"
    outs = []
    for i in range(2):
        result = CliRunner().invoke(
            app, ["run", str(path), "--quick", "--json", "--no-report", "--out", str(tmp_path / str(i))]
        )
        assert result.exit_code == 0, result.output
        outs.append(json.loads(result.stdout))
    assert outs[0] == outs[1]
    a = pd.read_parquet(tmp_path / "0" / "quickstart" / "requests.parquet")
    b = pd.read_parquet(tmp_path / "1" / "quickstart" / "requests.parquet")
    pd.testing.assert_frame_equal(a, b)


def test_seed_changes_the_request_stream(tmp_path):
    path = REPO / "scenarios" / "quickstart.yaml"
    frames = []
    for seed in (1, 2):
        result = CliRunner().invoke(
            app, ["run", str(path), "--quick", "--no-report", "--seed", str(seed), "--json",
                  "--out", str(tmp_path / str(seed))]
        )
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["scenario"]["seed"] == seed
        frames.append(pd.read_parquet(tmp_path / str(seed) / "quickstart" / "requests.parquet"))
    assert not frames[0]["prompt_tokens"].equals(frames[1]["prompt_tokens"])


def test_weights_that_do_not_fit_exit_2_with_the_breakdown(tmp_path):
    path = REPO / "scenarios" / "quickstart.yaml"
    result = CliRunner().invoke(
        app, ["run", str(path), "--quick", "--no-report", "--out", str(tmp_path),
              "--set", "model.name=llama-3.1-70b"]
    )
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "weight" in result.output.lower()


def test_a_later_variant_that_does_not_fit_keeps_the_first(tmp_path):
    path = REPO / "scenarios" / "quickstart.yaml"
    result = CliRunner().invoke(
        app, ["run", str(path), "--quick", "--no-report", "--out", str(tmp_path),
              "--set", "variants=[{name: fits}, {name: too-big, model: {name: llama-3.1-70b}}]"]
    )
    assert result.exit_code == 2, result.output
    summary = json.loads((tmp_path / "quickstart" / "summary.json").read_text())
    assert list(summary["variants"]) == ["fits"]
