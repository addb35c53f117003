"""servesim: a discrete-event simulator of LLM serving on GPUs.

The public API for notebooks::

    import servesim as ss

    res = ss.run("scenarios/quickstart.yaml", overrides={"workload.num_requests": 200})
    df = ss.sweep("examples/sweep-rate-gpu.yaml")             # one row per point x variant
    rr = ss.max_sustainable_rate("scenarios/quickstart.yaml", ttft_ms=500, tpot_ms=50)
    plan = ss.plan_capacity("examples/plan.yaml", out="out/plan")

The subpackages install under this one (``servesim.simulator``, ``servesim.hwmodels``,
``servesim.workloads``, ``servesim.reports``) so that installing servesim claims no generic
top-level import name. This file lives at ``simulator/_servesim/`` in the repository because the
repository's top-level layout is fixed; ``pyproject.toml`` maps it to ``servesim``.

Everything heavy (numba, pandas, the engine) is imported on first use, so ``import servesim``
and ``servesim --help`` stay fast.
"""

from __future__ import annotations

_API = ("bands", "load", "max_sustainable_rate", "plan_capacity", "run", "sweep")

__all__ = ["__version__", *_API]


def _version() -> str:
    # NOTE: importlib.metadata costs tens of ms at import; `servesim --help` must not pay it,
    # so the version is read on first access (then cached in the module's namespace).
    from importlib import metadata

    try:
        return metadata.version("servesim")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


def __getattr__(name: str):
    if name == "__version__":
        globals()["__version__"] = version = _version()
        return version
    if name in _API:
        from servesim.simulator import api

        return getattr(api, name)
    raise AttributeError(f"module 'servesim' has no attribute {name!r}")
