"""Sweeps that survive: dying workers, a dying main process, resume after changes.

The point function is :func:`tests.hostile.crashers.crashy_point` (arithmetic, no engine),
so each test takes seconds; the one that kills the main process runs a sweep in a child.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from servesim.simulator.sweep import (
    JOURNAL_FILE,
    RESULTS_FILE,
    PointTask,
    execute_points,
    expand_points,
    read_results,
    sweep_from_dict,
)
from tests.hostile.crashers import crashy_point

ROOT = Path(__file__).resolve().parents[2]


def _tasks(base: dict, n: int = 6, digests: dict[int, str] | None = None) -> list[PointTask]:
    spec = sweep_from_dict({"base": base, "grid": {"x": list(range(n))}})
    return [PointTask(point=p, base=spec.base, base_dir=None,
                      scenario_digest=(digests or {}).get(p.index))
            for p in expand_points(spec)]


def _run(tasks: list[PointTask], **kw: object) -> pd.DataFrame:
    return execute_points(tasks, crashy_point, progress=False, **kw)


def _one_row_per_point_and_variant(df: pd.DataFrame) -> None:
    ok = df[df["status"] == "ok"]
    assert not ok.duplicated(["point_id", "variant"]).any()
    assert not df.duplicated(["point_id", "variant"]).any()


def _no_leftovers(out: Path) -> None:
    names = sorted(p.name for p in out.iterdir())
    assert names == [RESULTS_FILE], names


def test_a_worker_that_always_dies_costs_only_its_point(tmp_path: Path) -> None:
    markers = tmp_path / "m"
    markers.mkdir()
    tasks = _tasks({"marker_dir": str(markers), "kill_index": 2}, n=6)
    df = _run(tasks, executor="local", workers=2, out=tmp_path / "out")
    bad = df[df["status"] != "ok"]
    assert list(bad["point_index"]) == [2], df[["point_index", "status", "error"]]
    assert "died twice" in bad["error"].iloc[0]
    assert (df[df["point_index"] != 2]["status"] == "ok").all()
    assert len(df) == 5 * 2 + 1
    _one_row_per_point_and_variant(df)
    _no_leftovers(tmp_path / "out")
    # Column types do not depend on the failure: counts stay integers.
    stored = read_results(tmp_path / "out")
    assert str(stored["num_things"].dtype) == "Int64"
    assert str(stored["metric_s"].dtype) == "float64"


def test_a_worker_that_dies_once_is_retried_and_the_point_succeeds(tmp_path: Path) -> None:
    markers = tmp_path / "m"
    markers.mkdir()
    tasks = _tasks({"marker_dir": str(markers), "kill_index": 1, "kill_once": True}, n=5)
    df = _run(tasks, executor="local", workers=2)
    assert (df["status"] == "ok").all(), df[["point_index", "status", "error"]]
    assert len(df) == 10


def test_failed_points_and_successful_ones_have_the_same_column_types(tmp_path: Path) -> None:
    ok = _run(_tasks({}, n=3), executor="serial", out=tmp_path / "a")
    failed = _run(_tasks({"fail_index": 1}, n=3), executor="serial", out=tmp_path / "b")
    a, b = read_results(tmp_path / "a"), read_results(tmp_path / "b")
    assert dict(a.dtypes) == dict(b.dtypes)
    assert list(failed["status"]) == ["ok", "ok", "error", "ok", "ok"]
    assert len(ok) == 6


def test_resume_recomputes_points_whose_resolved_scenario_changed(tmp_path: Path) -> None:
    markers = tmp_path / "m"
    markers.mkdir()
    base = {"marker_dir": str(markers)}
    out = tmp_path / "out"
    _run(_tasks(base, n=4, digests=dict.fromkeys(range(4), "v1")), executor="serial", out=out)
    # Points 1 and 3 now resolve to another scenario (same parameters, same point ids).
    changed = {0: "v1", 1: "v2", 2: "v1", 3: "v2"}
    df = _run(_tasks(base, n=4, digests=changed), executor="serial", out=out, resume=True)
    runs = pd.Series([m.name.split("-")[0] for m in markers.iterdir()]).value_counts()
    by_index = {t.point.point_id: t.point.index for t in _tasks(base, n=4)}
    ran = {by_index[pid]: n for pid, n in runs.items()}
    assert ran == {0: 1, 1: 2, 2: 1, 3: 2}
    assert list(df["scenario_digest"]) == ["v1", "v1", "v2", "v2", "v1", "v1", "v2", "v2"]
    _one_row_per_point_and_variant(read_results(out))


def test_resume_drops_rows_of_points_no_longer_in_the_sweep(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _run(_tasks({"k": 1}, n=3), executor="serial", out=out)
    # The base changed: every point id changes; the old rows must not stay beside new ones.
    _run(_tasks({"k": 2}, n=3), executor="serial", out=out, resume=True)
    stored = read_results(out)
    assert len(stored) == 6 and stored["point_index"].tolist() == [0, 0, 1, 1, 2, 2]
    _one_row_per_point_and_variant(stored)


def test_files_are_written_with_normal_permissions(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _run(_tasks({}, n=2), executor="serial", out=out)
    mode = (out / RESULTS_FILE).stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def test_a_symlinked_results_file_is_replaced_not_written_through(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (out / RESULTS_FILE).symlink_to(victim)
    with pytest.raises(Exception, match="results"):
        _run(_tasks({}, n=2), executor="serial", out=out, resume=True)
    assert victim.read_text() == "keep me"


def test_storage_is_linear_in_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each finished point appends one journal line; the Parquet file is rewritten only
    after 1, 2, 4, 8 ... rows, so storing n points costs O(n), not O(n^2) (10,000 variants
    used to rewrite every earlier row after each one)."""
    from servesim.simulator import sweep

    written: list[int] = []
    real = sweep._write_atomic
    monkeypatch.setattr(sweep, "_write_atomic",
                        lambda df, path: (written.append(len(df)), real(df, path)))
    n = 2000
    df = _run(_tasks({}, n=n), executor="serial", out=tmp_path / "out")
    assert len(df) == 2 * n
    assert len(written) <= 2 + (2 * n).bit_length(), written
    assert sum(written) <= 5 * 2 * n
    _no_leftovers(tmp_path / "out")


