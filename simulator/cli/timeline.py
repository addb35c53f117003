"""``servesim export-timeline RUN_DIR``: a run's steps and requests as a Chrome trace.

Writes ``RUN_DIR/timeline.json`` (or ``--out FILE``) in the trace-event format that Perfetto
(https://ui.perfetto.dev, "Open trace file") and ``chrome://tracing`` open: one process per
variant and replica, a track of engine steps with batch and KV counters, and every request's
queued / prefill / decode phases. ``servesim run ... --timeline`` writes the same file.
See :mod:`servesim.simulator.timeline` for the layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def export_timeline(
    run_dir: Annotated[
        Path,
        typer.Argument(help="Output folder of `servesim run` (holds steps.parquet).",
                       show_default=False),
    ],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Trace file to write (default RUN_DIR/timeline.json)."),
    ] = None,
) -> None:
    """Write a run's steps and requests as a Chrome trace (opens in Perfetto)."""
    from servesim.simulator.cli.run import user_errors
    from servesim.simulator.timeline import write_timeline

    with user_errors():
        path = write_timeline(run_dir, out)
    typer.echo(f"timeline: {path} (open it in https://ui.perfetto.dev)")


def register(app: typer.Typer) -> None:
    """Attach ``export-timeline`` to ``app``."""
    app.command("export-timeline")(export_timeline)
