"""The interactive figures of ``report.html``: plotly figure specs as plain dictionaries.

The page draws them with the plotly.js embedded once in it (see :mod:`servesim.reports._render`),
so hover values, zoom (drag; double-click resets) and legend toggling work offline, from a file,
with no server. The specs are built here by hand from the same :class:`RunSeries` the PNGs
draw: the plotly Python package is only the source of plotly.js, never imported, which keeps
report building fast. Float arrays are rounded to 6 significant digits when serialised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from servesim.reports._data import RunData
from servesim.reports._roofline_fig import (
    _BOUND_MARKERS,
    batch_text,
    placed_points,
    roof_label,
    roofline_groups,
)
from servesim.reports._series import LATENCY_METRICS, RunSeries, duration_unit, time_unit
from servesim.reports._style import BOUND_PARTS, KV_PARTS, variant_colors

Spec = dict[str, Any]

#: Marker symbols per operator bound (plotly names), as the PNG's matplotlib markers.
_PLOTLY_MARKERS: Mapping[str, str] = {"o": "circle", "^": "triangle-up", "v": "triangle-down",
                                      "s": "square", "x": "x", "D": "diamond"}  # fmt: skip

_FONT = {"family": "system-ui, sans-serif", "size": 12}


def _layout(height_px: int, **extra: Any) -> Spec:
    return {
        "height": height_px,
        "margin": {"l": 70, "r": 20, "t": 40, "b": 50},
        "font": _FONT,
        "legend": {"orientation": "h", "y": -0.12, "yanchor": "top"},
        "plot_bgcolor": "white",
        **extra,
    }


def _axis(title: str, **extra: Any) -> Spec:
    return {"title": {"text": title}, "gridcolor": "#e5e5e5", "zeroline": False, **extra}


def _domains(n: int, gap: float) -> list[list[float]]:
    """``n`` equal intervals of [0, 1] separated by ``gap``, first to last."""
    size = (1.0 - gap * (n - 1)) / n
    return [[i * (size + gap), i * (size + gap) + size] for i in range(n)]


def _ref(prefix: str, i: int) -> str:
    return prefix if i == 0 else f"{prefix}{i + 1}"


def _key(prefix: str, i: int) -> str:
    return f"{prefix}axis" if i == 0 else f"{prefix}axis{i + 1}"


def _title_annotation(text: str, x: float, y: float, color: str = "#222") -> Spec:
    return {"text": text, "x": x, "y": y, "xref": "paper", "yref": "paper", "showarrow": False,
            "xanchor": "center", "yanchor": "bottom", "font": {"size": 13, "color": color}}  # fmt: skip


def latency_cdf_spec(run: RunData, series: RunSeries) -> Spec:
    """Three CDF panels side by side (TTFT, TPOT, E2EL), each in the unit that reads."""
    colors = variant_colors(run.variants)
    doms = _domains(3, 0.07)
    data: list[Spec] = []
    layout = _layout(460, hovermode="closest", annotations=[])
    for i, (col, title, slo_key) in enumerate(LATENCY_METRICS):
        highs = [float(s.cdf[col][0][-1]) for s in series.by_variant.values() if s.cdf[col][2]]
        lows = [float(x[x > 0][0]) for s in series.by_variant.values()
                for x in (s.cdf[col][0],) if (x > 0).any()]  # fmt: skip
        unit, scale = duration_unit(max(highs, default=0.0))
        log = bool(lows) and max(highs) / min(lows) > 100
        name = col.split("_")[0].upper()
        for v in run.variants:
            xs, ys, n = series.by_variant[v].cdf[col]
            data.append({
                "type": "scatter", "mode": "lines", "x": xs / scale, "y": ys,
                "name": v, "legendgroup": v, "showlegend": i == 0,
                "line": {"color": colors[v], "shape": "hv", "width": 1.6},
                "xaxis": _ref("x", i), "yaxis": _ref("y", i),
                "hovertemplate": f"{v}<br>{name} %{{x:.4g}} {unit}<br>%{{y:.1%}} of {n:,d} "
                                 "requests<extra></extra>",
            })  # fmt: skip
        if slo_key in series.slo:
            x = series.slo[slo_key] / scale
            data.append({
                "type": "scatter", "mode": "lines", "x": [x, x], "y": [0, 1],
                "name": "SLO", "legendgroup": "SLO", "showlegend": i == 0,
                "line": {"color": "black", "dash": "dash", "width": 1},
                "xaxis": _ref("x", i), "yaxis": _ref("y", i),
                "hovertemplate": f"SLO {series.slo[slo_key]:g} ms<extra></extra>",
            })  # fmt: skip
        layout[_key("x", i)] = _axis(f"{name} ({unit})", domain=doms[i], anchor=_ref("y", i),
                                     type="log" if log else "linear")  # fmt: skip
        layout[_key("y", i)] = _axis("fraction of requests" if i == 0 else "", range=[0, 1.02],
                                     anchor=_ref("x", i), tickformat=".0%")  # fmt: skip
        layout["annotations"].append(_title_annotation(title, sum(doms[i]) / 2, 1.0))
    layout["legend"] = {"orientation": "h", "y": -0.2, "yanchor": "top"}
    layout["margin"] = {"l": 70, "r": 20, "t": 40, "b": 90}
    return {"data": data, "layout": layout}


def _time_axis(series: RunSeries) -> tuple[str, float]:
    return time_unit(float(series.edges_s[-1]))


def timeline_spec(run: RunData, series: RunSeries) -> Spec:
    """Throughput, batch and queue stacked on one shared, zoomable time axis."""
    colors = variant_colors(run.variants)
    unit, scale = _time_axis(series)
    x = series.mid_s / scale
    rows = (("output_tokens_per_s", "output tokens/s"), ("running", "running sequences"),
            ("queue", "waiting requests"))  # fmt: skip
    doms = _domains(3, 0.08)[::-1]
    data: list[Spec] = []
    for i, (attr, label) in enumerate(rows):
        for v in run.variants:
            data.append({
                "type": "scatter", "mode": "lines", "x": x, "y": getattr(series.by_variant[v], attr),
                "name": v, "legendgroup": v, "showlegend": i == 0,
                "line": {"color": colors[v], "width": 1.4}, "xaxis": "x", "yaxis": _ref("y", i),
                "hovertemplate": f"{v}: %{{y:,.4g}} {label}<extra></extra>",
            })  # fmt: skip
    layout = _layout(640, hovermode="x unified")
    layout["xaxis"] = _axis(f"simulated time ({unit}); bins of {series.bin_s:g} s", anchor="y3")
    for i, (_, label) in enumerate(rows):
        layout[_key("y", i)] = _axis(label, domain=doms[i], rangemode="tozero", anchor="x")
    layout["legend"] = {"orientation": "h", "y": 1.06, "yanchor": "bottom"}
    return {"data": data, "layout": layout}


def _stacked_rows(
    run: RunData, series: RunSeries, parts: Sequence[tuple[str, str, str]], attr: str,
    subtitle: Mapping[str, str], ylabel: str,
) -> Spec:  # fmt: skip
    """One stacked-area row per variant on a shared time axis (KV split, step-time bounds)."""
    colors = variant_colors(run.variants)
    unit, scale = _time_axis(series)
    x = series.mid_s / scale
    n = len(run.variants)
    doms = _domains(n, 0.12 / max(n - 1, 1) if n > 1 else 0.0)[::-1]
    data: list[Spec] = []
    layout = _layout(150 + 210 * n, hovermode="x unified", annotations=[])
    for i, v in enumerate(run.variants):
        frac = getattr(series.by_variant[v], attr)
        for j, (_, label, color) in enumerate(parts):
            data.append({
                "type": "scatter", "mode": "lines", "x": x, "y": 100 * np.nan_to_num(frac[j]),
                "stackgroup": f"g{i}", "name": label, "legendgroup": label, "showlegend": i == 0,
                "line": {"width": 0, "color": color}, "fillcolor": color,
                "xaxis": "x", "yaxis": _ref("y", i),
                "hovertemplate": f"{label}: %{{y:.1f}}%<extra>{v}</extra>",
            })  # fmt: skip
        layout[_key("y", i)] = _axis(ylabel if i == n - 1 else "", domain=doms[i],
                                     range=[0, 100], anchor="x")  # fmt: skip
        layout["annotations"].append(
            _title_annotation(f"{v}: {subtitle[v]}", 0.5, doms[i][1], colors[v])
        )
    layout["xaxis"] = _axis(f"simulated time ({unit})", anchor=_ref("y", n - 1))
    layout["legend"] = {"orientation": "h", "y": -60 / layout["height"] - 0.02, "yanchor": "top"}
    layout["margin"] = {"l": 70, "r": 20, "t": 30, "b": 90}
    return {"data": data, "layout": layout}


def kv_timeline_spec(run: RunData, series: RunSeries) -> Spec:
    """The KV split over time, one stacked row per variant."""
    sub = {v: (f"capacity {s.kv_capacity_tokens:,.0f} tokens" if s.num_replicas else "no steps")
           for v, s in series.by_variant.items()}  # fmt: skip
    return _stacked_rows(run, series, KV_PARTS, "kv_frac", sub, "% of KV capacity")


def step_time_spec(run: RunData, series: RunSeries) -> Spec:
    """Share of wall time per bound over time, one stacked row per variant (gap = idle)."""
    sub = {v: (f"{s.num_replicas} replica{'s' if s.num_replicas != 1 else ''}"
               if s.num_replicas else "no steps") for v, s in series.by_variant.items()}  # fmt: skip
    return _stacked_rows(run, series, BOUND_PARTS, "bound_frac", sub, "% of wall time")


def kv_bar_spec(run: RunData, series: RunSeries) -> Spec:
    """The time-averaged KV split as one stacked bar per variant."""
    data: list[Spec] = []
    variants = [v for v in run.variants if series.by_variant[v].kv_average is not None]
    for j, (_, label, color) in enumerate(KV_PARTS):
        ys = [100 * float(series.by_variant[v].kv_average[j]) for v in variants]  # type: ignore[index]
        data.append({
            "type": "bar", "x": variants, "y": ys, "name": label, "marker": {"color": color},
            "text": [f"{y:.0f}%" if y >= 4 else "" for y in ys], "textposition": "inside",
            "hovertemplate": f"%{{x}}<br>{label}: %{{y:.1f}}%<extra></extra>",
        })  # fmt: skip
    layout = _layout(420, barmode="stack", hovermode="closest")
    layout["yaxis"] = _axis("% of KV capacity, time-averaged", range=[0, 100])
    layout["xaxis"] = _axis("variant", type="category")
    layout["legend"] = {"traceorder": "reversed"}
    return {"data": data, "layout": layout}


def roofline_spec(run: RunData) -> Spec | None:
    """Every variant's representative-step operators under its GPU roof (log-log)."""
    groups = roofline_groups(run)
    if not groups:
        return None
    colors = variant_colors(run.variants)
    data: list[Spec] = []
    xs_all: list[float] = []
    for key, members in groups.items():
        _, _, peak, bw = key
        pts, _ = placed_points(members)
        xs_all += [p[2] for p in pts] + [peak / bw]
    lo, hi = min(xs_all) / 3, max(xs_all) * 3
    grid = np.geomspace(lo, hi, 64)
    for key, members in groups.items():
        _, _, peak, bw = key
        color = colors[members[0][0]] if len(members) == 1 else "black"
        data.append({
            "type": "scatter", "mode": "lines", "x": grid, "y": np.minimum(peak, bw * grid),
            "name": roof_label(key), "line": {"color": color, "width": 1.6},
            "hovertemplate": "%{x:.3g} FLOP/B: roof %{y:.3g} FLOP/s<extra></extra>",
        })  # fmt: skip
        for v, rl in members:
            pts, _ = placed_points([(v, rl)])
            data.append({
                "type": "scatter", "mode": "markers", "name": f"{v}: {batch_text(rl)}",
                "x": [p[2] for p in pts], "y": [p[3] for p in pts],
                "text": [f"{p[1]} ({p[4]})" for p in pts],
                "marker": {"color": colors[v], "size": 9, "line": {"color": "black", "width": 0.5},
                           "symbol": [_PLOTLY_MARKERS[_BOUND_MARKERS.get(p[4], "D")] for p in pts]},
                "hovertemplate": f"{v}<br>%{{text}}<br>%{{x:.3g}} FLOP/B, %{{y:.3g}} FLOP/s"
                                 "<extra></extra>",
            })  # fmt: skip
    layout = _layout(520, hovermode="closest")
    layout["xaxis"] = _axis("arithmetic intensity (FLOP/byte)", type="log")
    layout["yaxis"] = _axis("attainable performance (FLOP/s)", type="log")
    layout["legend"] = {"orientation": "v", "x": 0.01, "y": 0.99, "bgcolor": "rgba(255,255,255,0.8)"}
    return {"data": data, "layout": layout}


