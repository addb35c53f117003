"""The bundled gallery: ``scenarios/*.yaml`` and ``examples/*.yaml``, runnable by name.

In the repository the gallery is the top-level ``scenarios/`` and ``examples/`` folders; in an
installed wheel the same folders ship as package data inside ``servesim/`` (``pyproject.toml``
maps them), together with the small trace excerpts of ``tests/data/traces/`` that the trace
scenarios' ``--quick`` form replays. The relative layout is the same in both places::

    <root>/scenarios/gpu-comparison.yaml      quick: ../tests/data/traces/azure2023_conv_300.csv
    <root>/examples/plan.yaml                 base:  ../scenarios/quickstart.yaml
    <root>/tests/data/traces/*.csv|jsonl      the shipped excerpts

so every relative path inside a gallery file resolves without rewriting. ``<root>`` is the
folder above this package: the repository root in a checkout, ``site-packages/servesim`` in
a wheel. The full form of a trace scenario reads ``../../shared/traces/...`` (the data
directory next to a checkout); from a wheel, give the trace with
``--set workload.trace.path=FILE`` or run ``--quick``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

#: Gallery folders, in the order ``servesim gallery`` lists them.
KINDS: tuple[str, ...] = ("scenarios", "examples")


def gallery_root() -> Path:
    """The folder holding ``scenarios/`` and ``examples/`` (repository root or ``servesim/``)."""
    return Path(__file__).resolve().parents[1]


@dataclass(frozen=True, slots=True, kw_only=True)
class GalleryEntry:
    """One gallery file and its one-line summary."""

    name: str  # file stem: what `servesim run NAME` takes
    kind: str  # "scenarios" or "examples"
    path: Path
    summary: str


def _summary(path: Path) -> str:
    """First sentence of ``description:``, else the first comment line that is not a command."""
    import yaml

    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    desc = data.get("description") if isinstance(data, dict) else None
    if isinstance(desc, str) and desc.strip():
        line = " ".join(desc.split())
    else:
        # The first paragraph of the header comment, skipping command lines.
        paragraph: list[str] = []
        for ln in text.splitlines():
            if not ln.startswith("#"):
                break
            c = ln.lstrip("#").strip()
            if c.startswith(("servesim ", "$ ")):
                continue
            if not c:
                if paragraph:
                    break
                continue
            paragraph.append(c)
        line = " ".join(paragraph)
    first = re.split(r"(?<!e\.g)(?<!i\.e)(?<=[a-z0-9)])\. ", line)[0].rstrip(".:")
    return first if len(first) <= 110 else first[:107].rstrip() + "..."


def gallery_entries() -> list[GalleryEntry]:
    """Every gallery file, scenarios first, each kind sorted by name."""
    root = gallery_root()
    entries: list[GalleryEntry] = []
    for kind in KINDS:
        folder = root / kind
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.yaml"), key=lambda p: p.stem):
            entries.append(
                GalleryEntry(name=path.stem, kind=kind, path=path, summary=_summary(path))
            )
    return entries


def resolve_path(path: str | Path, kinds: tuple[str, ...] = KINDS) -> Path:
    """``path`` itself when it exists or names a folder; else the gallery file of that name.

    A bare name (no folder part, ``.yaml`` optional) that is not a file in the current
    directory resolves to ``<root>/<kind>/<name>.yaml`` for the first kind in ``kinds`` that
    has it, so ``servesim run quickstart`` works from any directory and from a wheel. A file
    of that name in the current directory always wins. Anything else is returned unchanged,
    for the reader to report as missing.
    """
    p = Path(path)
    if p.exists() or len(p.parts) != 1:
        return p
    stem = p.name[: -len(p.suffix)] if p.suffix in (".yaml", ".yml") else p.name
    root = gallery_root()
    for kind in kinds:
        candidate = root / kind / f"{stem}.yaml"
        if candidate.is_file():
            return candidate
    return p


def gallery_names(kind: str) -> list[str]:
    """Names of one kind of gallery file, for "valid: ..." lists in error messages."""
    folder = gallery_root() / kind
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
