"""The serving-side cache: buckets, interpolation, JSON round trip, refusal of foreign files."""

from __future__ import annotations

import json

import pytest

from servesim.hwmodels.cyclesim import CycleCostModel, simulate_gemm
from servesim.hwmodels.cyclesim.cache import bracket, bucket_grid
from servesim.hwmodels.errors import ConfigError


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


def test_decode_segments_match_the_bilinear_grid() -> None:
    """The per-segment decode path (one bisection per new context) is the same bilinear model
    as the grid walk: exact on grid points, equal to 1e-12 between them and above batch 64."""
    model = CycleCostModel("h100-sxm")
    geom = (8, 2, 64, 2, 16)
    ctxs = [1, 0.5, 8, 9, 13.5, 100, 127, 128, 129, 700]
    for batch in (1, 5, 9, 40, 64, 100):
        for ctx in ctxs:
            seg = model._decode_over_ctx(batch, ctx, geom)
            assert seg == pytest.approx(model._decode(batch, ctx, geom), rel=1e-12)
            assert model._decode_over_ctx(batch, ctx, geom) == seg  # deterministic
        for c in (1, 8, 10, 128):  # grid points: exactly the grid walk's value
            assert model._decode_over_ctx(batch, c, geom) == model._decode(batch, c, geom)
    t = model.decode_attention_time_s(9, 100, 8, 2, 64, 2, 16)
    assert t == model._decode_over_ctx(9, 100, geom)


def test_cycle_timer_step_fast_path_equals_cost() -> None:
    """``StepCostModel.step_time_s`` with the cycle model: the memoised fast path equals ``cost()``."""
    from servesim.hwmodels.stepcost import StepCostModel

    m = StepCostModel(gpu="h100-sxm", model="llama-3.1-8b", op_timer=CycleCostModel("h100-sxm"))
    steps = [{"num_decode_seqs": b, "decode_ctx_tokens": b * c} for b, c in ((1, 10), (7, 300), (70, 1000))]
    steps.append({"prefill_tokens": 200, "prefill_attn_pairs": 200 * 100.5, "prefill_kv_tokens": 200,
                  "num_prefill_seqs": 1, "num_decode_seqs": 7, "decode_ctx_tokens": 7 * 301})
    for s in steps:
        fast = m.step_time_s(**s)
        assert fast == pytest.approx(m.cost(**s).time_s, rel=1e-12)
        assert m.step_time_s(**s) == fast
