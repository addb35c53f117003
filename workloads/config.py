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
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    model_validator,
)

from servesim.hwmodels.errors import ConfigError

if TYPE_CHECKING:
    import numpy.typing as npt

    from servesim.workloads.request import Workload

TraceFormat = Literal["auto", "azure", "mooncake", "splitwise", "lengths", "burstgpt", "servesim"]


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------- arrivals


class PoissonArrivals(_Cfg):
    """Poisson process: exponential inter-arrival times."""

    process: Literal["poisson"]
    rate_per_s: PositiveFloat = Field(description="Mean arrival rate (requests or sessions/s).")


class GammaArrivals(_Cfg):
    """Gamma renewal process: bursty (cv > 1) or regular (cv < 1) arrivals."""

    process: Literal["gamma"]
    rate_per_s: PositiveFloat = Field(description="Mean arrival rate.")
    cv: PositiveFloat = Field(description="Coefficient of variation of inter-arrival times.")


class ConstantArrivals(_Cfg):
    """Evenly spaced arrivals, ``1 / rate_per_s`` apart, the first at 0."""

    process: Literal["constant"]
    rate_per_s: PositiveFloat = Field(description="Arrival rate.")


class PiecewiseArrivals(_Cfg):
    """Poisson with a piecewise-constant rate; the pattern repeats after its last segment."""

    process: Literal["piecewise"]
    rates_per_s: list[NonNegativeFloat] = Field(min_length=1, description="Rate per segment.")
    durations_s: list[PositiveFloat] = Field(min_length=1, description="Length per segment.")

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
    rate_per_s: PositiveFloat = Field(description="Mean rate over a period.")
    amplitude_frac: float = Field(0.5, ge=0.0, lt=1.0, description="Swing as a fraction of mean.")
    period_s: PositiveFloat = Field(86400.0, description="Period of the cycle (a day).")
    peak_s: NonNegativeFloat = Field(0.0, description="Time of the peak within the period.")


class OnOffArrivals(_Cfg):
    """Bursts: Poisson at ``rate_per_s`` for ``on_s``, then silence for ``off_s``, repeated."""

    process: Literal["onoff"]
    rate_per_s: PositiveFloat = Field(description="Rate while on.")
    on_s: PositiveFloat = Field(description="Length of a burst.")
    off_s: PositiveFloat = Field(description="Pause between bursts.")


class OfflineArrivals(_Cfg):
    """Everything arrives at time 0 (MLPerf's offline scenario)."""

    process: Literal["offline"]


