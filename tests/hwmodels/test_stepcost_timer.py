"""The op-timer fast path of ``StepCostModel.step_time_s``: equal to ``cost()``, deterministic,
memoised (a repeated step asks the timer nothing)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import servesim.hwmodels.stepcost as stepcost
from servesim.hwmodels.errors import ConfigError
from servesim.hwmodels.gpus import get_gpu
from servesim.hwmodels.roofline import RooflineTimer
from servesim.hwmodels.stepcost import StepCostModel


class CountingTimer:
    """A pure, deliberately non-linear operator timer that counts its calls."""

    def __init__(self) -> None:
        self.calls = {"gemm": 0, "decode": 0, "prefill": 0}

    def gemm_time_s(self, m: int, n: int, k: int, compute_type: str, weight_bits: int) -> float:
        self.calls["gemm"] += 1
        assert isinstance(m, int) and m >= 1
        return 3e-6 + n * k * (weight_bits / 16) * (m**0.61 + 7.0) * 1e-15 + (m % 17) * 1e-8

    def decode_attention_time_s(self, batch: int, context_tokens: int, num_heads: int, num_kv_heads: int,
                                head_dim: int, kv_bytes_per_elem: float, block_size: int) -> float:
        self.calls["decode"] += 1
        assert isinstance(batch, int) and isinstance(context_tokens, int) and batch >= 1 and context_tokens >= 1
        return 2e-6 + batch * math.sqrt(context_tokens) * num_kv_heads * head_dim * kv_bytes_per_elem * 1e-12

    def prefill_attention_time_s(self, batch: int, query_tokens: int, num_heads: int, num_kv_heads: int,
                                 head_dim: int, context_tokens: int | None = None,
                                 kv_bytes_per_elem: float = 2) -> float:
        self.calls["prefill"] += 1
        ctx = query_tokens if context_tokens is None else context_tokens
        return 4e-6 + batch * query_tokens * ctx**0.9 * num_heads * head_dim * 1e-15

    def total(self) -> int:
        return sum(self.calls.values())


CONFIGS = [("llama-2-7b", 1, 1, "fp16"), ("mixtral-8x7b", 2, 2, "w4a16"), ("deepseek-v2", 8, 1, "fp8"),
           ("mistral-7b", 1, 1, "w8a8-int8"), ("opt-13b", 2, 1, "fp16")]


def random_steps(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    pf = rng.integers(0, 2048, n).astype(float) * (rng.random(n) < 0.5)
    cached = rng.integers(0, 4096, n).astype(float)
    ndec = rng.integers(0, 256, n).astype(float)
    ndec[:3] = 0.0
    return {
        "prefill_tokens": pf,
        "prefill_attn_pairs": pf * (cached + (pf + 1) / 2),
        "prefill_kv_tokens": (cached + pf) * (pf > 0),
        "num_prefill_seqs": rng.integers(0, 4, n) * (pf > 0) * 1.0,
        "num_decode_seqs": ndec,
        "decode_ctx_tokens": ndec * rng.integers(1, 9000, n),
    }


@pytest.mark.parametrize(("model", "tp", "pp", "scheme"), CONFIGS)
@pytest.mark.parametrize("timer_kind", ["counting", "roofline"])
@pytest.mark.parametrize("stack", ["generic", "vllm"])
def test_fast_path_equals_cost(model: str, tp: int, pp: int, scheme: str, timer_kind: str, stack: str) -> None:
    """Also under a stack with CUDA-graph padding, per-sequence host overhead and (FP8)
    activation-quantization kernels."""
    gpu = get_gpu("h100-sxm")
    timer = CountingTimer() if timer_kind == "counting" else RooflineTimer(gpu)
    m = StepCostModel(gpu=gpu, model=model, tensor_parallel=tp, pipeline_parallel=pp, scheme=scheme,
                      op_timer=timer, stack=stack)
    arrays = random_steps(150)
    vec = m.cost(**arrays)
    for i in range(150):
        one = {k: float(v[i]) for k, v in arrays.items()}
        fast = m.step_time_s(**one)
        assert fast == pytest.approx(m.cost(**one).time_s, rel=1e-12)
        assert fast == pytest.approx(vec.time_s[i], rel=1e-12)
    assert m.step_time_s() == m.cost().time_s == m.step_overhead_s


def test_repeated_step_is_memoised_and_identical() -> None:
    timer = CountingTimer()
    m = StepCostModel(gpu="h100-sxm", model="deepseek-v2", tensor_parallel=8, scheme="fp8", op_timer=timer)
    step = {"prefill_tokens": 300.0, "prefill_attn_pairs": 300 * 150.5, "prefill_kv_tokens": 300.0,
            "num_prefill_seqs": 1.0, "num_decode_seqs": 40.0, "decode_ctx_tokens": 40 * 1234.0}
    first = m.step_time_s(**step)
    calls = timer.total()
    assert calls > 0
    for _ in range(3):
        assert m.step_time_s(**step) == first
    assert timer.total() == calls  # every part came from the memos
    # A decode step whose context moved on asks the timer for the decode attention only.
    m.step_time_s(num_decode_seqs=40, decode_ctx_tokens=40 * 1234)  # tokens/rows parts now warm
    before = dict(timer.calls)
    m.step_time_s(num_decode_seqs=40, decode_ctx_tokens=40 * 1300)
    assert timer.calls["decode"] == before["decode"] + 1
    assert timer.calls["gemm"] == before["gemm"] and timer.calls["prefill"] == before["prefill"]


def test_memo_limit_does_not_change_results(monkeypatch) -> None:
    """The memos are cleared when full; a recomputed value is the same float."""
    arrays = random_steps(120, seed=3)
    steps = [{k: float(v[i]) for k, v in arrays.items()} for i in range(120)]
    ref_model = StepCostModel(gpu="h100-sxm", model="mixtral-8x7b", tensor_parallel=2, op_timer=CountingTimer())
    ref = [ref_model.step_time_s(**s) for s in steps]
    monkeypatch.setattr(stepcost, "_MEMO_MAX_ENTRIES", 3)
    small = StepCostModel(gpu="h100-sxm", model="mixtral-8x7b", tensor_parallel=2, op_timer=CountingTimer())
    for _ in range(2):
        assert [small.step_time_s(**s) for s in steps] == ref
    assert len(small._memo_dec) <= 3
    assert small.cost(**arrays).time_s == pytest.approx(np.array(ref), rel=1e-12)


def test_negative_inputs_rejected() -> None:
    m = StepCostModel(gpu="h100-sxm", model="llama-2-7b", op_timer=CountingTimer())
    with pytest.raises(ConfigError):
        m.step_time_s(num_decode_seqs=-1, decode_ctx_tokens=10)
    with pytest.raises(ConfigError):
        m.step_time_s(prefill_tokens=10, prefill_attn_pairs=-1)
