"""The precision side of quantization: affine quantize/dequantize, error metrics, SmoothQuant.

Everything here is plain numpy on float64 arrays, written to be read next to the papers:

- Affine (uniform) quantization, Jacob et al., "Quantization and Training of Neural Networks
  for Efficient Integer-Arithmetic-Only Inference", CVPR 2018::

      X_int = clip(round(X / s) + z, qmin, qmax)        dequant: X_hat = s * (X_int - z)

  Symmetric: ``z = 0``, ``s = max|X| / (2^(b-1) - 1)``, codes in ``[-2^(b-1), 2^(b-1) - 1]``.
  Asymmetric (min/max): ``s = (max - min) / (2^b - 1)``, ``z = -round(min / s)``, codes in
  ``[0, 2^b - 1]``; the range is widened to include 0 so that 0 (padding, ReLU zeros) is
  exact, as PyTorch's MinMax observers do.

- Granularity: one scale for the whole tensor (``"tensor"``), one per index along an axis
  (``"channel"``; per output channel for weights, per input channel or per token for
  activations), or one per ``group_size`` consecutive elements along an axis (``"group"``;
  AWQ/GPTQ group the input dimension of ``W[in, out]``, 128 by default).

- SmoothQuant, Xiao et al., ICML 2023: ``Y = X W = (X diag(a)^-1) (diag(a) W)`` with
  ``a_j = max|X_j|^alpha / max|W_j|^(1 - alpha)`` migrates activation outliers into the
  weights, which quantize easily.

- Metrics: MSE and SQNR in dB, ``10 log10(sum ref^2 / sum (ref - approx)^2)``.

Conventions: activations are ``X[tokens, channels]``, weights ``W[in, out]`` (``Y = X @ W``,
so ``W``'s row ``j`` meets activation channel ``j``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from servesim.hwmodels.errors import ConfigError
from servesim.hwmodels.rng import make_rng

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Granularity = Literal["tensor", "channel", "group"]
GRANULARITIES: tuple[str, ...] = ("tensor", "channel", "group")

#: SmoothQuant's default migration strength (Xiao et al. use 0.5 for most models).
DEFAULT_ALPHA = 0.5
#: SmoothQuant clamps channel maxima to at least this before dividing (reference code).
_SMOOTH_EPS = 1e-5


# ---------------------------------------------------------------------------- parameters
def int_range(bits: int, *, symmetric: bool) -> tuple[int, int]:
    """Integer code range ``(qmin, qmax)`` of a ``bits``-wide quantizer.

    Args:
        bits: code width, 2..16.
        symmetric: signed codes ``[-2^(b-1), 2^(b-1) - 1]``; else unsigned ``[0, 2^b - 1]``.
    """
    if not 2 <= bits <= 16:
        raise ConfigError(f"bits must be in 2..16, got {bits}")
    if symmetric:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def symmetric_scale(absmax: npt.ArrayLike, bits: int) -> FloatArray:
    """``s = max|X| / (2^(b-1) - 1)``; an all-zero slice gets ``s = 1`` (any s is exact)."""
    absmax = np.asarray(absmax, dtype=np.float64)
    s = absmax / ((1 << (bits - 1)) - 1)
    return np.where(s > 0, s, 1.0)


def asymmetric_scale_zero(
    xmin: npt.ArrayLike, xmax: npt.ArrayLike, bits: int
) -> tuple[FloatArray, IntArray]:
    """Min/max scale and zero point: ``s = (max - min) / (2^b - 1)``, ``z = -round(min / s)``.

    The range is widened to contain 0 first, so ``z`` lies in ``[0, 2^b - 1]``.
    """
    lo = np.minimum(np.asarray(xmin, dtype=np.float64), 0.0)
    hi = np.maximum(np.asarray(xmax, dtype=np.float64), 0.0)
    qmin, qmax = int_range(bits, symmetric=False)
    s = (hi - lo) / (qmax - qmin)
    s = np.where(s > 0, s, 1.0)
    z = np.clip(qmin - np.rint(lo / s), qmin, qmax).astype(np.int64)
    return s, z


@dataclass(frozen=True, slots=True, kw_only=True)
class QuantParams:
    """Scale and zero point of one quantizer, broadcastable against the tensor they came from.

    Attributes:
        bits: code width.
        symmetric: zero point fixed at 0 and signed codes.
        granularity: ``"tensor"``, ``"channel"`` or ``"group"``.
        qmin / qmax: integer code range.
        scale: float64, broadcastable to the tensor's shape (``()`` per-tensor, keepdims shape
            per-channel, the full shape per-group).
        zero_point: int64, same shape as ``scale`` (all 0 when symmetric).
        num_scales: distinct scales stored (what a checkpoint pays for).
    """

    bits: int
    symmetric: bool
    granularity: str
    qmin: int
    qmax: int
    scale: FloatArray
    zero_point: IntArray
    num_scales: int


def _reduce_axes(ndim: int, axis: int) -> tuple[int, ...]:
    return tuple(i for i in range(ndim) if i != axis)


def _group_minmax(x: FloatArray, axis: int, group_size: int) -> tuple[FloatArray, FloatArray, int]:
    """Per-group min and max, expanded back to ``x``'s shape, and the number of groups.

    A trailing partial group is padded with zeros; the quantizer's range contains 0 anyway
    (symmetric by construction, asymmetric by widening), so padding never changes a scale.
    """
    moved = np.moveaxis(x, axis, -1)  # (..., n)
    n = moved.shape[-1]
    num_groups = -(-n // group_size)
    pad = num_groups * group_size - n
    padded = np.concatenate([moved, np.zeros((*moved.shape[:-1], pad))], axis=-1) if pad else moved
    grouped = padded.reshape(*moved.shape[:-1], num_groups, group_size)  # (..., G, g)
    lo = np.repeat(grouped.min(axis=-1), group_size, axis=-1)[..., :n]
    hi = np.repeat(grouped.max(axis=-1), group_size, axis=-1)[..., :n]
    count = int(np.prod(moved.shape[:-1], dtype=np.int64)) * num_groups
    return np.moveaxis(lo, -1, axis), np.moveaxis(hi, -1, axis), count


def compute_params(
    x: npt.ArrayLike,
    *,
    bits: int,
    symmetric: bool = True,
    granularity: Granularity = "tensor",
    axis: int = -1,
    group_size: int = 128,
) -> QuantParams:
    """Min/max (or absmax) calibration of a quantizer for ``x``.

    Args:
        x: the tensor to be quantized.
        bits: code width (8 for INT8, 4 for INT4).
        symmetric: absmax scale and ``z = 0``; else min/max scale with a zero point.
        granularity: ``"tensor"`` (one scale), ``"channel"`` (one scale per index along
            ``axis``) or ``"group"`` (one scale per ``group_size`` consecutive elements along
            ``axis``, for every position on the other axes).
        axis: for ``"channel"`` the axis that indexes channels; for ``"group"`` the axis the
            groups run along (the input dim: 0 for ``W[in, out]``). Ignored for ``"tensor"``.
        group_size: elements per group for ``"group"``.

    Raises:
        ConfigError: unknown granularity, bad bits/axis/group size, or non-finite input.
    """
    x = np.asarray(x, dtype=np.float64)
    qmin, qmax = int_range(bits, symmetric=symmetric)
    if granularity not in GRANULARITIES:
        raise ConfigError(f"unknown granularity {granularity!r}; valid: {', '.join(GRANULARITIES)}")
    if not np.all(np.isfinite(x)):
        raise ConfigError("cannot quantize a tensor holding NaN or infinity")
    if x.size == 0:
        raise ConfigError("cannot quantize an empty tensor")
    if granularity != "tensor":
        if not -x.ndim <= axis < x.ndim:
            raise ConfigError(f"axis {axis} out of range for a {x.ndim}-d tensor")
        axis %= x.ndim
    if granularity == "tensor":
        lo, hi, count = np.asarray(x.min()), np.asarray(x.max()), 1
    elif granularity == "channel":
        reduce = _reduce_axes(x.ndim, axis)
        lo, hi = x.min(axis=reduce, keepdims=True), x.max(axis=reduce, keepdims=True)
        count = x.shape[axis]
    else:
        if group_size <= 0:
            raise ConfigError(f"group_size must be > 0, got {group_size}")
        lo, hi, count = _group_minmax(x, axis, group_size)
    if symmetric:
        scale = symmetric_scale(np.maximum(np.abs(lo), np.abs(hi)), bits)
        zero = np.zeros(scale.shape, dtype=np.int64)
    else:
        scale, zero = asymmetric_scale_zero(lo, hi, bits)
    return QuantParams(
        bits=bits,
        symmetric=symmetric,
        granularity=granularity,
        qmin=qmin,
        qmax=qmax,
        scale=scale,
        zero_point=zero,
        num_scales=count,
    )


# ---------------------------------------------------------------------------- quantize
def quantize(x: npt.ArrayLike, params: QuantParams) -> IntArray:
    """``X_int = clip(round(X / s) + z, qmin, qmax)`` (round half to even, as ``torch.round``)."""
    x = np.asarray(x, dtype=np.float64)
    q = np.rint(x / params.scale) + params.zero_point
    return np.clip(q, params.qmin, params.qmax).astype(np.int64)


def dequantize(q: npt.ArrayLike, params: QuantParams) -> FloatArray:
    """``X_hat = s (X_int - z)``."""
    return params.scale * (np.asarray(q, dtype=np.float64) - params.zero_point)


def fake_quantize(
    x: npt.ArrayLike,
    *,
    bits: int,
    symmetric: bool = True,
    granularity: Granularity = "tensor",
    axis: int = -1,
    group_size: int = 128,
) -> FloatArray:
    """``dequantize(quantize(x))`` with parameters calibrated on ``x`` itself."""
    params = compute_params(
        x, bits=bits, symmetric=symmetric, granularity=granularity, axis=axis, group_size=group_size
    )
    return dequantize(quantize(x, params), params)


# ---------------------------------------------------------------------------- metrics
def mse(ref: npt.ArrayLike, approx: npt.ArrayLike) -> float:
    """Mean squared error ``mean((ref - approx)^2)``."""
    diff = np.asarray(ref, dtype=np.float64) - np.asarray(approx, dtype=np.float64)
    return float(np.mean(diff * diff))


def sqnr_db(ref: npt.ArrayLike, approx: npt.ArrayLike) -> float:
    """Signal-to-quantization-noise ratio in dB; ``inf`` when ``approx == ref`` exactly."""
    ref = np.asarray(ref, dtype=np.float64)
    noise = float(np.sum((ref - np.asarray(approx, dtype=np.float64)) ** 2))
    signal = float(np.sum(ref * ref))
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return 10.0 * float(np.log10(signal / noise))


# ---------------------------------------------------------------------------- SmoothQuant
def smoothquant_factors(
    x: npt.ArrayLike, w: npt.ArrayLike, alpha: float = DEFAULT_ALPHA
) -> FloatArray:
    """Per-input-channel migration factors ``a_j = max|X_j|^alpha / max|W_j|^(1 - alpha)``.

    Args:
        x: activations ``X[tokens, channels]`` (calibration set).
        w: weights ``W[channels, out]``.
        alpha: migration strength in [0, 1]; 0 leaves X alone, 1 moves all range into W.

    Returns:
        float64[channels]. Channel maxima are clamped to >= 1e-5 as in the reference code, so
        a dead channel never divides by zero.
    """
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"SmoothQuant alpha must be in [0, 1], got {alpha}")
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[0]:
        raise ConfigError(
            f"SmoothQuant needs X[tokens, channels] and W[channels, out]; got X{list(x.shape)} "
            f"and W{list(w.shape)}"
        )
    x_max = np.maximum(np.abs(x).max(axis=0), _SMOOTH_EPS)  # (channels,)
    w_max = np.maximum(np.abs(w).max(axis=1), _SMOOTH_EPS)  # (channels,)
    return x_max**alpha / w_max ** (1.0 - alpha)


def smooth(
    x: npt.ArrayLike, w: npt.ArrayLike, alpha: float = DEFAULT_ALPHA
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Migrate difficulty: return ``(X / a, a * W, a)`` with ``(X / a) @ (a * W) == X @ W``.

    ``X_ij / a_j`` divides activation channel ``j``; ``W_jk * a_j`` scales weight row ``j``.
    """
    a = smoothquant_factors(x, w, alpha)
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    return x / a[None, :], w * a[:, None], a


