"""Scenario-YAML models of a workload, and :func:`build_workload`, their one entry point.

A workload is either a trace (``trace:``) or synthetic (``arrivals:`` + ``lengths:`` +
``num_requests``, optionally ``prefixes:`` and ``sampling:``). A length-only trace
(``format: lengths``) is combined with ``arrivals:``. Every model forbids unknown keys and is
frozen; keys carry their unit (``rate_per_s``, ``think_time_s``, ``max_tokens``).

Example::

    workload:
      num_requests: 10000
      arrivals: {process: gamma, rate_per_s: 20, cv: 2.0}
      lengths:
        prompt: {dist: lognormal, mean_tokens: 800, median_tokens: 500, max_tokens: 8000}
        output: {dist: uniform, min_tokens: 50, max_tokens: 400}
      prefixes: {kind: system_prompts, num_prompts: 20, prompt_tokens: 1024, zipf_a: 1.1}
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    model_validator,
)

from servesim.hwmodels.errors import ConfigError

# Limits (docs/inputs.md). Every count that sizes an allocation is bounded here, and
# :func:`estimate_requests` sizes the whole workload before anything is built.
MAX_REQUESTS = 10_000_000  # generated requests (the engine runs 1M in ~30 s)
MAX_UNIT_REQUESTS = 1_000_000  # requests of one session or one thought tree
MAX_TOKENS = 10_000_000  # one request's prompt or output
MAX_RATE_PER_S = 1e7
MIN_RATE_PER_S = 1e-6
MAX_TIME_S = 1e10  # 317 years
MIN_TIME_S = 1e-6
MAX_CV = 100.0
MIN_CV = 1e-3  # gamma shape 1/cv^2 <= 1e6
MAX_PREFIX_IDS = 1 << 28  # prefix block ids of a synthetic workload (int64: 2 GiB)

# Bounded types: finite (no .inf/.nan, the config refuses them), within the limits above.
Rate = Annotated[float, Field(ge=MIN_RATE_PER_S, le=MAX_RATE_PER_S)]
Duration = Annotated[float, Field(ge=MIN_TIME_S, le=MAX_TIME_S)]
Time = Annotated[float, Field(ge=0.0, le=MAX_TIME_S)]
Tokens = Annotated[int, Field(ge=1, le=MAX_TOKENS)]
Cv = Annotated[float, Field(ge=0.0, le=MAX_CV)]

if TYPE_CHECKING:
    import numpy.typing as npt

    from servesim.workloads.request import Workload

TraceFormat = Literal["auto", "azure", "mooncake", "splitwise", "lengths", "burstgpt", "servesim"]


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# ---------------------------------------------------------------------------- arrivals


class PoissonArrivals(_Cfg):
    """Poisson process: exponential inter-arrival times."""

    process: Literal["poisson"]
    rate_per_s: Rate = Field(description="Mean arrival rate (requests or sessions/s).")


class GammaArrivals(_Cfg):
    """Gamma renewal process: bursty (cv > 1) or regular (cv < 1) arrivals."""

    process: Literal["gamma"]
    rate_per_s: Rate = Field(description="Mean arrival rate.")
    cv: float = Field(
        ge=MIN_CV, le=MAX_CV, description="Coefficient of variation of inter-arrival times."
    )


class ConstantArrivals(_Cfg):
    """Evenly spaced arrivals, ``1 / rate_per_s`` apart, the first at 0."""

    process: Literal["constant"]
    rate_per_s: Rate = Field(description="Arrival rate.")


class PiecewiseArrivals(_Cfg):
    """Poisson with a piecewise-constant rate; the pattern repeats after its last segment."""

    process: Literal["piecewise"]
    rates_per_s: list[Annotated[float, Field(ge=0.0, le=MAX_RATE_PER_S)]] = Field(
        min_length=1, max_length=100_000, description="Rate per segment."
    )
    durations_s: list[Duration] = Field(
        min_length=1, max_length=100_000, description="Length per segment."
    )

    @model_validator(mode="after")
    def _check(self) -> PiecewiseArrivals:
        if len(self.rates_per_s) != len(self.durations_s):
            raise ValueError(
                f"rates_per_s has {len(self.rates_per_s)} entries but durations_s has "
                f"{len(self.durations_s)}; they must match"
            )
        if max(self.rates_per_s) <= 0:
            raise ValueError("rates_per_s: at least one segment needs a rate > 0")
        return self


class DiurnalArrivals(_Cfg):
    """Poisson with a sinusoidal rate ``mean * (1 + amplitude * cos(2 pi (t - peak) / period))``."""

    process: Literal["diurnal"]
    rate_per_s: Rate = Field(description="Mean rate over a period.")
    amplitude_frac: float = Field(0.5, ge=0.0, lt=1.0, description="Swing as a fraction of mean.")
    period_s: Duration = Field(86400.0, description="Period of the cycle (a day).")
    peak_s: Time = Field(0.0, description="Time of the peak within the period.")


class OnOffArrivals(_Cfg):
    """Bursts: Poisson at ``rate_per_s`` for ``on_s``, then silence for ``off_s``, repeated."""

    process: Literal["onoff"]
    rate_per_s: Rate = Field(description="Rate while on.")
    on_s: Duration = Field(description="Length of a burst.")
    off_s: Duration = Field(description="Pause between bursts.")


class OfflineArrivals(_Cfg):
    """Everything arrives at time 0 (MLPerf's offline scenario)."""

    process: Literal["offline"]


class ClosedLoopArrivals(_Cfg):
    """``num_clients`` clients, each sending its next request ``think_time_s`` after the last
    one finished (``vllm bench serve --max-concurrency``). The engine feeds completions back
    through ``depends_on``."""

    process: Literal["closed_loop"]
    num_clients: int = Field(ge=1, le=1_000_000, description="Concurrent clients.")
    think_time_s: Time = Field(0.0, description="Mean pause after a completion.")
    think_time_cv: Cv = Field(
        0.0, description="CV of the pause (0 = constant, else Gamma)."
    )
    ramp_up_s: Time = Field(
        0.0, description="Client k starts at k * ramp_up_s / num_clients."
    )


ArrivalsCfg = Annotated[
    PoissonArrivals
    | GammaArrivals
    | ConstantArrivals
    | PiecewiseArrivals
    | DiurnalArrivals
    | OnOffArrivals
    | OfflineArrivals
    | ClosedLoopArrivals,
    Field(discriminator="process"),
]


# ---------------------------------------------------------------------------- lengths


class _Dist(_Cfg):
    min_tokens: Tokens = Field(1, description="Clip samples below to this.")
    max_tokens: Tokens | None = Field(None, description="Clip samples above to this.")

    @model_validator(mode="after")
    def _check_bounds(self) -> _Dist:
        if self.max_tokens is not None and self.max_tokens < self.min_tokens:
            raise ValueError(
                f"max_tokens ({self.max_tokens}) must be >= min_tokens ({self.min_tokens})"
            )
        return self


class FixedLength(_Dist):
    """Always ``tokens``."""

    dist: Literal["fixed"]
    tokens: Tokens = Field(description="The length.")


class UniformLength(_Dist):
    """Uniform integer in ``[min_tokens, max_tokens]``."""

    dist: Literal["uniform"]
    max_tokens: Tokens = Field(description="Upper bound (inclusive).")


class NormalLength(_Dist):
    """Normal, rounded and clipped to ``[min_tokens, max_tokens]``."""

    dist: Literal["normal"]
    mean_tokens: Annotated[float, Field(gt=0.0, le=MAX_TOKENS)]
    std_tokens: Annotated[float, Field(ge=0.0, le=MAX_TOKENS)]


class LognormalLength(_Dist):
    """Lognormal given its mean and median (mean >= median): mu = ln median,
    sigma^2 = 2 ln(mean / median)."""

    dist: Literal["lognormal"]
    mean_tokens: Annotated[float, Field(gt=0.0, le=MAX_TOKENS)]
    median_tokens: Annotated[float, Field(gt=0.0, le=MAX_TOKENS)]

    @model_validator(mode="after")
    def _check_mean(self) -> LognormalLength:
        if self.mean_tokens < self.median_tokens:
            raise ValueError(
                f"lognormal needs mean_tokens >= median_tokens, got mean "
                f"{self.mean_tokens} < median {self.median_tokens}"
            )
        return self


class ZipfLength(_Dist):
    """Bounded Zipf: P(k) proportional to k^-a on ``[min_tokens, max_tokens]``."""

    dist: Literal["zipf"]
    a: float = Field(gt=0.0, le=100.0, description="Exponent.")
    max_tokens: Tokens = Field(description="Upper bound of the support (inclusive).")


class EmpiricalLength(_Dist):
    """Lengths sampled (with replacement) from a trace's columns. An empirical prompt
    samples (prompt, output) pairs jointly; leave ``output`` out or repeat the same spec."""

    dist: Literal["empirical"]
    path: Path = Field(description="Trace file (any readable format).")
    format: TraceFormat = Field("auto", description="Trace format (auto-detected by default).")


LengthDist = Annotated[
    FixedLength | UniformLength | NormalLength | LognormalLength | ZipfLength | EmpiricalLength,
    Field(discriminator="dist"),
]


class LengthsCfg(_Cfg):
    """Prompt and output length distributions. For prefix kinds, ``prompt`` is the tokens a
    request adds to the context it inherits (the user message after a system prompt)."""

    prompt: LengthDist
    output: LengthDist | None = Field(
        None, description="Output lengths; omitted only when prompt is empirical (joint pairs)."
    )
    max_total_tokens: Annotated[int, Field(ge=1, le=2 * MAX_TOKENS)] | None = Field(
        None, description="Clip prompt + output to this (context window); prompt first."
    )

    @model_validator(mode="after")
    def _check_output(self) -> LengthsCfg:
        if self.output is None and self.prompt.dist != "empirical":
            raise ValueError("lengths.output is required unless lengths.prompt is empirical")
        return self


# ---------------------------------------------------------------------------- prefixes


class _Prefix(_Cfg):
    block_tokens: int = Field(16, ge=1, le=MAX_TOKENS, description="Tokens per prefix block.")


class NoPrefixes(_Cfg):
    """Every request is distinct (prompt ids are still emitted, all unique)."""

    kind: Literal["none"]
    block_tokens: int = Field(
        0, ge=0, le=MAX_TOKENS,
        description="Tokens per block of the (unique) ids; 0 = emit no prefix ids."
    )


class SystemPromptsCfg(_Prefix):
    """A pool of system prompts, picked with Zipf popularity; each request = system prompt +
    its own message."""

    kind: Literal["system_prompts"]
    num_prompts: int = Field(ge=1, le=1_000_000, description="Pool size.")
    prompt_tokens: LengthDist = Field(description="Length of each pooled system prompt.")
    zipf_a: float = Field(
        1.0, ge=0.0, le=100.0, description="Popularity exponent: P(rank k) ~ k^-a (0 = uniform)."
    )


class FewShotCfg(_Prefix):
    """One long shared prefix (e.g. MMLU 5-shot examples) + short distinct questions."""

    kind: Literal["few_shot"]
    prefix_tokens: Tokens = Field(description="Length of the shared few-shot prefix.")


class MultiTurnCfg(_Prefix):
    """Chat sessions: turn k+1's prompt = turn k's prompt + answer + a new message, sent
    ``think_time_s`` after turn k finishes. Arrivals give the sessions' start times."""

    kind: Literal["multi_turn"]
    min_turns: int = Field(1, ge=1, le=MAX_UNIT_REQUESTS, description="Fewest turns per session.")
    max_turns: int = Field(
        ge=1, le=MAX_UNIT_REQUESTS, description="Most turns per session (uniform in between)."
    )
    think_time_s: Time = Field(5.0, description="Mean pause between turns.")
    think_time_cv: Cv = Field(0.0, description="CV of the pause (0 = constant).")
    system_prompt_tokens: int = Field(
        0, ge=0, le=MAX_TOKENS, description="Prompt shared by all sessions."
    )

    @model_validator(mode="after")
    def _check_turns(self) -> MultiTurnCfg:
        if self.max_turns < self.min_turns:
            raise ValueError(f"max_turns ({self.max_turns}) < min_turns ({self.min_turns})")
        return self


class TreeOfThoughtCfg(_Prefix):
    """Trees of reasoning steps: a child's prompt = parent's prompt + parent's output + a new
    instruction; children are sent when the parent finishes."""

    kind: Literal["tree_of_thought"]
    depth: int = Field(ge=1, le=64, description="Levels below the root.")
    branching: int = Field(ge=1, le=1024, description="Children per node.")
    think_time_s: Time = Field(0.0, description="Pause before a child is sent.")
    system_prompt_tokens: int = Field(
        0, ge=0, le=MAX_TOKENS, description="Prompt shared by all trees."
    )

    @model_validator(mode="after")
    def _check_size(self) -> TreeOfThoughtCfg:
        nodes = tree_nodes(self.depth, self.branching)
        if nodes > MAX_UNIT_REQUESTS:
            raise ValueError(
                f"a tree of depth {self.depth} and branching {self.branching} has more than "
                f"{MAX_UNIT_REQUESTS:,} nodes (requests), the limit per tree (docs/inputs.md)"
            )
        return self


PrefixesCfg = Annotated[
    NoPrefixes | SystemPromptsCfg | FewShotCfg | MultiTurnCfg | TreeOfThoughtCfg,
    Field(discriminator="kind"),
]


class SamplingCfg(_Cfg):
    """Fan-out per request: ``n`` parallel samples or beam search of ``beam_width``."""

    n: int = Field(1, ge=1, le=1024, description="Parallel samples per request.")
    beam_width: int = Field(1, ge=1, le=1024, description="Beam width (1 = no beam search).")

    @model_validator(mode="after")
    def _check(self) -> SamplingCfg:
        if self.n > 1 and self.beam_width > 1:
            raise ValueError("use either sampling.n > 1 or sampling.beam_width > 1, not both")
        return self


# ---------------------------------------------------------------------------- traces


class TraceFilters(_Cfg):
    """Keep only requests whose lengths lie within the bounds (dropped rows are counted)."""

    min_prompt_tokens: Tokens | None = None
    max_prompt_tokens: Tokens | None = None
    min_output_tokens: Tokens | None = None
    max_output_tokens: Tokens | None = None


class TraceCfg(_Cfg):
    """A trace file and how to replay it. Transformations apply in the order window,
    filters, max_requests, then time scaling."""

    path: Path = Field(description="Trace file; relative paths resolve against the scenario.")
    format: TraceFormat = Field("auto", description="File format (auto: by extension/header).")
    replay: Literal["burst", "spread"] = Field(
        "burst",
        description="Mooncake: keep each ~3 s timestamp bucket as a burst, or spread its "
        "requests evenly over the bucket.",
    )
    bucket_s: Duration = Field(3.0, description="Bucket width for replay: spread.")
    time_scale: Annotated[float, Field(ge=1e-9, le=1e9)] | None = Field(
        None, description="Multiply inter-arrival times by this (2 = half the rate)."
    )
    target_rate_per_s: Rate | None = Field(
        None, description="Rescale time so the mean rate is this."
    )
    window_s: tuple[Time, Time] | None = Field(
        None, description="[start, end) of trace time to keep; re-based to start at 0."
    )
    max_requests: int | None = Field(
        None, ge=1, le=MAX_REQUESTS, description="Keep the first N requests."
    )
    filters: TraceFilters | None = None

    @model_validator(mode="after")
    def _check(self) -> TraceCfg:
        if self.time_scale is not None and self.target_rate_per_s is not None:
            raise ValueError("give time_scale or target_rate_per_s, not both")
        if self.window_s is not None and self.window_s[1] <= self.window_s[0]:
            raise ValueError(f"window_s end must be > start, got {list(self.window_s)}")
        return self


# ---------------------------------------------------------------------------- workload


class WorkloadCfg(_Cfg):
    """What arrives: a trace, or a synthetic generator (arrivals + lengths + prefixes)."""

    name: str | None = Field(None, description="Label (default: trace stem or generator).")
    trace: TraceCfg | None = Field(None, description="Replay a trace file.")
    arrivals: ArrivalsCfg | None = Field(
        None, description="Synthetic arrival process (also for length-only traces)."
    )
    lengths: LengthsCfg | None = Field(None, description="Synthetic length distributions.")
    prefixes: PrefixesCfg = Field(
        NoPrefixes(kind="none"), description="Shared-prefix structure of synthetic requests."
    )
    sampling: SamplingCfg = Field(SamplingCfg(), description="Fan-out per request.")
    num_requests: int | None = Field(
        None, ge=1, le=MAX_REQUESTS,
        description="Requests to generate (synthetic; caps a length-only trace).",
    )

    @model_validator(mode="after")
    def _check(self) -> WorkloadCfg:
        if self.trace is not None:
            if self.lengths is not None:
                raise ValueError("a trace workload takes no lengths: (the trace has them)")
            if self.prefixes.kind != "none":
                raise ValueError("a trace workload takes no prefixes: (the trace has them)")
            return self
        missing = [k for k in ("arrivals", "lengths", "num_requests") if getattr(self, k) is None]
        if missing:
            raise ValueError(
                f"a synthetic workload needs {', '.join(missing)} (or give trace: instead)"
            )
        return self


def tree_nodes(depth: int, branching: int) -> int:
    """Nodes of a full tree (root included), capped just above the per-tree limit."""
    total, level = 0, 1
    for _ in range(depth + 1):
        total += level
        if total > MAX_UNIT_REQUESTS:
            return MAX_UNIT_REQUESTS + 1
        level *= branching
    return total


def estimate_requests(cfg: WorkloadCfg) -> int:
    """Requests (after sampling fan-out) a synthetic workload will generate, computed from
    the config alone; 0 for a trace (its size is bounded by the trace limits)."""
    if cfg.trace is not None or cfg.num_requests is None:
        return 0
    return cfg.num_requests * max(cfg.sampling.n, cfg.sampling.beam_width)


def _mean_tokens(dist: object) -> float:
    """Expected length of a length distribution (0 when unknown: an empirical trace)."""
    kind = getattr(dist, "dist", None)
    cap = getattr(dist, "max_tokens", None) or MAX_TOKENS
    if kind == "fixed":
        return float(dist.tokens)  # type: ignore[attr-defined]
    if kind == "uniform":
        return (dist.min_tokens + dist.max_tokens) / 2  # type: ignore[attr-defined]
    if kind in ("normal", "lognormal"):
        return min(float(dist.mean_tokens), cap)  # type: ignore[attr-defined]
    if kind == "zipf":
        return cap / 2
    return 0.0


def estimate_prefix_ids(cfg: WorkloadCfg) -> float:
    """Expected number of prefix block ids a synthetic workload materialises: each
    request's whole context (shared prefix, inherited turns or tree levels, its own
    prompt) in blocks of ``prefixes.block_tokens``."""
    p, lengths = cfg.prefixes, cfg.lengths
    if cfg.trace is not None or lengths is None or not cfg.num_requests or not p.block_tokens:
        return 0.0
    new = _mean_tokens(lengths.prompt)
    out = _mean_tokens(lengths.output) if lengths.output is not None else 0.0
    pool = 0.0
    if p.kind == "system_prompts":
        shared = _mean_tokens(p.prompt_tokens)
        pool = p.num_prompts * shared
        context = shared + new
    elif p.kind == "few_shot":
        context = p.prefix_tokens + new
    elif p.kind == "multi_turn":
        context = p.system_prompt_tokens + (p.max_turns + 1) / 2 * (new + out) + out
    elif p.kind == "tree_of_thought":
        context = p.system_prompt_tokens + (p.depth + 1) * (new + out)
    else:
        context = new
    if lengths.max_total_tokens is not None:
        context = min(context, lengths.max_total_tokens)
    return (cfg.num_requests * context + pool) / p.block_tokens


def check_size(cfg: WorkloadCfg) -> None:
    """Refuse a workload whose estimate exceeds :data:`MAX_REQUESTS` before building it.

    Raises:
        ConfigError: with the estimate and the settings that caused it.
    """
    n = estimate_requests(cfg)
    if n > MAX_REQUESTS:
        fan = max(cfg.sampling.n, cfg.sampling.beam_width)
        raise ConfigError(
            f"workload: {cfg.num_requests:,} requests x {fan} samples = {n:,} sequences; the "
            f"limit is {MAX_REQUESTS:,} (docs/inputs.md). Lower workload.num_requests or "
            "workload.sampling"
        )
    ids = estimate_prefix_ids(cfg)
    if ids > MAX_PREFIX_IDS:
        raise ConfigError(
            f"workload: about {ids:.3g} prefix block ids ({cfg.num_requests:,} requests whose "
            f"context averages ~{ids * cfg.prefixes.block_tokens / cfg.num_requests:.3g} "
            f"tokens, in blocks of prefixes.block_tokens={cfg.prefixes.block_tokens}); the "
            f"limit is {MAX_PREFIX_IDS:,} (docs/inputs.md). Lower num_requests, the lengths, "
            "max_turns / depth, or set lengths.max_total_tokens"
        )
    if cfg.trace is None and cfg.arrivals is not None and cfg.num_requests is not None:
        a = cfg.arrivals
        rate = getattr(a, "rate_per_s", None)
        if rate is not None:
            duty = a.on_s / (a.on_s + a.off_s) if a.process == "onoff" else 1.0
            span_s = cfg.num_requests / (rate * duty)
            if span_s > MAX_TIME_S:
                raise ConfigError(
                    f"workload.arrivals: {cfg.num_requests:,} requests at {rate:g}/s"
                    + (f" (on {duty:.2g} of the time)" if duty < 1 else "")
                    + f" span about {span_s:.3g} s; the limit is {MAX_TIME_S:g} s "
                    "(docs/inputs.md). Raise rate_per_s or lower num_requests"
                )


def build_workload(cfg: WorkloadCfg, *, seed: int, base_dir: Path | None = None) -> Workload:
    """Materialise the workload a config describes.

    Args:
        cfg: the validated config.
        seed: the scenario seed; each random part uses its own named stream.
        base_dir: directory against which relative trace paths resolve (the scenario's).

    Returns:
        A checked :class:`~workloads.request.Workload`.

    Raises:
        ConfigError: an impossible combination (e.g. a timestamped trace with arrivals:).
        TraceError: a missing, empty or malformed trace file.
    """
    from servesim.workloads import synthetic, traces, transforms

    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    check_size(cfg)
    if cfg.trace is None:
        wl = synthetic.generate(cfg, seed=seed, base_dir=base_dir)
    else:
        path = resolve_path(cfg.trace.path, base_dir)
        fmt = traces.detect_format(path) if cfg.trace.format == "auto" else cfg.trace.format
        if fmt == "lengths":
            if cfg.arrivals is None:
                raise ConfigError(
                    f"{path}: a length-only trace has no timestamps; add workload.arrivals "
                    f"(e.g. {{process: poisson, rate_per_s: 10}})"
                )
            wl = traces.read_trace(path, format=fmt)
            wl = transforms.apply_trace_cfg(wl, cfg.trace)
            if cfg.num_requests is not None and cfg.num_requests < len(wl):
                wl = wl.select(slice_index(cfg.num_requests))
            wl = synthetic.assign_arrivals(wl, cfg.arrivals, seed=seed)
        else:
            if cfg.arrivals is not None:
                raise ConfigError(
                    f"{path}: a {fmt} trace has its own timestamps; remove workload.arrivals "
                    f"(use trace.time_scale or trace.target_rate_per_s to change the rate)"
                )
            wl = traces.read_trace(
                path, format=fmt, replay=cfg.trace.replay, bucket_s=cfg.trace.bucket_s
            )
            wl = transforms.apply_trace_cfg(wl, cfg.trace)
            if cfg.num_requests is not None and cfg.num_requests < len(wl):
                wl = wl.select(slice_index(cfg.num_requests))
        wl = synthetic.apply_sampling(wl, cfg.sampling)
    if cfg.name is not None:
        wl = replace(wl, name=cfg.name)
    _check_times(wl)
    wl.check()
    return wl


def _check_times(wl: Workload) -> None:
    """Arrival and think times finite and within :data:`MAX_TIME_S` (a generator pushed to
    its limits, or a scaled trace, cannot hand the engine inf or 1e300 seconds)."""
    open_arrivals = wl.arrival_s[wl.depends_on < 0]
    bad = ~np.isfinite(open_arrivals) | (open_arrivals > MAX_TIME_S)
    if bad.any() or np.any(~np.isfinite(wl.think_time_s) | (wl.think_time_s > MAX_TIME_S)):
        last = float(open_arrivals[bad][0]) if bad.any() else float("nan")
        raise ConfigError(
            f"workload {wl.name!r}: arrival or think times reach {last:.3g} s, beyond the limit "
            f"of {MAX_TIME_S:g} s (docs/inputs.md); check the rates, durations and time_scale"
        )


def resolve_path(path: Path, base_dir: Path | None) -> Path:
    """Resolve ``path`` against ``base_dir`` when it is relative."""
    path = Path(path).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    return path


def slice_index(n: int) -> npt.NDArray[np.int64]:
    """Index array of the first ``n`` rows."""
    return np.arange(n, dtype=np.int64)
