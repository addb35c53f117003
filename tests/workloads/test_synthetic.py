"""Synthetic generators: exact tiny examples, determinism, named streams, arrival and length
statistics, and hypothesis properties of the prefix structure (CSR consistency, bounds,
children inheriting their parent's full blocks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from servesim.hwmodels.errors import ConfigError
from servesim.workloads import WorkloadCfg, build_workload, workload_stats

TRACES = Path(__file__).resolve().parents[1] / "data" / "traces"


def cfg(**kw: Any) -> WorkloadCfg:
    base: dict[str, Any] = {
        "num_requests": 7,
        "arrivals": {"process": "poisson", "rate_per_s": 2.0},
        "lengths": {
            "prompt": {"dist": "uniform", "min_tokens": 3, "max_tokens": 20},
            "output": {"dist": "fixed", "tokens": 5},
        },
    }
    base.update(kw)
    return WorkloadCfg.model_validate(base)


def ids(wl) -> list[list[int]]:
    return [wl.block_ids(i).tolist() for i in range(len(wl))]


def test_system_prompts_share_their_full_blocks() -> None:
    """Pool prompts of 40 tokens with 16-token blocks: 2 shared full blocks each (the third
    block mixes in the user's message, so it is the request's own)."""
    wl = build_workload(
        cfg(
            prefixes={
                "kind": "system_prompts",
                "num_prompts": 5,
                "block_tokens": 16,
                "prompt_tokens": {"dist": "fixed", "tokens": 40},
            }
        ),
        seed=1,
    )
    assert ids(wl) == [
        [0, 1, 10, 11],
        [0, 1, 12, 13],
        [0, 1, 14],
        [0, 1, 15],
        [0, 1, 16, 17],
        [2, 3, 18, 19],
        [0, 1, 20, 21],
    ]
    assert np.all(wl.prompt_tokens >= 41)


def test_few_shot_prefix_is_shared_by_all() -> None:
    wl = build_workload(
        cfg(
            num_requests=50, prefixes={"kind": "few_shot", "prefix_tokens": 64, "block_tokens": 16}
        ),
        seed=0,
    )
    assert all(wl.prompt_block_ids(i)[:4].tolist() == [0, 1, 2, 3] for i in range(len(wl)))
    assert workload_stats(wl).prefix_reuse_frac > 0.5


def test_multi_turn_sessions_chain_context() -> None:
    """Turn k+1 = turn k prompt + answer + new message, sent after turn k finishes; its ids
    start with turn k's full blocks (prompt and answer)."""
    wl = build_workload(
        cfg(
            prefixes={
                "kind": "multi_turn",
                "max_turns": 3,
                "block_tokens": 4,
                "system_prompt_tokens": 8,
                "think_time_s": 5.0,
            }
        ),
        seed=1,
    )
    assert ids(wl)[3:6] == [
        [0, 1, 17, 18, 19],
        [0, 1, 17, 18, 19, 20, 21, 22, 23],
        [0, 1, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28],
    ]
    assert wl.depends_on.tolist() == [-1, 0, -1, -1, 3, 4, -1]
    assert wl.turn.tolist() == [0, 1, 0, 0, 1, 2, 0]
    assert wl.session_id.tolist() == [0, 0, 1, 2, 2, 2, 3]
    assert np.isnan(wl.arrival_s[[1, 4, 5]]).all()
    assert wl.think_time_s[[1, 4, 5]].tolist() == [5.0, 5.0, 5.0]
    child = wl.depends_on >= 0
    par = wl.depends_on[child]
    assert np.all(wl.prompt_tokens[child] > wl.prompt_tokens[par] + wl.output_tokens[par])


def test_tree_of_thought_children_share_parent_context() -> None:
    wl = build_workload(
        cfg(prefixes={"kind": "tree_of_thought", "depth": 2, "branching": 2, "block_tokens": 4}),
        seed=1,
    )
    assert wl.depends_on.tolist() == [-1, 0, 0, 1, 1, 2, 2]
    assert wl.turn.tolist() == [0, 1, 1, 2, 2, 2, 2]
    assert ids(wl)[:4] == [
        [0, 1, 2, 3, 4],
        [0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 11],
        [0, 1, 2, 3, 12, 13, 14, 15],
        [0, 1, 2, 3, 5, 6, 7, 8, 9, 10, 16, 17, 18, 19],
    ]


