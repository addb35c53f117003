"""vLLM and SGLang KV-cache unit tests, ported scenario for scenario onto servesim's managers.

Each test names the peer test it ports (repository, file, function). Peers' sources were read
from the stored public snapshots: vLLM ``tests/v1/core/test_prefix_caching.py`` in the v1
version whose free queue appends every freed block (expected order ``[6, 7, 8, 9, 10, 4, 5,
3, 2, 1]``; 2026 vLLM prepends blocks without a hash instead, see docs/kv-cache.md), vLLM v0
``tests/core/block/test_prefix_caching_block.py`` and SGLang
``test/srt/test_radix_cache_unit.py``. Everything goes through the managers' public API
(``admit``, ``grow``, ``cache_computed``, ``free``, ``match_prefix``, ``stats``).

Translation rules, the same for every port:

* vLLM v1 reserves block 0 as its null block, so a vLLM pool of ``n`` blocks is a servesim
  pool of ``n - 1`` blocks and vLLM block id ``k`` is servesim block id ``k - 1``.
* vLLM's ``allocate_slots`` both allocates and caches the full blocks it computed; here that
  is ``admit`` + ``grow`` + ``cache_computed`` (the engine's sequence).
* Token contents become prefix identity ids: one chained id per page (equal ids = equal
  contents up to the end of that page), as the workloads produce them.
* Hits never include the prompt's last token (vLLM's ``max_cache_hit_length =
  num_tokens - 1``, SGLang's ``match_prefix`` on ``input_ids[:-1]``): ``admit`` caps them at
  ``prompt_tokens - 1``.
"""

from __future__ import annotations

import numpy as np
import pytest

from servesim.simulator.memory import make_kv_manager

# ------------------------------------------------------------------------------ helpers

_CHAIN: dict[tuple, int] = {}


def chain(*pages: object) -> np.ndarray:
    """Chained identity ids of pages whose contents are ``pages`` (any hashable labels):
    page ``j``'s id stands for the contents of pages ``0..j``."""
    out = []
    for j in range(len(pages)):
        out.append(_CHAIN.setdefault(tuple(pages[: j + 1]), len(_CHAIN) + 1))
    return np.asarray(out, dtype=np.int64)


def apc(num_blocks: int, block: int = 16, **kw):
    """vLLM v1 ``KVCacheManager(make_kv_cache_config(block, num_blocks + 1),
    enable_caching=True)``: paged with prefix caching, no watermark (v1 has none)."""
    return make_kv_manager(
        "paged",
        capacity_tokens=block * num_blocks,
        block_size_tokens=block,
        max_seqs=8,
        max_seq_len=8192,
        watermark_frac=0.0,
        prefix_caching=kw.pop("prefix_caching", True),
    )


def radix(num_blocks: int, block: int = 16):
    return make_kv_manager(
        "radix",
        capacity_tokens=block * num_blocks,
        block_size_tokens=block,
        max_seqs=8,
        max_seq_len=8192,
        watermark_frac=0.0,
    )


def allocate(m, seq: int, prompt: int, ids, *, now_s: float = 0.0, block: int = 16):
    """vLLM's ``get_computed_blocks`` + ``allocate_slots`` for a whole prompt: admit, grow,
    cache the computed full blocks. Returns the cached tokens, or None (no room)."""
    hit = m.admit(
        seq,
        prompt_tokens=prompt,
        final_tokens=prompt + 1,
        block_ids=ids,
        block_tokens=block,
        now_s=now_s,
    )
    if hit is None:
        return None
    assert m.grow([seq], [prompt], now_s=now_s)
    m.cache_computed(seq, now_s=now_s, block_ids=ids, block_tokens=block, total_tokens=prompt)
    m.check_invariants()
    return hit


def release(m, seq: int, ids, *, now_s: float = 0.0, block: int = 16) -> None:
    m.free(seq, now_s=now_s, block_ids=ids, block_tokens=block, total_tokens=m.num_tokens(seq))
    m.check_invariants()


# ------------------------------------------------------------------------------ vLLM v1

COMMON = ("c0", "c1", "c2")


