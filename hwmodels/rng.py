"""Named, seeded random streams.

Every consumer of randomness asks for its own stream by name, so adding a consumer never
shifts another's numbers. The stream key is derived with a stable digest (never ``hash()``
of a string, which is salted per process).
"""

from __future__ import annotations

import hashlib

import numpy as np


def stream_key(name: str) -> int:
    """Stable 64-bit integer for a stream name."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")


def make_rng(seed: int, name: str) -> np.random.Generator:
    """Return a generator for ``(seed, name)``: same inputs, same numbers, in any process."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), stream_key(name)]))
