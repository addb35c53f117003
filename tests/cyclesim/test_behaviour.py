"""Monotonic and structural behaviours of the cycle model (shapes a reviewer can check)."""

from __future__ import annotations

import pytest

from servesim.hwmodels.cyclesim import (
    simulate_decode_attention,
    simulate_gemm,
    simulate_prefill_attention,
)
from servesim.hwmodels.cyclesim.kernels import GemmConfig
from servesim.hwmodels.cyclesim.params import machine_for
from servesim.hwmodels.errors import ConfigError
from servesim.hwmodels.gpus import get_gpu

H100 = "h100-sxm"


def test_more_bytes_more_cycles() -> None:
    """Decode GEMMs are memory-bound: more weight bytes -> more cycles, ~linear."""
    t = [simulate_gemm(H100, m=1, n=n, k=4096).total_cycles for n in (2048, 4096, 8192, 16384)]
    assert t == sorted(t)
    assert 1.6 < t[3] / t[2] < 2.1
    r = simulate_gemm(H100, m=1, n=16384, k=4096)
    assert r.bound == "memory"
    assert r.achieved_hbm_bw_bytes_per_s < get_gpu(H100).hbm_bw_bytes_per_s


def test_large_gemm_compute_bound_and_fast() -> None:
    r = simulate_gemm(H100, m=4096, n=4096, k=4096)
    assert r.bound == "compute"
    peak = get_gpu(H100).peak("fp16")
    assert 0.6 * peak < r.achieved_flops_per_s < peak
    assert r.num_waves >= 1 and r.cta_sm.shape[0] == r.num_ctas
    assert (r.cta_end_cycles > r.cta_start_cycles).all()


def test_wave_quantisation_step() -> None:
    """One tile more than the machine holds costs a whole extra wave."""
    mach = machine_for(get_gpu(H100))
    cfg = GemmConfig(tile=mach.tiles[1], num_stages=4, split_k=1, ctas_per_sm=1)
    bn = cfg.tile.block_n
    # 12 x 11 tiles of 128 x 128 = 132 CTAs = one wave; a 12th tile column adds a second wave.
    assert mach.num_sms == 132
    one = simulate_gemm(mach, m=12 * 128, n=11 * bn, k=8192, config=cfg)
    two = simulate_gemm(mach, m=12 * 128, n=12 * bn, k=8192, config=cfg)
    less = simulate_gemm(mach, m=12 * 128, n=10 * bn, k=8192, config=cfg)
    assert (one.num_waves, two.num_waves) == (1, 2)
    assert one.bound == "compute"
    assert two.total_cycles > 1.6 * one.total_cycles  # a step, not +12/132
    assert less.total_cycles <= one.total_cycles * 1.02


def test_double_buffering_helps() -> None:
    """At one CTA per SM, a single stage exposes every load latency."""
    mach = machine_for(get_gpu(H100))
    kw = {"m": 2048, "n": 4096, "k": 4096}
    on = simulate_gemm(mach, **kw, config=GemmConfig(tile=mach.tiles[1], num_stages=4, split_k=1, ctas_per_sm=1))
    off = simulate_gemm(mach, **kw, config=GemmConfig(tile=mach.tiles[1], num_stages=1, split_k=1, ctas_per_sm=1))
    assert off.total_cycles > 1.2 * on.total_cycles
    # Free choice: without double buffering the kernel trades SRAM stages for more resident CTAs.
    free_off = simulate_gemm(mach, **kw, double_buffering=False)
    assert free_off.config["num_stages"] == 1 and free_off.ctas_per_sm > 1


def test_fp8_faster_than_fp16_and_w4_helps_small_batch() -> None:
    fp16 = simulate_gemm(H100, m=4096, n=8192, k=8192)
    fp8 = simulate_gemm(H100, m=4096, n=8192, k=8192, compute_type="fp8")
    assert fp8.total_cycles < 0.7 * fp16.total_cycles
    # Llama-2-70B gate+up at TP 2: 235 MB of fp16 weights, large enough that launch is minor.
    s1 = simulate_gemm(H100, m=1, n=28672, k=8192).time_s / simulate_gemm(
        H100, m=1, n=28672, k=8192, weight_bits=4).time_s
    s_big = simulate_gemm(H100, m=2048, n=8192, k=8192).time_s / simulate_gemm(
        H100, m=2048, n=8192, k=8192, weight_bits=4).time_s
    assert 2.5 < s1 < 4.0  # near the 16 / 4.25 byte ratio
    assert s_big < 1.1  # compute-bound: 4-bit no longer pays


def test_paged_overhead_shrinks_with_block_size() -> None:
    kw = {"batch": 8, "context_tokens": 1000, "num_heads": 32, "num_kv_heads": 8, "head_dim": 128}
    contiguous = simulate_decode_attention(H100, block_size=None, **kw).total_cycles
    paged = [simulate_decode_attention(H100, block_size=b, **kw).total_cycles for b in (1, 4, 16)]
    assert paged[0] > paged[1] > paged[2] >= contiguous * 0.999
    assert paged[0] > 1.2 * contiguous


def test_split_kv_for_small_batches() -> None:
    r = simulate_decode_attention(H100, batch=1, context_tokens=32768, num_heads=32,
                                  num_kv_heads=8, head_dim=128, block_size=16)
    assert r.config["num_splits"] > 1
    one = simulate_decode_attention(H100, batch=1, context_tokens=32768, num_heads=32,
                                    num_kv_heads=8, head_dim=128, block_size=16, num_splits=1)
    assert r.total_cycles < 0.5 * one.total_cycles


def test_prefill_causal_and_longer_context() -> None:
    kw = {"batch": 1, "num_heads": 32, "num_kv_heads": 8, "head_dim": 128}
    causal = simulate_prefill_attention(H100, query_tokens=2048, **kw)
    full = simulate_prefill_attention(H100, query_tokens=2048, causal=False, **kw)
    prefix = simulate_prefill_attention(H100, query_tokens=2048, context_tokens=4096, **kw)
    assert causal.total_cycles < full.total_cycles < prefix.total_cycles


def test_errors() -> None:
    with pytest.raises(ConfigError, match="fp8"):
        simulate_gemm("a100-sxm4-80gb", m=1, n=64, k=64, compute_type="fp8")
    with pytest.raises(ConfigError, match="needs"):
        simulate_gemm("b200", m=1, n=64, k=64)
    with pytest.raises(ConfigError):
        simulate_gemm(H100, m=0, n=64, k=64)
    with pytest.raises(ConfigError):
        simulate_decode_attention(H100, batch=1, context_tokens=8, num_heads=6, num_kv_heads=4,
                                  head_dim=64)
