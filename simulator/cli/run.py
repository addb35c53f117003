"""``servesim run``, ``servesim check`` and ``servesim schema``: the scenario front door.

``run`` loads a scenario (:func:`simulator.scenario.load_scenario`) - a YAML file, or the name
of a bundled gallery file (``servesim run quickstart``; see ``servesim gallery``) - runs every
variant on the identical request stream (:func:`simulator.build.run_scenario`) and writes
``<out>/<name>/``::

    scenario.resolved.yaml   every default filled in (reloadable with ``servesim run``)
    summary.json             {"servesim": {"version", "scenario_sha256"},
                              "scenario": {...}, "variants": {name: {summary keys}}}
    run.json                 command line, wall-clock start/end, Python and library versions
    requests.parquet         one row per request and variant
    steps.parquet            one row per step, replica and variant
    timeline.json            with --timeline: Chrome trace of steps and requests (Perfetto)
    report.md, report.html   figures as PNG files (unless --no-report)

The flag-only form mirrors ``vllm bench serve`` for quick questions, with no YAML::

    servesim run --model meta-llama/Llama-3.1-8B-Instruct --gpu h100 --request-rate 10 \
        --num-prompts 600 --random-input-len 1000 --random-output-len 200 \
        [--tensor-parallel-size N] [--max-concurrency C] [--random-range-ratio R]

and prints vLLM's "Serving Benchmark Result" block with its metric names
(:func:`bench_scenario` says how each flag maps onto a scenario).

Variants are written as they complete: if a later one fails with a user error, the finished
ones stay on disk and the exit status is 2. ``--json`` prints ``summary.json`` to stdout
(nothing else goes to stdout) instead of the table.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from servesim.simulator.errors import ScenarioError, SimulatorError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from servesim.simulator.scenario import ScenarioCfg

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
def user_errors() -> Iterator[None]:
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


_BENCH_HELP = "Flag-only form (vllm bench serve): "


def run(
    scenario: Annotated[
        Path | None,
        typer.Argument(
            help="Scenario YAML file, or a gallery name (`servesim gallery`); omit it for the "
            "flag-only form (--model, --gpu, ...).",
            show_default=False,
        ),
    ] = None,
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
    timeline: Annotated[
        bool,
        typer.Option(
            "--timeline", help="Also write timeline.json: steps and requests as a Chrome trace "
            "(open it in https://ui.perfetto.dev)."
        ),
    ] = False,
    model: Annotated[
        str | None,
        typer.Option(help=_BENCH_HELP + "bundled model or Hugging Face id "
                     "(meta-llama/Llama-3.1-8B-Instruct).", show_default=False),
    ] = None,
    gpu: Annotated[
        str | None, typer.Option(help=_BENCH_HELP + "GPU name (`servesim list gpus`).",
                                 show_default=False)
    ] = None,
    request_rate: Annotated[
        float | None,
        typer.Option(min=0.0, help=_BENCH_HELP + "requests/s, Poisson; inf (default) sends "
                     "all at once.", show_default=False),
    ] = None,
    num_prompts: Annotated[
        int | None, typer.Option(min=1, help=_BENCH_HELP + "requests (default 1000).",
                                 show_default=False)
    ] = None,
    random_input_len: Annotated[
        int | None, typer.Option(min=1, help=_BENCH_HELP + "prompt tokens (default 1024).",
                                 show_default=False)
    ] = None,
    random_output_len: Annotated[
        int | None, typer.Option(min=1, help=_BENCH_HELP + "output tokens (default 128).",
                                 show_default=False)
    ] = None,
    random_range_ratio: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help=_BENCH_HELP + "lengths uniform in "
                     "[len * (1 - r), len * (1 + r)], 0 <= r < 1 (default 0: fixed).",
                     show_default=False),
    ] = None,
    burstiness: Annotated[
        float | None,
        typer.Option(min=0.0, help=_BENCH_HELP + "Gamma arrivals with shape b (CV 1/sqrt(b)); "
                     "1 (default) is Poisson.", show_default=False),
    ] = None,
    tensor_parallel_size: Annotated[
        int | None, typer.Option("--tensor-parallel-size", "-tp", min=1,
                                 help=_BENCH_HELP + "GPUs per replica (default 1).",
                                 show_default=False)
    ] = None,
    max_concurrency: Annotated[
        int | None,
        typer.Option(min=1, help=_BENCH_HELP + "at most C requests in flight (closed loop of "
                     "C clients; needs the default --request-rate inf).", show_default=False),
    ] = None,
    bands: Annotated[
        bool,
        typer.Option("--bands", help="Also give each summary metric a prediction band (low/mid/high) "
                     "and the assumption that dominates its width; writes bands.json (docs/validation.md)."),
    ] = False,
) -> None:
    """Run a scenario (a YAML file, a gallery name, or flags only) and write results and a report."""
    params = dict(locals())  # the command's parameters (first statement), for run.json
    from servesim.simulator.provenance import now_utc, scenario_digest, stamp_summary

    started_at = now_utc()
    bench = {
        "model": model, "gpu": gpu, "request_rate": request_rate, "num_prompts": num_prompts,
        "random_input_len": random_input_len, "random_output_len": random_output_len,
        "random_range_ratio": random_range_ratio, "burstiness": burstiness,
        "tensor_parallel_size": tensor_parallel_size, "max_concurrency": max_concurrency,
    }
    flag_form = any(v is not None for v in bench.values())
    overrides = list(set_ or [])
    if json_:
        # Keep stdout machine-readable: no progress bar.
        overrides.append("engine.progress=false")
    with user_errors():
        if flag_form:
            if scenario is not None:
                raise ScenarioError(
                    f"give a scenario ({scenario}) or the flag-only form (--model, --gpu, ...), "
                    "not both; to change a scenario use --set PATH=VALUE"
                )
            from servesim.simulator.scenario import scenario_from_dict

            cfg = scenario_from_dict(
                bench_scenario(**bench), overrides=overrides, seed=seed, source="servesim run"
            )
        else:
            cfg = _load(scenario, overrides, seed, quick)
    run_dir = out / cfg.name
    digest = scenario_digest(cfg.model_dump(mode="json"))
    with user_errors():
        _prepare_run_dir(run_dir)
        _write_resolved(cfg, run_dir)

    from servesim.simulator.build import run_scenario  # the engine is heavy: import on use
    from servesim.simulator.scenario import resolve_variants

    done: list[Any] = []
    written = [0]  # variants on disk
    failure: SimulatorError | None = None
    num_variants = len(resolve_variants(cfg))

    def write_partial() -> None:
        if written[0] != len(done):
            _write_partial(done, cfg, run_dir)
            stamp_summary(run_dir, digest)
            written[0] = len(done)

    def on_variant_done(result: Any) -> None:
        done.append(result)
        # After 1, 2, 4, 8 ... variants (linear in all; every variant rewritten after each
        # one was quadratic: 10,000 variants took hours). A failure writes the rest below.
        # Not after the last one: the full write follows at once (writing the results of
        # radix-mooncake's four variants twice took ~3 s of its ~8 s of writing).
        if len(done) & (len(done) - 1) == 0 and len(done) < num_variants:
            write_partial()

    try:
        results = run_scenario(cfg, on_variant_done=on_variant_done)
    except SimulatorError as exc:
        failure = exc
        results = None
        if done:
            write_partial()
    except BaseException:  # Ctrl-C, an internal error: keep every finished variant
        if done and written[0] != len(done):
            _write_partial(done, cfg, run_dir)
        raise
    if results is not None:
        results.write(run_dir)
        stamp_summary(run_dir, digest)
    _write_run_json(run_dir, digest, started_at, failure, params)
    if results is None and not done:
        # Nothing finished: only scenario.resolved.yaml and run.json are on disk.
        typer.secho(f"error: {failure}", err=True, fg="red")
        raise typer.Exit(code=2)

    if timeline:
        from servesim.simulator.timeline import write_timeline

        with user_errors():
            path = write_timeline(run_dir)
        if not json_:
            typer.echo(f"timeline: {path} (open it in https://ui.perfetto.dev)")

    from rich.console import Console

    if not no_report:
        _build_report(run_dir, Console(stderr=True))

    bands_doc = None
    if bands:
        from servesim.simulator.cli.validate import run_bands_report

        with user_errors():
            bands_doc = run_bands_report(cfg, run_dir)
    summary = _read_summary(run_dir)
    if bands_doc is not None:
        summary["bands"] = bands_doc
    if json_:
        typer.echo(json.dumps(summary, indent=2))
    elif flag_form:
        for name, variant in (summary.get("variants") or {}).items():
            typer.echo(bench_result_text(variant, max_concurrency=max_concurrency, title=name))
        typer.echo(f"results: {run_dir}")
    else:
        _print_summary(summary, cfg, Console())
        typer.echo(f"results: {run_dir}")
    if bands_doc is not None and not json_:
        from servesim.simulator.cli.validate import print_bands

        print_bands(bands_doc)
    if failure is not None:
        names = ", ".join(str(getattr(r, "name", "?")) for r in done)
        typer.secho(
            f"error: {failure} (completed variants kept in {run_dir}: {names})",
            err=True,
            fg="red",
        )
        raise typer.Exit(code=2)


def _load(scenario: Path | None, overrides: list[str], seed: int | None, quick: bool) -> ScenarioCfg:
    """Load a scenario file or gallery name; a missing one is a one-line error."""
    from servesim.simulator.gallery import gallery_names, resolve_path
    from servesim.simulator.scenario import load_scenario

    if scenario is None:
        raise ScenarioError(
            "missing SCENARIO: give a scenario YAML file, a gallery name ("
            + ", ".join(gallery_names("scenarios"))
            + ") or the flag-only form (--model M --gpu G --request-rate R ...)"
        )
    path = resolve_path(scenario, ("scenarios",))
    if not path.exists() and len(path.parts) == 1:
        raise ScenarioError(
            f"scenario {str(scenario)!r} is neither a file nor a gallery name; gallery: "
            + ", ".join(gallery_names("scenarios"))
        )
    return load_scenario(path, overrides, seed, quick=quick)


def _command_line(params: dict[str, Any]) -> list[str]:
    """The arguments after ``servesim``: the real argv under the console script, else (an
    embedding caller, ``CliRunner``) rebuilt from the command's parameters."""
    if Path(sys.argv[0]).name == "servesim":
        return sys.argv[1:]
    args = ["run"]
    for key, value in params.items():
        if key == "scenario":
            args += [str(value)] if value is not None else []
        elif value is True:
            args.append(f"--{key.rstrip('_').replace('_', '-')}")
        elif isinstance(value, list):
            args += [a for v in value for a in (f"--{key.rstrip('_')}", str(v))]
        elif value not in (None, False):
            args += [f"--{key.rstrip('_').replace('_', '-')}", str(value)]
    return args


