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
* **Storage**: each finished point is appended to ``OUT/.results.journal.jsonl`` (one JSON
  line per point, flushed before the point counts as done) and ``OUT/results.parquet`` is
  rewritten after 1, 2, 4, 8 ... rows through a temporary file and :func:`os.replace`, so
  storing n points costs O(n) and a kill leaves complete files. At the end the Parquet file
  holds every row and the journal is removed: a completed run leaves no other file. Files
  are written inside ``OUT`` only, never through a symlink, with the user's umask.
  ``OUT/sweep.json`` records the spec.
* **Identity and resume**: a point's ``point_id`` is a SHA-256 digest of the canonical JSON
  of the base scenario and the point's parameters (never ``hash()``, which is salted per
  process), and ``scenario_digest`` one of its validated, resolved scenario. ``resume=True``
  keeps the ``ok`` rows of points whose id and scenario digest still match, drops rows of
  points no longer in the sweep, and runs the rest (failed points too), so the file holds
  exactly one row per point and variant.
* **Failures**: an exception inside a point becomes a row with ``status="error"`` and the
  message in ``error``; the sweep goes on (the CLI exits 1 with a count). A worker that dies
  (segfault, OOM kill) costs at most its own point: the pool is rebuilt, the points that were
  in flight are retried one at a time, and a point whose worker dies again is an error row.
  Workers die with the main process (``PR_SET_PDEATHSIG`` and a watchdog thread).
* **Limits** (docs/inputs.md): :data:`MAX_POINTS` points and :data:`MAX_ROWS` rows per
  sweep, counted before expanding; random ranges finite and bounded.
* **Determinism**: rows never depend on the executor or the worker count: each point is a
  pure function of its parameters (the scenario seed is a parameter like any other), no
  wall-clock column is stored, and rows are sorted by ``point_index`` (then variant order)
  at the end.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from servesim.hwmodels.safeio import (
    INT64_MAX,
    MAX_TRACE_BYTES,
    check_regular_file,
    clip,
    load_yaml,
    prepare_out_dir,
    read_text,
    safe_component,
    short,
    write_bytes_in,
    write_text_in,
)
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
# Finished points, one JSON line each, while a sweep runs (removed when it completes).
JOURNAL_FILE = ".results.journal.jsonl"

# Refused before anything is built (docs/inputs.md): points of one sweep, and points x
# variants (rows). A 10-key x 10-value grid (10^10 points) is refused with its count.
MAX_POINTS = 100_000
MAX_ROWS = 1_000_000
# Bounds of random-sweep ranges: finite, and an integer range that numpy can draw from.
_MAX_ABS_UNIFORM = 1e15

# Columns every row has, in this order, before the swept parameters and the metrics.
ID_COLUMNS = ("point_index", "point_id")
STATUS_COLUMNS = ("variant", "status", "error", "scenario_digest")

ExecutorKind = Literal["serial", "local", "dask"]


# ---------------------------------------------------------------------------- spec


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_Bound = Annotated[
    float,
    Field(ge=-_MAX_ABS_UNIFORM, le=_MAX_ABS_UNIFORM, allow_inf_nan=False, strict=False),
]
_IntBound = Annotated[int, Field(ge=-(1 << 62), le=(1 << 62), strict=True)]


