"""``servesim list gpus|models|quant`` and ``servesim show gpu|model``.

Human output is a rich table; ``--json`` prints plain JSON whose keys are a contract that
later tooling reads:

- ``show gpu``: :meth:`hwmodels.gpus.GpuSpec.to_dict` (``hbm_bytes``, ``hbm_bw_bytes_per_s``,
  ``peak_flops_per_s`` by compute type, ``num_sms``, ``clock_hz``, ``l2_bytes``,
  ``sram_bytes_per_sm``, ``source``, ...). ``list gpus``: a list of those.
- ``show model``: :meth:`hwmodels.models.ModelSpec.to_dict` plus ``quant``, ``kv_dtype``,
  ``bits_per_weight``, ``weight_bytes``, ``kv_bytes_per_token``. ``list models``: a list of
  those at fp16.
- ``list quant``: ``{"schemes": [...], "kv_dtypes": [...]}``.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from dataclasses import asdict
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from servesim.hwmodels.gpus import COMPUTE_TYPES, GpuSpec, get_gpu, list_gpus
from servesim.hwmodels.models import ModelSpec, get_model, model_names
from servesim.hwmodels.quant import (
    KV_DTYPES,
    SCHEMES,
    get_kv_dtype,
    get_scheme,
    kv_bytes_per_token,
    weight_bytes,
)
from servesim.hwmodels.units import TERA, GiB
from servesim.simulator.errors import SimulatorError

_JSON_HELP = "Print JSON (a stable contract for tooling) instead of a table."


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn a :class:`SimulatorError` into its message on stderr and exit status 2.

    Commands catch here (not only in ``main``) so that ``CliRunner`` tests and embedding
    callers see the same exit status as the console script.
    """
    try:
        yield
    except SimulatorError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(code=2) from None


def echo_json(obj: Any) -> None:
    """Print ``obj`` as JSON; non-finite floats become ``null`` (JSON has no NaN/inf)."""
    typer.echo(json.dumps(_json_safe(obj), indent=2))


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def console() -> Console:
    """A rich console on the stdout in effect now (CliRunner swaps it), built per command.

    Piped output gets 140 columns rather than rich's default 80, so that tables of names
    and figures are not truncated in logs.
    """
    return Console(highlight=False, width=None if Console().is_terminal else 140)


def _fmt(value: float | None, divisor: float = 1.0, digits: int = 1) -> str:
    return "-" if value is None else f"{value / divisor:,.{digits}f}"


def _number(value: float) -> int | float:
    """An integral float as int (byte counts read better that way in JSON)."""
    return int(value) if float(value).is_integer() else float(value)


# ---------------------------------------------------------------------------- dict builders
def model_dict(
    model: ModelSpec, quant: str = "fp16", kv_dtype: str | None = None
) -> dict[str, Any]:
    """The ``show model --json`` contract: the spec plus bytes under a scheme and KV dtype."""
    scheme = get_scheme(quant)
    kv = get_kv_dtype(kv_dtype or scheme.default_kv_dtype)
    return {
        **model.to_dict(),
        "quant": scheme.name,
        "kv_dtype": kv.name,
        "bits_per_weight": scheme.bits_per_weight(model.hidden_size),
        # Storage is whole bytes: round a fractional bits-per-weight total up.
        "weight_bytes": math.ceil(weight_bytes(model, scheme)),
        "kv_bytes_per_token": _number(kv_bytes_per_token(model, kv)),
    }


def quant_dict() -> dict[str, Any]:
    """The ``list quant --json`` contract."""
    return {
        "schemes": [s.to_dict() for s in SCHEMES.values()],
        "kv_dtypes": [asdict(k) for k in KV_DTYPES.values()],
    }


# ---------------------------------------------------------------------------- list
def list_gpus_cmd(
    as_json: Annotated[bool, typer.Option("--json", help=_JSON_HELP)] = False,
) -> None:
    """List the bundled GPUs: memory, bandwidth and dense tensor-core peaks.

    Peaks are dense (no 2:4 sparsity); '-' means the GPU has no such path. Any command that
    takes a GPU also accepts the path of a user GPU YAML file (see docs/hardware-and-models.md).
    """
    gpus = list_gpus()
    if as_json:
        echo_json([g.to_dict() for g in gpus])
        return
    table = Table(title="GPUs (dense peaks, TFLOP/s)")
    for col in ("name", "HBM GiB", "HBM TB/s", "fp16", "fp8", "int8", "fp4", "SMs", "conf."):
        table.add_column(col, justify="left" if col in ("name", "conf.") else "right")
    for g in gpus:
        peaks = [_fmt(g.peak_flops_per_s.get(ct), TERA, 0) for ct in ("fp16", "fp8", "int8", "fp4")]
        table.add_row(
            g.name,
            _fmt(g.hbm_bytes, GiB, 0),
            _fmt(g.hbm_bw_bytes_per_s, TERA, 2),
            *peaks,
            "-" if g.num_sms is None else str(g.num_sms),
            g.confidence,
        )
    console().print(table)