@pytest.mark.parametrize("kind", ["apc", "radix"])
def test_v1_prefill(kind: str) -> None:
    """vLLM tests/v1/core/test_prefix_caching.py::test_prefill.

    A second request with the same 48-token prefix arriving while the first still runs gets
    48 cached tokens and one new block (gap 1 of issue #16); the free queue's order after
    both finish, the hit on free cached blocks, and the eviction order are vLLM's (APC).
    Radix shares the running prefix the same way (its eviction order differs, below).
    """
    m = apc(10) if kind == "apc" else radix(10)
    ids0 = chain(*COMMON, "u0")
    assert allocate(m, 0, 55, ids0) == 0
    assert m.block_table(0).tolist() == [0, 1, 2, 3]  # vLLM [1, 2, 3, 4]
    assert m.tree_tokens == 48  # full blocks 0..2 cached, the partial block 3 not
    ids1 = chain(*COMMON, "u1")
    assert m.match_prefix(ids1, 16, 53) == 48
    assert allocate(m, 1, 53, ids1) == 48  # hit while req0 still runs
    assert m.block_table(1).tolist() == [0, 1, 2, 4]  # vLLM [1, 2, 3] + [5]
    assert m.stats().free_slots == 5 * 16
    release(m, 0, ids0, now_s=1.0)
    release(m, 1, ids1, now_s=1.0)
    assert m.num_free_slots == 10 * 16
    if kind == "radix":
        return
    # [unallocated (5..9)] [unique req0 (3)] [unique req1 (4)] [common (2, 1, 0)]
    assert m.free_block_ids == [5, 6, 7, 8, 9, 3, 4, 2, 1, 0]  # vLLM [6..10, 4, 5, 3, 2, 1]
    ids2 = chain(*COMMON, "u2")
    assert allocate(m, 2, 54, ids2, now_s=2.0) == 48  # hit on free cached blocks
    assert m.block_table(2).tolist() == [0, 1, 2, 5]  # vLLM [1, 2, 3] + [6]
    assert m.stats().free_slots + m.stats().cached_slots == 6 * 16
    release(m, 2, ids2, now_s=3.0)
    ids3 = chain(*(f"m{j}" for j in range(10)))
    assert allocate(m, 3, 160, ids3, now_s=4.0) == 0
    # This block order also checks the eviction order (vLLM [7..10, 4, 5, 6, 3, 2, 1]).
    assert m.block_table(3).tolist() == [6, 7, 8, 9, 3, 4, 5, 2, 1, 0]
    assert m.num_free_slots == 0
    assert m.stats().evicted_tokens == 3 * 16


def test_v1_decode() -> None:
    """vLLM tests/v1/core/test_prefix_caching.py::test_decode: decode appends into the
    partial block without caching it; once decode fills it, it is cached and the next
    block is not."""
    m = apc(10)
    ids = chain(*COMMON, "u", "d4")
    assert allocate(m, 0, 55, ids) == 0
    assert m.block_table(0).tolist() == [0, 1, 2, 3]
    assert m.grow([0], [59], now_s=1.0)  # 4 decode tokens, no new block
    m.cache_computed(0, now_s=1.0, block_ids=ids, block_tokens=16, total_tokens=59)
    assert m.block_table(0).tolist() == [0, 1, 2, 3]
    assert m.tree_tokens == 48  # the last block is not full: not cached
    assert m.grow([0], [78], now_s=2.0)  # 9 tokens fill block 3, 10 go to a new one
    m.cache_computed(0, now_s=2.0, block_ids=ids, block_tokens=16, total_tokens=78)
    assert m.block_table(0).tolist() == [0, 1, 2, 3, 4]
    assert m.tree_tokens == 64  # block 3 (now full) is cached, block 4 is not
    m.check_invariants()
    # ... and a later request whose prompt contains the generated tokens hits them
    assert m.match_prefix(ids, 16, 70) == 64


