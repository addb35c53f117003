"""servesim installs as one package: the repository's folders map under ``servesim``."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("simulator", "hwmodels", "workloads", "reports")


def _config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_source_package_is_listed_under_servesim():
    cfg = _config()
    listed = set(cfg["packages"])
    dirs = cfg["package-dir"]
    assert dirs["servesim"] == "simulator/_servesim"
    for top in SOURCE_DIRS:
        assert dirs[f"servesim.{top}"] == top
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT)
            if rel.parts[:2] == ("simulator", "_servesim"):
                continue
            assert "servesim." + ".".join(rel.parts) in listed, rel


def test_no_module_imports_a_generic_top_level_name():
    pattern = re.compile(r"^\s*(from|import)\s+(simulator|hwmodels|workloads|reports)\b", re.M)
    offenders = []
    for folder in (*SOURCE_DIRS, "tests", "benchmarks", "examples"):
        for path in (ROOT / folder).rglob("*.py"):
            if pattern.search(path.read_text()):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_the_public_api_and_version():
    import servesim as ss

    assert re.fullmatch(r"\d+\.\d+\.\d+.*", ss.__version__)
    for name in ("run", "sweep", "plan_capacity", "max_sustainable_rate", "load"):
        assert callable(getattr(ss, name))
