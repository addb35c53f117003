"""Block-pool kernels of the paged and radix managers (one family, one module).

The radix manager is the paged manager plus a prefix tree whose nodes own chains of pool
blocks, so both share these kernels (keeping the family in one module keeps numba's on-disk
cache honest, STYLE section 6).

Layout (all flat arrays in :class:`BlockState`; ``-1`` is the null id)::

    pool     free_stack[:free_top[0]]  free block ids; the top is the next allocation
    blocks   refcount[b]   live block tables holding b
             in_tree[b]    1 if b is a page of a radix-tree node edge
             block_next[b] next block along the same node edge, -1 at the edge's end
             block_key[b]  the page key (prompt identity) of an in-tree block
    seqs     table[s, :table_len[s]]  block table of seq s; seq_tokens[s] tokens held
             seq_node[s]   radix node at the end of the locked prefix (0 = root = none)
    tree     parent / first_child / next_sibling   -1 terminated
             edge_first[n], edge_len[n]             a chain of blocks through block_next
             lock_ref[n], last_access_s[n], access_tick[n]   LRU key = (time, tick)
             node_free[:node_free_top[0]]           free node ids

A block is in exactly one of three states: free (on the stack), cached (in the tree with
refcount 0; ``counters[C_CACHED]`` counts these), or used (refcount > 0).

NOTE(memory): a node's edge is a chain through the blocks themselves instead of a range in a
shared key pool: every cached page is exactly one block, so the chain needs no pool
compaction when nodes are split or evicted.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

OK = 0
NO_SPACE = 1

# counters[...] slots
C_COW = 0  # cumulative copy-on-write block copies
C_EVICTED = 1  # cumulative evicted tree tokens
C_TICK = 2  # per-instance access tick (LRU tie-break)
C_CACHED = 3  # blocks in the tree with refcount 0


class BlockState(NamedTuple):
    """All mutable state of a paged/radix manager (see the module docstring)."""

    free_stack: np.ndarray  # int32[NB]
    free_top: np.ndarray  # int64[1]
    refcount: np.ndarray  # int32[NB]
    in_tree: np.ndarray  # int8[NB]
    block_next: np.ndarray  # int32[NB]
    block_key: np.ndarray  # int64[NB]
    table: np.ndarray  # int32[S, MB]
    table_len: np.ndarray  # int32[S]
    seq_tokens: np.ndarray  # int64[S]
    seq_live: np.ndarray  # int8[S]
    seq_node: np.ndarray  # int32[S]
    counters: np.ndarray  # int64[4]
    node_alive: np.ndarray  # int8[NN]
    parent: np.ndarray  # int32[NN]
    first_child: np.ndarray  # int32[NN]
    next_sibling: np.ndarray  # int32[NN]
    edge_first: np.ndarray  # int32[NN]
    edge_len: np.ndarray  # int32[NN]
    lock_ref: np.ndarray  # int32[NN]
    last_access_s: np.ndarray  # float64[NN]
    access_tick: np.ndarray  # int64[NN]
    node_free: np.ndarray  # int32[NN]
    node_free_top: np.ndarray  # int64[1]


def make_state(num_blocks: int, max_seqs: int, max_blocks_per_seq: int) -> BlockState:
    """Empty state: all blocks free (block 0 allocated first), tree = root node 0 only."""
    nn = num_blocks + 1  # every non-root node owns >= 1 distinct block
    node_free = np.arange(nn - 1, 0, -1, dtype=np.int32)  # node 1 is handed out first
    node_alive = np.zeros(nn, dtype=np.int8)
    node_alive[0] = 1
    return BlockState(
        free_stack=np.arange(num_blocks - 1, -1, -1, dtype=np.int32),
        free_top=np.array([num_blocks], dtype=np.int64),
        refcount=np.zeros(num_blocks, dtype=np.int32),
        in_tree=np.zeros(num_blocks, dtype=np.int8),
        block_next=np.full(num_blocks, -1, dtype=np.int32),
        block_key=np.zeros(num_blocks, dtype=np.int64),
        table=np.full((max_seqs, max_blocks_per_seq), -1, dtype=np.int32),
        table_len=np.zeros(max_seqs, dtype=np.int32),
        seq_tokens=np.zeros(max_seqs, dtype=np.int64),
        seq_live=np.zeros(max_seqs, dtype=np.int8),
        seq_node=np.zeros(max_seqs, dtype=np.int32),
        counters=np.zeros(4, dtype=np.int64),
        node_alive=node_alive,
        parent=np.full(nn, -1, dtype=np.int32),
        first_child=np.full(nn, -1, dtype=np.int32),
        next_sibling=np.full(nn, -1, dtype=np.int32),
        edge_first=np.full(nn, -1, dtype=np.int32),
        edge_len=np.zeros(nn, dtype=np.int32),
        lock_ref=np.zeros(nn, dtype=np.int32),
        last_access_s=np.zeros(nn, dtype=np.float64),
        access_tick=np.zeros(nn, dtype=np.int64),
        node_free=node_free,
        node_free_top=np.array([nn - 1], dtype=np.int64),
    )


# ----------------------------------------------------------------------------- block pool


@njit(cache=True)
def _pop_block(free_stack, free_top, refcount):
    """Pop the top free block and give it refcount 1 (caller checked there is one)."""
    top = free_top[0] - 1
    free_top[0] = top
    b = free_stack[top]
    refcount[b] = 1
    return b


@njit(cache=True)
def _inc_ref(st, b):
    """A table takes a reference to block ``b`` (a cached block becomes used)."""
    if st.refcount[b] == 0 and st.in_tree[b] == 1:
        st.counters[C_CACHED] -= 1
    st.refcount[b] += 1


@njit(cache=True)
def _dec_ref(refcount, in_tree, counters, free_stack, free_top, b):
    """A table drops block ``b``; at refcount 0 it is cached (in tree) or pushed free."""
    refcount[b] -= 1
    if refcount[b] == 0:
        if in_tree[b] == 1:
            counters[C_CACHED] += 1
        else:
            free_stack[free_top[0]] = b
            free_top[0] += 1


# ----------------------------------------------------------------------------- tree helpers


@njit(cache=True)
def _find_child(st, node, key):
    """Child of ``node`` whose edge starts with page key ``key``, or -1."""
    c = st.first_child[node]
    while c != -1:
        if st.block_key[st.edge_first[c]] == key:
            return c
        c = st.next_sibling[c]
    return -1


@njit(cache=True)
def _unlink_child(st, node):
    """Remove ``node`` from its parent's child list."""
    p = st.parent[node]
    if st.first_child[p] == node:
        st.first_child[p] = st.next_sibling[node]
    else:
        c = st.first_child[p]
        while st.next_sibling[c] != node:
            c = st.next_sibling[c]
        st.next_sibling[c] = st.next_sibling[node]
    st.next_sibling[node] = -1


