"""The numbers behind every run figure, computed once and drawn twice.

Each figure of a run report exists as a static PNG (matplotlib, for ``report.md``) and as an
interactive plotly figure (for ``report.html``). Both draw the same :class:`RunSeries`, computed
here once per report from the binned step timeline, so the two can never disagree and the
binning (the expensive part) runs once. Everything is vectorised: one sort per variant and
interval kind, however many columns are binned.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from servesim.reports._data import (
    FloatArray,
    RunData,
    cumulative_at,
    finite,
    step_intervals,
    time_edges,
)
from servesim.reports._style import BOUND_PARTS, KV_PARTS, KV_SUMMARY_KEYS

#: Latency metrics of the CDF figure: (requests column, title, SLO key in summary["slo"]).
LATENCY_METRICS: tuple[tuple[str, str, str], ...] = (
    ("ttft_ms", "Time to first token (TTFT)", "ttft_ms"),
    ("tpot_ms", "Time per output token (TPOT)", "tpot_ms"),
    ("e2el_ms", "End-to-end latency (E2EL)", "e2el_ms"),
)

#: At most this many points per CDF line (quantiles), however many requests there are.
CDF_POINTS = 500


def run_slo(run: RunData) -> dict[str, float]:
    """SLO thresholds (ms) of the run: the first variant's ``summary["slo"]``, nulls dropped."""
    for v in run.variants:
        slo = run.summaries[v].get("slo") or {}
        out = {k: float(x) for k, x in slo.items() if x is not None and math.isfinite(float(x))}
        if out:
            return out
    return {}


def has_prefix_cache(run: RunData, v: str) -> bool:
    """Whether variant ``v`` ran with a prefix cache that was looked up.

    The engine counts looked-up prompt tokens whatever the manager, so queries alone do not
    mean there is a cache: it takes a radix manager, a config flag that enables prefix caching,
    or a recorded hit.
    """
    steps = run.steps[v]
    if not len(steps) or not np.nanmax(steps["prefix_query_tokens"].to_numpy(np.float64)) > 0:
        return False
    config = run.summaries[v].get("config") or {}
    flags = ("enable_prefix_caching", "prefix_caching")
    return (
        config.get("kv_manager") == "radix"
        or any(bool(config.get(f)) for f in flags)
        or float(np.nanmax(steps["prefix_hit_tokens"].to_numpy(np.float64))) > 0
    )


def prefix_variants(run: RunData) -> list[str]:
    """Variants with a prefix cache that was queried (see :func:`has_prefix_cache`)."""
    return [v for v in run.variants if has_prefix_cache(run, v)]


def interval_integrals(
    start_s: FloatArray, end_s: FloatArray, values: FloatArray, edges_s: FloatArray
) -> FloatArray:
    """:func:`~servesim.reports._data.interval_integral` for several value rows at once.

    Args:
        start_s, end_s: float64[n]; interval bounds.
        values: float64[k, n]; the values held over each interval (NaN counts as 0).
        edges_s: float64[m]; increasing evaluation points.

    Returns:
        float64[k, m]; the running integral of each row at each edge.
    """
    values = np.nan_to_num(np.atleast_2d(np.asarray(values, dtype=np.float64)))
    out = np.zeros((values.shape[0], len(edges_s)), dtype=np.float64)
    for bound, sign in ((np.asarray(start_s, np.float64), 1.0), (np.asarray(end_s, np.float64), -1.0)):
        order = np.argsort(bound, kind="stable")
        b, v = bound[order], values[:, order]
        k = np.searchsorted(b, edges_s, side="left")  # number of bounds strictly below e
        zero = np.zeros((v.shape[0], 1))
        cv = np.concatenate((zero, np.cumsum(v, axis=1)), axis=1)
        cvb = np.concatenate((zero, np.cumsum(v * b, axis=1)), axis=1)
        out += sign * (edges_s * cv[:, k] - cvb[:, k])
    return out