# ---------------------------------------------------------------------------- synthetic data
def synthetic_activations(
    *,
    seed: int = 0,
    num_tokens: int = 512,
    num_channels: int = 1024,
    num_outlier_channels: int = 4,
    outlier_scale: float = 100.0,
    tail_df: float = 4.0,
) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """Activations ``X[tokens, channels]`` with heavy tails and a few outlier channels.

    Mirrors what LLM.int8() (Dettmers et al., 2022) and SmoothQuant report for LLM
    activations: most channels are small, Student-t-like (heavy tails), with per-channel
    spread varying by a factor of a few; a handful of fixed channels carry magnitudes
    20-100x larger in almost every token (here ``outlier_scale`` times the ordinary channels'
    typical standard deviation of ~1). Drawn from the named stream
    ``make_rng(seed, "quantmath/activations")``.

    Returns:
        ``(X, outlier_channel_ids)``; X is float64[num_tokens, num_channels].
    """
    if num_tokens <= 0 or num_channels <= 0:
        raise ConfigError(f"need >= 1 token and channel, got {num_tokens} x {num_channels}")
    if not 0 <= num_outlier_channels <= num_channels:
        raise ConfigError(
            f"num_outlier_channels must be in 0..{num_channels}, got {num_outlier_channels}"
        )
    rng = make_rng(seed, "quantmath/activations")
    channel_std = rng.lognormal(mean=0.0, sigma=0.5, size=num_channels)  # (C,)
    x = rng.standard_t(tail_df, size=(num_tokens, num_channels)) * channel_std  # (T, C)
    outliers = np.sort(rng.choice(num_channels, size=num_outlier_channels, replace=False))
    # Outlier channels: a large systematic offset of either sign plus noise, in every token.
    sign = rng.choice([-1.0, 1.0], size=num_outlier_channels)
    base = outlier_scale * rng.uniform(0.5, 1.0, size=num_outlier_channels)
    x[:, outliers] = (
        sign * base * (1.0 + 0.3 * rng.standard_normal((num_tokens, num_outlier_channels)))
    )
    return x, outliers.astype(np.int64)


