"""Time binning against brute force, and the sweep/capacity helpers in plan_report."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

import servesim
from servesim.reports._data import (
    binned_mean,
    cumulative_at,
    interval_integral,
    step_intervals,
    time_edges,
)
from servesim.reports._series import binned_means
from servesim.reports._style import axis_label
from servesim.reports.plan_report import (
    build_plan_report,
    pareto_front,
    plot_latency_vs_rate,
    plot_pareto,
)

from ._plan_data import PLAN, plan_frames


def test_interval_integral_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    start = rng.uniform(0, 10, 200)
    end = start + rng.uniform(0, 2, 200)  # overlapping intervals, as with several replicas
    value = rng.integers(0, 50, 200).astype(np.float64)
    edges = np.linspace(-1, 13, 57)
    want = np.array([np.sum(value * np.clip(np.minimum(end, e) - start, 0, None)) for e in edges])
    np.testing.assert_allclose(
        interval_integral(start, end, value, edges), want, rtol=1e-12, atol=1e-9
    )


def test_binned_mean_splits_a_step_across_bins() -> None:
    """A 4-sequence step over [0.5, 1.5) puts 2 sequence-seconds in each 1 s bin."""
    got = binned_mean(np.array([0.5]), np.array([1.5]), np.array([4.0]), np.array([0.0, 1.0, 2.0]))
    np.testing.assert_allclose(got, [2.0, 2.0])


def test_hold_extends_state_through_idle_gaps_per_replica() -> None:
    steps = pd.DataFrame(
        {"replica_id": [0, 0, 1], "t_s": [0.0, 5.0, 1.0], "duration_s": [1.0, 1.0, 1.0]}
    )
    _, end_zero = step_intervals(steps, hold=False)
    _, end_hold = step_intervals(steps, hold=True)
    assert end_zero.tolist() == [1.0, 6.0, 2.0]
    assert end_hold.tolist() == [5.0, 6.0, 2.0]  # replica 0 holds to its next step only


def test_cumulative_counter_sums_replicas_at_edges() -> None:
    steps = pd.DataFrame(
        {
            "replica_id": [0, 0, 1],
            "t_s": [0.0, 2.0, 0.5],
            "duration_s": [0.5, 0.5, 0.5],
            "hits": [10, 30, 7],
        }
    )
    got = cumulative_at(steps, "hits", np.array([0.0, 1.0, 3.0]))
    assert got.tolist() == [0.0, 17.0, 37.0]


@pytest.mark.parametrize(
    ("end_s", "width"), [(600.0, 5.0), (3600.0, 20.0), (0.37, 0.002), (0.0, 0.005)]
)
def test_time_edges_use_round_widths(end_s: float, width: float) -> None:
    edges = time_edges(end_s)
    assert edges[0] == 0 and edges[-1] >= end_s
    assert edges[1] - edges[0] == pytest.approx(width)
    assert len(edges) - 1 <= 200


def test_axis_labels_carry_units() -> None:
    assert axis_label("p99_ttft_ms") == "p99 ttft (ms)"
    assert axis_label("rate_per_s") == "rate (requests/s)"
    assert axis_label("tokens_per_s_per_gpu") == "tokens/s per GPU"
    assert axis_label("tokens_per_s_per_user") == "tokens/s per user"


def test_pareto_front_exact() -> None:
    df = pd.DataFrame(
        {
            "tokens_per_s_per_user": [10, 20, 30, 15, 30, np.nan],
            "tokens_per_s_per_gpu": [900, 500, 100, 400, 50, 5000],
        }
    )
    # (15, 400) is dominated by (20, 500); (30, 50) by (30, 100); NaN never on the front.
    assert pareto_front(df).tolist() == [True, True, True, False, False, False]


def _sweep() -> pd.DataFrame:
    rows = [
        {"gpu": g, "rate_per_s": r, "median_ttft_ms": f * 50 * r, "p99_ttft_ms": f * 200 * r}
        for g, f in (("a100", 2.0), ("h100", 1.0))
        for r in (1, 2, 4, 8)
    ]
    df = pd.DataFrame(rows)
    df.loc[3, "p99_ttft_ms"] = np.inf  # diverged queue: drawn as a gap
    return df


def test_latency_vs_rate_writes_png(tmp_path: Path) -> None:
    out = plot_latency_vs_rate(
        _sweep(), "rate_per_s", ["median_ttft_ms", "p99_ttft_ms"], "gpu", slo=1000.0,
        path=tmp_path / "lat.png", logy=True,
    )  # fmt: skip
    assert out == tmp_path / "lat.png" and out.read_bytes()[:4] == b"\x89PNG"


def test_latency_vs_rate_without_path_returns_figure() -> None:
    fig = plot_latency_vs_rate(_sweep(), "rate_per_s", "p99_ttft_ms", slo={"p99_ttft_ms": 500})
    assert isinstance(fig, Figure)
    assert fig.axes[0].get_ylabel() == "p99 ttft (ms)"


def test_plan_plots_name_missing_columns() -> None:
    with pytest.raises(ValueError, match="p50_ttft_ms"):
        plot_latency_vs_rate(_sweep(), "rate_per_s", "p50_ttft_ms")
    with pytest.raises(ValueError, match="tokens_per_s_per_gpu"):
        plot_pareto(pd.DataFrame({"tokens_per_s_per_user": [1.0]}))


def test_pareto_plot_writes_png(tmp_path: Path) -> None:
    df = pd.DataFrame(
        {
            "tokens_per_s_per_user": [10.0, 20.0, 30.0, 15.0],
            "tokens_per_s_per_gpu": [900.0, 500.0, 100.0, 400.0],
            "config": ["bs64", "bs32", "bs8", "tp2"],
            "gpu": ["h100", "h100", "a100", "a100"],
        }
    )
    out = plot_pareto(df, label_col="config", hue="gpu", path=tmp_path / "p.png")
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_sequential_binning_matches_brute_force_and_the_general_method() -> None:
    """Two replicas of back-to-back steps with idle gaps: the per-replica cumulative-sum path
    gives the brute-force bin averages, as does the general sort-based one; overlapping
    intervals fall back to the general method."""
    rng = np.random.default_rng(1)
    starts, ends, reps = [], [], []
    for r in range(2):
        dur = rng.uniform(0.01, 0.3, 300)
        gap = np.where(rng.random(300) < 0.1, rng.uniform(0, 1, 300), 0.0)
        s = np.cumsum(dur + gap) - dur
        starts.append(s)
        ends.append(s + dur)
        reps.append(np.full(300, r))
    start, end, replica = np.concatenate(starts), np.concatenate(ends), np.concatenate(reps)
    values = rng.integers(0, 50, (3, 600)).astype(np.float64)
    edges = np.linspace(0, float(end.max()) + 1, 41)
    width = np.diff(edges)
    want = np.array([
        [np.sum(v * np.clip(np.minimum(end, b) - np.maximum(start, a), 0, None)) / (b - a)
         for a, b in itertools.pairwise(edges)]
        for v in values
    ])  # fmt: skip
    assert width.min() > 0
    np.testing.assert_allclose(binned_means(start, end, values, edges, replica), want, rtol=1e-9)
    np.testing.assert_allclose(binned_means(start, end, values, edges), want, rtol=1e-9)
    overlapping = end + 0.5  # steps of one replica overlap: not sequential
    want_overlap = binned_means(start, overlapping, values, edges)
    np.testing.assert_allclose(
        binned_means(start, overlapping, values, edges, replica), want_overlap, rtol=1e-12
    )


def test_plan_report_reads_as_a_decision(tmp_path: Path) -> None:
    """Integers as integers, headings not file stems, real lists, the shared templates."""
    table, curves = plan_frames()
    texts = build_plan_report(tmp_path, table=table, curves=curves, plan=PLAN)
    md, html = texts["report.md"], texts["report.html"]
    row = next(line for line in md.splitlines() if line.startswith("| 1 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # rank, candidate, max req/s, replicas, GPUs, $/hour, $/M, tok/s per GPU, tok/s per user
    assert cells[:9] == ["1", "h100-sxm tp1 fp16 paged", "7.25", "2", "2", "$6.00", "$0.33",
                         "4,476", "38.2"]  # fmt: skip
    assert "1.0" not in cells and "4475.584" not in md
    assert "## Throughput per GPU vs throughput per user" in md and "## pareto" not in md
    assert r"Target: **12 requests/s** with p99 TTFT \<= 500 ms, p99 TPOT \<= 50 ms." in md
    assert html.count("<ul>") == 3 and "<li><strong>h100-sxm tp1 fp16 paged 70b</strong>" in html
    assert html.count('<div class="plot" data-spec=') == 3 and 'class="sortable"' in html
    assert f"servesim {servesim.__version__}" in md and f"servesim {servesim.__version__}" in html
    assert {p.name for p in tmp_path.iterdir()} == {"pareto.png", "ttft_vs_rate.png",
                                                    "tpot_vs_rate.png"}  # fmt: skip