def _sequential_integrals(
    start_s: FloatArray, end_s: FloatArray, values: FloatArray, edges_s: FloatArray,
    replica: npt.NDArray[np.generic],
) -> FloatArray | None:  # fmt: skip
    """:func:`interval_integrals` for intervals that follow one another within each replica.

    One replica's steps never overlap, so the integral up to an edge is the summed area of the
    intervals that start before the previous one containing it, plus the covered part of that
    one: a cumulative sum and a binary search per edge instead of two sorts. Returns None when
    the intervals are not in that form (unsorted or overlapping), so the caller falls back to
    the general method.
    """
    out = np.zeros((values.shape[0], len(edges_s)), dtype=np.float64)
    cuts = np.flatnonzero(replica[1:] != replica[:-1]) + 1
    for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(start_s)], strict=True):
        s, e, v = start_s[lo:hi], end_s[lo:hi], values[:, lo:hi]
        if np.any(e < s) or np.any(s[1:] < e[:-1]):
            return None
        j = np.searchsorted(s, edges_s, side="right") - 1  # last interval starting <= edge
        inside = j >= 0
        jj = np.maximum(j, 0)
        # Area of the intervals [0, jj) at each edge: only these few prefix sums are needed,
        # so sum the areas between consecutive cut points (reduceat) and accumulate those.
        cuts, which = np.unique(jj, return_inverse=True)
        positive = cuts[cuts > 0]
        before = np.zeros((v.shape[0], len(cuts)))
        if len(positive):
            # reduceat sums [0, p1), [p1, p2), ..., [pm, n): the last segment is not needed.
            seg = np.add.reduceat(v * (e - s), np.r_[0, positive], axis=1)[:, : len(positive)]
            before[:, len(cuts) - len(positive) :] = np.cumsum(seg, axis=1)
        before = before[:, which]
        covered = np.clip(np.minimum(edges_s, e[jj]) - s[jj], 0.0, None)
        out += np.where(inside, before + v[:, jj] * covered, 0.0)
    return out


def binned_means(
    start_s: FloatArray, end_s: FloatArray, values: FloatArray, edges_s: FloatArray,
    replica: npt.NDArray[np.generic] | None = None,
) -> FloatArray:  # fmt: skip
    """Time-average per bin of each summed piecewise-constant row: float64[k, bins].

    With ``replica`` (the intervals' replica ids, grouped and time-sorted as
    :func:`~servesim.reports._data.load_run` leaves steps) the fast sequential method is used
    when it applies; the result is the same either way (a test compares them).
    """
    values = np.nan_to_num(np.atleast_2d(np.asarray(values, dtype=np.float64)))
    f = None
    if replica is not None and len(start_s):
        f = _sequential_integrals(
            np.asarray(start_s, np.float64), np.asarray(end_s, np.float64), values, edges_s,
            np.asarray(replica),
        )  # fmt: skip
    if f is None:
        f = interval_integrals(start_s, end_s, values, edges_s)
    return np.diff(f, axis=1) / np.diff(edges_s)


@dataclass(frozen=True, slots=True, kw_only=True)
class VariantSeries:
    """One variant's binned timelines (arrays of length ``bins`` unless said otherwise).

    Attributes:
        output_tokens_per_s: output tokens per second per bin.
        running: time-averaged running sequences (summed over replicas).
        queue: time-averaged waiting requests (summed over replicas).
        kv_frac: float64[len(KV_PARTS), bins]; KV split as fractions of capacity, NaN where no
            step covers the bin.
        kv_capacity_tokens: median capacity in tokens over covered bins, NaN without steps.
        kv_average: the time-averaged split (order of ``KV_PARTS``), or None.
        bound_frac: float64[len(BOUND_PARTS), bins]; share of wall time per bound.
        num_replicas: replicas that ran steps.
        prefix_per_bin, prefix_cumulative: hit rates (0..1), or None without a prefix cache.
        cdf: metric -> (sorted values or quantiles, cumulative fractions, n); empty arrays
            when no request has the metric.
    """

    output_tokens_per_s: FloatArray
    running: FloatArray
    queue: FloatArray
    kv_frac: FloatArray
    kv_capacity_tokens: float
    kv_average: FloatArray | None
    bound_frac: FloatArray
    num_replicas: int
    prefix_per_bin: FloatArray | None
    prefix_cumulative: FloatArray | None
    cdf: Mapping[str, tuple[FloatArray, FloatArray, int]]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSeries:
    """Everything the run figures draw: a shared time grid and one :class:`VariantSeries` each."""

    edges_s: FloatArray
    variants: tuple[str, ...]
    by_variant: Mapping[str, VariantSeries]
    slo: Mapping[str, float]

    @property
    def mid_s(self) -> FloatArray:
        """Bin centres (s)."""
        return 0.5 * (self.edges_s[1:] + self.edges_s[:-1])

    @property
    def bin_s(self) -> float:
        """Bin width (s)."""
        return float(self.edges_s[1] - self.edges_s[0])

    def any_steps(self) -> bool:
        """Whether any variant ran a step."""
        return any(s.num_replicas for s in self.by_variant.values())

    def any_latency(self) -> bool:
        """Whether any variant has a defined latency value."""
        return any(n for s in self.by_variant.values() for _, _, n in s.cdf.values())

    def prefix_variants(self) -> list[str]:
        """Variants with a prefix-cache hit rate to draw."""
        return [v for v in self.variants if self.by_variant[v].prefix_per_bin is not None]