class _Dist(_Cfg):
    """One random parameter: exactly one of the four distributions."""

    choice: list[Any] | None = Field(
        None, min_length=1, max_length=MAX_POINTS, description="Pick one, uniformly."
    )
    uniform: tuple[_Bound, _Bound] | None = Field(None, description="[lo, hi) uniform float.")
    loguniform: tuple[_Bound, _Bound] | None = Field(
        None, description="[lo, hi) log-uniform float (both > 0)."
    )
    randint: tuple[_IntBound, _IntBound] | None = Field(
        None, description="[lo, hi] uniform integer."
    )

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
    samples: PositiveInt = Field(le=MAX_POINTS, description="Number of points to draw.")
    seed: int = Field(0, ge=0, le=INT64_MAX, description="Seed of the sampling stream.")
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
    base_source: str = "base"

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
    raw = load_yaml(read_text(path, f"{kind} file", error=ScenarioError), str(path),
                    error=ScenarioError)
    if raw is None:
        raise ScenarioError(f"{path}: the {kind} file is empty")
    if not isinstance(raw, dict):
        raise ScenarioError(f"{path}: a {kind} file must be a mapping, got {type(raw).__name__}")
    if "name" not in raw:
        if not _safe_name(path.stem):
            raise ScenarioError(
                f"{path}: the file name {short(path.stem)} cannot name the output directory; "
                "give name: (letters, digits, '.', '_', '+', '-')"
            )
        raw["name"] = path.stem
    safe_component(raw["name"], f"{path}: {kind} name", error=ScenarioError)
    return raw


def _safe_name(name: str) -> bool:
    try:
        safe_component(name, "name", error=ScenarioError)
    except ScenarioError:
        return False
    return True


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
    if cfg.name is not None:
        safe_component(cfg.name, f"{where}: sweep name", error=ScenarioError)
    _check_size(cfg, where)
    base_dir = Path(base_dir) if base_dir is not None else None
    if isinstance(cfg.base, str):
        base_path = Path(cfg.base).expanduser()
        if not base_path.is_absolute() and base_dir is not None:
            base_path = base_dir / base_path
        text = read_text(base_path, f"{where}: base scenario", error=ScenarioError)
        base = load_yaml(text, str(base_path), error=ScenarioError)
        if not isinstance(base, dict):
            raise ScenarioError(f"{base_path}: a scenario must be a mapping")
        scenario_dir: Path | None = base_path.parent
        base_source = str(base_path)
    else:
        base, scenario_dir = dict(cfg.base), base_dir
        base_source = f"{where}: base"
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
            base_source=base_source,
        )
    kind: Literal["grid", "zip", "points"]
    if cfg.grid is not None:
        kind, params = "grid", dict(cfg.grid)
    elif cfg.zip is not None:
        kind, params = "zip", dict(cfg.zip)
    else:
        kind, params = "points", {"points": list(cfg.points or [])}
    return SweepSpec(
        name=cfg.name or "sweep", base=base, base_dir=scenario_dir, kind=kind, params=params,
        base_source=base_source,
    )


def _count_points(kind: str, params: Mapping[str, Any], samples: int) -> int:
    """Number of points a sweep expands to, computed without expanding it."""
    if kind == "grid":
        return math.prod(len(v) for v in params.values())
    if kind == "zip":
        return min((len(v) for v in params.values()), default=0)
    if kind == "points":
        return len(params["points"])
    return samples


def _check_size(cfg: _SweepFile, where: str) -> None:
    """Refuse a sweep whose expansion exceeds :data:`MAX_POINTS` before building it."""
    for kind in ("grid", "zip", "points"):
        table = getattr(cfg, kind)
        if table is None:
            continue
        params = {"points": table} if kind == "points" else table
        n = _count_points(kind, params, 0)
        if n > MAX_POINTS:
            sizes = " x ".join(str(len(v)) for v in params.values()) if kind == "grid" else ""
            raise ScenarioError(
                f"{where}: {kind}: expands to {n:,} points"
                + (f" ({sizes})" if sizes else "")
                + f"; the limit is {MAX_POINTS:,} points per sweep (docs/inputs.md). Split the "
                "sweep, or sample it with random: {samples: N}"
            )


