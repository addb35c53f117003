"""A tiny deterministic stand-in for the engine, to test the sweep machinery alone.

It exercises executors, storage and resume without simulating anything: the "metrics" are
arithmetic on the point's parameters. Tests of the real engine path live beside it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from servesim.simulator.sweep import PointTask


def standin_point(task: PointTask) -> list[dict[str, Any]]:
    """Two "variants" per point; ``fail: true`` raises; ``sleep_s`` waits; ``marker_dir``
    gets one file per call (to count how often a point ran)."""
    params = dict(task.point.params)
    if task.base.get("marker_dir"):
        Path(task.base["marker_dir"], f"{task.point.point_id}-{time.monotonic_ns()}").touch()
    if params.get("sleep_s"):
        time.sleep(params["sleep_s"])
    if params.get("fail"):
        raise ValueError(f"point {task.point.index} was told to fail")
    x = float(params.get("x", 0.0))
    rows = []
    for k, name in enumerate(("a", "b")):
        rows.append({
            "point_index": task.point.index,
            "point_id": task.point.point_id,
            **params,
            "variant": name,
            "status": "ok",
            "error": None,
            "metric_sq": x * x + k,
            "metric_third": x / 3.0 + k,
        })
    return rows
