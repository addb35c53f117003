"""Radix prefix cache (SGLang RadixAttention-style) on top of the paged block pool.

A radix tree over *page keys* maps cached prompt prefixes to KV blocks. Page size is
``block_size_tokens`` (1 = SGLang's token granularity). Only full pages are cached.

Prompt identity: ``block_ids`` is a sequence of ids each covering ``block_tokens`` tokens
(token ids: ``block_tokens=1``; Mooncake chained block hashes: 512). Page ``k`` covers tokens
``[k*P, (k+1)*P)``; its key is the id itself when ``block_tokens == P``, otherwise an
interned id of ``(k*P mod block_tokens, ids overlapping the page)``. Keys only need to be
equal exactly when the page contents are, and the path from the root supplies the prefix.
One instance must be used with one ``block_tokens`` (checked), so the two key forms never mix.

Eviction: least-recently-used unlocked leaves by ``(last_access_s, access_tick)`` of the
simulation clock, whole leaves at a time (as SGLang's ``evict``), only when that makes the
requested ``grow`` succeed. A running request locks the path to the end of its matched
prefix; a finished or preempted one inserts its computed full pages and unlocks.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from servesim.simulator.errors import InvariantError
from servesim.simulator.memory.paged import PagedKVCache


class RadixKVCache(PagedKVCache):
    """Paged KV cache whose finished prefixes stay cached in a radix tree (see module doc)."""

    kind = "radix"
    _can_evict = True

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._block_tokens: int | None = None
        self._intern: dict[tuple[int, tuple[int, ...]], int] = {}

    def _page_keys(
        self, block_ids: npt.NDArray[np.int64] | None, block_tokens: int, n_tokens: int
    ) -> npt.NDArray[np.int64]:
        """Keys of the full pages within ``n_tokens`` that ``block_ids`` fully describe."""
        if block_ids is None:
            return _blocks_empty
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

    @property
    def num_tree_nodes(self) -> int:
        """Nodes in the tree, root excluded."""
        return int(self._st.node_alive.sum()) - 1

    @property
    def tree_tokens(self) -> int:
        """Tokens cached in the tree (locked or not)."""
        return int(self._st.in_tree.sum()) * self.block_size_tokens

    def _check_tree(self) -> None:
        st = self._st
        alive = np.flatnonzero(st.node_alive)
        seen = np.zeros(self.num_blocks, dtype=np.int64)
        child_count = {int(u): 0 for u in alive}
        for u in alive:
            u = int(u)
            if u == 0:
                continue
            p = int(st.parent[u])
            if p < 0 or not st.node_alive[p]:
                raise InvariantError(f"node {u} has a dead parent {p}")
            child_count[p] += 1
            n = 0
            blk = int(st.edge_first[u])
            while blk != -1:
                seen[blk] += 1
                n += 1
                blk = int(st.block_next[blk])
            if n != st.edge_len[u] or n == 0:
                raise InvariantError(f"node {u}: chain of {n} != edge_len {st.edge_len[u]}")
        for u in alive:
            n = 0
            c = int(st.first_child[u])
            keys = set()
            while c != -1:
                n += 1
                keys.add(int(st.block_key[st.edge_first[c]]))
                c = int(st.next_sibling[c])
            if n != child_count[int(u)] or len(keys) != n:
                raise InvariantError(f"node {u}: child list inconsistent")
        if not np.array_equal(seen, st.in_tree.astype(np.int64)):
            raise InvariantError("tree token count != blocks marked in_tree")
        locks = np.zeros(len(st.node_alive), dtype=np.int64)
        for s in np.flatnonzero(st.seq_live):
            u = int(st.seq_node[s])
            if not st.node_alive[u]:
                raise InvariantError(f"seq {s} locks node {u}, which was evicted")
            while u > 0:
                locks[u] += 1
                u = int(st.parent[u])
        if not np.array_equal(locks[1:], st.lock_ref[1:]):
            raise InvariantError("lock_ref != live sequences whose prefix passes the node")
        if int(st.node_free_top[0]) + len(alive) != len(st.node_alive):
            raise InvariantError("node free list and live nodes do not partition the nodes")


_blocks_empty = np.zeros(0, dtype=np.int64)
