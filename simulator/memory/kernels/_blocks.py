"""Block-pool kernels of the paged and radix managers (one family, one module).

The radix manager is the paged manager plus a prefix tree whose nodes own chains of pool
blocks, so both share these kernels (keeping the family in one module keeps numba's on-disk
cache honest, STYLE section 6).

State lives in one flat ``int64`` *arena* per manager; every field of :class:`BlockState` is
a typed view into it (int32 and int8 fields are ``.view``-ed words, float64 likewise). The
facade passes only the arena to a kernel, and the kernel re-derives the views with
:func:`_views` (a few slices). NOTE(speed): numba's dispatcher fingerprints a tuple argument
in Python (about 0.2 us per array inside it) and every array argument costs about 0.2 us, so
the 29-array tuple cost ~6 us per call; the arena costs one argument.

Layout (``-1`` is the null id)::

    header   counters[:HEADER]  cumulative counters, the free-stack tops and the
             configuration (C_* indices below; free_top / node_free_top are views of it)
    pool     free_stack[:free_top[0]]  free block ids; the top is the next allocation
    blocks   refcount[b]   live block tables holding b
             in_tree[b]    1 if b is a page of a radix-tree node edge
             block_next[b] next block along the same node edge, -1 at the edge's end
             block_key[b]  the page key (prompt identity) of an in-tree block
             block_fill[b] tokens written into b (<= page); all holders agree, because a
                           holder copies a shared partial block before writing into it
    seqs     table[s, :table_len[s]]  block table of seq s; seq_tokens[s] tokens held
             seq_node[s]   radix node at the end of the locked prefix (0 = root = none)
    tree     parent / first_child / next_sibling   -1 terminated
             edge_first[n], edge_len[n]             a chain of blocks through block_next
             lock_ref[n], last_access_s[n], access_tick[n]   LRU key = (time, tick)
             node_free[:node_free_top[0]]           free node ids
    scratch  buf int32[MB], res int64[3], cow int8[S]  (per instance, no per-call allocation)

A block is in exactly one of three states: free (on the stack), cached (in the tree with
refcount 0; ``counters[C_CACHED]`` counts these), or used (refcount > 0).
``counters[C_TOKENS]`` is the sum of ``block_fill`` over used blocks, so the memory
categories are O(1): token slots = C_TOKENS, internal fragmentation = used x page - C_TOKENS.

NOTE(memory): a node's edge is a chain through the blocks themselves instead of a range in a
shared key pool: every cached page is exactly one block, so the chain needs no pool
compaction when nodes are split or evicted.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from servesim.simulator.jit import njit

OK = 0
NO_SPACE = 1
# grow / slots_needed misuse codes (the facade raises ValueError)
TOO_LONG = -2  # a new total exceeds max_seq_len
BAD_SEQ = -3  # a seq id out of range or not live
BAD_SHAPE = -4  # seq_ids and new_totals differ in length

# header slots: counters[...]
C_FREE_TOP = 0  # free blocks (free_top[0])
C_NODE_FREE_TOP = 1  # free tree nodes (node_free_top[0])
C_COW = 2  # cumulative copy-on-write block copies
C_EVICTED = 3  # cumulative evicted tree tokens
C_TICK = 4  # per-instance access tick (LRU tie-break)
C_CACHED = 5  # blocks in the tree with refcount 0
C_TOKENS = 6  # sum of block_fill over used blocks (token slots)
C_APC = 7  # 1: paged with automatic prefix caching (vLLM v1): an LRU free queue, a block trie
# configuration, written once by make_state
C_NB = 8  # blocks
C_S = 9  # seq ids
C_MB = 10  # block-table width
C_NN = 11  # tree nodes (root included)
C_PAGE = 12  # tokens per block
C_WATERMARK = 13  # blocks admission keeps free
C_CAN_EVICT = 14  # 1 for radix
C_MAX_SEQ_LEN = 15
# word offsets of the fields, written once by make_state (O_ = offset slot)
O_BLOCK_KEY = 16
O_SEQ_TOKENS = 17
O_ACCESS_TICK = 18
O_RES = 19
O_LAST_ACCESS_S = 20
O_FREE_STACK = 21
O_REFCOUNT = 22
O_BLOCK_NEXT = 23
O_BLOCK_FILL = 24
O_TABLE = 25
O_TABLE_LEN = 26
O_SEQ_NODE = 27
O_PARENT = 28
O_FIRST_CHILD = 29
O_NEXT_SIBLING = 30
O_EDGE_FIRST = 31
O_EDGE_LEN = 32
O_LOCK_REF = 33
O_NODE_FREE = 34
O_BUF = 35
O_IN_TREE = 36
O_SEQ_LIVE = 37
O_COW = 38
O_NODE_ALIVE = 39
C_FQ_HEAD = 40  # APC free queue: first block (next allocation), -1 if empty
C_FQ_TAIL = 41  # APC free queue: last block (most recently freed)
O_FQ_PREV = 42
O_FQ_NEXT = 43
O_BLOCK_NODE = 44
C_NODE_HWM = 45  # 1 + the largest node id ever taken (nodes at or above it were never alive)
C_HP_N = 47  # radix eviction heap: entries
O_PREV_SIBLING = 48
O_HP_NODE = 50
O_HP_TIME = 51
O_HP_TICK = 52
C_HP_CAP = 53  # radix eviction heap: capacity (0 unless radix)
HEADER = 56


class BlockState(NamedTuple):
    """Typed views into one manager's arena (see the module docstring)."""

    counters: np.ndarray  # int64[HEADER]
    free_top: np.ndarray  # int64[1]
    node_free_top: np.ndarray  # int64[1]
    free_stack: np.ndarray  # int32[NB]
    refcount: np.ndarray  # int32[NB]
    in_tree: np.ndarray  # int8[NB]
    block_next: np.ndarray  # int32[NB]
    block_key: np.ndarray  # int64[NB]
    block_fill: np.ndarray  # int32[NB]
    table: np.ndarray  # int32[S, MB]
    table_len: np.ndarray  # int32[S]
    seq_tokens: np.ndarray  # int64[S]
    seq_live: np.ndarray  # int8[S]
    seq_node: np.ndarray  # int32[S]
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
    buf: np.ndarray  # int32[MB] scratch (matched blocks)
    res: np.ndarray  # int64[4] scratch (match result, cached blocks matched)
    cow: np.ndarray  # int8[S] scratch (per-seq copy-on-write flags of a grow batch)
    fq_prev: np.ndarray  # int32[NB] APC free queue links (-1 = none)
    fq_next: np.ndarray  # int32[NB]
    block_node: np.ndarray  # int32[NB] APC: the trie node whose edge is block b (-1 = none)
    prev_sibling: np.ndarray  # int32[NN] -1 terminated (O(1) unlink)
    hp_node: np.ndarray  # int32[HC] radix eviction heap (lazy): node, LRU key, ...
    hp_time: np.ndarray  # float64[HC]
    hp_tick: np.ndarray  # int64[HC]


