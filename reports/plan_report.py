"""Figures for sweeps and capacity plans: latency against load, and the throughput Pareto front.

Both take a tidy DataFrame (one row per simulated point) so the sweep and capacity code can
build it however it likes; the expected columns are documented per function and in
``docs/reports.md``. Column names carry units (``rate_per_s``, ``p99_ttft_ms``) and the axis
labels are derived from them. Colours follow the order in which ``hue`` values first appear
in the frame, so sorting the frame the same way gives the same colours every time.

Each function saves a PNG and returns its path when given ``path``; without one it returns
the open :class:`matplotlib.figure.Figure` (for notebooks), which the caller owns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
from matplotlib.figure import Figure

from servesim.reports._style import axis_label, new_figure, save_figure, variant_colors

_LINESTYLES: tuple[str, ...] = ("-", "--", ":", "-.")


def _groups(df: pd.DataFrame, hue: str | None) -> list[tuple[str, pd.DataFrame]]:
    if hue is None:
        return [("", df)]
    keys = pd.unique(df[hue])
    return [(str(k), df[df[hue] == k]) for k in keys]


def _finish(fig: Figure, path: str | Path | None) -> Path | Figure:
    return fig if path is None else save_figure(fig, Path(path))


def plot_latency_vs_rate(
    df: pd.DataFrame,
    x: str,
    y: str | Sequence[str],
    hue: str | None = None,
    slo: float | Mapping[str, float] | None = None,
    path: str | Path | None = None,
    *,
    title: str | None = None,
    logy: bool = False,
) -> Path | Figure:
    """Latency (or any metric) against offered load, one line per ``hue`` value.

    Args:
        df: one row per sweep point. Needs column ``x`` (e.g. ``rate_per_s``), the ``y``
            column(s) (e.g. ``p99_ttft_ms``; NaN where the point had no completed request, or
            ``inf`` for a diverged queue: drawn as a gap) and ``hue`` if given (e.g.
            ``variant``, ``gpu``, ``config``).
        x: load column.
        y: metric column, or several (e.g. ``["median_ttft_ms", "p99_ttft_ms"]``) drawn with
            one line style each in the hue's colour.
        hue: grouping column, or None for a single group.
        slo: a horizontal dashed line at this value, or ``{y_column: value}`` for one line per
            metric; the region above is shaded.
        path: where to write the PNG; None returns the Figure instead.
        title: figure title; default "<y> vs <x>".
        logy: logarithmic y axis (queueing blow-ups span orders of magnitude).

    Returns:
        The PNG path, or the Figure when ``path`` is None.
    """
    ys = [y] if isinstance(y, str) else list(y)
    missing = [c for c in [x, *ys, *([hue] if hue else [])] if c not in df.columns]
    if missing:
        raise ValueError(
            f"plot_latency_vs_rate: missing columns {missing}; have {list(df.columns)}"
        )
    groups = _groups(df, hue)
    colors = variant_colors([g for g, _ in groups])
    fig = new_figure(width_in=8.0, height_in=5.0)
    ax = fig.subplots()
    for g, sub in groups:
        sub = sub.sort_values(x, kind="stable")
        xv = sub[x].to_numpy(np.float64)
        for i, col in enumerate(ys):
            yv = sub[col].to_numpy(np.float64)
            yv = np.where(np.isfinite(yv), yv, np.nan)
            parts = [p for p in (g, col if len(ys) > 1 else "") if p]
            ax.plot(xv, yv, marker="o", ms=4, color=colors[g] if g else "#1f77b4",
                    ls=_LINESTYLES[i % len(_LINESTYLES)], label=" / ".join(parts) or None)  # fmt: skip
    slos = (
        {}
        if slo is None
        else dict(slo)
        if isinstance(slo, Mapping)
        else {ys[0] if len(ys) == 1 else "SLO": float(slo)}
    )
    for i, (name, value) in enumerate(sorted(slos.items())):
        label = f"SLO: {value:g}" if name == "SLO" else f"SLO {name}: {value:g}"
        ax.axhline(value, color="black", ls="--", lw=1, label=label)
        if i == 0:
            ax.axhspan(value, value * 1e6 if logy else value * 100, color="red", alpha=0.05, lw=0)
    if logy:
        ax.set_yscale("log")
    finite_y = np.concatenate([df[c].to_numpy(np.float64) for c in ys]) if len(df) else np.array([])
    finite_y = finite_y[np.isfinite(finite_y)]
    top = max([*finite_y.tolist(), *slos.values(), 1.0])
    ax.set_ylim(bottom=None if logy else 0, top=top * (3 if logy else 1.1))
    ax.set_xlabel(axis_label(x))
    ax.set_ylabel(axis_label(ys[0]) if len(ys) == 1 else "latency (ms)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.set_title(title or f"{axis_label(ys[0]) if len(ys) == 1 else 'latency'} vs {axis_label(x)}")
    return _finish(fig, path)


def pareto_front(
    df: pd.DataFrame, x: str = "tokens_per_s_per_user", y: str = "tokens_per_s_per_gpu"
) -> npt.NDArray[np.bool_]:
    """Rows not dominated in (x, y), both to be maximised; NaN rows are never on the front.

    A row is dominated when another is >= in both and > in at least one.
    """
    xv = df[x].to_numpy(np.float64)
    yv = df[y].to_numpy(np.float64)
    ok = np.isfinite(xv) & np.isfinite(yv)
    on = np.zeros(len(df), dtype=bool)
    idx = np.flatnonzero(ok)
    # Sort by x descending (ties: y descending); a point is on the front iff its y beats
    # every y seen before it.
    order = idx[np.lexsort((-yv[idx], -xv[idx]))]
    best_y = -np.inf
    for i in order:
        if yv[i] > best_y:
            on[i] = True
            best_y = yv[i]
    return on


def plot_pareto(
    df: pd.DataFrame,
    x: str = "tokens_per_s_per_user",
    y: str = "tokens_per_s_per_gpu",
    label_col: str | None = None,
    path: str | Path | None = None,
    *,
    hue: str | None = None,
    title: str | None = None,
) -> Path | Figure:
    """Throughput per GPU against throughput per user, with the Pareto front drawn and labelled.

    The classic serving trade-off: batching more users raises tokens/s per GPU (cost) and
    lowers tokens/s per user (interactivity). Points up and to the right are better; the
    front is the set no other point beats on both.

    Args:
        df: one row per configuration/load point. Needs ``x`` (output tokens/s seen by one
            user, i.e. 1000 / TPOT in ms), ``y`` (output tokens/s divided by the GPUs used),
            ``label_col`` if given (e.g. ``config``: "tp2 fp8 bs64") and ``hue`` if given.
        x, y: column names (both maximised).
        label_col: column whose values annotate the points on the front.
        path: where to write the PNG; None returns the Figure instead.
        hue: optional grouping column for point colours (e.g. ``gpu``).
        title: figure title.

    Returns:
        The PNG path, or the Figure when ``path`` is None.
    """
    need = [x, y, *(c for c in (label_col, hue) if c)]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ValueError(f"plot_pareto: missing columns {missing}; have {list(df.columns)}")
    fig = new_figure(width_in=8.0, height_in=5.5)
    ax = fig.subplots()
    groups = _groups(df, hue)
    colors = variant_colors([g for g, _ in groups])
    for g, sub in groups:
        ax.scatter(sub[x], sub[y], s=22, color=colors[g] if g else "#7f7f7f", alpha=0.7,
                   label=g or None, zorder=2)  # fmt: skip
    on = pareto_front(df, x, y)
    front = df[on].sort_values(x, kind="stable")
    if len(front):
        ax.plot(front[x], front[y], color="black", lw=1.3, marker="o", mfc="none", ms=9,
                label="Pareto front", zorder=3)  # fmt: skip
        if label_col:
            for _, row in front.iterrows():
                ax.annotate(str(row[label_col]), (row[x], row[y]), textcoords="offset points",
                            xytext=(5, 5), fontsize=7)  # fmt: skip
    ax.set_xlabel(axis_label(x))
    ax.set_ylabel(axis_label(y))
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.set_title(title or "Throughput per GPU vs throughput per user")
    return _finish(fig, path)


__all__: Sequence[str] = ("pareto_front", "plot_latency_vs_rate", "plot_pareto")
