"""Fuzzing the readers with hypothesis: generated scenario documents, hostile YAML text,
JSON and trace rows. The only allowed outcomes are a value or a :class:`SimulatorError` (a
one-line message, exit status 2 at the CLI): never another exception, never a hang."""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from servesim.hwmodels.errors import SimulatorError
from servesim.hwmodels.safeio import MAX_DEPTH, load_json, load_yaml
from servesim.simulator.scenario import scenario_from_dict
from servesim.workloads.config import check_size
from tests.hostile.cases import SCENARIO

# SERVESIM_FUZZ_EXAMPLES=5000 fuzzes longer, with fresh random draws each run.
_EXAMPLES = int(os.environ.get("SERVESIM_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=_EXAMPLES or 150, deadline=None, derandomize=not _EXAMPLES,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# ---------------------------------------------------------------------------- values

_FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-300, 5e-324, 1e300, 1.7976931348623157e308, -1e308]),
)
_INTS = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, -1, 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1]),
)
_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "..", "../../x", "/abs", "a\nb", "a\x00b", "inf", "nan", "-inf",
                     "1e400", "x" * 5000, "paged", "h100-sxm", "llama-3.1-8b"]),
)
_SCALARS = st.one_of(st.none(), st.booleans(), _INTS, _FLOATS, _TEXT)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(_TEXT, inner, max_size=4)),
    max_leaves=12,
)

# Paths a user can set, including ones that size allocations.
_PATHS = [
    "name", "seed", "hardware", "hardware.gpu", "hardware.replicas", "hardware.tensor_parallel",
    "hardware.gpu_memory_utilization", "hardware.swap_space_gib", "model", "model.name",
    "model.max_model_len_tokens", "model.quantization", "kv_cache.block_size_tokens",
    "kv_cache.manager", "scheduler.max_num_seqs", "scheduler.max_num_batched_tokens",
    "scheduler.policy", "engine.max_sim_time_s", "workload.num_requests", "workload.arrivals",
    "workload.arrivals.rate_per_s", "workload.arrivals.process", "workload.arrivals.cv",
    "workload.lengths.prompt", "workload.lengths.prompt.tokens", "workload.lengths.output",
    "workload.prefixes", "workload.sampling", "workload.sampling.n", "slo.ttft_ms",
    "variants", "quick",
]

_STRUCTURED = {
    "workload.arrivals": st.fixed_dictionaries({
        "process": st.sampled_from(["poisson", "gamma", "onoff", "constant", "diurnal",
                                    "piecewise", "closed_loop", "offline"]),
        "rate_per_s": st.one_of(_FLOATS, _INTS), "cv": _FLOATS, "on_s": _FLOATS,
        "off_s": _FLOATS}),
    "workload.prefixes": st.fixed_dictionaries({
        "kind": st.sampled_from(["tree_of_thought", "multi_turn", "system_prompts",
                                 "few_shot", "none"]),
        "depth": _INTS, "branching": _INTS, "max_turns": _INTS}),
    "workload.lengths.prompt": st.fixed_dictionaries({
        "dist": st.sampled_from(["lognormal", "normal", "fixed", "zipf", "uniform"]),
        "mean_tokens": _FLOATS, "median_tokens": _FLOATS}),
}


def _set(doc: dict, path: str, value: object) -> None:
    node = doc
    parts = path.split(".")
    for p in parts[:-1]:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            nxt = node[p] = {}
        node = nxt
    node[parts[-1]] = value


@st.composite
def scenario_docs(draw: st.DrawFn) -> dict:
    doc = copy.deepcopy(SCENARIO)
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(_PATHS))
        strategy = _STRUCTURED.get(path, _VALUES)
        _set(doc, path, draw(strategy))
    return doc


@FUZZ
@given(doc=scenario_docs())
def test_generated_scenarios_validate_or_fail_cleanly(doc: dict) -> None:
    try:
        cfg = scenario_from_dict(doc, source="fuzz")
    except SimulatorError as exc:
        assert str(exc).startswith("fuzz")
        assert len(str(exc)) < 20_000
        return
    # A valid scenario is sized before anything is built: the check is cheap and either
    # passes or refuses with a message.
    try:
        check_size(cfg.workload)
    except SimulatorError as exc:
        assert "docs/inputs.md" in str(exc)


# ---------------------------------------------------------------------------- YAML text