def list_models_cmd(
    as_json: Annotated[bool, typer.Option("--json", help=_JSON_HELP)] = False,
) -> None:
    """List the bundled models with parameter counts, fp16 weight bytes and KV bytes/token.

    Any command that takes a model also accepts a path to a Hugging Face config.json.
    """
    with user_errors():
        rows = [model_dict(get_model(name)) for name in model_names()]
    if as_json:
        echo_json(rows)
        return
    table = Table(title="Models (fp16 weights and KV cache)")
    for col in (
        "name",
        "params B",
        "active B",
        "layers",
        "kv heads",
        "head dim",
        "weights GiB",
        "KV KiB/token",
    ):
        table.add_column(col, justify="left" if col == "name" else "right")
    for r in rows:
        table.add_row(
            r["name"],
            _fmt(r["num_params"], 1e9, 2),
            _fmt(r["num_active_params"], 1e9, 2),
            str(r["num_layers"]),
            str(r["num_kv_heads"]),
            str(r["head_dim"]),
            _fmt(r["weight_bytes"], GiB, 1),
            _fmt(r["kv_bytes_per_token"], 1024, 1),
        )
    console().print(table)


def list_quant_cmd(
    as_json: Annotated[bool, typer.Option("--json", help=_JSON_HELP)] = False,
) -> None:
    """List the quantization schemes (weight/activation precision) and the KV-cache dtypes.

    bits/weight includes per-group or per-channel scales and zero points (per-channel at
    4096 input features). 'GEMM on' is the tensor-core peak the scheme's GEMMs run at.
    """
    data = quant_dict()
    if as_json:
        echo_json(data)
        return
    con = console()
    schemes = Table(title="Quantization schemes")
    for col in ("name", "W", "A", "GEMM on", "group", "bits/weight", "KV", "description"):
        schemes.add_column(col, justify="right" if col in ("group", "bits/weight") else "left")
    for s in data["schemes"]:
        schemes.add_row(
            s["name"],
            s["weight_dtype"],
            s["act_dtype"],
            s["compute_type"],
            str(s["group_size"] or "channel"),
            f"{s['bits_per_weight']:.3f}",
            s["default_kv_dtype"],
            s["description"],
        )
    con.print(schemes)
    kvs = Table(title="KV-cache dtypes")
    for col in ("name", "bits", "scale bytes / head vector", "description"):
        kvs.add_column(col, justify="right" if col != "name" and col != "description" else "left")
    for k in data["kv_dtypes"]:
        kvs.add_row(k["name"], str(k["bits"]), f"{k['scale_bytes_per_group']:g}", k["description"])
    con.print(kvs)


# ---------------------------------------------------------------------------- show
def _gpu_table(gpu: GpuSpec) -> Table:
    table = Table(title=f"GPU {gpu.name} ({gpu.display_name})", show_header=False)
    table.add_column("field")
    table.add_column("value")
    rows: list[tuple[str, str]] = [
        ("vendor / arch", f"{gpu.vendor} {gpu.arch}".strip()),
        ("aliases", ", ".join(gpu.aliases) or "-"),
        ("HBM", f"{gpu.hbm_bytes / GiB:,.1f} GiB ({gpu.memory_type or '?'})"),
        ("HBM bandwidth", f"{gpu.hbm_bw_bytes_per_s / 1e12:,.3f} TB/s"),
    ]
    rows += [
        (f"peak {ct} (dense)", f"{gpu.peak_flops_per_s[ct] / TERA:,.1f} TFLOP/s")
        for ct in COMPUTE_TYPES
        if ct in gpu.peak_flops_per_s
    ]
    rows += [
        ("ridge (fp16)", f"{gpu.ridge_flops_per_byte:,.0f} FLOP/byte"),
        ("SMs", "-" if gpu.num_sms is None else str(gpu.num_sms)),
        ("clock", _fmt(gpu.clock_hz, 1e6, 0) + " MHz"),
        ("L2", _fmt(gpu.l2_bytes, 1 << 20, 0) + " MiB"),
        ("SRAM per SM", _fmt(gpu.sram_bytes_per_sm, 1024, 0) + " KiB"),
        ("shared mem max per SM", _fmt(gpu.smem_max_bytes_per_sm, 1024, 0) + " KiB"),
        ("register file per SM", _fmt(gpu.regfile_bytes_per_sm, 1024, 0) + " KiB"),
        (
            "scale-up link",
            f"{gpu.scaleup or '-'} {_fmt(gpu.scaleup_bw_bytes_per_s, 1e9, 0)} GB/s (bidir.)",
        ),
        ("PCIe", _fmt(gpu.pcie_bw_bytes_per_s, 1e9, 0) + " GB/s (bidir.)"),
        ("TDP", _fmt(gpu.tdp_w, 1.0, 0) + " W"),
        ("confidence", gpu.confidence),
        ("source", gpu.source),
    ]
    if gpu.notes:
        rows.append(("notes", gpu.notes))
    for key, value in rows:
        table.add_row(key, value)
    return table