def expand_points(spec: SweepSpec) -> list[Point]:
    """Expand a sweep into its points, in a fixed order.

    ``grid`` iterates like nested loops in declaration order (the last path varies
    fastest); ``random`` draws parameter by parameter, sample by sample, from the named
    stream ``sweep.random`` seeded with ``random.seed``.
    """
    n = _count_points(spec.kind, spec.params, spec.samples)
    if n > MAX_POINTS:
        raise ScenarioError(
            f"sweep {spec.name!r}: {spec.kind} expands to {n:,} points; the limit is "
            f"{MAX_POINTS:,} (docs/inputs.md)"
        )
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
    # SHA-256 of the point's validated, resolved scenario: --resume recomputes a point
    # whose scenario changed even though its parameters did not.
    scenario_digest: str | None = None
    # Where the base scenario came from (error messages).
    source: str = "scenario"


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


def validate_point(task: PointTask) -> str:
    """Validate a point's scenario without running it (raises ScenarioError/ConfigError).

    Returns:
        The digest of the resolved scenario (see :attr:`PointTask.scenario_digest`).
    """
    from servesim.simulator.scenario import scenario_from_dict

    data = apply_params(task.base, task.point.params)
    cfg = scenario_from_dict(data, base_dir=None if task.base_dir is None else Path(task.base_dir),
                             source=f"{task.source} (point {task.point.index})")
    return _digest(cfg.model_dump(mode="json", exclude={"engine": {"progress"}}))[:16]


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


def _worker_init(main_pid: int) -> None:
    """Initializer of local pool workers: die with the sweep's main process.

    Two mechanisms, because either alone has a gap: ``PR_SET_PDEATHSIG`` (Linux) kills the
    worker when its parent dies (the forkserver, which exits when the main process does),
    and a daemon thread polls the main process (covers spawn, and platforms without prctl;
    it cannot run while a numba kernel holds the GIL, which the signal covers).
    """
    with contextlib.suppress(Exception):
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            try:
                os.kill(main_pid, 0)
            except ProcessLookupError:
                os._exit(1)
            except OSError:
                pass
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="servesim-orphan-watch", daemon=True).start()


class _Pool:
    """An executor that can be rebuilt after a worker dies (owned local pools only).

    Attributes:
        executor: the current executor.
        window: how many points are in flight at once (so that a pool that breaks takes
            down only points that were actually running).
    """

    def __init__(self, make: Callable[[], Executor] | None, executor: Executor, window: int):
        self._make = make
        self.executor = executor
        self.window = max(1, window)

    @property
    def can_rebuild(self) -> bool:
        return self._make is not None

    def rebuild(self) -> None:
        if self._make is None:
            return
        with contextlib.suppress(Exception):
            self.executor.shutdown(wait=False, cancel_futures=True)
        self.executor = self._make()

    def shutdown(self) -> None:
        if self._make is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)


@contextmanager
def _open_pool(
    executor: ExecutorKind | Executor,
    *,
    workers: int | None,
    scheduler_address: str | None,
) -> Iterator[_Pool]:
    if workers is not None and workers < 1:
        raise SimulatorError(f"workers must be >= 1, got {workers}")
    if isinstance(executor, Executor):
        window = 1 if isinstance(executor, SerialExecutor) else workers or os.cpu_count() or 1
        yield _Pool(None, executor, window)
        return
    if executor == "local":
        n = workers or os.cpu_count() or 1

        def make() -> Executor:
            return ProcessPoolExecutor(max_workers=n, mp_context=_process_context(),
                                       initializer=_worker_init, initargs=(os.getpid(),))

        pool = _Pool(make, make(), n)
        try:
            yield pool
        finally:
            pool.shutdown()
        return
    with open_executor(executor, workers=workers, scheduler_address=scheduler_address) as ex:
        window = 1 if isinstance(ex, SerialExecutor) else _dask_window(ex, workers)
        yield _Pool(None, ex, window)


def _dask_window(ex: Executor, workers: int | None) -> int:
    client = getattr(ex, "_client", None)
    try:
        threads = sum(client.nthreads().values()) if client is not None else 0
    except Exception:
        threads = 0
    return max(threads, workers or 0, 1) * 2


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
            max_workers=workers or os.cpu_count() or 1, mp_context=_process_context(),
            initializer=_worker_init, initargs=(os.getpid(),),
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
            try:
                client = Client(scheduler_address, timeout="20s")
            except (OSError, TimeoutError, ValueError) as exc:
                raise SimulatorError(
                    f"cannot reach the Dask scheduler {short(scheduler_address)}: "
                    f"{short(str(exc), 200)}"
                ) from None
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


