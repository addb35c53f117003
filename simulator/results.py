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

from servesim.hwmodels.exactsum import fdot, fmean, fstd, fsum
from servesim.simulator.request import REJECT_REASONS

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
_SPLIT_NAMES = tuple(c[: -len("_s")] for c in _SPLIT_COLS)
_MEM_FIELDS = (
    ("kv_token_state_slots", "token_slots"),
    ("kv_reserved_slots", "reserved_slots"),
    ("kv_internal_frag_slots", "internal_frag_slots"),
    ("kv_external_frag_slots", "external_frag_slots"),
    ("kv_cached_slots", "cached_slots"),
    ("kv_free_slots", "free_slots"),
)


# A fast-forwarded stretch is one record; its rows are expanded at the end.
_STRETCH_COLS = (
    "ordinal",  # log position of the stretch's first step
    "replica_id",
    "num_steps",
    "num_running",
    "queue_len0",  # queue length after every step but the last
    "queue_len",  # after the last
    "decode_seqs",  # cost-model batch (running + static-batching padding)
    "ctx_tokens0",  # cost-model context tokens of the first step
    "row0",  # index of the first step in the flat start/duration/memory columns
    "prefix_hit_tokens",
    "prefix_query_tokens",
)
_SCOL = {c: i for i, c in enumerate(_STRETCH_COLS)}
_NUM_SCOLS = len(_STRETCH_COLS)
#: The steps frame's columns but the split by bound (float32, inserted before the memory
#: split), in order, with their dtypes.
_STEP_DTYPES = {
    "replica_id": np.int32,
    "step": np.int64,
    "t_s": np.float64,
    "duration_s": np.float64,
    "num_running": np.int32,
    "num_prefill_seqs": np.int32,
    "prefill_tokens": np.int32,
    "decode_tokens": np.int32,
    "queue_len": np.int32,
    "num_preemptions": np.int32,
    **{c: np.int32 for c, _ in _MEM_FIELDS},
    "prefix_hit_tokens": np.int64,
    "prefix_query_tokens": np.int64,
}
#: Buffered tuples per float64 block (bounds the Python objects alive at once).
_BLOCK_ROWS = 4096
#: Rows per vectorised step-cost evaluation when splitting step time by bound (bounds the
#: temporaries of a multi-million-step run).
_COST_CHUNK_ROWS = 1 << 19


