"""Orca scheduling: iteration-level (continuous) batching, selective batching of prompts and
decodes in one iteration, KV reserved contiguously at admission (Yu et al., OSDI 2022).

New requests join whenever their reservation fits (the KV manager decides: with the
``contiguous`` manager and reservation ``max``/``pow2``/``oracle`` this is the baseline of the
PagedAttention paper). Prompts are computed whole in the iteration that admits them, under
``max_num_batched_tokens``.
"""

from __future__ import annotations

from simulator.scheduling.base import Scheduler, StepPlan


class OrcaScheduler(Scheduler):
    """Continuous batching; prompts whole, mixed with the running decodes."""

    name = "orca"

    def schedule(self, now_s: float) -> StepPlan:
        plan = StepPlan()
        self._swap_in(plan, now_s)
        self._decode_with_preemption(plan, now_s)
        budget = self.max_num_batched_tokens - len(plan.decode_slots)
        budget = self._continue_prefills(plan, budget, now_s)
        if not self.replica.swapped:
            self._admit_waiting(plan, budget, now_s, chunked=False)
        plan.stretchable = (
            not plan.prefill
            and plan.num_preemptions == 0
            and plan.swap_bytes == 0
            and not self.replica.has_pending_prefill()
        )
        return plan
