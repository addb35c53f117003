"""Report speed: building ``report.md`` + ``report.html`` + the PNGs of the Azure-hour run.

The Azure-hour run is ``scenarios/gpu-comparison.yaml`` on the full Azure LLM inference trace
2023 (conversation; 19,366 requests, three variants, ~240k steps). Issue 14 measured its report
at 3.3 s of the run's 5.9 s; the target is <= 1 s for the whole report (``report.md`` with its
six PNG figures, and ``report.html``), warm.

Prints, for a fresh process: the first build (what ``servesim run`` pays: it builds once),
then the median of ``--repeat`` further builds, each split into its phases (read the run,
bin the timelines, draw the PNGs, build the interactive figures and render both templates),
with the load average before and after.

A noisy shared machine moves absolute times, so the headline is a ratio measured in the same
process: the report code of each ``--baseline-ref`` (git revisions, extracted into a temporary
directory and imported under another name) builds the same run, alternating with the current
code, and the median of the per-pair ratios is printed. The defaults are ``9310bb5`` (the
report code before issue 14) and ``166113b`` (before the drawing speed-ups that brought the
whole report under 1 s). Also printed: the build against reading the run's Parquet files (the
floor) and against a bare one-line matplotlib PNG.

    python benchmarks/bench_report.py                    # simulates the Azure hour first
    python benchmarks/bench_report.py --run-dir out/gpu-comparison   # an existing run
    python benchmarks/bench_report.py --repeat 5
    python benchmarks/bench_report.py --baseline-ref none      # skip the old code
    python benchmarks/bench_report.py --baseline-ref 166113b   # one baseline
    python benchmarks/bench_report.py --calls                  # + Python calls, old vs new

Without ``--run-dir`` the run needs ../shared/traces/azure2023 (it takes ~20-30 s to simulate;
the simulation is not timed).
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AZURE_CONV = ROOT.parent / "shared" / "traces" / "azure2023" / "AzureLLMInferenceTrace_conv.csv"


def simulate_azure_hour(run_dir: Path) -> Path:
    """Run scenarios/gpu-comparison.yaml on the full trace into ``run_dir`` (not timed)."""
    import servesim as ss

    if not AZURE_CONV.is_file():
        sys.exit(f"bench_report: the full trace {AZURE_CONV} is missing; pass --run-dir")
    results = ss.run(ROOT / "scenarios" / "gpu-comparison.yaml",
                     overrides={"workload.trace.path": str(AZURE_CONV)})  # fmt: skip
    results.write(run_dir)
    return run_dir


def bare_figure_s(path: Path) -> float:
    """Wall time of the simplest static figure: one line of 200 points on one axes, saved as
    PNG by matplotlib itself (``Figure.savefig``, none of the report's own drawing code, so
    that it stays a fixed yardstick however that code changes)."""
    import numpy as np
    from matplotlib.figure import Figure

    t0 = time.perf_counter()
    fig = Figure(figsize=(8.0, 4.5), dpi=100)
    ax = fig.add_subplot()
    ax.plot(np.arange(200.0), np.sin(np.arange(200.0) / 10))
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    fig.savefig(path, format="png")
    return time.perf_counter() - t0


def load_baseline(ref: str, into: Path) -> object:
    """The ``report`` module of the report code at git revision ``ref``, extracted into
    ``into`` and imported from there.

    Before the one-package layout the code was the top-level package ``reports`` and is
    imported as such; from then on it imports itself as ``servesim.reports``, which is
    rewritten to a package name of its own so that it does not shadow the current code.
    """
    names = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "-r", "--name-only", ref, "reports/"],
                           check=True, capture_output=True, text=True).stdout.split()  # fmt: skip
    git_show = ["git", "-C", str(ROOT), "show"]
    blobs = {name: subprocess.run([*git_show, f"{ref}:{name}"], check=True, capture_output=True).stdout
             for name in names}  # fmt: skip
    packaged = any(b"servesim.reports" in blob for blob in blobs.values())
    package = f"_reports_{ref}" if packaged else "reports"
    for name, blob in blobs.items():
        target = into / package / Path(name).relative_to("reports")
        target.parent.mkdir(parents=True, exist_ok=True)
        if packaged and name.endswith(".py"):
            blob = blob.replace(b"servesim.reports", package.encode())
        target.write_bytes(blob)
    sys.path.insert(0, str(into))
    return importlib.import_module(f"{package}.report")


def build_phases(run_dir: Path, out_dir: Path) -> dict[str, float]:
    """One report build, timed phase by phase (the same steps as ``build_report``)."""
    from servesim.reports._data import load_run
    from servesim.reports._interactive import run_figure_specs
    from servesim.reports._render import figure_json, render
    from servesim.reports._series import compute_series
    from servesim.reports._style import save_figure
    from servesim.reports.figures import run_figure_drawers
    from servesim.reports.report import FIGURE_TEXT, FigureRef, report_context, young_gc_only

    t: dict[str, float] = {}
    with young_gc_only():  # as build_report does
        t0 = time.perf_counter()
        run = load_run(run_dir)
        t1 = time.perf_counter()
        series = compute_series(run)
        t2 = time.perf_counter()
        pngs = {}
        for key, draw in run_figure_drawers(run, series).items():
            fig = draw()
            if fig is not None:
                pngs[key] = save_figure(fig, out_dir / f"fig_{key}.png")
        t3 = time.perf_counter()
        specs = run_figure_specs(run, series, list(pngs))
        context = report_context(run)
        md = render("run.md.j2", **context, missing_figures=[],
                    figures=[FigureRef(k, *FIGURE_TEXT[k], png=p.name) for k, p in pngs.items()])  # fmt: skip
        html = render("run.html.j2", **context, missing_figures=[],
                      figures=[FigureRef(k, *FIGURE_TEXT[k], json=figure_json(s)) for k, s in specs.items()])  # fmt: skip
        (out_dir / "report.md").write_text(md, encoding="utf-8")
        (out_dir / "report.html").write_text(html, encoding="utf-8")
        t4 = time.perf_counter()
    t["read run"] = t1 - t0
    t["bin timelines"] = t2 - t1
    t[f"draw {len(pngs)} PNGs"] = t3 - t2
    t["interactive + templates"] = t4 - t3
    t["total"] = t4 - t0
    return t


#: What each default baseline is (printed beside its ratio).
BASELINES = {
    "9310bb5": "report code before #14",
    "166113b": "before the drawing speed-ups",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, help="an existing run directory")
    parser.add_argument("--repeat", type=int, default=3, help="warm builds after the first")
    parser.add_argument("--baseline-ref", default=",".join(BASELINES),
                        help="comma-separated git revisions of old report code to compare "
                             "with, or 'none'")  # fmt: skip
    parser.add_argument("--calls", action="store_true",
                        help="also count Python function calls per build, old and new")
    args = parser.parse_args()
    repeat = max(1, args.repeat)
    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        run_dir = args.run_dir or simulate_azure_hour(tmp_path / "run")
        out = tmp_path / "report"
        out.mkdir()
        t_import = time.perf_counter()
        from servesim.reports.report import build_report

        t_import = time.perf_counter() - t_import
        t0 = time.perf_counter()
        paths = build_report(run_dir, out_dir=out)
        first = time.perf_counter() - t0
        warm = [build_phases(run_dir, out) for _ in range(repeat)]
        full, full_cpu = [], []
        for _ in range(repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            build_report(run_dir, out_dir=out)
            full.append(time.perf_counter() - t0)
            full_cpu.append(time.process_time() - c0)
        html_only = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            build_report(run_dir, out_dir=tmp_path / "html-only", formats=("html",))
            html_only.append(time.perf_counter() - t0)
        floor = min(_read_s(run_dir) for _ in range(3))
        bare = min(bare_figure_s(tmp_path / "bare.png") for _ in range(3))

        refs = [] if args.baseline_ref == "none" else args.baseline_ref.split(",")
        for ref in refs:
            old = load_baseline(ref, tmp_path / f"baseline-{ref}")
            old_build = old.build_report  # type: ignore[attr-defined]
            old_out, new_out = tmp_path / f"old-{ref}", tmp_path / "new"
            old_out.mkdir()
            new_out.mkdir(exist_ok=True)
            old_build(run_dir, out_dir=old_out)  # warm
            pairs, cpu = [], []
            for i in range(repeat):
                runs = {}
                order = (("old", old_build, old_out), ("new", build_report, new_out))
                for name, fn, out_dir in order if i % 2 == 0 else order[::-1]:
                    t0, c0 = time.perf_counter(), time.process_time()
                    fn(run_dir, out_dir=out_dir)
                    runs[name] = (time.perf_counter() - t0, time.process_time() - c0)
                pairs.append((runs["old"][0], runs["new"][0]))
                cpu.append((runs["old"][1], runs["new"][1]))
            what_ref = BASELINES.get(ref, "old report code")
            if args.calls:
                # Python function calls: a deterministic proxy for the interpreter-bound part
                # of the work, immune to the machine's load (numpy, Agg and zlib are not counted).
                import cProfile
                import pstats

                counts = []
                for fn, out_dir in ((old_build, old_out), (build_report, new_out)):
                    prof = cProfile.Profile()
                    prof.enable()
                    fn(run_dir, out_dir=out_dir)
                    prof.disable()
                    counts.append(pstats.Stats(prof).total_calls)  # type: ignore[attr-defined]
                print(f"Python function calls per build, {ref} ({what_ref}) vs now: "
                      f"old {counts[0]:,}, new {counts[1]:,} ({counts[0] / counts[1]:.1f}x fewer)")  # fmt: skip
            for what, xs in (("wall", pairs), ("CPU", cpu)):
                print(f"baseline {ref} ({what_ref}) vs now, same process, {len(xs)} alternating "
                      f"pairs, {what} time: old median {statistics.median(o for o, _ in xs):.2f} s, "
                      f"new median {statistics.median(n for _, n in xs):.2f} s, new/old "
                      f"{statistics.median(n / o for o, n in xs):.2f} "
                      f"({statistics.median(o / n for o, n in xs):.1f}x faster)")  # fmt: skip
        html_mib = paths["report_html"].stat().st_size / 2**20
        png_kib = sum(p.stat().st_size for k, p in paths.items() if k.startswith("fig_")) / 1024
        print(f"run directory: {run_dir}")
        print(f"import servesim.reports.report: {t_import:.2f} s (once per process)")
        print(f"first build_report (what `servesim run` pays): {first:.2f} s")
        print(f"warm build_report (report.md + {len(paths) - 2} PNGs + report.html), "
              f"{len(full)} builds: median {statistics.median(full):.3f} s wall "
              f"(min {min(full):.3f} s), median {statistics.median(full_cpu):.3f} s CPU")  # fmt: skip
        print(f"warm builds by phase, median of {len(warm)}:")
        for phase in warm[0]:
            print(f"  {phase:<26} {statistics.median(w[phase] for w in warm):6.3f} s")
        total = statistics.median(full)
        print(f"report.html alone (formats=('html',), no PNGs), median of {len(html_only)}: "
              f"{statistics.median(html_only):.3f} s")
        print(f"same-process ratios: first build = {first / floor:.1f} x reading the run "
              f"({floor:.3f} s), = {first / bare:.1f} x a bare one-line PNG figure ({bare:.3f} s); "
              f"warm build = {total / floor:.1f} x reading, {total / bare:.1f} x bare figure")  # fmt: skip
        print(f"outputs: report.html {html_mib:.1f} MiB (plotly.js is 4.6 MiB of it), "
              f"PNGs {png_kib:.0f} KiB")
    print(f"load average (1 min): {load_before:.2f} before, {os.getloadavg()[0]:.2f} after "
          f"on {os.cpu_count()} CPUs")  # fmt: skip


def _read_s(run_dir: Path) -> float:
    import pandas as pd

    t0 = time.perf_counter()
    for name in ("requests.parquet", "steps.parquet"):
        pd.read_parquet(Path(run_dir) / name)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