def test_sampling_fan_out() -> None:
    wl = build_workload(cfg(sampling={"n": 4}), seed=0)
    assert wl.num_samples.tolist() == [4] * 7 and wl.beam_width.tolist() == [1] * 7
    with pytest.raises(ValidationError, match="not both"):
        cfg(sampling={"n": 2, "beam_width": 2})


def test_same_seed_same_workload_and_named_streams() -> None:
    a = build_workload(cfg(num_requests=500), seed=3)
    b = build_workload(cfg(num_requests=500), seed=3)
    c = build_workload(cfg(num_requests=500), seed=4)
    gamma = build_workload(
        cfg(num_requests=500, arrivals={"process": "gamma", "rate_per_s": 2.0, "cv": 3.0}), seed=3
    )
    np.testing.assert_array_equal(a.arrival_s, b.arrival_s)
    np.testing.assert_array_equal(a.prompt_tokens, b.prompt_tokens)
    assert not np.array_equal(a.prompt_tokens, c.prompt_tokens)
    # Another arrival process draws from its own stream: the lengths do not move.
    np.testing.assert_array_equal(a.prompt_tokens, gamma.prompt_tokens)


@pytest.mark.parametrize(
    ("arrivals", "rate_per_s", "cv"),
    [
        ({"process": "poisson", "rate_per_s": 10.0}, 10.0, 1.0),
        ({"process": "gamma", "rate_per_s": 10.0, "cv": 3.0}, 10.0, 3.0),
        ({"process": "gamma", "rate_per_s": 10.0, "cv": 0.5}, 10.0, 0.5),
        ({"process": "constant", "rate_per_s": 10.0}, 10.0, 0.0),
    ],
)
def test_renewal_processes_have_their_rate_and_cv(
    arrivals: dict, rate_per_s: float, cv: float
) -> None:
    s = workload_stats(build_workload(cfg(num_requests=20000, arrivals=arrivals), seed=0))
    assert s.mean_rate_per_s == pytest.approx(rate_per_s, rel=0.05)
    assert s.interarrival_cv == pytest.approx(cv, abs=0.1)


def test_constant_and_offline_are_exact() -> None:
    wl = build_workload(
        cfg(num_requests=4, arrivals={"process": "constant", "rate_per_s": 4}), seed=0
    )
    assert wl.arrival_s.tolist() == [0.0, 0.25, 0.5, 0.75]
    wl = build_workload(cfg(num_requests=4, arrivals={"process": "offline"}), seed=0)
    assert wl.arrival_s.tolist() == [0.0] * 4


def test_piecewise_and_onoff_respect_silent_segments() -> None:
    wl = build_workload(
        cfg(
            num_requests=3000,
            arrivals={
                "process": "piecewise",
                "rates_per_s": [10, 0, 30],
                "durations_s": [10, 5, 10],
            },
        ),
        seed=0,
    )
    phase = np.mod(wl.arrival_s, 25.0)
    assert not np.any((phase > 10) & (phase < 15))
    first, third = np.sum(phase <= 10), np.sum(phase >= 15)
    assert third / first == pytest.approx(3.0, rel=0.15)
    wl = build_workload(
        cfg(
            num_requests=2000,
            arrivals={"process": "onoff", "rate_per_s": 50, "on_s": 1, "off_s": 4},
        ),
        seed=0,
    )
    assert np.all(np.mod(wl.arrival_s, 5.0) <= 1.0 + 1e-9)


def test_diurnal_peaks_at_peak_s() -> None:
    wl = build_workload(
        cfg(
            num_requests=20000,
            arrivals={
                "process": "diurnal",
                "rate_per_s": 1.0,
                "amplitude_frac": 0.8,
                "period_s": 1000,
                "peak_s": 250,
            },
        ),
        seed=0,
    )
    phase = np.mod(wl.arrival_s, 1000.0)
    near_peak = np.sum(np.abs(phase - 250) < 100)
    near_trough = np.sum(np.abs(phase - 750) < 100)
    assert near_peak / near_trough == pytest.approx(
        (1 + 0.8 * np.sinc(0.2)) / (1 - 0.8 * np.sinc(0.2)), rel=0.15
    )


