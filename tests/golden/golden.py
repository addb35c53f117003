"""Golden outputs of the gallery: every ``scenarios/*.yaml`` under ``--quick``.

For each scenario, ``tests/golden/<name>.json`` holds each variant's ``summary.json`` entry
and a digest of its steps frame (per column: dtype, length and the SHA-256 of the values'
bytes, so a changed step row is caught without storing tens of thousands of rows), and
``tests/golden/<name>.requests.csv`` holds the request frame of every variant (floats written
with ``repr``, so they read back bit for bit).

Comparison is exact: integer columns, times and summary values alike. A run is deterministic
(same scenario and seed, byte-identical results), so any difference is a behaviour change,
never noise. Regenerate with one command, from the repository root::

    .venv/bin/python -m tests.golden.regen            # every scenario
    .venv/bin/python -m tests.golden.regen quickstart # some of them

and explain every difference in the commit message (what changed, in which variants, and
why that is right), never re-bless silently.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from servesim.simulator.build import run_scenario
from servesim.simulator.results import Results
from servesim.simulator.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[2]
GOLDEN_DIR = Path(__file__).resolve().parent
SCENARIOS = sorted(p.stem for p in (ROOT / "scenarios").glob("*.yaml"))


def run_quick(name: str) -> Results:
    """Run ``scenarios/<name>.yaml`` in its quick form (as ``servesim run --quick``)."""
    cfg = load_scenario(ROOT / "scenarios" / f"{name}.yaml", quick=True)
    return run_scenario(cfg)


def steps_digest(steps: pd.DataFrame) -> dict[str, list[Any]]:
    """Per column of a steps frame: ``[dtype, rows, sha256 of the little-endian bytes]``."""
    out: dict[str, list[Any]] = {}
    for col in steps.columns:
        arr = np.ascontiguousarray(steps[col].to_numpy())
        arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        out[col] = [str(arr.dtype), len(arr), hashlib.sha256(arr.tobytes()).hexdigest()]
    return out


def golden_record(res: Results) -> dict[str, Any]:
    """The JSON part of a scenario's golden output."""
    summary = res.summary_dict()
    return {
        "scenario": summary["scenario"],
        "variants": {
            v.name: {"summary": summary["variants"][v.name], "steps": steps_digest(v.steps)}
            for v in res.variants
        },
    }


def requests_table(res: Results) -> pd.DataFrame:
    """The request frames of every variant, one table (``variant`` first)."""
    req = res.requests
    req.insert(0, "variant", req.pop("variant"))
    return req


def write_golden(name: str) -> None:
    """Run ``name`` and overwrite its golden files."""
    res = run_quick(name)
    (GOLDEN_DIR / f"{name}.json").write_text(json.dumps(golden_record(res), indent=1) + "\n")
    requests_table(res).to_csv(GOLDEN_DIR / f"{name}.requests.csv", index=False)


def _read_csv(src: Any) -> pd.DataFrame:
    # pandas >= 3 parses floats exactly by default (and deprecates float_precision).
    exact = {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}
    return pd.read_csv(src, keep_default_na=False, na_values=[""], **exact)


def read_golden(name: str) -> tuple[dict[str, Any], pd.DataFrame]:
    """The stored golden record and request table of ``name``."""
    rec = json.loads((GOLDEN_DIR / f"{name}.json").read_text())
    return rec, _read_csv(GOLDEN_DIR / f"{name}.requests.csv")


def as_stored(req: pd.DataFrame) -> pd.DataFrame:
    """``req`` written and read back as its golden file is (the same parsing on both sides;
    floats are written with ``repr``, so they come back bit for bit)."""
    return _read_csv(io.StringIO(req.to_csv(index=False)))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


def diff_summaries(want: Any, got: Any, path: str = "") -> list[str]:
    """Every leaf where two JSON-like values differ (exactly), as ``path: want -> got``."""
    if isinstance(want, dict) and isinstance(got, dict):
        out = []
        for k in sorted(set(want) | set(got)):
            if k not in want or k not in got:
                out.append(f"{path}/{k}: {'missing' if k not in got else 'new'}")
            else:
                out += diff_summaries(want[k], got[k], f"{path}/{k}")
        return out
    if isinstance(want, list) and isinstance(got, list) and len(want) == len(got):
        out = []
        for i, (a, b) in enumerate(zip(want, got, strict=True)):
            out += diff_summaries(a, b, f"{path}[{i}]")
        return out
    return [] if _same(want, got) else [f"{path}: {want!r} -> {got!r}"]


def diff_requests(want: pd.DataFrame, got: pd.DataFrame) -> list[str]:
    """Columns whose values differ (exactly; NaN equals NaN), with the first differing row."""
    if list(want.columns) != list(got.columns):
        return [f"columns: {list(want.columns)} -> {list(got.columns)}"]
    if len(want) != len(got):
        return [f"rows: {len(want)} -> {len(got)}"]
    out = []
    for col in want.columns:
        a, b = want[col].to_numpy(), got[col].to_numpy()
        if a.dtype.kind == "f" or b.dtype.kind == "f":
            a, b = a.astype(np.float64), b.astype(np.float64)
            bad = ~((a == b) | (np.isnan(a) & np.isnan(b)))
        else:
            bad = a.astype(str) != b.astype(str)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            out.append(f"{col}: {int(bad.sum())} rows differ, first row {i}: {a[i]!r} -> {b[i]!r}")
    return out
