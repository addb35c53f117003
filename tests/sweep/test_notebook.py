"""The example notebook runs top to bottom (nbclient, a fresh kernel, in examples/)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def test_sweep_notebook_executes() -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    # numba compiles the KV kernels once per cache directory (conftest points every process
    # of this session at one): compile here, so that the kernel and its two pool workers
    # load the cache instead of compiling concurrently, and the notebook's own cost is timed.
    import servesim as ss

    ss.run(ROOT / "scenarios" / "quickstart.yaml", overrides={"workload.num_requests": 5})
    nb = nbformat.read(EXAMPLES / "sweep.ipynb", as_version=4)
    t0 = time.perf_counter()
    nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(EXAMPLES)}}
    ).execute()
    elapsed_s = time.perf_counter() - t0
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    assert elapsed_s < 60, f"the notebook should stay small; it took {elapsed_s:.0f} s"
