"""Readers of the benchmark result files users already have.

Three tools, auto-detected from the content (never from the file name):

=============  ==========================================================================
tool           file
=============  ==========================================================================
``vllm``       ``vllm bench serve --save-result`` (also ``benchmarks/benchmark_serving.py``):
               one JSON object, or several separated by newlines with ``--append-result``.
               Per-request ``input_lens`` / ``output_lens`` / ``ttfts`` / ``itls`` only with
               ``--save-detailed``. Field names: ``vllm/benchmarks/serve.py`` (``result_json``
               and ``benchmark()``'s ``result`` dict).
``sglang``     ``python -m sglang.bench_serving --output-file F``: JSONL, one object per run
               (appended). ``--output-details`` adds ``input_lens`` / ``output_lens`` /
               ``ttfts`` / ``itls``. Field names: ``python/sglang/bench_serving.py``
               (``result`` and ``result_details``); E2E latency is ``*_e2e_latency_ms``.
``genai-perf`` GenAI-Perf ``*_genai_perf.json`` (``genai_perf/export_data/json_exporter.py``):
               one object of metric statistics ``{"unit", "avg", "p50", "p99", ...}`` plus
               ``input_config`` (the CLI arguments: ``concurrency``, ``request_rate``,
               ``request_count``, ``synthetic_input_tokens_mean``, ``output_tokens_mean``).
               Its ``inter_token_latency`` is per request (latency - TTFT) / (OSL - 1), i.e.
               vLLM's TPOT, and is compared as TPOT.
``aiperf``     AIPerf ``profile_export_aiperf.json``: the same metric statistics plus
               ``request_count`` / ``benchmark_duration`` and a nested ``input_config``
               (``loadgen.concurrency``, ``loadgen.request_rate``, ``loadgen.request_count``,
               ``input.prompt.input_tokens.mean``, ``input.prompt.output_tokens.mean``).
=============  ==========================================================================

Every file becomes one or more :class:`BenchResult`: the measured metrics under servesim's
summary names (which are ``vllm bench serve``'s) and the load that produced them. Files are
data: parsed with :mod:`json` only; a malformed file is a :class:`BenchFileError` naming the
file, the record and the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from servesim.simulator.errors import SimulatorError

__all__ = ["FORMATS", "METRICS", "BenchFileError", "BenchResult", "detect_format", "read_results"]

FORMATS = ("vllm", "sglang", "genai-perf", "aiperf")

#: Metrics compared, in print order: servesim summary key -> (label, unit, higher is better).
METRICS: Mapping[str, tuple[str, str]] = {
    "request_throughput": ("request throughput", "req/s"),
    "output_throughput": ("output throughput", "tok/s"),
    "total_token_throughput": ("total token throughput", "tok/s"),
    "mean_ttft_ms": ("mean TTFT", "ms"),
    "median_ttft_ms": ("median TTFT", "ms"),
    "p99_ttft_ms": ("p99 TTFT", "ms"),
    "mean_tpot_ms": ("mean TPOT", "ms"),
    "median_tpot_ms": ("median TPOT", "ms"),
    "p99_tpot_ms": ("p99 TPOT", "ms"),
    "mean_itl_ms": ("mean ITL", "ms"),
    "median_itl_ms": ("median ITL", "ms"),
    "p99_itl_ms": ("p99 ITL", "ms"),
    "mean_e2el_ms": ("mean E2E latency", "ms"),
    "median_e2el_ms": ("median E2E latency", "ms"),
    "p99_e2el_ms": ("p99 E2E latency", "ms"),
}


class BenchFileError(SimulatorError):
    """A benchmark result file that cannot be read (names file, record and field)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchResult:
    """One benchmark run as measured.

    Attributes:
        path: the file it came from.
        index: which record of the file (0-based; JSONL and appended files hold several).
        tool: ``vllm``, ``sglang``, ``genai-perf`` or ``aiperf``.
        model_id: the model as the tool recorded it ('' when absent).
        num_requests: requests sent (completed ones when the tool records no count).
        request_rate_per_s: the configured arrival rate; ``inf`` = all at once.
        burstiness: vLLM/SGLang gamma shape (1 = Poisson).
        max_concurrency: client-side concurrency cap (closed loop), or None.
        input_lens: prompt tokens per request, when the file has them.
        output_lens: output tokens per request, when the file has them.
        mean_input_tokens: mean prompt length.
        mean_output_tokens: mean output length.
        input_std_tokens: standard deviation of the prompt length (0 = fixed).
        output_std_tokens: standard deviation of the output length (0 = fixed).
        duration_s: the benchmark's wall time, when recorded.
        metrics: measured values under servesim's summary names (:data:`METRICS`).
    """

    path: Path
    index: int
    tool: str
    model_id: str
    num_requests: int
    request_rate_per_s: float
    burstiness: float = 1.0
    max_concurrency: int | None = None
    input_lens: tuple[int, ...] | None = None
    output_lens: tuple[int, ...] | None = None
    mean_input_tokens: float
    mean_output_tokens: float
    input_std_tokens: float = 0.0
    output_std_tokens: float = 0.0
    duration_s: float | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``file.json`` or ``file.jsonl#2`` for the third record."""
        return self.path.name if self.index == 0 else f"{self.path.name}#{self.index}"

    @property
    def load_text(self) -> str:
        """The load in words, e.g. ``200 requests, Poisson 4/s, concurrency 16``."""
        parts = [f"{self.num_requests} requests"]
        if math.isinf(self.request_rate_per_s):
            parts.append("all at once" if self.max_concurrency is None else "no rate limit")
        else:
            kind = "Poisson" if self.burstiness == 1.0 else f"gamma (burstiness {self.burstiness:g})"
            parts.append(f"{kind} {self.request_rate_per_s:g}/s")
        if self.max_concurrency is not None:
            parts.append(f"concurrency {self.max_concurrency}")
        if self.input_lens is not None:
            parts.append("per-request lengths")
        else:
            parts.append(f"{self.mean_input_tokens:.0f} in / {self.mean_output_tokens:.0f} out tokens")
        return ", ".join(parts)


