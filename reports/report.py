"""Run directory in, ``report.md`` + ``report.html`` + ``fig_*.png`` out.

The report's content is assembled once (:func:`report_context`: banners, the interpretation,
tables of :class:`~servesim.reports._format.Cell`) and rendered by two Jinja2 templates:
``templates/run.md.j2`` (figures as the sibling PNGs, user text escaped) and
``templates/run.html.j2`` (standalone: interactive plotly figures, sortable tables, one
stylesheet shared with the plan report). Output is deterministic: no timestamps, no absolute
paths, PNGs saved without a date stamp; the footer names the servesim version.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servesim.reports._data import RunData, load_run
from servesim.reports._format import (
    Table,
    cell,
    fmt_auto,
    fmt_gib,
    fmt_int,
    fmt_ms,
    fmt_num,
    fmt_pct,
    num,
)
from servesim.reports._interactive import run_figure_specs
from servesim.reports._load import (
    BOUND_LABEL,
    Load,
    binding_constraint,
    dominant_bound,
    kv_bound,
    kv_headroom,
    measure_load,
    overload_banner,
)
from servesim.reports._render import figure_json, render
from servesim.reports._series import compute_series, prefix_variants, run_slo
from servesim.reports._style import KV_SUMMARY_KEYS, save_figure
from servesim.reports.figures import run_figure_drawers

# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------

_CONFIG_KEYS: tuple[tuple[str, str], ...] = (
    ("gpu", "GPU"),
    ("tensor_parallel", "tensor parallel"),
    ("pipeline_parallel", "pipeline parallel"),
    ("replicas", "replicas"),
    ("num_gpus", "GPUs"),
    ("model", "model"),
    ("quantization", "weight quantization"),
    ("kv_cache_dtype", "KV cache dtype"),
    ("kv_manager", "KV manager"),
    ("block_size_tokens", "block size (tokens)"),
    ("reservation", "reservation"),
    ("scheduler", "scheduler"),
    ("max_num_seqs", "max_num_seqs"),
    ("max_num_batched_tokens", "max_num_batched_tokens"),
    ("router", "router"),
    ("cost_model", "cost model"),
)


def _config_value(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and x == round(x):
        return f"{round(x):,d}"
    if isinstance(x, int) and not isinstance(x, bool):
        return f"{x:,d}" if abs(x) >= 10_000 else str(x)
    return str(x)


def config_table(run: RunData) -> Table:
    """Settings per variant (rows: settings, columns: variants)."""
    rows = []
    for key, label in _CONFIG_KEYS:
        vals = [run.summaries[v].get("config", {}).get(key) for v in run.variants]
        if all(x is None for x in vals):
            continue
        rows.append((cell(label), *(cell(_config_value(x)) for x in vals)))
    return Table(("setting", *run.variants), tuple(rows))


def memory_table(run: RunData) -> Table:
    """The per-GPU memory budget per variant."""
    items = (
        ("HBM", "hbm_bytes", fmt_gib),
        ("usable (gpu_memory_utilization x HBM)", "usable_bytes", fmt_gib),
        ("weights", "weight_bytes", fmt_gib),
        ("activations (largest step)", "activation_bytes", fmt_gib),
        ("reserve (CUDA graphs, NCCL, slack)", "reserve_bytes", fmt_gib),
        ("KV cache", "kv_bytes", fmt_gib),
        ("KV bytes per token", "kv_bytes_per_token", fmt_int),
        ("KV capacity (tokens)", "kv_capacity_tokens", fmt_int),
    )
    rows = []
    for label, key, fmt in items:
        vals = [run.summaries[v].get("memory_budget", {}).get(key) for v in run.variants]
        rows.append((cell(label), *(cell(fmt(x), x) for x in vals)))
    return Table(("per GPU", *run.variants), tuple(rows))


def latency_table(run: RunData, loads: Mapping[str, Load | None]) -> Table:
    """Per variant: completed, offered and served rates, throughput, latency percentiles."""
    header = (
        "variant", "completed", "offered (req/s)", "sustained (req/s)", "output tok/s",
        "TTFT p50", "TTFT p99", "TPOT p50", "TPOT p99", "E2EL p50", "E2EL p99",
        "goodput (req/s)",
    )  # fmt: skip
    rows = []
    for v in run.variants:
        s, ld = run.summaries[v], loads[v]
        rows.append((
            cell(v),
            cell(f"{fmt_int(s.get('completed'))} / {fmt_int(s.get('num_requests'))}",
                 s.get("completed")),
            cell(fmt_auto(ld.offered_per_s) if ld else "n/a", ld.offered_per_s if ld else None),
            cell(fmt_auto(ld.sustained_per_s) if ld else "n/a",
                 ld.sustained_per_s if ld else None),
            cell(fmt_int(s.get("output_throughput")), s.get("output_throughput")),
            *(cell(fmt_ms(s.get(k)), s.get(k)) for k in (
                "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "p99_tpot_ms",
                "median_e2el_ms", "p99_e2el_ms")),
            cell(fmt_auto(s.get("request_goodput")), s.get("request_goodput")),
        ))  # fmt: skip
    return Table(header, tuple(rows))


def memory_sched_table(run: RunData) -> Table:
    """Per variant: mean batch, the time-weighted KV split, prefix hits, preemptions."""
    header = (
        "variant", "mean batch", "KV token states", "reserved", "internal frag",
        "external frag", "cached", "free", "prefix hit rate", "preemptions", "rejected",
    )  # fmt: skip
    with_prefix = set(prefix_variants(run))
    rows = []
    for v in run.variants:
        s = run.summaries[v]
        rows.append((
            cell(v),
            cell(fmt_num(s.get("mean_batch_size")), s.get("mean_batch_size")),
            *(cell(fmt_pct(s.get(k)), s.get(k)) for k in KV_SUMMARY_KEYS),
            cell(fmt_pct(s.get("prefix_hit_rate")), s.get("prefix_hit_rate"))
            if v in with_prefix else cell("-"),
            cell(fmt_int(s.get("num_preemptions")), s.get("num_preemptions")),
            cell(fmt_int(s.get("num_rejected")), s.get("num_rejected")),
        ))  # fmt: skip
    return Table(header, tuple(rows))


def step_time_table(run: RunData) -> Table:
    """Per variant: the time-weighted share of step time per bound."""
    parts = tuple(BOUND_LABEL)
    header = ("variant", *(BOUND_LABEL[p] for p in parts))
    rows = tuple(
        (cell(v), *(cell(fmt_pct(run.summaries[v].get(f"step_time_{p}_frac")),
                         run.summaries[v].get(f"step_time_{p}_frac")) for p in parts))
        for v in run.variants
    )  # fmt: skip
    return Table(header, rows)


# --------------------------------------------------------------------------------------------
# What this shows
# --------------------------------------------------------------------------------------------


def _waste(s: Mapping[str, Any]) -> float | None:
    vals = [
        num(s.get(k)) for k in ("kv_reserved_frac", "kv_internal_frag_frac", "kv_external_frag_frac")
    ]
    return None if any(x is None for x in vals) else sum(x for x in vals if x is not None)


def _why_faster(best: Mapping[str, Any], other: Mapping[str, Any]) -> list[str]:
    """Reasons a variant out-ran another that the run's breakdowns support.

    KV reasons (less memory lost to reservation and fragmentation, more KV capacity, fewer
    preemptions) are given only when the slower variant was itself bound by KV capacity: a
    variant with free KV and no preemptions was not held back by its cache.
    """
    reasons: list[str] = []
    b1, b2 = num(best.get("mean_batch_size")), num(other.get("mean_batch_size"))
    if b1 is not None and b2 is not None and b1 > 1.1 * b2:
        reasons.append(f"it ran a larger mean batch ({b1:.1f} vs {b2:.1f} sequences per step)")
    if kv_bound(other):
        w1, w2 = _waste(best), _waste(other)
        if w1 is not None and w2 is not None and w2 - w1 > 0.05:
            reasons.append(
                f"less of its KV memory was lost to reservation and fragmentation "
                f"({100 * w1:.0f}% vs {100 * w2:.0f}%)"
            )
        c1, c2 = num(best.get("kv_capacity_tokens")), num(other.get("kv_capacity_tokens"))
        if c1 is not None and c2 is not None and c1 > 1.1 * c2:
            reasons.append(f"its KV cache held more tokens ({c1:,.0f} vs {c2:,.0f})")
        p1, p2 = num(best.get("num_preemptions")), num(other.get("num_preemptions"))
        if p1 is not None and p2 is not None and p2 > p1 and p2 - p1 >= max(10, 0.2 * p2):
            reasons.append(f"it preempted fewer requests ({p1:,.0f} vs {p2:,.0f})")
    h1, h2 = num(best.get("prefix_hit_rate")), num(other.get("prefix_hit_rate"))
    if h1 is not None and h2 is not None and h1 - h2 > 0.05:
        reasons.append(
            f"its prefix cache served {100 * h1:.0f}% of prompt tokens (vs {100 * h2:.0f}%), "
            "skipping that prefill"
        )
    return reasons


def _names(vs: Sequence[str]) -> str:
    vs = list(vs)
    return vs[0] if len(vs) == 1 else ", ".join(vs[:-1]) + " and " + vs[-1]


def _binding_sentence(v: str, s: Mapping[str, Any]) -> str | None:
    bind = binding_constraint(s)
    if bind is None:
        return None
    text = f"{v}'s binding constraint was {bind[0]}: {bind[1]}"
    room = kv_headroom(s)
    if room and bind[0] != "KV capacity":
        text += f"; {room}"
    return text + "."


def _throughput_ranking(run: RunData, ranked: list[str]) -> list[str]:
    s = run.summaries
    tput = {v: num(s[v].get("output_throughput")) or 0.0 for v in ranked}
    best, worst = ranked[0], ranked[-1]
    ratio = tput[best] / tput[worst] if tput[worst] else math.inf
    head = (
        f"{best} had the highest output throughput ({tput[best]:,.0f} tokens/s, "
        f"{ratio:.2f}x {worst}'s {tput[worst]:,.0f})"
    )
    reasons = _why_faster(s[best], s[worst])
    if reasons:
        head += ": " + "; ".join(reasons)
    elif kv_headroom(s[worst]):
        head += f"; {worst} had KV to spare, so the gap comes from its slower steps"
    out = [head + "."]
    for v in (worst, best):
        sentence = _binding_sentence(v, s[v])
        if sentence:
            out.append(sentence)
    return out


def _latency_sentences(run: RunData, served: list[str], fastest: str | None) -> list[str]:
    s = run.summaries
    out: list[str] = []
    ttft = {v: num(s[v].get("p99_ttft_ms")) for v in served}
    lat = sorted((v for v in served if ttft[v] is not None), key=lambda v: ttft[v] or 0.0)
    if len(lat) >= 2:
        out.append(
            f"The lowest p99 TTFT was {lat[0]}'s ({fmt_ms(ttft[lat[0]])}) and the highest "
            f"{lat[-1]}'s ({fmt_ms(ttft[lat[-1]])})"
            + (
                "."
                if fastest is None or lat[0] == fastest
                else ", so the fastest variant is not the one with the best tail latency."
            )
        )
    slo = run_slo(run)
    good = {v: num(s[v].get("request_goodput")) for v in served}
    good_ranked = sorted((v for v in served if good[v] is not None), key=lambda v: -(good[v] or 0.0))
    if slo and good_ranked:
        slo_txt = ", ".join(
            f"{k.removesuffix('_ms').upper()} < {x:g} ms" for k, x in sorted(slo.items())
        )
        best = good_ranked[0]
        out.append(
            f"Under the SLO ({slo_txt}), {best} had the highest goodput "
            f"({fmt_auto(good[best])} requests/s)."
            if len(good_ranked) > 1
            else f"Under the SLO ({slo_txt}), {best}'s goodput was {fmt_auto(good[best])} "
            "requests/s."
        )
    return out


def interpret(run: RunData, loads: Mapping[str, Load | None] | None = None) -> str:
    """One paragraph, generated from the run's numbers, saying what the run shows.

    It first says which variants kept up with their arrivals. Among variants that all kept up,
    throughput is set by the arrivals, so it compares latency; among variants that did not
    (or when arrivals are unknown), it ranks throughput and names the measured binding
    constraint (see :mod:`servesim.reports._load`), crediting KV memory only where KV bound.
    """
    s = run.summaries
    loads = {v: measure_load(run, v) for v in run.variants} if loads is None else loads
    served = [v for v in run.variants if (num(s[v].get("completed")) or 0) > 0]
    starved = [v for v in run.variants if v not in served]
    sentences: list[str] = []
    known = [v for v in served if loads.get(v) is not None]
    over = [v for v in known if loads[v].is_overloaded]  # type: ignore[union-attr]
    kept = [v for v in known if v not in over]
    tput = {v: num(s[v].get("output_throughput")) for v in served}
    ranked = sorted((v for v in served if tput[v] is not None), key=lambda v: -(tput[v] or 0.0))
    fastest: str | None = ranked[0] if ranked else None
    if known and len(known) == len(served) and kept:
        offered = max(loads[v].offered_per_s for v in kept)  # type: ignore[union-attr]
        if over:
            sentences.append(
                f"{_names(kept)} kept up with the offered {fmt_auto(offered)} requests/s; "
                f"{_names(over)} did not (see the banner above)."
            )
            for v in over:
                ld = loads[v]
                assert ld is not None
                sentences.append(
                    f"{v} sustains about {fmt_auto(ld.sustained_per_s)} requests/s "
                    f"({fmt_pct(ld.served_frac, 0)} of its arrivals)."
                )
                sentence = _binding_sentence(v, s[v])
                if sentence:
                    sentences.append(sentence)
        else:
            lo, hi = min(tput[v] or 0.0 for v in kept), max(tput[v] or 0.0 for v in kept)
            every = "Every variant" if len(kept) == len(run.variants) else (
                "Every variant that completed requests")
            sentences.append(
                f"{every} kept up with the offered load ({fmt_auto(offered)} requests/s), so "
                f"output throughput is set by the arrivals ({lo:,.0f}-{hi:,.0f} tokens/s) and "
                "the variants differ in latency."
                if len(kept) > 1
                else f"{kept[0]} kept up with the offered {fmt_auto(offered)} requests/s, "
                f"producing {lo:,.0f} output tokens/s with a mean batch of "
                f"{fmt_num(s[kept[0]].get('mean_batch_size'))} sequences and "
                f"{fmt_pct(s[kept[0]].get('kv_token_state_frac'), 0)} of its KV memory in "
                "token states."
            )
            fastest = None
        lat = sorted(kept, key=lambda v: num(s[v].get("p99_ttft_ms")) or math.inf)
        sentences += _latency_sentences(run, kept, fastest)
        dom = dominant_bound(s[lat[0]]) if not over else None
        if dom is not None:
            sentences.append(
                f"{lat[0]}'s step time went mostly to {BOUND_LABEL[dom[0]]} "
                f"({fmt_pct(dom[1], 0)})."
            )
    elif len(ranked) >= 2:
        sentences += _throughput_ranking(run, ranked)
        sentences += _latency_sentences(run, served, fastest)
    elif len(ranked) == 1:
        v = ranked[0]
        sentences.append(
            f"{v} sustained {tput[v]:,.0f} output tokens/s with a mean batch of "
            f"{fmt_num(s[v].get('mean_batch_size'))} sequences, using "
            f"{fmt_pct(s[v].get('kv_token_state_frac'), 0)} of its KV memory for token states."
        )
        sentence = _binding_sentence(v, s[v])
        if sentence:
            sentences.append(sentence)
    for v in run.variants:
        pre = num(s[v].get("num_preemptions")) or 0
        if pre > 0 and v in served:
            sentences.append(f"{v} preempted {pre:,.0f} times (recomputed or swapped work).")
            break
    if starved:
        parts = []
        for v in starved:
            rej = fmt_int(s[v].get("num_rejected"))
            parts.append(f"{v} ({rej} rejected)" if rej != "n/a" else v)
        sentences.append(
            "No request completed for " + ", ".join(parts) + ": that configuration could not "
            "serve this load within the run."
        )
    if not sentences:
        return "The run produced no summary numbers to interpret."
    return " ".join(sentences)


# --------------------------------------------------------------------------------------------
# Figures and the report
# --------------------------------------------------------------------------------------------

FIGURE_TEXT: Mapping[str, tuple[str, str]] = {
    "latency_cdf": (
        "Latency distributions",
        "Empirical CDFs of TTFT, TPOT and E2EL over requests with a defined value; a curve "
        "further left is faster, the top of each curve is the tail. Dashed: the SLO.",
    ),
    "timeline": (
        "Throughput, batch size and queue over time",
        "Time-binned output tokens/s, time-averaged running sequences and waiting requests "
        "(summed over replicas). A growing queue means arrivals exceed capacity.",
    ),
    "kv_timeline": (
        "KV memory over time",
        "The KV cache split per variant as a share of its capacity: token states are useful; "
        "reserved, internal and external fragmentation are waste; cached is reusable prefix.",
    ),
    "kv_bar": (
        "KV memory, time-averaged",
        "Duration-weighted average of the split above, one bar per variant (as in Figure 2 "
        "of the PagedAttention paper).",
    ),
    "step_time": (
        "Where step time goes",
        "Share of wall time per bin spent on each bound; the gap to 100% is idle time.",
    ),
    "roofline": (
        "Operators on the roofline",
        "The representative step's operators at (FLOP/byte, achieved FLOP/s) under each "
        "GPU's roofline; points on the slope are memory-bound, near the flat top compute-bound.",
    ),
    "prefix_hit": (
        "Prefix-cache hit rate",
        "Share of looked-up prompt tokens found in the prefix cache, per time bin (solid) "
        "and cumulative (dashed).",
    ),
}

_MISSING_FIGURE_NOTES: Mapping[str, str] = {
    "latency_cdf": "No request has a defined latency, so there is no latency figure.",
    "timeline": "No variant ran a step, so there are no timelines.",
    "roofline": "The summary has no roofline data, so there is no roofline figure.",
    "prefix_hit": "No variant used a prefix cache, so there is no hit-rate figure.",
}


@dataclass(frozen=True, slots=True)
class FigureRef:
    """A figure as the templates see it: ``png`` for Markdown, ``json`` for HTML."""

    key: str
    title: str
    caption: str
    png: str = ""
    json: str = ""
    height_px: int = 400


def report_context(run: RunData) -> dict[str, Any]:
    """Everything the run templates show except the figures (format-independent)."""
    name = str(run.scenario.get("name") or run.run_dir.name)
    loads = {v: measure_load(run, v) for v in run.variants}
    banners = [
        overload_banner(v, ld) for v, ld in loads.items() if ld is not None and ld.is_overloaded
    ]
    seed = run.scenario.get("seed")
    return {
        "title": f"servesim report: {name}",
        "name": name,
        "description": " ".join(str(run.scenario.get("description") or "").split()),
        "intro": (
            f"Scenario {name}, seed {seed}, {len(run.variants)} "
            f"variant{'s' if len(run.variants) != 1 else ''} on the same request stream."
        ),
        "has_variants": bool(run.variants),
        "banners": banners,
        "interpretation": interpret(run, loads) if run.variants else "",
        "latency_table": latency_table(run, loads),
        "memory_sched_table": memory_sched_table(run),
        "step_time_table": step_time_table(run),
        "config_table": config_table(run),
        "memory_table": memory_table(run),
    }


@contextmanager
def young_gc_only() -> Iterator[None]:
    """Keep the cyclic garbage collector to the objects created inside the block.

    Drawing a report allocates some hundred thousand objects (matplotlib artists, which hold
    reference cycles), enough to trigger a full collection, and a full collection walks every
    object of the process: the imported libraries and the run itself, none of which the
    report makes or frees. That walk was ~0.1 s of the Azure-hour report. ``gc.freeze()``
    sets the objects that exist now aside for the duration (the artists are still collected
    as usual); ``gc.unfreeze()`` returns them to the oldest generation afterwards, so nothing
    is left out of later collections.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def build_report(
    run_dir: Path, *, out_dir: Path | None = None, formats: Collection[str] = ("md", "html")
) -> dict[str, Path]:
    """Write ``report.md`` (with its ``fig_*.png`` figures) and ``report.html`` of a run.

    Args:
        run_dir: a run directory in the engine's format (``summary.json``,
            ``requests.parquet``, ``steps.parquet``).
        out_dir: where to write; ``run_dir`` if None.
        formats: which reports to write: ``"md"`` (with the PNGs it links; drawing them is
            most of the time a report takes) and/or ``"html"`` (interactive, needs no PNG).

    Returns:
        ``{"report_md": ..., "report_html": ..., "fig_<name>": ...}`` for what was written,
        figures in report order; a figure without data is left out.

    Raises:
        ValueError: ``formats`` is empty or names an unknown format.
    """
    formats = set(formats)
    if not formats or formats - {"md", "html"}:
        raise ValueError(f"formats: give 'md' and/or 'html', got {sorted(formats)}")
    with young_gc_only():
        return _build_report(Path(run_dir), Path(run_dir) if out_dir is None else Path(out_dir),
                             formats)  # fmt: skip


