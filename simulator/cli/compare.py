"""``servesim compare RESULT --scenario S.yaml``: measured vs simulated, metric by metric.

Reads a benchmark result file (``vllm bench serve --save-result``, SGLang ``bench_serving``
JSONL, GenAI-Perf or AIPerf exports; format auto-detected), replays the same load on the
scenario's deployment and prints, per run in the file, each metric measured and simulated
with the relative error ``(simulated - measured) / measured``. ``--json`` prints::

    {"scenario": NAME, "profile": PATH | null,
     "runs": [{"file", "record", "tool", "model_id", "load": {...},
               "metrics": [{"metric", "label", "unit", "measured", "simulated", "error_frac"}],
               "median_abs_error_frac"}, ...]}

Only this module's top-level imports are typer/stdlib: the engine is imported when the
command runs.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from servesim.simulator.errors import SimulatorError


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """One message on stderr and exit status 2 for a user error (no traceback)."""
    try:
        yield
    except SimulatorError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(code=2) from None


def json_safe(obj: Any) -> Any:
    """NaN/inf -> null, recursively (strict JSON)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def _fmt(value: float, unit: str) -> str:
    if unit == "ms":
        return f"{value:,.1f}"
    return f"{value:,.2f}" if value < 100 else f"{value:,.0f}"


def print_comparison(comp: Any, *, title: str) -> None:
    """Print one run's comparison as a table."""
    from rich.console import Console
    from rich.table import Table

    con = Console(highlight=False, width=None if Console().is_terminal else 120)
    table = Table(title=title)
    for col in ("metric", "unit", "measured", "simulated", "error"):
        table.add_column(col, justify="left" if col in ("metric", "unit") else "right")
    for row in comp.rows:
        table.add_row(row["label"], row["unit"], _fmt(row["measured"], row["unit"]),
                      _fmt(row["simulated"], row["unit"]), f"{100 * row['error_frac']:+.1f}%")
    con.print(table)
    med = comp.median_abs_error_frac
    con.print(f"median |error| over {len(comp.rows)} metrics: "
              f"{'n/a' if math.isnan(med) else f'{100 * med:.1f}%'}\n")


def register(app: typer.Typer) -> None:
    """Add ``compare`` to the ``servesim`` app."""

    @app.command("compare")
    def compare(
        result: Annotated[Path, typer.Argument(help="Benchmark result file: vllm bench serve --save-result JSON, SGLang bench_serving JSONL, GenAI-Perf or AIPerf profile export JSON.")],
        scenario: Annotated[Path, typer.Option("--scenario", "-s", help="Scenario YAML describing the deployment (model, GPU, parallelism, quantization, scheduler); its workload is replaced by the file's load.")],
        profile: Annotated[Path | None, typer.Option("--profile", help="Stack profile to run under (engine.profile), e.g. the one `servesim calibrate --from` wrote (its GPU file beside it is used too).")] = None,
        fmt: Annotated[str, typer.Option("--format", help="auto (default), vllm, sglang, genai-perf or aiperf.")] = "auto",
        variant: Annotated[str | None, typer.Option("--variant", help="Which variant of the scenario to use, if it has several.")] = None,
        set_: Annotated[list[str] | None, typer.Option("--set", help="Override a scenario field: dotted.path=value (repeatable).")] = None,
        max_requests: Annotated[int | None, typer.Option("--max-requests", min=1, help="Replay at most this many requests per run (faster, rougher).")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    ) -> None:
        """Compare a measured benchmark run with servesim's replay of the same load."""
        with user_errors():
            from servesim.simulator.validation.readers import read_results
            from servesim.simulator.validation.replay import compare_result
            from servesim.simulator.validation.stack import check_profile

            cfg = load_deployment(scenario, set_ or [], variant)
            prof = check_profile(profile) if profile is not None else None
            runs = read_results(result, format=fmt)
            comps = [compare_result(r, cfg, max_requests=max_requests, profile=prof) for r in runs]
        if as_json:
            doc = {"scenario": cfg.name, "profile": None if prof is None else str(prof),
                   "runs": [c.to_dict() for c in comps]}
            typer.echo(json.dumps(json_safe(doc), indent=2))
            return
        for c in comps:
            r = c.result
            print_comparison(c, title=(f"{r.label} ({r.tool}{', ' + r.model_id if r.model_id else ''}) "
                                       f"vs servesim on {cfg.name}: {r.load_text}"))


def load_deployment(path: Path, overrides: list[str], variant: str | None) -> Any:
    """The scenario as one configuration (a variant picked when it has several)."""
    from servesim.simulator.errors import ScenarioError
    from servesim.simulator.scenario import load_scenario, resolve_variants

    cfg = load_scenario(path, overrides=overrides)
    runs = resolve_variants(cfg)
    if variant is not None:
        named = dict(runs)
        if variant not in named:
            raise ScenarioError(f"--variant {variant!r}: the scenario has {sorted(named)}")
        return named[variant]
    if len(runs) > 1:
        raise ScenarioError(
            f"{path}: the scenario has {len(runs)} variants ({', '.join(n for n, _ in runs)}); "
            f"pick one with --variant"
        )
    return runs[0][1]
