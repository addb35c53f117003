"""A serving replica as a SimPy process: admit, schedule, run one step, update KV, emit tokens.

One replica is one model instance on ``tp x pp`` GPUs. Its loop::

    idle? -> wait for an arrival
    plan = scheduler.schedule(t)          # admits / preempts; memory for the plan is obtained
    d = step_cost(plan)                   # seconds, split by bound
    yield timeout(d); commit(plan)        # tokens, first tokens, finishes, KV counters

Per-token work never becomes a SimPy event. When the plan is decode-only and nothing can be
admitted before the next arrival or finish (``plan.stretchable``), the replica fast-forwards:
it computes the whole stretch of identical decode steps with numpy (their costs, times,
memory growth), waits once, and commits them together. An arrival routed here mid-stretch
interrupts it; the steps that had started by then complete and the rest are re-planned, so
per-request timings are exactly those of stepping one at a time (``tests/engine``).

Times come from the replica's own accumulator ``t`` (``t_next = t + d``, the same additions
in both modes), not from ``env.now``, so fast-forwarding cannot change a float.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import simpy

from simulator.errors import InvariantError
from simulator.request import DECODE, DONE, PREFILL, SWAPPED, WAITING, ReqState
from simulator.scheduling.base import StepPlan

if TYPE_CHECKING:
    from simulator.memory.base import KVCacheManager
    from simulator.results import Recorder

#: Longest stretch computed in one go (bounds the arrays; a longer run is several stretches).
MAX_STRETCH_STEPS = 4096


class Replica:
    """One model instance: a KV-cache manager, a scheduler and a step-cost model.

    Args:
        env: the SimPy environment.
        replica_id: index in the cluster.
        kv: the KV-cache manager (capacity already derived from the memory budget).
        cost: a step-cost model with ``cost(...)`` (vectorised) returning time and its split.
        scheduler_factory: builds the scheduler given this replica.
        recorder: where request and step events go.
        kv_bytes_per_token_per_gpu: for swap traffic.
        pcie_bw_bytes_per_s: host link, one direction (swap in/out).
        swap_space_bytes: host memory for swapped KV, per GPU.
        fast_forward: allow decode stretches.
        kv_sharing: fan-out sequences share the prompt's KV through ``fork``.
        static_batching: finished requests stay in the batch until all are done.
        on_finish: called with (request index, finish time) for closed-loop arrivals.
    """

    def __init__(
        self,
        env: simpy.Environment,
        *,
        replica_id: int,
        kv: KVCacheManager,
        cost: Any,
        scheduler_factory: Callable[[Replica], Any],
        recorder: Recorder,
        max_seqs: int,
        kv_bytes_per_token_per_gpu: float,
        pcie_bw_bytes_per_s: float,
        swap_space_bytes: float,
        fast_forward: bool = True,
        kv_sharing: bool = True,
        static_batching: bool = False,
        on_finish: Callable[[int, float], None] | None = None,
    ) -> None:
        self.env = env
        self.replica_id = replica_id
        self.kv = kv
        self.cost = cost
        self.recorder = recorder
        self.fast_forward = fast_forward
        self.kv_sharing = kv_sharing and kv.kind != "contiguous"
        self.static_batching = static_batching
        self.on_finish = on_finish
        self.kv_bytes_per_token_per_gpu = kv_bytes_per_token_per_gpu
        self.pcie_bw_bytes_per_s = pcie_bw_bytes_per_s
        self.swap_space_bytes = swap_space_bytes
        self.swap_used_bytes = 0.0
        self.max_seqs = max_seqs

        self.waiting: deque[ReqState] = deque()
        self.running: list[ReqState] = []
        self.swapped: deque[ReqState] = deque()
        self._free_slots = list(range(max_seqs - 1, -1, -1))
        self.ctx_tokens = np.zeros(max_seqs, np.int64)
        self.gen_tokens = np.zeros(max_seqs, np.int64)
        self.target_tokens = np.zeros(max_seqs, np.int64)
        self.last_token_s = np.zeros(max_seqs, np.float64)
        self.slot_owner: list[ReqState | None] = [None] * max_seqs
        self._decode_cache: npt.NDArray[np.int64] | None = None

        self.t = 0.0  # end of the last step: the replica's exact clock
        self.num_steps = 0
        self._idle: simpy.Event | None = None
        self._in_stretch = False
        self._stretch_starts: npt.NDArray[np.float64] | None = None
        self._stretch_base_tokens = 0
        self._stretch_rate = 0
        self._interrupt_s = math.inf
        self._swapped_slots_count: dict[int, int] = {}
        self._arrival_hint: Callable[[], float] | None = None
        self.scheduler = scheduler_factory(self)
        recorder.cost_models[replica_id] = cost
        self.process = env.process(self._run())

    # ================================================================ router-facing state
    @property
    def num_outstanding(self) -> int:
        """Requests queued or running here (the least-outstanding router's load)."""
        return len(self.waiting) + len(self.running) + len(self.swapped)

    def kv_load_frac(self, now_s: float) -> float:
        """KV tokens held / capacity at ``now_s`` (exact mid-stretch, as if stepping)."""
        used = int(self.ctx_tokens[self._live_slots()].sum()) if self.running else 0
        if self._in_stretch and self._stretch_starts is not None:
            done = int(np.searchsorted(self._stretch_starts[1:], now_s, side="right"))
            used = self._stretch_base_tokens + self._stretch_rate * done
        return used / max(self.kv.capacity_tokens, 1)

    def match_prefix_tokens(self, req: ReqState) -> int:
        """Prompt tokens of ``req`` cached here now (prefix-affinity routing, SGLang order)."""
        if req.block_ids is None or self.kv.kind != "radix":
            return 0
        return self.kv.match_prefix(req.block_ids, req.block_tokens, req.prompt_tokens)

    def enqueue(self, req: ReqState, now_s: float) -> None:
        """A routed request arrives: queue it and wake or interrupt the replica."""
        self.waiting.append(req)
        if self._idle is not None and not self._idle.triggered:
            self._idle.succeed(now_s)
        elif (
            self._in_stretch
            and now_s < self._interrupt_s
            and self._stretch_starts is not None
            and now_s <= self._stretch_starts[-1]
        ):
            # Only an arrival before the stretch's last step starts can shorten it.
            self._interrupt_s = now_s
            self.process.interrupt(now_s)

    # ================================================================ scheduler-facing API
    def _live_slots(self) -> list[int]:
        return [s for r in self.running for s in r.slots]

    def decode_slots(self) -> npt.NDArray[np.int64]:
        """Slots of sequences generating tokens (cached until a phase changes)."""
        if self._decode_cache is None:
            slots = [s for r in self.running if r.phase == DECODE for s in r.slots]
            self._decode_cache = np.asarray(slots, dtype=np.int64)
        return self._decode_cache

    def _dirty(self) -> None:
        self._decode_cache = None

    def has_pending_prefill(self) -> bool:
        return any(r.phase == PREFILL for r in self.running)

    def _slots_for(self, req: ReqState) -> int:
        return 1 if (self.kv_sharing and req.fanout > 1) else req.fanout

    def estimate_new_tokens(self, req: ReqState) -> int:
        """Prompt tokens ``req`` would compute if admitted now."""
        return req.prefill_target_tokens - self.match_prefix_tokens(req)

    def admit(self, req: ReqState, now_s: float) -> bool:
        """Register ``req`` with the KV manager (no slots are grown yet); False = no room."""
        n = self._slots_for(req)
        if len(self._free_slots) < n:
            return False
        taken: list[int] = []
        cached = None
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
            if got is None:
                self._free_slots.append(slot)
                for s in reversed(taken):
                    self.kv.free(s, now_s=now_s, finished=False)
                    self._free_slots.append(s)
                return False
            taken.append(slot)
            cached = got if cached is None else cached
        req.slots = taken
        req.computed_tokens = int(cached or 0)
        if req.phase == WAITING and req.num_preemptions == 0 and not req.first_token_done:
            req.cached_tokens = req.computed_tokens
            self.recorder.first_scheduled(req.idx, now_s, req.cached_tokens)
        for s in taken:
            self.ctx_tokens[s] = req.computed_tokens
            self.target_tokens[s] = req.output_tokens
            self.gen_tokens[s] = req.generated_tokens
            self.slot_owner[s] = req
        req.phase = PREFILL
        self.waiting.remove(req)
        self.running.append(req)
        return True

    def abort_admission(self, req: ReqState, now_s: float) -> None:
        """Undo :meth:`admit` (the first chunk could not be grown)."""
        self._release_slots(req, now_s, finished=False)
        req.phase = WAITING
        req.computed_tokens = 0
        self.running.remove(req)
        self.waiting.appendleft(req)

    def grow_prefill(self, req: ReqState, new_tokens: int, now_s: float) -> bool:
        slots = np.asarray(req.slots, dtype=np.int64)
        totals = np.full(len(slots), req.computed_tokens + new_tokens, dtype=np.int64)
        return self.kv.grow(slots, totals, now_s=now_s)

    def grow_decode(self, slots: npt.NDArray[np.int64], now_s: float) -> bool:
        return self.kv.grow(slots, self.ctx_tokens[slots] + 1, now_s=now_s)

    def _release_slots(self, req: ReqState, now_s: float, *, finished: bool) -> None:
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
        self._dirty()

    def preempt(self, req: ReqState, now_s: float, *, mode: str) -> float:
        """Preempt ``req``; return the bytes swapped out (0 for recompute)."""
        if req.slots:
            req.generated_tokens = int(self.gen_tokens[req.slots[0]])
        req.num_preemptions += 1
        self.recorder.preempted(req.idx)
        self.running.remove(req)
        if mode == "swap" and req.phase == DECODE:
            tokens = int(self.ctx_tokens[req.slots].sum())
            swap_bytes = tokens * self.kv_bytes_per_token_per_gpu
            if self.swap_used_bytes + swap_bytes <= self.swap_space_bytes:
                req.swapped_tokens = int(self.ctx_tokens[req.slots[0]])
                self._swapped_slots_count[req.idx] = len(req.slots)
                self._release_slots(req, now_s, finished=False)
                self.swap_used_bytes += swap_bytes
                req.phase = SWAPPED
                self.swapped.append(req)
                return swap_bytes
        # Recompute: drop the KV; the prompt plus the tokens generated so far are computed
        # again as one prefill (vLLM's RECOMPUTE), which then samples the next token.
        self._release_slots(req, now_s, finished=False)
        req.phase = WAITING
        req.prefill_target_tokens = req.prompt_tokens + max(req.generated_tokens - 1, 0)
        req.computed_tokens = 0
        self.waiting.appendleft(req)
        return 0.0

    def swap_in(self, req: ReqState, now_s: float) -> float | None:
        """Bring a swapped request back; the bytes moved, or None if memory lacks."""
        n = self._swapped_slots_count.get(req.idx, 1)
        tokens = req.swapped_tokens
        if len(self._free_slots) < n:
            return None
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
            arr = np.asarray(taken, dtype=np.int64)
            ok = self.kv.grow(arr, np.full(n, tokens, np.int64), now_s=now_s)
        if not ok:
            for s in reversed(taken):
                self.kv.free(s, now_s=now_s, finished=False)
                self._free_slots.append(s)
            return None
        del self._swapped_slots_count[req.idx]
        req.slots = taken
        for s in taken:
            self.ctx_tokens[s] = tokens
            self.gen_tokens[s] = req.generated_tokens
            self.target_tokens[s] = req.output_tokens
            self.slot_owner[s] = req
        moved = tokens * n * self.kv_bytes_per_token_per_gpu
        self.swap_used_bytes -= moved
        self.swapped.popleft()
        req.phase = DECODE
        self.running.append(req)
        self._dirty()
        return moved

    # ================================================================ the process
    def _run(self):  # noqa: ANN202 - SimPy generator
        env = self.env
        while True:
            if not self.waiting and not self.running and not self.swapped:
                self._idle = env.event()
                woke = yield self._idle
                self._idle = None
                self.t = max(self.t, float(woke))
                continue
            plan = self.scheduler.schedule(self.t)
            if plan.is_empty:
                if self.running or self.swapped:
                    raise InvariantError(
                        f"replica {self.replica_id}: scheduler produced an empty step with "
                        f"{len(self.running)} running and {len(self.swapped)} swapped requests"
                    )
                # Queued requests that cannot be admitted into an idle replica: wait for a change.
                self._idle = env.event()
                woke = yield self._idle
                self._idle = None
                self.t = max(self.t, float(woke))
                continue
            if self.fast_forward and plan.stretchable and not plan.prefill and len(plan.decode_slots):
                yield from self._run_stretch(plan)
            else:
                yield from self._run_step(plan)

    def _step_inputs(self, plan: StepPlan) -> dict[str, Any]:
        prefill_tokens = 0
        attn_pairs = 0.0
        kv_tokens = 0
        sampling = 0
        for ch in plan.prefill:
            new, ctx = ch.new_tokens, ch.ctx_tokens
            prefill_tokens += new
            attn_pairs += new * (ctx + (new + 1) / 2.0)
            kv_tokens += ctx + new
            if ch.completes:
                sampling += ch.req.fanout
        prefill_tokens += plan.padding_prefill_tokens
        d = plan.decode_slots
        return {
            "prefill_tokens": prefill_tokens,
            "prefill_attn_pairs": attn_pairs,
            "prefill_kv_tokens": kv_tokens,
            "num_prefill_seqs": sampling,
            "num_decode_seqs": len(d) + plan.padding_seqs,
            "decode_ctx_tokens": int(self.ctx_tokens[d].sum()) + plan.padding_ctx_tokens,
        }

    def _swap_time_s(self, swap_bytes: float) -> float:
        return swap_bytes / self.pcie_bw_bytes_per_s if swap_bytes else 0.0

    def _run_step(self, plan: StepPlan):  # noqa: ANN202
        inputs = self._step_inputs(plan)
        swap_s = self._swap_time_s(plan.swap_bytes)
        d = self.cost.step_time_s(**inputs) + swap_s
        start = self.t
        end = start + d
        yield self.env.timeout(max(end - self.env.now, 0.0))
        self.t = end
        self._commit_prefill(plan, end)
        n_dec = len(plan.decode_slots)
        if n_dec:
            self._commit_decode(plan.decode_slots, np.asarray([end]), np.asarray([d]))
        self.num_steps += 1
        self.recorder.steps_single(
            replica_id=self.replica_id,
            t_s=start,
            duration_s=d,
            num_running=n_dec + sum(len(ch.req.slots) for ch in plan.prefill),
            num_prefill_seqs=len(plan.prefill),
            prefill_tokens=int(inputs["prefill_tokens"]),
            decode_tokens=n_dec,
            queue_len=len(self.waiting) + len(self.swapped),
            num_preemptions=plan.num_preemptions,
            inputs=inputs,
            swap_s=swap_s,
            mem=self._mem_stats(),
        )
        self._finish_static_batch(end)

    def next_arrival_hint(self) -> float:
        """Earliest known future arrival anywhere (set by the cluster); inf if unknown."""
        hint = self._arrival_hint
        return hint() if hint is not None else math.inf

    def _decode_stretch_times(self, b: int, ctx_sum0: int, n_dec: int, k: int, stop_s: float) -> list[float]:
        """Durations of up to ``k`` decode steps, stopping before a step that would start at
        or after ``stop_s`` (a known arrival or policy clock).

        Each step is timed with the cost model's scalar path - the very call stepping makes -
        so both modes produce the same floats.
        """
        step_time = self.cost.step_time_s
        t = self.t
        out: list[float] = []
        for j in range(k):
            if j > 0 and t >= stop_s:
                break
            d = step_time(num_decode_seqs=b, decode_ctx_tokens=ctx_sum0 + n_dec * j)
            out.append(d)
            t = t + d
        return out

    def _plan_stretch_length(self, plan: StepPlan, ctx0: npt.NDArray[np.int64]) -> int:
        d = plan.decode_slots
        k = int((self.target_tokens[d] - self.gen_tokens[d]).min())
        k = max(1, min(k, MAX_STRETCH_STEPS))
        if k > 1:
            free = self.kv.num_free_slots

            def fits(m: int) -> bool:
                return self.kv.slots_needed(d, ctx0 + m) <= free

            if not fits(k):
                lo, hi = 1, k  # fits(lo) holds (step 0 is already grown), fits(hi) fails
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    if fits(mid):
                        lo = mid
                    else:
                        hi = mid
                k = lo
        return k

    def _run_stretch(self, plan: StepPlan):  # noqa: ANN202
        d = plan.decode_slots
        ctx0 = self.ctx_tokens[d].copy()
        k = self._plan_stretch_length(plan, ctx0)
        b = len(d) + plan.padding_seqs
        ctx_sum0 = int(ctx0.sum()) + plan.padding_ctx_tokens
        stop_s = min(plan.stretch_until_s, self.next_arrival_hint())
        durations = np.asarray(self._decode_stretch_times(b, ctx_sum0, len(d), k, stop_s))
        k = len(durations)
        # Sequential additions, exactly as stepping one at a time would make them.
        ends_all = np.cumsum(np.concatenate(([self.t], durations)))
        starts, ends = ends_all[:-1], ends_all[1:]
        mem_start = self._mem_stats()
        self._in_stretch = True
        self._interrupt_s = math.inf
        self._stretch_starts = starts[:k]
        self._stretch_base_tokens = int(self.ctx_tokens[self._live_slots()].sum())
        self._stretch_rate = len(d)
        target_end = ends[k - 1]
        while True:
            try:
                yield self.env.timeout(max(target_end - self.env.now, 0.0))
                break
            except simpy.Interrupt as irq:
                t_arr = float(irq.cause)
                started = max(1, int(np.searchsorted(starts[:k], t_arr, side="left")))
                if started < k:
                    k = started
                    target_end = ends[k - 1]
                    self._stretch_starts = starts[:k]
        self._in_stretch = False
        self._stretch_starts = None
        self._interrupt_s = math.inf
        if k > 1 and not self.kv.grow(d, ctx0 + k, now_s=float(starts[k - 1])):
            raise InvariantError(f"replica {self.replica_id}: stretch grow of {k} steps failed")
        self.t = float(ends[k - 1])
        self._commit_decode(d, ends[:k], durations[:k])
        self.num_steps += k
        mem_end = self._mem_stats()
        n = len(d)
        self.recorder.steps_many(
            replica_id=self.replica_id,
            t_s=starts[:k],
            duration_s=durations[:k],
            num_running=n,
            decode_tokens=n,
            queue_len=len(self.waiting) + len(self.swapped),
            decode_seqs=b,
            ctx_tokens=ctx_sum0 + n * np.arange(k, dtype=np.float64),
            mem_start=mem_start,
            mem_end=mem_end,
        )
        self._finish_static_batch(self.t)

    # ================================================================ commits
    def _commit_prefill(self, plan: StepPlan, end_s: float) -> None:
        for ch in plan.prefill:
            req = ch.req
            req.computed_tokens += ch.new_tokens
            for s in req.slots:
                self.ctx_tokens[s] = req.computed_tokens
            if req.computed_tokens < req.prefill_target_tokens:
                continue
            # The prompt is in: this step sampled a token (the first, or the next after a
            # recompute).
            req.generated_tokens += 1
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
                    self.slot_owner[child] = req
                    self.ctx_tokens[child] = self.ctx_tokens[parent]
                    self.target_tokens[child] = req.output_tokens
            for s in req.slots:
                self.gen_tokens[s] = req.generated_tokens
                self.last_token_s[s] = end_s
            req.phase = DECODE
            self._dirty()
            if req.generated_tokens >= req.output_tokens:
                self._finish(req, end_s)

    def _commit_decode(
        self,
        slots: npt.NDArray[np.int64],
        ends: npt.NDArray[np.float64],
        durations: npt.NDArray[np.float64],
    ) -> None:
        k = len(ends)
        self.recorder.itl(ends[0] - self.last_token_s[slots], durations[1:], len(slots))
        self.ctx_tokens[slots] += k
        self.gen_tokens[slots] += k
        self.last_token_s[slots] = ends[-1]
        done = slots[self.gen_tokens[slots] >= self.target_tokens[slots]]
        if len(done):
            finished: list[ReqState] = []
            for s in done.tolist():
                owner = self.slot_owner[s]
                if owner is not None and owner.phase == DECODE and owner not in finished:
                    finished.append(owner)
            for req in sorted(finished, key=lambda r: r.order):
                req.generated_tokens = int(self.gen_tokens[req.slots[0]])
                self._finish(req, float(ends[-1]))

    def _finish(self, req: ReqState, end_s: float) -> None:
        if self.static_batching:
            req.phase = DONE
            self._dirty()
            return
        self._release_slots(req, end_s, finished=True)
        req.phase = DONE
        self.running.remove(req)
        self.recorder.finished(req.idx, end_s, self.replica_id)
        if self.on_finish is not None:
            self.on_finish(req.idx, end_s)

    def _finish_static_batch(self, end_s: float) -> None:
        if not self.static_batching or not self.running:
            return
        if all(r.phase == DONE for r in self.running):
            for req in sorted(self.running, key=lambda r: r.order):
                self._release_slots(req, end_s, finished=True)
                self.recorder.finished(req.idx, end_s, self.replica_id)
            done = self.running
            self.running = []
            if self.on_finish is not None:
                for req in sorted(done, key=lambda r: r.order):
                    self.on_finish(req.idx, end_s)

    def _mem_stats(self) -> Any:
        pending = 0
        if self.waiting:
            head = self.waiting[0]
            pending = self.kv.reservation_slots(head.prefill_target_tokens, head.final_tokens)
        return self.kv.stats(min_pending_slots=pending)
