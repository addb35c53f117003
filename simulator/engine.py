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
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import simpy

from servesim.hwmodels.stepkernel import packed_decode_times_s, packed_step_time_s
from servesim.simulator.errors import InvariantError
from servesim.simulator.request import DECODE, DONE, PREFILL, SWAPPED, WAITING, ReqState
from servesim.simulator.scheduling.base import StepPlan

if TYPE_CHECKING:
    from servesim.simulator.memory.base import KVCacheManager
    from servesim.simulator.results import Recorder

#: Longest stretch computed in one go (bounds the arrays; a longer run is several stretches).
MAX_STRETCH_STEPS = 4096
#: Decode step times memoised per cost model, keyed ``(batch << 40) + context tokens``; the
#: memo is cleared when it grows past this many entries (about 12 MB; a miss costs a
#: :class:`DecodeTwin` evaluation, about 1.5 us).
MAX_MEMO_ENTRIES = 1 << 17
_MEMO_CTX_LIMIT = 1 << 40
_min_reduce = np.minimum.reduce
_add_reduce = np.add.reduce


def _order_key(req: ReqState) -> int:
    return req.order

#: Stretches of at least this many steps are costed with the vectorised twin of the cost
#: model's decode step time (shorter ones through the memo, where numpy's per-call cost
#: would dominate).
VECTOR_MIN_STEPS = 24


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
        # During a stretch: its step boundaries [t0, t1, ..., tk] (step j runs from
        # times[j] to times[j + 1]) and how many of its steps still count.
        self._stretch_times: list[float] = []
        self._stretch_k = 0
        self._stretch_rate = 0
        self._interrupt_s = math.inf
        # Decode-only step times depend only on (batch, context tokens): memoised per cost
        # model (replicas of one group share it), the very floats the cost model returns.
        self._step_memo: dict[int, float] = recorder.step_time_memos.setdefault(id(cost), {})
        self._twins: dict[int, DecodeTwin | None] = recorder.decode_twins.setdefault(id(cost), {})
        self._swapped_slots_count: dict[int, int] = {}
        # Paged managers' block size (0: ask the manager for every stretch's memory check).
        self._block_tokens = int(getattr(kv, "block_size_tokens", 0)) if kv.kind in ("paged", "radix") else 0
        # Radix and paged with prefix caching cache full pages as they are computed.
        self._caches_prefixes = bool(kv.caches_prefixes)
        self._caches_when_scheduled = bool(kv.caches_when_scheduled)
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
        if self._in_stretch:
            # The stretch commits at its end: until then ``ctx_tokens`` are its start values,
            # and each step that has ended by ``now_s`` adds one token per sequence.
            done = bisect_right(self._stretch_times, now_s, 1, self._stretch_k)
            used += self._stretch_rate * (done - 1)
        return used / max(self.kv.capacity_tokens, 1)

    def match_prefix_tokens(self, req: ReqState) -> int:
        """Prompt tokens of ``req`` cached here now (prefix-affinity routing, SGLang order)."""
        if req.block_ids is None or not self._caches_prefixes:
            return 0
        return self.kv.match_prefix(req.block_ids, req.block_tokens, req.prompt_tokens)

    def enqueue(self, req: ReqState, now_s: float) -> None:
        """A routed request arrives: queue it and wake or interrupt the replica."""
        self.waiting.append(req)
        if self._idle is not None and not self._idle.triggered:
            self._idle.succeed(now_s)
        elif self._in_stretch and now_s < self._interrupt_s and now_s <= self._stretch_times[self._stretch_k - 1]:
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
        for r in self.running:
            if r.phase == PREFILL:
                return True
        return False

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
        counters = self.kv.prefix_counters()
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
                # An undone admission was no prefix lookup (else retries would count again).
                self.kv.restore_prefix_counters(counters)
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
        slots = req.slots
        totals = np.array([req.computed_tokens + new_tokens] * len(slots), dtype=np.int64)
        ok = self.kv.grow(np.array(slots, dtype=np.int64), totals, now_s=now_s)
        if ok and self._caches_when_scheduled and req.block_ids is not None:
            # vLLM v1 caches the blocks of a chunk when it schedules it (allocate_slots): a
            # request scheduled later in the same step shares them (its attention reads the
            # KV the step writes first).
            self.kv.cache_computed(
                slots[0],
                now_s=now_s,
                block_ids=req.block_ids,
                block_tokens=req.block_tokens,
                total_tokens=int(totals[0]),
            )
        return ok

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
        # A fan-out group sharing its prompt's blocks is preempted by recompute: swapping
        # shared blocks out and back (with their refcounts) is not modelled, and swapping the
        # sequences as separate copies could need more memory than the group ever held.
        if mode == "swap" and req.phase == DECODE and not (self.kv_sharing and req.fanout > 1):
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
        # Swapping in restores KV; it is no prefix lookup.
        counters = self.kv.prefix_counters()
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
        self.kv.restore_prefix_counters(counters)
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
    def _run(self):
        env = self.env
        while True:
            if not self.waiting and not self.running and not self.swapped:
                self._idle = env.event()
                woke = yield self._idle
                self._idle = None
                self.t = max(self.t, float(woke))
                continue
            plan = self.scheduler.schedule(self.t)
            if not plan.prefill and not len(plan.decode_slots):
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

    def _step_inputs(self, plan: StepPlan) -> tuple[int, float, int, int, int, int]:
        """The cost-model arguments of a step, in :meth:`StepCostModel.cost` order."""
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
        ctx_sum = int(self.ctx_tokens[d].sum()) if len(d) else 0
        return (
            prefill_tokens,
            attn_pairs,
            kv_tokens,
            sampling,
            len(d) + plan.padding_seqs,
            ctx_sum + plan.padding_ctx_tokens,
        )

    def _swap_time_s(self, swap_bytes: float) -> float:
        return swap_bytes / self.pcie_bw_bytes_per_s if swap_bytes else 0.0

    def _decode_step_time_s(self, num_decode_seqs: int, decode_ctx_tokens: int) -> float:
        """A decode-only step's time: the cost model's scalar path, memoised on its inputs."""
        if decode_ctx_tokens >= _MEMO_CTX_LIMIT:
            return self.cost.step_time_s(num_decode_seqs=num_decode_seqs, decode_ctx_tokens=decode_ctx_tokens)
        key = (num_decode_seqs << 40) + decode_ctx_tokens
        d = self._step_memo.get(key)
        if d is None:
            twin = self._twin(num_decode_seqs)
            if twin is not None:
                d = twin.at(decode_ctx_tokens)
            else:
                d = self.cost.step_time_s(num_decode_seqs=num_decode_seqs, decode_ctx_tokens=decode_ctx_tokens)
            if len(self._step_memo) >= MAX_MEMO_ENTRIES:
                self._step_memo.clear()
            self._step_memo[key] = d
        return d

    def _run_step(self, plan: StepPlan):
        inputs = self._step_inputs(plan)
        prefill_tokens, _pairs, _kv, _sampling, num_decode_seqs, decode_ctx_tokens = inputs
        swap_s = self._swap_time_s(plan.swap_bytes)
        if plan.prefill or prefill_tokens:
            d = self.cost.step_time_s(
                prefill_tokens=inputs[0],
                prefill_attn_pairs=inputs[1],
                prefill_kv_tokens=inputs[2],
                num_prefill_seqs=inputs[3],
                num_decode_seqs=num_decode_seqs,
                decode_ctx_tokens=decode_ctx_tokens,
            )
        else:
            d = self._decode_step_time_s(num_decode_seqs, decode_ctx_tokens)
        d = d + swap_s
        start = self.t
        end = start + d
        yield self.env.timeout(max(end - self.env.now, 0.0))
        self.t = end
        self._commit_prefill(plan, end)
        n_dec = len(plan.decode_slots)
        if n_dec:
            self._commit_decode(plan.decode_slots, end, end, 1, True)
        self.num_steps += 1
        self.recorder.steps_single(
            replica_id=self.replica_id,
            t_s=start,
            duration_s=d,
            num_running=n_dec + sum(len(ch.req.slots) for ch in plan.prefill),
            num_prefill_seqs=len(plan.prefill),
            prefill_tokens=prefill_tokens,
            decode_tokens=n_dec,
            queue_len=len(self.waiting) + len(self.swapped),
            num_preemptions=plan.num_preemptions,
            inputs=inputs,
            swap_s=swap_s,
            mem=self._mem_stats(),
        )
        if self.static_batching:
            self._finish_static_batch(end)

    def next_arrival_hint(self) -> float:
        """Earliest known future arrival anywhere (set by the cluster); inf if unknown."""
        hint = self._arrival_hint
        return hint() if hint is not None else math.inf

    def _twin(self, b: int) -> DecodeTwin | None:
        """The checked decode twin of the cost model for batch ``b`` (None: scalar path)."""
        twins = self._twins
        if b in twins:
            return twins[b]
        twin = twins[b] = decode_twin(self.cost, b)
        return twin

    def _decode_stretch_times(
        self, b: int, ctx_sum0: int, n_dec: int, k: int, stop_s: float
    ) -> tuple[list[float], list[float]]:
        """Step boundaries ``[t0, t1, ..., tm]`` and durations of up to ``k`` decode steps from
        ``self.t``, stopping before a step that would start at or after ``stop_s`` (a known
        arrival or policy clock); ``times[j + 1] = times[j] + durations[j]``.

        Each step's time is the cost model's scalar ``step_time_s`` (through the memo) or,
        for a long stretch, its vectorised twin (:class:`DecodeTwin`, the same floats); the
        times are the same sequential additions as stepping, so both modes agree bit for bit.
        """
        t = self.t
        if k >= VECTOR_MIN_STEPS and n_dec > 0 and ctx_sum0 + n_dec * k < _MEMO_CTX_LIMIT:
            twin = self._twin(b)
            if twin is not None:
                # Steps before ``stop_s`` at the first step's duration: durations grow with
                # the context, so this is usually enough; chunks are added until it is.
                est = k if stop_s == math.inf else int((stop_s - t) / twin.at(ctx_sum0)) + 2
                if est >= VECTOR_MIN_STEPS:
                    return self._decode_stretch_times_vec(twin, t, ctx_sum0, n_dec, k, stop_s, min(est, k))
        times = [t]
        durations: list[float] = []
        append, append_d = times.append, durations.append
        if ctx_sum0 + n_dec * k >= _MEMO_CTX_LIMIT:
            step_time = self.cost.step_time_s
            for j in range(k):
                if j > 0 and t >= stop_s:
                    break
                d = step_time(num_decode_seqs=b, decode_ctx_tokens=ctx_sum0 + n_dec * j)
                t = t + d
                append(t)
                append_d(d)
            return times, durations
        memo = self._step_memo
        get = memo.get
        twin = self._twin(b)
        if twin is not None:
            at = twin.at
        else:
            step_time = self.cost.step_time_s

            def at(ctx: int) -> float:
                return step_time(num_decode_seqs=b, decode_ctx_tokens=ctx)

        key = (b << 40) + ctx_sum0
        ctx = ctx_sum0
        for j in range(k):
            if j > 0 and t >= stop_s:
                break
            d = get(key)
            if d is None:
                d = at(ctx)
                if len(memo) >= MAX_MEMO_ENTRIES:
                    memo.clear()
                memo[key] = d
            t = t + d
            append(t)
            append_d(d)
            key += n_dec
            ctx += n_dec
        return times, durations

    @staticmethod
    def _decode_stretch_times_vec(
        twin: DecodeTwin, t: float, ctx_sum0: int, n_dec: int, k: int, stop_s: float, chunk: int
    ) -> tuple[list[float], list[float]]:
        """:meth:`_decode_stretch_times` with the twin, ``chunk`` steps at a time."""
        times = [t]
        durations: list[float] = []
        j0 = 0
        while True:
            c = min(chunk, k - j0)
            acc = np.empty(c + 1, np.float64)
            acc[0] = times[-1]
            acc[1:] = twin.many(np.arange(ctx_sum0 + n_dec * j0, ctx_sum0 + n_dec * (j0 + c), n_dec, dtype=np.int64))
            durations.extend(acc[1:].tolist())
            np.add.accumulate(acc, out=acc)  # sequential: acc[j + 1] = acc[j] + d[j]
            times.extend(acc[1:].tolist())
            j0 += c
            # Steps 1.. start at times[1..]: the first starting at or after stop_s is not run.
            hi = min(j0 + 1, k)
            m = bisect_left(times, stop_s, 1, hi)
            if m < hi or j0 >= k:
                break
            chunk *= 2
        if m < j0:
            del times[m + 1 :]
            del durations[m:]
        return times, durations

    def _plan_stretch_length(self, d: npt.NDArray[np.int64], ctx0: npt.NDArray[np.int64], k: int) -> int:
        """Longest stretch of at most ``k`` steps whose KV growth fits the free memory."""
        if k > 1:
            kv = self.kv
            free = kv.num_free_slots
            bs = self._block_tokens
            # Growing each of the n sequences from ctx0 + 1 (step 0 is already grown) to
            # ctx0 + k takes at most ceil((k - 1) / B) new blocks plus one copy-on-write copy:
            # when that fits, so does the exact count (no need to ask the manager).
            if bs and len(d) * (-(-(k - 1) // bs) + 1) * bs <= free:
                return k
            slots_needed = kv.slots_needed
            if slots_needed(d, ctx0 + k) > free:
                lo, hi = 1, k  # fits(lo) holds (step 0 is already grown), fits(hi) fails
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    if slots_needed(d, ctx0 + mid) <= free:
                        lo = mid
                    else:
                        hi = mid
                k = lo
        return k

    def _steps_to_keyed_page(self, d: npt.NDArray[np.int64], ctx0: npt.NDArray[np.int64], k: int) -> int:
        """Cut a stretch so that no page of a request with a prefix identity fills before its
        last step.

        Filling a page is a cache event (:meth:`_cache_computed`, called by
        :meth:`_commit_decode` for every filled page of such a request, generated tokens'
        pages included: the manager refreshes the request's cached path then), committed at
        the step that fills it, exactly as when stepping.
        """
        b = self._block_tokens
        for s, c in zip(d.tolist(), ctx0.tolist(), strict=True):
            owner = self.slot_owner[s]
            if owner is None or owner.block_ids is None or owner.slots[0] != s:
                continue
            end = (c // b + 1) * b  # the next page is full at this context
            if end - c < k:
                k = end - c
        return k

    def _run_stretch(self, plan: StepPlan):
        d = plan.decode_slots
        n = len(d)
        ctx0 = self.ctx_tokens[d]  # copies (fancy indexing)
        rem = self.target_tokens[d]
        rem -= self.gen_tokens[d]  # tokens each sequence still generates
        # Steps until the first sequence finishes.
        k_finish = int(_min_reduce(rem))
        k = k_finish if k_finish < MAX_STRETCH_STEPS else MAX_STRETCH_STEPS
        if k > 1:
            k = self._plan_stretch_length(d, ctx0, k)
            if self._caches_prefixes:
                k = self._steps_to_keyed_page(d, ctx0, k)
        elif k < 1:
            k = 1
        b = n + plan.padding_seqs
        ctx_sum0 = int(_add_reduce(ctx0)) + plan.padding_ctx_tokens
        hint = self._arrival_hint
        stop_s = plan.stretch_until_s
        if hint is not None:
            nxt = hint()
            if nxt < stop_s:
                stop_s = nxt
        times, durations = self._decode_stretch_times(b, ctx_sum0, n, k, stop_s)
        k = len(durations)
        # The memory split after step 0 (already grown); the queue's head, whose reservation
        # the split counts as pending, cannot change before the stretch's last step.
        pending0 = self._pending_slots()
        mems = [self.kv.stats(min_pending_slots=pending0)]
        # Nothing leaves the queue mid-stretch, and an arrival routed here cuts the stretch
        # short unless it comes during its last step: so every row but the last sees the
        # queue as it is now.
        queue_len0 = len(self.waiting) + len(self.swapped)
        self._in_stretch = True
        self._interrupt_s = math.inf
        self._stretch_times = times
        self._stretch_k = k
        self._stretch_rate = n
        env = self.env
        while True:
            try:
                yield env.timeout(max(times[k] - env.now, 0.0))
                break
            except simpy.Interrupt as irq:
                t_arr = float(irq.cause)
                # Steps that had started by the arrival complete; the rest are re-planned.
                started = max(1, bisect_left(times, t_arr, 0, k))
                if started < k:
                    k = started
                    self._stretch_k = k
        self._in_stretch = False
        self._interrupt_s = math.inf
        # Grow the KV step by step, as stepping would at each step's start, and record the
        # exact memory split after each step but the last (taken after the commit below).
        kv = self.kv
        for j in range(1, k):
            if not kv.grow(d, ctx0 + (j + 1), now_s=times[j]):
                raise InvariantError(f"replica {self.replica_id}: stretch grow at step {j} of {k} failed")
            if j < k - 1:
                mems.append(kv.stats(min_pending_slots=pending0))
        ctx0 += k  # the context after the stretch
        end = times[k]
        self.t = end
        self.num_steps += k
        self._commit_decode(d, times[1], end, k, k >= k_finish, ctx0, rem)
        if k < len(durations):
            del durations[k:]
            del times[k:]
        else:
            times.pop()
        self.recorder.steps_many(
            self.replica_id, times, durations, n, queue_len0, len(self.waiting) + len(self.swapped), b,
            ctx_sum0, [*mems[: k - 1], self._mem_stats()],
        )
        if self.static_batching:
            self._finish_static_batch(end)

    # ================================================================ commits
    def _commit_prefill(self, plan: StepPlan, end_s: float) -> None:
        for ch in plan.prefill:
            req = ch.req
            req.computed_tokens += ch.new_tokens
            for s in req.slots:
                self.ctx_tokens[s] = req.computed_tokens
            if self._caches_prefixes and req.block_ids is not None:
                self._cache_computed(req, req.slots[0], end_s)
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
        first_end_s: float,
        end_s: float,
        k: int,
        may_finish: bool,
        new_ctx: npt.NDArray[np.int64] | None = None,
        remaining: npt.NDArray[np.int64] | None = None,
    ) -> None:
        """Commit ``k`` decode steps of ``slots``: the first ends at ``first_end_s``, the last
        at ``end_s``. ``may_finish`` is False when no sequence can reach its target in ``k``
        steps (the check is skipped). ``new_ctx`` (the slots' contexts after the steps) and
        ``remaining`` (their tokens still to generate before the steps) save recomputing
        them when the caller has them."""
        last = self.last_token_s
        # The gap before each sequence's first token of these steps; the later gaps are the
        # steps' durations, which the recorder takes from the stretch's step rows.
        self.recorder.itl(first_end_s - last[slots])
        ctx, gen = self.ctx_tokens, self.gen_tokens
        old_pages = ctx[slots] // self._block_tokens if self._caches_prefixes else None
        if new_ctx is None:
            ctx[slots] += k
        else:
            ctx[slots] = new_ctx
        if old_pages is not None:
            # Decode filled a page: it becomes shareable now (its tokens' KV is written).
            for s in slots[ctx[slots] // self._block_tokens != old_pages].tolist():
                owner = self.slot_owner[s]
                if owner is not None and owner.block_ids is not None and owner.slots[0] == s:
                    self._cache_computed(owner, s, end_s)
        gen[slots] += k
        last[slots] = end_s
        if not may_finish:
            return
        if remaining is None:
            done = slots[gen[slots] >= self.target_tokens[slots]]
        else:
            done = slots[remaining <= k]
        if len(done):
            finished: list[ReqState] = []
            for s in done.tolist():
                owner = self.slot_owner[s]
                if owner is not None and owner.phase == DECODE and owner not in finished:
                    finished.append(owner)
            if len(finished) > 1:
                finished.sort(key=_order_key)
            for req in finished:
                req.generated_tokens = int(gen[req.slots[0]])
                self._finish(req, end_s)

    def _cache_computed(self, req: ReqState, slot: int, now_s: float) -> None:
        """The KV manager caches ``slot``'s computed full pages (one call per event)."""
        self.kv.cache_computed(
            slot,
            now_s=now_s,
            block_ids=req.block_ids,
            block_tokens=req.block_tokens,
            total_tokens=int(self.ctx_tokens[slot]),
        )

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

    def end_static_batch(self, now_s: float) -> None:
        """Static batching: return the batch's requests if all are done (scheduler-facing)."""
        self._finish_static_batch(now_s)

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

    def _pending_slots(self) -> int:
        """Slots the head of the queue would reserve (counted as pending in the split)."""
        if not self.waiting:
            return 0
        head = self.waiting[0]
        return self.kv.reservation_slots(head.prefill_target_tokens, head.final_tokens)

    def _mem_stats(self) -> Any:
        return self.kv.stats(min_pending_slots=self._pending_slots())


# ==================================================================== decode step-time twin
class DecodeTwin:
    """A decode-only step's time for a fixed batch ``b``, for many context sizes at once.

    A thin view of the cost model's packed form (:mod:`hwmodels.stepkernel`): :meth:`at` is
    ``packed_step_time_s`` for one context size, :meth:`many` the same numba function over an
    array. Both are the very floats of ``StepCostModel.step_time_s`` (the same packed form),
    which ``tests/hwmodels/test_stepkernel.py`` pins bit for bit against the reference.
    """

    __slots__ = ("_b", "_cf")

    def __init__(self, cost: Any, b: int) -> None:
        self._cf = cost.packed()
        self._b = float(b)

    def at(self, ctx_tokens: int) -> float:
        """One step's time (Python float)."""
        return packed_step_time_s(self._cf, 0.0, 0.0, 0.0, 0.0, self._b, float(ctx_tokens))

    def many(self, ctx_tokens: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        """Step times for an array of context sizes (the packed form, element by element)."""
        return packed_decode_times_s(self._cf, self._b, np.ascontiguousarray(ctx_tokens, dtype=np.int64))


def decode_twin(cost: Any, b: int) -> DecodeTwin | None:
    """The :class:`DecodeTwin` of ``cost`` for batch ``b``; None for ``b <= 0`` or a cost
    model with an op timer (the cycle model: steps are then costed by ``step_time_s``) or
    without a packed form (a test's hand-written cost model)."""
    if b <= 0 or getattr(cost, "op_timer", None) is not None or not hasattr(cost, "packed"):
        return None
    return DecodeTwin(cost, b)
