"""Python facades of the compiled loop: a replica (state arrays, row chunks) and a cluster
(arrivals as SimPy events, routing, rejections) that drives it."""

from __future__ import annotations

import math
import mmap
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import simpy

from servesim.simulator.cluster import Cluster, _urgent_timeout
from servesim.simulator.compiled import _cost
from servesim.simulator.compiled import _loop as L
from servesim.simulator.errors import InvariantError
from servesim.simulator.request import REJECT_KV, REJECT_MAX_LEN
from servesim.simulator.results import STATUS_COMPLETED, STATUS_REJECTED, Recorder

#: Step rows per chunk: the first chunk of a replica is small (tests, short runs), later
#: ones double up to the cap (about 3 MB each: the steps frame places and frees them one by
#: one, so smaller chunks keep its peak memory closer to the frame alone).
FIRST_CHUNK_ROWS = 1 << 12
MAX_CHUNK_ROWS = 1 << 15


def _mapped_bytes(nbytes: int) -> npt.NDArray[np.uint8]:
    """A zero-filled byte array in its own anonymous memory map.

    NOTE(memory): a row chunk is freed as soon as the steps frame has placed it; glibc keeps
    freed mid-sized blocks in its heap (its mmap threshold rises with each free), so a
    multi-million-step run would keep the chunks' memory next to the frame. A map of its own
    goes back to the system when the last view of it dies.
    """
    return np.frombuffer(mmap.mmap(-1, max(nbytes, 1)), dtype=np.uint8)[:nbytes]


def unsupported_reason(*, policy: str, kv_manager: str, preemption: str, cost_packs: list[Any],
                       workload: Any, prefix_caching: bool = False) -> str | None:
    """Why the compiled loop cannot run this variant, or None when it can.

    NOTE(prefix caching): the compiled loop makes no prefix-cache calls, so paged with
    prefix caching runs there only when the workload carries no prefix block ids (then
    nothing can hit, and the results equal those without prefix caching).
    """
    if policy not in L.POLICIES:
        return f"scheduler.policy is {policy!r} (the compiled loop runs {', '.join(map(repr, L.POLICIES))})"
    if kv_manager != "paged":
        return f"kv_cache.manager is {kv_manager!r} (the compiled loop runs 'paged')"
    if preemption != "recompute":
        return f"scheduler.preemption is {preemption!r} (the compiled loop runs 'recompute')"
    if len(workload):
        if int(np.max(workload.num_samples)) > 1 or int(np.max(workload.beam_width)) > 1:
            return "the workload has parallel sampling or beam search (fan-out)"
        if int(np.max(workload.depends_on)) >= 0:
            return "the workload has dependent requests (closed-loop clients or multi-turn sessions)"
        if prefix_caching and workload.has_prefix_ids:
            return "kv_cache.prefix_caching is on and the workload carries prefix block ids"
    return None


#: Arrivals released per SimPy event when a batch is exact (see ``CompiledCluster.start``).
ARRIVAL_BATCH = 4096
#: Memo rows at first; the memo doubles while it is half full.
FIRST_MEMO_ROWS = 1 << 10
_SPLIT_FIELDS = ("compute_s", "weight_read_s", "kv_read_s", "comm_s", "overhead_s")
_INPUTS = ("prefill_tokens", "prefill_attn_pairs", "prefill_kv_tokens", "num_prefill_seqs", "num_decode_seqs",
           "decode_ctx_tokens")


