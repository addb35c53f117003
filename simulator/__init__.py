"""servesim: a discrete-event simulator of LLM serving on GPUs.

The public API for notebooks::

    import simulator as ss

    res = ss.run("scenarios/quickstart.yaml", overrides={"workload.num_requests": 200})
    df = ss.sweep("examples/sweep-rate-gpu.yaml")             # one row per point x variant
    rr = ss.max_sustainable_rate("scenarios/quickstart.yaml", ttft_ms=500, tpot_ms=50)
    plan = ss.plan_capacity("examples/plan.yaml", out="out/plan")

See :mod:`simulator.api`. The engine itself is imported on first use.
"""

from __future__ import annotations

# NOTE: the submodule simulator.sweep must be loaded *before* the function ``sweep`` is
# bound here: importing a submodule for the first time sets the package attribute of the
# same name, which would otherwise replace ``simulator.sweep`` (the function) with the
# module the moment anything imported it.
import simulator.sweep as _sweep_module  # noqa: F401
from simulator.api import load, max_sustainable_rate, plan_capacity, run, sweep

__all__ = ["load", "max_sustainable_rate", "plan_capacity", "run", "sweep"]
