"""The figures of a run report, one function each: ``RunData`` in, a PNG path out.

Every function draws all variants (in their fixed colours), tolerates a variant with no
completed requests, no steps, no prefix cache or NaN latencies, and returns ``None`` only
when the figure would be empty for every variant (the report then says why it is missing).
See ``docs/reports.md`` for how to read each one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from servesim.reports._data import (
    FloatArray,
    RunData,
    binned_mean,
    cumulative_at,
    finite,
    step_intervals,
    time_edges,
)
from servesim.reports._roofline_fig import plot_run_roofline
from servesim.reports._style import (
    BOUND_PARTS,
    KV_PARTS,
    new_figure,
    save_figure,
    variant_colors,
)

#: Latency metrics of the CDF figure: (requests column, title, SLO key in summary["slo"]).
LATENCY_METRICS: tuple[tuple[str, str, str], ...] = (
    ("ttft_ms", "Time to first token (TTFT)", "ttft_ms"),
    ("tpot_ms", "Time per output token (TPOT)", "tpot_ms"),
    ("e2el_ms", "End-to-end latency (E2EL)", "e2el_ms"),
)

#: At most this many points per CDF line (quantiles), however many requests there are.
_CDF_POINTS = 1000


def run_slo(run: RunData) -> dict[str, float]:
    """SLO thresholds (ms) of the run: the first variant's ``summary["slo"]``, nulls dropped."""
    for v in run.variants:
        slo = run.summaries[v].get("slo") or {}
        out = {k: float(x) for k, x in slo.items() if x is not None and math.isfinite(float(x))}
        if out:
            return out
    return {}


def _grid(n: int, *, max_cols: int = 3) -> tuple[int, int]:
    cols = min(max(n, 1), max_cols)
    return math.ceil(max(n, 1) / cols), cols


