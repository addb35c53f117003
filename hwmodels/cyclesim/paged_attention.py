"""Functional twin of the decode kernel the cycle model costs: paged attention in numpy.

The KV cache is a pool of physical blocks of ``block_size`` tokens; sequence ``b``'s logical
token ``i`` lives at physical slot ``phys(i) = BT[b, i // B] * B + i % B`` (vLLM's slot
mapping). The kernel walks the block table one block at a time and folds each block into the
output with the numerically stable online softmax (running max ``m``, running sum ``l``,
rescaled accumulator ``acc``), exactly the recurrence of FlashAttention / PagedAttention, so its
result equals dense softmax attention up to float rounding::

    pool (num_blocks * B, num_kv_heads, head_dim)       BT (batch, max_blocks) int32, -1 = none
    q    (batch, num_heads, head_dim)                  out (batch, num_heads, head_dim)
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from servesim.hwmodels.errors import ConfigError


def physical_slots(block_table_row: npt.NDArray[np.int32], num_tokens: int, block_size: int) -> npt.NDArray[np.int64]:
    """Physical slot of each of a sequence's ``num_tokens`` logical tokens.

    Raises:
        ConfigError: the table has too few (valid) blocks for ``num_tokens``.
    """
    i = np.arange(num_tokens, dtype=np.int64)
    blocks = block_table_row[i // block_size].astype(np.int64)
    if np.any(blocks < 0):
        raise ConfigError("block table has no block for some of the sequence's tokens")
    return blocks * block_size + i % block_size


def paged_attention_decode(
    q: npt.NDArray[np.float64],
    k_pool: npt.NDArray[np.float64],
    v_pool: npt.NDArray[np.float64],
    block_table: npt.NDArray[np.int32],
    context_lens: npt.NDArray[np.int64],
    block_size: int,
    *,
    scale: float | None = None,
) -> npt.NDArray[np.float64]:
    """Decode attention over a paged KV cache, one block at a time with online softmax.

    Args:
        q: (batch, num_heads, head_dim) queries (one token per sequence).
        k_pool, v_pool: (num_blocks * block_size, num_kv_heads, head_dim) physical KV slots.
        block_table: int32 (batch, max_blocks_per_seq); -1 marks unused entries.
        context_lens: int64 (batch,) keys per sequence (>= 1).
        block_size: tokens per block.
        scale: softmax scale; default ``1 / sqrt(head_dim)``.

    Returns:
        (batch, num_heads, head_dim) attention output.

    Raises:
        ConfigError: inconsistent shapes or a table too short for a context length.
    """
    batch, num_heads, head_dim = q.shape
    num_kv_heads = k_pool.shape[1]
    if num_heads % num_kv_heads:
        raise ConfigError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
    if k_pool.shape != v_pool.shape or k_pool.shape[2] != head_dim:
        raise ConfigError("k_pool and v_pool must both be (slots, num_kv_heads, head_dim)")
    group = num_heads // num_kv_heads
    scale = 1.0 / np.sqrt(head_dim) if scale is None else scale
    out = np.empty_like(q)
    for b in range(batch):
        length = int(context_lens[b])
        if length < 1 or block_table[b].shape[0] * block_size < length:
            raise ConfigError(f"sequence {b}: context {length} does not fit its block table")
        # Per query head (rows of the GQA group share their KV head).
        qb = q[b].reshape(num_kv_heads, group, head_dim)  # (kvh, g, d)
        m = np.full((num_kv_heads, group), -np.inf)
        l_sum = np.zeros((num_kv_heads, group))
        acc = np.zeros((num_kv_heads, group, head_dim))
        for blk in range((length + block_size - 1) // block_size):
            phys_block = int(block_table[b, blk])
            if phys_block < 0:
                raise ConfigError(f"sequence {b}: block {blk} is not allocated")
            lo = blk * block_size
            n = min(block_size, length - lo)  # tokens of this block inside the context
            slots = phys_block * block_size + np.arange(n)
            k = k_pool[slots].transpose(1, 0, 2)  # (kvh, n, d)
            v = v_pool[slots].transpose(1, 0, 2)
            s = np.einsum("hgd,hnd->hgn", qb, k) * scale  # (kvh, g, n)
            m_new = np.maximum(m, s.max(axis=-1))
            alpha = np.exp(m - m_new)  # rescale of what was accumulated so far
            p = np.exp(s - m_new[..., None])
            l_sum = l_sum * alpha + p.sum(axis=-1)
            acc = acc * alpha[..., None] + np.einsum("hgn,hnd->hgd", p, v)
            m = m_new
        out[b] = (acc / l_sum[..., None]).reshape(num_heads, head_dim)
    return out


def dense_attention_decode(
    q: npt.NDArray[np.float64],
    k: npt.NDArray[np.float64],
    v: npt.NDArray[np.float64],
    context_lens: npt.NDArray[np.int64],
    *,
    scale: float | None = None,
) -> npt.NDArray[np.float64]:
    """Reference: plain softmax attention over contiguous K/V.

    Args:
        q: (batch, num_heads, head_dim).
        k, v: (batch, max_tokens, num_kv_heads, head_dim), valid up to ``context_lens[b]``.
        context_lens: int64 (batch,).
        scale: softmax scale; default ``1 / sqrt(head_dim)``.
    """
    batch, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[2]
    group = num_heads // num_kv_heads
    scale = 1.0 / np.sqrt(head_dim) if scale is None else scale
    out = np.empty_like(q)
    for b in range(batch):
        n = int(context_lens[b])
        kb = np.repeat(k[b, :n], group, axis=1)  # (n, heads, d)
        vb = np.repeat(v[b, :n], group, axis=1)
        s = np.einsum("hd,nhd->hn", q[b], kb) * scale
        s -= s.max(axis=-1, keepdims=True)
        p = np.exp(s)
        p /= p.sum(axis=-1, keepdims=True)
        out[b] = np.einsum("hn,nhd->hd", p, vb)
    return out
