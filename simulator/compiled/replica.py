"""Python facades of the compiled loop: a replica (state arrays, row chunks) and a cluster
(arrivals as SimPy events, routing, rejections) that drives it."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import simpy

from servesim.simulator.cluster import Cluster, _urgent_timeout
from servesim.simulator.compiled import _cost
from servesim.simulator.compiled import _loop as L
from servesim.simulator.compiled import _mem as M
from servesim.simulator.compiled._prefix import page_keys_csr
from servesim.simulator.errors import InvariantError
from servesim.simulator.request import REJECT_KV, REJECT_MAX_LEN, REJECT_SEQS
from servesim.simulator.results import STATUS_COMPLETED, STATUS_REJECTED, Recorder

if TYPE_CHECKING:
    from servesim.simulator.steprows import StepRows


def unsupported_reason(*, policy: str, kv_manager: str, preemption: str, cost_packs: list[Any],
                       workload: Any, prefix_caching: bool = False) -> str | None:
    """Why the compiled loop cannot run this variant, or None when it can.

    Prefix caching (radix; paged with vLLM v1's automatic prefix caching) runs compiled:
    the cluster hands the kernel every request's page keys (``_prefix.page_keys_csr``).
    SGLang always retracts by recompute, whatever ``scheduler.preemption`` says.
    """
    if policy not in L.POLICIES:
        return f"scheduler.policy is {policy!r} (the compiled loop runs {', '.join(map(repr, L.POLICIES))})"
    if kv_manager not in M.KV_KINDS:
        return f"kv_cache.manager is {kv_manager!r} (the compiled loop runs {', '.join(map(repr, M.KV_KINDS))})"
    if preemption not in ("recompute", "swap"):
        return f"scheduler.preemption is {preemption!r} (the compiled loop runs 'recompute' and 'swap')"
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
        starvation_limit_s: float = 5.0,
        kv_sharing: bool = True,
        rq: npt.NDArray[np.int64],
        rqf: npt.NDArray[np.float64],
        preemption: str = "recompute",
        swap_space_bytes: float = 0.0,
        kv_bytes_per_token_per_gpu: float = 0.0,
        pcie_bw_bytes_per_s: float = 16e9,
    ) -> None:
        self.replica_id = replica_id
        self.kv = kv
        # A contiguous cache cannot share blocks: every sequence holds its own copy.
        self.kv_sharing = kv_sharing and kv.kind != "contiguous"
        self.max_num_seqs = max_num_seqs
        self.cost = cost
        # A model without a packed form is costed through a memo (shared with the other
        # replicas of the model by ``CompiledCluster.add_replica``).
        self.cf = _NO_PACK if cost_pack is None else cost_pack
        self.memo: CostMemo | None = CostMemo(cost) if cost_pack is None else None
        self.rq, self.rqf = rq, rqf
        self.kva = kv._arena
        # Page keys of the workload (``_prefix.page_keys_csr``), set by the cluster when the
        # manager caches prefixes.
        self.pk = np.zeros(0, dtype=np.int64)
        self.slots = slots
        ri = np.zeros(L.ri_words(slots), dtype=np.int64)
        ri[L.H_S] = slots
        ri[L.H_MAX_SEQS] = max_num_seqs
        ri[L.H_MAX_TOKENS] = max_num_batched_tokens
        ri[L.H_POLICY] = L.POLICIES[policy]
        ri[L.H_BUDGET] = chunk_size_tokens if policy == "sarathi" else max_num_batched_tokens
        ri[L.H_IDLE] = 1
        ri[L.H_CACHES] = int(kv.caches_prefixes)
        ri[L.H_APC] = int(kv.caches_when_scheduled)
        ri[M.H_KV] = M.KV_KINDS[kv.kind]
        if kv.kind == "contiguous":
            ri[M.H_RESV] = M.RESERVATIONS[kv.reservation]
            ri[M.H_MAXLEN] = kv.max_seq_len
        # Static batching preempts by recompute (a swapped member could never rejoin its
        # request-level batch; ``StaticScheduler``); SGLang retracts by recompute.
        ri[M.H_SWAP] = int(preemption == "swap" and policy not in ("static", "sglang"))
        ri[L.H_SHARING] = int(self.kv_sharing)
        o_next = L.H_HEADER + L.K_NEXT * slots
        ri[o_next : o_next + slots] = -1
        o_free = L.H_HEADER + L.K_FREE * slots
        ri[o_free : o_free + slots] = np.arange(slots - 1, -1, -1)  # slot 0 is taken first
        ri[L.H_FREE_TOP] = slots
        o_owner = L.H_HEADER + L.K_OWNER * slots
        ri[o_owner : o_owner + slots] = -1
        self.ri = ri
        self.rf = np.zeros(L.rf_words(slots), dtype=np.float64)
        self.rf[L.F_LASTGAP] = math.nan
        self.rf[L.F_STARVE] = starvation_limit_s
        self.rf[M.F_SWAP_CAP] = swap_space_bytes
        self.rf[M.F_KVB] = kv_bytes_per_token_per_gpu
        self.rf[L.F_HEADER + slots] = pcie_bw_bytes_per_s
        self.wq = np.zeros(max(64, 4 * slots), dtype=np.int64)
        self.rows: StepRows | None = None  # the recorder's chunk of step rows (:meth:`record_into`)
        self._sf = self._si = self._sq = self._ss = None
        self.wake: simpy.Event | None = None  # stepwise: the pending SimPy event that steps it
        self.on_wake: Callable[[simpy.Event], None] | None = None  # stepwise: its callback

    # ------------------------------------------------------------------ router-facing state
    @property
    def num_outstanding(self) -> int:
        """Requests queued, running or swapped out here."""
        return int(self.ri[L.H_NWAIT] + self.ri[L.H_NRUN] + self.ri[M.H_NSWAP])

    def kv_load_frac(self, now_s: float) -> float:
        return int(L.kv_tokens_held(self.ri, self.rq)) / max(self.kv.capacity_tokens, 1)

    def match_prefix_tokens(self, req: int) -> int:
        """Prompt tokens of request ``req`` (workload index) cached here now."""
        return int(L._match_tokens(self.ri, self.rq, self.kva, self.pk, req))

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
    def record_into(self, recorder: Recorder) -> None:
        """Write step rows into ``recorder``'s chunk for this replica (before the first step)."""
        self.rows = recorder.step_rows(self.replica_id, on_retire=self._patch_split)
        self._take_chunk()

    def _take_chunk(self) -> None:
        rows = self.rows
        self._sf, self._si, self._sq, self._ss = rows.sf, rows.si, rows.sq, rows.ss
        self.ri[L.H_ROW] = 0
        self.ri[L.H_ROWCAP] = rows.capacity

    def _patch_split(self, sf: Any, si: Any, sq: Any, ss: Any, n: int) -> None:
        """Rows costed through the memo take their split by bound from it (pending until now)."""
        if self.memo is not None:
            self.memo.resolve()
            # The whole chunk: rows past ``n`` were patched when they were last handed over
            # (or are zero), and a full-width call keeps one numba specialization.
            _cost.patch_split(sf, si, sq, ss, self.memo.table, L.SF_D, L.SF_A, L.SF_SWAP, L.SI_PT, L.SI_SAMP,
                              L.SI_DSEQ, L.SQ_KV, L.SQ_CTX)

    def _handle(self, status: int) -> None:
        """Act on a status of the kernel other than DONE_OK, so that it can be called again."""
        if status == L.ROWS_FULL:
            self.rows.retire(int(self.ri[L.H_ROW]))
            self._take_chunk()
            return
        memo = self.memo
        if status == L.NEED_COST and memo is not None:
            ri = self.ri
            # The costed shape: decoding sequences with static batching's padding ones.
            memo.fill(int(ri[L.H_P]), float(self.rf[L.F_A]), int(ri[L.H_K]), int(ri[L.H_SAMP]),
                      int(ri[L.H_NDEC]) + int(ri[M.H_PADSEQ]), int(ri[L.H_CTXSUM]))
            return
        what = "a KV grow or admission was misused" if status == L.ERR_GROW else (
            "the scheduler produced an empty step with running requests")
        raise InvariantError(f"replica {self.replica_id}: {what} (compiled loop status {status})")

    def advance(self, until_s: float, new_req: int = -1) -> None:
        """Run up to ``until_s`` (steps ending before it commit), then queue ``new_req``."""
        while True:
            memo = self.memo
            status = L.advance(self.ri, self.rf, self.wq, self.rq, self.rqf, self.kva, self.pk, self.cf,
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
            status, pos = L.advance_many(self.ri, self.rf, self.wq, self.rq, self.rqf, self.kva, self.pk, self.cf,
                                         _NO_MEMO if memo is None else memo.table,
                                         self._sf, self._si, self._sq, self._ss, times_s, reqs, pos)
            if status == L.DONE_OK:
                return
            self._handle(status)

    def step_events(self, now_s: float, peek_s: float) -> float:
        """Stepwise (dependent requests): process this replica's SimPy event at ``now_s`` -
        commit the step in flight, which ends then, or, woken from idle, nothing - plan the
        next, and go on through the following step ends that come before ``peek_s`` (SimPy's
        next other event) until one finishes requests (:func:`_loop.advance_stepwise`).
        Returns the SimPy time of the last event processed."""
        self.rf[L.F_VNOW] = now_s
        while True:
            memo = self.memo
            status = L.advance_stepwise(self.ri, self.rf, self.wq, self.rq, self.rqf, self.kva, self.pk, self.cf,
                                        _NO_MEMO if memo is None else memo.table,
                                        self._sf, self._si, self._sq, self._ss, peek_s)
            if status == L.DONE_OK:
                return float(self.rf[L.F_VNOW])
            self._handle(status)

    def take_finished(self) -> list[int]:
        """Stepwise: the requests finished since the last call, in the reference's order."""
        n = int(self.ri[L.H_NFIN])
        if n == 0:
            return []
        o = L.H_HEADER + L.K_FIN * self.slots
        self.ri[L.H_NFIN] = 0
        return self.ri[o : o + n].tolist()

    def enqueue(self, idx: int, now_s: float, *, stepwise: bool = False) -> None:
        """A request routed here at ``now_s``: run up to then, then queue it.

        Stepwise, nothing is run (the replica's SimPy events decide what comes first, as
        in the reference) and an idle replica wakes with its clock at ``now_s``.
        """
        self._reserve_queue(1)
        if not stepwise:
            self.advance(now_s, idx)
            return
        ri = self.ri
        was_idle = bool(ri[L.H_IDLE])
        self.advance(-math.inf, idx)  # only queues it (and clears the idle flag)
        if was_idle and now_s > self.rf[L.F_T]:
            self.rf[L.F_T] = now_s

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
        """Hand the last step rows and the inter-token gaps to the recorder (once, at the end)."""
        self.rows.retire(int(self.ri[L.H_ROW]))
        self.rows.release()
        self._sf = self._si = self._sq = self._ss = None
        o_itl = L.itl_offset(self.slots)
        recorder.add_itl(self.ri[o_itl : o_itl + L.ITL_NUM_BINS], float(self.rf[L.F_ITL_SUM]),
                         float(self.rf[L.F_ITL_SQ]), int(self.ri[L.H_ITL_N]))
        # The manager's own prefix counters, as the Python engine leaves them.
        self.kv._prefix_query_tokens = int(self.ri[L.H_PQ])
        self.kv._prefix_hit_tokens = int(self.ri[L.H_HIT])


class CompiledCluster(Cluster):
    """:class:`simulator.cluster.Cluster` for compiled replicas.

    Open arrivals only: replicas advance lazily (when a request is routed, or for routers
    that read replica state, when any request arrives). With dependent requests (closed-loop
    clients, multi-turn sessions, thought trees) a finish releases a SimPy event, so every
    replica is stepped *stepwise*: its next step end is a SimPy event, scheduled exactly as
    the reference replica's step timeout (same clock, same order), at which the kernel
    commits that step and plans the next - and goes on through the following step ends
    while each would be SimPy's next event anyway (before ``env.peek()``), stopping after
    one that finished requests. The facade then hands the finished requests to the recorder
    and to :meth:`Cluster.on_finish`, which schedules the dependents' releases (URGENT) as
    the reference does. The order of same-time events across replicas (a dependent released
    with zero think time between two replicas' step ends) is then the reference's by
    construction.
    """

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
        rq[L.R_FANOUT] = self._fanout
        self.rq = rq
        self.rqf = np.full((L.Q_NUM, n), np.nan)
        self._too_long_arr = self._prompt + self._output > max_model_len_tokens
        self._too_long: list[bool] | None = None  # as a list, for one-by-one releases (built then)
        self._fits: list[npt.NDArray[np.bool_]] = []  # per replica, per request
        self._fits_by_kv: dict[tuple[int, ...], npt.NDArray[np.bool_]] = {}
        self._all_fit: list[bool] | None = None
        self._stateful = router != "round_robin"
        self._page_tokens: int | None = None  # page size the keys in rq were built for
        self._pk = np.zeros(0, dtype=np.int64)
        self._multi = np.flatnonzero(self._fanout > 1)  # fan-out groups (fits checked one by one)
        self.stepwise = bool(n and int(np.max(workload.depends_on)) >= 0)
        self._memos: dict[int, CostMemo] = {}

    def add_replica(self, replica: Any) -> None:  # type: ignore[override]
        kv = replica.kv
        if kv.kind == "contiguous":
            key: tuple[Any, ...] = (kv.kind, kv.capacity_tokens, kv.reservation, kv.max_seq_len)
        else:
            key = (kv.num_blocks, kv.block_size_tokens, kv.watermark_blocks, kv.max_seq_len)
        key += (replica.kv_sharing, replica.max_num_seqs)
        fits = self._fits_by_kv.get(key)
        if fits is None:
            # Per request: the KV fits an empty cache (``fits_ever``), and the group fits the
            # scheduler's seats (as ``Cluster._release``); -1: KV fits, seats do not.
            kv_fits = kv.fits_ever_many(self._prompt, self._prompt + self._output)
            for i in self._multi.tolist():
                p, f = int(self._prompt[i]), int(self._fanout[i])
                kv_fits[i] = kv.fits_ever(p, p + int(self._output[i]), f, replica.kv_sharing)
            fits = kv_fits.astype(np.int8)
            fits[kv_fits & (self._fanout > replica.max_num_seqs)] = -1
            self._fits_by_kv[key] = fits
        if kv.caches_prefixes and self.wl.has_prefix_ids:
            replica.pk = self._page_keys(kv.block_size_tokens)
        if replica.memo is not None:
            # One step-cost memo per cost model, shared by its replicas.
            replica.memo = self._memos.setdefault(id(replica.cost), replica.memo)
        replica.record_into(self.recorder)
        self.replicas.append(replica)
        self._fits.append(fits)
        self._all_fit = None
        if self.stepwise:
            replica.ri[L.H_LOGFIN] = 1
            replica.on_wake = lambda _ev, r=replica: self._step(r)

    def _page_keys(self, page_tokens: int) -> npt.NDArray[np.int64]:
        """Every request's page keys for ``page_tokens``-token pages (built once)."""
        if self._page_tokens is None:
            klo, kn, self._pk = page_keys_csr(self._offsets, self._ids, self._block_tokens, page_tokens)
            self.rq[L.R_KLO] = klo
            self.rq[L.R_KN] = kn
            self._page_tokens = page_tokens
        elif page_tokens != self._page_tokens:
            raise InvariantError(f"replicas with {page_tokens}- and {self._page_tokens}-token pages")
        return self._pk

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
            self._all_fit_arr = np.logical_and.reduce([f == 1 for f in self._fits_by_kv.values()])
            self._all_fit = []  # batches read the array only
        too_long = self._too_long_arr[idx]
        nrep = len(self.replicas)
        rid = np.full(m, -1, np.int64)  # position in self.replicas
        code = np.zeros(m, np.int8)
        code[too_long] = REJECT_MAX_LEN
        if nrep == 1:
            fits = self._fits[0][idx]  # 1: fits; 0: its KV never fits; -1: its group never seats
            code[~too_long & (fits == 0)] = REJECT_KV
            code[~too_long & (fits == -1)] = REJECT_SEQS
            rid[code == 0] = 0
        elif self._all_fit_arr[idx[~too_long]].all():
            ok = np.flatnonzero(~too_long)
            rid[ok] = (self._rr + np.arange(len(ok))) % nrep
            self._rr += len(ok)
        else:  # some requests fit only some replicas: the round robin skips the others
            fits_by_rep = [f[idx] for f in self._fits]
            for j in np.flatnonzero(~too_long).tolist():
                eligible = [k for k in range(nrep) if fits_by_rep[k][j] == 1]
                if not eligible:
                    code[j] = REJECT_SEQS if any(f[j] != 0 for f in fits_by_rep) else REJECT_KV
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
        self.rqf[L.Q_ARRIVAL, ridx] = rt  # SGLang's starvation guard reads it
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
        if self._too_long is None:
            self._too_long = self._too_long_arr.tolist()
        if self._too_long[idx]:
            self.recorder.rejected(idx, t_s, REJECT_MAX_LEN)
            self.on_finish(idx, t_s)
            return
        if not self._all_fit:  # not built, or built empty by a batch release
            self._all_fit_arr = np.logical_and.reduce([f == 1 for f in self._fits_by_kv.values()])
            self._all_fit = self._all_fit_arr.tolist()
        if self._all_fit[idx]:
            eligible = self.replicas
        else:
            eligible = [r for r, f in zip(self.replicas, self._fits, strict=True) if f[idx] == 1]
            if not eligible:
                kv_fits = any(f[idx] != 0 for f in self._fits)
                self.recorder.rejected(idx, t_s, REJECT_SEQS if kv_fits else REJECT_KV)
                self.on_finish(idx, t_s)
                return
        self.rq[L.R_ORDER, idx] = self._order
        self.rqf[L.Q_ARRIVAL, idx] = t_s
        self._order += 1
        if self._stateful and len(eligible) > 1 and not self.stepwise:
            # The router reads every replica's state as of now: bring them up to now.
            for r in self.replicas:
                if r.next_event_s < t_s:
                    r.advance(t_s)
        replica = self._route(idx, eligible, t_s)  # type: ignore[arg-type]
        self.recorder.released(idx, t_s, replica.replica_id)
        replica.enqueue(idx, t_s, stepwise=self.stepwise)
        if self.stepwise:
            self._keep_stepping(replica)

    # ------------------------------------------------------------------ stepwise (dependents)
    def _keep_stepping(self, replica: CompiledReplica) -> None:
        """After ``replica`` moved: report its finishes, then keep one SimPy event pending at
        its next step end (or now, woken from idle), as the reference's step timeout or
        wake-up event."""
        for idx in replica.take_finished():
            t_s = float(self.rqf[L.Q_FINISH, idx])
            self.recorder.finished(idx, t_s, replica.replica_id)
            self.on_finish(idx, t_s)
        if replica.wake is not None:
            return
        ri = replica.ri
        if ri[L.H_INFLIGHT]:
            delay = max(float(replica.rf[L.F_ECUR]) - self.env.now, 0.0)
        elif not ri[L.H_IDLE]:
            delay = 0.0
        else:
            return
        ev = self.env.timeout(delay)
        ev.callbacks.append(replica.on_wake)
        replica.wake = ev

    def _step(self, replica: CompiledReplica) -> None:
        replica.wake = None
        env = self.env
        t_s = replica.step_events(env.now, env.peek())
        if t_s != env.now:
            # NOTE(clock): the replica went through step ends that would have been SimPy's
            # next events one after another (nothing else was scheduled before them); move
            # the clock to the last, as env.step() would have, so that what follows (the
            # dependents' releases, the next step's event) is scheduled from the same time
            # as in the reference, bit for bit.
            env._now = t_s
        self._keep_stepping(replica)

    def finish(self, until_s: float, recorder: Recorder) -> None:
        """Run every replica to ``until_s`` (inf: to the end), then fill ``recorder``."""
        pending = getattr(self, "_pending_batch", None)
        if pending is not None:  # a batch whose SimPy event lay past ``until_s``
            lo, hi = pending
            self._pending_batch = None
            times = self._arrival[self._open[lo:hi]]
            k = int(np.searchsorted(times, until_s, side="left"))  # arrivals before until_s
            self._release_batch(self._open[lo : lo + k], times[:k])
        if not self.stepwise:  # stepwise, SimPy has processed exactly the reference's step ends
            for r in self.replicas:
                r.advance(until_s)
        rec = recorder
        # The recorder's placeholders go before their copies come (a million requests: 24 MB
        # less at the run's peak).
        rec.first_scheduled_s = rec.first_token_s = rec.finish_s = None  # type: ignore[assignment]
        rec.first_scheduled_s = self.rqf[L.Q_FIRST_SCHED].copy()
        rec.first_token_s = self.rqf[L.Q_FIRST_TOKEN].copy()
        rec.finish_s = self.rqf[L.Q_FINISH].copy()
        done = ~np.isnan(rec.finish_s)
        rec.status[done] = STATUS_COMPLETED
        rec.num_preemptions = self.rq[L.R_NPRE].copy()
        rec.cached_prompt_tokens = self.rq[L.R_CACHED].copy()
        if not self.stepwise:  # stepwise, the recorder counted releases and finishes in order
            rec.max_concurrent = _max_concurrent(rec.arrival_s, rec.replica_id >= 0, rec.finish_s)
        for r in self.replicas:
            r.drain_into(rec)


def _max_concurrent(arrival_s: npt.NDArray[np.float64], routed: npt.NDArray[np.bool_],
                    finish_s: npt.NDArray[np.float64]) -> int:
    """Most requests routed and not finished at once; at equal times arrivals count first
    (SimPy processes them, URGENT, before a step's end).

    The count only rises at arrivals, so its maximum is reached right after the last arrival
    of some time t: arrivals at or before t minus finishes strictly before t (two sorted
    arrays and two searches, not a merged, sorted event list of both: a million-request run
    held ~80 MB of temporaries for it).
    """
    a = np.sort(arrival_s[routed])
    if not len(a):
        return 0
    f = finish_s[routed]
    f = np.sort(f[~np.isnan(f)])
    count = np.searchsorted(a, a, side="right")
    count -= np.searchsorted(f, a, side="left")
    return int(count.max())
