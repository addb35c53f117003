"""Differential tests: the compiled loop against the plain reference replica.

``simulator.reference.ReferenceReplica`` steps one step at a time and calls the cost model's
reference ``step_time_s`` for every step. The compiled kernel family (packed step cost or the
step-cost memo) must give *identical*
request and step frames on random workloads that hit every scheduler x KV manager x
preemption mode, fan-out (parallel sampling with and without shared prompt blocks), shared
prefixes and dependent requests (chains released ``think_time_s`` after the previous
finishes), on tiny pools (a few dozen KV slots, 4-token blocks) that force preemption, swap
and rejection. CI runs this file with numba's JIT off as well (``.ci/run``).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from servesim.hwmodels.stepcost import StepCostModel
from tests.engine.helpers import CurvedTimer, LinearCost, simulate, workload

COST = StepCostModel(gpu="h100-sxm", model="llama-3.1-8b")
#: A model without a packed form (an op timer, as the cycle model): the compiled loop asks the
#: facade for each new step shape's cost (NEED_COST) and memoises it.
TIMER_COST = StepCostModel(gpu="h100-sxm", model="llama-3.1-8b", op_timer=CurvedTimer())
POLICIES = ["static", "orca", "vllm", "sarathi", "sglang"]
MANAGERS = ["contiguous", "paged", "radix"]


@st.composite
def workloads(draw, *, fanout: bool = True, dependents: bool = True, prefixes: bool = True):
    """Up to 12 requests: bursts and gaps, short prompts and outputs, optional fan-out,
    shared prefix blocks (two families) and dependency chains."""
    n = draw(st.integers(1, 12))
    gaps = draw(st.lists(st.sampled_from([0.0, 0.0, 0.01, 0.25, 1.0, 4.0]), min_size=n, max_size=n))
    prompts = draw(st.lists(st.integers(1, 40), min_size=n, max_size=n))
    outputs = draw(st.lists(st.integers(1, 20), min_size=n, max_size=n))
    arrival = np.cumsum(gaps)
    kw: dict = {}
    if fanout and draw(st.booleans()):
        kw["num_samples"] = draw(st.lists(st.sampled_from([1, 1, 2, 3]), min_size=n, max_size=n))
    if dependents and n > 1 and draw(st.booleans()):
        # Request i waits on an earlier one (or on none); its arrival is its release time.
        deps = [-1] + [draw(st.sampled_from([-1, -1, i - 1, 0])) for i in range(1, n)]
        kw["depends_on"] = deps
        kw["think_time_s"] = draw(st.lists(st.sampled_from([0.0, 0.5, 2.0]), min_size=n, max_size=n))
        arrival = np.where(np.asarray(deps) >= 0, np.nan, arrival)
    if prefixes and draw(st.booleans()):
        offsets, ids = [0], []
        for i, p in enumerate(prompts):
            nb = -(-p // 4)
            fam = i % 2
            ids.extend([100 * fam + j for j in range(min(nb, 3))]
                       + [10_000 + 100 * i + j for j in range(max(nb - 3, 0))])
            offsets.append(len(ids))
        kw.update(block_tokens=4, prefix_offsets=offsets, prefix_block_ids=ids)
    return workload(arrival, prompts, outputs, **kw)


@st.composite
def configs(draw):
    policy = draw(st.sampled_from(POLICIES))
    kv_kind = draw(st.sampled_from(MANAGERS))
    return {
        "policy": policy,
        "kv_kind": kv_kind,
        "preemption": draw(st.sampled_from(["recompute", "swap"])),
        "capacity_tokens": draw(st.sampled_from([48, 64, 96, 256])),
        "block_size_tokens": 4,
        "max_num_seqs": draw(st.sampled_from([2, 4, 6])),
        "max_num_batched_tokens": draw(st.sampled_from([16, 32, 64])),
        "chunk_size_tokens": draw(st.sampled_from([4, 12, 32])),
        "max_seq_len": 72,
        "kv_sharing": draw(st.booleans()),
        "swap_space_bytes": draw(st.sampled_from([0.0, 40_000.0, 1e12])),
        "replicas": draw(st.sampled_from([1, 1, 2])),
        "router": draw(st.sampled_from(["round_robin", "least_outstanding", "least_kv_load", "prefix_affinity"])),
        "cost": draw(st.sampled_from([COST, LinearCost(1.0, 0.125, 0.25)])),
    }



def _assert_identical(fast, ref) -> None:
    """Identical request and step frames (every column, exact) and summary values, the pooled
    ITL mean and std included (both replicas bin and sum every gap alike, in the same order)."""
    pd.testing.assert_frame_equal(fast.requests, ref.requests, check_exact=True)
    pd.testing.assert_frame_equal(fast.steps, ref.steps, check_exact=True)
    for key, va in ref.summary.items():
        vb = fast.summary[key]
        if isinstance(va, float) and math.isnan(va):
            assert isinstance(vb, float) and math.isnan(vb), key
        else:
            assert va == vb, key


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(wl=workloads(),
       policy=st.sampled_from(["static", "vllm", "sarathi", "orca", "sglang"]),
       kv=st.sampled_from([("paged", False), ("paged", True), ("radix", False), ("contiguous", False)]),
       reservation=st.sampled_from(["max", "pow2", "oracle"]),
       preemption=st.sampled_from(["recompute", "swap"]),
       swap_space_bytes=st.sampled_from([0.0, 40_000.0, 1e12]),
       capacity_tokens=st.sampled_from([48, 64, 96, 256]),
       max_num_seqs=st.sampled_from([1, 2, 4, 6]),
       max_num_batched_tokens=st.sampled_from([8, 24, 64]),
       chunk_size_tokens=st.sampled_from([4, 12, 32]),
       kv_sharing=st.booleans(),
       replicas=st.sampled_from([1, 2]),
       router=st.sampled_from(["round_robin", "least_outstanding", "least_kv_load", "prefix_affinity"]),
       starvation_limit_s=st.sampled_from([5.0, 0.0, 0.02]),
       until_s=st.sampled_from([None, None, None, 0.05, 0.3]),
       cost=st.sampled_from([COST, COST, LinearCost(1.0, 0.125, 0.25), TIMER_COST]),
       beam=st.booleans())
def test_compiled_loop_equals_reference(wl, policy, kv, reservation, preemption, swap_space_bytes,
                                        capacity_tokens, max_num_seqs, max_num_batched_tokens, chunk_size_tokens,
                                        kv_sharing, replicas, router, starvation_limit_s, until_s, cost,
                                        beam) -> None:
    """The compiled loop against the reference, every configuration: the five schedulers on
    paged KV (with and without vLLM v1's prefix caching), the radix cache and contiguous KV
    (every reservation policy), recompute or swap preemption with no, a little or ample host
    memory, fan-out up to 3 (forked prompts with ``kv_sharing``, a copy each without; groups
    wider than ``max_num_seqs`` rejected), dependency chains with think times, workloads with
    and without prefix block ids, 1-2 replicas under every router, SGLang's starvation
    guard, to the end or cut at ``max_sim_time_s``, on pools small enough to preempt and
    swap; on the packed roofline cost and on models without a packed form (costed through
    the memo, ``NEED_COST``). The step frames include the split by bound, which the compiled
    loop records as it runs; round robin (and one replica) releases arrivals in batches
    (``CompiledCluster.start``). The fan-out is drawn as parallel samples or as beam width."""
    if beam:
        wl = dataclasses.replace(wl, beam_width=wl.num_samples, num_samples=np.ones_like(wl.num_samples))
    kv_kind, prefix_caching = kv
    kw = {"policy": policy, "kv_kind": kv_kind, "prefix_caching": prefix_caching, "reservation": reservation,
          "preemption": preemption, "swap_space_bytes": swap_space_bytes, "capacity_tokens": capacity_tokens,
          "block_size_tokens": 4, "max_num_seqs": max_num_seqs, "max_num_batched_tokens": max_num_batched_tokens,
          "chunk_size_tokens": chunk_size_tokens, "max_seq_len": 72, "kv_sharing": kv_sharing,
          "replicas": replicas, "router": router, "cost": cost, "starvation_limit_s": starvation_limit_s,
          "until_s": until_s}
    ref = simulate(wl, loop="reference", **kw)
    comp = simulate(wl, loop="compiled", **kw)
    _assert_identical(comp, ref)
    for a, b in zip(comp.replicas, ref.replicas, strict=True):
        a.kv.check_invariants()
        assert a.kv.stats() == b.kv.stats()
        assert until_s is not None or a.num_outstanding == 0


def test_compiled_loop_swaps_and_reserves_like_the_reference() -> None:
    """The differential draws reach swap-out, swap-in, a full host pool, contiguous
    reservations with external fragmentation, and static batches; pinned here on fixed
    workloads (both loops)."""
    wl = workload(np.zeros(8), [12] * 8, [20] * 8)
    base = {"kv_kind": "paged", "capacity_tokens": 48, "block_size_tokens": 4, "max_num_seqs": 8,
            "max_num_batched_tokens": 64, "max_seq_len": 72, "cost": COST, "chunk_size_tokens": 12}
    for policy in ("vllm", "sarathi", "orca"):
        for swap in (40_000.0, 1e12):
            kw = {**base, "policy": policy, "preemption": "swap", "swap_space_bytes": swap}
            ref = simulate(wl, loop="reference", **kw)
            assert ref.summary["num_preemptions"] > 0
            recompute = simulate(wl, loop="reference", **{**kw, "preemption": "recompute"})
            assert ref.steps["duration_s"].sum() != recompute.steps["duration_s"].sum()  # swap time charged
            comp = simulate(wl, loop="compiled", **kw)
            _assert_identical(comp, ref)
    # Contiguous: reservations of the longest sequence leave gaps the queue head cannot use.
    wl = workload([0.0, 0.0, 0.0, 0.5, 0.5, 1.0], [5, 30, 9, 40, 3, 20], [4, 30, 2, 8, 12, 5])
    for policy in ("orca", "static", "vllm"):
        for reservation in ("max", "pow2", "oracle"):
            kw = {"policy": policy, "kv_kind": "contiguous", "reservation": reservation, "capacity_tokens": 160,
                  "max_num_seqs": 4, "max_num_batched_tokens": 64, "max_seq_len": 72, "cost": COST}
            ref = simulate(wl, loop="reference", **kw)
            comp = simulate(wl, loop="compiled", **kw)
            _assert_identical(comp, ref)
            if reservation == "pow2":
                assert ref.steps["kv_reserved_slots"].max() > 0


@pytest.mark.parametrize("kv_sharing", [True, False])
@pytest.mark.parametrize("policy", ["vllm", "sarathi", "orca"])
def test_compiled_loop_preempts_fanout_groups_as_the_reference(policy: str, kv_sharing: bool) -> None:
    """Fan-out groups on a 64-slot pool: whole groups are preempted by recompute (forked ones
    re-admitted with one sequence and forked again), identically in both loops; the random
    draws above reach this rarely."""
    wl = workload(np.zeros(6), [12, 5, 9, 12, 3, 7], [20, 14, 18, 9, 16, 12], num_samples=[2, 3, 1, 2, 3, 2])
    kw = {"policy": policy, "kv_kind": "paged", "capacity_tokens": 64, "block_size_tokens": 4, "max_num_seqs": 6,
          "max_num_batched_tokens": 32, "chunk_size_tokens": 12, "max_seq_len": 72, "kv_sharing": kv_sharing,
          "cost": COST}
    ref = simulate(wl, loop="reference", **kw)
    _assert_identical(simulate(wl, loop="compiled", **kw), ref)
    fan = wl.num_samples > 1
    assert (ref.requests["num_preemptions"][fan] > 0).sum() >= 3
    assert (ref.requests["status"] == "completed").all()


def test_compiled_loop_zero_think_time_ties_across_replicas() -> None:
    """Two replicas in lockstep (identical requests at t=0) end their steps at the same
    instant; a dependent released with zero think time by the first replica's finish is
    routed before the second replica's step end is processed (SimPy's order), in the
    compiled loop as in the reference."""
    wl = workload([0.0, 0.0, np.nan, np.nan], [8, 8, 5, 5], [3, 3, 4, 4], depends_on=[-1, -1, 0, 1],
                  think_time_s=[0.0, 0.0, 0.0, 0.0], num_samples=[2, 2, 3, 1])
    for router in ("least_outstanding", "least_kv_load", "round_robin"):
        kw = {"policy": "vllm", "kv_kind": "paged", "capacity_tokens": 256, "block_size_tokens": 4,
              "max_num_seqs": 4, "max_num_batched_tokens": 64, "max_seq_len": 72, "replicas": 2,
              "router": router, "cost": COST}
        ref = simulate(wl, loop="reference", **kw)
        _assert_identical(simulate(wl, loop="compiled", **kw), ref)
        assert (ref.requests["status"] == "completed").all()
        # The parents finish at the same instant on both replicas, their dependents then.
        fin = ref.requests["finish_s"].to_numpy()
        assert fin[0] == fin[1] and ref.requests["arrival_s"].iloc[2] == fin[0]


def test_reference_forces_preemption_on_a_tiny_pool() -> None:
    """The strategies reach the interesting paths: on 48 slots, 8 growing requests preempt,
    and with swap space they swap out and back in."""
    wl = workload(np.zeros(8), [12] * 8, [20] * 8)
    kw = {"policy": "vllm", "kv_kind": "paged", "capacity_tokens": 48, "block_size_tokens": 4,
          "max_num_seqs": 8, "max_num_batched_tokens": 64, "max_seq_len": 72}
    rec = simulate(wl, loop="reference", preemption="recompute", **kw)
    swp = simulate(wl, loop="reference", preemption="swap", swap_space_bytes=1e12, **kw)
    assert rec.requests["num_preemptions"].sum() > 0
    assert swp.requests["num_preemptions"].sum() > 0
    assert (rec.requests["status"] == "completed").all() and (swp.requests["status"] == "completed").all()
    assert swp.steps["duration_s"].sum() != rec.steps["duration_s"].sum()  # swap time is charged
    for res in (rec, swp):
        _assert_identical(simulate(wl, loop="compiled", preemption=("swap" if res is swp else "recompute"),
                                   swap_space_bytes=1e12, **kw), res)


def test_static_batch_whose_generating_members_are_all_preempted_ends() -> None:
    """Static batching on a paged cache: when the members still generating are preempted
    (the cache cannot grow them), the batch ends and the next one forms; it used to plan an
    empty step (InvariantError). The differential draw that found it, both engines."""
    wl = workload(np.zeros(2), [1, 17], [13, 17])
    kw = {"policy": "static", "kv_kind": "paged", "capacity_tokens": 48, "block_size_tokens": 4,
          "max_num_seqs": 2, "max_num_batched_tokens": 16, "chunk_size_tokens": 4, "max_seq_len": 72,
          "kv_sharing": False, "swap_space_bytes": 0.0, "cost": COST}
    ref = simulate(wl, loop="reference", **kw)
    assert (ref.requests["status"] == "completed").all()
    assert ref.requests["num_preemptions"].sum() > 0
    _assert_identical(simulate(wl, loop="compiled", **kw), ref)


def test_static_batching_with_swap_configured_preempts_by_recompute() -> None:
    """Found by the differential test in CI: a static batch whose members were swapped out
    left them in the swapped queue, which a request-level batch never reads, and the next
    plan was empty with requests outstanding (InvariantError). Static batching recomputes."""
    wl = workload(np.zeros(12), [1, 1, 11, 13, 1, 1, 1, 1, 1, 1, 1, 1],
                  [1, 1, 11, 13, 1, 1, 1, 1, 1, 1, 1, 1])
    cfg = {"policy": "static", "kv_kind": "paged", "preemption": "swap", "capacity_tokens": 48,
           "block_size_tokens": 4, "max_num_seqs": 2, "max_num_batched_tokens": 16,
           "chunk_size_tokens": 4, "max_seq_len": 72, "kv_sharing": False,
           "swap_space_bytes": 40_000.0, "replicas": 1, "router": "round_robin", "cost": COST}
    ref = simulate(wl, loop="reference", **cfg)
    fast = simulate(wl, loop="compiled", **cfg)
    _assert_identical(fast, ref)
    assert set(ref.requests["status"]) == {"completed"}
    assert ref.summary["num_preemptions"] > 0
    assert all(not rep.swapped and rep.swap_used_bytes == 0 for rep in ref.replicas)
