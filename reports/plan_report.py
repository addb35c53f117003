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

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from matplotlib.figure import Figure

from servesim.reports._format import (
    Table,
    cell,
    fmt_auto,
    fmt_int,
    fmt_ms,
    fmt_pct,
    fmt_usd,
)
from servesim.reports._render import figure_json, render
from servesim.reports._style import (
    axis_label,
    new_figure,
    place_axes,
    plain_log_ticks,
    save_figure,
    set_title,
    variant_colors,
)

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
    (ax,) = place_axes(fig, 1, 1, left_in=0.85, top_in=0.45, bottom_in=0.6)
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
        plain_log_ticks(ax.yaxis)
    finite_y = np.concatenate([df[c].to_numpy(np.float64) for c in ys]) if len(df) else np.array([])
    finite_y = finite_y[np.isfinite(finite_y)]
    top = max([*finite_y.tolist(), *slos.values(), 1.0])
    ax.set_ylim(bottom=None if logy else 0, top=top * (3 if logy else 1.1))
    ax.set_xlabel(axis_label(x))
    ax.set_ylabel(axis_label(ys[0]) if len(ys) == 1 else "latency (ms)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    set_title(ax, title or f"{axis_label(ys[0]) if len(ys) == 1 else 'latency'} vs {axis_label(x)}")
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
    (ax,) = place_axes(fig, 1, 1, left_in=0.85, top_in=0.45, bottom_in=0.6)
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
    xmax = float(np.nanmax(df[x].to_numpy(np.float64))) if len(df) else 1.0
    ymax = float(np.nanmax(df[y].to_numpy(np.float64))) if len(df) else 1.0
    xmax = xmax if np.isfinite(xmax) and xmax > 0 else 1.0
    ymax = ymax if np.isfinite(ymax) and ymax > 0 else 1.0
    if len(front) and label_col:
        for px, py, lab in zip(front[x], front[y], front[label_col], strict=True):
            # Labels point inwards near the right or top edge, so none runs off the figure.
            right = px > 0.6 * xmax
            ax.annotate(str(lab), (px, py), textcoords="offset points", fontsize=7,
                        xytext=(-5 if right else 5, -9 if py > 0.9 * ymax else 5),
                        ha="right" if right else "left")  # fmt: skip
    ax.set_xlabel(axis_label(x))
    ax.set_ylabel(axis_label(y))
    ax.set_xlim(0, xmax * 1.08)
    ax.set_ylim(0, ymax * 1.1)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower left")
    set_title(ax, title or "Throughput per GPU vs throughput per user")
    return _finish(fig, path)


# --------------------------------------------------------------------------------------------
# The capacity-plan report (report.md + report.html), rendered by the shared templates
# --------------------------------------------------------------------------------------------

#: Plan table columns shown in the report: (column, header, formatter).
PLAN_COLUMNS: tuple[tuple[str, str, Any], ...] = (
    ("rank", "rank", fmt_int),
    ("label", "candidate", str),
    ("max_rate_per_replica", "max req/s per replica", fmt_auto),
    ("replicas", "replicas", fmt_int),
    ("num_gpus", "GPUs", fmt_int),
    ("usd_per_hour", "$/hour", fmt_usd),
    ("usd_per_million_output_tokens", "$/M output tokens", fmt_usd),
    ("output_tokens_per_s_per_gpu", "tok/s per GPU", fmt_int),
    ("output_tokens_per_s_per_user", "tok/s per user", fmt_auto),
    ("kv_free_frac_at_max", "KV free at max", fmt_pct),
    ("limiting_slo", "SLO broken first", str),
    ("binding_constraint", "binding constraint", str),
)

#: Plan figures: key -> (PNG name, title, caption).
PLAN_FIGURES: Mapping[str, tuple[str, str, str]] = MappingProxyType({
    "pareto": (
        "pareto.png",
        "Throughput per GPU vs throughput per user",
        "Each feasible candidate at its max rate per replica: output tokens/s per GPU (cost) "
        "against output tokens/s one user sees (interactivity). The black line is the Pareto "
        "front: no other candidate beats a point on it on both axes.",
    ),
    "ttft_vs_rate": (
        "ttft_vs_rate.png",
        "TTFT vs arrival rate (top candidates)",
        "The SLO percentile of time to first token per replica as the arrival rate rises; "
        "dashed: the target. A candidate's max rate is where its curve crosses the target.",
    ),
    "tpot_vs_rate": (
        "tpot_vs_rate.png",
        "TPOT vs arrival rate (top candidates)",
        "The SLO percentile of time per output token per replica as the arrival rate rises; "
        "dashed: the target.",
    ),
})


def _text(x: Any) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else str(x)


def plan_table(table: pd.DataFrame) -> Table:
    """The ranked (feasible) candidates as a report :class:`Table`, numbers formatted to read."""
    ranked = table[table["rank"].notna()] if "rank" in table else table.iloc[:0]
    cols = [(c, h, f) for c, h, f in PLAN_COLUMNS if c in table.columns]
    rows = []
    for rec in ranked.to_dict("records"):
        row = []
        for c, _, f in cols:
            value = rec.get(c)
            row.append(cell(_text(value), None) if f is str else cell(f(value), value))
        rows.append(tuple(row))
    numeric = tuple(f is not str for _, _, f in cols)
    return Table(tuple(h for _, h, _ in cols), tuple(rows), numeric=numeric)


def _slo_text(slo: Mapping[str, Any]) -> str:
    pct = slo.get("percentile") or "p99"
    parts = []
    if slo.get("ttft_ms"):
        parts.append(f"{pct} TTFT <= {fmt_ms(slo['ttft_ms'])}")
    if slo.get("tpot_ms"):
        parts.append(f"{pct} TPOT <= {fmt_ms(slo['tpot_ms'])}")
    if slo.get("goodput_frac"):
        parts.append(f"goodput >= {fmt_pct(slo['goodput_frac'], 0)}")
    return ", ".join(parts)


def _plan_items(table: pd.DataFrame) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(infeasible: [(label, why)], ranked: [(label, why it stops)])."""
    bad, why = [], []
    for rec in table.to_dict("records"):
        label = _text(rec.get("label")) or f"candidate {rec.get('point_index', '?')}"
        if rec.get("rank") is None or (isinstance(rec.get("rank"), float) and math.isnan(rec["rank"])):
            err = _text(rec.get("error"))
            reason = err or f"{_text(rec.get('binding_constraint'))}: {_text(rec.get('binding_reason'))}"
            bad.append((label, f"({_text(rec.get('status'))}) {reason}"))
        else:
            why.append((
                label,
                f"{_text(rec.get('binding_constraint'))} ({_text(rec.get('binding_reason'))}); "
                f"SLO broken first: {_text(rec.get('limiting_slo')) or 'none'}",
            ))  # fmt: skip
    return bad, why


def _curve_column(plan: Mapping[str, Any], what: str) -> str:
    return f"{(plan.get('slo') or {}).get('percentile') or 'p99'}_{what}_ms"


def pareto_spec(ok: pd.DataFrame) -> dict[str, Any]:
    """Interactive Pareto figure: candidates (hover: label, $/hour, rate) and the front."""
    x, y = "output_tokens_per_s_per_user", "output_tokens_per_s_per_gpu"
    groups = _groups(ok, "gpu" if "gpu" in ok else None)
    colors = variant_colors([g for g, _ in groups])
    data: list[dict[str, Any]] = []
    for g, sub in groups:
        labels = [_text(v) for v in sub.get("label", pd.Series([""] * len(sub)))]
        usd = [fmt_usd(v) for v in sub.get("usd_per_hour", pd.Series([None] * len(sub)))]
        data.append({
            "type": "scatter", "mode": "markers", "name": g or "candidates",
            "x": sub[x].to_numpy(np.float64), "y": sub[y].to_numpy(np.float64),
            "text": [f"{lab}<br>{u}/hour" for lab, u in zip(labels, usd, strict=True)],
            "marker": {"color": colors[g] if g else "#7f7f7f", "size": 10, "opacity": 0.8},
            "hovertemplate": "%{text}<br>%{x:,.4g} tok/s per user<br>%{y:,.4g} tok/s per GPU"
                             "<extra></extra>",
        })  # fmt: skip
    front = ok[pareto_front(ok, x, y)].sort_values(x, kind="stable")
    if len(front):
        data.append({
            "type": "scatter", "mode": "lines", "name": "Pareto front",
            "x": front[x].to_numpy(np.float64), "y": front[y].to_numpy(np.float64),
            "line": {"color": "black", "width": 1.4}, "hoverinfo": "skip",
        })  # fmt: skip
    layout = {
        "height": 440, "font": {"family": "system-ui, sans-serif", "size": 12},
        "margin": {"l": 70, "r": 20, "t": 30, "b": 50}, "plot_bgcolor": "white",
        "hovermode": "closest",
        "xaxis": {"title": {"text": axis_label(x)}, "rangemode": "tozero", "gridcolor": "#e5e5e5"},
        "yaxis": {"title": {"text": axis_label(y)}, "rangemode": "tozero", "gridcolor": "#e5e5e5"},
    }  # fmt: skip
    return {"data": data, "layout": layout}


def latency_vs_rate_spec(curves: pd.DataFrame, col: str, slo_ms: float | None) -> dict[str, Any]:
    """Interactive latency-vs-rate figure: one line per candidate, the SLO dashed."""
    groups = _groups(curves, "label" if "label" in curves else None)
    colors = variant_colors([g for g, _ in groups])
    data: list[dict[str, Any]] = []
    for g, sub in groups:
        sub = sub.sort_values("rate_per_s", kind="stable")
        data.append({
            "type": "scatter", "mode": "lines+markers", "name": g or col,
            "x": sub["rate_per_s"].to_numpy(np.float64), "y": sub[col].to_numpy(np.float64),
            "line": {"color": colors[g] if g else "#1f77b4"},
            "hovertemplate": f"{g}<br>%{{x:.4g}} requests/s: %{{y:,.4g}} ms<extra></extra>",
        })  # fmt: skip
    if slo_ms is not None and len(curves):
        lo, hi = float(curves["rate_per_s"].min()), float(curves["rate_per_s"].max())
        data.append({
            "type": "scatter", "mode": "lines", "name": f"SLO {slo_ms:g} ms", "x": [lo, hi],
            "y": [slo_ms, slo_ms], "line": {"color": "black", "dash": "dash", "width": 1},
            "hoverinfo": "skip",
        })  # fmt: skip
    layout = {
        "height": 420, "font": {"family": "system-ui, sans-serif", "size": 12},
        "margin": {"l": 70, "r": 20, "t": 30, "b": 50}, "plot_bgcolor": "white",
        "hovermode": "closest",
        "xaxis": {"title": {"text": "arrival rate per replica (requests/s)"},
                  "gridcolor": "#e5e5e5"},
        "yaxis": {"title": {"text": axis_label(col)}, "rangemode": "tozero",
                  "gridcolor": "#e5e5e5"},
    }  # fmt: skip
    return {"data": data, "layout": layout}


def build_plan_report(
    out: Path, *, table: pd.DataFrame, curves: pd.DataFrame, plan: Mapping[str, Any]
) -> dict[str, str]:
    """Draw the plan's PNG figures into ``out`` and return the text of its two reports.

    Args:
        out: the plan's output directory (the PNGs are written there, next to the reports).
        table: the ranked plan table (one row per candidate, ``rank`` NaN when infeasible),
            as ``plan.csv``.
        curves: latency-vs-rate points of the top candidates (``rate_per_s``, ``label``,
            ``p99_ttft_ms``, ...), possibly empty.
        plan: the plan as ``plan.json`` has it: ``name``, ``target_rate_per_s``, ``slo``
            (``ttft_ms``, ``tpot_ms``, ``goodput_frac``, ``percentile``),
            ``usd_per_gpu_hour``, ``price_note``, ``rel_tol``.

    Returns:
        ``{"report.md": ..., "report.html": ...}``; the caller writes them (so the plan's
        confined, atomic writes apply).
    """
    out = Path(out)
    slo = plan.get("slo") or {}
    ok = table[table["rank"].notna()] if "rank" in table else table.iloc[:0]
    figures: dict[str, dict[str, Any]] = {}
    pngs: dict[str, str] = {}
    if not ok.empty and {"output_tokens_per_s_per_user", "output_tokens_per_s_per_gpu"} <= set(ok):
        name = PLAN_FIGURES["pareto"][0]
        plot_pareto(ok, x="output_tokens_per_s_per_user", y="output_tokens_per_s_per_gpu",
                    label_col="label" if "label" in ok else None, path=out / name,
                    hue="gpu" if "gpu" in ok else None)  # fmt: skip
        pngs["pareto"] = name
        figures["pareto"] = pareto_spec(ok)
    for what in ("ttft", "tpot"):
        target = slo.get(f"{what}_ms")
        col = _curve_column(plan, what)
        if curves.empty or col not in curves or target is None:
            continue
        key = f"{what}_vs_rate"
        name = PLAN_FIGURES[key][0]
        plot_latency_vs_rate(curves, x="rate_per_s", y=col,
                             hue="label" if "label" in curves else None, slo=float(target),
                             path=out / name)  # fmt: skip
        pngs[key] = name
        figures[key] = latency_vs_rate_spec(curves, col, float(target))
    used = set(table["gpu"].dropna()) if "gpu" in table else set()
    prices = {k: v for k, v in (plan.get("usd_per_gpu_hour") or {}).items() if k in used}
    bad, why = _plan_items(table)
    context = {
        "title": f"Capacity plan: {plan.get('name', 'plan')}",
        "target": f"{fmt_auto(plan.get('target_rate_per_s'))} requests/s",
        "slo_text": _slo_text(slo),
        "table": plan_table(table),
        "infeasible": bad,
        "why": why,
        "rel_tol": fmt_pct(plan.get("rel_tol"), 0),
        "prices": ", ".join(f"{k} {fmt_usd(v)}" for k, v in sorted(prices.items())),
        "price_note": _text(plan.get("price_note")),
    }
    md_figs = [{"key": k, "title": PLAN_FIGURES[k][1], "caption": PLAN_FIGURES[k][2],
                "png": pngs[k]} for k in pngs]  # fmt: skip
    html_figs = [{"key": k, "title": PLAN_FIGURES[k][1], "caption": PLAN_FIGURES[k][2],
                  "json": figure_json(spec), "height_px": spec["layout"]["height"]}
                 for k, spec in figures.items()]  # fmt: skip
    return {
        "report.md": render("plan.md.j2", **context, figures=md_figs),
        "report.html": render("plan.html.j2", **context, figures=html_figs),
    }


__all__: Sequence[str] = (
    "build_plan_report",
    "pareto_front",
    "plan_table",
    "plot_latency_vs_rate",
    "plot_pareto",
)
