"""The packed step cost is the reference, bit for bit, on every bundled model shape.

``StepCostModel._evaluate`` (via ``cost``) is the readable reference; ``packed()`` +
``stepkernel.packed_step_time_s`` is what the engine and the compiled loop run. A single ULP of
difference would make the fast paths disagree with the reference, so equality is exact (``==``
on floats), on random batch shapes that take every branch: prefill-only, decode-only, mixed,
tiny and huge, across tile boundaries and CUDA-graph capture sizes.
"""

from __future__ import annotations

import numpy as np
import pytest

from servesim.hwmodels.models import get_model, model_names
from servesim.hwmodels.stacks import stack_names
from servesim.hwmodels.stepcost import StepCostModel
from servesim.hwmodels.stepkernel import (
    COST_FIELDS,
    kernel_pack,
    packed_decode_times_s,
    packed_step_cost,
    packed_step_time_s,
    packed_steps_cost,
)

#: Every bundled model under tensor and pipeline parallelism (dense, GQA, MoE, MLA, sliding
#: window), on GPUs where the weights fit; extra entries add quantized weights and KV.
SHAPES: list[dict] = [
    {"model": "llama-2-7b", "gpu": "a100-sxm4-80gb"},
    {"model": "llama-2-7b", "gpu": "h100-sxm", "tensor_parallel": 2, "pipeline_parallel": 2, "stack": "vllm"},
    {"model": "llama-2-13b", "gpu": "l40s", "tensor_parallel": 2, "scheme": "fp8"},
    {"model": "llama-2-70b", "gpu": "h100-sxm", "tensor_parallel": 4, "pipeline_parallel": 2},
    {"model": "llama-3.1-8b", "gpu": "rtx-4090", "scheme": "w4a16", "kv_dtype": "fp8", "stack": "sglang"},
    {"model": "llama-3.1-8b", "gpu": "mi300x", "pipeline_parallel": 3},
    {"model": "llama-3.1-70b", "gpu": "h200", "tensor_parallel": 8, "scheme": "fp8", "stack": "trtllm"},
    {"model": "llama-3.1-405b", "gpu": "b200", "tensor_parallel": 8, "pipeline_parallel": 2, "scheme": "fp8"},
    {"model": "mistral-7b", "gpu": "a10g", "scheme": "w8a16", "stack": "vllm"},  # sliding window
    {"model": "mistral-7b", "gpu": "h100-sxm", "tensor_parallel": 2, "pipeline_parallel": 2},
    {"model": "mixtral-8x7b", "gpu": "h100-sxm", "tensor_parallel": 2, "stack": "vllm"},  # routed experts
    {"model": "mixtral-8x7b", "gpu": "a100-sxm4-80gb", "tensor_parallel": 2, "pipeline_parallel": 2, "scheme": "w4a16"},
    {"model": "deepseek-v2", "gpu": "h200", "tensor_parallel": 8, "scheme": "fp8"},  # MLA + MoE
    {"model": "deepseek-v3", "gpu": "h200", "tensor_parallel": 8, "scheme": "fp8", "stack": "sglang"},
    {"model": "deepseek-v3", "gpu": "mi300x", "tensor_parallel": 4, "pipeline_parallel": 2, "scheme": "fp8"},
    {"model": "opt-13b", "gpu": "v100-sxm2-32gb", "tensor_parallel": 2},
    {"model": "opt-66b", "gpu": "a100-sxm4-80gb", "tensor_parallel": 4},
    {"model": "opt-175b", "gpu": "h100-sxm", "tensor_parallel": 8, "pipeline_parallel": 2},
    {"model": "qwen2.5-7b", "gpu": "l4", "scheme": "w4a16", "kv_dtype": "int8"},
    {"model": "qwen2.5-72b", "gpu": "mi325x", "tensor_parallel": 2, "pipeline_parallel": 2, "stack": "compiled"},
    {"model": "llama-3.1-8b", "gpu": "gaudi2", "step_overhead_s": 0.0},
    # expert parallelism: TP attention + EP experts (vLLM --enable-expert-parallel), DP
    # attention + EP with the DeepEP all-to-all (SGLang --enable-dp-attention), internode EP
    # with redundant experts, hybrid DP x TP attention, pipeline stages, a GPU without NVSwitch
    {"model": "mixtral-8x7b", "gpu": "h100-sxm", "tensor_parallel": 4, "expert_parallel": 4, "stack": "vllm"},
    {"model": "mixtral-8x7b", "gpu": "h100-sxm", "tensor_parallel": 4, "expert_parallel": 2},
    {"model": "deepseek-v3", "gpu": "h200", "tensor_parallel": 8, "expert_parallel": 8, "attention_data_parallel": 8,
     "scheme": "fp8", "stack": "sglang"},
    {"model": "deepseek-v3", "gpu": "h100-sxm", "tensor_parallel": 72, "expert_parallel": 72,
     "attention_data_parallel": 72, "redundant_experts": 32, "scheme": "fp8", "stack": "sglang"},
    {"model": "deepseek-v2", "gpu": "h100-sxm", "tensor_parallel": 16, "expert_parallel": 16,
     "attention_data_parallel": 4, "pipeline_parallel": 2, "scheme": "fp8", "stack": "vllm"},
    {"model": "mixtral-8x7b", "gpu": "l40s", "tensor_parallel": 8, "expert_parallel": 8, "attention_data_parallel": 8},
    # decode attention over a quantized KV cache (stack kv_quant_decode_eff) and on CUDA cores
    # (trtllm-0.5: GQA decode turns compute-bound), both folded into the packed coefficients
    {"model": "llama-3.1-8b", "gpu": "h100-sxm", "scheme": "bf16", "kv_dtype": "fp8", "stack": "vllm"},
    {"model": "llama-2-70b", "gpu": "h200", "scheme": "fp8", "kv_dtype": "fp8", "stack": "trtllm-0.5"},
    {"model": "llama-2-13b", "gpu": "h200", "scheme": "fp8", "kv_dtype": "fp8", "stack": "trtllm-0.5"},
    {"model": "qwen2.5-7b", "gpu": "a100-sxm4-80gb", "kv_dtype": "int8", "tensor_parallel": 2, "stack": "trtllm"},
]