class CostMemo:
    """The step costs of a model without a packed form (the cycle model), by exact step
    shape, in the flat table the kernel reads (:mod:`simulator.compiled._cost`). Shared by the
    replicas of one cost model; filled through :meth:`fill` when the kernel asks.

    NOTE(batching): a step's time is needed at once, its split by bound only in the step
    row. ``cost(...)`` on arrays (the split's reference) costs about a millisecond a call
    whatever the length, so the splits of the shapes met are costed together by
    :meth:`resolve` (one vectorised call) when the replicas hand their rows over; rows whose
    split was pending (NaN) take it from the memo then (:func:`_cost.patch_split`). The memo
    keeps every shape until then (13 floats each; a cycle-model run meets far fewer shapes
    than it has steps).
    """

    def __init__(self, cost: Any) -> None:
        self.cost = cost
        self.table = _cost.new_table(FIRST_MEMO_ROWS)
        self.num_entries = 0
        self._pending: list[tuple[int, float, int, int, int, int]] = []

    def fill(self, p: int, pairs: float, kv: int, samp: int, ndec: int, ctx: int) -> None:
        """Time one step shape with the model's reference path and store it (its split pending).

        The time is ``step_time_s`` called exactly as the reference replica calls it (integer
        counts, the decode-only form when nothing prefills).
        """
        cost = self.cost
        if p > 0:
            d = cost.step_time_s(prefill_tokens=p, prefill_attn_pairs=pairs, prefill_kv_tokens=kv,
                                 num_prefill_seqs=samp, num_decode_seqs=ndec, decode_ctx_tokens=ctx)
        else:
            d = cost.step_time_s(num_decode_seqs=ndec, decode_ctx_tokens=ctx)
        row = np.full(7, np.nan)
        row[0] = d
        if 2 * (self.num_entries + 1) > len(self.table):
            self._grow()
        _cost.memo_put(self.table, float(p), float(pairs), float(kv), float(samp), float(ndec), float(ctx), row)
        self.num_entries += 1
        self._pending.append((p, pairs, kv, samp, ndec, ctx))

    def resolve(self) -> None:
        """Cost the pending shapes' split by bound: ``cost`` on arrays, as the recorder
        evaluates a run's rows (element by element the same floats)."""
        if not self._pending:
            return
        keys = np.asarray(self._pending, dtype=np.float64)
        self._pending = []
        n = len(keys)
        c = self.cost.cost(**{name: keys[:, j].copy() for j, name in enumerate(_INPUTS)})
        split = np.stack([np.asarray(getattr(c, f), dtype=np.float64) * np.ones(n) for f in _SPLIT_FIELDS], axis=1)
        _cost.memo_set_split(self.table, keys, split)

    def _grow(self) -> None:
        old = self.table
        self.table = _cost.new_table(2 * len(old))
        _cost.rehash(old, self.table)


_NO_PACK = np.zeros(0, dtype=np.float64)
_NO_MEMO = _cost.new_table(1)