def synthetic_weights(
    *, seed: int = 0, in_features: int = 1024, out_features: int = 1024
) -> FloatArray:
    """Weights ``W[in, out]``, Gaussian with std ``1/sqrt(in)`` (well-behaved, no outliers).

    Drawn from the named stream ``make_rng(seed, "quantmath/weights")``.
    """
    if in_features <= 0 or out_features <= 0:
        raise ConfigError(f"need positive weight dims, got {in_features} x {out_features}")
    rng = make_rng(seed, "quantmath/weights")
    return rng.standard_normal((in_features, out_features)) / np.sqrt(in_features)


# ---------------------------------------------------------------------------- comparison
@dataclass(frozen=True, slots=True, kw_only=True)
class GemmQuantError:
    """Error one quantization method makes on ``Y = X @ W``.

    Attributes:
        method: short name (``per-tensor-w8a8``, ...).
        description: how weights and activations are quantized.
        gemm_friendly: the scales factor out of the GEMM's inner sum, so an integer GEMM
            kernel can run it (per-input-channel activation scales cannot).
            x_sqnr_db / w_sqnr_db: SQNR of the quantized activations / weights alone (after
            undoing any smoothing).
        x_ordinary_sqnr_db: activation SQNR over the ordinary (non-outlier) channels only:
            where a per-tensor scale inflated by outliers does its damage.
        y_mse / y_sqnr_db: error of the GEMM output against the float64 product.
    """

    method: str
    description: str
    gemm_friendly: bool
    x_sqnr_db: float
    w_sqnr_db: float
    x_ordinary_sqnr_db: float
    y_mse: float
    y_sqnr_db: float

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict (``servesim quant-error --json`` ``methods`` entries)."""
        return {
            "method": self.method,
            "description": self.description,
            "gemm_friendly": self.gemm_friendly,
            "x_sqnr_db": self.x_sqnr_db,
            "w_sqnr_db": self.w_sqnr_db,
            "x_ordinary_sqnr_db": self.x_ordinary_sqnr_db,
            "y_mse": self.y_mse,
            "y_sqnr_db": self.y_sqnr_db,
        }


def _row(
    method: str,
    description: str,
    gemm_friendly: bool,
    x: FloatArray,
    w: FloatArray,
    x_hat: FloatArray,
    w_hat: FloatArray,
    y: FloatArray,
    ordinary: npt.NDArray[np.bool_],
) -> GemmQuantError:
    y_hat = x_hat @ w_hat
    return GemmQuantError(
        method=method,
        description=description,
        gemm_friendly=gemm_friendly,
        x_sqnr_db=sqnr_db(x, x_hat),
        w_sqnr_db=sqnr_db(w, w_hat),
        x_ordinary_sqnr_db=sqnr_db(x[:, ordinary], x_hat[:, ordinary]),
        y_mse=mse(y, y_hat),
        y_sqnr_db=sqnr_db(y, y_hat),
    )


def compare_methods(
    x: npt.ArrayLike,
    w: npt.ArrayLike,
    *,
    alpha: float = DEFAULT_ALPHA,
    group_size: int = 128,
    outlier_channels: npt.ArrayLike | None = None,
) -> list[GemmQuantError]:
    """Quantize ``Y = X @ W`` four ways and measure the output error.

    - ``per-tensor-w8a8``: one INT8 scale for all of W and one for all of X.
    - ``per-channel-w8a8``: INT8 W per output channel, X per input channel: the accuracy
      ideal, but per-input-channel scales do not factor out of the GEMM's inner sum.
    - ``smoothquant-w8a8``: SmoothQuant migration (``alpha``), then W per output channel and X
      per tensor: GEMM-friendly.
    - ``w4a16-g128``: asymmetric INT4 W in groups of ``group_size`` along the input dim, X kept
      in fp16.

    Args:
        x: activations ``X[tokens, channels]``.
        w: weights ``W[channels, out]``.
        alpha: SmoothQuant migration strength.
        group_size: W4A16 group size.
        outlier_channels: channel ids excluded from ``x_ordinary_sqnr_db``; default
            :func:`find_outlier_channels`.
    """
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[0]:
        raise ConfigError(
            f"need X[tokens, channels] and W[channels, out]; got X{list(x.shape)} and "
            f"W{list(w.shape)}"
        )
    if outlier_channels is None:
        outlier_channels = find_outlier_channels(x)
    ordinary = np.ones(x.shape[1], dtype=np.bool_)
    ordinary[np.asarray(outlier_channels, dtype=np.int64)] = False
    if not ordinary.any():
        ordinary[:] = True  # every channel an outlier: measure them all
    y = x @ w  # (T, out), float64 reference
    rows = [
        _row(
            "per-tensor-w8a8",
            "INT8 W per tensor, INT8 X per tensor",
            True,
            x,
            w,
            fake_quantize(x, bits=8),
            fake_quantize(w, bits=8),
            y,
            ordinary,
        ),
        _row(
            "per-channel-w8a8",
            "INT8 W per output channel, INT8 X per input channel (not GEMM-friendly)",
            False,
            x,
            w,
            fake_quantize(x, bits=8, granularity="channel", axis=1),
            fake_quantize(w, bits=8, granularity="channel", axis=1),
            y,
            ordinary,
        ),
    ]
    xs, ws, a = smooth(x, w, alpha)
    xs_hat = fake_quantize(xs, bits=8)
    ws_hat = fake_quantize(ws, bits=8, granularity="channel", axis=1)
    rows.append(
        _row(
            "smoothquant-w8a8",
            f"SmoothQuant alpha={alpha:g}, INT8 W per output channel, INT8 X per tensor",
            True,
            x,
            w,
            xs_hat * a[None, :],
            ws_hat / a[:, None],
            y,
            ordinary,
        )
    )
    x16 = x.astype(np.float16).astype(np.float64)
    rows.append(
        _row(
            f"w4a16-g{group_size}",
            f"INT4 W asymmetric, groups of {group_size} along the input dim; X in fp16",
            True,
            x,
            w,
            x16,
            fake_quantize(
                w, bits=4, symmetric=False, granularity="group", axis=0, group_size=group_size
            ),
            y,
            ordinary,
        )
    )
    return rows


def find_outlier_channels(x: npt.ArrayLike, ratio: float = 10.0) -> npt.NDArray[np.int64]:
    """Channels of ``X[tokens, channels]`` that are large in most tokens.

    A channel is an outlier if its 90th-percentile magnitude exceeds ``ratio`` times the
    median channel's. LLM.int8() calls outlier features *systematic* (present in most tokens
    of a channel); a percentile rather than the max keeps a heavy-tailed ordinary channel
    with one extreme token from being flagged, and the ratio makes the rule scale-free.
    """
    x = np.asarray(x, dtype=np.float64)
    col_p90 = np.percentile(np.abs(x), 90, axis=0)  # (C,)
    return np.flatnonzero(col_p90 > ratio * np.median(col_p90)).astype(np.int64)


def levels_used_per_channel(x: npt.ArrayLike, params: QuantParams) -> npt.NDArray[np.int64]:
    """Distinct integer codes each channel (column) of ``X[tokens, channels]`` occupies.

    Under a per-tensor scale inflated by one outlier channel, ordinary channels collapse
    onto a handful of the 256 INT8 codes: the activation-outlier effect in one number.
    """
    q = np.sort(quantize(x, params), axis=0)  # (T, C)
    return 1 + np.count_nonzero(np.diff(q, axis=0), axis=0).astype(np.int64)


__all__ = [
    "DEFAULT_ALPHA",
    "GRANULARITIES",
    "GemmQuantError",
    "QuantParams",
    "asymmetric_scale_zero",
    "compare_methods",
    "compute_params",
    "dequantize",
    "fake_quantize",
    "find_outlier_channels",
    "int_range",
    "levels_used_per_channel",
    "mse",
    "quantize",
    "smooth",
    "smoothquant_factors",
    "sqnr_db",
    "symmetric_scale",
    "synthetic_activations",
    "synthetic_weights",
]
