"""The command-line contract, through the *installed console script* in a subprocess.

Every usage error - no arguments, unknown command, unknown option, missing argument, bad
value, bad or missing file - for every subcommand prints exactly one line on stderr that
starts with ``error:``, names the option (or argument, or file) and what is valid, writes
nothing to stdout and exits with status 2: never a traceback. The subcommands are found by
walking the click tree, so a new command is covered (or, for the bad-file case, must be
classified in :data:`BAD_FILE` / :data:`NO_INPUT_FILE`) the day it is registered.

Usage errors are found before a command's heavy modules load, so each case costs a Python
start-up plus the command module's import.
"""

from __future__ import annotations

import enum
import os
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import typer

from servesim.simulator.cli import COMMANDS, app


def _script() -> str:
    here = Path(sys.executable).parent / "servesim"
    found = str(here) if here.exists() else shutil.which("servesim")
    assert found, "the servesim console script is not installed (pip install -e .)"
    return found


SCRIPT = _script()


def servesim(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run(
        [SCRIPT, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def assert_usage_error(res: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit status 2, nothing on stdout, exactly one ``error:`` line on stderr."""
    where = f"stdout={res.stdout!r}\nstderr={res.stderr!r}"
    assert res.returncode == 2, where
    assert "Traceback" not in res.stderr, where
    assert res.stdout == "", where
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, where
    assert lines[0].startswith("error: "), where
    for needle in needles:
        assert needle in lines[0], f"{needle!r} missing: {where}"
    return lines[0]


# ---------------------------------------------------------------------------- the tree


def _walk() -> tuple[list[tuple[str, ...]], list[tuple[str, ...]], dict[tuple[str, ...], object]]:
    root = typer.main.get_command(app)
    ctx = root.make_context("servesim", ["gallery"], resilient_parsing=True)
    leaves: list[tuple[str, ...]] = []
    groups: list[tuple[str, ...]] = []
    commands: dict[tuple[str, ...], object] = {}

    def walk(cmd: object, path: tuple[str, ...]) -> None:
        if hasattr(cmd, "list_commands"):
            if path:
                groups.append(path)
            for name in cmd.list_commands(ctx):  # type: ignore[attr-defined]
                try:
                    sub = cmd.get_command(ctx, name)  # type: ignore[attr-defined]
                except ImportError:
                    sub = None  # reported by test_every_listed_command_loads
                if sub is not None:
                    walk(sub, (*path, name))
        else:
            leaves.append(path)
            commands[path] = cmd

    walk(root, ())
    return leaves, groups, commands


LEAVES, GROUPS, CMDS = _walk()
IDS = [" ".join(p) for p in LEAVES]


def _params(path: tuple[str, ...]) -> list[object]:
    return list(getattr(CMDS[path], "params", []))


def test_every_listed_command_loads_and_registers_its_name():
    """Each COMMANDS row names a module that registers exactly that command."""
    for entry in COMMANDS:
        sub = typer.Typer()
        __import__(f"servesim.simulator.cli.{entry.module}", fromlist=["register"]).register(sub)
        group = typer.main.get_group(sub)
        assert entry.name in group.commands, (entry.name, entry.module)
    assert {p[0] for p in LEAVES} | {g[0] for g in GROUPS} == {c.name for c in COMMANDS}


# ---------------------------------------------------------------------------- root and groups


def test_no_arguments_lists_the_commands():
    line = assert_usage_error(servesim(), "missing command", "valid:")
    for entry in COMMANDS:
        assert entry.name in line


def test_unknown_command():
    assert_usage_error(servesim("bogus-command"), "bogus-command", "valid:", "run")


def test_version():
    from servesim import __version__

    res = servesim("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"servesim {__version__}"


def test_help_lists_every_command_with_its_line():
    res = servesim("--help")
    assert res.returncode == 0, res.stderr
    for entry in COMMANDS:
        assert entry.name in res.stdout


@pytest.mark.parametrize("group", GROUPS, ids=[" ".join(g) for g in GROUPS])
def test_group_without_or_with_an_unknown_subcommand(group):
    assert_usage_error(servesim(*group), f"servesim {' '.join(group)}", "missing command")
    assert_usage_error(servesim(*group, "bogus-sub"), "bogus-sub", "valid:")


# ---------------------------------------------------------------------------- every leaf


@pytest.mark.parametrize("path", LEAVES, ids=IDS)
def test_unknown_option(path):
    line = assert_usage_error(servesim(*path, "--bogus-option"), "--bogus-option")
    assert f"servesim {' '.join(path)}" in line
    if any(getattr(p, "param_type_name", "") == "option" for p in _params(path)):
        assert "valid: --" in line


def _required(path: tuple[str, ...]) -> list[object]:
    return [p for p in _params(path) if getattr(p, "required", False)]


# `run` has no required parameter (a scenario *or* the flag-only form) but needs one of them.
MISSING_EXTRA = {("run",): "SCENARIO"}
MISSING = [p for p in LEAVES if _required(p) or p in MISSING_EXTRA]


@pytest.mark.parametrize("path", MISSING, ids=[" ".join(p) for p in MISSING])
def test_missing_argument(path):
    if path in MISSING_EXTRA:
        assert_usage_error(servesim(*path), MISSING_EXTRA[path])
        return
    first = _required(path)[0]
    line = assert_usage_error(servesim(*path))
    assert "issing" in line
    assert first.name.lower() in line.lower().replace("-", "_"), line  # type: ignore[attr-defined]


def _numeric_option(path: tuple[str, ...]) -> str | None:
    """The first option taking a number or one of fixed choices."""
    for p in _params(path):
        if getattr(p, "param_type_name", "") != "option" or getattr(p, "is_flag", False):
            continue
        ann = p.type_descriptor.annotation  # type: ignore[attr-defined]
        kinds = [a for a in (typing.get_args(ann) or (ann,)) if a is not type(None)]
        if any(k in (int, float) or (isinstance(k, type) and issubclass(k, enum.Enum))
               for k in kinds):
            return p.opts[0]  # type: ignore[attr-defined]
    return None


BAD_VALUE = [(p, o) for p in LEAVES if (o := _numeric_option(p)) is not None]


@pytest.mark.parametrize(("path", "option"), BAD_VALUE, ids=[" ".join(p) for p, _ in BAD_VALUE])
def test_bad_value(path, option):
    line = assert_usage_error(servesim(*path, option, "not-a-value"), option)
    assert "not-a-value" in line or "valid" in line or "should be" in line, line


def test_an_option_without_its_value_names_the_command():
    assert_usage_error(servesim("run", "-o"), "servesim run:", "'-o' requires an argument")


def test_bad_values_named_in_the_issue():
    assert_usage_error(servesim("run", "x.yaml", "--seed", "abc"), "--seed")
    assert_usage_error(servesim("sweep", "s.yaml", "--executor", "foo"), "--executor", "local")
    assert_usage_error(servesim("sweep", "s.yaml", "--workers", "0"), "--workers", "1")
    assert_usage_error(
        servesim("kernel", "attention-decode", "--gpu", "h100-sxm", "--batch", "64",
                 "--context", "4096"),
        "--context", "--context-tokens",
    )


# ---------------------------------------------------------------------------- bad files

# How each command that reads a file is given one that does not exist. NOPE is replaced by a
# path in the test's temporary directory.
NOPE = "@NOPE@"
QUICKSTART = "@QUICKSTART@"
BAD_FILE: dict[tuple[str, ...], list[str]] = {
    ("run",): [NOPE + ".yaml"],
    ("check",): [NOPE + ".yaml"],
    ("export-timeline",): [NOPE],
    ("show", "gpu"): [NOPE + ".yaml"],
    ("show", "model"): [NOPE + "/config.json"],
    ("trace", "stats"): [NOPE + ".csv"],
    ("quant-error",): ["--npy", NOPE + ".npy"],
    ("sweep",): [NOPE + ".yaml"],
    ("plan",): [NOPE + ".yaml"],
    ("roofline",): ["--gpu", NOPE + ".yaml", "--model", "llama-3.1-8b"],
    ("kernel", "gemm"): ["--gpu", NOPE + ".yaml", "--m", "16", "--n", "64", "--k", "64"],
    ("kernel", "attention-prefill"): ["--gpu", NOPE + ".yaml", "--batch", "1",
                                      "--query-tokens", "16"],
    ("kernel", "attention-decode"): ["--gpu", NOPE + ".yaml", "--batch", "1",
                                     "--context-tokens", "16"],
    ("calibrate",): ["--from", NOPE + ".json", "--scenario", QUICKSTART, "--out", "p.yaml"],
    ("compare",): [NOPE + ".json", "--scenario", QUICKSTART],
}
# Commands that read no user file (catalogue listings, the bundled data, output-only).
NO_INPUT_FILE = {
    ("schema",), ("gallery",), ("list", "gpus"), ("list", "models"), ("list", "quant"),
    ("kernel", "calibrate"), ("kernel", "curves"), ("validate",),
}


def test_every_command_is_classified_for_bad_files():
    unclassified = [p for p in LEAVES if p not in BAD_FILE and p not in NO_INPUT_FILE]
    assert unclassified == [], (
        "add these commands to BAD_FILE or NO_INPUT_FILE in tests/cli/test_cli_contract.py"
    )


FILE_CASES = [p for p in LEAVES if p in BAD_FILE]


@pytest.mark.parametrize("path", FILE_CASES, ids=[" ".join(p) for p in FILE_CASES])
def test_missing_file(path, tmp_path):
    nope = str(tmp_path / "missing")
    from servesim.simulator.gallery import gallery_root

    quickstart = str(gallery_root() / "scenarios" / "quickstart.yaml")
    args = [a.replace(NOPE, nope).replace(QUICKSTART, quickstart) for a in BAD_FILE[path]]
    assert_usage_error(servesim(*path, *args, cwd=tmp_path), "missing")


def test_malformed_files(tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("name: [unclosed\n")
    assert_usage_error(servesim("run", str(bad_yaml), cwd=tmp_path), "bad.yaml")
    assert_usage_error(servesim("sweep", str(bad_yaml), cwd=tmp_path), "bad.yaml")
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_bytes(b"\x00\x01not,a\ntrace")
    assert_usage_error(servesim("trace", "stats", str(bad_csv), cwd=tmp_path), "bad.csv")
    empty_dir = tmp_path / "not-a-run"
    empty_dir.mkdir()
    assert_usage_error(
        servesim("export-timeline", str(empty_dir), cwd=tmp_path), "steps.parquet"
    )


# ---------------------------------------------------------------------------- start-up


def test_help_and_list_gpus_import_no_heavy_library():
    """Start-up stays fast because nothing heavy loads (timed in benchmarks/bench_startup.py)."""
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    for args in (["--help"], ["list", "gpus"], ["run", "--bogus"]):
        res = subprocess.run([SCRIPT, *args], capture_output=True, text=True, env=env, timeout=300)
        mods = {ln.split("|")[-1].strip() for ln in res.stderr.splitlines()
                if ln.startswith("import time:")}
        heavy = sorted(m for m in mods if m.split(".")[0] in
                       ("numba", "pandas", "matplotlib", "pyarrow", "scipy", "simpy"))
        assert heavy == [], (args, heavy)
        assert "servesim.simulator.compiled" not in mods
        if args == ["--help"]:  # listing the commands builds none of them
            assert not {"pydantic", "numpy", "yaml", "rich"} & mods, args


def test_constants_repeated_for_fast_registration_agree():
    from servesim.hwmodels.quantmath import DEFAULT_ALPHA
    from servesim.simulator.cli import quant, trace
    from servesim.workloads.traces import FORMATS

    assert trace.FORMATS == FORMATS
    assert quant.DEFAULT_ALPHA == DEFAULT_ALPHA
