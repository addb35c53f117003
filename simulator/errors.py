"""Errors of the simulator (re-exported from :mod:`hwmodels.errors`, plus scenario errors)."""

from __future__ import annotations

from servesim.hwmodels.errors import (
    CapacityError,
    ConfigError,
    InvariantError,
    SimulatorError,
    TraceError,
    UnknownNameError,
)

__all__ = [
    "CapacityError",
    "ConfigError",
    "InvariantError",
    "ScenarioError",
    "SimulatorError",
    "TraceError",
    "UnknownNameError",
]


class ScenarioError(SimulatorError):
    """A scenario file is malformed (YAML syntax, unknown key, bad value)."""
