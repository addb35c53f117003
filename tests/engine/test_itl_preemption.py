"""Inter-token gaps across preemption: every gap between consecutive tokens of a sequence is
counted once (``vllm bench serve``'s ITL), measured from that sequence's own previous token.

A sequence's gaps telescope: they sum to its last token's time minus its first's. So over a
run, ITL count = sum of (output tokens - 1) and ITL sum = sum of (finish - first token), per
sequence, whatever was preempted. Before the fix a recompute's first token after the
preemption was no gap at all (count short by one per recompute) and a swapped-in sequence's
first gap was measured from the previous occupant of its slot (sum off).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.engine.helpers import LinearCost, simulate, workload

COST = LinearCost(0.01, 0.001, 0.002)


def _telescopes(res) -> None:
    done = res.requests[res.requests["status"] == "completed"]
    gaps = int((done["output_tokens"] - 1).sum())
    span = float((done["finish_s"] - done["first_token_s"]).sum())
    assert res.recorder.itl_n == gaps
    assert res.recorder.itl_sum_s == pytest.approx(span, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("loop", ["reference", "compiled"])
@pytest.mark.parametrize("preemption,swap_space_bytes", [("recompute", 0.0), ("swap", 1e12), ("swap", 40_000.0)])
@pytest.mark.parametrize("policy", ["vllm", "sarathi", "orca"])
def test_gaps_telescope_across_preemption(loop: str, preemption: str, swap_space_bytes: float, policy: str) -> None:
    wl = workload(np.zeros(8), [12] * 8, [20] * 8)
    res = simulate(wl, loop=loop, policy=policy, preemption=preemption, swap_space_bytes=swap_space_bytes,
                   kv_kind="paged", capacity_tokens=48, block_size_tokens=4, max_num_seqs=8,
                   max_num_batched_tokens=64, chunk_size_tokens=12, max_seq_len=72, cost=COST)
    assert res.summary["num_preemptions"] > 0
    _telescopes(res)


def test_swap_in_gap_is_the_stall() -> None:
    """Two requests on a pool too small for both to finish: vLLM preempts the later arrival
    (r1) by swapping it out while r0 decodes; r1's first gap after its swap-in is the whole
    stall, so its gaps still sum to its finish minus its first token (both loops alike)."""
    wl = workload([0.0, 0.0], [8, 8], [12, 6])
    ref = simulate(wl, loop="reference", policy="vllm", preemption="swap", kv_kind="paged", capacity_tokens=28,
                   block_size_tokens=4, max_num_seqs=2, max_num_batched_tokens=64, max_seq_len=40, cost=COST)
    assert ref.summary["num_preemptions"] > 0
    _telescopes(ref)
    comp = simulate(wl, loop="compiled", policy="vllm", preemption="swap", kv_kind="paged", capacity_tokens=28,
                    block_size_tokens=4, max_num_seqs=2, max_num_batched_tokens=64, max_seq_len=40, cost=COST)
    assert comp.recorder.itl_sum_s == ref.recorder.itl_sum_s
    assert comp.recorder.itl_n == ref.recorder.itl_n


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(2, 7), prompt=st.lists(st.integers(2, 30), min_size=7, max_size=7),
       output=st.lists(st.integers(1, 24), min_size=7, max_size=7),
       gaps=st.lists(st.floats(0.0, 0.2), min_size=7, max_size=7),
       policy=st.sampled_from(["vllm", "sarathi", "orca", "sglang"]),
       preemption=st.sampled_from(["recompute", "swap"]),
       capacity_tokens=st.sampled_from([40, 64, 96]))
def test_gaps_telescope_property(n, prompt, output, gaps, policy, preemption, capacity_tokens) -> None:
    arrivals = np.cumsum(gaps[:n])
    wl = workload(arrivals, prompt[:n], output[:n])
    res = simulate(wl, loop="reference", policy=policy, preemption=preemption, kv_kind="paged",
                   capacity_tokens=capacity_tokens, block_size_tokens=4, max_num_seqs=4,
                   max_num_batched_tokens=32, chunk_size_tokens=8, max_seq_len=64, cost=COST,
                   swap_space_bytes=1e12)
    _telescopes(res)
