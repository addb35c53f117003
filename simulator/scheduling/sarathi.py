"""Sarathi-Serve scheduling: chunked prefill under a per-step token budget, stall-free.

Every step first gives each decoding sequence its token (decodes never pause), then spends
the rest of the ``chunk_size_tokens`` budget on prompt chunks: in-progress prompts first,
then new requests FCFS (Agrawal et al., OSDI 2024, "Taming Throughput-Latency Tradeoff in
LLM Inference with Sarathi-Serve", section 4).
"""

from __future__ import annotations

from servesim.simulator.scheduling.base import Scheduler, StepPlan


class SarathiScheduler(Scheduler):
    """Decodes first, then prompt chunks up to the token budget."""

    name = "sarathi"

    def schedule(self, now_s: float) -> StepPlan:
        return self._decode_then_prefill(now_s, budget_tokens=self.chunk_size_tokens, chunked=True)
