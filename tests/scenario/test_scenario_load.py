"""Loading scenarios: defaults, overrides, quick forms, paths, variants, schema."""

from __future__ import annotations

import json
from pathlib import Path

import pydantic
import pytest
import yaml

from servesim.simulator.errors import ScenarioError
from servesim.simulator.scenario import (
    HardwareCfg,
    ScenarioCfg,
    load_scenario,
    resolve_variants,
    scenario_from_dict,
    scenario_json_schema,
)

REPO = Path(__file__).resolve().parents[2]
GALLERY = sorted((REPO / "scenarios").glob("*.yaml"))


def test_defaults_are_filled_in(small, write_yaml):
    cfg = load_scenario(write_yaml(small))
    assert cfg.name == "small"
    assert cfg.seed == 3
    assert cfg.hardware == HardwareCfg(gpu="h100-sxm")
    assert cfg.hardware_groups == [cfg.hardware]
    assert cfg.kv_cache.manager == "paged"
    assert cfg.kv_cache.block_size_tokens == 16
    assert cfg.scheduler.policy == "vllm"
    assert cfg.scheduler.max_num_seqs == 256
    assert cfg.router.policy == "round_robin"
    assert cfg.engine.fast_forward is True
    assert cfg.model.kv_cache_dtype == "auto"
    assert cfg.slo.ttft_ms == 500
    assert cfg.slo.e2el_ms is None
    assert cfg.variants == []
    assert resolve_variants(cfg) == [("small", cfg)]


def test_models_are_frozen(small):
    cfg = scenario_from_dict(small)
    with pytest.raises(pydantic.ValidationError):
        cfg.seed = 5  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        cfg.scheduler.max_num_seqs = 5  # type: ignore[misc]


def test_set_overrides_parse_values_as_yaml(small, write_yaml):
    cfg = load_scenario(
        write_yaml(small),
        overrides=[
            "scheduler.max_num_seqs=64",
            "engine.fast_forward=false",
            "kv_cache.manager=radix",
            "hardware.gpu_memory_utilization=0.8",
            "slo.e2el_ms=3000",
            "router={policy: least_outstanding}",
        ],
    )
    assert cfg.scheduler.max_num_seqs == 64
    assert cfg.engine.fast_forward is False
    assert cfg.kv_cache.manager == "radix"
    assert cfg.hardware.gpu_memory_utilization == 0.8
    assert cfg.slo.e2el_ms == 3000
    assert cfg.router.policy == "least_outstanding"


def test_set_list_values_and_indices(small, write_yaml):
    small["variants"] = [{"name": "a"}, {"name": "b", "kv_cache": {"manager": "radix"}}]
    path = write_yaml(small)
    cfg = load_scenario(
        path,
        overrides=[
            "variants.0.name=first",
            "variants.1.kv_cache.block_size_tokens=32",
            "hardware=[{gpu: h100-sxm, replicas: 2}, {gpu: a100-sxm4-80gb}]",
        ],
    )
    assert [v.name for v in cfg.variants] == ["first", "b"]
    assert isinstance(cfg.hardware, list)
    assert [g.gpu for g in cfg.hardware_groups] == ["h100-sxm", "a100-sxm4-80gb"]
    runs = dict(resolve_variants(cfg))
    assert runs["b"].kv_cache.block_size_tokens == 32
    cfg = load_scenario(path, overrides=["hardware=[{gpu: h200}]", "hardware.0.replicas=3"])
    assert cfg.hardware_groups[0].replicas == 3


def test_seed_override_wins_over_set_and_file(small, write_yaml):
    path = write_yaml(small)
    assert load_scenario(path).seed == 3
    assert load_scenario(path, seed=11).seed == 11
    assert load_scenario(path, overrides=["seed=5"], seed=7).seed == 7


def test_quick_form_applies_only_when_asked(small, write_yaml):
    small["quick"] = {"workload.num_requests": 5, "scheduler.max_num_seqs": 8}
    path = write_yaml(small)
    assert load_scenario(path).workload.num_requests == 20
    cfg = load_scenario(path, quick=True)
    assert cfg.workload.num_requests == 5
    assert cfg.scheduler.max_num_seqs == 8
    # --set is applied after the quick form, so it wins.
    cfg = load_scenario(path, quick=True, overrides=["workload.num_requests=7"])
    assert cfg.workload.num_requests == 7


def test_relative_paths_resolve_against_the_scenario_directory(small, write_yaml, tmp_path):
    trace = tmp_path / "data" / "t.csv"
    trace.parent.mkdir()
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6,10,5\n")
    small["workload"] = {"trace": {"path": "../data/t.csv"}}
    small["quick"] = {"workload.trace.path": "../data/t.csv"}
    path = write_yaml(small, "sub/scenario.yaml")
    cfg = load_scenario(path)
    assert Path(cfg.workload.trace.path) == trace.resolve()
    assert Path(load_scenario(path, quick=True).workload.trace.path) == trace.resolve()


def test_set_paths_resolve_against_the_current_directory(small, write_yaml, tmp_path, monkeypatch):
    trace = tmp_path / "here.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6,10,5\n")
    small["workload"] = {"trace": {"path": str(trace)}}
    path = write_yaml(small, "deep/er/scenario.yaml")
    monkeypatch.chdir(tmp_path)
    cfg = load_scenario(path, overrides=["workload.trace.path=here.csv"])
    assert Path(cfg.workload.trace.path) == trace.resolve()


