"""``servesim kernel``: JSON contract and exit status 2 on user errors."""

from __future__ import annotations

import json

import typer
from typer.testing import CliRunner

from servesim.simulator.cli import kernel as kernel_cli


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """root"""

    kernel_cli.register(app)
    return app


def test_gemm_json_and_plot(tmp_path) -> None:
    plot = tmp_path / "trace.png"
    res = CliRunner().invoke(_app(), ["kernel", "gemm", "--gpu", "h100-sxm", "--m", "256",
                                      "--n", "1024", "--k", "1024", "--json", "--trace",
                                      "--plot", str(plot)])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    for key in ("total_cycles", "time_s", "achieved_hbm_bw_bytes_per_s", "achieved_flops_per_s",
                "occupancy_frac", "num_waves", "bound", "config"):
        assert key in out
    assert len(out["trace"]["cta_sm"]) == out["num_ctas"]
    assert plot.stat().st_size > 0


def test_decode_text_and_user_error() -> None:
    runner = CliRunner()
    res = runner.invoke(_app(), ["kernel", "attention-decode", "--gpu", "a100-sxm4-80gb",
                                 "--batch", "4", "--context-tokens", "512", "--block-size", "0"])
    assert res.exit_code == 0, res.output
    assert "attention-decode on a100-sxm4-80gb" in res.output
    res = runner.invoke(_app(), ["kernel", "gemm", "--gpu", "a100-sxm4-80gb", "--m", "1",
                                 "--n", "8", "--k", "8", "--compute-type", "fp8"])
    assert res.exit_code == 2
    assert "fp8" in res.output
