"""What a run records, and the metrics derived from it.

During the run a :class:`Recorder` keeps per-request times in numpy arrays (one slot per
workload row), per-step rows in compact ``array.array`` columns (a million steps cost tens
of MB, not GB), and inter-token latencies as a log-binned histogram plus exact sums.
Afterwards :meth:`Recorder.to_frames` builds the DataFrames with unit-suffixed columns, and
:func:`summarize` derives the summary with ``vllm bench serve``'s key names:

* TTFT = first token - arrival; E2EL = finish - arrival;
* TPOT = (E2EL - TTFT) / (output tokens - 1), over requests with more than one token;
* ITL = every gap between consecutive tokens of a sequence, pooled over requests;
* ``request_goodput`` = completed requests meeting every SLO, per second of duration.
"""

from __future__ import annotations

import json
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from simulator.request import REJECT_REASONS

MS = 1e3

# ITL histogram: log-spaced bins from 1 us to 1000 s, 200 per decade (about 1.2% wide).
_ITL_LO_S = 1e-6
_ITL_BINS_PER_DECADE = 200
_ITL_NUM_BINS = 9 * _ITL_BINS_PER_DECADE + 2

STATUS_PENDING = 0
STATUS_COMPLETED = 1
STATUS_REJECTED = 2
STATUS_NAMES = {STATUS_PENDING: "unfinished", STATUS_COMPLETED: "completed", STATUS_REJECTED: "rejected"}

_STEP_INT_COLS = (
    "replica_id",
    "num_running",
    "num_prefill_seqs",
    "prefill_tokens",
    "decode_tokens",
    "queue_len",
    "num_preemptions",
    "kv_token_state_slots",
    "kv_reserved_slots",
    "kv_internal_frag_slots",
    "kv_external_frag_slots",
    "kv_cached_slots",
    "kv_free_slots",
    "prefix_hit_tokens",
    "prefix_query_tokens",
)
_STEP_FLOAT_COLS = ("t_s", "duration_s", "compute_s", "weight_read_s", "kv_read_s", "comm_s", "overhead_s")
_MEM_FIELDS = (
    ("kv_token_state_slots", "token_slots"),
    ("kv_reserved_slots", "reserved_slots"),
    ("kv_internal_frag_slots", "internal_frag_slots"),
    ("kv_external_frag_slots", "external_frag_slots"),
    ("kv_cached_slots", "cached_slots"),
    ("kv_free_slots", "free_slots"),
)


