"""Run directory in, ``report.md`` + ``report.html`` + ``fig_*.png`` out.

The report is assembled once as a list of blocks (heading, paragraph, table, figure) and
rendered twice, to Markdown (figures linked as sibling PNG files) and to standalone HTML
(figures embedded as base64 data URIs, so the file opens from disk with no server). Output is
deterministic: no timestamps, no absolute paths, PNGs saved without a date stamp.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servesim.reports._data import RunData, load_run
from servesim.reports._style import KV_SUMMARY_KEYS
from servesim.reports.figures import plot_run_figures, prefix_variants, run_slo

GiB = 1 << 30  # binary gibibyte, as hwmodels.units.GiB (kept local: reports stands alone)

# --------------------------------------------------------------------------------------------
# Blocks and their two renderers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Heading:
    level: int
    text: str


@dataclass(frozen=True, slots=True)
class _Para:
    text: str


@dataclass(frozen=True, slots=True)
class _Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True, slots=True)
class _Figure:
    path: Path
    title: str
    caption: str


_Block = _Heading | _Para | _Table | _Figure


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: Iterable[_Block]) -> str:
    """Markdown with figures as relative links to the PNGs next to ``report.md``."""
    out: list[str] = []
    for b in blocks:
        if isinstance(b, _Heading):
            out.append(f"{'#' * b.level} {b.text}\n")
        elif isinstance(b, _Para):
            out.append(f"{b.text}\n")
        elif isinstance(b, _Table):
            out.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
            out.append("|" + "|".join("---" for _ in b.header) + "|")
            out.extend("| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows)
            out.append("")
        else:
            out.append(f"### {b.title}\n")
            out.append(f"![{b.title}]({b.path.name})\n")
            out.append(f"*{b.caption}*\n")
    return "\n".join(out).rstrip() + "\n"


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.88em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #555; }
"""


