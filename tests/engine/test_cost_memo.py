"""The compiled loop's step-cost memo (``simulator.compiled._cost`` behind ``CostMemo``): every
shape stored is found with its exact time after the table grows, a shape not stored is a
miss (the kernel's NEED_COST), and the split by bound is filled in one batch."""

from __future__ import annotations

import numpy as np

from servesim.simulator.compiled import _cost
from servesim.simulator.compiled.replica import FIRST_MEMO_ROWS, CostMemo
from tests.engine.helpers import LinearCost

NO_PACK = np.zeros(0)


def test_memo_finds_every_shape_after_growing_and_misses_the_others() -> None:
    cost = LinearCost(1.0, 0.125, 0.25)
    memo = CostMemo(cost)
    # Prefill shapes (the full call) and decode-only ones (p = 0), many sharing a home row.
    shapes = [(p, p * (p + 1) / 2.0, p, 1, d, 9 * d) for p in range(0, 400, 13) for d in range(1, 70)]
    for sh in shapes:
        memo.fill(*sh)
    assert memo.num_entries == len(shapes) and len(memo.table) > FIRST_MEMO_ROWS
    assert 2 * memo.num_entries <= len(memo.table)
    out = np.empty(_cost.COST_WORDS)
    for p, pairs, kv, samp, ndec, ctx in shapes:
        assert _cost.step_cost(NO_PACK, memo.table, float(p), pairs, float(kv), float(samp), float(ndec),
                               float(ctx), out)
        assert out[0] == cost.step_time_s(prefill_tokens=p, num_decode_seqs=ndec)
        assert np.isnan(out[1:6]).all()  # the split is pending until resolve()
    # Same counts, other attention pairs: another shape.
    assert not _cost.step_cost(NO_PACK, memo.table, 13.0, 1.0, 13.0, 1.0, 1.0, 9.0, out)
    memo.resolve()
    for p, pairs, kv, samp, ndec, ctx in shapes[::17]:
        assert _cost.step_cost(NO_PACK, memo.table, float(p), pairs, float(kv), float(samp), float(ndec),
                               float(ctx), out)
        c = cost.cost(prefill_tokens=np.array([float(p)]), prefill_attn_pairs=np.array([pairs]),
                      prefill_kv_tokens=np.array([float(kv)]), num_prefill_seqs=np.array([float(samp)]),
                      num_decode_seqs=np.array([float(ndec)]), decode_ctx_tokens=np.array([float(ctx)]))
        want = [float(np.asarray(getattr(c, f))[0]) for f in
                ("compute_s", "weight_read_s", "kv_read_s", "comm_s", "overhead_s")]
        assert out[1:6].tolist() == want


def test_scale_split_is_the_recorders_scaling() -> None:
    """The kernel's float32 split equals ``steprows.scale_split`` (the reference replica's
    rows) on the same parts."""
    from servesim.simulator.steprows import scale_split

    rng = np.random.default_rng(5)
    n = 2000
    parts = rng.random((n, 5)) * 10.0 ** rng.integers(-9, -1, (n, 5))
    parts[::50] = 0.0  # a zero total scales by 1
    dur = rng.random(n) * 0.1
    swap = np.where(rng.random(n) < 0.3, rng.random(n) * 1e-3, 0.0)
    want = scale_split([parts[:, j] for j in range(5)], swap, dur)
    got = np.empty((5, n), np.float32)
    for i in range(n):
        _cost.scale_split(np.ascontiguousarray(parts[i]), 0, swap[i], dur[i], got, i)
    assert got.tobytes() == np.ascontiguousarray(want).tobytes()
