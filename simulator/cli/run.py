"""``servesim run``, ``servesim check`` and ``servesim schema``: the scenario front door.

``run`` loads a scenario (:func:`simulator.scenario.load_scenario`), runs every variant on
the identical request stream (:func:`simulator.build.run_scenario`) and writes
``<out>/<name>/``::

    scenario.resolved.yaml   every default filled in (reloadable with ``servesim run``)
    summary.json             {"scenario": {...}, "variants": {name: {summary keys}}}
    requests.parquet         one row per request and variant
    steps.parquet            one row per step, replica and variant
    report.md, report.html   figures as PNG files (unless --no-report)

Variants are written as they complete: if a later one fails with a user error, the finished
ones stay on disk and the exit status is 2. ``--json`` prints ``summary.json`` to stdout
(nothing else goes to stdout) instead of the table.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from servesim.simulator.errors import SimulatorError
from servesim.simulator.scenario import (
    ScenarioCfg,
    load_scenario,
    resolve_variants,
    scenario_json_schema,
)

_SET_HELP = (
    "Override a field: --set dotted.path=value (value parsed as YAML; repeatable), e.g. "
    "--set scheduler.max_num_seqs=128 --set variants.0.kv_cache.block_size_tokens=32."
)
_QUICK_HELP = (
    "--quick applies the scenario's `quick:` overrides (a seconds-long form, e.g. fewer "
    "requests or a shipped trace excerpt); --full (default) runs the file as written."
)

RESOLVED_NAME = "scenario.resolved.yaml"


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Print a :class:`SimulatorError` as one message on stderr and exit with status 2.

    Commands catch here, not only in ``simulator.cli.main``, so ``CliRunner`` tests and
    embedding callers see the same exit status as the console script.
    """
    try:
        yield
    except SimulatorError as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(code=2) from None


def register(app: typer.Typer) -> None:
    """Attach ``run``, ``check`` and ``schema`` to ``app``."""
    app.command("run")(run)
    app.command("check")(check)
    app.command("schema")(schema)


# ---------------------------------------------------------------------------- run


def run(
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML file.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")] = Path("out"),
    set_: Annotated[
        list[str] | None, typer.Option("--set", "-s", metavar="PATH=VALUE", help=_SET_HELP)
    ] = None,
    seed: Annotated[
        int | None, typer.Option(min=0, help="Override the scenario's seed.")
    ] = None,
    json_: Annotated[
        bool, typer.Option("--json", help="Print summary.json to stdout instead of the table.")
    ] = False,
    quick: Annotated[bool, typer.Option("--quick/--full", help=_QUICK_HELP)] = False,
    no_report: Annotated[
        bool, typer.Option("--no-report", help="Skip report.md/report.html and the figures.")
    ] = False,
) -> None:
    """Run a scenario: simulate every variant and write results and a report."""
    overrides = list(set_ or [])
    if json_:
        # Keep stdout machine-readable: no progress bar.
        overrides.append("engine.progress=false")
    with _user_errors():
        cfg = load_scenario(scenario, overrides, seed, quick=quick)
    run_dir = out / cfg.name
    err_console = Console(stderr=True)
    with _user_errors():
        _prepare_run_dir(run_dir)
        _write_resolved(cfg, run_dir)

    from servesim.simulator.build import run_scenario  # the engine is heavy: import on use

    done: list[Any] = []
    failure: SimulatorError | None = None

    def on_variant_done(result: Any) -> None:
        done.append(result)
        _write_partial(done, cfg, run_dir)

    try:
        results = run_scenario(cfg, on_variant_done=on_variant_done)
    except SimulatorError as exc:
        failure = exc
        results = None
    if results is not None:
        results.write(run_dir)
    if results is None and not done:
        # Nothing finished: only scenario.resolved.yaml is on disk.
        typer.secho(f"error: {failure}", err=True, fg="red")
        raise typer.Exit(code=2)

    if not no_report:
        _build_report(run_dir, err_console)

    summary = _read_summary(run_dir)
    if json_:
        typer.echo(json.dumps(summary, indent=2))
    else:
        _print_summary(summary, cfg, Console())
        typer.echo(f"results: {run_dir}")
    if failure is not None:
        names = ", ".join(str(getattr(r, "name", "?")) for r in done)
        typer.secho(
            f"error: {failure}\n(completed variants kept in {run_dir}: {names})",
            err=True,
            fg="red",
        )
        raise typer.Exit(code=2)


