"""Unit constants. Decimal and binary prefixes are kept apart (as vLLM does).

Every quantity in servesim carries its unit in its name (``hbm_bytes``, ``arrival_s``);
these constants convert human units at the boundaries (YAML, CLI, reports) only.
"""

from __future__ import annotations

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40

KB = 10**3
MB = 10**6
GB = 10**9
TB = 10**12

MS_PER_S = 1e3
US_PER_S = 1e6
NS_PER_S = 1e9
MHZ = 1e6
GHZ = 1e9
TERA = 1e12
