"""Quantization schemes: bytes per weight, weight bytes of models, what each GPU can run."""

from __future__ import annotations

import pytest

from servesim.hwmodels.errors import ConfigError, UnknownNameError
from servesim.hwmodels.gpus import get_gpu, list_gpus
from servesim.hwmodels.models import get_model
from servesim.hwmodels.quant import (
    KV_DTYPES,
    SCHEMES,
    check_kv_dtype_supported,
    get_kv_dtype,
    get_scheme,
    supported_schemes,
    weight_bytes,
)


def test_catalogue_names() -> None:
    assert set(SCHEMES) >= {
        "fp16",
        "bf16",
        "fp8",
        "w8a8-int8",
        "w8a16",
        "w4a16",
        "w4a8",
        "w4a8-kv4",
        "nvfp4",
    }
    assert set(KV_DTYPES) >= {"fp16", "fp8", "int8", "int4"}


@pytest.mark.parametrize(
    ("name", "bits"),
    [
        ("fp16", 16.0),
        ("bf16", 16.0),
        ("w4a16", 4 + (16 + 4) / 128),  # fp16 scale + 4-bit zero per 128 weights = 4.156
        ("nvfp4", 4 + 8 / 16),  # FP8 E4M3 scale per 16 FP4 values
        ("fp8", 8 + 32 / 4096),  # one fp32 scale per output channel of 4096 inputs
        ("w8a8-int8", 8 + 16 / 4096),
    ],
)
def test_bits_per_weight(name: str, bits: float) -> None:
    assert get_scheme(name).bits_per_weight(4096) == pytest.approx(bits)


def test_w4a16_is_4_156_bits_and_group_size_is_configurable() -> None:
    scheme = get_scheme("w4a16")
    assert round(scheme.bits_per_weight(), 3) == 4.156
    assert scheme.with_group_size(64).bits_per_weight() == pytest.approx(4 + 20 / 64)
    with pytest.raises(ConfigError, match="group_size must be > 0"):
        scheme.with_group_size(0)


def test_weight_bytes_fp16_is_two_bytes_per_parameter() -> None:
    for name in ("llama-2-7b", "mixtral-8x7b", "deepseek-v3", "opt-13b"):
        model = get_model(name)
        assert weight_bytes(model, "fp16") == 2 * model.num_params


def test_weight_bytes_w4a16_by_hand_llama_2_7b() -> None:
    """GEMMs at 4.156 bits; embeddings, norms and the LM head stay fp16 (as AWQ/GPTQ ship)."""
    h, inter, vocab, layers = 4096, 11008, 32000, 32
    gemm = layers * (h * 3 * h + h * h + h * 2 * inter + inter * h)
    rest = 2 * vocab * h + (2 * layers + 1) * h  # embedding + head + norms
    expected = gemm * (4 + 20 / 128) / 8 + rest * 2
    assert weight_bytes(get_model("llama-2-7b"), "w4a16") == pytest.approx(expected)


def test_weight_bytes_ordering() -> None:
    model = get_model("llama-3.1-70b")
    sizes = [weight_bytes(model, s) for s in ("fp16", "fp8", "w4a16")]
    assert sizes[0] > sizes[1] > sizes[2]
    # fp8 halves everything but the fp16 embedding table (~1.5% of a 70B model).
    assert sizes[1] / sizes[0] == pytest.approx(0.5, rel=0.02)


def test_fp8_on_a100_is_a_clear_error() -> None:
    with pytest.raises(ConfigError) as exc:
        get_scheme("fp8").check_supported(get_gpu("a100-sxm4-80gb"))
    msg = str(exc.value)
    assert "'fp8'" in msg and "a100-sxm4-80gb" in msg
    assert "it supports fp32, tf32, fp16, bf16, int8, int4" in msg
    assert "w8a8-int8" in msg and "w4a16" in msg  # the schemes it can run


@pytest.mark.parametrize("gpu", ["h100-sxm", "h200", "a100-sxm4-80gb", "l40s", "mi300x"])
def test_nvfp4_before_blackwell_is_an_error(gpu: str) -> None:
    with pytest.raises(
        ConfigError, match=r"fp4 tensor cores, which GPU .* does not have; it supports"
    ):
        get_scheme("nvfp4").check_supported(get_gpu(gpu))


def test_nvfp4_runs_on_blackwell() -> None:
    for gpu in ("b200", "gb200"):
        get_scheme("nvfp4").check_supported(get_gpu(gpu))


@pytest.mark.parametrize("gpu", list_gpus(), ids=lambda g: g.name)
def test_support_matches_compute_type(gpu) -> None:  # type: ignore[no-untyped-def]
    for scheme in SCHEMES.values():
        if gpu.supports(scheme.compute_type):
            scheme.check_supported(gpu)
            assert scheme.name in supported_schemes(gpu)
        else:
            with pytest.raises(ConfigError):
                scheme.check_supported(gpu)


def test_fp8_kv_needs_fp8_hardware() -> None:
    with pytest.raises(ConfigError, match="kv_cache_dtype 'fp8' needs FP8 support"):
        check_kv_dtype_supported(get_kv_dtype("fp8"), get_gpu("a100-sxm4-80gb"))
    check_kv_dtype_supported(get_kv_dtype("fp8"), get_gpu("h100-sxm"))
    check_kv_dtype_supported(get_kv_dtype("int8"), get_gpu("v100-sxm2-32gb"))


def test_unknown_scheme_and_kv_dtype_list_closest() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'w4a16'"):
        get_scheme("w4a61")
    with pytest.raises(
        UnknownNameError, match="Known KV-cache dtypes: bf16, fp16, fp8, int4, int8"
    ):
        get_kv_dtype("int3")


def test_w4a8_kv4_implies_int4_kv() -> None:
    assert get_scheme("w4a8-kv4").default_kv_dtype == "int4"
    assert get_scheme("w4a16").weight_only and not get_scheme("w4a8").weight_only
