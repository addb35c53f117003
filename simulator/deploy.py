"""Deployable server command lines for a simulated configuration: vLLM and SGLang.

``servesim plan`` ends with a ranking; the next step is to start the winner on real GPUs.
:func:`vllm_command` and :func:`sglang_command` turn one resolved configuration (one replica
of a plan candidate, or any scenario) into the ``vllm serve ...`` and
``python -m sglang.launch_server ...`` lines that start the same configuration, with a note
for every setting that has no exact flag (a checkpoint that must be pre-quantized, a KV
dtype the server lacks, replicas behind a load balancer).

Mapping (servesim key -> vLLM flag / SGLang flag):

=============================== =============================== ===============================
``hardware.tensor_parallel``     ``--tensor-parallel-size``      ``--tp``
``hardware.pipeline_parallel``   ``--pipeline-parallel-size``    ``--pp-size``
``hardware.gpu_memory_util...``  ``--gpu-memory-utilization``    ``--mem-fraction-static``
``scheduler.max_num_seqs``       ``--max-num-seqs``              ``--max-running-requests``
``scheduler.max_num_batched...`` ``--max-num-batched-tokens``    ``--chunked-prefill-size``
``kv_cache.block_size_tokens``   ``--block-size``                ``--page-size``
``kv_cache.manager: radix``      ``--enable-prefix-caching``     (radix cache is the default)
``kv_cache.manager: paged``      ``--no-enable-prefix-caching``  ``--disable-radix-cache``
``model.max_model_len_tokens``   ``--max-model-len``             ``--context-length``
``model.quantization``           ``--quantization`` / --dtype    ``--quantization`` / --dtype
``model.kv_cache_dtype: fp8``    ``--kv-cache-dtype fp8``        ``--kv-cache-dtype fp8_e4m3``
=============================== =============================== ===============================
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from servesim.simulator.capacity import PlanResult
    from servesim.simulator.scenario import ScenarioCfg

# (vLLM --quantization or --dtype, SGLang --quantization or --dtype, note). None: no flag.
_QUANT: dict[str, tuple[list[str], list[str], str]] = {
    "fp16": (["--dtype", "float16"], ["--dtype", "float16"], ""),
    "bf16": (["--dtype", "bfloat16"], ["--dtype", "bfloat16"], ""),
    "fp8": (["--quantization", "fp8"], ["--quantization", "fp8"],
            "fp8: dynamic W8A8 FP8 from the fp16 checkpoint (or serve an FP8 checkpoint)"),
    "w8a8-int8": (["--quantization", "compressed-tensors"], ["--quantization", "w8a8_int8"],
                  "w8a8-int8: needs an INT8 W8A8 checkpoint (e.g. made with llm-compressor)"),
    "w8a16": (["--quantization", "compressed-tensors"], ["--quantization", "compressed-tensors"],
              "w8a16: needs an 8-bit weight-only checkpoint (compressed-tensors)"),
    "w4a16": (["--quantization", "awq_marlin"], ["--quantization", "awq_marlin"],
              "w4a16: needs a 4-bit AWQ checkpoint (use gptq_marlin for a GPTQ one)"),
    "w4a8": (["--quantization", "compressed-tensors"], ["--quantization", "compressed-tensors"],
             "w4a8: needs a W4A8 checkpoint (compressed-tensors)"),
    "w4a8-kv4": (["--quantization", "compressed-tensors"],
                 ["--quantization", "compressed-tensors"],
                 "w4a8-kv4: needs a W4A8 checkpoint; neither server has a 4-bit KV cache"),
    "nvfp4": (["--quantization", "modelopt_fp4"], ["--quantization", "modelopt_fp4"],
              "nvfp4: needs an NVFP4 checkpoint (NVIDIA ModelOpt)"),
}
_KV = {"fp8": ("fp8", "fp8_e4m3")}
_VLLM_BLOCK_SIZES = (1, 8, 16, 32, 64, 128)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeployCommands:
    """The server command lines of one configuration, and what they cannot say."""

    vllm: str
    sglang: str
    notes: tuple[str, ...]


def hf_model_id(name: str) -> str:
    """The Hugging Face id to serve for a bundled model (its Instruct/chat id when there is one).

    A model given as a ``config.json`` path is served from that folder.
    """
    from pathlib import Path

    from servesim.hwmodels.models import HF_MODEL_IDS

    if name.endswith(".json"):
        return str(Path(name).parent)
    ids = [k for k, v in HF_MODEL_IDS.items() if v == name.lower()]
    if not ids:
        return name
    tuned = [k for k in ids if k.lower().endswith(("-instruct", "-chat-hf", "-chat"))]
    return (tuned or ids)[0]


def deploy_commands(cfg: ScenarioCfg, *, replicas: int = 1) -> DeployCommands:
    """vLLM and SGLang command lines that start one replica of ``cfg`` (its first hardware group)."""
    group = cfg.hardware_groups[0]
    m, kv, s = cfg.model, cfg.kv_cache, cfg.scheduler
    model = hf_model_id(str(m.config) if m.config else str(m.name))
    notes: list[str] = []
    vq, sq, qnote = _QUANT.get(m.quantization, ([], [], f"{m.quantization}: no server flag"))
    if qnote:
        notes.append(qnote)

    vllm = ["vllm", "serve", model, "--tensor-parallel-size", str(group.tensor_parallel)]
    sgl = ["python", "-m", "sglang.launch_server", "--model-path", model,
           "--tp", str(group.tensor_parallel)]
    if group.pipeline_parallel > 1:
        vllm += ["--pipeline-parallel-size", str(group.pipeline_parallel)]
        sgl += ["--pp-size", str(group.pipeline_parallel)]
    util = f"{group.gpu_memory_utilization:g}"
    vllm += ["--gpu-memory-utilization", util, "--max-num-seqs", str(s.max_num_seqs)]
    sgl += ["--mem-fraction-static", util, "--max-running-requests", str(s.max_num_seqs)]
    vllm += vq
    sgl += sq
    kv_dtype = str(m.kv_cache_dtype)
    if kv_dtype in _KV:
        vllm += ["--kv-cache-dtype", _KV[kv_dtype][0]]
        sgl += ["--kv-cache-dtype", _KV[kv_dtype][1]]
    elif kv_dtype in ("int8", "int4"):
        notes.append(f"KV cache {kv_dtype}: neither server has it (fp8 is the nearest)")
    if s.policy == "sarathi":
        vllm += ["--enable-chunked-prefill", "--max-num-batched-tokens", str(s.chunk_size_tokens)]
        sgl += ["--chunked-prefill-size", str(s.chunk_size_tokens)]
    else:
        vllm += ["--max-num-batched-tokens", str(s.max_num_batched_tokens)]
        sgl += ["--chunked-prefill-size", str(s.max_num_batched_tokens)]
    if kv.manager == "contiguous":
        notes.append("contiguous KV: both servers page their KV cache; this is the paged form")
    block = kv.block_size_tokens
    if block in _VLLM_BLOCK_SIZES:
        vllm += ["--block-size", str(block)]
    else:
        notes.append(f"block size {block}: vLLM takes one of {_VLLM_BLOCK_SIZES}")
    sgl += ["--page-size", str(block)]
    if kv.manager == "radix":
        vllm += ["--enable-prefix-caching"]
        sgl += ["--schedule-policy", "lpm" if s.policy == "sglang" else "fcfs"]
    else:
        vllm += ["--no-enable-prefix-caching"]
        sgl += ["--disable-radix-cache"]
    if m.max_model_len_tokens:
        vllm += ["--max-model-len", str(m.max_model_len_tokens)]
        sgl += ["--context-length", str(m.max_model_len_tokens)]
    if s.preemption == "swap":
        notes.append("swap preemption: servers preempt by recompute by default")
    if replicas > 1:
        notes.append(f"{replicas} replicas: one server each behind a load balancer "
                     f"(or --data-parallel-size {replicas} / --dp {replicas})")
    return DeployCommands(vllm=shlex.join(vllm), sglang=shlex.join(sgl), notes=tuple(notes))


def plan_deploy_commands(result: PlanResult, top_k: int = 3) -> list[dict[str, Any]]:
    """Command lines for the ``top_k`` best feasible candidates of a plan, best first.

    Each item: ``rank``, ``label``, ``replicas``, ``vllm``, ``sglang``, ``notes``.
    """
    from servesim.simulator.scenario import scenario_from_dict
    from servesim.simulator.sweep import apply_params, set_dotted

    spec = result.spec
    table = result.table
    if table.empty or "rank" not in table:
        return []
    out = []
    ranked = table[table["rank"].notna()].sort_values("rank").head(top_k)
    for rec in ranked.to_dict(orient="records"):
        point = spec.candidates[int(rec["point_index"])]
        data = set_dotted(apply_params(spec.base, point.params), "hardware.replicas", 1)
        data.pop("variants", None)
        cfg = scenario_from_dict(data, base_dir=spec.base_dir)
        replicas = rec.get("replicas")
        replicas = int(replicas) if isinstance(replicas, int | float) and math.isfinite(replicas) else 1
        cmds = deploy_commands(cfg, replicas=replicas)
        out.append({"rank": int(rec["rank"]), "label": str(rec.get("label", "")),
                    "replicas": replicas, "vllm": cmds.vllm, "sglang": cmds.sglang,
                    "notes": list(cmds.notes)})
    return out


def commands_script(items: list[dict[str, Any]], *, title: str) -> str:
    """The commands as a commented shell file (``deploy.sh`` next to the plan report)."""
    lines = [f"# {title}: server command lines for the best candidates (servesim plan).",
             "# One replica each; start `replicas` of them behind a load balancer.", ""]
    for it in items:
        lines.append(f"# rank {it['rank']}: {it['label']} x {it['replicas']} replica(s)")
        lines += [f"#   note: {n}" for n in it["notes"]]
        lines += [it["vllm"], it["sglang"], ""]
    return "\n".join(lines)