def _write_run_json(
    run_dir: Path,
    digest: str,
    started_at: str,
    failure: SimulatorError | None,
    params: dict[str, Any],
) -> None:
    from servesim.simulator.provenance import write_run_json

    status = "ok" if failure is None else f"error: {failure}"
    write_run_json(
        run_dir, argv=_command_line(params), started_at=started_at, digest=digest, status=status
    )


# ---------------------------------------------------------------------------- flag-only form

#: vllm bench serve's defaults for the flags it shares with the flag-only form.
BENCH_DEFAULTS: dict[str, Any] = {
    "request_rate": math.inf,
    "num_prompts": 1000,
    "random_input_len": 1024,
    "random_output_len": 128,
    "random_range_ratio": 0.0,
    "burstiness": 1.0,
    "tensor_parallel_size": 1,
}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9._+-]+", "-", text.lower()).strip("-.") or "x"


def bench_scenario(**flags: Any) -> dict[str, Any]:
    """The scenario mapping of the flag-only form, as ``vllm bench serve`` would load a server.

    - ``--request-rate R``: Poisson arrivals at R/s (``--burstiness b != 1``: Gamma with
      CV ``1/sqrt(b)``, vLLM's shape parameter); ``inf`` (the default): all arrive at 0.
    - ``--max-concurrency C`` with ``--request-rate inf``: C closed-loop clients with no
      think time, i.e. at most C requests in flight, each sent when one finishes.
      With a finite rate vLLM also caps the requests in flight at the *client*, which the
      simulator does not model: an error says so.
    - ``--random-input-len / --random-output-len L`` with ``--random-range-ratio r``: fixed
      lengths (r = 0) or uniform in ``[int(L * (1 - r)), int(L * (1 + r))]``.
    - ``--tensor-parallel-size N``: one replica of N GPUs.

    Everything else takes the scenario defaults (paged KV, vllm scheduler, fp16).

    Raises:
        ScenarioError: --model or --gpu missing, r >= 1, or --max-concurrency with a finite
            --request-rate.
    """
    f = {k: (BENCH_DEFAULTS.get(k) if v is None else v) for k, v in flags.items()}
    missing = [f"--{k}" for k in ("model", "gpu") if not f.get(k)]
    if missing:
        raise ScenarioError(
            f"the flag-only form needs {' and '.join(missing)} "
            "(e.g. --model llama-3.1-8b --gpu h100-sxm); see `servesim list models|gpus`"
        )
    ratio = float(f["random_range_ratio"])
    if not 0.0 <= ratio < 1.0:
        raise ScenarioError(f"--random-range-ratio must be in [0, 1), got {ratio:g}")
    rate = float(f["request_rate"])
    if f["max_concurrency"] is not None:
        if math.isfinite(rate):
            raise ScenarioError(
                f"--max-concurrency {f['max_concurrency']} with --request-rate {rate:g}: a "
                "client-side cap on requests in flight at a finite rate is not modelled; use "
                "--request-rate inf (C closed-loop clients) or a scenario with "
                "scheduler.max_num_seqs (a server-side cap)"
            )
        arrivals: dict[str, Any] = {"process": "closed_loop", "num_clients": f["max_concurrency"]}
    elif math.isinf(rate):
        arrivals = {"process": "offline"}
    elif rate <= 0:
        raise ScenarioError(f"--request-rate must be > 0 or inf, got {rate:g}")
    elif float(f["burstiness"]) == 1.0:
        arrivals = {"process": "poisson", "rate_per_s": rate}
    else:
        b = float(f["burstiness"])
        if b <= 0:
            raise ScenarioError(f"--burstiness must be > 0, got {b:g}")
        arrivals = {"process": "gamma", "rate_per_s": rate, "cv": 1.0 / math.sqrt(b)}

    def length(tokens: int) -> dict[str, Any]:
        if ratio == 0.0:
            return {"dist": "fixed", "tokens": int(tokens)}
        return {"dist": "uniform", "min_tokens": max(1, int(tokens * (1 - ratio))),
                "max_tokens": max(1, int(tokens * (1 + ratio)))}

    return {
        "name": f"bench-{_slug(str(f['model']).split('/')[-1])}-{_slug(str(f['gpu']))}",
        "description": "servesim run " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in flags.items() if v is not None
        ),
        "hardware": {"gpu": f["gpu"], "tensor_parallel": int(f["tensor_parallel_size"])},
        "model": {"name": f["model"]},
        "workload": {
            "num_requests": int(f["num_prompts"]),
            "arrivals": arrivals,
            "lengths": {"prompt": length(f["random_input_len"]),
                        "output": length(f["random_output_len"])},
        },
    }


