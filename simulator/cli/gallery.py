"""``servesim gallery``: the bundled scenarios and examples, one line each.

Every name listed runs as is, from any directory and from an installed wheel
(``servesim run quickstart --quick``, ``servesim plan plan``); see
:mod:`servesim.simulator.gallery` for where the files live.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

_HOW = {
    "scenarios": "servesim run NAME [--quick]",
    "examples": "servesim sweep NAME / servesim plan NAME / a GPU file",
}


def gallery(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print [{name, kind, path, summary}] as JSON.")
    ] = False,
) -> None:
    """List the bundled scenarios and examples (run them by name)."""
    from servesim.simulator.gallery import gallery_entries

    entries = gallery_entries()
    if as_json:
        rows = [
            {"name": e.name, "kind": e.kind, "path": str(e.path), "summary": e.summary}
            for e in entries
        ]
        typer.echo(json.dumps(rows, indent=2))
        return
    width = max((len(e.name) for e in entries), default=0)
    kind = None
    for e in entries:
        if e.kind != kind:
            kind = e.kind
            typer.echo(f"{kind} ({_HOW.get(kind, '')}):")
        typer.echo(f"  {e.name:<{width}}  {e.summary}")


def register(app: typer.Typer) -> None:
    """Attach ``gallery`` to ``app``."""
    app.command("gallery")(gallery)
