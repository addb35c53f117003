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

# Raw step-row layout (one float64 row per step; integer columns are exact below 2**53).
# The step cost's split by bound is computed once at the end from the recorded inputs.
_RAW_COLS = (
    "t_s",
    "duration_s",
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
    # cost-model inputs of the step, and swap transfer time
    "in_prefill_tokens",
    "in_attn_pairs",
    "in_kv_tokens",
    "in_sampling_seqs",
    "in_decode_seqs",
    "in_ctx_tokens",
    "swap_s",
)
_COL = {c: i for i, c in enumerate(_RAW_COLS)}
_NUM_RAW = len(_RAW_COLS)
_SPLIT_COLS = ("compute_s", "weight_read_s", "kv_read_s", "comm_s", "overhead_s")
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
        self._rows: list[tuple[float, ...]] = []  # single steps, in order
        self._chunks: list[npt.NDArray[np.float64]] = []  # (k, _NUM_RAW) blocks, in order
        self._num_rows = 0
        self._itl_buf: list[npt.NDArray[np.float64]] = []
        self._itl_buf_len = 0
        self._itl_wbuf: list[npt.NDArray[np.float64]] = []
        self._itl_wts: list[npt.NDArray[np.float64]] = []
        self.cost_models: dict[int, Any] = {}
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
        n1 = len(first_gaps_s)
        self.itl_sum_s += float(first_gaps_s.sum())
        self.itl_sumsq_s2 += float(np.dot(first_gaps_s, first_gaps_s))
        self.itl_n += n1
        self._itl_buf.append(np.asarray(first_gaps_s, dtype=np.float64))
        self._itl_buf_len += n1
        if len(later_durations_s):
            self.itl_sum_s += weight * float(later_durations_s.sum())
            self.itl_sumsq_s2 += weight * float(np.dot(later_durations_s, later_durations_s))
            self.itl_n += weight * len(later_durations_s)
            self._itl_wbuf.append(np.asarray(later_durations_s, dtype=np.float64))
            self._itl_wts.append(np.full(len(later_durations_s), float(weight)))
            self._itl_buf_len += len(later_durations_s)
        if self._itl_buf_len > 1_000_000:
            self._flush_itl()

    def _flush_itl(self) -> None:
        if self._itl_buf:
            vals = np.concatenate(self._itl_buf)
            self.itl_counts += np.bincount(_itl_bin(vals), minlength=_ITL_NUM_BINS)
            self._itl_buf = []
        if self._itl_wbuf:
            vals = np.concatenate(self._itl_wbuf)
            wts = np.concatenate(self._itl_wts)
            counts = np.bincount(_itl_bin(vals), weights=wts, minlength=_ITL_NUM_BINS)
            self.itl_counts += np.rint(counts).astype(np.int64)
            self._itl_wbuf, self._itl_wts = [], []
        self._itl_buf_len = 0

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
        inputs: dict[str, float],
        swap_s: float,
        mem: Any,
    ) -> None:
        """One stepped row (its cost split is derived at the end from ``inputs``)."""
        self._rows.append((
            t_s, duration_s, replica_id, num_running, num_prefill_seqs, prefill_tokens, decode_tokens,
            queue_len, num_preemptions, mem.token_slots, mem.reserved_slots, mem.internal_frag_slots,
            mem.external_frag_slots, mem.cached_slots, mem.free_slots, mem.prefix_hit_tokens,
            mem.prefix_query_tokens, inputs["prefill_tokens"], inputs["prefill_attn_pairs"],
            inputs["prefill_kv_tokens"], inputs["num_prefill_seqs"], inputs["num_decode_seqs"],
            inputs["decode_ctx_tokens"], swap_s,
        ))
        self._num_rows += 1

    def steps_many(
        self,
        *,
        replica_id: int,
        t_s: npt.NDArray[np.float64],
        duration_s: npt.NDArray[np.float64],
        num_running: int,
        decode_tokens: int,
        queue_len: int,
        decode_seqs: int,
        ctx_tokens: npt.NDArray[np.float64],
        mem_start: Any,
        mem_end: Any,
    ) -> None:
        """Rows of a fast-forwarded decode stretch.

        Within a stretch the memory split is interpolated linearly between its exact values
        at the start and at the end (token states grow by one slot per sequence per step).
        """
        k = len(t_s)
        block = np.zeros((k, _NUM_RAW), dtype=np.float64)
        block[:, _COL["t_s"]] = t_s
        block[:, _COL["duration_s"]] = duration_s
        block[:, _COL["replica_id"]] = replica_id
        block[:, _COL["num_running"]] = num_running
        block[:, _COL["decode_tokens"]] = decode_tokens
        block[:, _COL["queue_len"]] = queue_len
        block[:, _COL["in_decode_seqs"]] = decode_seqs
        block[:, _COL["in_ctx_tokens"]] = ctx_tokens
        block[:, _COL["prefix_hit_tokens"]] = mem_end.prefix_hit_tokens
        block[:, _COL["prefix_query_tokens"]] = mem_end.prefix_query_tokens
        frac = np.arange(1, k + 1, dtype=np.float64) / k
        capacity = int(mem_end.capacity_slots)
        vals = []
        for _col, attr in _MEM_FIELDS:
            a, b = getattr(mem_start, attr), getattr(mem_end, attr)
            vals.append(np.rint(a + (b - a) * frac))
        grid = np.stack(vals, axis=1)  # (k, 6)
        # Rounding residual goes to each row's largest category, so rows sum to capacity
        # and stay non-negative.
        residual = capacity - grid.sum(axis=1)
        grid[np.arange(k), grid.argmax(axis=1)] += residual
        first = _COL[_MEM_FIELDS[0][0]]
        block[:, first : first + len(_MEM_FIELDS)] = grid
        if self._rows:
            self._chunks.append(np.asarray(self._rows, dtype=np.float64))
            self._rows = []
        self._chunks.append(block)
        self._num_rows += k

    @property
    def num_step_rows(self) -> int:
        return self._num_rows

    # ------------------------------------------------------------------ frames
    def _raw(self) -> npt.NDArray[np.float64]:
        chunks = list(self._chunks)
        if self._rows:
            chunks.append(np.asarray(self._rows, dtype=np.float64))
        if not chunks:
            return np.zeros((0, _NUM_RAW))
        return np.concatenate(chunks)

    def steps_frame(self) -> pd.DataFrame:
        """The per-step timeline, with the step time split by bound.

        The split comes from one vectorised step-cost evaluation per replica over the
        recorded step inputs, scaled to the step's duration (the engine times steps with the
        cost model's scalar path; the two agree to rounding).
        """
        raw = self._raw()
        n = len(raw)
        split = np.zeros((n, len(_SPLIT_COLS)))
        rep = raw[:, _COL["replica_id"]].astype(np.int64)
        for rid in np.unique(rep).tolist():
            model = self.cost_models.get(rid)
            if model is None:
                continue
            sel = rep == rid
            r = raw[sel]
            c = model.cost(
                prefill_tokens=r[:, _COL["in_prefill_tokens"]],
                prefill_attn_pairs=r[:, _COL["in_attn_pairs"]],
                prefill_kv_tokens=r[:, _COL["in_kv_tokens"]],
                num_prefill_seqs=r[:, _COL["in_sampling_seqs"]],
                num_decode_seqs=r[:, _COL["in_decode_seqs"]],
                decode_ctx_tokens=r[:, _COL["in_ctx_tokens"]],
            )
            parts = np.stack([np.asarray(getattr(c, f), dtype=np.float64) * np.ones(len(r)) for f in _SPLIT_COLS], axis=1)
            parts[:, 3] += r[:, _COL["swap_s"]]
            total = parts.sum(axis=1)
            total[total == 0] = 1.0
            split[sel] = parts * (r[:, _COL["duration_s"]] / total)[:, None]
        cols: dict[str, Any] = {
            "replica_id": raw[:, _COL["replica_id"]].astype(np.int32),
            "step": np.arange(n, dtype=np.int64),
            "t_s": raw[:, _COL["t_s"]],
            "duration_s": raw[:, _COL["duration_s"]],
        }
        for c in ("num_running", "num_prefill_seqs", "prefill_tokens", "decode_tokens", "queue_len", "num_preemptions"):
            cols[c] = raw[:, _COL[c]].astype(np.int64)
        for j, c in enumerate(_SPLIT_COLS):
            cols[c] = split[:, j]
        for c, _ in _MEM_FIELDS:
            cols[c] = raw[:, _COL[c]].astype(np.int64)
        cols["prefix_hit_tokens"] = raw[:, _COL["prefix_hit_tokens"]].astype(np.int64)
        cols["prefix_query_tokens"] = raw[:, _COL["prefix_query_tokens"]].astype(np.int64)
        df = pd.DataFrame(cols)
        # Stable order by (time, replica): replicas interleave in the raw log.
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
        self._flush_itl()
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
