"""The scheduler interface and the mechanics every policy shares.

A scheduler decides, at the start of each step, which prompt chunks to compute and which
sequences decode, admitting and preempting through the replica. One module per policy
(``static``, ``orca``, ``vllm``, ``sarathi``, ``sglang``) subclasses :class:`Scheduler`.

Contract with the replica (``simulator.reference.ReferenceReplica``):

* ``schedule(now_s)`` returns a :class:`StepPlan`. Memory for everything in the plan has
  already been obtained (prefill chunks and one decode token per decoding sequence), so the
  step cannot fail.

These classes are the reference's schedulers; the compiled loop carries each policy as a
branch of ``simulator/compiled/_loop.py`` (``_plan``, ``_plan_static``), held equal to them
by ``tests/engine/test_reference.py`` (``docs/engine.md``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from servesim.simulator.request import DECODE, PREFILL, ReqState

if TYPE_CHECKING:
    from servesim.simulator.reference import ReferenceReplica as Replica


#: The empty decode batch (read-only, shared).
_NO_SLOTS = np.empty(0, np.int64)
_NO_SLOTS.flags.writeable = False


@dataclass(slots=True)
class PrefillChunk:
    """``new_tokens`` prompt tokens of ``req`` computed this step after ``ctx_tokens`` in KV."""

    req: ReqState
    new_tokens: int
    ctx_tokens: int

    @property
    def completes(self) -> bool:
        return self.ctx_tokens + self.new_tokens >= self.req.prefill_target_tokens


@dataclass(slots=True)
class StepPlan:
    """What one step computes."""

    prefill: list[PrefillChunk] = field(default_factory=list)
    decode_slots: npt.NDArray[np.int64] = field(default_factory=lambda: _NO_SLOTS)
    # Static batching: finished sequences still occupy the batch and are computed (padding).
    padding_seqs: int = 0
    padding_ctx_tokens: int = 0
    padding_prefill_tokens: int = 0
    num_preemptions: int = 0
    swap_bytes: float = 0.0

    @property
    def is_empty(self) -> bool:
        return not self.prefill and len(self.decode_slots) == 0


class Scheduler(ABC):
    """Base class: shared admission, prefill chunking and preemption mechanics."""

    name = "base"

    def __init__(
        self,
        replica: Replica,
        *,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        chunk_size_tokens: int = 512,
        preemption: str = "recompute",
        starvation_limit_s: float = 5.0,
    ) -> None:
        self.replica = replica
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.chunk_size_tokens = chunk_size_tokens
        self.preemption = preemption
        self.starvation_limit_s = starvation_limit_s

    # ------------------------------------------------------------------ policy hook
    @abstractmethod
    def schedule(self, now_s: float) -> StepPlan:
        """Plan the step starting at ``now_s`` (admitting and preempting through the replica)."""

    # ------------------------------------------------------------------ shared mechanics
    def _num_running_seqs(self) -> int:
        # A fan-out group sharing its prompt holds one slot until its prefill completes and
        # forks: it already counts as all of its sequences.
        n = 0
        for r in self.replica.running:
            n += max(len(r.slots), r.fanout)
        return n

    def _continue_prefills(self, plan: StepPlan, budget: int, now_s: float) -> int:
        """Schedule the next chunks of admitted, partially computed prompts (FCFS)."""
        rep = self.replica
        for req in rep.running:
            if budget <= 0:
                break
            if req.phase != PREFILL:
                continue
            new = min(req.remaining_prefill_tokens, budget)
            if new <= 0:
                continue
            if not rep.grow_prefill(req, new, now_s):
                continue
            plan.prefill.append(PrefillChunk(req=req, new_tokens=new, ctx_tokens=req.computed_tokens))
            budget -= new
        return budget

    def _admit_waiting(
        self,
        plan: StepPlan,
        budget: int,
        now_s: float,
        *,
        order: list[ReqState] | None = None,
        chunked: bool = True,
    ) -> int:
        """Admit queued requests while seats, token budget and memory allow.

        Admission stops at the first request that does not fit (FCFS: no overtaking), as
        vLLM's scheduler does. With ``chunked=False`` a prompt must fit the remaining budget
        whole, except that a prompt longer than the whole budget is chunked when it is the
        step's first (otherwise it could never run).
        """
        rep = self.replica
        if not rep.waiting:
            return budget
        queue = order if order is not None else list(rep.waiting)
        seats = self.max_num_seqs - self._num_running_seqs()
        for req in queue:
            if budget <= 0 or seats < req.fanout:
                break
            if not chunked:
                need = rep.estimate_new_tokens(req)
                if need > budget and (plan.prefill or budget < self.max_num_batched_tokens):
                    break
            if not rep.admit(req, now_s):
                break
            new = min(req.remaining_prefill_tokens, budget)
            if not rep.grow_prefill(req, new, now_s):
                rep.abort_admission(req, now_s)
                break
            plan.prefill.append(PrefillChunk(req=req, new_tokens=new, ctx_tokens=req.computed_tokens))
            budget -= new
            seats -= req.fanout
        return budget

    def _decode_with_preemption(self, plan: StepPlan, now_s: float) -> None:
        """Give every decoding sequence one more slot, preempting the newest requests if needed."""
        rep = self.replica
        while True:
            slots = rep.decode_slots()
            if len(slots) == 0:
                plan.decode_slots = slots
                return
            if rep.grow_decode(slots, now_s):
                plan.decode_slots = slots
                return
            victim = self._pick_victim()
            if victim is None:
                plan.decode_slots = np.empty(0, np.int64)
                return
            plan.swap_bytes += rep.preempt(victim, now_s, mode=self.preemption)
            plan.num_preemptions += 1

    def _decode_then_prefill(self, now_s: float, *, budget_tokens: int, chunked: bool) -> StepPlan:
        """A mixed step: every decode gets its token first, then prompts fill the budget.

        Shared by Orca (whole prompts, ``max_num_batched_tokens``) and Sarathi-Serve (chunks,
        ``chunk_size_tokens``); decodes never pause for a prefill.
        """
        plan = StepPlan()
        self._swap_in(plan, now_s)
        self._decode_with_preemption(plan, now_s)
        budget = self._continue_prefills(plan, budget_tokens - len(plan.decode_slots), now_s)
        if not self.replica.swapped:
            self._admit_waiting(plan, budget, now_s, chunked=chunked)
        return plan

    def _pick_victim(self) -> ReqState | None:
        """The latest-arrived running request (vLLM's recompute/swap victim)."""
        candidates = [r for r in self.replica.running if r.phase in (DECODE, PREFILL)]
        if not candidates:
            return None
        return max(candidates, key=lambda r: r.order)

    def _swap_in(self, plan: StepPlan, now_s: float) -> bool:
        """Bring swapped requests back (oldest first) while memory allows.

        Returns True if requests remain swapped (then no new prefill is admitted, as vLLM).
        """
        rep = self.replica
        while rep.swapped:
            req = rep.swapped[0]
            moved = rep.swap_in(req, now_s)
            if moved is None:
                return True
            plan.swap_bytes += moved
        return False
