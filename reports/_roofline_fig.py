"""The representative step's operators under their GPU roofs (log-log), on one axes.

Reads ``summary["roofline"]`` (see ``docs/reports.md``): the GPU's peak FLOP/s for the compute
type the step runs in, its HBM bandwidth, and per operator its FLOPs, bytes moved and modelled
time. Each operator is a point at

    x = arithmetic intensity = flops / bytes            (FLOP/byte)
    y = achieved performance = flops / time_s           (FLOP/s)

under the roof ``min(peak, bandwidth * x)``. Points near the sloped part are memory-bound
(decode GEMVs, attention over the KV cache); points near the flat part are compute-bound
(prefill GEMMs). The vertical gap between a point and the roof is the efficiency the cost
model charges below peak. Operators with no FLOPs or no bytes (communication, host overhead)
cannot sit on a log-log roofline and are listed under the panel instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from servesim.reports._data import RunData
from servesim.reports._style import (
    new_figure,
    place_axes,
    plain_log_ticks,
    save_figure,
    set_title,
    si_log_ticks,
    variant_colors,
)

#: Marker per operator bound, as the engine labels it (anything else gets "D").
_BOUND_MARKERS: Mapping[str, str] = {
    "compute": "o",
    "memory": "^",
    "weight_read": "^",
    "kv_read": "v",
    "comm": "s",
    "communication": "s",
    "overhead": "x",
}


def _usable(roofline: Mapping[str, Any] | None) -> bool:
    if not roofline:
        return False
    try:
        return float(roofline["peak_flops_per_s"]) > 0 and float(roofline["hbm_bw_bytes_per_s"]) > 0
    except (KeyError, TypeError, ValueError):
        return False


def _place(roofline: Mapping[str, Any]) -> tuple[list[tuple[str, float, float, str]], list[str]]:
    """Split ops into placeable (name, intensity, achieved FLOP/s, bound) and skipped names."""
    placed: list[tuple[str, float, float, str]] = []
    skipped: list[str] = []
    for op in roofline.get("ops", []):
        flops, nbytes, t = (float(op.get(k) or 0.0) for k in ("flops", "bytes", "time_s"))
        ok = flops > 0 and nbytes > 0 and t > 0 and all(map(math.isfinite, (flops, nbytes, t)))
        if ok:
            placed.append(
                (str(op.get("op", "?")), flops / nbytes, flops / t, str(op.get("bound", "")))
            )
        else:
            skipped.append(str(op.get("op", "?")))
    return placed, skipped


def roofline_groups(run: RunData) -> dict[tuple[Any, ...], list[tuple[str, Mapping[str, Any]]]]:
    """Variants grouped by roof: (gpu, compute type, peak FLOP/s, HBM B/s) -> [(variant, roofline)].

    Variants without usable roofline data are left out.
    """
    groups: dict[tuple[Any, ...], list[tuple[str, Mapping[str, Any]]]] = {}
    for v in run.variants:
        rl = run.summaries[v].get("roofline")
        if _usable(rl):
            key = (rl.get("gpu"), rl.get("compute_type"), float(rl["peak_flops_per_s"]),
                   float(rl["hbm_bw_bytes_per_s"]))  # fmt: skip
            groups.setdefault(key, []).append((v, rl))
    return groups


def roof_label(key: tuple[Any, ...]) -> str:
    """``"h200 (fp16): 989 TFLOP/s, 4.80 TB/s"`` for a roof key of :func:`roofline_groups`."""
    gpu, ctype, peak, bw = key
    return f"{gpu} ({ctype}): {peak / 1e12:,.0f} TFLOP/s, {bw / 1e12:.2f} TB/s"


def batch_text(rl: Mapping[str, Any]) -> str:
    """The representative step's batch: ``"40000 context tokens, 48 decode seqs, ..."``."""
    batch = rl.get("batch") or {}
    return ", ".join(f"{batch[k]:,} {k.replace('_', ' ')}" if isinstance(batch[k], int)
                     else f"{batch[k]} {k.replace('_', ' ')}" for k in sorted(batch))  # fmt: skip


def placed_points(
    members: Sequence[tuple[str, Mapping[str, Any]]],
) -> tuple[list[tuple[str, str, float, float, str]], list[str]]:
    """(variant, op, intensity, achieved FLOP/s, bound) for every placeable operator of the
    given variants, and the deduplicated names of those that cannot be placed."""
    points: list[tuple[str, str, float, float, str]] = []
    skipped: list[str] = []
    for v, rl in members:
        placed, skip = _place(rl)
        points += [(v, *p) for p in placed]
        skipped += [name for name in skip if name not in skipped]
    return points, skipped