def test_model_config_path_replaces_the_default_name(small, write_yaml, tmp_path):
    src = REPO / "hwmodels" / "data" / "models" / "llama-3.1-8b.json"
    (tmp_path / "my-config.json").write_text(src.read_text())
    small["model"] = {"config": "my-config.json"}
    cfg = load_scenario(write_yaml(small))
    assert cfg.model.name is None
    assert cfg.model.config == str((tmp_path / "my-config.json").resolve())


def test_variants_merge_onto_the_base_and_share_the_workload(small):
    small["kv_cache"] = {"manager": "paged", "block_size_tokens": 32}
    small["variants"] = [
        {"name": "contig", "kv_cache": {"manager": "contiguous", "reservation": "pow2"},
         "scheduler": {"policy": "orca"}},
        {"name": "tp2", "hardware": {"tensor_parallel": 2}},
        {"name": "two-groups", "hardware": [{"gpu": "h200"}, {"gpu": "a100-sxm4-80gb"}]},
        {"name": "fp8", "model": {"quantization": "fp8", "kv_cache_dtype": "fp8"}},
    ]
    cfg = scenario_from_dict(small)
    runs = resolve_variants(cfg)
    assert [label for label, _ in runs] == ["contig", "tp2", "two-groups", "fp8"]
    by = dict(runs)
    # Deep merge: the variant's keys change, the base's other keys stay.
    assert by["contig"].kv_cache.manager == "contiguous"
    assert by["contig"].kv_cache.reservation == "pow2"
    assert by["contig"].kv_cache.block_size_tokens == 32
    assert by["contig"].scheduler.policy == "orca"
    assert by["tp2"].hardware.tensor_parallel == 2
    assert by["tp2"].hardware.gpu == "h100-sxm"
    assert [g.gpu for g in by["two-groups"].hardware_groups] == ["h200", "a100-sxm4-80gb"]
    assert by["fp8"].model.name == "llama-3.1-8b"
    assert by["fp8"].model.max_model_len_tokens == 4096
    for _, run in runs:
        assert run.variants == []
        assert run.workload is cfg.workload
        assert run.seed == cfg.seed
        assert run.slo == cfg.slo
        assert run.name == cfg.name


def test_variant_switching_model_by_config(small, tmp_path):
    src = REPO / "hwmodels" / "data" / "models" / "mistral-7b.json"
    (tmp_path / "m.json").write_text(src.read_text())
    small["variants"] = [{"name": "custom", "model": {"config": "m.json"}}, {"name": "base"}]
    cfg = scenario_from_dict(small, base_dir=tmp_path)
    by = dict(resolve_variants(cfg))
    assert by["custom"].model.name is None
    assert by["custom"].model.config == str((tmp_path / "m.json").resolve())
    assert by["base"].model.name == "llama-3.1-8b"


def test_resolved_dump_round_trips(small, write_yaml, tmp_path):
    small["variants"] = [{"name": "radix", "kv_cache": {"manager": "radix"}}]
    small["quick"] = {"workload.num_requests": 4}
    cfg = load_scenario(write_yaml(small))
    text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    again = load_scenario(write_yaml(text, "resolved/scenario.resolved.yaml"))
    assert again == cfg


def test_json_schema_describes_every_field():
    schema = scenario_json_schema()
    json.dumps(schema)  # serialisable
    assert schema["type"] == "object"
    assert "name" in schema["required"] and "workload" in schema["required"]
    assert schema["additionalProperties"] is False
    ours = {"HardwareCfg", "ModelCfg", "KvCacheCfg", "SchedulerCfg", "RouterCfg", "EngineCfg",
            "SloCfg", "VariantCfg"}
    defs = schema["$defs"]
    assert ours <= set(defs)
    for name in ours:
        assert defs[name]["additionalProperties"] is False
        for field, spec in defs[name]["properties"].items():
            assert spec.get("description"), f"{name}.{field} has no description"
    for field, spec in schema["properties"].items():
        assert spec.get("description"), f"ScenarioCfg.{field} has no description"


@pytest.mark.parametrize("path", GALLERY, ids=[p.stem for p in GALLERY])
def test_gallery_quick_forms_validate_without_shared_data(path):
    cfg = load_scenario(path, quick=True)
    assert cfg.name == path.stem
    assert cfg.description
    # The quick form must not depend on ../shared (absent on a fresh clone).
    wl = cfg.workload
    if wl.trace is not None:
        assert Path(wl.trace.path).is_relative_to(REPO), wl.trace.path
    assert resolve_variants(cfg)


def test_gallery_has_the_documented_files():
    names = {p.stem for p in GALLERY}
    assert {"quickstart", "paged-vs-contiguous", "radix-shared-prefix", "radix-mooncake",
            "quantization", "chunked-prefill", "gpu-comparison", "parallel-sampling"} <= names


def test_quickstart_needs_nothing_outside_the_repository():
    cfg = load_scenario(REPO / "scenarios" / "quickstart.yaml")
    assert cfg.workload.trace is None
    assert cfg.variants == []


def test_scenario_error_is_a_simulator_error(small):
    small["kv_cache"] = {"manager": "nope"}
    with pytest.raises(ScenarioError, match=r"kv_cache\.manager"):
        scenario_from_dict(small)


def test_base_dir_none_resolves_against_cwd(small, tmp_path, monkeypatch):
    (tmp_path / "t.csv").write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6,10,5\n"
    )
    small["workload"] = {"trace": {"path": "t.csv"}}
    monkeypatch.chdir(tmp_path)
    cfg = scenario_from_dict(small)
    assert Path(cfg.workload.trace.path) == (tmp_path / "t.csv").resolve()
    assert isinstance(cfg, ScenarioCfg)
