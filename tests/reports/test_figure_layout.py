"""Every text of every figure lies inside the figure: no clipped legend, label or title.

The figures place their axes with fixed margins (no layout engine, for speed), so this test is
what keeps them honest: it renders each figure and checks the window extent of every visible
text (titles, axis labels, tick labels, annotations, legend texts) and of every legend box
against the figure's bounding box, for a single-variant run (where the old legends were
clipped) and for the four-variant synthetic run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.text import Text

from servesim.reports._data import RunData, load_run, run_from_frames
from servesim.reports._roofline_fig import draw_run_roofline
from servesim.reports.figures import (
    draw_kv_bar,
    draw_kv_timeline,
    draw_latency_cdfs,
    draw_prefix_hit_rate,
    draw_step_time_split,
    draw_timelines,
)
from servesim.reports.plan_report import plot_latency_vs_rate, plot_pareto

TOLERANCE_PX = 1.0


def _outside(fig: Figure) -> list[str]:
    """Descriptions of visible texts and legends whose box leaves the figure."""
    renderer = FigureCanvasAgg(fig).get_renderer()  # the backend savefig uses for PNGs
    fig.draw(renderer)
    bbox = fig.bbox
    bad = []
    # Ticks outside an axis' view interval exist as artists but are never drawn: skip them.
    undrawn = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if not lo - 1e-9 * abs(hi - lo) <= tick.get_loc() <= hi + 1e-9 * abs(hi - lo):
                    undrawn.update({id(tick.label1), id(tick.label2)})
    artists = [t for t in fig.findobj(Text)
               if t.get_visible() and t.get_text().strip() and id(t) not in undrawn]  # fmt: skip
    artists += [leg for leg in fig.findobj(Legend) if leg.get_visible()]
    for artist in artists:
        if not artist.get_visible() or any(not a.get_visible() for a in _ancestors(artist)):
            continue
        ext = artist.get_window_extent(renderer)
        if (
            ext.x0 < bbox.x0 - TOLERANCE_PX
            or ext.y0 < bbox.y0 - TOLERANCE_PX
            or ext.x1 > bbox.x1 + TOLERANCE_PX
            or ext.y1 > bbox.y1 + TOLERANCE_PX
        ):
            name = artist.get_text() if isinstance(artist, Text) else "legend"
            bad.append(f"{name!r}: {ext.bounds} not in {bbox.bounds}")
    return bad


def _ancestors(artist: object) -> list:
    """Axes an artist belongs to (hidden spare panels hide their texts)."""
    ax = getattr(artist, "axes", None)
    return [ax] if ax is not None else []


@pytest.fixture(scope="module")
def four(synthetic_run: Path) -> RunData:
    return load_run(synthetic_run)


@pytest.fixture(scope="module")
def one(synthetic_run: Path) -> RunData:
    """The synthetic run's radix variant alone (it has a prefix cache, so every figure draws)."""
    full = load_run(synthetic_run)
    v = "radix"
    summary = {"scenario": {"name": "one", "seed": 0}, "variants": {v: dict(full.summaries[v])}}
    return run_from_frames(summary, full.requests[v], full.steps[v])


DRAWERS: list[tuple[str, Callable[[RunData], Figure | None]]] = [
    ("latency_cdf", draw_latency_cdfs),
    ("timeline", draw_timelines),
    ("kv_timeline", draw_kv_timeline),
    ("kv_bar", draw_kv_bar),
    ("step_time", draw_step_time_split),
    ("roofline", draw_run_roofline),
    ("prefix_hit", draw_prefix_hit_rate),
]


@pytest.mark.parametrize(("name", "draw"), DRAWERS, ids=[n for n, _ in DRAWERS])
@pytest.mark.parametrize("which", ["one", "four"])
def test_run_figure_texts_lie_inside_the_figure(
    name: str, draw: Callable[[RunData], Figure | None], which: str,
    request: pytest.FixtureRequest,
) -> None:  # fmt: skip
    run = request.getfixturevalue(which)
    fig = draw(run)
    assert fig is not None, f"{name} drew nothing for {which}"
    assert _outside(fig) == []


def test_plan_figure_texts_lie_inside_the_figure() -> None:
    df = pd.DataFrame({
        "tokens_per_s_per_user": [10.0, 20.0, 30.0, 15.0],
        "tokens_per_s_per_gpu": [900.0, 500.0, 100.0, 400.0],
        "config": ["h100-sxm tp1 fp16 paged bs64", "h100-sxm tp2 fp8 paged bs32",
                   "a100-sxm4-80gb tp1 fp16 contiguous", "tp2"],
        "gpu": ["h100-sxm", "h100-sxm", "a100-sxm4-80gb", "a100-sxm4-80gb"],
    })  # fmt: skip
    fig = plot_pareto(df, label_col="config", hue="gpu")
    assert _outside(fig) == []  # type: ignore[arg-type]
    sweep = pd.DataFrame({"rate_per_s": np.tile([1.0, 2.0, 4.0], 2),
                          "p99_ttft_ms": [50.0, 80.0, 4e5, 60.0, 90.0, 1e3],
                          "gpu": ["a"] * 3 + ["b"] * 3})  # fmt: skip
    fig = plot_latency_vs_rate(sweep, "rate_per_s", "p99_ttft_ms", "gpu", slo=500.0, logy=True)
    assert _outside(fig) == []  # type: ignore[arg-type]


def test_the_check_catches_a_clipped_legend() -> None:
    """The old single-variant failure: a six-entry legend in one row, wider than the figure."""
    fig = Figure(figsize=(4.2, 3.0), dpi=100)
    ax = fig.subplots()
    for label in ("token states", "reserved", "internal fragmentation", "external fragmentation",
                  "cached (evictable)", "free"):  # fmt: skip
        ax.plot([0, 1], [0, 1], label=label)
    fig.legend(loc="lower center", ncols=6, fontsize=8)
    assert any(item.startswith("'") or item.startswith("legend") for item in _outside(fig))
