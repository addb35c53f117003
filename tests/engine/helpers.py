"""Small builders for engine tests: a linear step cost and a one-call simulation."""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import simpy

from servesim.hwmodels.stepkernel import kernel_pack
from servesim.simulator.cluster import Cluster
from servesim.simulator.compiled import CompiledCluster, CompiledReplica
from servesim.simulator.memory import make_kv_manager
from servesim.simulator.reference import ReferenceReplica
from servesim.simulator.results import Recorder, summarize
from servesim.simulator.scheduling import scheduler_class
from servesim.workloads.request import Workload


@dataclass(frozen=True)
class LinearCost:
    """Step time = base + per prefill token + per decode sequence: timelines fit in one's head."""

    base_s: float = 1.0
    per_prefill_token_s: float = 0.0
    per_decode_seq_s: float = 0.0

    def step_time_s(
        self,
        *,
        prefill_tokens: float = 0,
        prefill_attn_pairs: float = 0,
        prefill_kv_tokens: float = 0,
        num_prefill_seqs: float = 0,
        num_decode_seqs: float = 0,
        decode_ctx_tokens: float = 0,
    ) -> float:
        return self.base_s + prefill_tokens * self.per_prefill_token_s + num_decode_seqs * self.per_decode_seq_s

    def cost(
        self,
        *,
        prefill_tokens,
        prefill_attn_pairs,
        prefill_kv_tokens,
        num_prefill_seqs,
        num_decode_seqs,
        decode_ctx_tokens,
    ) -> Any:
        p = np.asarray(prefill_tokens, dtype=np.float64)
        b = np.asarray(num_decode_seqs, dtype=np.float64)
        compute = p * self.per_prefill_token_s
        kv = b * self.per_decode_seq_s
        over = np.full(p.shape, self.base_s)
        zero = np.zeros(p.shape)
        return SimpleNamespace(
            time_s=over + compute + kv,
            compute_s=compute,
            weight_read_s=zero,
            kv_read_s=kv,
            comm_s=zero,
            overhead_s=over,
        )


class CurvedTimer:
    """A pure, non-linear operator timer (the cycle model's interface, none of its cost): a
    ``StepCostModel`` with it has no packed form, so the compiled loop costs its steps through
    the facade's memo."""

    def gemm_time_s(self, m: int, n: int, k: int, compute_type: str, weight_bits: int) -> float:
        return 3e-6 + n * k * (weight_bits / 16) * (m**0.61 + 7.0) * 1e-15 + (m % 17) * 1e-8

    def decode_attention_time_s(self, batch: int, context_tokens: int, num_heads: int, num_kv_heads: int,
                                head_dim: int, kv_bytes_per_elem: float, block_size: int) -> float:
        return 2e-6 + batch * math.sqrt(context_tokens) * num_kv_heads * head_dim * kv_bytes_per_elem * 1e-12

    def prefill_attention_time_s(self, batch: int, query_tokens: int, num_heads: int, num_kv_heads: int,
                                 head_dim: int, context_tokens: int | None = None,
                                 kv_bytes_per_elem: float = 2) -> float:
        ctx = query_tokens if context_tokens is None else context_tokens
        return 4e-6 + batch * query_tokens * ctx**0.9 * num_heads * head_dim * 1e-15


def workload(arrival_s, prompt, output, **kw: Any) -> Workload:
    return Workload.from_arrays(
        name="test",
        arrival_s=np.asarray(arrival_s, float),
        prompt_tokens=prompt,
        output_tokens=output,
        source="test",
        **kw,
    )


