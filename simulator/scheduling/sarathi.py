"""Sarathi-Serve scheduling: chunked prefill under a per-step token budget, stall-free.

Every step first gives each decoding sequence its token (decodes never pause), then spends
the rest of the ``chunk_size_tokens`` budget on prompt chunks: in-progress prompts first,
then new requests FCFS (Agrawal et al., OSDI 2024, "Taming Throughput-Latency Tradeoff in
LLM Inference with Sarathi-Serve", section 4).
"""

from __future__ import annotations

from simulator.scheduling.base import Scheduler, StepPlan


class SarathiScheduler(Scheduler):
    """Decodes first, then prompt chunks up to the token budget."""

    name = "sarathi"

    def schedule(self, now_s: float) -> StepPlan:
        plan = StepPlan()
        self._swap_in(plan, now_s)
        self._decode_with_preemption(plan, now_s)
        budget = self.chunk_size_tokens - len(plan.decode_slots)
        budget = self._continue_prefills(plan, budget, now_s)
        if not self.replica.swapped:
            self._admit_waiting(plan, budget, now_s, chunked=True)
        plan.stretchable = (
            not plan.prefill
            and plan.num_preemptions == 0
            and plan.swap_bytes == 0
            and not self.replica.has_pending_prefill()
        )
        return plan
