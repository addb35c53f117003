"""The calibrated GEMM model against the real kernel timings (issue 2's acceptance bound)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from servesim.hwmodels import calibration
from servesim.simulator.cli import app


@pytest.fixture(scope="module")
def table():
    return calibration.error_table()


def test_every_file_is_loaded(table) -> None:
    assert len(table) == 4
    assert set(table["role"]) == {"fit", "held-out"}
    assert (table["num_points"] == 4 * 259 * 4).all()  # 4 GEMMs x 259 token counts x TP 1,2,4,8


def test_error_within_bounds_per_gpu_and_file(table) -> None:
    """Median |err| <= 15 % and no point off by more than 50 %, fit (7B) and held-out (70B)."""
    for row in table.to_dict(orient="records"):
        assert row["median_abs_err_frac"] <= calibration.MEDIAN_ABS_ERR_BOUND, row
        assert row["max_abs_err_frac"] <= calibration.MAX_ABS_ERR_BOUND, row


def test_shapes_follow_the_tp_split() -> None:
    df = calibration.load_gemm_timings("h100", "70b")
    qkv = df[(df["op"] == "qkv_proj") & (df["tp"] == 8)].iloc[0]
    assert (qkv["n"], qkv["k"]) == ((64 + 2 * 8) * 128 / 8, 8192)
    down = df[(df["op"] == "down_proj") & (df["tp"] == 4)].iloc[0]
    assert (down["n"], down["k"]) == (8192, 28672 / 4)


def test_calibrate_cli_prints_the_table() -> None:
    res = CliRunner().invoke(app, ["calibrate", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)["rows"]
    assert all(r["within_bounds"] for r in rows)


@pytest.mark.slow
def test_refit_reproduces_stored_parameters() -> None:
    stored = calibration.error_table()
    refit = calibration.error_table(calibration.fit_all())
    assert refit["median_abs_err_frac"].to_numpy() == pytest.approx(stored["median_abs_err_frac"].to_numpy(), abs=1e-3)
