"""``servesim list`` and ``servesim show`` (placeholder while being written)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach the catalogue commands to ``app``."""
