"""Cold start of the compiled kernel family (issue 12: a first run with an empty numba cache no
slower than ~60 s here).

Runs the quickstart scenario (``run_scenario``, no report) in a fresh subprocess with an empty
``NUMBA_CACHE_DIR``, then again with the cache it filled, and prints for each: CPU seconds of
the child, wall seconds, and how many numba specializations it compiled (numba's
``numba:compile`` events). The specialization count does not depend on the machine's load, so
it is the figure to compare between versions; CPU seconds are the user-facing one (state the
load: ``uptime``).

    python benchmarks/bench_compile.py [--scenario scenarios/quickstart.yaml]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import collections, json, sys
from numba.core import event
rec = event.RecordingListener()
event.register("numba:compile", rec)
from servesim.simulator.build import run_scenario
from servesim.simulator.scenario import load_scenario
run_scenario(load_scenario(sys.argv[1]))
sigs = collections.Counter()
for _, ev in rec.buffer:
    if ev.is_start:
        f = ev.data["dispatcher"].py_func
        sigs[f.__module__ + "." + f.__qualname__] += 1
print(json.dumps({"specializations": sum(sigs.values()), "functions": len(sigs),
                  "repeated": sorted(k for k, n in sigs.items() if n > 1)}))
"""


def run_child(scenario: str, cache_dir: str) -> dict:
    env = {**os.environ, "NUMBA_CACHE_DIR": cache_dir}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, scenario], env=env, cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, **json.loads(out.strip().splitlines()[-1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="scenarios/quickstart.yaml")
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores; load {os.getloadavg()[0]:.1f}; Python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="servesim-bench-numba-") as cache:
        for label in ("cold (empty numba cache)", "warm (cache filled)"):
            r = run_child(args.scenario, cache)
            print(f"{label:26s} CPU {r['cpu_s']:6.1f} s  wall {r['wall_s']:6.1f} s  "
                  f"{r['specializations']:4d} specializations of {r['functions']:3d} functions")
            if r["repeated"]:
                print("  compiled more than once:", ", ".join(r["repeated"]))


if __name__ == "__main__":
    main()
