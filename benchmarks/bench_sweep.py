"""Sweep throughput: points per minute on one 32-point sweep, by executor.

    .venv/bin/python benchmarks/bench_sweep.py [--requests 1000] [--repeat 3] [--skip-dask]

The sweep: the quickstart scenario (Llama-3.1-8B, paged KV, vLLM scheduler, Poisson chat
traffic), 4 GPUs x 8 request rates = 32 points, ``--requests`` requests each. Every
configuration runs the same sweep into a fresh directory (results.parquet written after
each point, as in real use) and the rows are checked to be identical across executors.
Wall time includes starting the pool or cluster, since a user pays for that too;
``startup_s`` is the time to bring the same executor up and run one trivial task, and the
"warm" column is the rate once that is subtracted.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import pandas as pd

from servesim.simulator.sweep import open_executor, run_sweep

ROOT = Path(__file__).resolve().parents[1]
GPUS = ["a100-sxm4-80gb", "h100-sxm", "h200", "l40s"]
RATES_PER_S = [1, 2, 4, 6, 8, 12, 16, 24]


def sweep_spec(num_requests: int) -> dict:
    """The 32-point sweep as a mapping (base = the quickstart scenario file)."""
    import yaml

    base = yaml.safe_load((ROOT / "scenarios" / "quickstart.yaml").read_text())
    base["workload"]["num_requests"] = num_requests
    base.setdefault("engine", {})["progress"] = False
    return {
        "name": "bench-sweep",
        "base": base,
        "grid": {"hardware.gpu": GPUS, "workload.arrivals.rate_per_s": RATES_PER_S},
    }


def _startup_s(executor: str, workers: int) -> float:
    """Seconds to bring the executor up and run one trivial task."""
    t0 = time.perf_counter()
    with open_executor(executor, workers=workers) as ex:
        ex.submit(int, 1).result()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="Requests per point.")
    parser.add_argument("--skip-dask", action="store_true")
    parser.add_argument("--repeat", type=int, default=1,
                        help="Runs per executor; the fastest is reported (shared machines).")
    args = parser.parse_args()
    from servesim.simulator.sweep import sweep_from_dict

    spec = sweep_from_dict(sweep_spec(args.requests), base_dir=ROOT / "scenarios")
    configs = [("serial", 1), ("local", 1), ("local", 2)]
    if not args.skip_dask:
        configs.append(("dask", 2))
    print(f"# bench_sweep: 32 points x {args.requests} requests; {platform.processor() or 'cpu'}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}, best of {args.repeat}, "
          f"load average {os.getloadavg()[0]:.2f}")
    # Warm the numba cache in this process so that no configuration pays the compile.
    run_sweep(sweep_from_dict({**sweep_spec(50), "grid": {"hardware.gpu": GPUS[:1]}},
                              base_dir=ROOT / "scenarios"), executor="serial", progress=False)
    reference: pd.DataFrame | None = None
    print(f"{'executor':<10}{'workers':>8}{'wall_s':>10}{'points/min':>12}{'startup_s':>11}"
          f"{'warm points/min':>17}")
    for executor, workers in configs:
        wall_s = math.inf
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                df = run_sweep(spec, executor=executor, workers=workers, out=tmp, progress=False)
                wall_s = min(wall_s, time.perf_counter() - t0)
        start_s = 0.0 if executor == "serial" else _startup_s(executor, workers)
        ok = df[df["status"] == "ok"]
        assert ok["point_id"].nunique() == 32, df[df["status"] != "ok"]["error"].head()
        if reference is None:
            reference = df
        else:
            pd.testing.assert_frame_equal(df, reference)
        print(f"{executor:<10}{workers:>8}{wall_s:>10.1f}{32 / wall_s * 60:>12.1f}"
              f"{start_s:>11.1f}{32 / max(wall_s - start_s, 1e-9) * 60:>17.1f}")
    print("rows identical across executors: yes")
    print(f"# load average at the end: {os.getloadavg()[0]:.2f} (other processes share the cores)")


if __name__ == "__main__":
    main()
