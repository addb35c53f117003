"""CLI: ``list``, ``show``, ``quant-error``: exit codes, JSON contract keys, user errors."""

from __future__ import annotations

import json
import shutil
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from servesim.simulator.cli import app, main

EXAMPLE_GPU = Path(__file__).resolve().parents[2] / "examples" / "my-gpu.yaml"
GPU_KEYS = {
    "name",
    "hbm_bytes",
    "hbm_bw_bytes_per_s",
    "peak_flops_per_s",
    "num_sms",
    "clock_hz",
    "l2_bytes",
    "sram_bytes_per_sm",
    "source",
}
MODEL_KEYS = {
    "name",
    "num_params",
    "num_active_params",
    "weight_bytes",
    "kv_bytes_per_token",
    "num_layers",
    "num_kv_heads",
    "head_dim",
    "quant",
    "kv_dtype",
}
SMALL = ["--tokens", "64", "--channels", "256", "--outlier-channels", "2"]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _ok_json(runner: CliRunner, *args: str) -> object:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _user_error(runner: CliRunner, *args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)  # not an escaped Python error
    assert result.stdout == ""
    return result.stderr


# ---------------------------------------------------------------------------- list
def test_list_gpus_json(runner: CliRunner) -> None:
    gpus = _ok_json(runner, "list", "gpus", "--json")
    assert isinstance(gpus, list) and len(gpus) >= 18
    for gpu in gpus:
        assert GPU_KEYS <= set(gpu)
    assert {g["name"] for g in gpus} >= {"h100-sxm", "a100-sxm4-80gb", "mi300x"}


def test_list_models_json(runner: CliRunner) -> None:
    models = _ok_json(runner, "list", "models", "--json")
    assert {m["name"] for m in models} >= {"llama-3.1-8b", "mixtral-8x7b", "deepseek-v3"}
    for m in models:
        assert MODEL_KEYS <= set(m)
        assert m["quant"] == "fp16" and m["weight_bytes"] == 2 * m["num_params"]


def test_list_quant_json(runner: CliRunner) -> None:
    data = _ok_json(runner, "list", "quant", "--json")
    schemes = {s["name"]: s for s in data["schemes"]}
    assert set(schemes) >= {"fp16", "fp8", "w8a8-int8", "w4a16", "w4a8-kv4", "nvfp4"}
    assert schemes["w4a16"]["bits_per_weight"] == pytest.approx(4.15625)
    assert schemes["w4a16"]["group_size"] == 128
    assert {k["name"] for k in data["kv_dtypes"]} >= {"fp16", "fp8", "int8", "int4"}
    assert {"bits", "scale_bytes_per_group"} <= set(data["kv_dtypes"][0])


@pytest.mark.parametrize("what", ["gpus", "models", "quant"])
def test_list_tables(runner: CliRunner, what: str) -> None:
    result = runner.invoke(app, ["list", what])
    assert result.exit_code == 0, result.output
    assert {"gpus": "h100-sxm", "models": "llama-3.1-405b", "quant": "w4a8-kv4"}[
        what
    ] in result.stdout


# ---------------------------------------------------------------------------- show gpu
def test_show_gpu_json_contract(runner: CliRunner) -> None:
    gpu = _ok_json(runner, "show", "gpu", "H100-SXM", "--json")
    assert GPU_KEYS <= set(gpu)
    assert gpu["name"] == "h100-sxm"
    assert gpu["peak_flops_per_s"]["fp16"] == pytest.approx(989.4e12)
    assert "fp4" not in gpu["peak_flops_per_s"]
    assert gpu["hbm_bytes"] == 80 * 2**30
    assert gpu["num_sms"] == 132


def test_show_gpu_alias_and_table(runner: CliRunner) -> None:
    result = runner.invoke(app, ["show", "gpu", "a100-80gb"])
    assert result.exit_code == 0
    assert "a100-sxm4-80gb" in result.stdout and "312.0 TFLOP/s" in result.stdout


def test_show_user_gpu_yaml(runner: CliRunner) -> None:
    gpu = _ok_json(runner, "show", "gpu", str(EXAMPLE_GPU), "--json")
    assert gpu["name"] == "rtx-6000-ada"
    assert gpu["confidence"] == "medium"


