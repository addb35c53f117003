"""Result files or DataFrames in, figures and Markdown/HTML reports out.

Never imports the simulator: everything here reads a run directory (``summary.json``,
``requests.parquet``, ``steps.parquet``) or DataFrames in that schema. See ``docs/reports.md``.

Entry points:
    build_report(run_dir) -> {"report_md": ..., "report_html": ..., "fig_<name>": ...}
    plan_report.build_plan_report(out, table=, curves=, plan=) -> {"report.md": text, ...}
    plan_report.plot_latency_vs_rate(df, x, y, hue, slo, path)
    plan_report.plot_pareto(df, x, y, label_col, path)

Both reports render through one template engine (Jinja2, ``templates/``) and one stylesheet;
``report.html`` draws interactive figures with the plotly.js it embeds (offline, no server).
"""

from __future__ import annotations

from servesim.reports._data import RunData, load_run, run_from_frames
from servesim.reports.report import build_report

__all__ = ["RunData", "build_report", "load_run", "run_from_frames"]
