"""Named, seeded random streams (re-exported from :mod:`hwmodels.rng`)."""

from __future__ import annotations

from servesim.hwmodels.rng import make_rng, stream_key

__all__ = ["make_rng", "stream_key"]
