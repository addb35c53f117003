"""The one module that wires specs into simulator objects and runs a scenario.

``run_scenario(cfg)`` builds the workload once, then for each variant: the GPU, model,
quantization and step-cost model of each replica group, the KV memory budget (refusing
configurations that cannot hold one maximum-length request), a KV-cache manager and a
scheduler per replica, the router, and runs the SimPy environment to completion.

Memory budget per GPU, the way vLLM derives it (``gpu_memory_utilization`` x HBM, minus
weights, minus the activation peak of the largest step, minus non-torch memory)::

    usable = gpu_memory_utilization x hbm_bytes
    kv     = usable - weights/(tp x pp) - activation_workspace(max_num_batched_tokens) - reserve

``reserve`` defaults to 1 GiB (CUDA context, cuBLAS workspaces and CUDA-graph pools: vLLM's
profiler attributes 0.5-1.5 GiB per GPU to these "non-torch" allocations and graphs for
models of this size) plus 0.5 GiB of NCCL buffers when the replica spans several GPUs.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import simpy

from servesim.hwmodels.gpus import GpuSpec, get_gpu
from servesim.hwmodels.models import ModelSpec, get_model
from servesim.hwmodels.quant import (
    KvDtype,
    QuantScheme,
    check_kv_dtype_supported,
    get_kv_dtype,
    get_scheme,
    kv_bytes_per_token,
    weight_bytes,
    weight_bytes_per_gpu,
)
from servesim.hwmodels.stepkernel import kernel_pack
from servesim.hwmodels.units import GiB
from servesim.simulator.cluster import Cluster
from servesim.simulator.compiled import CompiledCluster, CompiledReplica, unsupported_reason
from servesim.simulator.errors import CapacityError, ConfigError, SimulatorError
from servesim.simulator.memory import make_kv_manager
from servesim.simulator.reference import ReferenceReplica
from servesim.simulator.results import Recorder, Results, VariantResult, summarize
from servesim.simulator.scenario import HardwareCfg, ScenarioCfg, resolve_variants
from servesim.simulator.scheduling import scheduler_class
from servesim.workloads.config import build_workload

#: Non-torch memory per GPU (CUDA context, cuBLAS workspace, CUDA graphs); see module doc.
DEFAULT_RESERVE_BYTES = 1 * GiB
#: NCCL communicator buffers per GPU when a replica spans several GPUs.
DEFAULT_NCCL_RESERVE_BYTES = GiB // 2


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryBudget:
    """Per-GPU memory breakdown of one replica group."""

    hbm_bytes: int
    usable_bytes: float
    weight_bytes: float
    activation_bytes: float
    reserve_bytes: float
    kv_bytes: float
    kv_bytes_per_token: float  # per GPU, after TP/PP sharding
    kv_capacity_tokens: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "hbm_bytes": self.hbm_bytes,
            "usable_bytes": self.usable_bytes,
            "weight_bytes": self.weight_bytes,
            "activation_bytes": self.activation_bytes,
            "reserve_bytes": self.reserve_bytes,
            "kv_bytes": self.kv_bytes,
            "kv_bytes_per_token": self.kv_bytes_per_token,
            "kv_capacity_tokens": self.kv_capacity_tokens,
        }

    def describe(self) -> str:
        g = GiB
        return (
            f"per GPU: HBM {self.hbm_bytes / g:.1f} GiB, usable {self.usable_bytes / g:.1f} GiB, "
            f"weights {self.weight_bytes / g:.2f} GiB, activations {self.activation_bytes / g:.2f} GiB, "
            f"reserve {self.reserve_bytes / g:.2f} GiB, KV cache {self.kv_bytes / g:.2f} GiB "
            f"= {self.kv_capacity_tokens} tokens at {self.kv_bytes_per_token:.0f} B/token"
        )


def kv_bytes_per_token_per_gpu(model: ModelSpec, kv: KvDtype, tp: int, pp: int, adp: int = 1) -> float:
    """KV bytes one token occupies on one GPU of a TP x PP replica.

    KV heads are split across TP ranks (replicated when there are fewer heads than ranks);
    MLA's compressed latent is replicated on every TP rank; layers split across PP stages.
    With ``adp`` attention data-parallel ranks each token lives on one rank's attention group
    of ``tp / adp`` GPUs: the replica holds ``adp`` times the tokens (per GPU, ``1/adp``).
    """
    full = kv_bytes_per_token(model, kv)
    tp_attn = tp // adp
    if model.is_mla:
        shard = 1.0
    else:
        shard = math.ceil(model.num_kv_heads / tp_attn) / model.num_kv_heads
    if adp == 1:
        return full * shard / pp
    return full * shard / pp / adp


def memory_budget(
    *,
    gpu: GpuSpec,
    model: ModelSpec,
    scheme: QuantScheme,
    kv: KvDtype,
    hw: HardwareCfg,
    activation_bytes: float,
) -> MemoryBudget:
    """Derive the KV capacity of one replica; CapacityError if the weights do not fit."""
    tp, pp = hw.tensor_parallel, hw.pipeline_parallel
    usable = hw.gpu_memory_utilization * gpu.hbm_bytes
    ep, adp, red = hw.expert_parallel, hw.attention_data_parallel, hw.redundant_experts
    if ep == 1 and adp == 1 and red == 0:
        weights = weight_bytes(model, scheme) / (tp * pp)
    else:  # experts / EP per GPU, attention (and the rest) replicated on every DP rank
        weights = weight_bytes_per_gpu(model, scheme, tp, pp, expert_parallel=ep, attention_data_parallel=adp,
                                       redundant_experts=red)
    if hw.memory_reserve_gib is not None:
        reserve = hw.memory_reserve_gib * GiB
    else:
        reserve = DEFAULT_RESERVE_BYTES + (DEFAULT_NCCL_RESERVE_BYTES if tp * pp > 1 else 0)
    kv_bytes = usable - weights - activation_bytes - reserve
    per_token = kv_bytes_per_token_per_gpu(model, kv, tp, pp, hw.attention_data_parallel)
    capacity = int(kv_bytes // per_token) if kv_bytes > 0 else 0
    budget = MemoryBudget(
        hbm_bytes=gpu.hbm_bytes,
        usable_bytes=usable,
        weight_bytes=weights,
        activation_bytes=activation_bytes,
        reserve_bytes=reserve,
        kv_bytes=max(kv_bytes, 0.0),
        kv_bytes_per_token=per_token,
        kv_capacity_tokens=capacity,
    )
    if kv_bytes <= 0:
        raise CapacityError(
            f"{model.name} ({scheme.name}) does not fit on {gpu.name} with tensor_parallel={tp}, "
            f"pipeline_parallel={pp}: {budget.describe()}. Use more GPUs (hardware.tensor_parallel), "
            f"a smaller quantization (model.quantization), a larger gpu_memory_utilization or a GPU "
            f"with more memory."
        )
    return budget


def _make_cost_model(cfg: ScenarioCfg, gpu: GpuSpec, model: ModelSpec, scheme: QuantScheme, kv: KvDtype, hw: HardwareCfg) -> Any:
    from servesim.hwmodels.stepcost import StepCostModel

    kwargs: dict[str, Any] = {
        "gpu": gpu,
        "model": model,
        "scheme": scheme,
        "kv_dtype": kv,
        "tensor_parallel": hw.tensor_parallel,
        "pipeline_parallel": hw.pipeline_parallel,
    }
    if hw.expert_parallel > 1 or hw.attention_data_parallel > 1 or hw.redundant_experts:
        kwargs["expert_parallel"] = hw.expert_parallel
        kwargs["attention_data_parallel"] = hw.attention_data_parallel
        kwargs["redundant_experts"] = hw.redundant_experts
    if cfg.engine.step_overhead_s is not None:
        kwargs["step_overhead_s"] = cfg.engine.step_overhead_s
    if cfg.engine.profile is not None:
        from servesim.hwmodels.stacks import load_profile_file

        kwargs["stack"] = load_profile_file(cfg.engine.profile)
    elif cfg.engine.stack is not None:
        kwargs["stack"] = cfg.engine.stack
    if cfg.engine.two_batch_overlap is not None:  # the scenario's engine flag over the profile's
        from servesim.hwmodels.stacks import get_stack

        kwargs["stack"] = get_stack(kwargs.get("stack")).replace(two_batch_overlap=cfg.engine.two_batch_overlap)
    if cfg.engine.cost_model == "cycle":
        kwargs["op_timer"] = _cycle_timer(gpu)
    return StepCostModel(**kwargs)


#: KV-manager state of all replicas together (docs/inputs.md): each replica's allocator
#: holds arrays sized by its KV blocks (~10 MiB for Llama-3.1-8B on an H100).
MAX_REPLICA_STATE_BYTES = 8 << 30


def _state_bytes(obj: Any, depth: int = 0) -> int:
    """Bytes of the numpy arrays an allocator object holds (two attribute levels deep)."""
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if depth > 2 or obj is None or isinstance(obj, str | bytes | int | float | bool):
        return 0
    if isinstance(obj, tuple | list):
        return sum(_state_bytes(v, depth + 1) for v in obj[:64])
    names = list(getattr(obj, "__dict__", {})) + list(getattr(type(obj), "__slots__", ()))
    return sum(_state_bytes(getattr(obj, n, None), depth + 1) for n in names)


def _check_replica_state(kv: Any, count: int, group: int | None, before: int = 0) -> int:
    """Refuse a cluster whose KV-manager state would exceed the limit, from the first
    replica's actual footprint, before the other ``count - 1`` are built.

    Args:
        before: state bytes of the groups already counted (a list of many groups adds up).

    Returns:
        The running total in bytes.
    """
    each = _state_bytes(kv)
    total = before + each * count
    if total > MAX_REPLICA_STATE_BYTES:
        where = "hardware.replicas" if group is None else f"hardware.{group}.replicas"
        raise ConfigError(
            f"{where}: {count:,} replica engines x {each / 2**20:.1f} MiB of KV-cache state"
            + (f" + {before / 2**30:.1f} GiB of earlier groups" if before else "")
            + f" = {total / 2**30:.1f} GiB; the limit is "
            f"{MAX_REPLICA_STATE_BYTES / 2**30:.0f} GiB (docs/inputs.md). Simulate fewer "
            "replicas (the rate per replica is what matters) or a smaller KV cache"
        )
    return total


def cycle_cache_dir() -> Path:
    """Where cycle-model operator times persist between runs (``SERVESIM_CACHE_DIR`` overrides).

    The cache only memoises deterministic simulations keyed by shape and by a fingerprint of
    the GPU and model parameters, so results are the same with or without it.
    """
    from servesim.hwmodels.safeio import user_cache_dir

    root = os.environ.get("SERVESIM_CACHE_DIR")
    return Path(root) if root else user_cache_dir("cycle")


_CYCLE_TIMERS: dict[str, Any] = {}


def _cycle_timer(gpu: GpuSpec) -> Any:
    """One cycle-model timer per GPU and process, preloaded from the on-disk cache."""
    from servesim.hwmodels.cyclesim.cache import CycleCostModel

    timer = _CYCLE_TIMERS.get(gpu.name)
    if timer is None:
        timer = CycleCostModel(gpu)
        path = cycle_cache_dir() / f"{gpu.name}-{timer.fingerprint}.json"
        if path.is_file():
            try:
                timer.load(path)
            except SimulatorError:
                pass  # a stale or foreign cache is recomputed, never trusted
        _CYCLE_TIMERS[gpu.name] = timer
    return timer


def save_cycle_caches() -> None:
    """Persist the cycle timers' operator times (best effort: a read-only home is fine)."""
    for timer in _CYCLE_TIMERS.values():
        path = cycle_cache_dir() / f"{timer.gpu_name}-{timer.fingerprint}.json"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            timer.save(tmp)
            os.replace(tmp, path)
        except OSError:
            pass


