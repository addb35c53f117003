"""Run ``servesim`` in-process (fast) or through the installed console script (real exit).

In-process runs go through :func:`servesim.simulator.cli.main`, the console script's own
entry point, with ``sys.argv`` patched and stdout/stderr captured, so the exit status and
the message are exactly what a user sees.
"""

from __future__ import annotations

import contextlib
import io
import os
import resource
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

from tests.hostile.cases import Case

ROOT = Path(__file__).resolve().parents[2]
CONSOLE_SCRIPT = ROOT / ".venv" / "bin" / "servesim"
# Per case: wall time and resident-memory growth a refusal may cost.
MAX_SECONDS = 20.0
MAX_RSS_GROWTH_BYTES = 1 << 30


@dataclass
class Outcome:
    code: object
    stdout: str
    stderr: str
    seconds: float
    rss_growth_bytes: int

    @property
    def text(self) -> str:
        return self.stdout + self.stderr


def materialise(case: Case, root: Path) -> list[str]:
    """Write the case's files under ``root``; return its arguments with ``{d}`` filled in."""
    for name, content in case.files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            path.mkdir(exist_ok=True)
        elif content == "FIFO":
            os.mkfifo(path)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return [a.replace("{d}", str(root)) for a in case.args]


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_in_process(args: list[str], cwd: Path) -> Outcome:
    from servesim.simulator.cli import main

    out, err = io.StringIO(), io.StringIO()
    code: object = None
    rss0 = _rss_bytes()
    t0 = time.monotonic()
    old_cwd = os.getcwd()
    try:
        os.chdir(cwd)
        with mock.patch.object(sys, "argv", ["servesim", *args]), \
                contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as exc:
                code = exc.code
            except BaseException:  # a traceback: the test fails and shows it
                code = "traceback"
                err.write(traceback.format_exc())
    finally:
        os.chdir(old_cwd)
    return Outcome(code, out.getvalue(), err.getvalue(), time.monotonic() - t0,
                   max(_rss_bytes() - rss0, 0))


def _limit_memory() -> None:  # pragma: no cover - runs in the child
    limit = 4 << 30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def run_console_script(args: list[str], cwd: Path, timeout_s: float = 120) -> Outcome:
    """The installed ``servesim`` under a 4 GiB address-space limit."""
    t0 = time.monotonic()
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run([str(CONSOLE_SCRIPT), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout_s, preexec_fn=_limit_memory, env=env,
                          check=False)
    return Outcome(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - t0, 0)
