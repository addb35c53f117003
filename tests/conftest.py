"""Test-wide setup: numba's cache goes to a fresh temporary directory (read-only installs)."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("NUMBA_CACHE_DIR", tempfile.mkdtemp(prefix="servesim-numba-"))
os.environ.setdefault("MPLBACKEND", "Agg")

# Hypothesis: developers' runs explore new random examples each time (that is how the
# differential tests find engine bugs); CI's gate is reproducible instead. `.ci/run` sets
# HYPOTHESIS_PROFILE=ci: the same examples on every run, so a submission that passed here
# passes there, and a bug found by exploration becomes an explicit regression test.
from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("HYPOTHESIS_PROFILE"):
    settings.load_profile(os.environ["HYPOTHESIS_PROFILE"])
