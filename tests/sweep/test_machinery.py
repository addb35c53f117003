"""The sweep machinery on its own: spec expansion, point identity, executors, storage, resume.

The point function here is :func:`standin.standin_point`, a few lines of arithmetic, so
these tests check the plumbing (and run in seconds); ``test_engine_sweeps.py`` runs the
real engine through the same code.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from servesim.simulator.errors import ScenarioError, SimulatorError
from servesim.simulator.sweep import (
    PointTask,
    SerialExecutor,
    _digest,
    execute_points,
    expand_points,
    point_digest,
    read_results,
    set_dotted,
    sweep_from_dict,
)
from tests.sweep.standin import standin_point

ROOT = Path(__file__).resolve().parents[2]


def _tasks(spec_dict: dict) -> list[PointTask]:
    spec = sweep_from_dict(spec_dict)
    return [PointTask(point=p, base=spec.base, base_dir=None) for p in expand_points(spec)]


GRID = {"base": {"name": "b"}, "grid": {"x": [1, 2, 3, 4], "fail": [False, True]}}


# ---------------------------------------------------------------------------- specs


def test_grid_is_a_cartesian_product_last_key_fastest() -> None:
    spec = sweep_from_dict({"base": {}, "grid": {"a": [1, 2], "b": ["x", "y", "z"]}})
    points = expand_points(spec)
    assert [tuple(p.params.values()) for p in points] == [
        (1, "x"),
        (1, "y"),
        (1, "z"),
        (2, "x"),
        (2, "y"),
        (2, "z"),
    ]
    assert [p.index for p in points] == list(range(6))


def test_zip_aligns_lists_and_refuses_ragged_ones() -> None:
    spec = sweep_from_dict({"base": {}, "zip": {"a": [1, 2], "b": [10, 20]}})
    assert [dict(p.params) for p in expand_points(spec)] == [{"a": 1, "b": 10}, {"a": 2, "b": 20}]
    with pytest.raises(ScenarioError, match="same length"):
        sweep_from_dict({"base": {}, "zip": {"a": [1, 2], "b": [10]}})


def test_exactly_one_kind_of_sweep() -> None:
    with pytest.raises(ScenarioError, match="exactly one of grid, zip, random, points"):
        sweep_from_dict({"base": {}, "grid": {"a": [1]}, "zip": {"b": [1]}})
    with pytest.raises(ScenarioError, match="exactly one"):
        sweep_from_dict({"base": {}})
    with pytest.raises(ScenarioError, match="griid"):
        sweep_from_dict({"base": {}, "griid": {"a": [1]}})


def test_random_samples_are_seeded_and_in_range() -> None:
    body = {
        "base": {},
        "random": {
            "samples": 50,
            "seed": 3,
            "params": {
                "c": {"choice": ["paged", "radix"]},
                "u": {"uniform": [1.0, 2.0]},
                "l": {"loguniform": [0.1, 100.0]},
                "i": {"randint": [4, 6]},
            },
        },
    }
    a = [dict(p.params) for p in expand_points(sweep_from_dict(body))]
    b = [dict(p.params) for p in expand_points(sweep_from_dict(body))]
    assert a == b
    assert {p["c"] for p in a} == {"paged", "radix"}
    assert all(1.0 <= p["u"] < 2.0 and 0.1 <= p["l"] < 100.0 for p in a)
    assert {p["i"] for p in a} == {4, 5, 6}  # randint includes both ends
    other = {**body, "random": {**body["random"], "seed": 4}}
    assert [dict(p.params) for p in expand_points(sweep_from_dict(other))] != a
    with pytest.raises(ScenarioError, match="exactly one of choice"):
        sweep_from_dict({"base": {}, "random": {"samples": 1, "params": {"u": {}}}})


def test_point_id_is_a_stable_digest_not_hash() -> None:
    # Fixed value: the same in every process and on every machine (hash() is salted).
    assert point_digest({"x": 1, "y": "a"}, base_digest=_digest({"name": "b"})) == (
        "da3346f45d6b2c5a"
    )
    # The key order does not matter; the value's type and the base do.
    assert point_digest({"y": "a", "x": 1}, base_digest=_digest({"name": "b"})) == (
        "da3346f45d6b2c5a"
    )
    assert point_digest({"x": 1.0, "y": "a"}, base_digest=_digest({"name": "b"})) != (
        "da3346f45d6b2c5a"
    )
    assert point_digest({"x": 1, "y": "a"}, base_digest=_digest({"name": "c"})) != (
        "da3346f45d6b2c5a"
    )


def test_set_dotted_creates_mappings_indexes_lists_and_copies() -> None:
    base = {"a": {"b": 1}, "v": [{"k": 1}, {"k": 2}]}
    out = set_dotted(base, "a.c.d", 5)
    out = set_dotted(out, "v.1.k", 9)
    assert out == {"a": {"b": 1, "c": {"d": 5}}, "v": [{"k": 1}, {"k": 9}]}
    assert base == {"a": {"b": 1}, "v": [{"k": 1}, {"k": 2}]}
    with pytest.raises(ScenarioError, match=r"inside the scalar at a\.b"):
        set_dotted(base, "a.b.c", 1)
    with pytest.raises(ScenarioError, match="2-item list"):
        set_dotted(base, "v.7.k", 1)


def test_base_path_resolves_against_the_sweep_file(tmp_path: Path) -> None:
    (tmp_path / "scen.yaml").write_text("name: s\nseed: 1\n")
    (tmp_path / "sw.yaml").write_text("base: scen.yaml\ngrid: {seed: [1, 2]}\n")
    from servesim.simulator.sweep import load_sweep

    spec = load_sweep(tmp_path / "sw.yaml")
    assert spec.name == "sw" and spec.base == {"name": "s", "seed": 1}
    assert spec.base_dir == tmp_path


# ---------------------------------------------------------------------------- executors


def _run(tasks: list[PointTask], **kw) -> pd.DataFrame:
    return execute_points(tasks, standin_point, progress=False, **kw)


def test_failed_points_are_recorded_and_the_sweep_goes_on() -> None:
    df = _run(_tasks(GRID), executor="serial")
    assert len(df) == 4 * 2 + 4  # ok points give two variant rows, failed ones one
    failed = df[df["status"] == "error"]
    assert list(failed["point_index"]) == [1, 3, 5, 7]
    assert failed["error"].str.startswith("ValueError: point ").all()
    assert list(df.columns[:6]) == ["point_index", "point_id", "x", "fail", "variant", "status"]


def test_rows_are_identical_serial_and_with_1_or_2_local_workers() -> None:
    tasks = _tasks(GRID)
    serial = _run(tasks, executor="serial")
    pd.testing.assert_frame_equal(_run(tasks, executor="local", workers=1), serial)
    pd.testing.assert_frame_equal(_run(tasks, executor="local", workers=2), serial)
    pd.testing.assert_frame_equal(_run(tasks, executor=SerialExecutor()), serial)


def test_rows_are_identical_on_an_in_process_dask_cluster() -> None:
    distributed = pytest.importorskip("distributed")
    tasks = _tasks(GRID)
    serial = _run(tasks, executor="serial")
    with distributed.LocalCluster(n_workers=2, processes=False, dashboard_address=None) as cluster:
        got = _run(tasks, executor="dask", scheduler_address=cluster.scheduler_address)
    pd.testing.assert_frame_equal(got, serial)


def test_unknown_executor_is_a_user_error() -> None:
    with pytest.raises(SimulatorError, match="unknown executor 'gpu'"):
        _run(_tasks(GRID), executor="gpu")


# ---------------------------------------------------------------------------- storage


def test_results_file_is_complete_after_each_point_and_refuses_overwrite(tmp_path: Path) -> None:
    tasks = _tasks(GRID)
    df = _run(tasks, executor="serial", out=tmp_path)
    pd.testing.assert_frame_equal(read_results(tmp_path), df)
    assert sorted(os.listdir(tmp_path)) == ["results.parquet"]  # no temp files left
    with pytest.raises(SimulatorError, match="already exists; pass resume=True"):
        _run(tasks, executor="serial", out=tmp_path)


def test_mixed_type_parameters_are_stored_as_text(tmp_path: Path) -> None:
    tasks = _tasks({"base": {}, "points": [{"x": 1, "tag": "a"}, {"x": 2, "tag": 3}]})
    df = _run(tasks, executor="serial", out=tmp_path)
    assert list(df["tag"]) == ["a", "a", "3", "3"]


def test_resume_runs_only_missing_points_and_retries_failures(tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    spec = {**GRID, "base": {"name": "b", "marker_dir": str(markers)}}
    tasks = _tasks(spec)
    _run(tasks[:3], executor="serial", out=tmp_path / "out")  # the "killed" first part
    full = _run(tasks, executor="serial", out=tmp_path / "out", resume=True)
    ran = sorted(m.name.split("-")[0] for m in markers.iterdir())
    by_id = {t.point.point_id: t.point.index for t in tasks}
    counts = pd.Series([by_id[r] for r in ran]).value_counts().sort_index()
    # Points 0 and 2 succeeded in the first part and were not redone; point 1 failed and
    # was retried; points 3.. ran once.
    assert counts.to_dict() == {0: 1, 1: 2, 2: 1, 3: 1, 4: 1, 5: 1, 6: 1, 7: 1}
    fresh = _run(_tasks(GRID), executor="serial")
    pd.testing.assert_frame_equal(full.drop(columns=["point_id"]), fresh.drop(columns=["point_id"]))


def test_resume_after_a_real_kill_loses_and_redoes_no_finished_point(tmp_path: Path) -> None:
    """A sweep in a subprocess is SIGKILLed once a few points are stored; the resumed
    sweep keeps every stored row and reruns only the points that were not stored."""
    markers, out = tmp_path / "markers", tmp_path / "out"
    markers.mkdir()
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from tests.sweep.standin import standin_point
        from servesim.simulator.sweep import PointTask, execute_points, expand_points, sweep_from_dict
        spec = sweep_from_dict({{"base": {{"marker_dir": {str(markers)!r}}},
                                "grid": {{"x": list(range(12)), "sleep_s": [0.15]}}}})
        tasks = [PointTask(point=p, base=spec.base, base_dir=None) for p in expand_points(spec)]
        execute_points(tasks, standin_point, executor="serial", out={str(out)!r},
                       resume=True, progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if (out / "results.parquet").exists() and len(read_results(out)) >= 6:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    before = read_results(out)
    done_before = set(before["point_id"])
    assert 3 <= len(done_before) < 12, "the kill should land midway"
    subprocess.run([sys.executable, "-c", script], check=True)
    after = read_results(out)
    assert after["point_id"].nunique() == 12
    assert list(after["point_index"].drop_duplicates()) == list(range(12))
    # Rows stored before the kill survive unchanged.
    kept = after[after["point_id"].isin(done_before)].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, before.reset_index(drop=True), check_dtype=False)
    runs = pd.Series([m.name.split("-")[0] for m in markers.iterdir()]).value_counts()
    assert (runs[list(done_before)] == 1).all(), "a finished point was run again"
    # At most the one point in flight at the kill ran twice.
    assert (runs > 1).sum() <= 1
