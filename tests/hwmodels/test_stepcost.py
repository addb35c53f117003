"""Step-cost model: hand calculations, bounds, quantization, TP/PP, MoE, vectorised == scalar."""

from __future__ import annotations

import numpy as np
import pytest

from servesim.hwmodels.achievable import get_achievable
from servesim.hwmodels.errors import CapacityError, ConfigError
from servesim.hwmodels.gpus import get_gpu
from servesim.hwmodels.models import get_model
from servesim.hwmodels.ops import elementwise_bytes_per_token_per_layer, layer_gemms, lm_head_gemm
from servesim.hwmodels.quant import get_scheme
from servesim.hwmodels.roofline import (
    ELEMENTWISE_LAUNCH_S,
    ELEMENTWISE_MEM_EFF_FRAC,
    GemmParams,
    RooflineTimer,
)
from servesim.hwmodels.stepcost import StepCostModel, prefill_chunk_aggregates

IDEAL = GemmParams(launch_s=0.0, compute_eff_max_frac=1.0, m_half_tokens=0.0, nk_half_elems=0.0,
                   mem_eff_max_frac=1.0, bytes_half=0.0, tile_m_tokens=1)
FIELDS = ("prefill_tokens", "prefill_attn_pairs", "prefill_kv_tokens", "num_prefill_seqs",
          "num_decode_seqs", "decode_ctx_tokens")


def decode(b: int, ctx: int) -> dict[str, float]:
    return {"num_decode_seqs": b, "decode_ctx_tokens": b * ctx}


def prefill(t: int) -> dict[str, float]:
    return {**prefill_chunk_aggregates([(0, t)]), "num_prefill_seqs": 1}


def test_batch1_decode_hand_calculation() -> None:
    """Ideal roofline (no launch, full efficiency): a batch-1 decode of Llama-2-7B on H100 reads
    every GEMM weight once; the time is bytes / bandwidth, plus the attention's KV read, the
    elementwise kernels and nothing else."""
    gpu, model = get_gpu("h100-sxm"), get_model("llama-2-7b")
    m = StepCostModel(gpu=gpu, model=model, gemm_params=IDEAL, step_overhead_s=0.0)
    bw = gpu.hbm_bw_bytes_per_s
    fp16 = get_scheme("fp16")
    gemm_bytes = sum(g.weight_bytes + 2 * (g.n + g.k) for g in layer_gemms(model, fp16, 1, moe_layer=False))
    head = lm_head_gemm(model, fp16, 1)
    kv_layer = 2 * 32 * 128 * 2  # K and V, 32 heads x 128, fp16
    ctx = 100
    attn_bytes = kv_layer * (ctx + 1) + 2 * 32 * 256  # KV read + new KV + Q in / O out
    ew = 4 * ELEMENTWISE_LAUNCH_S + elementwise_bytes_per_token_per_layer(model, 1) / (bw * ELEMENTWISE_MEM_EFF_FRAC)
    expected = 32 * (gemm_bytes / bw + attn_bytes / bw + ew) + (head.weight_bytes + 2 * (head.n + head.k)) / bw
    got = m.cost(**decode(1, ctx))
    assert got.time_s == pytest.approx(expected, rel=1e-9)
    assert got.compute_s == 0.0
    assert got.kv_read_s == pytest.approx(32 * attn_bytes / bw)


def test_split_sums_to_time_and_overhead_is_the_default() -> None:
    m = StepCostModel(gpu="h100-sxm", model="llama-3.1-8b")
    c = m.cost(**prefill(300), **decode(20, 500))
    parts = c.compute_s + c.weight_read_s + c.kv_read_s + c.comm_s + c.overhead_s
    assert parts == pytest.approx(c.time_s)
    assert c.overhead_s == m.step_overhead_s == pytest.approx(1.5e-3)
    assert m.cost().time_s == pytest.approx(m.step_overhead_s)  # an empty step


