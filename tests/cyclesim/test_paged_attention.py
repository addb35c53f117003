"""Functional twin: the block-table walk with online softmax equals dense attention."""

from __future__ import annotations

import numpy as np
import pytest

from servesim.hwmodels.cyclesim.paged_attention import (
    dense_attention_decode,
    paged_attention_decode,
    physical_slots,
)
from servesim.hwmodels.errors import ConfigError


@pytest.mark.parametrize(("block_size", "heads", "kv_heads"), [(1, 4, 4), (4, 8, 2), (16, 6, 1), (7, 4, 2)])
def test_paged_equals_dense(block_size: int, heads: int, kv_heads: int) -> None:
    rng = np.random.default_rng(block_size)
    batch, d, max_tokens = 3, 16, 37
    lens = np.array([37, 1, 20], dtype=np.int64)
    max_blocks = -(-max_tokens // block_size)
    num_blocks = batch * max_blocks + 5
    # Random, shuffled physical blocks: the walk must follow the table, not memory order.
    perm = rng.permutation(num_blocks)[: batch * max_blocks].reshape(batch, max_blocks).astype(np.int32)
    k = rng.standard_normal((batch, max_tokens, kv_heads, d)) * 3.0
    v = rng.standard_normal((batch, max_tokens, kv_heads, d))
    q = rng.standard_normal((batch, heads, d)) * 3.0
    k_pool = np.zeros((num_blocks * block_size, kv_heads, d))
    v_pool = np.zeros_like(k_pool)
    for b in range(batch):
        slots = physical_slots(perm[b], int(lens[b]), block_size)
        assert slots.tolist() == [int(perm[b, i // block_size]) * block_size + i % block_size for i in range(lens[b])]
        k_pool[slots] = k[b, : lens[b]]
        v_pool[slots] = v[b, : lens[b]]
    got = paged_attention_decode(q, k_pool, v_pool, perm, lens, block_size)
    want = dense_attention_decode(q, k, v, lens)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_online_softmax_is_stable_for_large_logits() -> None:
    """Scores of ~1e4 overflow a naive exp; the running max keeps the result finite."""
    q = np.full((1, 1, 4), 100.0)
    k = np.full((1, 8, 1, 4), 50.0)
    k[0, 3] = 60.0
    v = np.arange(32, dtype=np.float64).reshape(1, 8, 1, 4)
    lens = np.array([8])
    bt = np.array([[1, 0]], dtype=np.int32)
    k_pool = np.zeros((8, 1, 4))
    v_pool = np.zeros((8, 1, 4))
    for i in range(8):
        k_pool[bt[0, i // 4] * 4 + i % 4] = k[0, i]
        v_pool[bt[0, i // 4] * 4 + i % 4] = v[0, i]
    got = paged_attention_decode(q, k_pool, v_pool, bt, lens, 4)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, dense_attention_decode(q, k, v, lens), atol=1e-5)
    np.testing.assert_allclose(got[0, 0], v[0, 3, 0], atol=1e-5)  # the max key dominates


def test_missing_block_is_an_error() -> None:
    with pytest.raises(ConfigError):
        paged_attention_decode(np.zeros((1, 1, 2)), np.zeros((4, 1, 2)), np.zeros((4, 1, 2)),
                               np.array([[0, -1]], dtype=np.int32), np.array([3]), 2)
