"""Step rows as both replicas write them: one chunk of columns in the compiled loop's layout.

A replica writes each committed step into :class:`StepRows`: four small column blocks
(``sf`` float64, ``si`` int32, ``sq`` int64, ``ss`` float32; rows named by
``simulator.compiled._loop``'s ``SF_*`` / ``SI_*`` / ``SQ_*`` / ``SS_*``). The compiled loop
fills them inside the kernel; the reference replica assigns one row at a time
(:meth:`StepRows.append`). When the chunk is full, or at the end, :meth:`StepRows.retire`
hands its rows to the recorder in compact form (:func:`compact`) and the chunk is reused, so
a run holds one chunk per replica plus the compact store, never a second copy of every row.
"""

from __future__ import annotations

import mmap
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from servesim.simulator.compiled import _loop as L

#: Rows of the first chunk of a replica (tests, short runs); chunks double up to the cap.
#: A chunk is scratch (140 bytes a row, reused once handed over), so the cap bounds what a
#: replica holds besides the compact store: 8,192 rows, ~1.1 MB (16 replicas at 32,768 rows
#: held 73 MB for nothing).
FIRST_CHUNK_ROWS = 1 << 12
MAX_CHUNK_ROWS = 1 << 13

#: Integer columns of the steps frame: (name, block, row in the block).
INT_COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("num_running", "si", L.SI_RUN),
    ("num_prefill_seqs", "si", L.SI_NPF),
    ("prefill_tokens", "si", L.SI_PT),
    ("decode_tokens", "si", L.SI_DT),
    ("queue_len", "si", L.SI_Q),
    ("num_preemptions", "si", L.SI_PRE),
    ("kv_token_state_slots", "si", L.SI_TOK),
    ("kv_reserved_slots", "si", L.SI_RES),
    ("kv_internal_frag_slots", "si", L.SI_INT),
    ("kv_external_frag_slots", "si", L.SI_EXT),
    ("kv_cached_slots", "si", L.SI_CACHED),
    ("kv_free_slots", "si", L.SI_FREE),
    ("prefix_hit_tokens", "sq", L.SQ_HIT),
    ("prefix_query_tokens", "sq", L.SQ_PQ),
)
_NARROW = (np.int8, np.int16, np.int32)


def _mapped_bytes(nbytes: int) -> npt.NDArray[np.uint8]:
    """A zero-filled byte array in its own anonymous memory map.

    NOTE(memory): glibc keeps freed mid-sized blocks in its heap (its mmap threshold rises
    with each free); a map of its own goes back to the system when the last view dies, and
    its untouched pages cost nothing (a thousand-replica cluster that steps little).
    """
    return np.frombuffer(mmap.mmap(-1, max(nbytes, 1)), dtype=np.uint8)[:nbytes]


_NARROW_BOUNDS = tuple((np.dtype(dt), int(np.iinfo(dt).min), int(np.iinfo(dt).max)) for dt in _NARROW)


def _narrow_dtype(lo: int, hi: int, dtype: Any) -> Any:
    """The smallest of int8/int16/int32 that holds ``[lo, hi]`` (else ``dtype``), or None
    when every value is the same."""
    if lo == hi:
        return None
    for dt, dmin, dmax in _NARROW_BOUNDS:
        if dmin <= lo and hi <= dmax:
            return dt
    return dtype


class Sparse(NamedTuple):
    """An integer column that is zero on most rows of a chunk (prefill counters, prefix
    queries: a few steps in a decoding hour): the rows where it is not, and its values."""

    rows: npt.NDArray[Any]
    values: npt.NDArray[Any]


class Rest(NamedTuple):
    """``kv_free_slots`` as what the other memory columns leave of a constant total (a
    replica's slots are token + reserved + internal + external + cached + free, every step)."""

    total: int


#: The memory columns whose sum with ``kv_free_slots`` is a replica's capacity (:class:`Rest`).
MEMORY_PARTS = ("kv_token_state_slots", "kv_reserved_slots", "kv_internal_frag_slots",
                "kv_external_frag_slots", "kv_cached_slots")
_MEMORY_PART_ROWS = tuple(row for part in MEMORY_PARTS for name, block, row in INT_COLUMNS
                          if name == part and block == "si")
if len(_MEMORY_PART_ROWS) != len(MEMORY_PARTS):
    raise RuntimeError("steprows: a memory column of MEMORY_PARTS is not an si column")


