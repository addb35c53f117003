"""The plain reference replica (``engine.loop: reference``): one step at a time, nothing clever.

This is the replica as a newcomer would write it, and the yardstick the compiled loop
(:mod:`simulator.compiled`) is checked against (``tests/engine/test_reference.py``): it must
produce *identical* request and step frames. ``engine.loop: python`` is an alias of this loop. It runs every scheduler (``static``, ``orca``, ``vllm``, ``sarathi``,
``sglang``; the policies in :mod:`simulator.scheduling` are shared, so a new policy written
there runs here first), every KV manager (contiguous, paged, radix), recompute and swap
preemption, fan-out (parallel sampling, beam search; forked prompts with ``kv_sharing``) and
dependent requests (the cluster releases them through ``on_finish``).

Its loop, as a SimPy process::

    while True:
        nothing queued or running?  -> wait for an arrival
        plan = scheduler.schedule(t)      # admits / preempts through the methods below
        d = cost.step_time_s(plan inputs) + swap time
        wait d; commit(plan)              # tokens, first tokens, finishes; one step row

No step is skipped, memoised or vectorised: every step calls the cost model's reference
``step_time_s`` and every step row reads the KV manager's ``stats``. Times come from the
replica's own clock ``t`` (``t_next = t + d``), exactly as in the compiled loop, so the
floats agree bit for bit.

Per-sequence state lives in small numpy arrays indexed by the KV manager's sequence ids
("slots"), because the schedulers and the managers speak in slot arrays; a request's slots
are in ``ReqState.slots``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import simpy

from servesim.simulator.errors import InvariantError
from servesim.simulator.request import DECODE, DONE, PREFILL, SWAPPED, WAITING, ReqState
from servesim.simulator.results import _ITL_NUM_BINS, itl_bin
from servesim.simulator.steprows import cost_split_into

if TYPE_CHECKING:
    from servesim.simulator.memory.base import KVCacheManager
    from servesim.simulator.results import Recorder
    from servesim.simulator.scheduling.base import StepPlan


class ReferenceReplica:
    """One model instance, stepped one step at a time.

    Args:
        env: the SimPy environment.
        replica_id: index in the cluster.
        kv: the KV-cache manager.
        cost: the step-cost model (``step_time_s`` is called for every step).
        scheduler_factory: builds the scheduler given this replica.
        recorder: where request and step events go.
        max_seqs: sequence slots of the KV manager.
        kv_bytes_per_token_per_gpu: for swap traffic.
        pcie_bw_bytes_per_s: host link, one direction (swap in/out).
        swap_space_bytes: host memory for swapped KV, per GPU.
        kv_sharing: fan-out sequences share the prompt's KV through ``fork``.
        static_batching: finished requests stay in the batch until all are done.
        on_finish: called with (request index, finish time) for dependent requests.
        fast_forward: accepted for older callers and ignored.
    """

    def __init__(
        self,
        env: simpy.Environment,
        *,
        replica_id: int,
        kv: KVCacheManager,
        cost: Any,
        scheduler_factory: Callable[[Any], Any],
        recorder: Recorder,
        max_seqs: int,
        kv_bytes_per_token_per_gpu: float,
        pcie_bw_bytes_per_s: float,
        swap_space_bytes: float,
        kv_sharing: bool = True,
        static_batching: bool = False,
        on_finish: Callable[[int, float], None] | None = None,
        fast_forward: bool = False,
    ) -> None:
        self.env = env
        self.replica_id = replica_id
        self.kv = kv
        self.cost = cost
        self.recorder = recorder
        # A contiguous cache cannot share blocks: every sequence holds its own copy.
        self.kv_sharing = kv_sharing and kv.kind != "contiguous"
        self.static_batching = static_batching
        self.on_finish = on_finish
        self.kv_bytes_per_token_per_gpu = kv_bytes_per_token_per_gpu
        self.pcie_bw_bytes_per_s = pcie_bw_bytes_per_s
        self.swap_space_bytes = swap_space_bytes
        self.swap_used_bytes = 0.0

        self.waiting: deque[ReqState] = deque()  # FCFS; preempted requests go back in front
        self.running: list[ReqState] = []
        self.swapped: deque[ReqState] = deque()
        self._swapped_num_slots: dict[int, int] = {}  # request index -> sequences swapped out
        # Free sequence ids, taken from the end (so slot 0 first).
        self._free_slots = list(range(max_seqs - 1, -1, -1))
        self.ctx_tokens = np.zeros(max_seqs, np.int64)  # tokens in KV per sequence
        self.gen_tokens = np.zeros(max_seqs, np.int64)  # tokens generated per sequence
        self.target_tokens = np.zeros(max_seqs, np.int64)  # tokens each sequence generates
        self.last_token_s = np.zeros(max_seqs, np.float64)  # when it last emitted a token
        self.slot_owner: list[ReqState | None] = [None] * max_seqs
        # Inter-token gaps: a histogram and sums, added gap by gap in step and sequence order
        # (as the kernel does); handed to the recorder once, by drain_into.
        self.itl_counts = np.zeros(_ITL_NUM_BINS, np.int64)
        self.itl_sum_s = 0.0
        self.itl_sumsq_s2 = 0.0
        self.itl_n = 0

        self.t = 0.0  # end of the last step: the replica's clock
        self.num_steps = 0
        self._idle: simpy.Event | None = None
        self.scheduler = scheduler_factory(self)
        recorder.cost_models[replica_id] = cost
        # Step rows go into the same chunk of columns the compiled loop fills; their split
        # by bound is costed a chunk at a time when the chunk is handed over.
        self.rows = recorder.step_rows(
            replica_id, on_retire=lambda sf, si, sq, ss, n: cost_split_into(cost, sf, si, sq, ss, n))
        self.process = env.process(self._run())

    # ================================================================ what the router reads
    @property
    def num_outstanding(self) -> int:
        """Requests queued, running or swapped out here."""
        return len(self.waiting) + len(self.running) + len(self.swapped)

    def kv_load_frac(self, now_s: float) -> float:
        """KV tokens held by running sequences over the capacity."""
        used = sum(int(self.ctx_tokens[s]) for r in self.running for s in r.slots)
        return used / max(self.kv.capacity_tokens, 1)

    def match_prefix_tokens(self, req: ReqState) -> int:
        """Prompt tokens of ``req`` cached here now (managers that cache prefixes)."""
        if req.block_ids is None or not self.kv.caches_prefixes:
            return 0
        return self.kv.match_prefix(req.block_ids, req.block_tokens, req.prompt_tokens)

    def enqueue(self, req: ReqState, now_s: float) -> None:
        """A routed request arrives: queue it and wake the replica if it sleeps."""
        self.waiting.append(req)
        if self._idle is not None and not self._idle.triggered:
            self._idle.succeed(now_s)

    # ================================================================ what the scheduler calls
    def decode_slots(self) -> npt.NDArray[np.int64]:
        """Sequences generating tokens, in running order."""
        return np.asarray([s for r in self.running if r.phase == DECODE for s in r.slots], dtype=np.int64)

    def has_pending_prefill(self) -> bool:
        return any(r.phase == PREFILL for r in self.running)

    def estimate_new_tokens(self, req: ReqState) -> int:
        """Prompt tokens ``req`` would compute if admitted now."""
        return req.prefill_target_tokens - self.match_prefix_tokens(req)

    def admit(self, req: ReqState, now_s: float) -> bool:
        """Register ``req``'s sequences with the KV manager (nothing grown yet); False = no room.

        A fan-out group sharing its prompt takes one sequence now and forks the others when
        its prompt is in; otherwise every sequence is admitted (and computes the prompt).
        """
        n = 1 if (self.kv_sharing and req.fanout > 1) else req.fanout
        if len(self._free_slots) < n:
            return False
        counters = self.kv.prefix_counters()
        taken: list[int] = []
        cached: int | None = None
        for i in range(n):
            slot = self._free_slots.pop()
            got = self.kv.admit(
                slot,
                prompt_tokens=req.prefill_target_tokens,
                final_tokens=req.final_tokens,
                block_ids=req.block_ids if i == 0 else None,
                block_tokens=req.block_tokens,
                now_s=now_s,
            )
            if got is None:  # undo everything, including the prefix lookup's counters
                self._free_slots.append(slot)
                for s in reversed(taken):
                    self.kv.free(s, now_s=now_s, finished=False)
                    self._free_slots.append(s)
                self.kv.restore_prefix_counters(counters)
                return False
            taken.append(slot)
            if cached is None:
                cached = got
        req.slots = taken
        req.computed_tokens = int(cached or 0)
        if req.phase == WAITING and req.num_preemptions == 0 and not req.first_token_done:
            req.cached_tokens = req.computed_tokens
            self.recorder.first_scheduled(req.idx, now_s, req.cached_tokens)
        for s in taken:
            self._bind(s, req, ctx=req.computed_tokens)
        req.phase = PREFILL
        self.waiting.remove(req)
        self.running.append(req)
        return True

    def abort_admission(self, req: ReqState, now_s: float) -> None:
        """Undo :meth:`admit` (its first chunk did not fit): back to the queue's head."""
        self._release(req, now_s, finished=False)
        req.phase = WAITING
        req.computed_tokens = 0
        self.running.remove(req)
        self.waiting.appendleft(req)

    def grow_prefill(self, req: ReqState, new_tokens: int, now_s: float) -> bool:
        """Room for ``new_tokens`` more prompt tokens in each of ``req``'s sequences."""
        slots = np.array(req.slots, dtype=np.int64)
        totals = np.full(len(slots), req.computed_tokens + new_tokens, dtype=np.int64)
        ok = self.kv.grow(slots, totals, now_s=now_s)
        if ok and self.kv.caches_when_scheduled and req.block_ids is not None:
            # vLLM v1 prefix caching caches a chunk's blocks when it schedules it (#16).
            self.kv.cache_computed(int(slots[0]), now_s=now_s, block_ids=req.block_ids,
                                   block_tokens=req.block_tokens, total_tokens=int(totals[0]))
        return ok

    def grow_decode(self, slots: npt.NDArray[np.int64], now_s: float) -> bool:
        """Room for one more token in each of ``slots`` (all or nothing)."""
        return self.kv.grow(slots, self.ctx_tokens[slots] + 1, now_s=now_s)

    def preempt(self, req: ReqState, now_s: float, *, mode: str) -> float:
        """Preempt ``req`` by swapping its KV out (``mode='swap'``, when host memory allows)
        or by dropping it for recomputation; returns the bytes swapped out."""
        if req.slots:
            req.generated_tokens = int(self.gen_tokens[req.slots[0]])
        if req.phase == DECODE:  # (a recompute's prefill emitted nothing since)
            req.last_token_s = float(self.last_token_s[req.slots[0]])
        req.num_preemptions += 1
        self.recorder.preempted(req.idx)
        self.running.remove(req)
        # Groups sharing their prompt's blocks are recomputed (shared blocks are not swapped).
        if mode == "swap" and req.phase == DECODE and not (self.kv_sharing and req.fanout > 1):
            swap_bytes = int(self.ctx_tokens[req.slots].sum()) * self.kv_bytes_per_token_per_gpu
            if self.swap_used_bytes + swap_bytes <= self.swap_space_bytes:
                req.swapped_tokens = int(self.ctx_tokens[req.slots[0]])
                self._swapped_num_slots[req.idx] = len(req.slots)
                self._release(req, now_s, finished=False)
                self.swap_used_bytes += swap_bytes
                req.phase = SWAPPED
                self.swapped.append(req)
                return swap_bytes
        # Recompute: the prompt and the tokens generated so far are one prefill again, which
        # samples the next token.
        self._release(req, now_s, finished=False)
        req.phase = WAITING
        req.prefill_target_tokens = req.prompt_tokens + max(req.generated_tokens - 1, 0)
        req.computed_tokens = 0
        self.waiting.appendleft(req)
        return 0.0

    def swap_in(self, req: ReqState, now_s: float) -> float | None:
        """Bring the oldest swapped request back; the bytes moved, or None if KV lacks room."""
        n = self._swapped_num_slots.get(req.idx, 1)
        tokens = req.swapped_tokens
        if len(self._free_slots) < n:
            return None
        counters = self.kv.prefix_counters()  # restoring KV is no prefix lookup
        taken: list[int] = []
        ok = True
        for _ in range(n):
            slot = self._free_slots.pop()
            if self.kv.admit(slot, prompt_tokens=tokens, final_tokens=req.final_tokens, now_s=now_s) is None:
                self._free_slots.append(slot)
                ok = False
                break
            taken.append(slot)
        if ok:
            ok = self.kv.grow(np.asarray(taken, dtype=np.int64), np.full(n, tokens, np.int64), now_s=now_s)
        self.kv.restore_prefix_counters(counters)
        if not ok:
            for s in reversed(taken):
                self.kv.free(s, now_s=now_s, finished=False)
                self._free_slots.append(s)
            return None
        del self._swapped_num_slots[req.idx]
        req.slots = taken
        for s in taken:
            self._bind(s, req, ctx=tokens)
            self.last_token_s[s] = req.last_token_s  # its next token's gap spans the swap
        moved = tokens * n * self.kv_bytes_per_token_per_gpu
        self.swap_used_bytes -= moved
        self.swapped.popleft()
        req.phase = DECODE
        self.running.append(req)
        return moved

    # ================================================================ slots
    def _bind(self, slot: int, req: ReqState, *, ctx: int) -> None:
        self.ctx_tokens[slot] = ctx
        self.gen_tokens[slot] = req.generated_tokens
        self.target_tokens[slot] = req.output_tokens
        self.slot_owner[slot] = req

    def _release(self, req: ReqState, now_s: float, *, finished: bool) -> None:
        """Free ``req``'s sequences in the KV manager (finished: its prefix may stay cached)."""
        for i, s in enumerate(req.slots):
            self.kv.free(
                s,
                now_s=now_s,
                finished=finished,
                block_ids=req.block_ids if i == 0 else None,
                block_tokens=req.block_tokens,
                total_tokens=int(self.ctx_tokens[s]),
            )
            self.slot_owner[s] = None
            self._free_slots.append(s)
        req.slots = []

    # ================================================================ the loop
    def _wait_for_arrival(self):
        self._idle = self.env.event()
        woke = yield self._idle
        self._idle = None
        self.t = max(self.t, float(woke))

    def _run(self):
        while True:
            if not self.waiting and not self.running and not self.swapped:
                yield from self._wait_for_arrival()
                continue
            plan = self.scheduler.schedule(self.t)
            if plan.is_empty:
                if self.running or self.swapped:
                    raise InvariantError(f"replica {self.replica_id}: empty step with requests running")
                # Queued requests that cannot be admitted into an empty replica.
                yield from self._wait_for_arrival()
                continue
            yield from self._step(plan)

    def _step(self, plan: StepPlan):
        # The cost model's inputs: prefill chunks (new tokens after ctx tokens in KV) and
        # decoding sequences (one token each over their context).
        prefill_tokens, attn_pairs, kv_tokens, sampling = 0, 0.0, 0, 0
        for ch in plan.prefill:
            prefill_tokens += ch.new_tokens
            attn_pairs += ch.new_tokens * (ch.ctx_tokens + (ch.new_tokens + 1) / 2.0)
            kv_tokens += ch.ctx_tokens + ch.new_tokens
            if ch.completes:
                sampling += ch.req.fanout
        prefill_tokens += plan.padding_prefill_tokens
        dec = plan.decode_slots
        num_decode = len(dec) + plan.padding_seqs
        decode_ctx = (int(self.ctx_tokens[dec].sum()) if len(dec) else 0) + plan.padding_ctx_tokens
        if plan.prefill or prefill_tokens:
            d = self.cost.step_time_s(
                prefill_tokens=prefill_tokens, prefill_attn_pairs=attn_pairs, prefill_kv_tokens=kv_tokens,
                num_prefill_seqs=sampling, num_decode_seqs=num_decode, decode_ctx_tokens=decode_ctx,
            )
        else:
            d = self.cost.step_time_s(num_decode_seqs=num_decode, decode_ctx_tokens=decode_ctx)
        swap_s = plan.swap_bytes / self.pcie_bw_bytes_per_s if plan.swap_bytes else 0.0
        d = d + swap_s
        start = self.t
        end = start + d
        yield self.env.timeout(max(end - self.env.now, 0.0))
        self.t = end
        self._commit_prefill(plan, end)
        if len(dec):
            self._commit_decode(dec, end)
        self.num_steps += 1
        self.rows.append(
            t_s=start,
            duration_s=d,
            num_running=len(dec) + sum(len(ch.req.slots) for ch in plan.prefill),
            num_prefill_seqs=len(plan.prefill),
            prefill_tokens=prefill_tokens,
            decode_tokens=len(dec),
            queue_len=len(self.waiting) + len(self.swapped),
            num_preemptions=plan.num_preemptions,
            inputs=(prefill_tokens, attn_pairs, kv_tokens, sampling, num_decode, decode_ctx),
            swap_s=swap_s,
            mem=self._mem_stats(),
        )
        if self.static_batching:
            self._end_static_batch_if_done(end)

    def _commit_prefill(self, plan: StepPlan, end_s: float) -> None:
        """Prompt chunks are in; a completed prompt samples a token (and forks its group)."""
        for ch in plan.prefill:
            req = ch.req
            req.computed_tokens += ch.new_tokens
            for s in req.slots:
                self.ctx_tokens[s] = req.computed_tokens
            self._cache_computed(req, req.slots[0], end_s)
            if req.computed_tokens < req.prefill_target_tokens:
                continue
            req.generated_tokens += 1
            recomputed = req.first_token_done
            if not req.first_token_done:
                req.first_token_done = True
                self.recorder.first_token(req.idx, end_s)
            if self.kv_sharing and req.fanout > 1 and len(req.slots) == 1:
                parent = req.slots[0]
                for _ in range(req.fanout - 1):
                    child = self._free_slots.pop()
                    if not self.kv.fork(parent, child, now_s=end_s):
                        raise InvariantError("fork failed on a sharing KV manager")
                    req.slots.append(child)
                    self._bind(child, req, ctx=int(self.ctx_tokens[parent]))
            for s in req.slots:
                if recomputed:  # a recompute's prefill emits each sequence's next token
                    self._itl(end_s - req.last_token_s)
                self.gen_tokens[s] = req.generated_tokens
                self.last_token_s[s] = end_s
            req.phase = DECODE
            if req.generated_tokens >= req.output_tokens:
                self._finish(req, end_s)

    def _commit_decode(self, slots: npt.NDArray[np.int64], end_s: float) -> None:
        """Every decoding sequence emitted a token; finished requests leave in arrival order."""
        for gap in (end_s - self.last_token_s[slots]).tolist():
            self._itl(gap)
        self.ctx_tokens[slots] += 1
        block = self.kv.block_size_tokens if self.kv.caches_prefixes else 0
        for s in slots.tolist():
            owner = self.slot_owner[s]
            if block and self.ctx_tokens[s] % block == 0 and owner is not None and owner.slots[0] == s:
                self._cache_computed(owner, s, end_s)  # this token filled a page
        self.gen_tokens[slots] += 1
        self.last_token_s[slots] = end_s
        finished: list[ReqState] = []
        for s in slots.tolist():
            owner = self.slot_owner[s]
            done = self.gen_tokens[s] >= self.target_tokens[s]
            if done and owner is not None and owner.phase == DECODE and owner not in finished:
                finished.append(owner)
        for req in sorted(finished, key=lambda r: r.order):
            req.generated_tokens = int(self.gen_tokens[req.slots[0]])
            self._finish(req, end_s)

    def _itl(self, gap_s: float) -> None:
        self.itl_counts[itl_bin(gap_s)] += 1
        self.itl_sum_s += gap_s
        self.itl_sumsq_s2 += gap_s * gap_s
        self.itl_n += 1

    def drain_into(self, recorder: Recorder) -> None:
        """Hand the inter-token gaps to the recorder (once, at the end of the run)."""
        recorder.add_itl(self.itl_counts, self.itl_sum_s, self.itl_sumsq_s2, self.itl_n)

    def _cache_computed(self, req: ReqState, slot: int, now_s: float) -> None:
        """Managers that cache prefixes make ``slot``'s full computed pages shareable now."""
        if self.kv.caches_prefixes and req.block_ids is not None:
            self.kv.cache_computed(slot, now_s=now_s, block_ids=req.block_ids, block_tokens=req.block_tokens,
                                   total_tokens=int(self.ctx_tokens[slot]))

    def _finish(self, req: ReqState, end_s: float) -> None:
        if self.static_batching:  # stays in the batch (as padding) until the batch ends
            req.phase = DONE
            return
        self._release(req, end_s, finished=True)
        req.phase = DONE
        self.running.remove(req)
        self.recorder.finished(req.idx, end_s, self.replica_id)
        if self.on_finish is not None:
            self.on_finish(req.idx, end_s)

    def end_static_batch(self, now_s: float) -> None:
        """Static batching: the scheduler ends a batch whose generating members were preempted."""
        self._end_static_batch_if_done(now_s)

    def _end_static_batch_if_done(self, end_s: float) -> None:
        """Static batching: when every request of the batch is done, all of them return."""
        if not self.running or any(r.phase != DONE for r in self.running):
            return
        batch = sorted(self.running, key=lambda r: r.order)
        for req in batch:
            self._release(req, end_s, finished=True)
            self.recorder.finished(req.idx, end_s, self.replica_id)
        self.running = []
        if self.on_finish is not None:
            for req in batch:
                self.on_finish(req.idx, end_s)

    def _mem_stats(self) -> Any:
        """The KV split after the step; the queue head's reservation counts as pending."""
        pending = 0
        if self.waiting:
            head = self.waiting[0]
            pending = self.kv.reservation_slots(head.prefill_target_tokens, head.final_tokens)
        return self.kv.stats(min_pending_slots=pending)


__all__ = ["ReferenceReplica"]
