"""Exact-order examples on tiny pools (block size 4); expected ids worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from servesim.hwmodels.rng import make_rng
from servesim.simulator.errors import ConfigError
from servesim.simulator.memory import make_kv_manager, phys_slot


def paged(num_blocks: int = 16, **kw):
    return make_kv_manager(
        "paged",
        capacity_tokens=4 * num_blocks,
        block_size_tokens=4,
        max_seqs=8,
        max_seq_len=64,
        watermark_frac=kw.pop("watermark_frac", 0.0),
        **kw,
    )


def radix(num_blocks: int = 8):
    return make_kv_manager(
        "radix",
        capacity_tokens=4 * num_blocks,
        block_size_tokens=4,
        max_seqs=8,
        max_seq_len=64,
        watermark_frac=0.0,
    )


def start(m, seq: int, prompt: int, *, ids=None, bt: int = 4, now_s: float = 0.0):
    """Admit and grow to the prompt, as the engine does; return the cached tokens."""
    hit = m.admit(
        seq,
        prompt_tokens=prompt,
        final_tokens=prompt + 8,
        block_ids=ids,
        block_tokens=bt,
        now_s=now_s,
    )
    assert hit is not None
    assert m.grow([seq], [prompt], now_s=now_s)
    m.check_invariants()
    return hit


def test_paged_ids_reuse_fork_and_copy_on_write() -> None:
    """Blocks are handed out 0, 1, 2...; a freed table is reused head first; CoW on write."""
    m = paged()
    start(m, 0, 10)
    assert m.block_table(0).tolist() == [0, 1, 2]
    start(m, 1, 5)
    assert m.block_table(1).tolist() == [3, 4]
    m.free(0, now_s=1.0)
    assert m.free_block_ids == [0, 1, 2, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
    start(m, 2, 4)
    assert m.block_table(2).tolist() == [0]
    assert m.grow([1], [9], now_s=2.0)
    assert m.block_table(1).tolist() == [3, 4, 1]
    assert m.fork(1, 3, now_s=2.0)
    assert m.block_table(3).tolist() == [3, 4, 1]
    # both write their 10th token into shared block 1: seq 1 copies (to 2), seq 3 keeps 1
    assert m.slots_needed([1, 3], [10, 10]) == 4
    assert m.grow(np.array([1, 3]), np.array([10, 10]), now_s=3.0)
    assert m.block_table(1).tolist() == [3, 4, 2]
    assert m.block_table(3).tolist() == [3, 4, 1]
    m.check_invariants()
    s = m.stats()
    assert (s.token_slots, s.internal_frag_slots, s.free_slots, s.num_cow_copies) == (16, 4, 44, 1)
    assert phys_slot(m.block_table(1), 9, 4) == 2 * 4 + 1
    np.testing.assert_array_equal(
        phys_slot(m.block_table(1), np.arange(5, 10), 4), [17, 18, 19, 8, 9]
    )


def test_paged_watermark_and_no_room() -> None:
    """admit keeps the watermark free; grow ignores it; no room is False with no change."""
    m = paged(num_blocks=10, watermark_frac=0.2)  # 2 watermark blocks
    assert m.admit(0, prompt_tokens=33, final_tokens=40, now_s=0.0) is None  # 9 + 2 > 10
    start(m, 0, 32)  # 8 blocks, leaves exactly 2
    assert m.admit(1, prompt_tokens=1, final_tokens=2, now_s=0.0) is None
    assert m.grow([0], [40], now_s=0.0)  # uses the watermark blocks
    assert not m.grow([0], [41], now_s=0.0)
    assert m.num_tokens(0) == 40 and m.num_free_slots == 0
    # fits_ever: the whole request (prompt + output) fits an empty cache with the watermark.
    assert m.fits_ever(30, 32) and not m.fits_ever(32, 40) and not m.fits_ever(33, 33)
    assert not m.fits_ever(10, 65)


def test_radix_split_share_and_lru_eviction_order() -> None:
    """Leaves are evicted least recently used first; a locked prefix is never evicted."""
    m = radix()
    for t, first in enumerate((100, 200, 300)):
        start(m, 0, 5, ids=[first, first + 1], now_s=2.0 * t)
        m.free(0, now_s=2.0 * t + 1, block_ids=[first, first + 1], block_tokens=4, total_tokens=5)
    # leaves [100]@t=1 -> block 0, [200]@t=3 -> block 1, [300]@t=5 -> block 2
    assert m.num_tree_nodes == 3 and m.stats().cached_slots == 12
    assert m.free_block_ids == [3, 4, 5, 6, 7]
    assert m.match_prefix(np.array([100, 7]), 4, 5) == 4
    assert start(m, 1, 5, ids=[100, 102], now_s=6.0) == 4  # shares block 0
    assert m.block_table(1).tolist() == [0, 3]
    m.free(1, now_s=7.0, block_ids=[100, 102], block_tokens=4, total_tokens=5)  # touches [100]
    assert m.free_block_ids == [3, 4, 5, 6, 7]
    # 7 blocks needed, 5 free: evict [200] (t=3), then [300] (t=5); [100] (t=7) stays
    start(m, 2, 28, ids=list(range(400, 407)), now_s=8.0)
    assert m.block_table(2).tolist() == [2, 1, 3, 4, 5, 6, 7]
    s = m.stats()
    assert (s.evicted_tokens, s.cached_slots, s.free_slots, s.token_slots) == (8, 4, 0, 28)
    # [100] is cached but would have to be locked by the new request: no room
    assert (
        m.admit(3, prompt_tokens=5, final_tokens=6, block_ids=[100, 5], block_tokens=4, now_s=9.0)
        is None
    )
    s = m.stats()
    assert (s.prefix_query_tokens, s.prefix_hit_tokens) == (5 * 4 + 28, 4)
    m.check_invariants()


def test_radix_partial_match_splits_node() -> None:
    m = radix()
    start(m, 0, 12, ids=[10, 11, 12], now_s=0.0)
    m.free(0, now_s=1.0, block_ids=[10, 11, 12], block_tokens=4, total_tokens=12)
    assert m.num_tree_nodes == 1
    assert start(m, 1, 12, ids=[10, 11, 20], now_s=2.0) == 8
    assert m.num_tree_nodes == 2  # [10, 11] -> [12]
    assert m.block_table(1).tolist() == [0, 1, 3]
    # the full-prompt hit is capped so one token is still computed
    assert m.match_prefix(np.array([10, 11, 12]), 4, 12) == 8
    assert m.match_prefix(np.array([10, 11, 12]), 4, 13) == 12
    m.check_invariants()


def test_contiguous_first_fit_best_fit_and_fragmentation() -> None:
    def make(placement: str):
        m = make_kv_manager(
            "contiguous",
            capacity_tokens=100,
            max_seqs=8,
            max_seq_len=64,
            reservation="oracle",
            placement=placement,
        )
        for seq, final in enumerate((30, 20, 40)):
            assert m.admit(seq, prompt_tokens=final, final_tokens=final, now_s=0.0) == 0
        m.free(1, now_s=1.0)
        m.free(0, now_s=1.0)
        return m

    m = make("first_fit")
    assert m.free_extents == [(0, 50), (90, 10)]
    assert m.admit(3, prompt_tokens=5, final_tokens=45, now_s=2.0) == 0
    assert m.admit(4, prompt_tokens=5, final_tokens=10, now_s=2.0) == 0
    assert m.region(4) == (90, 10)
    assert m.free_extents == [(45, 5)]
    assert m.stats(min_pending_slots=6).external_frag_slots == 5
    b = make("best_fit")
    assert b.admit(3, prompt_tokens=5, final_tokens=8, now_s=2.0) == 0
    assert b.region(3) == (90, 8)
    m.check_invariants()
    b.check_invariants()


@pytest.mark.parametrize(
    ("reservation", "final", "reserved", "internal"),
    [("oracle", 30, 20, 0), ("pow2", 20, 10, 12), ("max", 20, 10, 44)],
)
def test_contiguous_reservation_categories(reservation, final, reserved, internal) -> None:
    m = make_kv_manager(
        "contiguous", capacity_tokens=100, max_seqs=2, max_seq_len=64, reservation=reservation
    )
    assert m.admit(0, prompt_tokens=10, final_tokens=final, now_s=0.0) == 0
    assert m.grow([0], [10], now_s=0.0)
    s = m.stats()
    assert (s.token_slots, s.reserved_slots, s.internal_frag_slots) == (10, reserved, internal)
    assert not m.grow([0], [m.reservation_slots(10, final) + 1], now_s=0.0)


def test_paged_waste_closed_form() -> None:
    """Final waste = sum over live requests of (B - len mod B) mod B, and <= N x B."""
    rng = make_rng(0, "test")
    for b in (1, 4, 16):
        m = make_kv_manager(
            "paged",
            capacity_tokens=4096,
            block_size_tokens=b,
            max_seqs=32,
            max_seq_len=128,
            watermark_frac=0.0,
        )
        lens = rng.integers(1, 120, size=32)
        for s, n in enumerate(lens):
            start(m, s, int(n))
        for s in range(0, 32, 3):
            m.free(s, now_s=1.0)
        live = [int(n) for s, n in enumerate(lens) if s % 3]
        waste = m.stats().internal_frag_slots
        assert waste == sum((b - n % b) % b for n in live)
        assert waste <= len(live) * b


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"kind": "pagd"}, "kind"),
        ({"kind": "paged", "block_size_tokens": 512}, "block_size_tokens"),
        ({"kind": "paged", "block_size_tokens": 0}, "block_size_tokens"),
        ({"kind": "contiguous", "reservation": "min"}, "reservation"),
        ({"kind": "contiguous", "placement": "worst_fit"}, "placement"),
        ({"kind": "radix", "watermark_frac": 1.5}, "watermark_frac"),
        ({"kind": "paged", "capacity_tokens": 0}, "capacity_tokens"),
    ],
)
def test_factory_rejects_bad_values(kwargs, field) -> None:
    args = {"capacity_tokens": 64, "max_seqs": 4, "max_seq_len": 32, **kwargs}
    with pytest.raises(ConfigError, match=field):
        make_kv_manager(args.pop("kind"), **args)


def test_misuse_raises() -> None:
    m = paged()
    start(m, 0, 4)
    with pytest.raises(ValueError, match="already live"):
        m.admit(0, prompt_tokens=4, final_tokens=4, now_s=0.0)
    with pytest.raises(ValueError, match="not live"):
        m.grow([1], [4], now_s=0.0)
    with pytest.raises(ValueError, match="max_seq_len"):
        m.grow([0], [65], now_s=0.0)
