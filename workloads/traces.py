"""Readers for public LLM traces, and the servesim trace format (reader + writer).

=========  ==========================================================  ===================
format     columns                                                     source
=========  ==========================================================  ===================
azure      ``TIMESTAMP,ContextTokens,GeneratedTokens`` (datetimes)     Azure 2023 / 2024
mooncake   JSONL ``timestamp`` (ms), ``input_length``,                 Mooncake FAST'25
           ``output_length``, ``hash_ids`` (512-token blocks)
splitwise  ``arrived_at,num_prefill_tokens,num_decode_tokens`` (s)     Splitwise / Vidur
lengths    ``num_prefill_tokens,num_decode_tokens,...`` (no times)     etalon, arXiv
burstgpt   ``Timestamp,Model,Request tokens,Response tokens,           BurstGPT
           Total tokens,Log Type``
servesim   the :data:`~workloads.request.COLUMNS` + ``prefix_block_ids``  :func:`write_workload`
=========  ==========================================================  ===================

Every malformed value is a :class:`~hwmodels.errors.TraceError` naming the file, the line
(1-based, as an editor shows it) and the column. Nothing is skipped silently: BurstGPT's
failed requests (0 response tokens) are dropped and counted in ``Workload.notes``.

Every file first passes :func:`hwmodels.safeio.scan_text_file` (a regular file within
:data:`~hwmodels.safeio.MAX_TRACE_BYTES`, UTF-8, no NUL bytes), and every field is range
checked: token counts in ``[1, MAX_REQUEST_TOKENS]``, times finite in
``[0, MAX_TIME_S]``, ids in the signed 64-bit range (JSON) or ``[0, 2^53]`` (CSV, parsed
as doubles). Bad values are echoed cut short.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from servesim.hwmodels.errors import TraceError
from servesim.hwmodels.safeio import (
    INT64_MAX,
    MAX_TRACE_BYTES,
    check_regular_file,
    load_json,
    scan_text_file,
    short,
)
from servesim.hwmodels.units import MS_PER_S
from servesim.workloads.request import COLUMNS, Workload, segment_arange

FORMATS = ("azure", "mooncake", "splitwise", "lengths", "burstgpt", "servesim")

# Mooncake hashes 512-token blocks (FAST'25 trace README, "hash_ids").
MOONCAKE_BLOCK_TOKENS = 512

# Field limits (docs/inputs.md). 10M tokens is 10x the longest context windows shipped today;
# 1e10 s is 317 years of trace. Integers read from CSV go through doubles: exact to 2^53.
MAX_REQUEST_TOKENS = 10_000_000
MAX_TIME_S = 1e10
MAX_FANOUT = 1024  # num_samples, beam_width
_MAX_CSV_INT = 1 << 53
MAX_TRACE_REQUESTS = 100_000_000

_SERVESIM_MAGIC = "# servesim-workload "
_HEADERS: dict[str, tuple[str, ...]] = {
    "azure": ("TIMESTAMP", "ContextTokens", "GeneratedTokens"),
    "splitwise": ("arrived_at", "num_prefill_tokens", "num_decode_tokens"),
    "burstgpt": ("Timestamp", "Request tokens", "Response tokens"),
    "servesim": ("request_id", "arrival_s", "prompt_tokens", "output_tokens"),
    "lengths": ("num_prefill_tokens", "num_decode_tokens"),
}


def detect_format(path: Path) -> str:
    """Guess a trace's format from its extension and first line.

    Raises:
        TraceError: the file is missing, empty or of no known format.
    """
    path = Path(path)
    _check_file(path)
    if path.suffix == ".parquet":
        return "servesim"
    first = _first_line(path)
    if first.startswith(_SERVESIM_MAGIC):
        return "servesim"
    if first.lstrip().startswith("{") or path.suffix in (".jsonl", ".json"):
        return "mooncake"
    header = {h.strip() for h in first.split(",")}
    for fmt, cols in _HEADERS.items():  # "lengths" last: splitwise has its columns too
        if set(cols) <= header:
            return fmt
    known = "; ".join(f"{fmt}: {','.join(cols)}" for fmt, cols in _HEADERS.items())
    raise TraceError(
        f"{path}: line 1: unknown trace format (header {first[:120]!r}); expected a JSONL "
        f"Mooncake trace, a servesim file, or a CSV with the columns of one of {known}. "
        f"Give trace.format explicitly to override."
    )


def read_trace(
    path: Path,
    *,
    format: str = "auto",
    replay: Literal["burst", "spread"] = "burst",
    bucket_s: float = 3.0,
) -> Workload:
    """Read a trace file into a :class:`Workload` (open arrivals sorted by time).

    Args:
        path: the file.
        format: one of :data:`FORMATS`, or ``"auto"`` to detect it.
        replay: Mooncake's ~3 s timestamp buckets: ``burst`` keeps each bucket's requests at
            its timestamp; ``spread`` spaces them evenly over ``[t, t + bucket_s)``.
        bucket_s: bucket width for ``spread``.

    Raises:
        TraceError: missing, empty, unreadable or malformed file, or an unknown format.
    """
    path = Path(path)
    fmt = detect_format(path) if format == "auto" else format
    if fmt not in FORMATS:
        raise TraceError(f"{path}: unknown trace format {fmt!r}; valid: auto, {', '.join(FORMATS)}")
    _check_file(path)
    if fmt == "mooncake":
        wl = _read_mooncake(path)
    elif fmt == "servesim":
        wl = _read_servesim(path)
    else:
        wl = {
            "azure": _read_azure,
            "splitwise": _read_splitwise,
            "lengths": _read_lengths,
            "burstgpt": _read_burstgpt,
        }[fmt](path)
    if replay == "spread":
        wl = spread_buckets(wl, bucket_s)
    elif replay != "burst":
        raise TraceError(f"{path}: unknown replay {replay!r}; valid: burst, spread")
    return wl


def spread_buckets(wl: Workload, bucket_s: float) -> Workload:
    """Spread requests that share a timestamp evenly over ``[t, t + bucket_s)``.

    The k-th of m requests stamped ``t`` (in file order) moves to ``t + k * bucket_s / m``:
    deterministic, order-preserving, and the bucket's mean rate is kept.
    """
    from dataclasses import replace

    t = wl.arrival_s
    if len(t) == 0:
        return wl
    # Requests are sorted by time, so equal stamps are contiguous runs.
    new_run = np.concatenate(([True], t[1:] != t[:-1]))
    run_id = np.cumsum(new_run) - 1
    run_len = np.bincount(run_id)
    k = segment_arange(run_len)
    spread = t + k * (bucket_s / run_len[run_id])
    return replace(wl, arrival_s=spread, source=f"{wl.source} replay=spread/{bucket_s}s")


# ---------------------------------------------------------------------------- CSV formats


def _read_azure(path: Path) -> Workload:
    df = _read_csv(path, ("TIMESTAMP", "ContextTokens", "GeneratedTokens"))
    raw = df["TIMESTAMP"]
    # 2023: naive "2023-11-16 18:17:03.9799600"; 2024: "...+00:00" with mixed precision.
    stamps = pd.to_datetime(raw, format="ISO8601", utc=True, errors="coerce")
    _fail_on(path, df, "TIMESTAMP", stamps.isna().to_numpy(), "not an ISO-8601 timestamp")
    ns = stamps.to_numpy(dtype="datetime64[ns]").astype(np.int64)
    arrival_s = (ns - ns.min()) / 1e9
    _fail_on(path, df, "TIMESTAMP", arrival_s > MAX_TIME_S,
             f"more than {MAX_TIME_S:g} s after the first timestamp")
    return _finish(
        path,
        "azure",
        arrival_s,
        _tokens_col(path, df, "ContextTokens"),
        _tokens_col(path, df, "GeneratedTokens"),
    )


def _read_splitwise(path: Path) -> Workload:
    df = _read_csv(path, ("arrived_at", "num_prefill_tokens", "num_decode_tokens"))
    return _finish(
        path,
        "splitwise",
        _time_col(path, df, "arrived_at"),
        _tokens_col(path, df, "num_prefill_tokens"),
        _tokens_col(path, df, "num_decode_tokens"),
    )


def _read_lengths(path: Path) -> Workload:
    df = _read_csv(path, ("num_prefill_tokens", "num_decode_tokens"))
    prompt = _tokens_col(path, df, "num_prefill_tokens")
    # No timestamps: all at 0 (offline) until an arrival process is attached.
    return _finish(
        path,
        "lengths",
        np.zeros(len(prompt)),
        prompt,
        _tokens_col(path, df, "num_decode_tokens"),
    )


def _read_burstgpt(path: Path) -> Workload:
    df = _read_csv(path, ("Timestamp", "Request tokens", "Response tokens"))
    arrival_s = _time_col(path, df, "Timestamp")
    prompt = _tokens_col(path, df, "Request tokens", minimum=0)
    output = _tokens_col(path, df, "Response tokens", minimum=0)
    failed = output == 0
    empty = (prompt == 0) & ~failed
    notes = []
    if failed.any():
        notes.append(
            f"dropped {int(failed.sum())} failed requests (Response tokens = 0), "
            f"first at line {int(np.flatnonzero(failed)[0]) + 2}"
        )
    if empty.any():
        notes.append(
            f"dropped {int(empty.sum())} requests with Request tokens = 0, "
            f"first at line {int(np.flatnonzero(empty)[0]) + 2}"
        )
    keep = ~(failed | empty)
    if not keep.any():
        raise TraceError(f"{path}: every request failed or is empty; nothing to replay")
    return _finish(path, "burstgpt", arrival_s[keep], prompt[keep], output[keep], notes=notes)


def _read_csv(path: Path, required: tuple[str, ...], *, skiprows: int = 0) -> pd.DataFrame:
    """Read a CSV, keeping blank lines as rows so that row ``i`` is on line
    ``i + 2 + skiprows`` (the header is line ``1 + skiprows``)."""
    scan_text_file(path, "trace", error=TraceError)
    try:
        df = pd.read_csv(path, skip_blank_lines=False, skiprows=skiprows, skipinitialspace=True,
                         encoding="utf-8", dtype=str, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError:
        raise TraceError(f"{path}: the file is empty (no header line)") from None
    except pd.errors.ParserError as exc:
        raise TraceError(f"{path}: malformed CSV: {short(str(exc).strip(), 300)}") from None
    except (OSError, UnicodeDecodeError, ValueError, OverflowError) as exc:
        raise TraceError(f"{path}: cannot read the file: {short(str(exc), 300)}") from None
    df.columns = [str(c).strip() for c in df.columns]
    # pandas renames a repeated header "x" to "x.1": refuse it rather than guess.
    dup = [c for c in df.columns
           if "." in c and c.rsplit(".", 1)[1].isdigit() and c.rsplit(".", 1)[0] in df.columns]
    if dup:
        raise TraceError(f"{path}: line {1 + skiprows}: column "
                         f"{short(dup[0].rsplit('.', 1)[0])} appears twice")
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise TraceError(
            f"{path}: line {1 + skiprows}: missing column(s) {', '.join(missing)}; "
            f"found {short(', '.join(df.columns), 200)}"
        )
    if len(df) == 0:
        raise TraceError(f"{path}: no requests (only a header line)")
    df.attrs["first_line"] = 2 + skiprows
    return df


def _fail_on(path: Path, df: pd.DataFrame, col: str, bad: npt.NDArray[np.bool_], why: str) -> None:
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        value = df[col].iloc[row]
        line = f"{df.attrs.get('unit', 'line')} {row + df.attrs.get('first_line', 2)}"
        shown = "an empty cell" if pd.isna(value) else short(str(value))
        raise TraceError(
            f"{path}: {line}, column {short(col)}: {shown} is {why}"
            + (f" ({int(bad.sum())} bad rows in all)" if bad.sum() > 1 else "")
        )


def _float_col(path: Path, df: pd.DataFrame, col: str, *, lo: float = -np.inf,
               hi: float = np.inf) -> npt.NDArray[np.float64]:
    """A column of finite numbers in ``[lo, hi]`` (NaN, Infinity, text and blanks refused)."""
    x = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    _fail_on(path, df, col, ~np.isfinite(x), "not a finite number")
    _fail_on(path, df, col, x < lo, f"below the minimum of {lo:g}")
    _fail_on(path, df, col, x > hi, f"above the maximum of {hi:g}")
    return x


def _time_col(path: Path, df: pd.DataFrame, col: str) -> npt.NDArray[np.float64]:
    """Arrival times in seconds: finite, in ``[0, MAX_TIME_S]``."""
    return _float_col(path, df, col, lo=0.0, hi=MAX_TIME_S)


def _int_col(path: Path, df: pd.DataFrame, col: str, *, minimum: int,
             maximum: int = _MAX_CSV_INT) -> npt.NDArray[np.int64]:
    x = _float_col(path, df, col)
    _fail_on(path, df, col, x != np.floor(x), "not an integer")
    _fail_on(path, df, col, x < minimum, f"below the minimum of {minimum}")
    _fail_on(path, df, col, x > maximum, f"above the maximum of {maximum:,}")
    return x.astype(np.int64)


def _tokens_col(path: Path, df: pd.DataFrame, col: str, *, minimum: int = 1
                ) -> npt.NDArray[np.int64]:
    return _int_col(path, df, col, minimum=minimum, maximum=MAX_REQUEST_TOKENS)


def _finish(
    path: Path,
    fmt: str,
    arrival_s: npt.NDArray[np.float64],
    prompt: npt.NDArray[np.int64],
    output: npt.NDArray[np.int64],
    *,
    block_tokens: int = 0,
    offsets: npt.NDArray[np.int64] | None = None,
    ids: npt.NDArray[np.int64] | None = None,
    notes: list[str] | None = None,
) -> Workload:
    """Build the workload, stably sorted by arrival time (file order breaks ties)."""
    order = np.argsort(arrival_s, kind="stable")
    notes = list(notes or [])
    if not np.array_equal(order, np.arange(len(order))):
        notes.append("rows were not in time order; sorted by timestamp (stable)")
        arrival_s, prompt, output = arrival_s[order], prompt[order], output[order]
        if offsets is not None and ids is not None:
            counts = np.diff(offsets)[order]
            gather = np.repeat(offsets[:-1][order], counts) + segment_arange(counts)
            ids = ids[gather]
            offsets = np.concatenate(([0], np.cumsum(counts)))
    return Workload.from_arrays(
        name=path.stem,
        arrival_s=arrival_s,
        prompt_tokens=prompt,
        output_tokens=output,
        block_tokens=block_tokens,
        prefix_offsets=offsets,
        prefix_block_ids=ids,
        source=f"{fmt}:{path}",
        notes=tuple(notes),
    )


# ---------------------------------------------------------------------------- Mooncake


def _read_mooncake(path: Path) -> Workload:
    from array import array

    # Typed arrays, not lists of Python numbers: 8 bytes per value (a list of ints costs
    # ~36), so memory stays proportional to the file.
    stamps_ms = array("d")
    prompt = array("q")
    output = array("q")
    ids = array("q")
    counts = array("q")
    scan_text_file(path, "trace", error=TraceError)
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                raise TraceError(f"{path}: line {lineno}: empty line")
            # Finite numbers, int64 integers, bounded nesting; errors carry the line.
            rec = load_json(line.rstrip("\r\n"), str(path), error=TraceError,
                            line_offset=lineno - 1)
            if not isinstance(rec, dict):
                raise TraceError(f"{path}: line {lineno}: expected a JSON object, got "
                                 f"{_short(rec)}")
            stamps_ms.append(_num(path, lineno, rec, "timestamp", minimum=0, integer=False,
                                  maximum=MAX_TIME_S * MS_PER_S))
            prompt.append(_num(path, lineno, rec, "input_length", minimum=1))
            output.append(_num(path, lineno, rec, "output_length", minimum=1))
            h = rec.get("hash_ids")
            if not isinstance(h, list) or not all(
                isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= INT64_MAX
                for x in h
            ):
                raise TraceError(
                    f"{path}: line {lineno}, field 'hash_ids': expected a list of integers "
                    f"in [0, 2^63), got {_short(h)}"
                )
            if len(h) > prompt[-1] // MOONCAKE_BLOCK_TOKENS + 1:
                raise TraceError(
                    f"{path}: line {lineno}, field 'hash_ids': {len(h)} block ids for "
                    f"{prompt[-1]} input tokens (at most one per {MOONCAKE_BLOCK_TOKENS} tokens)"
                )
            ids.extend(h)
            counts.append(len(h))
            if len(counts) > MAX_TRACE_REQUESTS:
                raise TraceError(f"{path}: more than {MAX_TRACE_REQUESTS:,} requests "
                                 "(docs/inputs.md)")
    if not prompt:
        raise TraceError(f"{path}: the file is empty (no requests)")
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return _finish(
        path,
        "mooncake",
        np.asarray(stamps_ms, dtype=np.float64) / MS_PER_S,
        np.asarray(prompt, dtype=np.int64),
        np.asarray(output, dtype=np.int64),
        block_tokens=MOONCAKE_BLOCK_TOKENS,
        offsets=offsets,
        ids=np.asarray(ids, dtype=np.int64),
    )


def _num(path: Path, lineno: int, rec: dict, key: str, *, minimum: float, integer: bool = True,
         maximum: float = MAX_REQUEST_TOKENS):
    value = rec.get(key)
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if (not is_number or not np.isfinite(value) or (integer and value != int(value))
            or not minimum <= value <= maximum):
        want = "an integer" if integer else "a number"
        bound = f"<= {maximum:g}" if is_number and value > maximum else f">= {minimum:g}"
        raise TraceError(
            f"{path}: line {lineno}, field {key!r}: expected {want} {bound}, "
            f"got {_short(value)}" + (" (missing)" if key not in rec else "")
        )
    return int(value) if integer else float(value)


def _short(value: object) -> str:
    try:
        text = json.dumps(value) if value is not None else "null"
    except (TypeError, ValueError):
        text = short(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------------------- servesim


def write_workload(wl: Workload, path: Path) -> None:
    """Save a workload as Parquet (``.parquet``) or CSV (any other suffix).

    Columns: :data:`~workloads.request.COLUMNS` plus ``prefix_block_ids`` (a list column in
    Parquet; space-separated integers in CSV). ``name``, ``source``, ``block_tokens`` and
    ``notes`` go to the Parquet schema metadata, or to a first CSV line
    ``# servesim-workload {json}``. :func:`read_trace` reads both back exactly.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    meta = {
        "version": 1,
        "name": wl.name,
        "source": wl.source,
        "block_tokens": wl.block_tokens,
        "notes": list(wl.notes),
    }
    if path.suffix == ".parquet":
        arrays = {col: pa.array(getattr(wl, col)) for col in COLUMNS}
        arrays["prefix_block_ids"] = pa.LargeListArray.from_arrays(
            pa.array(wl.prefix_offsets), pa.array(wl.prefix_block_ids)
        )
        table = pa.table(arrays).replace_schema_metadata({"servesim": json.dumps(meta)})
        pq.write_table(table, path)
        return
    df = wl.to_frame()
    df["prefix_block_ids"] = [" ".join(map(str, wl.block_ids(i).tolist())) for i in range(len(wl))]
    with path.open("w", encoding="utf-8", newline="") as f:
        f.write(_SERVESIM_MAGIC + json.dumps(meta) + "\n")
        df.to_csv(f, index=False, float_format="%.17g")


