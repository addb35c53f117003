"""Expert parallelism and attention data parallelism in the step cost (issue #13 mechanism 2).

The terms come from microbenchmarks (DeepEP's all-to-all tables, order statistics of a
balls-into-bins load); the last tests check them end to end on the published DeepSeek-V3
serving figures that motivated them (LMSYS, "Deploying DeepSeek with PD Disaggregation and
Large-scale Expert Parallelism on 96 H100 GPUs", May 2025).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from servesim.hwmodels.achievable import get_achievable
from servesim.hwmodels.errors import ConfigError
from servesim.hwmodels.models import get_model
from servesim.hwmodels.quant import routed_expert_bytes, weight_bytes
from servesim.hwmodels.stepcost import (
    StepCostModel,
    expected_distinct_groups,
    expected_max_std_normal,
    expert_max_load_sigma,
)
from servesim.simulator.cli import app

DSV3 = {"gpu": "h100-sxm", "model": "deepseek-v3", "scheme": "fp8", "stack": "sglang"}
#: LMSYS decode: 9 nodes x 8 H100, EP72 with 32 redundant experts (288 slots), DP attention.
EP72 = {"tensor_parallel": 72, "expert_parallel": 72, "attention_data_parallel": 72, "redundant_experts": 32}
#: LMSYS prefill: 4 nodes x 8 H100, EP32, DP attention.
EP32 = {"tensor_parallel": 32, "expert_parallel": 32, "attention_data_parallel": 32}


def dec(m: StepCostModel, n: int, ctx: int) -> float:
    return m.step_time_s(num_decode_seqs=n, decode_ctx_tokens=n * ctx)


def pre(m: StepCostModel, tokens: int, n: int) -> float:
    """``n`` prompts of ``tokens`` each in one step."""
    return m.step_time_s(prefill_tokens=tokens * n, prefill_attn_pairs=n * tokens * (tokens + 1) / 2,
                         prefill_kv_tokens=tokens * n, num_prefill_seqs=n)


def without_new_terms(m: StepCostModel) -> StepCostModel:
    """The same deployment priced without this mechanism's two terms (no all-to-all, mean
    expert load): what the step cost said before it could be told about EP."""
    m._kind_a2a = [(0.0,) * 8 for _ in m._kind_a2a]
    m._kinds = [(n, [dataclasses.replace(c, sigma=0.0) if c.is_routed else c for c in g]) for n, g in m._kinds]
    m._pack = m._build_pack()
    return m


# ------------------------------------------------------------------ the load formula
def test_expected_max_of_normals_matches_tables() -> None:
    """E[max of n standard normals]: 1/sqrt(pi) for 2, and the tabulated 1.0294 (4),
    1.4236 (8), 1.7660 (16), 2.0697 (32) (Tippett 1925; Harter 1961)."""
    assert expected_max_std_normal(1) == 0.0
    assert expected_max_std_normal(2) == pytest.approx(1 / math.sqrt(math.pi), abs=1e-9)
    for n, want in ((4, 1.0294), (8, 1.4236), (16, 1.7660), (32, 2.0697)):
        assert expected_max_std_normal(n) == pytest.approx(want, abs=2e-4), n


@pytest.mark.parametrize(("slots", "ep", "k", "tokens"), [(256, 8, 8, 256), (288, 72, 8, 1024), (8, 2, 2, 64),
                                                          (64, 4, 6, 40)])
def test_max_load_formula_against_sampled_routing(slots: int, ep: int, k: int, tokens: int) -> None:
    """The closed form (mean + sigma sqrt(T)) against 200 seeded draws of uniform top-k
    routing: within 3 % of the sampled expected maximum rank load."""
    rng = np.random.default_rng(13)
    per = slots // ep
    maxima = []
    for _ in range(200):
        picks = np.argsort(rng.random((tokens, slots)), axis=1)[:, :k]  # k distinct slots per token
        load = np.bincount((picks // per).ravel(), minlength=ep)
        maxima.append(load.max())
    formula = min(tokens * k / ep + expert_max_load_sigma(slots, per, k, ep) * math.sqrt(tokens),
                  tokens * min(k, per))
    assert formula == pytest.approx(float(np.mean(maxima)), rel=0.03)
    assert formula > tokens * k / ep  # the busiest rank carries more than the mean


def test_distinct_destinations() -> None:
    """A token's 8 experts over 8 GPUs of 32 slots land on 8 (1 - C(224,8)/C(256,8)) = 5.30
    distinct GPUs; over 4 nodes of 72 slots (EP32, 288 slots) on 3.62 nodes."""
    assert expected_distinct_groups(256, 8, 8) == pytest.approx(8 * (1 - math.comb(224, 8) / math.comb(256, 8)))
    assert expected_distinct_groups(256, 8, 8) == pytest.approx(5.30, abs=0.01)
    assert expected_distinct_groups(288, 4, 8) == pytest.approx(3.62, abs=0.01)
    assert expected_distinct_groups(16, 1, 2) == 1.0


# ------------------------------------------------------------------ the all-to-all figures
@pytest.mark.parametrize(("ep", "d_us", "c_us"), [(16, 118, 195), (32, 155, 273), (64, 173, 314)])
def test_low_latency_law_reproduces_deepep_at_128_tokens(ep: int, d_us: float, c_us: float) -> None:
    """DeepEP's low-latency kernels (docs/legacy.md, H800, 128 tokens per rank, 7168 hidden,
    top-8, FP8 dispatch, BF16 combine): the per-GPU law gives the measured times."""
    fig = get_achievable("h100-sxm").alltoall_for(ep)
    tokens_bytes = 128 * 8 * 7168
    assert fig.dispatch_s(tokens_bytes * (1 + 4 / 128)) == pytest.approx(d_us * 1e-6, rel=0.01)
    assert fig.combine_s(tokens_bytes * 2) == pytest.approx(c_us * 1e-6, rel=0.01)
    assert fig.node_gpus == 8 and fig.confidence == "derived"


def test_alltoall_only_under_attention_data_parallel_and_per_kernel_family() -> None:
    """Dispatch + combine per MoE layer only with DP attention (TP attention combines through
    its all-reduce); decode-only steps run the low-latency law (T k h bytes), steps with
    prefill the normal kernels (T x distinct nodes x h bytes)."""
    ep_tp = StepCostModel(**DSV3, tensor_parallel=8, expert_parallel=8)
    assert "alltoall" not in [o.op for o in ep_tp.breakdown(num_decode_seqs=64, decode_ctx_tokens=64_000)]
    m = StepCostModel(**DSV3, **EP32)
    d = {o.op: o for o in m.breakdown(num_decode_seqs=128 * 32, decode_ctx_tokens=128 * 32 * 1000)}
    assert d["alltoall"].bound == "communication"
    fig = get_achievable("h100-sxm").alltoall_for(32)
    h, k = 7168, 8
    ll = fig.dispatch_s(128 * k * h * (1 + 4 / 128)) + fig.combine_s(128 * k * h * 2)
    assert d["alltoall"].time_s == pytest.approx(58 * ll, rel=1e-9)  # 58 MoE layers
    assert "allreduce" not in d  # attention has no TP group left
    p = {o.op: o for o in m.breakdown(prefill_tokens=4096 * 32, prefill_attn_pairs=32 * 4096 * 4097 / 2,
                                      prefill_kv_tokens=4096 * 32, num_prefill_seqs=32)}
    dest = expected_distinct_groups(256, 4, k)
    normal = (fig.dispatch_latency_s + fig.combine_latency_s + 4096 * dest * h * (1 + 4 / 128)
              / fig.normal_dispatch_bw_bytes_per_s + 4096 * dest * h * 2 / fig.normal_combine_bw_bytes_per_s)
    assert p["alltoall"].time_s == pytest.approx(58 * normal, rel=1e-9)


# ------------------------------------------------------------------ layout, weights, errors
def test_expert_parallel_off_is_the_tp_model() -> None:
    base = StepCostModel(**DSV3, tensor_parallel=8)
    same = StepCostModel(**DSV3, tensor_parallel=8, expert_parallel=1, attention_data_parallel=1)
    assert base.packed().tolist() == same.packed().tolist()


def test_weights_per_gpu() -> None:
    """EP without DP attention holds what TP holds (experts whole instead of sliced); DP
    attention replicates the rest on every rank; redundant experts add their slots."""
    model = get_model("deepseek-v3")
    total, routed = weight_bytes(model, "fp8"), routed_expert_bytes(model, "fp8")
    assert 0.9 < routed / total < 1.0
    h200 = {**DSV3, "gpu": "h200"}
    tp8 = StepCostModel(**h200, tensor_parallel=8).weight_bytes_per_gpu
    assert StepCostModel(**h200, tensor_parallel=8, expert_parallel=8).weight_bytes_per_gpu == pytest.approx(tp8)
    dp8 = StepCostModel(**h200, tensor_parallel=8, expert_parallel=8, attention_data_parallel=8)
    assert dp8.weight_bytes_per_gpu == pytest.approx((total - routed) + routed / 8)
    ep72 = StepCostModel(**DSV3, **EP72)
    assert ep72.weight_bytes_per_gpu == pytest.approx((total - routed) + routed * 288 / 256 / 72)


@pytest.mark.parametrize(("kw", "needle"), [
    ({"model": "llama-3.1-70b", "tensor_parallel": 8, "expert_parallel": 8}, "dense model"),
    ({"tensor_parallel": 8, "expert_parallel": 3}, "must divide tensor_parallel=8"),
    ({"tensor_parallel": 8, "attention_data_parallel": 3, "expert_parallel": 8}, "attention_data_parallel=3"),
    ({"tensor_parallel": 8, "expert_parallel": 4, "attention_data_parallel": 8}, "needs expert_parallel == tensor"),
    ({"tensor_parallel": 24, "expert_parallel": 24, "attention_data_parallel": 24}, "redundant_experts=8"),
    ({"tensor_parallel": 8, "redundant_experts": 8}, "needs expert_parallel > 1"),
    ({"tensor_parallel": 8, "expert_parallel": 0}, "expert_parallel must be >= 1"),
])
def test_invalid_layouts_are_one_clear_error(kw: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        StepCostModel(**{**DSV3, **kw})


def test_scenario_fields_reach_the_cost_model_and_bad_ones_exit_2(tmp_path: Path) -> None:
    """``hardware.expert_parallel`` / ``attention_data_parallel`` run end to end (the summary
    names them); an impossible layout is exit 2 with one line, no traceback."""
    scen = {
        "name": "ep",
        "hardware": {"gpu": "h200", "tensor_parallel": 8, "expert_parallel": 8, "attention_data_parallel": 8},
        "model": {"name": "deepseek-v3", "quantization": "fp8", "max_model_len_tokens": 4096},
        "engine": {"stack": "sglang", "loop": "python"},
        "workload": {"num_requests": 12, "arrivals": {"process": "poisson", "rate_per_s": 4.0},
                     "lengths": {"prompt": {"dist": "fixed", "tokens": 256},
                                 "output": {"dist": "fixed", "tokens": 16}}},
    }
    path = tmp_path / "ep.yaml"
    path.write_text(yaml.safe_dump(scen))
    res = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    summary = next((tmp_path / "out").rglob("summary.json")).read_text()
    assert '"expert_parallel": 8' in summary and '"attention_data_parallel": 8' in summary
    scen["hardware"]["expert_parallel"] = 3
    path.write_text(yaml.safe_dump(scen))
    res = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2
    assert "expert_parallel=3 must divide tensor_parallel=8" in res.output and "Traceback" not in res.output


# ------------------------------------------------------------------ the data that motivated it
def test_lmsys_decode_ep72() -> None:
    """LMSYS (SGLang, 9 nodes x 8 H100, EP72, DP attention, 256 sequences per GPU, 2,000-token
    context): 22,282 output tokens/s per node. Without the two terms the step cost says
    ~37.6k (+69 %); with them 17.9k (0.80): its per-layer dispatch (~0.33 ms for 256 tokens)
    matches the blog's ~0.17 ms per 128-token micro-batch, and what is left is SGLang's
    two-batch overlap hiding part of the all-to-all, which is not modelled."""
    measured = 22_282
    tput = 8 * 256 / dec(StepCostModel(**DSV3, **EP72), 256 * 72, 2000)
    before = 8 * 256 / dec(without_new_terms(StepCostModel(**DSV3, **EP72)), 256 * 72, 2000)
    assert before / measured > 1.5
    assert 0.75 <= tput / measured <= 0.95


@pytest.mark.parametrize(("prompt", "measured"), [(1024, 57_674), (2048, 54_543), (4096, 50_302)])
def test_lmsys_prefill_ep32(prompt: int, measured: float) -> None:
    """LMSYS prefill on 4 nodes x 8 H100 (EP32, DP attention, 16,384 tokens per GPU):
    57,674 / 54,543 / 50,302 input tokens/s per node at 1K / 2K / 4K prompts (default
    expert placement; 59,337 at 4K with a simulated perfect EPLB). Without the two terms:
    +32-45 %; with them 0.75-0.8 (two-batch overlap, +27-35 % in the blog's ablation, is not
    modelled)."""
    n = 16_384 // prompt * 32
    tput = 8 * 16_384 / pre(StepCostModel(**DSV3, **EP32), prompt, n)
    before = 8 * 16_384 / pre(without_new_terms(StepCostModel(**DSV3, **EP32)), prompt, n)
    assert before / measured > 1.25
    assert 0.7 <= tput / measured <= 0.95


def test_alltoall_overlap_frac_hides_that_share_of_the_alltoall() -> None:
    """Stack field ``alltoall_overlap_frac`` (two-batch overlap, not modelled: 0 in every shipped
    profile, varied by the bands): the all-to-all's time scales by ``1 - frac``, nothing else."""
    from servesim.hwmodels.stacks import get_stack

    def a2a_and_rest(frac: float) -> tuple[float, float]:
        m = StepCostModel(**{**DSV3, "stack": get_stack("sglang").replace(alltoall_overlap_frac=frac)}, **EP72)
        ops = {o.op: o.time_s for o in m.breakdown(num_decode_seqs=256 * 72, decode_ctx_tokens=256 * 72 * 2000)}
        a2a = ops.get("alltoall", 0.0)  # no all-to-all time: no alltoall row
        return a2a, ops["total"] - a2a

    a0, r0 = a2a_and_rest(0.0)
    a1, r1 = a2a_and_rest(0.25)
    assert a1 == pytest.approx(0.75 * a0, rel=1e-12) and r1 == pytest.approx(r0, rel=1e-12)
    assert a2a_and_rest(1.0)[0] == 0.0
    with pytest.raises(ConfigError, match="alltoall_overlap_frac"):
        get_stack("sglang").replace(alltoall_overlap_frac=1.5)
