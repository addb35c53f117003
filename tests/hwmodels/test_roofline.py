"""Roofline operator times: hand calculations, tile quantisation, monotonicity, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from servesim.hwmodels.gpus import get_gpu
from servesim.hwmodels.roofline import (
    GemmParams,
    RooflineTimer,
    gemm_params_for,
    gemm_time_s,
    profile_for,
)
from servesim.simulator.cli import app

IDEAL = GemmParams(launch_s=0.0, compute_eff_max_frac=1.0, m_half_tokens=0.0, nk_half_elems=0.0,
                   mem_eff_max_frac=1.0, bytes_half=0.0, tile_m_tokens=1)


def _t(params: GemmParams, m: float, n: int = 4096, k: int = 4096) -> float:
    return gemm_time_s(params, m=m, n=n, k=k, peak_flops_per_s=1e15, hbm_bw_bytes_per_s=1e12,
                       weight_bytes=2.0 * n * k)


def test_ideal_roofline_matches_hand_calculation() -> None:
    # m=1: bytes = 2*4096*4096 (weights) + 2*(4096 + 4096) (x in, y out) = 33,570,816 -> 33.57 us;
    # flops = 2*4096*4096 = 33.5 MFLOP -> 0.034 us: memory-bound.
    assert _t(IDEAL, 1) == pytest.approx(33_570_816 / 1e12)
    # m=4096: flops = 2*4096^3 = 137.4 GFLOP -> 137.4 us; bytes = 3 * 2*4096^2 = 100.7 MB -> 100.7 us.
    assert _t(IDEAL, 4096) == pytest.approx(2 * 4096**3 / 1e15)
    assert _t(IDEAL, 0) == 0.0


def test_launch_latency_and_efficiency_scale_the_time() -> None:
    p = GemmParams(launch_s=5e-6, compute_eff_max_frac=0.5, m_half_tokens=0.0, nk_half_elems=0.0,
                   mem_eff_max_frac=0.8, bytes_half=0.0, tile_m_tokens=1)
    assert _t(p, 1) == pytest.approx(5e-6 + 33_570_816 / 0.8e12)
    assert _t(p, 4096) == pytest.approx(5e-6 + 2 * 4096**3 / 0.5e15)


def test_tile_quantisation_pads_m_to_128() -> None:
    p = GemmParams(launch_s=0.0, compute_eff_max_frac=1.0, m_half_tokens=0.0, nk_half_elems=0.0,
                   mem_eff_max_frac=1.0, bytes_half=0.0, tile_m_tokens=128)
    assert _t(p, 2049) == pytest.approx(_t(p, 2176))  # ceil(2049/128)*128 = 2176
    assert _t(p, 2049) > _t(p, 2048)


@pytest.mark.parametrize("gpu", ["a100-sxm4-80gb", "h100-sxm", "l4", "mi300x"])
def test_calibrated_time_is_monotone_in_tokens(gpu: str) -> None:
    g = get_gpu(gpu)
    m = np.arange(1, 8193, dtype=float)
    t = gemm_time_s(gemm_params_for(g), m=m, n=4096, k=4096, peak_flops_per_s=g.peak("fp16"),
                    hbm_bw_bytes_per_s=g.hbm_bw_bytes_per_s, weight_bytes=2.0 * 4096 * 4096)
    assert np.all(np.diff(t) >= 0)
    # Memory-bound plateau at small M, compute-bound at large M.
    assert t[63] < 1.2 * t[0]
    assert t[-1] > 10 * t[0]


def test_profiles_cover_every_catalogue_gpu() -> None:
    assert profile_for(get_gpu("a100-sxm4-80gb")) == "a100"
    assert profile_for(get_gpu("h100-sxm")) == "h100"
    assert profile_for(get_gpu("l40s")) == "a100"  # Ada borrows Ampere's size-dependence
    assert profile_for(get_gpu("b200")) == "h100"


def test_roofline_timer_scalar_and_array_agree() -> None:
    timer = RooflineTimer(get_gpu("h100-sxm"))
    arr = timer.gemm_time_s(np.array([1.0, 300.0]), 4096, 4096, "fp16", 16)
    assert arr[1] == pytest.approx(timer.gemm_time_s(300, 4096, 4096, "fp16", 16))
    assert timer.decode_attention_time_s(8, 1024, 32, 8, 128, 2, 16) > 0
    assert timer.prefill_attention_time_s(1, 512, 32, 8, 128, 512, 2) > 0


# ---------------------------------------------------------------------- CLI
def test_cli_json_contract() -> None:
    res = CliRunner().invoke(app, ["roofline", "--gpu", "h100-sxm", "--model", "llama-3.1-8b",
                                   "--decode-seqs", "16", "--context", "1000", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    ops = {o["op"]: o for o in doc["ops"]}
    assert {"qkv_proj", "attention", "o_proj", "gate_up_proj", "down_proj", "norm", "lm_head", "overhead"} <= set(ops)
    for o in doc["ops"]:
        assert set(o) == {"op", "time_s", "flops", "bytes", "bound"}
    assert doc["total"]["time_s"] == pytest.approx(sum(o["time_s"] for o in doc["ops"]))
    assert ops["attention"]["bound"] == "memory"


def test_cli_tp_adds_allreduce_and_pp_reports_stages(tmp_path) -> None:
    fig = tmp_path / "r.png"
    res = CliRunner().invoke(app, ["roofline", "--gpu", "h100-sxm", "--model", "llama-2-70b", "--tp", "4",
                                   "--pp", "2", "--prefill-tokens", "1024", "--json", "--plot", str(fig)])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert "allreduce" in {o["op"] for o in doc["ops"]}
    assert len(doc["stage_times_s"]) == 2
    assert fig.stat().st_size > 10_000


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--gpu", "h100-nope", "--model", "llama-2-7b"], "unknown GPU"),
        (["--gpu", "a100-sxm4-80gb", "--model", "llama-2-7b", "--quant", "fp8"], "fp8"),
        (["--gpu", "a100-sxm4-80gb", "--model", "llama-3.1-70b"], "do not fit"),
        (["--gpu", "h100-sxm", "--model", "llama-2-7b", "--tp", "3"], "tensor_parallel"),
    ],
)
def test_cli_errors_exit_2_without_traceback(args: list[str], needle: str) -> None:
    res = CliRunner().invoke(app, ["roofline", *args])
    assert res.exit_code == 2
    assert needle in res.output
    assert "Traceback" not in res.output


def test_cli_table_output() -> None:
    res = CliRunner().invoke(app, ["roofline", "--gpu", "a100-sxm4-80gb", "--model", "mixtral-8x7b",
                                   "--quant", "w4a16", "--decode-seqs", "8"])
    assert res.exit_code == 0, res.output
    assert "moe" in res.output and "total" in res.output
