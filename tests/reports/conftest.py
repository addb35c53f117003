"""A realistic synthetic run directory, fabricated to the engine's result schema with numpy.

Four variants on one request stream, chosen to hit the reports' edge cases:

* ``contiguous-max``: one replica, heavy reservation and internal fragmentation, no prefix cache.
* ``paged-16``: two replicas (timelines must pool them), little waste, no prefix cache.
* ``radix``: one replica with a prefix cache (hit rate rises over time).
* ``overloaded``: no request completes (every latency NaN); steps exist, queues grow.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

VARIANTS: tuple[str, ...] = ("contiguous-max", "paged-16", "radix", "overloaded")
DURATION_S = 600.0
CAPACITY_TOKENS = 40_000


def _steps(rng: np.random.Generator, variant: str, replica_id: int, n: int) -> pd.DataFrame:
    dur = rng.lognormal(np.log(0.025), 0.3, n)
    gap = np.where(rng.random(n) < 0.01, rng.exponential(0.5, n), 0.0)  # occasional idle
    t = np.concatenate(([0.0], np.cumsum(dur + gap)[:-1]))
    scale = DURATION_S / (t[-1] + dur[-1])
    t, dur = t * scale, dur * scale
    running = np.clip(np.round(40 + 30 * np.sin(t / 60) + rng.normal(0, 4, n)), 0, 256).astype(
        np.int64
    )
    prefill = np.where(rng.random(n) < 0.2, rng.integers(64, 2048, n), 0).astype(np.int64)
    decode = np.maximum(running - (prefill > 0), 0).astype(np.int64)
    queue = np.clip(np.round(rng.normal(3, 2, n)), 0, None).astype(np.int64)
    if variant == "overloaded":
        queue = (np.arange(n) // 20).astype(np.int64)
    # KV split summing exactly to capacity.
    tokens = np.minimum(running * 400, int(CAPACITY_TOKENS * 0.9)).astype(np.int64)
    waste = {"contiguous-max": (1.2, 0.5, 0.08), "paged-16": (0.0, 0.02, 0.0)}.get(
        variant, (0.0, 0.02, 0.0)
    )
    reserved = np.minimum((tokens * waste[0]).astype(np.int64), CAPACITY_TOKENS - tokens)
    internal = np.minimum((tokens * waste[1]).astype(np.int64), CAPACITY_TOKENS - tokens - reserved)
    external = np.minimum(
        np.full(n, int(CAPACITY_TOKENS * waste[2])), CAPACITY_TOKENS - tokens - reserved - internal
    ).astype(np.int64)
    left = CAPACITY_TOKENS - tokens - reserved - internal - external
    cached = (left * (0.5 if variant == "radix" else 0.0)).astype(np.int64)
    free = left - cached
    share = rng.dirichlet([1.0, 6.0, 3.0, 0.3, 0.4], n)
    if variant == "radix":
        query = np.cumsum(prefill)
        hit = np.cumsum((prefill * np.clip(t / DURATION_S, 0.05, 0.9)).astype(np.int64))
    else:
        query = hit = np.zeros(n, np.int64)
    return pd.DataFrame(
        {
            "variant": variant,
            "replica_id": np.full(n, replica_id, np.int32),
            "step": np.arange(n, dtype=np.int64),
            "t_s": t,
            "duration_s": dur,
            "num_running": running,
            "num_prefill_seqs": (prefill > 0).astype(np.int64),
            "prefill_tokens": prefill,
            "decode_tokens": decode,
            "queue_len": queue,
            "num_preemptions": (rng.random(n) < 0.001).astype(np.int64),
            "compute_s": dur * share[:, 0],
            "weight_read_s": dur * share[:, 1],
            "kv_read_s": dur * share[:, 2],
            "comm_s": dur * share[:, 3],
            "overhead_s": dur * share[:, 4],
            "kv_token_state_slots": tokens,
            "kv_reserved_slots": reserved,
            "kv_internal_frag_slots": internal,
            "kv_external_frag_slots": external,
            "kv_cached_slots": cached,
            "kv_free_slots": free,
            "prefix_hit_tokens": hit,
            "prefix_query_tokens": query,
        }
    )


def _requests(rng: np.random.Generator, variant: str, n: int, num_replicas: int) -> pd.DataFrame:
    arrival = np.sort(rng.uniform(0, DURATION_S * 0.95, n))
    prompt = rng.integers(16, 2048, n).astype(np.int64)
    output = rng.integers(1, 512, n).astype(np.int64)
    ttft = rng.lognormal(np.log(0.2), 0.8, n)
    tpot = rng.lognormal(np.log(0.03), 0.2, n)
    if variant == "contiguous-max":
        ttft *= 3
    first = arrival + ttft
    finish = first + tpot * (output - 1)
    status = np.where(finish < DURATION_S, "completed", "unfinished").astype(object)
    if variant == "overloaded":
        status = np.where(rng.random(n) < 0.5, "rejected", "unfinished").astype(object)
    done = status == "completed"
    first = np.where(status == "rejected", np.nan, first)
    finish = np.where(done, finish, np.nan)
    e2el = (finish - arrival) * 1e3
    ttft_ms = np.where(done, ttft * 1e3, np.nan)
    tpot_ms = np.where(done & (output > 1), tpot * 1e3, np.nan)
    return pd.DataFrame(
        {
            "variant": variant,
            "request_id": np.arange(n, dtype=np.int64),
            "replica_id": (np.arange(n) % num_replicas).astype(np.int32),
            "arrival_s": arrival,
            "first_scheduled_s": np.where(status == "rejected", np.nan, arrival + ttft / 2),
            "first_token_s": first,
            "finish_s": finish,
            "prompt_tokens": prompt,
            "output_tokens": output,
            "num_samples": np.ones(n, np.int64),
            "beam_width": np.ones(n, np.int64),
            "cached_prompt_tokens": (prompt // 3 if variant == "radix" else prompt * 0),
            "num_preemptions": np.zeros(n, np.int64),
            "status": status.astype(str),
            "reject_reason": np.where(status == "rejected", "exceeds_kv_capacity", "").astype(str),
            "ttft_ms": ttft_ms,
            "tpot_ms": tpot_ms,
            "e2el_ms": e2el,
            "meets_slo": done & (ttft_ms < 500) & ~(tpot_ms > 50),
        }
    )


def _summary(variant: str, req: pd.DataFrame, steps: pd.DataFrame) -> dict[str, Any]:
    done = req[req["status"] == "completed"]
    out: dict[str, Any] = {
        "completed": len(done),
        "duration": DURATION_S,
        "request_throughput": len(done) / DURATION_S,
        "output_throughput": float(done["output_tokens"].sum()) / DURATION_S,
        "total_token_throughput": float((done["output_tokens"] + done["prompt_tokens"]).sum())
        / DURATION_S,
        "request_goodput": float(done["meets_slo"].sum()) / DURATION_S,
        "max_concurrent_requests": int(steps["num_running"].max()),
        "num_requests": len(req),
        "num_rejected": int((req["status"] == "rejected").sum()),
        "num_preemptions": int(steps["num_preemptions"].sum()),
        "kv_capacity_tokens": CAPACITY_TOKENS,
    }
    for metric in ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms"):
        x = done[metric if metric != "itl_ms" else "tpot_ms"].dropna().to_numpy()
        for name, fn in (("mean", np.mean), ("median", np.median), ("std", np.std)):
            out[f"{name}_{metric}"] = float(fn(x)) if len(x) else None
        for p in (90, 95, 99):
            out[f"p{p}_{metric}"] = float(np.percentile(x, p)) if len(x) else None
    w = steps["duration_s"].to_numpy()
    out["mean_batch_size"] = float(np.average(steps["num_running"], weights=w))
    cap = CAPACITY_TOKENS * steps["replica_id"].nunique()
    for col, key in (
        ("kv_token_state_slots", "kv_token_state_frac"),
        ("kv_reserved_slots", "kv_reserved_frac"),
        ("kv_internal_frag_slots", "kv_internal_frag_frac"),
        ("kv_external_frag_slots", "kv_external_frag_frac"),
        ("kv_cached_slots", "kv_cached_frac"),
        ("kv_free_slots", "kv_free_frac"),
    ):
        out[key] = float(np.average(steps[col], weights=w)) / cap * steps["replica_id"].nunique()
    for part in ("compute", "weight_read", "kv_read", "comm", "overhead"):
        out[f"step_time_{part}_frac"] = float(steps[f"{part}_s"].sum() / w.sum())
    q = steps.groupby("replica_id")["prefix_query_tokens"].max().sum()
    h = steps.groupby("replica_id")["prefix_hit_tokens"].max().sum()
    out["prefix_hit_rate"] = float(h / q) if q else 0.0
    out["config"] = {
        "gpu": "h100-sxm",
        "tensor_parallel": 1,
        "pipeline_parallel": 1,
        "replicas": int(steps["replica_id"].nunique()),
        "model": "llama-3.1-8b",
        "quantization": "fp16",
        "kv_cache_dtype": "fp16",
        "kv_manager": {"contiguous-max": "contiguous", "radix": "radix"}.get(variant, "paged"),
        "block_size_tokens": 1 if variant == "contiguous-max" else 16,
        "reservation": "max" if variant == "contiguous-max" else None,
        "scheduler": "vllm",
        "max_num_seqs": 256,
        "max_num_batched_tokens": 8192,
        "router": "round_robin",
        "cost_model": "roofline",
    }
    out["memory_budget"] = {
        "hbm_bytes": 80 * 2**30,
        "usable_bytes": int(0.9 * 80 * 2**30),
        "weight_bytes": 16_060_522_496,
        "activation_bytes": 2 * 2**30,
        "reserve_bytes": 2**30,
        "kv_bytes": CAPACITY_TOKENS * 131_072,
        "kv_capacity_tokens": CAPACITY_TOKENS,
        "kv_bytes_per_token": 131_072,
    }
    out["slo"] = {"ttft_ms": 500.0, "tpot_ms": 50.0, "e2el_ms": None}
    out["roofline"] = {
        "gpu": "h100-sxm",
        "compute_type": "bf16",
        "peak_flops_per_s": 989e12,
        "hbm_bw_bytes_per_s": 3.35e12,
        "ops": [
            {"op": "qkv_proj", "time_s": 1.1e-4, "flops": 6.4e9, "bytes": 1.0e8, "bound": "memory"},
            {
                "op": "attn_decode",
                "time_s": 3.0e-4,
                "flops": 2.0e9,
                "bytes": 9.0e8,
                "bound": "memory",
            },
            {
                "op": "attn_prefill",
                "time_s": 5.0e-4,
                "flops": 3.0e14 * 1e-3,
                "bytes": 2e8,
                "bound": "compute",
            },
            {"op": "mlp", "time_s": 4.0e-4, "flops": 9.0e10, "bytes": 3.5e8, "bound": "memory"},
            {"op": "lm_head", "time_s": 2.0e-4, "flops": 2.0e10, "bytes": 1.0e9, "bound": "memory"},
            {"op": "allreduce", "time_s": 5.0e-5, "flops": 0.0, "bytes": 1.0e7, "bound": "comm"},
        ],
        "batch": {"decode_seqs": 48, "context_tokens": 40_000, "prefill_tokens": 512},
    }
    return out


def write_synthetic_run(
    run_dir: Path,
    *,
    seed: int = 0,
    steps_per_replica: int = 6_000,
    requests_per_variant: int = 1_500,
) -> Path:
    """Fabricate ``summary.json``, ``requests.parquet``, ``steps.parquet`` under ``run_dir``."""
    rng = np.random.default_rng(seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    all_req, all_steps, summaries = [], [], {}
    for v in VARIANTS:
        num_replicas = 2 if v == "paged-16" else 1
        steps = pd.concat(
            [_steps(rng, v, r, steps_per_replica) for r in range(num_replicas)], ignore_index=True
        )
        req = _requests(rng, v, requests_per_variant, num_replicas)
        summaries[v] = _summary(v, req, steps)
        all_req.append(req)
        all_steps.append(steps)
    pd.concat(all_req, ignore_index=True).to_parquet(run_dir / "requests.parquet", index=False)
    pd.concat(all_steps, ignore_index=True).to_parquet(run_dir / "steps.parquet", index=False)
    summary = {
        "scenario": {"name": "synthetic", "seed": seed, "description": "Fabricated for tests."},
        "variants": summaries,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    (run_dir / "scenario.resolved.yaml").write_text("name: synthetic\nseed: 0\n")
    return run_dir


@pytest.fixture
def make_run() -> Callable[..., Path]:
    """Factory: ``make_run(path, **kw)`` writes a synthetic run directory and returns it."""
    return write_synthetic_run


@pytest.fixture(scope="session")
def synthetic_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One shared synthetic run directory (read-only for tests: copy before building into it)."""
    return write_synthetic_run(tmp_path_factory.mktemp("run"))
