"""The ``servesim`` command line.

Each area registers its commands from its own module (``register(app)``), so the CLI grows
without one file owning everything. User errors (:class:`SimulatorError`) are caught here
only: the message is printed and the exit status is 2, never a traceback.
"""

from __future__ import annotations

import importlib
import sys

import typer

from servesim.simulator.errors import SimulatorError

app = typer.Typer(
    name="servesim",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    help=(
        "servesim: simulate LLM serving on GPUs before renting one.\n\n"
        "Answers how many GPUs of which kind, with which KV-cache manager, quantization and "
        "scheduler, serve a model at a load under latency targets - and why (memory split, "
        "roofline bound, preemptions)."
    ),
)

# Command modules, each exposing ``register(app)``. Order is the order in ``--help``.
_COMMAND_MODULES = [
    "servesim.simulator.cli.run",
    "servesim.simulator.cli.catalog",
    "servesim.simulator.cli.trace",
    "servesim.simulator.cli.quant",
    "servesim.simulator.cli.sweep",
    "servesim.simulator.cli.roofline",
    "servesim.simulator.cli.kernel",
]

for _name in _COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def main() -> None:
    """Entry point: run the app, turning user errors into exit status 2."""
    try:
        # NOTE: with standalone_mode=False click *returns* the code of a ``typer.Exit``
        # raised by a command instead of exiting; pass it on (None means success).
        rc = app(standalone_mode=False)
    except SimulatorError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.secho("aborted", err=True)
        sys.exit(1)
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    sys.exit(rc if isinstance(rc, int) else 0)