def _cdf(values: pd.Series) -> tuple[FloatArray, FloatArray, int]:
    x = np.sort(finite(values))
    n = len(x)
    if n == 0:
        return np.empty(0), np.empty(0), 0
    if n <= CDF_POINTS:
        return x, np.arange(1, n + 1, dtype=np.float64) / n, n
    q = np.linspace(0.0, 1.0, CDF_POINTS)
    return np.quantile(x, q, method="inverted_cdf"), q, n


def _output_rate(run: RunData, v: str, edges: FloatArray) -> FloatArray:
    """Output tokens/s per bin: decode tokens at their step's end, plus one first token per
    request at its ``first_token_s`` (the token its prefill produced)."""
    steps, reqs = run.steps[v], run.requests[v]
    tokens = np.zeros(len(edges) - 1)
    if len(steps):
        t_end = steps["t_s"].to_numpy(np.float64) + np.nan_to_num(steps["duration_s"].to_numpy())
        tokens += np.histogram(t_end, edges, weights=steps["decode_tokens"].to_numpy(np.float64))[0]
    if len(reqs):
        tokens += np.histogram(finite(reqs["first_token_s"]), edges)[0]
    return tokens / np.diff(edges)


def kv_split_average(run: RunData, v: str) -> FloatArray | None:
    """Duration-weighted mean KV split of ``v`` (fractions, order of ``KV_PARTS``).

    Falls back to the summary's ``kv_*_frac`` when the variant has no steps; None if neither.
    """
    steps = run.steps[v]
    if len(steps):
        average = _kv_average(
            np.stack([steps[c].to_numpy(np.float64) for c, _, _ in KV_PARTS]),
            np.nan_to_num(steps["duration_s"].to_numpy(np.float64)),
        )  # fmt: skip
        if average is not None:
            return average
    return _kv_summary_average(run, v)


def _kv_average(parts: FloatArray, w: FloatArray) -> FloatArray | None:
    """Mean of each step's KV split (``parts / parts.sum(axis=0)``), weighted by ``w``, over the
    steps with a positive capacity; None when their weights sum to zero."""
    cap = parts.sum(axis=0)
    ok = cap > 0  # False for NaN too
    if not ok.all():
        parts, cap, w = parts[:, ok], cap[ok], w[ok]
    total = w.sum()
    if not total > 0:
        return None
    return (parts * (w / cap)).sum(axis=1) / total


def _kv_summary_average(run: RunData, v: str) -> FloatArray | None:
    summ = run.summaries[v]
    if all(summ.get(k) is not None for k in KV_SUMMARY_KEYS):
        return np.array([float(summ[k]) for k in KV_SUMMARY_KEYS])
    return None


