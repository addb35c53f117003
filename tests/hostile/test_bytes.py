"""Bytes that match: the same sweep gives byte-identical ``results.parquet`` from the serial,
local-process and Dask executors (reductions are exactly rounded sums, rows are sorted, and
column types do not depend on where a point ran)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from servesim.hwmodels.exactsum import fdot, fmean, fstd, fsum
from servesim.simulator.sweep import RESULTS_FILE, run_sweep
from tests.hostile.cases import SCENARIO


def _spec() -> dict:
    base = copy.deepcopy(SCENARIO)
    base["workload"]["num_requests"] = 24
    base["workload"]["lengths"]["output"] = {"dist": "uniform", "min_tokens": 4,
                                             "max_tokens": 40}
    return {"name": "bytes", "base": base,
            "grid": {"workload.arrivals.rate_per_s": [2.0, 50.0],
                     "kv_cache.manager": ["paged", "contiguous"]}}


# The first engine run of a session compiles the numba kernels (~2 minutes on a loaded
# machine; the default run's other engine tests pay it once too): slow-marked.
@pytest.mark.slow
def test_serial_and_in_process_dask_write_identical_bytes(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    spec = _spec()
    spec["grid"]["kv_cache.manager"] = ["paged"]
    run_sweep(spec, executor="serial", out=tmp_path / "serial", progress=False)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster:
        run_sweep(spec, executor="dask", scheduler_address=cluster.scheduler_address,
                  out=tmp_path / "dask", progress=False)
    want = (tmp_path / "serial" / RESULTS_FILE).read_bytes()
    assert (tmp_path / "dask" / RESULTS_FILE).read_bytes() == want


# Worker processes compile the numba kernels into the session's fresh cache as well.
@pytest.mark.slow
def test_serial_local_and_dask_write_identical_bytes(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    spec = _spec()
    run_sweep(spec, executor="serial", out=tmp_path / "serial", progress=False)
    run_sweep(spec, executor="local", workers=2, out=tmp_path / "local", progress=False)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster:
        run_sweep(spec, executor="dask", scheduler_address=cluster.scheduler_address,
                  out=tmp_path / "dask", progress=False)
    want = (tmp_path / "serial" / RESULTS_FILE).read_bytes()
    assert (tmp_path / "local" / RESULTS_FILE).read_bytes() == want
    assert (tmp_path / "dask" / RESULTS_FILE).read_bytes() == want


def test_exact_sums_match_math_fsum_whatever_the_alignment() -> None:
    import math

    rng = np.random.default_rng(7)
    for _ in range(50):
        x = rng.normal(0, 10.0 ** rng.integers(-8, 8), rng.integers(1, 3000))
        x *= 10.0 ** rng.integers(-30, 30)
        want = math.fsum(x.tolist())
        assert fsum(x) == want
        shifted = np.empty(len(x) + 1)[1:]  # a view one element off the allocation
        shifted[:] = x
        assert fsum(shifted) == want
        assert fsum(x[::-1]) == want  # order-independent
    assert fsum([1e100, 1.0, -1e100]) == 1.0
    assert fsum([]) == 0.0 and math.isnan(fmean([]))
    assert fdot([1.0, 2.0], [3.0, 4.0]) == 11.0
    assert fstd(np.arange(10.0)) == pytest.approx(np.std(np.arange(10.0)), rel=1e-15)
