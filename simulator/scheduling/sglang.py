"""SGLang scheduling: radix prefix cache with cache-aware (longest-prefix-first) admission.

The waiting queue is ordered by the length of each request's cached prefix, longest first
("lpm", Zheng et al., "SGLang", NeurIPS 2024, section 3), so requests sharing a prefix run
while it is cached. A guard stops starvation: a request that has waited longer than
``starvation_limit_s`` goes first, FCFS. As in SGLang, long queues (> 128) fall back to FCFS
because matching every request is costly. Prefill is chunked under
``max_num_batched_tokens`` (SGLang's ``chunked_prefill_size``) and runs before decodes;
out of memory, the newest running request is retracted (recompute).
"""

from __future__ import annotations

from servesim.simulator.scheduling.base import Scheduler, StepPlan

#: SGLang switches cache-aware ordering off for longer queues (``schedule_policy.py``).
LPM_MAX_QUEUE = 128


class SglangScheduler(Scheduler):
    """Prefill-first, cache-aware ordering, chunked prefill."""

    name = "sglang"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # SGLang retracts (recomputes) requests; it has no swap space.
        self.preemption = "recompute"

    def _order(self, now_s: float) -> list:
        rep = self.replica
        queue = list(rep.waiting)
        if len(queue) > LPM_MAX_QUEUE or len(queue) <= 1:
            return queue
        starving = [r for r in queue if now_s - r.arrival_s > self.starvation_limit_s]
        rest = [r for r in queue if now_s - r.arrival_s <= self.starvation_limit_s]
        rest.sort(key=lambda r: (-rep.match_prefix_tokens(r), r.order))
        return starving + rest

    def schedule(self, now_s: float) -> StepPlan:
        plan = StepPlan()
        budget = self._continue_prefills(plan, self.max_num_batched_tokens, now_s)
        self._admit_waiting(plan, budget, now_s, order=self._order(now_s), chunked=True)
        if plan.prefill:
            return plan
        self._decode_with_preemption(plan, now_s)
        return plan
