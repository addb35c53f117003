"""Summary statistics of a workload: what ``servesim trace stats`` prints."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

from servesim.workloads.request import Workload

# Percentiles reported for prompt and output lengths (numpy's default linear interpolation).
PERCENTILES = (50, 90, 99)


@dataclass(frozen=True, slots=True, kw_only=True)
class LengthStats:
    """Mean, percentiles and maximum of a token-length column."""

    mean_tokens: float
    p50_tokens: float
    p90_tokens: float
    p99_tokens: float
    max_tokens: int

    @classmethod
    def of(cls, x: npt.NDArray[np.int64]) -> LengthStats:
        """Statistics of ``x`` (non-empty)."""
        p50, p90, p99 = np.percentile(x, PERCENTILES)
        return cls(
            mean_tokens=float(x.mean()),
            p50_tokens=float(p50),
            p90_tokens=float(p90),
            p99_tokens=float(p99),
            max_tokens=int(x.max()),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkloadStats:
    """Headline statistics of a workload.

    Attributes:
        num_requests: requests in the workload.
        num_open_arrivals: requests with a fixed arrival time (the rest depend on others).
        duration_s: last minus first open arrival.
        mean_rate_per_s: ``num_open_arrivals / duration_s`` (NaN for a zero span).
        interarrival_cv: std / mean of the gaps between open arrivals (1 for Poisson).
        prompt: prompt-length statistics.
        output: output-length statistics.
        block_tokens: prefix block size (0 = no prefix ids).
        num_prompt_blocks: prompt blocks over all requests.
        prefix_reuse_frac: fraction of prompt blocks already seen earlier (unlimited
            cache); NaN without prefix ids.
        notes: the workload's notes (dropped rows, transformations).
    """

    name: str
    num_requests: int
    num_open_arrivals: int
    duration_s: float
    mean_rate_per_s: float
    interarrival_cv: float
    prompt: LengthStats
    output: LengthStats
    block_tokens: int
    num_prompt_blocks: int
    prefix_reuse_frac: float
    notes: tuple[str, ...]

    def to_dict(self) -> dict:
        """JSON-ready nested dict."""
        d = asdict(self)
        d["notes"] = list(self.notes)
        return {
            k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in d.items()
        }


def workload_stats(wl: Workload) -> WorkloadStats:
    """Compute :class:`WorkloadStats` for a non-empty workload."""
    t = np.sort(wl.arrival_s[wl.depends_on < 0])
    duration_s = float(t[-1] - t[0]) if len(t) else 0.0
    gaps = np.diff(t)
    cv = float(gaps.std() / gaps.mean()) if len(gaps) and gaps.mean() > 0 else float("nan")
    reuse, num_blocks = prefix_reuse(wl)
    return WorkloadStats(
        name=wl.name,
        num_requests=len(wl),
        num_open_arrivals=len(t),
        duration_s=duration_s,
        mean_rate_per_s=len(t) / duration_s if duration_s > 0 else float("nan"),
        interarrival_cv=cv,
        prompt=LengthStats.of(wl.prompt_tokens),
        output=LengthStats.of(wl.output_tokens),
        block_tokens=wl.block_tokens,
        num_prompt_blocks=num_blocks,
        prefix_reuse_frac=reuse,
        notes=wl.notes,
    )


def prefix_reuse(wl: Workload) -> tuple[float, int]:
    """Fraction of prompt blocks whose id appeared before, with an unlimited cache.

    Every occurrence of an id after its first is a reuse, so the fraction is
    ``1 - unique / total`` over the prompt blocks; order does not matter.

    Returns:
        ``(fraction, total prompt blocks)``; the fraction is NaN without prefix ids.
    """
    if not wl.has_prefix_ids:
        return float("nan"), 0
    counts = wl.num_prompt_blocks()
    listed = np.diff(wl.prefix_offsets)
    if np.array_equal(counts, listed):
        ids = wl.prefix_block_ids
    else:
        from servesim.workloads.request import segment_arange

        ids = wl.prefix_block_ids[
            np.repeat(wl.prefix_offsets[:-1], counts) + segment_arange(counts)
        ]
    total = len(ids)
    if total == 0:
        return float("nan"), 0
    return 1.0 - len(np.unique(ids)) / total, total
