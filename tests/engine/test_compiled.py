"""The compiled replica loop against its pure-Python twin, the reference replica.

The kernel (``simulator.compiled._loop``) must reproduce the reference replica
(``simulator.reference``) operation for operation: every request time and every step row (including the exact memory split) bit for
bit, on random workloads and configurations chosen to hit preemption, watermark refusals,
chunked long prompts, idle gaps, simultaneous arrivals, rejections and every router. The
pooled ITL mean and standard deviation are sums in a different order (numpy's pairwise
summation in the Python recorder), so they agree to rounding.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from servesim.hwmodels.stepcost import StepCostModel
from servesim.simulator import steprows
from servesim.simulator.build import run_scenario
from servesim.simulator.scenario import scenario_from_dict
from tests.engine.helpers import simulate, workload

COST = StepCostModel(gpu="h100-sxm", model="llama-3.1-8b")
ITL_ROUNDED = {"mean_itl_ms", "std_itl_ms"}


def _assert_same(a, b, *, steps: bool = True) -> None:
    pd.testing.assert_frame_equal(a.requests, b.requests)
    if steps:
        pd.testing.assert_frame_equal(a.steps, b.steps)
    for key, va in a.summary.items():
        vb = b.summary[key]
        if isinstance(va, float) and math.isnan(va):
            assert isinstance(vb, float) and math.isnan(vb), key
        elif key in ITL_ROUNDED:
            # Sums of squares minus the squared mean: absolute agreement, in ms.
            assert va == pytest.approx(vb, rel=1e-9, abs=1e-9), key
        else:
            assert va == vb, key


@st.composite
def cases(draw):
    n = draw(st.integers(1, 24))
    gaps = draw(st.lists(st.sampled_from([0.0, 0.0, 0.002, 0.01, 0.03, 0.2, 2.0]), min_size=n, max_size=n))
    prompts = draw(st.lists(st.integers(1, 70), min_size=n, max_size=n))
    outputs = draw(st.lists(st.integers(1, 40), min_size=n, max_size=n))
    wl = workload(np.cumsum(gaps), prompts, outputs)
    cfg = {
        "policy": draw(st.sampled_from(["vllm", "vllm", "sarathi", "orca"])),
        "chunk_size_tokens": draw(st.sampled_from([4, 16, 64])),
        "capacity_tokens": draw(st.sampled_from([48, 64, 96, 160, 1024])),
        "block_size_tokens": draw(st.sampled_from([1, 4, 16])),
        "max_num_seqs": draw(st.sampled_from([1, 2, 4, 8])),
        "max_num_batched_tokens": draw(st.sampled_from([8, 24, 64, 256])),
        "replicas": draw(st.integers(1, 3)),
        "router": draw(st.sampled_from(["round_robin", "least_outstanding", "least_kv_load", "prefix_affinity"])),
        "watermark_frac": draw(st.sampled_from([0.0, 0.0, 0.1])),
        "max_seq_len": draw(st.sampled_from([64, 128])),
    }
    return wl, cfg


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_compiled_equals_reference_stepping(case):
    wl, cfg = case
    py = simulate(wl, kv_kind="paged", cost=COST, **cfg)
    comp = simulate(wl, kv_kind="paged", cost=COST, loop="compiled", **cfg)
    _assert_same(comp, py)
    # Conservation: every request ends completed or rejected.
    assert set(comp.requests["status"]) <= {"completed", "rejected"}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(), st.sampled_from([0.001, 0.01, 0.05, 0.3]))
def test_compiled_stops_like_reference_at_max_sim_time(case, until_s):
    wl, cfg = case
    py = simulate(wl, cost=COST, until_s=until_s, **cfg)
    comp = simulate(wl, cost=COST, loop="compiled", until_s=until_s, **cfg)
    _assert_same(comp, py)


def test_row_chunks_and_queue_growth(monkeypatch):
    """Many step-row chunks and a waiting ring that must grow (200 arrivals at once)."""
    monkeypatch.setattr(steprows, "FIRST_CHUNK_ROWS", 8)
    monkeypatch.setattr(steprows, "MAX_CHUNK_ROWS", 32)
    rng = np.random.default_rng(5)
    n = 200
    wl = workload(np.zeros(n), rng.integers(1, 60, n).tolist(), rng.integers(1, 30, n).tolist())
    kw = {"capacity_tokens": 256, "block_size_tokens": 4, "max_num_seqs": 4, "max_num_batched_tokens": 64,
          "max_seq_len": 128}
    py = simulate(wl, cost=COST, **kw)
    comp = simulate(wl, cost=COST, loop="compiled", **kw)
    assert len(comp.steps) > 200
    assert sum(r.num_steps for r in comp.replicas) == len(comp.steps) == sum(r.num_steps for r in py.replicas)
    assert comp.summary["completed"] == n
    _assert_same(comp, py)


def test_preemption_is_exercised_and_matches():
    """A KV cache far too small for the batch: recompute preemptions happen in both loops."""
    wl = workload(np.zeros(12), [30] * 12, [60] * 12)
    kw = {"capacity_tokens": 160, "block_size_tokens": 4, "max_num_seqs": 8, "max_num_batched_tokens": 256,
          "max_seq_len": 128}
    py = simulate(wl, cost=COST, **kw)
    comp = simulate(wl, cost=COST, loop="compiled", **kw)
    assert comp.summary["num_preemptions"] > 0
    _assert_same(comp, py)


def _scenario(**engine):
    return {
        "name": "compiled-vs-reference",
        "hardware": {"gpu": "h100-sxm", "replicas": 2},
        "model": {"name": "llama-3.1-8b", "max_model_len_tokens": 4096},
        "kv_cache": {"manager": "paged", "block_size_tokens": 16},
        "scheduler": {"policy": "vllm", "max_num_seqs": 32, "max_num_batched_tokens": 2048},
        "router": {"policy": "least_outstanding"},
        "workload": {
            "num_requests": 300,
            "arrivals": {"process": "poisson", "rate_per_s": 25.0},
            "lengths": {
                "prompt": {"dist": "lognormal", "mean_tokens": 900, "median_tokens": 600, "max_tokens": 3000},
                "output": {"dist": "lognormal", "mean_tokens": 250, "median_tokens": 150, "max_tokens": 1000},
            },
        },
        "slo": {"ttft_ms": 300, "tpot_ms": 30},
        "engine": {"progress": False, **engine},
    }


def test_scenario_compiled_equals_reference():
    comp = run_scenario(scenario_from_dict(_scenario(loop="compiled"))).variants[0]
    # ``python`` is the documented alias of ``reference``; fast_forward has no effect.
    py = run_scenario(scenario_from_dict(_scenario(loop="python", fast_forward=False))).variants[0]
    assert comp.summary["config"]["engine_loop"] == "compiled"
    assert py.summary["config"]["engine_loop"] == "reference"
    comp.summary["config"].pop("engine_loop")
    py.summary["config"].pop("engine_loop")
    _assert_same(comp, py)
    # auto picks the compiled loop here; two runs in one process are identical.
    auto = run_scenario(scenario_from_dict(_scenario())).variants[0]
    assert auto.summary["config"].pop("engine_loop") == "compiled"
    _assert_same(auto, comp)


@pytest.mark.parametrize(("policy", "manager", "preemption"), [
    ("vllm", "paged", "swap"), ("sarathi", "paged", "swap"), ("static", "contiguous", "swap"),
    ("orca", "contiguous", "recompute"),
])
def test_scenario_swap_contiguous_static_run_compiled_like_the_reference(policy, manager, preemption):
    """Through ``run_scenario`` (the wiring of swap space, KV bytes per token and the host
    link in ``build``): a KV pool of a few thousand tokens and 0.05 GiB of swap space, so
    requests are swapped out, refused by the full host pool and recomputed."""
    data = _scenario(loop="auto")
    data["hardware"] = {**data["hardware"], "gpu_memory_utilization": 0.23, "swap_space_gib": 0.05}
    data["kv_cache"] = {**data["kv_cache"], "manager": manager, "reservation": "pow2"}
    data["scheduler"] = {**data["scheduler"], "policy": policy, "preemption": preemption}
    data["workload"]["num_requests"] = 150
    auto = run_scenario(scenario_from_dict(data)).variants[0]
    data["engine"]["loop"] = "reference"
    ref = run_scenario(scenario_from_dict(data)).variants[0]
    assert auto.summary["config"].pop("engine_loop") == "compiled"
    assert ref.summary["config"].pop("engine_loop") == "reference"
    if manager == "paged":
        assert ref.summary["num_preemptions"] > 0
    _assert_same(auto, ref)


def test_auto_runs_every_configuration_compiled():
    """No configuration is left to another loop: contiguous KV, static batching, the cycle
    cost model, fan-out and dependents all resolve to the compiled loop under ``auto``."""
    data = _scenario()
    data["kv_cache"] = {**data["kv_cache"], "manager": "contiguous"}
    data["scheduler"] = {**data["scheduler"], "policy": "static"}
    data["workload"]["num_requests"] = 20
    assert run_scenario(scenario_from_dict(data)).variants[0].summary["config"]["engine_loop"] == "compiled"
    data["engine"]["loop"] = "compiled"
    assert run_scenario(scenario_from_dict(data)).variants[0].summary["config"]["engine_loop"] == "compiled"


def test_compiled_rejects_like_reference():
    """Too long for the model, and too long for the KV cache: rejected at arrival in both."""
    wl = workload([0.0, 0.0, 0.1, 0.2], [10, 200, 120, 5], [5, 5, 5, 200])
    kw = {"capacity_tokens": 96, "block_size_tokens": 4, "max_num_seqs": 4, "max_num_batched_tokens": 64,
          "max_seq_len": 128}
    py = simulate(wl, cost=COST, **kw)
    comp = simulate(wl, cost=COST, loop="compiled", **kw)
    assert comp.requests["reject_reason"].tolist() == ["", "exceeds_max_model_len", "exceeds_kv_capacity",
                                                       "exceeds_max_model_len"]
    _assert_same(comp, py)


@given(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 300)), min_size=1, max_size=30),
       st.sampled_from([1, 4, 16]), st.sampled_from([0.0, 0.1, 0.5]))
def test_fits_ever_many_matches_fits_ever(pairs, block, watermark):
    from servesim.simulator.memory import make_kv_manager

    kv = make_kv_manager("paged", capacity_tokens=160, block_size_tokens=block, max_seqs=4, max_seq_len=200,
                         watermark_frac=watermark)
    p = np.array([a for a, _ in pairs])
    f = p + np.array([b for _, b in pairs])
    assert kv.fits_ever_many(p, f).tolist() == [kv.fits_ever(int(a), int(b)) for a, b in zip(p, f, strict=True)]


@given(st.lists(st.tuples(st.integers(1, 300), st.integers(0, 300)), min_size=1, max_size=30),
       st.sampled_from(["max", "pow2", "oracle"]), st.sampled_from([64, 200, 1024]))
def test_contiguous_fits_ever_many_matches_fits_ever(pairs, reservation, capacity):
    """The compiled cluster's arrival check for contiguous managers (one reservation each)."""
    from servesim.simulator.memory import make_kv_manager

    kv = make_kv_manager("contiguous", capacity_tokens=capacity, block_size_tokens=1, max_seqs=4,
                         max_seq_len=256, reservation=reservation)
    p = np.array([a for a, _ in pairs])
    f = p + np.array([b for _, b in pairs])
    assert kv.fits_ever_many(p, f).tolist() == [kv.fits_ever(int(a), int(b)) for a, b in zip(p, f, strict=True)]