# ---------------------------------------------------------------------------- entry points


def read_results(path: str | Path, *, format: str = "auto") -> list[BenchResult]:
    """Read every run recorded in a benchmark result file.

    Args:
        path: the file.
        format: ``auto`` (detect from the content) or one of :data:`FORMATS`.

    Raises:
        BenchFileError: missing, unreadable, unknown or malformed file.
    """
    path = Path(path)
    records = _load_records(path)
    fmt = detect_format(path, records) if format == "auto" else format
    if fmt not in FORMATS:
        raise BenchFileError(f"{path}: unknown format {format!r}; valid: auto, {', '.join(FORMATS)}")
    reader = {"vllm": _from_vllm, "sglang": _from_sglang,
              "genai-perf": _from_genai_perf, "aiperf": _from_aiperf}[fmt]
    return [reader(path, i, rec) for i, rec in enumerate(records)]


def detect_format(path: Path, records: Sequence[Mapping[str, Any]] | None = None) -> str:
    """Which tool wrote the file, from its fields.

    Raises:
        BenchFileError: the fields match none of the tools.
    """
    records = _load_records(path) if records is None else records
    rec = records[0]
    if isinstance(rec.get("time_to_first_token"), Mapping) or isinstance(
        rec.get("request_throughput"), Mapping
    ):
        cfg = rec.get("input_config")
        nested = isinstance(cfg, Mapping) and isinstance(cfg.get("loadgen"), Mapping)
        if nested or isinstance(rec.get("request_count"), Mapping) or "benchmark_duration" in rec:
            return "aiperf"
        return "genai-perf"
    if "mean_e2e_latency_ms" in rec or "total_output_tokens_retokenized" in rec:
        return "sglang"
    if "mean_ttft_ms" in rec and ("num_prompts" in rec or "endpoint_type" in rec or "burstiness" in rec):
        return "vllm"
    keys = ", ".join(sorted(rec)[:12])
    raise BenchFileError(
        f"{path}: not a result file of {', '.join(FORMATS)} (first record's fields: {keys}); "
        f"expected `vllm bench serve --save-result` JSON, SGLang bench_serving JSONL, or a "
        f"GenAI-Perf / AIPerf profile export JSON"
    )


