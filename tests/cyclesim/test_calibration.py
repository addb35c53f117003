"""The cycle model against the bundled real GEMM timings (subset, for speed)."""

from __future__ import annotations

import numpy as np
import pytest

from servesim.hwmodels.cyclesim import calibration as cal

#: One point per regime: memory plateau, knee, compute-bound.
_TOKENS = (1, 32, 256, 1024)


@pytest.fixture(scope="module")
def points() -> list[cal.CalibrationPoint]:
    return cal.calibration_points(tokens=_TOKENS, tps=(1, 8))


def test_median_error_within_15_percent_per_file(points) -> None:
    table = cal.error_table(points)
    for name in cal.FILES:
        row = table.loc[(name, "all")]
        assert row["cycle_median_abs_err"] <= 0.15, name
        # ... and clearly better than a plain roofline.
        assert row["cycle_median_abs_err"] < 0.5 * row["roofline_median_abs_err"], name


def test_efficiency_shape(points) -> None:
    """Memory plateau at small m, rising efficiency (TFLOP/s) with m, small TP shards less efficient."""
    df = cal.points_frame(points)
    h = df[(df["file"] == "h100_llama2_7b_mlp.csv") & (df["op"] == "mlp_up_proj")]
    tp1 = h[h["tp"] == 1].sort_values("m")
    tp8 = h[h["tp"] == 8].sort_values("m")
    # Plateau: 1 -> 32 tokens costs about the same time (weights dominate).
    assert tp1["cycle_s"].iloc[1] < 1.15 * tp1["cycle_s"].iloc[0]
    # Achieved FLOP/s grows with m in both model and measurement.
    for col in ("cycle_s", "measured_s"):
        rate = 2.0 * tp1["m"] * tp1["n"] * tp1["k"] / tp1[col]
        assert np.all(np.diff(rate.to_numpy()) > 0)
    # Small shards reach a lower fraction of the roofline, in model and measurement alike.
    for col in ("cycle_s", "measured_s"):
        eff1 = (tp1["roofline_s"] / tp1[col]).to_numpy()
        eff8 = (tp8["roofline_s"] / tp8[col]).to_numpy()
        assert eff8[0] < eff1[0]
