"""Small scenarios for the sweep, rate-search and planner tests (seconds each)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

#: Llama-3.1-8B on one H100, paged KV, vLLM scheduler, 60 Poisson requests of short chats.
TINY: dict[str, Any] = {
    "name": "tiny",
    "seed": 0,
    "hardware": {"gpu": "h100-sxm"},
    "model": {"name": "llama-3.1-8b", "max_model_len_tokens": 4096},
    "kv_cache": {"manager": "paged", "block_size_tokens": 16},
    "scheduler": {"policy": "vllm"},
    "engine": {"progress": False},
    "workload": {
        "num_requests": 60,
        "arrivals": {"process": "poisson", "rate_per_s": 4.0},
        "lengths": {
            "prompt": {"dist": "uniform", "min_tokens": 100, "max_tokens": 600},
            "output": {"dist": "uniform", "min_tokens": 20, "max_tokens": 120},
        },
    },
    "slo": {"ttft_ms": 500, "tpot_ms": 50},
}


@pytest.fixture
def tiny() -> dict[str, Any]:
    """A fresh copy of :data:`TINY` (tests may modify it)."""
    return copy.deepcopy(TINY)