def _read_servesim(path: Path) -> Workload:
    if path.suffix == ".parquet":
        return _read_servesim_parquet(path)
    scan_text_file(path, "trace", error=TraceError)
    first = _first_line(path)
    if not first.startswith(_SERVESIM_MAGIC):
        raise TraceError(f"{path}: line 1: expected '{_SERVESIM_MAGIC}{{...}}'")
    meta = load_json(first[len(_SERVESIM_MAGIC) :], f"{path}: line 1: metadata",
                     error=TraceError)
    df = _read_csv(path, (*COLUMNS, "prefix_block_ids"), skiprows=1)
    cols = _servesim_columns(path, df)
    text = df["prefix_block_ids"].fillna("").astype(str)
    bad = ~text.str.fullmatch(r"\s*(\d{1,18}(\s+\d{1,18})*)?\s*").to_numpy()
    _fail_on(path, df, "prefix_block_ids", bad,
             "not space-separated integers in [0, 10^18)")
    counts = text.str.split().str.len().fillna(0).to_numpy(dtype=np.int64)
    ids = np.array(" ".join(text).split(), dtype=np.int64)
    offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    return _servesim_workload(path, meta, cols, offsets, ids)


def _servesim_columns(path: Path, df: pd.DataFrame) -> dict[str, np.ndarray]:
    """Validate the servesim columns, each against its own range (see docs/inputs.md)."""
    n = len(df)
    cols: dict[str, np.ndarray] = {
        "request_id": _int_col(path, df, "request_id", minimum=0, maximum=max(n - 1, 0)),
        "prompt_tokens": _tokens_col(path, df, "prompt_tokens"),
        "output_tokens": _tokens_col(path, df, "output_tokens"),
        "session_id": _int_col(path, df, "session_id", minimum=-1),
        "turn": _int_col(path, df, "turn", minimum=0, maximum=(1 << 31) - 1),
        "num_samples": _int_col(path, df, "num_samples", minimum=1, maximum=MAX_FANOUT),
        "beam_width": _int_col(path, df, "beam_width", minimum=1, maximum=MAX_FANOUT),
        "depends_on": _int_col(path, df, "depends_on", minimum=-1, maximum=max(n - 1, 0)),
        "think_time_s": _float_col(path, df, "think_time_s", lo=0.0, hi=MAX_TIME_S),
    }
    # Dependent (closed-loop) requests have no arrival time of their own: NaN is allowed
    # there; open arrivals need a finite time in range.
    arrival = pd.to_numeric(df["arrival_s"], errors="coerce").to_numpy(
        dtype=np.float64, na_value=np.nan)
    is_open = cols["depends_on"] < 0
    _fail_on(path, df, "arrival_s", is_open & ~np.isfinite(arrival),
             "not a finite number (open arrival)")
    _fail_on(path, df, "arrival_s", np.isinf(arrival), "not a finite number")
    _fail_on(path, df, "arrival_s", (arrival < 0) | (arrival > MAX_TIME_S),
             f"outside [0, {MAX_TIME_S:g}] s")
    cols["arrival_s"] = arrival
    return {c: cols[c].astype(d) for c, d in COLUMNS.items()}


