"""Did a variant keep up with its arrivals, and what held it back: read off the run's own data.

A variant is **overloaded** when it completes clearly fewer requests than arrive over the same
stretch of time *and* its queue grows. Both are measured on the second half of the arrival
window (the stretch from the middle of the arrivals to the last one), where a stable system's
completions match its arrivals whatever its latency, and an overloaded one completes at its
capacity: that completion rate is the rate it *does* sustain.

The **binding constraint** is named only from the run's breakdowns, with the same rule as the
capacity planner: preemptions or less than 10 % KV free on average mean KV capacity; a mean
batch at 90 % or more of ``max_num_seqs`` means the scheduler's limit; otherwise the largest
share of step time (compute, weight reads, KV reads, communication, overhead).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from servesim.reports._data import RunData, finite, step_intervals
from servesim.reports._format import fmt_auto, fmt_int, fmt_pct, fmt_s, num
from servesim.reports._series import binned_means

#: Completions below this share of arrivals (second half of the arrival window) fail to keep up.
SERVED_FRAC_MIN = 0.9
#: KV free below this time-averaged share counts as KV capacity binding.
KV_FREE_MIN = 0.10
#: A mean batch at this share of max_num_seqs counts as the scheduler limit binding.
BATCH_LIMIT_FRAC = 0.9

BOUND_LABEL: Mapping[str, str] = {
    "compute": "compute",
    "weight_read": "weight reads",
    "kv_read": "KV reads",
    "comm": "communication",
    "overhead": "host overhead",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Load:
    """Offered and served load of one variant.

    Attributes:
        num_arrivals: requests with an arrival time.
        window_s: first to last arrival.
        offered_per_s: arrivals / window.
        sustained_per_s: completions per second over the second half of the window.
        served_frac: completions / arrivals over that half.
        queue_start, queue_end: time-averaged waiting requests (all replicas) over the first and
            last fifth of the window; NaN without steps.
        num_completed: completed requests in the whole run.
    """

    num_arrivals: int
    window_s: float
    offered_per_s: float
    sustained_per_s: float
    served_frac: float
    queue_start: float
    queue_end: float
    num_completed: int

    @property
    def queue_grew(self) -> bool:
        """The queue at the end of the arrivals is well above its level at the start."""
        if not (self.queue_end == self.queue_end):  # NaN: no steps to tell
            return self.num_completed == 0
        return self.queue_end > 2 * self.queue_start + 1.0

    @property
    def is_overloaded(self) -> bool:
        """Completions fell short of arrivals and the queue grew."""
        return self.served_frac < SERVED_FRAC_MIN and self.queue_grew


def measure_load(run: RunData, v: str) -> Load | None:
    """The :class:`Load` of variant ``v``, or None with fewer than two distinct arrivals."""
    reqs = run.requests[v]
    arrivals = finite(reqs["arrival_s"]) if len(reqs) else np.empty(0)
    if len(arrivals) < 2:
        return None
    t0, t1 = float(arrivals.min()), float(arrivals.max())
    window = t1 - t0
    if window <= 0:
        return None
    mid = t0 + window / 2
    done = reqs["status"].eq("completed").to_numpy(dtype=bool, na_value=False)
    finish = reqs["finish_s"].to_numpy(np.float64)
    completed_half = int(np.count_nonzero(done & (finish >= mid) & (finish <= t1)))
    arrived_half = int(np.count_nonzero(arrivals >= mid))
    steps = run.steps[v]
    q0 = q1 = float("nan")
    if len(steps):
        s, e = step_intervals(steps, hold=True)
        fifth = window / 5
        edges = np.array([t0, t0 + fifth, t1 - fifth, t1])
        q = binned_means(s, e, steps["queue_len"].to_numpy(np.float64), edges,
                         steps["replica_id"].to_numpy())[0]  # fmt: skip
        q0, q1 = float(q[0]), float(q[2])
    return Load(
        num_arrivals=len(arrivals),
        window_s=window,
        offered_per_s=len(arrivals) / window,
        sustained_per_s=completed_half / (window / 2),
        served_frac=completed_half / arrived_half if arrived_half else 1.0,
        queue_start=q0,
        queue_end=q1,
        num_completed=int(np.count_nonzero(done)),
    )


def overload_banner(v: str, load: Load) -> str:
    """One sentence for the report's overload banner."""
    queue = (
        f"; its queue grew from {fmt_int(load.queue_start)} to {fmt_int(load.queue_end)} "
        "waiting requests"
        if load.queue_end == load.queue_end
        else ""
    )
    if load.num_completed == 0:
        return (
            f"{v}: {fmt_auto(load.offered_per_s)} requests/s arrived over {fmt_s(load.window_s)} "
            f"and it completed none of the {fmt_int(load.num_arrivals)} requests{queue}."
        )
    return (
        f"{v}: {fmt_auto(load.offered_per_s)} requests/s arrived over {fmt_s(load.window_s)}, "
        f"but it sustains only about {fmt_auto(load.sustained_per_s)} requests/s "
        f"({fmt_pct(load.served_frac, 0)} of arrivals in the second half){queue}. Its latencies "
        "measure the growing backlog, not the service time."
    )


def dominant_bound(s: Mapping[str, Any]) -> tuple[str, float] | None:
    """(bound, share) of the largest ``step_time_*_frac`` in a summary, or None."""
    shares = {b: num(s.get(f"step_time_{b}_frac")) for b in BOUND_LABEL}
    known = {b: x for b, x in shares.items() if x is not None}
    if not known:
        return None
    b = max(known, key=lambda k: (known[k], k))
    return b, known[b]


def kv_bound(s: Mapping[str, Any]) -> bool:
    """KV capacity bound this variant: it preempted, or less than 10 % KV was free on average."""
    pre = num(s.get("num_preemptions")) or 0.0
    free = num(s.get("kv_free_frac"))
    return pre > 0 or (free is not None and free < KV_FREE_MIN)


def binding_constraint(s: Mapping[str, Any]) -> tuple[str, str] | None:
    """(constraint, the evidence for it) from a variant's summary; None if nothing is known."""
    pre = num(s.get("num_preemptions")) or 0.0
    free = num(s.get("kv_free_frac"))
    if pre > 0:
        return "KV capacity", f"it preempted {fmt_int(pre)} times"
    if free is not None and free < KV_FREE_MIN:
        return "KV capacity", f"only {fmt_pct(free, 0)} of its KV cache was free on average"
    batch = num(s.get("mean_batch_size"))
    limit = num((s.get("config") or {}).get("max_num_seqs"))
    if batch is not None and limit and batch >= BATCH_LIMIT_FRAC * limit:
        return "the max_num_seqs limit", f"its mean batch ({batch:.0f}) sat at max_num_seqs ({limit:.0f})"
    dom = dominant_bound(s)
    if dom is None:
        return None
    return BOUND_LABEL[dom[0]], f"{fmt_pct(dom[1], 0)} of its step time went to {BOUND_LABEL[dom[0]]}"


def kv_headroom(s: Mapping[str, Any]) -> str | None:
    """"KV capacity did not bind (34% free on average, no preemptions)", when the data says so."""
    free = num(s.get("kv_free_frac"))
    pre = num(s.get("num_preemptions"))
    if free is None or pre is None or kv_bound(s):
        return None
    return f"KV capacity did not bind ({fmt_pct(free, 0)} free on average, no preemptions)"