def test_unknown_gpu_exits_2_with_closest_names(runner: CliRunner) -> None:
    err = _user_error(runner, "show", "gpu", "h100-sxm4", "--json")
    assert "unknown GPU 'h100-sxm4'" in err
    assert "Did you mean" in err and "'h100-sxm'" in err
    assert "Known GPUs:" in err


def test_bad_user_gpu_file_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "gpu.yaml"
    path.write_text(
        "name: x\nhbm_gib: -1\nhbm_bw_bytes_per_s: 1e12\npeak_flops_per_s: {fp16: 1e14}\n"
    )
    err = _user_error(runner, "show", "gpu", str(path))
    assert "hbm_gib" in err and "-1" in err
    assert "does not exist" in _user_error(runner, "show", "gpu", str(tmp_path / "missing.yaml"))


# ---------------------------------------------------------------------------- show model
def test_show_model_json_contract(runner: CliRunner) -> None:
    m = _ok_json(runner, "show", "model", "llama-3.1-8b", "--json")
    assert MODEL_KEYS <= set(m)
    assert (m["num_layers"], m["num_kv_heads"], m["head_dim"]) == (32, 8, 128)
    assert m["kv_bytes_per_token"] == 128 * 1024
    assert m["weight_bytes"] == 2 * m["num_params"]


def test_show_model_quant_and_kv_dtype(runner: CliRunner) -> None:
    fp16 = _ok_json(runner, "show", "model", "llama-3.1-8b", "--json")
    w4 = _ok_json(
        runner, "show", "model", "llama-3.1-8b", "--quant", "w4a16", "--kv-dtype", "fp8", "--json"
    )
    assert w4["quant"] == "w4a16" and w4["kv_dtype"] == "fp8"
    assert w4["weight_bytes"] < 0.4 * fp16["weight_bytes"]
    assert w4["kv_bytes_per_token"] == 64 * 1024
    kv4 = _ok_json(runner, "show", "model", "llama-3.1-8b", "-q", "w4a8-kv4", "--json")
    assert kv4["kv_dtype"] == "int4"  # the scheme's default KV dtype


def test_show_model_moe_mla(runner: CliRunner) -> None:
    m = _ok_json(runner, "show", "model", "deepseek-v3", "--json")
    assert m["num_params"] == pytest.approx(671e9, rel=0.005)
    assert m["num_active_params"] == pytest.approx(37.6e9, rel=0.005)
    assert m["kv_bytes_per_token"] == 61 * 576 * 2
    result = runner.invoke(app, ["show", "model", "mixtral-8x7b"])
    assert result.exit_code == 0 and "2 of 8 per token" in result.stdout


def test_show_model_user_config(runner: CliRunner, tmp_path: Path) -> None:
    folder = tmp_path / "my-model"
    folder.mkdir()
    shutil.copy(
        Path(str(resources.files("servesim.hwmodels").joinpath("data/models/qwen2.5-7b.json"))),
        folder / "config.json",
    )
    m = _ok_json(runner, "show", "model", str(folder / "config.json"), "--json")
    assert m["name"] == "my-model"
    assert m["kv_bytes_per_token"] == 56 * 1024


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["show", "model", "llama-3-8b"], "unknown model 'llama-3-8b'"),
        (
            ["show", "model", "llama-3.1-8b", "--quant", "int3"],
            "unknown quantization scheme 'int3'",
        ),
        (["show", "model", "llama-3.1-8b", "--kv-dtype", "fp4"], "unknown KV-cache dtype 'fp4'"),
    ],
)
def test_show_model_errors_exit_2(runner: CliRunner, args: list[str], needle: str) -> None:
    err = _user_error(runner, *args)
    assert needle in err and "Known" in err


def test_bad_user_config_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"num_hidden_layers": 2}')
    assert "lacks required field 'hidden_size'" in _user_error(runner, "show", "model", str(path))


