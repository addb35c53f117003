"""``servesim kernel ...``: the cycle-level kernel model from the command line.

Commands::

    servesim kernel gemm --gpu G --m M --n N --k K [--compute-type fp16] [--weight-bits 16]
    servesim kernel attention-prefill --gpu G --batch B --query-tokens T [--context-tokens C] ...
    servesim kernel attention-decode --gpu G --batch B --context-tokens C [--block-size 16|0] ...
    servesim kernel calibrate [--full] [--json]     error table vs the bundled GEMM timings
    servesim kernel curves --out DIR [--gpu G]      paged-KV overhead and 4-bit speedup curves

``--json`` prints :meth:`hwmodels.cyclesim.KernelResult.to_dict` (``total_cycles``, ``time_s``,
``achieved_hbm_bw_bytes_per_s``, ``achieved_flops_per_s``, ``occupancy_frac``, ``num_waves``,
``bound``, ``config``, ...); ``--trace`` adds the per-SM CTA trace. ``--plot FILE`` writes the
per-SM activity chart.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from servesim.simulator.errors import SimulatorError

if TYPE_CHECKING:
    from servesim.hwmodels.cyclesim import KernelResult

kernel_app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    help="Cycle-level kernel model: SMs, SRAM tiles, L2, HBM queues and waves.",
)

_GPU = Annotated[str, typer.Option("--gpu", help="GPU catalogue name or YAML file.")]
_JSON = Annotated[bool, typer.Option("--json", help="Print JSON instead of a summary.")]
_TRACE = Annotated[bool, typer.Option("--trace", help="With --json: include the per-CTA trace.")]
_PLOT = Annotated[Path | None, typer.Option("--plot", help="Write the per-SM activity chart here.")]


def _run(build: Any, as_json: bool, trace: bool, plot: Path | None) -> None:
    try:
        result: KernelResult = build()
    except SimulatorError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(code=2) from None
    if plot is not None:
        from servesim.hwmodels.cyclesim.curves import plot_trace

        plot_trace(result, plot)
    if as_json:
        typer.echo(json.dumps(result.to_dict(with_trace=trace), indent=2))
        return
    typer.echo(
        f"{result.kernel} on {result.gpu}: {result.time_s * 1e6:.2f} us "
        f"({result.total_cycles:.0f} cycles), {result.bound}-bound\n"
        f"  {result.achieved_flops_per_s / 1e12:.1f} TFLOP/s, "
        f"{result.achieved_hbm_bw_bytes_per_s / 1e9:.0f} GB/s HBM, "
        f"{result.hbm_bytes / 1e6:.2f} MB from HBM, {result.l2_hit_bytes / 1e6:.2f} MB L2 hits\n"
        f"  {result.num_ctas} CTAs, {result.ctas_per_sm} per SM, {result.num_waves} wave(s), "
        f"occupancy {result.occupancy_frac:.2f}, HBM busy {result.hbm_util_frac:.2f}, "
        f"SM pipes busy {result.pipe_util_frac:.2f}\n"
        f"  config: {dict(result.config)}"
    )


@kernel_app.command("gemm")
def gemm(
    gpu: _GPU,
    m: Annotated[int, typer.Option(help="Rows of A / tokens.")],
    n: Annotated[int, typer.Option(help="Columns of the weight.")],
    k: Annotated[int, typer.Option(help="Reduction dimension.")],
    compute_type: Annotated[str, typer.Option(help="fp16, bf16, fp8 or int8.")] = "fp16",
    weight_bits: Annotated[int, typer.Option(help="16, 8 or 4 (weight-only).")] = 16,
    group_size: Annotated[int, typer.Option(help="Quantization group (weight-only).")] = 128,
    no_double_buffering: Annotated[bool, typer.Option(help="One SRAM stage only.")] = False,
    as_json: _JSON = False,
    trace: _TRACE = False,
    plot: _PLOT = None,
) -> None:
    """Simulate one GEMM launch C[m,n] = A[m,k] @ W[k,n]."""
    from servesim.hwmodels.cyclesim import simulate_gemm

    _run(lambda: simulate_gemm(gpu, m=m, n=n, k=k, compute_type=compute_type,
                               weight_bits=weight_bits, group_size=group_size,
                               double_buffering=not no_double_buffering), as_json, trace, plot)


@kernel_app.command("attention-prefill")
def attention_prefill(
    gpu: _GPU,
    batch: Annotated[int, typer.Option(help="Sequences.")],
    query_tokens: Annotated[int, typer.Option(help="New tokens per sequence.")],
    num_heads: Annotated[int, typer.Option(help="Query heads.")] = 32,
    num_kv_heads: Annotated[int, typer.Option(help="KV heads.")] = 32,
    head_dim: Annotated[int, typer.Option(help="Head dimension.")] = 128,
    context_tokens: Annotated[int | None, typer.Option(help="Keys per sequence (>= query).")] = None,
    kv_bytes_per_elem: Annotated[int, typer.Option(help="KV element bytes.")] = 2,
    no_causal: Annotated[bool, typer.Option(help="Full (non-causal) attention.")] = False,
    as_json: _JSON = False,
    trace: _TRACE = False,
    plot: _PLOT = None,
) -> None:
    """Simulate FlashAttention-style prefill."""
    from servesim.hwmodels.cyclesim import simulate_prefill_attention

    _run(lambda: simulate_prefill_attention(
        gpu, batch=batch, query_tokens=query_tokens, num_heads=num_heads,
        num_kv_heads=num_kv_heads, head_dim=head_dim, context_tokens=context_tokens,
        kv_bytes_per_elem=kv_bytes_per_elem, causal=not no_causal), as_json, trace, plot)


@kernel_app.command("attention-decode")
def attention_decode(
    gpu: _GPU,
    batch: Annotated[int, typer.Option(help="Sequences (one query token each).")],
    context_tokens: Annotated[int, typer.Option(help="Keys per sequence.")],
    num_heads: Annotated[int, typer.Option(help="Query heads.")] = 32,
    num_kv_heads: Annotated[int, typer.Option(help="KV heads.")] = 32,
    head_dim: Annotated[int, typer.Option(help="Head dimension.")] = 128,
    kv_bytes_per_elem: Annotated[int, typer.Option(help="KV element bytes.")] = 2,
    block_size: Annotated[int, typer.Option(help="Paged-KV block tokens; 0 = contiguous.")] = 16,
    num_splits: Annotated[int | None, typer.Option(help="KV splits (default: heuristic).")] = None,
    as_json: _JSON = False,
    trace: _TRACE = False,
    plot: _PLOT = None,
) -> None:
    """Simulate decode attention over a paged (or contiguous) KV cache."""
    from servesim.hwmodels.cyclesim import simulate_decode_attention

    _run(lambda: simulate_decode_attention(
        gpu, batch=batch, context_tokens=context_tokens, num_heads=num_heads,
        num_kv_heads=num_kv_heads, head_dim=head_dim, kv_bytes_per_elem=kv_bytes_per_elem,
        block_size=block_size or None, num_splits=num_splits), as_json, trace, plot)


@kernel_app.command("calibrate")
def calibrate(
    full: Annotated[bool, typer.Option(help="Every measured token count (slow).")] = False,
    as_json: _JSON = False,
) -> None:
    """Median |error| of the cycle model and a plain roofline on the bundled GEMM timings."""
    from servesim.hwmodels.cyclesim.calibration import calibration_points, error_table

    table = error_table(calibration_points(full=full))
    if as_json:
        rows = [{"file": f, "op": op, **{c: float(v) for c, v in row.items()}}
                for (f, op), row in table.iterrows()]
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(table.to_string(float_format=lambda x: f"{x:.3f}"))


@kernel_app.command("curves")
def curves(
    out: Annotated[Path, typer.Option(help="Directory for the tables (CSV) and figure.")] = Path("out/kernel-curves"),
    gpu: _GPU = "h100-sxm",
) -> None:
    """Paged-KV overhead vs block size and 4-bit vs fp16 GEMM speedup vs batch."""
    from servesim.hwmodels.cyclesim.curves import (
        paged_overhead_curve,
        plot_curves,
        w4_speedup_curve,
    )

    try:
        out.mkdir(parents=True, exist_ok=True)
        paged = {
            "7B MHA, batch 64 x 4096": paged_overhead_curve(gpu, batch=64, context_tokens=4096,
                                                            num_heads=32, num_kv_heads=32),
            "GQA 32/8, batch 8 x 1000": paged_overhead_curve(gpu, batch=8, context_tokens=1000),
            "GQA 32/8, batch 32 x 300": paged_overhead_curve(gpu, batch=32, context_tokens=300),
        }
        w4 = {
            "70B gate+up TP2 (n=28672, k=8192)": w4_speedup_curve(gpu, n=28672, k=8192),
            "7B down (n=4096, k=11008)": w4_speedup_curve(gpu, n=4096, k=11008),
        }
    except SimulatorError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(code=2) from None
    for i, (label, df) in enumerate(paged.items()):
        df.assign(case=label).to_csv(out / f"paged_overhead_{i}.csv", index=False)
        typer.echo(f"paged overhead, {label}:\n{df.to_string(index=False, float_format=lambda x: f'{x:.4g}')}\n")
    for i, (label, df) in enumerate(w4.items()):
        df.assign(case=label).to_csv(out / f"w4_speedup_{i}.csv", index=False)
        typer.echo(f"w4a16 speedup, {label}:\n{df.to_string(index=False, float_format=lambda x: f'{x:.4g}')}\n")
    plot_curves(paged, w4, out / "kernel_curves.png")
    typer.echo(f"wrote {out / 'kernel_curves.png'}")


def register(app: typer.Typer) -> None:
    """Add the ``kernel`` command group to the main app."""
    app.add_typer(kernel_app, name="kernel")
