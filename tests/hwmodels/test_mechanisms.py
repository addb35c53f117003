"""The seven mechanism classes of issue #13, each on the data that motivated it.

Tried against published end-to-end measurements, the pre-#13 step cost was off by the
amounts quoted in each test's docstring (the issue's figures). Those measurements are kept
outside the project, so each test compares the new model with the *pre-#13 model's* step
times on the same configurations (``PRE13``, produced by the code of commit f1f0060 - the
commit before the packed form - and pinned here) and checks that the mechanism moves the
prediction in the measured direction by about the measured amount. A mechanism, never a case:
no test adjusts a figure per configuration, and each is driven by a cited GPU figure or stack
default (hwmodels/data/achievable.yaml, hwmodels/data/stacks/*.yaml).
"""

from __future__ import annotations

import pytest

from servesim.hwmodels.stacks import get_stack
from servesim.hwmodels.stepcost import StepCostModel, prefill_chunk_aggregates

#: Step times (s) of the pre-#13 model (commit f1f0060, default 1.5 ms host overhead).
PRE13 = {
    "mi300x_70b_b1": 0.036590915408482604,
    "mi300x_70b_b256": 0.08164171958120867,
    "mi300x_70b_prefill4096": 0.6263363933629895,
    "rtx4090_8b_b1": 0.022716031561901127,
    "dsv3_b64": 0.028230802211255446,
    "dsv3_b256": 0.04100471847561109,
    "dsv3_prefill4096": 0.10596646054270221,
    "a100_7b_fp16_b1": 0.01155969446532882,
    "a100_7b_w4a16_b1": 0.005542868657451671,
    "a100_7b_w8a16_b1": 0.0072336649564624725,
    "h100_8b_fp16_p500": 0.01662007158127959,
    "h100_8b_fp16_p5000": 0.12330881216887578,
    "h100_8b_fp8_p500": 0.009707441430592455,
    "h100_8b_fp8_p5000": 0.07546532739924988,
    "h100_70b_tp4_b256": 0.036002933107890975,
    "h100_70b_tp4_ar_b256": 0.003516962133333333,
    "h100_70b_tp8_b256": 0.023038023886649543,
    "h100_70b_tp8_ar_b256": 0.0038897891555555552,
}


def dec(m: StepCostModel, b: int, ctx: int) -> float:
    return m.step_time_s(num_decode_seqs=b, decode_ctx_tokens=b * ctx)


def pre(m: StepCostModel, t: int) -> float:
    return m.step_time_s(**prefill_chunk_aggregates([(0, t)]), num_prefill_seqs=1)


def op_time(m: StepCostModel, op: str, **step: float) -> float:
    return {o.op: o.time_s for o in m.breakdown(**step)}[op]


def test_unchanged_where_nothing_was_wrong() -> None:
    """Dense fp16 on the two calibration GPUs under the default profile is the old model to
    the last bit (within 10 % of published measurements there already)."""
    assert dec(StepCostModel(gpu="a100-sxm4-80gb", model="llama-2-7b"), 1, 500) == PRE13["a100_7b_fp16_b1"]
    m = StepCostModel(gpu="h100-sxm", model="llama-3.1-8b")
    assert pre(m, 500) == PRE13["h100_8b_fp16_p500"]
    assert pre(m, 5000) == PRE13["h100_8b_fp16_p5000"]


def test_1_mi300x_uses_its_own_measured_efficiencies() -> None:
    """MI300X large-batch throughput came out ~2x optimistic and batch-1 decode 13-30 %
    optimistic: it borrowed H100's efficiencies. With its own (SemiAnalysis BF16 GEMM ~620
    TFLOP/s of 1307; HBM 0.75 of peak) large-batch work is ~1.5x slower and batch-1 decode of
    a 70B model 15-20 % slower."""
    m = StepCostModel(gpu="mi300x", model="llama-3.1-70b")
    assert pre(m, 4096) / PRE13["mi300x_70b_prefill4096"] == pytest.approx(1.55, abs=0.08)
    assert dec(m, 256, 1000) / PRE13["mi300x_70b_b256"] == pytest.approx(1.45, abs=0.08)
    assert 1.13 <= dec(m, 1, 500) / PRE13["mi300x_70b_b1"] <= 1.30
    assert m.efficiency.achievable.gpu == "mi300x" and m.params.compute_eff_max_frac < 0.55