# ---------------------------------------------------------------------------- file level


def _load_records(path: Path) -> list[dict[str, Any]]:
    """One JSON object, or several (JSONL, or vLLM's newline-separated --append-result)."""
    from servesim.hwmodels import safeio

    if not path.exists():
        raise BenchFileError(f"{path}: no such file")
    # Hardened read (#15): a regular file, at most 1 GiB, UTF-8 with the line of a bad byte.
    text = safeio.read_text(path, "benchmark file", max_bytes=1 << 30, error=BenchFileError)
    if not text.strip():
        raise BenchFileError(f"{path}: empty file")
    if safeio._json_depth(text) > safeio.MAX_DEPTH:
        raise BenchFileError(f"{path}: nested more than {safeio.MAX_DEPTH} levels deep")
    try:
        whole = json.loads(text)
    except (json.JSONDecodeError, RecursionError, ValueError):
        whole = None
    if isinstance(whole, dict):
        return [whole]
    if whole is not None:
        raise BenchFileError(f"{path}: expected a JSON object per run, got a {type(whole).__name__}")
    out: list[dict[str, Any]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BenchFileError(f"{path}: line {lineno}: not JSON ({exc.msg})") from None
        except (RecursionError, ValueError) as exc:
            raise BenchFileError(f"{path}: line {lineno}: not JSON ({safeio.clip(str(exc))})"
                                 ) from None
        if not isinstance(rec, dict):
            raise BenchFileError(f"{path}: line {lineno}: expected a JSON object")
        out.append(rec)
    return out


def _where(path: Path, index: int) -> str:
    return f"{path}: record {index + 1}"


def _num(path: Path, index: int, rec: Mapping[str, Any], key: str, *, required: bool = False,
         default: float | None = None) -> float | None:
    value = rec.get(key)
    if value is None:
        if required:
            raise BenchFileError(f"{_where(path, index)}: field {key!r} is missing")
        return default
    if isinstance(value, str) and value.strip().lower() in ("inf", "infinity"):
        return math.inf
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise BenchFileError(f"{_where(path, index)}: field {key!r} = {value!r} is not a number")
    try:
        out = float(value)
    except ValueError:
        raise BenchFileError(
            f"{_where(path, index)}: field {key!r} = {value!r} is not a number"
        ) from None
    if math.isnan(out):
        return default
    return out


def _lens(path: Path, index: int, rec: Mapping[str, Any], key: str) -> tuple[int, ...] | None:
    value = rec.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise BenchFileError(f"{_where(path, index)}: field {key!r} must be a non-empty list of token counts")
    out = []
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, int | float) or v < 0 or v != int(v):
            raise BenchFileError(
                f"{_where(path, index)}: {key}[{i}] = {v!r} is not a token count (integer >= 0)"
            )
        out.append(int(v))
    return tuple(out)


def _successful_lens(path: Path, index: int, rec: Mapping[str, Any]) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
    """Per-request lengths of the successful requests (failed ones have an error string)."""
    ins, outs = _lens(path, index, rec, "input_lens"), _lens(path, index, rec, "output_lens")
    if ins is None or outs is None:
        return None, None
    if len(ins) != len(outs):
        raise BenchFileError(
            f"{_where(path, index)}: input_lens has {len(ins)} entries, output_lens {len(outs)}"
        )
    errors = rec.get("errors")
    keep = [i for i in range(len(ins)) if outs[i] > 0
            and not (isinstance(errors, list) and i < len(errors) and errors[i])]
    if not keep:
        return None, None
    return tuple(max(ins[i], 1) for i in keep), tuple(outs[i] for i in keep)


