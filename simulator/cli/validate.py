"""``servesim validate``: the shipped published cases, prediction vs reference.

Runs every case of ``simulator/validation/data/cases.yaml`` (or ``--cases FILE``) and prints
the prediction, the published reference and the error per case, then the median and the
worst |error|. ``--bands`` adds each case's low / high band, whether it covers the reference
and which assumption dominates its width, and the coverage. ``--json`` prints::

    {"cases": [{"id", "source", "where", "stack", "metric", "unit", "reference",
                "predicted", "error_frac", ["low", "high", "covered", "dominant"]}, ...],
     "num_cases", "median_abs_error_frac", "worst": {"id", "error_frac"},
     "within_10pct", ["coverage_frac"], "quick", "profile"}
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer


def validation_summary(df: Any) -> dict[str, Any]:
    """Median / worst |error|, cases within 10 %, and band coverage when present."""
    err = df["error_frac"].abs()
    worst = int(err.idxmax())
    out: dict[str, Any] = {
        "num_cases": len(df),
        "median_abs_error_frac": float(err.median()),
        "worst": {"id": str(df.loc[worst, "id"]), "error_frac": float(df.loc[worst, "error_frac"])},
        "within_10pct": int((err <= 0.10).sum()),
    }
    if "covered" in df:
        out["coverage_frac"] = float(df["covered"].mean())
    return out


def register(app: typer.Typer) -> None:
    """Add ``validate`` to the ``servesim`` app."""

    @app.command("validate")
    def validate(
        quick: Annotated[bool, typer.Option("--quick/--full", help="--quick: one round of requests per client (seconds); --full (default): two.")] = False,
        bands: Annotated[bool, typer.Option("--bands", help="Add each case's prediction band (low/high), coverage and the assumption that dominates the width.")] = False,
        profile: Annotated[Path | None, typer.Option("--profile", help="Stack profile (e.g. from servesim calibrate --from) every case runs under instead of its own stack.")] = None,
        cases_file: Annotated[Path | None, typer.Option("--cases", help="Another case table (same format as the shipped one).")] = None,
        only: Annotated[list[str] | None, typer.Option("--only", help="Run only these case ids (repeatable).")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of the table.")] = False,
    ) -> None:
        """Run the shipped published end-to-end cases: prediction, reference and error per case."""
        from servesim.simulator.cli.compare import json_safe, user_errors

        with user_errors():
            from servesim.simulator.errors import ScenarioError
            from servesim.simulator.validation.cases import load_cases, run_cases
            from servesim.simulator.validation.stack import check_profile

            prof = check_profile(profile) if profile is not None else None
            cases = load_cases(cases_file)
            if only:
                known = {c.id for c in cases}
                missing = sorted(set(only) - known)
                if missing:
                    raise ScenarioError(f"--only: unknown case id(s) {missing}; see servesim validate --json for the ids")
                cases = [c for c in cases if c.id in set(only)]
            df = run_cases(cases, quick=quick, bands=bands, profile=prof)
        summary = validation_summary(df)
        if as_json:
            doc = {"cases": df.to_dict(orient="records"), **summary, "quick": quick,
                   "profile": None if prof is None else str(prof)}
            typer.echo(json.dumps(json_safe(doc), indent=2))
            return
        _print(df, summary, bands=bands)


def _fmt(value: float, unit: str) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:,.1f}" if unit == "ms" or value < 1000 else f"{value:,.0f}"


def _print(df: Any, summary: dict[str, Any], *, bands: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(highlight=False, width=None if Console().is_terminal else 160)
    table = Table(title="servesim validate: published end-to-end measurements (docs/validation.md)")
    cols = ["case", "metric", "unit", "reference", "predicted", "error"]
    if bands:
        cols += ["band low", "band high", "covers", "widest assumption"]
    for col in cols:
        table.add_column(col, justify="left" if col in ("case", "metric", "unit", "widest assumption") else "right")
    for row in df.to_dict(orient="records"):
        cells = [row["id"], row["metric"], row["unit"], _fmt(row["reference"], row["unit"]),
                 _fmt(row["predicted"], row["unit"]), f"{100 * row['error_frac']:+.1f}%"]
        if bands:
            cells += [_fmt(row["low"], row["unit"]), _fmt(row["high"], row["unit"]),
                      "yes" if row["covered"] else "NO", row["dominant"]]
        table.add_row(*cells)
    con.print(table)
    w = summary["worst"]
    con.print(f"{summary['num_cases']} cases: median |error| {100 * summary['median_abs_error_frac']:.1f}%, "
              f"worst {100 * abs(w['error_frac']):.1f}% ({w['id']}), "
              f"{summary['within_10pct']} within 10%")
    if bands:
        con.print(f"bands cover {100 * summary['coverage_frac']:.0f}% of the cases")


# ---------------------------------------------------------------------------- run / plan bands


def run_bands_report(cfg: Any, run_dir: Path | None = None) -> dict[str, Any]:
    """Bands of every variant's summary metrics (``servesim run --bands``); written to
    ``<run_dir>/bands.json`` when a directory is given::

        {variant: {"grade": "...", "metrics": {metric: {"low", "mid", "high", "dominant",
                                                         "contributions": {...}}}}}
    """
    from servesim.simulator.cli.compare import json_safe
    from servesim.simulator.scenario import resolve_variants
    from servesim.simulator.validation.bands import run_bands

    doc: dict[str, Any] = {}
    for name, variant_cfg in resolve_variants(cfg):
        found, grade = run_bands(variant_cfg)
        doc[name] = {"grade": grade, "metrics": {k: b.to_dict() for k, b in found.items()}}
    doc = json_safe(doc)
    if run_dir is not None:
        (Path(run_dir) / "bands.json").write_text(json.dumps(doc, indent=2))
    return doc


def print_bands(doc: dict[str, Any]) -> None:
    """Print :func:`run_bands_report`'s document as one table per variant."""
    from rich.console import Console
    from rich.table import Table

    con = Console(highlight=False)
    for name, entry in doc.items():
        table = Table(title=f"prediction bands: {name} (GPU efficiency {entry['grade']})")
        for col in ("metric", "low", "mid", "high", "widest assumption"):
            table.add_column(col, justify="left" if col in ("metric", "widest assumption") else "right")
        for metric, b in entry["metrics"].items():
            table.add_row(metric, *(f"{b[k]:,.4g}" if b[k] is not None else "n/a" for k in ("low", "mid", "high")),
                          b["dominant"])
        con.print(table)


def print_plan_bands(df: Any) -> None:
    """Print the planner's ranges (:func:`simulator.validation.bands.plan_bands`)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="prediction bands of the planner's answer (docs/validation.md)")
    for col in ("#", "candidate", "max req/s/replica (low-mid-high)", "GPUs (low-mid-high)", "widest assumption"):
        table.add_column(col)
    for r in df.to_dict(orient="records"):
        table.add_row(str(r["rank"]), str(r["label"]),
                      f"{r['max_rate_low']:.3g} - {r['max_rate_mid']:.3g} - {r['max_rate_high']:.3g}",
                      f"{r['gpus_low']} - {r['gpus_mid']} - {r['gpus_high']}", str(r["dominant"]))
    Console(highlight=False).print(table)
