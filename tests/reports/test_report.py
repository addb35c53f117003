"""build_report end to end on a synthetic run directory, and the figures' edge cases."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import servesim
from servesim.reports._data import load_run, run_from_frames
from servesim.reports._roofline_fig import plot_run_roofline
from servesim.reports.figures import (
    plot_kv_bar,
    plot_kv_timeline,
    plot_latency_cdfs,
    plot_prefix_hit_rate,
    plot_step_time_split,
    plot_timelines,
)
from servesim.reports.report import build_report, interpret

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EXPECTED_FIGS = {
    "fig_latency_cdf",
    "fig_timeline",
    "fig_kv_timeline",
    "fig_kv_bar",
    "fig_step_time",
    "fig_roofline",
    "fig_prefix_hit",
}


@pytest.fixture(scope="module")
def built(synthetic_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    run_dir = tmp_path_factory.mktemp("built") / "run"
    shutil.copytree(synthetic_run, run_dir)
    return build_report(run_dir)


def test_report_writes_markdown_html_and_every_figure(built: dict[str, Path]) -> None:
    assert set(built) == {"report_md", "report_html"} | EXPECTED_FIGS
    for key in EXPECTED_FIGS:
        assert built[key].name == f"{key}.png"
        assert built[key].read_bytes()[:8] == PNG_MAGIC
    md = built["report_md"].read_text()
    for needle in (
        "# servesim report: synthetic",
        "## What this shows",
        "## Memory budget",
        "## Configuration",
        "KV capacity (tokens)",
        "contiguous-max",
        "paged-16",
        "overloaded",
        "](fig_kv_bar.png)",
    ):
        assert needle in md, needle
    # No absolute paths or timestamps leak into the text.
    assert str(built["report_md"].parent) not in md


def test_html_draws_every_figure_interactively_and_offline(built: dict[str, Path]) -> None:
    html = built["report_html"].read_text()
    assert html.startswith("<!DOCTYPE html>")
    # One interactive figure per PNG, drawn by plotly.js embedded once; no images, no fetches.
    assert html.count('<div class="plot" data-spec=') == len(EXPECTED_FIGS)
    assert html.count("<script>") == 2  # plotly.js once, then the report's own script
    assert "<img" not in html
    markup = re.sub(r"<script>.*?</script>", "", html, flags=re.S)  # plotly.js has URL strings
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", markup)
    assert 'class="sortable"' in html
    assert f"servesim {servesim.__version__}" in html
    assert f"servesim {servesim.__version__}" in built["report_md"].read_text()


def test_interpretation_says_who_kept_up_and_names_the_starved_one(
    built: dict[str, Path],
) -> None:
    md = built["report_md"].read_text()
    para = md.split("## What this shows\n\n", 1)[1].split("\n", 1)[0]
    # The three served variants all kept up with the same arrivals: throughput is set by the
    # arrivals, so the paragraph compares latency instead of ranking throughput.
    assert para.startswith("Every variant that completed requests kept up with the offered load")
    assert "highest output throughput" not in para
    assert "The lowest p99 TTFT was radix's" in para
    assert "No request completed for overloaded" in para


def test_overload_banner_comes_first(built: dict[str, Path]) -> None:
    md = built["report_md"].read_text()
    banner = md.index("**Overloaded: arrivals exceeded what this variant could serve.**")
    assert banner < md.index("Fabricated for tests.") < md.index("## What this shows")
    assert "- overloaded: 2.64 requests/s arrived over 9.5 min and it completed none" in md
    html = built["report_html"].read_text()
    assert html.index('<div class="banner" role="alert">') < html.index("Fabricated for tests.")


def test_two_builds_are_byte_identical(built: dict[str, Path], tmp_path: Path) -> None:
    again = build_report(built["report_md"].parent, out_dir=tmp_path)
    assert again["report_md"].read_bytes() == built["report_md"].read_bytes()
    assert again["report_html"].read_bytes() == built["report_html"].read_bytes()
    for key in EXPECTED_FIGS:
        assert again[key].read_bytes() == built[key].read_bytes(), key


# --------------------------------------------------------------------------------------------
# Edge cases on small hand-made frames (fast: one figure each)
# --------------------------------------------------------------------------------------------


@pytest.fixture
def edge_run(synthetic_run: Path) -> object:
    """Two variants: 'ok' (a slice of real rows, no prefix cache) and 'empty' (no steps, one
    rejected request with NaN everywhere, summary with nulls)."""
    full = load_run(synthetic_run)
    steps = full.steps["paged-16"].iloc[:2000].assign(variant="ok")
    reqs = full.requests["paged-16"].iloc[:300].assign(variant="ok")
    reqs.loc[reqs.index[:50], ["ttft_ms", "tpot_ms", "e2el_ms"]] = np.nan
    empty_req = reqs.iloc[:1].assign(
        variant="empty", status="rejected", ttft_ms=np.nan, tpot_ms=np.nan, e2el_ms=np.nan,
        first_token_s=np.nan, finish_s=np.nan,
    )  # fmt: skip
    summary = {
        "scenario": {"name": "edge", "seed": 1, "description": ""},
        "variants": {
            "ok": dict(full.summaries["paged-16"]),
            "empty": {"completed": 0, "num_rejected": 1, "p99_ttft_ms": None, "slo": {}},
        },
    }
    return run_from_frames(summary, pd.concat([reqs, empty_req]), steps, run_dir=Path("."))


@pytest.mark.parametrize(
    "plot",
    [
        plot_latency_cdfs,
        plot_timelines,
        plot_kv_timeline,
        plot_kv_bar,
        plot_step_time_split,
        plot_run_roofline,
    ],
)
def test_figures_tolerate_empty_variant_and_nans(
    plot: object, edge_run: object, tmp_path: Path
) -> None:
    out = plot(edge_run, tmp_path / "f.png")  # type: ignore[operator]
    assert out == tmp_path / "f.png"
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_prefix_figure_is_skipped_without_a_prefix_cache(edge_run: object, tmp_path: Path) -> None:
    assert plot_prefix_hit_rate(edge_run, tmp_path / "p.png") is None  # type: ignore[arg-type]
    assert not (tmp_path / "p.png").exists()


def test_roofline_figure_is_skipped_without_roofline_data(edge_run: object, tmp_path: Path) -> None:
    for s in edge_run.summaries.values():  # type: ignore[attr-defined]
        s.pop("roofline", None)  # type: ignore[attr-defined]
    assert plot_run_roofline(edge_run, tmp_path / "r.png") is None  # type: ignore[arg-type]


def test_interpretation_handles_missing_numbers(edge_run: object) -> None:
    text = interpret(edge_run)  # type: ignore[arg-type]
    assert text.startswith("ok kept up with the offered")
    assert "No request completed for empty (1 rejected)" in text


def test_interpretation_explains_throughput_by_batch_and_waste() -> None:
    base = {"completed": 10, "kv_capacity_tokens": 1000, "num_preemptions": 0}
    summary = {
        "scenario": {"name": "x", "seed": 0},
        "variants": {
            "contiguous": {**base, "output_throughput": 100.0, "mean_batch_size": 8.0,
                           "kv_reserved_frac": 0.4, "kv_internal_frag_frac": 0.2,
                           "kv_external_frag_frac": 0.1, "kv_free_frac": 0.05},
            "paged": {**base, "output_throughput": 250.0, "mean_batch_size": 24.0,
                      "kv_reserved_frac": 0.0, "kv_internal_frag_frac": 0.02,
                      "kv_external_frag_frac": 0.0},
        },
    }  # fmt: skip
    empty = pd.DataFrame({"variant": pd.Series(dtype=str)})
    text = interpret(run_from_frames(summary, empty, empty))
    assert text.startswith(
        "paged had the highest output throughput (250 tokens/s, 2.50x contiguous's 100)"
    )
    assert "larger mean batch (24.0 vs 8.0" in text
    assert "(2% vs 70%)" in text


def test_reports_does_not_import_the_simulator() -> None:
    code = (
        "import sys, servesim.reports.report, servesim.reports.plan_report;"
        "bad = sorted(m for m in sys.modules if m.startswith('servesim.simulator'));"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])
