"""servesim installs as one package: the repository's folders map under ``servesim``."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import pytest

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


# ---------------------------------------------------------------------------- dependencies

# Import name -> distribution, where they differ.
_DIST_OF = {"yaml": "pyyaml", "distributed": "dask"}


def _declared() -> tuple[dict[str, str], dict[str, str]]:
    """Required and optional distributions (lower-case name -> requirement)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def name(req: str) -> str:
        return re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower()

    required = {name(r): r for r in project["dependencies"]}
    optional = {name(r): r for extra in project["optional-dependencies"].values() for r in extra}
    return required, optional


def test_every_imported_library_is_declared_with_an_upper_bound():
    import ast
    import sys

    required, optional = _declared()
    for req in required.values():
        assert "<" in req, f"{req}: give an upper bound"
    used: dict[str, str] = {}
    for folder in SOURCE_DIRS:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for n in names:
                    top = n.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in ("servesim", "__future__"):
                        used.setdefault(top, str(path.relative_to(ROOT)))
    # dask's scheduler is optional: imported only inside the dask executor (extra `dask`).
    missing = {
        top: where for top, where in used.items()
        if _DIST_OF.get(top, top).lower() not in required
        and not (_DIST_OF.get(top, top).lower() in optional and top == "distributed")
    }
    assert missing == {}, f"imported but not declared in [project] dependencies: {missing}"
    assert "click" not in used, "click is typer's (vendored); import it through typer"


def test_linters_are_in_a_dev_extra():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(r.startswith("ruff") for r in extras["dev"])


# ---------------------------------------------------------------------------- the wheel

_SOURCES = ("pyproject.toml", "README.md", *SOURCE_DIRS, "scenarios", "examples",
            "tests/data/traces")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built offline from a copy of the sources (the checkout stays untouched)."""
    import shutil
    import subprocess
    import sys

    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.nbi", "*.nbc")
    for rel in _SOURCES:
        if (ROOT / rel).is_dir():
            shutil.copytree(ROOT / rel, src / rel, ignore=ignore)
        else:
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-q", "-w", str(tmp / "dist"), str(src)],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    (whl,) = (tmp / "dist").glob("servesim-*.whl")
    return whl


def test_the_wheel_holds_one_package_with_its_data(wheel: Path):
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    dist_info = {t for t in tops if t.endswith(".dist-info")}
    assert tops - dist_info == {"servesim"}
    assert len(dist_info) == 1
    (info,) = dist_info
    assert zipfile.ZipFile(wheel).read(f"{info}/top_level.txt").decode().split() == ["servesim"]
    have = set(names)
    must = [
        "servesim/__init__.py",
        "servesim/simulator/cli/__init__.py",
        "servesim/hwmodels/data/gpus.yaml",
        "servesim/hwmodels/data/models/llama-3.1-8b.json",
        "servesim/tests/data/traces/azure2023_conv_300.csv",
        "servesim/tests/data/traces/mooncake_conversation_300.jsonl",
        "servesim/tests/data/traces/LICENSES.md",
    ]
    must += [f"servesim/scenarios/{p.name}" for p in (ROOT / "scenarios").glob("*.yaml")]
    must += [f"servesim/examples/{p.name}" for p in (ROOT / "examples").glob("*.yaml")]
    # Every data file of the source folders ships (a new data folder needs a package-data line).
    for folder in SOURCE_DIRS:
        for path in (ROOT / folder).rglob("*"):
            rel = path.relative_to(ROOT)
            if (not path.is_file() or path.suffix in (".py", ".pyc", ".nbi", ".nbc")
                    or "__pycache__" in rel.parts):
                continue
            if rel.parts[:2] == ("simulator", "_servesim"):
                must.append("servesim/" + "/".join(rel.parts[2:]))
            else:
                must.append("servesim/" + rel.as_posix())
    assert [m for m in must if m not in have] == []
    assert not [n for n in names if n.endswith((".pyc", ".nbi", ".nbc"))]
    assert not [n for n in names if n.startswith("servesim/tests/") and n.endswith(".py")]
    entry = zipfile.ZipFile(wheel).read(f"{info}/entry_points.txt").decode()
    assert "servesim = servesim.simulator.cli:main" in entry


@pytest.mark.slow
def test_an_installed_wheel_runs_the_gallery_outside_the_repository(wheel: Path, tmp_path: Path):
    """pip install the wheel into a fresh venv; run `servesim run quickstart --quick` elsewhere.

    The venv has no network, so its dependencies come from this interpreter's site-packages
    through a .pth line (which adds the folder without processing its own .pth files, so the
    editable install of the checkout stays invisible).
    """
    import site
    import subprocess
    import venv

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    (purelib,) = {Path(p) for p in site.getsitepackages() if p.endswith("site-packages")}
    target = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            capture_output=True, text=True, check=True).stdout.strip()
    Path(target, "servesim-deps.pth").write_text(f"{purelib}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NUMBA_CACHE_DIR")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, env=env, timeout=600)
    work = tmp_path / "elsewhere"
    work.mkdir()

    def sh(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(env_dir / "bin" / "servesim"), *args], cwd=work, env=env,
                              capture_output=True, text=True, timeout=1200)

    where = subprocess.run([str(py), "-c", "import servesim; print(servesim.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True)
    assert where.stdout.startswith(target), where.stdout  # the wheel, not the checkout
    res = sh("gallery")
    assert res.returncode == 0 and "quickstart" in res.stdout, res.stderr
    res = sh("check", "gpu-comparison", "--quick")
    assert res.returncode == 0, res.stderr
    res = sh("run", "quickstart", "--quick", "--out", "out", "--no-report")
    assert res.returncode == 0, res.stderr[-3000:]
    summary = (work / "out" / "quickstart" / "summary.json").read_text()
    assert '"completed": 150' in summary
