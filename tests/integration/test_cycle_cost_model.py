"""``engine.cost_model: cycle`` runs a scenario on the cycle-level kernel model."""

from __future__ import annotations

import pandas as pd

from servesim.simulator.build import run_scenario
from servesim.simulator.scenario import scenario_from_dict


def test_cycle_and_roofline_cost_models_agree_roughly(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SERVESIM_CACHE_DIR", str(tmp_path))
    data = {
        "name": "cyc",
        "hardware": {"gpu": "h100-sxm"},
        "model": {"name": "llama-3.1-8b", "max_model_len_tokens": 4096},
        "engine": {"progress": False},
        "workload": {
            "num_requests": 40,
            "arrivals": {"process": "poisson", "rate_per_s": 8},
            "lengths": {"prompt": {"dist": "uniform", "min_tokens": 100, "max_tokens": 1000},
                        "output": {"dist": "uniform", "min_tokens": 10, "max_tokens": 100}},
        },
        "variants": [{"name": "roofline", "engine": {"cost_model": "roofline"}},
                     {"name": "cycle", "engine": {"cost_model": "cycle"}},
                     {"name": "cycle-reference", "engine": {"cost_model": "cycle", "loop": "reference"}}],
    }
    res = run_scenario(scenario_from_dict(data))
    rf, cy = res["roofline"].summary, res["cycle"].summary
    assert cy["completed"] == rf["completed"] == 40
    # Two independent models of the same kernels: decode step times within 30 %.
    assert abs(cy["median_tpot_ms"] / rf["median_tpot_ms"] - 1) < 0.3
    # The compiled loop runs the cycle model (each new step shape costed by the facade through
    # NEED_COST), identical to the plain reference replica, the split by bound included.
    assert cy["config"]["engine_loop"] == "compiled"
    pd.testing.assert_frame_equal(res["cycle"].requests, res["cycle-reference"].requests, check_exact=True)
    pd.testing.assert_frame_equal(res["cycle"].steps, res["cycle-reference"].steps, check_exact=True)
    # The operator times persist for the next run.
    assert list(tmp_path.glob("h100-sxm-*.json"))
