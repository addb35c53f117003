"""``servesim sweep`` and ``servesim plan``: many runs, on one machine or a Dask cluster.

``sweep SWEEP.yaml`` runs a base scenario over a grid / zip / random set of dotted-path
values and writes ``OUT/results.parquet`` (one row per point x variant, appended as each
point finishes; ``--resume`` continues a killed sweep). ``plan PLAN.yaml`` finds, for every
candidate configuration, the max sustainable rate per replica and the GPUs and dollars the
target rate needs, and writes a ranked report (Markdown + HTML with figures).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from servesim.simulator.errors import SimulatorError


class ExecutorChoice(StrEnum):
    """Where points run."""

    local = "local"
    dask = "dask"
    serial = "serial"


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """A :class:`SimulatorError` becomes one red line on stderr and exit status 2."""
    try:
        yield
    except SimulatorError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(code=2) from None


def register(app: typer.Typer) -> None:
    """Attach ``sweep`` and ``plan`` to ``app``."""
    app.command("sweep")(sweep)
    app.command("plan")(plan)


_EXECUTOR_HELP = (
    "local: a process pool on this machine (default); dask: a Dask cluster "
    "(--scheduler-address, or a LocalCluster); serial: one at a time in this process."
)


def sweep(
    spec: Annotated[Path, typer.Argument(help="Sweep YAML (base: + grid:/zip:/random:) or a gallery name (sweep-rate-gpu).")],
    executor: Annotated[
        ExecutorChoice, typer.Option("--executor", "-e", help=_EXECUTOR_HELP)
    ] = ExecutorChoice.local,
    workers: Annotated[
        int | None, typer.Option("--workers", "-w", min=1, help="Worker processes (default: cores).")
    ] = None,
    scheduler_address: Annotated[
        str | None, typer.Option(help="Dask scheduler, e.g. tcp://10.0.0.5:8786.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output directory (default: out/<name>).")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Skip points already in OUT/results.parquet.")
    ] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Run a parameter sweep; one row per point x variant in OUT/results.parquet."""
    from servesim.simulator.gallery import resolve_path
    from servesim.simulator.sweep import RESULTS_FILE, load_sweep, run_sweep

    with _user_errors():
        parsed = load_sweep(resolve_path(spec, ("examples",)))
        out_dir = out if out is not None else Path("out") / parsed.name
        df = run_sweep(
            parsed,
            executor=executor.value,
            workers=workers,
            scheduler_address=scheduler_address,
            out=out_dir,
            resume=resume,
            progress=progress,
        )
    points = df["point_id"].nunique() if not df.empty else 0
    failed = df.loc[df["status"] != "ok", "point_id"].nunique() if not df.empty else 0
    typer.echo(f"{points} points ({failed} failed) -> {out_dir / RESULTS_FILE}")
    if failed:
        for row in df[df["status"] != "ok"].drop_duplicates("point_id").head(5).itertuples():
            typer.secho(f"  point {row.point_index}: {row.error}", err=True, fg="yellow")
        # Finished points are stored; a failed one is an error row. Exit 1, not 0 (#15).
        typer.secho(f"error: {failed} of {points} points failed (error rows in "
                    f"{out_dir / RESULTS_FILE})", err=True, fg="red")
        raise typer.Exit(code=1)


def plan(
    spec: Annotated[Path, typer.Argument(help="Plan YAML (base, target rate, SLOs, prices, candidates) or a gallery name (plan).")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output directory (default: out/<name>).")
    ] = None,
    executor: Annotated[
        ExecutorChoice, typer.Option("--executor", "-e", help=_EXECUTOR_HELP)
    ] = ExecutorChoice.local,
    workers: Annotated[int | None, typer.Option("--workers", "-w", min=1)] = None,
    scheduler_address: Annotated[str | None, typer.Option()] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
    bands: Annotated[bool, typer.Option("--bands", help="Also give the top candidates' max rate and GPU count as ranges, with the assumption that dominates the width (writes bands.csv).")] = False,
) -> None:
    """Rank candidate configurations by cost for a target rate under SLOs."""
    from servesim.simulator.capacity import load_plan, plan_capacity
    from servesim.simulator.gallery import resolve_path

    with _user_errors():
        parsed = load_plan(resolve_path(spec, ("examples",)))
        result = plan_capacity(
            parsed,
            executor=executor.value,
            workers=workers,
            scheduler_address=scheduler_address,
            progress=progress,
        )
        out_dir = result.write(out if out is not None else Path("out") / parsed.name)
    _print_plan(result)
    if bands:
        from servesim.simulator.cli.validate import print_plan_bands
        from servesim.simulator.validation.bands import plan_bands

        with _user_errors():
            result.bands = plan_bands(result)
        result.bands.to_csv(out_dir / "bands.csv", index=False)
        print_plan_bands(result.bands)
    _print_deploy(result, out_dir)
    typer.echo(f"report: {out_dir / 'report.md'} and {out_dir / 'report.html'}")


def _print_deploy(result: object, out_dir: Path) -> None:
    """Print the vLLM / SGLang command lines of the best candidates; write OUT/deploy.sh."""
    from servesim.simulator.capacity import PlanResult
    from servesim.simulator.deploy import commands_script, plan_deploy_commands

    assert isinstance(result, PlanResult)
    with _user_errors():
        items = plan_deploy_commands(result, top_k=max(1, result.spec.top_k))
    if not items:
        return
    typer.echo("deploy the best candidates (one replica each; notes say what needs a checkpoint):")
    for it in items:
        typer.echo(f"  #{it['rank']} {it['label']} x {it['replicas']} replica(s)")
        for note in it["notes"]:
            typer.echo(f"    note: {note}")
        typer.echo(f"    {it['vllm']}")
        typer.echo(f"    {it['sglang']}")
    path = out_dir / "deploy.sh"
    path.write_text(commands_script(items, title=result.spec.name) + "\n", encoding="utf-8")
    typer.echo(f"commands: {path}")


def _print_plan(result: object) -> None:
    from rich.console import Console
    from rich.table import Table

    from servesim.simulator.capacity import PlanResult

    assert isinstance(result, PlanResult)
    table = Table(title=f"{result.spec.name}: {result.spec.target_rate_per_s:g} req/s")
    cols = [("rank", "#"), ("label", "candidate"), ("max_rate_per_replica", "max req/s/replica"),
            ("num_gpus", "GPUs"), ("usd_per_hour", "$/h"),
            ("usd_per_million_output_tokens", "$/M out tok"),
            ("binding_constraint", "binding"), ("limiting_slo", "SLO first")]
    cols = [(c, h) for c, h in cols if c in result.table.columns]
    for _, header in cols:
        table.add_column(header)
    for rec in result.table.to_dict(orient="records"):
        cells = []
        for c, _ in cols:
            v = rec.get(c)
            if isinstance(v, float):
                cells.append("" if v != v else f"{v:.4g}")
            else:
                cells.append("" if v is None else str(v))
        if rec.get("status") != "ok":
            cells[-2:] = [str(rec.get("status")), ""]
        table.add_row(*cells)
    console = Console()
    console.print(table)
    for rec in result.table.to_dict(orient="records"):
        if rec.get("status") != "ok":
            why = rec.get("error") or f"{rec.get('binding_constraint')}: {rec.get('binding_reason')}"
            console.print(f"[yellow]{rec.get('label')}[/yellow] ({rec.get('status')}): {why}",
                          soft_wrap=True)
