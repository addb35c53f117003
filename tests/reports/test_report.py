"""build_report end to end on a synthetic run directory, and the figures' edge cases."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import servesim
from servesim.reports._data import STEP_COLUMNS, load_run, run_from_frames
from servesim.reports._format import fmt_auto, fmt_int, fmt_ms, fmt_pct
from servesim.reports._roofline_fig import plot_run_roofline
from servesim.reports.figures import (
    plot_kv_bar,
    plot_kv_timeline,
    plot_latency_cdfs,
    plot_prefix_hit_rate,
    plot_step_time_split,
    plot_timelines,
)
from servesim.reports.report import build_report, interpret, report_context

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


def test_markdown_escapes_user_text(synthetic_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(synthetic_run, run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["scenario"]["description"] = (
        "# Owned\n## Also owned\n- a list\n![x](https://evil.example/x.png) "
        "<img src=https://evil.example/y.png> a | b **bold**"
    )
    (run_dir / "summary.json").write_text(json.dumps(summary))
    out = build_report(run_dir)
    md = out["report_md"].read_text()
    headings = [line for line in md.splitlines() if line.startswith("#")]
    assert all(h.startswith(("# servesim report:", "## ", "### ")) for h in headings), headings
    assert not re.search(r"!\[[^\]]*\]\(https?:", md)  # no remote image (ours are local PNGs)
    assert not re.search(r"(?<!\\)<img", md)
    assert r"\# Owned \#\# Also owned - a list \!\[x\](https://evil.example/x.png) \<img" in md
    html = out["report_html"].read_text()
    assert "&lt;img src=https://evil.example/y.png&gt;" in html and "<img" not in html


@pytest.mark.parametrize(
    ("fmt", "value", "text"),
    [
        (fmt_int, 4475.584, "4,476"),
        (fmt_auto, 1.0, "1"),
        (fmt_auto, 4475.584, "4,476"),
        (fmt_auto, 3.4412, "3.44"),
        (fmt_ms, 0.4213, "0.42 ms"),
        (fmt_ms, 842.1, "842 ms"),
        (fmt_ms, 1265.2, "1.27 s"),
        (fmt_ms, 52_369.6, "52.4 s"),
        (fmt_ms, 1_078_571.4, "18.0 min"),
        (fmt_ms, 9_000_000.0, "2.50 h"),
        (fmt_ms, 50.0, "50 ms"),
        (fmt_ms, None, "n/a"),
        (fmt_pct, 0.3454, "34.5%"),
    ],
)
def test_numbers_print_in_the_unit_that_reads(fmt: object, value: object, text: str) -> None:
    assert fmt(value) == text  # type: ignore[operator]


def test_overloaded_loser_with_free_kv_is_not_credited_to_kv() -> None:
    """The Azure-hour case: 'slow' cannot keep up (6 of 10 requests/s), its KV is 34 % free
    with no preemptions; 'fast' keeps up. The KV capacity gap must not be given as a reason."""
    n, rate = 1000, 10.0
    arrival = np.arange(n) / rate
    reqs, steps, variants = [], [], {}
    for v, finish in (("fast", arrival + 1.0), ("slow", np.arange(1, n + 1) / 6.0)):
        reqs.append(pd.DataFrame({
            "variant": v, "request_id": np.arange(n), "replica_id": 0, "arrival_s": arrival,
            "first_token_s": arrival + 0.1, "finish_s": finish, "status": "completed",
            "ttft_ms": (finish - arrival) * 500, "tpot_ms": 20.0,
            "e2el_ms": (finish - arrival) * 1e3,
        }))  # fmt: skip
        t = np.arange(0.0, finish.max(), 0.5)
        queue = np.zeros(len(t)) if v == "fast" else np.maximum(0, t * rate - t * 6.0)
        steps.append(pd.DataFrame({"variant": v, "replica_id": 0, "t_s": t, "duration_s": 0.5,
                                   "queue_len": queue}))  # fmt: skip
        variants[v] = {
            "completed": n, "output_throughput": 1200.0 if v == "fast" else 720.0,
            "num_preemptions": 0, "kv_free_frac": 0.34 if v == "slow" else 0.9,
            "kv_capacity_tokens": 479_695 if v == "slow" else 1_199_281,
            "mean_batch_size": 55.0 if v == "slow" else 20.0, "p99_ttft_ms": 1e6 if v == "slow"
            else 900.0, "step_time_compute_frac": 0.78 if v == "slow" else 0.5,
            "step_time_weight_read_frac": 0.1, "config": {"max_num_seqs": 256},
        }  # fmt: skip
    steps_df = pd.concat(steps).reindex(columns=list(STEP_COLUMNS), fill_value=0)
    run = run_from_frames({"scenario": {"name": "x"}, "variants": variants},
                          pd.concat(reqs), steps_df)  # fmt: skip
    text = interpret(run)
    assert text.startswith("fast kept up with the offered 10.0 requests/s; slow did not")
    assert "slow sustains about 6.0" in text and "requests/s (60% of its arrivals)" in text
    assert "slow's binding constraint was compute: 78% of its step time went to compute" in text
    assert "KV capacity did not bind (34% free on average, no preemptions)" in text
    assert "KV cache held more tokens" not in text
    context = report_context(run)
    assert len(context["banners"]) == 1 and context["banners"][0].startswith(
        "slow: 10.0 requests/s arrived over 1.7 min, but it sustains only about 6.0"
    )


def test_html_only_report_draws_no_png(synthetic_run: Path, tmp_path: Path) -> None:
    """``formats=("html",)`` skips the PNGs (most of a report's time) and still shows every
    figure interactively; an unknown format is an error."""
    out = build_report(synthetic_run, out_dir=tmp_path, formats=("html",))
    assert set(out) == {"report_html"}
    assert not list(tmp_path.glob("*.png")) and not (tmp_path / "report.md").exists()
    html = out["report_html"].read_text()
    assert html.count('<div class="plot" data-spec=') == len(EXPECTED_FIGS)
    with pytest.raises(ValueError, match="'md' and/or 'html'"):
        build_report(synthetic_run, out_dir=tmp_path, formats=("pdf",))
