"""Error hierarchy shared by every package.

It lives in ``hwmodels`` (the lowest layer) so that ``hwmodels`` and ``workloads`` can raise
user-facing errors without importing ``simulator``; ``simulator.errors`` re-exports it.

``SimulatorError`` and its subclasses are errors the *user* can fix (bad scenario, unknown
name, impossible configuration, malformed trace): the CLI prints their message and exits
with status 2, never a traceback. ``InvariantError`` is an internal bug and keeps its
traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SimulatorError(Exception):
    """Base for errors the user can fix (bad input, impossible configuration)."""


class ConfigError(SimulatorError):
    """A configuration value is invalid (out of range, wrong combination)."""


class UnknownNameError(ConfigError):
    """A catalogue name (GPU, model, quantization scheme, policy) does not exist."""


class CapacityError(SimulatorError):
    """The configuration can never work, e.g. the weights exceed the GPU memory."""


class TraceError(SimulatorError):
    """A workload trace file is missing, empty, unreadable or malformed."""


class InvariantError(RuntimeError):
    """Internal bug: allocator, scheduler or engine state is inconsistent."""


def closest_names(name: str, known: Iterable[str], n: int = 3) -> list[str]:
    """Return up to ``n`` known names closest to ``name`` (for "did you mean" messages)."""
    known = list(known)
    lowered = {k.lower(): k for k in known}
    hits = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.4)
    return [lowered[h] for h in hits]


def unknown_name(kind: str, name: str, known: Iterable[str]) -> UnknownNameError:
    """Build the standard "unknown X" error naming the closest and all valid names."""
    known = sorted(known)
    close = closest_names(name, known)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return UnknownNameError(
        f"unknown {kind} {name!r}.{hint} Known {kind}s: {', '.join(known)}."
    )
