"""Test-wide setup: numba's cache goes to a fresh temporary directory (read-only installs)."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("NUMBA_CACHE_DIR", tempfile.mkdtemp(prefix="servesim-numba-"))
os.environ.setdefault("MPLBACKEND", "Agg")
