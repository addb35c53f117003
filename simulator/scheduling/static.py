"""Static (request-level) batching, as FasterTransformer serves: a batch is formed when the
replica is idle, its prompts are computed together (padded to the longest prompt), and it
decodes until its *last* request finishes; nothing joins mid-batch, and finished sequences
keep occupying (and being computed in) the batch as padding. Responses return when the batch
ends (FasterTransformer does not stream), so a request's finish time is the batch's end.
"""

from __future__ import annotations

from servesim.simulator.request import DONE
from servesim.simulator.scheduling.base import PrefillChunk, Scheduler, StepPlan


class StaticScheduler(Scheduler):
    """Request-level batching with padding."""

    name = "static"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # A swapped-out member could never rejoin: a request-level batch admits only at its
        # start, and a new batch forms from the queue (FasterTransformer has no swap space).
        # So static batching preempts by recompute, as sglang does.
        self.preemption = "recompute"

    def schedule(self, now_s: float) -> StepPlan:
        plan = StepPlan()
        rep = self.replica
        if not rep.running:
            seats = self.max_num_seqs
            batch = []
            for req in list(rep.waiting):
                if seats < req.fanout or not rep.admit(req, now_s):
                    break
                if not rep.grow_prefill(req, req.remaining_prefill_tokens, now_s):
                    rep.abort_admission(req, now_s)
                    break
                batch.append(req)
                seats -= req.fanout
            if not batch:
                return plan
            longest = max(r.prefill_target_tokens for r in batch)
            for req in batch:
                plan.prefill.append(
                    PrefillChunk(req=req, new_tokens=req.remaining_prefill_tokens, ctx_tokens=req.computed_tokens)
                )
                plan.padding_prefill_tokens += longest - req.prefill_target_tokens
            return plan
        live = rep.decode_slots()
        if len(live) and not rep.grow_decode(live, now_s):
            # Static batches reserve their memory up front (contiguous max); with another
            # manager a failed grow would stall the batch, so fall back to preemption.
            self._decode_with_preemption(plan, now_s)
            live = plan.decode_slots
            if not len(live):
                # Every member still generating was preempted: the batch ends now (its
                # finished members return) and the next one forms from the queue, where the
                # preempted members wait first.
                rep.end_static_batch(now_s)
                nxt = self.schedule(now_s)
                nxt.num_preemptions += plan.num_preemptions
                nxt.swap_bytes += plan.swap_bytes
                return nxt
        plan.decode_slots = live
        padding = [r for r in rep.running if r.phase == DONE]
        plan.padding_seqs = sum(len(r.slots) for r in padding)
        plan.padding_ctx_tokens = sum(int(rep.ctx_tokens[s]) for r in padding for s in r.slots)
        return plan
