"""Model specs: published parameter counts, KV bytes per token, FLOPs, user config.json."""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

import pytest

from servesim.hwmodels.errors import ConfigError, UnknownNameError
from servesim.hwmodels.models import ModelSpec, get_model, model_names
from servesim.hwmodels.quant import kv_bytes_per_token
from servesim.hwmodels.units import KiB


def _bundled_config(name: str) -> Path:
    return Path(str(resources.files("servesim.hwmodels").joinpath(f"data/models/{name}.json")))


def test_bundled_models_present() -> None:
    wanted = {"opt-13b", "opt-66b", "opt-175b", "llama-2-7b", "llama-2-13b", "llama-2-70b",
              "llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b", "mistral-7b", "mixtral-8x7b",
              "qwen2.5-7b", "qwen2.5-72b", "deepseek-v3"}
    assert wanted <= set(model_names())


@pytest.mark.parametrize(
    ("name", "total", "active"),
    [
        ("llama-3.1-405b", 405.8e9, 405.8e9),  # Meta model card
        ("mixtral-8x7b", 46.7e9, 12.9e9),  # Mistral AI announcement
        ("deepseek-v3", 671e9, 37.6e9),  # DeepSeek-V3 report (main model, no MTP module)
        ("llama-2-7b", 6.74e9, 6.74e9),  # HF safetensors total 6,738,415,616
        ("llama-3.1-8b", 8.03e9, 8.03e9),
        ("opt-175b", 175e9, 175e9),
    ],
)
def test_published_parameter_counts(name: str, total: float, active: float) -> None:
    model = get_model(name)
    assert model.num_params == pytest.approx(total, rel=0.005)
    assert model.num_active_params == pytest.approx(active, rel=0.005)


@pytest.mark.parametrize(
    ("name", "kv_bytes"),
    [
        ("llama-2-7b", 512 * KiB),  # 32 layers x 2 x 32 heads x 128 x 2 B
        ("llama-3.1-8b", 128 * KiB),  # GQA: 8 KV heads
        ("opt-13b", 800 * KiB),  # 40 layers x 2 x 5120 x 2 B
        ("qwen2.5-7b", 56 * KiB),  # 28 layers x 2 x 4 KV heads x 128 x 2 B
        ("deepseek-v3", 61 * 576 * 2),  # MLA: kv_lora_rank 512 + rope 64 per layer
        ("mixtral-8x7b", 128 * KiB),
    ],
)
def test_kv_bytes_per_token_fp16(name: str, kv_bytes: int) -> None:
    assert kv_bytes_per_token(get_model(name), "fp16") == kv_bytes


def test_kv_bytes_per_token_quantized_counts_scales() -> None:
    model = get_model("llama-2-7b")
    # int8: 1 B per element + an fp16 scale per token, layer and K/V head.
    assert kv_bytes_per_token(model, "int8") == 32 * (2 * 32 * 128 + 2 * 32 * 2)
    # fp8: one per-tensor scale, nothing per token.
    assert kv_bytes_per_token(model, "fp8") == 256 * KiB
    # int4: half a byte per element + fp16 scale and zero per head vector.
    assert kv_bytes_per_token(model, "int4") == 32 * (2 * 32 * 128 // 2 + 2 * 32 * 4)


def test_moe_and_mla_structure() -> None:
    mixtral, dsv3 = get_model("mixtral-8x7b"), get_model("deepseek-v3")
    assert mixtral.is_moe and not mixtral.is_mla
    assert (mixtral.num_experts, mixtral.experts_per_tok) == (8, 2)
    assert dsv3.is_moe and dsv3.is_mla
    assert (dsv3.num_experts, dsv3.experts_per_tok, dsv3.num_shared_experts) == (256, 8, 1)
    assert dsv3.num_dense_layers == 3


def test_decode_flops_are_two_per_active_weight_plus_attention() -> None:
    model = get_model("llama-2-7b")
    embedding = model.vocab_size * model.hidden_size  # a lookup, not a GEMM
    assert model.decode_flops(0) == pytest.approx(2 * (model.num_params - embedding), rel=0.002)
    # Attention grows linearly: 2 x layers x heads x (qk + v dims) FLOPs per context token.
    per_ctx_token = 2 * 32 * 32 * (128 + 128)
    assert model.decode_flops(4096) - model.decode_flops(1024) == pytest.approx(per_ctx_token * 3072)


def test_prefill_flops_causal_attention_and_cached_prefix() -> None:
    model = get_model("llama-3.1-8b")
    tokens = 1000
    linear = tokens * model.linear_flops_per_token
    attn = model.attention_flops_per_token(1) * tokens * (tokens + 1) / 2  # sum_j (j + 1) keys
    assert model.prefill_flops(tokens) == pytest.approx(linear + attn)
    # A cached prefix removes the linear work of its tokens but they are still attended.
    assert model.prefill_flops(1000, cached_tokens=900) < model.prefill_flops(100) * 10
    assert model.prefill_flops(1000, cached_tokens=900) > model.prefill_flops(100)


def test_sliding_window_caps_attention() -> None:
    mistral = get_model("mistral-7b")
    if mistral.sliding_window_tokens:
        w = mistral.sliding_window_tokens
        assert mistral.attention_flops_per_token(10 * w) == mistral.attention_flops_per_token(w)


def test_names_exact_case_insensitive_and_unknown_lists_closest() -> None:
    assert get_model("Llama-2-7B") is get_model("llama-2-7b")
    with pytest.raises(UnknownNameError, match="Did you mean 'llama-2-7b'") as exc:
        get_model("llama-2-7")
    assert "Known models:" in str(exc.value)


def test_user_config_json_path_and_directory(tmp_path: Path) -> None:
    folder = tmp_path / "my-llama"
    folder.mkdir()
    shutil.copy(_bundled_config("llama-3.1-8b"), folder / "config.json")
    for ref in (folder / "config.json", str(folder / "config.json"), folder):
        model = get_model(ref)
        assert isinstance(model, ModelSpec)
        assert model.name == "my-llama"
        assert model.num_params == get_model("llama-3.1-8b").num_params


def test_user_config_minimal_fields(tmp_path: Path) -> None:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64,
                                "num_attention_heads": 4, "num_key_value_heads": 2,
                                "intermediate_size": 128, "vocab_size": 100}))
    model = get_model(path)
    assert model.name == "tiny"
    assert model.head_dim == 16
    # 2 layers x (qkv 64x(64+64) + o 64x64 + gate_up 64x256 + down 128x64 + 2 norms) + emb + head + norm
    per_layer = 64 * 128 + 64 * 64 + 64 * 256 + 128 * 64 + 2 * 64
    assert model.num_params == 2 * per_layer + 2 * 100 * 64 + 64


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "line 1, column 2: invalid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"hidden_size": 64}', "lacks required field 'num_hidden_layers'"),
        ('{"num_hidden_layers": 2, "hidden_size": -1, "num_attention_heads": 4, "vocab_size": 9}',
         "'hidden_size' must be a positive integer, got -1"),
        ('{"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, '
         '"num_key_value_heads": 3, "vocab_size": 9}', "must be a multiple"),
        ('{"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, '
         '"num_key_value_heads": "two", "vocab_size": 9}', "num_key_value_heads"),
    ],
)
def test_bad_user_config_is_a_config_error(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        get_model(path)


def test_missing_config_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        get_model(tmp_path / "nope" / "config.json")
