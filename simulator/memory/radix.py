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
prefix. Pages become shareable as soon as they are computed: the engine calls
``cache_computed`` after every prefill chunk and whenever decode fills a page, which inserts
them, swaps the seq's copy of an already cached page for the tree's block, and moves the
seq's lock down to the end of the inserted path (SGLang's ``cache_unfinished_req``); the
generated tokens' pages enter the tree too when the identity covers them (chats, trees). A
finished or preempted sequence inserts what is left and unlocks.
"""

from __future__ import annotations

import numpy as np

from servesim.simulator.errors import InvariantError
from servesim.simulator.memory.paged import PagedKVCache


class RadixKVCache(PagedKVCache):
    """Paged KV cache whose finished prefixes stay cached in a radix tree (see module doc)."""

    kind = "radix"
    _can_evict = True

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
