"""Quantization maths: affine round trip, granularities, metrics, SmoothQuant, outliers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from servesim.hwmodels import quantmath as qm
from servesim.hwmodels.errors import ConfigError
from servesim.hwmodels.rng import make_rng

FINITE = st.floats(
    -1e6, 1e6, allow_nan=False, allow_infinity=False, allow_subnormal=False, width=64
)


def _within_half_step(x: np.ndarray, params: qm.QuantParams) -> None:
    err = np.abs(x - qm.dequantize(qm.quantize(x, params), params))
    bound = np.broadcast_to(params.scale, x.shape) / 2
    assert np.all(err <= bound * (1 + 1e-9) + 8 * np.finfo(float).eps * np.abs(x))


# ---------------------------------------------------------------------------- small examples
def test_int_range() -> None:
    assert qm.int_range(8, symmetric=True) == (-128, 127)
    assert qm.int_range(8, symmetric=False) == (0, 255)
    assert qm.int_range(4, symmetric=True) == (-8, 7)
    with pytest.raises(ConfigError, match=r"bits must be in 2\.\.16, got 1"):
        qm.int_range(1, symmetric=True)


def test_symmetric_by_hand() -> None:
    x = np.array([-2.54, -1.0, 0.0, 0.011, 1.27, 2.54])
    p = qm.compute_params(x, bits=8)
    assert float(p.scale) == pytest.approx(2.54 / 127)  # s = max|X| / (2^(b-1) - 1)
    assert p.num_scales == 1
    assert qm.quantize(x, p).tolist() == [-127, -50, 0, 1, 64, 127]  # 63.5 rounds to even 64
    assert qm.dequantize([-127, 0, 127], p) == pytest.approx([-2.54, 0.0, 2.54])


def test_asymmetric_by_hand() -> None:
    x = np.array([0.0, 1.0, 2.55])  # min 0, max 2.55 -> s = 0.01, z = 0
    p = qm.compute_params(x, bits=8, symmetric=False)
    assert float(p.scale) == pytest.approx(0.01)
    assert int(p.zero_point) == 0
    assert qm.quantize(x, p).tolist() == [0, 100, 255]
    y = np.array([-1.0, 0.0, 3.0])  # s = 4 / 255, z = round(1 / s) = 64
    p = qm.compute_params(y, bits=8, symmetric=False)
    assert int(p.zero_point) == 64
    assert qm.dequantize(qm.quantize(0.0, p), p) == 0.0  # zero is exact


def test_range_includes_zero_for_asymmetric() -> None:
    p = qm.compute_params(np.array([5.0, 6.0]), bits=4, symmetric=False)
    assert int(p.zero_point) == 0
    assert float(p.scale) == pytest.approx(6.0 / 15)


def test_values_outside_calibrated_range_clip() -> None:
    p = qm.compute_params(np.array([-1.0, 1.0]), bits=8)
    assert qm.quantize([5.0, -5.0], p).tolist() == [127, -128]


def test_all_zero_tensor_is_exact() -> None:
    x = np.zeros((3, 4))
    for sym in (True, False):
        assert np.array_equal(qm.fake_quantize(x, bits=8, symmetric=sym), x)


def test_per_channel_scales() -> None:
    w = np.array([[1.0, -100.0], [0.5, 50.0], [-0.25, 10.0]])  # W[in=3, out=2]
    p = qm.compute_params(w, bits=8, granularity="channel", axis=1)  # per output channel
    assert p.scale.shape == (1, 2)
    assert p.scale.ravel() == pytest.approx([1.0 / 127, 100.0 / 127])
    assert p.num_scales == 2
    assert np.all(np.abs(qm.quantize(w, p)[:, 0]) >= 32)  # small column keeps its resolution


def test_per_group_scales_along_input_dim() -> None:
    w = np.arange(1, 13, dtype=float).reshape(6, 2)  # W[in=6, out=2]
    p = qm.compute_params(w, bits=4, granularity="group", axis=0, group_size=4)
    # Groups along the input dim: rows 0-3 and the partial group rows 4-5, per output column.
    assert p.num_scales == 4
    assert p.scale.shape == (6, 2)
    assert p.scale[:4, 0] == pytest.approx([7 / 7] * 4)  # max of 1,3,5,7 = 7 over qmax 7
    assert p.scale[4:, 0] == pytest.approx([11 / 7] * 2)
    assert p.scale[:4, 1] == pytest.approx([8 / 7] * 4)
    _within_half_step(w, p)


def test_bad_arguments() -> None:
    x = np.ones((2, 3))
    with pytest.raises(
        ConfigError, match="unknown granularity 'row'; valid: tensor, channel, group"
    ):
        qm.compute_params(x, bits=8, granularity="row")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="axis 2 out of range"):
        qm.compute_params(x, bits=8, granularity="channel", axis=2)
    with pytest.raises(ConfigError, match="group_size must be > 0"):
        qm.compute_params(x, bits=8, granularity="group", group_size=0)
    with pytest.raises(ConfigError, match="NaN or infinity"):
        qm.compute_params(np.array([1.0, np.nan]), bits=8)


def test_metrics() -> None:
    ref = np.array([3.0, -4.0])
    assert qm.mse(ref, ref + np.array([1.0, -1.0])) == 1.0
    assert qm.sqnr_db(ref, ref) == float("inf")
    assert qm.sqnr_db(ref, ref * 1.1) == pytest.approx(20.0)  # noise = 0.1 x signal
    assert qm.sqnr_db(ref, ref + np.array([0.5, 0.0])) == pytest.approx(10 * np.log10(25 / 0.25))


def test_smoothquant_factors_by_hand() -> None:
    x = np.array([[1.0, -16.0], [-4.0, 2.0]])  # max|X_j| = 4, 16
    w = np.array([[1.0, -2.0, 0.5], [0.25, 0.1, -0.2]])  # max|W_j| = 2, 0.25
    a = qm.smoothquant_factors(x, w, alpha=0.5)
    assert a == pytest.approx([np.sqrt(4) / np.sqrt(2), np.sqrt(16) / np.sqrt(0.25)])
    xs, ws, _ = qm.smooth(x, w, alpha=0.5)
    # alpha = 0.5 balances the two: max|X'_j| == max|W'_j| == sqrt(max|X_j| max|W_j|)
    assert np.abs(xs).max(axis=0) == pytest.approx(np.abs(ws).max(axis=1))
    assert np.abs(xs).max(axis=0) == pytest.approx([np.sqrt(8), 2.0])
    with pytest.raises(ConfigError, match="alpha must be in"):
        qm.smoothquant_factors(x, w, alpha=1.5)
    with pytest.raises(ConfigError, match=r"X\[tokens, channels\] and W\[channels, out\]"):
        qm.smoothquant_factors(x, w.T, alpha=0.5)


def test_smoothquant_preserves_gemm() -> None:
    rng = make_rng(0, "test")
    x = rng.standard_normal((64, 32)) * rng.lognormal(0, 2, size=32)
    w = rng.standard_normal((32, 16))
    for alpha in (0.0, 0.25, 0.5, 0.85, 1.0):
        xs, ws, _ = qm.smooth(x, w, alpha)
        np.testing.assert_allclose(xs @ ws, x @ w, rtol=1e-12, atol=1e-12 * np.abs(x @ w).max())


def test_smoothquant_dead_channel_does_not_divide_by_zero() -> None:
    x = np.array([[0.0, 1.0], [0.0, -2.0]])
    w = np.array([[1.0], [0.0]])
    xs, ws, a = qm.smooth(x, w)
    assert np.all(np.isfinite(a))
    np.testing.assert_allclose(xs @ ws, x @ w)


# ---------------------------------------------------------------------------- outliers
def _synthetic(num_outliers: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, outliers = qm.synthetic_activations(
        seed=0, num_tokens=256, num_channels=512, num_outlier_channels=num_outliers
    )
    w = qm.synthetic_weights(seed=0, in_features=512, out_features=256)
    return x, w, outliers


def test_synthetic_activations_are_seeded_and_named() -> None:
    a, oa = qm.synthetic_activations(seed=3, num_tokens=8, num_channels=16, num_outlier_channels=2)
    b, ob = qm.synthetic_activations(seed=3, num_tokens=8, num_channels=16, num_outlier_channels=2)
    c, _ = qm.synthetic_activations(seed=4, num_tokens=8, num_channels=16, num_outlier_channels=2)
    assert a.tobytes() == b.tobytes() and oa.tolist() == ob.tolist()
    assert a.tobytes() != c.tobytes()
    with pytest.raises(ConfigError, match=r"num_outlier_channels must be in 0\.\.16"):
        qm.synthetic_activations(num_channels=16, num_outlier_channels=17)


def test_outlier_channels_are_found() -> None:
    for n in (0, 1, 4):
        x, _, outliers = _synthetic(n)
        assert qm.find_outlier_channels(x).tolist() == outliers.tolist()


def test_one_outlier_channel_inflates_scale_and_collapses_other_bins() -> None:
    x_clean, _, _ = _synthetic(0)
    x_out, _, outliers = _synthetic(1)
    ordinary = np.setdiff1d(np.arange(512), outliers)
    p_clean = qm.compute_params(x_clean, bits=8)
    p_out = qm.compute_params(x_out, bits=8)
    # The ordinary channels are the same draws in both; t(4) tails already reach ~57 s_clean.
    assert np.array_equal(x_out[:, ordinary], x_clean[:, ordinary])
    assert float(p_out.scale) > 2 * float(p_clean.scale)
    # Codes per ordinary channel collapse (median over channels).
    lv_clean = np.median(qm.levels_used_per_channel(x_clean, p_clean)[ordinary])
    lv_out = np.median(qm.levels_used_per_channel(x_out, p_out)[ordinary])
    assert lv_out <= 0.6 * lv_clean  # codes shrink in proportion to the inflated step
    # ... and so does the accuracy of those channels.
    sq_clean = qm.sqnr_db(x_clean[:, ordinary], qm.fake_quantize(x_clean, bits=8)[:, ordinary])
    sq_out = qm.sqnr_db(x_out[:, ordinary], qm.fake_quantize(x_out, bits=8)[:, ordinary])
    assert sq_out < sq_clean - 5.0


def test_per_tensor_w8a8_much_worse_than_per_channel_and_smoothquant_relieves() -> None:
    x, w, outliers = _synthetic(4)
    rows = {r.method: r for r in qm.compare_methods(x, w, outlier_channels=outliers)}
    assert list(rows) == ["per-tensor-w8a8", "per-channel-w8a8", "smoothquant-w8a8", "w4a16-g128"]
    tensor, channel, smooth = (
        rows["per-tensor-w8a8"],
        rows["per-channel-w8a8"],
        rows["smoothquant-w8a8"],
    )
    assert tensor.y_sqnr_db < channel.y_sqnr_db - 10.0
    assert smooth.y_sqnr_db > tensor.y_sqnr_db + 6.0
    assert smooth.y_mse < tensor.y_mse / 4
    assert smooth.x_ordinary_sqnr_db > tensor.x_ordinary_sqnr_db + 6.0
    assert smooth.gemm_friendly and not channel.gemm_friendly
    # W4A16 leaves X alone (fp16): its error is the 4-bit weights'.
    w4 = rows["w4a16-g128"]
    assert w4.x_sqnr_db > 60.0
    assert w4.w_sqnr_db < tensor.w_sqnr_db


def test_w4a16_group_size_matters() -> None:
    x, w, _ = _synthetic(0)
    g32 = qm.compare_methods(x, w, group_size=32)[-1]
    g512 = qm.compare_methods(x, w, group_size=512)[-1]
    assert g32.method == "w4a16-g32"
    assert g32.w_sqnr_db > g512.w_sqnr_db


# ---------------------------------------------------------------------------- properties
ARRAYS = hnp.arrays(
    np.float64, hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=9), elements=FINITE
)


@settings(max_examples=150, deadline=None)
@given(
    x=ARRAYS,
    bits=st.integers(2, 8),
    symmetric=st.booleans(),
    granularity=st.sampled_from(["tensor", "channel", "group"]),
    axis=st.integers(-3, 2),
    group_size=st.integers(1, 5),
)
def test_round_trip_error_is_at_most_half_a_step(
    x: np.ndarray, bits: int, symmetric: bool, granularity: str, axis: int, group_size: int
) -> None:
    axis = axis % x.ndim
    p = qm.compute_params(
        x,
        bits=bits,
        symmetric=symmetric,
        granularity=granularity,  # type: ignore[arg-type]
        axis=axis,
        group_size=group_size,
    )
    q = qm.quantize(x, p)
    assert q.min() >= p.qmin and q.max() <= p.qmax
    _within_half_step(x, p)
    # Quantizing the dequantized values again is the identity on codes.
    assert np.array_equal(qm.quantize(qm.dequantize(q, p), p), q)


@settings(max_examples=100, deadline=None)
@given(x=ARRAYS, bits=st.integers(2, 8))
def test_symmetric_codes_are_odd_symmetric(x: np.ndarray, bits: int) -> None:
    p = qm.compute_params(x, bits=bits)
    assert np.array_equal(qm.quantize(-x, p), -qm.quantize(x, p))


@settings(max_examples=100, deadline=None)
@given(
    data=st.data(),
    tokens=st.integers(1, 8),
    channels=st.integers(1, 8),
    out=st.integers(1, 8),
    alpha=st.floats(0.0, 1.0),
)
def test_smoothquant_equivalence_property(
    data: st.DataObject, tokens: int, channels: int, out: int, alpha: float
) -> None:
    elems = st.floats(-1e3, 1e3, allow_nan=False, allow_subnormal=False)
    x = data.draw(hnp.arrays(np.float64, (tokens, channels), elements=elems))
    w = data.draw(hnp.arrays(np.float64, (channels, out), elements=elems))
    xs, ws, a = qm.smooth(x, w, alpha)
    assert np.all(a > 0) and np.all(np.isfinite(a))
    # Each term x_ij w_jk is preserved to a few ulps, so the sum is within the sum of |terms|.
    tol = 1e-12 * (np.abs(x) @ np.abs(w)) + 1e-300
    assert np.all(np.abs(xs @ ws - x @ w) <= tol)


@settings(max_examples=60, deadline=None)
@given(x=hnp.arrays(np.float64, (6, 5), elements=FINITE), bits=st.integers(2, 8))
def test_finer_granularity_never_hurts(x: np.ndarray, bits: int) -> None:
    """Per-channel scales are each <= the per-tensor scale, so per-element error bounds shrink."""
    pt = qm.compute_params(x, bits=bits)
    pc = qm.compute_params(x, bits=bits, granularity="channel", axis=1)
    live = np.abs(x).max(axis=0) > 0  # an all-zero channel gets a placeholder s = 1 (exact anyway)
    assert np.all(pc.scale[0, live] <= pt.scale * (1 + 1e-12))
