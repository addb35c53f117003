"""The benchmark's trace driver (``_blocks.run_trace``) against the pure-Python twin.

``run_trace`` spells out the paged work of an op (admit without page keys, a single-seq
grow, release without tree work) instead of calling the kernels the facade uses, so it is
checked here on small pools under memory pressure: every op's result, and afterwards every
block table, the free stack, ``MemoryStats`` and the invariants.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from reference.kv_cache import make_ref

from servesim.simulator.memory import make_kv_manager
from servesim.simulator.memory.kernels import _blocks

MAX_SEQS = 8
MAX_SEQ_LEN = 48
PAGE = 4
PAGES = MAX_SEQ_LEN // PAGE


def make_trace(num_ops: int, seed: int):
    rng = np.random.default_rng(seed)
    op = rng.choice(3, size=num_ops, p=[0.2, 0.65, 0.15])
    seq = rng.integers(0, MAX_SEQS, size=num_ops)
    arg = np.where(op == 0, rng.integers(1, MAX_SEQ_LEN, size=num_ops), rng.integers(1, 9, num_ops))
    keys = []
    key_off = np.zeros(num_ops, dtype=np.int64)
    last = np.zeros(MAX_SEQS, dtype=np.int64)
    for i in range(num_ops):
        if op[i] == 0:  # a fresh identity whose first pages come from one of 3 families
            ids = np.arange(PAGES, dtype=np.int64) + 1_000_000 * (len(keys) + 1)
            shared = int(rng.integers(0, PAGES + 1))
            ids[:shared] = np.arange(shared) + 1000 * int(rng.integers(0, 3))
            last[seq[i]] = len(keys) * PAGES
            keys.append(ids)
        key_off[i] = last[seq[i]]
    ops = np.stack([op, seq, arg, key_off, np.full(num_ops, PAGES)], axis=1).astype(np.int64)
    return ops, np.concatenate(keys)


def run_twin(ref, ops, keys, paged: bool, apc: bool = False) -> np.ndarray:
    """The trace through the twin's API; ``apc``: a successful grow caches the seq's full
    pages (``cache_computed``), as the APC driver does."""
    out = np.zeros(len(ops), dtype=np.int64)
    live_ids = {}
    for i, (op, s, arg, k0, kn) in enumerate(ops.tolist()):
        ids = None if paged else keys[k0 : k0 + kn]
        if op == 0:
            if ref.is_live(s):
                out[i] = -2
                continue
            hit = ref.admit(
                s, prompt_tokens=arg, final_tokens=arg, block_ids=ids, block_tokens=PAGE, now_s=i
            )
            out[i] = -1 if hit is None else hit // PAGE
            if hit is not None:
                assert ref.grow([s], [arg], now_s=float(i))
                live_ids[s] = ids
                if apc:
                    ref.cache_computed(
                        s, now_s=float(i), block_ids=ids, block_tokens=PAGE, total_tokens=arg
                    )
        elif not ref.is_live(s):
            out[i] = -2
        elif op == 1:
            total = min(ref.num_tokens(s) + arg, MAX_SEQ_LEN)
            ok = ref.grow([s], [total], now_s=float(i))
            out[i] = 0 if ok else 1
            if ok and apc:
                ref.cache_computed(
                    s, now_s=float(i), block_ids=live_ids[s], block_tokens=PAGE, total_tokens=total
                )
        else:
            n = ref.num_tokens(s)
            ref.free(s, now_s=float(i), block_ids=ids, block_tokens=PAGE, total_tokens=n)
    return out


@pytest.mark.parametrize("kind", ["paged", "radix", "paged-apc"])
@pytest.mark.parametrize("capacity", [64, 160])
@pytest.mark.parametrize("seed", [0, 1])
def test_run_trace_matches_twin(kind: str, capacity: int, seed: int) -> None:
    apc = kind == "paged-apc"
    kind = "paged" if apc else kind
    cfg = {
        "capacity_tokens": capacity,
        "block_size_tokens": PAGE,
        "max_seqs": MAX_SEQS,
        "max_seq_len": MAX_SEQ_LEN,
        "prefix_caching": apc,
    }
    ops, keys = make_trace(3000, seed)
    paged = kind == "paged" and not apc
    if paged:
        ops[:, 4] = 0  # no prompt identity: plain paging
    fast = make_kv_manager(kind, **cfg)
    ref = make_ref(kind, **cfg)
    got = np.zeros(len(ops), dtype=np.int64)
    _blocks.run_trace(fast._arena, ops, keys, got)
    want = run_twin(ref, ops, keys, paged, apc)
    np.testing.assert_array_equal(got, want)
    assert (got == 1).any() and (got == -1).any()  # memory pressure was reached
    if not paged:
        assert (got > 0).any()  # prefix hits
    fast.check_invariants()
    for s in range(MAX_SEQS):
        assert fast.is_live(s) == ref.is_live(s)
        if ref.is_live(s):
            assert list(fast.block_table(s)) == list(ref.block_table(s))
            assert fast.num_tokens(s) == ref.num_tokens(s)
    assert fast.free_block_ids == ref.free_block_ids
    # the prefix hit/query counters are the facade's (run_trace bypasses it)
    facade_only = {"prefix_query_tokens": 0, "prefix_hit_tokens": 0}
    assert replace(fast.stats(), **facade_only) == replace(ref.stats(), **facade_only)
    if not paged:
        assert fast.num_tree_nodes == ref.num_tree_nodes
        assert fast.tree_tokens == ref.tree_tokens


@pytest.mark.parametrize("capacity", [64, 160])
def test_prefix_caching_without_ids_is_plain_paging(capacity: int) -> None:
    """No prefix identity, nothing to hit: paged with prefix caching makes the same decisions
    and memory split as plain paged (only the free-block order differs: queue vs stack)."""
    cfg = {
        "capacity_tokens": capacity,
        "block_size_tokens": PAGE,
        "max_seqs": MAX_SEQS,
        "max_seq_len": MAX_SEQ_LEN,
    }
    ops, keys = make_trace(3000, 0)
    ops[:, 4] = 0
    results = []
    for pc in (False, True):
        m = make_kv_manager("paged", prefix_caching=pc, **cfg)
        got = np.zeros(len(ops), dtype=np.int64)
        _blocks.run_trace(m._arena, ops, keys, got)
        m.check_invariants()
        results.append((got, m.stats(), [m.num_tokens(s) for s in range(MAX_SEQS)]))
    assert (results[0][0] == 1).any()  # memory pressure was reached
    np.testing.assert_array_equal(results[0][0], results[1][0])
    assert results[0][1:] == results[1][1:]
