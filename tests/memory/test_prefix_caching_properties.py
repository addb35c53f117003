"""Prefix caching in the engine on random workloads (hypothesis): fast-forward equals stepping
and the reference replica, invariants hold, every request ends, for paged with prefix caching
and radix.

Prefix ids here cover the prompt *and* the output (as chats do), so decode fills keyed pages
and every cache event (prefill chunk, page filled by decode, finish, preemption) occurs. The
engine's property test (tests/engine/test_properties.py) covers the managers as
``make_kv_manager`` builds them by default; this one builds paged with ``prefix_caching=True``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tests.engine.helpers as helpers
from servesim.simulator.memory import make_kv_manager
from tests.engine.helpers import LinearCost, simulate, workload

POLICIES = [("vllm", "paged"), ("sarathi", "paged"), ("sglang", "radix"), ("vllm", "radix")]
BLOCK = 4


@st.composite
def chat_workloads(draw):
    n = draw(st.integers(1, 12))
    gaps = draw(st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.5, 4.0]), min_size=n, max_size=n))
    prompts = draw(st.lists(st.integers(1, 40), min_size=n, max_size=n))
    outputs = draw(st.lists(st.integers(1, 24), min_size=n, max_size=n))
    families = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    shared_blocks = draw(st.lists(st.integers(0, 16), min_size=n, max_size=n))
    offsets, ids = [0], []
    for i in range(n):
        nb = -(-(prompts[i] + outputs[i]) // BLOCK)  # prompt and output blocks
        k = min(shared_blocks[i], nb)
        ids.extend([1000 * families[i] + j for j in range(k)])
        ids.extend([100_000 + 100 * i + j for j in range(nb - k)])
        offsets.append(len(ids))
    kw = {"block_tokens": BLOCK, "prefix_offsets": offsets, "prefix_block_ids": ids}
    if draw(st.booleans()):
        kw["num_samples"] = draw(st.lists(st.sampled_from([1, 1, 2]), min_size=n, max_size=n))
    return workload(np.cumsum(gaps), prompts, outputs, **kw)


def _run(wl, policy, kind, preemption, loop="reference"):
    return simulate(
        wl,
        policy=policy,
        kv_kind=kind,
        capacity_tokens=96,
        block_size_tokens=BLOCK,
        max_num_seqs=4,
        max_num_batched_tokens=32,
        chunk_size_tokens=12,
        max_seq_len=72,
        cost=LinearCost(1.0, 0.125, 0.25),
        preemption=preemption,
        loop=loop,
    )


@pytest.fixture
def paged_with_prefix_caching(monkeypatch):
    """``simulate`` builds its managers through ``make_kv_manager``: make paged cache."""

    def make(kind, **kw):
        kw["prefix_caching"] = kind == "paged"  # whatever simulate's prefix_caching says
        return make_kv_manager(kind, **kw)

    monkeypatch.setattr(helpers, "make_kv_manager", make)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(wl=chat_workloads(), which=st.sampled_from(POLICIES), swap=st.booleans())
def test_compiled_equals_reference_with_prefix_caching(
    paged_with_prefix_caching, wl, which, swap
) -> None:
    policy, kind = which
    preemption = "swap" if swap else "recompute"
    a = _run(wl, policy, kind, preemption, loop="compiled")
    b = _run(wl, policy, kind, preemption)
    cols = [
        "first_scheduled_s",
        "first_token_s",
        "finish_s",
        "num_preemptions",
        "cached_prompt_tokens",
        "status",
    ]
    pd.testing.assert_frame_equal(a.requests[cols], b.requests[cols])
    # the compiled loop makes the reference's cache calls at the same events: same steps
    pd.testing.assert_frame_equal(a.steps, b.steps, check_exact=True)
    for res in (a, b):
        assert set(res.requests["status"]) <= {"completed", "rejected"}
    for rep in b.replicas:  # the reference's Python state
        assert rep.kv.caches_prefixes
        rep.kv.check_invariants()
        assert not rep.running and not rep.waiting and not rep.swapped


def test_same_step_sharing(paged_with_prefix_caching) -> None:
    """The fixture really reaches ``simulate`` (else the property would test plain paging),
    and when a prefix becomes shareable differs between the two caches."""
    wl = workload(
        [0.0, 0.0],
        [9, 9],
        [3, 3],
        block_tokens=BLOCK,
        prefix_offsets=[0, 3, 6],
        prefix_block_ids=[1, 2, 3, 1, 2, 4],
    )
    res = _run(wl, "vllm", "paged", "recompute")
    assert res.replicas[0].kv.prefix_caching
    # vLLM v1 caches a chunk's full blocks when it schedules it: the second request of the
    # same step already shares them ...
    assert res.requests["cached_prompt_tokens"].tolist() == [0, 8]
    # ... SGLang inserts after the prefill ran, so the same step shares nothing.
    res = _run(wl, "sglang", "radix", "recompute")
    assert res.requests["cached_prompt_tokens"].tolist() == [0, 0]
