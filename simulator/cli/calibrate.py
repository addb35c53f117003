"""``servesim calibrate``: two fits behind one command.

* ``servesim calibrate --from FILE... --scenario S.yaml --out profile.yaml`` fits the
  serving-stack parameters (host overhead per step, per-request overhead, compute and
  bandwidth efficiency factors; :mod:`simulator.validation.stack`) to the user's benchmark
  files (vLLM, SGLang, GenAI-Perf, AIPerf), reports the fit on a held-out part of the runs and
  writes a stack profile usable as ``engine.profile: profile.yaml`` in any scenario (and as
  ``--profile`` for ``compare`` / ``validate``), plus ``profile.gpu.yaml`` (the GPU's figures
  times the fitted efficiency scales, usable as ``hardware.gpu``) when those moved.
* ``servesim calibrate`` without ``--from`` is the roofline GEMM error table it always was
  (``--refit`` / ``--write`` re-fit the kernel parameters); the code lives with ``roofline``.

NOTE(layout): one command, two inputs: ``--from`` is what a user brings (their measurements),
no ``--from`` is the project's own kernel data. Keeping the old behaviour as the default
keeps every existing invocation working.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add ``calibrate`` to the ``servesim`` app."""

    @app.command("calibrate")
    def calibrate(
        files: Annotated[list[Path] | None, typer.Argument(help="More benchmark files (after --from FILE).", show_default=False)] = None,
        from_: Annotated[list[Path] | None, typer.Option("--from", help="Benchmark result file(s) to fit the serving-stack profile to: --from a.json b.jsonl ...")] = None,
        scenario: Annotated[Path | None, typer.Option("--scenario", "-s", help="Scenario YAML of the measured deployment (with --from).")] = None,
        out: Annotated[Path | None, typer.Option("--out", "-o", help="Where to write the fitted profile YAML (with --from).")] = None,
        variant: Annotated[str | None, typer.Option("--variant", help="Scenario variant, if it has several.")] = None,
        max_requests: Annotated[int | None, typer.Option("--max-requests", min=1, help="Replay at most this many requests per run (faster fit).")] = None,
        max_evals: Annotated[int, typer.Option("--max-evals", min=1, max=2000, help="Most loss evaluations of the search.")] = 120,
        refit: Annotated[bool, typer.Option("--refit", help="GEMM table: re-fit on the 7B files (~1 min) instead of using the stored parameters.")] = False,
        write: Annotated[bool, typer.Option("--write", help="GEMM table: with --refit, store the parameters in hwmodels/data/roofline_calibration.json.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Fit a serving-stack profile to benchmark files (--from), or print the GEMM error table."""
        paths = [*(from_ or []), *(files or [])]
        if not paths:
            if scenario is not None or out is not None:
                _usage("--scenario and --out go with --from FILE ...")
            _gemm_table(refit=refit, write=write, as_json=as_json)
            return
        if refit or write:
            _usage("--refit/--write re-fit the GEMM kernels and do not take --from files")
        if scenario is None:
            _usage("--from needs --scenario S.yaml (the deployment the files were measured on)")
        if out is None:
            _usage("--from needs --out profile.yaml (where to write the fitted profile)")
        from servesim.simulator.cli.compare import json_safe, load_deployment, user_errors

        with user_errors():
            from servesim.simulator.validation.fit import fit_stack
            from servesim.simulator.validation.readers import read_results
            from servesim.simulator.validation.stack import write_profile

            cfg = load_deployment(scenario, [], variant)
            runs = [r for p in paths for r in read_results(p)]
            echo = None if as_json else (lambda line: typer.echo(line, err=True))
            if echo is not None:
                echo(f"fitting {len(runs)} run(s) from {len(paths)} file(s) on {cfg.name} ...")
            result = fit_stack(runs, cfg, max_requests=max_requests, max_evals=max_evals, progress=echo)
            out.parent.mkdir(parents=True, exist_ok=True)
            written = write_profile(out, result.params, scenario=cfg.model_dump(mode="json"),
                                    fit_report=result.report())
        doc = {"profile": str(out), "files": [str(p) for p in written],
               "stack_fit": result.params.to_dict(), "fit": result.report(),
               "held_out": [c.to_dict() for c in result.held_out]}
        if as_json:
            typer.echo(json.dumps(json_safe(doc), indent=2))
            return
        _print_fit(result, out)
        for path in written[1:]:
            typer.echo(f"GPU efficiency scales written to {path} (use it as hardware.gpu)")


def _usage(message: str) -> None:
    typer.secho(f"error: {message}", err=True, fg="red")
    raise typer.Exit(code=2)


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.1f}%"


def _print_fit(result, out: Path) -> None:  # type: ignore[no-untyped-def]
    from servesim.simulator.cli.compare import print_comparison

    p = result.params
    typer.echo(f"\nfitted stack parameters (written to {out}):")
    typer.echo(f"  step_overhead_s         {p.step_overhead_s * 1e3:.2f} ms   (start {result.start.step_overhead_s * 1e3:.2f} ms)")
    typer.echo(f"  per_request_overhead_s  {p.per_request_overhead_s * 1e3:.1f} ms")
    typer.echo(f"  compute_eff_scale       x{p.compute_eff_scale:.3f}")
    typer.echo(f"  bandwidth_eff_scale     x{p.bandwidth_eff_scale:.3f}")
    typer.echo(f"fit: {len(result.fitted)} run(s), median |error| {_pct(result.fit_median_abs_error_frac)}")
    if result.held_out:
        typer.echo(f"held out: {len(result.held_out)} run(s), median |error| "
                   f"{_pct(result.held_out_median_abs_error_frac)} with the fit "
                   f"({_pct(result.held_out_before_median_abs_error_frac)} before)\n")
        for c in result.held_out:
            print_comparison(c, title=f"held out: {c.result.label} ({c.result.load_text})")
    for note in result.notes:
        typer.echo(f"note: {note}")


def _gemm_table(*, refit: bool, write: bool, as_json: bool) -> None:
    """The roofline GEMM error table (the command ``roofline``'s module defines it)."""
    import importlib

    sub = typer.Typer(add_completion=False, rich_markup_mode=None)
    importlib.import_module("servesim.simulator.cli.roofline").register(sub)
    command = typer.main.get_group(sub).get_command(None, "calibrate")  # type: ignore[arg-type]
    command.callback(refit=refit, write=write, as_json=as_json)
