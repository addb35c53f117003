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

from servesim.simulator.cluster import Cluster
from servesim.simulator.compiled import _loop as L
from servesim.simulator.compiled import _mem as M
from servesim.simulator.compiled._prefix import page_keys_csr
from servesim.simulator.errors import InvariantError
from servesim.simulator.request import REJECT_KV, REJECT_MAX_LEN
from servesim.simulator.results import STATUS_COMPLETED, Recorder

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
    if any(cf is None for cf in cost_packs):
        return "the step-cost model has no packed form (engine.cost_model 'cycle')"
    if len(workload):
        if int(np.max(workload.num_samples)) > 1 or int(np.max(workload.beam_width)) > 1:
            return "the workload has parallel sampling or beam search (fan-out)"
        if int(np.max(workload.depends_on)) >= 0:
            return "the workload has dependent requests (closed-loop clients or multi-turn sessions)"
    return None


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
        cost_pack: npt.NDArray[np.float64],
        cost: Any,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        slots: int,
        policy: str = "vllm",
        chunk_size_tokens: int = 512,
        starvation_limit_s: float = 5.0,
        rq: npt.NDArray[np.int64],
        rqf: npt.NDArray[np.float64],
        preemption: str = "recompute",
        swap_space_bytes: float = 0.0,
        kv_bytes_per_token_per_gpu: float = 0.0,
        pcie_bw_bytes_per_s: float = 16e9,
    ) -> None:
        self.replica_id = replica_id
        self.kv = kv
        self.cost = cost
        self.cf = cost_pack
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
        self._chunks: list[tuple[npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any]]] = []
        self._chunk_rows = FIRST_CHUNK_ROWS
        self._new_chunk()

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
    def _new_chunk(self) -> None:
        c = self._chunk_rows
        buf = _mapped_bytes(c * (8 * L.SF_NUM + 4 * L.SI_NUM + 8 * L.SQ_NUM))
        a, b = 8 * L.SF_NUM * c, 8 * L.SF_NUM * c + 4 * L.SI_NUM * c
        self._sf = buf[:a].view(np.float64).reshape(L.SF_NUM, c)
        self._si = buf[a:b].view(np.int32).reshape(L.SI_NUM, c)
        self._sq = buf[b:].view(np.int64).reshape(L.SQ_NUM, c)
        self.ri[L.H_ROW] = 0
        self.ri[L.H_ROWCAP] = c
        self._chunk_rows = min(2 * c, MAX_CHUNK_ROWS)

    def _retire_chunk(self) -> None:
        n = int(self.ri[L.H_ROW])
        if n == self._sf.shape[1]:
            self._chunks.append((self._sf, self._si, self._sq))
        elif n:
            self._chunks.append((self._sf[:, :n].copy(), self._si[:, :n].copy(), self._sq[:, :n].copy()))
        self.ri[L.H_ROW] = 0

    def advance(self, until_s: float, new_req: int = -1) -> None:
        """Run up to ``until_s`` (steps ending before it commit), then queue ``new_req``."""
        while True:
            status = L.advance(self.ri, self.rf, self.wq, self.rq, self.rqf, self.kva, self.pk, self.cf,
                               self._sf, self._si, self._sq, until_s, new_req)
            if status == L.DONE_OK:
                return
            if status == L.ROWS_FULL:
                self._retire_chunk()
                self._new_chunk()
                continue
            what = "a KV grow or admission was misused" if status == L.ERR_GROW else (
                "the scheduler produced an empty step with running requests")
            raise InvariantError(f"replica {self.replica_id}: {what} (compiled loop status {status})")

    def enqueue(self, idx: int, now_s: float) -> None:
        """A request routed here at ``now_s``: run up to then, then queue it."""
        ri = self.ri
        need = int(ri[L.H_NWAIT]) + self.slots + 2
        cap = len(self.wq)
        if need > cap:
            n, h = int(ri[L.H_NWAIT]), int(ri[L.H_WHEAD])
            wq = np.zeros(max(2 * cap, need), dtype=np.int64)
            wq[:n] = np.take(self.wq, np.arange(h, h + n), mode="wrap")
            self.wq = wq
            ri[L.H_WHEAD] = 0
        self.advance(now_s, idx)

    def drain_into(self, recorder: Recorder) -> None:
        """Hand the step rows and inter-token gaps to the recorder (once, at the end)."""
        self._retire_chunk()
        rid = self.replica_id
        for sf, si, sq in self._chunks:
            recorder.add_step_columns(rid, {
                "t_s": sf[L.SF_T],
                "duration_s": sf[L.SF_D],
                "in_attn_pairs": sf[L.SF_A],
                "swap_s": sf[L.SF_SWAP],
                "num_running": si[L.SI_RUN],
                "num_prefill_seqs": si[L.SI_NPF],
                "prefill_tokens": si[L.SI_PT],
                "in_prefill_tokens": si[L.SI_PT],
                "decode_tokens": si[L.SI_DT],
                "in_decode_seqs": si[L.SI_DSEQ],
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
        self._sf = self._si = self._sq = None  # type: ignore[assignment]
        o_itl = L.itl_offset(self.slots)
        recorder.add_itl(self.ri[o_itl : o_itl + L.ITL_NUM_BINS], float(self.rf[L.F_ITL_SUM]),
                         float(self.rf[L.F_ITL_SQ]), int(self.ri[L.H_ITL_N]))
        # The manager's own prefix counters, as the Python engine leaves them.
        self.kv._prefix_query_tokens = int(self.ri[L.H_PQ])
        self.kv._prefix_hit_tokens = int(self.ri[L.H_HIT])


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
        self._too_long = (self._prompt + self._output > max_model_len_tokens).tolist()
        self._fits: list[npt.NDArray[np.bool_]] = []  # per replica, per request
        self._fits_by_kv: dict[tuple[int, ...], npt.NDArray[np.bool_]] = {}
        self._all_fit: list[bool] | None = None
        self._stateful = router != "round_robin"
        self._page_tokens: int | None = None  # page size the keys in rq were built for
        self._pk = np.zeros(0, dtype=np.int64)

    def add_replica(self, replica: Any) -> None:  # type: ignore[override]
        kv = replica.kv
        if kv.kind == "contiguous":
            key: tuple[Any, ...] = (kv.kind, kv.capacity_tokens, kv.reservation, kv.max_seq_len)
        else:
            key = (kv.num_blocks, kv.block_size_tokens, kv.watermark_blocks, kv.max_seq_len)
        fits = self._fits_by_kv.get(key)
        if fits is None:
            fits = kv.fits_ever_many(self._prompt, self._prompt + self._output)
            self._fits_by_kv[key] = fits
        if kv.caches_prefixes and self.wl.has_prefix_ids:
            replica.pk = self._page_keys(kv.block_size_tokens)
        self.replicas.append(replica)
        self._fits.append(fits)
        self._all_fit = None

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

    def _release(self, idx: int, t_s: float) -> None:
        self.num_released += 1
        if self.progress is not None:
            self.progress(self.num_released)
        if self._too_long[idx]:
            self.recorder.rejected(idx, t_s, REJECT_MAX_LEN)
            return
        if self._all_fit is None:
            self._all_fit = np.logical_and.reduce(list(self._fits_by_kv.values())).tolist()
        if self._all_fit[idx]:
            eligible = self.replicas
        else:
            eligible = [r for r, f in zip(self.replicas, self._fits, strict=True) if f[idx]]
            if not eligible:
                self.recorder.rejected(idx, t_s, REJECT_KV)
                return
        self.rq[L.R_ORDER, idx] = self._order
        self.rqf[L.Q_ARRIVAL, idx] = t_s
        self._order += 1
        if self._stateful and len(eligible) > 1:
            # The router reads every replica's state as of now: bring them up to now.
            for r in self.replicas:
                if r.next_event_s < t_s:
                    r.advance(t_s)
        replica = self._route(idx, eligible, t_s)  # type: ignore[arg-type]
        self.recorder.released(idx, t_s, replica.replica_id)
        replica.enqueue(idx, t_s)

    def finish(self, until_s: float, recorder: Recorder) -> None:
        """Run every replica to ``until_s`` (inf: to the end), then fill ``recorder``."""
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
