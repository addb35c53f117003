"""Trace transformations: time window, length filters, request cap and time scaling.

They apply in that order (:func:`apply_trace_cfg`), so that a target rate is the rate of the
requests that are finally replayed. Each one that drops requests says how many in
``Workload.notes``; none is silent.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from servesim.hwmodels.errors import ConfigError
from servesim.workloads.request import Workload

if TYPE_CHECKING:
    from servesim.workloads.config import TraceCfg, TraceFilters


def window(wl: Workload, start_s: float, end_s: float) -> Workload:
    """Keep open arrivals in ``[start_s, end_s)``, re-based so ``start_s`` becomes 0.

    Raises:
        ConfigError: the window holds no request.
    """
    _require_open(wl, "window_s")
    keep = (wl.arrival_s >= start_s) & (wl.arrival_s < end_s)
    if not keep.any():
        lo, hi = (float(wl.arrival_s.min()), float(wl.arrival_s.max())) if len(wl) else (0, 0)
        raise ConfigError(
            f"window_s [{start_s}, {end_s}) holds no request of {wl.name} "
            f"(its arrivals span [{lo:.3f}, {hi:.3f}] s)"
        )
    out = wl.select(keep)
    return _note(
        replace(out, arrival_s=out.arrival_s - start_s),
        f"window [{start_s}, {end_s}) s kept {len(out)} of {len(wl)} requests",
    )


def filter_lengths(wl: Workload, filters: TraceFilters) -> Workload:
    """Keep requests whose prompt and output lengths lie within the (inclusive) bounds.

    Raises:
        ConfigError: no request passes.
    """
    keep = np.ones(len(wl), dtype=bool)
    for bound, col, is_min in (
        (filters.min_prompt_tokens, wl.prompt_tokens, True),
        (filters.max_prompt_tokens, wl.prompt_tokens, False),
        (filters.min_output_tokens, wl.output_tokens, True),
        (filters.max_output_tokens, wl.output_tokens, False),
    ):
        if bound is not None:
            keep &= (col >= bound) if is_min else (col <= bound)
    if not keep.any():
        raise ConfigError(f"filters {filters.model_dump(exclude_none=True)} drop every request")
    if keep.all():
        return wl
    return _note(
        wl.select(keep),
        f"filters {filters.model_dump(exclude_none=True)} dropped {int((~keep).sum())} "
        f"of {len(wl)} requests",
    )


def cap(wl: Workload, max_requests: int) -> Workload:
    """Keep the first ``max_requests`` requests."""
    if max_requests >= len(wl):
        return wl
    return _note(
        wl.select(np.arange(max_requests)), f"kept the first {max_requests} of {len(wl)} requests"
    )


def scale_time(wl: Workload, factor: float) -> Workload:
    """Multiply arrival times (measured from the first arrival) by ``factor``."""
    _require_open(wl, "time scaling")
    if factor <= 0:
        raise ConfigError(f"time_scale must be > 0, got {factor}")
    t0 = wl.arrival_s[0] if len(wl) else 0.0
    return _note(
        replace(wl, arrival_s=t0 + (wl.arrival_s - t0) * factor), f"time scaled by {factor:g}"
    )


def mean_rate_per_s(wl: Workload) -> float:
    """Requests per second over the arrival span (``n / (last - first)``); inf if zero span."""
    if len(wl) < 2:
        return float("inf")
    span_s = float(wl.arrival_s[-1] - wl.arrival_s[0])
    return len(wl) / span_s if span_s > 0 else float("inf")


def scale_to_rate(wl: Workload, target_rate_per_s: float) -> Workload:
    """Scale time so that :func:`mean_rate_per_s` equals ``target_rate_per_s``.

    Raises:
        ConfigError: the trace has no time span (all requests at one instant).
    """
    rate = mean_rate_per_s(wl)
    if not np.isfinite(rate):
        raise ConfigError(
            f"target_rate_per_s: {wl.name} has no time span (all arrivals at one instant)"
        )
    return scale_time(wl, rate / target_rate_per_s)


def apply_trace_cfg(wl: Workload, cfg: TraceCfg) -> Workload:
    """Apply a trace config's window, filters, cap and time scaling, in that order."""
    if cfg.window_s is not None:
        wl = window(wl, *cfg.window_s)
    if cfg.filters is not None:
        wl = filter_lengths(wl, cfg.filters)
    if cfg.max_requests is not None:
        wl = cap(wl, cfg.max_requests)
    if cfg.time_scale is not None:
        wl = scale_time(wl, cfg.time_scale)
    if cfg.target_rate_per_s is not None:
        wl = scale_to_rate(wl, cfg.target_rate_per_s)
    return wl


def _require_open(wl: Workload, what: str) -> None:
    if not wl.is_open_loop:
        raise ConfigError(f"{what} needs open arrivals; {wl.name} has dependent requests")


def _note(wl: Workload, note: str) -> Workload:
    return replace(wl, notes=(*wl.notes, note))