def test_v1_evict() -> None:
    """vLLM tests/v1/core/test_prefix_caching.py::test_evict."""
    m = apc(10)
    ids0 = chain(*(f"a{j}" for j in range(6)))
    assert allocate(m, 0, 5 * 16 + 7, ids0) == 0
    assert len(m.block_table(0)) == 6  # 5 full + 1 partial
    ids1 = chain(*(f"b{j}" for j in range(3)))
    assert allocate(m, 1, 3 * 16, ids1) == 0
    assert len(m.block_table(1)) == 3
    assert m.num_free_slots == 1 * 16  # 10 - (6 + 3)
    release(m, 0, ids0)
    release(m, 1, ids1)
    assert m.num_free_slots == 10 * 16
    assert m.free_block_ids == [9, 5, 4, 3, 2, 1, 0, 8, 7, 6]  # vLLM [10, 6, ..., 1, 9, 8, 7]
    # Touch the first 2 blocks.
    ids2 = chain("a0", "a1", "x")
    assert allocate(m, 2, 2 * 16 + 3, ids2) == 2 * 16
    assert m.block_table(2).tolist() == [0, 1, 9]  # vLLM [1, 2] + [10]
    assert m.num_free_slots == 7 * 16


def test_v1_hash_block_correct_reuse() -> None:
    """vLLM tests/v1/core/test_prefix_caching.py::test_hash_block_correct_reuse: a cached
    block reused as a new (partial) block loses its cached page."""
    m = apc(1)
    ids = chain("p0")
    assert allocate(m, 0, 16, ids) == 0
    release(m, 0, ids)
    assert m.tree_tokens == 16 and m.stats().cached_slots == 16
    assert allocate(m, 1, 15, chain("q0")) == 0
    assert m.block_table(1).tolist() == [0]
    assert m.tree_tokens == 0  # the hash metadata is gone
    assert m.stats().evicted_tokens == 16


def test_v1_computed_blocks_not_evicted() -> None:
    """vLLM tests/v1/core/test_prefix_caching.py::test_computed_blocks_not_evicted: a hit
    on a free cached block takes it out of the queue, so the allocation evicts another."""
    m = apc(2)
    ids0 = chain("r0")
    ids1 = chain("s0")
    assert allocate(m, 0, 16, ids0) == 0 and m.block_table(0).tolist() == [0]
    assert allocate(m, 1, 16, ids1) == 0 and m.block_table(1).tolist() == [1]
    release(m, 0, ids0)
    release(m, 1, ids1)
    ids2 = chain("r0", "t1")
    assert allocate(m, 2, 32, ids2) == 16
    assert m.block_table(2).tolist() == [0, 1]  # hit on block 0; block 1 evicted


def test_v1_basic_prefix_caching_disabled() -> None:
    """vLLM tests/v1/core/test_prefix_caching.py::test_basic_prefix_caching_disabled:
    ``prefix_caching=False`` never hits."""
    m = apc(4, block=4, prefix_caching=False)
    ids = chain(*(f"t{j}" for j in range(4)))
    assert allocate(m, 0, 10, ids, block=4) == 0
    assert len(m.block_table(0)) == 3
    release(m, 0, ids, block=4)
    assert allocate(m, 1, 16, ids, block=4) == 0  # shared prefix, no caching
    assert len(m.block_table(1)) == 4
    assert m.admit(2, prompt_tokens=4, final_tokens=5, now_s=0.0) is None  # no room
    assert m.tree_tokens == 0 and m.stats().prefix_hit_tokens == 0


def test_v1_cache_blocks() -> None:
    """vLLM tests/v1/core/test_prefix_caching.py::test_cache_blocks: caching 2 full blocks
    from the start, then a third that does not start at the beginning."""
    m = apc(5, block=4)
    ids = chain("b0", "b1", "b2", "b3")  # 14 tokens: 3 full blocks + [12, 13]
    hit = m.admit(0, prompt_tokens=14, final_tokens=15, block_ids=ids, block_tokens=4, now_s=0)
    assert hit == 0
    assert m.grow([0], [14], now_s=0.0)
    m.cache_computed(0, now_s=0.0, block_ids=ids, block_tokens=4, total_tokens=8)
    assert m.tree_tokens == 8 and m.num_tree_nodes == 2
    m.cache_computed(0, now_s=0.0, block_ids=ids, block_tokens=4, total_tokens=12)
    assert m.tree_tokens == 12 and m.num_tree_nodes == 3
    m.cache_computed(0, now_s=0.0, block_ids=ids, block_tokens=4, total_tokens=14)
    assert m.tree_tokens == 12  # the partial block [12, 13] is never cached
    m.check_invariants()


