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

The grid points are a ``dict`` of seconds keyed by tuples of plain values, saved to and
loaded from JSON (never pickle) as lists together with the GPU name and a fingerprint of the model's
parameters; a file written for another GPU or another parameter set is refused.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
from dataclasses import asdict
from pathlib import Path

from servesim.hwmodels.cyclesim.kernels import (
    simulate_decode_attention,
    simulate_gemm,
    simulate_prefill_attention,
)
from servesim.hwmodels.cyclesim.params import Machine, machine_for
from servesim.hwmodels.errors import ConfigError
from servesim.hwmodels.gpus import GpuSpec, get_gpu

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


def bracket(x: float) -> tuple[int, int]:
    """The grid points ``lo <= x <= hi`` around ``x`` (equal when ``x`` is on the grid).

    ``x`` may be fractional (a mean context length); values in (0, 1) snap to 1.
    """
    if not x > 0:
        raise ConfigError(f"bucketed dimensions must be > 0, got {x}")
    x = max(float(x), 1.0)
    i = bisect.bisect_left(_GRID, x)
    if i >= len(_GRID):
        raise ConfigError(f"dimension {x} beyond the cycle cache's grid ({_GRID[-1]})")
    hi = _GRID[i]
    lo = hi if hi == x else _GRID[i - 1]
    return lo, hi


def _interp(x: float, lo: int, hi: int, t_lo: float, t_hi: float) -> float:
    if hi == lo:
        return t_lo
    x = max(float(x), 1.0)
    return t_lo + (t_hi - t_lo) * (x - lo) / (hi - lo)


#: Above these sizes times are extrapolated linearly from the two grid points below (the
#: kernel is then bandwidth- or compute-bound, so time is linear in the dimension) instead of
#: simulated: decode batches of more than 64 sequences, GEMMs of more than 2048 tokens.
DECODE_BATCH_SIM_MAX = 64
GEMM_M_SIM_MAX = 2048

#: Entries the exact-argument memo (and the decode segment table) hold before being cleared.
MEMO_MAX_ENTRIES = 1 << 18

_Key = tuple[object, ...]