@njit(cache=True)
def _new_node(st, parent):
    """Pop a free node, prepend it to ``parent``'s children, return its id."""
    top = st.node_free_top[0] - 1
    st.node_free_top[0] = top
    u = st.node_free[top]
    st.node_alive[u] = 1
    st.parent[u] = parent
    st.first_child[u] = -1
    st.next_sibling[u] = st.first_child[parent]
    st.first_child[parent] = u
    st.lock_ref[u] = 0
    return u


@njit(cache=True)
def _split(st, node, j):
    """Split ``node``'s edge after ``j`` pages (0 < j < edge_len); return the new upper node.

    The lower part keeps the id ``node`` (so ``seq_node`` references stay valid) and the new
    upper node copies its lock count and LRU key, as SGLang's ``_split_node`` does.
    """
    p = st.parent[node]
    top = st.node_free_top[0] - 1
    st.node_free_top[0] = top
    u = st.node_free[top]
    st.node_alive[u] = 1
    # u takes node's place in p's child list
    st.parent[u] = p
    st.next_sibling[u] = st.next_sibling[node]
    if st.first_child[p] == node:
        st.first_child[p] = u
    else:
        c = st.first_child[p]
        while st.next_sibling[c] != node:
            c = st.next_sibling[c]
        st.next_sibling[c] = u
    st.first_child[u] = node
    st.next_sibling[node] = -1
    st.parent[node] = u
    b = st.edge_first[node]
    for _ in range(j - 1):
        b = st.block_next[b]
    st.edge_first[u] = st.edge_first[node]
    st.edge_len[u] = j
    st.edge_first[node] = st.block_next[b]
    st.block_next[b] = -1
    st.edge_len[node] -= j
    st.lock_ref[u] = st.lock_ref[node]
    st.last_access_s[u] = st.last_access_s[node]
    st.access_tick[u] = st.access_tick[node]
    return u