# ---------------------------------------------------------------------------- quant-error
def test_quant_error_json_and_figure(runner: CliRunner, tmp_path: Path) -> None:
    data = _ok_json(runner, "quant-error", *SMALL, "--out", str(tmp_path), "--json", "--seed", "1")
    methods = {m["method"]: m for m in data["methods"]}
    assert list(methods) == [
        "per-tensor-w8a8",
        "per-channel-w8a8",
        "smoothquant-w8a8",
        "w4a16-g128",
    ]
    for m in methods.values():
        assert {"y_mse", "y_sqnr_db", "x_sqnr_db", "w_sqnr_db", "gemm_friendly"} <= set(m)
    assert methods["smoothquant-w8a8"]["y_sqnr_db"] > methods["per-tensor-w8a8"]["y_sqnr_db"] + 3
    assert methods["per-channel-w8a8"]["y_sqnr_db"] > methods["per-tensor-w8a8"]["y_sqnr_db"] + 6
    assert data["median_levels_smoothquant"] > data["median_levels_per_tensor"]
    assert (data["num_tokens"], data["num_channels"], data["source"]) == (64, 256, "synthetic")
    assert len(data["outlier_channels"]) == 2
    figure = Path(data["figure"])
    assert figure == tmp_path / "quant_error.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quant_error_is_deterministic(runner: CliRunner, tmp_path: Path) -> None:
    a = _ok_json(runner, "quant-error", *SMALL, "--out", str(tmp_path), "--json", "--no-plot")
    b = _ok_json(runner, "quant-error", *SMALL, "--out", str(tmp_path), "--json", "--no-plot")
    assert a == b
    assert a["figure"] is None  # type: ignore[index]
    assert not (tmp_path / "quant_error.png").exists()


def test_quant_error_table(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["quant-error", *SMALL, "--out", str(tmp_path), "--no-plot"])
    assert result.exit_code == 0, result.output
    assert "smoothquant-w8a8" in result.stdout and "ordinary channels use a median" in result.stdout


def test_quant_error_on_user_npy(runner: CliRunner, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 16, 64)).astype(np.float16)  # (batch, seq, channels)
    x[..., 5] += 80.0
    np.save(tmp_path / "acts.npy", x)
    data = _ok_json(
        runner,
        "quant-error",
        "--npy",
        str(tmp_path / "acts.npy"),
        "--out",
        str(tmp_path),
        "--json",
        "--no-plot",
    )
    assert (data["num_tokens"], data["num_channels"]) == (32, 64)
    assert data["outlier_channels"] == [5]
    assert data["source"].endswith("acts.npy")


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda p: np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True), "pickled"),
        (lambda p: p.write_text("not numpy"), "not a .npy file"),
        (lambda p: p.write_bytes(b"\x93NUMPY\x01"), "cannot read it"),
        (lambda p: np.save(p, np.array([1.0, np.inf])), "NaN or infinity"),
        (lambda p: np.save(p, np.array(["a", "b"])), "not real numeric"),
        (lambda p: np.save(p, np.zeros((0, 4))), "is empty"),
        (lambda p: None, "does not exist"),
    ],
)
def test_quant_error_bad_npy_exits_2(runner: CliRunner, tmp_path: Path, make, needle: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "x.npy"
    make(path)
    err = _user_error(runner, "quant-error", "--npy", str(path), "--out", str(tmp_path))
    assert needle in err


def test_quant_error_bad_option_combination_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    err = _user_error(
        runner, "quant-error", "--channels", "8", "--outlier-channels", "9", "--out", str(tmp_path)
    )
    assert "--outlier-channels 9 exceeds --channels 8" in err


# ---------------------------------------------------------------------------- help, entry point
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["list", "--help"], "gpus"),
        (["list", "gpus", "--help"], "dense"),
        (["list", "models", "--help"], "config.json"),
        (["list", "quant", "--help"], "bits/weight"),
        (["show", "--help"], "model"),
        (["show", "gpu", "--help"], "NAME_OR_YAML"),
        (["show", "model", "--help"], "--kv-dtype"),
        (["quant-error", "--help"], "SmoothQuant"),
    ],
)
def test_help(runner: CliRunner, args: list[str], needle: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 0
    assert needle in result.stdout
    assert "--json" in result.stdout or args[-2:] in (["list", "--help"], ["show", "--help"])


def test_console_entry_point_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["servesim", "show", "gpu", "nope"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    assert "unknown GPU 'nope'" in capsys.readouterr().err


def test_console_entry_point_exits_0(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["servesim", "show", "gpu", "l4", "--json"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 0
    assert json.loads(capsys.readouterr().out)["name"] == "l4"