class ClosedLoopArrivals(_Cfg):
    """``num_clients`` clients, each sending its next request ``think_time_s`` after the last
    one finished (``vllm bench serve --max-concurrency``). The engine feeds completions back
    through ``depends_on``."""

    process: Literal["closed_loop"]
    num_clients: PositiveInt = Field(description="Concurrent clients (max concurrency).")
    think_time_s: NonNegativeFloat = Field(0.0, description="Mean pause after a completion.")
    think_time_cv: NonNegativeFloat = Field(
        0.0, description="CV of the pause (0 = constant, else Gamma)."
    )
    ramp_up_s: NonNegativeFloat = Field(
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
    min_tokens: PositiveInt = Field(1, description="Clip samples below to this.")
    max_tokens: PositiveInt | None = Field(None, description="Clip samples above to this.")

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
    tokens: PositiveInt = Field(description="The length.")


class UniformLength(_Dist):
    """Uniform integer in ``[min_tokens, max_tokens]``."""

    dist: Literal["uniform"]
    max_tokens: PositiveInt = Field(description="Upper bound (inclusive).")


class NormalLength(_Dist):
    """Normal, rounded and clipped to ``[min_tokens, max_tokens]``."""

    dist: Literal["normal"]
    mean_tokens: PositiveFloat
    std_tokens: NonNegativeFloat


class LognormalLength(_Dist):
    """Lognormal given its mean and median (mean >= median): mu = ln median,
    sigma^2 = 2 ln(mean / median)."""

    dist: Literal["lognormal"]
    mean_tokens: PositiveFloat
    median_tokens: PositiveFloat

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
    a: PositiveFloat = Field(description="Exponent.")
    max_tokens: PositiveInt = Field(description="Upper bound of the support (inclusive).")


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
    max_total_tokens: PositiveInt | None = Field(
        None, description="Clip prompt + output to this (context window); prompt first."
    )

    @model_validator(mode="after")
    def _check_output(self) -> LengthsCfg:
        if self.output is None and self.prompt.dist != "empirical":
            raise ValueError("lengths.output is required unless lengths.prompt is empirical")
        return self


# ---------------------------------------------------------------------------- prefixes


class _Prefix(_Cfg):
    block_tokens: PositiveInt = Field(16, description="Tokens per prefix-identity block.")


class NoPrefixes(_Cfg):
    """Every request is distinct (prompt ids are still emitted, all unique)."""

    kind: Literal["none"]
    block_tokens: NonNegativeInt = Field(
        0, description="Tokens per block of the (unique) ids; 0 = emit no prefix ids."
    )


class SystemPromptsCfg(_Prefix):
    """A pool of system prompts, picked with Zipf popularity; each request = system prompt +
    its own message."""

    kind: Literal["system_prompts"]
    num_prompts: PositiveInt = Field(description="Pool size.")
    prompt_tokens: LengthDist = Field(description="Length of each pooled system prompt.")
    zipf_a: NonNegativeFloat = Field(
        1.0, description="Popularity exponent: P(rank k) ~ k^-a (0 = uniform)."
    )


class FewShotCfg(_Prefix):
    """One long shared prefix (e.g. MMLU 5-shot examples) + short distinct questions."""

    kind: Literal["few_shot"]
    prefix_tokens: PositiveInt = Field(description="Length of the shared few-shot prefix.")


class MultiTurnCfg(_Prefix):
    """Chat sessions: turn k+1's prompt = turn k's prompt + answer + a new message, sent
    ``think_time_s`` after turn k finishes. Arrivals give the sessions' start times."""

    kind: Literal["multi_turn"]
    min_turns: PositiveInt = Field(1, description="Fewest turns per session.")
    max_turns: PositiveInt = Field(description="Most turns per session (uniform in between).")
    think_time_s: NonNegativeFloat = Field(5.0, description="Mean pause between turns.")
    think_time_cv: NonNegativeFloat = Field(0.0, description="CV of the pause (0 = constant).")
    system_prompt_tokens: NonNegativeInt = Field(0, description="Prompt shared by all sessions.")

    @model_validator(mode="after")
    def _check_turns(self) -> MultiTurnCfg:
        if self.max_turns < self.min_turns:
            raise ValueError(f"max_turns ({self.max_turns}) < min_turns ({self.min_turns})")
        return self


class TreeOfThoughtCfg(_Prefix):
    """Trees of reasoning steps: a child's prompt = parent's prompt + parent's output + a new
    instruction; children are sent when the parent finishes."""

    kind: Literal["tree_of_thought"]
    depth: PositiveInt = Field(description="Levels below the root.")
    branching: PositiveInt = Field(description="Children per node.")
    think_time_s: NonNegativeFloat = Field(0.0, description="Pause before a child is sent.")
    system_prompt_tokens: NonNegativeInt = Field(0, description="Prompt shared by all trees.")


PrefixesCfg = Annotated[
    NoPrefixes | SystemPromptsCfg | FewShotCfg | MultiTurnCfg | TreeOfThoughtCfg,
    Field(discriminator="kind"),
]


class SamplingCfg(_Cfg):
    """Fan-out per request: ``n`` parallel samples or beam search of ``beam_width``."""

    n: PositiveInt = Field(1, description="Parallel samples per request.")
    beam_width: PositiveInt = Field(1, description="Beam width (1 = no beam search).")

    @model_validator(mode="after")
    def _check(self) -> SamplingCfg:
        if self.n > 1 and self.beam_width > 1:
            raise ValueError("use either sampling.n > 1 or sampling.beam_width > 1, not both")
        return self


# ---------------------------------------------------------------------------- traces


class TraceFilters(_Cfg):
    """Keep only requests whose lengths lie within the bounds (dropped rows are counted)."""

    min_prompt_tokens: PositiveInt | None = None
    max_prompt_tokens: PositiveInt | None = None
    min_output_tokens: PositiveInt | None = None
    max_output_tokens: PositiveInt | None = None


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
    bucket_s: PositiveFloat = Field(3.0, description="Bucket width for replay: spread.")
    time_scale: PositiveFloat | None = Field(
        None, description="Multiply inter-arrival times by this (2 = half the rate)."
    )
    target_rate_per_s: PositiveFloat | None = Field(
        None, description="Rescale time so the mean rate is this."
    )
    window_s: tuple[NonNegativeFloat, PositiveFloat] | None = Field(
        None, description="[start, end) of trace time to keep; re-based to start at 0."
    )
    max_requests: PositiveInt | None = Field(None, description="Keep the first N requests.")
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
    num_requests: PositiveInt | None = Field(
        None, description="Requests to generate (synthetic; caps a length-only trace)."
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
    wl.check()
    return wl


def resolve_path(path: Path, base_dir: Path | None) -> Path:
    """Resolve ``path`` against ``base_dir`` when it is relative."""
    path = Path(path).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    return path


def slice_index(n: int) -> npt.NDArray[np.int64]:
    """Index array of the first ``n`` rows."""
    return np.arange(n, dtype=np.int64)