def compact(sf: Any, si: Any, sq: Any, ss: Any, n: int) -> dict[str, Any]:
    """The first ``n`` rows of a chunk as the steps frame's columns, compact and lossless:
    start and duration (float64); each part of the split by bound as float32, or one float32
    when it is the same on every row (no communication on one GPU); each integer column as
    the smallest of int8/int16/int32 that holds it, as one Python int when all its values are
    equal (most memory columns of a run), as :class:`Sparse` when that is smaller (zero on
    most rows), and ``kv_free_slots`` as :class:`Rest` when the memory columns sum to a
    constant. :func:`column` and :func:`split_part` read any of them back in the frame's
    dtypes. The cost inputs (attention pairs, KV and context tokens, sampled and costed
    decode sequences, swap time) are dropped: the split is already there.

    NOTE(memory): a million-request run commits 8.3 M steps; at 46 bytes a row the store
    was most of the run's 1 GB peak, the split alone 20 bytes and the free slots, prefix
    queries and prefill counters another 11 (issue 12).

    All arrays of a chunk share one memory map of their own (see :func:`_mapped_bytes`):
    freed, the chunk goes back to the system, not into a heap the frame cannot reuse.
    """
    blocks = {"si": si, "sq": sq}
    # Every integer column's range in one reduction per block.
    bounds = {k: (b[:, :n].min(axis=1).tolist(), b[:, :n].max(axis=1).tolist()) for k, b in blocks.items()}
    kinds = []
    seg = _busy_segments(sf[L.SF_T, :n], sf[L.SF_D, :n])
    nbytes = 8 * n + (8 * n if seg is None else 16 * len(seg))
    split_const = []
    for j in range(L.SS_NUM):
        bits = ss[j, :n].view(np.uint32)  # bit for bit: signed zeros and NaNs stay apart
        split_const.append(ss[j, 0] if n and bits.min() == bits.max() else None)
        nbytes += 0 if split_const[-1] is not None else 4 * n
    total = None
    if n:
        sums = si[L.SI_FREE, :n].astype(np.int64)
        for row in _MEMORY_PART_ROWS:
            sums += si[row, :n]
        if sums.min() == sums.max():
            total = int(sums[0])
    row_dt = np.dtype(np.int16 if n <= np.iinfo(np.int16).max else np.int32)
    for name, block, row in INT_COLUMNS:
        src = blocks[block][row, :n]
        lo, hi = bounds[block][0][row], bounds[block][1][row]
        dt = _narrow_dtype(lo, hi, src.dtype)
        if name == "kv_free_slots" and total is not None and dt is not None:
            kinds.append((name, src, None, Rest(total), 0))
            continue
        nnz = int(np.count_nonzero(src)) if dt is not None else 0
        if dt is not None and nnz * (row_dt.itemsize + dt.itemsize) < n * dt.itemsize:
            kinds.append((name, src, dt, None, nnz))
            nbytes += nnz * (row_dt.itemsize + dt.itemsize)
            continue
        kinds.append((name, src, dt, lo, 0))
        if dt is not None:
            nbytes += dt.itemsize * n
    buf = _mapped_bytes(nbytes)
    pos = 0

    def take(dtype: Any, size: int) -> npt.NDArray[Any]:
        nonlocal pos
        nb = size * np.dtype(dtype).itemsize
        out = buf[pos : pos + nb].view(dtype)
        pos += nb
        return out

    cols: dict[str, Any] = {}
    cols["duration_s"] = take(np.float64, n)
    cols["duration_s"][:] = sf[L.SF_D, :n]
    if seg is None:
        cols["t_s"] = take(np.float64, n)
        cols["t_s"][:] = sf[L.SF_T, :n]
    else:
        cols["t_seg"] = take(np.int64, len(seg))
        cols["t_seg"][:] = seg
        cols["t_first"] = take(np.float64, len(seg))
        cols["t_first"][:] = sf[L.SF_T, seg]
    # Every other array, widest dtype first, so each view into the buffer stays aligned:
    # (dtype, values, where the view goes).
    split: list[Any] = list(split_const)
    cols["split"] = split
    pieces: list[tuple[Any, Any, Any]] = []
    for j in range(L.SS_NUM):
        if split_const[j] is None:
            pieces.append((np.dtype(np.float32), ss[j, :n], (split, j)))
    for name, src, dt, value, nnz in kinds:
        if dt is None:
            cols[name] = value
        elif value is None and nnz < n:
            where = np.flatnonzero(src)
            sparse = cols[name] = [None, None]  # rows, values: a Sparse once placed
            pieces.append((dt, src[where], (sparse, 1)))
            pieces.append((row_dt, where, (sparse, 0)))
        else:
            pieces.append((dt, src, (cols, name)))
    for dt, values, (holder, key) in sorted(pieces, key=lambda p: -p[0].itemsize):
        view = take(dt, len(values))
        view[:] = values
        holder[key] = view
    for name, _src, dt, value, nnz in kinds:
        if dt is not None and value is None and nnz < n:
            cols[name] = Sparse(*cols[name])
    return cols