def _prepare_run_dir(run_dir: Path) -> None:
    from servesim.simulator.errors import ScenarioError

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ScenarioError(f"cannot create the output directory {str(run_dir)!r}: {exc}") from None
    # Results of an earlier run of the same scenario would mix with this one's.
    for name in ("summary.json", "requests.parquet", "steps.parquet"):
        (run_dir / name).unlink(missing_ok=True)


def _write_resolved(cfg: ScenarioCfg, run_dir: Path) -> None:
    """Write the scenario with every default filled in (it loads back unchanged)."""
    text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    (run_dir / RESOLVED_NAME).write_text(
        "# Written by `servesim run`: the scenario as run, every default filled in.\n" + text,
        encoding="utf-8",
    )


def _write_partial(done: list[Any], cfg: ScenarioCfg, run_dir: Path) -> None:
    """Write the variants finished so far, so a later failure loses none of them."""
    from servesim.simulator.results import Results

    partial = Results(
        scenario_name=cfg.name, seed=cfg.seed, description=cfg.description, variants=list(done)
    )
    partial.write(run_dir)


def _build_report(run_dir: Path, console: Console) -> None:
    try:
        from servesim.reports.report import build_report
    except ModuleNotFoundError as exc:  # pragma: no cover - only while reports is absent
        if exc.name and exc.name.startswith("servesim.reports"):
            console.print(f"[yellow]report skipped: {exc}[/]")
            return
        raise
    build_report(run_dir)


