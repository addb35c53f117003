"""Docs that run: every ``servesim ...`` command shown in README.md and docs/*.md is executed.

Commands are collected when the tests are collected, from fenced ``bash``/``sh``/``console``
(or untagged) code blocks and from inline code spans, so a command added to any doc is
covered the day it is written. Each doc's commands run in document order (a later one may
read what an earlier one wrote) through the installed console script, in a temporary
directory laid out like a checkout:

    <tmp>/repo/scenarios -> the gallery          <tmp>/repo/tests -> tests/ (trace excerpts)
    <tmp>/repo/examples/  copies, grids cut to one point (see _shrink_example)
    <tmp>/repo/my.yaml, results.json, ...   stand-ins for "your" files (PLACEHOLDER_FILES)
    <tmp>/repo/my-model/config.json, acts.npy    the other placeholder inputs
    <tmp>/shared -> ../shared next to the checkout, when it exists

What is changed on the way, and why (:func:`runnable`):

- ``run``/``check`` of a scenario get ``--quick`` (the gallery's seconds-long form) and
  ``run`` gets ``--no-report`` (reports are tested in tests/reports); the README's
  Quickstart command runs exactly as written.
- the flag-only form runs at most 40 prompts;
- pipes (``| jq ...``), redirections and trailing comments are dropped;
- ``sweep NAME`` / ``plan NAME`` read the shrunk copies in ``examples/``;
- ``../shared/traces/...`` becomes the shipped excerpt when the shared directory is absent.

A line that is a *synopsis* (``[optional]`` parts, UPPERCASE placeholders, ``a|b`` choices)
is checked instead: its command exists and every ``--option`` it shows is one the command
takes; its concrete form (brackets dropped, each choice) also runs when it has no
placeholder. :data:`SKIP` is the only way to keep a concrete command from running; each entry
says why.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
import yaml

from servesim.simulator.cli import app

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHARED = ROOT.parent / "shared"

# Concrete commands that do not run, by prefix, with the reason. Keep this short: prefer a
# quick form (transform in `runnable`) to a skip.
SKIP: dict[str, str] = {
    # every measured token count of the bundled GEMM timings: minutes; the default
    # `servesim kernel calibrate` (same code path, fewer points) runs.
    "servesim kernel calibrate --full": "long run (minutes)",
}

# Full traces in ../shared -> the excerpts shipped in tests/data/traces, when ../shared is absent.
EXCERPTS = {
    "../shared/traces/mooncake/conversation_trace.jsonl":
        "tests/data/traces/mooncake_conversation_300.jsonl",
    "../shared/traces/azure2023/AzureLLMInferenceTrace_conv.csv":
        "tests/data/traces/azure2023_conv_300.csv",
    "../shared/traces/azure2023/AzureLLMInferenceTrace_code.csv":
        "tests/data/traces/azure2023_code_300.csv",
}

# Files the docs use as "yours" -> what stands in for them (copied into the temp checkout).
PLACEHOLDER_FILES = {
    "my.yaml": "scenarios/quickstart.yaml",
    "my-deployment.yaml": "scenarios/quickstart.yaml",
    "results.json": "tests/data/bench/vllm-detailed-rate4.json",
    "run1.json": "tests/data/bench/vllm-detailed-rate4.json",
    "run2.json": "tests/data/bench/vllm-concurrency8.json",
    "sglang.jsonl": "tests/data/bench/sglang-random.jsonl",
    "sweep.jsonl": "tests/data/bench/sglang-random.jsonl",
}

_FENCE = re.compile(r"^\s*```\s*([\w-]*)")
_PLACEHOLDER = re.compile(r"^(?:[A-Z][A-Z0-9_]*(?:[./][A-Za-z0-9_.]*)?|[A-Z]+/[A-Z]+)$")


@dataclass(frozen=True)
class Shown:
    """One command as a doc shows it."""

    doc: str
    line: int
    text: str  # from "servesim" on
    inline: bool
    quickstart: bool = False  # the README's install-and-run line: runs exactly as written
    error: str = ""  # the doc shows this command failing: the `error: ...` line it prints


def collect(path: Path) -> list[Shown]:
    """Every ``servesim ...`` command in a Markdown file, in order."""
    out: list[Shown] = []
    in_block, lang, pending, start = False, "", "", 0
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, raw in enumerate(lines, 1):
        fence = _FENCE.match(raw)
        if fence:
            in_block, lang = (not in_block), fence.group(1).lower()
            continue
        if in_block:
            if lang not in ("", "bash", "sh", "shell", "console"):
                continue
            s = raw.strip()
            if s.startswith("$ "):
                s = s[2:]
            if pending:
                s, pending = pending + " " + s, ""
            else:
                start = i
            if s.endswith("\\"):
                pending = s[:-1].rstrip()
                continue
            m = re.search(r"(?:^|&&\s*|\s)(?:\S*/)?(servesim\s.*)$", s)
            if m and (s.startswith("servesim ") or "bin/servesim " in s):
                after = lines[i].strip() if i < len(lines) else ""
                out.append(Shown(path.name, start, m.group(1), inline=False,
                                 quickstart="pip install" in s,
                                 error=after if after.startswith("error:") else ""))
        else:
            for m in re.finditer(r"`(servesim(?:\s[^`]*)?)`", raw):
                out.append(Shown(path.name, i, m.group(1), inline=True))
    return out


def _words(text: str) -> list[str]:
    """Split like a shell, dropping comments, pipes and redirections."""
    words = shlex.split(text, comments=True)
    for stop in ("|", ">", ">>", "2>", "&&", ";"):
        if stop in words:
            words = words[: words.index(stop)]
    return words


def _is_placeholder(word: str) -> bool:
    """``SWEEP.yaml``, ``N``, ``OUT/NAME``, ``...``: stands for something the reader supplies."""
    return "..." in word or bool(_PLACEHOLDER.match(word))


def is_synopsis(words: list[str]) -> bool:
    return any("[" in w or "]" in w or "|" in w or _is_placeholder(w) for w in words[1:])


def concrete_forms(words: list[str]) -> list[list[str]]:
    """A synopsis without its optional parts, one per ``a|b`` choice; [] if it has placeholders."""
    kept: list[str] = []
    depth = 0
    for w in words:
        if w.startswith("["):
            depth += w.count("[")
        if depth == 0:
            kept.append(w)
        if w.endswith("]"):
            depth -= w.count("]")
    if any(_is_placeholder(w) for w in kept[1:]):
        return []
    forms: list[list[str]] = [[]]
    for w in kept:
        alts = w.split("|") if "|" in w else [w]
        forms = [[*f, a] for f in forms for a in alts]
    return forms


_ROOT_CMD = typer.main.get_command(app)
_CTX = _ROOT_CMD.make_context("servesim", ["gallery"], resilient_parsing=True)


def resolve_command(words: list[str]):
    """(the deepest click command or group named by ``words``, the words after it)."""
    cmd, rest = _ROOT_CMD, list(words[1:])
    while rest and hasattr(cmd, "get_command"):
        sub = cmd.get_command(_CTX, rest[0])
        if sub is None:
            break
        cmd, rest = sub, rest[1:]
    return cmd, rest


def _alternatives(words: list[str]) -> list[list[str]]:
    """Each ``a|b`` choice spelled out, brackets removed (for checking names)."""
    forms: list[list[str]] = [[]]
    for w in words:
        w = w.strip("[]")
        alts = [a for a in w.split("|") if a] if "|" in w else [w]
        forms = [[*f, a] for f in forms for a in alts]
    return forms


def options_of(cmd) -> set[str]:
    names: set[str] = {"--help"}
    for p in getattr(cmd, "params", []):
        names.update(getattr(p, "opts", []))
        names.update(getattr(p, "secondary_opts", []))
    return names


def runnable(words: list[str], *, quickstart: bool) -> list[str]:
    """The command as the test runs it (see the module docstring)."""
    w = list(words)
    shared_ok = SHARED.is_dir()
    w = [EXCERPTS.get(x, x) if not shared_ok else x for x in w]
    sub = w[1] if len(w) > 1 else ""
    if quickstart:
        return w
    if sub in ("run", "check"):
        flag_form = "--model" in w or "--gpu" in w
        if flag_form and "--num-prompts" in w:
            i = w.index("--num-prompts")
            w[i + 1] = str(min(int(w[i + 1]), 40))
        elif flag_form:
            w += ["--num-prompts", "40"]
        elif "--quick" not in w and "--full" not in w:
            w.append("--quick")
        if sub == "run" and "--no-report" not in w:
            w.append("--no-report")
    if sub in ("sweep", "plan") and len(w) > 2 and "/" not in w[2] and not w[2].startswith("-"):
        w[2] = f"examples/{Path(w[2]).stem}.yaml"
    if sub in ("sweep", "plan") and "--executor" not in w and "-e" not in w:
        w += ["--executor", "serial"]
    return w


def _shrink_example(src: Path, dst: Path) -> None:
    """A sweep or plan cut to one point (first value of each grid/zip list, 2 random samples)."""
    data = yaml.safe_load(src.read_text())
    if isinstance(data, dict):
        for key in ("grid", "zip"):
            for holder in (data, data.get("candidates") or {}):
                if isinstance(holder, dict) and isinstance(holder.get(key), dict):
                    holder[key] = {k: (v[:1] if isinstance(v, list) else v)
                                   for k, v in holder[key].items()}
        for holder in (data, data.get("candidates") or {}):
            if isinstance(holder, dict) and isinstance(holder.get("random"), dict):
                holder["random"]["samples"] = min(2, holder["random"].get("samples", 2))
        if "base" in data and "candidates" in data:  # a plan: one bisection, coarse
            data["search"] = {**(data.get("search") or {}), "rel_tol": 0.25}
            data["report"] = {**(data.get("report") or {}), "top_k": 1}
        dst.write_text(yaml.safe_dump(data, sort_keys=False))
    else:
        shutil.copy2(src, dst)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import numpy as np

    tmp = tmp_path_factory.mktemp("docs")
    repo = tmp / "repo"
    repo.mkdir()
    (repo / "scenarios").symlink_to(ROOT / "scenarios")
    (repo / "tests").symlink_to(ROOT / "tests")
    (repo / "examples").mkdir()
    for p in (ROOT / "examples").iterdir():
        if p.suffix == ".yaml":
            _shrink_example(p, repo / "examples" / p.name)
        elif p.is_file():
            shutil.copy2(p, repo / "examples" / p.name)
    for name, source in PLACEHOLDER_FILES.items():
        shutil.copy2(ROOT / source, repo / name)
    (repo / "my-model").mkdir()
    shutil.copy2(ROOT / "hwmodels" / "data" / "models" / "llama-3.1-8b.json",
                 repo / "my-model" / "config.json")
    rng = np.random.default_rng(0)
    np.save(repo / "acts.npy", rng.standard_normal((64, 256)))
    if SHARED.is_dir():
        (tmp / "shared").symlink_to(SHARED)
    return repo


def _script() -> str:
    here = Path(sys.executable).parent / "servesim"
    found = str(here) if here.exists() else shutil.which("servesim")
    assert found, "the servesim console script is not installed"
    return found


SHOWN = {doc.name: collect(doc) for doc in DOCS}
DOCS_WITH_COMMANDS = [name for name, shown in SHOWN.items() if shown]


def test_the_docs_show_commands():
    assert sum(len(v) for v in SHOWN.values()) >= 30
    assert "README.md" in DOCS_WITH_COMMANDS


@pytest.mark.parametrize("doc", DOCS_WITH_COMMANDS)
def test_every_shown_command_names_real_commands_and_options(doc):
    """Fast, in process: the command path and every --option shown exist (synopses too)."""
    problems = []
    for shown in SHOWN[doc]:
        for words in _alternatives(_words(shown.text)):
            cmd, rest = resolve_command(words)
            where = f"{doc}:{shown.line}: {shown.text}"
            if hasattr(cmd, "get_command"):  # a group: the next word must be a subcommand
                if rest and not rest[0].startswith("-") and not _is_placeholder(rest[0]):
                    problems.append(f"{where}: no command {rest[0]!r}")
                continue
            valid = options_of(cmd)
            for w in rest:
                opt = w.split("=")[0]
                if opt.startswith("--") and opt not in valid:
                    problems.append(f"{where}: {opt} is not an option of this command")
    assert problems == []


def _plan(doc: str) -> list[tuple[Shown, list[str]]]:
    """The concrete commands of one doc, in order, as they will run."""
    todo: list[tuple[Shown, list[str]]] = []
    for shown in SHOWN[doc]:
        words = _words(shown.text)
        if len(words) < 2:
            continue  # a bare `servesim`: names the tool, nothing to run
        forms = concrete_forms(words) if is_synopsis(words) else [words]
        for form in forms:
            cmd, rest = resolve_command(form)
            if hasattr(cmd, "get_command"):
                continue  # a group or command name in prose (`servesim kernel`)
            if shown.inline and (not rest or rest[-1].startswith("-")):
                continue  # `servesim run`, `servesim calibrate --from` in prose name things
            text = " ".join(form)
            if any(text.startswith(prefix) for prefix in SKIP):
                continue
            words_run = runnable(form, quickstart=shown.quickstart)
            if words_run in [w for _, w in todo]:
                continue  # shown twice: run once
            todo.append((shown, words_run))
    return todo


@pytest.mark.slow
@pytest.mark.parametrize("doc", DOCS_WITH_COMMANDS)
def test_every_shown_command_runs(doc, workdir):
    """Each concrete command exits 0 (in document order, in the checkout-like temp dir)."""
    script = _script()
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}

    def attempt(shown: Shown, words: list[str]) -> str | None:
        res = subprocess.run([script, *words[1:]], cwd=workdir, env=env, capture_output=True,
                             text=True, timeout=900)
        if shown.error:  # shown failing: it must fail the same way, on one line
            shown_text = shown.error.split("...")[0].rstrip()
            if res.returncode != 2 or not res.stderr.startswith(shown_text):
                return (f"{doc}:{shown.line}: `{' '.join(words)}` should print "
                        f"{shown_text!r} and exit 2; got {res.returncode}: {res.stderr!r}")
            return None
        if res.returncode != 0:
            return (f"{doc}:{shown.line}: `{' '.join(words)}` -> {res.returncode}: "
                    f"{(res.stderr or res.stdout).strip()[-600:]}")
        return None

    # In document order; a command that fails is tried once more at the end, since a doc may
    # use a file that a later example writes (`compare --profile fitted.yaml` before
    # `calibrate --out fitted.yaml`).
    plan = _plan(doc)
    first = [(shown, words) for shown, words in plan if attempt(shown, words) is not None]
    failures = [msg for shown, words in first if (msg := attempt(shown, words)) is not None]
    assert failures == [], "\n".join(failures)


def test_transforms():
    assert runnable(["servesim", "run", "x.yaml"], quickstart=False) == [
        "servesim", "run", "x.yaml", "--quick", "--no-report"]
    assert runnable(["servesim", "run", "--model", "m", "--gpu", "g", "--num-prompts", "600"],
                    quickstart=False)[7] == "40"
    assert runnable(["servesim", "plan", "plan"], quickstart=False)[:3] == [
        "servesim", "plan", "examples/plan.yaml"]
    assert concrete_forms(_words("servesim list gpus|models|quant [--json]")) == [
        ["servesim", "list", "gpus"], ["servesim", "list", "models"], ["servesim", "list", "quant"]]
    assert concrete_forms(_words("servesim sweep SWEEP.yaml [--workers N]")) == []
    assert is_synopsis(_words("servesim plan PLAN.yaml [--out DIR]"))
    assert not is_synopsis(_words("servesim run my.yaml --json | jq '.variants'"))
    assert json.dumps(SKIP)  # reasons are plain text