def _read_servesim_parquet(path: Path) -> Workload:
    import pyarrow as pa
    import pyarrow.parquet as pq

    check_regular_file(path, "trace", max_bytes=MAX_TRACE_BYTES, error=TraceError)
    try:
        num_rows = pq.ParquetFile(path).metadata.num_rows
        if num_rows > MAX_TRACE_REQUESTS:
            raise TraceError(f"{path}: {num_rows:,} requests; the limit is "
                             f"{MAX_TRACE_REQUESTS:,} (docs/inputs.md)")
        table = pq.read_table(path)
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise TraceError(f"{path}: cannot read Parquet: {short(str(exc), 200)}") from None
    raw_meta = (table.schema.metadata or {}).get(b"servesim")
    if raw_meta is None:
        raise TraceError(f"{path}: not a servesim workload (no 'servesim' schema metadata)")
    try:
        meta_text = raw_meta.decode("utf-8")
    except UnicodeDecodeError:
        raise TraceError(f"{path}: the 'servesim' metadata is not UTF-8") from None
    meta = load_json(meta_text, f"{path}: metadata", error=TraceError)
    missing = [c for c in (*COLUMNS, "prefix_block_ids") if c not in table.column_names]
    if missing:
        raise TraceError(f"{path}: missing column(s) {', '.join(missing)}")
    if table.num_rows == 0:
        raise TraceError(f"{path}: no requests")
    try:
        df = pd.DataFrame({c: table.column(c).to_pandas() for c in COLUMNS})
        lists = table.column("prefix_block_ids").combine_chunks().cast(pa.large_list(pa.int64()))
    except (pa.ArrowException, ValueError, TypeError) as exc:
        raise TraceError(f"{path}: column types do not match a servesim workload: "
                         f"{short(str(exc), 200)}") from None
    df.attrs.update(first_line=0, unit="row")
    cols = _servesim_columns(path, df)
    if lists.null_count:
        raise TraceError(f"{path}: prefix_block_ids has null entries")
    offsets = np.asarray(lists.offsets, dtype=np.int64)
    flat = lists.values
    if flat.null_count:
        raise TraceError(f"{path}: prefix_block_ids holds null ids")
    ids = np.asarray(flat, dtype=np.int64)[offsets[0] : offsets[-1]]
    return _servesim_workload(path, meta, cols, offsets - offsets[0], ids)


