"""Fixtures for the workload tests.

NOTE(workloads): pytest's default import mode puts ``tests/`` on ``sys.path`` (for
``tests/conftest.py``), where ``tests/workloads/`` would shadow the real ``workloads``
package as a namespace package. Putting the project root first makes ``import workloads``
find the real one.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if sys.path[:1] != [str(ROOT)]:
    sys.path.insert(0, str(ROOT))
_stale = sys.modules.get("workloads")
if _stale is not None and getattr(_stale, "__file__", None) is None:
    del sys.modules["workloads"]  # a namespace package picked up from tests/
