"""``servesim plan`` ends with deployable server command lines (simulator/deploy.py)."""

from __future__ import annotations

import math
import shlex
from pathlib import Path

import pandas as pd

from servesim.simulator.capacity import PlanResult, load_plan
from servesim.simulator.deploy import commands_script, deploy_commands, plan_deploy_commands
from servesim.simulator.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "scenarios" / "quickstart.yaml"


def _flags(line: str) -> dict[str, str | None]:
    """``--flag value`` pairs of a command line (a bare flag maps to None)."""
    words = shlex.split(line)
    out: dict[str, str | None] = {}
    for i, w in enumerate(words):
        if w.startswith("--"):
            nxt = words[i + 1] if i + 1 < len(words) else None
            out[w] = None if nxt is None or nxt.startswith("--") else nxt
    return out


def test_quickstart_commands_are_exact():
    cmds = deploy_commands(load_scenario(QUICKSTART))
    assert cmds.vllm == (
        "vllm serve meta-llama/Llama-3.1-8B-Instruct --tensor-parallel-size 1 "
        "--gpu-memory-utilization 0.9 --max-num-seqs 256 --dtype float16 "
        "--max-num-batched-tokens 8192 --block-size 16 --no-enable-prefix-caching "
        "--max-model-len 8192"
    )
    assert cmds.sglang == (
        "python -m sglang.launch_server --model-path meta-llama/Llama-3.1-8B-Instruct --tp 1 "
        "--mem-fraction-static 0.9 --max-running-requests 256 --dtype float16 "
        "--chunked-prefill-size 8192 --page-size 16 --disable-radix-cache --context-length 8192"
    )
    assert cmds.notes == ()


def test_quantization_kv_dtype_prefix_cache_and_chunking_map_to_flags():
    cfg = load_scenario(QUICKSTART, [
        "model.quantization=fp8", "model.kv_cache_dtype=fp8", "kv_cache.manager=radix",
        "scheduler.policy=sarathi", "scheduler.chunk_size_tokens=1024",
        "hardware.tensor_parallel=2",
    ])
    cmds = deploy_commands(cfg, replicas=3)
    v, s = _flags(cmds.vllm), _flags(cmds.sglang)
    assert v["--quantization"] == "fp8" and v["--kv-cache-dtype"] == "fp8"
    assert v["--tensor-parallel-size"] == "2" and s["--tp"] == "2"
    assert "--enable-prefix-caching" in v and "--disable-radix-cache" not in s
    assert "--enable-chunked-prefill" in v and v["--max-num-batched-tokens"] == "1024"
    assert s["--chunked-prefill-size"] == "1024" and s["--kv-cache-dtype"] == "fp8_e4m3"
    assert any("3 replicas" in n for n in cmds.notes)
    w4 = deploy_commands(load_scenario(QUICKSTART, ["model.quantization=w4a16"]))
    assert _flags(w4.vllm)["--quantization"] == "awq_marlin"
    assert any("AWQ checkpoint" in n for n in w4.notes)


def test_plan_commands_follow_the_ranking():
    spec = load_plan(ROOT / "examples" / "plan.yaml")
    fp8 = next(i for i, p in enumerate(spec.candidates)
               if p.params.get("model.quantization") == "fp8"
               and p.params.get("hardware.gpu") == "h100-sxm")
    fp16 = next(i for i, p in enumerate(spec.candidates)
                if p.params.get("model.quantization") == "fp16")
    table = pd.DataFrame({"rank": [1.0, 2.0, math.nan], "label": ["a", "b", "c"],
                          "point_index": [fp8, fp16, 0], "replicas": [4, 6, math.nan]})
    result = PlanResult(spec=spec, table=table, probes=pd.DataFrame(), curves=pd.DataFrame())
    items = plan_deploy_commands(result, top_k=5)
    assert [it["rank"] for it in items] == [1, 2]  # infeasible candidates get none
    assert _flags(items[0]["vllm"])["--quantization"] == "fp8"
    assert _flags(items[1]["vllm"])["--dtype"] == "float16"
    assert items[0]["replicas"] == 4
    text = commands_script(items, title=spec.name)
    assert text.count("vllm serve ") == 2 and text.count("sglang.launch_server") == 2
    assert "# rank 1: a x 4 replica(s)" in text
