"""Speed of the cycle-level kernel model and of its serving-side cache.

Run: ``python benchmarks/bench_cyclesim.py`` (``--serving`` for the serving figure only).
Targets (issue 8): a 4096^3 fp16 GEMM on H100 and decode attention for batch 64 x 4096 context
(Llama-2-7B heads) each simulate in < 1 s after compilation; a serving simulation with
``engine.cost_model: cycle`` stays within 2x of the roofline path's wall time after warm-up
(the "serving with the cycle model" figure: the same scenario run with each cost model, CPU
seconds, best of 2 after a warm-up run of each). Wall-clock timing is the point of a benchmark;
nothing here feeds a simulation result.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import numpy as np

from servesim.hwmodels.cyclesim import (
    CycleCostModel,
    simulate_decode_attention,
    simulate_gemm,
    simulate_prefill_attention,
)


def _best_of(fn: Callable[[], object], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _step_rate(model: object, steps: list[dict[str, float]]) -> float:
    t0 = time.perf_counter()
    for s in steps:
        model.step_time_s(**s)  # type: ignore[attr-defined]
    return len(steps) / (time.perf_counter() - t0)


def main() -> None:
    t0 = time.perf_counter()
    simulate_gemm("h100-sxm", m=64, n=64, k=64)
    simulate_decode_attention("h100-sxm", batch=1, context_tokens=64, num_heads=1, num_kv_heads=1, head_dim=64)
    print(f"compile / cache load of the kernels: {time.perf_counter() - t0:.2f} s")

    cases = {
        "gemm 4096x4096x4096 fp16, h100-sxm": lambda: simulate_gemm("h100-sxm", m=4096, n=4096, k=4096),
        "decode attn 64 x 4096 ctx, 32 heads, block 16, h100-sxm": lambda: simulate_decode_attention(
            "h100-sxm", batch=64, context_tokens=4096, num_heads=32, num_kv_heads=32, head_dim=128),
        "prefill attn 1 x 4096, 32 heads, h100-sxm": lambda: simulate_prefill_attention(
            "h100-sxm", batch=1, query_tokens=4096, num_heads=32, num_kv_heads=32, head_dim=128),
        "gemm 4096x4096x4096 fp16, a100-sxm4-80gb": lambda: simulate_gemm(
            "a100-sxm4-80gb", m=4096, n=4096, k=4096),
    }
    for name, fn in cases.items():
        r = fn()
        wall = _best_of(fn)
        print(f"{name:58s} wall {wall * 1e3:8.1f} ms   simulated {r.time_s * 1e6:9.1f} us  "  # type: ignore[attr-defined]
              f"{r.bound}")  # type: ignore[attr-defined]

    # Cache hit path: one GEMM + one decode-attention lookup on warm buckets.
    cm = CycleCostModel("h100-sxm")
    rng = np.random.default_rng(0)
    ms = rng.integers(1, 512, 2000)
    ctx = rng.integers(100, 4000, 2000)
    t0 = time.perf_counter()
    for m, c in zip(ms, ctx, strict=True):
        cm.gemm_time_s(int(m), 12288, 4096)
        cm.decode_attention_time_s(int(min(m, 256)), int(c), 32, 32, 128)
    warm_s = time.perf_counter() - t0
    n = 200_000
    t0 = time.perf_counter()
    for i in range(n):
        cm.gemm_time_s(int(ms[i % 2000]), 12288, 4096)
    hit_s = (time.perf_counter() - t0) / n
    print(f"cache warm-up: {cm.num_simulations} simulations in {warm_s:.1f} s; "
          f"hit path {hit_s * 1e6:.2f} us per gemm_time_s call ({1 / hit_s:,.0f} calls/s)")

    # Step cost with the roofline vs with the cached cycle model (same random steps).
    try:
        from servesim.hwmodels.stepcost import StepCostModel
    except ImportError:  # the step-cost model lives in another module of the project
        return
    steps = [
        {"prefill_tokens": float(p), "prefill_attn_pairs": float(p * (p + 1) / 2),
         "prefill_kv_tokens": float(p), "num_prefill_seqs": float(p > 0),
         "num_decode_seqs": float(b), "decode_ctx_tokens": float(b * c)}
        for p, b, c in zip((rng.random(5000) < 0.3) * rng.integers(0, 512, 5000),
                           rng.integers(1, 256, 5000), rng.integers(100, 4000, 5000), strict=True)
    ]
    roof = StepCostModel(gpu="h100-sxm", model="llama-2-7b")
    cyc = StepCostModel(gpu="h100-sxm", model="llama-2-7b", op_timer=CycleCostModel("h100-sxm"))
    t0 = time.perf_counter()
    _step_rate(cyc, steps)  # warm-up: fills the cache
    print(f"step-cost warm-up with the cycle model: {time.perf_counter() - t0:.1f} s")
    r_roof = max(_step_rate(roof, steps) for _ in range(3))
    r_cyc = max(_step_rate(cyc, steps) for _ in range(3))
    print(f"step_time_s evaluations/s: roofline {r_roof:,.0f}, cycle (cached) {r_cyc:,.0f}, "
          f"slowdown {r_roof / r_cyc:.2f}x")


def _serving_scenario(cost_model: str, num_requests: int) -> object:
    from servesim.simulator.scenario import scenario_from_dict

    return scenario_from_dict({
        "name": "bench-cycle-serving",
        "hardware": {"gpu": "h100-sxm"},
        "model": {"name": "llama-3.1-8b", "max_model_len_tokens": 8192},
        "engine": {"progress": False, "cost_model": cost_model},
        "workload": {
            "num_requests": num_requests,
            "arrivals": {"process": "poisson", "rate_per_s": 8},
            "lengths": {"prompt": {"dist": "uniform", "min_tokens": 100, "max_tokens": 2000},
                        "output": {"dist": "uniform", "min_tokens": 10, "max_tokens": 300}},
        },
    })


def serving(num_requests: int = 1500, repeat: int = 2) -> dict[str, float]:
    """Serving with the cycle model: CPU seconds of the same scenario under each cost model.

    Llama-3.1-8B on one H100, Poisson 8 req/s, prompts 100-2000 and outputs 10-300 tokens.
    A 300-request warm-up run of each fills the cycle model's shape-bucket cache (which
    ``cost_model: cycle`` also loads from and saves to disk between runs); then the runs
    alternate and the best CPU time of each is kept.
    """
    from servesim.simulator.build import run_scenario

    for cm in ("roofline", "cycle"):
        run_scenario(_serving_scenario(cm, 300))
    best = {"roofline": float("inf"), "cycle": float("inf")}
    steps = {}
    for _ in range(repeat):
        for cm in ("roofline", "cycle"):
            t0 = time.process_time()
            res = run_scenario(_serving_scenario(cm, num_requests))
            best[cm] = min(best[cm], time.process_time() - t0)
            steps[cm] = len(res.variants[0].steps)  # type: ignore[attr-defined]
    ratio = best["cycle"] / best["roofline"]
    print(f"serving with the cycle model ({num_requests} requests, llama-3.1-8b, h100-sxm): "
          f"roofline {best['roofline']:.2f} s CPU ({steps['roofline']} steps), "
          f"cycle {best['cycle']:.2f} s CPU ({steps['cycle']} steps), ratio {ratio:.2f}x (target <= 2x)")
    return {**best, "ratio": ratio}


if __name__ == "__main__":
    if "--serving" not in sys.argv[1:]:
        main()
    serving()
