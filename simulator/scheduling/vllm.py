"""vLLM (v0 default) scheduling: continuous batching on paged KV, prefill-first.

Each step either computes prefills (new requests admitted FCFS under ``max_num_seqs`` and
``max_num_batched_tokens``; running decodes pause for that step) or decodes every running
sequence. When a decode needs a block and none is free, the latest-arrived running request
is preempted by recompute (default) or by swapping its blocks to host memory; swapped
requests come back before any new prompt is admitted (Kwon et al., SOSP 2023, section 4.5;
vLLM ``core/scheduler.py``).
"""

from __future__ import annotations

from servesim.simulator.scheduling.base import Scheduler, StepPlan


class VllmScheduler(Scheduler):
    """Prefill-first continuous batching with recompute or swap preemption."""

    name = "vllm"

    def schedule(self, now_s: float) -> StepPlan:
        plan = StepPlan()
        rep = self.replica
        if not rep.waiting and not rep.swapped and not rep.has_pending_prefill():
            # Nothing to admit, swap in or continue: a decode step (the general path below
            # would come to the same plan).
            self._decode_with_preemption(plan, now_s)
            return plan
        still_swapped = self._swap_in(plan, now_s)
        if not still_swapped:
            budget = self._continue_prefills(plan, self.max_num_batched_tokens, now_s)
            self._admit_waiting(plan, budget, now_s, chunked=False)
        if plan.prefill:
            return plan
        self._decode_with_preemption(plan, now_s)
        return plan