def _variant_series(run: RunData, v: str, edges: FloatArray) -> VariantSeries:
    steps = run.steps[v]
    nbins = len(edges) - 1
    nan = np.full(nbins, np.nan)
    cdf = {col: _cdf(run.requests[v][col]) for col, _, _ in LATENCY_METRICS}
    rate = _output_rate(run, v, edges)
    if not len(steps):
        return VariantSeries(
            output_tokens_per_s=rate, running=nan, queue=nan,
            kv_frac=np.full((len(KV_PARTS), nbins), np.nan), kv_capacity_tokens=math.nan,
            kv_average=kv_split_average(run, v), bound_frac=np.zeros((len(BOUND_PARTS), nbins)),
            num_replicas=0, prefix_per_bin=None, prefix_cumulative=None, cdf=cdf,
        )  # fmt: skip
    # Quantities that hold only while a step runs (idle counts as 0): batch, bound shares.
    s, e = step_intervals(steps, hold=False)
    dur = np.nan_to_num(steps["duration_s"].to_numpy(np.float64))
    safe = np.where(dur > 0, dur, 1.0)
    n_rep = int(steps["replica_id"].nunique())
    bound_rows = [np.where(dur > 0, steps[c].to_numpy(np.float64) / safe, 0.0) for c, _, _ in BOUND_PARTS]
    replica = steps["replica_id"].to_numpy()
    running_and_bounds = binned_means(
        s, e, np.stack([steps["num_running"].to_numpy(np.float64), *bound_rows]), edges, replica
    )
    # Quantities that persist through idle gaps: queue and KV occupancy (+ coverage).
    s, e = step_intervals(steps, hold=True)
    held_rows = np.stack([steps["queue_len"].to_numpy(np.float64),
                          *(steps[c].to_numpy(np.float64) for c, _, _ in KV_PARTS),
                          np.ones(len(s))])  # fmt: skip
    kv_average = _kv_average(held_rows[1:-1], dur)
    if kv_average is None:
        kv_average = _kv_summary_average(run, v)
    held = binned_means(s, e, held_rows, edges, replica)
    parts, cover = held[1:-1], held[-1]
    cap = parts.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        kv_frac = np.where(cap > 0, parts / np.where(cap > 0, cap, 1.0), np.nan)
        cap_tokens = np.where(cover > 0, cap / np.where(cover > 0, cover, 1.0), np.nan)
    cap_f = finite(cap_tokens)
    per_bin = cumul = None
    if has_prefix_cache(run, v):
        hit = cumulative_at(steps, "prefix_hit_tokens", edges)
        query = cumulative_at(steps, "prefix_query_tokens", edges)
        dh, dq = np.diff(hit), np.diff(query)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_bin = np.where(dq > 0, dh / np.where(dq > 0, dq, 1.0), np.nan)
            cumul = np.where(query[1:] > 0, hit[1:] / np.where(query[1:] > 0, query[1:], 1), np.nan)
    return VariantSeries(
        output_tokens_per_s=rate,
        running=running_and_bounds[0],
        queue=held[0],
        kv_frac=kv_frac,
        kv_capacity_tokens=float(np.median(cap_f)) if len(cap_f) else math.nan,
        kv_average=kv_average,
        bound_frac=running_and_bounds[1:] / n_rep,
        num_replicas=n_rep,
        prefix_per_bin=per_bin,
        prefix_cumulative=cumul,
        cdf=cdf,
    )


def compute_series(run: RunData, *, edges_s: FloatArray | None = None) -> RunSeries:
    """Bin every variant of ``run`` on one time grid (about 200 round-width bins by default)."""
    edges = time_edges(run.end_s) if edges_s is None else np.asarray(edges_s, np.float64)
    return RunSeries(
        edges_s=edges,
        variants=run.variants,
        by_variant={v: _variant_series(run, v, edges) for v in run.variants},
        slo=run_slo(run),
    )


def time_unit(end_s: float) -> tuple[str, float]:
    """(unit, seconds per unit) for a time axis ending at ``end_s``: minutes past 20 min."""
    return ("min", 60.0) if end_s > 1200 else ("s", 1.0)


def duration_unit(max_ms: float) -> tuple[str, float]:
    """(unit, ms per unit) that reads for latencies up to ``max_ms``: ms, s or min."""
    if not math.isfinite(max_ms) or max_ms < 10_000:
        return "ms", 1.0
    if max_ms < 600_000:
        return "s", 1e3
    return "min", 60e3