def prefix_hit_spec(run: RunData, series: RunSeries) -> Spec:
    """Prefix-cache hit rate per bin (solid) and cumulative (dashed)."""
    colors = variant_colors(run.variants)
    unit, scale = _time_axis(series)
    data: list[Spec] = []
    for v in series.prefix_variants():
        s = series.by_variant[v]
        for label, x, y, dash in (("per bin", series.mid_s, s.prefix_per_bin, "solid"),
                                  ("cumulative", series.edges_s[1:], s.prefix_cumulative, "dash")):
            data.append({
                "type": "scatter", "mode": "lines", "x": x / scale, "y": 100 * y,
                "name": f"{v} ({label})", "line": {"color": colors[v], "dash": dash, "width": 1.4},
                "hovertemplate": f"{v} {label}: %{{y:.1f}}%<extra></extra>",
            })  # fmt: skip
    layout = _layout(420, hovermode="x unified")
    layout["xaxis"] = _axis(f"simulated time ({unit})")
    layout["yaxis"] = _axis("prefix hit rate (%)", range=[0, 100])
    return {"data": data, "layout": layout}


def run_figure_specs(run: RunData, series: RunSeries, names: Sequence[str]) -> dict[str, Spec]:
    """name -> plotly spec for each figure in ``names`` (the ones with data, report order)."""
    builders = {
        "latency_cdf": lambda: latency_cdf_spec(run, series),
        "timeline": lambda: timeline_spec(run, series),
        "kv_timeline": lambda: kv_timeline_spec(run, series),
        "kv_bar": lambda: kv_bar_spec(run, series),
        "step_time": lambda: step_time_spec(run, series),
        "roofline": lambda: roofline_spec(run),
        "prefix_hit": lambda: prefix_hit_spec(run, series),
    }
    out: dict[str, Spec] = {}
    for name in names:
        spec = builders[name]()
        if spec is not None:
            out[name] = spec
    return out