def test_v1_prefill_not_enough_free_blocks_with_computed_blocks() -> None:
    """vLLM tests/v1/core/test_prefix_caching.py::
    test_prefill_not_enough_free_blocks_with_computed_blocks: an admission refused for lack
    of blocks leaves the computed blocks' references and the queue untouched."""
    m = apc(10)
    ids0 = chain(*COMMON)
    assert allocate(m, 0, 48, ids0) == 0
    part0 = m.block_table(0).tolist()
    ids1 = chain(*COMMON, "d3", "d4", "d5")
    assert allocate(m, 1, 96, ids1) == 48
    part1 = m.block_table(1).tolist()
    assert part1[:3] == part0
    release(m, 1, ids1)
    ids2 = chain("x0", "x1")
    assert allocate(m, 2, 32, ids2) == 0
    assert m.num_free_slots == 5 * 16
    ids3 = chain(*COMMON, "d3", "d4", "d5", "e6", "e7", "e8")
    assert m.match_prefix(ids3, 16, 144) == 6 * 16
    queue = m.free_block_ids
    stats = m.stats()
    assert (
        m.admit(3, prompt_tokens=144, final_tokens=145, block_ids=ids3, block_tokens=16, now_s=1.0)
        is None
    )
    assert m.free_block_ids == queue and m.stats() == stats
    assert not m.is_live(3)


def test_v1_prefix_cache_stats() -> None:
    """vLLM v1 ``PrefixCacheStats`` (queries += prompt tokens, hits += cached tokens),
    the figure vLLM's tests/v1/core/test_prefix_caching.py checks through
    ``manager.prefix_cache_stats``; servesim's ``prefix_hit_frac``."""
    m = apc(8)
    assert m.stats().prefix_hit_frac == 0.0  # no query: 0/0 -> 0
    ids = chain("h0", "h1")
    allocate(m, 0, 32, ids)
    assert (m.stats().prefix_query_tokens, m.stats().prefix_hit_tokens) == (32, 0)
    allocate(m, 1, 32, ids)
    assert (m.stats().prefix_query_tokens, m.stats().prefix_hit_tokens) == (64, 16)
    assert m.stats().prefix_hit_frac == 0.25


# ------------------------------------------------------------------------------ vLLM v0


def test_v0_eviction_order() -> None:
    """vLLM tests/core/block/test_prefix_caching_block.py::TestPrefixCachingBlockAllocator::
    test_eviction_order (1024 blocks there, 16 here): two chains exhaust the pool, the first
    freed earlier; the next block comes from the first chain, and from its last block.

    v0 picks the deeper block among equally old ones (``num_hashed_tokens``); v1 and
    servesim get the same block because a sequence's blocks are freed tail first.
    """
    n = 16
    m = apc(n)
    first = chain("f0", "f1")
    assert allocate(m, 0, 2 * 16, first, now_s=1.0) == 0
    assert m.num_free_slots == (n - 2) * 16
    last_block_id = int(m.block_table(0)[-1])
    second = chain(*(f"g{j}" for j in range(n - 2)))
    assert allocate(m, 1, (n - 2) * 16, second, now_s=1.0) == 0
    assert m.num_free_slots == 0
    release(m, 0, first, now_s=1.0)
    release(m, 1, second, now_s=2.0)
    assert allocate(m, 2, 16, chain("new"), now_s=3.0) == 0
    assert m.block_table(2).tolist() == [last_block_id]


