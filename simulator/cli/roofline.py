"""``servesim roofline`` (one step's operators) and ``servesim calibrate`` (the GEMM fit).

``roofline --json`` prints a contract that later tooling reads::

    {"gpu", "model", "quant", "kv_dtype", "tensor_parallel", "pipeline_parallel",
     "batch": {"decode_seqs", "context_tokens", "prefill_tokens"},
     "compute_type", "peak_flops_per_s", "hbm_bw_bytes_per_s",
     "ops": [{"op", "time_s", "flops", "bytes", "bound"}, ...],      # per operator
     "total": {"op": "total", "time_s", "flops", "bytes", "bound"},  # the step
     "stage_times_s": [...], "pipeline_bubble_frac"}
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from servesim.hwmodels.errors import ConfigError, SimulatorError


def _fail(exc: SimulatorError) -> typer.Exit:
    typer.secho(f"error: {exc}", err=True, fg="red")
    return typer.Exit(code=2)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def roofline_report(
    *, gpu: str, model: str, quant: str = "fp16", kv_dtype: str | None = None, tp: int = 1, pp: int = 1,
    decode_seqs: int = 0, context: int = 1024, prefill_tokens: int = 0,
) -> dict[str, Any]:
    """Build the ``roofline --json`` document (raises SimulatorError on bad input)."""
    from servesim.hwmodels.stepcost import StepCostModel

    if decode_seqs < 0 or context < 0 or prefill_tokens < 0:
        raise ConfigError("--decode-seqs, --context and --prefill-tokens must be >= 0")
    if decode_seqs == 0 and prefill_tokens == 0:
        decode_seqs = 1
    cost = StepCostModel(gpu=gpu, model=model, scheme=quant, kv_dtype=kv_dtype,
                         tensor_parallel=tp, pipeline_parallel=pp)
    step = {
        "prefill_tokens": prefill_tokens,
        "prefill_attn_pairs": prefill_tokens * (prefill_tokens + 1) / 2,
        "prefill_kv_tokens": prefill_tokens,
        "num_prefill_seqs": 1 if prefill_tokens else 0,
        "num_decode_seqs": decode_seqs,
        "decode_ctx_tokens": decode_seqs * context,
    }
    ops = cost.breakdown(**step)
    ct = cost.scheme.compute_type
    return {
        "gpu": cost.gpu.name,
        "model": cost.model.name,
        "quant": cost.scheme.name,
        "kv_dtype": cost.kv_dtype.name,
        "tensor_parallel": tp,
        "pipeline_parallel": pp,
        "batch": {"decode_seqs": decode_seqs, "context_tokens": context, "prefill_tokens": prefill_tokens},
        "compute_type": ct,
        "peak_flops_per_s": cost.gpu.peak(ct),
        "hbm_bw_bytes_per_s": cost.gpu.hbm_bw_bytes_per_s,
        "ops": [o.to_dict() for o in ops if o.op != "total"],
        "total": ops[-1].to_dict(),
        "stage_times_s": cost.stage_times_s(**step),
        "pipeline_bubble_frac": cost.pipeline_bubble_frac(**step),
    }


def _print_table(doc: dict[str, Any]) -> None:
    con = Console(highlight=False, width=None if Console().is_terminal else 140)
    b = doc["batch"]
    table = Table(title=(
        f"{doc['model']} on {doc['gpu']} ({doc['quant']}, KV {doc['kv_dtype']}, tp={doc['tensor_parallel']}, "
        f"pp={doc['pipeline_parallel']}): {b['decode_seqs']} decode seqs x {b['context_tokens']} ctx, "
        f"{b['prefill_tokens']} prefill tokens"
    ))
    for col in ("op", "time (ms)", "share", "GFLOP", "MB", "FLOP/B", "bound"):
        table.add_column(col, justify="left" if col in ("op", "bound") else "right")
    total = doc["total"]["time_s"] or 1.0
    for o in [*doc["ops"], doc["total"]]:
        ai = o["flops"] / o["bytes"] if o["bytes"] else float("nan")
        table.add_row(o["op"], f"{o['time_s'] * 1e3:.3f}", f"{100 * o['time_s'] / total:.1f}%",
                      f"{o['flops'] / 1e9:.2f}", f"{o['bytes'] / 1e6:.1f}",
                      "-" if math.isnan(ai) else f"{ai:.1f}", o["bound"])
    con.print(table)
    if doc["pipeline_parallel"] > 1:
        stages = ", ".join(f"{t * 1e3:.3f}" for t in doc["stage_times_s"])
        con.print(f"stage times (ms): {stages}; pipeline bubble {100 * doc['pipeline_bubble_frac']:.1f}%")


def register(app: typer.Typer) -> None:
    """Add ``roofline`` and ``calibrate`` to the ``servesim`` app."""

    @app.command("roofline")
    def roofline(
        gpu: Annotated[str, typer.Option("--gpu", help="GPU name or GPU YAML file.")],
        model: Annotated[str, typer.Option("--model", help="Model name or config.json path.")],
        quant: Annotated[str, typer.Option("--quant", help="Quantization scheme.")] = "fp16",
        kv_dtype: Annotated[str | None, typer.Option("--kv-dtype", help="KV-cache dtype (default: the scheme's).")] = None,
        tp: Annotated[int, typer.Option("--tp", help="Tensor-parallel GPUs.")] = 1,
        pp: Annotated[int, typer.Option("--pp", help="Pipeline stages.")] = 1,
        decode_seqs: Annotated[int, typer.Option("--decode-seqs", help="Decoding sequences in the step.")] = 0,
        context: Annotated[int, typer.Option("--context", help="Context tokens per decoding sequence.")] = 1024,
        prefill_tokens: Annotated[int, typer.Option("--prefill-tokens", help="Tokens of one fresh prompt prefilled in the step.")] = 0,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON (a stable contract).")] = False,
        plot: Annotated[Path | None, typer.Option("--plot", help="Write a roofline figure (PNG/SVG/PDF).")] = None,
    ) -> None:
        """Per-operator time, FLOPs, bytes and bound of one forward step on the roofline."""
        try:
            doc = roofline_report(gpu=gpu, model=model, quant=quant, kv_dtype=kv_dtype, tp=tp, pp=pp,
                                  decode_seqs=decode_seqs, context=context, prefill_tokens=prefill_tokens)
        except SimulatorError as exc:
            raise _fail(exc) from None
        if plot is not None:
            from servesim.reports.roofline_plot import plot_roofline

            b = doc["batch"]
            plot_roofline(
                [*doc["ops"], doc["total"]], peak_flops_per_s=doc["peak_flops_per_s"],
                hbm_bw_bytes_per_s=doc["hbm_bw_bytes_per_s"], path=plot, compute_type=doc["compute_type"],
                title=(f"{doc['model']} on {doc['gpu']} ({doc['quant']}, tp={doc['tensor_parallel']}): "
                       f"{b['decode_seqs']} decode x {b['context_tokens']} ctx + {b['prefill_tokens']} prefill"),
            )
        if as_json:
            typer.echo(json.dumps(_json_safe(doc), indent=2))
        else:
            _print_table(doc)
            if plot is not None:
                typer.echo(f"wrote {plot}")

    @app.command("calibrate")
    def calibrate(
        refit: Annotated[bool, typer.Option("--refit", help="Re-fit on the 7B files (~1 min) instead of using the stored parameters.")] = False,
        write: Annotated[bool, typer.Option("--write", help="With --refit: store the parameters in hwmodels/data/roofline_calibration.json.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Error table of the roofline GEMM model against real kernel timings (fit 7B, held-out 70B)."""
        from servesim.hwmodels import calibration

        params = calibration.fit_all() if refit else None
        if params is not None and write:
            calibration.write_params(params)
        table = calibration.error_table(params)
        if as_json:
            typer.echo(json.dumps({"bounds": {"median_abs_err_frac": calibration.MEDIAN_ABS_ERR_BOUND,
                                              "max_abs_err_frac": calibration.MAX_ABS_ERR_BOUND},
                                   "rows": table.to_dict(orient="records")}, indent=2))
            return
        con = Console(highlight=False, width=None if Console().is_terminal else 140)
        t = Table(title="Roofline GEMM model vs measured kernel medians (qkv, o, gate_up, down; 1..4096 tokens, TP 1..8)")
        for col in ("gpu", "file", "role", "points", "median |err|", "p95 |err|", "max |err|", "ok"):
            t.add_column(col)
        for r in table.to_dict(orient="records"):
            t.add_row(r["gpu"], r["file"], r["role"], str(r["num_points"]), f"{100 * r['median_abs_err_frac']:.1f}%",
                      f"{100 * r['p95_abs_err_frac']:.1f}%", f"{100 * r['max_abs_err_frac']:.1f}%",
                      "yes" if r["within_bounds"] else "NO")
        con.print(t)
        con.print(f"bounds: median <= {100 * calibration.MEDIAN_ABS_ERR_BOUND:.0f}%, "
                  f"max <= {100 * calibration.MAX_ABS_ERR_BOUND:.0f}% per GPU and file")