def column(cols: dict[str, Any], name: str, dtype: Any) -> npt.NDArray[Any]:
    """An integer column of a compact chunk in ``dtype`` (a read-only view when constant)."""
    v = cols[name]
    m = len(cols["duration_s"])
    if isinstance(v, int):
        return np.broadcast_to(np.asarray(v, dtype), (m,))
    if isinstance(v, Sparse):
        out = np.zeros(m, dtype)
        out[v.rows] = v.values
        return out
    if isinstance(v, Rest):
        out = np.full(m, v.total, dtype)
        for part in MEMORY_PARTS:
            out -= column(cols, part, dtype)
        return out
    return v if v.dtype == dtype else v.astype(dtype)


def split_part(cols: dict[str, Any], j: int) -> npt.NDArray[np.float32]:
    """Part ``j`` of a compact chunk's split by bound (float32; a read-only view when constant)."""
    v = cols["split"][j]
    if isinstance(v, np.float32):
        return np.broadcast_to(v, (len(cols["duration_s"]),))
    return v


def _busy_segments(t_s: npt.NDArray[np.float64], d_s: npt.NDArray[np.float64]) -> npt.NDArray[np.int64] | None:
    """Rows where a run of back-to-back steps starts, when start times can be stored as
    those runs' first starts only, else None.

    A busy replica starts each step where the last ended: ``t[i + 1] == t[i] + d[i]`` in
    float64, which a sequential sum (``np.add.accumulate``) rebuilds bit for bit
    (:func:`step_starts`). Checked here on the rows themselves: the coding is used only when
    the rebuilt starts equal the recorded ones and the runs are few (idle replicas start
    most steps at an arrival: stored plainly)."""
    n = len(t_s)
    if n < 2:
        return None
    cont = t_s[1:] == t_s[:-1] + d_s[:-1]
    seg = np.concatenate(([0], np.flatnonzero(~cont) + 1)).astype(np.int64)
    if 16 * len(seg) > 4 * n:
        return None
    if not np.array_equal(_rebuild(seg, t_s[seg], d_s), t_s):
        return None
    return seg