def _std(values: Sequence[int]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


# ---------------------------------------------------------------------------- vLLM / SGLang

_VLLM_KEYS = ("request_throughput", "output_throughput", "total_token_throughput",
              *[f"{s}_{m}_ms" for m in ("ttft", "tpot", "itl", "e2el")
                for s in ("mean", "median", "p99")])


def _from_vllm(path: Path, index: int, rec: Mapping[str, Any]) -> BenchResult:
    metrics = {k: v for k in _VLLM_KEYS if (v := _num(path, index, rec, k)) is not None}
    return _stream_result(path, index, rec, "vllm", metrics,
                          num_prompts=_num(path, index, rec, "num_prompts"))


def _from_sglang(path: Path, index: int, rec: Mapping[str, Any]) -> BenchResult:
    metrics: dict[str, float] = {}
    for key in _VLLM_KEYS:
        src = key.replace("_e2el_ms", "_e2e_latency_ms")
        if key == "total_token_throughput":
            src = "total_throughput"
        value = _num(path, index, rec, src)
        if value is not None:
            metrics[key] = value
    return _stream_result(path, index, rec, "sglang", metrics, num_prompts=None)


def _stream_result(path: Path, index: int, rec: Mapping[str, Any], tool: str,
                   metrics: dict[str, float], *, num_prompts: float | None) -> BenchResult:
    completed = _num(path, index, rec, "completed", required=True)
    rate = rec.get("request_rate")
    if rate == "trace":
        raise BenchFileError(
            f"{_where(path, index)}: request_rate 'trace' (timestamps from a trace file) cannot "
            f"be replayed from the result file alone; replay the trace with a scenario instead"
        )
    rate_per_s = _num(path, index, rec, "request_rate", default=math.inf)
    if rate_per_s is None or not rate_per_s > 0:
        raise BenchFileError(f"{_where(path, index)}: field 'request_rate' = {rate!r} must be > 0 or 'inf'")
    burst = _num(path, index, rec, "burstiness", default=1.0) or 1.0
    conc = _num(path, index, rec, "max_concurrency")
    ins, outs = _successful_lens(path, index, rec)
    total_in = _num(path, index, rec, "total_input_tokens", required=ins is None)
    total_out = _num(path, index, rec, "total_output_tokens", required=outs is None)
    done = int(completed or 0)
    if done <= 0:
        raise BenchFileError(f"{_where(path, index)}: field 'completed' = {completed!r}: no request succeeded")
    if ins is not None and outs is not None:
        mean_in, mean_out = sum(ins) / len(ins), sum(outs) / len(outs)
        std_in, std_out = _std(ins), _std(outs)
    else:
        mean_in, mean_out = float(total_in) / done, float(total_out) / done  # type: ignore[arg-type]
        # SGLang's random dataset draws lengths uniformly in [ratio * L, L].
        ratio = _num(path, index, rec, "random_range_ratio", default=1.0)
        std_in = std_out = 0.0 if ratio in (None, 1.0) else math.nan
    return BenchResult(
        path=path, index=index, tool=tool,
        model_id=str(rec.get("model_id") or rec.get("model") or ""),
        num_requests=int(num_prompts) if num_prompts else done,
        request_rate_per_s=float(rate_per_s),
        burstiness=float(burst),
        max_concurrency=int(conc) if conc else None,
        input_lens=ins, output_lens=outs,
        mean_input_tokens=mean_in, mean_output_tokens=mean_out,
        input_std_tokens=std_in, output_std_tokens=std_out,
        duration_s=_num(path, index, rec, "duration"),
        metrics=metrics,
    )


# ---------------------------------------------------------------------------- GenAI-Perf / AIPerf

# servesim key -> (GenAI-Perf/AIPerf metric, statistic)
_PERF_KEYS: Mapping[str, tuple[str, str]] = {
    "request_throughput": ("request_throughput", "avg"),
    "output_throughput": ("output_token_throughput", "avg"),
    "total_token_throughput": ("total_token_throughput", "avg"),
    "mean_ttft_ms": ("time_to_first_token", "avg"),
    "median_ttft_ms": ("time_to_first_token", "p50"),
    "p99_ttft_ms": ("time_to_first_token", "p99"),
    # per request (latency - TTFT) / (OSL - 1): vLLM's TPOT
    "mean_tpot_ms": ("inter_token_latency", "avg"),
    "median_tpot_ms": ("inter_token_latency", "p50"),
    "p99_tpot_ms": ("inter_token_latency", "p99"),
    "mean_e2el_ms": ("request_latency", "avg"),
    "median_e2el_ms": ("request_latency", "p50"),
    "p99_e2el_ms": ("request_latency", "p99"),
}
_MS_PER_UNIT = {"ms": 1.0, "s": 1000.0, "sec": 1000.0, "us": 1e-3, "ns": 1e-6}


def _stat(path: Path, index: int, rec: Mapping[str, Any], metric: str, stat: str) -> float | None:
    block = rec.get(metric)
    if block is None:
        return None
    if not isinstance(block, Mapping):
        raise BenchFileError(f"{_where(path, index)}: field {metric!r} must be an object of statistics")
    value = _num(path, index, block, stat)
    if value is None:
        return None
    unit = str(block.get("unit", "")).strip().lower()
    if unit in _MS_PER_UNIT:
        value *= _MS_PER_UNIT[unit]
    return value


def _perf_metrics(path: Path, index: int, rec: Mapping[str, Any]) -> dict[str, float]:
    return {k: v for k, (m, s) in _PERF_KEYS.items()
            if (v := _stat(path, index, rec, m, s)) is not None}


def _from_genai_perf(path: Path, index: int, rec: Mapping[str, Any]) -> BenchResult:
    cfg = rec.get("input_config")
    if not isinstance(cfg, Mapping):
        raise BenchFileError(f"{_where(path, index)}: field 'input_config' is missing (GenAI-Perf export)")
    return _perf_result(
        path, index, rec, "genai-perf",
        concurrency=_num(path, index, cfg, "concurrency"),
        rate=_num(path, index, cfg, "request_rate"),
        count=_num(path, index, cfg, "request_count"),
        model=cfg.get("model"),
    )


def _from_aiperf(path: Path, index: int, rec: Mapping[str, Any]) -> BenchResult:
    cfg = rec.get("input_config") or {}
    loadgen = cfg.get("loadgen") or {} if isinstance(cfg, Mapping) else {}
    count = _stat(path, index, rec, "request_count", "avg")
    if count is None and isinstance(loadgen, Mapping):
        count = _num(path, index, loadgen, "request_count")
    endpoint = cfg.get("endpoint") or {} if isinstance(cfg, Mapping) else {}
    return _perf_result(
        path, index, rec, "aiperf",
        concurrency=_num(path, index, loadgen, "concurrency") if isinstance(loadgen, Mapping) else None,
        rate=_num(path, index, loadgen, "request_rate") if isinstance(loadgen, Mapping) else None,
        count=count,
        model=endpoint.get("model_names") if isinstance(endpoint, Mapping) else None,
    )


def _perf_result(path: Path, index: int, rec: Mapping[str, Any], tool: str, *,
                 concurrency: float | None, rate: float | None, count: float | None,
                 model: Any) -> BenchResult:
    isl = _stat(path, index, rec, "input_sequence_length", "avg")
    osl = _stat(path, index, rec, "output_sequence_length", "avg")
    if isl is None or osl is None:
        raise BenchFileError(
            f"{_where(path, index)}: fields 'input_sequence_length' and 'output_sequence_length' "
            f"(avg) are needed to replay the load"
        )
    if count is None:
        thr = _stat(path, index, rec, "request_throughput", "avg")
        dur = _stat(path, index, rec, "benchmark_duration", "avg")
        count = round(thr * dur / 1000.0) if thr and dur else None
    if not count or count < 1:
        raise BenchFileError(f"{_where(path, index)}: no request count (input_config request_count)")
    if concurrency is None and rate is None:
        concurrency = 1.0  # both tools default to --concurrency 1
    model_id = model[0] if isinstance(model, list) and model else (model or "")
    return BenchResult(
        path=path, index=index, tool=tool, model_id=str(model_id),
        num_requests=int(count),
        request_rate_per_s=float(rate) if rate else math.inf,
        max_concurrency=int(concurrency) if concurrency and not rate else None,
        mean_input_tokens=float(isl), mean_output_tokens=float(osl),
        input_std_tokens=_stat(path, index, rec, "input_sequence_length", "std") or 0.0,
        output_std_tokens=_stat(path, index, rec, "output_sequence_length", "std") or 0.0,
        duration_s=(d / 1000.0) if (d := _stat(path, index, rec, "benchmark_duration", "avg")) else None,
        metrics=_perf_metrics(path, index, rec),
    )