def _servesim_workload(path: Path, meta: object, cols: dict, offsets, ids) -> Workload:
    if not isinstance(meta, dict):
        raise TraceError(f"{path}: the servesim metadata must be a JSON object, got "
                         f"{_short(meta)}")
    notes = meta.get("notes", [])
    block_tokens = meta.get("block_tokens", 0)
    if not isinstance(notes, list) or not all(isinstance(x, str) for x in notes):
        raise TraceError(f"{path}: metadata 'notes' must be a list of strings, got "
                         f"{_short(notes)}")
    if (isinstance(block_tokens, bool) or not isinstance(block_tokens, int)
            or not 0 <= block_tokens <= MAX_REQUEST_TOKENS):
        raise TraceError(f"{path}: metadata 'block_tokens' must be an integer in "
                         f"[0, {MAX_REQUEST_TOKENS}], got {_short(block_tokens)}")
    try:
        wl = Workload(
            name=str(meta.get("name", path.stem))[:200],
            **{c: np.ascontiguousarray(cols[c], dtype=d) for c, d in COLUMNS.items()},
            block_tokens=block_tokens,
            prefix_offsets=np.ascontiguousarray(offsets, dtype=np.int64),
            prefix_block_ids=np.ascontiguousarray(ids, dtype=np.int64),
            source=str(meta.get("source", f"servesim:{path}"))[:1000],
            notes=tuple(notes),
        )
        wl.check()
    except Exception as exc:
        raise TraceError(f"{path}: inconsistent servesim workload: {short(str(exc), 300)}"
                         ) from None
    return wl


# ---------------------------------------------------------------------------- helpers


def _check_file(path: Path) -> None:
    if not path.exists():
        raise TraceError(f"{short(str(path), 200)}: no such trace file")
    size = check_regular_file(path, "trace file", max_bytes=MAX_TRACE_BYTES, error=TraceError)
    if size == 0:
        raise TraceError(f"{path}: the file is empty")


def _first_line(path: Path) -> str:
    try:
        with path.open("rb") as f:
            raw = f.readline(64 * 1024)
        return raw.decode("utf-8").rstrip("\r\n").lstrip("\ufeff")
    except OSError as exc:
        raise TraceError(f"{path}: cannot read the file: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise TraceError(f"{path}: line 1, column {exc.start + 1}: not UTF-8 text; is it a "
                         "binary file?") from None
