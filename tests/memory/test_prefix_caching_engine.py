"""Prefix caching seen through whole runs: when prefixes become shareable, what a burst does to
the hit rate, generated tokens reused by later turns, the loop choice, and the config field.

Small forms of the gallery's radix scenarios, run through the public API (``servesim.run``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import servesim as ss
from servesim.simulator.errors import ScenarioError
from servesim.simulator.scenario import load_scenario
from servesim.workloads.config import build_workload

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
SHARED = str(SCENARIOS / "radix-shared-prefix.yaml")
MULTI = str(SCENARIOS / "radix-multi-turn.yaml")


def hit_rates(path: str, *overrides: str) -> dict[str, float]:
    res = ss.run(path, list(overrides))
    return {v.name: v.summary["prefix_hit_rate"] for v in res.variants}


def test_burst_hit_rate_matches_low_load() -> None:
    """Issue #16 gap 1: a running request's prefix is shared, so a burst (200 requests/s,
    all arriving while the first prefill runs) hits as often as a trickle (2/s)."""
    n = "workload.num_requests=80"
    low = hit_rates(SHARED, n, "workload.arrivals={process: poisson, rate_per_s: 2}")
    burst = hit_rates(SHARED, n, "workload.arrivals={process: poisson, rate_per_s: 200}")
    assert low["paged-no-cache"] == burst["paged-no-cache"] == 0.0
    for name in ("vllm-prefix-caching", "radix"):
        assert low[name] > 0.9
        assert abs(low[name] - burst[name]) <= 0.03, (name, low[name], burst[name])


def test_later_turns_hit_the_previous_answer() -> None:
    """Issue #16 gap 2: generated tokens' pages enter the cache when full, so turn k+1 hits
    beyond turn k's prompt, into its answer (radix and vLLM prefix caching alike)."""
    over = ["workload.num_requests=40"]
    res = ss.run(MULTI, over)
    wl = build_workload(load_scenario(MULTI, over).workload, seed=0)
    child = np.flatnonzero(wl.depends_on >= 0)
    assert len(child) > 5
    parent = wl.depends_on[child]
    for v in res.variants:
        req = v.requests.set_index("request_id")
        cached = req.loc[child, "cached_prompt_tokens"].to_numpy()
        if v.name == "paged-no-cache":
            assert (cached == 0).all()
            continue
        beyond = cached > wl.prompt_tokens[parent]
        # a turn's cached prefix reaches into the previous answer unless that answer was
        # shorter than a page past the prompt's last full page
        assert beyond.mean() > 0.8, (v.name, beyond.mean())


def test_no_prefix_ids_prefix_caching_changes_nothing() -> None:
    """Without prefix ids nothing can hit: prefix caching on or off gives identical results,
    in the reference replica and in the compiled loop (which ``auto`` picks then)."""
    base = [
        "workload.num_requests=60",
        "workload.prefixes={kind: none}",
        "variants=[]",
        "kv_cache.manager=paged",
        "scheduler.policy=vllm",
    ]
    runs = {}
    for loop in ("reference", "auto"):
        for pc in ("true", "false"):
            res = ss.run(SHARED, [*base, f"engine.loop={loop}", f"kv_cache.prefix_caching={pc}"])
            (v,) = res.variants
            runs[loop, pc] = v
    assert runs["auto", "true"].summary["config"]["engine_loop"] == "compiled"
    assert runs["reference", "true"].summary["config"]["engine_loop"] == "reference"
    for loop in ("reference", "auto"):
        on, off = runs[loop, "true"], runs[loop, "false"]
        assert on.requests.equals(off.requests), loop
        assert on.steps.equals(off.steps), loop
        assert on.summary == off.summary, loop
    # across loops the request frames agree (the compiled loop's own contract)
    assert runs["auto", "true"].requests.equals(runs["reference", "true"].requests)


def test_auto_loop_runs_prefix_caching_compiled() -> None:
    """vllm defaults to prefix caching; with prefix ids ``engine.loop: auto`` runs it in the
    compiled loop (which makes the reference's prefix-cache calls), with the reference's
    request frame, and without prefix caching nothing hits."""
    base = ["workload.num_requests=20", "variants=[]", "scheduler.policy=vllm"]
    res = ss.run(SHARED, base)
    assert res.variants[0].summary["config"]["engine_loop"] == "compiled"
    assert res.variants[0].summary["prefix_hit_rate"] > 0.5  # default on for vllm
    py = ss.run(SHARED, [*base, "engine.loop=reference"])
    assert res.variants[0].requests.equals(py.variants[0].requests)
    res = ss.run(SHARED, [*base, "kv_cache.prefix_caching=false"])
    assert res.variants[0].summary["config"]["engine_loop"] == "compiled"
    assert res.variants[0].summary["prefix_hit_rate"] == 0.0


@pytest.mark.parametrize(
    ("manager", "value", "message"),
    [
        ("contiguous", "true", "kv_cache.prefix_caching: true needs kv_cache.manager 'paged'"),
        ("radix", "false", "kv_cache.prefix_caching: false is not valid with kv_cache.manager"),
    ],
)
def test_prefix_caching_field_is_validated(manager: str, value: str, message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        load_scenario(SHARED, [f"kv_cache.manager={manager}", f"kv_cache.prefix_caching={value}"])
