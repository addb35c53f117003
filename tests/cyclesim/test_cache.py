"""The serving-side cache: buckets, interpolation, JSON round trip, refusal of foreign files."""

from __future__ import annotations

import json

import pytest

from hwmodels.cyclesim import CycleCostModel, simulate_gemm
from hwmodels.cyclesim.cache import bracket, bucket_grid
from hwmodels.errors import ConfigError


def test_grid_and_bracket() -> None:
    grid = bucket_grid(64)
    assert grid[:8] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert grid[8:13] == [10, 12, 14, 16, 20]
    assert bracket(8) == (8, 8)
    assert bracket(9) == (8, 10)
    assert bracket(100)[0] <= 100 <= bracket(100)[1]
    with pytest.raises(ConfigError):
        bracket(0)


def test_gemm_cached_interpolated_and_saved(tmp_path) -> None:
    model = CycleCostModel("h100-sxm")
    t = model.gemm_time_s(9, 4096, 4096)
    assert model.num_simulations == 2  # the two grid points around 9
    lo = simulate_gemm("h100-sxm", m=8, n=4096, k=4096).time_s
    hi = simulate_gemm("h100-sxm", m=10, n=4096, k=4096).time_s
    assert t == pytest.approx((lo + hi) / 2)
    assert model.gemm_time_s(9, 4096, 4096) == t
    assert model.num_simulations == 2  # hit
    model.decode_attention_time_s(3, 100, 32, 8, 128)
    model.prefill_attention_time_s(1, 64, 32, 8, 128)
    path = tmp_path / "cache.json"
    model.save(path)
    fresh = CycleCostModel("h100-sxm")
    assert fresh.load(path) == len(model)
    assert fresh.gemm_time_s(9, 4096, 4096) == t
    assert fresh.decode_attention_time_s(3, 100, 32, 8, 128) == model.decode_attention_time_s(3, 100, 32, 8, 128)
    assert fresh.num_simulations == 0
    assert json.loads(path.read_text())["gpu"] == "h100-sxm"


def test_foreign_cache_refused(tmp_path) -> None:
    path = tmp_path / "cache.json"
    CycleCostModel("h100-sxm").save(path)
    with pytest.raises(ConfigError, match="written for GPU"):
        CycleCostModel("a100-sxm4-80gb").load(path)
    path.write_text("not json")
    with pytest.raises(ConfigError):
        CycleCostModel("h100-sxm").load(path)
