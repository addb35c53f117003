"""Regenerate the gallery's golden outputs (see ``tests/golden/golden.py``).

Usage, from the repository root::

    .venv/bin/python -m tests.golden.regen [scenario ...]

Commit the new files with an explanation of every difference in the commit message.
"""

from __future__ import annotations

import sys

from tests.golden.golden import SCENARIOS, write_golden


def main(argv: list[str]) -> int:
    names = argv or SCENARIOS
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(f"unknown scenario(s) {unknown}; valid: {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    for name in names:
        write_golden(name)
        print(f"tests/golden/{name}: written")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
