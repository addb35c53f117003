"""A run's steps and requests as a Chrome trace-event file (opens in Perfetto, chrome://tracing).

Reads the result tables (``steps.parquet``, ``requests.parquet``), never live simulator
objects. Layout, in the JSON object form of the trace-event format::

    {"traceEvents": [...], "displayTimeUnit": "ms", "otherData": {...}}

- one *process* per (variant, replica), named ``"<variant> / replica <r>"``;
- thread 1 ``steps``: one complete event (``"ph": "X"``) per engine step, named by its
  kind (``prefill``, ``decode``, ``mixed``), with the batch and the step-cost split in
  ``args``;
- counters (``"ph": "C"``): ``batch`` (running, queued) and ``kv cache`` (token states,
  free, other slots) after every step;
- requests as nestable async events (``"ph": "b"`` / ``"e"``, ``cat: "request"``, one id per
  request): the whole request, with nested ``queued`` (arrival to first scheduled),
  ``prefill`` (to first token) and ``decode`` (to finish) slices. Rejected and unfinished
  requests get an instant event (``"ph": "n"``) at arrival.

Times are microseconds of simulated time (``ts``, ``dur``). The file is deterministic: the
same tables give the same bytes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

TIMELINE_NAME = "timeline.json"
_US = 1e6  # trace-event timestamps are microseconds
_STEP_TID = 1

_STEP_ARGS = (
    "step",
    "num_running",
    "num_prefill_seqs",
    "prefill_tokens",
    "decode_tokens",
    "queue_len",
    "num_preemptions",
    "compute_s",
    "weight_read_s",
    "kv_read_s",
    "comm_s",
    "overhead_s",
)
_KV_OTHER = (
    "kv_reserved_slots",
    "kv_internal_frag_slots",
    "kv_external_frag_slots",
    "kv_cached_slots",
)


def _num(value: Any) -> int | float | None:
    """A JSON-safe number: numpy scalars become Python ones, NaN/inf become None."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(float(value))


def _step_kind(prefill_tokens: int, decode_tokens: int) -> str:
    if prefill_tokens and decode_tokens:
        return "mixed"
    return "prefill" if prefill_tokens else "decode"


