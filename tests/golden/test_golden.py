"""Every gallery scenario's quick form reproduces its golden outputs exactly.

A difference is a behaviour change: either a bug, or an intended change to be regenerated
with ``.venv/bin/python -m tests.golden.regen`` and explained in the commit message.
"""

from __future__ import annotations

import pytest

from tests.golden.golden import (
    SCENARIOS,
    as_stored,
    diff_requests,
    diff_summaries,
    golden_record,
    read_golden,
    requests_table,
    run_quick,
)

REGEN = "regenerate with `.venv/bin/python -m tests.golden.regen` and explain every difference"


@pytest.mark.parametrize("name", SCENARIOS)
def test_gallery_matches_golden(name: str) -> None:
    want_rec, want_req = read_golden(name)
    res = run_quick(name)
    got_rec = golden_record(res)
    problems = diff_summaries(want_rec, got_rec)
    problems += [f"requests {p}" for p in diff_requests(want_req, as_stored(requests_table(res)))]
    assert not problems, f"{name} differs from its golden output ({REGEN}):\n" + "\n".join(problems[:40])


def test_two_runs_in_one_process_are_identical() -> None:
    """Nothing leaks between runs (global state, memo keyed on object ids)."""
    a, b = run_quick("radix-shared-prefix"), run_quick("radix-shared-prefix")
    assert diff_summaries(golden_record(a), golden_record(b)) == []
    assert diff_requests(requests_table(a), requests_table(b)) == []
