"""GPU catalogue: every entry validates, dense peaks are dense, names are exact, user files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from servesim.hwmodels.errors import ConfigError, UnknownNameError
from servesim.hwmodels.gpus import COMPUTE_TYPES, GpuFile, GpuSpec, get_gpu, gpu_names, list_gpus
from servesim.hwmodels.units import GiB

EXAMPLE_GPU = Path(__file__).resolve().parents[2] / "examples" / "my-gpu.yaml"
GPUS = list_gpus()


def test_catalogue_has_at_least_18_gpus_with_unique_names() -> None:
    names = [g.name for g in GPUS]
    aliases = [a for g in GPUS for a in g.aliases]
    assert len(GPUS) >= 18
    assert len(set(names + aliases)) == len(names) + len(aliases)
    for wanted in ("a100-sxm4-80gb", "h100-sxm", "h200", "b200", "l4", "mi300x", "gaudi3"):
        assert wanted in names


@pytest.mark.parametrize("gpu", GPUS, ids=lambda g: g.name)
def test_entry_validates(gpu: GpuSpec) -> None:
    assert gpu.name == gpu.name.lower()
    assert gpu.hbm_bytes > 0
    assert gpu.hbm_bw_bytes_per_s > 0
    assert gpu.peak_fp16_flops_per_s > 0
    assert set(gpu.peak_flops_per_s) <= set(COMPUTE_TYPES)
    assert all(v > 0 for v in gpu.peak_flops_per_s.values())
    for field in ("num_sms", "clock_hz", "l2_bytes", "sram_bytes_per_sm", "smem_max_bytes_per_sm",
                  "regfile_bytes_per_sm", "scaleup_bw_bytes_per_s", "pcie_bw_bytes_per_s", "tdp_w"):
        value = getattr(gpu, field)
        assert value is None or value > 0, field
    if gpu.smem_max_bytes_per_sm is not None:
        assert gpu.smem_max_bytes_per_sm <= gpu.sram_bytes_per_sm
    assert gpu.source.strip()
    assert gpu.confidence in ("high", "medium", "low")
    # Plausibility: 8-256 GiB of memory, 0.2-10 TB/s, 50 TFLOP/s - 3 PFLOP/s fp16 dense.
    assert 8 * GiB <= gpu.hbm_bytes <= 256 * GiB
    assert 0.2e12 <= gpu.hbm_bw_bytes_per_s <= 10e12
    assert 50e12 <= gpu.peak_fp16_flops_per_s <= 3e15


@pytest.mark.parametrize("gpu", GPUS, ids=lambda g: g.name)
def test_peaks_are_dense_and_ordered(gpu: GpuSpec) -> None:
    """A sparse figure used as a dense peak would break these orderings."""
    p = gpu.peak_flops_per_s
    fp16 = gpu.peak_fp16_flops_per_s
    for low_precision in ("fp8", "int8", "int4", "fp4"):
        if low_precision in p:
            assert fp16 <= 1.1 * p[low_precision], low_precision
            # GeForce fp16 (fp32 accumulate) is 1/8 of int4: at most 8x, never more.
            assert p[low_precision] <= 8.1 * fp16, low_precision
    if "tf32" in p:
        assert p["tf32"] <= fp16
    if "fp32" in p:
        assert p["fp32"] <= fp16


def test_known_dense_peaks() -> None:
    assert get_gpu("h100-sxm").peak("fp16") == pytest.approx(989.4e12)  # not the 1979 sparse
    assert get_gpu("h100-sxm").peak("fp8") == pytest.approx(1978.9e12)
    assert get_gpu("a100-sxm4-80gb").peak("fp16") == pytest.approx(312e12)
    assert get_gpu("a100-sxm4-80gb").hbm_bytes == 80 * GiB
    assert get_gpu("h200").hbm_bytes == 141 * GiB


def test_names_are_exact_and_case_insensitive() -> None:
    assert get_gpu("H100-SXM") is get_gpu("h100-sxm")
    assert get_gpu("a100-80gb") is get_gpu("a100-sxm4-80gb")  # alias
    assert gpu_names()[0] == GPUS[0].name


@pytest.mark.parametrize(("typo", "closest"), [("h100-sxm4", "h100-sxm"), ("a100-sxm-80gb", "a100-sxm4-80gb"),
                                                ("mi300", "mi300x")])
def test_unknown_name_lists_closest(typo: str, closest: str) -> None:
    with pytest.raises(UnknownNameError, match="Did you mean") as exc:
        get_gpu(typo)
    assert repr(closest) in str(exc.value)
    assert "Known GPUs:" in str(exc.value)


def test_unsupported_compute_type_names_what_is_supported() -> None:
    with pytest.raises(ConfigError, match="no fp8 tensor-core path; it supports fp32, tf32, fp16"):
        get_gpu("a100-sxm4-80gb").peak("fp8")


def test_round_trip_through_user_yaml(tmp_path: Path) -> None:
    for spec in (get_gpu("h100-sxm"), get_gpu("mi300x"), get_gpu("gaudi3")):
        path = tmp_path / f"{spec.name}.yaml"
        path.write_text(yaml.safe_dump(GpuFile.from_spec(spec).model_dump()))
        assert get_gpu(path) == spec
        assert get_gpu(str(path)) == spec


def test_example_user_gpu_loads() -> None:
    gpu = get_gpu(EXAMPLE_GPU)
    assert gpu.name == "rtx-6000-ada"
    assert gpu.hbm_bytes == 48 * GiB
    assert gpu.supports("fp8")
    assert not gpu.supports("fp4")
    assert gpu.smem_max_bytes_per_sm == 100 * 1024  # Ada limit derived from arch


def _user_file(tmp_path: Path, **overrides: object) -> Path:
    entry = {"name": "my-gpu", "hbm_gib": 24, "hbm_bw_bytes_per_s": 1e12,
             "peak_flops_per_s": {"fp16": 100e12}}
    entry.update(overrides)
    entry = {k: v for k, v in entry.items() if v is not None}
    path = tmp_path / "gpu.yaml"
    path.write_text(yaml.safe_dump(entry))
    return path


def test_minimal_user_gpu(tmp_path: Path) -> None:
    gpu = get_gpu(_user_file(tmp_path))
    assert gpu.name == "my-gpu"
    assert gpu.num_sms is None
    assert gpu.confidence == "user"


@pytest.mark.parametrize(
    ("override", "field", "bad"),
    [
        ({"hbm_gib": -80}, "hbm_gib", "-80"),
        ({"hbm_bw_bytes_per_s": "fast"}, "hbm_bw_bytes_per_s", "'fast'"),
        ({"peak_flops_per_s": {"fp16": 0}}, "peak_flops_per_s.fp16", "0"),
        ({"num_sms": 0}, "num_sms", "0"),
        ({"hbm_gb": 80}, "hbm_gb", "80"),  # unit typo: unknown keys are errors
        ({"hbm_gib": None}, "hbm_gib", "Field required"),
    ],
)
def test_user_gpu_errors_name_field_and_value(
    tmp_path: Path, override: dict[str, object], field: str, bad: str
) -> None:
    with pytest.raises(ConfigError) as exc:
        get_gpu(_user_file(tmp_path, **override))
    msg = str(exc.value)
    assert field in msg
    assert bad in msg
    assert "gpu.yaml" in msg


def test_user_gpu_unknown_compute_type(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown compute type 'fp6'; valid: fp32, tf32"):
        get_gpu(_user_file(tmp_path, peak_flops_per_s={"fp16": 1e14, "fp6": 1e15}))


def test_user_gpu_needs_fp16_or_bf16(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least fp16 or bf16"):
        get_gpu(_user_file(tmp_path, peak_flops_per_s={"fp32": 1e13}))


@pytest.mark.parametrize(
    ("text", "match"),
    [("name: [unclosed", "YAML syntax error"), ("", "must be a mapping"), ("- 1\n- 2\n", "must be a mapping")],
)
def test_user_gpu_malformed_file(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        get_gpu(path)


def test_user_gpu_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        get_gpu(tmp_path / "nope.yaml")


def test_spec_is_frozen() -> None:
    gpu = get_gpu("l4")
    with pytest.raises(dataclasses.FrozenInstanceError):
        gpu.hbm_bytes = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        gpu.peak_flops_per_s["fp16"] = 1.0  # type: ignore[index]
