"""Fixtures for scenario tests: a small valid scenario mapping and a writer for YAML files."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

SMALL: dict[str, Any] = {
    "name": "small",
    "seed": 3,
    "hardware": {"gpu": "h100-sxm"},
    "model": {"name": "llama-3.1-8b", "max_model_len_tokens": 4096},
    "workload": {
        "num_requests": 20,
        "arrivals": {"process": "poisson", "rate_per_s": 5.0},
        "lengths": {
            "prompt": {"dist": "uniform", "min_tokens": 16, "max_tokens": 256},
            "output": {"dist": "uniform", "min_tokens": 4, "max_tokens": 32},
        },
    },
    "slo": {"ttft_ms": 500, "tpot_ms": 50},
}


@pytest.fixture
def small() -> dict[str, Any]:
    """A fresh copy of a small valid scenario mapping."""
    return copy.deepcopy(SMALL)


@pytest.fixture
def write_yaml(tmp_path: Path) -> Callable[..., Path]:
    """Write a mapping (or raw text) as ``tmp_path/<name>`` and return the path."""

    def write(data: dict[str, Any] | str, name: str = "scenario.yaml") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        text = data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False)
        path.write_text(text)
        return path

    return write
