"""A capacity-plan table and curves in the shape ``plan_capacity`` writes, for report tests."""

from __future__ import annotations

import numpy as np
import pandas as pd


def plan_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    """A plan table and curves in the shape ``plan_capacity`` writes (two feasible candidates,
    one infeasible)."""
    table = pd.DataFrame({
        "rank": [1.0, 2.0, np.nan],
        "point_index": [1, 0, 2],
        "label": ["h100-sxm tp1 fp16 paged", "a100-sxm4-80gb tp1 fp16 paged",
                  "h100-sxm tp1 fp16 paged 70b"],
        "gpu": ["h100-sxm", "a100-sxm4-80gb", "h100-sxm"],
        "status": ["ok", "ok", "infeasible"],
        "error": [None, None, "CapacityError: llama-3.1-70b does not fit"],
        "max_rate_per_replica": [7.25, 3.125, np.nan],
        "replicas": [2.0, 4.0, np.nan],
        "num_gpus": [2.0, 4.0, np.nan],
        "usd_per_hour": [6.0, 8.0, np.nan],
        "usd_per_million_output_tokens": [0.33, 0.44, np.nan],
        "output_tokens_per_s_per_gpu": [4475.584, 1020.25, np.nan],
        "output_tokens_per_s_per_user": [38.2, 21.7, np.nan],
        "kv_free_frac_at_max": [0.41, 0.02, np.nan],
        "limiting_slo": ["ttft", "tpot", None],
        "binding_constraint": ["compute", "KV capacity", None],
        "binding_reason": ["61% of step time in compute", "3 preemptions", None],
    })  # fmt: skip
    rates = [1.0, 2.0, 4.0, 6.0, 8.0]
    curves = pd.DataFrame([
        {"label": lab, "point_index": i, "rate_per_s": r * k,
         "p99_ttft_ms": 80 * r * k + 20 * (r * k) ** 3 / k, "p99_tpot_ms": 20 + 4 * r}
        for i, (lab, k) in enumerate((("h100-sxm tp1 fp16 paged", 1.0),
                                      ("a100-sxm4-80gb tp1 fp16 paged", 0.5)))
        for r in rates
    ])  # fmt: skip
    return table, curves


PLAN = {
    "name": "browser-check",
    "target_rate_per_s": 12.0,
    "slo": {"ttft_ms": 500.0, "tpot_ms": 50.0, "goodput_frac": None, "percentile": "p99"},
    "usd_per_gpu_hour": {"h100-sxm": 3.0, "a100-sxm4-80gb": 2.0},
    "price_note": "Illustrative prices.",
    "rel_tol": 0.05,
}