def _itl_bin(values_s: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    v = np.maximum(values_s, _ITL_LO_S)
    idx = np.floor(np.log10(v / _ITL_LO_S) * _ITL_BINS_PER_DECADE).astype(np.int64) + 1
    return np.clip(idx, 0, _ITL_NUM_BINS - 1)


def _itl_bin_value(idx: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """Geometric centre of a bin."""
    return _ITL_LO_S * 10 ** ((idx - 0.5) / _ITL_BINS_PER_DECADE)


class Recorder:
    """Collects the events of one variant's run (all replicas)."""

    def __init__(self, *, num_requests: int, arrival_s: npt.NDArray[np.float64]) -> None:
        n = num_requests
        self.arrival_s = np.array(arrival_s, dtype=np.float64, copy=True)
        self.first_scheduled_s = np.full(n, np.nan)
        self.first_token_s = np.full(n, np.nan)
        self.finish_s = np.full(n, np.nan)
        self.cached_prompt_tokens = np.zeros(n, np.int64)
        self.num_preemptions = np.zeros(n, np.int64)
        self.replica_id = np.full(n, -1, np.int32)
        self.status = np.zeros(n, np.int8)
        self.reject_code = np.zeros(n, np.int8)
        self.itl_counts = np.zeros(_ITL_NUM_BINS, np.int64)
        self.itl_sum_s = 0.0
        self.itl_sumsq_s2 = 0.0
        self.itl_n = 0
        self._int = {c: array("q") for c in _STEP_INT_COLS}
        self._float = {c: array("d") for c in _STEP_FLOAT_COLS}
        self.max_concurrent = 0
        self._concurrent = 0

    # ------------------------------------------------------------------ request events
    def released(self, idx: int, t_s: float, replica_id: int) -> None:
        """The request arrived (dependent requests: was released) and was routed."""
        self.arrival_s[idx] = t_s
        self.replica_id[idx] = replica_id
        self._concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self._concurrent)

    def rejected(self, idx: int, t_s: float, code: int) -> None:
        self.arrival_s[idx] = t_s
        self.status[idx] = STATUS_REJECTED
        self.reject_code[idx] = code

    def first_scheduled(self, idx: int, t_s: float, cached_tokens: int) -> None:
        self.first_scheduled_s[idx] = t_s
        self.cached_prompt_tokens[idx] = cached_tokens

    def first_token(self, idx: int, t_s: float) -> None:
        self.first_token_s[idx] = t_s

    def preempted(self, idx: int) -> None:
        self.num_preemptions[idx] += 1

    def finished(self, idx: int, t_s: float, replica_id: int) -> None:
        self.finish_s[idx] = t_s
        self.status[idx] = STATUS_COMPLETED
        self._concurrent -= 1

    def itl(self, first_gaps_s: npt.NDArray[np.float64], later_durations_s: npt.NDArray[np.float64], weight: int) -> None:
        """Add inter-token gaps: one per sequence for the first step, then ``weight`` per step."""
        self.itl_counts += np.bincount(_itl_bin(first_gaps_s), minlength=_ITL_NUM_BINS)
        self.itl_sum_s += float(first_gaps_s.sum())
        self.itl_sumsq_s2 += float(np.square(first_gaps_s).sum())
        self.itl_n += len(first_gaps_s)
        if len(later_durations_s):
            self.itl_counts += weight * np.bincount(_itl_bin(later_durations_s), minlength=_ITL_NUM_BINS)
            self.itl_sum_s += weight * float(later_durations_s.sum())
            self.itl_sumsq_s2 += weight * float(np.square(later_durations_s).sum())
            self.itl_n += weight * len(later_durations_s)

    # ------------------------------------------------------------------ step events
    def steps_single(
        self,
        *,
        replica_id: int,
        t_s: float,
        duration_s: float,
        num_running: int,
        num_prefill_seqs: int,
        prefill_tokens: int,
        decode_tokens: int,
        queue_len: int,
        num_preemptions: int,
        split: tuple[float, float, float, float, float],
        mem: Any,
    ) -> None:
        fi, ff = self._int, self._float
        ff["t_s"].append(t_s)
        ff["duration_s"].append(duration_s)
        ff["compute_s"].append(split[0])
        ff["weight_read_s"].append(split[1])
        ff["kv_read_s"].append(split[2])
        ff["comm_s"].append(split[3])
        ff["overhead_s"].append(split[4])
        fi["replica_id"].append(replica_id)
        fi["num_running"].append(num_running)
        fi["num_prefill_seqs"].append(num_prefill_seqs)
        fi["prefill_tokens"].append(prefill_tokens)
        fi["decode_tokens"].append(decode_tokens)
        fi["queue_len"].append(queue_len)
        fi["num_preemptions"].append(num_preemptions)
        for col, attr in _MEM_FIELDS:
            fi[col].append(int(getattr(mem, attr)))
        fi["prefix_hit_tokens"].append(int(mem.prefix_hit_tokens))
        fi["prefix_query_tokens"].append(int(mem.prefix_query_tokens))

    def steps_many(
        self,
        *,
        replica_id: int,
        t_s: npt.NDArray[np.float64],
        duration_s: npt.NDArray[np.float64],
        num_running: int,
        decode_tokens: int,
        queue_len: int,
        split: tuple[npt.NDArray[np.float64], ...],
        mem_start: Any,
        mem_end: Any,
    ) -> None:
        """Rows of a fast-forwarded decode stretch.

        Within a stretch the memory split is interpolated linearly between its exact values
        at the start and at the end (token states grow by one slot per sequence per step).
        """
        k = len(t_s)
        fi, ff = self._int, self._float
        for col, arr in zip(
            ("t_s", "duration_s", "compute_s", "weight_read_s", "kv_read_s", "comm_s", "overhead_s"),
            (t_s, duration_s, *split),
            strict=True,
        ):
            ff[col].frombytes(np.ascontiguousarray(arr[:k], dtype=np.float64).tobytes())

        def const(col: str, value: int) -> None:
            fi[col].frombytes(np.full(k, value, np.int64).tobytes())

        const("replica_id", replica_id)
        const("num_running", num_running)
        const("num_prefill_seqs", 0)
        const("prefill_tokens", 0)
        const("decode_tokens", decode_tokens)
        const("queue_len", queue_len)
        const("num_preemptions", 0)
        frac = np.arange(1, k + 1, dtype=np.float64) / k
        capacity = int(mem_end.capacity_slots)
        vals = []
        for _col, attr in _MEM_FIELDS:
            a, b = getattr(mem_start, attr), getattr(mem_end, attr)
            vals.append(np.rint(a + (b - a) * frac).astype(np.int64))
        grid = np.stack(vals, axis=1)  # (k, 6)
        # Rounding residual goes to each row's largest category, so rows sum to capacity
        # and stay non-negative.
        residual = capacity - grid.sum(axis=1)
        grid[np.arange(k), grid.argmax(axis=1)] += residual
        for j, (col, _attr) in enumerate(_MEM_FIELDS):
            fi[col].frombytes(np.ascontiguousarray(grid[:, j]).tobytes())
        const("prefix_hit_tokens", int(mem_end.prefix_hit_tokens))
        const("prefix_query_tokens", int(mem_end.prefix_query_tokens))

    @property
    def num_step_rows(self) -> int:
        return len(self._float["t_s"])

    # ------------------------------------------------------------------ frames
    def steps_frame(self) -> pd.DataFrame:
        cols: dict[str, Any] = {}
        cols["replica_id"] = np.frombuffer(self._int["replica_id"], dtype=np.int64).astype(np.int32)
        cols["step"] = np.arange(self.num_step_rows, dtype=np.int64)
        for c in _STEP_FLOAT_COLS:
            cols[c] = np.frombuffer(self._float[c], dtype=np.float64).copy()
        for c in _STEP_INT_COLS:
            if c != "replica_id":
                cols[c] = np.frombuffer(self._int[c], dtype=np.int64).copy()
        order = ["replica_id", "step", "t_s", "duration_s", "num_running", "num_prefill_seqs", "prefill_tokens",
                 "decode_tokens", "queue_len", "num_preemptions", "compute_s", "weight_read_s", "kv_read_s",
                 "comm_s", "overhead_s", *(c for c, _ in _MEM_FIELDS), "prefix_hit_tokens", "prefix_query_tokens"]
        df = pd.DataFrame({c: cols[c] for c in order})
        # Stable order by (replica, time): replicas interleave in the raw log.
        df = df.sort_values(["t_s", "replica_id"], kind="mergesort").reset_index(drop=True)
        df["step"] = np.arange(len(df), dtype=np.int64)
        return df

    def requests_frame(self, workload: Any, slo: dict[str, float | None]) -> pd.DataFrame:
        arrival = self.arrival_s
        ttft_ms = (self.first_token_s - arrival) * MS
        e2el_ms = (self.finish_s - arrival) * MS
        out = np.asarray(workload.output_tokens, dtype=np.int64)
        with np.errstate(invalid="ignore", divide="ignore"):
            tpot_ms = np.where(out > 1, (e2el_ms - ttft_ms) / (out - 1), np.nan)
        completed = self.status == STATUS_COMPLETED
        meets = completed.copy()
        for key, values in (("ttft_ms", ttft_ms), ("tpot_ms", tpot_ms), ("e2el_ms", e2el_ms)):
            limit = slo.get(key)
            if limit is not None:
                ok = np.isnan(values) | (values <= limit) if key == "tpot_ms" else values <= limit
                meets &= ok
        status = np.array([STATUS_NAMES[int(s)] for s in range(3)], dtype=object)[self.status]
        reasons = np.array(REJECT_REASONS, dtype=object)[self.reject_code]
        return pd.DataFrame(
            {
                "request_id": np.asarray(workload.request_id, dtype=np.int64),
                "replica_id": self.replica_id,
                "arrival_s": arrival,
                "first_scheduled_s": self.first_scheduled_s,
                "first_token_s": self.first_token_s,
                "finish_s": self.finish_s,
                "prompt_tokens": np.asarray(workload.prompt_tokens, dtype=np.int64),
                "output_tokens": out,
                "num_samples": np.asarray(workload.num_samples, dtype=np.int64),
                "beam_width": np.asarray(workload.beam_width, dtype=np.int64),
                "cached_prompt_tokens": self.cached_prompt_tokens,
                "num_preemptions": self.num_preemptions,
                "status": pd.Series(status, dtype="object"),
                "reject_reason": pd.Series(reasons, dtype="object"),
                "ttft_ms": ttft_ms,
                "tpot_ms": tpot_ms,
                "e2el_ms": e2el_ms,
                "meets_slo": meets,
            }
        )

    def itl_percentile_ms(self, q: float) -> float:
        total = int(self.itl_counts.sum())
        if total == 0:
            return float("nan")
        cum = np.cumsum(self.itl_counts)
        idx = int(np.searchsorted(cum, q / 100.0 * total, side="left"))
        return float(_itl_bin_value(np.asarray([idx]))[0]) * MS


def _stats(prefix: str, values_ms: npt.NDArray[np.float64], out: dict[str, float]) -> None:
    v = values_ms[~np.isnan(values_ms)]
    if len(v) == 0:
        for p in ("mean", "median", "std", "p90", "p95", "p99"):
            out[f"{p}_{prefix}"] = float("nan")
        return
    out[f"mean_{prefix}"] = float(v.mean())
    out[f"median_{prefix}"] = float(np.median(v))
    out[f"std_{prefix}"] = float(v.std())
    for p in (90, 95, 99):
        out[f"p{p}_{prefix}"] = float(np.percentile(v, p))


def summarize(
    requests: pd.DataFrame,
    steps: pd.DataFrame,
    recorder: Recorder,
    *,
    kv_capacity_tokens: int,
) -> dict[str, Any]:
    """The summary of one variant (``vllm bench serve`` names plus the simulator's own)."""
    done = requests[requests["status"] == "completed"]
    num_req = len(requests)
    fanout = (done["num_samples"] * done["beam_width"].clip(lower=1)).to_numpy()
    out_tokens = float((done["output_tokens"].to_numpy() * fanout).sum())
    in_tokens = float(done["prompt_tokens"].sum())
    if len(done):
        start = float(requests["arrival_s"].min())
        duration = float(done["finish_s"].max()) - start
    else:
        duration = 0.0
    duration = max(duration, 1e-12)
    s: dict[str, Any] = {
        "num_requests": num_req,
        "completed": len(done),
        "num_rejected": int((requests["status"] == "rejected").sum()),
        "num_unfinished": int((requests["status"] == "unfinished").sum()),
        "duration": duration if len(done) else 0.0,
        "total_input_tokens": int(in_tokens),
        "total_output_tokens": int(out_tokens),
        "request_throughput": len(done) / duration if len(done) else 0.0,
        "output_throughput": out_tokens / duration if len(done) else 0.0,
        "total_token_throughput": (out_tokens + in_tokens) / duration if len(done) else 0.0,
    }
    meets = int(requests["meets_slo"].sum())
    s["request_goodput"] = meets / duration if len(done) else 0.0
    s["goodput_frac"] = meets / num_req if num_req else 0.0
    s["max_concurrent_requests"] = int(recorder.max_concurrent)
    for key in ("ttft_ms", "tpot_ms", "e2el_ms"):
        _stats(key, done[key].to_numpy(dtype=np.float64), s)
    if recorder.itl_n:
        mean = recorder.itl_sum_s / recorder.itl_n
        var = max(recorder.itl_sumsq_s2 / recorder.itl_n - mean * mean, 0.0)
        s["mean_itl_ms"] = mean * MS
        s["std_itl_ms"] = float(np.sqrt(var)) * MS
        s["median_itl_ms"] = recorder.itl_percentile_ms(50)
        for p in (90, 95, 99):
            s[f"p{p}_itl_ms"] = recorder.itl_percentile_ms(p)
    else:
        for p in ("mean", "median", "std", "p90", "p95", "p99"):
            s[f"{p}_itl_ms"] = float("nan")
    # Time-weighted step statistics.
    w = steps["duration_s"].to_numpy() if len(steps) else np.zeros(0)
    wsum = float(w.sum())
    s["num_steps"] = len(steps)
    s["mean_batch_size"] = float((steps["num_running"].to_numpy() * w).sum() / wsum) if wsum else 0.0
    mem_cols = [c for c, _ in _MEM_FIELDS]
    if wsum:
        cap = steps[mem_cols].sum(axis=1).to_numpy(dtype=np.float64)
        cap[cap == 0] = 1.0
        for col, name in zip(
            mem_cols,
            ("kv_token_state_frac", "kv_reserved_frac", "kv_internal_frag_frac", "kv_external_frag_frac",
             "kv_cached_frac", "kv_free_frac"),
            strict=True,
        ):
            s[name] = float(((steps[col].to_numpy() / cap) * w).sum() / wsum)
        split_total = float(steps[["compute_s", "weight_read_s", "kv_read_s", "comm_s", "overhead_s"]].to_numpy().sum())
        for col in ("compute", "weight_read", "kv_read", "comm", "overhead"):
            s[f"step_time_{col}_frac"] = float(steps[f"{col}_s"].sum()) / split_total if split_total else 0.0
        q = int(steps["prefix_query_tokens"].groupby(steps["replica_id"]).max().sum())
        h = int(steps["prefix_hit_tokens"].groupby(steps["replica_id"]).max().sum())
    else:
        for name in ("kv_token_state_frac", "kv_reserved_frac", "kv_internal_frag_frac", "kv_external_frag_frac",
                     "kv_cached_frac", "kv_free_frac"):
            s[name] = 0.0
        for col in ("compute", "weight_read", "kv_read", "comm", "overhead"):
            s[f"step_time_{col}_frac"] = 0.0
        q = h = 0
    s["kv_capacity_tokens"] = int(kv_capacity_tokens)
    s["prefix_hit_rate"] = h / q if q else 0.0
    s["cached_prompt_tokens"] = int(requests["cached_prompt_tokens"].sum())
    s["num_preemptions"] = int(requests["num_preemptions"].sum())
    s["mean_queue_len"] = float((steps["queue_len"].to_numpy() * w).sum() / wsum) if wsum else 0.0
    return s


@dataclass
class VariantResult:
    """One variant's outcome: summary dict and the two DataFrames."""

    name: str
    summary: dict[str, Any]
    requests: pd.DataFrame
    steps: pd.DataFrame
    extra: dict[str, Any] = field(default_factory=dict)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating | float):
        f = float(obj)
        return None if np.isnan(f) or np.isinf(f) else f
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