def _layout(nb: int, s: int, mb: int, nn: int, hc: int) -> tuple[dict[int, int], int]:
    """Word offset of every field (by its O_ slot) and the arena length in words."""
    items = 8  # elements per int64 word
    spec = [  # (offset slot, elements, bytes per element)
        (O_HP_TIME, hc, 8),
        (O_HP_TICK, hc, 8),
        (O_BLOCK_KEY, nb, 8),
        (O_SEQ_TOKENS, s, 8),
        (O_ACCESS_TICK, nn, 8),
        (O_RES, 4, 8),
        (O_LAST_ACCESS_S, nn, 8),
        (O_FREE_STACK, nb, 4),
        (O_REFCOUNT, nb, 4),
        (O_BLOCK_NEXT, nb, 4),
        (O_BLOCK_FILL, nb, 4),
        (O_TABLE, s * mb, 4),
        (O_TABLE_LEN, s, 4),
        (O_SEQ_NODE, s, 4),
        (O_PARENT, nn, 4),
        (O_FIRST_CHILD, nn, 4),
        (O_NEXT_SIBLING, nn, 4),
        (O_EDGE_FIRST, nn, 4),
        (O_EDGE_LEN, nn, 4),
        (O_LOCK_REF, nn, 4),
        (O_NODE_FREE, nn, 4),
        (O_BUF, mb, 4),
        (O_FQ_PREV, nb, 4),
        (O_FQ_NEXT, nb, 4),
        (O_BLOCK_NODE, nb, 4),
        (O_PREV_SIBLING, nn, 4),
        (O_HP_NODE, hc, 4),
        (O_IN_TREE, nb, 1),
        (O_SEQ_LIVE, s, 1),
        (O_COW, s, 1),
        (O_NODE_ALIVE, nn, 1),
    ]
    offsets = {}
    o = HEADER
    for slot, n, size in spec:
        offsets[slot] = o
        o += -(-n * size // items)
    return offsets, o


@njit(cache=True)
def _f64(arena, slot, n):
    o = arena[slot]
    return arena[o : o + n]


@njit(cache=True)
def _f32(arena, slot, n):
    o = arena[slot]
    return arena[o : o + (n + 1) // 2].view(np.int32)[:n]


@njit(cache=True)
def _f8(arena, slot, n):
    o = arena[slot]
    return arena[o : o + (n + 7) // 8].view(np.int8)[:n]


@njit(cache=True)
def _table(arena):
    s = arena[C_S]
    mb = arena[C_MB]
    o = arena[O_TABLE]
    return arena[o : o + (s * mb + 1) // 2].view(np.int32)[: s * mb].reshape((s, mb))


def _views(arena: np.ndarray) -> BlockState:
    """The :class:`BlockState` views of ``arena`` for Python code (facades, tests).

    Kernels slice the fields they use with the same accessors instead: a tuple of views
    crossing a call boundary in numba costs two atomic reference-count updates per array.
    """
    _f64, _f32, _f8, _table = (getattr(f, "py_func", f) for f in (_F64, _F32, _F8, _TABLE))
    nb, s, mb, nn, hc = (int(x) for x in arena[[C_NB, C_S, C_MB, C_NN, C_HP_CAP]])
    return BlockState(
        arena[:HEADER],
        arena[C_FREE_TOP : C_FREE_TOP + 1],
        arena[C_NODE_FREE_TOP : C_NODE_FREE_TOP + 1],
        _f32(arena, O_FREE_STACK, nb),
        _f32(arena, O_REFCOUNT, nb),
        _f8(arena, O_IN_TREE, nb),
        _f32(arena, O_BLOCK_NEXT, nb),
        _f64(arena, O_BLOCK_KEY, nb),
        _f32(arena, O_BLOCK_FILL, nb),
        _table(arena),
        _f32(arena, O_TABLE_LEN, s),
        _f64(arena, O_SEQ_TOKENS, s),
        _f8(arena, O_SEQ_LIVE, s),
        _f32(arena, O_SEQ_NODE, s),
        _f8(arena, O_NODE_ALIVE, nn),
        _f32(arena, O_PARENT, nn),
        _f32(arena, O_FIRST_CHILD, nn),
        _f32(arena, O_NEXT_SIBLING, nn),
        _f32(arena, O_EDGE_FIRST, nn),
        _f32(arena, O_EDGE_LEN, nn),
        _f32(arena, O_LOCK_REF, nn),
        _f64(arena, O_LAST_ACCESS_S, nn).view(np.float64),
        _f64(arena, O_ACCESS_TICK, nn),
        _f32(arena, O_NODE_FREE, nn),
        _f32(arena, O_BUF, mb),
        _f64(arena, O_RES, 4),
        _f8(arena, O_COW, s),
        _f32(arena, O_FQ_PREV, nb),
        _f32(arena, O_FQ_NEXT, nb),
        _f32(arena, O_BLOCK_NODE, nb),
        _f32(arena, O_PREV_SIBLING, nn),
        _f32(arena, O_HP_NODE, hc),
        _f64(arena, O_HP_TIME, hc).view(np.float64),
        _f64(arena, O_HP_TICK, hc),
    )


_F64, _F32, _F8, _TABLE = _f64, _f32, _f8, _table


def make_state(
    num_blocks: int,
    max_seqs: int,
    max_blocks_per_seq: int,
    *,
    page_tokens: int,
    watermark_blocks: int,
    can_evict: bool,
    max_seq_len: int,
    prefix_caching: bool = False,
) -> tuple[np.ndarray, BlockState]:
    """Empty state: all blocks free (block 0 allocated first), tree = root node 0 only.

    ``prefix_caching`` (paged only) keeps free blocks in vLLM v1's LRU free queue, initially
    ``0, 1, ..., NB - 1``, instead of the LIFO free stack.

    Returns:
        ``(arena, views)``: the int64 arena kernels take, and its :class:`BlockState`.
    """
    nn = num_blocks + 1  # every non-root node owns >= 1 distinct block
    # NOTE(memory): the lazy heap holds each evictable leaf at least once; it is rebuilt
    # from the live nodes (<= nn - 1 entries) when full, so 2 * nn keeps rebuilds rare.
    hc = 2 * nn if can_evict else 0
    offsets, words = _layout(num_blocks, max_seqs, max_blocks_per_seq, nn, hc)
    arena = np.zeros(words, dtype=np.int64)
    for slot, o in offsets.items():
        arena[slot] = o
    arena[[C_NB, C_S, C_MB, C_NN, C_HP_CAP]] = (num_blocks, max_seqs, max_blocks_per_seq, nn, hc)
    arena[[C_PAGE, C_WATERMARK, C_CAN_EVICT, C_MAX_SEQ_LEN]] = (
        page_tokens,
        watermark_blocks,
        int(can_evict),
        max_seq_len,
    )
    st = _views(arena)
    st.free_stack[:] = np.arange(num_blocks - 1, -1, -1, dtype=np.int32)
    st.free_top[0] = num_blocks
    st.block_next[:] = -1
    st.table[:] = -1
    st.node_alive[0] = 1
    st.parent[:] = -1
    st.first_child[:] = -1
    st.next_sibling[:] = -1
    st.prev_sibling[:] = -1
    st.edge_first[:] = -1
    st.node_free[: nn - 1] = np.arange(nn - 1, 0, -1, dtype=np.int32)  # node 1 first
    st.node_free_top[0] = nn - 1
    st.block_node[:] = -1
    arena[C_APC] = int(prefix_caching)
    if prefix_caching:
        st.fq_prev[:] = np.arange(-1, num_blocks - 1, dtype=np.int32)
        st.fq_next[:] = np.arange(1, num_blocks + 1, dtype=np.int32)
        st.fq_next[num_blocks - 1] = -1
        arena[C_FQ_HEAD] = 0
        arena[C_FQ_TAIL] = num_blocks - 1
    else:
        st.fq_prev[:] = -1
        st.fq_next[:] = -1
        arena[C_FQ_HEAD] = -1
        arena[C_FQ_TAIL] = -1
    return arena, st


# ----------------------------------------------------------------------------- block pool


@njit(cache=True)
def _inc_ref(refcount, in_tree, block_fill, counters, b):
    """A table takes a reference to block ``b`` (a cached block becomes used)."""
    if refcount[b] == 0:
        if in_tree[b] == 1:
            counters[C_CACHED] -= 1
        counters[C_TOKENS] += block_fill[b]
    refcount[b] += 1


# ----------------------------------------------------------------------------- tree helpers
#
# Sibling lists are doubly linked, so unlinking a node is O(1) (the parent of an evicted
# APC subtree can be the root, with thousands of children). NOTE(speed): a hash map from
# (parent, first page key) to the child was tried for lookups and lost: in these tries most
# nodes have one or two children, and a scan of those beats hashing, while keeping the map
# cost every eviction a deletion (radix-mooncake: kernel time about doubled). The child
# scan (``_find_child``) is spelled out where it is used: passing it views costs reference
# counting on every page looked up.


@njit(cache=True)
def _unlink_child(arena, node):
    """Remove ``node`` from its parent's child list."""
    parent = _f32(arena, O_PARENT, arena[C_NN])
    first_child = _f32(arena, O_FIRST_CHILD, arena[C_NN])
    next_sibling = _f32(arena, O_NEXT_SIBLING, arena[C_NN])
    prev_sibling = _f32(arena, O_PREV_SIBLING, arena[C_NN])
    nx = next_sibling[node]
    pv = prev_sibling[node]
    if pv == -1:
        first_child[parent[node]] = nx
    else:
        next_sibling[pv] = nx
    if nx != -1:
        prev_sibling[nx] = pv
    next_sibling[node] = -1
    prev_sibling[node] = -1


@njit(cache=True)
def _new_node(arena, p, b):
    """Pop a free node whose edge starts at block ``b`` (its key set), prepend it to
    ``p``'s children, return its id (the caller sets ``edge_len``).

    NOTE(speed): APC makes one node per cached page, so fields go through one int32 view
    of the whole arena (see :func:`_apc_evict_block`), not a view per field.
    """
    a32 = arena.view(np.int32)
    top = arena[C_NODE_FREE_TOP] - 1
    arena[C_NODE_FREE_TOP] = top
    u = a32[2 * arena[O_NODE_FREE] + top]
    if u >= arena[C_NODE_HWM]:
        arena[C_NODE_HWM] = u + 1
    arena.view(np.int8)[8 * arena[O_NODE_ALIVE] + u] = 1
    a32[2 * arena[O_PARENT] + u] = p
    ofc = 2 * arena[O_FIRST_CHILD]
    ops = 2 * arena[O_PREV_SIBLING]
    a32[ofc + u] = -1
    f = a32[ofc + p]
    a32[2 * arena[O_NEXT_SIBLING] + u] = f
    a32[ops + u] = -1
    if f != -1:
        a32[ops + f] = u
    a32[ofc + p] = u
    a32[2 * arena[O_LOCK_REF] + u] = 0
    a32[2 * arena[O_EDGE_FIRST] + u] = b
    return u


@njit(cache=True)
def _split(arena, node, j):
    """Split ``node``'s edge after ``j`` pages (0 < j < edge_len); return the new upper node.

    The lower part keeps the id ``node`` (so ``seq_node`` references stay valid) and the new
    upper node copies its lock count and LRU key, as SGLang's ``_split_node`` does.
    """
    parent = _f32(arena, O_PARENT, arena[C_NN])
    node_free_top = arena[C_NODE_FREE_TOP : C_NODE_FREE_TOP + 1]
    node_free = _f32(arena, O_NODE_FREE, arena[C_NN])
    node_alive = _f8(arena, O_NODE_ALIVE, arena[C_NN])
    next_sibling = _f32(arena, O_NEXT_SIBLING, arena[C_NN])
    prev_sibling = _f32(arena, O_PREV_SIBLING, arena[C_NN])
    first_child = _f32(arena, O_FIRST_CHILD, arena[C_NN])
    edge_first = _f32(arena, O_EDGE_FIRST, arena[C_NN])
    block_next = _f32(arena, O_BLOCK_NEXT, arena[C_NB])
    edge_len = _f32(arena, O_EDGE_LEN, arena[C_NN])
    lock_ref = _f32(arena, O_LOCK_REF, arena[C_NN])
    last_access_s = _f64(arena, O_LAST_ACCESS_S, arena[C_NN]).view(np.float64)
    access_tick = _f64(arena, O_ACCESS_TICK, arena[C_NN])
    p = parent[node]
    top = node_free_top[0] - 1
    node_free_top[0] = top
    u = node_free[top]
    if u >= arena[C_NODE_HWM]:
        arena[C_NODE_HWM] = u + 1
    node_alive[u] = 1
    # u takes node's place in p's child list
    parent[u] = p
    nx = next_sibling[node]
    pv = prev_sibling[node]
    next_sibling[u] = nx
    prev_sibling[u] = pv
    if pv == -1:
        first_child[p] = u
    else:
        next_sibling[pv] = u
    if nx != -1:
        prev_sibling[nx] = u
    first_child[u] = node
    next_sibling[node] = -1
    prev_sibling[node] = -1
    parent[node] = u
    b = edge_first[node]
    for _ in range(j - 1):
        b = block_next[b]
    edge_first[u] = edge_first[node]
    edge_len[u] = j
    edge_first[node] = block_next[b]
    block_next[b] = -1
    edge_len[node] -= j
    lock_ref[u] = lock_ref[node]
    last_access_s[u] = last_access_s[node]
    access_tick[u] = access_tick[node]
    return u


# Radix eviction takes the unlocked leaf with the smallest (last_access_s, access_tick),
# ties to the smaller node id (the order of the scan it replaces). A lazy binary heap keeps
# candidates: a node is offered whenever it may have become an evictable leaf or changed its
# key while being one (an unlock to 0, a touch, its last child evicted); an entry whose node
# is no longer an evictable leaf with that key is dropped when it surfaces. Every evictable
# leaf has an entry with its current key, so the first valid entry is the scan's choice.


@njit(cache=True)
def _hp_less(t1, k1, u1, t2, k2, u2):
    if t1 != t2:
        return t1 < t2
    if k1 != k2:
        return k1 < k2
    return u1 < u2


@njit(cache=True)
def _hp_sift_up(arena, u, t, k):
    """Add entry ``(t, k, u)`` to a heap that has room."""
    hc = arena[C_HP_CAP]
    hn = _f32(arena, O_HP_NODE, hc)
    ht_ = _f64(arena, O_HP_TIME, hc).view(np.float64)
    hk = _f64(arena, O_HP_TICK, hc)
    n = arena[C_HP_N]
    i = n
    while i > 0:
        q = (i - 1) >> 1
        if not _hp_less(t, k, u, ht_[q], hk[q], hn[q]):
            break
        hn[i] = hn[q]
        ht_[i] = ht_[q]
        hk[i] = hk[q]
        i = q
    hn[i] = u
    ht_[i] = t
    hk[i] = k
    arena[C_HP_N] = n + 1


@njit(cache=True)
def _hp_push(arena, u, t, k):
    """Add entry ``(t, k, u)``; a full heap is first rebuilt from the live nodes."""
    if arena[C_HP_N] == arena[C_HP_CAP]:
        _hp_rebuild(arena)
    _hp_sift_up(arena, u, t, k)


@njit(cache=True)
def _hp_pop(arena):
    """Remove the smallest entry (the heap is not empty)."""
    hc = arena[C_HP_CAP]
    hn = _f32(arena, O_HP_NODE, hc)
    ht_ = _f64(arena, O_HP_TIME, hc).view(np.float64)
    hk = _f64(arena, O_HP_TICK, hc)
    n = arena[C_HP_N] - 1
    arena[C_HP_N] = n
    u = hn[n]
    t = ht_[n]
    k = hk[n]
    i = 0
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        if c + 1 < n and _hp_less(ht_[c + 1], hk[c + 1], hn[c + 1], ht_[c], hk[c], hn[c]):
            c += 1
        if not _hp_less(ht_[c], hk[c], hn[c], t, k, u):
            break
        hn[i] = hn[c]
        ht_[i] = ht_[c]
        hk[i] = hk[c]
        i = c
    if n > 0:
        hn[i] = u
        ht_[i] = t
        hk[i] = k


@njit(cache=True)
def _evictable(arena, u):
    """``u`` is an unlocked leaf (not the root)."""
    nn = arena[C_NN]
    return (
        u > 0
        and _f8(arena, O_NODE_ALIVE, nn)[u] == 1
        and _f32(arena, O_FIRST_CHILD, nn)[u] == -1
        and _f32(arena, O_LOCK_REF, nn)[u] == 0
    )


@njit(cache=True)
def _hp_offer(arena, u):
    """Radix: enter ``u`` in the eviction heap if it is an evictable leaf."""
    if arena[C_HP_CAP] == 0 or not _evictable(arena, u):
        return
    nn = arena[C_NN]
    t = _f64(arena, O_LAST_ACCESS_S, nn).view(np.float64)[u]
    _hp_push(arena, u, t, _f64(arena, O_ACCESS_TICK, nn)[u])


@njit(cache=True)
def _hp_rebuild(arena):
    """The heap anew: one entry per evictable leaf (node ids ascending)."""
    arena[C_HP_N] = 0
    nn = arena[C_NN]
    last_access_s = _f64(arena, O_LAST_ACCESS_S, nn).view(np.float64)
    access_tick = _f64(arena, O_ACCESS_TICK, nn)
    for u in range(1, arena[C_NODE_HWM]):
        if _evictable(arena, u):
            _hp_sift_up(arena, u, last_access_s[u], access_tick[u])


@njit(cache=True)
def _hp_take(arena):
    """Pop entries until one is a current evictable leaf with its current key; return that
    node (removed from the heap), or -1 when none is left."""
    hc = arena[C_HP_CAP]
    nn = arena[C_NN]
    hn = _f32(arena, O_HP_NODE, hc)
    ht_ = _f64(arena, O_HP_TIME, hc).view(np.float64)
    hk = _f64(arena, O_HP_TICK, hc)
    last_access_s = _f64(arena, O_LAST_ACCESS_S, nn).view(np.float64)
    access_tick = _f64(arena, O_ACCESS_TICK, nn)
    while arena[C_HP_N] > 0:
        u = hn[0]
        ok = _evictable(arena, u) and last_access_s[u] == ht_[0] and access_tick[u] == hk[0]
        _hp_pop(arena)
        if ok:
            return u
    return -1


@njit(cache=True)
def _lock_path(lock_ref, parent, node, delta):
    """Add ``delta`` to ``lock_ref`` of ``node`` and its ancestors (root excluded)."""
    while node > 0:
        lock_ref[node] += delta
        node = parent[node]


@njit(cache=True)
def _touch_path(parent, last_access_s, access_tick, counters, node, now_s):
    """Stamp the root->``node`` path with ``now_s``; ticks increase from root to leaf."""
    depth = 0
    n = node
    while n > 0:
        depth += 1
        n = parent[n]
    base = counters[C_TICK]
    k = depth
    n = node
    while n > 0:
        last_access_s[n] = now_s
        access_tick[n] = base + k
        k -= 1
        n = parent[n]
    counters[C_TICK] = base + depth


@njit(cache=True)
def _match(
    first_child, next_sibling, edge_first, edge_len, block_key, block_next, keys, n, out_blocks, res
):
    """Longest cached prefix of ``keys[:n]``.

    Args:
        first_child, next_sibling, edge_first, edge_len, block_key, block_next: tree views.
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
        key = keys[i]  # _find_child spelled out (passing views costs reference counting)
        c = first_child[node]
        while c != -1 and block_key[edge_first[c]] != key:
            c = next_sibling[c]
        if c == -1:
            break
        b = edge_first[c]
        j = 0
        while b != -1 and i < n and block_key[b] == keys[i]:
            out_blocks[i] = b
            b = block_next[b]
            i += 1
            j += 1
        node = c
        if j < edge_len[c]:
            partial = j
            break
    res[0] = node
    res[1] = partial
    res[2] = i


@njit(cache=True)
def _match_into(arena, keys, n):
    """:func:`_match` of ``keys[:n]`` into the scratch ``buf`` / ``res``."""
    nn = arena[C_NN]
    nb = arena[C_NB]
    _match(
        _f32(arena, O_FIRST_CHILD, nn),
        _f32(arena, O_NEXT_SIBLING, nn),
        _f32(arena, O_EDGE_FIRST, nn),
        _f32(arena, O_EDGE_LEN, nn),
        _f64(arena, O_BLOCK_KEY, nb),
        _f32(arena, O_BLOCK_NEXT, nb),
        keys,
        n,
        _f32(arena, O_BUF, arena[C_MB]),
        _f64(arena, O_RES, 4),
    )


@njit(cache=True)
def match_len(arena, keys, n):
    """Pages of ``keys[:n]`` cached now (no side effects)."""
    if n == 0:
        return 0
    _match_into(arena, keys, n)
    return arena[arena[O_RES] + 2]


@njit(cache=True)
def _evict(arena, want_free, page_tokens):
    """Evict LRU unlocked leaves until ``want_free`` blocks were freed (or none is left).

    Leaves are ordered by ``(last_access_s, access_tick)`` (the eviction heap). Blocks of an
    evicted leaf that a live table still references leave the tree but stay allocated. Freed
    blocks are pushed tail first, so the next allocation reuses the leaf's head block first.
    """
    edge_first = _f32(arena, O_EDGE_FIRST, arena[C_NN])
    refcount = _f32(arena, O_REFCOUNT, arena[C_NB])
    block_next = _f32(arena, O_BLOCK_NEXT, arena[C_NB])
    in_tree = _f8(arena, O_IN_TREE, arena[C_NB])
    free_stack = _f32(arena, O_FREE_STACK, arena[C_NB])
    edge_len = _f32(arena, O_EDGE_LEN, arena[C_NN])
    parent = _f32(arena, O_PARENT, arena[C_NN])
    node_alive = _f8(arena, O_NODE_ALIVE, arena[C_NN])
    node_free = _f32(arena, O_NODE_FREE, arena[C_NN])
    freed = 0
    while freed < want_free:
        best = _hp_take(arena)
        if best == -1:
            break
        # count freeable blocks, then push them in reverse edge order
        f = 0
        b = edge_first[best]
        while b != -1:
            if refcount[b] == 0:
                f += 1
            b = block_next[b]
        top = arena[C_FREE_TOP]
        k = 0
        b = edge_first[best]
        while b != -1:
            nxt = block_next[b]
            in_tree[b] = 0
            block_next[b] = -1
            if refcount[b] == 0:
                arena[C_CACHED] -= 1
                free_stack[top + f - 1 - k] = b
                k += 1
            b = nxt
        arena[C_FREE_TOP] = top + f
        freed += f
        arena[C_EVICTED] += edge_len[best] * page_tokens
        p = parent[best]
        _unlink_child(arena, best)
        node_alive[best] = 0
        parent[best] = -1
        edge_first[best] = -1
        edge_len[best] = 0
        node_free[arena[C_NODE_FREE_TOP]] = best
        arena[C_NODE_FREE_TOP] += 1
        _hp_offer(arena, p)  # p may have become an evictable leaf
    return freed


@njit(cache=True)
def _insert(arena, s, keys, n, now_s, dedup):
    """Insert the first ``n`` blocks of seq ``s`` (page keys ``keys``) into the tree.

    Pages already in the tree keep the tree's block: with ``dedup`` (a running seq, SGLang's
    ``cache_unfinished_req``) the seq's table takes the tree's block and drops its own copy
    at once; otherwise (``release``) the caller drops the duplicate with the rest. New pages
    become a new leaf made of the seq's own blocks; insertion stops at the first such block
    that is already in the tree elsewhere (a fork's shared block).

    Returns:
        The node at the end of the inserted path (0 = root: nothing inserted or matched).
    """
    return _insert_from(arena, s, keys, n, now_s, dedup, 0, 0)


@njit(cache=True)
def _insert_from(arena, s, keys, n, now_s, dedup, i0, node0):
    """:func:`_insert` resumed at page ``i0`` from node ``node0``, whose edge ends there
    and which the walk over ``keys[:i0]`` reaches without changing anything (the caller
    knows it); the returned path is stamped from the root all the same."""
    first_child = _f32(arena, O_FIRST_CHILD, arena[C_NN])
    next_sibling = _f32(arena, O_NEXT_SIBLING, arena[C_NN])
    edge_first = _f32(arena, O_EDGE_FIRST, arena[C_NN])
    block_key = _f64(arena, O_BLOCK_KEY, arena[C_NB])
    in_tree = _f8(arena, O_IN_TREE, arena[C_NB])
    table = _table(arena)
    edge_len = _f32(arena, O_EDGE_LEN, arena[C_NN])
    block_next = _f32(arena, O_BLOCK_NEXT, arena[C_NB])
    parent = _f32(arena, O_PARENT, arena[C_NN])
    last_access_s = _f64(arena, O_LAST_ACCESS_S, arena[C_NN]).view(np.float64)
    access_tick = _f64(arena, O_ACCESS_TICK, arena[C_NN])
    counters = arena[:HEADER]
    node = node0
    i = i0
    while i < n:
        key = keys[i]  # _find_child spelled out (passing views costs reference counting)
        c = first_child[node]
        while c != -1 and block_key[edge_first[c]] != key:
            c = next_sibling[c]
        if c == -1:
            k = i
            while k < n and in_tree[table[s, k]] == 0:
                k += 1
            if k > i:
                for t in range(i, k):
                    b = table[s, t]
                    in_tree[b] = 1
                    block_key[b] = keys[t]
                    block_next[b] = table[s, t + 1] if t + 1 < k else -1
                u = _new_node(arena, node, table[s, i])
                edge_len[u] = k - i
                node = u
            break
        b = edge_first[c]
        j = 0
        while b != -1 and i < n and block_key[b] == keys[i]:
            if dedup and table[s, i] != b:
                _swap_to_tree_block(arena, s, i, b)
            b = block_next[b]
            i += 1
            j += 1
        if j < edge_len[c]:
            c = _split(arena, c, j)
        node = c
    if node > 0:
        _touch_path(parent, last_access_s, access_tick, counters, node, now_s)
        _hp_offer(arena, node)
    return node


@njit(cache=True)
def _swap_to_tree_block(arena, s, i, b):
    """Seq ``s``'s full page ``i`` is already cached as block ``b``: the table takes ``b``
    and drops its own copy (freed at once unless a fork still holds it)."""
    nb = arena[C_NB]
    refcount = _f32(arena, O_REFCOUNT, nb)
    in_tree = _f8(arena, O_IN_TREE, nb)
    block_fill = _f32(arena, O_BLOCK_FILL, nb)
    table = _table(arena)
    old = table[s, i]
    table[s, i] = b
    if refcount[b] == 0:
        arena[C_CACHED] -= 1
        arena[C_TOKENS] += block_fill[b]
    refcount[b] += 1
    r = refcount[old] - 1
    refcount[old] = r
    if r == 0:
        arena[C_TOKENS] -= block_fill[old]
        if in_tree[old] == 1:
            arena[C_CACHED] += 1
        else:
            free_stack = _f32(arena, O_FREE_STACK, nb)
            free_stack[arena[C_FREE_TOP]] = old
            arena[C_FREE_TOP] += 1


# ----------------------------------------------------------------------------- APC (vLLM v1)
#
# Paged with automatic prefix caching keeps every block whose refcount is 0 (never used,
# freed, or cached) in one doubly linked free queue, as vLLM v1's ``FreeKVCacheBlockQueue``:
# a request's blocks are appended in reverse order when it frees them (its tail is evicted
# first), a cache hit on a free block takes it out of the queue, and an allocation pops the
# head, evicting that block's cached page if it has one: block-by-block LRU. Cached pages
# form a trie of one block per node (the tree arrays above, every edge one page long), which
# answers vLLM's chained-hash lookup: a hit is the longest run of cached pages from the
# first. Counters: C_FREE_TOP = queued blocks not in the trie, C_CACHED = queued blocks in
# it; the free stack is unused.


@njit(cache=True)
def _apc_evict_block(arena, b):
    """Drop cached block ``b``'s trie node and the subtree below it.

    Descendants lose their cached status too (vLLM keeps their hashes, but a chained-hash
    lookup can no longer reach them); free ones stay in the queue as plain free blocks.
    Counts every page that leaves the trie as evicted.

    NOTE(speed): this runs for almost every block an APC run allocates (the cache is full),
    so fields are read through one int32 and one int8 view of the whole arena (an int32
    field at word offset ``o`` starts at int32 index ``2 * o``, an int8 one at ``8 * o``):
    every view made or passed costs atomic reference counting, which was a third of the
    kernel time with a view per field.
    """
    a32 = arena.view(np.int32)
    a8 = arena.view(np.int8)
    obn = 2 * arena[O_BLOCK_NODE]
    oit = 8 * arena[O_IN_TREE]
    orc = 2 * arena[O_REFCOUNT]
    ofc = 2 * arena[O_FIRST_CHILD]
    ons = 2 * arena[O_NEXT_SIBLING]
    ops = 2 * arena[O_PREV_SIBLING]
    opa = 2 * arena[O_PARENT]
    oef = 2 * arena[O_EDGE_FIRST]
    oel = 2 * arena[O_EDGE_LEN]
    ona = 8 * arena[O_NODE_ALIVE]
    onf = 2 * arena[O_NODE_FREE]
    page_tokens = arena[C_PAGE]
    u = a32[obn + b]
    v = u
    while True:  # post-order, without a stack: descend to a leaf, free it, climb
        c = a32[ofc + v]
        if c != -1:
            v = c
            continue
        p = a32[opa + v]
        blk = a32[oef + v]
        a8[oit + blk] = 0
        a32[obn + blk] = -1
        arena[C_EVICTED] += page_tokens
        if blk != b and a32[orc + blk] == 0:
            arena[C_CACHED] -= 1
            arena[C_FREE_TOP] += 1
        a8[ona + v] = 0
        a32[opa + v] = -1
        a32[oef + v] = -1
        a32[oel + v] = 0
        a32[onf + arena[C_NODE_FREE_TOP]] = v
        arena[C_NODE_FREE_TOP] += 1
        nx = a32[ons + v]
        a32[ons + v] = -1
        if v == u:  # unlink u from its parent's child list
            pv = a32[ops + u]
            a32[ops + u] = -1
            if pv == -1:
                a32[ofc + p] = nx
            else:
                a32[ons + pv] = nx
            if nx != -1:
                a32[ops + nx] = pv
            break
        a32[ofc + p] = nx  # v was p's first child
        if nx != -1:
            a32[ops + nx] = -1
        v = p


@njit(cache=True)
def _apc_pop(arena):
    """Pop the head of the free queue (the caller checked it is not empty), evicting its
    cached page if it has one; the caller sets the refcount. (Whole-arena views: see
    :func:`_apc_evict_block`.)"""
    a32 = arena.view(np.int32)
    op = 2 * arena[O_FQ_PREV]
    on = 2 * arena[O_FQ_NEXT]
    b = arena[C_FQ_HEAD]
    n = a32[on + b]  # _fq_remove of the head (no predecessor)
    arena[C_FQ_HEAD] = n
    if n == -1:
        arena[C_FQ_TAIL] = -1
    else:
        a32[op + n] = -1
    a32[op + b] = -1
    a32[on + b] = -1
    if arena.view(np.int8)[8 * arena[O_IN_TREE] + b] == 1:
        arena[C_CACHED] -= 1
        _apc_evict_block(arena, b)
    else:
        arena[C_FREE_TOP] -= 1
    return b


@njit(cache=True)
def _apc_drop(arena, b):
    """A block's refcount reached 0: it joins the free queue's tail (cached or plain).
    (``_fq_append`` on whole-arena views: see :func:`_apc_evict_block`.)"""
    a32 = arena.view(np.int32)
    op = 2 * arena[O_FQ_PREV]
    on = 2 * arena[O_FQ_NEXT]
    t = arena[C_FQ_TAIL]
    a32[op + b] = t
    a32[on + b] = -1
    if t == -1:
        arena[C_FQ_HEAD] = b
    else:
        a32[on + t] = b
    arena[C_FQ_TAIL] = b
    if arena.view(np.int8)[8 * arena[O_IN_TREE] + b] == 1:
        arena[C_CACHED] += 1
    else:
        arena[C_FREE_TOP] += 1


@njit(cache=True)
def _apc_insert(arena, s, keys, n):
    """Cache the first ``n`` full pages of seq ``s`` (vLLM's ``cache_full_blocks``).

    A page whose key is already cached keeps the cached block (the seq's own copy stays
    uncached, as a duplicate); a new page's block becomes a trie node under its prefix.
    """
    apc_insert_from(arena, s, keys, n, 0, 0)


@njit(cache=True)
def apc_insert_from(arena, s, keys, n, i0, node0):
    """:func:`_apc_insert` resumed at page ``i0`` from trie node ``node0``, which the walk
    over ``keys[:i0]`` reaches without changing anything (the caller knows it)."""
    nb = arena[C_NB]
    nn = arena[C_NN]
    edge_first = _f32(arena, O_EDGE_FIRST, nn)
    edge_len = _f32(arena, O_EDGE_LEN, nn)
    block_key = _f64(arena, O_BLOCK_KEY, nb)
    block_next = _f32(arena, O_BLOCK_NEXT, nb)
    block_node = _f32(arena, O_BLOCK_NODE, nb)
    in_tree = _f8(arena, O_IN_TREE, nb)
    table = _table(arena)
    first_child = _f32(arena, O_FIRST_CHILD, nn)
    next_sibling = _f32(arena, O_NEXT_SIBLING, nn)
    node = node0
    for i in range(i0, n):
        key = keys[i]  # _find_child spelled out (passing views costs reference counting)
        c = first_child[node]
        while c != -1 and block_key[edge_first[c]] != key:
            c = next_sibling[c]
        if c != -1:
            node = c
            continue
        b = table[s, i]
        if in_tree[b] == 1:
            break  # cached under another prefix (a fork's shared block): stop
        block_next[b] = -1
        in_tree[b] = 1
        block_key[b] = keys[i]
        u = _new_node(arena, node, b)
        edge_len[u] = 1
        block_node[b] = u
        node = u


@njit(cache=True)
def _apc_share(arena, s):
    """Seq ``s`` takes the ``res[2]`` cached blocks ``_match_counted`` found; free ones
    leave the queue (vLLM's ``touch``)."""
    nb = arena[C_NB]
    buf = _f32(arena, O_BUF, arena[C_MB])
    res = _f64(arena, O_RES, 4)
    refcount = _f32(arena, O_REFCOUNT, nb)
    block_fill = _f32(arena, O_BLOCK_FILL, nb)
    fq_prev = _f32(arena, O_FQ_PREV, nb)
    fq_next = _f32(arena, O_FQ_NEXT, nb)
    table = _table(arena)
    gained = 0
    for i in range(res[2]):
        b = buf[i]
        if refcount[b] == 0:  # _fq_remove spelled out
            p = fq_prev[b]
            nx = fq_next[b]
            if p == -1:
                arena[C_FQ_HEAD] = nx
            else:
                fq_next[p] = nx
            if nx == -1:
                arena[C_FQ_TAIL] = p
            else:
                fq_prev[nx] = p
            fq_prev[b] = -1
            fq_next[b] = -1
            gained += block_fill[b]
        refcount[b] += 1
        table[s, i] = b
    arena[C_CACHED] -= res[3]
    arena[C_TOKENS] += gained


@njit(cache=True)
def _apc_apply_grow(arena, seq_ids, new_totals, cow):
    """``_apply_grow`` with blocks from the free queue's head (caller checked the count)."""
    nb = arena[C_NB]
    num_seqs = arena[C_S]
    page_tokens = arena[C_PAGE]
    refcount = _f32(arena, O_REFCOUNT, nb)
    block_fill = _f32(arena, O_BLOCK_FILL, nb)
    table = _table(arena)
    table_len = _f32(arena, O_TABLE_LEN, num_seqs)
    seq_tokens = _f64(arena, O_SEQ_TOKENS, num_seqs)
    added = 0
    for t in range(seq_ids.shape[0]):
        s = seq_ids[t]
        new = new_totals[t]
        cur = seq_tokens[s]
        if new <= cur:
            continue
        nbk = table_len[s]
        cap = nbk * page_tokens
        if cur < cap:
            i = nbk - 1
            f = new - i * page_tokens
            if f > page_tokens:
                f = page_tokens
            if cow[t] == 1:
                old = table[s, i]
                b = _apc_pop(arena)
                refcount[b] = 1
                table[s, i] = b
                r = refcount[old] - 1
                refcount[old] = r
                if r == 0:
                    added -= block_fill[old]
                    _apc_drop(arena, old)
                arena[C_COW] += 1
                block_fill[b] = f
                added += f
            else:
                b = table[s, i]
                added += f - block_fill[b]
                block_fill[b] = f
        if new > cap:
            want = nbk + (new - cap + page_tokens - 1) // page_tokens
            f = new - cap
            for i in range(nbk, want):
                b = _apc_pop(arena)
                refcount[b] = 1
                block_fill[b] = f if f < page_tokens else page_tokens
                f -= page_tokens
                table[s, i] = b
            added += new - cap
            table_len[s] = want
        seq_tokens[s] = new
    arena[C_TOKENS] += added


@njit(cache=True)
def _apc_release(arena, s, keys, n):
    """``release`` with APC: cache the full pages, then queue the blocks, tail first."""
    if n > 0:
        _apc_insert(arena, s, keys, n)
    nb = arena[C_NB]
    num_seqs = arena[C_S]
    refcount = _f32(arena, O_REFCOUNT, nb)
    block_fill = _f32(arena, O_BLOCK_FILL, nb)
    table = _table(arena)
    table_len = _f32(arena, O_TABLE_LEN, num_seqs)
    dropped = 0
    for i in range(table_len[s] - 1, -1, -1):
        b = table[s, i]
        table[s, i] = -1
        r = refcount[b] - 1
        refcount[b] = r
        if r == 0:
            dropped += block_fill[b]
            _apc_drop(arena, b)
    arena[C_TOKENS] -= dropped
    table_len[s] = 0
    _f64(arena, O_SEQ_TOKENS, num_seqs)[s] = 0
    _f8(arena, O_SEQ_LIVE, num_seqs)[s] = 0
    _f32(arena, O_SEQ_NODE, num_seqs)[s] = 0


# ----------------------------------------------------------------------------- seq ops


@njit(cache=True)
def _match_counted(arena, keys, n):
    """``_match`` into the scratch ``buf``/``res``, plus ``res[3]`` = matched blocks that
    are cached (refcount 0). Returns the pages matched."""
    _match_into(arena, keys, n)
    buf = _f32(arena, O_BUF, arena[C_MB])
    res = _f64(arena, O_RES, 4)
    refcount = _f32(arena, O_REFCOUNT, arena[C_NB])
    cached_hit = 0
    for i in range(res[2]):
        if refcount[buf[i]] == 0:
            cached_hit += 1
    res[3] = cached_hit
    return res[2]


@njit(cache=True)
def _share_prefix(arena, s, now_s):
    """Seq ``s`` takes the ``res[2]`` blocks ``_match_counted`` found: split a partly
    matched edge, lock and stamp the path, take references. Returns the locked node."""
    nn = arena[C_NN]
    nb = arena[C_NB]
    buf = _f32(arena, O_BUF, arena[C_MB])
    res = _f64(arena, O_RES, 4)
    node = res[0]
    m = res[2]
    if res[1] > 0:
        node = _split(arena, node, res[1])
    parent = _f32(arena, O_PARENT, nn)
    _lock_path(_f32(arena, O_LOCK_REF, nn), parent, node, 1)
    _touch_path(
        parent,
        _f64(arena, O_LAST_ACCESS_S, nn).view(np.float64),
        _f64(arena, O_ACCESS_TICK, nn),
        arena[:HEADER],
        node,
        now_s,
    )
    _hp_offer(arena, node)
    refcount = _f32(arena, O_REFCOUNT, nb)
    block_fill = _f32(arena, O_BLOCK_FILL, nb)
    table = _table(arena)
    gained = 0
    for i in range(m):  # _inc_ref spelled out
        b = buf[i]
        if refcount[b] == 0:
            gained += block_fill[b]
        refcount[b] += 1
        table[s, i] = b
    arena[C_CACHED] -= res[3]
    arena[C_TOKENS] += gained
    return node


@njit(cache=True)
def admit(arena, s, keys, n, prompt_tokens, now_s):
    """Register seq ``s``, sharing (and locking) the cached prefix of ``keys[:n]``.

    Args:
        arena: the manager's state.
        s: seq id (not live; the facade checked).
        keys: int64[>= n]; page keys, already capped so that at least one prompt token is
            left to compute.
        n: number of keys.
        prompt_tokens: prompt length.
        now_s: simulation time (LRU stamp).

    Returns:
        Pages matched (>= 0), or -1 (no room: fewer than the watermark would stay free
        after the prompt; nothing changed).
    """
    page_tokens = arena[C_PAGE]
    m = 0
    cached_hit = 0
    if n > 0:
        m = _match_counted(arena, keys, n)
        cached_hit = arena[arena[O_RES] + 3]
    need = (prompt_tokens + page_tokens - 1) // page_tokens - m
    if arena[C_FREE_TOP] + arena[C_CACHED] - cached_hit - need < arena[C_WATERMARK]:
        return -1
    node = 0
    if m > 0:
        if arena[C_APC] == 1:
            _apc_share(arena, s)
        else:
            node = _share_prefix(arena, s, now_s)
    num_seqs = arena[C_S]
    _f32(arena, O_TABLE_LEN, num_seqs)[s] = m
    _f64(arena, O_SEQ_TOKENS, num_seqs)[s] = m * page_tokens
    _f8(arena, O_SEQ_LIVE, num_seqs)[s] = 1
    _f32(arena, O_SEQ_NODE, num_seqs)[s] = node
    return m


@njit(cache=True, inline="always")
def plan_grow(
    seq_tokens,
    table,
    table_len,
    refcount,
    seq_live,
    seq_ids,
    new_totals,
    page_tokens,
    max_seq_len,
    cow,
):
    """Check a grow batch and count the blocks it takes (new blocks + copy-on-write copies).

    One pass, and no division unless a seq crosses into a new block: a seq with ``nb``
    blocks holds ``cur`` tokens with ``(nb - 1) * page < cur <= nb * page``.

    Args:
        seq_tokens, table, table_len, refcount, seq_live: state views of the same names.
        seq_ids: int64[k] seq ids (distinct).
        new_totals: int64[k] token counts wanted; <= current is a no-op.
        page_tokens: tokens per block.
        max_seq_len: longest sequence, in tokens.
        cow: int8[>= k] out; 1 where that seq copies its shared partial last block
            (decided in batch order).

    Returns:
        Number of blocks needed, or a misuse code (state untouched): BAD_SHAPE, BAD_SEQ
        (an id out of range or not live; before TOO_LONG), TOO_LONG (a total beyond
        ``max_seq_len``).
    """
    k = seq_ids.shape[0]
    if new_totals.shape[0] != k:
        return BAD_SHAPE
    num_seqs = seq_live.shape[0]
    need = 0
    status = 0
    ncow = 0
    t = 0
    while t < k:
        s = seq_ids[t]
        if s < 0 or s >= num_seqs or seq_live[s] == 0:
            status = BAD_SEQ
            break
        cow[t] = 0
        new = new_totals[t]
        t += 1
        if new > max_seq_len:
            status = TOO_LONG  # keep checking ids: BAD_SEQ wins
            continue
        cur = seq_tokens[s]
        if new <= cur or status != 0:
            continue
        nb = table_len[s]
        cap = nb * page_tokens
        if cur < cap:
            last = table[s, nb - 1]
            if refcount[last] > 1:
                refcount[last] -= 1  # sequential effect of the copy; undone below
                cow[t - 1] = 1
                ncow += 1
                need += 1
        if new > cap:
            need += (new - cap + page_tokens - 1) // page_tokens
    if ncow > 0:
        for u in range(t):
            if cow[u] == 1:
                s = seq_ids[u]
                refcount[table[s, table_len[s] - 1]] += 1
    if status != 0:
        return status
    return need


@njit(cache=True, inline="always")
def _apply_grow(
    arena,
    free_stack,
    refcount,
    in_tree,
    block_fill,
    table,
    table_len,
    seq_tokens,
    seq_ids,
    new_totals,
    page_tokens,
    cow,
):
    """Second half of ``grow``: take the planned blocks (caller checked they are free).

    NOTE(speed): popping a block and dropping a reference are spelled out, and the
    free-stack top and counters are read and written as arena words (a call per block, or
    a view of the header, costs reference counting of its arrays).
    """
    added = 0
    top = arena[C_FREE_TOP]
    for t in range(seq_ids.shape[0]):
        s = seq_ids[t]
        new = new_totals[t]
        cur = seq_tokens[s]
        if new <= cur:
            continue
        nb = table_len[s]
        cap = nb * page_tokens
        if cur < cap:
            # the partial last block takes tokens (into a private copy if it is shared)
            i = nb - 1
            f = new - i * page_tokens
            if f > page_tokens:
                f = page_tokens
            if cow[t] == 1:
                old = table[s, i]
                top -= 1
                b = free_stack[top]
                refcount[b] = 1
                table[s, i] = b
                r = refcount[old] - 1  # drop old's reference
                refcount[old] = r
                if r == 0:
                    added -= block_fill[old]
                    if in_tree[old] == 1:
                        arena[C_CACHED] += 1
                    else:
                        free_stack[top] = old
                        top += 1
                arena[C_COW] += 1
                block_fill[b] = f
                added += f
            else:
                b = table[s, i]
                added += f - block_fill[b]
                block_fill[b] = f
        if new > cap:
            want = nb + (new - cap + page_tokens - 1) // page_tokens
            f = new - nb * page_tokens  # tokens from block nb on
            for i in range(nb, want):
                top -= 1
                b = free_stack[top]
                refcount[b] = 1
                if f > page_tokens:
                    block_fill[b] = page_tokens
                    f -= page_tokens
                else:
                    block_fill[b] = f
                table[s, i] = b
            added += new - cap
            table_len[s] = want
        seq_tokens[s] = new
    arena[C_FREE_TOP] = top
    arena[C_TOKENS] += added


@njit(cache=True)
def _grow(arena, seq_ids, new_totals, cow):
    """``grow`` on the few views it needs; the tree's views only to evict (radix)."""
    nb = arena[C_NB]
    s = arena[C_S]
    page_tokens = arena[C_PAGE]
    seq_tokens = _f64(arena, O_SEQ_TOKENS, s)
    table = _table(arena)
    table_len = _f32(arena, O_TABLE_LEN, s)
    refcount = _f32(arena, O_REFCOUNT, nb)
    need = plan_grow(
        seq_tokens,
        table,
        table_len,
        refcount,
        _f8(arena, O_SEQ_LIVE, s),
        seq_ids,
        new_totals,
        page_tokens,
        arena[C_MAX_SEQ_LEN],
        cow,
    )
    if need < 0:
        return need
    free = arena[C_FREE_TOP]
    if arena[C_APC] == 1:
        if need > free + arena[C_CACHED]:
            return NO_SPACE
        _apc_apply_grow(arena, seq_ids, new_totals, cow)
        return OK
    if need > free:
        if arena[C_CAN_EVICT] == 0 or free + arena[C_CACHED] < need:
            return NO_SPACE
        _evict(arena, need - free, page_tokens)
    _apply_grow(
        arena,
        _f32(arena, O_FREE_STACK, nb),
        refcount,
        _f8(arena, O_IN_TREE, nb),
        _f32(arena, O_BLOCK_FILL, nb),
        table,
        table_len,
        seq_tokens,
        seq_ids,
        new_totals,
        page_tokens,
        cow,
    )
    return OK


_SLOW = -100  # _grow_common: not the common case, take the full path (nothing changed)


@njit(cache=True)
def _grow_common(arena, seq_ids, new_totals):
    """``grow``'s common case, or ``_SLOW`` with nothing changed: valid ids and totals, no
    shared partial last block (no copy-on-write), and enough free blocks without evicting
    (radix) or in the free queue (APC: blocks from its head, as ``_apc_apply_grow``). Same
    effect as ``_grow`` there, the ``cow`` scratch zeroed as ``plan_grow`` leaves it.

    NOTE(speed): the compiled replica grows its batch once per decoding step; the ten or
    so views ``_grow`` builds cost reference counting of their arrays (about a third of
    the kernel's time on the Azure hour), so fields go through one int32 and one int8
    view of the whole arena, as in :func:`_new_node`.
    """
    k = seq_ids.shape[0]
    num_seqs = arena[C_S]
    if new_totals.shape[0] != k or k > num_seqs:
        return _SLOW
    apc = arena[C_APC] == 1
    a32 = arena.view(np.int32)
    a8 = arena.view(np.int8)
    page = arena[C_PAGE]
    max_seq_len = arena[C_MAX_SEQ_LEN]
    mb = arena[C_MB]
    o_tok = arena[O_SEQ_TOKENS]
    o_tl = 2 * arena[O_TABLE_LEN]
    o_tab = 2 * arena[O_TABLE]
    o_rc = 2 * arena[O_REFCOUNT]
    o_live = 8 * arena[O_SEQ_LIVE]
    need = 0
    for t in range(k):
        s = seq_ids[t]
        if s < 0 or s >= num_seqs or a8[o_live + s] == 0:
            return _SLOW
        new = new_totals[t]
        if new > max_seq_len:
            return _SLOW
        cur = arena[o_tok + s]
        if new <= cur:
            continue
        nb = a32[o_tl + s]
        cap = nb * page
        if cur < cap and a32[o_rc + a32[o_tab + s * mb + nb - 1]] > 1:
            return _SLOW
        if new > cap:
            need += (new - cap + page - 1) // page
    top = arena[C_FREE_TOP]
    if need > (top + arena[C_CACHED] if apc else top):
        return _SLOW
    o_cow = 8 * arena[O_COW]
    o_fs = 2 * arena[O_FREE_STACK]
    o_bf = 2 * arena[O_BLOCK_FILL]
    added = 0
    for t in range(k):
        a8[o_cow + t] = 0
        s = seq_ids[t]
        new = new_totals[t]
        cur = arena[o_tok + s]
        if new <= cur:
            continue
        nb = a32[o_tl + s]
        cap = nb * page
        if cur < cap:
            i = nb - 1
            f = new - i * page
            if f > page:
                f = page
            b = a32[o_tab + s * mb + i]
            added += f - a32[o_bf + b]
            a32[o_bf + b] = f
        if new > cap:
            want = nb + (new - cap + page - 1) // page
            f = new - cap  # tokens from block nb on
            for i in range(nb, want):
                if apc:
                    b = _apc_pop(arena)  # moves the free count itself
                else:
                    top -= 1
                    b = a32[o_fs + top]
                a32[o_rc + b] = 1
                if f > page:
                    a32[o_bf + b] = page
                    f -= page
                else:
                    a32[o_bf + b] = f
                a32[o_tab + s * mb + i] = b
            added += new - cap
            a32[o_tl + s] = want
        arena[o_tok + s] = new
    if not apc:
        arena[C_FREE_TOP] = top
    arena[C_TOKENS] += added
    return OK


@njit(cache=True)
def grow(arena, seq_ids, new_totals):
    """All-or-nothing growth of many seqs (see ``plan_grow``).

    Radix (``can_evict``) evicts LRU leaves only when that makes the whole batch fit.

    Returns:
        OK, NO_SPACE (nothing changed), or a misuse code of ``plan_grow`` (nothing changed).
    """
    status = _grow_common(arena, seq_ids, new_totals)
    if status != _SLOW:
        return status
    s = arena[C_S]
    if seq_ids.shape[0] <= s:
        return _grow(arena, seq_ids, new_totals, _f8(arena, O_COW, s))
    return _grow(arena, seq_ids, new_totals, np.zeros(seq_ids.shape[0], dtype=np.int8))


@njit(cache=True)
def slots_needed(arena, seq_ids, new_totals):
    """Blocks ``grow`` would take now (no side effects), or a misuse code of ``plan_grow``."""
    s = arena[C_S]
    if seq_ids.shape[0] <= s:
        cow = _f8(arena, O_COW, s)
    else:
        cow = np.zeros(seq_ids.shape[0], dtype=np.int8)
    return plan_grow(
        _f64(arena, O_SEQ_TOKENS, s),
        _table(arena),
        _f32(arena, O_TABLE_LEN, s),
        _f32(arena, O_REFCOUNT, arena[C_NB]),
        _f8(arena, O_SEQ_LIVE, s),
        seq_ids,
        new_totals,
        arena[C_PAGE],
        arena[C_MAX_SEQ_LEN],
        cow,
    )


@njit(cache=True)
def _unlock(arena, node):
    """Drop one lock from ``node`` and its ancestors."""
    _lock_path(_f32(arena, O_LOCK_REF, arena[C_NN]), _f32(arena, O_PARENT, arena[C_NN]), node, -1)
    _hp_offer(arena, node)


@njit(cache=True)
def release(arena, s, keys, n, now_s):
    """Free seq ``s``: insert its first ``n`` pages (keys) into the tree, unlock, drop refs.

    Blocks are dropped tail first, so the head block ends on top of the free stack.
    NOTE(speed): the tree is touched (and its views made) only when there are pages to
    insert or a locked prefix, never when paged; dropping references is spelled out, and
    the free-stack top and counters are arena words (every view costs reference counting).
    """
    if arena[C_APC] == 1:
        _apc_release(arena, s, keys, n)
        return
    nb = arena[C_NB]
    num_seqs = arena[C_S]
    seq_node = _f32(arena, O_SEQ_NODE, num_seqs)
    if n > 0:
        _insert(arena, s, keys, n, now_s, False)
    node = seq_node[s]
    if node > 0:
        _unlock(arena, node)
    refcount = _f32(arena, O_REFCOUNT, nb)
    in_tree = _f8(arena, O_IN_TREE, nb)
    block_fill = _f32(arena, O_BLOCK_FILL, nb)
    free_stack = _f32(arena, O_FREE_STACK, nb)
    table = _table(arena)
    table_len = _f32(arena, O_TABLE_LEN, num_seqs)
    top = arena[C_FREE_TOP]
    dropped = 0
    newly_cached = 0
    for i in range(table_len[s] - 1, -1, -1):
        b = table[s, i]
        table[s, i] = -1
        r = refcount[b] - 1
        refcount[b] = r
        if r == 0:
            dropped += block_fill[b]
            if in_tree[b] == 1:
                newly_cached += 1
            else:
                free_stack[top] = b
                top += 1
    arena[C_FREE_TOP] = top
    arena[C_TOKENS] -= dropped
    arena[C_CACHED] += newly_cached
    table_len[s] = 0
    _f64(arena, O_SEQ_TOKENS, num_seqs)[s] = 0
    _f8(arena, O_SEQ_LIVE, num_seqs)[s] = 0
    seq_node[s] = 0


@njit(cache=True)
def cache_blocks(arena, s, keys, n, now_s):
    """Cache the first ``n`` full pages of live seq ``s`` now, while it runs.

    APC: new pages join the trie (vLLM caches each full block once computed). Radix:
    SGLang's ``cache_unfinished_req``: insert, take the tree's block where a page was
    cached already (dropping the seq's copy), and move the seq's lock down to the end of
    the inserted path, so that other requests can match it and nobody can evict it.
    """
    if n <= 0:
        return
    if arena[C_APC] == 1:
        _apc_insert(arena, s, keys, n)
        return
    _radix_cache(arena, s, keys, n, now_s, False)


@njit(cache=True)
def cache_blocks_resumed(arena, s, keys, n, now_s):
    """Radix :func:`cache_blocks` for a caller that passes seq ``s`` the same page keys on
    every call (a request's identity): ``keys`` agree with the seq's locked prefix, which
    holds its first pages as tree blocks (shared at admission or swapped in by an earlier
    insert), cannot be evicted, and keeps its node id and edge end through splits; walking
    it again matches every page and changes nothing, so the insert resumes below it.
    (A manager's caller may pass other keys, e.g. a fork's own identity: not resumable.)
    """
    if n <= 0:
        return
    _radix_cache(arena, s, keys, n, now_s, True)


@njit(cache=True)
def _radix_cache(arena, s, keys, n, now_s, resume):
    """SGLang's ``cache_unfinished_req`` (see :func:`cache_blocks`)."""
    seq_node = _f32(arena, O_SEQ_NODE, arena[C_S])
    old = seq_node[s]
    depth = n + 1
    if resume:
        depth = 0
        edge_len = _f32(arena, O_EDGE_LEN, arena[C_NN])
        parent = _f32(arena, O_PARENT, arena[C_NN])
        u = old
        while u > 0:
            depth += edge_len[u]
            u = parent[u]
    if depth <= n:
        node = _insert_from(arena, s, keys, n, now_s, True, depth, old)
    else:
        node = _insert(arena, s, keys, n, now_s, True)
    if node == old or node == 0:
        return
    parent = _f32(arena, O_PARENT, arena[C_NN])
    u = node
    while u > 0 and u != old:
        u = parent[u]
    if u != old:
        return  # fewer pages than the locked prefix: keep the deeper lock
    lock_ref = _f32(arena, O_LOCK_REF, arena[C_NN])
    _lock_path(lock_ref, parent, node, 1)
    _lock_path(lock_ref, parent, old, -1)
    _hp_offer(arena, old)  # (an ancestor of node: not a leaf; offered for the invariant)
    seq_node[s] = node


@njit(cache=True)
def fork(arena, par, child):
    """Child shares all of parent's blocks (refcount++) and its locked prefix."""
    table = _table(arena)
    table_len = _f32(arena, O_TABLE_LEN, arena[C_S])
    refcount = _f32(arena, O_REFCOUNT, arena[C_NB])
    in_tree = _f8(arena, O_IN_TREE, arena[C_NB])
    block_fill = _f32(arena, O_BLOCK_FILL, arena[C_NB])
    counters = arena[:HEADER]
    seq_tokens = _f64(arena, O_SEQ_TOKENS, arena[C_S])
    seq_node = _f32(arena, O_SEQ_NODE, arena[C_S])
    lock_ref = _f32(arena, O_LOCK_REF, arena[C_NN])
    parent = _f32(arena, O_PARENT, arena[C_NN])
    seq_live = _f8(arena, O_SEQ_LIVE, arena[C_S])
    nb = table_len[par]
    for i in range(nb):
        b = table[par, i]
        _inc_ref(refcount, in_tree, block_fill, counters, b)
        table[child, i] = b
    table_len[child] = nb
    seq_tokens[child] = seq_tokens[par]
    seq_node[child] = seq_node[par]
    _lock_path(lock_ref, parent, seq_node[par], 1)
    seq_live[child] = 1


@njit(cache=True)
def recount_slots(arena, out):
    """Token and internal-fragmentation slots by scanning every table (invariant checks).

    A used block's filled slots are the most any holder has written into it. Writes
    ``(tokens, internal)`` into ``out`` (int64[2]); the O(1) figures come from
    ``counters[C_TOKENS]``.
    """
    refcount = _f32(arena, O_REFCOUNT, arena[C_NB])
    seq_live = _f8(arena, O_SEQ_LIVE, arena[C_S])
    seq_tokens = _f64(arena, O_SEQ_TOKENS, arena[C_S])
    table = _table(arena)
    table_len = _f32(arena, O_TABLE_LEN, arena[C_S])
    page_tokens = arena[C_PAGE]
    nb = refcount.shape[0]
    filled = np.zeros(nb, dtype=np.int64)
    for s in range(seq_live.shape[0]):
        if seq_live[s] == 0:
            continue
        tok = seq_tokens[s]
        for i in range(table_len[s]):
            f = tok - i * page_tokens
            if f > page_tokens:
                f = page_tokens
            b = table[s, i]
            if f > filled[b]:
                filled[b] = f
    tokens = 0
    internal = 0
    for b in range(nb):
        if refcount[b] > 0:
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
def _run_trace_apc(arena, ops, keys, results):
    """``run_trace`` for paged with prefix caching: every op through the kernels; every
    successful grow caches the seq's full pages (``cache_computed``; the engine calls it only
    when a page fills, so this driver does more tree walks than a run)."""
    num_seqs = arena[C_S]
    page_tokens = arena[C_PAGE]
    max_seq_len = arena[C_MAX_SEQ_LEN]
    seq_live = _f8(arena, O_SEQ_LIVE, num_seqs)
    seq_tokens = _f64(arena, O_SEQ_TOKENS, num_seqs)
    ids = np.zeros(1, dtype=np.int64)
    totals = np.zeros(1, dtype=np.int64)
    seq_keys = np.zeros(num_seqs, dtype=np.int64)  # key_off, key_n of each live seq
    seq_nkeys = np.zeros(num_seqs, dtype=np.int64)
    for i in range(ops.shape[0]):
        op = ops[i, 0]
        s = ops[i, 1]
        k0 = ops[i, 3]
        if op == OP_ADMIT:
            if seq_live[s] == 1:
                results[i] = SKIPPED
                continue
            new = ops[i, 2]
            n = min(ops[i, 4], (new - 1) // page_tokens)
            m = admit(arena, s, keys[k0 : k0 + n], n, new, float(i))
            results[i] = m
            if m < 0:
                continue
            seq_keys[s] = k0
            seq_nkeys[s] = ops[i, 4]
        elif seq_live[s] == 0:
            results[i] = SKIPPED
            continue
        elif op == OP_GROW:
            new = min(seq_tokens[s] + ops[i, 2], max_seq_len)
        else:
            n = min(ops[i, 4], seq_tokens[s] // page_tokens)
            release(arena, s, keys[k0 : k0 + n], n, float(i))
            results[i] = 0
            continue
        ids[0] = s
        totals[0] = new
        status = grow(arena, ids, totals)
        if op == OP_GROW:
            results[i] = status
        if status == OK:
            n = min(seq_nkeys[s], seq_tokens[s] // page_tokens)
            k0 = seq_keys[s]
            cache_blocks(arena, s, keys[k0 : k0 + n], n, float(i))


@njit(cache=True)
def run_trace(arena, ops, keys, results):
    """Run a whole operation trace in one kernel call (benchmarks; no facade overhead).

    Args:
        arena: the manager's state (page size, watermark, eviction and ``max_seq_len`` come
            from its header).
        ops: int64[n, 5] rows ``(op, seq, arg, key_off, key_n)``; ``op`` is OP_ADMIT
            (``arg`` = prompt tokens; on success the seq grows to its prompt at once),
            OP_GROW (``arg`` = tokens to add, capped at ``max_seq_len``) or OP_FREE
            (caches ``min(key_n, held // page)`` pages). An op on a seq in the wrong state
            (admit of a live seq, grow/free of a dead one) is skipped.
        keys: int64[...]; page-key pool that ``key_off``/``key_n`` index.
        results: int64[n] out; admit: pages matched or -1; grow: status; free: 0;
            SKIPPED for skipped ops. Op ``i`` runs at simulation time ``i`` seconds.
    """
    if arena[C_APC] == 1:
        _run_trace_apc(arena, ops, keys, results)
        return
    num_seqs = arena[C_S]
    nb = arena[C_NB]
    page_tokens = arena[C_PAGE]
    max_seq_len = arena[C_MAX_SEQ_LEN]
    can_evict = arena[C_CAN_EVICT]
    watermark = arena[C_WATERMARK]
    # NOTE(speed): every view is made once here, and the paged work of an op (admit without
    # page keys, a single-seq grow, release without tree work) is spelled out in this loop:
    # passing the views to a helper, even an ``inline="always"`` one, costs two atomic
    # reference-count updates per array per op (~25 arrays per grow, which was most of the
    # time), as numba's reference-count pruning does not remove them here. Tree work (radix)
    # goes through the ``admit`` / ``release`` / ``_evict`` kernels. The spelled-out code is
    # ``admit`` / ``plan_grow`` + ``_apply_grow`` / ``release`` for one seq (a seq that
    # grows takes at most one copy-on-write copy: its own partial last block); the
    # benchmark and tests/memory check it against the twin.
    seq_live = _f8(arena, O_SEQ_LIVE, num_seqs)
    seq_tokens = _f64(arena, O_SEQ_TOKENS, num_seqs)
    seq_node = _f32(arena, O_SEQ_NODE, num_seqs)
    table = _table(arena)
    table_len = _f32(arena, O_TABLE_LEN, num_seqs)
    refcount = _f32(arena, O_REFCOUNT, nb)
    free_stack = _f32(arena, O_FREE_STACK, nb)
    in_tree = _f8(arena, O_IN_TREE, nb)
    block_fill = _f32(arena, O_BLOCK_FILL, nb)
    for i in range(ops.shape[0]):
        op = ops[i, 0]
        s = ops[i, 1]
        if op == OP_ADMIT:
            if seq_live[s] == 1:
                results[i] = SKIPPED
                continue
            new = ops[i, 2]  # the prompt; on success the seq grows to it below
            n = min(ops[i, 4], (new - 1) // page_tokens)
            if n > 0:
                k0 = ops[i, 3]
                m = admit(arena, s, keys[k0 : k0 + n], n, new, float(i))
            elif (
                arena[C_FREE_TOP] + arena[C_CACHED] - (new + page_tokens - 1) // page_tokens
                < watermark
            ):
                m = -1
            else:
                m = 0
                table_len[s] = 0
                seq_tokens[s] = 0
                seq_live[s] = 1
                seq_node[s] = 0
            results[i] = m
            if m < 0:
                continue
        elif seq_live[s] == 0:
            results[i] = SKIPPED
            continue
        elif op == OP_GROW:
            new = min(seq_tokens[s] + ops[i, 2], max_seq_len)
        else:
            n = min(ops[i, 4], seq_tokens[s] // page_tokens)
            results[i] = 0
            if n > 0 or seq_node[s] > 0:
                k0 = ops[i, 3]
                release(arena, s, keys[k0 : k0 + n], n, float(i))
                continue
            # release without tree work: drop refs tail first
            top = arena[C_FREE_TOP]
            dropped = 0
            newly_cached = 0
            for j in range(table_len[s] - 1, -1, -1):
                b = table[s, j]
                table[s, j] = -1
                r = refcount[b] - 1
                refcount[b] = r
                if r == 0:
                    dropped += block_fill[b]
                    if in_tree[b] == 1:
                        newly_cached += 1
                    else:
                        free_stack[top] = b
                        top += 1
            arena[C_FREE_TOP] = top
            arena[C_TOKENS] -= dropped
            arena[C_CACHED] += newly_cached
            table_len[s] = 0
            seq_tokens[s] = 0
            seq_live[s] = 0
            continue
        # grow seq s to `new` tokens (plan, evict if radix, apply)
        cur = seq_tokens[s]
        if new > cur:
            nbk = table_len[s]
            cap = nbk * page_tokens
            last = -1
            need = 0
            if cur < cap:
                last = table[s, nbk - 1]
                if refcount[last] > 1:
                    need = 1
            if new > cap:
                need += (new - cap + page_tokens - 1) // page_tokens
            top = arena[C_FREE_TOP]
            if need > top:
                if can_evict == 0 or top + arena[C_CACHED] < need:
                    results[i] = NO_SPACE
                    continue
                _evict(arena, need - top, page_tokens)
                top = arena[C_FREE_TOP]
            added = new - cap if new > cap else 0
            if last >= 0:
                f = new - cap + page_tokens  # tokens in the partial last block
                if f > page_tokens:
                    f = page_tokens
                if refcount[last] > 1:
                    # copy-on-write: a private copy; the shared original keeps a holder
                    top -= 1
                    b = free_stack[top]
                    refcount[b] = 1
                    table[s, nbk - 1] = b
                    refcount[last] -= 1
                    arena[C_COW] += 1
                    block_fill[b] = f
                    added += f
                else:
                    added += f - block_fill[last]
                    block_fill[last] = f
            if new > cap:
                f = new - cap
                j = nbk
                while f > 0:
                    top -= 1
                    b = free_stack[top]
                    refcount[b] = 1
                    block_fill[b] = f if f < page_tokens else page_tokens
                    f -= page_tokens
                    table[s, j] = b
                    j += 1
                table_len[s] = j
            arena[C_FREE_TOP] = top
            arena[C_TOKENS] += added
            seq_tokens[s] = new
        if op == OP_GROW:
            results[i] = OK
