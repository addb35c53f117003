"""The ``servesim`` command line.

Each area registers its commands from its own module (``register(app)``), so the CLI grows
without one file owning everything. The modules are imported only when their command runs:
``servesim --help`` and ``servesim list gpus`` must not pay for numba, pandas or the engine
(``benchmarks/bench_startup.py`` measures it). To add a command, add one line to
:data:`COMMANDS`: its name, the module whose ``register(app)`` defines it, and the one-line
help shown by ``servesim --help`` (a test checks that the module really registers it).

The contract with the user (:func:`_fail`): every usage error (no arguments, unknown command
or option, missing argument, bad value) and every :class:`SimulatorError` (bad file, bad
scenario, impossible configuration) prints **one line** on stderr naming the option and what
is valid, and exits with status 2; never a traceback. Internal bugs
(:class:`InvariantError`, anything else) keep their traceback.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from difflib import get_close_matches
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

__all__ = ["COMMANDS", "LazyCommand", "app", "main"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LazyCommand:
    """A top-level command whose module is imported only when the command is used."""

    name: str
    module: str  # relative to servesim.simulator.cli; exposes register(app)
    help: str  # the line in `servesim --help`


# Order is the order in ``servesim --help``.
COMMANDS: tuple[LazyCommand, ...] = (
    LazyCommand(name="run", module="run", help="Run a scenario (a YAML file, a gallery name, or flags only) and write results and a report."),
    LazyCommand(name="check", module="run", help="Validate a scenario without running it, and print the resolved variants."),
    LazyCommand(name="schema", module="run", help="Print the JSON Schema of scenario files."),
    LazyCommand(name="gallery", module="gallery", help="List the bundled scenarios and examples (run them by name)."),
    LazyCommand(name="export-timeline", module="timeline", help="Write a run's steps and requests as a Chrome trace (opens in Perfetto)."),
    LazyCommand(name="list", module="catalog", help="List a catalogue: gpus, models, or quant."),
    LazyCommand(name="show", module="catalog", help="Show one GPU or model in detail."),
    LazyCommand(name="trace", module="trace", help="Inspect workload trace files."),
    LazyCommand(name="quant-error", module="quant", help="What quantization does to a GEMM's accuracy, and why (activation outliers)."),
    LazyCommand(name="sweep", module="sweep", help="Run a parameter sweep; one row per point x variant."),
    LazyCommand(name="plan", module="sweep", help="Rank candidate configurations by cost for a target rate under SLOs."),
    LazyCommand(name="roofline", module="roofline", help="Per-operator time, FLOPs, bytes and bound of one step on the roofline."),
    LazyCommand(name="calibrate", module="calibrate", help="Fit a serving-stack profile to your benchmark files (--from); without --from, the roofline GEMM error table."),
    LazyCommand(name="kernel", module="kernel", help="Cycle-level kernel model: SMs, SRAM tiles, L2, HBM queues and waves."),
    LazyCommand(name="compare", module="compare", help="Measured benchmark file (vLLM, SGLang, GenAI-Perf, AIPerf) vs servesim's replay of its load."),
    LazyCommand(name="validate", module="validate", help="Run the shipped published end-to-end cases: prediction, reference and error per case."),
)

_PREFIX = "servesim.simulator.cli."


def _click_exception_types() -> tuple[type[BaseException], ...]:
    """The ClickException classes in play: typer's vendored click, and click if installed.

    NOTE: typer >= 0.2x vendors click as ``typer._click``, so ``click.ClickException`` (the
    separate distribution) never matches what typer raises. The vendored class is reached
    through typer's public ``BadParameter`` rather than the private module path.
    """
    found = [c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"]
    return tuple(found)


class LazyGroup(TyperGroup):
    """The top-level group: commands come from :data:`COMMANDS`, imported on first use."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loaded: dict[str, Any] = {}  # module -> click group of its commands

    def list_commands(self, ctx: Any) -> list[str]:
        return [c.name for c in COMMANDS]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        entry = next((c for c in COMMANDS if c.name == cmd_name), None)
        if entry is None:
            return None
        group = self._loaded.get(entry.module)
        if group is None:
            sub = typer.Typer(add_completion=False, rich_markup_mode=None)
            importlib.import_module(_PREFIX + entry.module).register(sub)
            group = typer.main.get_group(sub)
            self._loaded[entry.module] = group
        return group.get_command(ctx, cmd_name)

    def _path_of(self, args: list[str]) -> str:
        """``servesim run`` for ``run -o``: the command words an argument list starts with."""
        words, cmd = ["servesim"], self
        try:
            ctx = self.make_context("servesim", ["gallery"], resilient_parsing=True)
            for word in args:
                sub = cmd.get_command(ctx, word) if hasattr(cmd, "get_command") else None
                if sub is None:
                    break
                words.append(word)
                cmd = sub
        except Exception:  # the path only improves a message; never fail on it
            pass
        return " ".join(words)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        # The one-line help comes from the table: listing commands imports none of them.
        rows = [(c.name, c.help) for c in COMMANDS]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run, turning every user error into one line on stderr and exit status 2.

        Done here rather than only in :func:`main` so that ``CliRunner().invoke(app)`` and
        the console script behave alike.
        """
        from servesim.simulator.errors import SimulatorError

        code: int
        try:
            rv = super().main(
                args, prog_name or "servesim", complete_var, standalone_mode=False, **extra
            )
            code = rv if isinstance(rv, int) else 0
        except _click_exception_types() as exc:
            _fail(_usage_message(exc, self._path_of(list(sys.argv[1:] if args is None else args))))
            code = int(getattr(exc, "exit_code", 2)) or 2
        except SimulatorError as exc:
            _fail(str(exc))
            code = 2
        except (typer.Abort, KeyboardInterrupt):
            typer.echo("aborted", err=True)
            code = 130
        if not standalone_mode:
            return code
        sys.exit(code)


def _fail(message: str) -> None:
    """Print ``error: <message>`` as one line on stderr."""
    line = " ".join(message.split())  # collapse any newline: one line, always
    typer.secho(f"error: {line}", err=True, fg="red")


def _option_names(command: Any) -> list[str]:
    names: list[str] = []
    for p in getattr(command, "params", []):
        if getattr(p, "param_type_name", "") == "option":
            names.extend(p.opts)
            names.extend(p.secondary_opts)
    return [n for n in names if n.startswith("--")]


def _usage_message(exc: BaseException, path: str = "servesim") -> str:
    """One line: what was wrong, for which option or argument, and what is valid.

    ``path`` names the command when the error carries no context (click's parser raises
    "Option '-o' requires an argument" without one).
    """
    ctx = getattr(exc, "ctx", None)
    command = getattr(ctx, "command", None)
    where = ctx.command_path if ctx is not None else path
    cls = type(exc).__name__
    help_hint = f"see '{where} --help'"
    if cls == "NoArgsIsHelpError" or (
        cls == "UsageError" and str(getattr(exc, "message", "")).startswith("Missing command")
    ):
        valid = ", ".join(command.list_commands(ctx)) if command is not None else ""
        return f"{where}: missing command; valid: {valid} ({help_hint})"
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    if cls == "NoSuchOption":
        valid = _option_names(command)
        option = getattr(exc, "option_name", "?")
        close = get_close_matches(option, valid, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        return f"{where}: no such option {option}{hint}; valid: {', '.join(valid)}"
    if message.startswith("No such command") and command is not None:
        valid = ", ".join(command.list_commands(ctx))
        return f"{where}: {message.rstrip('.')}; valid: {valid}"
    if cls == "MissingParameter":
        param = getattr(exc, "param", None)
        helptext = getattr(param, "help", None)
        detail = f": {helptext}" if helptext else ""
        return f"{where}: {message.rstrip('.')}{detail} ({help_hint})"
    if cls in ("BadParameter", "BadOptionUsage", "BadArgumentUsage", "UsageError"):
        return f"{where}: {message} ({help_hint})"
    return f"{where}: {message}"


def _version(value: bool) -> None:
    if value:
        from servesim import __version__

        typer.echo(f"servesim {__version__}")
        raise typer.Exit()


app = typer.Typer(
    name="servesim",
    cls=LazyGroup,
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


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_version, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """The group itself does nothing: --version is handled eagerly by its callback."""


def main() -> None:
    """Console-script entry point (``servesim``)."""
    typer.main.get_command(app).main(prog_name="servesim")