class CompiledReplica:
    """One replica whose loop is :func:`simulator.compiled._loop.advance`.

    Offers what the router reads (``replica_id``, ``num_outstanding``, ``kv_load_frac``,
    ``match_prefix_tokens``) and :meth:`enqueue` / :meth:`advance` for the cluster.
    """

    def __init__(
        self,
        *,
        replica_id: int,
        kv: Any,
        cost_pack: npt.NDArray[np.float64] | None,
        cost: Any,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        slots: int,
        policy: str = "vllm",
        chunk_size_tokens: int = 512,
        rq: npt.NDArray[np.int64],
        rqf: npt.NDArray[np.float64],
    ) -> None:
        self.replica_id = replica_id
        self.kv = kv
        self.cost = cost
        # A model without a packed form is costed through a memo (shared with the other
        # replicas of the model by ``CompiledCluster.add_replica``).
        self.cf = _NO_PACK if cost_pack is None else cost_pack
        self.memo: CostMemo | None = CostMemo(cost) if cost_pack is None else None
        self.rq, self.rqf = rq, rqf
        self.kva = kv._arena
        self.slots = slots
        ri = np.zeros(L.ri_words(slots), dtype=np.int64)
        ri[L.H_S] = slots
        ri[L.H_MAX_SEQS] = max_num_seqs
        ri[L.H_MAX_TOKENS] = max_num_batched_tokens
        ri[L.H_POLICY] = L.POLICIES[policy]
        ri[L.H_BUDGET] = chunk_size_tokens if policy == "sarathi" else max_num_batched_tokens
        ri[L.H_IDLE] = 1
        o_free = L.H_HEADER + L.K_FREE * slots
        ri[o_free : o_free + slots] = np.arange(slots - 1, -1, -1)  # slot 0 is taken first
        ri[L.H_FREE_TOP] = slots
        o_owner = L.H_HEADER + L.K_OWNER * slots
        ri[o_owner : o_owner + slots] = -1
        self.ri = ri
        self.rf = np.zeros(L.rf_words(slots), dtype=np.float64)
        self.rf[L.F_LASTGAP] = math.nan
        self.wq = np.zeros(max(64, 4 * slots), dtype=np.int64)
        self._chunks: list[tuple[npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any]]] = []
        self._chunk_rows = FIRST_CHUNK_ROWS
        self._new_chunk()

    # ------------------------------------------------------------------ router-facing state
    @property
    def num_outstanding(self) -> int:
        return int(self.ri[L.H_NWAIT] + self.ri[L.H_NRUN])

    def kv_load_frac(self, now_s: float) -> float:
        return int(L.kv_tokens_held(self.ri, self.rq)) / max(self.kv.capacity_tokens, 1)

    def match_prefix_tokens(self, req: Any) -> int:
        return 0  # paged KV caches no prefixes

    @property
    def num_steps(self) -> int:
        """Steps committed so far (as ``Replica.num_steps``)."""
        return int(self.ri[L.H_NSTEPS])

    @property
    def next_event_s(self) -> float:
        """When this replica next changes state by itself (inf: idle until an arrival)."""
        if self.ri[L.H_INFLIGHT]:
            return float(self.rf[L.F_ECUR])
        if self.ri[L.H_IDLE]:
            return math.inf
        return float(self.rf[L.F_T])

    # ------------------------------------------------------------------ driving the kernel
    def _new_chunk(self) -> None:
        # Widest columns first, so each view is aligned.
        c = self._chunk_rows
        buf = _mapped_bytes(c * (8 * L.SF_NUM + 4 * L.SI_NUM + 8 * L.SQ_NUM + 4 * L.SS_NUM))
        a = 8 * L.SF_NUM * c
        b = a + 8 * L.SQ_NUM * c
        d = b + 4 * L.SI_NUM * c
        self._sf = buf[:a].view(np.float64).reshape(L.SF_NUM, c)
        self._sq = buf[a:b].view(np.int64).reshape(L.SQ_NUM, c)
        self._si = buf[b:d].view(np.int32).reshape(L.SI_NUM, c)
        self._ss = buf[d:].view(np.float32).reshape(L.SS_NUM, c)
        self.ri[L.H_ROW] = 0
        self.ri[L.H_ROWCAP] = c
        self._chunk_rows = min(2 * c, MAX_CHUNK_ROWS)

    def _retire_chunk(self) -> None:
        n = int(self.ri[L.H_ROW])
        if n == self._sf.shape[1]:
            self._chunks.append((self._sf, self._si, self._sq, self._ss))
        elif n:
            self._chunks.append((self._sf[:, :n].copy(), self._si[:, :n].copy(), self._sq[:, :n].copy(),
                                 self._ss[:, :n].copy()))
        self.ri[L.H_ROW] = 0

    def _handle(self, status: int) -> None:
        """Act on a status of the kernel other than DONE_OK, so that it can be called again."""
        if status == L.ROWS_FULL:
            self._retire_chunk()
            self._new_chunk()
            return
        memo = self.memo
        if status == L.NEED_COST and memo is not None:
            ri = self.ri
            memo.fill(int(ri[L.H_P]), float(self.rf[L.F_A]), int(ri[L.H_K]), int(ri[L.H_SAMP]),
                      int(ri[L.H_NDEC]), int(ri[L.H_CTXSUM]))
            return
        what = "a KV grow or admission was misused" if status == L.ERR_GROW else (
            "the scheduler produced an empty step with running requests")
        raise InvariantError(f"replica {self.replica_id}: {what} (compiled loop status {status})")

    def advance(self, until_s: float, new_req: int = -1) -> None:
        """Run up to ``until_s`` (steps ending before it commit), then queue ``new_req``."""
        while True:
            memo = self.memo
            status = L.advance(self.ri, self.rf, self.wq, self.rq, self.rqf, self.kva, self.cf,
                               _NO_MEMO if memo is None else memo.table,
                               self._sf, self._si, self._sq, self._ss, until_s, new_req)
            if status == L.DONE_OK:
                return
            self._handle(status)

    def enqueue_many(self, reqs: npt.NDArray[np.int64], times_s: npt.NDArray[np.float64]) -> None:
        """Requests routed here at ``times_s`` (ascending), nothing else happening in between:
        each as :meth:`enqueue`, all in one kernel call (``_loop.advance_many``)."""
        self._reserve_queue(len(reqs))
        pos = 0
        while True:
            memo = self.memo
            status, pos = L.advance_many(self.ri, self.rf, self.wq, self.rq, self.rqf, self.kva, self.cf,
                                         _NO_MEMO if memo is None else memo.table,
                                         self._sf, self._si, self._sq, self._ss, times_s, reqs, pos)
            if status == L.DONE_OK:
                return
            self._handle(status)

    def enqueue(self, idx: int, now_s: float) -> None:
        """A request routed here at ``now_s``: run up to then, then queue it."""
        self._reserve_queue(1)
        self.advance(now_s, idx)

    def _reserve_queue(self, arriving: int) -> None:
        """Room in the waiting ring for ``arriving`` more requests and a full preemption."""
        ri = self.ri
        need = int(ri[L.H_NWAIT]) + arriving + self.slots + 1
        cap = len(self.wq)
        if need > cap:
            n, h = int(ri[L.H_NWAIT]), int(ri[L.H_WHEAD])
            wq = np.zeros(max(2 * cap, need), dtype=np.int64)
            wq[:n] = np.take(self.wq, np.arange(h, h + n), mode="wrap")
            self.wq = wq
            ri[L.H_WHEAD] = 0

    def drain_into(self, recorder: Recorder) -> None:
        """Hand the step rows and inter-token gaps to the recorder (once, at the end)."""
        self._retire_chunk()
        rid = self.replica_id
        if self.memo is not None:
            self.memo.resolve()
            for sf, si, sq, ss in self._chunks:
                _cost.patch_split(sf, si, sq, ss, self.memo.table, L.SF_D, L.SF_A, L.SI_PT, L.SI_SAMP, L.SI_DT,
                                  L.SQ_KV, L.SQ_CTX)
        for sf, si, sq, ss in self._chunks:
            recorder.add_step_columns(rid, {
                "t_s": sf[L.SF_T],
                "duration_s": sf[L.SF_D],
                "in_attn_pairs": sf[L.SF_A],
                # the split by bound, recorded as each step committed
                "compute_s": ss[L.SS_COMP],
                "weight_read_s": ss[L.SS_WEIGHT],
                "kv_read_s": ss[L.SS_KV],
                "comm_s": ss[L.SS_COMM],
                "overhead_s": ss[L.SS_OVER],
                "num_running": si[L.SI_RUN],
                "num_prefill_seqs": si[L.SI_NPF],
                "prefill_tokens": si[L.SI_PT],
                "in_prefill_tokens": si[L.SI_PT],
                "decode_tokens": si[L.SI_DT],
                "in_decode_seqs": si[L.SI_DT],
                "queue_len": si[L.SI_Q],
                "num_preemptions": si[L.SI_PRE],
                "kv_token_state_slots": si[L.SI_TOK],
                "kv_internal_frag_slots": si[L.SI_INT],
                "kv_free_slots": si[L.SI_FREE],
                "kv_reserved_slots": si[L.SI_RES],
                "kv_external_frag_slots": si[L.SI_EXT],
                "kv_cached_slots": si[L.SI_CACHED],
                "prefix_hit_tokens": sq[L.SQ_HIT],
                "in_sampling_seqs": si[L.SI_SAMP],
                "in_kv_tokens": sq[L.SQ_KV],
                "in_ctx_tokens": sq[L.SQ_CTX],
                "prefix_query_tokens": sq[L.SQ_PQ],
            })
        self._chunks = []
        self._sf = self._si = self._sq = self._ss = None  # type: ignore[assignment]
        o_itl = L.itl_offset(self.slots)
        recorder.add_itl(self.ri[o_itl : o_itl + L.ITL_NUM_BINS], float(self.rf[L.F_ITL_SUM]),
                         float(self.rf[L.F_ITL_SQ]), int(self.ri[L.H_ITL_N]))
        # The manager's own prefix-query counter, as the Python engine leaves it.
        self.kv._prefix_query_tokens = int(self.ri[L.H_PQ])


