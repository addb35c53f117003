"""Prefix identity for the compiled loop: every request's page keys as one flat array.

The Python managers turn a request's prefix block ids into page keys on each call
(``PagedKVCache._page_keys``). The compiled loop needs them as arrays: the cluster facade
builds them once per page size, for the whole workload, as a CSR pair (``klo[i]``, ``kn[i]``
into ``pk``), and the kernel slices ``pk[klo : klo + n]`` where the facade would call
``_page_keys(block_ids, block_tokens, n_tokens)`` with ``n = min(n_tokens // page, kn)``.

Page ``k`` of a request covers tokens ``[k*P, (k+1)*P)``; its key is the block id itself
when ``block_tokens == P``, otherwise an id of ``(k*P mod block_tokens, ids overlapping the
page)``. Key *values* never reach a result (the tree compares keys for equality only), so
any map that is injective on those pairs gives the managers' results: the facade interns
per manager, this module per workload (one numbering shared by all replicas).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from servesim.simulator.jit import njit
from servesim.simulator.memory.kernels import _blocks

#: Ids below this bound are packed as ``id * (block_tokens // P) + page-in-block`` without
#: interning (the packed key must stay below 2**63).
_PACK_LIMIT = 1 << 40


def page_keys_csr(
    offsets: npt.NDArray[np.int64], ids: npt.NDArray[np.int64], block_tokens: int, page_tokens: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Page keys of every request (``PagedKVCache._page_keys`` over the whole identity).

    Args:
        offsets: int64[n + 1]; CSR offsets of each request's block ids into ``ids``.
        ids: int64[total]; prefix block ids (``Workload.prefix_block_ids``).
        block_tokens: tokens per block id (> 0).
        page_tokens: tokens per KV page ``P``.

    Returns:
        ``(klo, kn, pk)``: int64[n] start and count of request ``i``'s keys in ``pk``.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    ids = np.asarray(ids, dtype=np.int64)
    counts = np.diff(offsets)
    p, bt = page_tokens, block_tokens
    if bt == p:  # a page is a block: its key is the id
        return offsets[:-1].copy(), counts.copy(), np.ascontiguousarray(ids)
    kn = counts * bt // p  # num_pages = len(ids) * block_tokens // P
    klo = np.concatenate(([0], np.cumsum(kn)[:-1])).astype(np.int64)
    total = int(kn.sum())
    if bt % p == 0:
        # Each page lies in one block: key (k*P mod bt, id) -> id * per + k mod per, or
        # interned when the ids are too large (or negative) to pack.
        per = bt // p
        blk = np.empty(total, dtype=np.int64)
        if len(ids) == 0 or (ids.min() >= 0 and ids.max() < _PACK_LIMIT):
            _page_blocks(offsets, ids, kn, klo, per, blk, blk, True)
            return klo, kn, blk
        sub = np.empty(total, dtype=np.int64)
        _page_blocks(offsets, ids, kn, klo, per, blk, sub, False)
        _, inv = np.unique(np.stack([blk, sub], axis=1), axis=0, return_inverse=True)
        return klo, kn, np.ascontiguousarray(inv.reshape(-1), dtype=np.int64)
    # General case (pages straddle blocks): the facade's interning, page by page.
    pk = np.empty(total, dtype=np.int64)
    intern: dict[tuple[int, tuple[int, ...]], int] = {}
    id_list = ids.tolist()
    off = offsets.tolist()
    for i in range(len(kn)):
        base = off[i]
        out = int(klo[i])
        for k in range(int(kn[i])):
            start = k * p
            lo = start // bt
            hi = (start + p - 1) // bt
            key = (start % bt, tuple(id_list[base + lo : base + hi + 1]))
            pk[out + k] = intern.setdefault(key, len(intern))
    return klo, kn, pk


@njit(cache=True)
def _page_blocks(offsets, ids, kn, klo, per, blk, sub, packed):
    """Page ``k`` of request ``i`` lies in its block ``k // per`` at ``k % per`` pages in:
    ``blk[klo[i] + k]`` is that block's id, ``sub[klo[i] + k]`` the page's place in it;
    ``packed``: ``blk`` gets the packed key ``id * per + k % per`` (``sub`` unused)."""
    for i in range(kn.shape[0]):
        base = offsets[i]
        out = klo[i]
        for k in range(kn[i]):
            if packed:
                blk[out + k] = ids[base + k // per] * per + k % per
            else:
                blk[out + k] = ids[base + k // per]
                sub[out + k] = k % per


@njit(cache=True)
def seq_tokens(kva, s):
    """Tokens seq ``s`` holds slots for (``BlockState.seq_tokens``)."""
    return kva[kva[_blocks.O_SEQ_TOKENS] + s]


@njit(cache=True)
def table_len(kva, s):
    """Blocks in seq ``s``'s table (``BlockState.table_len``)."""
    return _blocks._f32(kva, _blocks.O_TABLE_LEN, kva[_blocks.C_S])[s]


@njit(cache=True)
def held_pages(kva, s, total, kn):
    """Keys ``free`` / ``cache_computed`` pass for live seq ``s`` with ``total_tokens``:
    full pages within ``min(total, held)``, at most ``kn`` and the table's length."""
    held = seq_tokens(kva, s)
    n = (total if total < held else held) // kva[_blocks.C_PAGE]
    if kn < n:
        n = kn
    t = table_len(kva, s)
    return n if n < t else t


@njit(cache=True)
def apc_cache(kva, s, keys, n, k):
    """APC ``cache_blocks`` of ``keys[:n]`` for live seq ``s`` whose first ``k`` pages are
    its own trie nodes (see :func:`own_trie_pages`): the trie walk over them finds them and
    changes nothing, so insertion resumes at page ``k``. Returns the new count."""
    if n <= k:
        return k
    nb = kva[_blocks.C_NB]
    table = _blocks._table(kva)
    node0 = 0
    if k > 0:
        node0 = _blocks._f32(kva, _blocks.O_BLOCK_NODE, nb)[table[s, k - 1]]
    _blocks.apc_insert_from(kva, s, keys, n, k, node0)
    return own_trie_pages(kva, s, keys, n, k, node0)


@njit(cache=True)
def own_trie_pages(kva, s, keys, n, k, node):
    """APC: how many leading pages of ``keys[:n]`` seq ``s`` holds as the trie's own nodes
    (``table[s, i]`` is the trie node of ``keys[i]`` under page ``i - 1``'s node), given that
    the first ``k`` are and page ``k - 1``'s node is ``node`` (0: the root).

    Such pages stay so while ``s`` lives: a held block is never in the free queue, so
    neither it nor its ancestors (held too) can be evicted.
    """
    nb = kva[_blocks.C_NB]
    nn = kva[_blocks.C_NN]
    in_tree = _blocks._f8(kva, _blocks.O_IN_TREE, nb)
    block_node = _blocks._f32(kva, _blocks.O_BLOCK_NODE, nb)
    block_key = _blocks._f64(kva, _blocks.O_BLOCK_KEY, nb)
    parent = _blocks._f32(kva, _blocks.O_PARENT, nn)
    table = _blocks._table(kva)
    for i in range(k, n):
        b = table[s, i]
        if in_tree[b] != 1 or block_key[b] != keys[i]:
            return i
        u = block_node[b]
        if u < 0 or parent[u] != node:
            return i
        node = u
    return n
