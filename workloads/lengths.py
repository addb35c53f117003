"""Token-length distributions: vectorised samplers returning ``int64`` arrays ``>= 1``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from servesim.hwmodels.errors import ConfigError

if TYPE_CHECKING:
    from servesim.workloads.config import LengthDist, LengthsCfg

# Largest support a bounded Zipf is sampled over by inverse CDF (a table of this many floats).
_ZIPF_MAX_SUPPORT = 1 << 24


def sample_lengths(
    dist: LengthDist,
    n: int,
    rng: np.random.Generator,
    *,
    base_dir: Path | None = None,
    column: int = 0,
) -> npt.NDArray[np.int64]:
    """Draw ``n`` lengths from one distribution, clipped to ``[min_tokens, max_tokens]``.

    Args:
        dist: a length model of :mod:`workloads.config`.
        n: number of samples.
        rng: the caller's named stream.
        base_dir: resolves a relative empirical ``path``.
        column: for an empirical spec, 0 samples the prompt column, 1 the output column.
    """
    kind = dist.dist
    if kind == "fixed":
        x = np.full(n, dist.tokens, dtype=np.float64)
    elif kind == "uniform":
        x = rng.integers(dist.min_tokens, dist.max_tokens, size=n, endpoint=True).astype(np.float64)
    elif kind == "normal":
        x = np.rint(rng.normal(dist.mean_tokens, dist.std_tokens, size=n))
    elif kind == "lognormal":
        sigma = np.sqrt(2.0 * np.log(dist.mean_tokens / dist.median_tokens))
        x = np.rint(rng.lognormal(np.log(dist.median_tokens), sigma, size=n))
    elif kind == "zipf":
        support = dist.max_tokens - dist.min_tokens + 1
        if support > _ZIPF_MAX_SUPPORT:
            raise ConfigError(
                f"zipf: support [{dist.min_tokens}, {dist.max_tokens}] is larger than "
                f"{_ZIPF_MAX_SUPPORT} tokens"
            )
        k = np.arange(dist.min_tokens, dist.max_tokens + 1, dtype=np.float64)
        cdf = np.cumsum(k**-dist.a)
        idx = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right")
        x = k[np.minimum(idx, support - 1)]
    elif kind == "empirical":
        values = empirical_pairs(dist, base_dir)[column]
        x = values[rng.integers(0, len(values), size=n)].astype(np.float64)
    else:  # pragma: no cover - pydantic rejects other kinds
        raise ConfigError(f"unknown length dist {kind!r}")
    return _clip(x, dist.min_tokens, dist.max_tokens)


def sample_prompt_output(
    cfg: LengthsCfg,
    n: int,
    rng_prompt: np.random.Generator,
    rng_output: np.random.Generator,
    *,
    base_dir: Path | None = None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Draw ``n`` (prompt, output) lengths; jointly when the prompt spec is empirical.

    The context-window clip (``max_total_tokens``) shortens the prompt first (keeping one
    token of room for output), then the output.

    Raises:
        ConfigError: an empirical prompt with a different output spec.
    """
    if cfg.prompt.dist == "empirical" and cfg.output in (None, cfg.prompt):
        prompt_all, output_all = empirical_pairs(cfg.prompt, base_dir)
        pick = rng_prompt.integers(0, len(prompt_all), size=n)
        prompt = _clip(
            prompt_all[pick].astype(np.float64), cfg.prompt.min_tokens, cfg.prompt.max_tokens
        )
        output = _clip(
            output_all[pick].astype(np.float64), cfg.prompt.min_tokens, cfg.prompt.max_tokens
        )
    elif cfg.prompt.dist == "empirical":
        raise ConfigError(
            "lengths: an empirical prompt samples (prompt, output) pairs jointly; omit "
            "lengths.output or give it the same spec as lengths.prompt"
        )
    else:
        prompt = sample_lengths(cfg.prompt, n, rng_prompt, base_dir=base_dir)
        output = sample_lengths(cfg.output, n, rng_output, base_dir=base_dir, column=1)
    if cfg.max_total_tokens is not None:
        prompt, output = clip_total(prompt, output, cfg.max_total_tokens)
    return prompt, output


def clip_total(
    prompt: npt.NDArray[np.int64], output: npt.NDArray[np.int64], max_total_tokens: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Clip so that ``prompt + output <= max_total_tokens``, prompt first."""
    if max_total_tokens < 2:
        raise ConfigError(f"max_total_tokens must be >= 2, got {max_total_tokens}")
    prompt = np.minimum(prompt, max_total_tokens - 1)
    output = np.minimum(output, max_total_tokens - prompt)
    return prompt, output


def empirical_pairs(
    dist: LengthDist, base_dir: Path | None
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(prompt, output) length columns of an empirical spec's trace file."""
    from servesim.workloads.config import resolve_path
    from servesim.workloads.traces import read_trace

    wl = read_trace(resolve_path(dist.path, base_dir), format=dist.format)
    return wl.prompt_tokens, wl.output_tokens


def _clip(x: npt.NDArray[np.float64], lo: int, hi: int | None) -> npt.NDArray[np.int64]:
    lo = max(1, lo)
    return np.clip(x, lo, hi if hi is not None else np.inf).astype(np.int64)