@njit(cache=True)
def _lock_path(st, node, delta):
    """Add ``delta`` to ``lock_ref`` of ``node`` and its ancestors (root excluded)."""
    while node > 0:
        st.lock_ref[node] += delta
        node = st.parent[node]


@njit(cache=True)
def _touch_path(st, node, now_s):
    """Stamp the root->``node`` path with ``now_s``; ticks increase from root to leaf."""
    depth = 0
    n = node
    while n > 0:
        depth += 1
        n = st.parent[n]
    base = st.counters[C_TICK]
    k = depth
    n = node
    while n > 0:
        st.last_access_s[n] = now_s
        st.access_tick[n] = base + k
        k -= 1
        n = st.parent[n]
    st.counters[C_TICK] = base + depth


@njit(cache=True)
def _match(st, keys, n, out_blocks, res):
    """Longest cached prefix of ``keys[:n]``.

    Args:
        keys: int64[>= n]; page keys of the prompt.
        n: number of keys to look at.
        out_blocks: int32[>= n]; receives the matched blocks, in order.
        res: int64[3]; receives (end node, pages matched in its edge or 0 if the whole
            edge matched, total pages matched).
    """
    node = 0
    i = 0
    partial = 0
    while i < n:
        c = _find_child(st, node, keys[i])
        if c == -1:
            break
        b = st.edge_first[c]
        j = 0
        while b != -1 and i < n and st.block_key[b] == keys[i]:
            out_blocks[i] = b
            b = st.block_next[b]
            i += 1
            j += 1
        node = c
        if j < st.edge_len[c]:
            partial = j
            break
    res[0] = node
    res[1] = partial
    res[2] = i


@njit(cache=True)
def match_len(st, keys, n, out_blocks, res):
    """Pages of ``keys[:n]`` cached now (no side effects)."""
    _match(st, keys, n, out_blocks, res)
    return res[2]


@njit(cache=True)
def _evict(st, want_free, page_tokens):
    """Evict LRU unlocked leaves until ``want_free`` blocks were freed (or none is left).

    Leaves are ordered by ``(last_access_s, access_tick)``. Blocks of an evicted leaf that a
    live table still references leave the tree but stay allocated. Freed blocks are pushed
    tail first, so the next allocation reuses the leaf's head block first.
    """
    freed = 0
    nn = st.node_alive.shape[0]
    while freed < want_free:
        best = -1
        for u in range(1, nn):
            if st.node_alive[u] == 1 and st.first_child[u] == -1 and st.lock_ref[u] == 0:
                if (
                    best == -1
                    or st.last_access_s[u] < st.last_access_s[best]
                    or (
                        st.last_access_s[u] == st.last_access_s[best]
                        and st.access_tick[u] < st.access_tick[best]
                    )
                ):
                    best = u
        if best == -1:
            break
        # count freeable blocks, then push them in reverse edge order
        f = 0
        b = st.edge_first[best]
        while b != -1:
            if st.refcount[b] == 0:
                f += 1
            b = st.block_next[b]
        top = st.free_top[0]
        k = 0
        b = st.edge_first[best]
        while b != -1:
            nxt = st.block_next[b]
            st.in_tree[b] = 0
            st.block_next[b] = -1
            if st.refcount[b] == 0:
                st.counters[C_CACHED] -= 1
                st.free_stack[top + f - 1 - k] = b
                k += 1
            b = nxt
        st.free_top[0] = top + f
        freed += f
        st.counters[C_EVICTED] += st.edge_len[best] * page_tokens
        _unlink_child(st, best)
        st.node_alive[best] = 0
        st.parent[best] = -1
        st.edge_first[best] = -1
        st.edge_len[best] = 0
        st.node_free[st.node_free_top[0]] = best
        st.node_free_top[0] += 1
    return freed


