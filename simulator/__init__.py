"""The simulation engine and its front door (scenarios, CLI, sweeps, planner).

The public API is the top-level package: ``import servesim as ss`` (see
:mod:`servesim.simulator.api`). This subpackage is imported as ``servesim.simulator``.
"""