def show_gpu_cmd(
    name: Annotated[
        str,
        typer.Argument(
            metavar="NAME_OR_YAML",
            help="Catalogue name or alias (case-insensitive, e.g. h100-sxm) or a GPU YAML file.",
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help=_JSON_HELP)] = False,
) -> None:
    """Show one GPU: memory, bandwidth, dense peaks per compute type, SMs, caches, links, source.

    JSON keys include hbm_bytes, hbm_bw_bytes_per_s, peak_flops_per_s (by compute type),
    num_sms, clock_hz, l2_bytes, sram_bytes_per_sm and source.
    """
    with user_errors():
        gpu = get_gpu(name)
    if as_json:
        echo_json(gpu.to_dict())
        return
    console().print(_gpu_table(gpu))


def show_model_cmd(
    name: Annotated[
        str,
        typer.Argument(
            metavar="NAME_OR_CONFIG",
            help="Bundled model name (e.g. llama-3.1-8b) or a Hugging Face config.json path.",
        ),
    ],
    quant: Annotated[
        str,
        typer.Option(
            "--quant", "-q", help="Quantization scheme for weight bytes (see `list quant`)."
        ),
    ] = "fp16",
    kv_dtype: Annotated[
        str | None,
        typer.Option("--kv-dtype", help="KV-cache dtype (default: the scheme's, usually fp16)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help=_JSON_HELP)] = False,
) -> None:
    """Show one model: shape, parameters (total and active), weight bytes and KV bytes/token.

    JSON keys include num_params, num_active_params, weight_bytes, kv_bytes_per_token,
    num_layers, num_kv_heads and head_dim.
    """
    with user_errors():
        data = model_dict(get_model(name), quant, kv_dtype)
    if as_json:
        echo_json(data)
        return
    table = Table(title=f"Model {data['name']} ({data['model_type']})", show_header=False)
    table.add_column("field")
    table.add_column("value")
    rows = [
        ("parameters", f"{data['num_params'] / 1e9:,.2f} B"),
        ("active parameters", f"{data['num_active_params'] / 1e9:,.2f} B"),
        ("layers", str(data["num_layers"])),
        ("hidden size", str(data["hidden_size"])),
        (
            "heads / KV heads / head dim",
            f"{data['num_heads']} / {data['num_kv_heads']} / {data['head_dim']}",
        ),
        ("intermediate size", str(data["intermediate_size"])),
        ("vocab", str(data["vocab_size"])),
        ("max context", f"{data['max_seq_len_tokens']:,} tokens"),
    ]
    if data["is_moe"]:
        rows.append(("experts", f"{data['experts_per_tok']} of {data['num_experts']} per token"))
    if data["is_mla"]:
        rows.append(("MLA latent (kv_lora_rank)", str(data["kv_lora_rank"])))
    rows += [
        ("quantization", f"{data['quant']} ({data['bits_per_weight']:.3f} bits/weight on GEMMs)"),
        ("weight bytes", f"{data['weight_bytes'] / GiB:,.2f} GiB ({data['weight_bytes']:,} B)"),
        ("KV dtype", data["kv_dtype"]),
        (
            "KV bytes per token",
            f"{data['kv_bytes_per_token'] / 1024:,.2f} KiB ({data['kv_bytes_per_token']:,} B)",
        ),
        ("source", data["source"] or "-"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console().print(table)


def register(app: typer.Typer) -> None:
    """Attach ``list`` and ``show`` (each a command group) to ``app``."""
    list_app = typer.Typer(
        no_args_is_help=True,
        help="List a catalogue: gpus, models, or quant (schemes and KV-cache dtypes).",
    )
    list_app.command("gpus")(list_gpus_cmd)
    list_app.command("models")(list_models_cmd)
    list_app.command("quant")(list_quant_cmd)
    show_app = typer.Typer(
        no_args_is_help=True,
        help="Show one GPU (name or YAML file) or model (name or config.json) in detail.",
    )
    show_app.command("gpu")(show_gpu_cmd)
    show_app.command("model")(show_model_cmd)
    app.add_typer(list_app, name="list")
    app.add_typer(show_app, name="show")
