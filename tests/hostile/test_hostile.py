"""Every reader and subcommand refuses hostile input cleanly.

For each case of :mod:`tests.hostile.cases`: exit status 2, a message that names the place
(the file, field or setting), no traceback, within :data:`~tests.hostile.runner.MAX_SECONDS`
and without growing the process by more than a GiB. Nothing is written outside the case's
directory (the escape cases would write next to it).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.hostile.cases import Case, all_cases
from tests.hostile.runner import (
    CONSOLE_SCRIPT,
    MAX_RSS_GROWTH_BYTES,
    MAX_SECONDS,
    materialise,
    run_console_script,
    run_in_process,
)

CASES = all_cases()


def _check(case: Case, outcome, root: Path) -> None:
    text = outcome.text
    assert "Traceback" not in text, text[-3000:]
    assert outcome.code == case.code, f"exit {outcome.code!r}, want {case.code}:\n{text[-2000:]}"
    assert case.place.lower() in text.lower(), f"message does not name {case.place!r}:\n{text[-2000:]}"
    assert len(text) < 20_000, f"message of {len(text)} characters (values must be cut short)"
    assert outcome.seconds < MAX_SECONDS, f"took {outcome.seconds:.1f} s"
    assert outcome.rss_growth_bytes < MAX_RSS_GROWTH_BYTES, (
        f"resident memory grew by {outcome.rss_growth_bytes / 2**20:.0f} MiB"
    )
    escaped = [p for p in (root.parent / "escape", root.parent / "x") if p.exists()]
    assert not escaped, f"wrote outside its directory: {escaped}"


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow else []) for c in CASES],
)
def test_hostile_input_is_refused(case: Case, tmp_path: Path) -> None:
    root = tmp_path / "case"
    root.mkdir()
    args = materialise(case, root)
    _check(case, run_in_process(args, root), root)


# A handful through the installed console script: the real process, exit status and stderr.
SCRIPT_CASES = [
    "scenario-alias-bomb", "scenario-nested-400-brackets", "trace-azure-context-1e19",
    "sweep-field-name-dotdot", "kernel-gemm-m-1e9", "config-json-nan",
    "scenario-field-rate-1e-300", "sweep-field-grid-10x10",
]


@pytest.mark.skipif(not CONSOLE_SCRIPT.exists(), reason="no installed console script")
@pytest.mark.parametrize("case_id", SCRIPT_CASES)
def test_console_script_refuses(case_id: str, tmp_path: Path) -> None:
    case = next(c for c in CASES if c.id == case_id)
    root = tmp_path / "case"
    root.mkdir()
    args = materialise(case, root)
    _check(case, run_console_script(args, root), root)


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 150
    kinds = {c.args[0] for c in CASES}
    assert {"check", "run", "sweep", "plan", "show", "trace", "kernel"} <= kinds