@njit(cache=True)
def _insert(st, s, keys, n, now_s):
    """Insert the first ``n`` blocks of seq ``s`` (page keys ``keys``) into the tree.

    Pages already in the tree keep the tree's block (the seq's duplicate is released by the
    caller). New pages become a new leaf made of the seq's own blocks; insertion stops at
    the first such block that is already in the tree elsewhere (a fork's shared block).
    """
    node = 0
    i = 0
    while i < n:
        c = _find_child(st, node, keys[i])
        if c == -1:
            k = i
            while k < n and st.in_tree[st.table[s, k]] == 0:
                k += 1
            if k > i:
                u = _new_node(st, node)
                st.edge_first[u] = st.table[s, i]
                st.edge_len[u] = k - i
                for t in range(i, k):
                    b = st.table[s, t]
                    st.in_tree[b] = 1
                    st.block_key[b] = keys[t]
                    st.block_next[b] = st.table[s, t + 1] if t + 1 < k else -1
                node = u
            break
        b = st.edge_first[c]
        j = 0
        while b != -1 and i < n and st.block_key[b] == keys[i]:
            b = st.block_next[b]
            i += 1
            j += 1
        if j < st.edge_len[c]:
            c = _split(st, c, j)
        node = c
    if node > 0:
        _touch_path(st, node, now_s)


# ----------------------------------------------------------------------------- seq ops


@njit(cache=True)
def admit(st, s, keys, n, prompt_tokens, page_tokens, watermark_blocks, now_s, buf, res):
    """Register seq ``s``, sharing (and locking) the cached prefix of ``keys[:n]``.

    Args:
        st: BlockState.
        s: seq id (not live; the facade checked).
        keys: int64[>= n]; page keys, already capped so that at least one prompt token is
            left to compute.
        n: number of keys.
        prompt_tokens: prompt length.
        page_tokens: tokens per block.
        watermark_blocks: free blocks that must remain after the prompt is allocated.
        now_s: simulation time (LRU stamp).
        buf: int32[>= n] scratch; res: int64[3] scratch.

    Returns:
        Pages matched (>= 0), or -1 (no room; nothing changed).
    """
    _match(st, keys, n, buf, res)
    node = res[0]
    partial = res[1]
    m = res[2]
    cached_hit = 0
    for i in range(m):
        if st.refcount[buf[i]] == 0:
            cached_hit += 1
    need = (prompt_tokens + page_tokens - 1) // page_tokens - m
    avail = st.free_top[0] + st.counters[C_CACHED] - cached_hit
    if avail - need < watermark_blocks:
        return -1
    if m > 0:
        if partial > 0:
            node = _split(st, node, partial)
        _lock_path(st, node, 1)
        _touch_path(st, node, now_s)
    else:
        node = 0
    for i in range(m):
        _inc_ref(st, buf[i])
        st.table[s, i] = buf[i]
    st.table_len[s] = m
    st.seq_tokens[s] = m * page_tokens
    st.seq_live[s] = 1
    st.seq_node[s] = node
    return m


@njit(cache=True)
def plan_grow(seq_tokens, table, table_len, refcount, seq_ids, new_totals, page_tokens, cow):
    """Blocks ``grow`` would take (new blocks + copy-on-write copies), in batch order.

    Takes single arrays of the state, not the BlockState tuple: passing the 23-array tuple
    into a function costs about a microsecond of reference counting per call.

    Args:
        seq_tokens, table, table_len, refcount: the BlockState arrays of the same names.
        seq_ids: int64[k] live seq ids (distinct).
        new_totals: int64[k] token counts wanted; <= current is a no-op.
        page_tokens: tokens per block.
        cow: int8[k] out; 1 where that seq copies its shared partial last block.

    Returns:
        Number of blocks needed, or -1 if a length exceeds the block-table width.
    """
    k = seq_ids.shape[0]
    mb = table.shape[1]
    need = 0
    for t in range(k):
        cow[t] = 0
    bad = False
    for t in range(k):
        s = seq_ids[t]
        new = new_totals[t]
        cur = seq_tokens[s]
        if new <= cur:
            continue
        want = (new + page_tokens - 1) // page_tokens
        if want > mb:
            bad = True
            break
        nb = table_len[s]
        if cur % page_tokens != 0:
            last = table[s, nb - 1]
            if refcount[last] > 1:
                refcount[last] -= 1  # sequential effect of the copy; undone below
                cow[t] = 1
                need += 1
        need += want - nb
    for t in range(k):
        if cow[t] == 1:
            s = seq_ids[t]
            refcount[table[s, table_len[s] - 1]] += 1
    if bad:
        return -1
    return need