def _small_multiples(
    n: int, *, panel_w_in: float = 4.2, panel_h_in: float = 3.0, sharey: bool = True
) -> tuple[Figure, list[Axes]]:
    rows, cols = _grid(n)
    fig = new_figure(width_in=panel_w_in * cols, height_in=panel_h_in * rows + 0.8)
    axes = fig.subplots(rows, cols, sharey=sharey, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _panel_title(ax: Axes, variant: str, color: str, extra: str = "") -> None:
    ax.set_title(variant + (f"\n{extra}" if extra else ""), color=color, fontsize=10)
    for spine in ax.spines.values():
        spine.set_edgecolor(color)


# --------------------------------------------------------------------------------------------
# 1. Latency CDFs and timelines
# --------------------------------------------------------------------------------------------


def plot_latency_cdfs(run: RunData, path: Path) -> Path:
    """TTFT, TPOT and E2EL empirical CDFs, one line per variant, SLOs as dashed lines.

    Only requests with a defined value count (TPOT is undefined for one-token outputs);
    a variant with none is listed in the legend as "no data".
    """
    colors = variant_colors(run.variants)
    slo = run_slo(run)
    fig = new_figure(width_in=14.0, height_in=4.4)
    axes = fig.subplots(1, 3, squeeze=True)
    for ax, (col, title, slo_key) in zip(axes, LATENCY_METRICS, strict=True):
        lows: list[float] = []
        highs: list[float] = []
        for v in run.variants:
            x = np.sort(finite(run.requests[v][col]))
            if len(x) == 0:
                ax.plot([], [], color=colors[v], label=f"{v} (no data)")
                continue
            q = np.linspace(0.0, 1.0, min(len(x), _CDF_POINTS))
            # Empirical CDF at (up to) _CDF_POINTS quantiles: exact for small runs.
            xs = np.quantile(x, q, method="inverted_cdf") if len(x) > _CDF_POINTS else x
            ys = q if len(x) > _CDF_POINTS else np.arange(1, len(x) + 1) / len(x)
            ax.step(xs, ys, where="post", color=colors[v], label=f"{v} (n={len(x)})")
            pos = x[x > 0]
            if len(pos):
                lows.append(float(pos[0]))
                highs.append(float(pos[-1]))
        if slo_key in slo:
            ax.axvline(slo[slo_key], color="black", ls="--", lw=1, label=f"SLO {slo[slo_key]:g} ms")
        # Log x when the spread covers orders of magnitude (queueing tails); else linear.
        if lows and max(highs) / min(lows) > 100:
            ax.set_xscale("log")
        ax.set_title(title)
        ax.set_xlabel(f"{col.split('_')[0].upper()} (ms)")
        ax.set_ylabel("fraction of requests")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("Request latency distributions (empirical CDF)")
    return save_figure(fig, path)


def _decode_token_rate(run: RunData, v: str, edges: FloatArray) -> FloatArray:
    """Output tokens/s per bin: decode tokens at their step's end, plus one first token per
    request at its ``first_token_s`` (the token its prefill produced)."""
    steps, reqs = run.steps[v], run.requests[v]
    width = np.diff(edges)
    tokens = np.zeros(len(width))
    if len(steps):
        t_end = steps["t_s"].to_numpy(np.float64) + np.nan_to_num(steps["duration_s"].to_numpy())
        tokens += np.histogram(t_end, edges, weights=steps["decode_tokens"].to_numpy(np.float64))[0]
    if len(reqs):
        tokens += np.histogram(finite(reqs["first_token_s"]), edges)[0]
    return tokens / width


def plot_timelines(run: RunData, path: Path, *, edges: FloatArray | None = None) -> Path:
    """Output throughput, running batch size and queue length over time (time-binned).

    Batch size and queue length are time averages per bin, summed over a variant's replicas.
    """
    colors = variant_colors(run.variants)
    edges = time_edges(run.end_s) if edges is None else edges
    mid = 0.5 * (edges[1:] + edges[:-1])
    fig = new_figure(width_in=11.0, height_in=8.0)
    ax_tp, ax_bs, ax_q = fig.subplots(3, 1, sharex=True, squeeze=True)
    for v in run.variants:
        steps = run.steps[v]
        ax_tp.plot(mid, _decode_token_rate(run, v, edges), color=colors[v], label=v, lw=1.2)
        if not len(steps):
            continue
        s, e = step_intervals(steps, hold=False)
        ax_bs.plot(mid, binned_mean(s, e, steps["num_running"].to_numpy(np.float64), edges),
                   color=colors[v], lw=1.2)  # fmt: skip
        s, e = step_intervals(steps, hold=True)
        ax_q.plot(mid, binned_mean(s, e, steps["queue_len"].to_numpy(np.float64), edges),
                  color=colors[v], lw=1.2)  # fmt: skip
    ax_tp.set_title("Output throughput")
    ax_tp.set_ylabel("output tokens/s")
    ax_bs.set_title("Running batch size")
    ax_bs.set_ylabel("running sequences")
    ax_q.set_title("Queue length")
    ax_q.set_ylabel("waiting requests")
    ax_q.set_xlabel(f"simulated time (s); bins of {edges[1] - edges[0]:g} s")
    for ax in (ax_tp, ax_bs, ax_q):
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
        ax.set_xlim(edges[0], edges[-1])
    ax_tp.legend(fontsize=8, loc="upper right")
    fig.suptitle("Throughput, batch size and queue over time")
    return save_figure(fig, path)


# --------------------------------------------------------------------------------------------
# 2. KV memory
# --------------------------------------------------------------------------------------------


def kv_split_timeline(run: RunData, v: str, edges: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Per-bin KV split of variant ``v`` as fractions of its capacity.

    Returns:
        (fractions float64[len(KV_PARTS), bins], capacity_tokens float64[bins]): NaN where no
        step covers the bin. Replicas are pooled (slots summed).
    """
    steps = run.steps[v]
    nbins = len(edges) - 1
    if not len(steps):
        return np.full((len(KV_PARTS), nbins), np.nan), np.full(nbins, np.nan)
    s, e = step_intervals(steps, hold=True)
    parts = np.stack(
        [binned_mean(s, e, steps[col].to_numpy(np.float64), edges) for col, _, _ in KV_PARTS]
    )
    cap = parts.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(cap > 0, parts / np.where(cap > 0, cap, 1.0), np.nan)
    # Capacity as a time average over the bin's covered time: divide by replica coverage.
    cover = binned_mean(s, e, np.ones(len(s)), edges)
    with np.errstate(invalid="ignore", divide="ignore"):
        cap_tokens = np.where(cover > 0, cap / np.where(cover > 0, cover, 1.0), np.nan)
    return frac, cap_tokens


def kv_split_average(run: RunData, v: str) -> FloatArray | None:
    """Duration-weighted mean KV split of ``v`` (fractions, order of ``KV_PARTS``).

    Falls back to the summary's ``kv_*_frac`` when the variant has no steps; None if neither.
    """
    steps = run.steps[v]
    if len(steps):
        w = np.nan_to_num(steps["duration_s"].to_numpy(np.float64))
        parts = np.stack([steps[c].to_numpy(np.float64) for c, _, _ in KV_PARTS])
        cap = parts.sum(axis=0)
        ok = cap > 0
        if w[ok].sum() > 0:
            return (parts[:, ok] / cap[ok] * w[ok]).sum(axis=1) / w[ok].sum()
    summ = run.summaries[v]
    keys = ("kv_token_state_frac", "kv_reserved_frac", "kv_internal_frag_frac",
            "kv_external_frag_frac", "kv_cached_frac", "kv_free_frac")  # fmt: skip
    if all(summ.get(k) is not None for k in keys):
        return np.array([float(summ[k]) for k in keys])
    return None


def plot_kv_timeline(run: RunData, path: Path, *, edges: FloatArray | None = None) -> Path:
    """KV memory split over time, a stacked area per variant (small multiples), in % of capacity."""
    colors = variant_colors(run.variants)
    edges = time_edges(run.end_s) if edges is None else edges
    mid = 0.5 * (edges[1:] + edges[:-1])
    fig, axes = _small_multiples(len(run.variants))
    for ax, v in zip(axes, run.variants, strict=True):
        frac, cap = kv_split_timeline(run, v, edges)
        cap_f = finite(cap)
        extra = f"capacity {np.median(cap_f):,.0f} tokens" if len(cap_f) else "no steps"
        _panel_title(ax, v, colors[v], extra)
        if len(cap_f):
            ax.stackplot(mid, 100 * np.nan_to_num(frac), colors=[c for _, _, c in KV_PARTS],
                         linewidth=0)  # fmt: skip
        ax.set_ylim(0, 100)
        ax.set_xlim(edges[0], edges[-1])
        ax.set_xlabel("simulated time (s)")
        ax.set_ylabel("KV cache (% of capacity)")
    fig.legend(
        handles=[Patch(color=c, label=lab) for _, lab, c in KV_PARTS],
        loc="outside lower center",
        ncols=len(KV_PARTS),
        fontsize=8,
    )
    fig.suptitle("KV-cache memory split over time")
    return save_figure(fig, path)


def plot_kv_bar(run: RunData, path: Path) -> Path:
    """Time-averaged KV split, one stacked bar per variant (PagedAttention paper, Figure 2 style).

    Each segment is labelled with its percentage when it is wide enough to read.
    """
    colors = variant_colors(run.variants)
    fig = new_figure(width_in=max(5.0, 1.3 * len(run.variants) + 3.0), height_in=5.0)
    ax = fig.subplots()
    x = np.arange(len(run.variants))
    for i, v in enumerate(run.variants):
        avg = kv_split_average(run, v)
        if avg is None:
            ax.text(i, 50, "no data", ha="center", va="center", rotation=90, fontsize=8)
            continue
        bottom = 0.0
        for (_, _, c), f in zip(KV_PARTS, avg, strict=True):
            pct = 100 * float(f)
            ax.bar(i, pct, bottom=bottom, color=c, edgecolor="white", linewidth=0.5, width=0.6)
            if pct >= 4:
                ax.text(i, bottom + pct / 2, f"{pct:.0f}%", ha="center", va="center", fontsize=8)
            bottom += pct
    ax.set_xticks(x, run.variants, rotation=20 if len(run.variants) > 3 else 0, ha="right"
                  if len(run.variants) > 3 else "center")  # fmt: skip
    for tick, v in zip(ax.get_xticklabels(), run.variants, strict=True):
        tick.set_color(colors[v])
    ax.set_ylim(0, 100)
    ax.set_ylabel("KV cache memory (% of capacity, time-averaged)")
    ax.set_xlabel("variant")
    ax.legend(
        handles=[Patch(color=c, label=lab) for _, lab, c in reversed(KV_PARTS)],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
    )
    ax.set_title("Where the KV memory goes (time-averaged)")
    return save_figure(fig, path)


# --------------------------------------------------------------------------------------------
# 3. Step time by bound
# --------------------------------------------------------------------------------------------


def plot_step_time_split(run: RunData, path: Path, *, edges: FloatArray | None = None) -> Path:
    """Share of wall time per bin spent on each bound (stacked), per variant; the gap to 100 %
    is idle time. Replicas are averaged."""
    colors = variant_colors(run.variants)
    edges = time_edges(run.end_s) if edges is None else edges
    mid = 0.5 * (edges[1:] + edges[:-1])
    fig, axes = _small_multiples(len(run.variants))
    for ax, v in zip(axes, run.variants, strict=True):
        steps = run.steps[v]
        n_rep = int(steps["replica_id"].nunique()) if len(steps) else 0
        _panel_title(ax, v, colors[v], f"{n_rep} replica(s)" if n_rep else "no steps")
        if n_rep:
            s, e = step_intervals(steps, hold=False)
            dur = np.nan_to_num(steps["duration_s"].to_numpy(np.float64))
            safe = np.where(dur > 0, dur, 1.0)
            shares = [
                binned_mean(
                    s, e, np.where(dur > 0, steps[c].to_numpy(np.float64) / safe, 0.0), edges
                )
                / n_rep
                for c, _, _ in BOUND_PARTS
            ]
            ax.stackplot(mid, 100 * np.nan_to_num(np.stack(shares)),
                         colors=[c for _, _, c in BOUND_PARTS], linewidth=0)  # fmt: skip
        ax.set_ylim(0, 100)
        ax.set_xlim(edges[0], edges[-1])
        ax.set_xlabel("simulated time (s)")
        ax.set_ylabel("share of wall time (%)")
    fig.legend(
        handles=[Patch(color=c, label=lab) for _, lab, c in BOUND_PARTS]
        + [Patch(facecolor="white", edgecolor="black", label="idle")],
        loc="outside lower center",
        ncols=len(BOUND_PARTS) + 1,
        fontsize=8,
    )
    fig.suptitle("Where step time goes, by bound")
    return save_figure(fig, path)


# --------------------------------------------------------------------------------------------
# 5. Prefix cache
# --------------------------------------------------------------------------------------------


def prefix_variants(run: RunData) -> list[str]:
    """Variants whose prefix cache was queried (``prefix_query_tokens`` ever > 0)."""
    out = []
    for v in run.variants:
        steps = run.steps[v]
        if len(steps) and np.nanmax(steps["prefix_query_tokens"].to_numpy(np.float64)) > 0:
            out.append(v)
    return out


def plot_prefix_hit_rate(
    run: RunData, path: Path, *, edges: FloatArray | None = None
) -> Path | None:
    """Prefix-cache hit rate over time: per bin (solid) and cumulative (dashed), for variants
    whose cache was queried. Returns None when no variant queried a prefix cache."""
    variants = prefix_variants(run)
    if not variants:
        return None
    colors = variant_colors(run.variants)
    edges = time_edges(run.end_s) if edges is None else edges
    mid = 0.5 * (edges[1:] + edges[:-1])
    fig = new_figure(width_in=11.0, height_in=4.5)
    ax = fig.subplots()
    for v in variants:
        hit = cumulative_at(run.steps[v], "prefix_hit_tokens", edges)
        query = cumulative_at(run.steps[v], "prefix_query_tokens", edges)
        dh, dq = np.diff(hit), np.diff(query)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_bin = np.where(dq > 0, dh / np.where(dq > 0, dq, 1.0), np.nan)
            cumul = np.where(query[1:] > 0, hit[1:] / np.where(query[1:] > 0, query[1:], 1), np.nan)
        ax.plot(mid, 100 * per_bin, color=colors[v], lw=1.2, label=f"{v} (per bin)")
        ax.plot(edges[1:], 100 * cumul, color=colors[v], lw=1.2, ls="--", label=f"{v} (cumulative)")
    skipped = [v for v in run.variants if v not in variants]
    title = "Prefix-cache hit rate (hit tokens / looked-up prompt tokens)"
    if skipped:
        title += f"\nno prefix cache: {', '.join(skipped)}"
    ax.set_title(title)
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("prefix hit rate (%)")
    ax.set_ylim(0, 100)
    ax.set_xlim(edges[0], edges[-1])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, path)


def plot_run_figures(run: RunData, out_dir: Path) -> Mapping[str, Path]:
    """Draw every figure of a run into ``out_dir`` as ``fig_<name>.png``.

    Returns:
        name -> path, in report order; figures that would be empty are absent.
    """
    out_dir = Path(out_dir)
    edges = time_edges(run.end_s)
    figs: dict[str, Path | None] = {
        "latency_cdf": plot_latency_cdfs(run, out_dir / "fig_latency_cdf.png"),
        "timeline": plot_timelines(run, out_dir / "fig_timeline.png", edges=edges),
        "kv_timeline": plot_kv_timeline(run, out_dir / "fig_kv_timeline.png", edges=edges),
        "kv_bar": plot_kv_bar(run, out_dir / "fig_kv_bar.png"),
        "step_time": plot_step_time_split(run, out_dir / "fig_step_time.png", edges=edges),
        "roofline": plot_run_roofline(run, out_dir / "fig_roofline.png"),
        "prefix_hit": plot_prefix_hit_rate(run, out_dir / "fig_prefix_hit.png", edges=edges),
    }
    return {k: p for k, p in figs.items() if p is not None}


__all__: Sequence[str] = (
    "LATENCY_METRICS",
    "kv_split_average",
    "kv_split_timeline",
    "plot_kv_bar",
    "plot_kv_timeline",
    "plot_latency_cdfs",
    "plot_prefix_hit_rate",
    "plot_run_figures",
    "plot_step_time_split",
    "plot_timelines",
    "prefix_variants",
    "run_slo",
)