# ---------------------------------------------------------------------------- storage


def read_results(out: str | Path) -> pd.DataFrame:
    """Read ``OUT/results.parquet`` (an empty frame when there is none).

    Raises:
        SimulatorError: the file exists but is not a readable Parquet results file.
    """
    path = Path(out) / RESULTS_FILE
    if not path.exists() and not path.is_symlink():
        return pd.DataFrame()
    check_regular_file(path, "results file", max_bytes=MAX_TRACE_BYTES, error=SimulatorError)
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises many types for a garbage file
        raise SimulatorError(
            f"{path} is not a readable results file ({type(exc).__name__}: "
            f"{short(str(exc), 120)}); move it away or choose another --out"
        ) from None
    missing = [c for c in (*ID_COLUMNS, "variant", "status") if c not in df.columns]
    if missing:
        raise SimulatorError(
            f"{path} is not a sweep results file (no column {', '.join(missing)}); move it "
            "away or choose another --out"
        )
    return df


def _write_atomic(df: pd.DataFrame, path: Path) -> None:
    """Write ``df`` to ``path`` so that readers only ever see a complete file (confined to
    its directory, never through a symlink, with the user's normal permissions)."""
    write_bytes_in(path.parent, path.name, lambda tmp: df.to_parquet(tmp, index=False),
                   error=SimulatorError)


class _Store:
    """Results of a sweep on disk: a journal appended per point, a Parquet file rewritten
    geometrically (after 1, 2, 4, 8 ... rows), so storing n points costs O(n) in all.

    The journal ``OUT/.results.journal.jsonl`` has one JSON line per finished point (all its
    rows), flushed before the point counts as done, so a kill loses at most the
    points in flight; a torn last line is ignored. ``results.parquet`` is rewritten from
    every row at the end and the journal removed: a completed run leaves no other file.
    """

    def __init__(self, out: Path | None, param_names: Sequence[str]) -> None:
        self.out = out
        self.param_names = list(param_names)
        self.rows: dict[str, list[dict[str, Any]]] = {}
        self._journal: Any = None
        self._written_rows = 0
        self._num_rows = 0  # rows added by add() (only times the checkpoints)

    @property
    def journal_path(self) -> Path | None:
        return None if self.out is None else self.out / JOURNAL_FILE

    def exists(self) -> bool:
        if self.out is None:
            return False
        return any((self.out / f).exists() or (self.out / f).is_symlink()
                   for f in (RESULTS_FILE, JOURNAL_FILE))

    def load(self) -> dict[str, list[dict[str, Any]]]:
        """Stored rows by point id (the Parquet file, then the journal on top)."""
        assert self.out is not None
        stored: dict[str, list[dict[str, Any]]] = {}
        old = read_results(self.out)
        if not old.empty:
            for rec in old.to_dict(orient="records"):
                row = _clean_row(rec)
                stored.setdefault(str(row["point_id"]), []).append(row)
        journal = self.out / JOURNAL_FILE
        if journal.exists() or journal.is_symlink():
            check_regular_file(journal, "sweep journal", max_bytes=MAX_TRACE_BYTES,
                               error=SimulatorError)
            with journal.open("rb") as f:
                for raw in f:
                    try:
                        entry = json.loads(raw)
                        stored[str(entry["point_id"])] = [dict(r) for r in entry["rows"]]
                    except (ValueError, KeyError, TypeError, RecursionError):
                        continue  # a torn last line (killed mid-write), or garbage
        return stored

    def clean_temporaries(self) -> None:
        """Remove temporary files a killed run left behind."""
        if self.out is None:
            return
        for tmp in self.out.glob(f".{RESULTS_FILE}.*.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()

    def add(self, point_id: str, rows: list[dict[str, Any]]) -> None:
        self._num_rows += len(rows) - len(self.rows.get(point_id, ()))
        self.rows[point_id] = rows
        if self.out is None:
            return
        if self._journal is None:
            path = self.out / JOURNAL_FILE
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)
            try:
                self._journal = os.fdopen(os.open(path, flags, 0o666), "ab")
            except OSError as exc:
                raise SimulatorError(f"cannot write {path}: {exc.strerror}") from None
        line = json.dumps({"point_id": point_id, "rows": rows}, default=str, allow_nan=True)
        # flush (not fsync): a finished point survives the death of this process, which is
        # the failure a sweep must survive; the checkpoints are complete files anyway.
        self._journal.write(line.encode() + b"\n")
        self._journal.flush()
        if self._num_rows >= 2 * max(self._written_rows, 1):
            self.checkpoint()

    def frame(self) -> pd.DataFrame:
        return _sorted(_frame([r for rows in self.rows.values() for r in rows],
                              self.param_names))

    def checkpoint(self) -> None:
        if self.out is None:
            return
        df = self.frame()
        _write_atomic(df, self.out / RESULTS_FILE)
        self._written_rows = len(df)

    def finish(self) -> pd.DataFrame:
        df = self.frame()
        if self.out is not None:
            _write_atomic(df, self.out / RESULTS_FILE)
            self.close()
            (self.out / JOURNAL_FILE).unlink(missing_ok=True)
            self.clean_temporaries()
        return df

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None


