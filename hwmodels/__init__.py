"""What the hardware and the model are, and what one step costs on them.

``hwmodels`` never imports ``simulator``: it is the lowest layer.
"""

from __future__ import annotations

import os
from pathlib import Path


def _ensure_numba_cache_dir() -> None:
    # numba's cache=True writes next to the source; a read-only install (site-packages owned
    # by root, a CI image) would fail, so fall back to a per-user cache directory.
    if "NUMBA_CACHE_DIR" in os.environ:
        return
    if not os.access(Path(__file__).parent, os.W_OK):
        # XDG Base Directory: $XDG_CACHE_HOME when set to an absolute path, else ~/.cache.
        base = os.environ.get("XDG_CACHE_HOME", "")
        root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".cache"
        os.environ["NUMBA_CACHE_DIR"] = str(root / "servesim" / "numba")


_ensure_numba_cache_dir()