def draw_run_roofline(run: RunData) -> Figure | None:
    """The representative steps' operators under their GPU roofs, on one log-log axes.

    One roof per distinct (GPU, compute type) drawn in the colour of its variant (black when
    variants share it), each variant's operators in its colour, the marker giving the
    operator's bound. None if no variant has roofline data.
    """
    groups = roofline_groups(run)
    if not groups:
        return None
    colors = variant_colors(run.variants)
    fig = new_figure(width_in=10.0, height_in=6.2)
    (ax,) = place_axes(fig, 1, 1, left_in=0.9, right_in=0.25, top_in=0.5, bottom_in=0.6)
    all_points: list[tuple[str, str, float, float, str]] = []
    skipped: list[str] = []
    for members in groups.values():
        pts, skip = placed_points(members)
        all_points += pts
        skipped += [s for s in skip if s not in skipped]
    ridges = [peak / bw for _, _, peak, bw in groups]
    xs = [p[2] for p in all_points] + ridges
    x_lo = 10 ** math.floor(math.log10(min(xs) / 3))
    x_hi = 10 ** math.ceil(math.log10(max(xs) * 3))
    grid = np.geomspace(x_lo, x_hi, 64)
    roof_handles = []
    for key, members in groups.items():
        _, _, peak, bw = key
        color = colors[members[0][0]] if len(members) == 1 else "black"
        (line,) = ax.plot(grid, np.minimum(peak, bw * grid), color=color, lw=1.4,
                          label=roof_label(key))  # fmt: skip
        ax.axvline(peak / bw, color=color, ls=":", lw=0.8)
        roof_handles.append(line)
    by_marker: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
    for v, _name, x, y, bound in all_points:
        pts = by_marker.setdefault((v, _BOUND_MARKERS.get(bound, "D")), ([], []))
        pts[0].append(x)
        pts[1].append(y)
    for (v, marker), (px, py) in by_marker.items():
        ax.scatter(px, py, marker=marker, color=colors[v], s=36, edgecolors="black",
                   linewidths=0.4, zorder=3)  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    plain_log_ticks(ax.xaxis)
    si_log_ticks(ax.yaxis)
    ys = [p[3] for p in all_points] + [peak for _, _, peak, _ in groups]
    y_lo = min(min(ys), min(bw * x_lo for _, _, _, bw in groups))
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(10 ** math.floor(math.log10(y_lo / 2)), max(ys) * 4)
    # Operators of a decode step crowd at one intensity: each label goes just below its point,
    # or one text line below a label already there (positions in decades: log-log axes).
    y0, y1 = ax.get_ylim()
    height_in = ax.get_position().height * fig.get_size_inches()[1]
    line_dec = 0.12 * math.log10(y1 / y0) / height_in  # one 6.5 pt line, in decades of y
    labelled: set[str] = set()
    placed: list[tuple[float, float]] = []
    for _v, name, x, y, _bound in sorted(all_points, key=lambda p: -p[3]):
        if name in labelled:  # one label per op name keeps overlaid variants readable
            continue
        labelled.add(name)
        lx, ly = math.log10(x) + 0.03, math.log10(y) - line_dec
        while any(abs(lx - px) < 0.35 and abs(ly - py) < line_dec for px, py in placed):
            ly -= line_dec / 2
        placed.append((lx, ly))
        ax.text(10**lx, 10**ly, name, fontsize=6.5, va="center", ha="left", clip_on=True)
    ax.set_xlabel("arithmetic intensity (FLOP/byte); dotted: ridge points")
    ax.set_ylabel("attainable performance (FLOP/s)")
    ax.grid(alpha=0.3, which="major", lw=0.4)
    variant_handles = [
        Line2D([], [], marker="o", ls="none", color=colors[v], label=f"{v}: {batch_text(rl)}")
        for members in groups.values()
        for v, rl in members
    ]
    ax.legend(handles=roof_handles + variant_handles, fontsize=7, loc="upper left")
    note = "marker = operator bound: circle compute, triangle up memory / weight reads, " \
           "triangle down KV reads, diamond other"  # fmt: skip
    if skipped:
        note += "\nnot on a roofline: " + ", ".join(skipped)
    ax.text(0.99, 0.01, note, transform=ax.transAxes, fontsize=6.5, va="bottom", ha="right",
            color="dimgray")  # fmt: skip
    set_title(ax, "Representative step's operators on the GPU roofline", fontsize=10)
    return fig


def plot_run_roofline(run: RunData, path: Path) -> Path | None:
    """Save :func:`draw_run_roofline` as a PNG; None (nothing written) without roofline data."""
    fig = draw_run_roofline(run)
    return None if fig is None else save_figure(fig, path)