@dataclass
class _Group:
    hw: HardwareCfg
    gpu: GpuSpec
    model: ModelSpec
    scheme: QuantScheme
    kv: KvDtype
    cost: Any
    budget: MemoryBudget
    max_model_len_tokens: int


def _build_group(cfg: ScenarioCfg, hw: HardwareCfg) -> _Group:
    gpu = get_gpu(hw.gpu)
    model = get_model(cfg.model.config or cfg.model.name)
    scheme = get_scheme(cfg.model.quantization)
    if cfg.model.group_size is not None:
        scheme = scheme.with_group_size(cfg.model.group_size)
    kv_name = scheme.default_kv_dtype if cfg.model.kv_cache_dtype == "auto" else cfg.model.kv_cache_dtype
    kv = get_kv_dtype(kv_name)
    scheme.check_supported(gpu)
    check_kv_dtype_supported(kv, gpu)
    max_len = cfg.model.max_model_len_tokens or model.max_seq_len_tokens
    cost = _make_cost_model(cfg, gpu, model, scheme, kv, hw)
    act = float(cost.activation_workspace_bytes(cfg.scheduler.max_num_batched_tokens))
    budget = memory_budget(gpu=gpu, model=model, scheme=scheme, kv=kv, hw=hw, activation_bytes=act)
    if budget.kv_capacity_tokens // hw.pipeline_parallel < max_len:
        raise CapacityError(
            f"the KV cache of {model.name} on {gpu.name} (tensor_parallel={hw.tensor_parallel}) cannot "
            f"hold one maximum-length request of {max_len} tokens: {budget.describe()}. Lower "
            f"model.max_model_len_tokens, use a smaller kv_cache_dtype or quantization, or more GPUs."
        )
    return _Group(hw=hw, gpu=gpu, model=model, scheme=scheme, kv=kv, cost=cost, budget=budget,
                  max_model_len_tokens=max_len)


