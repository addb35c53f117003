"""Point functions that misbehave on purpose, for the sweep crash tests.

Each runs in a worker process; ``task.base`` carries the knobs (module-level functions, so
they pickle by reference).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from servesim.simulator.sweep import PointTask


def crashy_point(task: PointTask) -> list[dict[str, Any]]:
    """Rows like the engine's (an int count and a float metric per variant).

    Knobs in ``task.base``: ``marker_dir`` (one file per call: ``<point_id>-<pid>-<ns>``),
    ``kill_index`` (the worker running that point SIGKILLs itself), ``kill_once`` (only on
    the first attempt), ``fail_index`` (raises), ``sleep_s``.
    """
    base = task.base
    index = task.point.index
    marker_dir = base.get("marker_dir")
    first_attempt = True
    if marker_dir:
        first_attempt = not any(Path(marker_dir).glob(f"{task.point.point_id}-*"))
        Path(marker_dir, f"{task.point.point_id}-{os.getpid()}-{time.monotonic_ns()}").touch()
    if base.get("sleep_s"):
        time.sleep(base["sleep_s"])
    if index == base.get("kill_index") and (first_attempt or not base.get("kill_once")):
        os.kill(os.getpid(), signal.SIGKILL)
    if index == base.get("fail_index"):
        raise ValueError(f"point {index} fails on purpose")
    x = task.point.params.get("x", 0)
    return [
        {"point_index": index, "point_id": task.point.point_id, **task.point.params,
         "variant": v, "status": "ok", "error": None, "num_things": int(x) * 10 + k,
         "metric_s": float(x) / 7.0 + k}
        for k, v in enumerate(("a", "b"))
    ]
