"""The two studies the cycle model exists for, as tables (DataFrames), plus their figures.

* :func:`paged_overhead_curve`: decode attention over a paged KV cache against the same kernel
  over contiguous KV, block size 1..256 tokens.
* :func:`w4_speedup_curve`: weight-only 4-bit (w4a16, group 128) against fp16 GEMM as the
  batch (tokens) grows.
* :func:`plot_trace`: the per-SM activity trace of one launch (CTA Gantt chart).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from servesim.hwmodels.cyclesim.kernels import (
    KernelResult,
    simulate_decode_attention,
    simulate_gemm,
)

BLOCK_SIZES: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
BATCHES: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


def paged_overhead_curve(
    gpu: str,
    *,
    batch: int,
    context_tokens: int,
    num_heads: int = 32,
    num_kv_heads: int = 8,
    head_dim: int = 128,
    block_sizes: Sequence[int] = BLOCK_SIZES,
) -> pd.DataFrame:
    """Paged decode-attention time over contiguous, per block size.

    Columns: ``block_size``, ``time_s``, ``contiguous_s``, ``overhead_frac`` (paged / contiguous
    - 1), ``padding_frac`` (tokens read for the last, partial block / context), ``bound``.
    """
    kw = {"batch": batch, "context_tokens": context_tokens, "num_heads": num_heads,
          "num_kv_heads": num_kv_heads, "head_dim": head_dim}
    base = simulate_decode_attention(gpu, block_size=None, **kw)
    rows = []
    for bs in block_sizes:
        r = simulate_decode_attention(gpu, block_size=bs, **kw)
        padded = -(-context_tokens // bs) * bs
        rows.append({"block_size": bs, "time_s": r.time_s, "contiguous_s": base.time_s,
                     "overhead_frac": r.time_s / base.time_s - 1.0,
                     "padding_frac": padded / context_tokens - 1.0, "bound": r.bound})
    return pd.DataFrame(rows)


def w4_speedup_curve(
    gpu: str, *, n: int, k: int, batches: Sequence[int] = BATCHES, group_size: int = 128
) -> pd.DataFrame:
    """fp16 / w4a16 GEMM time ratio per batch (tokens).

    Columns: ``tokens``, ``fp16_s``, ``w4_s``, ``speedup``, ``fp16_bound``, ``w4_bound``, and
    ``byte_ratio`` (fp16 weight bytes over 4-bit weight + scale/zero bytes: the ideal speedup).
    """
    rows = []
    w4_bytes_per_weight = 0.5 + 4.0 / group_size
    for m in batches:
        a = simulate_gemm(gpu, m=m, n=n, k=k)
        b = simulate_gemm(gpu, m=m, n=n, k=k, weight_bits=4, group_size=group_size)
        rows.append({"tokens": m, "fp16_s": a.time_s, "w4_s": b.time_s,
                     "speedup": a.time_s / b.time_s, "fp16_bound": a.bound, "w4_bound": b.bound,
                     "byte_ratio": 2.0 / w4_bytes_per_weight})
    return pd.DataFrame(rows)


def plot_curves(paged: dict[str, pd.DataFrame], w4: dict[str, pd.DataFrame], path: Path) -> None:
    """Two panels: paged overhead vs block size, 4-bit speedup vs tokens (one line per label)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for label, df in paged.items():
        ax1.plot(df["block_size"], 100 * df["overhead_frac"], marker="o", label=label)
    ax1.set_xscale("log", base=2)
    ax1.set_xlabel("KV block size (tokens)")
    ax1.set_ylabel("paged over contiguous (%)")
    ax1.axhspan(20, 26, color="grey", alpha=0.2, label="vLLM paper: 20-26 % vs FT")
    ax1.legend(fontsize=8)
    ax1.set_title("Paged decode attention overhead")
    for label, df in w4.items():
        ax2.plot(df["tokens"], df["speedup"], marker="o", label=label)
    ax2.axhline(1.0, color="k", lw=0.8)
    ax2.set_xscale("log", base=2)
    ax2.set_xlabel("tokens (batch)")
    ax2.set_ylabel("fp16 time / w4a16 time")
    ax2.legend(fontsize=8)
    ax2.set_title("Weight-only 4-bit GEMM speedup")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_trace(result: KernelResult, path: Path, *, max_sms: int = 32) -> None:
    """Per-SM activity: one row per SM, one bar per CTA (first ``max_sms`` SMs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 0.18 * max_sms + 1.5))
    sm = result.cta_sm
    sel = np.flatnonzero((sm >= 0) & (sm < max_sms))
    colors = plt.get_cmap("tab20")
    ax.barh(sm[sel], result.cta_end_cycles[sel] - result.cta_start_cycles[sel],
            left=result.cta_start_cycles[sel], height=0.8, color=colors(sel % 20),
            edgecolor="k", linewidth=0.2)
    ax.set_xlabel("cycle")
    ax.set_ylabel("SM")
    ax.invert_yaxis()
    ax.set_title(f"{result.kernel} on {result.gpu}: {result.num_ctas} CTAs, "
                 f"{result.num_waves} wave(s), {result.time_s * 1e6:.1f} us, {result.bound}-bound")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
