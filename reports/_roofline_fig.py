"""The representative step's operators on the GPU roofline (log-log), one panel per variant.

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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from reports._data import RunData
from reports._style import new_figure, save_figure, variant_colors

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


def draw_roofline(ax: Axes, roofline: Mapping[str, Any], *, color: str) -> list[str]:
    """Draw one roofline and its operators on ``ax`` (log-log).

    Args:
        ax: target axes.
        roofline: a ``summary["roofline"]`` mapping.
        color: the variant's colour for the points.

    Returns:
        Names of operators that could not be placed (no FLOPs, no bytes or no time).
    """
    peak = float(roofline["peak_flops_per_s"])
    bw = float(roofline["hbm_bw_bytes_per_s"])
    ridge = peak / bw
    placed: list[tuple[str, float, float, str]] = []
    skipped: list[str] = []
    for op in roofline.get("ops", []):
        flops, nbytes, t = (float(op.get(k) or 0.0) for k in ("flops", "bytes", "time_s"))
        if not (flops > 0 and nbytes > 0 and t > 0) or not all(
            map(math.isfinite, (flops, nbytes, t))
        ):
            skipped.append(str(op.get("op", "?")))
            continue
        placed.append((str(op.get("op", "?")), flops / nbytes, flops / t, str(op.get("bound", ""))))

    xs = [p[1] for p in placed] or [ridge]
    x_lo = 10 ** math.floor(math.log10(min(min(xs), ridge) / 3))
    x_hi = 10 ** math.ceil(math.log10(max(max(xs), ridge) * 3))
    grid = np.geomspace(x_lo, x_hi, 200)
    ax.loglog(grid, np.minimum(peak, bw * grid), color="black", lw=1.5)
    ax.axvline(ridge, color="grey", ls=":", lw=1)
    ax.text(ridge, peak * 1.15, f"ridge {ridge:,.0f} FLOP/B", ha="center", va="bottom", fontsize=7)
    for name, x, y, bound in placed:
        ax.plot(x, y, marker=_BOUND_MARKERS.get(bound, "D"), color=color, ms=6, ls="none",
                markeredgecolor="black", markeredgewidth=0.4)  # fmt: skip
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, -9), fontsize=6.5)
    ax.set_xlim(x_lo, x_hi)
    ys = [p[2] for p in placed] or [peak]
    ax.set_ylim(10 ** math.floor(math.log10(min(min(ys), bw * x_lo) / 2)), peak * 3)
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("attainable performance (FLOP/s)")
    ax.grid(alpha=0.3, which="both", lw=0.4)
    return skipped


def plot_run_roofline(run: RunData, path: Path) -> Path | None:
    """One roofline panel per variant with a ``summary["roofline"]``; None if no variant has one."""
    variants = [v for v in run.variants if _usable(run.summaries[v].get("roofline"))]
    if not variants:
        return None
    colors = variant_colors(run.variants)
    cols = min(len(variants), 3)
    rows = math.ceil(len(variants) / cols)
    fig = new_figure(width_in=5.0 * cols, height_in=4.3 * rows + 0.6)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[len(variants) :]:
        ax.set_visible(False)
    for ax, v in zip(axes, variants, strict=False):
        rl = run.summaries[v]["roofline"]
        skipped = draw_roofline(ax, rl, color=colors[v])
        batch = rl.get("batch") or {}
        step = ", ".join(f"{k.replace('_', ' ')} {batch[k]}" for k in sorted(batch))
        ax.set_title(
            f"{v}: {rl.get('gpu', '?')} ({rl.get('compute_type', '?')})\n{step}",
            color=colors[v],
            fontsize=9,
        )
        if skipped:
            ax.text(0.02, 0.02, "not on roofline: " + ", ".join(skipped), transform=ax.transAxes,
                    fontsize=6.5, va="bottom", ha="left", color="dimgray")  # fmt: skip
    markers = [("compute", "o"), ("memory / weight reads", "^"), ("KV reads", "v"), ("other", "D")]
    fig.legend(
        handles=[
            Line2D([], [], marker=m, ls="none", color="grey", label=lab) for lab, m in markers
        ],
        loc="outside lower center",
        ncols=len(markers),
        fontsize=8,
        title="operator bound",
        title_fontsize=8,
    )
    fig.suptitle("Representative step's operators on the GPU roofline")
    return save_figure(fig, path)