def _frame(rows: Sequence[Mapping[str, Any]], param_names: Sequence[str]) -> pd.DataFrame:
    """Rows -> DataFrame with the column order ids, params, variant/status/error, metrics.

    Column types do not depend on which points failed: integer and boolean metrics use
    pandas' nullable ``Int64`` / ``boolean`` types, so an error row (no metrics) never turns
    a count column into floats.
    """
    rows = list(rows)
    df = pd.DataFrame(rows)
    first = [*ID_COLUMNS, *param_names, *STATUS_COLUMNS]
    if df.empty:
        return pd.DataFrame(columns=first)
    for col in first:
        if col not in df.columns:
            df[col] = None
    rest = [c for c in df.columns if c not in first]
    df = df[first + rest]
    for col in param_names:
        df[col] = _uniform_column(df[col])
    df["point_index"] = df["point_index"].astype("int64")
    for col in ("point_id", "variant", "status", "error", "scenario_digest"):
        df[col] = df[col].astype("str")  # missing stays missing; never object-or-str by luck
    # The Python types of the values as the workers returned them (pandas has already
    # turned an int column with gaps into floats).
    kinds: dict[str, set[type]] = {c: set() for c in rest}
    for row in rows:
        for col in rest:
            v = row.get(col)
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                kinds[col].add(type(_scalar(v)))
    for col in rest:
        df[col] = _typed_metric(df[col], kinds[col])
    return df


def _typed_metric(col: pd.Series, kinds: set[type]) -> pd.Series:
    if kinds == {bool}:
        return col.astype("boolean")
    if kinds and kinds <= {int}:
        return col.astype("Int64")
    if kinds and kinds <= {int, float}:
        return col.astype("float64")
    return col


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


