"""Replicas behind a router, and the process that releases requests into them.

Open arrivals come from the workload's sorted ``arrival_s``; dependent requests (closed-loop
clients, the next turn of a chat) are released ``think_time_s`` after the request they wait
on finishes (or is rejected). Arrival events are scheduled with SimPy's URGENT priority so
that, at equal times, an arrival is always routed before a replica starts its next step: the
step sees it, whichever way the replica is being advanced.

Routers (``router.policy``):

* ``round_robin``: replicas in turn.
* ``least_outstanding``: fewest queued + running requests (vLLM production-stack default).
* ``least_kv_load``: lowest KV-cache occupancy (tokens held / capacity), then fewest outstanding.
* ``prefix_affinity``: the replica holding the longest cached prefix of the prompt (SGLang
  router's cache-aware policy), unless that replica is overloaded (more than twice the least
  loaded replica's outstanding requests plus 4), then the least loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import simpy
from simpy.core import URGENT

from servesim.simulator.errors import UnknownNameError
from servesim.simulator.request import REJECT_KV, REJECT_MAX_LEN, REJECT_SEQS, ReqState
from servesim.simulator.results import Recorder

if TYPE_CHECKING:
    from servesim.simulator.reference import ReferenceReplica as Replica

ROUTERS = ("round_robin", "least_outstanding", "least_kv_load", "prefix_affinity")


def _urgent_timeout(env: simpy.Environment, delay: float, value: Any = None) -> simpy.Event:
    """A timeout processed before NORMAL events at the same time."""
    ev = env.event()
    ev._ok = True
    ev._value = value
    env.schedule(ev, URGENT, max(delay, 0.0))
    return ev


class Cluster:
    """Routes a workload's requests into replicas and records rejections.

    Args:
        env: the SimPy environment.
        workload: a :class:`workloads.request.Workload`.
        replicas: the replicas (built with ``on_finish=cluster.on_finish``; see ``build``).
        router: router policy name.
        recorder: the variant's recorder.
        max_model_len_tokens: longest prompt + output any replica accepts.
        progress: optional callback(num_released) for a progress bar.
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
        if router not in ROUTERS:
            raise UnknownNameError(f"unknown router policy {router!r}; valid: {', '.join(ROUTERS)}")
        self.env = env
        self.wl = workload
        self.router = router
        self.recorder = recorder
        self.max_model_len_tokens = max_model_len_tokens
        self.progress = progress
        self.replicas: list[Replica] = []
        self._rr = 0
        self._order = 0
        self.num_released = 0
        n = len(workload)
        deps = np.asarray(workload.depends_on, dtype=np.int64)
        has_dep = np.flatnonzero(deps >= 0)
        # CSR of dependents per request, in request order.
        order = has_dep[np.argsort(deps[has_dep], kind="stable")]
        counts = np.bincount(deps[has_dep], minlength=n) if len(has_dep) else np.zeros(n, np.int64)
        self._dep_offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
        self._dep_ids = order.astype(np.int64)
        self._open = np.flatnonzero(deps < 0)
        self._arrival = np.asarray(workload.arrival_s, dtype=np.float64)
        self._num_open = len(self._open)
        self._think = np.asarray(workload.think_time_s, dtype=np.float64)
        self._prompt = np.asarray(workload.prompt_tokens, dtype=np.int64)
        self._output = np.asarray(workload.output_tokens, dtype=np.int64)
        self._fanout = np.maximum(np.asarray(workload.num_samples), np.asarray(workload.beam_width)).astype(np.int64)
        self._is_beam = np.asarray(workload.beam_width) > 1
        self._offsets = np.asarray(workload.prefix_offsets, dtype=np.int64)
        self._ids = np.asarray(workload.prefix_block_ids, dtype=np.int64)
        self._block_tokens = int(workload.block_tokens)

    def add_replica(self, replica: Replica) -> None:
        self.replicas.append(replica)

    def start(self) -> None:
        self.env.process(self._open_arrivals())

    # ------------------------------------------------------------------ arrivals
    def _open_arrivals(self):
        env = self.env
        times = self._arrival[self._open]
        i, n = 0, len(self._open)
        while i < n:
            t = float(times[i])
            yield _urgent_timeout(env, t - env.now)
            while i < n and times[i] <= t:
                i += 1
                self._release(int(self._open[i - 1]), float(times[i - 1]))

    def on_finish(self, idx: int, t_s: float) -> None:
        """A request finished (or was rejected) at ``t_s``: release its dependents."""
        lo, hi = self._dep_offsets[idx], self._dep_offsets[idx + 1]
        for dep in self._dep_ids[lo:hi].tolist():
            t_rel = t_s + float(self._think[dep])
            ev = _urgent_timeout(self.env, t_rel - self.env.now)
            ev.callbacks.append(lambda _ev, d=dep, t=t_rel: self._release(d, t))

    def _release(self, idx: int, t_s: float) -> None:
        self.num_released += 1
        if self.progress is not None:
            self.progress(self.num_released)
        prompt, output = int(self._prompt[idx]), int(self._output[idx])
        if prompt + output > self.max_model_len_tokens:
            self.recorder.rejected(idx, t_s, REJECT_MAX_LEN)
            self.on_finish(idx, t_s)
            return
        fanout = int(self._fanout[idx])
        eligible = [r for r in self.replicas if r.kv.fits_ever(prompt, prompt + output, fanout, r.kv_sharing)]
        # A group runs its sequences together: wider than the scheduler's seats, it could
        # never be admitted (it would wait forever).
        seated = [r for r in eligible if fanout <= r.scheduler.max_num_seqs]
        if not seated:
            self.recorder.rejected(idx, t_s, REJECT_SEQS if eligible else REJECT_KV)
            self.on_finish(idx, t_s)
            return
        eligible = seated
        block_ids = None
        if self._block_tokens > 0:
            lo, hi = self._offsets[idx], self._offsets[idx + 1]
            if hi > lo:
                block_ids = self._ids[lo:hi]
        req = ReqState(
            idx=idx,
            arrival_s=t_s,
            prompt_tokens=prompt,
            output_tokens=output,
            fanout=fanout,
            is_beam=bool(self._is_beam[idx]),
            block_ids=block_ids,
            block_tokens=max(self._block_tokens, 1),
            order=self._order,
        )
        self._order += 1
        replica = self._route(req, eligible, t_s)
        self.recorder.released(idx, t_s, replica.replica_id)
        replica.enqueue(req, t_s)

    def _route(self, req: ReqState, eligible: list[Replica], t_s: float) -> Replica:
        if len(eligible) == 1:
            return eligible[0]
        if self.router == "round_robin":
            while True:
                r = self.replicas[self._rr % len(self.replicas)]
                self._rr += 1
                if r in eligible:
                    return r
        least = min(eligible, key=lambda r: (r.num_outstanding, r.replica_id))
        if self.router == "least_outstanding":
            return least
        if self.router == "least_kv_load":
            return min(eligible, key=lambda r: (r.kv_load_frac(t_s), r.num_outstanding, r.replica_id))
        # prefix_affinity
        best = max(eligible, key=lambda r: (r.match_prefix_tokens(req), -r.num_outstanding, -r.replica_id))
        if best.match_prefix_tokens(req) == 0 or best.num_outstanding > 2 * least.num_outstanding + 4:
            return least
        return best


__all__ = ["ROUTERS", "Cluster"]
