"""Check the cycle model against real GEMM timings (and a plain roofline next to it).

The bundled timings (``hwmodels/data/calibration/*.csv``, Vidur's CUPTI measurements, MIT) give
per-operator kernel medians in ms for Llama-2-7B and -70B on A100-80GB and H100-SXM at
1..4096 tokens and TP 1..8. The four GEMMs of a layer map to ``(m, n, k)`` as::

    attn_pre_proj  (QKV)      m=tokens  n=(heads + 2 kv_heads) * head_dim / tp   k=hidden
    attn_post_proj (O)        m=tokens  n=hidden                                  k=heads*head_dim / tp
    mlp_up_proj    (gate+up)  m=tokens  n=2 * ffn / tp                            k=hidden
    mlp_down_proj             m=tokens  n=hidden                                  k=ffn / tp

``error_table()`` returns one row per (file, op) with the median absolute relative error of the
cycle model and of a plain roofline (peak FLOP/s and datasheet bandwidth, no efficiency).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import numpy as np
import pandas as pd

from servesim.hwmodels.cyclesim.kernels import simulate_gemm
from servesim.hwmodels.cyclesim.params import machine_for
from servesim.hwmodels.gpus import get_gpu

#: Calibration files and the catalogue GPU each was measured on.
FILES: dict[str, str] = {
    "a100_llama2_7b_mlp.csv": "a100-sxm4-80gb",
    "h100_llama2_7b_mlp.csv": "h100-sxm",
    "a100_llama2_70b_mlp.csv": "a100-sxm4-80gb",
    "h100_llama2_70b_mlp.csv": "h100-sxm",
}
OPS: tuple[str, ...] = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")
#: Token counts used by the quick check (the tests); ``full=True`` uses every measured count.
QUICK_TOKENS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 96, 128, 192, 256, 384, 512, 768,
                                 1024, 1536, 2048, 3072, 4096)


@dataclass(frozen=True, slots=True, kw_only=True)
class CalibrationPoint:
    """One measured GEMM next to its two predictions."""

    file: str
    gpu: str
    op: str
    tp: int
    m: int
    n: int
    k: int
    measured_s: float
    cycle_s: float
    roofline_s: float


def load_measurements(name: str) -> pd.DataFrame:
    """One bundled calibration CSV with stripped column names."""
    path = resources.files("servesim.hwmodels").joinpath(f"data/calibration/{name}")
    with path.open() as f:
        df = pd.read_csv(f)
    df.columns = [c.strip() for c in df.columns]
    return df


def gemm_shape(row: pd.Series, op: str) -> tuple[int, int, int]:
    """``(m, n, k)`` of ``op`` for one CSV row (see the module docstring)."""
    tp = int(row["num_tensor_parallel_workers"])
    hidden = int(row["n_embd"])
    heads = int(row["n_head"])
    kv_heads = int(row["n_kv_head"])
    ffn = int(row["n_expanded_embd"])
    head_dim = hidden // heads
    m = int(row["num_tokens"])
    if op == "attn_pre_proj":
        return m, (heads + 2 * kv_heads) * head_dim // tp, hidden
    if op == "attn_post_proj":
        return m, hidden, heads * head_dim // tp
    if op == "mlp_up_proj":
        return m, 2 * ffn // tp, hidden
    return m, hidden, ffn // tp


def roofline_time_s(gpu_name: str, m: int, n: int, k: int) -> float:
    """Plain fp16 roofline: max(FLOPs / peak, bytes / datasheet bandwidth)."""
    gpu = get_gpu(gpu_name)
    flops = 2.0 * m * n * k
    moved = 2.0 * (m * k + k * n + m * n)
    return max(flops / gpu.peak("fp16"), moved / gpu.hbm_bw_bytes_per_s)


def calibration_points(
    files: Sequence[str] = tuple(FILES),
    *,
    full: bool = False,
    tokens: Sequence[int] = QUICK_TOKENS,
    tps: Sequence[int] | None = None,
) -> list[CalibrationPoint]:
    """Simulate every (file, op, tp, tokens) point.

    Args:
        files: calibration files (keys of ``FILES``).
        full: every measured token count instead of ``tokens``.
        tokens: token counts to use when not ``full``.
        tps: tensor-parallel degrees to keep (default: all).
    """
    points: list[CalibrationPoint] = []
    for name in files:
        gpu_name = FILES[name]
        mach = machine_for(get_gpu(gpu_name))
        df = load_measurements(name)
        if not full:
            df = df[df["num_tokens"].isin(tokens)]
        if tps is not None:
            df = df[df["num_tensor_parallel_workers"].isin(tps)]
        # Repeated measurements of one shape are averaged by their median.
        keys = ["num_tensor_parallel_workers", "num_tokens"]
        cols = [f"time_stats.{op}.median" for op in OPS]
        grouped = df.groupby(keys, sort=True)
        med = grouped[cols].median()
        first = grouped.first()
        cache: dict[tuple[int, int, int], float] = {}
        for idx in med.index:
            row = first.loc[idx]
            row = pd.concat([row, pd.Series(dict(zip(keys, idx, strict=True)))])
            for op in OPS:
                m, n, k = gemm_shape(row, op)
                if (m, n, k) not in cache:
                    cache[(m, n, k)] = simulate_gemm(mach, m=m, n=n, k=k).time_s
                points.append(
                    CalibrationPoint(
                        file=name, gpu=gpu_name, op=op, tp=int(idx[0]), m=m, n=n, k=k,
                        measured_s=float(med.loc[idx, f"time_stats.{op}.median"]) / 1e3,
                        cycle_s=cache[(m, n, k)],
                        roofline_s=roofline_time_s(gpu_name, m, n, k),
                    )
                )
    return points


def points_frame(points: Sequence[CalibrationPoint]) -> pd.DataFrame:
    """Points as a DataFrame with relative errors (``pred / measured - 1``)."""
    df = pd.DataFrame([_as_dict(p) for p in points])
    df["cycle_err_frac"] = df["cycle_s"] / df["measured_s"] - 1.0
    df["roofline_err_frac"] = df["roofline_s"] / df["measured_s"] - 1.0
    return df


def _as_dict(p: CalibrationPoint) -> dict[str, object]:
    return {f: getattr(p, f) for f in CalibrationPoint.__slots__}  # type: ignore[attr-defined]


def error_table(points: Sequence[CalibrationPoint]) -> pd.DataFrame:
    """Median absolute relative error per (file, op) and per file, cycle model vs roofline."""
    df = points_frame(points)
    df["cycle_abs"] = df["cycle_err_frac"].abs()
    df["roofline_abs"] = df["roofline_err_frac"].abs()
    per_op = df.groupby(["file", "op"], sort=False).agg(
        n=("m", "size"),
        cycle_median_abs_err=("cycle_abs", "median"),
        roofline_median_abs_err=("roofline_abs", "median"),
        cycle_max_abs_err=("cycle_abs", "max"),
    )
    per_file = df.groupby(["file"], sort=False).agg(
        n=("m", "size"),
        cycle_median_abs_err=("cycle_abs", "median"),
        roofline_median_abs_err=("roofline_abs", "median"),
        cycle_max_abs_err=("cycle_abs", "max"),
    )
    per_file.index = pd.MultiIndex.from_tuples([(f, "all") for f in per_file.index])
    out = pd.concat([per_op, per_file]).sort_index(level=0, sort_remaining=False)
    out.index.names = ["file", "op"]
    return out


def efficiency_curve(points: Sequence[CalibrationPoint], file: str, op: str, tp: int) -> pd.DataFrame:
    """Measured and predicted efficiency (roofline time / time) against tokens for one series."""
    df = points_frame(points)
    df = df[(df["file"] == file) & (df["op"] == op) & (df["tp"] == tp)].sort_values("m")
    return pd.DataFrame(
        {
            "tokens": df["m"].to_numpy(),
            "measured_eff_frac": (df["roofline_s"] / df["measured_s"]).to_numpy(),
            "cycle_eff_frac": (df["roofline_s"] / df["cycle_s"]).to_numpy(),
        }
    )


def median_abs_error(points: Sequence[CalibrationPoint], column: str = "cycle_s") -> float:
    """Median over all points of ``|pred / measured - 1|``."""
    pred = np.array([getattr(p, column) for p in points])
    meas = np.array([p.measured_s for p in points])
    return float(np.median(np.abs(pred / meas - 1.0)))