def build_timeline(
    steps: pd.DataFrame, requests: pd.DataFrame, *, name: str = ""
) -> dict[str, Any]:
    """The trace-event document for one run (all variants, every replica).

    Args:
        steps: ``steps.parquet`` (columns ``variant``, ``replica_id``, ``t_s``,
            ``duration_s``, ...), one row per step.
        requests: ``requests.parquet`` (``variant``, ``request_id``, ``replica_id``,
            ``arrival_s``, ``first_scheduled_s``, ``first_token_s``, ``finish_s``, ...).
        name: the scenario name, recorded in ``otherData``.
    """
    variants: list[str] = []
    for frame in (steps, requests):
        if "variant" in frame.columns:
            for v in frame["variant"].astype(str).unique().tolist():
                if v not in variants:
                    variants.append(v)
    pairs: set[tuple[str, int]] = set()
    for frame in (steps, requests):
        if len(frame) and {"variant", "replica_id"} <= set(frame.columns):
            for v, r in frame[["variant", "replica_id"]].drop_duplicates().itertuples(index=False):
                if int(r) >= 0:
                    pairs.add((str(v), int(r)))
    ordered = sorted(pairs, key=lambda p: (variants.index(p[0]), p[1]))
    pid_of = {pair: i + 1 for i, pair in enumerate(ordered)}

    events: list[dict[str, Any]] = []
    for (variant, replica), pid in pid_of.items():
        events.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0,
                       "args": {"name": f"{variant} / replica {replica}"}})
        events.append({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0,
                       "args": {"sort_index": pid}})
        events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": _STEP_TID,
                       "args": {"name": "steps"}})

    cols = set(steps.columns)
    step_args = [c for c in _STEP_ARGS if c in cols]
    kv_other = [c for c in _KV_OTHER if c in cols]
    for row in steps.to_dict(orient="records"):
        pid = pid_of[(str(row["variant"]), int(row["replica_id"]))]
        ts = round(float(row["t_s"]) * _US, 3)
        prefill = int(row.get("prefill_tokens", 0) or 0)
        decode = int(row.get("decode_tokens", 0) or 0)
        events.append({
            "ph": "X", "cat": "step", "name": _step_kind(prefill, decode), "pid": pid,
            "tid": _STEP_TID, "ts": ts, "dur": round(max(float(row["duration_s"]), 0.0) * _US, 3),
            "args": {c: _num(row[c]) for c in step_args},
        })
        if "num_running" in cols and "queue_len" in cols:
            events.append({"ph": "C", "name": "batch", "pid": pid, "ts": ts,
                           "args": {"running": _num(row["num_running"]),
                                    "queued": _num(row["queue_len"])}})
        if "kv_token_state_slots" in cols and "kv_free_slots" in cols:
            other = sum(int(row[c]) for c in kv_other)
            events.append({"ph": "C", "name": "kv cache (slots)", "pid": pid, "ts": ts,
                           "args": {"token states": _num(row["kv_token_state_slots"]),
                                    "other": other, "free": _num(row["kv_free_slots"])}})

    for row in requests.to_dict(orient="records"):
        replica = int(row.get("replica_id", -1))
        key = (str(row["variant"]), replica)
        if key not in pid_of:
            continue  # never reached a replica (rejected at the router)
        pid = pid_of[key]
        rid = f"{row['variant']}:{int(row['request_id'])}"
        label = f"request {int(row['request_id'])}"
        arrival, sched = row.get("arrival_s"), row.get("first_scheduled_s")
        first, finish = row.get("first_token_s"), row.get("finish_s")
        args = {k: _num(row[k]) for k in ("prompt_tokens", "output_tokens",
                                          "cached_prompt_tokens", "num_preemptions",
                                          "ttft_ms", "tpot_ms", "e2el_ms") if k in row}
        args["status"] = str(row.get("status", ""))
        base = {"cat": "request", "id": rid, "pid": pid, "tid": 0}
        if not all(_finite(t) for t in (arrival, sched, first, finish)):
            if _finite(arrival):
                events.append({**base, "ph": "n", "name": f"{label} ({args['status']})",
                               "ts": round(float(arrival) * _US, 3), "args": args})
            continue
        t = [round(float(x) * _US, 3) for x in (arrival, sched, first, finish)]
        events.append({**base, "ph": "b", "name": label, "ts": t[0], "args": args})
        for phase, start, end in (("queued", t[0], t[1]), ("prefill", t[1], t[2]),
                                  ("decode", t[2], t[3])):
            events.append({**base, "ph": "b", "name": phase, "ts": start})
            events.append({**base, "ph": "e", "name": phase, "ts": max(end, start)})
        events.append({**base, "ph": "e", "name": label, "ts": t[3]})

    return {
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {"scenario": name, "time": "simulated", "variants": variants},
    }


def write_timeline(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Read ``run_dir``'s parquet tables and write the trace (default ``run_dir/timeline.json``).

    Raises:
        ScenarioError: the folder holds no ``steps.parquet`` / ``requests.parquet``.
    """
    import pandas as pd

    from servesim.simulator.errors import ScenarioError

    run_dir = Path(run_dir)
    tables = {}
    for name in ("steps", "requests"):
        path = run_dir / f"{name}.parquet"
        if not path.is_file():
            raise ScenarioError(
                f"{str(run_dir)!r} holds no {name}.parquet: give the output folder of "
                "`servesim run` (e.g. out/quickstart)"
            )
        try:
            tables[name] = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several types for a corrupt file
            raise ScenarioError(f"{path}: not a readable Parquet file ({exc})") from None
    summary = run_dir / "summary.json"
    scenario = ""
    if summary.is_file():
        try:
            scenario = str(json.loads(summary.read_text())["scenario"]["name"])
        except (ValueError, KeyError, TypeError):
            scenario = ""
    doc = build_timeline(tables["steps"], tables["requests"], name=scenario)
    target = Path(out) if out is not None else run_dir / TIMELINE_NAME
    target.write_text(json.dumps(doc, allow_nan=False, separators=(",", ":")) + "\n")
    return target
