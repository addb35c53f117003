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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from servesim.reports._data import RunData
from servesim.reports._style import new_figure, save_figure, variant_colors

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


def draw_roofline(
    ax: Axes, rooflines: Sequence[tuple[str, Mapping[str, Any]]], colors: Mapping[str, str]
) -> list[str]:
    """Draw one GPU roof and every given variant's operators on ``ax`` (log-log).

    Args:
        ax: target axes.
        rooflines: (variant, ``summary["roofline"]``) pairs sharing one GPU roof (the first
            one's peak and bandwidth are drawn).
        colors: variant -> colour.

    Returns:
        Names of operators that could not be placed (no FLOPs, bytes or time), deduplicated.
    """
    peak = float(rooflines[0][1]["peak_flops_per_s"])
    bw = float(rooflines[0][1]["hbm_bw_bytes_per_s"])
    ridge = peak / bw
    points: list[tuple[str, str, float, float, str]] = []
    skipped: list[str] = []
    for v, rl in rooflines:
        placed, skip = _place(rl)
        points += [(v, *p) for p in placed]
        skipped += [name for name in skip if name not in skipped]

    xs = [p[2] for p in points] or [ridge]
    x_lo = 10 ** math.floor(math.log10(min(min(xs), ridge) / 3))
    x_hi = 10 ** math.ceil(math.log10(max(max(xs), ridge) * 3))
    grid = np.geomspace(x_lo, x_hi, 200)
    ax.loglog(grid, np.minimum(peak, bw * grid), color="black", lw=1.5)
    ax.axvline(ridge, color="grey", ls=":", lw=1)
    ax.text(ridge * 1.1, 0.03, f"ridge {ridge:,.0f} FLOP/B", transform=ax.get_xaxis_transform(),
            ha="left", va="bottom", fontsize=7, color="dimgray")  # fmt: skip
    labelled: set[str] = set()
    for v, name, x, y, bound in points:
        ax.plot(x, y, marker=_BOUND_MARKERS.get(bound, "D"), color=colors[v], ms=6, ls="none",
                markeredgecolor="black", markeredgewidth=0.4)  # fmt: skip
        if name not in labelled:  # one label per op name keeps overlaid variants readable
            labelled.add(name)
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, -9), fontsize=6.5)
    ax.set_xlim(x_lo, x_hi)
    ys = [p[3] for p in points] or [peak]
    ax.set_ylim(10 ** math.floor(math.log10(min(min(ys), bw * x_lo) / 2)), max(max(ys), peak) * 3)
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("attainable performance (FLOP/s)")
    ax.grid(alpha=0.3, which="major", lw=0.4)
    return skipped


def _batch_text(rl: Mapping[str, Any]) -> str:
    batch = rl.get("batch") or {}
    return ", ".join(f"{batch[k]} {k.replace('_', ' ')}" for k in sorted(batch))


def plot_run_roofline(run: RunData, path: Path) -> Path | None:
    """The representative steps' operators on their GPU roofline; None if no variant has one.

    Variants on the same roof (same GPU, compute type, peak and bandwidth) share a panel, each
    in its colour, so their operators can be compared directly; one panel per distinct roof.
    """
    groups: dict[tuple[Any, ...], list[tuple[str, Mapping[str, Any]]]] = {}
    for v in run.variants:
        rl = run.summaries[v].get("roofline")
        if _usable(rl):
            key = (rl.get("gpu"), rl.get("compute_type"), float(rl["peak_flops_per_s"]),
                   float(rl["hbm_bw_bytes_per_s"]))  # fmt: skip
            groups.setdefault(key, []).append((v, rl))
    if not groups:
        return None
    colors = variant_colors(run.variants)
    cols = min(len(groups), 2)
    rows = math.ceil(len(groups) / cols)
    fig = new_figure(width_in=6.5 * cols, height_in=4.8 * rows + 0.6)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[len(groups) :]:
        ax.set_visible(False)
    for ax, ((gpu, ctype, peak, bw), members) in zip(axes, groups.items(), strict=False):
        skipped = draw_roofline(ax, members, colors)
        ax.set_title(f"{gpu} ({ctype}): peak {peak / 1e12:,.0f} TFLOP/s, HBM {bw / 1e12:.2f} TB/s",
                     fontsize=9)  # fmt: skip
        ax.legend(
            handles=[
                Line2D(
                    [], [], marker="o", ls="none", color=colors[v], label=f"{v}: {_batch_text(rl)}"
                )
                for v, rl in members
            ],
            fontsize=7,
            loc="upper left",
        )
        if skipped:
            ax.text(0.98, 0.10, "not on roofline: " + ", ".join(skipped), transform=ax.transAxes,
                    fontsize=6.5, va="bottom", ha="right", color="dimgray", wrap=True)  # fmt: skip
    markers = [("compute", "o"), ("memory / weight reads", "^"), ("KV reads", "v"), ("other", "D")]
    fig.legend(
        handles=[
            Line2D([], [], marker=m, ls="none", color="grey", label=lab) for lab, m in markers
        ],
        loc="outside lower center",
        ncols=len(markers),
        fontsize=8,
        title="operator bound (marker)",
        title_fontsize=8,
    )
    fig.suptitle("Representative step's operators on the GPU roofline")
    return save_figure(fig, path)
