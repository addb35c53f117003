"""Step-cost evaluation rate: scalar ``step_time_s`` and vectorised ``cost()`` per element.

Run: ``python benchmarks/bench_stepcost.py``. Target (issue 2): >= 50,000 scalar evaluations
per second on a 2-core machine. Wall-clock timing is the point of a benchmark; nothing here
feeds a simulation result.
"""

from __future__ import annotations

import time

import numpy as np

from servesim.hwmodels.stepcost import StepCostModel

CASES = [
    ("llama-3.1-8b", "h100-sxm", 1, 1, "fp16"),
    ("llama-2-70b", "h100-sxm", 4, 1, "fp16"),
    ("mixtral-8x7b", "a100-sxm4-80gb", 2, 1, "w4a16"),
    ("llama-3.1-70b", "h100-sxm", 4, 2, "fp8"),
]


def _scalar_rate(m: StepCostModel, n: int) -> float:
    rng = np.random.default_rng(0)
    steps = [
        {"prefill_tokens": float(p), "prefill_attn_pairs": float(p * (p + 1) / 2), "prefill_kv_tokens": float(p),
         "num_prefill_seqs": float(p > 0), "num_decode_seqs": float(b), "decode_ctx_tokens": float(b * c)}
        for p, b, c in zip((rng.random(n) < 0.3) * rng.integers(0, 512, n), rng.integers(1, 256, n),
                           rng.integers(100, 4000, n), strict=True)
    ]
    t0 = time.perf_counter()
    for s in steps:
        m.step_time_s(**s)
    return n / (time.perf_counter() - t0)


def _vector_rate(m: StepCostModel, n: int) -> float:
    rng = np.random.default_rng(0)
    b = rng.integers(1, 256, n).astype(float)
    t0 = time.perf_counter()
    m.cost(num_decode_seqs=b, decode_ctx_tokens=b * 2000.0)
    return n / (time.perf_counter() - t0)


def main() -> None:
    print(f"{'model':16s} {'gpu':16s} tp pp {'quant':6s} {'scalar evals/s':>15s} {'vector elems/s':>15s}")
    for model, gpu, tp, pp, quant in CASES:
        m = StepCostModel(gpu=gpu, model=model, tensor_parallel=tp, pipeline_parallel=pp, scheme=quant)
        _scalar_rate(m, 1000)  # warm-up
        scalar = max(_scalar_rate(m, 50_000) for _ in range(3))
        vector = max(_vector_rate(m, 100_000) for _ in range(3))
        print(f"{model:16s} {gpu:16s} {tp:2d} {pp:2d} {quant:6s} {scalar:15,.0f} {vector:15,.0f}")


if __name__ == "__main__":
    main()