def test_1_rtx4090_batch1_decode_is_faster() -> None:
    """RTX 4090 batch-1 decode came out 20-33 % pessimistic: it borrowed A100's HBM fraction
    (0.75 of peak) and a 1.5 ms host overhead. GDDR6X streams ~0.9 of peak and a CUDA-graph
    stack has little host time: 15-20 % faster."""
    t = dec(StepCostModel(gpu="rtx-4090", model="llama-3.1-8b", stack="vllm"), 1, 500)
    assert 0.75 <= t / PRE13["rtx4090_8b_b1"] <= 0.87
    # the GPU figure alone (same 1.5 ms host overhead) already moves it ~10 %
    t_gen = dec(StepCostModel(gpu="rtx-4090", model="llama-3.1-8b"), 1, 500)
    assert 0.85 <= t_gen / PRE13["rtx4090_8b_b1"] <= 0.93


def test_2_moe_and_mla_kernel_families() -> None:
    """DeepSeek-V3/R1 serving came out ~3x optimistic: grouped expert GEMMs and MLA attention
    were priced at dense-GEMM / FlashAttention efficiency. vLLM's fused-MoE (0.55 of dense,
    from DeepGEMM's grouped-GEMM bandwidth) and Triton-MLA (0.6) factors cut decode throughput
    ~1.7x and slow prefill ~1.8x. The rest of the gap is the expert-parallel deployment
    (all-to-all, the busiest GPU's expert load): tests/hwmodels/test_expert_parallel.py."""
    kw = {"gpu": "h200", "model": "deepseek-v3", "tensor_parallel": 8, "scheme": "fp8"}
    m = StepCostModel(**kw, stack="vllm")
    assert dec(m, 256, 2000) / PRE13["dsv3_b256"] == pytest.approx(1.8, abs=0.12)
    assert pre(m, 4096) / PRE13["dsv3_prefill4096"] == pytest.approx(1.78, abs=0.1)
    # the factors act on the routed-expert GEMMs and on attention only
    neutral = StepCostModel(**kw, stack=get_stack("vllm").replace(moe_gemm_eff=1.0, mla_attn_eff=1.0))
    step = {"num_decode_seqs": 64, "decode_ctx_tokens": 64 * 2000}
    assert op_time(m, "moe", **step) > 1.5 * op_time(neutral, "moe", **step)
    # attention time / 0.6 except its fixed launch latency
    assert 1.55 <= op_time(m, "attention", **step) / op_time(neutral, "attention", **step) <= 1 / 0.6
    assert op_time(m, "qkv_proj", **step) == op_time(neutral, "qkv_proj", **step)


def test_3_weight_only_decode_pays_for_dequantization() -> None:
    """W4A16 and W8A16 decode on A100 came out 12-16 % too fast: dequantizing kernels stream
    weights at 0.62 (4-bit) and 0.77 (8-bit) of the fp16 GEMM's bandwidth (gpt-fast's A100
    measurements). Under the same host overhead, batch-1 decode is 15-22 % slower; fp16 is
    untouched."""
    for scheme in ("w4a16", "w8a16"):
        t = dec(StepCostModel(gpu="a100-sxm4-80gb", model="llama-2-7b", scheme=scheme), 1, 500)
        assert 1.12 <= t / PRE13[f"a100_7b_{scheme}_b1"] <= 1.24, scheme


def test_4_fp8_is_an_efficiency_not_a_fixed_cost() -> None:
    """FP8 prefill TTFT came out 16-22 % too short, the same fraction at 500 and 5,000 tokens.
    FP8 GEMMs reach 0.67 of their 2x peak on H100 (DeepGEMM) vs 0.74 for fp16, vLLM's
    CUTLASS kernels 0.92 of DeepGEMM, and activations are quantized by separate kernels:
    relative to fp16, FP8 prefill is 16-26 % slower than before at both lengths."""
    changes = []
    for t in (500, 5000):
        fp16 = pre(StepCostModel(gpu="h100-sxm", model="llama-3.1-8b", stack="vllm"), t)
        fp8 = pre(StepCostModel(gpu="h100-sxm", model="llama-3.1-8b", scheme="fp8", stack="vllm"), t)
        old = PRE13[f"h100_8b_fp8_p{t}"] / PRE13[f"h100_8b_fp16_p{t}"]
        changes.append(fp8 / fp16 / old)
    assert all(1.16 <= c <= 1.26 for c in changes), changes
    assert abs(changes[0] - changes[1]) < 0.05  # the same fraction: an efficiency


