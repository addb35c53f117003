"""Paged KV cache (vLLM PagedAttention-style): a block pool, block tables, refcounts, CoW.

Facade over :mod:`simulator.memory.kernels._blocks`. The radix manager
(:mod:`simulator.memory.radix`) is this class plus a prefix tree.

NOTE(admission): ``admit`` only registers the sequence (radix: shares and locks the cached
prefix); slots are taken by ``grow``. ``admit`` returns None unless, after allocating the
whole prompt, ``watermark_blocks`` blocks would stay free (vLLM's ``can_allocate``), so
``admit`` succeeding guarantees that ``grow(seq, prompt_tokens)`` right after it succeeds.
``grow`` itself ignores the watermark (vLLM's ``append_slots``).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from servesim.simulator.errors import InvariantError
from servesim.simulator.memory.base import KVCacheManager, MemoryStats, as_i64, make_memory_stats
from servesim.simulator.memory.kernels import _blocks

_EMPTY_KEYS = np.zeros(0, dtype=np.int64)
_C_FREE_TOP = _blocks.C_FREE_TOP
_C_CACHED = _blocks.C_CACHED
_C_TOKENS = _blocks.C_TOKENS
_C_EVICTED = _blocks.C_EVICTED
_C_COW = _blocks.C_COW


class PagedKVCache(KVCacheManager):
    """Fixed-size blocks from a free pool; per-sequence block tables; copy-on-write forks.

    Args:
        capacity_tokens: KV slots; ``capacity_tokens // block_size_tokens`` blocks.
        block_size_tokens: tokens per block ``B`` (1..256).
        max_seqs: seq ids are ``0 .. max_seqs - 1``.
        max_seq_len: longest sequence, in tokens (sets the block-table width).
        watermark_frac: fraction of blocks kept free at admission (vLLM default 0.01).
        prefix_caching: vLLM v1's automatic prefix caching: full blocks are cached by their
            chained identity as soon as they are computed (:meth:`cache_computed`, or at
            :meth:`free`), shared by later requests while still running, and kept after
            release in an LRU free queue whose head is evicted block by block on allocation
            (see ``kernels/_blocks.py``, APC). False: no cache, a LIFO free stack.
    """

    kind = "paged"
    _can_evict = False

    def __init__(
        self,
        *,
        capacity_tokens: int,
        block_size_tokens: int,
        max_seqs: int,
        max_seq_len: int,
        watermark_frac: float,
        prefix_caching: bool = False,
    ) -> None:
        self.prefix_caching = bool(prefix_caching) and self.kind == "paged"
        self.caches_prefixes = self.prefix_caching or self.kind == "radix"
        self.caches_when_scheduled = self.prefix_caching
        self._block_tokens: int | None = None
        self._intern: dict[tuple[int, tuple[int, ...]], int] = {}
        self.block_size_tokens = block_size_tokens
        self.num_blocks = capacity_tokens // block_size_tokens
        self.capacity_tokens = self.num_blocks * block_size_tokens
        self.max_seqs = max_seqs
        self.max_seq_len = max_seq_len
        # NOTE(watermark): int(frac * blocks), as vLLM's BlockSpaceManager computes it.
        self.watermark_blocks = int(watermark_frac * self.num_blocks)
        self.max_blocks_per_seq = -(-max_seq_len // block_size_tokens)
        self._arena, self._st = _blocks.make_state(
            self.num_blocks,
            max_seqs,
            self.max_blocks_per_seq,
            page_tokens=block_size_tokens,
            watermark_blocks=self.watermark_blocks,
            can_evict=self._can_evict,
            max_seq_len=max_seq_len,
            prefix_caching=self.prefix_caching,
        )
        self._counters = self._st.counters
        self._live = self._st.seq_live
        self._out2 = np.zeros(2, dtype=np.int64)
        self._prefix_query_tokens = 0
        self._prefix_hit_tokens = 0

    # ------------------------------------------------------------------ helpers

    def _check_seq(self, seq_id: int, *, live: bool) -> None:
        if not 0 <= seq_id < self.max_seqs:
            raise ValueError(f"seq_id must be in [0, {self.max_seqs}), got {seq_id}")
        if bool(self._live[seq_id]) != live:
            state = "not live" if live else "already live"
            raise ValueError(f"seq_id {seq_id} is {state}")

    def _page_keys(
        self, block_ids: npt.NDArray[np.int64] | None, block_tokens: int, n_tokens: int
    ) -> npt.NDArray[np.int64]:
        """Keys of the full pages within ``n_tokens`` that ``block_ids`` fully describe
        (none when the manager caches no prefixes).

        Page ``k``'s key is the id itself when ``block_tokens`` equals the page, otherwise
        an interned id of ``(k*P mod block_tokens, ids overlapping the page)``; the path
        from the root (radix tree, APC trie) supplies the prefix, so keys need not chain.
        """
        if block_ids is None or not self.caches_prefixes:
            return _EMPTY_KEYS
        if block_tokens < 1:
            raise ValueError(f"block_tokens must be >= 1, got {block_tokens}")
        if self._block_tokens is None:
            self._block_tokens = block_tokens
        elif block_tokens != self._block_tokens:
            raise ValueError(
                f"block_tokens {block_tokens} differs from {self._block_tokens} used before"
            )
        ids = np.asarray(block_ids, dtype=np.int64).reshape(-1)
        p = self.block_size_tokens
        num_pages = min(n_tokens, len(ids) * block_tokens) // p
        if block_tokens == p:
            return np.ascontiguousarray(ids[:num_pages])
        keys = np.empty(num_pages, dtype=np.int64)
        intern = self._intern
        id_list = ids.tolist()
        for k in range(num_pages):
            start = k * p
            lo = start // block_tokens
            hi = (start + p - 1) // block_tokens
            key = (start % block_tokens, tuple(id_list[lo : hi + 1]))
            keys[k] = intern.setdefault(key, len(intern))
        return keys

    def _cap_pages(self, prompt_tokens: int) -> int:
        # At least one prompt token is always computed (the last token's logits are needed).
        return max(prompt_tokens - 1, 0) // self.block_size_tokens

    # ------------------------------------------------------------------ interface

    @property
    def num_free_slots(self) -> int:
        """Free slots (radix: plus evictable cached slots)."""
        c = self._counters
        if self.caches_prefixes:
            return int(c[_C_FREE_TOP] + c[_C_CACHED]) * self.block_size_tokens
        return int(c[_C_FREE_TOP]) * self.block_size_tokens

    def fits_ever(
        self, prompt_tokens: int, final_tokens: int, num_seqs: int = 1, shared_prompt: bool = True
    ) -> bool:
        """The whole request (prompt + output of every sequence) fits an empty cache with the
        watermark.

        NOTE(admission): vLLM checks only the prompt at arrival and drops a request later
        if, alone, it cannot grow or be re-admitted after a recompute preemption; checking
        the final length up front gives the same verdict at arrival, so nothing can wait
        forever (a request alone in the cache always runs to its end). Sequences sharing the
        prompt share its full blocks; each copies the partial last one (copy-on-write).
        """
        b = self.block_size_tokens
        if prompt_tokens + 1 > self.max_seq_len or final_tokens > self.max_seq_len:
            return False
        per_seq = -(-max(final_tokens, prompt_tokens + 1) // b)
        n = max(num_seqs, 1)
        if n == 1:
            need = per_seq
        elif shared_prompt:
            shared = prompt_tokens // b
            need = shared + n * (per_seq - shared)
        else:
            need = n * per_seq
        return need + self.watermark_blocks <= self.num_blocks

    def fits_ever_many(
        self, prompt_tokens: npt.NDArray[np.int64], final_tokens: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.bool_]:
        """:meth:`fits_ever` of many single-sequence requests at once (vectorised)."""
        b = self.block_size_tokens
        p = np.asarray(prompt_tokens, dtype=np.int64)
        f = np.asarray(final_tokens, dtype=np.int64)
        return (
            (p + 1 <= self.max_seq_len)
            & (f <= self.max_seq_len)
            & (-(-np.maximum(f, p + 1) // b) + self.watermark_blocks <= self.num_blocks)
        )

    def match_prefix(
        self, block_ids: npt.NDArray[np.int64] | None, block_tokens: int, prompt_tokens: int
    ) -> int:
        """Prompt tokens cached now, capped at ``prompt_tokens - 1``; no side effects."""
        keys = self._page_keys(block_ids, block_tokens, prompt_tokens)
        n = min(len(keys), self._cap_pages(prompt_tokens))
        if n == 0:
            return 0
        return int(_blocks.match_len(self._arena, keys, n)) * self.block_size_tokens

    def admit(
        self,
        seq_id: int,
        *,
        prompt_tokens: int,
        final_tokens: int,
        block_ids: npt.NDArray[np.int64] | None = None,
        block_tokens: int = 1,
        now_s: float,
    ) -> int | None:
        """Register ``seq_id``; return its cached prompt tokens or None (no room, no change)."""
        self._check_seq(seq_id, live=False)
        self._check_admit_lengths(prompt_tokens, final_tokens)
        if prompt_tokens > self.max_seq_len:
            raise ValueError(f"prompt_tokens {prompt_tokens} > max_seq_len {self.max_seq_len}")
        keys = self._page_keys(block_ids, block_tokens, prompt_tokens)
        n = min(len(keys), self._cap_pages(prompt_tokens))
        m = _blocks.admit(self._arena, seq_id, keys, n, prompt_tokens, float(now_s))
        if m < 0:
            return None
        hit = int(m) * self.block_size_tokens
        self._prefix_query_tokens += prompt_tokens
        self._prefix_hit_tokens += hit
        return hit

    def _misuse(self, status: int, ids: npt.NDArray[np.int64], totals: npt.NDArray[np.int64]):
        """The ValueError for a misuse code of the grow kernels."""
        if status == _blocks.BAD_SHAPE:
            return ValueError(f"seq_ids {ids.shape} and new_total_tokens {totals.shape} differ")
        if status == _blocks.BAD_SEQ:
            return ValueError(f"grow on a seq id that is not live: {ids.tolist()}")
        return ValueError(f"new_total_tokens {totals.max()} > max_seq_len {self.max_seq_len}")

    def slots_needed(self, seq_ids: npt.ArrayLike, new_total_tokens: npt.ArrayLike) -> int:
        """Free slots ``grow`` would consume (new blocks and CoW copies, times ``B``)."""
        ids = as_i64(seq_ids)
        totals = as_i64(new_total_tokens)
        need = _blocks.slots_needed(self._arena, ids, totals)
        if need < 0:
            raise self._misuse(need, ids, totals)
        return need * self.block_size_tokens

    def grow(
        self, seq_ids: npt.ArrayLike, new_total_tokens: npt.ArrayLike, *, now_s: float
    ) -> bool:
        """All-or-nothing: each seq holds slots for its new total; False = no room, no change."""
        ids = as_i64(seq_ids)
        totals = as_i64(new_total_tokens)
        status = _blocks.grow(self._arena, ids, totals)
        if status < 0:
            raise self._misuse(status, ids, totals)
        return status == _blocks.OK

    def free(
        self,
        seq_id: int,
        *,
        now_s: float,
        finished: bool = True,
        block_ids: npt.NDArray[np.int64] | None = None,
        block_tokens: int = 1,
        total_tokens: int = 0,
    ) -> None:
        """Release ``seq_id``; its blocks go back to the pool (radix: full pages are cached)."""
        self._check_seq(seq_id, live=True)
        if block_ids is None:  # nothing to cache (always so when paged)
            _blocks.release(self._arena, seq_id, _EMPTY_KEYS, 0, float(now_s))
            return
        held = int(self._st.seq_tokens[seq_id])
        keys = self._page_keys(block_ids, block_tokens, min(total_tokens, held))
        n = min(len(keys), int(self._st.table_len[seq_id]))
        _blocks.release(self._arena, seq_id, keys, n, float(now_s))

    def cache_computed(
        self,
        seq_id: int,
        *,
        now_s: float,
        block_ids: npt.NDArray[np.int64] | None,
        block_tokens: int = 1,
        total_tokens: int,
    ) -> None:
        """The first ``total_tokens`` of live ``seq_id`` are computed: cache their full pages
        now, so that other requests can share them while this one runs.

        Call after each prefill chunk and whenever decode fills a page. Radix: inserts into
        the tree (the seq's copy of a page cached meanwhile is swapped for the tree's block)
        and moves the seq's lock to the end of what it inserted (SGLang's
        ``cache_unfinished_req``). Paged with prefix caching: new full blocks join the cache
        (vLLM's ``cache_full_blocks``). Otherwise (no prefix cache, no ids) a no-op.
        """
        if block_ids is None or not self.caches_prefixes:
            return
        self._check_seq(seq_id, live=True)
        held = int(self._st.seq_tokens[seq_id])
        keys = self._page_keys(block_ids, block_tokens, min(total_tokens, held))
        n = min(len(keys), int(self._st.table_len[seq_id]))
        if n > 0:
            _blocks.cache_blocks(self._arena, seq_id, keys, n, float(now_s))

    def fork(self, parent_seq_id: int, child_seq_id: int, *, now_s: float) -> bool:
        """Child shares the parent's blocks (refcount++); never needs new blocks."""
        self._check_seq(parent_seq_id, live=True)
        self._check_seq(child_seq_id, live=False)
        _blocks.fork(self._arena, parent_seq_id, child_seq_id)
        return True

    def stats(self, *, min_pending_slots: int = 0) -> MemoryStats:
        """Memory categories (no reservation and no external fragmentation when paged).

        O(1): the kernels keep the token, cached and free counts up to date.
        """
        c = self._counters.tolist()
        b = self.block_size_tokens
        tokens = c[_C_TOKENS]
        used_blocks = self.num_blocks - c[_C_FREE_TOP] - c[_C_CACHED]
        return make_memory_stats(
            self.capacity_tokens,
            tokens,
            0,
            used_blocks * b - tokens,
            0,
            c[_C_CACHED] * b,
            c[_C_FREE_TOP] * b,
            self._prefix_query_tokens,
            self._prefix_hit_tokens,
            c[_C_EVICTED],
            c[_C_COW],
        )

    def block_table(self, seq_id: int) -> npt.NDArray[np.int32]:
        """Copy of the live sequence's block table (physical block ids)."""
        self._check_seq(seq_id, live=True)
        return self._st.table[seq_id, : self._st.table_len[seq_id]].copy()

    def is_live(self, seq_id: int) -> bool:
        """Whether ``seq_id`` is admitted."""
        return bool(self._st.seq_live[seq_id])

    def num_tokens(self, seq_id: int) -> int:
        """Tokens the sequence holds slots for."""
        return int(self._st.seq_tokens[seq_id])

    @property
    def num_tree_nodes(self) -> int:
        """Nodes in the prefix tree / APC trie, root excluded."""
        return int(self._st.node_alive.sum()) - 1

    @property
    def tree_tokens(self) -> int:
        """Tokens cached in the tree / trie (held by running requests or not)."""
        return int(self._st.in_tree.sum()) * self.block_size_tokens

    @property
    def free_block_ids(self) -> list[int]:
        """Free block ids, next allocation first (for exact-order tests)."""
        st = self._st
        if self.prefix_caching:
            return self._queue_order()
        return st.free_stack[: st.free_top[0]][::-1].tolist()

    def _queue_order(self) -> list[int]:
        """APC: the free queue, head (next allocation) first."""
        st = self._st
        out = []
        b = int(st.counters[_blocks.C_FQ_HEAD])
        while b != -1 and len(out) <= self.num_blocks:
            out.append(b)
            b = int(st.fq_next[b])
        return out

    # ------------------------------------------------------------------ invariants

    def check_invariants(self) -> None:
        """Pool, refcount, table and tree consistency (raises InvariantError)."""
        st = self._st
        nb = self.num_blocks
        b = self.block_size_tokens
        if self.prefix_caching:
            free = np.asarray(self._check_queue(), dtype=np.int64)
        else:
            free = st.free_stack[: st.free_top[0]]
        if len(np.unique(free)) != len(free):
            raise InvariantError("a block is on the free stack twice")
        counts = np.zeros(nb, dtype=np.int64)
        for s in np.flatnonzero(st.seq_live):
            n = int(st.table_len[s])
            row = st.table[s, :n]
            if len(np.unique(row)) != n:
                raise InvariantError(f"seq {s} holds a block twice")
            if -(-int(st.seq_tokens[s]) // b) != n:
                raise InvariantError(f"seq {s}: {st.seq_tokens[s]} tokens in {n} blocks")
            np.add.at(counts, row, 1)
        if not np.array_equal(counts, st.refcount):
            raise InvariantError("refcount != number of block tables holding the block")
        if (st.refcount[free] != 0).any():
            raise InvariantError("a free block is referenced")
        if not self.prefix_caching and (st.in_tree[free] != 0).any():
            raise InvariantError("a free block is in the tree")
        cached = int(((st.in_tree == 1) & (st.refcount == 0)).sum())
        if cached != st.counters[_blocks.C_CACHED]:
            raise InvariantError(f"cached counter {st.counters[_blocks.C_CACHED]} != {cached}")
        used = int((st.refcount > 0).sum())
        plain = len(free) - cached if self.prefix_caching else len(free)
        if self.prefix_caching and plain != st.counters[_blocks.C_FREE_TOP]:
            raise InvariantError(f"free counter {st.counters[_blocks.C_FREE_TOP]} != {plain}")
        if used + cached + plain != nb:
            raise InvariantError(f"used {used} + cached {cached} + free {plain} != {nb}")
        _blocks.recount_slots(self._arena, self._out2)
        s = self.stats()
        if (s.token_slots, s.internal_frag_slots) != tuple(self._out2.tolist()):
            raise InvariantError(
                f"token/internal counters ({s.token_slots}, {s.internal_frag_slots}) "
                f"!= recount {tuple(self._out2.tolist())}"
            )
        self._check_tree()
        total = (
            s.token_slots
            + s.reserved_slots
            + s.internal_frag_slots
            + s.external_frag_slots
            + s.cached_slots
            + s.free_slots
        )
        if total != s.capacity_slots:
            raise InvariantError(f"memory categories sum to {total} != {s.capacity_slots}")

    def _check_queue(self) -> list[int]:
        """APC: the free queue's links agree both ways and it holds every free block."""
        st = self._st
        order = self._queue_order()
        if len(order) > self.num_blocks:
            raise InvariantError("the free queue has a cycle")
        prev = -1
        for blk in order:
            if st.fq_prev[blk] != prev:
                raise InvariantError(f"free queue: block {blk}'s prev link is wrong")
            prev = blk
        if prev != st.counters[_blocks.C_FQ_TAIL]:
            raise InvariantError("free queue: the tail is not the last block")
        if len(order) != int((st.refcount == 0).sum()):
            raise InvariantError("the free queue does not hold exactly the unreferenced blocks")
        return order

    def _check_tree(self) -> None:
        st = self._st
        if self.prefix_caching:
            self._check_trie()
            return
        if st.first_child[0] != -1 or st.in_tree.any():
            raise InvariantError("paged manager has a non-empty tree")

    def _check_trie(self) -> None:
        """APC: one block per node, block_node its inverse, sibling keys distinct, no locks."""
        st = self._st
        alive = np.flatnonzero(st.node_alive)
        if int(st.node_free_top[0]) + len(alive) != len(st.node_alive):
            raise InvariantError("node free list and live nodes do not partition the nodes")
        in_tree = np.zeros(self.num_blocks, dtype=np.int64)
        for u in alive:
            u = int(u)
            keys = set()
            n = 0
            c = int(st.first_child[u])
            while c != -1 and n <= len(st.node_alive):
                if not st.node_alive[c] or st.parent[c] != u:
                    raise InvariantError(f"node {u}: child list inconsistent")
                keys.add(int(st.block_key[st.edge_first[c]]))
                n += 1
                c = int(st.next_sibling[c])
            if len(keys) != n:
                raise InvariantError(f"node {u}: two children with the same key")
            if u == 0:
                continue
            blk = int(st.edge_first[u])
            if st.edge_len[u] != 1 or st.block_node[blk] != u or st.lock_ref[u] != 0:
                raise InvariantError(f"node {u}: not a one-block unlocked trie node")
            in_tree[blk] += 1
        if not np.array_equal(in_tree, st.in_tree.astype(np.int64)):
            raise InvariantError("trie blocks != blocks marked in_tree")
        if ((st.block_node >= 0) != (st.in_tree == 1)).any():
            raise InvariantError("block_node set for a block outside the trie")