def test_closed_loop_chains_each_clients_requests() -> None:
    wl = build_workload(
        cfg(
            num_requests=10,
            arrivals={
                "process": "closed_loop",
                "num_clients": 3,
                "think_time_s": 2.0,
                "ramp_up_s": 3.0,
            },
        ),
        seed=0,
    )
    assert wl.arrival_s[:3].tolist() == [0.0, 1.0, 2.0]
    assert wl.depends_on.tolist() == [-1, -1, -1, 0, 1, 2, 3, 4, 5, 6]
    assert wl.think_time_s[3:].tolist() == [2.0] * 7


def test_lognormal_mean_and_median() -> None:
    wl = build_workload(
        cfg(
            num_requests=50000,
            lengths={
                "prompt": {"dist": "lognormal", "mean_tokens": 800, "median_tokens": 500},
                "output": {"dist": "zipf", "a": 1.2, "min_tokens": 2, "max_tokens": 50},
            },
        ),
        seed=0,
    )
    assert wl.prompt_tokens.mean() == pytest.approx(800, rel=0.05)
    assert np.median(wl.prompt_tokens) == pytest.approx(500, rel=0.05)
    assert wl.output_tokens.min() >= 2 and wl.output_tokens.max() <= 50
    assert np.mean(wl.output_tokens == 2) > np.mean(wl.output_tokens == 3)


def test_empirical_lengths_sample_pairs_jointly() -> None:
    wl = build_workload(
        cfg(
            num_requests=200,
            lengths={"prompt": {"dist": "empirical", "path": "sharegpt_8k_300.csv"}},
        ),
        seed=0,
        base_dir=TRACES,
    )
    import pandas as pd

    rows = pd.read_csv(TRACES / "sharegpt_8k_300.csv")
    pairs = set(zip(rows.num_prefill_tokens, rows.num_decode_tokens, strict=True))
    assert all((p, o) in pairs for p, o in zip(wl.prompt_tokens, wl.output_tokens, strict=True))


def test_max_total_tokens_clips_single_turn() -> None:
    wl = build_workload(
        cfg(
            num_requests=100,
            lengths={
                "prompt": {"dist": "fixed", "tokens": 900},
                "output": {"dist": "fixed", "tokens": 300},
                "max_total_tokens": 1000,
            },
        ),
        seed=0,
    )
    assert wl.prompt_tokens.tolist() == [900] * 100 and wl.output_tokens.tolist() == [100] * 100


def test_config_errors_are_clear() -> None:
    with pytest.raises(ValidationError, match="extra"):
        cfg(arrivals={"process": "poisson", "rate_per_s": 1, "rate": 2})
    with pytest.raises(ValidationError, match="needs arrivals"):
        WorkloadCfg.model_validate({"num_requests": 3})
    with pytest.raises(ValidationError, match="mean_tokens >= median_tokens"):
        cfg(
            lengths={
                "prompt": {"dist": "lognormal", "mean_tokens": 1, "median_tokens": 2},
                "output": {"dist": "fixed", "tokens": 1},
            }
        )
    with pytest.raises(ConfigError, match="leaves no room"):
        build_workload(
            cfg(
                prefixes={"kind": "few_shot", "prefix_tokens": 100},
                lengths={
                    "prompt": {"dist": "fixed", "tokens": 1},
                    "output": {"dist": "fixed", "tokens": 1},
                    "max_total_tokens": 50,
                },
            ),
            seed=0,
        )


def test_trace_workloads_via_config() -> None:
    lengths_only = WorkloadCfg.model_validate({"trace": {"path": "sharegpt_8k_300.csv"}})
    with pytest.raises(ConfigError, match=r"add workload\.arrivals"):
        build_workload(lengths_only, seed=0, base_dir=TRACES)
    wl = build_workload(
        WorkloadCfg.model_validate(
            {
                "trace": {"path": "sharegpt_8k_300.csv"},
                "num_requests": 50,
                "arrivals": {"process": "poisson", "rate_per_s": 5},
            }
        ),
        seed=0,
        base_dir=TRACES,
    )
    assert len(wl) == 50 and np.all(np.diff(wl.arrival_s) > 0)
    timed = {"trace": {"path": "splitwise_10.csv"}, "arrivals": {"process": "offline"}}
    with pytest.raises(ConfigError, match=r"remove workload\.arrivals"):
        build_workload(WorkloadCfg.model_validate(timed), seed=0, base_dir=TRACES)
    wl = build_workload(
        WorkloadCfg.model_validate(
            {
                "trace": {
                    "path": "mooncake_conversation_300.jsonl",
                    "replay": "spread",
                    "time_scale": 0.5,
                },
                "sampling": {"beam_width": 3},
            }
        ),
        seed=0,
        base_dir=TRACES,
    )
    assert wl.arrival_s.max() < 0.5 * 102 + 3 and set(wl.beam_width.tolist()) == {3}


