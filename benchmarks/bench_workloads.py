"""Benchmark: generating 1M synthetic requests with shared prefixes, and reading the full
shared traces (../shared/traces). Prints a table; run with ``python benchmarks/bench_workloads.py``.

Each figure is the best of ``--repeat`` runs (wall clock, seconds) in one process.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

from servesim.workloads import WorkloadCfg, build_workload, read_trace

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "traces"

SYNTHETIC = {
    "1M, 100 system prompts (Zipf), gamma cv=2": {
        "num_requests": 1_000_000,
        "arrivals": {"process": "gamma", "rate_per_s": 100, "cv": 2.0},
        "lengths": {
            "prompt": {"dist": "lognormal", "mean_tokens": 300, "median_tokens": 200},
            "output": {"dist": "lognormal", "mean_tokens": 200, "median_tokens": 120},
            "max_total_tokens": 8192,
        },
        "prefixes": {
            "kind": "system_prompts",
            "num_prompts": 100,
            "zipf_a": 1.0,
            "prompt_tokens": {"dist": "uniform", "min_tokens": 200, "max_tokens": 1500},
        },
    },
    "1M, multi-turn chat (1-10 turns)": {
        "num_requests": 1_000_000,
        "arrivals": {"process": "poisson", "rate_per_s": 20},
        "lengths": {
            "prompt": {"dist": "lognormal", "mean_tokens": 100, "median_tokens": 60},
            "output": {"dist": "lognormal", "mean_tokens": 200, "median_tokens": 120},
            "max_total_tokens": 16384,
        },
        "prefixes": {"kind": "multi_turn", "max_turns": 10, "system_prompt_tokens": 300},
    },
}

TRACES = {
    "Azure 2023 conv": "azure2023/AzureLLMInferenceTrace_conv.csv",
    "Azure 2023 code": "azure2023/AzureLLMInferenceTrace_code.csv",
    "Mooncake conversation": "mooncake/conversation_trace.jsonl",
    "Mooncake synthetic": "mooncake/synthetic_trace.jsonl",
}


def best_of(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rows: list[tuple[str, int, int, float]] = []
    for label, raw in SYNTHETIC.items():
        cfg = WorkloadCfg.model_validate(raw)
        seconds, wl = best_of(lambda cfg=cfg: build_workload(cfg, seed=0), args.repeat)
        rows.append((label, len(wl), len(wl.prefix_block_ids), seconds))
    for label, rel in TRACES.items():
        path = SHARED / rel
        if not path.exists():
            print(f"skipped {label}: {path} not found")
            continue
        seconds, wl = best_of(lambda path=path: read_trace(path), args.repeat)
        rows.append((f"read {label}", len(wl), len(wl.prefix_block_ids), seconds))
    print(f"{'workload':<46} {'requests':>10} {'block ids':>12} {'seconds':>8}")
    for label, n, num_ids, seconds in rows:
        print(f"{label:<46} {n:>10,} {num_ids:>12,} {seconds:>8.2f}")


if __name__ == "__main__":
    main()