FIELDS = ("prefill_tokens", "prefill_attn_pairs", "prefill_kv_tokens", "num_prefill_seqs",
          "num_decode_seqs", "decode_ctx_tokens")


def random_steps(rng: np.random.Generator, n: int) -> list[tuple[float, ...]]:
    """Random step inputs in ``cost`` order: prefill-only, decode-only and mixed steps."""
    steps = []
    for _ in range(n):
        kind = rng.integers(0, 3)
        chunks = int(rng.integers(1, 4)) if kind != 1 else 0
        pf = pairs = kv = 0.0
        for _c in range(chunks):
            new = float(rng.choice([1, 15, 16, 17, 127, 128, 129, 500, int(rng.integers(1, 9000))]))
            cached = float(rng.integers(0, 20000)) if rng.random() < 0.5 else 0.0
            pf += new
            pairs += new * (cached + (new + 1) / 2.0)
            kv += cached + new
        nsamp = float(rng.integers(0, chunks + 1))
        ndec = 0.0 if kind == 0 else float(rng.choice([1, 2, 7, 8, 9, 255, 256, 257, int(rng.integers(1, 1024))]))
        ctx = ndec * float(rng.integers(1, 100_000)) + float(rng.integers(0, max(int(ndec), 1)))
        steps.append((pf, pairs, kv, nsamp, ndec, ctx))
    steps.append((0.0, 0.0, 0.0, 0.0, 0.0, 0.0))
    return steps


def test_shapes_cover_every_bundled_model_and_stack() -> None:
    assert {s["model"] for s in SHAPES} == set(model_names())
    assert {s.get("stack", "generic") for s in SHAPES} == set(stack_names())
    kinds = {get_model(s["model"]) for s in SHAPES}
    assert any(m.is_moe for m in kinds) and any(m.sliding_window_tokens for m in kinds)
    assert any(m.num_kv_heads < m.num_heads for m in kinds)  # GQA
    assert any(m.is_mla for m in kinds)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "-".join(str(v) for v in s.values()))
def test_packed_form_is_the_reference_bit_for_bit(shape: dict) -> None:
    cost = StepCostModel(**shape)
    cf = cost.packed()
    rng = np.random.default_rng(11)
    out = np.empty(len(COST_FIELDS))
    steps = random_steps(rng, 150)
    refs = []
    for step in steps:
        ref = cost.cost(**dict(zip(FIELDS, step, strict=True)))
        want = ref.time_s
        assert packed_step_time_s(cf, *step) == want, step
        assert cost.step_time_s(**dict(zip(FIELDS, step, strict=True))) == want, step
        # the split by bound too, field by field (a kernel records it as it runs)
        packed_step_cost(cf, *step, out)
        assert out.tolist() == [getattr(ref, f) for f in COST_FIELDS], step
        refs.append(out.copy())
    cols = [np.ascontiguousarray([st[i] for st in steps], dtype=np.float64) for i in range(6)]
    many = np.empty((len(steps), len(COST_FIELDS)))
    packed_steps_cost(cf, *cols, many)
    assert many.tolist() == np.asarray(refs).tolist()


@pytest.mark.parametrize("shape", SHAPES[::4], ids=lambda s: "-".join(str(v) for v in s.values()))
def test_decode_array_form_and_vector_reference_agree(shape: dict) -> None:
    cost = StepCostModel(**shape)
    cf = cost.packed()
    rng = np.random.default_rng(3)
    for b in (1, 8, 9, 129, int(rng.integers(1, 600))):
        ctx = (b * rng.integers(1, 50_000, 64) + rng.integers(0, b, 64)).astype(np.int64)
        many = packed_decode_times_s(cf, b, ctx)
        ref = [cost.cost(num_decode_seqs=b, decode_ctx_tokens=int(c)).time_s for c in ctx]
        assert many.tolist() == ref
        vec = cost.cost(num_decode_seqs=np.full(len(ctx), float(b)), decode_ctx_tokens=ctx.astype(float))
        np.testing.assert_allclose(vec.time_s, ref, rtol=1e-12)