def test_5_request_overheads_are_per_request_not_per_step() -> None:
    """Light-load served TTFT came out 20-35 % short: API server, tokenization, admission and
    first-token detokenization happen outside the forward pass. The stack adds them per
    request (a few ms plus ~1 us per prompt token); the step cost does not change."""
    st = get_stack("vllm")
    assert st.request_overhead_total_s(1000) == pytest.approx(0.006 + 0.001 + 0.001)
    ttft_engine = pre(StepCostModel(gpu="h100-sxm", model="llama-3.1-8b", stack="vllm"), 1000)
    assert 0.20 <= st.request_overhead_total_s(1000) / ttft_engine <= 0.40
    assert get_stack("generic").request_overhead_total_s(1000) == 0.0


def test_6_host_overhead_grows_with_the_batch_and_graphs_pad() -> None:
    """One constant 1.5 ms made batch-1 A100 fp16 decode 17 % slow under CUDA-graph stacks,
    while host work per sequence grows with the batch in others. Now: base + per sequence,
    and CUDA-graph steps compute on the next capture size."""
    compiled = dec(StepCostModel(gpu="a100-sxm4-80gb", model="llama-2-7b", stack="compiled"), 1, 500)
    assert 0.84 <= compiled / PRE13["a100_7b_fp16_b1"] <= 0.90
    v = StepCostModel(gpu="a100-sxm4-80gb", model="llama-2-7b", stack="vllm")
    c1 = v.cost(num_decode_seqs=1, decode_ctx_tokens=500)
    c256 = v.cost(num_decode_seqs=256, decode_ctx_tokens=256 * 500)
    assert c1.overhead_s == pytest.approx(0.0004 + 0.000008)
    assert c256.overhead_s == pytest.approx(0.0004 + 256 * 0.000008)
    # graph padding: with capture sizes [16, 64], a decode batch of 9 runs the 16-token graph
    padded = StepCostModel(gpu="a100-sxm4-80gb", model="llama-2-7b",
                           stack=get_stack("vllm").replace(cuda_graph_sizes=(16, 64)))
    b9 = {o.op: o.time_s for o in padded.breakdown(num_decode_seqs=9, decode_ctx_tokens=9 * 500)}
    b16 = {o.op: o.time_s for o in padded.breakdown(num_decode_seqs=16, decode_ctx_tokens=16 * 500)}
    for op in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj", "norm"):
        assert b9[op] == b16[op], op
    assert b9["attention"] < b16["attention"]  # attention runs on the real sequences
    # decode-only graphs (sglang-style): a prefill step is not padded
    dec_only = StepCostModel(gpu="a100-sxm4-80gb", model="llama-2-7b",
                             stack=get_stack("sglang").replace(cuda_graph_sizes=(16, 64)))
    p9 = {o.op: o.time_s for o in dec_only.breakdown(**prefill_chunk_aggregates([(0, 9)]), num_prefill_seqs=1)}
    p16 = {o.op: o.time_s for o in dec_only.breakdown(**prefill_chunk_aggregates([(0, 16)]), num_prefill_seqs=1)}
    assert p9["norm"] < p16["norm"]


def test_7_tensor_parallel_allreduce_at_tp4_and_up() -> None:
    """TP >= 4 came out 10-25 % cheap as the batch grows: all-reduce was 8 us + the raw link.
    With the measured all-reduce times at decode message sizes (H100 TP4: vLLM PR #24532's
    pynccl column, 21-39 us at 0.5-4 MB; TP8: PR #24111's TP 6 column, 23-53 us) the
    all-reduces of a 256-sequence decode step (4 MB messages) cost 1.8x (TP4) and 2.2x (TP8)
    the pre-#13 figure, and the whole step 5-10 % (TP4) and 15-25 % (TP8) more (generic)."""
    for tp, ar_band, step_band in ((4, (1.6, 1.95), (1.05, 1.10)), (8, (1.95, 2.4), (1.15, 1.25))):
        m = StepCostModel(gpu="h100-sxm", model="llama-3.1-70b", tensor_parallel=tp)
        step = {"num_decode_seqs": 256, "decode_ctx_tokens": 256 * 1000}
        assert ar_band[0] <= op_time(m, "allreduce", **step) / PRE13[f"h100_70b_tp{tp}_ar_b256"] <= ar_band[1]
        assert step_band[0] <= dec(m, 256, 1000) / PRE13[f"h100_70b_tp{tp}_b256"] <= step_band[1]
    # MI300X: TP 2 crosses one 64 GB/s xGMI link, TP 8 all seven - per-TP figures matter
    small = StepCostModel(gpu="mi300x", model="llama-3.1-70b", tensor_parallel=2)
    large = StepCostModel(gpu="mi300x", model="llama-3.1-70b", tensor_parallel=8)
    step = {"num_decode_seqs": 256, "decode_ctx_tokens": 256 * 1000}
    assert op_time(small, "allreduce", **step) > 2 * op_time(large, "allreduce", **step)


