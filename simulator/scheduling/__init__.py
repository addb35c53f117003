"""Schedulers: one module per policy behind :class:`~simulator.scheduling.base.Scheduler`."""

from __future__ import annotations

from servesim.simulator.errors import UnknownNameError
from servesim.simulator.scheduling.base import PrefillChunk, Scheduler, StepPlan
from servesim.simulator.scheduling.orca import OrcaScheduler
from servesim.simulator.scheduling.sarathi import SarathiScheduler
from servesim.simulator.scheduling.sglang import SglangScheduler
from servesim.simulator.scheduling.static import StaticScheduler
from servesim.simulator.scheduling.vllm import VllmScheduler

POLICIES: dict[str, type[Scheduler]] = {
    "static": StaticScheduler,
    "orca": OrcaScheduler,
    "vllm": VllmScheduler,
    "sarathi": SarathiScheduler,
    "sglang": SglangScheduler,
}


def scheduler_class(name: str) -> type[Scheduler]:
    """The scheduler class for a policy name."""
    try:
        return POLICIES[name]
    except KeyError:
        raise UnknownNameError(
            f"unknown scheduler policy {name!r}; valid: {', '.join(POLICIES)}"
        ) from None


__all__ = ["POLICIES", "PrefillChunk", "Scheduler", "StepPlan", "scheduler_class"]
