"""Operator times from the cycle model for the serving simulation, cached over shape buckets.

A serving step calls the cost model thousands of times with slowly changing shapes. The cycle
model is far too slow to run per call, so :class:`CycleCostModel` simulates each operator once
per *bucket* and interpolates:

* the token/batch dimension (``m`` of a GEMM, batch of attention) and the context length are
  snapped to a geometric grid with 4 points per octave (1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 13, 16,
  ...; exact below 8), and the time is interpolated linearly between the two neighbouring grid
  points (both simulated once, then cached);
* the other dimensions (weights' ``n`` and ``k``, heads, head_dim, block size, dtype) are taken
  exactly: a model has only a handful of them.

The cache is a plain ``dict[str, float]`` of seconds keyed by a readable string, saved to and
loaded from JSON (never pickle) together with the GPU name and a fingerprint of the model's
parameters; a file written for another GPU or another parameter set is refused.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
from dataclasses import asdict
from pathlib import Path

from hwmodels.cyclesim.kernels import (
    simulate_decode_attention,
    simulate_gemm,
    simulate_prefill_attention,
)
from hwmodels.cyclesim.params import Machine, machine_for
from hwmodels.errors import ConfigError
from hwmodels.gpus import GpuSpec, get_gpu

#: Format version of the JSON cache file.
CACHE_FORMAT = 1
#: Grid points per octave of the bucketed dimensions.
POINTS_PER_OCTAVE = 4


def bucket_grid(limit: int) -> list[int]:
    """Grid values up to at least ``limit``: 1..8 exact, then 4 per octave (rounded up)."""
    grid = list(range(1, 9))
    e = 3.0
    while grid[-1] < limit:
        e += 1.0 / POINTS_PER_OCTAVE
        v = math.ceil(2.0**e - 1e-9)
        if v > grid[-1]:
            grid.append(v)
    return grid


_GRID = bucket_grid(1 << 22)


def bracket(x: int) -> tuple[int, int]:
    """The grid points ``lo <= x <= hi`` around ``x`` (equal when ``x`` is on the grid)."""
    if x < 1:
        raise ConfigError(f"bucketed dimensions must be >= 1, got {x}")
    i = bisect.bisect_left(_GRID, x)
    if i >= len(_GRID):
        raise ConfigError(f"dimension {x} beyond the cycle cache's grid ({_GRID[-1]})")
    hi = _GRID[i]
    lo = hi if hi == x else _GRID[i - 1]
    return lo, hi


def _interp(x: int, lo: int, hi: int, t_lo: float, t_hi: float) -> float:
    if hi == lo:
        return t_lo
    return t_lo + (t_hi - t_lo) * (x - lo) / (hi - lo)


class CycleCostModel:
    """Cached cycle-model operator times for one GPU.

    Args:
        gpu: catalogue name or spec.

    Raises:
        ConfigError: the GPU lacks a field the cycle model needs.
    """

    def __init__(self, gpu: str | GpuSpec) -> None:
        self._mach: Machine = machine_for(get_gpu(gpu))
        self._times_s: dict[str, float] = {}
        self.num_simulations = 0

    @property
    def gpu_name(self) -> str:
        """Catalogue name of the GPU."""
        return self._mach.gpu.name

    @property
    def fingerprint(self) -> str:
        """Hash of the parameters the cached times depend on (GPU fields + fitted values)."""
        payload = json.dumps(
            {"gpu": self._mach.gpu.to_dict(), "fitted": asdict(self._mach.fitted), "v": CACHE_FORMAT},
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def __len__(self) -> int:
        return len(self._times_s)

    # ------------------------------------------------------------------ operators
    def gemm_time_s(
        self, m: int, n: int, k: int, compute_type: str = "fp16", weight_bits: int = 16
    ) -> float:
        """Time of ``[m, k] @ [k, n]`` (``m`` = tokens), interpolated over the ``m`` grid."""
        lo, hi = bracket(m)
        t_lo = self._gemm_at(lo, n, k, compute_type, weight_bits)
        if hi == lo:
            return t_lo
        return _interp(m, lo, hi, t_lo, self._gemm_at(hi, n, k, compute_type, weight_bits))

    def decode_attention_time_s(
        self,
        batch: int,
        context_tokens: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        kv_bytes_per_elem: int = 2,
        block_size: int | None = 16,
    ) -> float:
        """Decode attention of ``batch`` sequences of (mean) ``context_tokens`` keys."""
        b_lo, b_hi = bracket(batch)
        c_lo, c_hi = bracket(context_tokens)

        def at(b: int, c: int) -> float:
            key = f"decode|b={b}|ctx={c}|h={num_heads}|kvh={num_kv_heads}|d={head_dim}|kvb={kv_bytes_per_elem}|bs={block_size}"
            return self._get(key, lambda: simulate_decode_attention(
                self._mach, batch=b, context_tokens=c, num_heads=num_heads,
                num_kv_heads=num_kv_heads, head_dim=head_dim,
                kv_bytes_per_elem=kv_bytes_per_elem, block_size=block_size).time_s)

        t_blo = _interp(context_tokens, c_lo, c_hi, at(b_lo, c_lo), at(b_lo, c_hi) if c_hi != c_lo else 0.0)
        if b_hi == b_lo:
            return t_blo
        t_bhi = _interp(context_tokens, c_lo, c_hi, at(b_hi, c_lo), at(b_hi, c_hi) if c_hi != c_lo else 0.0)
        return _interp(batch, b_lo, b_hi, t_blo, t_bhi)

    def prefill_attention_time_s(
        self,
        batch: int,
        query_tokens: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        context_tokens: int | None = None,
        kv_bytes_per_elem: int = 2,
    ) -> float:
        """Causal prefill attention; ``query_tokens`` and the cached prefix are bucketed."""
        prefix = 0 if context_tokens is None else context_tokens - query_tokens
        if prefix < 0:
            raise ConfigError(f"context_tokens ({context_tokens}) < query_tokens ({query_tokens})")
        q_lo, q_hi = bracket(query_tokens)
        p_lo, p_hi = (0, 0) if prefix == 0 else bracket(prefix)

        def at(q: int, p: int) -> float:
            key = f"prefill|b={batch}|q={q}|prefix={p}|h={num_heads}|kvh={num_kv_heads}|d={head_dim}|kvb={kv_bytes_per_elem}"
            return self._get(key, lambda: simulate_prefill_attention(
                self._mach, batch=batch, query_tokens=q, context_tokens=q + p,
                num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                kv_bytes_per_elem=kv_bytes_per_elem).time_s)

        def over_prefix(q: int) -> float:
            t_lo = at(q, p_lo)
            return t_lo if p_hi == p_lo else _interp(prefix, p_lo, p_hi, t_lo, at(q, p_hi))

        t_qlo = over_prefix(q_lo)
        if q_hi == q_lo:
            return t_qlo
        return _interp(query_tokens, q_lo, q_hi, t_qlo, over_prefix(q_hi))

    # ------------------------------------------------------------------ cache
    def _gemm_at(self, m: int, n: int, k: int, compute_type: str, weight_bits: int) -> float:
        key = f"gemm|m={m}|n={n}|k={k}|ct={compute_type}|wb={weight_bits}"
        return self._get(key, lambda: simulate_gemm(
            self._mach, m=m, n=n, k=k, compute_type=compute_type, weight_bits=weight_bits).time_s)

    def _get(self, key: str, compute: object) -> float:
        t = self._times_s.get(key)
        if t is None:
            t = float(compute())  # type: ignore[operator]
            self._times_s[key] = t
            self.num_simulations += 1
        return t

    def save(self, path: str | Path) -> None:
        """Write the cache as JSON (keys sorted, so equal caches give equal files)."""
        payload = {
            "format": CACHE_FORMAT,
            "gpu": self.gpu_name,
            "fingerprint": self.fingerprint,
            "times_s": dict(sorted(self._times_s.items())),
        }
        Path(path).write_text(json.dumps(payload, indent=1) + "\n")

    def load(self, path: str | Path) -> int:
        """Merge a JSON cache written by :meth:`save`; returns the number of entries read.

        Raises:
            ConfigError: unreadable file, other format, other GPU or other parameters.
        """
        try:
            payload = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cycle cache {path}: cannot read: {exc}") from None
        if not isinstance(payload, dict) or payload.get("format") != CACHE_FORMAT:
            raise ConfigError(f"cycle cache {path}: not a format-{CACHE_FORMAT} cycle cache")
        if payload.get("gpu") != self.gpu_name or payload.get("fingerprint") != self.fingerprint:
            raise ConfigError(
                f"cycle cache {path} was written for GPU {payload.get('gpu')!r} with parameters "
                f"{payload.get('fingerprint')!r}, not {self.gpu_name!r}/{self.fingerprint!r}"
            )
        times = payload.get("times_s", {})
        self._times_s.update({str(k): float(v) for k, v in times.items()})
        return len(times)