# ---------------------------------------------------------------------------- running


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
    extra_rows: Sequence[Mapping[str, Any]] = (),
    all_point_ids: set[str] | None = None,
) -> pd.DataFrame:
    """Run ``fn`` over the tasks on an executor, storing rows as each point finishes.

    This is the machinery under :func:`run_sweep`; ``fn`` is any picklable function of a
    task (with a ``.point``) returning rows, so it also serves other batch jobs.

    Faults: an exception raised by ``fn`` is an error row (not retried: it would fail the
    same way). A point whose *worker* died (the pool broke, a Dask worker was lost) is
    retried once, alone, on a rebuilt pool; if it dies again it becomes an error row. So a
    dying worker costs at most its own point.

    Args:
        tasks: the points to run.
        fn: worker function (module-level, picklable).
        executor, workers, scheduler_address: see :func:`open_executor`.
        out: directory for ``results.parquet`` and ``sweep.json``; None keeps rows in
            memory only.
        resume: keep stored ``ok`` rows of these points (same point id and the same
            resolved-scenario digest) and run only the others; rows of points no longer
            in the sweep are dropped, so the file holds exactly one row per point and
            variant.
        progress: show a progress bar (points done / total).
        description: label of the progress bar.
        param_names: parameter columns, in order (default: from the first task).
        spec_json: written to ``OUT/sweep.json``.
        extra_rows: rows already known (points refused before running), stored as well.
        all_point_ids: every point of the sweep (default: the tasks'); the returned frame
            holds these.

    Returns:
        All rows of these tasks' points, sorted by point index.

    Raises:
        SimulatorError: ``out`` holds results and ``resume`` is False; ``out`` is a file.
    """
    if param_names is None:
        param_names = list(tasks[0].point.params) if tasks else []
    out_dir = None if out is None else prepare_out_dir(out, error=SimulatorError)
    store = _Store(out_dir, param_names)
    # Rows are stored per task key: the point id, with '#k' for a point's k-th repeat (the
    # planner runs one candidate at several rates).
    keys: dict[int, str] = {}
    by_id: dict[str, Any] = {}
    for t in tasks:
        key = t.point.point_id
        k = 1
        while key in by_id:
            key, k = f"{t.point.point_id}#{k}", k + 1
        by_id[key] = t
        keys[id(t)] = key
    if store.exists():
        if not resume:
            raise SimulatorError(
                f"{out_dir / RESULTS_FILE} already exists; pass resume=True (--resume) to "
                f"continue that sweep, or choose another output directory"
            )
        for pid, rows in store.load().items():
            task = by_id.get(pid)
            if task is None or not rows or any(r.get("status") != "ok" for r in rows):
                continue  # not in this sweep any more, or failed: run again
            digest = getattr(task, "scenario_digest", None)
            if digest is not None and any(r.get("scenario_digest") != digest for r in rows):
                continue  # same parameters, but the resolved scenario changed
            seen: dict[Any, dict[str, Any]] = {}
            for r in rows:
                seen[r.get("variant")] = {**r, "point_index": task.point.index}
            store.rows[pid] = list(seen.values())
        store.clean_temporaries()
        if store.journal_path is not None and store.journal_path.exists():
            # Fold the old journal into the results file now, so the new journal starts empty.
            store.checkpoint()
            store.journal_path.unlink()
    if out_dir is not None and spec_json is not None:
        write_text_in(out_dir, SPEC_FILE, json.dumps(_jsonable(spec_json), indent=2) + "\n",
                      error=SimulatorError)
    for row in extra_rows:
        store.rows.setdefault(str(row["point_id"]), []).append(dict(row))
    todo = [t for t in tasks if keys[id(t)] not in store.rows]
    try:
        with _progress(progress, description, total=len(tasks),
                       done=len(tasks) - len(todo)) as bar:
            if todo:
                with _open_pool(executor, workers=workers,
                                scheduler_address=scheduler_address) as pool:
                    _run_all(todo, fn, pool, store, bar, keys)
        df = store.finish()
    finally:
        store.close()
    if df.empty:
        return df
    keep = all_point_ids if all_point_ids is not None else {t.point.point_id for t in tasks}
    return df[df["point_id"].isin(keep)].reset_index(drop=True)