def test_million_requests_schema_is_cheap() -> None:
    """The JSON schema (what ``servesim schema`` prints) documents the fields."""
    schema = WorkloadCfg.model_json_schema()
    assert "trace" in schema["properties"] and schema["properties"]["num_requests"]["description"]


# ------------------------------------------------------------------ properties

prefix_st = st.one_of(
    st.just({"kind": "none", "block_tokens": 4}),
    st.builds(
        lambda k, a: {
            "kind": "system_prompts",
            "num_prompts": k,
            "zipf_a": a,
            "block_tokens": 4,
            "prompt_tokens": {"dist": "uniform", "min_tokens": 1, "max_tokens": 30},
        },
        st.integers(1, 5),
        st.floats(0, 2),
    ),
    st.builds(
        lambda p: {"kind": "few_shot", "prefix_tokens": p, "block_tokens": 8}, st.integers(1, 40)
    ),
    st.builds(
        lambda lo, extra, s: {
            "kind": "multi_turn",
            "min_turns": lo,
            "max_turns": lo + extra,
            "system_prompt_tokens": s,
            "block_tokens": 4,
        },
        st.integers(1, 3),
        st.integers(0, 3),
        st.integers(0, 20),
    ),
    st.builds(
        lambda d, b: {"kind": "tree_of_thought", "depth": d, "branching": b, "block_tokens": 4},
        st.integers(1, 3),
        st.integers(1, 3),
    ),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    prefixes=prefix_st,
    n=st.integers(1, 60),
    seed=st.integers(0, 2**32),
    max_total=st.one_of(st.none(), st.integers(60, 200)),
    closed=st.booleans(),
)
def test_generated_workloads_are_consistent(
    prefixes: dict, n: int, seed: int, max_total: int | None, closed: bool
) -> None:
    arrivals = (
        {"process": "closed_loop", "num_clients": 3}
        if closed
        else {"process": "poisson", "rate_per_s": 3.0}
    )
    c = cfg(
        num_requests=n,
        prefixes=prefixes,
        arrivals=arrivals,
        lengths={
            "prompt": {"dist": "uniform", "min_tokens": 1, "max_tokens": 40},
            "output": {"dist": "uniform", "min_tokens": 1, "max_tokens": 30},
            "max_total_tokens": max_total,
        },
    )
    wl = build_workload(c, seed=seed)
    wl.check()
    assert len(wl) == n
    if max_total is not None:
        assert np.all(wl.prompt_tokens + wl.output_tokens <= max_total)
    # CSR: ceil(sequence / block) ids each; the output is included for chat and trees.
    b = wl.block_tokens
    seq = wl.prompt_tokens + (
        wl.output_tokens if prefixes["kind"] in ("multi_turn", "tree_of_thought") else 0
    )
    np.testing.assert_array_equal(np.diff(wl.prefix_offsets), -(-seq // b))
    assert len(wl.prefix_block_ids) == wl.prefix_offsets[-1]
    # Children extend their parent's context and inherit its full blocks.
    kids = np.flatnonzero(wl.turn > 0)
    for i in kids:
        p = wl.depends_on[i]
        assert wl.session_id[i] == wl.session_id[p]
        full = (wl.prompt_tokens[p] + wl.output_tokens[p]) // b
        assert wl.prompt_tokens[i] > wl.prompt_tokens[p] + wl.output_tokens[p] - 1
        assert wl.block_ids(i)[:full].tolist() == wl.block_ids(p)[:full].tolist()
    # Ids not inherited are unique to their request.
    counts = np.bincount(wl.prefix_block_ids) if len(wl.prefix_block_ids) else np.zeros(0)
    if prefixes["kind"] == "none":
        assert counts.max(initial=1) == 1
    # Determinism.
    again = build_workload(c, seed=seed)
    np.testing.assert_array_equal(again.prefix_block_ids, wl.prefix_block_ids)
    np.testing.assert_array_equal(again.arrival_s, wl.arrival_s)