@njit(cache=True)
def apply_grow(
    free_stack,
    free_top,
    refcount,
    in_tree,
    counters,
    table,
    table_len,
    seq_tokens,
    seq_ids,
    new_totals,
    page_tokens,
    cow,
):
    """Second half of ``grow``: take the planned blocks (caller checked they are free)."""
    for t in range(seq_ids.shape[0]):
        s = seq_ids[t]
        new = new_totals[t]
        if new <= seq_tokens[s]:
            continue
        nb = table_len[s]
        if cow[t] == 1:
            old = table[s, nb - 1]
            table[s, nb - 1] = _pop_block(free_stack, free_top, refcount)
            _dec_ref(refcount, in_tree, counters, free_stack, free_top, old)
            counters[C_COW] += 1
        want = (new + page_tokens - 1) // page_tokens
        for i in range(nb, want):
            table[s, i] = _pop_block(free_stack, free_top, refcount)
        table_len[s] = want
        seq_tokens[s] = new


@njit(cache=True)
def grow(st, seq_ids, new_totals, page_tokens, can_evict, cow):
    """All-or-nothing growth of many seqs (see ``plan_grow``).

    Radix (``can_evict``) evicts LRU leaves only when that makes the whole batch fit.

    Returns:
        OK, NO_SPACE (nothing changed), or -1 (a length exceeds the table width).
    """
    need = plan_grow(
        st.seq_tokens,
        st.table,
        st.table_len,
        st.refcount,
        seq_ids,
        new_totals,
        page_tokens,
        cow,
    )
    if need < 0:
        return -1
    free = st.free_top[0]
    if need > free:
        if not can_evict or free + st.counters[C_CACHED] < need:
            return NO_SPACE
        _evict(st, need - free, page_tokens)
    apply_grow(
        st.free_stack,
        st.free_top,
        st.refcount,
        st.in_tree,
        st.counters,
        st.table,
        st.table_len,
        st.seq_tokens,
        seq_ids,
        new_totals,
        page_tokens,
        cow,
    )
    return OK


@njit(cache=True)
def release(st, s, keys, n, now_s):
    """Free seq ``s``: insert its first ``n`` pages (keys) into the tree, unlock, drop refs.

    Blocks are dropped tail first, so the head block ends on top of the free stack.
    """
    if n > 0:
        _insert(st, s, keys, n, now_s)
    _lock_path(st, st.seq_node[s], -1)
    for i in range(st.table_len[s] - 1, -1, -1):
        _dec_ref(st.refcount, st.in_tree, st.counters, st.free_stack, st.free_top, st.table[s, i])
        st.table[s, i] = -1
    st.table_len[s] = 0
    st.seq_tokens[s] = 0
    st.seq_live[s] = 0
    st.seq_node[s] = 0


@njit(cache=True)
def fork(st, parent, child):
    """Child shares all of parent's blocks (refcount++) and its locked prefix."""
    nb = st.table_len[parent]
    for i in range(nb):
        b = st.table[parent, i]
        _inc_ref(st, b)
        st.table[child, i] = b
    st.table_len[child] = nb
    st.seq_tokens[child] = st.seq_tokens[parent]
    st.seq_node[child] = st.seq_node[parent]
    _lock_path(st, st.seq_node[parent], 1)
    st.seq_live[child] = 1


