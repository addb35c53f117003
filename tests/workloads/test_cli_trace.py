"""``servesim trace stats``: table, JSON, and exit status 2 on a bad file."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from servesim.simulator.cli.trace import register

TRACES = Path(__file__).resolve().parents[1] / "data" / "traces"


def app() -> typer.Typer:
    a = typer.Typer()
    a.command("noop")(lambda: None)  # a second command keeps "trace" a sub-command
    register(a)
    return a


def test_stats_table_shows_prefix_reuse() -> None:
    res = CliRunner().invoke(
        app(), ["trace", "stats", str(TRACES / "mooncake_conversation_300.jsonl")]
    )
    assert res.exit_code == 0, res.output
    assert "requests" in res.output and "300" in res.output
    assert "prefix reuse (512-token blocks, unlimited cache)  8.0% of 8,490 blocks" in res.output


def test_stats_json_and_format_override() -> None:
    res = CliRunner().invoke(
        app(), ["trace", "stats", str(TRACES / "burstgpt_12.csv"), "--format", "burstgpt", "--json"]
    )
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert d["num_requests"] == 9 and d["duration_s"] == 226.0
    assert d["prefix_reuse_frac"] is None
    assert d["notes"] == ["dropped 3 failed requests (Response tokens = 0), first at line 3"]
    assert set(d["prompt"]) == {
        "mean_tokens",
        "p50_tokens",
        "p90_tokens",
        "p99_tokens",
        "max_tokens",
    }


def test_bad_file_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "t.csv"
    bad.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0,ten,1\n")
    res = CliRunner().invoke(app(), ["trace", "stats", str(bad)])
    assert res.exit_code == 2
    assert "line 2, column 'num_prefill_tokens'" in res.output