_YAML_ATOMS = st.sampled_from([
    "a", "b: ", "- ", "[", "]", "{", "}", ",", ": ", "\n", "  ", "&x ", "*x", "&y ", "*y",
    "? ", "!!python/object ", "!!binary ", "!tag ", "'", '"', "#", "|\n", ">\n", "---\n",
    ".inf", ".nan", "1.0e+400", "9" * 30, "<<: ", "%YAML 1.1\n", "\t", "\x00", "\ufeff",
    "é", "0x7f", "0o17", "1_000", "2001-12-14", "~", "null", "yes",
])


@FUZZ
@given(parts=st.lists(_YAML_ATOMS, max_size=60))
def test_hostile_yaml_text_parses_or_fails_cleanly(parts: list[str]) -> None:
    text = "".join(parts)
    try:
        load_yaml(text, "fuzz.yaml")
    except SimulatorError as exc:
        assert str(exc).startswith("fuzz.yaml")


@FUZZ
@given(depth=st.integers(MAX_DEPTH - 2, 400), opener=st.sampled_from(["[", "{a: ", "- "]))
def test_nesting_is_bounded_at_any_depth(depth: int, opener: str) -> None:
    if opener == "- ":
        text = "".join("  " * i + "-\n" for i in range(depth))
    else:
        closer = "]" if opener == "[" else "}"
        text = opener * depth + "1" + closer * depth
    try:
        load_yaml(text, "deep.yaml")
    except SimulatorError as exc:
        assert "nested" in str(exc) or "syntax" in str(exc)
    else:
        assert depth <= MAX_DEPTH


@FUZZ
@given(copies=st.integers(2, 12), levels=st.integers(1, 12))
def test_alias_expansion_is_bounded(copies: int, levels: int) -> None:
    lines = ["l0: &l0 [" + ", ".join(["x"] * copies) + "]"]
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * copies) + "]")
    text = "\n".join(lines) + "\n"
    try:
        load_yaml(text, "alias.yaml")
    except SimulatorError as exc:
        assert "expands" in str(exc)
        assert copies ** (levels + 1) > 1_000_000


@FUZZ
@given(value=_VALUES)
def test_json_round_trip_or_refusal(value: object) -> None:
    try:
        text = json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        return
    try:
        back = load_json(text, "fuzz.json")
    except SimulatorError as exc:
        assert "fuzz.json" in str(exc)
        return
    # What comes back is finite and within int64.
    def walk(x: object) -> None:
        if isinstance(x, float):
            assert math.isfinite(x)
        elif isinstance(x, int) and not isinstance(x, bool):
            assert -(2**63) <= x < 2**63
        elif isinstance(x, list):
            for y in x:
                walk(y)
        elif isinstance(x, dict):
            for y in x.values():
                walk(y)

    walk(back)


# ---------------------------------------------------------------------------- traces

_CELL = st.one_of(
    st.sampled_from(["1", "10", "0", "-1", "nan", "NaN", "inf", "-inf", "1e20", "1e400",
                     "2.5", "", " ", str(2**64), "abc", '"', "1,2"]),
    st.text(max_size=8),
)


@FUZZ
@given(rows=st.lists(st.tuples(_CELL, _CELL, _CELL), min_size=0, max_size=6),
       fmt=st.sampled_from(["splitwise", "azure", "burstgpt", "lengths"]))
def test_trace_rows_read_or_fail_cleanly(rows: list[tuple[str, str, str]], fmt: str,
                                         tmp_path_factory: pytest.TempPathFactory) -> None:
    from servesim.workloads.traces import read_trace

    header = {
        "splitwise": "arrived_at,num_prefill_tokens,num_decode_tokens",
        "azure": "TIMESTAMP,ContextTokens,GeneratedTokens",
        "burstgpt": "Timestamp,Request tokens,Response tokens",
        "lengths": "num_prefill_tokens,num_decode_tokens,x",
    }[fmt]
    path = Path(tmp_path_factory.mktemp("trace")) / "t.csv"
    path.write_text(header + "\n" + "".join(",".join(r) + "\n" for r in rows), encoding="utf-8")
    try:
        wl = read_trace(path, format=fmt)
    except SimulatorError as exc:
        assert str(path) in str(exc)
        return
    assert len(wl) >= 1
    assert (wl.prompt_tokens >= 1).all() and (wl.output_tokens >= 1).all()
    assert all(math.isfinite(t) and t >= 0 for t in wl.arrival_s)