def bench_result_text(
    s: dict[str, Any], *, max_concurrency: int | None = None, title: str = ""
) -> str:
    """vllm bench serve's "Serving Benchmark Result" block, from one variant's summary."""

    def num(key: str, digits: int = 2) -> str:
        v = s.get(key)
        if not isinstance(v, int | float) or isinstance(v, bool):
            return "-"
        return f"{v:<10.{digits}f}" if digits else f"{int(v):<10}"

    lines = ["{s:{c}^50}".format(s=" Serving Benchmark Result ", c="=")]
    if title:
        lines.append(f"{'Configuration:':<40} {title}")
    lines.append(f"{'Successful requests:':<40} {num('completed', 0)}")
    if max_concurrency is not None:
        lines.append(f"{'Maximum request concurrency:':<40} {max_concurrency}")
    lines += [
        f"{'Benchmark duration (s):':<40} {num('duration')}",
        f"{'Total input tokens:':<40} {num('total_input_tokens', 0)}",
        f"{'Total generated tokens:':<40} {num('total_output_tokens', 0)}",
        f"{'Request throughput (req/s):':<40} {num('request_throughput')}",
        f"{'Output token throughput (tok/s):':<40} {num('output_throughput')}",
        f"{'Total Token throughput (tok/s):':<40} {num('total_token_throughput')}",
    ]
    for key, head, name in (("ttft", "Time to First Token", "TTFT"),
                            ("tpot", "Time per Output Token (excl. 1st token)", "TPOT"),
                            ("itl", "Inter-token Latency", "ITL")):
        lines.append("{s:{c}^50}".format(s=head, c="-"))
        lines.append(f"{f'Mean {name} (ms):':<40} {num(f'mean_{key}_ms')}")
        lines.append(f"{f'Median {name} (ms):':<40} {num(f'median_{key}_ms')}")
        lines.append(f"{f'P99 {name} (ms):':<40} {num(f'p99_{key}_ms')}")
    lines.append("=" * 50)
    return "\n".join(line.rstrip() for line in lines)


