"""Orca scheduling: iteration-level (continuous) batching, selective batching of prompts and
decodes in one iteration, KV reserved contiguously at admission (Yu et al., OSDI 2022).

New requests join whenever their reservation fits (the KV manager decides: with the
``contiguous`` manager and reservation ``max``/``pow2``/``oracle`` this is the baseline of the
PagedAttention paper). Prompts are computed whole in the iteration that admits them, under
``max_num_batched_tokens``.
"""

from __future__ import annotations

from servesim.simulator.scheduling.base import Scheduler, StepPlan


class OrcaScheduler(Scheduler):
    """Continuous batching; prompts whole, mixed with the running decodes."""

    name = "orca"

    def schedule(self, now_s: float) -> StepPlan:
        return self._decode_then_prefill(now_s, budget_tokens=self.max_num_batched_tokens, chunked=False)
