"""Engine speed: the full Azure 2023 conversation hour, and a 1M-request 16-replica cluster.

Prints wall time, simulated requests per second, simulated steps per second, peak memory
(peak RSS of each case's run, and again once its steps frame is built on demand), and the overhead against a bare SimPy loop that processes the same number of
step events, measured in the same process (ratios are robust to a noisy shared machine).

    python benchmarks/bench_engine.py                     # both cases
    python benchmarks/bench_engine.py --requests 200000   # smaller synthetic case
    python benchmarks/bench_engine.py --skip-synthetic
    python benchmarks/bench_engine.py --table             # issue 12: scheduler x manager x preemption (best of 3)
    python benchmarks/bench_engine.py --table --loops auto,reference

The Azure case needs ../shared/traces/azure2023 (skipped with a note when absent). Both
cases run in the compiled replica loop (``engine.loop: auto``); add ``--reference`` to time
the plain reference replica instead (``engine.loop: reference``; the second Python engine
that ``--python`` used to time is removed, issue 12).
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import time
from pathlib import Path

import simpy

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from servesim.simulator.build import run_scenario  # noqa: E402
from servesim.simulator.scenario import scenario_from_dict  # noqa: E402

AZURE_CONV = ROOT.parent / "shared" / "traces" / "azure2023" / "AzureLLMInferenceTrace_conv.csv"


def bare_simpy_s(num_events: int) -> float:
    """Wall time of a SimPy process yielding ``num_events`` timeouts (the floor per event)."""
    env = simpy.Environment()

    def proc(env: simpy.Environment):
        for _ in range(num_events):
            yield env.timeout(0.01)

    env.process(proc(env))
    t0 = time.perf_counter()
    env.run()
    return time.perf_counter() - t0


def max_rss_bytes() -> int:
    """Peak resident memory since the last :func:`reset_peak_rss` (Linux: ``VmHWM``), else
    since the process started."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> None:
    """Start a new peak-memory window, so each case reports its own peak (Linux only:
    writing 5 to ``/proc/self/clear_refs`` resets ``VmHWM`` to the current RSS)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def run_case(label: str, data: dict) -> None:
    cfg = scenario_from_dict(data)
    # Warm numba and imports on a tiny copy so the timing is the simulation itself.
    warm = dict(data)
    warm["workload"] = dict(data["workload"])
    if "num_requests" in warm["workload"]:
        warm["workload"]["num_requests"] = 50
    else:
        warm["workload"]["trace"] = dict(warm["workload"]["trace"], max_requests=50)
    run_scenario(scenario_from_dict(warm))
    gc.collect()
    reset_peak_rss()
    rss0 = max_rss_bytes()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    res = run_scenario(cfg)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    peak = max_rss_bytes()
    v = res.variants[0]
    s = v.summary
    steps = s["num_steps"]
    # The steps frame is built on first access (a summary needs none): time it apart.
    cpu1, t1 = time.process_time(), time.perf_counter()
    frame_rows = len(v.steps)
    frame_wall, frame_cpu = time.perf_counter() - t1, time.process_time() - cpu1
    frame_peak = max_rss_bytes()
    assert frame_rows == steps
    # SimPy events the engine processed ~ iterations of the replica loops + arrivals; compare
    # with a bare loop of as many step events as the engine simulated steps.
    bare = bare_simpy_s(steps)
    print(f"\n## {label}")
    print(f"engine loop        {s['config']['engine_loop']:>12s}")
    print(f"requests           {s['num_requests']:>12,d}  (completed {s['completed']:,d}, rejected {s['num_rejected']:,d})")
    print(f"simulated time     {s['duration']:>12,.0f} s")
    print(f"wall time          {wall:>12.2f} s  (CPU {cpu:.2f} s: on a loaded machine the steadier figure)")
    print(f"requests / s       {s['num_requests'] / wall:>12,.0f}")
    print(f"steps              {steps:>12,d}")
    print(f"steps / s          {steps / wall:>12,.0f}")
    print(f"bare SimPy loop    {bare:>12.2f} s for {steps:,d} step events")
    print(f"overhead ratio     {wall / bare:>12.1f} x bare SimPy")
    print(f"peak memory (RSS)  {peak / 2**30:>12.2f} GiB  (this run, summary included; "
          f"{rss0 / 2**30:.2f} GiB before it: interpreter, numba, warm-up)")
    print(f"+ steps frame      {frame_wall:>12.2f} s  (CPU {frame_cpu:.2f} s, built on first access; "
          f"peak RSS then {frame_peak / 2**30:.2f} GiB)")
    print(f"throughput         {s['output_throughput']:>12,.0f} output tok/s, mean batch {s['mean_batch_size']:.1f}")


#: The configurations of issue 12's table: (scheduler, KV manager, preemption), each with the
#: manager its paper pairs it with, plus the common cross pairings.
TABLE_CONFIGS = (
    ("vllm", "paged", "recompute"),
    ("vllm", "paged", "swap"),
    ("sarathi", "paged", "recompute"),
    ("orca", "paged", "recompute"),
    ("orca", "contiguous", "recompute"),
    ("orca", "contiguous", "swap"),
    ("static", "contiguous", "recompute"),
    ("static", "paged", "recompute"),
    ("sarathi", "paged", "swap"),
    ("sglang", "radix", "recompute"),
    ("vllm", "radix", "recompute"),
)


def run_table(common: dict, loops: list[str], repeats: int = 3) -> None:
    """Issue 12's table on the Azure hour: wall and CPU time per scheduler x manager x
    preemption (x loop), each the best of ``repeats`` runs, and the ratio to a bare SimPy loop of as many step events, timed in
    the same process right after each run (so the machine's load affects both alike)."""
    print("\n## Azure 2023 conversation hour, per scheduler x KV manager x preemption")
    print(f"{'scheduler':9s} {'manager':10s} {'preempt':9s} {'loop':9s} {'wall s':>7s} {'CPU s':>7s} "
          f"{'steps':>8s} {'bare s':>7s} {'x bare':>7s}")
    rows = []
    for policy, manager, preemption in TABLE_CONFIGS:
        for loop in loops:
            data = {
                "name": "bench-table", **common,
                "kv_cache": {"manager": manager, "block_size_tokens": 16},
                "scheduler": {"policy": policy, "max_num_seqs": 256, "max_num_batched_tokens": 8192,
                              "preemption": preemption},
                "engine": {"progress": False, "loop": loop},
                "workload": {"trace": {"path": str(AZURE_CONV)}},
            }
            warm = {**data, "workload": {"trace": {"path": str(AZURE_CONV), "max_requests": 50}}}
            run_scenario(scenario_from_dict(warm))
            # Best of REPEATS (as timeit): the shared machine only ever adds time.
            wall = cpu = float("inf")
            for _ in range(repeats):
                cpu0, t0 = time.process_time(), time.perf_counter()
                res = run_scenario(scenario_from_dict(data))
                wall = min(wall, time.perf_counter() - t0)
                cpu = min(cpu, time.process_time() - cpu0)
            v = res.variants[0]
            steps = v.summary["num_steps"]
            bare = bare_simpy_s(steps)
            ran = v.summary["config"]["engine_loop"]
            rows.append(wall)
            print(f"{policy:9s} {manager:10s} {preemption:9s} {ran:9s} {wall:7.2f} {cpu:7.2f} {steps:8,d} "
                  f"{bare:7.2f} {wall / bare:7.1f}", flush=True)
    fastest = min(rows)
    print(f"slowest / fastest: {max(rows) / fastest:.2f}x (target 1.5x); fastest {fastest:.2f} s (target 0.3 s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1_000_000, help="synthetic case size")
    ap.add_argument("--skip-azure", action="store_true")
    ap.add_argument("--skip-synthetic", action="store_true")
    ap.add_argument("--reference", action="store_true", help="time the reference replica (engine.loop: reference)")
    ap.add_argument("--table", action="store_true",
                    help="issue 12's table: every scheduler x KV manager x preemption on the Azure hour")
    ap.add_argument("--loops", default="auto",
                    help="with --table: comma-separated engine.loop values (auto, compiled, reference)")
    ap.add_argument("--repeats", type=int, default=3, help="with --table: runs per configuration (best kept)")
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores; load {os.getloadavg()[0]:.1f}; Python {sys.version.split()[0]}")
    common = {
        "hardware": {"gpu": "h100-sxm"},
        "model": {"name": "llama-3.1-8b", "max_model_len_tokens": 16384},
        "kv_cache": {"manager": "paged", "block_size_tokens": 16},
        "scheduler": {"policy": "vllm", "max_num_seqs": 256, "max_num_batched_tokens": 8192},
        "engine": {"progress": False, "loop": "reference" if args.reference else "auto"},
    }
    if args.table:
        if not AZURE_CONV.is_file():
            print(f"(no table: {AZURE_CONV} not found)")
            return
        run_table({k: v for k, v in common.items() if k not in ("kv_cache", "scheduler", "engine")},
                  args.loops.split(","), args.repeats)
        return
    if not args.skip_azure:
        if AZURE_CONV.is_file():
            run_case(
                "Azure 2023 conversation trace (19,366 requests, ~1 h), Llama-3.1-8B, 1x H100, vllm",
                {"name": "bench-azure", **common, "workload": {"trace": {"path": str(AZURE_CONV)}}},
            )
        else:
            print(f"\n(skipped Azure case: {AZURE_CONV} not found)")
    if not args.skip_synthetic:
        n = args.requests
        replicas = 16
        run_case(
            f"synthetic {n:,d} requests, 16 replicas of Llama-3.1-8B on H100, vllm, round robin",
            {
                "name": "bench-cluster",
                **common,
                "hardware": {"gpu": "h100-sxm", "replicas": replicas},
                "workload": {
                    "num_requests": n,
                    "arrivals": {"process": "poisson", "rate_per_s": 12.0 * replicas},
                    "lengths": {
                        "prompt": {"dist": "lognormal", "mean_tokens": 600, "median_tokens": 400, "max_tokens": 8000},
                        "output": {"dist": "lognormal", "mean_tokens": 120, "median_tokens": 80, "max_tokens": 2000},
                    },
                },
            },
        )


if __name__ == "__main__":
    main()