def simulate(
    wl: Workload,
    *,
    policy: str = "vllm",
    kv_kind: str = "paged",
    capacity_tokens: int = 1024,
    block_size_tokens: int = 4,
    max_num_seqs: int = 8,
    max_num_batched_tokens: int = 64,
    chunk_size_tokens: int = 16,
    preemption: str = "recompute",
    reservation: str = "max",
    max_seq_len: int = 256,
    kv_sharing: bool = True,
    replicas: int = 1,
    router: str = "round_robin",
    cost: Any = None,
    swap_space_bytes: float = 1e12,
    watermark_frac: float = 0.0,
    loop: str = "reference",
    until_s: float | None = None,
    prefix_caching: bool = False,
    starvation_limit_s: float = 5.0,
) -> SimpleNamespace:
    """Run ``wl`` on ``replicas`` identical replicas; return requests/steps frames and objects.

    ``loop="reference"`` (the default) runs the plain reference replica (``simulator.reference``);
    ``loop="compiled"`` runs the compiled loop (any ``cost``: packed when it has a packed form,
    else through the step-cost memo); ``until_s`` stops the run there
    (``engine.max_sim_time_s``); ``prefix_caching`` turns on vLLM v1's automatic prefix
    caching (paged only); ``starvation_limit_s`` is SGLang's starvation guard.
    """
    cost = cost or LinearCost()
    env = simpy.Environment()
    rec = Recorder(num_requests=len(wl), arrival_s=wl.arrival_s)
    compiled = loop == "compiled"
    cluster = (CompiledCluster if compiled else Cluster)(
        env, workload=wl, router=router, recorder=rec, max_model_len_tokens=max_seq_len
    )
    cls = scheduler_class(policy)
    # A model without a packed form (the cycle model, LinearCost) is costed through a memo.
    pack = kernel_pack(cost) if compiled and hasattr(cost, "packed") else None
    reps = []
    for i in range(replicas):
        kv = make_kv_manager(
            kv_kind,
            capacity_tokens=capacity_tokens,
            block_size_tokens=block_size_tokens,
            max_seqs=max_num_seqs + 1,
            max_seq_len=max_seq_len,
            reservation=reservation,
            watermark_frac=watermark_frac,
            prefix_caching=prefix_caching,
        )
        if compiled:
            rec.cost_models[i] = cost
            crep = CompiledReplica(
                replica_id=i, kv=kv, cost_pack=pack, cost=cost, max_num_seqs=max_num_seqs,
                max_num_batched_tokens=max_num_batched_tokens, slots=max_num_seqs + 1,
                policy=policy, chunk_size_tokens=chunk_size_tokens, starvation_limit_s=starvation_limit_s,
                kv_sharing=kv_sharing, rq=cluster.rq, rqf=cluster.rqf,
                preemption=preemption, swap_space_bytes=swap_space_bytes, kv_bytes_per_token_per_gpu=1000.0,
                pcie_bw_bytes_per_s=1e6,
            )
            cluster.add_replica(crep)
            reps.append(crep)
            continue
        assert loop == "reference", loop
        rep = ReferenceReplica(
            env,
            replica_id=i,
            kv=kv,
            cost=cost,
            scheduler_factory=lambda r: cls(
                r,
                max_num_seqs=max_num_seqs,
                max_num_batched_tokens=max_num_batched_tokens,
                chunk_size_tokens=chunk_size_tokens,
                preemption=preemption,
                starvation_limit_s=starvation_limit_s,
            ),
            recorder=rec,
            max_seqs=max_num_seqs + 1,
            kv_bytes_per_token_per_gpu=1000.0,
            pcie_bw_bytes_per_s=1e6,
            swap_space_bytes=swap_space_bytes,
            kv_sharing=kv_sharing,
            static_batching=policy == "static",
            on_finish=cluster.on_finish,
        )
        cluster.add_replica(rep)
        reps.append(rep)
    cluster.start()
    env.run(until=until_s)
    if compiled:
        cluster.finish(math.inf if until_s is None else until_s, rec)
    else:
        for rep in reps:
            rep.drain_into(rec)
    steps = rec.steps_frame()
    req = rec.requests_frame(wl, {"ttft_ms": None, "tpot_ms": None, "e2el_ms": None})
    summary = summarize(req, steps, rec, kv_capacity_tokens=capacity_tokens * replicas)
    return SimpleNamespace(requests=req, steps=steps, summary=summary, replicas=reps, recorder=rec)
