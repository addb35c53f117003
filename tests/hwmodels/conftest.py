"""Keep ``tests/hwmodels`` from shadowing the real ``hwmodels`` package.

With a bare ``pytest`` (not ``python -m pytest``) the repository root is not on ``sys.path``
while ``tests/`` is (rootdir conftest), so ``import hwmodels`` would find this directory as a
namespace package before the editable install's finder runs. Put the root first.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