class CompiledCluster(Cluster):
    """:class:`simulator.cluster.Cluster` for compiled replicas (open arrivals, fan-out 1)."""

    def __init__(
        self,
        env: simpy.Environment,
        *,
        workload: Any,
        router: str,
        recorder: Recorder,
        max_model_len_tokens: int,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(env, workload=workload, router=router, recorder=recorder,
                         max_model_len_tokens=max_model_len_tokens, progress=progress)
        n = len(workload)
        rq = np.zeros((L.R_NUM, n), dtype=np.int64)
        rq[L.R_PROMPT] = self._prompt
        rq[L.R_OUTPUT] = self._output
        rq[L.R_TARGET] = self._prompt
        rq[L.R_SLOT] = -1
        self.rq = rq
        self.rqf = np.full((L.Q_NUM, n), np.nan)
        self._too_long_arr = self._prompt + self._output > max_model_len_tokens
        self._too_long = self._too_long_arr.tolist()
        self._fits: list[npt.NDArray[np.bool_]] = []  # per replica, per request
        self._fits_by_kv: dict[tuple[int, ...], npt.NDArray[np.bool_]] = {}
        self._all_fit: list[bool] | None = None
        self._stateful = router != "round_robin"
        self._memos: dict[int, CostMemo] = {}

    def add_replica(self, replica: Any) -> None:  # type: ignore[override]
        kv = replica.kv
        key = (kv.num_blocks, kv.block_size_tokens, kv.watermark_blocks, kv.max_seq_len)
        fits = self._fits_by_kv.get(key)
        if fits is None:
            fits = kv.fits_ever_many(self._prompt, self._prompt + self._output)
            self._fits_by_kv[key] = fits
        if replica.memo is not None:
            # One step-cost memo per cost model, shared by its replicas.
            replica.memo = self._memos.setdefault(id(replica.cost), replica.memo)
        self.replicas.append(replica)
        self._fits.append(fits)
        self._all_fit = None

    def start(self) -> None:
        """Start the arrival process.

        NOTE(batches): with a router that reads no replica state (round robin, or a single
        replica) and open arrivals only, nothing a replica does can change where or when a
        request goes, and compiled replicas never touch each other or SimPy between arrivals.
        So arrivals are released in batches of :data:`ARRIVAL_BATCH`: one SimPy event at the
        batch's last arrival, routing and rejections decided for the batch at once (the same
        round-robin sequence), and each replica queues its share in one kernel call, each
        request at its own arrival time. A run stopped by ``until`` before a batch's event
        releases that batch's arrivals before ``until`` in :meth:`finish` (SimPy would have
        released exactly those: its stop event precedes any arrival at ``until``).
        """
        batch = (not len(self._dep_ids)) and (self.router == "round_robin" or len(self.replicas) == 1)
        if not batch:
            super().start()
            return
        self._pending_batch: tuple[int, int] | None = None
        self.env.process(self._batched_arrivals())

    def _batched_arrivals(self):
        env = self.env
        times = self._arrival[self._open]
        n = len(times)
        for lo in range(0, n, ARRIVAL_BATCH):
            hi = min(lo + ARRIVAL_BATCH, n)
            self._pending_batch = (lo, hi)
            yield _urgent_timeout(env, float(times[hi - 1]) - env.now)
            self._pending_batch = None
            self._release_batch(self._open[lo:hi], times[lo:hi])

    def _release_batch(self, idx: npt.NDArray[np.int64], t_s: npt.NDArray[np.float64]) -> None:
        """Release open arrivals ``idx`` at ``t_s`` (ascending) as :meth:`_release` would, one
        after the other, with a router that reads no replica state."""
        m = len(idx)
        if not m:
            return
        rec = self.recorder
        self.num_released += m
        if self.progress is not None:
            self.progress(self.num_released)
        rec.arrival_s[idx] = t_s
        if self._all_fit is None:
            self._all_fit_arr = np.logical_and.reduce(list(self._fits_by_kv.values()))
            self._all_fit = self._all_fit_arr.tolist()
        too_long = self._too_long_arr[idx]
        nrep = len(self.replicas)
        rid = np.full(m, -1, np.int64)  # position in self.replicas
        code = np.zeros(m, np.int8)
        code[too_long] = REJECT_MAX_LEN
        if nrep == 1:
            fits = self._fits[0][idx]
            code[~too_long & ~fits] = REJECT_KV
            rid[code == 0] = 0
        elif self._all_fit_arr[idx[~too_long]].all():
            ok = np.flatnonzero(~too_long)
            rid[ok] = (self._rr + np.arange(len(ok))) % nrep
            self._rr += len(ok)
        else:  # some requests fit only some replicas: the round robin skips the others
            fits_by_rep = [f[idx] for f in self._fits]
            for j in np.flatnonzero(~too_long).tolist():
                eligible = [k for k in range(nrep) if fits_by_rep[k][j]]
                if not eligible:
                    code[j] = REJECT_KV
                elif len(eligible) == 1:
                    rid[j] = eligible[0]
                else:
                    while True:
                        k = self._rr % nrep
                        self._rr += 1
                        if k in eligible:
                            rid[j] = k
                            break
        rejected = code != 0
        if rejected.any():
            rec.status[idx[rejected]] = STATUS_REJECTED
            rec.reject_code[idx[rejected]] = code[rejected]
        routed = ~rejected
        ridx = idx[routed]
        self.rq[L.R_ORDER, ridx] = self._order + np.arange(len(ridx))
        self._order += len(ridx)
        rpos = rid[routed]
        rt = t_s[routed]
        ids = np.asarray([r.replica_id for r in self.replicas], dtype=np.int32)
        rec.replica_id[ridx] = ids[rpos]
        for k, r in enumerate(self.replicas):
            sel = rpos == k
            if sel.any():
                r.enqueue_many(np.ascontiguousarray(ridx[sel]), np.ascontiguousarray(rt[sel]))

    def _release(self, idx: int, t_s: float) -> None:
        self.num_released += 1
        if self.progress is not None:
            self.progress(self.num_released)
        if self._too_long[idx]:
            self.recorder.rejected(idx, t_s, REJECT_MAX_LEN)
            return
        if self._all_fit is None:
            self._all_fit_arr = np.logical_and.reduce(list(self._fits_by_kv.values()))
            self._all_fit = self._all_fit_arr.tolist()
        if self._all_fit[idx]:
            eligible = self.replicas
        else:
            eligible = [r for r, f in zip(self.replicas, self._fits, strict=True) if f[idx]]
            if not eligible:
                self.recorder.rejected(idx, t_s, REJECT_KV)
                return
        self.rq[L.R_ORDER, idx] = self._order
        self._order += 1
        if self._stateful and len(eligible) > 1:
            # The router reads every replica's state as of now: bring them up to now.
            for r in self.replicas:
                if r.next_event_s < t_s:
                    r.advance(t_s)
        replica = self._route(None, eligible, t_s)  # type: ignore[arg-type]
        self.recorder.released(idx, t_s, replica.replica_id)
        replica.enqueue(idx, t_s)

    def finish(self, until_s: float, recorder: Recorder) -> None:
        """Run every replica to ``until_s`` (inf: to the end), then fill ``recorder``."""
        pending = getattr(self, "_pending_batch", None)
        if pending is not None:  # a batch whose SimPy event lay past ``until_s``
            lo, hi = pending
            self._pending_batch = None
            times = self._arrival[self._open[lo:hi]]
            k = int(np.searchsorted(times, until_s, side="left"))  # arrivals before until_s
            self._release_batch(self._open[lo : lo + k], times[:k])
        for r in self.replicas:
            r.advance(until_s)
        rec = recorder
        rec.first_scheduled_s = self.rqf[L.Q_FIRST_SCHED].copy()
        rec.first_token_s = self.rqf[L.Q_FIRST_TOKEN].copy()
        rec.finish_s = self.rqf[L.Q_FINISH].copy()
        done = ~np.isnan(rec.finish_s)
        rec.status[done] = STATUS_COMPLETED
        rec.num_preemptions = self.rq[L.R_NPRE].copy()
        rec.cached_prompt_tokens = self.rq[L.R_CACHED].copy()
        rec.max_concurrent = _max_concurrent(rec.arrival_s, rec.replica_id >= 0, rec.finish_s)
        for r in self.replicas:
            r.drain_into(rec)


def _max_concurrent(arrival_s: npt.NDArray[np.float64], routed: npt.NDArray[np.bool_],
                    finish_s: npt.NDArray[np.float64]) -> int:
    """Most requests routed and not finished at once; at equal times arrivals count first
    (SimPy processes them, URGENT, before a step's end)."""
    a = arrival_s[routed]
    f = finish_s[routed]
    f = f[~np.isnan(f)]
    if not len(a):
        return 0
    t = np.concatenate([a, f])
    kind = np.concatenate([np.zeros(len(a), np.int8), np.ones(len(f), np.int8)])
    delta = np.concatenate([np.ones(len(a), np.int64), -np.ones(len(f), np.int64)])
    order = np.lexsort((kind, t))
    return int(np.cumsum(delta[order]).max())