def _progress_callback(
    env: simpy.Environment, total_requests: int, horizon_s: float, label: str
) -> tuple[Callable[[int], None] | None, Any]:
    """A rich progress bar over simulated time (arrival horizon), on terminals only."""
    if not sys.stderr.isatty() or total_requests < 2000:
        return None, None
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    prog = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[sim]}"),
        TimeElapsedColumn(),
        transient=True,
    )
    horizon = max(horizon_s, 1e-9)
    task = prog.add_task(f"simulating {label}", total=horizon, sim="")
    prog.start()
    step = max(total_requests // 200, 1)

    def cb(n: int) -> None:
        if n % step == 0 or n == total_requests:
            prog.update(task, completed=min(env.now, horizon),
                        sim=f"sim {env.now:,.0f}/{horizon:,.0f} s, {n:,d}/{total_requests:,d} requests")

    return cb, prog


def run_variant(name: str, cfg: ScenarioCfg, workload: Any) -> VariantResult:
    """Simulate one fully resolved variant on ``workload``."""
    hw_list = cfg.hardware if isinstance(cfg.hardware, list) else [cfg.hardware]
    groups = [_build_group(cfg, hw) for hw in hw_list]
    env = simpy.Environment()
    recorder = Recorder(num_requests=len(workload), arrival_s=workload.arrival_s)
    progress, bar = (None, None)
    if cfg.engine.progress:
        arrivals = np.asarray(workload.arrival_s, dtype=np.float64)
        horizon = float(np.nanmax(arrivals)) if np.isfinite(arrivals).any() else 0.0
        progress, bar = _progress_callback(env, len(workload), horizon, name)
    loop, packs = _choose_loop(cfg, groups, workload)
    cluster_cls = CompiledCluster if loop == "compiled" else Cluster
    cluster = cluster_cls(
        env,
        workload=workload,
        router=cfg.router.policy,
        recorder=recorder,
        max_model_len_tokens=min(g.max_model_len_tokens for g in groups),
        progress=progress,
    )
    sched_cls = scheduler_class(cfg.scheduler.policy)
    sc = cfg.scheduler
    replica_id = 0

    def new_kv(g: Any) -> Any:
        return make_kv_manager(
            cfg.kv_cache.manager,
            capacity_tokens=g.budget.kv_capacity_tokens // g.hw.pipeline_parallel,
            block_size_tokens=cfg.kv_cache.block_size_tokens,
            max_seqs=sc.max_num_seqs + 1,
            max_seq_len=g.max_model_len_tokens,
            reservation=cfg.kv_cache.reservation,
            placement=cfg.kv_cache.placement,
            watermark_frac=cfg.kv_cache.watermark_frac,
            # Without prefix ids nothing can hit: the plain pool gives identical results.
            prefix_caching=prefix_caching_enabled(cfg) and workload.has_prefix_ids,
        )

    # Sized before built (#15): one probe engine per group, measured, times its count; the
    # whole cluster is refused before any replica exists when the sum is past the limit.
    state_bytes = 0
    for gi, g in enumerate(groups):
        state_bytes = _check_replica_state(
            new_kv(g), g.hw.replicas * g.hw.pipeline_parallel,
            gi if len(groups) > 1 else None, state_bytes)
    for gi, g in enumerate(groups):
        pcie = g.gpu.pcie_bw_bytes_per_s_per_direction or 16e9
        pp = g.hw.pipeline_parallel
        # Pipeline parallelism as vLLM runs it: pp virtual engines per replica, each with its
        # own scheduler and 1/pp of the KV blocks, so pp batches are in flight, one per stage.
        # Each virtual engine's step takes the full pipeline latency (the sum of the stage
        # times); with balanced stages that keeps every stage busy. The imbalance bubble is
        # reported as pipeline_bubble_frac.
        for _ in range(g.hw.replicas * pp):
            kv = new_kv(g)

            if loop == "compiled":
                recorder.cost_models[replica_id] = g.cost
                cluster.add_replica(CompiledReplica(
                    replica_id=replica_id, kv=kv, cost_pack=packs[gi], cost=g.cost,
                    max_num_seqs=sc.max_num_seqs, max_num_batched_tokens=sc.max_num_batched_tokens,
                    slots=sc.max_num_seqs + 1, policy=sc.policy, chunk_size_tokens=sc.chunk_size_tokens,
                    starvation_limit_s=sc.starvation_limit_s,
                    kv_sharing=sc.kv_sharing,
                    rq=cluster.rq, rqf=cluster.rqf,  # type: ignore[attr-defined]
                    preemption=sc.preemption, swap_space_bytes=g.hw.swap_space_gib * GiB,
                    kv_bytes_per_token_per_gpu=g.budget.kv_bytes_per_token, pcie_bw_bytes_per_s=pcie,
                ))
                replica_id += 1
                continue

            def factory(rep: ReferenceReplica, cls: Any = sched_cls) -> Any:
                return cls(
                    rep,
                    max_num_seqs=sc.max_num_seqs,
                    max_num_batched_tokens=sc.max_num_batched_tokens,
                    chunk_size_tokens=sc.chunk_size_tokens,
                    preemption=sc.preemption,
                    starvation_limit_s=sc.starvation_limit_s,
                )

            cluster.add_replica(
                ReferenceReplica(
                    env,
                    replica_id=replica_id,
                    kv=kv,
                    cost=g.cost,
                    scheduler_factory=factory,
                    recorder=recorder,
                    max_seqs=sc.max_num_seqs + 1,
                    kv_bytes_per_token_per_gpu=g.budget.kv_bytes_per_token,
                    pcie_bw_bytes_per_s=pcie,
                    swap_space_bytes=g.hw.swap_space_gib * GiB,
                    kv_sharing=sc.kv_sharing,
                    static_batching=sc.policy == "static",
                    on_finish=cluster.on_finish,
                )
            )
            replica_id += 1
    cluster.start()
    try:
        if cfg.engine.max_sim_time_s is not None:
            env.run(until=cfg.engine.max_sim_time_s)
        else:
            env.run()
        if loop == "compiled":
            until = cfg.engine.max_sim_time_s
            cluster.finish(math.inf if until is None else until, recorder)  # type: ignore[attr-defined]
        else:
            for replica in cluster.replicas:
                replica.drain_into(recorder)  # type: ignore[attr-defined]
    finally:
        if bar is not None:
            bar.stop()
    # The replicas' state (KV pools, per-request kernel rows) is not needed past this point.
    del cluster, env
    slo = cfg.slo.model_dump()
    requests = recorder.requests_frame(workload, slo)
    g0 = groups[0]
    # The summary reads the compact step rows; the steps frame is built on first access.
    summary = summarize(requests, recorder.step_columns(), recorder, kv_capacity_tokens=sum(
        g.budget.kv_capacity_tokens * g.hw.replicas for g in groups))
    summary["config"] = {
        "gpu": ",".join(g.gpu.name for g in groups),
        "tensor_parallel": g0.hw.tensor_parallel,
        "pipeline_parallel": g0.hw.pipeline_parallel,
        "replicas": sum(g.hw.replicas for g in groups),
        "num_gpus": sum(g.hw.replicas * g.hw.tensor_parallel * g.hw.pipeline_parallel for g in groups),
        "model": g0.model.name,
        "quantization": g0.scheme.name,
        "kv_cache_dtype": g0.kv.name,
        "kv_manager": cfg.kv_cache.manager,
        "block_size_tokens": cfg.kv_cache.block_size_tokens,
        "reservation": cfg.kv_cache.reservation,
        "scheduler": cfg.scheduler.policy,
        "max_num_seqs": sc.max_num_seqs,
        "max_num_batched_tokens": sc.max_num_batched_tokens,
        "chunk_size_tokens": sc.chunk_size_tokens,
        "preemption": sc.preemption,
        "router": cfg.router.policy,
        "cost_model": cfg.engine.cost_model,
        "engine_loop": loop,
        "max_model_len_tokens": g0.max_model_len_tokens,
    }
    if g0.hw.expert_parallel > 1 or g0.hw.attention_data_parallel > 1:  # only then: goldens keep their keys
        summary["config"]["expert_parallel"] = g0.hw.expert_parallel
        summary["config"]["attention_data_parallel"] = g0.hw.attention_data_parallel
        summary["config"]["redundant_experts"] = g0.hw.redundant_experts
    summary["memory_budget"] = {**g0.budget.to_dict(), "gpu_memory_utilization": g0.hw.gpu_memory_utilization}
    summary["slo"] = slo
    summary["roofline"] = _representative_roofline(g0, summary, requests)
    # Pipeline parallelism: steps run stage after stage (no micro-batch overlap is simulated);
    # the bubble is the idle share of the stages in a representative step.
    summary["pipeline_bubble_frac"] = summary["roofline"]["pipeline_bubble_frac"]
    return VariantResult(name=name, summary=summary, requests=requests, steps=recorder.steps_frame)


def prefix_caching_enabled(cfg: ScenarioCfg) -> bool:
    """``kv_cache.prefix_caching`` resolved: paged only; null = on for the vllm and sarathi
    schedulers (vLLM v1 enables automatic prefix caching by default), off otherwise."""
    if cfg.kv_cache.manager != "paged":
        return False
    if cfg.kv_cache.prefix_caching is None:
        return cfg.scheduler.policy in ("vllm", "sarathi")
    return cfg.kv_cache.prefix_caching


def _choose_loop(cfg: ScenarioCfg, groups: list[_Group], workload: Any) -> tuple[str, list[Any]]:
    """``engine.loop`` resolved to "compiled" or "reference", with the step-cost packs.

    ``auto`` is the compiled loop (it runs every configuration); ``python`` is the documented
    alias of ``reference`` (the Python replica is the reference since the second engine went);
    ``engine.fast_forward`` has no effect (results never depended on it).
    """
    mode = cfg.engine.loop
    if mode in ("reference", "python"):
        return "reference", []
    packs = [kernel_pack(g.cost) for g in groups]
    reason = unsupported_reason(
        policy=cfg.scheduler.policy,
        kv_manager=cfg.kv_cache.manager,
        preemption=cfg.scheduler.preemption,
        cost_packs=packs,
        workload=workload,
        prefix_caching=prefix_caching_enabled(cfg),
    )
    if reason is not None:
        # Unreachable with validated scenarios (the kernel family runs every policy, manager and
        # preemption mode); kept as a guard naming the field.
        raise ConfigError(f"engine.loop: {mode!r} cannot run this variant: {reason}; valid: 'reference'")
    return "compiled", packs


def _representative_roofline(g: _Group, summary: dict[str, Any], requests: Any) -> dict[str, Any]:
    """The operators of a typical decode step (mean batch, mean context) for the report."""
    batch = max(round(float(summary.get("mean_batch_size") or 1)), 1)
    done = requests[requests["status"] == "completed"]
    ctx = int((done["prompt_tokens"] + done["output_tokens"] / 2).mean()) if len(done) else 1024
    ops = g.cost.breakdown(
        prefill_tokens=0,
        prefill_attn_pairs=0.0,
        prefill_kv_tokens=0,
        num_prefill_seqs=0,
        num_decode_seqs=batch,
        decode_ctx_tokens=batch * ctx,
    )
    step = {"num_decode_seqs": batch, "decode_ctx_tokens": batch * ctx}
    return {
        "gpu": g.gpu.name,
        "pipeline_bubble_frac": float(g.cost.pipeline_bubble_frac(**step)) if g.hw.pipeline_parallel > 1 else 0.0,
        "compute_type": g.scheme.compute_type,
        "peak_flops_per_s": g.gpu.peak(g.scheme.compute_type),
        "hbm_bw_bytes_per_s": g.gpu.hbm_bw_bytes_per_s,
        "ops": [
            {"op": o.op, "time_s": float(o.time_s), "flops": float(o.flops), "bytes": float(o.bytes), "bound": o.bound}
            for o in ops
        ],
        "batch": {"decode_seqs": batch, "context_tokens": ctx, "context_tokens_per_seq": ctx,
                  "prefill_tokens": 0},
    }


def run_scenario(
    cfg: ScenarioCfg,
    *,
    on_variant_done: Callable[[VariantResult], None] | None = None,
) -> Results:
    """Run every variant of ``cfg`` on the same generated request stream.

    Raises:
        SimulatorError: bad names, impossible configurations (with the memory breakdown).
    """
    variants = resolve_variants(cfg)
    workload = build_workload(cfg.workload, seed=cfg.seed)
    if len(workload) == 0:
        raise ConfigError("workload: the workload holds no requests (check num_requests, filters and window)")
    results = Results(scenario_name=cfg.name, seed=cfg.seed, description=cfg.description)
    for name, vcfg in variants:
        vr = run_variant(name, vcfg, workload)
        if vcfg.engine.cost_model == "cycle":
            save_cycle_caches()
        results.variants.append(vr)
        if on_variant_done is not None:
            on_variant_done(vr)
    return results


__all__ = ["MemoryBudget", "kv_bytes_per_token_per_gpu", "memory_budget", "run_scenario", "run_variant"]