def _segment_rows(starts: npt.NDArray[np.int64], lengths: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Concatenated ``range(starts[i], starts[i] + lengths[i])``."""
    total = int(lengths.sum())
    first = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts, lengths) + (np.arange(total, dtype=np.int64) - first)


def _itl_bin(values_s: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    v = np.maximum(values_s, _ITL_LO_S)
    idx = np.floor(np.log10(v / _ITL_LO_S) * _ITL_BINS_PER_DECADE).astype(np.int64) + 1
    return np.clip(idx, 0, _ITL_NUM_BINS - 1)


def _itl_bin_value(idx: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """Geometric centre of a bin."""
    return _ITL_LO_S * 10 ** ((idx - 0.5) / _ITL_BINS_PER_DECADE)


class Recorder:
    """Collects the events of one variant's run (all replicas).

    Step rows are kept compactly until the end: a stepped row is one tuple (flushed into
    float64 blocks), and a fast-forwarded stretch of ``k`` decode steps is one record (its
    constants) plus its ``k`` start times and durations in flat ``array('d')`` columns and
    its ``k`` exact memory splits in a flat ``array('q')``. :meth:`steps_frame` expands them, vectorised,
    into the per-step timeline; the inter-token gaps a stretch implies (``k - 1`` per
    sequence, each the step's duration) are binned from the same columns.
    """

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
        self._itl_sum_s = 0.0
        self._itl_sumsq_s2 = 0.0
        self._itl_n = 0
        self._itl_buf: list[npt.NDArray[np.float64]] = []  # first gaps, one per sequence
        self._itl_buf_len = 0
        self._itl_stretch_done = 0  # stretch blocks whose later gaps are binned
        # Stepped rows: tuples of _RAW_COLS + ordinal, flushed into float64 blocks.
        self._rows: list[tuple[float, ...]] = []
        self._row_blocks: list[npt.NDArray[np.float64]] = []
        # Stretches: records of _STRETCH_COLS, flushed into float64 blocks; steps' start
        # times and durations in flat columns.
        self._stretches = array("q")  # flat: _STRETCH_COLS per record
        self._stretch_blocks: list[npt.NDArray[np.float64]] = []
        self._st_start_s = array("d")
        self._st_duration_s = array("d")
        # Stretch steps' memory split, one row of _MEM_FIELDS per step (flat).
        self._st_mem = array("q")
        # Column chunks of the compiled loop: (replica, ordinal of the first row, columns).
        self._col_chunks: list[tuple[int, int, dict[str, npt.NDArray[Any]]]] = []
        self._num_rows = 0  # also the ordinal of the next row (the log's insertion order)
        # The steps frame, once built (the compact stores are released then).
        self._frame: pd.DataFrame | None = None
        self._frame_rows = 0
        self.cost_models: dict[int, Any] = {}
        # Per cost model (by id; ``cost_models`` keeps it alive): memoised decode step times,
        # shared by the replicas of one group (see ``Replica._decode_step_time_s``).
        self.step_time_memos: dict[int, dict[int, float]] = {}
        # Per cost model (by id): checked decode step-time twins by batch (``engine.DecodeTwin``).
        self.decode_twins: dict[int, dict[int, Any]] = {}
        self.max_concurrent = 0
        self._concurrent = 0

    # ------------------------------------------------------------------ request events
    def released(self, idx: int, t_s: float, replica_id: int) -> None:
        """The request arrived (dependent requests: was released) and was routed."""
        self.arrival_s[idx] = t_s
        self.replica_id[idx] = replica_id
        self._concurrent += 1
        if self._concurrent > self.max_concurrent:
            self.max_concurrent = self._concurrent

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

    # ------------------------------------------------------------------ inter-token latency
    def itl(self, first_gaps_s: npt.NDArray[np.float64]) -> None:
        """Add the gaps before a decode step's (or stretch's first step's) tokens, one per
        sequence. The later steps of a stretch add theirs through :meth:`steps_many`."""
        self._itl_buf.append(first_gaps_s)
        self._itl_buf_len += len(first_gaps_s)
        if self._itl_buf_len > 1_000_000:
            self._flush_itl()

    def _flush_itl(self) -> None:
        if self._itl_buf:
            vals = np.concatenate(self._itl_buf)
            # Exactly rounded sums (#15): np.sum / np.dot round differently with the
            # buffer's alignment and BLAS kernel, so results differed across processes.
            self._itl_sum_s += fsum(vals)
            self._itl_sumsq_s2 += fdot(vals, vals)
            self._itl_n += len(vals)
            self.itl_counts += np.bincount(_itl_bin(vals), minlength=_ITL_NUM_BINS)
            self._itl_buf = []
        self._itl_buf_len = 0
        self._flush_stretches()
        blocks = self._stretch_blocks
        while self._itl_stretch_done < len(blocks):
            rec = blocks[self._itl_stretch_done]
            self._itl_stretch_done += 1
            k = rec[:, _SCOL["num_steps"]].astype(np.int64)
            later = k > 1
            if not later.any():
                continue
            rec, k = rec[later], k[later]
            row0 = rec[:, _SCOL["row0"]].astype(np.int64)
            # Rows 1..k-1 of each stretch: their gap is the step's duration, once per sequence.
            idx = _segment_rows(row0 + 1, k - 1)
            vals = np.frombuffer(self._st_duration_s, dtype=np.float64)[idx]
            wts = np.repeat(rec[:, _SCOL["num_running"]], k - 1)
            self._itl_sum_s += fdot(wts, vals)
            self._itl_sumsq_s2 += fdot(wts, vals * vals)
            self._itl_n += int(wts.sum())
            counts = np.bincount(_itl_bin(vals), weights=wts, minlength=_ITL_NUM_BINS)
            self.itl_counts += np.rint(counts).astype(np.int64)

    @property
    def itl_n(self) -> int:
        """Inter-token gaps recorded (pooled over sequences)."""
        self._flush_itl()
        return self._itl_n

    @property
    def itl_sum_s(self) -> float:
        self._flush_itl()
        return self._itl_sum_s

    @property
    def itl_sumsq_s2(self) -> float:
        self._flush_itl()
        return self._itl_sumsq_s2

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
        inputs: tuple[float, float, float, float, float, float],
        swap_s: float,
        mem: Any,
    ) -> None:
        """One stepped row (its cost split is derived at the end from ``inputs``, the
        cost-model arguments in :meth:`StepCostModel.cost` order)."""
        self._rows.append((
            t_s, duration_s, replica_id, num_running, num_prefill_seqs, prefill_tokens, decode_tokens,
            queue_len, num_preemptions, mem.token_slots, mem.reserved_slots, mem.internal_frag_slots,
            mem.external_frag_slots, mem.cached_slots, mem.free_slots, mem.prefix_hit_tokens,
            mem.prefix_query_tokens, *inputs, swap_s, self._num_rows,
        ))
        self._num_rows += 1
        if len(self._rows) >= _BLOCK_ROWS:
            self._row_blocks.append(np.asarray(self._rows, dtype=np.float64))
            self._rows = []

    def steps_many(
        self,
        replica_id: int,
        t_s: list[float],
        duration_s: list[float],
        num_running: int,
        queue_len0: int,
        queue_len: int,
        decode_seqs: int,
        ctx_tokens0: int,
        mems: list[Any],
    ) -> None:
        """The ``k`` rows of a fast-forwarded decode stretch, recorded as one record.

        The queue is ``queue_len0`` long after each step but the last, ``queue_len`` after
        the last. Step ``j`` decodes ``num_running`` sequences (``decode_seqs`` including padding) over
        ``ctx_tokens0 + num_running * j`` context tokens. ``mems`` holds the KV manager's
        exact memory split after each of the ``k`` steps (as a stepped row records it); the
        prefix counters cannot change within a stretch and are taken from the last.
        """
        k = len(t_s)
        e = mems[-1]
        self._stretches.extend((
            self._num_rows, replica_id, k, num_running, queue_len0, queue_len, decode_seqs, ctx_tokens0,
            len(self._st_start_s), e.prefix_hit_tokens, e.prefix_query_tokens,
        ))
        st_mem = self._st_mem
        for m in mems:
            st_mem.extend((m.token_slots, m.reserved_slots, m.internal_frag_slots, m.external_frag_slots,
                           m.cached_slots, m.free_slots))
        self._st_start_s.extend(t_s)
        self._st_duration_s.extend(duration_s)
        self._num_rows += k
        if len(self._stretches) >= _BLOCK_ROWS * _NUM_SCOLS:
            self._flush_stretches()

    def _flush_stretches(self) -> None:
        if self._stretches:
            # Every field is an integer (``array('q')`` refuses anything else).
            block = np.frombuffer(self._stretches, dtype=np.int64).reshape(-1, _NUM_SCOLS)
            small = block.max() < 2**31 and block.min() >= -(2**31)
            block = block.astype(np.int32 if small else np.int64)  # a copy, off the array
            self._stretch_blocks.append(block)
            self._stretches = array("q")

    def add_step_columns(self, replica_id: int, cols: dict[str, npt.NDArray[Any]]) -> None:
        """Rows of one replica as columns (the compiled loop's step rows, in time order):
        names from the raw step layout; absent ones are zero."""
        m = len(cols["t_s"])
        if not m:
            return
        self._col_chunks.append((replica_id, self._num_rows, cols))
        self._num_rows += m

    def add_itl(self, counts: npt.NDArray[np.int64], sum_s: float, sumsq_s2: float, n: int) -> None:
        """Inter-token gaps already binned (the compiled loop's histogram and sums)."""
        self.itl_counts += counts
        self._itl_sum_s += sum_s
        self._itl_sumsq_s2 += sumsq_s2
        self._itl_n += n

    @property
    def num_step_rows(self) -> int:
        return self._num_rows

    # ------------------------------------------------------------------ frames
    def _stepped_raw(self) -> npt.NDArray[np.float64]:
        blocks = list(self._row_blocks)
        if self._rows:
            blocks.append(np.asarray(self._rows, dtype=np.float64))
        if not blocks:
            return np.zeros((0, _NUM_RAW + 1))
        return np.concatenate(blocks)

    def _stretch_block_columns(self, rec: npt.NDArray[Any]) -> dict[str, npt.NDArray[Any]]:
        """One block of stretch records, expanded (vectorised) into step columns."""
        k = rec[:, _SCOL["num_steps"]].astype(np.int64)
        n = int(k.sum())
        # Position of each row within its stretch.
        j = np.arange(n, dtype=np.int64) - np.repeat(np.cumsum(k) - k, k)
        idx = np.repeat(rec[:, _SCOL["row0"]].astype(np.int64), k) + j

        def rep(name: str) -> npt.NDArray[np.float64]:
            return np.repeat(rec[:, _SCOL[name]].astype(np.float64), k)

        cols: dict[str, Any] = {
            "t_s": np.frombuffer(self._st_start_s, dtype=np.float64)[idx],
            "duration_s": np.frombuffer(self._st_duration_s, dtype=np.float64)[idx],
            "_ordinal": np.repeat(rec[:, _SCOL["ordinal"]].astype(np.int64), k) + j,
            "replica_id": rep("replica_id"),
            "num_running": rep("num_running"),
            "in_decode_seqs": rep("decode_seqs"),
            "prefix_hit_tokens": rep("prefix_hit_tokens"),
            "prefix_query_tokens": rep("prefix_query_tokens"),
        }
        cols["decode_tokens"] = cols["num_running"]
        last = j == np.repeat(k - 1, k)
        cols["queue_len"] = np.where(last, rep("queue_len"), rep("queue_len0"))
        jf = j.astype(np.float64)
        cols["in_ctx_tokens"] = rep("ctx_tokens0") + cols["num_running"] * jf
        # The exact memory split of every step (recorded per step by the replica).
        mem = np.frombuffer(self._st_mem, dtype=np.int64).reshape(-1, len(_MEM_FIELDS))
        for i, (col, _attr) in enumerate(_MEM_FIELDS):
            cols[col] = mem[idx, i]
        return cols

    def _split_into(
        self, out: npt.NDArray[np.float32], lo: int, cols: dict[str, npt.NDArray[Any]], m: int
    ) -> None:
        """Step time by bound of ``m`` rows given as ``cols``, into ``out[lo:lo + m]``."""
        replica = cols["replica_id"]
        by_model: dict[int, list[int]] = {}
        for rid, model in self.cost_models.items():
            by_model.setdefault(id(model), []).append(rid)
        zeros = np.zeros(m)
        for rids in by_model.values():
            model = self.cost_models[rids[0]]
            sel = np.flatnonzero(np.isin(replica, rids))
            if not len(sel):
                continue

            def inp(name: str, sel: npt.NDArray[np.int64] = sel) -> npt.NDArray[np.float64]:
                return np.asarray((cols[name] if name in cols else zeros)[sel], dtype=np.float64)

            c = model.cost(
                prefill_tokens=inp("in_prefill_tokens"),
                prefill_attn_pairs=inp("in_attn_pairs"),
                prefill_kv_tokens=inp("in_kv_tokens"),
                num_prefill_seqs=inp("in_sampling_seqs"),
                num_decode_seqs=inp("in_decode_seqs"),
                decode_ctx_tokens=inp("in_ctx_tokens"),
            )
            self._scale_split(out, lo + sel, [getattr(c, f) for f in _SPLIT_COLS], inp("swap_s"),
                              cols["duration_s"][sel])

    @staticmethod
    def _scale_split(out: npt.NDArray[np.float32], rows: Any, parts_s: list[Any], swap_s: npt.NDArray[np.float64],
                     duration_s: npt.NDArray[np.float64]) -> None:
        """The split by bound (``parts_s``, the cost model's five fields, with the swap time
        added to communication) scaled to each step's duration, into ``out[rows]``."""
        r = len(duration_s)
        parts = np.stack([np.asarray(p, dtype=np.float64) * np.ones(r) for p in parts_s], axis=1)
        parts[:, 3] += swap_s
        # Left to right, spelled out: the compiled loop adds the parts in this order as each
        # step commits (``simulator.compiled._cost.scale_split``).
        total = parts[:, 0] + parts[:, 1]
        for j in range(2, len(parts_s)):
            total += parts[:, j]
        total[total == 0] = 1.0
        out[rows] = parts * (duration_s / total)[:, None]

    def steps_frame(self) -> pd.DataFrame:
        """The per-step timeline, with the step time split by bound.

        The split comes from vectorised step-cost evaluations over the recorded step inputs,
        scaled to the step's duration (the engine times steps with the cost model's scalar
        path; the two agree to rounding). Counts are int32 (the split by bound float32), so
        a ten-million-step run's frame stays near 1 GB; columns are built one at a time.
        """
        if self._frame is not None:
            if self._frame_rows != self._num_rows:
                raise RuntimeError("steps recorded after steps_frame() released the step stores")
            return self._frame
        # The inter-token gaps a stretch implies are binned from the stores: do it now, then
        # hand the stores over to this method, which frees each part once expanded (a
        # multi-million-step run would otherwise hold them next to the frame).
        self._flush_itl()
        row_blocks = self._row_blocks
        if self._rows:
            row_blocks.append(np.asarray(self._rows, dtype=np.float64))
        self._row_blocks, self._rows = [], []
        n_raw = sum(len(b) for b in row_blocks)
        blocks = self._stretch_blocks
        self._stretch_blocks, self._itl_stretch_done = [], 0
        chunks = self._col_chunks
        self._col_chunks = []
        if chunks:
            # A run is compiled or Python throughout, so column chunks never mix with rows.
            if row_blocks or blocks:
                raise RuntimeError("column chunks recorded next to stepped rows or stretches")
            return self._frame_from_column_chunks(chunks)
        n = n_raw + sum(int(b[:, _SCOL["num_steps"]].sum()) for b in blocks)
        out: dict[str, npt.NDArray[Any]] = {name: np.empty(n, dtype) for name, dtype in _STEP_DTYPES.items()}
        ordinal = np.empty(n, np.int64)
        split = np.empty((n, len(_SPLIT_COLS)), np.float32)

        def fill(lo: int, cols: dict[str, npt.NDArray[Any]], m: int) -> None:
            for name, arr in out.items():
                if name in cols:
                    arr[lo : lo + m] = cols[name]
                elif name != "step":
                    arr[lo : lo + m] = 0
            ordinal[lo : lo + m] = cols["_ordinal"]
            self._split_into(split, lo, cols, m)

        # Stepped rows, a chunk of float64 blocks at a time (freed as they go).
        row_blocks.reverse()
        lo = 0
        while row_blocks:
            group = [row_blocks.pop()]
            rows = len(group[0])
            while row_blocks and rows + len(row_blocks[-1]) <= _COST_CHUNK_ROWS:
                group.append(row_blocks.pop())
                rows += len(group[-1])
            chunk = np.concatenate(group) if len(group) > 1 else group[0]
            del group
            cols = {c: chunk[:, i] for c, i in _COL.items()}
            cols["_ordinal"] = chunk[:, _NUM_RAW]
            fill(lo, cols, len(chunk))
            lo += len(chunk)
            del cols, chunk
        blocks.reverse()
        while blocks:
            cols = self._stretch_block_columns(blocks.pop())
            m = len(cols["t_s"])
            fill(lo, cols, m)
            lo += m
            del cols
        self._st_start_s, self._st_duration_s, self._st_mem = array("d"), array("d"), array("q")
        # Stable order by (time, replica), ties in the order the steps were logged.
        order = np.lexsort((ordinal, out["replica_id"], out["t_s"]))
        ordinal = np.empty(0, np.int64)  # free it before the permutation
        frame: dict[str, Any] = {}
        for name in _STEP_DTYPES:
            if name == "step":
                frame[name] = np.arange(n, dtype=np.int64)
            elif name == "kv_token_state_slots":
                for j, c in enumerate(_SPLIT_COLS):
                    frame[c] = split[order, j]
                del split
                frame[name] = out.pop(name)[order]
            else:
                frame[name] = out.pop(name)[order]
        self._frame = pd.DataFrame(frame, copy=False)
        self._frame_rows = self._num_rows
        return self._frame

    def _frame_from_column_chunks(self, chunks: list[tuple[int, int, dict[str, npt.NDArray[Any]]]]) -> pd.DataFrame:
        """The steps frame of a run recorded as column chunks only (the compiled loop).

        Each replica's rows are in time order and the chunks come replica by replica, so a
        stable sort of the start times gives the frame's order (time, then replica, then log
        order, as :meth:`steps_frame`). Each chunk is then scattered straight into its rows of
        the final columns and released, chunks taken in order of their first start time, so
        memory holds the frame plus the chunks not yet placed rather than the chunks, an
        unsorted copy and the frame (a ten-million-step run stays near 1 GB).
        """
        n = sum(len(c["t_s"]) for _r, _o, c in chunks)
        starts = np.empty(n, np.float64)
        offsets = []
        lo = 0
        for _rid, _first, cols in chunks:
            m = len(cols["t_s"])
            starts[lo : lo + m] = cols["t_s"]
            offsets.append(lo)
            lo += m
        order = np.argsort(starts, kind="stable")
        del starts
        pos = np.empty(n, np.int64)
        pos[order] = np.arange(n, dtype=np.int64)
        del order
        frame: dict[str, npt.NDArray[Any]] = {}
        for name, dtype in _STEP_DTYPES.items():
            if name == "kv_token_state_slots":
                for c in _SPLIT_COLS:
                    frame[c] = np.empty(n, np.float32)
            frame[name] = np.arange(n, dtype=dtype) if name == "step" else np.empty(n, dtype)
        by_time = sorted(range(len(chunks)), key=lambda i: (float(chunks[i][2]["t_s"][0]), i))
        for i in by_time:
            rid, _first, cols = chunks[i]
            chunks[i] = (rid, _first, {})  # the only other reference: released after this
            m = len(cols["t_s"])
            rows: Any = pos[offsets[i] : offsets[i] + m]
            if rows[-1] - rows[0] == m - 1:
                # A chunk's rows keep their order (a stable sort of a time-ordered replica),
                # so this span is exactly rows[0]..rows[-1]: copy it as a slice (one replica,
                # or a stretch no other replica steps in).
                rows = slice(int(rows[0]), int(rows[0]) + m)
            cols["replica_id"] = np.full(m, rid, dtype=np.int32)
            for name in _STEP_DTYPES:
                if name == "replica_id" and isinstance(rows, slice):
                    frame[name][rows] = rid
                elif name != "step":
                    frame[name][rows] = cols[name] if name in cols else 0
            if _SPLIT_COLS[0] in cols:
                # The kernel recorded each step's split as it ran: no cost-model call here.
                for c in _SPLIT_COLS:
                    frame[c][rows] = cols[c]
            else:
                split = np.empty((m, len(_SPLIT_COLS)), np.float32)
                self._split_into(split, 0, cols, m)
                for j, c in enumerate(_SPLIT_COLS):
                    frame[c][rows] = split[:, j]
                del split
            del cols, rows
        self._frame = pd.DataFrame(frame, copy=False)
        self._frame_rows = self._num_rows
        return self._frame

    def requests_frame(self, workload: Any, slo: dict[str, float | None]) -> pd.DataFrame:
        arrival = self.arrival_s
        # Per-request work outside the engine loop (API server, tokenization, admission,
        # detokenization of the first token): the replica's stack profile, added to TTFT and
        # E2EL (a constant shift per request; 0 under the default 'generic' profile).
        over = self._request_overhead_s(np.asarray(workload.prompt_tokens, dtype=np.float64))
        ttft_ms = (self.first_token_s - arrival + over) * MS
        e2el_ms = (self.finish_s - arrival + over) * MS
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

    def _request_overhead_s(self, prompt_tokens: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Each request's time outside the engine loop, from its replica's stack profile
        (``StackProfile.request_overhead_total_s``; 0 for rejected requests)."""
        over = np.zeros(len(prompt_tokens))
        rid = np.asarray(self.replica_id)
        for r, model in self.cost_models.items():
            stack = getattr(model, "stack", None)
            if stack is None:
                continue
            sel = rid == r
            if sel.any():
                over[sel] = stack.request_overhead_total_s(prompt_tokens[sel])
        return over

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
    out[f"mean_{prefix}"] = fmean(v)
    out[f"median_{prefix}"] = float(np.median(v))
    out[f"std_{prefix}"] = fstd(v)
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
    wsum = fsum(w)
    s["num_steps"] = len(steps)
    # Time-weighted means over a multi-million-row frame: one float64 buffer reused for
    # every product (the same elementwise values and sums as the plain expressions).
    buf = np.empty(len(w))

    def weighted_sum(col: str) -> float:
        np.multiply(steps[col].to_numpy(), w, out=buf)
        return fsum(buf)

    s["mean_batch_size"] = weighted_sum("num_running") / wsum if wsum else 0.0
    mem_cols = [c for c, _ in _MEM_FIELDS]
    if wsum:
        # Capacity per row: the categories' integer sum (exact in float64).
        cap = np.zeros(len(w))
        for col in mem_cols:
            cap += steps[col].to_numpy()
        cap[cap == 0] = 1.0
        for col, name in zip(
            mem_cols,
            ("kv_token_state_frac", "kv_reserved_frac", "kv_internal_frag_frac", "kv_external_frag_frac",
             "kv_cached_frac", "kv_free_frac"),
            strict=True,
        ):
            np.divide(steps[col].to_numpy(), cap, out=buf)
            buf *= w
            s[name] = fsum(buf) / wsum
        del cap
        # Column by column in float64 (no 2-D copy of the split, no groupby temporaries).
        parts = {c: fsum(steps[f"{c}_s"].to_numpy()) for c in _SPLIT_NAMES}
        split_total = sum(parts.values())
        for col in _SPLIT_NAMES:
            s[f"step_time_{col}_frac"] = parts[col] / split_total if split_total else 0.0
        # Prefix counters are cumulative per replica: their per-replica maxima, summed.
        rid = steps["replica_id"].to_numpy()
        query = steps["prefix_query_tokens"].to_numpy()
        hit = steps["prefix_hit_tokens"].to_numpy()
        q = h = 0
        for r in np.unique(rid):
            sel = rid == r
            q += int(query[sel].max())
            h += int(hit[sel].max())
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
    s["mean_queue_len"] = weighted_sum("queue_len") / wsum if wsum else 0.0
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
