"""Decode-attention kernel mechanisms of the stack profiles, on the data that motivated them.

* ``kv_quant_decode_eff``: vLLM blog "The State of FP8 KV-Cache and Attention Quantization in
  vLLM" (2026-04-22), Table 3 / Fig. 2: on one H100 with FlashAttention-3, Llama-3.1-8B, the
  fitted ITL slope per context token with an FP8 KV cache is 54 % of BF16's (v0.19.1).
* ``decode_attn_tensor_cores: false`` (``trtllm-0.5``): CUDA-core decode attention at
  ``CUDA_CORE_ATTN_EFF_FRAC`` of the FP32 peak, a figure taken from FlashInfer's kernel
  benchmark (not from any end-to-end case). The check is TensorRT-LLM's own statement for the
  tensor-core GQA generation kernels of v0.7a: "up to 2.4x improvement on Llama-70B" (1x H200,
  FP8, batch 192; docs/source/blogs/Falcon180B-H200.md).
"""

from __future__ import annotations

import dataclasses

import pytest

from servesim.hwmodels.stacks import get_stack
from servesim.hwmodels.stepcost import StepCostModel


def _slope_s_per_token(model: StepCostModel) -> float:
    """Decode step time per extra context token at batch 1 (the ITL slope of the vLLM post)."""
    lo = model.step_time_s(num_decode_seqs=1, decode_ctx_tokens=20_000)
    hi = model.step_time_s(num_decode_seqs=1, decode_ctx_tokens=120_000)
    return (hi - lo) / 100_000


def test_fp8_kv_slope_is_54_percent_of_bf16_under_vllm() -> None:
    kw = {"gpu": "h100-sxm", "model": "llama-3.1-8b", "scheme": "bf16", "stack": "vllm"}
    ratio = _slope_s_per_token(StepCostModel(kv_dtype="fp8", **kw)) / _slope_s_per_token(
        StepCostModel(kv_dtype="bf16", **kw))
    assert ratio == pytest.approx(0.54, abs=0.01)
    # without the factor (generic: the byte count only) the slope halves exactly
    kw["stack"] = "generic"
    ratio_bytes = _slope_s_per_token(StepCostModel(kv_dtype="fp8", **kw)) / _slope_s_per_token(
        StepCostModel(kv_dtype="bf16", **kw))
    assert ratio_bytes == pytest.approx(0.50, abs=0.002)


def test_kv_quant_factor_leaves_16_bit_caches_and_the_intercept_alone() -> None:
    kw = {"gpu": "h100-sxm", "model": "llama-3.1-8b", "scheme": "bf16", "kv_dtype": "bf16"}
    base = StepCostModel(stack="vllm", **kw)
    slow = StepCostModel(stack=get_stack("vllm").replace(kv_quant_decode_eff=0.5), **kw)
    assert slow.step_time_s(num_decode_seqs=8, decode_ctx_tokens=80_000) == base.step_time_s(
        num_decode_seqs=8, decode_ctx_tokens=80_000)
    kw["kv_dtype"] = "fp8"
    a = StepCostModel(stack="vllm", **kw)
    b = StepCostModel(stack=get_stack("vllm").replace(kv_quant_decode_eff=0.5), **kw)
    # prefill (no decode attention) is untouched; decode over the cache gets slower
    assert a.step_time_s(prefill_tokens=512, prefill_attn_pairs=512 * 256.5, prefill_kv_tokens=512,
                         num_prefill_seqs=1) == b.step_time_s(
        prefill_tokens=512, prefill_attn_pairs=512 * 256.5, prefill_kv_tokens=512, num_prefill_seqs=1)
    assert b.step_time_s(num_decode_seqs=8, decode_ctx_tokens=80_000) > a.step_time_s(
        num_decode_seqs=8, decode_ctx_tokens=80_000)


def _mean_decode_step_s(stack: str) -> float:
    """Mean decode step of the v0.7a post's GQA comparison: Llama-2-70B, 1x H200, FP8, batch 192,
    128 prompt tokens, 2048 generated (context 129..2176, sampled every 64 tokens)."""
    m = StepCostModel(gpu="h200", model="llama-2-70b", scheme="fp8", kv_dtype="fp8", stack=stack)
    steps = [m.step_time_s(num_decode_seqs=192, decode_ctx_tokens=192 * c) for c in range(129, 2177, 64)]
    return sum(steps) / len(steps)


def test_cuda_core_gqa_decode_reproduces_trtllm_v07_speedup() -> None:
    assert _mean_decode_step_s("trtllm-0.5") / _mean_decode_step_s("compiled") == pytest.approx(2.4, abs=0.15)


def _attention_s(model: str, stack: str, kv_dtype: str) -> float:
    m = StepCostModel(gpu="h200", model=model, scheme="fp8", kv_dtype=kv_dtype, stack=stack)
    by_op = {o.op: o for o in m.breakdown(num_decode_seqs=64, decode_ctx_tokens=64 * 2048)}
    return by_op["attention"].time_s


def test_cuda_core_decode_hurts_gqa_far_more_than_mha() -> None:
    """GQA (8 query heads per KV head) does 8x the FLOPs per KV byte of MHA: on CUDA cores it is
    compute-bound several times over; MHA over a 16-bit cache stays close to its bandwidth."""
    gqa = _attention_s("llama-2-70b", "trtllm-0.5", "fp8") / _attention_s("llama-2-70b", "compiled", "fp8")
    mha = _attention_s("llama-2-13b", "trtllm-0.5", "fp16") / _attention_s("llama-2-13b", "compiled", "fp16")
    assert gqa > 5.0
    assert 1.0 <= mha < 1.3


def test_trtllm_05_profile_is_compiled_but_for_decode_attention() -> None:
    a, b = get_stack("trtllm-0.5"), get_stack("compiled")
    diff = {f.name for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)}
    assert diff == {"name", "description", "decode_attn_tensor_cores", "sources"}
    assert a.decode_attn_tensor_cores is False
