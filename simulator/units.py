"""Unit constants (re-exported from :mod:`hwmodels.units`, the lowest layer)."""

from __future__ import annotations

from servesim.hwmodels.units import (
    GB,
    GHZ,
    KB,
    MB,
    MHZ,
    MS_PER_S,
    NS_PER_S,
    TB,
    TERA,
    US_PER_S,
    GiB,
    KiB,
    MiB,
    TiB,
)

__all__ = ["GB", "GHZ", "KB", "MB", "MHZ", "MS_PER_S", "NS_PER_S", "TB", "TERA", "US_PER_S", "GiB", "KiB", "MiB", "TiB"]
