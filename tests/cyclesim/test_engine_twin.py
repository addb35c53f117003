"""The numba engine against its pure-Python twin: bit-identical cycles on small shapes."""

from __future__ import annotations

import numpy as np
import pytest

from servesim.hwmodels.cyclesim import kernels as K
from servesim.hwmodels.cyclesim.params import machine_for
from servesim.hwmodels.gpus import get_gpu
from tests.cyclesim.reference import RefEngine


def _check(work: K.Work, launch: K.Launch) -> None:
    got = K.run_work(work, launch)
    total, cta_sm, cta_start, cta_end, stats = RefEngine(work, launch).run()
    assert got.total_cycles == total
    assert got.cta_sm.tolist() == cta_sm
    assert got.cta_start.tolist() == cta_start
    assert got.cta_end.tolist() == cta_end
    assert got.stats[K._engine.ST_HBM_BYTES] == stats["hbm"]
    assert got.stats[K._engine.ST_L2_HIT_BYTES] == stats["hit"]
    assert got.stats[K._engine.ST_PIPE_BUSY_CYCLES] == stats["pipe"]


@pytest.fixture(scope="module")
def h100() -> K.Machine:
    return machine_for(get_gpu("h100-sxm"))


@pytest.mark.parametrize(
    ("m", "n", "k", "split", "tile_idx", "weight_bits"),
    [(1, 512, 256, 1, 3, 16), (200, 384, 320, 2, 2, 16), (64, 1024, 512, 1, 1, 4),
     (300, 300, 130, 1, 0, 16)],
)
def test_gemm_twin(h100, m, n, k, split, tile_idx, weight_bits) -> None:
    """Several CTAs per SM, few SMs (so waves form), partial tiles and split-K."""
    tile = h100.tiles[tile_idx]
    work = K.gemm_work(h100, m=m, n=n, k=k, compute_type="fp16", weight_bits=weight_bits,
                       group_size=128, tile=tile, split_k=split)
    for stages in (1, 3):
        launch = K._launch(h100, ctas_per_sm=2, num_stages=stages)._replace(num_sms=3)
        _check(work, launch)


def test_decode_twin_with_lookups(h100, monkeypatch) -> None:
    """Paged decode work has lookup/dependent phases and L2-resident keys."""
    captured: list[tuple[K.Work, K.Launch]] = []
    real = K.run_work

    def spy(work: K.Work, launch: K.Launch) -> K.RawRun:
        captured.append((work, launch))
        return real(work, launch)

    monkeypatch.setattr(K, "run_work", spy)
    K.simulate_decode_attention(h100, batch=3, context_tokens=300, num_heads=8, num_kv_heads=2,
                                head_dim=64, block_size=8, num_splits=2)
    K.simulate_prefill_attention(h100, batch=1, query_tokens=200, context_tokens=260,
                                 num_heads=4, num_kv_heads=2, head_dim=64)
    monkeypatch.undo()
    (decode_work, decode_launch), (prefill_work, prefill_launch) = captured
    assert np.any(decode_work.load_phase == K._engine.PHASE_DEPENDENT)
    assert np.any(decode_work.load_key == K._engine.KEY_L2_RESIDENT)
    _check(decode_work, decode_launch._replace(num_sms=4))
    _check(prefill_work, prefill_launch._replace(num_sms=4))