def _read_summary(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "summary.json"
    if not path.is_file():
        return {"scenario": {}, "variants": {}}
    with path.open(encoding="utf-8") as f:
        return json.load(f)


# ---------------------------------------------------------------------------- table

# (label, summary key, format). Percent rows take fractions.
_ROWS: list[tuple[str, str, str]] = [
    ("completed", "completed", "int"),
    ("request throughput (req/s)", "request_throughput", "f2"),
    ("output throughput (tok/s)", "output_throughput", "f0"),
    ("TTFT p50 / p99 (ms)", "median_ttft_ms|p99_ttft_ms", "pair"),
    ("TPOT p50 / p99 (ms)", "median_tpot_ms|p99_tpot_ms", "pair"),
    ("E2EL p50 / p99 (ms)", "median_e2el_ms|p99_e2el_ms", "pair"),
    ("goodput (req/s)", "request_goodput", "f2"),
    ("mean batch size", "mean_batch_size", "f1"),
    ("KV tokens / reserved", "kv_token_state_frac|kv_reserved_frac", "pct_pair"),
    ("KV int. / ext. frag", "kv_internal_frag_frac|kv_external_frag_frac", "pct_pair"),
    ("KV cached / free", "kv_cached_frac|kv_free_frac", "pct_pair"),
    ("prefix hit rate", "prefix_hit_rate", "pct"),
    ("preemptions", "num_preemptions", "int"),
    ("rejected", "num_rejected", "int"),
]


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if not math.isfinite(value) else float(value)


def _fmt(value: Any, kind: str) -> str:
    x = _num(value)
    if x is None:
        return "-"
    if kind == "int":
        return f"{int(x):,}"
    if kind == "pct":
        return f"{100 * x:.1f}%"
    digits = {"f0": 0, "f1": 1, "f2": 2}.get(kind, 1)
    return f"{x:,.{digits}f}"


def _cell(summary: dict[str, Any], key: str, kind: str) -> str:
    if kind == "pair":
        a, b = key.split("|")
        return f"{_fmt(summary.get(a), 'f1')} / {_fmt(summary.get(b), 'f1')}"
    if kind == "pct_pair":
        a, b = key.split("|")
        return f"{_fmt(summary.get(a), 'pct')} / {_fmt(summary.get(b), 'pct')}"
    return _fmt(summary.get(key), kind)


def summary_table(summary: dict[str, Any], title: str) -> Table:
    """The per-variant summary as a rich table: one column per variant, side by side."""
    variants: dict[str, dict[str, Any]] = summary.get("variants") or {}
    table = Table(title=title, title_justify="left")
    table.add_column("metric", style="bold")
    for name in variants:
        table.add_column(name, justify="right")
    for label, key, kind in _ROWS:
        table.add_row(label, *(_cell(s or {}, key, kind) for s in variants.values()))
    return table


def _print_summary(summary: dict[str, Any], cfg: ScenarioCfg, console: Console) -> None:
    slo = ", ".join(
        f"{k} <= {v:g}" for k, v in cfg.slo.model_dump().items() if v is not None
    )
    title = f"{cfg.name} (seed {cfg.seed})" + (f" - SLO {slo}" if slo else "")
    console.print(summary_table(summary, title))


# ---------------------------------------------------------------------------- check


def check(
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML file.", show_default=False)],
    set_: Annotated[
        list[str] | None, typer.Option("--set", "-s", metavar="PATH=VALUE", help=_SET_HELP)
    ] = None,
    seed: Annotated[int | None, typer.Option(min=0, help="Override the seed.")] = None,
    quick: Annotated[bool, typer.Option("--quick/--full", help=_QUICK_HELP)] = False,
    yaml_: Annotated[
        bool, typer.Option("--yaml", help="Print each resolved variant as full YAML.")
    ] = False,
) -> None:
    """Validate a scenario without running it, and print the resolved variants."""
    with _user_errors():
        cfg = load_scenario(scenario, list(set_ or []), seed, quick=quick)
        runs = resolve_variants(cfg)
    console = Console()
    if yaml_:
        for label, run_cfg in runs:
            typer.echo(f"# variant: {label}")
            dumped = run_cfg.model_dump(mode="json", exclude={"variants", "quick"})
            typer.echo(yaml.safe_dump(dumped, sort_keys=False).rstrip())
            typer.echo("---")
        return
    console.print(f"[bold]{cfg.name}[/]: {len(runs)} variant(s), seed {cfg.seed}")
    labels = ("hardware", "model", "kv cache", "scheduler", "router")
    for label, run_cfg in runs:
        console.print(f"[bold]{label}[/]")
        for key, text in zip(labels, _describe_run(run_cfg), strict=True):
            console.print(f"  {key:<10} {text}", highlight=False)
    console.print(f"workload: {_describe_workload(cfg)}")
    if cfg.quick:
        form = "quick form applied" if quick else "quick form available (--quick)"
        console.print(f"{form}: " + ", ".join(f"{k}={v!r}" for k, v in cfg.quick.items()))
    console.print("[green]OK[/]")


def _describe_run(cfg: ScenarioCfg) -> tuple[str, str, str, str, str]:
    groups = []
    for g in cfg.hardware_groups:
        gpu = Path(g.gpu).name if "/" in g.gpu else g.gpu
        groups.append(
            f"{g.replicas}x {gpu} tp{g.tensor_parallel}"
            + (f" pp{g.pipeline_parallel}" if g.pipeline_parallel > 1 else "")
            + f" util {g.gpu_memory_utilization:g}"
        )
    m = cfg.model
    model = Path(m.config).name if m.config else str(m.name)
    model += f" {m.quantization}, kv {m.kv_cache_dtype}"
    kv = cfg.kv_cache
    kv_text = f"{kv.manager}"
    if kv.manager == "contiguous":
        kv_text += f" ({kv.reservation}, {kv.placement})"
    else:
        kv_text += f" block {kv.block_size_tokens}"
    s = cfg.scheduler
    sched = f"{s.policy} seqs {s.max_num_seqs} tokens {s.max_num_batched_tokens}"
    if s.policy == "sarathi":
        sched += f" chunk {s.chunk_size_tokens}"
    sched += f" {s.preemption}" + ("" if s.kv_sharing else " no-kv-sharing")
    return "; ".join(groups), model, kv_text, sched, cfg.router.policy


def _describe_workload(cfg: ScenarioCfg) -> str:
    wl = cfg.workload
    if wl.trace is not None:
        text = f"trace {wl.trace.path} ({wl.trace.format})"
        if wl.trace.max_requests:
            text += f", first {wl.trace.max_requests} requests"
        return text
    arrivals = wl.arrivals.process if wl.arrivals is not None else "?"
    return f"{wl.num_requests} synthetic requests, {arrivals} arrivals, prefixes {wl.prefixes.kind}"


# ---------------------------------------------------------------------------- schema


def schema() -> None:
    """Print the JSON Schema of scenario files (for editor completion and checking)."""
    typer.echo(json.dumps(scenario_json_schema(), indent=2))
