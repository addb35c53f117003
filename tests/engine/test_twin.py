"""The engine's vectorised twin of the decode step time is bit-identical to the cost model.

A long decode stretch is costed with :class:`simulator.engine.DecodeTwin` (numpy over the
stretch's context sizes); stepping uses ``StepCostModel.step_time_s``. Fast-forwarding is
exact only if both give the same floats for every input, so this checks many random inputs
on model shapes that take every branch of the formula (dense, MoE with routed experts,
sliding window, tensor and pipeline parallelism, quantized weights and KV).
"""

from __future__ import annotations

import numpy as np
import pytest

from servesim.hwmodels.stepcost import StepCostModel
from servesim.simulator.engine import DecodeTwin, decode_twin

SHAPES = [
    {"gpu": "h100-sxm", "model": "llama-3.1-8b"},
    {"gpu": "h100-sxm", "model": "llama-3.1-70b", "tensor_parallel": 4, "pipeline_parallel": 2},
    {"gpu": "a100-sxm4-80gb", "model": "mistral-7b"},  # sliding window
    {"gpu": "h100-sxm", "model": "mixtral-8x7b", "tensor_parallel": 2},  # routed experts
    {"gpu": "h200", "model": "deepseek-v2", "tensor_parallel": 8, "scheme": "fp8"},  # MLA + MoE
    {"gpu": "l40s", "model": "qwen2.5-7b", "scheme": "w4a16", "kv_dtype": "int8"},
    {"gpu": "h100-sxm", "model": "llama-2-7b", "step_overhead_s": 0.0},
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s['model']}-{s['gpu']}")
def test_twin_matches_step_time_bit_for_bit(shape: dict) -> None:
    cost = StepCostModel(**shape)
    rng = np.random.default_rng(7)
    batches = sorted({1, 2, 3, 7, 8, 15, 16, 17, 31, 33, 64, 65, 127, 128, 129, 255, 256,
                      *rng.integers(1, 1024, 20).tolist()})
    for b in batches:
        twin = decode_twin(cost, b)
        assert twin is not None, f"twin refused batch {b}"
        ctx = np.concatenate([
            b * rng.integers(1, 200_000, 300),
            rng.integers(b, b * 300, 300),
            np.arange(b, b + 64),
        ]).astype(np.int64)
        want = [cost.step_time_s(num_decode_seqs=b, decode_ctx_tokens=int(c)) for c in ctx]
        assert twin.many(ctx).tolist() == want
        assert [twin.at(int(c)) for c in ctx] == want


def test_twin_refuses_op_timer() -> None:
    cost = StepCostModel(gpu="h100-sxm", model="llama-3.1-8b")
    assert decode_twin(cost, 0) is None

    class Timed(StepCostModel):
        pass

    timed = Timed(gpu="h100-sxm", model="llama-3.1-8b")
    timed.op_timer = object()  # type: ignore[assignment]
    assert decode_twin(timed, 4) is None

    assert isinstance(decode_twin(cost, 4), DecodeTwin)


def test_stretch_times_are_sequential_sums() -> None:
    """``np.add.accumulate`` adds left to right, as the stepping loop does."""
    rng = np.random.default_rng(3)
    d = rng.uniform(1e-3, 5e-2, 4096)
    acc = np.empty(len(d) + 1)
    acc[0] = 1234.5678
    acc[1:] = d
    np.add.accumulate(acc, out=acc)
    t, want = 1234.5678, [1234.5678]
    for x in d.tolist():
        t = t + x
        want.append(t)
    assert acc.tolist() == want


@pytest.mark.parametrize("chunk", [1, 2, 5, 24, 100, 1000])
def test_vectorised_stretch_times_match_the_stepping_loop(chunk: int) -> None:
    """Chunked, vectorised stretch times == the scalar loop, for every stop time."""
    from servesim.simulator.engine import Replica

    cost = StepCostModel(gpu="h100-sxm", model="llama-3.1-8b")
    b, n_dec, ctx0, k, t0 = 12, 10, 23_456, 300, 17.25
    twin = decode_twin(cost, b)
    assert twin is not None

    def scalar(stop_s: float) -> tuple[list[float], list[float]]:
        t, times, durs = t0, [t0], []
        for j in range(k):
            if j > 0 and t >= stop_s:
                break
            d = cost.step_time_s(num_decode_seqs=b, decode_ctx_tokens=ctx0 + n_dec * j)
            t = t + d
            times.append(t)
            durs.append(d)
        return times, durs

    full = scalar(float("inf"))[0]
    stops = [float("inf"), t0 - 1.0, t0, *full[1:5], *full[chunk - 1 : chunk + 2], full[-2], full[-1],
             (full[50] + full[51]) / 2]
    for stop in stops:
        got = Replica._decode_stretch_times_vec(twin, t0, ctx0, n_dec, k, stop, chunk)
        assert got == scalar(stop), stop