def test_v0_touch_block_shared_chain() -> None:
    """vLLM tests/core/block/test_prefix_caching_block.py::TestPrefixCachingBlockAllocator::
    test_touch_block: three prefills of the same 4-block chain share its blocks.

    v0 distinguishes blocks touched in this batch from computed ones
    (``mark_blocks_as_computed``); servesim caches a block once its prefill step commits
    (``cache_computed``), so the second and third sequences of the same step would not hit.
    Ported here as: once the first prefill is computed, the others share all but the last.
    """
    m = apc(8)
    ids = chain("k0", "k1", "k2", "k3")
    assert allocate(m, 0, 64, ids) == 0
    assert allocate(m, 1, 64, ids) == 48  # the prompt's last block is always computed
    assert allocate(m, 2, 64, ids) == 48
    assert m.block_table(1).tolist()[:3] == m.block_table(0).tolist()[:3]
    assert m.num_free_slots == (8 - 4 - 1 - 1) * 16


@pytest.mark.parametrize("kind", ["apc", "radix"])
@pytest.mark.parametrize("num_blocks", [6, 8, 12])
@pytest.mark.parametrize("prefix_pages", [1, 2, 3, 4])
@pytest.mark.parametrize("unique_pages", [1, 2, 3])
def test_can_allocate_with_running_prefix(kind, num_blocks, prefix_pages, unique_pages) -> None:
    """The sweep behind issue #16 gap 1 (vLLM v0 ``BlockSpaceManager.can_allocate`` with
    prefix caching, v1 ``allocate_slots``): with the first request still running, a second
    one with the same prefix needs only its new blocks, so it is admitted exactly when those
    fit; its hit is the shared prefix."""
    m = apc(num_blocks) if kind == "apc" else radix(num_blocks)
    p0 = prefix_pages * 16 + 5
    assert -(-p0 // 16) <= num_blocks  # the first request alone always fits
    shared = [f"s{j}" for j in range(prefix_pages)]
    ids0 = chain(*shared, "a")
    assert allocate(m, 0, p0, ids0) == 0
    p1 = (prefix_pages + unique_pages) * 16 - 3
    ids1 = chain(*shared, *(f"u{j}" for j in range(unique_pages)))
    free_blocks = num_blocks - -(-p0 // 16)
    got = allocate(m, 1, p1, ids1)
    if unique_pages <= free_blocks:
        assert got == prefix_pages * 16
        assert m.block_table(1).tolist()[:prefix_pages] == m.block_table(0).tolist()[:prefix_pages]
    else:
        assert got is None


# ------------------------------------------------------------------------------ SGLang


def tokens(*xs: int) -> np.ndarray:
    return np.asarray(xs, dtype=np.int64)


def insert(m, seq: int, toks: np.ndarray, now_s: float = 0.0) -> None:
    """SGLang ``RadixCache.insert(key)`` as a request that computes ``toks`` and finishes
    (page = 1, token ids as identity)."""
    n = len(toks)
    assert (
        m.admit(seq, prompt_tokens=n, final_tokens=n, block_ids=toks, block_tokens=1, now_s=now_s)
        is not None
    )
    assert m.grow([seq], [n], now_s=now_s)
    m.free(seq, now_s=now_s, block_ids=toks, block_tokens=1, total_tokens=n)
    m.check_invariants()


def match(m, toks: np.ndarray) -> int:
    """SGLang ``match_prefix(key)``: cached tokens of ``key`` (our cap leaves the last token
    of a prompt uncached, so ask for one token more)."""
    return m.match_prefix(np.append(toks, -1), 1, len(toks) + 1)


def test_sglang_insert_and_match_basic() -> None:
    """SGLang test/srt/test_radix_cache_unit.py::TestRadixCache::test_insert_and_match_basic
    and ::test_total_size."""
    m = radix(16, block=1)
    insert(m, 0, tokens(1, 2, 3))
    assert m.tree_tokens == 3 and m.stats().cached_slots == 3  # total and evictable size
    assert match(m, tokens(1, 2, 3)) == 3
    assert match(m, tokens(1, 2)) == 2
    insert(m, 1, tokens(4, 5))
    assert m.tree_tokens == 5


def test_sglang_lock_ref_operations() -> None:
    """SGLang test/srt/test_radix_cache_unit.py::TestRadixCache::test_lock_ref_operations:
    a running request that matched a cached path protects it (not evictable) until it ends."""
    m = radix(16, block=1)
    insert(m, 0, tokens(1, 2, 3))
    assert m.stats().cached_slots == 3
    ids = tokens(1, 2, 3, 9)
    assert (
        m.admit(1, prompt_tokens=4, final_tokens=4, block_ids=ids, block_tokens=1, now_s=1.0) == 3
    )
    assert m.stats().cached_slots == 0  # protected
    m.free(1, now_s=2.0, finished=False)
    assert m.stats().cached_slots == 3  # evictable again
    m.check_invariants()


def test_sglang_evict_functionality() -> None:
    """SGLang test/srt/test_radix_cache_unit.py::TestRadixCache::test_evict_functionality:
    evicting 2 tokens shrinks the tree, least recently used leaf first."""
    m = radix(4, block=1)
    insert(m, 0, tokens(1, 2), now_s=0.0)
    insert(m, 1, tokens(3, 4), now_s=1.0)
    assert m.tree_tokens == 4 and m.num_free_slots == 4
    assert m.admit(2, prompt_tokens=2, final_tokens=2, now_s=2.0) == 0
    assert m.grow([2], [2], now_s=2.0)  # needs 2 blocks: evicts the older leaf [1, 2]
    assert m.tree_tokens == 2
    assert match(m, tokens(1, 2)) == 0 and match(m, tokens(3, 4)) == 2
    assert m.stats().evicted_tokens == 2


@pytest.mark.parametrize(("page", "length"), [(1, 5), (2, 5), (4, 6)])
def test_sglang_page_alignment_boundary(page: int, length: int) -> None:
    """SGLang test/srt/test_radix_cache_unit.py::TestRadixCache::test_page_alignment_boundary:
    matches are whole pages."""
    m = radix(16, block=page)
    toks = np.arange(length, dtype=np.int64)
    n = len(toks)
    hit = m.admit(0, prompt_tokens=n, final_tokens=n, block_ids=toks, block_tokens=1, now_s=0)
    assert hit == 0
    assert m.grow([0], [n], now_s=0.0)
    m.free(0, now_s=0.0, block_ids=toks, block_tokens=1, total_tokens=n)
    got = m.match_prefix(np.append(toks, -1), 1, n + 1)
    assert got > 0 and got % page == 0 and got == n // page * page


def test_sglang_cache_unfinished_req() -> None:
    """SGLang python/sglang/srt/mem_cache/radix_cache.py::RadixCache.cache_unfinished_req
    (no unit test upstream; this is its contract): after a prefill the request's pages are
    inserted and locked, a page another request cached meanwhile is swapped for the tree's
    copy (its own is freed), and the request's lock moves to the end of what it inserted."""
    m = radix(12, block=4)
    ids = chain("c0", "c1", "c2")
    # two requests compute the same 3 pages concurrently (neither could hit the other)
    for s in (0, 1):
        assert (
            m.admit(s, prompt_tokens=13, final_tokens=20, block_ids=ids, block_tokens=4, now_s=0.0)
            == 0
        )
    assert m.grow([0, 1], [13, 13], now_s=0.0)
    assert m.num_free_slots == (12 - 8) * 4
    m.cache_computed(0, now_s=1.0, block_ids=ids, block_tokens=4, total_tokens=13)
    assert m.tree_tokens == 12 and m.stats().cached_slots == 0  # inserted, locked
    m.cache_computed(1, now_s=1.0, block_ids=ids, block_tokens=4, total_tokens=13)
    assert m.block_table(1).tolist()[:3] == m.block_table(0).tolist()[:3]  # deduplicated
    assert m.num_free_slots == (12 - 5) * 4  # seq 1's three copies went back to the pool
    m.check_invariants()  # lock_ref == running requests whose prefix passes each node
    # a third request now shares the running prefix (capped below its last token)
    assert m.match_prefix(chain("c0", "c1", "c2", "q"), 4, 16) == 12
    # nothing locked can be evicted: a grow that would need the tree's blocks fails
    assert not m.grow([0], [13 + 8 * 4], now_s=2.0)
    m.check_invariants()