def test_pack_is_a_copy_and_cycle_model_has_none() -> None:
    cost = StepCostModel(gpu="h100-sxm", model="llama-3.1-8b")
    cf = cost.packed()
    cf[:] = 0.0
    assert cost.packed().any()
    assert kernel_pack(cost) is not None

    class Timer:
        def gemm_time_s(self, m, n, k, compute_type, weight_bits):
            return 1e-5

        def decode_attention_time_s(self, *a):
            return 1e-5

        def prefill_attention_time_s(self, *a):
            return 1e-5

    timed = StepCostModel(gpu="h100-sxm", model="llama-3.1-8b", op_timer=Timer())
    assert kernel_pack(timed) is None


def test_a_pack_from_other_stepkernel_code_is_refused() -> None:
    """numba caches a caller (the compiled loop) keyed on the caller's own source, so a caller
    that inlined an older ``packed_step_time_s`` can outlive a change of the step-cost code;
    the pack carries a stamp of that code and a mismatch raises instead of misreading."""
    from servesim.hwmodels.stepkernel import LAYOUT_VERSION, P_LAYOUT

    cf = StepCostModel(gpu="h100-sxm", model="llama-3.1-8b").packed()
    assert cf[P_LAYOUT] == LAYOUT_VERSION
    cf[P_LAYOUT] += 1.0
    with pytest.raises(ValueError, match="stale numba cache"):
        packed_step_time_s(cf, 0.0, 0.0, 0.0, 0.0, 4.0, 400.0)
    with pytest.raises(ValueError, match="stale numba cache"):
        packed_step_cost(cf, 0.0, 0.0, 0.0, 0.0, 4.0, 400.0, np.empty(len(COST_FIELDS)))


@pytest.mark.parametrize("gpu,tp", [("h100-sxm", 4), ("h100-sxm", 8), ("a100-sxm4-80gb", 4)])
def test_allreduce_curve_segments_are_bit_equal(gpu: str, tp: int) -> None:
    """The all-reduce law is piecewise linear in the message size (measured times,
    hwmodels/data/achievable.yaml): token counts exactly on, just around and between its
    points (32..256 tokens = 0.5..4 MB for hidden 8192), below the first and past the last,
    with and without CUDA-graph padding, give the reference's float in the packed form."""
    for stack in (None, "vllm"):
        cost = StepCostModel(gpu=gpu, model="llama-3.1-70b", tensor_parallel=tp, stack=stack)
        cf = cost.packed()
        out = np.empty(len(COST_FIELDS))
        for b in (1, 7, 31, 32, 33, 48, 63, 64, 95, 96, 97, 128, 191, 192, 255, 256, 257, 300, 1000):
            for pf in (0.0, 17.0):
                kw = {"prefill_tokens": pf, "prefill_attn_pairs": pf * (pf + 1) / 2, "prefill_kv_tokens": pf,
                      "num_prefill_seqs": 1.0 if pf else 0.0, "num_decode_seqs": float(b),
                      "decode_ctx_tokens": float(b * 300)}
                ref = cost.cost(**kw)
                args = tuple(kw.values())
                assert packed_step_time_s(cf, *args) == ref.time_s, (stack, b, pf)
                packed_step_cost(cf, *args, out)
                assert tuple(out) == tuple(getattr(ref, f) for f in COST_FIELDS), (stack, b, pf)


@pytest.mark.parametrize("shape", [s for s in SHAPES if s.get("expert_parallel", 1) > 1],
                         ids=lambda s: "-".join(str(v) for v in s.values()))
def test_expert_parallel_vector_reference_matches_scalars(shape: dict) -> None:
    """The numpy form of the reference (one rank's share, the max-load rows, the all-to-all of
    either kernel family) gives the scalar values on mixed steps."""
    cost = StepCostModel(**shape)
    # the empty step is left out: the vector form keeps CUDA-graph-padded GEMM time in its
    # split at T = 0 (time_s is right), a quirk older than expert parallelism
    steps = random_steps(np.random.default_rng(5), 60)[:-1]
    cols = {f: np.asarray([st[i] for st in steps], dtype=np.float64) for i, f in enumerate(FIELDS)}
    vec = cost.cost(**cols)
    for i, step in enumerate(steps):
        ref = cost.cost(**dict(zip(FIELDS, step, strict=True)))
        for f in COST_FIELDS:
            assert getattr(vec, f)[i] == pytest.approx(getattr(ref, f), rel=1e-12, abs=1e-15), (f, step)