@dataclass
class Results:
    """All variants of one scenario run, in scenario order."""

    scenario_name: str
    seed: int
    description: str = ""
    variants: list[VariantResult] = field(default_factory=list)

    def __getitem__(self, name: str) -> VariantResult:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(f"no variant {name!r}; variants: {[v.name for v in self.variants]}")

    @property
    def summary(self) -> pd.DataFrame:
        """One row per variant, flat summary metrics as columns."""
        rows = []
        for v in self.variants:
            row = {"variant": v.name}
            row.update({k: val for k, val in v.summary.items() if not isinstance(val, dict | list)})
            rows.append(row)
        return pd.DataFrame(rows)

    @property
    def requests(self) -> pd.DataFrame:
        return pd.concat([v.requests.assign(variant=v.name) for v in self.variants], ignore_index=True)

    @property
    def steps(self) -> pd.DataFrame:
        return pd.concat([v.steps.assign(variant=v.name) for v in self.variants], ignore_index=True)

    def summary_dict(self) -> dict[str, Any]:
        return _jsonable(
            {
                "scenario": {"name": self.scenario_name, "seed": self.seed, "description": self.description},
                "variants": {v.name: v.summary for v in self.variants},
            }
        )

    def write(self, run_dir: str | Path) -> Path:
        """Write ``summary.json``, ``requests.parquet`` and ``steps.parquet`` into ``run_dir``."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "summary.json").write_text(json.dumps(self.summary_dict(), indent=2, sort_keys=False) + "\n")
        if self.variants:
            req = self.requests
            req.insert(0, "variant", req.pop("variant"))
            req.to_parquet(run_dir / "requests.parquet", index=False)
            st = self.steps
            st.insert(0, "variant", st.pop("variant"))
            st.to_parquet(run_dir / "steps.parquet", index=False)
        return run_dir
