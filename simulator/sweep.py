"""Parameter sweeps: a base scenario, a set of points over dotted paths, an executor.

A sweep file::

    name: rate-x-gpu
    base: ../scenarios/quickstart.yaml        # a scenario path (relative to this file) or a mapping
    grid:                                     # or zip: / random: / points:
      hardware.gpu: [a100-sxm4-80gb, h100-sxm]
      workload.arrivals.rate_per_s: [2, 4, 8]

expands into *points* (``grid``: cartesian product in the order written, last key fastest;
``zip``: aligned lists; ``random``: ``samples`` draws from a seeded stream; ``points``: an
explicit list of mappings). Each point is the base scenario with its values set at the
dotted paths; it runs through the engine and yields one row per variant.

How it runs:

* **Executors** are plain :class:`concurrent.futures.Executor` objects: ``serial``
  (in-process, one at a time), ``local`` (a :class:`~concurrent.futures.ProcessPoolExecutor`,
  one worker per core by default) or ``dask`` (``Client(address).get_executor()``, or a
  :class:`distributed.LocalCluster` when no address is given). An ``Executor`` instance can
  be passed as well (it is used, not shut down).
* **Storage**: ``OUT/results.parquet`` is one Parquet file, rewritten after every finished
  point through a temporary file and :func:`os.replace`, so a kill leaves either the old or
  the new file, never a torn one. (A directory of part files would make appends O(1) but
  leaves readers to merge and de-duplicate; sweeps here are hundreds to a few thousand
  points, where rewriting costs milliseconds.) ``OUT/sweep.json`` records the spec.
* **Identity and resume**: a point's ``point_id`` is a SHA-256 digest of the canonical JSON
  of the base scenario and the point's parameters (never ``hash()``, which is salted per
  process). ``resume=True`` keeps the rows of points already stored with status ``ok``
  and runs the rest; points stored with status ``error`` are run again (errors may be
  transient: a killed worker).
* **Failures**: an exception inside a point becomes a row with ``status="error"`` and the
  message in ``error``; the sweep goes on.
* **Determinism**: rows never depend on the executor or the worker count: each point is a
  pure function of its parameters (the scenario seed is a parameter like any other), no
  wall-clock column is stored, and rows are sorted by ``point_index`` (then variant order)
  at the end.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from servesim.simulator.errors import ScenarioError, SimulatorError

__all__ = [
    "Point",
    "SweepSpec",
    "execute_points",
    "expand_points",
    "load_sweep",
    "open_executor",
    "point_digest",
    "read_results",
    "run_point",
    "run_sweep",
    "set_dotted",
    "summary_row",
    "sweep_from_dict",
]

RESULTS_FILE = "results.parquet"
SPEC_FILE = "sweep.json"

# Columns every row has, in this order, before the swept parameters and the metrics.
ID_COLUMNS = ("point_index", "point_id")
STATUS_COLUMNS = ("variant", "status", "error")

ExecutorKind = Literal["serial", "local", "dask"]


# ---------------------------------------------------------------------------- spec


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Dist(_Cfg):
    """One random parameter: exactly one of the four distributions."""

    choice: list[Any] | None = Field(None, min_length=1, description="Pick one, uniformly.")
    uniform: tuple[float, float] | None = Field(None, description="[lo, hi) uniform float.")
    loguniform: tuple[float, float] | None = Field(
        None, description="[lo, hi) log-uniform float (both > 0)."
    )
    randint: tuple[int, int] | None = Field(None, description="[lo, hi] uniform integer.")

    @model_validator(mode="after")
    def _one(self) -> _Dist:
        given = [k for k in ("choice", "uniform", "loguniform", "randint") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of choice, uniform, loguniform, randint; got "
                f"{given or 'none'}"
            )
        for key in ("uniform", "loguniform", "randint"):
            bounds = getattr(self, key)
            if bounds is not None and bounds[1] < bounds[0]:
                raise ValueError(f"{key}: upper bound {bounds[1]} < lower bound {bounds[0]}")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError(f"loguniform bounds must be > 0, got {list(self.loguniform)}")
        return self


class _Random(_Cfg):
    samples: PositiveInt = Field(description="Number of points to draw.")
    seed: int = Field(0, ge=0, description="Seed of the sampling stream (not the scenario's).")
    params: dict[str, _Dist] = Field(min_length=1, description="Dotted path -> distribution.")


class _SweepFile(_Cfg):
    name: str | None = Field(None, description="Label of the sweep (default: file stem).")
    base: str | dict[str, Any] = Field(description="Scenario path or inline scenario mapping.")
    grid: dict[str, list[Any]] | None = Field(None, description="Cartesian product.")
    zip: dict[str, list[Any]] | None = Field(None, description="Aligned lists.")
    random: _Random | None = Field(None, description="Random samples.")
    points: list[dict[str, Any]] | None = Field(None, description="Explicit points.")

    @model_validator(mode="after")
    def _one_kind(self) -> _SweepFile:
        kinds = [k for k in ("grid", "zip", "random", "points") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(
                f"a sweep needs exactly one of grid, zip, random, points; got {kinds or 'none'}"
            )
        for kind in ("grid", "zip"):
            table = getattr(self, kind)
            if table is not None:
                if not table:
                    raise ValueError(f"{kind}: needs at least one dotted path")
                for path, values in table.items():
                    if not values:
                        raise ValueError(f"{kind}.{path}: needs at least one value")
        if self.zip is not None:
            lengths = {path: len(v) for path, v in self.zip.items()}
            if len(set(lengths.values())) != 1:
                raise ValueError(f"zip: lists must have the same length, got {lengths}")
        if self.points is not None and not self.points:
            raise ValueError("points: needs at least one point")
        return self


@dataclass(frozen=True, slots=True, kw_only=True)
class SweepSpec:
    """A validated sweep: the base scenario as a mapping, and how to vary it.

    Attributes:
        name: label of the sweep.
        base: the base scenario as a plain mapping (never mutated).
        base_dir: directory against which the scenario's relative paths resolve.
        kind: ``grid``, ``zip``, ``random`` or ``points``.
        params: ``grid``/``zip``: dotted path -> list of values; ``random``: dotted path ->
            distribution mapping; ``points``: ``{"points": [mapping, ...]}``.
        samples: number of random draws (``random`` only).
        sampling_seed: seed of the random draws (``random`` only).
    """

    name: str
    base: Mapping[str, Any]
    base_dir: Path | None
    kind: Literal["grid", "zip", "random", "points"]
    params: Mapping[str, Any]
    samples: int = 0
    sampling_seed: int = 0

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form (for ``sweep.json``)."""
        return {
            "name": self.name,
            "base": _jsonable(self.base),
            "base_dir": None if self.base_dir is None else str(self.base_dir),
            "kind": self.kind,
            "params": _jsonable(self.params),
            "samples": self.samples,
            "sampling_seed": self.sampling_seed,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Point:
    """One point of a sweep.

    Attributes:
        index: position in the expansion (rows are sorted by it).
        point_id: stable digest of base + params (see :func:`point_digest`).
        params: dotted path -> value, in the order the sweep declares them.
    """

    index: int
    point_id: str
    params: Mapping[str, Any] = field(default_factory=dict)


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and validate a sweep YAML file.

    Raises:
        ScenarioError: unreadable YAML, unknown keys, inconsistent lists, missing base.
    """
    path = Path(path)
    return sweep_from_dict(read_yaml_mapping(path, "sweep"), base_dir=path.parent, where=str(path))


def read_yaml_mapping(path: Path, kind: str) -> dict[str, Any]:
    """Read a sweep/plan YAML file as a mapping (``name`` defaults to the file stem).

    Raises:
        ScenarioError: the file is missing, not valid YAML, or not a mapping.
    """
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ScenarioError(f"{path}: no such {kind} file") from None
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ScenarioError(f"{path}: a {kind} file must be a mapping, got {type(raw).__name__}")
    raw.setdefault("name", path.stem)
    return raw


def sweep_from_dict(
    data: Mapping[str, Any], base_dir: str | Path | None = None, *, where: str = "sweep"
) -> SweepSpec:
    """Validate a sweep given as a mapping (the YAML file's content).

    Args:
        data: mapping with ``base`` and one of ``grid``/``zip``/``random``/``points``.
        base_dir: directory of the sweep file: a ``base`` path resolves against it, and so do
            relative paths inside an inline base scenario.
        where: name used in error messages.

    Raises:
        ScenarioError: the mapping is not a valid sweep, or the base file cannot be read.
    """
    try:
        cfg = _SweepFile.model_validate(dict(data))
    except ValidationError as exc:
        raise ScenarioError(f"{where}: {_format_validation(exc)}") from None
    base_dir = Path(base_dir) if base_dir is not None else None
    if isinstance(cfg.base, str):
        base_path = Path(cfg.base).expanduser()
        if not base_path.is_absolute() and base_dir is not None:
            base_path = base_dir / base_path
        try:
            base = yaml.safe_load(base_path.read_text())
        except FileNotFoundError:
            raise ScenarioError(f"{where}: base scenario {base_path} does not exist") from None
        except yaml.YAMLError as exc:
            raise ScenarioError(f"{base_path}: invalid YAML: {exc}") from None
        if not isinstance(base, dict):
            raise ScenarioError(f"{base_path}: a scenario must be a mapping")
        scenario_dir: Path | None = base_path.parent
    else:
        base, scenario_dir = dict(cfg.base), base_dir
    if cfg.random is not None:
        params = {k: v.model_dump(exclude_none=True) for k, v in cfg.random.params.items()}
        return SweepSpec(
            name=cfg.name or "sweep",
            base=base,
            base_dir=scenario_dir,
            kind="random",
            params=params,
            samples=cfg.random.samples,
            sampling_seed=cfg.random.seed,
        )
    kind: Literal["grid", "zip", "points"]
    if cfg.grid is not None:
        kind, params = "grid", dict(cfg.grid)
    elif cfg.zip is not None:
        kind, params = "zip", dict(cfg.zip)
    else:
        kind, params = "points", {"points": list(cfg.points or [])}
    return SweepSpec(
        name=cfg.name or "sweep", base=base, base_dir=scenario_dir, kind=kind, params=params
    )


def expand_points(spec: SweepSpec) -> list[Point]:
    """Expand a sweep into its points, in a fixed order.

    ``grid`` iterates like nested loops in declaration order (the last path varies
    fastest); ``random`` draws parameter by parameter, sample by sample, from the named
    stream ``sweep.random`` seeded with ``random.seed``.
    """
    if spec.kind == "grid":
        paths = list(spec.params)
        combos = [
            dict(zip(paths, values, strict=True))
            for values in itertools.product(*(spec.params[p] for p in paths))
        ]
    elif spec.kind == "zip":
        paths = list(spec.params)
        combos = [dict(zip(paths, v, strict=True)) for v in zip(*spec.params.values(), strict=True)]
    elif spec.kind == "points":
        combos = [dict(p) for p in spec.params["points"]]
    else:
        combos = _sample_random(spec)
    base_digest = _digest(spec.base)
    return [
        Point(index=i, point_id=point_digest(p, base_digest=base_digest), params=p)
        for i, p in enumerate(combos)
    ]


def _sample_random(spec: SweepSpec) -> list[dict[str, Any]]:
    from servesim.simulator.rng import make_rng

    rng = make_rng(spec.sampling_seed, "sweep.random")
    out = []
    for _ in range(spec.samples):
        point: dict[str, Any] = {}
        for path, dist in spec.params.items():
            if "choice" in dist:
                point[path] = copy.deepcopy(dist["choice"][int(rng.integers(len(dist["choice"])))])
            elif "uniform" in dist:
                lo, hi = dist["uniform"]
                point[path] = float(rng.uniform(lo, hi))
            elif "loguniform" in dist:
                lo, hi = dist["loguniform"]
                point[path] = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
            else:
                lo, hi = dist["randint"]
                point[path] = int(rng.integers(lo, hi, endpoint=True))
        out.append(point)
    return out


def point_digest(params: Mapping[str, Any], *, base_digest: str = "") -> str:
    """Stable identity of a point: SHA-256 (first 16 hex digits) of canonical JSON.

    The digest covers the base scenario's digest and the parameters with sorted keys, so it
    is the same in every process and on every machine, and it changes when the base does.
    """
    return _digest({"base": base_digest, "params": dict(params)})[:16]


def _digest(obj: Any) -> str:
    text = json.dumps(_jsonable(obj), sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _jsonable(obj: Any) -> Any:
    """Plain JSON types (paths to strings, numpy scalars to Python)."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and not isinstance(obj, str | bytes):
        return obj.item()
    return obj


def set_dotted(data: Mapping[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Return a deep copy of ``data`` with ``value`` set at the dotted ``path``.

    Intermediate mappings are created when missing; an integer segment indexes a list
    (``variants.0.kv_cache.manager``).

    Raises:
        ScenarioError: the path runs through a scalar, or a list index is out of range.
    """
    out = copy.deepcopy(dict(data))
    parts = path.split(".")
    node: Any = out
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ScenarioError(f"{path}: {where} is not an index of a {len(node)}-item list")
            if last:
                node[int(part)] = copy.deepcopy(value)
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = copy.deepcopy(value)
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            raise ScenarioError(f"{path}: cannot set a key inside the scalar at {where}")
    return out


def apply_params(base: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """The base scenario mapping with every ``path: value`` of a point applied, in order."""
    out = dict(base)
    for path, value in params.items():
        out = set_dotted(out, path, value)
    return out


# ---------------------------------------------------------------------------- one point


@dataclass(frozen=True, slots=True, kw_only=True)
class PointTask:
    """What a worker needs to run one point (picklable, self-contained)."""

    point: Point
    base: Mapping[str, Any]
    base_dir: str | None


def run_point(task: PointTask) -> list[dict[str, Any]]:
    """Run one point through the engine; one row per variant (the worker function).

    Exceptions propagate; :func:`execute_points` turns them into error rows.
    """
    from servesim.simulator.build import run_scenario
    from servesim.simulator.scenario import scenario_from_dict

    # Workers never draw the engine's progress bar; the sweep has its own.
    data = set_dotted(apply_params(task.base, task.point.params), "engine.progress", False)
    cfg = scenario_from_dict(data, base_dir=None if task.base_dir is None else Path(task.base_dir))
    results = run_scenario(cfg)
    return [
        {**_id_fields(task.point), "variant": v.name, "status": "ok", "error": None,
         **summary_row(v.summary)}
        for v in results.variants
    ]


def validate_point(task: PointTask) -> None:
    """Validate a point's scenario without running it (raises ScenarioError/ConfigError)."""
    from servesim.simulator.scenario import scenario_from_dict

    data = apply_params(task.base, task.point.params)
    scenario_from_dict(data, base_dir=None if task.base_dir is None else Path(task.base_dir))


def summary_row(summary: Mapping[str, Any]) -> dict[str, Any]:
    """Flatten an engine summary into scalar columns.

    Scalars are kept under their own names; ``memory_budget`` becomes ``mem_<key>`` and
    ``slo`` becomes ``slo_<key>``; ``config`` is left out (the swept parameters already are
    columns, and the full scenario can be rebuilt from the base and the point).
    """
    row: dict[str, Any] = {}
    for key, value in summary.items():
        if key == "memory_budget" and isinstance(value, Mapping):
            row.update({f"mem_{k}": _scalar(v) for k, v in value.items()})
        elif key == "slo" and isinstance(value, Mapping):
            row.update({f"slo_{k}": _scalar(v) for k, v in value.items()})
        elif not isinstance(value, Mapping | list | tuple):
            row[key] = _scalar(value)
    return row


def _scalar(value: Any) -> Any:
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        return value.item()
    return value


def _id_fields(point: Point) -> dict[str, Any]:
    return {"point_index": point.index, "point_id": point.point_id, **_param_columns(point)}


def _param_columns(point: Point) -> dict[str, Any]:
    """Parameters as columns; mappings and lists are stored as canonical JSON text."""
    return {
        path: json.dumps(_jsonable(v), sort_keys=True) if isinstance(v, Mapping | list) else v
        for path, v in point.params.items()
    }


def _error_rows(point: Point, exc: BaseException) -> list[dict[str, Any]]:
    message = f"{type(exc).__name__}: {exc}".strip()
    return [{**_id_fields(point), "variant": None, "status": "error", "error": message}]


def _guarded(fn: Callable[[Any], list[dict[str, Any]]], task: Any) -> list[dict[str, Any]]:
    """Call ``fn(task)`` in the worker, turning an exception into an error row."""
    try:
        return fn(task)
    except Exception as exc:
        return _error_rows(task.point, exc)


# ---------------------------------------------------------------------------- executors


class SerialExecutor(Executor):
    """Runs each submitted call at once, in the calling process (debugging, notebooks)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


def _process_context() -> multiprocessing.context.BaseContext:
    # NOTE: fork after numba/threads have started is unsafe, and spawn re-imports numpy,
    # pandas and numba in every worker. forkserver forks workers from a clean server that
    # imported the simulator once.
    methods = multiprocessing.get_all_start_methods()
    if "forkserver" in methods:
        ctx = multiprocessing.get_context("forkserver")
        # Modules that fail to import are skipped by the forkserver.
        ctx.set_forkserver_preload(["servesim.simulator.sweep", "servesim.simulator.build"])
        return ctx
    return multiprocessing.get_context("spawn")


@contextmanager
def open_executor(
    executor: ExecutorKind | Executor = "local",
    *,
    workers: int | None = None,
    scheduler_address: str | None = None,
) -> Iterator[Executor]:
    """Yield a :class:`concurrent.futures.Executor` of the requested kind.

    Args:
        executor: ``serial``, ``local`` (process pool), ``dask``, or an Executor instance
            (used as is and not shut down).
        workers: processes for ``local`` and for a Dask ``LocalCluster`` (default: the
            number of cores).
        scheduler_address: Dask scheduler to connect to (``tcp://host:8786``); without it a
            ``LocalCluster`` is started for the duration of the sweep.

    Raises:
        SimulatorError: unknown executor kind, or Dask requested but not installed.
    """
    if isinstance(executor, Executor):
        yield executor
        return
    if workers is not None and workers < 1:
        raise SimulatorError(f"workers must be >= 1, got {workers}")
    if executor == "serial":
        yield SerialExecutor()
    elif executor == "local":
        pool = ProcessPoolExecutor(
            max_workers=workers or os.cpu_count() or 1, mp_context=_process_context()
        )
        try:
            yield pool
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    elif executor == "dask":
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise SimulatorError(
                "the dask executor needs dask[distributed]: pip install 'servesim[dask]'"
            ) from None
        if scheduler_address:
            client = Client(scheduler_address)
            try:
                yield client.get_executor()
            finally:
                client.close()
        else:
            cluster = LocalCluster(
                n_workers=workers or os.cpu_count() or 1,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
            )
            client = Client(cluster)
            try:
                yield client.get_executor()
            finally:
                client.close()
                cluster.close()
    else:
        raise SimulatorError(f"unknown executor {executor!r}; use serial, local or dask")


# ---------------------------------------------------------------------------- running


def read_results(out: str | Path) -> pd.DataFrame:
    """Read ``OUT/results.parquet`` (an empty frame when there is none)."""
    path = Path(out) / RESULTS_FILE
    return pd.read_parquet(path) if path.exists() else pd.DataFrame()


def _write_atomic(df: pd.DataFrame, path: Path) -> None:
    """Write ``df`` to ``path`` so that readers only ever see a complete file."""
    fd, tmp = tempfile.mkstemp(prefix=".results-", suffix=".parquet.tmp", dir=path.parent)
    os.close(fd)
    try:
        df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _frame(rows: Sequence[Mapping[str, Any]], param_names: Sequence[str]) -> pd.DataFrame:
    """Rows -> DataFrame with the column order ids, params, variant/status/error, metrics."""
    df = pd.DataFrame(list(rows))
    if df.empty:
        return pd.DataFrame(columns=[*ID_COLUMNS, *param_names, *STATUS_COLUMNS])
    for col in (*ID_COLUMNS, *param_names, *STATUS_COLUMNS):
        if col not in df.columns:
            df[col] = None
    first = [*ID_COLUMNS, *param_names, *STATUS_COLUMNS]
    rest = [c for c in df.columns if c not in first]
    df = df[first + rest]
    for col in param_names:
        df[col] = _uniform_column(df[col])
    return df


def _uniform_column(col: pd.Series) -> pd.Series:
    """Parquet needs one type per column: mixed-type parameters become strings."""
    kinds = {type(v) for v in col if v is not None and not (isinstance(v, float) and math.isnan(v))}
    if kinds <= {int, float} or len(kinds) <= 1:
        return col
    return col.map(lambda v: None if v is None else str(v))


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    if df.empty:
        return df
    order = df.groupby("point_index", sort=False).cumcount()
    return (
        df.assign(_row=order)
        .sort_values(["point_index", "_row"], kind="stable")
        .drop(columns="_row")
        .reset_index(drop=True)
    )


def execute_points(
    tasks: Sequence[PointTask],
    fn: Callable[[Any], list[dict[str, Any]]] = run_point,
    *,
    executor: ExecutorKind | Executor = "local",
    workers: int | None = None,
    scheduler_address: str | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    description: str = "sweep",
    param_names: Sequence[str] | None = None,
    spec_json: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Run ``fn`` over the tasks on an executor, storing rows as each point finishes.

    This is the machinery under :func:`run_sweep`; ``fn`` is any picklable function of a
    task (with a ``.point``) returning rows, so it also serves other batch jobs.

    Args:
        tasks: the points to run.
        fn: worker function (module-level, picklable).
        executor, workers, scheduler_address: see :func:`open_executor`.
        out: directory for ``results.parquet`` and ``sweep.json``; None keeps rows in
            memory only.
        resume: keep stored ``ok`` points and run only the others.
        progress: show a progress bar (points done / total).
        description: label of the progress bar.
        param_names: parameter columns, in order (default: from the first task).
        spec_json: written to ``OUT/sweep.json``.

    Returns:
        All rows of these tasks' points, sorted by point index.

    Raises:
        SimulatorError: ``out`` holds results and ``resume`` is False.
    """
    if param_names is None:
        param_names = list(tasks[0].point.params) if tasks else []
    param_names = list(param_names)
    wanted = {t.point.point_id for t in tasks}
    stored: list[dict[str, Any]] = []
    results_path: Path | None = None
    if out is not None:
        out_dir = Path(out)
        out_dir.mkdir(parents=True, exist_ok=True)
        results_path = out_dir / RESULTS_FILE
        if results_path.exists():
            if not resume:
                raise SimulatorError(
                    f"{results_path} already exists; pass resume=True (--resume) to continue "
                    f"that sweep, or choose another output directory"
                )
            old = pd.read_parquet(results_path)
            # Keep successful rows only; errored points run again.
            if not old.empty:
                old = old[old["status"] == "ok"]
            stored = [_clean_row(r) for r in old.to_dict(orient="records")]
        if spec_json is not None:
            (out_dir / SPEC_FILE).write_text(json.dumps(_jsonable(spec_json), indent=2) + "\n")
    done_ids = {r["point_id"] for r in stored}
    todo = [t for t in tasks if t.point.point_id not in done_ids]
    rows = list(stored)

    def _record(new_rows: list[dict[str, Any]]) -> None:
        rows.extend(new_rows)
        if results_path is not None:
            _write_atomic(_sorted(_frame(rows, param_names)), results_path)

    with _progress(progress, description, total=len(tasks), done=len(tasks) - len(todo)) as bar:
        if todo:
            with open_executor(executor, workers=workers, scheduler_address=scheduler_address) as ex:
                if isinstance(ex, SerialExecutor):
                    # One at a time, each stored before the next starts.
                    for task in todo:
                        _record(_guarded(fn, task))
                        bar()
                else:
                    futures = {ex.submit(_guarded, fn, t): t for t in todo}
                    for future in as_completed(futures):
                        task = futures[future]
                        try:
                            new_rows = future.result()
                        except Exception as exc:  # worker died, task could not be pickled
                            new_rows = _error_rows(task.point, exc)
                        _record(new_rows)
                        bar()
    df = _sorted(_frame(rows, param_names))
    if results_path is not None:
        _write_atomic(df, results_path)
    if df.empty:
        return df
    return df[df["point_id"].isin(wanted)].reset_index(drop=True)


def _clean_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row read back from Parquet, with numpy scalars and NaN-for-None normalised."""
    out = {}
    for key, value in row.items():
        value = _scalar(value)
        if key in ("variant", "error") and isinstance(value, float) and math.isnan(value):
            value = None
        out[key] = value
    return out


@contextmanager
def _progress(enabled: bool, description: str, *, total: int, done: int) -> Iterator[Callable[[], None]]:
    """A rich progress bar showing points done / total; yields a ``step()`` callback."""
    if not enabled:
        yield lambda: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("points"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ) as bar:
        task_id = bar.add_task(description, total=total, completed=done)
        yield lambda: bar.advance(task_id)


def run_sweep(
    spec: SweepSpec | str | Path | Mapping[str, Any],
    *,
    executor: ExecutorKind | Executor = "local",
    workers: int | None = None,
    scheduler_address: str | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Run a sweep through the engine and return one row per point x variant.

    Columns: ``point_index``, ``point_id``, the swept dotted paths, ``variant``,
    ``status`` (``ok``/``error``), ``error``, then every scalar summary metric of the
    engine (``mem_*`` for the memory budget, ``slo_*`` for the SLOs).

    Every point's scenario is validated before anything runs: if no point validates (a
    typo in a dotted path), :class:`ScenarioError` is raised at once; points that do not
    validate while others do are recorded as errors.
    """
    if not isinstance(spec, SweepSpec):
        spec = load_sweep(spec) if isinstance(spec, str | Path) else sweep_from_dict(spec)
    points = expand_points(spec)
    base_dir = None if spec.base_dir is None else str(spec.base_dir)
    tasks = [PointTask(point=p, base=spec.base, base_dir=base_dir) for p in points]
    invalid: dict[str, BaseException] = {}
    for task in tasks:
        try:
            validate_point(task)
        except SimulatorError as exc:
            invalid[task.point.point_id] = exc
    if tasks and len(invalid) == len(tasks):
        first = invalid[tasks[0].point.point_id]
        raise ScenarioError(f"sweep {spec.name!r}: no point is a valid scenario: {first}")
    valid = [t for t in tasks if t.point.point_id not in invalid]
    param_names = _param_names(points)
    df = execute_points(
        valid,
        run_point,
        executor=executor,
        workers=workers,
        scheduler_address=scheduler_address,
        out=out,
        resume=resume,
        progress=progress,
        description=spec.name,
        param_names=param_names,
        spec_json=spec.to_json(),
    )
    if invalid:
        bad = [r for t in tasks if t.point.point_id in invalid
               for r in _error_rows(t.point, invalid[t.point.point_id])]
        df = _sorted(_frame([*df.to_dict(orient="records"), *bad], param_names))
        if out is not None:
            stored = read_results(out)
            merged = pd.concat([stored, _frame(bad, param_names)], ignore_index=True)
            merged = merged.drop_duplicates(subset=["point_id", "variant"], keep="first")
            _write_atomic(_sorted(merged), Path(out) / RESULTS_FILE)
    return df


def _param_names(points: Sequence[Point]) -> list[str]:
    names: dict[str, None] = {}
    for p in points:
        for k in p.params:
            names.setdefault(k, None)
    return list(names)


def _format_validation(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"])
        parts.append(f"{loc}: {err['msg']}" if loc else err["msg"])
    return "; ".join(parts)
