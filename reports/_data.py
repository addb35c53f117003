"""Read a run directory and bin its step timeline with numpy.

A run directory is the engine's output contract (see ``docs/reports.md``): ``summary.json``,
``requests.parquet``, ``steps.parquet``. Nothing here imports the simulator.

Steps can number in the millions, so nothing is ever plotted per row: every time series is
reduced to a fixed grid of bins first. The binning is exact for piecewise-constant signals:
a quantity ``v`` held over ``[start, end)`` contributes ``v * overlap`` to each bin it
overlaps, computed for all steps at once from cumulative sums (no Python loop over steps).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow.parquet as pq

REQUEST_COLUMNS: tuple[str, ...] = (
    "variant", "request_id", "replica_id", "arrival_s", "first_scheduled_s", "first_token_s",
    "finish_s", "prompt_tokens", "output_tokens", "num_samples", "beam_width",
    "cached_prompt_tokens", "num_preemptions", "status", "reject_reason", "ttft_ms", "tpot_ms",
    "e2el_ms", "meets_slo",
)  # fmt: skip

STEP_COLUMNS: tuple[str, ...] = (
    "variant", "replica_id", "step", "t_s", "duration_s", "num_running", "num_prefill_seqs",
    "prefill_tokens", "decode_tokens", "queue_len", "num_preemptions", "compute_s",
    "weight_read_s", "kv_read_s", "comm_s", "overhead_s", "kv_token_state_slots",
    "kv_reserved_slots", "kv_internal_frag_slots", "kv_external_frag_slots", "kv_cached_slots",
    "kv_free_slots", "prefix_hit_tokens", "prefix_query_tokens",
)  # fmt: skip

#: Target number of time bins in timeline figures (the bin width is rounded to 1/2/5 x 10^k).
TARGET_NUM_BINS = 200

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunData:
    """One run directory, loaded.

    Attributes:
        run_dir: the directory read.
        scenario: ``summary.json["scenario"]`` (name, seed, description).
        variants: variant names in scenario order (the order that fixes colours).
        summaries: variant -> its ``summary.json`` entry (empty dict if the engine wrote none).
        requests: variant -> that variant's rows of ``requests.parquet``.
        steps: variant -> that variant's rows of ``steps.parquet``, sorted by (replica, t_s).
    """

    run_dir: Path
    scenario: Mapping[str, Any]
    variants: tuple[str, ...]
    summaries: Mapping[str, Mapping[str, Any]]
    requests: Mapping[str, pd.DataFrame] = field(repr=False)
    steps: Mapping[str, pd.DataFrame] = field(repr=False)

    @property
    def end_s(self) -> float:
        """Latest simulated instant seen in any variant (0 for an empty run)."""
        ends = [0.0]
        for df in self.steps.values():
            if len(df):
                ends.append(float(np.nanmax(df["t_s"].to_numpy() + df["duration_s"].to_numpy())))
        for df in self.requests.values():
            for col in ("finish_s", "first_token_s", "arrival_s"):
                if len(df) and df[col].notna().any():
                    ends.append(float(df[col].max()))
        return max(ends)


def _read_parquet(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    if not path.exists():
        return pd.DataFrame({c: pd.Series(dtype="float64") for c in columns})
    names = pq.read_schema(path).names
    missing = [c for c in columns if c not in names]
    if missing:
        raise ValueError(
            f"{path}: missing columns {missing}; expected the schema in docs/reports.md"
        )
    # Repeated strings come back as categoricals: a fraction of the memory, fast to group.
    text = [c for c in ("variant", "status", "reject_reason") if c in names]
    return pq.read_table(path, read_dictionary=text).to_pandas()


def load_run(run_dir: Path) -> RunData:
    """Read ``summary.json`` and the two Parquet tables of a run directory.

    Raises:
        FileNotFoundError: ``summary.json`` is missing.
        ValueError: a Parquet file lacks a schema column.
    """
    run_dir = Path(run_dir)
    with (run_dir / "summary.json").open() as f:
        summary = json.load(f)
    return run_from_frames(
        summary,
        _read_parquet(run_dir / "requests.parquet", REQUEST_COLUMNS),
        _read_parquet(run_dir / "steps.parquet", STEP_COLUMNS),
        run_dir=run_dir,
    )


def run_from_frames(
    summary: Mapping[str, Any],
    requests: pd.DataFrame,
    steps: pd.DataFrame,
    *,
    run_dir: Path | None = None,
) -> RunData:
    """Build a :class:`RunData` from in-memory results (a notebook's DataFrames).

    Args:
        summary: the ``summary.json`` object (``{"scenario": ..., "variants": ...}``).
        requests: rows in the ``requests.parquet`` schema, all variants together.
        steps: rows in the ``steps.parquet`` schema, all variants together.
        run_dir: where figures go by default; ``Path(".")`` if None.

    Variants are ordered as in ``summary["variants"]``; a variant present only in the tables is
    appended after them in order of first appearance.
    """
    variants = list(summary.get("variants", {}))
    for df in (requests, steps):
        for v in (str(x) for x in pd.unique(df["variant"])) if len(df) else ():
            if v not in variants:
                variants.append(v)

    req_by = _split_by_variant(requests)
    steps_by = _split_by_variant(steps)
    for k, g in steps_by.items():
        steps_by[k] = _sorted_steps(g)
    return RunData(
        run_dir=Path(".") if run_dir is None else Path(run_dir),
        scenario=summary.get("scenario", {}),
        variants=tuple(variants),
        summaries={v: summary.get("variants", {}).get(v, {}) for v in variants},
        requests={v: req_by.get(v, requests.iloc[:0]) for v in variants},
        steps={v: steps_by.get(v, steps.iloc[:0]) for v in variants},
    )


def _split_by_variant(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    if not len(df):
        return {}
    return {str(k): g for k, g in df.groupby("variant", sort=False, observed=True)}


def _sorted_steps(g: pd.DataFrame) -> pd.DataFrame:
    """Steps by (replica_id, t_s); the engine writes them in that order, so usually a no-op."""
    replica = g["replica_id"].to_numpy()
    t = g["t_s"].to_numpy()
    same = replica[1:] == replica[:-1]
    if np.all((replica[1:] > replica[:-1]) | (same & (t[1:] >= t[:-1]))):
        return g
    return g.sort_values(["replica_id", "t_s"], kind="stable")


def time_edges(end_s: float, target_num_bins: int = TARGET_NUM_BINS) -> FloatArray:
    """Bin edges from 0 covering ``[0, end_s]`` with a round bin width (1, 2 or 5 x 10^k s)."""
    if not math.isfinite(end_s) or end_s <= 0:
        end_s = 1.0
    raw = end_s / target_num_bins
    exp = math.floor(math.log10(raw))
    width = next(m * 10.0**exp for m in (1, 2, 5, 10) if m * 10.0**exp >= raw)
    n = max(1, math.ceil(end_s / width - 1e-9))
    return np.arange(n + 1, dtype=np.float64) * width


def interval_integral(
    start_s: FloatArray, end_s: FloatArray, value: FloatArray, edges_s: FloatArray
) -> FloatArray:
    """``F(e) = sum_i value_i * |[start_i, end_i) intersect (-inf, e)|`` at every edge ``e``.

    Intervals may overlap (several replicas at once). Uses
    ``F(e) = sum_{start_i < e} v_i (e - start_i) - sum_{end_i < e} v_i (e - end_i)``
    with both sums read off cumulative sums over sorted starts and ends.

    Args:
        start_s, end_s: float64[n]; interval bounds, ``end_s >= start_s``.
        value: float64[n]; the value held over each interval (NaN counts as 0).
        edges_s: float64[m]; increasing evaluation points.

    Returns:
        float64[m]; the running integral (value x seconds) at each edge.
    """
    value = np.nan_to_num(np.asarray(value, dtype=np.float64))
    out = np.zeros(len(edges_s), dtype=np.float64)
    for bound, sign in (
        (np.asarray(start_s, np.float64), 1.0),
        (np.asarray(end_s, np.float64), -1.0),
    ):
        order = np.argsort(bound, kind="stable")
        b, v = bound[order], value[order]
        cv = np.concatenate(([0.0], np.cumsum(v)))
        cvb = np.concatenate(([0.0], np.cumsum(v * b)))
        k = np.searchsorted(b, edges_s, side="left")  # number of bounds strictly below e
        out += sign * (edges_s * cv[k] - cvb[k])
    return out


def binned_mean(
    start_s: FloatArray, end_s: FloatArray, value: FloatArray, edges_s: FloatArray
) -> FloatArray:
    """Time-average per bin of the summed piecewise-constant signal (0 outside intervals)."""
    f = interval_integral(start_s, end_s, value, edges_s)
    return np.diff(f) / np.diff(edges_s)


def step_intervals(steps: pd.DataFrame, *, hold: bool) -> tuple[FloatArray, FloatArray]:
    """The interval over which each step's recorded state holds.

    With ``hold=False`` a step covers ``[t_s, t_s + duration_s)`` (idle gaps count as 0: right
    for "sequences running"). With ``hold=True`` its state also holds through any idle gap up
    to the same replica's next step (right for KV occupancy and queue length, which persist).
    ``steps`` must be sorted by (replica_id, t_s), as :func:`load_run` leaves them.
    """
    start = steps["t_s"].to_numpy(np.float64)
    end = start + np.nan_to_num(steps["duration_s"].to_numpy(np.float64))
    if hold and len(start) > 1:
        replica = steps["replica_id"].to_numpy()
        same_next = replica[:-1] == replica[1:]
        nxt = np.where(same_next, start[1:], end[:-1])
        end = end.copy()
        end[:-1] = np.maximum(end[:-1], nxt)
    return start, end


def cumulative_at(steps: pd.DataFrame, column: str, edges_s: FloatArray) -> FloatArray:
    """Sum over replicas of a per-replica cumulative counter's last value at or before each edge.

    A step's counter value is taken as known at the step's end (``t_s + duration_s``).
    """
    out = np.zeros(len(edges_s), dtype=np.float64)
    for _, g in steps.groupby("replica_id", sort=True):
        t = g["t_s"].to_numpy(np.float64) + np.nan_to_num(g["duration_s"].to_numpy(np.float64))
        c = g[column].to_numpy(np.float64)
        order = np.argsort(t, kind="stable")
        t, c = t[order], np.maximum.accumulate(np.nan_to_num(c[order]))
        k = np.searchsorted(t, edges_s, side="right")
        out += np.where(k > 0, c[np.maximum(k - 1, 0)], 0.0)
    return out


def finite(values: pd.Series | npt.ArrayLike) -> FloatArray:
    """The finite entries of ``values`` as float64 (NaN/inf dropped)."""
    a = np.asarray(values, dtype=np.float64)
    return a[np.isfinite(a)]