def _build_report(run_dir: Path, out_dir: Path, formats: set[str]) -> dict[str, Path]:
    run = load_run(run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    series = compute_series(run)
    drawers = run_figure_drawers(run, series)
    pngs: dict[str, Path] = {}
    if "md" in formats:
        for key, draw in drawers.items():
            fig = draw()
            if fig is not None:
                pngs[key] = save_figure(fig, out_dir / f"fig_{key}.png")
    context = report_context(run)
    present = list(pngs) if "md" in formats else list(drawers)
    specs = run_figure_specs(run, series, present) if "html" in formats else {}
    shown = set(pngs) | set(specs)
    missing = [note for key, note in _MISSING_FIGURE_NOTES.items() if key not in shown]
    if not run.variants:
        missing = []
    out: dict[str, Path] = {}
    if "md" in formats:
        md_figs = [FigureRef(k, *FIGURE_TEXT[k], png=p.name) for k, p in pngs.items()]
        out["report_md"] = out_dir / "report.md"
        out["report_md"].write_text(
            render("run.md.j2", **context, figures=md_figs, missing_figures=missing),
            encoding="utf-8",
        )
    if "html" in formats:
        html_figs = [
            FigureRef(k, *FIGURE_TEXT[k], json=figure_json(spec),
                      height_px=int(spec["layout"].get("height", 400)))
            for k, spec in specs.items()
        ]
        out["report_html"] = out_dir / "report.html"
        out["report_html"].write_text(
            render("run.html.j2", **context, figures=html_figs, missing_figures=missing),
            encoding="utf-8",
        )
    out.update({f"fig_{k}": p for k, p in pngs.items()})
    return out


__all__: Sequence[str] = ("build_report", "interpret", "report_context", "young_gc_only")
