"""Start-up time of the ``servesim`` console script (issue 14: <= 0.5 s for --help, list gpus).

Runs each command in a fresh subprocess (the installed script next to this interpreter, as a
user would) and reports the best and median wall time of ``--repeat`` runs, next to the
baseline of ``python -c pass`` (the interpreter alone). Best-of-N is the figure to compare:
the machine is shared, and load only ever adds time. Also lists which heavy libraries each
command imported (``-X importtime``), since the budget holds only while numba, pandas,
matplotlib and the engine stay out of the start-up path.

    python benchmarks/bench_startup.py [--repeat 15]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HEAVY = ("numba", "pandas", "matplotlib", "pyarrow", "scipy", "simpy", "servesim.simulator.compiled")
COMMANDS: list[list[str]] = [["--help"], ["--version"], ["list", "gpus"], ["list", "models"]]
TARGET_S = 0.5


def script() -> str:
    here = Path(sys.executable).parent / "servesim"
    found = str(here) if here.exists() else shutil.which("servesim")
    if found is None:
        sys.exit("servesim is not installed next to this interpreter nor on PATH")
    return found


def wall_s(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def heavy_imports(cmd: list[str]) -> list[str]:
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    mods = {ln.split("|")[-1].strip() for ln in res.stderr.splitlines() if ln.startswith("import time:")}
    return sorted(h for h in HEAVY if h in mods)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    exe = script()
    rows = [("python -c pass", [sys.executable, "-c", "pass"])]
    rows += [("servesim " + " ".join(c), [exe, *c]) for c in COMMANDS]
    print(f"{'command':<26} {'best s':>7} {'median s':>9}  heavy imports (target <= {TARGET_S} s)")
    for label, cmd in rows:
        wall_s(cmd)  # warm the OS file cache and the .pyc files
        times = [wall_s(cmd) for _ in range(args.repeat)]
        heavy = "-" if label.startswith("python") else (", ".join(heavy_imports(cmd)) or "none")
        print(f"{label:<26} {min(times):>7.3f} {statistics.median(times):>9.3f}  {heavy}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average (1 min): {load:.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