@njit(cache=True)
def slot_stats(st, page_tokens, out):
    """Token and internal-fragmentation slots of used blocks into ``out`` (int64[2]).

    A block's filled slots are the most any holder has written into it (forks share).
    """
    nb = st.refcount.shape[0]
    filled = np.zeros(nb, dtype=np.int64)
    for s in range(st.seq_live.shape[0]):
        if st.seq_live[s] == 0:
            continue
        tok = st.seq_tokens[s]
        for i in range(st.table_len[s]):
            f = tok - i * page_tokens
            if f > page_tokens:
                f = page_tokens
            b = st.table[s, i]
            if f > filled[b]:
                filled[b] = f
    tokens = 0
    internal = 0
    for b in range(nb):
        if st.refcount[b] > 0:
            tokens += filled[b]
            internal += page_tokens - filled[b]
    out[0] = tokens
    out[1] = internal


# ----------------------------------------------------------------------------- trace driver

OP_ADMIT = 0
OP_GROW = 1
OP_FREE = 2
SKIPPED = -2


@njit(cache=True)
def run_trace(st, ops, keys, page_tokens, watermark_blocks, can_evict, max_seq_len, results):
    """Run a whole operation trace in one kernel call (benchmarks; no facade overhead).

    Args:
        ops: int64[n, 5] rows ``(op, seq, arg, key_off, key_n)``; ``op`` is OP_ADMIT
            (``arg`` = prompt tokens; on success the seq grows to its prompt at once),
            OP_GROW (``arg`` = tokens to add, capped at ``max_seq_len``) or OP_FREE
            (caches ``min(key_n, held // page)`` pages). An op on a seq in the wrong state
            (admit of a live seq, grow/free of a dead one) is skipped.
        keys: int64[...]; page-key pool that ``key_off``/``key_n`` index.
        results: int64[n] out; admit: pages matched or -1; grow: status; free: 0;
            SKIPPED for skipped ops. Op ``i`` runs at simulation time ``i`` seconds.
    """
    one_seq = np.zeros(1, dtype=np.int64)
    one_total = np.zeros(1, dtype=np.int64)
    cow = np.zeros(1, dtype=np.int8)
    buf = np.zeros(st.table.shape[1], dtype=np.int32)
    res = np.zeros(3, dtype=np.int64)
    for i in range(ops.shape[0]):
        op = ops[i, 0]
        s = ops[i, 1]
        now_s = float(i)
        k0 = ops[i, 3]
        kn = ops[i, 4]
        if op == OP_ADMIT:
            if st.seq_live[s] == 1:
                results[i] = SKIPPED
                continue
            prompt = ops[i, 2]
            n = min(kn, (prompt - 1) // page_tokens)
            m = admit(
                st, s, keys[k0 : k0 + kn], n, prompt, page_tokens, watermark_blocks, now_s, buf, res
            )
            results[i] = m
            if m >= 0:
                one_seq[0] = s
                one_total[0] = prompt
                grow(st, one_seq, one_total, page_tokens, can_evict, cow)
        elif st.seq_live[s] == 0:
            results[i] = SKIPPED
        elif op == OP_GROW:
            one_seq[0] = s
            one_total[0] = min(st.seq_tokens[s] + ops[i, 2], max_seq_len)
            # NOTE(speed): grow() spelled out so the state tuple is not passed per op
            need = plan_grow(
                st.seq_tokens,
                st.table,
                st.table_len,
                st.refcount,
                one_seq,
                one_total,
                page_tokens,
                cow,
            )
            if need > st.free_top[0]:
                if not can_evict or st.free_top[0] + st.counters[C_CACHED] < need:
                    results[i] = NO_SPACE
                    continue
                _evict(st, need - st.free_top[0], page_tokens)
            apply_grow(
                st.free_stack,
                st.free_top,
                st.refcount,
                st.in_tree,
                st.counters,
                st.table,
                st.table_len,
                st.seq_tokens,
                one_seq,
                one_total,
                page_tokens,
                cow,
            )
            results[i] = OK
        else:
            n = min(kn, st.seq_tokens[s] // page_tokens)
            release(st, s, keys[k0 : k0 + kn], n, now_s)
            results[i] = 0
