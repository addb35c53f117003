"""``servesim quant-error``: what quantization does to a GEMM's accuracy, and why.

Quantizes ``Y = X @ W`` four ways (per-tensor W8A8, per-channel W8A8, SmoothQuant W8A8,
W4A16 g128; see :func:`hwmodels.quantmath.compare_methods`) on synthetic activations with
heavy tails and a few outlier channels, or on the user's own ``.npy`` activations, prints the
error table and writes a figure showing the activation-outlier effect: one outlier channel
inflates the per-tensor scale so ordinary channels collapse onto a few INT8 codes, and
SmoothQuant's migration gives them their codes back.

``--json`` prints::

    {"source", "num_tokens", "num_channels", "out_features", "seed", "alpha", "group_size",
     "outlier_channels", "outlier_ratio", "per_tensor_step", "smoothed_per_tensor_step",
     "median_levels_per_tensor", "median_levels_smoothquant", "median_levels_per_channel",
     "methods": [{"method", "description", "gemm_friendly", "x_sqnr_db", "w_sqnr_db",
                  "x_ordinary_sqnr_db", "y_mse", "y_sqnr_db"}, ...],
     "figure"}   (figure: the PNG's path, or null with --no-plot)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from servesim.hwmodels.errors import ConfigError
from servesim.simulator.cli.catalog import console, echo_json, user_errors

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

# numpy, quantmath and rich are imported inside the functions that use them, so registering
# the command stays cheap (`servesim quant-error --bogus` answers at once).

#: Cap on output features of the synthetic weight used with a user's activations.
_MAX_OUT_FEATURES = 1024
FIGURE_NAME = "quant_error.png"
#: :data:`servesim.hwmodels.quantmath.DEFAULT_ALPHA`, repeated so that registering the
#: command imports no numpy (a test checks the two agree).
DEFAULT_ALPHA = 0.5


#: Largest activation tensor read (docs/inputs.md): 256 Mi elements.
MAX_NPY_ELEMENTS = 1 << 28


def _check_npy_size(path: Path) -> None:
    """Size a .npy array from its header before numpy allocates it (a 100-byte file can
    claim 10^12 elements; numpy would try to allocate 7 TiB)."""
    import math

    import numpy as np

    try:
        with path.open("rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            offset = f.tell()
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise ConfigError(f"activation file {path}: bad .npy header, cannot read it as a plain "
                          f"numeric array ({exc})") from None
    count = math.prod(shape)
    if count > MAX_NPY_ELEMENTS:
        raise ConfigError(
            f"activation file {path}: shape {shape} is {count:,} elements; the limit is "
            f"{MAX_NPY_ELEMENTS:,} (docs/inputs.md)"
        )
    if count * dtype.itemsize > path.stat().st_size - offset:
        raise ConfigError(
            f"activation file {path}: the header claims shape {shape} ({count:,} elements) "
            "but the file is shorter; it is truncated or not a .npy file"
        )


def load_activations(path: Path) -> npt.NDArray[np.float64]:
    """Read a user's activation tensor from ``.npy`` (no pickles) as ``X[tokens, channels]``.

    A 1-D array is one token; more than 2 dims are flattened into tokens (the last dim is the
    channels).

    Raises:
        ConfigError: missing/unreadable file, pickled or non-numeric data, empty or
            non-finite values.
    """
    import numpy as np

    if not path.is_file():
        raise ConfigError(f"activation file {str(path)!r} does not exist; give a .npy file")
    with path.open("rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY":  # numpy would otherwise blame a missing pickle permission
        raise ConfigError(
            f"activation file {path}: not a .npy file (no NUMPY header); save the array with "
            "numpy.save"
        )
    _check_npy_size(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise ConfigError(
            f"activation file {path}: cannot read it as a plain numeric array ({exc}); pickled "
            "and object arrays are refused: save a numeric array with numpy.save"
        ) from None
    except (OSError, EOFError) as exc:
        raise ConfigError(f"activation file {path}: not a readable .npy file ({exc})") from None
    if not isinstance(arr, np.ndarray):
        raise ConfigError(
            f"activation file {path}: holds {type(arr).__name__}, not one array (.npz?)"
        )
    if arr.dtype.kind not in "biuf":
        raise ConfigError(
            f"activation file {path}: dtype {arr.dtype} is not real numeric; "
            "valid: integer or floating arrays"
        )
    if arr.ndim == 0 or arr.size == 0:
        raise ConfigError(f"activation file {path}: array of shape {list(arr.shape)} is empty")
    x = arr.astype(np.float64).reshape(-1, arr.shape[-1])  # (tokens, channels)
    if not np.all(np.isfinite(x)):
        raise ConfigError(f"activation file {path}: holds NaN or infinity")
    return x


def analyse(
    x: npt.NDArray[np.float64],
    w: npt.NDArray[np.float64],
    outliers: npt.NDArray[np.int64],
    *,
    alpha: float,
    group_size: int,
) -> dict[str, Any]:
    """Error table plus the per-channel numbers behind the figure."""
    import numpy as np

    from servesim.hwmodels import quantmath as qm

    rows = qm.compare_methods(x, w, alpha=alpha, group_size=group_size, outlier_channels=outliers)
    ordinary = np.ones(x.shape[1], dtype=np.bool_)
    ordinary[outliers] = False
    if not ordinary.any():
        ordinary[:] = True
    xs, _, a = qm.smooth(x, w, alpha)
    p_raw = qm.compute_params(x, bits=8)
    p_smooth = qm.compute_params(xs, bits=8)
    p_chan = qm.compute_params(x, bits=8, granularity="channel", axis=1)
    levels_raw = qm.levels_used_per_channel(x, p_raw)
    levels_smooth = qm.levels_used_per_channel(xs, p_smooth)
    levels_chan = qm.levels_used_per_channel(x, p_chan)
    col_max = np.abs(x).max(axis=0)  # (C,)
    return {
        "rows": rows,
        "col_max": col_max,
        "col_max_smoothed": np.abs(xs).max(axis=0),
        "levels_raw": levels_raw,
        "levels_smooth": levels_smooth,
        "levels_chan": levels_chan,
        "ordinary": ordinary,
        "factors": a,
        "per_tensor_step": float(p_raw.scale),
        "smoothed_per_tensor_step": float(p_smooth.scale),
        "outlier_ratio": float(col_max.max() / np.median(col_max[ordinary])),
    }


def plot(
    x: npt.NDArray[np.float64],
    result: dict[str, Any],
    outliers: npt.NDArray[np.int64],
    path: Path,
    title: str,
) -> None:
    """2x2 figure: outliers vs the INT8 step, one channel's bins, codes used, SQNR by method."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(15, 9.5))
    ordinary = result["ordinary"]
    col_max = result["col_max"]
    step = result["per_tensor_step"]
    channels = np.arange(col_max.size)

    # (a) per-channel range against the per-tensor step: the outliers set s.
    ax = axes[0, 0]
    ax.scatter(
        channels[ordinary], col_max[ordinary], s=4, color="tab:gray", label="ordinary channel"
    )
    ax.scatter(
        channels[~ordinary],
        col_max[~ordinary],
        s=30,
        color="tab:red",
        marker="^",
        label="outlier channel",
    )
    ax.axhline(127 * step, color="tab:red", ls="-", lw=1, label="per-tensor INT8 range 127 s")
    ax.axhline(step, color="tab:red", ls="--", lw=1, label=f"per-tensor INT8 step s = {step:.3g}")
    ax.set_yscale("log")
    ax.set_xlabel("activation channel j")
    ax.set_ylabel("max over tokens of |X_j| (log)")
    ax.set_title("(a) Outlier channels set the per-tensor scale s = max|X| / 127")
    ax.legend(fontsize=8, loc="lower right")

    # (b) one typical ordinary channel: how many grid points land on its values.
    ax = axes[0, 1]
    ord_ids = np.flatnonzero(ordinary)
    j = int(ord_ids[np.argsort(col_max[ord_ids])[ord_ids.size // 2]])  # median-range channel
    v = x[:, j]
    lo, hi = float(v.min()), float(v.max())
    ax.hist(v, bins=80, color="tab:gray", alpha=0.6, label=f"values of channel {j}")
    smooth_step = result["smoothed_per_tensor_step"] * float(result["factors"][j])
    for k, (grid_step, color, name) in enumerate(
        ((step, "tab:red", "per-tensor"), (smooth_step, "tab:blue", "SmoothQuant per-tensor"))
    ):
        ticks = np.arange(np.ceil(lo / grid_step), np.floor(hi / grid_step) + 1) * grid_step
        ax.vlines(
            ticks,
            0,
            1,
            transform=ax.get_xaxis_transform(),
            colors=color,
            lw=0.8,
            alpha=0.9 if k == 0 else 0.5,
            label=f"{name} INT8 grid: {ticks.size} points in range",
        )
    ax.set_xlabel(f"X[:, {j}] (original units)")
    ax.set_ylabel("tokens")
    ax.set_title("(b) An ordinary channel falls on a few bins; SmoothQuant refines them")
    ax.legend(fontsize=8, loc="upper right")

    # (c) codes used by every ordinary channel.
    ax = axes[1, 0]
    bins = np.arange(0, 257, 4)
    for key, color, name in (
        ("levels_raw", "tab:red", "per-tensor"),
        ("levels_smooth", "tab:blue", "SmoothQuant per-tensor"),
        ("levels_chan", "tab:green", "per-channel"),
    ):
        levels = result[key][ordinary]
        ax.hist(
            levels,
            bins=bins,
            color=color,
            alpha=0.6,
            label=f"{name} (median {np.median(levels):.0f})",
        )
    ax.set_xlabel("distinct INT8 codes an ordinary channel uses (of 256)")
    ax.set_ylabel("channels")
    ax.set_title("(c) Codes left to the ordinary channels")
    ax.legend(fontsize=8)

    # (d) the error of each method.
    ax = axes[1, 1]
    rows = result["rows"]
    pos = np.arange(len(rows))
    y_sqnr = [r.y_sqnr_db for r in rows]
    x_sqnr = [min(r.x_ordinary_sqnr_db, 99.0) for r in rows]
    ax.bar(pos - 0.2, y_sqnr, width=0.4, color="tab:purple", label="GEMM output Y = X W")
    ax.bar(pos + 0.2, x_sqnr, width=0.4, color="tab:gray", label="X, ordinary channels (capped 99)")
    for p_, val in zip(pos, y_sqnr, strict=True):
        ax.annotate(
            f"{val:.1f}",
            (p_ - 0.2, val),
            textcoords="offset points",
            xytext=(0, 2),
            ha="center",
            fontsize=8,
        )
    ax.set_xticks(pos, [r.method for r in rows], fontsize=9)
    ax.set_ylabel("SQNR (dB, higher is better)")
    ax.set_title("(d) Quantization error by method")
    ax.legend(fontsize=8)

    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def quant_error_cmd(
    npy: Annotated[
        Path | None,
        typer.Option(
            "--npy",
            metavar="FILE",
            help="Your activations X[tokens, channels] as .npy (loaded without pickle); "
            "default: synthetic activations with heavy tails and outlier channels.",
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Directory for the figure.")] = Path("out"),
    seed: Annotated[
        int, typer.Option("--seed", min=0, help="Seed of the synthetic activations and weights.")
    ] = 0,
    alpha: Annotated[
        float, typer.Option("--alpha", min=0.0, max=1.0, help="SmoothQuant migration strength.")
    ] = DEFAULT_ALPHA,
    group_size: Annotated[
        int, typer.Option("--group-size", min=1, help="W4A16 group size along the input dim.")
    ] = 128,
    num_tokens: Annotated[
        int, typer.Option("--tokens", min=1, help="Synthetic activations: tokens (rows of X).")
    ] = 512,
    num_channels: Annotated[
        int,
        typer.Option("--channels", min=2, help="Synthetic activations: channels (columns of X)."),
    ] = 1024,
    outlier_channels: Annotated[
        int, typer.Option("--outlier-channels", min=0, help="Synthetic outlier channels.")
    ] = 4,
    outlier_scale: Annotated[
        float,
        typer.Option(
            "--outlier-scale", min=0.0, help="Synthetic outlier magnitude vs ordinary std."
        ),
    ] = 100.0,
    make_plot: Annotated[
        bool, typer.Option("--plot/--no-plot", help="Write OUT/quant_error.png.")
    ] = True,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON (a stable contract) instead of a table.")
    ] = False,
) -> None:
    """Compare per-tensor W8A8, per-channel W8A8, SmoothQuant W8A8 and W4A16 error on a GEMM.

    Computes Y = X W in float64 and with each method quantizing X and W, and reports the MSE
    and SQNR of Y (and of X on its ordinary, non-outlier channels). Per-channel W8A8 scales X
    per input channel: the accuracy ideal, which integer GEMM kernels cannot run; SmoothQuant
    gets close with one scale for X. Writes OUT/quant_error.png showing how one outlier
    channel inflates the per-tensor INT8 step and collapses the other channels' bins, and
    how SmoothQuant relieves it. Weights are synthetic Gaussian W[channels, out].
    """
    import numpy as np

    from servesim.hwmodels import quantmath as qm

    with user_errors():
        if npy is not None:
            x = load_activations(npy)
            outliers = qm.find_outlier_channels(x)
            source = str(npy)
        else:
            if outlier_channels > num_channels:
                raise ConfigError(
                    f"--outlier-channels {outlier_channels} exceeds --channels {num_channels}"
                )
            x, outliers = qm.synthetic_activations(
                seed=seed,
                num_tokens=num_tokens,
                num_channels=num_channels,
                num_outlier_channels=outlier_channels,
                outlier_scale=outlier_scale,
            )
            source = "synthetic"
        w = qm.synthetic_weights(
            seed=seed, in_features=x.shape[1], out_features=min(x.shape[1], _MAX_OUT_FEATURES)
        )
        result = analyse(x, w, outliers, alpha=alpha, group_size=group_size)
        figure = out / FIGURE_NAME if make_plot else None
        try:
            if figure is not None:
                plot(
                    x,
                    result,
                    outliers,
                    figure,
                    f"Activation outliers and INT8 quantization ({source}, "
                    f"X {x.shape[0]}x{x.shape[1]})",
                )
        except OSError as exc:
            raise ConfigError(f"cannot write the figure to {str(figure)!r}: {exc}") from None

    ordinary = result["ordinary"]
    summary = {
        "source": source,
        "num_tokens": int(x.shape[0]),
        "num_channels": int(x.shape[1]),
        "out_features": int(w.shape[1]),
        "seed": seed,
        "alpha": alpha,
        "group_size": group_size,
        "outlier_channels": [int(j) for j in outliers],
        "outlier_ratio": result["outlier_ratio"],
        "per_tensor_step": result["per_tensor_step"],
        "smoothed_per_tensor_step": result["smoothed_per_tensor_step"],
        "median_levels_per_tensor": float(np.median(result["levels_raw"][ordinary])),
        "median_levels_smoothquant": float(np.median(result["levels_smooth"][ordinary])),
        "median_levels_per_channel": float(np.median(result["levels_chan"][ordinary])),
        "methods": [r.to_dict() for r in result["rows"]],
        "figure": None if figure is None else str(figure),
    }
    if as_json:
        echo_json(summary)
        return
    _print_table(summary)


def _print_table(s: dict[str, Any]) -> None:
    from rich.table import Table

    con = console()
    table = Table(
        title=f"Quantization error of Y = X W ({s['source']}, X {s['num_tokens']}x"
        f"{s['num_channels']}, W {s['num_channels']}x{s['out_features']})"
    )
    for col in ("method", "how", "GEMM-friendly", "Y MSE", "Y SQNR dB", "X ordinary SQNR dB"):
        table.add_column(col, justify="left" if col in ("method", "how") else "right")
    for r in s["methods"]:
        table.add_row(
            r["method"],
            r["description"],
            "yes" if r["gemm_friendly"] else "no",
            f"{r['y_mse']:.3e}",
            f"{r['y_sqnr_db']:.1f}",
            f"{r['x_ordinary_sqnr_db']:.1f}",
        )
    con.print(table)
    con.print(
        f"{len(s['outlier_channels'])} outlier channel(s) {s['outlier_channels'][:8]}, "
        f"{s['outlier_ratio']:.0f}x the median channel max. Per-tensor INT8 step s = "
        f"{s['per_tensor_step']:.3g}: ordinary channels use a median of "
        f"{s['median_levels_per_tensor']:.0f} of 256 codes; after SmoothQuant "
        f"{s['median_levels_smoothquant']:.0f}; per-channel {s['median_levels_per_channel']:.0f}."
    )
    if s["figure"] is not None:
        con.print(f"figure: {s['figure']}")


def register(app: typer.Typer) -> None:
    """Attach ``quant-error`` to ``app``."""
    app.command("quant-error")(quant_error_cmd)