@pytest.mark.slow
def test_ten_thousand_points_store_in_seconds(tmp_path: Path) -> None:
    t0 = time.monotonic()
    df = _run(_tasks({}, n=10_000), executor="serial", out=tmp_path / "out")
    assert len(df) == 20_000
    assert time.monotonic() - t0 < 60


def _child_script(out: Path, markers: Path, n: int) -> str:
    return textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from tests.hostile.crashers import crashy_point
        from tests.hostile.test_crash import _tasks
        from servesim.simulator.sweep import execute_points
        tasks = _tasks({{"marker_dir": {str(markers)!r}, "sleep_s": 0.3}}, n={n})
        execute_points(tasks, crashy_point, executor="local", workers=2, out={str(out)!r},
                       resume=True, progress=False)
    """)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_killing_the_main_process_takes_its_workers_and_resume_completes(tmp_path: Path) -> None:
    out, markers = tmp_path / "out", tmp_path / "m"
    markers.mkdir()
    n = 16
    proc = subprocess.Popen([sys.executable, "-c", _child_script(out, markers, n)])
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            journal = out / JOURNAL_FILE
            if journal.exists() and len(journal.read_bytes().splitlines()) >= 4:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    workers = {int(m.name.split("-")[1]) for m in markers.iterdir()}
    assert workers, "no point ran"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.1)
    assert not any(_alive(p) for p in workers), "workers outlived the killed main process"
    done = len((out / JOURNAL_FILE).read_bytes().splitlines())
    assert 4 <= done < n
    subprocess.run([sys.executable, "-c", _child_script(out, markers, n)], check=True,
                   timeout=180)
    stored = read_results(out)
    assert sorted(set(stored["point_index"])) == list(range(n))
    assert (stored["status"] == "ok").all()
    _one_row_per_point_and_variant(stored)
    _no_leftovers(out)
    # Points stored before the kill were not run again.
    runs = pd.Series([m.name.split("-")[0] for m in markers.iterdir()]).value_counts()
    assert (runs > 1).sum() <= 2  # at most the points in flight at the kill


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_random_kills_then_resume_leave_exactly_one_row_per_point(tmp_path: Path,
                                                                   seed: int) -> None:
    """Kill the main process at a random moment, several times; resume each time."""
    import random

    rnd = random.Random(seed)
    out, markers = tmp_path / "out", tmp_path / "m"
    markers.mkdir()
    n = 12
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", _child_script(out, markers, n)])
        time.sleep(rnd.uniform(0.5, 4.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if (out / RESULTS_FILE).exists():
            json.dumps(read_results(out).to_dict())  # readable at every kill
    subprocess.run([sys.executable, "-c", _child_script(out, markers, n)], check=True,
                   timeout=300)
    stored = read_results(out)
    assert sorted(set(stored["point_index"])) == list(range(n))
    _one_row_per_point_and_variant(stored)
    _no_leftovers(out)


def test_cli_sweep_exits_1_with_a_count_when_a_point_failed(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A point that fails is an error row, the others are kept, and the exit status is 1."""
    from servesim.simulator import sweep
    from tests.hostile.cases import SCENARIO
    from tests.hostile.runner import run_in_process

    def fake_run_point(task: PointTask) -> list[dict]:
        return [{"point_index": task.point.index, "point_id": task.point.point_id,
                 **task.point.params, "variant": "default", "status": "ok", "error": None,
                 "completed": 8}]

    monkeypatch.setattr(sweep, "run_point", fake_run_point)
    spec = {"name": "sw", "base": SCENARIO,
            "grid": {"kv_cache.block_size_tokens": [16, 32, 1000]}}  # 1000 > 256: invalid
    (tmp_path / "sw.yaml").write_text(json.dumps(spec))
    out = run_in_process(["sweep", str(tmp_path / "sw.yaml"), "-e", "serial", "--no-progress",
                          "--out", str(tmp_path / "out")], tmp_path)
    assert out.code == 1, out.text
    assert "1 of 3 points failed" in out.text
    assert "Traceback" not in out.text
    stored = read_results(tmp_path / "out")
    assert list(stored["status"]) == ["ok", "ok", "error"]
    assert str(stored["completed"].dtype) == "Int64"
