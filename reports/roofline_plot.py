"""A step's operators on the GPU's roofline (log-log), for ``servesim roofline --plot``.

Takes plain numbers (operator dicts or :class:`hwmodels.ops.OpCost`), so the CLI and the
report builder can both use it. Each operator with FLOPs, bytes and time is a point at

    x = arithmetic intensity = flops / bytes      (FLOP/byte)
    y = achieved performance = flops / time_s     (FLOP/s)

under the roof ``min(peak, bandwidth x intensity)``; the vertical gap to the roof is the
efficiency the cost model charges. Communication and host overhead have no place on a
roofline and are listed in the legend's title instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

_MARKERS = {"compute": "o", "memory": "^", "communication": "s", "overhead": "x"}


def _as_dict(op: Any) -> Mapping[str, Any]:
    return op if isinstance(op, Mapping) else op.to_dict()


def plot_roofline(
    ops: Iterable[Any],
    *,
    peak_flops_per_s: float,
    hbm_bw_bytes_per_s: float,
    path: str | Path,
    title: str = "",
    compute_type: str = "fp16",
) -> Path:
    """Write the roofline figure to ``path`` (format from the suffix) and return the path.

    Args:
        ops: operators with ``op``, ``time_s``, ``flops``, ``bytes``, ``bound`` (the ``total``
            row, if present, is drawn as a star).
        peak_flops_per_s: the roof: dense peak for the step's compute type.
        hbm_bw_bytes_per_s: the slope: peak HBM bandwidth.
        path: output file.
        title: figure title (GPU, model, batch).
        compute_type: label of the flat roof.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=120)
    placed, skipped = [], []
    for op in map(_as_dict, ops):
        fl, by, t = float(op["flops"]), float(op["bytes"]), float(op["time_s"])
        if fl > 0 and by > 0 and t > 0:
            placed.append((op["op"], fl / by, fl / t, op["bound"]))
        elif op["op"] != "total":
            skipped.append(f"{op['op']} ({t * 1e3:.3g} ms)")
    ridge = peak_flops_per_s / hbm_bw_bytes_per_s
    xs = [p[1] for p in placed] or [ridge]
    lo = min(min(xs), ridge) / 10
    hi = max(max(xs), ridge) * 10
    grid = np.logspace(np.log10(lo), np.log10(hi), 200)
    ax.loglog(grid, np.minimum(peak_flops_per_s, hbm_bw_bytes_per_s * grid), color="black", lw=1.5,
              label=f"roof: {peak_flops_per_s / 1e12:.0f} TFLOP/s {compute_type}, "
                    f"{hbm_bw_bytes_per_s / 1e12:.2f} TB/s")
    ax.axvline(ridge, color="grey", lw=0.8, ls=":")
    colors = plt.get_cmap("tab10")
    for i, (name, x, y, bound) in enumerate(placed):
        if name == "total":
            ax.scatter([x], [y], marker="*", s=180, color="black", zorder=3, label="step total")
        else:
            ax.scatter([x], [y], marker=_MARKERS.get(bound, "D"), s=60, color=colors(i % 10), zorder=3,
                       label=f"{name} ({bound})")
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("achieved performance (FLOP/s)")
    ax.set_title(title or "step operators on the roofline")
    ax.grid(True, which="both", alpha=0.25)
    legend_title = ("not shown: " + ", ".join(skipped)) if skipped else None
    ax.legend(fontsize=7, loc="lower right", title=legend_title, title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


__all__ = ["plot_roofline"]
