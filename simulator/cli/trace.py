"""``servesim trace stats FILE``: what a trace holds, at a glance.

Prints request count, duration, mean rate, burstiness (inter-arrival CV), prompt and output
length mean / p50 / p90 / p99 / max and, for traces with prefix block ids (Mooncake), the
fraction of prompt blocks an unlimited prefix cache would reuse. ``--json`` prints
:meth:`workloads.stats.WorkloadStats.to_dict` (keys are a contract for tooling).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from servesim.simulator.errors import SimulatorError

if TYPE_CHECKING:
    from servesim.workloads.stats import LengthStats, WorkloadStats

#: The trace formats of :data:`servesim.workloads.traces.FORMATS`, spelled out so that
#: registering the command imports no pandas (a test checks the two agree).
FORMATS = ("azure", "mooncake", "splitwise", "lengths", "burstgpt", "servesim")


def register(app: typer.Typer) -> None:
    """Add the ``trace`` command group to the ``servesim`` app."""
    trace_app = typer.Typer(
        name="trace", no_args_is_help=True, help="Inspect workload trace files."
    )
    trace_app.command("stats")(stats)
    app.add_typer(trace_app, name="trace")


def stats(
    file: Annotated[Path, typer.Argument(help="Trace file (CSV, JSONL or Parquet).")],
    format: Annotated[
        str,
        typer.Option("--format", "-f", help=f"Trace format: auto, {', '.join(FORMATS)}."),
    ] = "auto",
    replay: Annotated[str, typer.Option(help="Mooncake bucket replay: burst or spread.")] = "burst",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Summarise a trace: counts, rate, burstiness, lengths, prefix reuse."""
    from servesim.workloads.stats import workload_stats
    from servesim.workloads.traces import read_trace

    try:
        if replay not in ("burst", "spread"):
            raise SimulatorError(f"unknown --replay {replay!r}; valid: burst, spread")
        wl = read_trace(file, format=format, replay=replay)  # type: ignore[arg-type]
        result = workload_stats(wl)
    except SimulatorError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(code=2) from None
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        typer.echo(format_stats(result, source=wl.source))


def format_stats(s: WorkloadStats, *, source: str) -> str:
    """Render :class:`WorkloadStats` as an aligned plain-text table."""

    def num(x: float, digits: int = 0) -> str:
        return "-" if not math.isfinite(x) else f"{x:,.{digits}f}"

    def lengths(ls: LengthStats) -> str:
        return (
            f"{num(ls.mean_tokens)} / {num(ls.p50_tokens)} / {num(ls.p90_tokens)} / "
            f"{num(ls.p99_tokens)} / {ls.max_tokens:,}"
        )

    rows = [
        ("trace", source),
        ("requests", f"{s.num_requests:,}"),
        ("duration", f"{num(s.duration_s, 1)} s"),
        ("mean rate", f"{num(s.mean_rate_per_s, 3)} req/s"),
        ("inter-arrival CV", num(s.interarrival_cv, 3)),
        ("prompt tokens mean / p50 / p90 / p99 / max", lengths(s.prompt)),
        ("output tokens mean / p50 / p90 / p99 / max", lengths(s.output)),
    ]
    if s.block_tokens > 0 and s.num_prompt_blocks > 0:
        rows.append(
            (
                f"prefix reuse ({s.block_tokens}-token blocks, unlimited cache)",
                f"{100 * s.prefix_reuse_frac:.1f}% of {s.num_prompt_blocks:,} blocks",
            )
        )
    if s.num_open_arrivals != s.num_requests:
        rows.append(("open arrivals", f"{s.num_open_arrivals:,}"))
    rows.extend(("note", note) for note in s.notes)
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
