"""The static figures of a run report (PNG, for ``report.md``): ``RunData`` in, a PNG path out.

Each figure has a ``draw_*`` function that returns the matplotlib ``Figure`` (what the tests
measure: every text box inside the figure) and a ``plot_*`` function that saves it. They draw
a :class:`~servesim.reports._series.RunSeries` (computed once per report; the interactive HTML
figures draw the same numbers), tolerate variants with no completed request, no steps or NaN
latencies, and the report leaves out a figure that would have no data (``plot_*`` returns
None). See ``docs/reports.md`` for how to read each one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from servesim.reports._data import FloatArray, RunData, finite
from servesim.reports._roofline_fig import draw_run_roofline
from servesim.reports._series import (
    LATENCY_METRICS,
    RunSeries,
    compute_series,
    duration_unit,
    kv_split_average,
    prefix_variants,
    run_slo,
    time_unit,
)
from servesim.reports._style import (
    BOUND_PARTS,
    KV_PARTS,
    legend_rows,
    new_figure,
    place_axes,
    plain_log_ticks,
    save_figure,
    set_title,
    variant_colors,
)


def _series(run: RunData, series: RunSeries | None, edges: FloatArray | None) -> RunSeries:
    return compute_series(run, edges_s=edges) if series is None else series


def _panel_title(ax: Axes, variant: str, color: str, extra: str = "") -> None:
    set_title(ax, variant + (f"\n{extra}" if extra else ""), color=color, fontsize=9)
    for spine in ax.spines.values():
        spine.set_edgecolor(color)


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    cols = min(max(n, 1), max_cols)
    return -(-max(n, 1) // cols), cols


def _bottom_legend(fig: Figure, handles: list[Patch], fontsize: float = 8) -> float:
    """A legend centred along the bottom edge; returns the height it takes (inches)."""
    ncols, nrows = legend_rows([str(h.get_label()) for h in handles], fig.get_size_inches()[0])
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.005), ncols=ncols,
               fontsize=fontsize, frameon=False)  # fmt: skip
    return 0.08 + 0.22 * nrows


# --------------------------------------------------------------------------------------------
# 1. Latency CDFs and timelines
# --------------------------------------------------------------------------------------------


def draw_latency_cdfs(run: RunData, series: RunSeries | None = None) -> Figure:
    """TTFT, TPOT and E2EL empirical CDFs, one line per variant, SLOs as dashed lines.

    Only requests with a defined value count (TPOT is undefined for one-token outputs); a
    variant with none is listed in the legend as "no data". Each panel's unit is the one that
    reads for its values (ms, s or min); the x axis turns logarithmic past two decades.
    """
    series = _series(run, series, None)
    colors = variant_colors(run.variants)
    fig = new_figure(width_in=13.0, height_in=4.2)
    axes = place_axes(fig, 1, 3, left_in=0.65, top_in=0.75, bottom_in=0.55, wspace_in=0.55,
                      ybins=4)  # fmt: skip
    for i, (ax, (col, title, slo_key)) in enumerate(zip(axes, LATENCY_METRICS, strict=True)):
        highs = [float(s.cdf[col][0][-1]) for s in series.by_variant.values() if s.cdf[col][2]]
        lows = [float(x[x > 0][0]) for s in series.by_variant.values()
                for x in (s.cdf[col][0],) if (x > 0).any()]  # fmt: skip
        unit, scale = duration_unit(max(highs, default=0.0))
        missing = []
        for v in run.variants:
            xs, ys, n = series.by_variant[v].cdf[col]
            if n == 0:
                missing.append(v)
                ax.plot([], [], color=colors[v], label=f"{v} (no data)")
                continue
            ax.step(xs / scale, ys, where="post", color=colors[v], label=f"{v} (n={n:,d})")
        if slo_key in series.slo:
            value = series.slo[slo_key]
            ax.axvline(value / scale, color="black", ls="--", lw=1, label="SLO")
            title += f", SLO {value:g} ms"
        if lows and max(highs) / min(lows) > 100:
            ax.set_xscale("log")
            plain_log_ticks(ax.xaxis)
        if missing and i > 0:
            title += f"\nno data: {', '.join(missing)}"
        set_title(ax, title, fontsize=9.5)
        ax.set_xlabel(f"{col.split('_')[0].upper()} ({unit})")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    # One legend: the variants are the same in every panel (n counts TTFT's requests).
    axes[0].legend(fontsize=7, loc="lower right")
    axes[0].set_ylabel("fraction of requests")
    fig.suptitle("Request latency distributions (empirical CDF)", y=0.985)
    return fig


def plot_latency_cdfs(run: RunData, path: Path, *, series: RunSeries | None = None) -> Path:
    """Save :func:`draw_latency_cdfs` as a PNG."""
    return save_figure(draw_latency_cdfs(run, series), path)


def draw_timelines(
    run: RunData, series: RunSeries | None = None, *, edges: FloatArray | None = None
) -> Figure:
    """Output throughput, running batch size and queue length over time (time-binned).

    Batch size and queue length are time averages per bin, summed over a variant's replicas.
    """
    series = _series(run, series, edges)
    colors = variant_colors(run.variants)
    unit, scale = time_unit(float(series.edges_s[-1]))
    x = series.mid_s / scale
    fig = new_figure(width_in=11.0, height_in=7.6)
    ax_tp, ax_bs, ax_q = place_axes(fig, 3, 1, top_in=0.6, bottom_in=0.6, hspace_in=0.45, ybins=3,
                                    left_in=0.85, sharex=True)  # fmt: skip
    for v in run.variants:
        s = series.by_variant[v]
        ax_tp.plot(x, s.output_tokens_per_s, color=colors[v], label=v, lw=1.2)
        ax_bs.plot(x, s.running, color=colors[v], lw=1.2)
        ax_q.plot(x, s.queue, color=colors[v], lw=1.2)
    for ax, title, ylabel in (
        (ax_tp, "Output throughput", "output tokens/s"),
        (ax_bs, "Running batch size", "running sequences"),
        (ax_q, "Queue length", "waiting requests"),
    ):
        set_title(ax, title, fontsize=10)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
        ax.set_xlim(series.edges_s[0] / scale, series.edges_s[-1] / scale)
    ax_q.set_xlabel(f"simulated time ({unit}); bins of {series.bin_s:g} s")
    ax_tp.legend(fontsize=8, loc="upper right")
    fig.suptitle("Throughput, batch size and queue over time", y=0.985)
    return fig


def plot_timelines(
    run: RunData, path: Path, *, edges: FloatArray | None = None, series: RunSeries | None = None
) -> Path:
    """Save :func:`draw_timelines` as a PNG."""
    return save_figure(draw_timelines(run, series, edges=edges), path)


# --------------------------------------------------------------------------------------------
# 2. KV memory and step time: one panel per variant
# --------------------------------------------------------------------------------------------


#: Height of one variant's band in a banded figure, and the gap above it (data units, % of
#: the band's 0-100 scale); the gap holds the variant's label.
_BAND = 100.0
_BAND_GAP = 30.0


def _banded(
    run: RunData, series: RunSeries, *, title: str, ylabel: str,
    parts: Sequence[tuple[str, str, str]], attr: str, subtitle: Mapping[str, str],
    extra_handles: Sequence[Patch] = (),
) -> Figure:  # fmt: skip
    """One band per variant, stacked top to bottom on a single axes, each a stacked area of
    ``parts`` on its own 0-100 % scale with the variant's name (in its colour) above it.

    One axes instead of one per variant: the same picture at a fraction of the drawing cost
    (every matplotlib axes is tens of artists). The interactive figure keeps one row each.
    """
    colors = variant_colors(run.variants)
    unit, scale = time_unit(float(series.edges_s[-1]))
    n = len(run.variants)
    width = 11.0
    handles = [Patch(color=c, label=lab) for _, lab, c in parts] + list(extra_handles)
    _, nrows = legend_rows([str(h.get_label()) for h in handles], width)
    legend_in = 0.08 + 0.22 * nrows
    fig = new_figure(width_in=width, height_in=0.55 + 1.75 * n + 0.6 + legend_in)
    (ax,) = place_axes(fig, 1, 1, top_in=0.55, bottom_in=0.6 + legend_in, left_in=0.8)
    x = series.mid_s / scale
    x0, x1 = series.edges_s[0] / scale, series.edges_s[-1] / scale
    # Every stacked area of every band as one polygon collection (one artist, not one
    # fill_between each): the polygon of a part runs along its lower edge and back along its
    # upper one, exactly as fill_between builds it.
    polygons: list[FloatArray] = []
    fills: list[str] = []
    for i, v in enumerate(run.variants):
        s = series.by_variant[v]
        if not s.num_replicas:
            continue
        base = (n - 1 - i) * (_BAND + _BAND_GAP)
        top = base + 100 * np.cumsum(np.nan_to_num(getattr(s, attr)), axis=0)
        bottom = np.vstack([np.full(len(x), base), top[:-1]])
        for (_, _, color), lo, hi in zip(parts, bottom, top, strict=True):
            polygons.append(np.column_stack((np.r_[x, x[::-1]], np.r_[lo, hi[::-1]])))
            fills.append(color)
    if polygons:
        ax.add_collection(PolyCollection(polygons, facecolors=fills, linewidths=0),
                          autolim=False)  # fmt: skip
    ticks, labels = [], []
    for i, v in enumerate(run.variants):
        base = (n - 1 - i) * (_BAND + _BAND_GAP)
        ax.add_patch(Rectangle((x0, base), x1 - x0, _BAND, fill=False, edgecolor=colors[v],
                               linewidth=1.0))  # fmt: skip
        ax.text(x0, base + _BAND + 4, f"{v}: {subtitle[v]}", color=colors[v], fontsize=9,
                va="bottom", ha="left")  # fmt: skip
        ticks += [base, base + 50, base + _BAND]
        labels += ["0", "50", "100"]
    ax.set_yticks(ticks, labels, fontsize=8)
    ax.set_ylim(-4, n * (_BAND + _BAND_GAP) - 6)
    ax.set_xlim(x0, x1)
    for spine in ("left", "right", "top"):
        ax.spines[spine].set_visible(False)
    ax.set_xlabel(f"simulated time ({unit})")
    ax.set_ylabel(ylabel)
    _bottom_legend(fig, handles)
    fig.suptitle(title, y=0.985)
    return fig


def draw_kv_timeline(
    run: RunData, series: RunSeries | None = None, *, edges: FloatArray | None = None
) -> Figure:
    """KV memory split over time, one stacked band per variant, in % of its capacity."""
    series = _series(run, series, edges)
    sub = {v: (f"capacity {s.kv_capacity_tokens:,.0f} tokens" if s.num_replicas else "no steps")
           for v, s in series.by_variant.items()}  # fmt: skip
    return _banded(run, series, title="KV-cache memory split over time",
                   ylabel="KV cache (% of capacity)", parts=KV_PARTS, attr="kv_frac",
                   subtitle=sub)  # fmt: skip


def plot_kv_timeline(
    run: RunData, path: Path, *, edges: FloatArray | None = None, series: RunSeries | None = None
) -> Path:
    """Save :func:`draw_kv_timeline` as a PNG."""
    return save_figure(draw_kv_timeline(run, series, edges=edges), path)


def draw_kv_bar(run: RunData, series: RunSeries | None = None) -> Figure:
    """Time-averaged KV split, one stacked bar per variant (PagedAttention paper, Figure 2 style).

    Each segment is labelled with its percentage when it is wide enough to read.
    """
    colors = variant_colors(run.variants)
    averages = (
        {v: kv_split_average(run, v) for v in run.variants}
        if series is None
        else {v: series.by_variant[v].kv_average for v in run.variants}
    )
    n = len(run.variants)
    rotate = n > 3 or max((len(v) for v in run.variants), default=0) > 12
    bottom_in = 0.55 + (0.09 * max((len(v) for v in run.variants), default=0) if rotate else 0.1)
    width = max(6.0, 1.1 * n + 3.6)
    fig = new_figure(width_in=width, height_in=4.4 + bottom_in)
    (ax,) = place_axes(fig, 1, 1, right_in=2.1, top_in=0.45, bottom_in=bottom_in)
    for i, v in enumerate(run.variants):
        avg = averages[v]
        if avg is None:
            ax.text(i, 50, "no data", ha="center", va="center", rotation=90, fontsize=8)
            continue
        pct = 100 * np.asarray(avg, dtype=np.float64)
        bottoms = np.concatenate(([0.0], np.cumsum(pct)[:-1]))
        ax.bar(np.full(len(pct), i), pct, bottom=bottoms, color=[c for _, _, c in KV_PARTS],
               edgecolor="white", linewidth=0.5, width=0.6)  # fmt: skip
        for b, p in zip(bottoms, pct, strict=True):
            if p >= 4:
                ax.text(i, b + p / 2, f"{p:.0f}%", ha="center", va="center", fontsize=8)
    ax.set_xticks(np.arange(n), run.variants, rotation=30 if rotate else 0,
                  ha="right" if rotate else "center")  # fmt: skip
    for tick, v in zip(ax.get_xticklabels(), run.variants, strict=True):
        tick.set_color(colors[v])
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylim(0, 100)
    ax.set_ylabel("KV cache memory (% of capacity)")
    ax.legend(handles=[Patch(color=c, label=lab) for _, lab, c in reversed(KV_PARTS)],
              loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, borderaxespad=0)  # fmt: skip
    set_title(ax, "Where the KV memory goes (time-averaged)", fontsize=10)
    return fig


def plot_kv_bar(run: RunData, path: Path, *, series: RunSeries | None = None) -> Path:
    """Save :func:`draw_kv_bar` as a PNG."""
    return save_figure(draw_kv_bar(run, series), path)


def draw_step_time_split(
    run: RunData, series: RunSeries | None = None, *, edges: FloatArray | None = None
) -> Figure:
    """Share of wall time per bin spent on each bound (stacked), one band per variant; the gap
    to 100 % is idle time. Replicas are averaged."""
    series = _series(run, series, edges)
    sub = {v: (f"{s.num_replicas} replica{'s' if s.num_replicas != 1 else ''}"
               if s.num_replicas else "no steps") for v, s in series.by_variant.items()}  # fmt: skip
    return _banded(
        run, series, title="Where step time goes, by bound", ylabel="share of wall time (%)",
        parts=BOUND_PARTS, attr="bound_frac", subtitle=sub,
        extra_handles=[Patch(facecolor="white", edgecolor="black", label="idle")],
    )  # fmt: skip


def plot_step_time_split(
    run: RunData, path: Path, *, edges: FloatArray | None = None, series: RunSeries | None = None
) -> Path:
    """Save :func:`draw_step_time_split` as a PNG."""
    return save_figure(draw_step_time_split(run, series, edges=edges), path)


# --------------------------------------------------------------------------------------------
# 3. Prefix cache
# --------------------------------------------------------------------------------------------


def draw_prefix_hit_rate(
    run: RunData, series: RunSeries | None = None, *, edges: FloatArray | None = None
) -> Figure | None:
    """Prefix-cache hit rate over time: per bin (solid) and cumulative (dashed), for variants
    with a prefix cache. None when no variant has one."""
    series = _series(run, series, edges)
    variants = series.prefix_variants()
    if not variants:
        return None
    colors = variant_colors(run.variants)
    unit, scale = time_unit(float(series.edges_s[-1]))
    fig = new_figure(width_in=11.0, height_in=4.5)
    (ax,) = place_axes(fig, 1, 1, top_in=0.6 + 0.2 * (len(variants) < len(run.variants)))
    for v in variants:
        s = series.by_variant[v]
        ax.plot(series.mid_s / scale, 100 * s.prefix_per_bin, color=colors[v], lw=1.2,
                label=f"{v} (per bin)")  # fmt: skip
        ax.plot(series.edges_s[1:] / scale, 100 * s.prefix_cumulative, color=colors[v], lw=1.2,
                ls="--", label=f"{v} (cumulative)")  # fmt: skip
    skipped = [v for v in run.variants if v not in variants]
    title = "Prefix-cache hit rate (hit tokens / looked-up prompt tokens)"
    if skipped:
        title += f"\nno prefix cache: {', '.join(skipped)}"
    set_title(ax, title, fontsize=10)
    ax.set_xlabel(f"simulated time ({unit})")
    ax.set_ylabel("prefix hit rate (%)")
    ax.set_ylim(0, 100)
    ax.set_xlim(series.edges_s[0] / scale, series.edges_s[-1] / scale)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def plot_prefix_hit_rate(
    run: RunData, path: Path, *, edges: FloatArray | None = None, series: RunSeries | None = None
) -> Path | None:
    """Save :func:`draw_prefix_hit_rate` as a PNG; None (nothing written) without a prefix cache."""
    fig = draw_prefix_hit_rate(run, series, edges=edges)
    return None if fig is None else save_figure(fig, path)


# --------------------------------------------------------------------------------------------
# All of them
# --------------------------------------------------------------------------------------------


def run_figure_drawers(
    run: RunData, series: RunSeries
) -> dict[str, Callable[[], Figure | None]]:
    """name -> a function drawing that figure, in report order, for the figures with data.

    Figures without data are absent: no latency CDF when no request has a latency, no
    timelines or KV/step-time figures when no variant ran a step, no roofline without
    roofline data, no prefix figure without a prefix cache.
    """
    drawers: dict[str, Callable[[], Figure | None]] = {}
    if series.any_latency():
        drawers["latency_cdf"] = lambda: draw_latency_cdfs(run, series)
    if series.any_steps() or any(len(finite(run.requests[v]["first_token_s"]))
                                 for v in run.variants):  # fmt: skip
        drawers["timeline"] = lambda: draw_timelines(run, series)
    if series.any_steps():
        drawers["kv_timeline"] = lambda: draw_kv_timeline(run, series)
    if any(series.by_variant[v].kv_average is not None for v in run.variants):
        drawers["kv_bar"] = lambda: draw_kv_bar(run, series)
    if series.any_steps():
        drawers["step_time"] = lambda: draw_step_time_split(run, series)
    drawers["roofline"] = lambda: draw_run_roofline(run)
    if series.prefix_variants():
        drawers["prefix_hit"] = lambda: draw_prefix_hit_rate(run, series)
    return drawers


def plot_run_figures(
    run: RunData, out_dir: Path, *, series: RunSeries | None = None
) -> Mapping[str, Path]:
    """Draw every figure of a run that has data into ``out_dir`` as ``fig_<name>.png``.

    Returns:
        name -> path, in report order; figures without data are absent.
    """
    out_dir = Path(out_dir)
    series = compute_series(run) if series is None else series
    out: dict[str, Path] = {}
    for name, draw in run_figure_drawers(run, series).items():
        fig = draw()
        if fig is not None:
            out[name] = save_figure(fig, out_dir / f"fig_{name}.png")
    return out


__all__: Sequence[str] = (
    "LATENCY_METRICS",
    "draw_kv_bar",
    "draw_kv_timeline",
    "draw_latency_cdfs",
    "draw_prefix_hit_rate",
    "draw_step_time_split",
    "draw_timelines",
    "kv_split_average",
    "plot_kv_bar",
    "plot_kv_timeline",
    "plot_latency_cdfs",
    "plot_prefix_hit_rate",
    "plot_run_figures",
    "plot_step_time_split",
    "plot_timelines",
    "prefix_variants",
    "run_figure_drawers",
    "run_slo",
)