def test_7_allreduce_follows_the_measured_times_per_message_size() -> None:
    """The data behind mechanism 7: NCCL all-reduce on 4x H100 SXM (vLLM PR #24532,
    benchmark_device_communicators.py, bf16 [T, 8192], pynccl) takes 21 us at 0.5 MB, 23 at
    1 MB, 28 at 2 MB, 39 at 4 MB - about twice what 8 us + busbytes / 340 GB/s gives at
    0.5-1 MB. The step cost's all-reduce of T tokens is that curve at T x hidden x 2 bytes."""
    from servesim.hwmodels.achievable import get_achievable

    fig = get_achievable("h100-sxm").allreduce_for(4)
    measured = {524288: 21e-6, 1048576: 23e-6, 2097152: 28e-6, 4194304: 39e-6}
    for nbytes, t in measured.items():
        assert fig.time_s(nbytes) == pytest.approx(t)
        affine = fig.latency_s + 2 * 3 / 4 * nbytes / fig.bus_bw_bytes_per_s
        if nbytes <= 1048576:
            assert fig.time_s(nbytes) > 1.8 * affine
    # between points: linear; past the last: the large-message bus bandwidth
    assert fig.time_s(786432) == pytest.approx(22e-6)
    assert fig.time_s(8388608) == pytest.approx(39e-6 + 1.5 * 4194304 / fig.bus_bw_bytes_per_s)
    # in the step: Llama-3.1-70B (hidden 8192) decode of 32 / 64 sequences = 0.5 / 1 MB messages
    m = StepCostModel(gpu="h100-sxm", model="llama-3.1-70b", tensor_parallel=4)
    for b, t in ((32, 21e-6), (64, 23e-6)):
        ar = op_time(m, "allreduce", num_decode_seqs=b, decode_ctx_tokens=b * 500)
        assert ar == pytest.approx(80 * 2 * t)
    # TP 2 keeps the affine law (no curve), so it is unchanged
    two = get_achievable("h100-sxm").allreduce_for(2)
    assert two.curve == () and two.time_s(1e6) == pytest.approx(two.latency_s + 1e6 / two.bus_bw_bytes_per_s)


def test_7_a100_tp4_grows_with_the_batch_not_at_batch_1() -> None:
    """The symptom's shape: A100 TP4 Llama-2-70B decode was cheap as the batch grew (16-64
    sequences: 256 KB - 1 MB messages) and not at batch 1. The derived A100 curve (H100's
    measured times above the latency scaled by the NVSwitch busbw ratio 340/220) leaves
    batch 1 within 1 % and makes batch 32-64 steps 6-10 % slower than the affine law did."""
    import dataclasses
    from unittest import mock

    from servesim.hwmodels.achievable import GpuAchievable

    orig = GpuAchievable.allreduce_for

    def affine(self: GpuAchievable, tp: int):  # type: ignore[no-untyped-def]
        return dataclasses.replace(orig(self, tp), curve=())

    new = StepCostModel(gpu="a100-sxm4-80gb", model="llama-2-70b", tensor_parallel=4)
    with mock.patch.object(GpuAchievable, "allreduce_for", affine):
        old = StepCostModel(gpu="a100-sxm4-80gb", model="llama-2-70b", tensor_parallel=4)
    assert 1.0 <= dec(new, 1, 500) / dec(old, 1, 500) <= 1.01
    for b in (32, 64):
        assert 1.06 <= dec(new, b, 500) / dec(old, b, 500) <= 1.10, b
