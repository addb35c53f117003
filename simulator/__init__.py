"""servesim: a discrete-event simulator of LLM serving on GPUs.

The public API for notebooks (imported lazily, so ``import simulator`` stays cheap and the
CLI and worker processes only load what they use)::

    import simulator as ss

    res = ss.run("scenarios/quickstart.yaml", overrides={"workload.num_requests": 200})
    df = ss.sweep("examples/sweep-rate-gpu.yaml")             # one row per point x variant
    rr = ss.max_sustainable_rate("scenarios/quickstart.yaml", ttft_ms=500, tpot_ms=50)
    plan = ss.plan_capacity("examples/plan.yaml", out="out/plan")

See :mod:`simulator.api`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from simulator.api import load, max_sustainable_rate, plan_capacity, run, sweep

__all__ = ["load", "max_sustainable_rate", "plan_capacity", "run", "sweep"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from simulator import api

        return getattr(api, name)
    raise AttributeError(f"module 'simulator' has no attribute {name!r}")