def _prepare_run_dir(run_dir: Path) -> None:
    from servesim.hwmodels.safeio import prepare_out_dir

    # Confined outputs (#15): --out must be a directory; the run directory must not be a
    # link out of it, and no file in it is written through a link (links are removed).
    prepare_out_dir(run_dir.parent, error=ScenarioError)
    if run_dir.is_symlink():
        raise ScenarioError(f"{run_dir} is a symbolic link; servesim writes only inside the "
                            "output directory, never through a link")
    if run_dir.exists() and not run_dir.is_dir():
        raise ScenarioError(f"{run_dir} exists and is not a directory")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ScenarioError(f"cannot create the output directory {str(run_dir)!r}: {exc}") from None
    for entry in [run_dir, *(p for p in run_dir.iterdir() if p.is_dir() and not p.is_symlink())]:
        for child in entry.iterdir():
            if child.is_symlink():
                child.unlink()
    # Results of an earlier run of the same scenario would mix with this one's.
    for name in ("summary.json", "run.json", "timeline.json", "requests.parquet", "steps.parquet"):
        (run_dir / name).unlink(missing_ok=True)


def _write_resolved(cfg: ScenarioCfg, run_dir: Path) -> None:
    """Write the scenario with every default filled in (it loads back unchanged)."""
    import yaml

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
    from rich.table import Table

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
    scenario: Annotated[
        Path,
        typer.Argument(help="Scenario YAML file or gallery name (`servesim gallery`).",
                       show_default=False),
    ],
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
    import yaml
    from rich.console import Console

    from servesim.simulator.scenario import resolve_variants

    with user_errors():
        cfg = _load(scenario, list(set_ or []), seed, quick)
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
    from servesim.simulator.scenario import scenario_json_schema

    typer.echo(json.dumps(scenario_json_schema(), indent=2))