class CycleCostModel:
    """Cached cycle-model operator times for one GPU (an ``OpTimer`` for the step-cost model).

    Two levels: an exact-argument memo (the hit path of a serving loop: one tuple hash) in front
    of the bucket grid, whose points are each simulated once; decode attention also keeps the
    end points of each context segment per batch (:meth:`_decode_over_ctx`).

    Args:
        gpu: catalogue name or spec.

    Raises:
        ConfigError: the GPU lacks a field the cycle model needs.
    """

    def __init__(self, gpu: str | GpuSpec) -> None:
        self._mach: Machine = machine_for(get_gpu(gpu))
        self._times_s: dict[_Key, float] = {}
        self._memo: dict[_Key, float] = {}
        self._segments: dict[_Key, tuple[int, int, float, float]] = {}
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
        self, m: float, n: int, k: int, compute_type: str = "fp16", weight_bits: int = 16
    ) -> float:
        """Time of ``[m, k] @ [k, n]`` (``m`` = tokens), interpolated over the ``m`` grid; 0 if m=0."""
        memo_key = ("g", m, n, k, compute_type, weight_bits)
        t = self._memo.get(memo_key)
        if t is not None:
            return t
        t = self._gemm(m, int(n), int(k), compute_type, int(weight_bits)) if m > 0 else 0.0
        self._remember(memo_key, t)
        return t

    def decode_attention_time_s(
        self,
        batch: float,
        context_tokens: float,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        kv_bytes_per_elem: float = 2,
        block_size: int | None = 16,
    ) -> float:
        """Decode attention of ``batch`` sequences of (mean) ``context_tokens`` keys; 0 if none."""
        memo_key = ("d", batch, context_tokens, num_heads, num_kv_heads, head_dim, kv_bytes_per_elem, block_size)
        t = self._memo.get(memo_key)
        if t is not None:
            return t
        if batch > 0 and context_tokens > 0:
            geom = (int(num_heads), int(num_kv_heads), int(head_dim), kv_bytes_per_elem, block_size)
            t = self._decode_over_ctx(batch, context_tokens, geom)
        else:
            t = 0.0
        self._remember(memo_key, t)
        return t

    def prefill_attention_time_s(
        self,
        batch: float,
        query_tokens: float,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        context_tokens: float | None = None,
        kv_bytes_per_elem: float = 2,
    ) -> float:
        """Causal prefill attention; ``query_tokens`` and the cached prefix are bucketed.

        ``batch`` chunks are costed as one chunk of ``batch * query_tokens`` tokens' worth of
        CTAs (same grid size); 0 work gives 0.
        """
        memo_key = ("p", batch, query_tokens, num_heads, num_kv_heads, head_dim, context_tokens, kv_bytes_per_elem)
        t = self._memo.get(memo_key)
        if t is not None:
            return t
        if batch > 0 and query_tokens > 0:
            prefix = 0.0 if context_tokens is None else float(context_tokens) - float(query_tokens)
            if prefix < 0:
                raise ConfigError(f"context_tokens ({context_tokens}) < query_tokens ({query_tokens})")
            geom = (int(num_heads), int(num_kv_heads), int(head_dim), kv_bytes_per_elem)
            t = self._prefill(max(1, round(batch)), float(query_tokens), prefix, geom)
        else:
            t = 0.0
        self._remember(memo_key, t)
        return t

    def _remember(self, key: _Key, t: float) -> None:
        if len(self._memo) >= MEMO_MAX_ENTRIES:
            self._memo.clear()  # values are recomputed identically: results never depend on it
        self._memo[key] = t

    # ------------------------------------------------------------------ grid evaluation
    def _gemm(self, m: float, n: int, k: int, ct: str, wb: int) -> float:
        if m > GEMM_M_SIM_MAX:
            half = GEMM_M_SIM_MAX // 2
            t_a = self._gemm_at(half, n, k, ct, wb)
            t_b = self._gemm_at(GEMM_M_SIM_MAX, n, k, ct, wb)
            return t_b + (t_b - t_a) * (m - GEMM_M_SIM_MAX) / (GEMM_M_SIM_MAX - half)
        lo, hi = bracket(m)
        t_lo = self._gemm_at(lo, n, k, ct, wb)
        return t_lo if hi == lo else _interp(m, lo, hi, t_lo, self._gemm_at(hi, n, k, ct, wb))

    def _gemm_at(self, m: int, n: int, k: int, ct: str, wb: int) -> float:
        key = ("gemm", m, n, k, ct, wb)
        t = self._times_s.get(key)
        if t is None:
            t = simulate_gemm(self._mach, m=m, n=n, k=k, compute_type=ct, weight_bits=wb).time_s
            self._store(key, t)
        return t

    def _decode_over_ctx(self, batch: float, ctx: float, geom: tuple[object, ...]) -> float:
        """Decode time, linear in the context between two context grid points.

        The serving loop asks for a new mean context nearly every step, so the two end points
        of the context segment at this ``batch`` (each already interpolated over the batch) are
        kept per segment, and a new context costs one bisection and one interpolation. Same
        bilinear model as :meth:`_decode`; the grid points themselves are returned exactly.
        """
        x = float(ctx) if ctx > 1.0 else 1.0
        i = bisect.bisect_left(_GRID, x)
        seg_key = (batch, i, geom)
        seg = self._segments.get(seg_key)
        if seg is None:
            if i >= len(_GRID):
                raise ConfigError(f"dimension {x} beyond the cycle cache's grid ({_GRID[-1]})")
            hi = _GRID[i]
            lo = _GRID[i - 1] if i else hi
            seg = (lo, hi, self._decode(batch, lo, geom), self._decode(batch, hi, geom))
            if len(self._segments) >= MEMO_MAX_ENTRIES:
                self._segments.clear()
            self._segments[seg_key] = seg
        lo, hi, t_lo, t_hi = seg
        if x == hi:
            return t_hi
        return t_lo + (t_hi - t_lo) * (x - lo) / (hi - lo)

    def _decode(self, batch: float, ctx: float, geom: tuple[object, ...]) -> float:
        if batch > DECODE_BATCH_SIM_MAX:
            half = DECODE_BATCH_SIM_MAX // 2
            t_a = self._decode(half, ctx, geom)
            t_b = self._decode(DECODE_BATCH_SIM_MAX, ctx, geom)
            return t_b + (t_b - t_a) * (batch - DECODE_BATCH_SIM_MAX) / (DECODE_BATCH_SIM_MAX - half)
        b_lo, b_hi = bracket(batch)
        c_lo, c_hi = bracket(ctx)

        def over_ctx(b: int) -> float:
            t_lo = self._decode_at(b, c_lo, geom)
            return t_lo if c_hi == c_lo else _interp(ctx, c_lo, c_hi, t_lo, self._decode_at(b, c_hi, geom))

        t_blo = over_ctx(b_lo)
        return t_blo if b_hi == b_lo else _interp(batch, b_lo, b_hi, t_blo, over_ctx(b_hi))

    def _decode_at(self, b: int, c: int, geom: tuple[object, ...]) -> float:
        key = ("decode", b, c, *geom)
        t = self._times_s.get(key)
        if t is None:
            heads, kv_heads, head_dim, kvb, bs = geom
            t = simulate_decode_attention(
                self._mach, batch=b, context_tokens=c, num_heads=heads, num_kv_heads=kv_heads,  # type: ignore[arg-type]
                head_dim=head_dim, kv_bytes_per_elem=kvb, block_size=bs,  # type: ignore[arg-type]
            ).time_s
            self._store(key, t)
        return t

    def _prefill(self, batch: int, q: float, prefix: float, geom: tuple[object, ...]) -> float:
        q_lo, q_hi = bracket(q)
        p_lo, p_hi = (0, 0) if prefix < 1 else bracket(prefix)

        def over_prefix(qq: int) -> float:
            t_lo = self._prefill_at(batch, qq, p_lo, geom)
            if p_hi == p_lo:
                return t_lo
            return _interp(prefix, p_lo, p_hi, t_lo, self._prefill_at(batch, qq, p_hi, geom))

        t_qlo = over_prefix(q_lo)
        return t_qlo if q_hi == q_lo else _interp(q, q_lo, q_hi, t_qlo, over_prefix(q_hi))

    def _prefill_at(self, batch: int, q: int, p: int, geom: tuple[object, ...]) -> float:
        key = ("prefill", batch, q, p, *geom)
        t = self._times_s.get(key)
        if t is None:
            heads, kv_heads, head_dim, kvb = geom
            t = simulate_prefill_attention(
                self._mach, batch=batch, query_tokens=q, context_tokens=q + p, num_heads=heads,  # type: ignore[arg-type]
                num_kv_heads=kv_heads, head_dim=head_dim, kv_bytes_per_elem=kvb,  # type: ignore[arg-type]
            ).time_s
            self._store(key, t)
        return t

    def _store(self, key: _Key, t: float) -> None:
        self._times_s[key] = float(t)
        self.num_simulations += 1

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """Write the grid points as JSON (sorted, so equal caches give equal files)."""
        entries = sorted([[*list(k), t] for k, t in self._times_s.items()], key=repr)
        payload = {
            "format": CACHE_FORMAT,
            "gpu": self.gpu_name,
            "fingerprint": self.fingerprint,
            "entries": entries,
        }
        Path(path).write_text(json.dumps(payload, indent=0) + "\n")

    def load(self, path: str | Path) -> int:
        """Merge a JSON cache written by :meth:`save`; returns the number of entries read.

        Raises:
            ConfigError: unreadable file, other format, other GPU or other parameters.
        """
        from servesim.hwmodels.safeio import load_json, read_text

        # A cache file is input like any other: size, UTF-8, finite numbers, depth (#15).
        payload = load_json(read_text(path, "cycle cache"), f"cycle cache {path}")
        if not isinstance(payload, dict) or payload.get("format") != CACHE_FORMAT:
            raise ConfigError(f"cycle cache {path}: not a format-{CACHE_FORMAT} cycle cache")
        if payload.get("gpu") != self.gpu_name or payload.get("fingerprint") != self.fingerprint:
            raise ConfigError(
                f"cycle cache {path} was written for GPU {payload.get('gpu')!r} with parameters "
                f"{payload.get('fingerprint')!r}, not {self.gpu_name!r}/{self.fingerprint!r}"
            )
        entries = payload.get("entries", [])
        if not isinstance(entries, list) or not all(
            isinstance(e, list) and len(e) >= 2 and isinstance(e[-1], int | float)
            and not isinstance(e[-1], bool) and all(isinstance(x, str | int) for x in e[:-1])
            for e in entries
        ):
            raise ConfigError(f"cycle cache {path}: entries are not [key..., seconds] lists")
        for entry in entries:
            self._times_s[tuple(entry[:-1])] = float(entry[-1])
        self._memo.clear()
        self._segments.clear()
        return len(entries)
