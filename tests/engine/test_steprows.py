"""The compact step-row chunks (``simulator.steprows``): lossless for every column, start
times rebuilt bit for bit from busy runs, narrow integer dtypes and constant columns."""

from __future__ import annotations

import numpy as np
import pytest

from servesim.simulator import steprows as S
from servesim.simulator.compiled import _loop as L


def _chunk(c: int, seed: int, gap_p: float):
    rng = np.random.default_rng(seed)
    sf = np.zeros((L.SF_NUM, c))
    si = np.zeros((L.SI_NUM, c), np.int32)
    sq = np.zeros((L.SQ_NUM, c), np.int64)
    ss = rng.random((L.SS_NUM, c)).astype(np.float32)
    d = rng.random(c) * 10.0 ** rng.integers(-5, 0, c)
    t = np.empty(c)
    t[0] = 1234.5678
    for i in range(1, c):
        t[i] = t[i - 1] + d[i - 1] + (rng.random() if rng.random() < gap_p else 0.0)
    sf[L.SF_T], sf[L.SF_D] = t, d
    si[L.SI_RUN] = rng.integers(0, 300, c)
    si[L.SI_TOK] = rng.integers(0, 2**31 - 1, c)
    si[L.SI_Q] = rng.integers(-3, 100, c)
    sq[L.SQ_PQ] = 7
    sq[L.SQ_HIT] = rng.integers(0, 2**40, c)
    ss[L.SS_COMM] = 0.0  # one GPU: no communication (stored as one float32)
    si[L.SI_PT, ::50] = rng.integers(1, 9000, len(range(0, c, 50)))  # prefill steps: sparse
    si[L.SI_INT] = rng.integers(0, 16, c)
    return sf, si, sq, ss


def _memory_chunk(c: int, seed: int):
    """A chunk whose memory columns sum to a constant capacity (free slots stored as the rest)."""
    sf, si, sq, ss = _chunk(c, seed, 0.0)
    si[L.SI_TOK] = np.random.default_rng(seed).integers(0, 2**20, c)
    si[L.SI_CACHED] = 64
    si[L.SI_FREE] = 2**21 - si[L.SI_TOK] - si[L.SI_INT] - si[L.SI_CACHED]
    return sf, si, sq, ss


def _arrays(cols):
    for v in cols.values():
        if isinstance(v, np.ndarray):
            yield v
        elif isinstance(v, (list, tuple)):
            yield from (a for a in v if isinstance(a, np.ndarray))


def _assert_lossless(cols, sf, si, sq, ss, n):
    # Every stored array is an aligned view of its chunk's buffer (widest dtypes first).
    assert all(a.flags.aligned and a.ctypes.data % a.itemsize == 0 for a in _arrays(cols))
    assert S.step_starts(cols).tobytes() == sf[L.SF_T, :n].tobytes()
    assert S.first_start(cols) == sf[L.SF_T, 0]
    assert cols["duration_s"].tobytes() == sf[L.SF_D, :n].tobytes()
    for j in range(L.SS_NUM):
        assert S.split_part(cols, j).tobytes() == np.ascontiguousarray(ss[j, :n]).tobytes(), j
    blocks = {"si": si, "sq": sq}
    for name, block, row in S.INT_COLUMNS:
        want = blocks[block][row, :n]
        got = S.column(cols, name, np.int64)
        assert got.dtype == np.int64 and np.array_equal(got, want.astype(np.int64)), name


@pytest.mark.parametrize("gap_p", [0.0, 0.02, 0.9])
@pytest.mark.parametrize("n", [1, 2, 3, 500])
def test_compact_is_lossless(n: int, gap_p: float) -> None:
    sf, si, sq, ss = _chunk(500, n, gap_p)
    cols = S.compact(sf, si, sq, ss, n)
    _assert_lossless(cols, sf, si, sq, ss, n)
    assert isinstance(cols["split"][L.SS_COMM], np.float32)
    if n > 2:
        assert cols["num_running"].dtype == np.int16
        assert cols["queue_len"].dtype == np.int8
        assert cols["kv_token_state_slots"].dtype == np.int32
        assert cols["prefix_hit_tokens"].dtype == np.int64
        assert cols["prefix_query_tokens"] == 7
    if n == 500:
        assert isinstance(cols["prefill_tokens"], S.Sparse) and len(cols["prefill_tokens"].rows) == 10
        assert not isinstance(cols["kv_free_slots"], S.Rest)  # tokens up to 2**31: no constant sum
        # Busy runs store their first starts only; mostly idle rows are stored plainly.
        assert ("t_s" in cols) == (gap_p == 0.9)


@pytest.mark.parametrize("n", [1, 3, 500])
def test_free_slots_stored_as_the_rest_of_the_capacity(n: int) -> None:
    sf, si, sq, ss = _memory_chunk(500, n)
    cols = S.compact(sf, si, sq, ss, n)
    _assert_lossless(cols, sf, si, sq, ss, n)
    if n > 1:
        assert cols["kv_free_slots"] == S.Rest(2**21)


def test_split_parts_kept_bit_for_bit() -> None:
    # Equal as floats is not enough to store one value: signed zeros and NaNs stay apart.
    sf, si, sq, ss = _chunk(64, 1, 0.0)
    ss[L.SS_COMM] = 0.0
    ss[L.SS_COMM, 5] = -0.0
    ss[L.SS_OVER] = np.float32("nan")
    cols = S.compact(sf, si, sq, ss, 64)
    _assert_lossless(cols, sf, si, sq, ss, 64)
    assert not isinstance(cols["split"][L.SS_COMM], np.float32)
    assert isinstance(cols["split"][L.SS_OVER], np.float32)


def test_views_stay_aligned_with_an_odd_float32_run() -> None:
    # Three float32 parts of 7 rows (84 bytes) before the int64 prefix hits: ordered by width.
    sf, si, sq, ss = _chunk(7, 3, 0.0)
    ss[L.SS_OVER] = 1.0
    cols = S.compact(sf, si, sq, ss, 7)
    _assert_lossless(cols, sf, si, sq, ss, 7)
    assert cols["prefix_hit_tokens"].dtype == np.int64


def test_rows_retire_into_the_sink_and_grow_to_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(S, "FIRST_CHUNK_ROWS", 4)
    monkeypatch.setattr(S, "MAX_CHUNK_ROWS", 8)
    got = []
    rows = S.StepRows(got.append)
    caps = []
    for i in range(30):
        caps.append(rows.capacity)
        rows.sf[L.SF_T, rows.n] = float(i)
        rows.sf[L.SF_D, rows.n] = 1.0
        rows.n += 1
        if rows.n == rows.capacity:
            rows.retire(rows.n)
    rows.retire(rows.n)
    assert max(caps) == 8 and caps[0] == 4
    starts = np.concatenate([S.step_starts(c) for c in got])
    assert starts.tolist() == [float(i) for i in range(30)]
