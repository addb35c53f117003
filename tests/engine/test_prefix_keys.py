"""The compiled loop's page keys (``simulator.compiled._prefix.page_keys_csr``) against the
managers' ``_page_keys``: the same pages per request, and two pages share a key exactly when
the manager gives them the same key (key values never reach a result)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from servesim.simulator.compiled._prefix import page_keys_csr
from servesim.simulator.memory import make_kv_manager


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(0, 6), min_size=1, max_size=6),
    block_tokens=st.sampled_from([1, 2, 4, 8, 12, 16]),
    page_tokens=st.sampled_from([1, 4, 8]),
    big=st.booleans(),
    data=st.data(),
)
def test_page_keys_match_the_manager(counts, block_tokens, page_tokens, big, data) -> None:
    offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    pool = [0, 1, 2, 3, -5, 1 << 62] if big else [0, 1, 2, 3]
    ids = np.asarray(data.draw(st.lists(st.sampled_from(pool), min_size=int(offsets[-1]),
                                        max_size=int(offsets[-1]))), dtype=np.int64)
    klo, kn, pk = page_keys_csr(offsets, ids, block_tokens, page_tokens)
    kv = make_kv_manager("radix", capacity_tokens=64 * page_tokens, block_size_tokens=page_tokens,
                         max_seqs=2, max_seq_len=4096)
    want, got = [], []
    for i in range(len(counts)):
        block_ids = ids[offsets[i] : offsets[i + 1]]
        keys = kv._page_keys(block_ids, block_tokens, 1 << 20)
        assert len(keys) == kn[i]
        want.extend(keys.tolist())
        got.extend(pk[klo[i] : klo[i] + kn[i]].tolist())
    w, g = np.asarray(want), np.asarray(got)
    assert np.array_equal(w[:, None] == w[None, :], g[:, None] == g[None, :])