def _rebuild(seg: npt.NDArray[np.int64], first: npt.NDArray[np.float64], d_s: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    n = len(d_s)
    out = np.empty(n)
    ends = [*seg[1:].tolist(), n]
    for k, (lo, hi) in enumerate(zip(seg.tolist(), ends, strict=True)):
        out[lo] = first[k]
        if hi - lo > 1:
            # Sequential sums: start, start + d0, (start + d0) + d1, ... as the loop added them.
            out[lo + 1 : hi] = d_s[lo : hi - 1]
            np.add.accumulate(out[lo:hi], out=out[lo:hi])
    return out


def step_starts(cols: dict[str, Any]) -> npt.NDArray[np.float64]:
    """The start times of a compact chunk's rows (stored, or rebuilt from its busy runs)."""
    t = cols.get("t_s")
    if t is not None:
        return t
    return _rebuild(cols["t_seg"], cols["t_first"], cols["duration_s"])


def first_start(cols: dict[str, Any]) -> float:
    t = cols.get("t_s")
    return float(t[0] if t is not None else cols["t_first"][0])


class StepRows:
    """One replica's chunk of step rows (see the module docstring).

    Args:
        on_retire: called with ``(sf, si, sq, ss, n)`` before the rows leave (the compiled
            facade patches splits from its cost memo there; the reference costs them).
        sink: called with the compact columns of each retired chunk (the recorder).
    """

    def __init__(self, sink: Any, on_retire: Any = None) -> None:
        self._sink = sink
        self._on_retire = on_retire
        self._cap_next = FIRST_CHUNK_ROWS
        self.n = 0  # rows filled (the reference's counter; the kernel keeps its own in ri)
        self._alloc()

    def _alloc(self) -> None:
        # Widest columns first, so each view is aligned.
        c = self._cap_next
        buf = _mapped_bytes(c * (8 * L.SF_NUM + 4 * L.SI_NUM + 8 * L.SQ_NUM + 4 * L.SS_NUM))
        a = 8 * L.SF_NUM * c
        b = a + 8 * L.SQ_NUM * c
        d = b + 4 * L.SI_NUM * c
        self.sf = buf[:a].view(np.float64).reshape(L.SF_NUM, c)
        self.sq = buf[a:b].view(np.int64).reshape(L.SQ_NUM, c)
        self.si = buf[b:d].view(np.int32).reshape(L.SI_NUM, c)
        self.ss = buf[d:].view(np.float32).reshape(L.SS_NUM, c)
        self.capacity = c
        self._cap_next = min(2 * c, MAX_CHUNK_ROWS)

    def retire(self, n: int) -> None:
        """Hand the first ``n`` rows over and start again at row 0 (a larger chunk while
        below the cap, else the same one: nothing keeps a view of it)."""
        if n:
            if self._on_retire is not None:
                self._on_retire(self.sf, self.si, self.sq, self.ss, n)
            self._sink(compact(self.sf, self.si, self.sq, self.ss, n))
        self.n = 0
        if self._cap_next > self.capacity:
            self._alloc()

    def release(self) -> None:
        """Drop the chunk and the callbacks (after the last :meth:`retire`): the callbacks
        hold the replica (its KV pool, the per-request kernel rows), which can go then."""
        self.sf = self.si = self.sq = self.ss = None  # type: ignore[assignment]
        self._on_retire = self._sink = None

    def append(
        self,
        *,
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
        """One step row (the reference replica): ``inputs`` are the cost model's arguments in
        :meth:`StepCostModel.cost` order, ``mem`` the KV manager's ``stats``."""
        row = self.n
        sf, si, sq = self.sf, self.si, self.sq
        p, pairs, kv, samp, ndec, ctx = inputs
        sf[L.SF_T, row] = t_s
        sf[L.SF_D, row] = duration_s
        sf[L.SF_A, row] = pairs
        sf[L.SF_SWAP, row] = swap_s
        si[L.SI_RUN, row] = num_running
        si[L.SI_NPF, row] = num_prefill_seqs
        si[L.SI_PT, row] = prefill_tokens
        si[L.SI_DT, row] = decode_tokens
        si[L.SI_Q, row] = queue_len
        si[L.SI_PRE, row] = num_preemptions
        si[L.SI_TOK, row] = mem.token_slots
        si[L.SI_RES, row] = mem.reserved_slots
        si[L.SI_INT, row] = mem.internal_frag_slots
        si[L.SI_EXT, row] = mem.external_frag_slots
        si[L.SI_CACHED, row] = mem.cached_slots
        si[L.SI_FREE, row] = mem.free_slots
        si[L.SI_SAMP, row] = samp
        si[L.SI_DSEQ, row] = ndec
        sq[L.SQ_KV, row] = kv
        sq[L.SQ_CTX, row] = ctx
        sq[L.SQ_PQ, row] = mem.prefix_query_tokens
        sq[L.SQ_HIT, row] = mem.prefix_hit_tokens
        if p != prefill_tokens:
            raise ValueError(f"step row: prefill_tokens {prefill_tokens} but the cost's {p}")
        self.n = row + 1
        if self.n == self.capacity:
            self.retire(self.n)


def cost_split_into(cost: Any, sf: Any, si: Any, sq: Any, ss: Any, n: int) -> None:
    """The split by bound of the first ``n`` rows, from ``cost.cost`` on arrays of the rows'
    own inputs (the reference replica; the compiled loop records it as each step commits,
    ``_cost.scale_split``: the same float64 operations), into ``ss[:, :n]``."""
    def f(a: Any) -> npt.NDArray[np.float64]:
        return np.asarray(a[:n], dtype=np.float64)

    c = cost.cost(
        prefill_tokens=f(si[L.SI_PT]),
        prefill_attn_pairs=f(sf[L.SF_A]),
        prefill_kv_tokens=f(sq[L.SQ_KV]),
        num_prefill_seqs=f(si[L.SI_SAMP]),
        num_decode_seqs=f(si[L.SI_DSEQ]),
        decode_ctx_tokens=f(sq[L.SQ_CTX]),
    )
    fields = ("compute_s", "weight_read_s", "kv_read_s", "comm_s", "overhead_s")
    ss[:, :n] = scale_split([getattr(c, k) for k in fields], f(sf[L.SF_SWAP]), f(sf[L.SF_D]))


def scale_split(parts_s: list[Any], swap_s: npt.NDArray[np.float64],
                duration_s: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    """The split by bound, ``[5, n]`` float32: the cost model's five parts (arrays or
    scalars) with the swap time added to communication, scaled to each step's duration."""
    n = len(duration_s)
    parts = np.stack([np.asarray(p, dtype=np.float64) * np.ones(n) for p in parts_s], axis=1)
    parts[:, 3] += swap_s
    # Left to right, spelled out: the compiled loop adds the parts in this order as each
    # step commits (``simulator.compiled._cost.scale_split``).
    total = parts[:, 0] + parts[:, 1]
    for j in range(2, len(parts_s)):
        total += parts[:, j]
    total[total == 0] = 1.0
    return (parts * (duration_s / total)[:, None]).T.astype(np.float32)


__all__ = ["FIRST_CHUNK_ROWS", "INT_COLUMNS", "MAX_CHUNK_ROWS", "StepRows", "compact", "cost_split_into", "first_start", "scale_split", "step_starts"]