def render_html(blocks: Iterable[_Block], *, title: str) -> str:
    """Standalone HTML: every figure is embedded as a ``data:image/png;base64`` URI."""
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
    ]
    for b in blocks:
        if isinstance(b, _Heading):
            out.append(f"<h{b.level}>{e(b.text)}</h{b.level}>")
        elif isinstance(b, _Para):
            out.append(f"<p>{e(b.text)}</p>")
        elif isinstance(b, _Table):
            out.append("<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in b.header))
            out.append("</tr></thead><tbody>")
            out.extend(
                "<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in b.rows
            )
            out.append("</tbody></table>")
        else:
            data = base64.b64encode(b.path.read_bytes()).decode("ascii")
            out.append(f"<figure><h3>{e(b.title)}</h3>")
            out.append(f'<img alt="{e(b.title)}" src="data:image/png;base64,{data}">')
            out.append(f"<figcaption>{e(b.caption)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------
# Number formatting
# --------------------------------------------------------------------------------------------


def _num(x: Any) -> float | None:
    """``x`` as a finite float, or None (missing, null, NaN, non-numeric)."""
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _fmt(x: Any, digits: int = 1, *, thousands: bool = True) -> str:
    f = _num(x)
    if f is None:
        return "n/a"
    return f"{f:,.{digits}f}" if thousands else f"{f:.{digits}f}"


def _pct(x: Any, digits: int = 1) -> str:
    f = _num(x)
    return "n/a" if f is None else f"{100 * f:.{digits}f}%"


def _gib(x: Any) -> str:
    f = _num(x)
    return "n/a" if f is None else f"{f / GiB:,.2f} GiB"


def _int(x: Any) -> str:
    f = _num(x)
    return "n/a" if f is None else f"{round(f):,d}"


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------

_CONFIG_KEYS: tuple[tuple[str, str], ...] = (
    ("gpu", "GPU"),
    ("tensor_parallel", "tensor parallel"),
    ("pipeline_parallel", "pipeline parallel"),
    ("replicas", "replicas"),
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


def _config_table(run: RunData) -> _Table:
    rows = []
    for key, label in _CONFIG_KEYS:
        vals = [run.summaries[v].get("config", {}).get(key) for v in run.variants]
        rows.append((label, *("-" if x is None else str(x) for x in vals)))
    return _Table(("setting", *run.variants), tuple(rows))


def _memory_table(run: RunData) -> _Table:
    items = (
        ("HBM", "hbm_bytes", _gib),
        ("usable (gpu_memory_utilization x HBM)", "usable_bytes", _gib),
        ("weights", "weight_bytes", _gib),
        ("activations (largest step)", "activation_bytes", _gib),
        ("reserve (CUDA graphs, NCCL, slack)", "reserve_bytes", _gib),
        ("KV cache", "kv_bytes", _gib),
        ("KV bytes per token", "kv_bytes_per_token", _int),
        ("KV capacity (tokens)", "kv_capacity_tokens", _int),
    )
    rows = []
    for label, key, fmt in items:
        vals = [run.summaries[v].get("memory_budget", {}).get(key) for v in run.variants]
        rows.append((label, *(fmt(x) for x in vals)))
    return _Table(("per GPU", *run.variants), tuple(rows))


def _latency_table(run: RunData) -> _Table:
    header = (
        "variant", "completed", "req/s", "output tok/s", "TTFT p50 (ms)", "TTFT p99 (ms)",
        "TPOT p50 (ms)", "TPOT p99 (ms)", "E2EL p50 (ms)", "E2EL p99 (ms)", "goodput (req/s)",
    )  # fmt: skip
    rows = []
    for v in run.variants:
        s = run.summaries[v]
        rows.append(
            (
                v,
                f"{_int(s.get('completed'))} / {_int(s.get('num_requests'))}",
                _fmt(s.get("request_throughput"), 2),
                _fmt(s.get("output_throughput"), 0),
                _fmt(s.get("median_ttft_ms")),
                _fmt(s.get("p99_ttft_ms")),
                _fmt(s.get("median_tpot_ms"), 2),
                _fmt(s.get("p99_tpot_ms"), 2),
                _fmt(s.get("median_e2el_ms"), 0),
                _fmt(s.get("p99_e2el_ms"), 0),
                _fmt(s.get("request_goodput"), 2),
            )
        )
    return _Table(header, tuple(rows))


def _memory_sched_table(run: RunData) -> _Table:
    header = (
        "variant", "mean batch", "KV token states", "reserved", "internal frag",
        "external frag", "cached", "free", "prefix hit rate", "preemptions", "rejected",
    )  # fmt: skip
    rows = []
    for v in run.variants:
        s = run.summaries[v]
        rows.append(
            (
                v,
                _fmt(s.get("mean_batch_size")),
                *(_pct(s.get(k)) for k in KV_SUMMARY_KEYS),
                _pct(s.get("prefix_hit_rate")) if v in set(prefix_variants(run)) else "-",
                _int(s.get("num_preemptions")),
                _int(s.get("num_rejected")),
            )
        )
    return _Table(header, tuple(rows))


def _step_time_table(run: RunData) -> _Table:
    parts = ("compute", "weight_read", "kv_read", "comm", "overhead")
    header = ("variant", "compute", "weight reads", "KV reads", "communication", "overhead")
    rows = tuple(
        (v, *(_pct(run.summaries[v].get(f"step_time_{p}_frac")) for p in parts))
        for v in run.variants
    )
    return _Table(header, rows)


_BOUND_WHY: Mapping[str, str] = {
    "compute": "compute-bound: the tensor cores are the limit (prefill-heavy steps or large "
    "batches), so more batching no longer buys throughput",
    "weight_read": "memory-bound on weight reads: every step streams all weights from HBM "
    "whatever the batch, so a larger batch amortises them over more tokens",
    "kv_read": "memory-bound on KV reads: attention streams every running sequence's cache, "
    "so long contexts and large batches cost bandwidth; a smaller KV dtype helps",
    "comm": "communication-bound: tensor/pipeline-parallel collectives dominate; fewer GPUs "
    "per replica or a faster interconnect would help",
    "overhead": "overhead-bound: host-side scheduling and launch time dominate tiny steps",
}

_BOUND_LABEL: Mapping[str, str] = {
    "compute": "compute",
    "weight_read": "weight reads",
    "kv_read": "KV reads",
    "comm": "communication",
    "overhead": "overhead",
}


def _waste(s: Mapping[str, Any]) -> float | None:
    vals = [
        _num(s.get(k))
        for k in ("kv_reserved_frac", "kv_internal_frag_frac", "kv_external_frag_frac")
    ]
    return None if any(x is None for x in vals) else sum(x for x in vals if x is not None)


def _dominant_bound(s: Mapping[str, Any]) -> tuple[str, float] | None:
    shares = {b: _num(s.get(f"step_time_{b}_frac")) for b in _BOUND_WHY}
    known = {b: x for b, x in shares.items() if x is not None}
    if not known:
        return None
    b = max(known, key=lambda k: (known[k], k))
    return b, known[b]


def _why_faster(best: Mapping[str, Any], other: Mapping[str, Any]) -> list[str]:
    """Reasons (largest effects) a variant out-ran another, read off their summaries."""
    reasons: list[str] = []
    b1, b2 = _num(best.get("mean_batch_size")), _num(other.get("mean_batch_size"))
    if b1 is not None and b2 is not None and b1 > 1.1 * b2:
        reasons.append(f"it ran a larger mean batch ({b1:.1f} vs {b2:.1f} sequences per step)")
    w1, w2 = _waste(best), _waste(other)
    if w1 is not None and w2 is not None and w2 - w1 > 0.05:
        reasons.append(
            f"less of its KV memory was lost to reservation and fragmentation "
            f"({100 * w1:.0f}% vs {100 * w2:.0f}%)"
        )
    c1, c2 = _num(best.get("kv_capacity_tokens")), _num(other.get("kv_capacity_tokens"))
    if c1 is not None and c2 is not None and c1 > 1.1 * c2:
        reasons.append(f"its KV cache held more tokens ({c1:,.0f} vs {c2:,.0f})")
    p1, p2 = _num(best.get("num_preemptions")), _num(other.get("num_preemptions"))
    if p1 is not None and p2 is not None and p2 > p1 and p2 - p1 >= max(10, 0.2 * p2):
        reasons.append(f"it preempted fewer requests ({p1:,.0f} vs {p2:,.0f})")
    h1, h2 = _num(best.get("prefix_hit_rate")), _num(other.get("prefix_hit_rate"))
    if h1 is not None and h2 is not None and h1 - h2 > 0.05:
        reasons.append(
            f"its prefix cache served {100 * h1:.0f}% of prompt tokens (vs {100 * h2:.0f}%), "
            "skipping that prefill"
        )
    return reasons


def interpret(run: RunData) -> str:
    """One paragraph, generated from the summary numbers, saying what the run shows."""
    s = run.summaries
    served = [v for v in run.variants if (_num(s[v].get("completed")) or 0) > 0]
    starved = [v for v in run.variants if v not in served]
    sentences: list[str] = []
    tput = {v: _num(s[v].get("output_throughput")) for v in served}
    ranked = sorted((v for v in served if tput[v] is not None), key=lambda v: -(tput[v] or 0.0))
    if len(ranked) >= 2:
        best, worst = ranked[0], ranked[-1]
        ratio = (tput[best] or 0.0) / tput[worst] if tput[worst] else math.inf
        head = (
            f"{best} had the highest output throughput ({tput[best]:,.0f} tokens/s, "
            f"{ratio:.2f}x {worst}'s {tput[worst]:,.0f})"
        )
        reasons = _why_faster(s[best], s[worst])
        if reasons:
            head += ": " + "; ".join(reasons)
        else:
            head += ", with a similar batch and memory split, so the gap comes from cheaper steps"
        sentences.append(head + ".")
    elif len(ranked) == 1:
        v = ranked[0]
        sentences.append(
            f"{v} sustained {tput[v]:,.0f} output tokens/s with a mean batch of "
            f"{_fmt(s[v].get('mean_batch_size'))} sequences, using "
            f"{_pct(s[v].get('kv_token_state_frac'), 0)} of its KV memory for token states."
        )
    if ranked:
        dom = _dominant_bound(s[ranked[0]])
        if dom is not None:
            sentences.append(
                f"{ranked[0]}'s step time went mostly to {_BOUND_LABEL[dom[0]]} "
                f"({100 * dom[1]:.0f}%): it is {_BOUND_WHY[dom[0]]}."
            )
    ttft = {v: _num(s[v].get("p99_ttft_ms")) for v in served}
    lat = sorted((v for v in served if ttft[v] is not None), key=lambda v: ttft[v] or 0.0)
    if len(lat) >= 2:
        sentences.append(
            f"The lowest p99 TTFT was {lat[0]}'s ({ttft[lat[0]]:,.0f} ms) and the highest "
            f"{lat[-1]}'s ({ttft[lat[-1]]:,.0f} ms)"
            + (
                "."
                if not ranked or lat[0] == ranked[0]
                else ", so the fastest variant is not the one with the best tail latency."
            )
        )
    slo = run_slo(run)
    good = {v: _num(s[v].get("request_goodput")) for v in served}
    good_ranked = sorted(
        (v for v in served if good[v] is not None), key=lambda v: -(good[v] or 0.0)
    )
    if slo and good_ranked:
        slo_txt = ", ".join(
            f"{k.removesuffix('_ms').upper()} < {x:g} ms" for k, x in sorted(slo.items())
        )
        sentences.append(
            f"Under the SLO ({slo_txt}), {good_ranked[0]} had the highest goodput "
            f"({good[good_ranked[0]]:.2f} requests/s)."
        )
    for v in run.variants:
        pre = _num(s[v].get("num_preemptions")) or 0
        if pre > 0 and v in served:
            sentences.append(f"{v} preempted {pre:,.0f} times (recomputed or swapped work).")
            break
    if starved:
        parts = []
        for v in starved:
            rej = _int(s[v].get("num_rejected"))
            parts.append(f"{v} ({rej} rejected)" if rej != "n/a" else v)
        sentences.append(
            "No request completed for " + ", ".join(parts) + ": that configuration could not "
            "serve this load within the run."
        )
    if not sentences:
        return "The run produced no summary numbers to interpret."
    return " ".join(sentences)


_FIGURES: Mapping[str, tuple[str, str]] = {
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
        "The representative step's operators at (FLOP/byte, achieved FLOP/s) under the "
        "GPU's roofline; points on the slope are memory-bound, near the flat top compute-bound.",
    ),
    "prefix_hit": (
        "Prefix-cache hit rate",
        "Share of looked-up prompt tokens found in the prefix cache, per time bin (solid) "
        "and cumulative (dashed).",
    ),
}


def build_blocks(run: RunData, figures: Mapping[str, Path]) -> list[_Block]:
    """The report's content, independent of output format."""
    name = str(run.scenario.get("name") or run.run_dir.name)
    blocks: list[_Block] = [_Heading(1, f"servesim report: {name}")]
    desc = str(run.scenario.get("description") or "").strip()
    seed = run.scenario.get("seed")
    intro = (
        f"Scenario {name}, seed {seed}, {len(run.variants)} variant(s) on the same request stream."
    )
    blocks.append(_Para(f"{desc} {intro}".strip() if desc else intro))
    if not run.variants:
        blocks.append(_Para("The run directory lists no variants."))
        return blocks
    blocks += [
        _Heading(2, "What this shows"),
        _Para(interpret(run)),
        _Heading(2, "Headline numbers"),
        _latency_table(run),
        _memory_sched_table(run),
        _Para(
            "KV columns are time-weighted shares of KV capacity; mean batch is running "
            "sequences per step, time-weighted. Goodput counts requests meeting every SLO."
        ),
        _Heading(2, "Step time by bound (time-weighted)"),
        _step_time_table(run),
        _Heading(2, "Configuration"),
        _config_table(run),
        _Heading(2, "Memory budget"),
        _Para(
            "Per GPU: KV cache = gpu_memory_utilization x HBM - weights - activation "
            "workspace for the largest step - reserve."
        ),
        _memory_table(run),
        _Heading(2, "Figures"),
    ]
    for key, path in figures.items():
        title, caption = _FIGURES.get(key, (key, ""))
        blocks.append(_Figure(path, title, caption))
    if "prefix_hit" not in figures:
        blocks.append(_Para("No variant used a prefix cache, so there is no hit-rate figure."))
    if "roofline" not in figures:
        blocks.append(_Para("The summary has no roofline data, so there is no roofline figure."))
    return blocks


def build_report(run_dir: Path, *, out_dir: Path | None = None) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and the ``fig_*.png`` figures of a run.

    Args:
        run_dir: a run directory in the engine's format (``summary.json``,
            ``requests.parquet``, ``steps.parquet``).
        out_dir: where to write; ``run_dir`` if None.

    Returns:
        ``{"report_md": ..., "report_html": ..., "fig_<name>": ...}``, figures in report order.
    """
    run = load_run(Path(run_dir))
    out_dir = Path(run_dir) if out_dir is None else Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = plot_run_figures(run, out_dir)
    blocks = build_blocks(run, figures)
    title = f"servesim report: {run.scenario.get('name') or Path(run_dir).name}"
    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    md_path.write_text(render_markdown(blocks), encoding="utf-8")
    html_path.write_text(render_html(blocks, title=title), encoding="utf-8")
    out: dict[str, Path] = {"report_md": md_path, "report_html": html_path}
    out.update({f"fig_{k}": p for k, p in figures.items()})
    return out


__all__: Sequence[str] = (
    "build_blocks",
    "build_report",
    "interpret",
    "render_html",
    "render_markdown",
)
