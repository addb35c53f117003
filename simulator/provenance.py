"""Where a result came from: servesim version, scenario digest, command line, libraries.

Two places, with different rules:

- ``summary.json`` gets ``"servesim": {"version", "scenario_sha256"}`` as its first key. Both
  are functions of the code and the resolved scenario only, so identical runs still write
  byte-identical files.
- ``run.json`` beside it holds what differs between identical runs: the command line, the
  wall-clock start and end, the working directory, Python and library versions. Nothing
  reads it back into a result (the wall clock never touches a result path).
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SUMMARY_KEY = "servesim"
RUN_JSON = "run.json"

#: Distributions whose versions run.json records (the ones that can change a number).
LIBRARIES: tuple[str, ...] = (
    "numpy",
    "pandas",
    "pyarrow",
    "numba",
    "simpy",
    "pydantic",
    "pyyaml",
    "matplotlib",
    "typer",
    "rich",
)


def servesim_version() -> str:
    """The installed servesim version (``0+unknown`` in a never-installed source tree)."""
    from servesim import __version__

    return __version__


def scenario_digest(resolved: dict[str, Any]) -> str:
    """SHA-256 of the resolved scenario (``cfg.model_dump(mode="json")``) as canonical JSON."""
    text = json.dumps(resolved, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def stamp_summary(run_dir: Path, digest: str) -> None:
    """Put ``{"servesim": {"version", "scenario_sha256"}}`` first in ``run_dir/summary.json``."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        return
    data = json.loads(path.read_text(encoding="utf-8"))
    data.pop(SUMMARY_KEY, None)
    stamped = {SUMMARY_KEY: {"version": servesim_version(), "scenario_sha256": digest}, **data}
    path.write_text(json.dumps(stamped, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def library_versions() -> dict[str, str | None]:
    """Installed version of each of :data:`LIBRARIES` (None when absent)."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def now_utc() -> str:
    """Wall-clock time as ISO 8601 UTC (for run.json only)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_run_json(
    run_dir: Path,
    *,
    argv: list[str],
    started_at: str,
    digest: str,
    status: str,
) -> Path:
    """Write ``run_dir/run.json``: how, when and with what this run was made."""
    import shlex

    doc = {
        "servesim_version": servesim_version(),
        "scenario_sha256": digest,
        "command": ["servesim", *argv],
        "command_line": shlex.join(["servesim", *argv]),
        "cwd": str(Path.cwd()),
        "started_at": started_at,
        "finished_at": now_utc(),
        "status": status,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "libraries": library_versions(),
    }
    path = Path(run_dir) / RUN_JSON
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return path
