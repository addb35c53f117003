"""Serving-stack profiles: shipped files cite every default, validate, round-trip, and plug
into scenarios (engine.stack / engine.profile) with per-request overheads in the results."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import yaml

from servesim.hwmodels.errors import ConfigError
from servesim.hwmodels.stacks import (
    DEFAULT_STACK,
    FITTABLE_PARAMETERS,
    StackProfile,
    get_stack,
    load_profile_file,
    profile_from_dict,
    stack_names,
)
from servesim.hwmodels.stepcost import DEFAULT_STEP_OVERHEAD_S, StepCostModel


def test_shipped_profiles_cite_every_default() -> None:
    assert {"generic", "vllm", "sglang", "trtllm", "compiled"} <= set(stack_names())
    fields = {f.name for f in dataclasses.fields(StackProfile)} - {"name", "description", "sources"}
    for name in stack_names():
        prof = get_stack(name)
        missing = fields - set(prof.sources)
        assert not missing, (name, missing)
        assert all(len(v) > 10 for v in prof.sources.values()), name


def test_default_profile_is_the_original_model() -> None:
    g = get_stack(None)
    assert g.name == DEFAULT_STACK == "generic"
    assert g.step_overhead_s == DEFAULT_STEP_OVERHEAD_S
    assert g.fittable() == {**dict.fromkeys(FITTABLE_PARAMETERS, 0.0), "step_overhead_s": DEFAULT_STEP_OVERHEAD_S,
                            **{k: 1.0 for k in FITTABLE_PARAMETERS if k.endswith("_eff")}}
    assert g.cuda_graphs == "none" and not g.separate_act_quant


def test_profile_round_trips_through_yaml(tmp_path) -> None:
    prof = get_stack("vllm").replace(step_overhead_s=0.0007, moe_gemm_eff=0.5)
    path = tmp_path / "mine.yaml"
    path.write_text(prof.to_yaml())
    back = load_profile_file(path)
    assert back == prof
    assert back.fittable()["moe_gemm_eff"] == 0.5


@pytest.mark.parametrize(("change", "needle"), [
    ({"step_overhead_s": -1.0}, "step_overhead_s"),
    ({"moe_gemm_eff": 0.0}, "moe_gemm_eff"),
    ({"cuda_graphs": "sometimes"}, "cuda_graphs"),
    ({"cuda_graph_sizes": [8, 4]}, "ascending"),
    ({"cuda_graphs": "none"}, "exactly when"),
    ({"bogus_field": 1}, "unknown stack-profile fields"),
    ({"separate_act_quant": "yes"}, "separate_act_quant"),
])
def test_invalid_profiles_are_clear_errors(change: dict, needle: str) -> None:
    raw = {**get_stack("vllm").to_dict(), **change}
    with pytest.raises(ConfigError, match=needle):
        profile_from_dict(raw, "test profile")


def test_unknown_stack_name_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match="vllm"):
        get_stack("vlm")


def test_step_overhead_override_beats_the_profile() -> None:
    m = StepCostModel(gpu="h100-sxm", model="llama-3.1-8b", stack="vllm", step_overhead_s=0.002)
    assert m.step_overhead_s == 0.002 and m.step_overhead_s_per_seq == get_stack("vllm").step_overhead_s_per_seq


# ---------------------------------------------------------------------------- scenarios
def _scenario(tmp_path, engine: dict) -> dict:
    return {
        "name": "stack-test",
        "seed": 1,
        "hardware": {"gpu": "h100-sxm"},
        "model": {"name": "llama-3.1-8b"},
        "engine": {"progress": False, **engine},
        "workload": {"num_requests": 12, "arrivals": {"process": "poisson", "rate_per_s": 2.0},
                     "lengths": {"prompt": {"dist": "fixed", "tokens": 300},
                                 "output": {"dist": "fixed", "tokens": 20}}},
    }


def _run(tmp_path, engine: dict):
    from servesim.simulator.build import run_scenario
    from servesim.simulator.scenario import load_scenario

    path = tmp_path / f"s{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(_scenario(tmp_path, engine)))
    res = run_scenario(load_scenario(path))
    return (res.variants[0] if hasattr(res, "variants") else res).requests


def test_scenario_stack_and_profile_and_request_overheads(tmp_path) -> None:
    """engine.stack selects a shipped profile, engine.profile a user copy (relative to the
    scenario file); the request overheads shift TTFT and E2EL of every request by exactly
    request + per-token x prompt + response, and leave the engine's timeline alone."""
    quiet = get_stack("vllm").replace(name="vllm-quiet", request_overhead_s=0.0,
                                      request_overhead_s_per_prompt_token=0.0, response_overhead_s=0.0)
    (tmp_path / "quiet.yaml").write_text(quiet.to_yaml())
    served = _run(tmp_path, {"stack": "vllm"})
    engine_only = _run(tmp_path, {"profile": "quiet.yaml"})
    np.testing.assert_array_equal(served.first_token_s.to_numpy(), engine_only.first_token_s.to_numpy())
    extra_ms = get_stack("vllm").request_overhead_total_s(300.0) * 1e3
    np.testing.assert_allclose(served.ttft_ms - engine_only.ttft_ms, extra_ms, rtol=1e-9)
    np.testing.assert_allclose(served.e2el_ms - engine_only.e2el_ms, extra_ms, rtol=1e-9)
    np.testing.assert_allclose(served.tpot_ms, engine_only.tpot_ms, rtol=1e-9)
    generic = _run(tmp_path, {})
    assert (generic.ttft_ms > 0).all()


def test_scenario_stack_errors(tmp_path) -> None:
    from servesim.simulator.errors import ScenarioError
    from servesim.simulator.scenario import load_scenario

    for engine, needle in (({"stack": "vlm"}, "vllm"),
                           ({"stack": "vllm", "profile": "x.yaml"}, "exclusive")):
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(_scenario(tmp_path, engine)))
        with pytest.raises(ScenarioError, match=needle):
            load_scenario(path)