def _run_all(todo: Sequence[Any], fn: Callable[[Any], list[dict[str, Any]]], pool: _Pool,
             store: _Store, bar: Callable[[], None], keys: Mapping[int, str]) -> None:
    """Run every task, at most ``pool.window`` in flight; retry worker deaths alone, once."""

    def record(task: Any, rows: list[dict[str, Any]]) -> None:
        digest = getattr(task, "scenario_digest", None)
        rows = [{**r, "scenario_digest": digest} for r in rows]
        store.add(keys[id(task)], rows)
        bar()

    suspects = _run_window(todo, fn, pool, record, window=pool.window)
    for task, _exc in suspects:  # alone: if it dies again, it is the culprit
        again = _run_window([task], fn, pool, record, window=1)
        for t, exc in again:
            record(t, _error_rows(t.point, RuntimeError(
                f"the worker running this point died twice ({type(exc).__name__}: "
                f"{short(str(exc), 200)})")))


def _run_window(tasks: Sequence[Any], fn: Callable[[Any], list[dict[str, Any]]], pool: _Pool,
                record: Callable[[Any, list[dict[str, Any]]], None], *,
                window: int) -> list[tuple[Any, BaseException]]:
    """Run tasks with at most ``window`` in flight; return those whose worker died."""
    queue = list(reversed(tasks))
    inflight: dict[Future[Any], Any] = {}
    died: list[tuple[Any, BaseException]] = []
    while queue or inflight:
        while queue and len(inflight) < window:
            task = queue.pop()
            try:
                inflight[pool.executor.submit(_guarded, fn, task)] = task
            except BrokenProcessPool as exc:
                died.append((task, exc))
                pool.rebuild()
        if not inflight:
            continue
        done, _ = wait(inflight, return_when=FIRST_COMPLETED)
        broken = False
        for future in sorted(done, key=lambda f: inflight[f].point.index):
            task = inflight.pop(future)
            try:
                rows = future.result()
            except Exception as exc:  # the worker died, or the task could not be sent
                died.append((task, exc))
                broken = broken or isinstance(exc, BrokenProcessPool)
                continue
            record(task, rows)
        if broken:
            # Every other point in flight on the broken pool fails too; collect them.
            for future, task in list(inflight.items()):
                try:
                    rows = future.result()
                except Exception as exc:
                    died.append((task, exc))
                else:
                    record(task, rows)
                inflight.pop(future)
            pool.rebuild()
    return died


def _clean_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row read back from Parquet, with numpy scalars and NaN/NA-for-None normalised."""
    out = {}
    for key, value in row.items():
        value = _scalar(value)
        if value is pd.NA or (key in ("variant", "error", "scenario_digest")
                              and isinstance(value, float) and math.isnan(value)):
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
    variants = spec.base.get("variants") if isinstance(spec.base, Mapping) else None
    num_rows = len(points) * max(len(variants) if isinstance(variants, list) else 1, 1)
    if num_rows > MAX_ROWS:
        raise ScenarioError(
            f"sweep {spec.name!r}: {len(points):,} points x {num_rows // len(points):,} "
            f"variants = {num_rows:,} result rows; the limit is {MAX_ROWS:,} (docs/inputs.md)"
        )
    base_dir = None if spec.base_dir is None else str(spec.base_dir)
    tasks = []
    invalid: dict[str, BaseException] = {}
    for p in points:
        task = PointTask(point=p, base=spec.base, base_dir=base_dir, source=spec.base_source)
        try:
            task = dataclasses.replace(task, scenario_digest=validate_point(task))
        except SimulatorError as exc:
            invalid[p.point_id] = exc
        tasks.append(task)
    if tasks and len(invalid) == len(tasks):
        first = invalid[tasks[0].point.point_id]
        raise ScenarioError(f"sweep {spec.name!r}: no point is a valid scenario: {first}")
    valid = [t for t in tasks if t.point.point_id not in invalid]
    param_names = _param_names(points)
    bad = [r for t in tasks if t.point.point_id in invalid
           for r in _error_rows(t.point, invalid[t.point.point_id])]
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
        extra_rows=bad,
        all_point_ids={t.point.point_id for t in tasks},
    )
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
        parts.append(clip(f"{loc}: {err['msg']}" if loc else err["msg"]))
    return "; ".join(parts)