def test_decode_is_memory_bound_and_large_prefill_compute_bound_on_h100() -> None:
    m = StepCostModel(gpu="h100-sxm", model="llama-3.1-8b")
    dec = {o.op: o for o in m.breakdown(**decode(8, 2000))}
    assert {dec[op].bound for op in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj", "attention")} == {"memory"}
    pre = {o.op: o for o in m.breakdown(**prefill(8192))}
    assert {pre[op].bound for op in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj", "attention")} == {"compute"}
    assert pre["total"].bound == "compute"


@pytest.mark.parametrize("model", ["llama-2-7b", "mixtral-8x7b", "deepseek-v2", "opt-13b", "mistral-7b"])
def test_time_is_monotone_in_batch_tokens_and_context(model: str) -> None:
    tp = 8 if model == "deepseek-v2" else 2
    m = StepCostModel(gpu="h100-sxm", model=model, tensor_parallel=tp)
    b = np.arange(1, 257, dtype=float)
    t_b = m.cost(num_decode_seqs=b, decode_ctx_tokens=b * 1000).time_s
    assert np.all(np.diff(t_b) >= 0)
    ctx = np.linspace(0, 64_000, 50)
    t_c = m.cost(num_decode_seqs=np.full(50, 16.0), decode_ctx_tokens=16 * ctx).time_s
    assert np.all(np.diff(t_c) >= -1e-15)
    toks = np.arange(1, 4097, 64, dtype=float)
    t_p = m.cost(prefill_tokens=toks, prefill_attn_pairs=toks * (toks + 1) / 2, prefill_kv_tokens=toks,
                 num_prefill_seqs=np.ones_like(toks)).time_s
    assert np.all(np.diff(t_p) >= 0)


def test_w4a16_cuts_weight_bytes_and_batch1_decode_time() -> None:
    fp16 = StepCostModel(gpu="h100-sxm", model="llama-2-13b", scheme="fp16")
    w4 = StepCostModel(gpu="h100-sxm", model="llama-2-13b", scheme="w4a16")
    b16 = {o.op: o for o in fp16.breakdown(**decode(1, 512))}
    b4 = {o.op: o for o in w4.breakdown(**decode(1, 512))}
    assert b4["gate_up_proj"].bytes < 0.3 * b16["gate_up_proj"].bytes
    assert w4.step_time_s(**decode(1, 512)) < 0.6 * fp16.step_time_s(**decode(1, 512))
    # ... while a large prefill gains nothing (compute-bound, plus dequantisation work).
    assert w4.step_time_s(**prefill(4096)) >= 0.95 * fp16.step_time_s(**prefill(4096))


def test_kv_dtype_changes_kv_bytes() -> None:
    f16 = StepCostModel(gpu="h100-sxm", model="llama-3.1-8b", kv_dtype="fp16")
    f8 = StepCostModel(gpu="h100-sxm", model="llama-3.1-8b", kv_dtype="fp8")
    a16 = {o.op: o for o in f16.breakdown(**decode(64, 4000))}["attention"]
    a8 = {o.op: o for o in f8.breakdown(**decode(64, 4000))}["attention"]
    assert a8.bytes == pytest.approx(a16.bytes / 2, rel=0.01)
    assert f8.cost(**decode(64, 4000)).kv_read_s < 0.6 * f16.cost(**decode(64, 4000)).kv_read_s


def test_tensor_parallel_shards_gemms_and_adds_allreduce() -> None:
    one = StepCostModel(gpu="h100-sxm", model="llama-2-13b", tensor_parallel=1)
    two = StepCostModel(gpu="h100-sxm", model="llama-2-13b", tensor_parallel=2)
    o1 = {o.op: o for o in one.breakdown(**decode(32, 1000))}
    o2 = {o.op: o for o in two.breakdown(**decode(32, 1000))}
    assert "allreduce" not in o1 and o2["allreduce"].time_s > 0
    assert o2["qkv_proj"].flops == pytest.approx(o1["qkv_proj"].flops / 2)
    assert o2["attention"].bytes < 0.55 * o1["attention"].bytes
    assert two.cost(**decode(32, 1000)).comm_s > 0
    assert two.step_time_s(**decode(32, 1000)) < one.step_time_s(**decode(32, 1000))


def test_allreduce_is_latency_plus_ring_bytes() -> None:
    """Two all-reduces per layer, each the GPU's measured all-reduce time for that message size
    and TP size: measured times interpolated, past them (and where none are listed) latency plus
    the ring's bus bytes at the achievable bus bandwidth (hwmodels/data/achievable.yaml)."""
    gpu = get_gpu("h100-sxm")
    m = StepCostModel(gpu=gpu, model="llama-2-7b", tensor_parallel=4)
    ar = {o.op: o for o in m.breakdown(**prefill(1000))}["allreduce"]
    fig = get_achievable(gpu).allreduce_for(4)
    assert fig.bus_bw_bytes_per_s < gpu.scaleup_bw_bytes_per_s_per_direction  # below the link
    per = fig.time_s(1000 * 4096 * 2)  # 8 MB: past the measured sizes, the last + bus bytes at bus bw
    assert per == pytest.approx(fig.curve[-1][1] + 2 * 3 / 4 * (8192000 - fig.curve[-1][0]) / fig.bus_bw_bytes_per_s)
    assert ar.time_s == pytest.approx(32 * 2 * per)
    # without measured sizes (TP 2 here): latency + the ring's bus bytes at the bus bandwidth
    m2 = StepCostModel(gpu=gpu, model="llama-2-7b", tensor_parallel=2)
    fig2 = get_achievable(gpu).allreduce_for(2)
    ar2 = {o.op: o for o in m2.breakdown(**prefill(1000))}["allreduce"]
    assert ar2.time_s == pytest.approx(32 * 2 * (fig2.latency_s + 1000 * 4096 * 2 / fig2.bus_bw_bytes_per_s))


def test_pipeline_stages_sum_to_the_step_latency() -> None:
    m = StepCostModel(gpu="h100-sxm", model="llama-2-70b", tensor_parallel=2, pipeline_parallel=4)
    step = {**prefill(256), **decode(16, 800)}
    stages = m.stage_times_s(**step)
    c = m.cost(**step)
    assert len(stages) == 4
    assert sum(stages) + c.overhead_s == pytest.approx(c.time_s)
    assert c.bottleneck_stage_s == pytest.approx(max(stages))
    assert 0.0 <= m.pipeline_bubble_frac(**step) < 0.1  # 80 layers split 20/20/20/20, lm_head on the last


def test_moe_reads_only_touched_experts() -> None:
    m = StepCostModel(gpu="h100-sxm", model="mixtral-8x7b", tensor_parallel=2)
    b1 = {o.op: o for o in m.breakdown(**decode(1, 100))}["moe"].bytes
    b4 = {o.op: o for o in m.breakdown(**decode(4, 100))}["moe"].bytes
    b256 = {o.op: o for o in m.breakdown(**decode(256, 100))}["moe"].bytes
    # 1 token touches 2 of 8 experts; 4 tokens E(1-(1-k/E)^4) = 8(1 - 0.75^4) = 5.47; 256: ~all 8.
    assert b4 / b1 == pytest.approx(5.47 / 2, rel=0.02)
    assert 3.9 < b256 / b1 < 4.3  # router and activation bytes grow with tokens too


@pytest.mark.parametrize(
    ("model", "tp", "pp", "scheme"),
    [("llama-2-7b", 1, 1, "fp16"), ("mixtral-8x7b", 2, 2, "w4a16"), ("deepseek-v2", 8, 1, "fp8"),
     ("mistral-7b", 1, 1, "w8a8-int8"), ("opt-13b", 2, 1, "fp16")],
)
def test_vectorised_equals_scalar(model: str, tp: int, pp: int, scheme: str) -> None:
    m = StepCostModel(gpu="h100-sxm", model=model, tensor_parallel=tp, pipeline_parallel=pp, scheme=scheme)
    rng = np.random.default_rng(0)
    n = 200
    pf = rng.integers(0, 2048, n).astype(float) * (rng.random(n) < 0.5)
    cached = rng.integers(0, 4096, n).astype(float)
    ndec = rng.integers(0, 256, n).astype(float)
    arrays = {
        "prefill_tokens": pf,
        "prefill_attn_pairs": pf * (cached + (pf + 1) / 2),
        "prefill_kv_tokens": (cached + pf) * (pf > 0),
        "num_prefill_seqs": (pf > 0) * 1.0,
        "num_decode_seqs": ndec,
        "decode_ctx_tokens": ndec * rng.integers(1, 8000, n),
    }
    vec = m.cost(**arrays)
    for i in range(n):
        one = {k: float(v[i]) for k, v in arrays.items()}
        sc = m.cost(**one)
        assert m.step_time_s(**one) == pytest.approx(vec.time_s[i], rel=1e-12)
        for f in ("time_s", "compute_s", "weight_read_s", "kv_read_s", "comm_s", "overhead_s", "bottleneck_stage_s"):
            assert getattr(sc, f) == pytest.approx(getattr(vec, f)[i], rel=1e-12, abs=1e-15)
        if i < 20:
            assert sum(o.time_s for o in m.breakdown(**one)[:-1]) == pytest.approx(sc.time_s)


def test_op_timer_plugs_in() -> None:
    gpu = get_gpu("h100-sxm")
    base = StepCostModel(gpu=gpu, model="llama-2-7b")
    timed = StepCostModel(gpu=gpu, model="llama-2-7b", op_timer=RooflineTimer(gpu))
    step = {**prefill(300), **decode(32, 1000)}
    assert timed.step_time_s(**step) == pytest.approx(base.step_time_s(**step), rel=0.05)
    arr = timed.cost(num_decode_seqs=np.array([1.0, 32.0, 32.0]), decode_ctx_tokens=np.array([10.0, 32e3, 32e3]))
    assert arr.time_s[1] == arr.time_s[2] > arr.time_s[0]


def test_activation_workspace_grows_with_the_token_budget() -> None:
    m = StepCostModel(gpu="h100-sxm", model="llama-3.1-8b")
    small, large = m.activation_workspace_bytes(512), m.activation_workspace_bytes(8192)
    assert 0 < small < large
    # 8192 tokens x (3 h + qkv + 3 I) x 2 B ~ 1.0 GB, plus fp32 logits of 256 rows (0.5 GB).
    assert 0.5e9 < large < 2.0e9


def test_configuration_errors() -> None:
    with pytest.raises(ConfigError, match="fp8"):
        StepCostModel(gpu="a100-sxm4-80gb", model="llama-2-7b", scheme="fp8")
    with pytest.raises(ConfigError, match="kv_cache_dtype"):
        StepCostModel(gpu="a100-sxm4-80gb", model="llama-2-7b", kv_dtype="fp8")
    with pytest.raises(CapacityError, match="per GPU"):
        StepCostModel(gpu="h100-sxm", model="llama-3.1-405b", tensor_parallel=4)
    with pytest.raises(ConfigError):
        StepCostModel(gpu="h100-sxm", model="llama-2-7b", tensor_parallel=3)
    m = StepCostModel(gpu="h100-sxm", model="llama-2-7b")
    with pytest.raises(ConfigError):
        m.cost(num_decode_seqs=-1)
